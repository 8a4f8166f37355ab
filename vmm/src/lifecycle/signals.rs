//! The signals `vmm run` acts on.
//!
//! SIGTERM, SIGINT (Ctrl-C on a terminal console) and SIGHUP (the
//! terminal went away) end the run as QMP `quit` does (QEMU's behaviour:
//! SHUTDOWN with reason "host-signal", exit status 0), so that a clone
//! killed by its supervisor still releases its template lock and removes
//! its disk copies, a template being made leaves nothing behind, and a
//! terminal gets its settings back.
//!
//! SIGUSR1 logs a dump of every vCPU's state and of the guest's last
//! serial output (lines starting `vcpu-dump:`, see [`crate::machine::dump`])
//! and the VM goes on: what to ask a guest that hangs before killing it.
//!
//! The signals are blocked in every thread (the mask is inherited by the
//! threads made after it) and taken by one thread with sigwait, so no
//! handler runs at an arbitrary point. The dump runs on a thread of its
//! own, so that a dump waiting for the VM (a migration holds it) never
//! delays SIGTERM.

use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread;

use log::{info, warn};
use serde_json::json;

use super::{log_dump, Controller, RunEnd};
use crate::machine::dump::PREFIX;

/// The signals that end the run.
const ENDING: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
/// The signal that asks for a dump.
const DUMP: libc::c_int = libc::SIGUSR1;

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill a sigset_t we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in ENDING.iter().chain(&[DUMP]) {
            libc::sigaddset(&mut s, *sig);
        }
        s
    }
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in this thread (and the threads it
/// makes from now on) and starts the thread that waits for them.
pub fn watch(ctl: &Arc<Controller>) {
    let s = set();
    // SAFETY: changes this thread's signal mask only.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if r != 0 {
        warn!(
            "cannot block SIGTERM/SIGINT/SIGHUP/SIGUSR1 ({}); they will end the process without a clean shutdown",
            std::io::Error::from_raw_os_error(r)
        );
        return;
    }
    let dumps = start_dumper(ctl);
    let me = ctl.clone();
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let s = set();
            let mut ending = false;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: waits for one of the blocked signals in `s`.
                if unsafe { libc::sigwait(&s, &mut sig) } != 0 {
                    continue;
                }
                if sig == DUMP {
                    match &dumps {
                        Some(tx) => {
                            let _ = tx.send(());
                        }
                        None => warn!("{PREFIX} none: the dump thread could not be started"),
                    }
                    continue;
                }
                let name = name(sig);
                if ending {
                    info!("{name}: the VM is already ending");
                    continue;
                }
                ending = true;
                info!("{name}: ending the VM");
                me.emit_last(
                    "SHUTDOWN",
                    Some(json!({"guest": false, "reason": "host-signal"})),
                );
                me.finish(RunEnd::Signal(name));
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the signal thread ({e}); SIGTERM/SIGINT/SIGHUP/SIGUSR1 stay blocked");
    }
}

/// The thread that takes dumps; several SIGUSR1 in a row make one.
fn start_dumper(ctl: &Arc<Controller>) -> Option<Sender<()>> {
    let (tx, rx) = mpsc::channel::<()>();
    let me = ctl.clone();
    let spawned = thread::Builder::new()
        .name("vcpu-dump".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                info!("SIGUSR1: dumping the vCPUs");
                match me.dump() {
                    Ok(d) => log_dump(&d),
                    Err(e) => warn!("{PREFIX} none: {e}"),
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            warn!("cannot start the dump thread ({e}); SIGUSR1 will be ignored");
            None
        }
    }
}
