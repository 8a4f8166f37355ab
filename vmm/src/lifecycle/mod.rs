//! `vmm run` from start to end: boot or restore the VM, serve the control
//! socket, save and restore on request, and end the process when the guest
//! or a client ends the VM.
//!
//! Run states follow QEMU's names (query-status): `inmigrate` until an
//! incoming snapshot is restored, `running`, `paused`, `finish-migrate`
//! while a snapshot is written, `postmigrate` after it was written (the VM
//! stays stopped until `cont`), `shutdown` once the guest ended.

mod migration;
mod qmp;
mod signals;
mod template_save;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;

use log::{error, info, warn};
use serde_json::{json, Value};

use crate::config::VmConfig;
use crate::control::{EventSender, QmpListen, QmpServer};
use crate::exit::{ExitSignal, VmExit};
use crate::machine::build::Prepared;
use crate::machine::dump::VmDump;
use crate::machine::{self, Machine, MachineError};
use crate::platform::serial_watch::SerialWatch;
use crate::snapshot::uri::StreamUri;

pub use migration::{MigrationInfo, MigrationStatus};
pub use template_save::{Ready, TemplateOutcome, TemplateSave};

/// Where the VM comes from when it is not booted.
#[derive(Clone, Debug)]
pub enum Incoming {
    /// Wait for QMP migrate-incoming.
    Defer,
    Uri(StreamUri),
}

impl Incoming {
    pub fn parse(s: &str) -> Result<Incoming, String> {
        if s == "defer" {
            return Ok(Incoming::Defer);
        }
        StreamUri::parse(s)
            .map(Incoming::Uri)
            .map_err(|e| format!("--incoming {s}: {e}; use defer, file:PATH or exec:CMD"))
    }
}

pub struct RunOptions {
    /// -S: the vCPUs wait for `cont`.
    pub start_paused: bool,
    pub incoming: Option<Incoming>,
    pub qmp: Option<QmpListen>,
    /// Boot, wait until the guest is ready, save it as a template and end.
    pub template: Option<TemplateSave>,
}

/// Why an incoming snapshot given on the command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncomingRefusal {
    /// The command line differs from the saved VM.
    Config,
    /// The RAM policy refused what the saved devices need.
    Policy,
    /// The stream is unreadable, or building the VM failed.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    InMigrate,
    Running,
    Paused,
    FinishMigrate,
    PostMigrate,
    Shutdown,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::InMigrate => "inmigrate",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::FinishMigrate => "finish-migrate",
            RunState::PostMigrate => "postmigrate",
            RunState::Shutdown => "shutdown",
        }
    }
}

/// How the process ends.
#[derive(Clone, Debug)]
pub enum RunEnd {
    Vm(VmExit),
    /// QMP quit.
    Quit,
    /// The incoming snapshot given on the command line was refused.
    IncomingFailed {
        reason: String,
        why: IncomingRefusal,
    },
    /// `vmm template create`: the template was taken, or not.
    Template(TemplateOutcome),
    /// SIGTERM or SIGINT (as QMP quit).
    Signal(&'static str),
}

/// The VM and everything about it that control commands read or change.
pub struct Controller {
    cfg: Mutex<VmConfig>,
    /// -S, or `stop` while in `inmigrate`: a restored VM stays paused.
    autostart: Mutex<bool>,
    machine: Mutex<Option<Machine>>,
    /// RAM and a VM made while waiting in `-incoming defer`.
    prepared: Mutex<Option<thread::JoinHandle<Option<Prepared>>>>,
    state: Mutex<RunState>,
    migration: Mutex<MigrationInfo>,
    events: OnceLock<EventSender>,
    /// Template creation with `--ready qmp`: a `stop` says the guest is ready.
    ready_on_stop: OnceLock<template_save::ReadySignal>,
    /// Wakes `run` when the process must end; `end_reason` says why (the
    /// signal's own VmExit is not used: a QMP quit is no VM exit).
    end: ExitSignal,
    end_reason: Mutex<Option<RunEnd>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    fn new(cfg: VmConfig, start_paused: bool, state: RunState) -> std::io::Result<Controller> {
        Ok(Controller {
            cfg: Mutex::new(cfg),
            autostart: Mutex::new(!start_paused),
            machine: Mutex::new(None),
            prepared: Mutex::new(None),
            state: Mutex::new(state),
            migration: Mutex::new(MigrationInfo::default()),
            events: OnceLock::new(),
            ready_on_stop: OnceLock::new(),
            end: ExitSignal::new()?,
            end_reason: Mutex::new(None),
        })
    }

    pub fn state(&self) -> RunState {
        *lock(&self.state)
    }

    fn set_state(&self, s: RunState) {
        *lock(&self.state) = s;
    }

    pub fn emit(&self, event: &str, data: Option<Value>) {
        if let Some(e) = self.events.get() {
            e.emit(event, data);
        }
    }

    /// The last event before the process ends: waits until it is written.
    pub fn emit_last(&self, event: &str, data: Option<Value>) {
        if let Some(e) = self.events.get() {
            e.emit_and_flush(event, data, std::time::Duration::from_secs(1));
        }
    }

    /// Ends the process with `why` (the first reason wins).
    pub fn finish(&self, why: RunEnd) {
        let mut r = lock(&self.end_reason);
        if r.is_none() {
            *r = Some(why);
            self.end.signal(VmExit::PowerOff);
        }
    }

    /// Installs a built or restored VM and watches for its end.
    fn install(self: &Arc<Self>, m: Machine) {
        let exit = m.exit.clone();
        *lock(&self.machine) = Some(m);
        qmp::watch_devices(self);
        let me = self.clone();
        let spawned = thread::Builder::new()
            .name("vm-watch".into())
            .spawn(move || {
                let why = exit.wait();
                me.on_vm_end(why);
            });
        if let Err(e) = spawned {
            error!("cannot watch the VM for its end: {e}");
            self.finish(RunEnd::Vm(VmExit::Failed(format!(
                "starting the VM watcher thread failed: {e}"
            ))));
        }
    }

    /// The guest ended the VM (power-off, reset, failure). After a triple
    /// fault (a reset nobody asked for) or a failure (a KVM internal
    /// error, say) the log gets the dump of every vCPU.
    fn on_vm_end(&self, why: VmExit) {
        if let Some(m) = lock(&self.machine).as_ref() {
            if m.vcpus.triple_faulted().is_some() || matches!(why, VmExit::Failed(_)) {
                log_dump(&m.dump(RunState::Shutdown.as_str()));
            }
            m.shut_down();
        }
        self.set_state(RunState::Shutdown);
        let reason = match &why {
            VmExit::PowerOff => "guest-shutdown",
            VmExit::Reboot => "guest-reset",
            VmExit::Failed(_) => "guest-panic",
        };
        self.emit_last("SHUTDOWN", Some(json!({"guest": true, "reason": reason})));
        self.finish(RunEnd::Vm(why));
    }

    /// Every vCPU's state and COM1's last output (see
    /// [`machine::dump`]); an error when there is no VM yet (inmigrate).
    pub fn dump(&self) -> Result<VmDump, String> {
        let status = self.state();
        self.with_machine(|m| Ok(m.dump(status.as_str())))
    }

    /// Runs `f` on the VM; an error when there is none yet (inmigrate).
    pub fn with_machine<T>(
        &self,
        f: impl FnOnce(&mut Machine) -> Result<T, MachineError>,
    ) -> Result<T, String> {
        let mut g = lock(&self.machine);
        match g.as_mut() {
            Some(m) => f(m).map_err(|e| e.to_string()),
            None => Err("the VM is waiting for an incoming migration (migrate-incoming)".into()),
        }
    }

    /// Starts making RAM and the KVM VM from the command line in the
    /// background, for the incoming snapshot to use.
    fn start_preparing(&self) {
        let cfg = lock(&self.cfg).clone();
        let spawned = thread::Builder::new()
            .name("prepare".into())
            .spawn(move || match machine::build::prepare(&cfg) {
                Ok(p) => Some(p),
                Err(e) => {
                    // The restore will build them itself and report the error.
                    warn!("preparing the VM before the incoming migration failed: {e}");
                    None
                }
            });
        match spawned {
            Ok(h) => *lock(&self.prepared) = Some(h),
            Err(e) => warn!("cannot prepare the VM in the background: {e}"),
        }
    }

    /// What `start_preparing` made, once; None after the first call.
    pub fn take_prepared(&self) -> Option<Prepared> {
        let h = lock(&self.prepared).take()?;
        h.join().ok().flatten()
    }

    /// Pauses a running VM (QMP stop): STOP once the vCPUs are parked.
    pub fn stop(&self) -> Result<(), String> {
        match self.state() {
            RunState::InMigrate => {
                // As QEMU: the VM will stay paused once restored.
                *lock(&self.autostart) = false;
                return Ok(());
            }
            RunState::Running => {}
            _ => return Ok(()),
        }
        self.with_machine(|m| m.pause())?;
        self.set_state(RunState::Paused);
        self.emit("STOP", None);
        if let Some(r) = self.ready_on_stop.get() {
            r.fire();
        }
        Ok(())
    }

    /// Resumes (QMP cont): RESUME once the vCPUs run.
    pub fn cont(&self) -> Result<(), String> {
        match self.state() {
            RunState::InMigrate => {
                *lock(&self.autostart) = true;
                return Ok(());
            }
            RunState::Running => return Ok(()),
            RunState::FinishMigrate => {
                return Err("a migration is writing the VM's state; wait for it to complete".into())
            }
            RunState::Shutdown => {
                return Err("the guest has shut down; the VM cannot resume".into())
            }
            RunState::Paused => {}
            RunState::PostMigrate => {
                if lock(&self.migration).mode == crate::control::MigMode::CprReboot {
                    warn!("cont after a cpr-reboot checkpoint: the guest may now write its disks, and a restore of that checkpoint refuses every disk changed since");
                }
                if lock(&self.migration).ignore_shared
                    && crate::snapshot::save::shared_ram_file(&lock(&self.cfg)).is_some()
                {
                    // The snapshot left RAM in the file, which the guest
                    // now changes: restoring that snapshot afterwards
                    // would pair its vCPU state with newer memory.
                    warn!("cont after a save with x-ignore-shared: the guest now writes the RAM file the snapshot relies on, so that snapshot can no longer be restored correctly");
                }
            }
        }
        self.with_machine(|m| m.resume())?;
        self.set_state(RunState::Running);
        self.emit("RESUME", None);
        Ok(())
    }
}

/// Writes a dump to the log, one warning per line.
pub fn log_dump(d: &VmDump) {
    for line in d.lines() {
        warn!("{line}");
    }
}

/// Builds the VM as `opts` says, serves QMP, and waits for the end.
/// Whatever ended it, a terminal on stdin gets its settings back.
pub fn run(cfg: VmConfig, opts: RunOptions) -> Result<RunEnd, MachineError> {
    let end = run_vm(cfg, opts);
    crate::platform::terminal::restore();
    end
}

fn run_vm(cfg: VmConfig, opts: RunOptions) -> Result<RunEnd, MachineError> {
    let initial = if opts.incoming.is_some() {
        RunState::InMigrate
    } else if opts.start_paused {
        RunState::Paused
    } else {
        RunState::Running
    };
    let ctl = Arc::new(
        Controller::new(cfg.clone(), opts.start_paused, initial).map_err(|source| {
            MachineError::Host {
                what: "creating the end-of-run eventfd",
                source,
            }
        })?,
    );
    signals::watch(&ctl);
    // The socket is bound before the guest runs, so that a path in use is
    // refused before anything starts and a client that connects as soon
    // as the process is up waits in the backlog instead of failing. It is
    // served once there is a VM to command: a booted VM's once the VM
    // exists, an incoming one's at once, for migrate-incoming.
    let mut bound = opts
        .qmp
        .map(QmpServer::bind)
        .transpose()
        .map_err(|e| MachineError::Host {
            what: "binding the QMP socket",
            source: std::io::Error::other(e.to_string()),
        })?;
    let mut serve_qmp = || -> Result<(), MachineError> {
        if let Some(b) = bound.take() {
            let handler = qmp::Handler(ctl.clone());
            let (events, _thread) = b.serve(Arc::new(handler)).map_err(|e| MachineError::Host {
                what: "starting the QMP socket",
                source: std::io::Error::other(e.to_string()),
            })?;
            let _ = ctl.events.set(events);
        }
        Ok(())
    };
    if opts.incoming.is_some() {
        serve_qmp()?;
    }
    match opts.incoming {
        None => {
            let watch = opts.template.map(|t| {
                let (signal, rx) = template_save::ready_channel();
                let watch = match &t.ready {
                    Ready::Serial(text) => Some(SerialWatch {
                        text: text.as_bytes().to_vec(),
                        on_match: Box::new(move || signal.fire()),
                    }),
                    Ready::QmpStop => {
                        let _ = ctl.ready_on_stop.set(signal);
                        None
                    }
                };
                template_save::start(&ctl, t, rx);
                watch
            });
            let m = machine::boot(&cfg, opts.start_paused, watch.flatten())?;
            ctl.install(m);
            serve_qmp()?;
        }
        Some(Incoming::Defer) => {
            ctl.start_preparing();
            info!("waiting for an incoming migration (QMP migrate-incoming)")
        }
        Some(Incoming::Uri(uri)) => {
            if let Err((reason, why)) = migration::incoming(&ctl, &uri) {
                return Ok(RunEnd::IncomingFailed { reason, why });
            }
        }
    }
    ctl.end.wait();
    let why = lock(&ctl.end_reason)
        .clone()
        .unwrap_or(RunEnd::Vm(VmExit::PowerOff));
    if let Some(m) = lock(&ctl.machine).as_ref() {
        m.shut_down();
    }
    if let RunEnd::Vm(VmExit::Failed(msg)) = &why {
        warn!("the VM failed: {msg}");
    }
    Ok(why)
}
