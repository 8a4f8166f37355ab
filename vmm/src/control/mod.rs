//! The control socket: a QMP server compatible with QEMU's, and the
//! `vmm ctl` client.
//!
//! Management tools written for QEMU (Kata's govmm, the `qemu.qmp` Python
//! package, libvirt-style scripts) talk to vmm as they talk to QEMU 10:
//! the same greeting, capabilities negotiation, framing, error classes and
//! messages, and event shape. This module is the protocol layer only; the
//! VM implements [`QmpHandler`] to act on the parsed [`Command`]s and emits
//! events through the [`EventSender`] that [`QmpServer::start`] returns.
//!
//! ```no_run
//! use std::sync::Arc;
//! use serde_json::{json, Value};
//! use vmm::control::{Command, QmpError, QmpHandler, QmpListen, QmpServer};
//!
//! struct Vm;
//! impl QmpHandler for Vm {
//!     fn execute(&self, command: Command) -> Result<Value, QmpError> {
//!         match command {
//!             Command::QueryStatus => Ok(json!({"running": true, "singlestep": false, "status": "running"})),
//!             Command::Quit => Ok(json!({})),
//!             other => Err(QmpError::generic(format!("{} is not available", other.name()))),
//!         }
//!     }
//!     fn after_reply(&self, command: &Command) {
//!         if *command == Command::Quit {
//!             std::process::exit(0);
//!         }
//!     }
//! }
//!
//! let listen = QmpListen::parse("unix:/run/vm.qmp,server=on,wait=off").unwrap();
//! let (events, _thread) = QmpServer::start(listen, Arc::new(Vm)).unwrap();
//! events.emit("STOP", None);
//! ```
//!
//! Decisions worth knowing:
//! - The greeting offers the `oob` capability, as QEMU 10 does, and
//!   `qmp_capabilities` accepts `{"enable": ["oob"]}` (qemu.qmp sends it
//!   when offered). No command runs out of band, so `exec-oob` gets QEMU's
//!   "The command X does not support OOB".
//! - Input is framed as QEMU frames it (see [`protocol::Framer`]): values
//!   with or without newlines, split anywhere; a malformed value gets one
//!   `GenericError` "JSON parse error, ..." and the next value is read
//!   normally. One value may not exceed 1 MiB while it is received: the
//!   client gets an error and is disconnected.
//! - One client at a time, as QEMU: others wait in the listen backlog and
//!   each new client gets a fresh greeting and negotiation.
//! - Events never block the caller: they are queued to the client's writer
//!   thread; a client that stops reading is disconnected (see
//!   [`server::WRITE_TIMEOUT`] and [`server::EVENT_QUEUE`]).
//! - `quit` and other deferred actions go in
//!   [`QmpHandler::after_reply`], called once the reply is flushed.

pub mod client;
pub mod commands;
pub mod protocol;
pub mod server;

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

use thiserror::Error;

pub use client::run_ctl;
pub use commands::{Command, MigMode, MigrateParameters, MigrationCapabilityStatus, COMMAND_NAMES};
pub use protocol::{ErrorClass, QmpError};
pub use server::{BoundQmp, EventSender, QmpHandler, QmpListen, QmpServer};

/// Errors of the control socket: setting up the server, and the client.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("invalid QMP address '{spec}': {reason}")]
    Address { spec: String, reason: String },
    #[error("{} exists and is not a socket; remove it or choose another QMP path", .0.display())]
    NotASocket(PathBuf),
    #[error("{} is in use: another process is serving QMP on it", .0.display())]
    InUse(PathBuf),
    #[error("cannot listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("QMP socket fd={fd}: {reason}")]
    Fd { fd: RawFd, reason: String },
    #[error("cannot start the QMP thread: {0}")]
    Thread(io::Error),
    #[error("cannot connect to {}: {source} ({})", path.display(), if *exists { "the path exists" } else { "the path does not exist" })]
    Connect {
        path: PathBuf,
        exists: bool,
        source: io::Error,
    },
    #[error("invalid JSON-ARGS '{text}': {reason}")]
    BadArgs { text: String, reason: String },
    #[error("QMP connection: {0}")]
    Io(#[from] io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("timed out after {secs:.1}s {waiting}")]
    Timeout { secs: f64, waiting: String },
    #[error("{0}")]
    Qmp(QmpError),
}
