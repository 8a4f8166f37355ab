//! Outgoing and incoming migrations (QEMU's names for saving the VM to a
//! stream and restoring it from one), with the status query-migrate and
//! the MIGRATION event report.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use log::{error, info, warn};
use serde_json::{json, Value};

use super::{lock, Controller, IncomingRefusal, RunState};
use crate::control::MigMode;
use crate::snapshot::save::{self, SaveOptions};
use crate::snapshot::uri::{Sink, Source, StreamUri};
use crate::snapshot::{restore, room, SnapshotError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationStatus {
    None,
    Setup,
    Active,
    Completed,
    Failed,
}

impl MigrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::None => "none",
            MigrationStatus::Setup => "setup",
            MigrationStatus::Active => "active",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
        }
    }
}

/// What query-migrate reports, and the capabilities that shape the next one.
#[derive(Clone, Debug)]
pub struct MigrationInfo {
    pub status: MigrationStatus,
    pub started: Option<Instant>,
    pub total_ms: u64,
    pub bytes: u64,
    pub ram_pages: u64,
    pub error: Option<String>,
    pub ignore_shared: bool,
    pub events: bool,
    /// migrate-set-parameters mode: cpr-reboot makes the next migrate a
    /// checkpoint for a restart of vmm (docs/cpr.md).
    pub mode: MigMode,
    pub other_params: serde_json::Map<String, Value>,
}

impl Default for MigrationInfo {
    fn default() -> Self {
        MigrationInfo {
            status: MigrationStatus::None,
            started: None,
            total_ms: 0,
            bytes: 0,
            ram_pages: 0,
            error: None,
            ignore_shared: false,
            events: false,
            mode: MigMode::Normal,
            other_params: serde_json::Map::new(),
        }
    }
}

impl MigrationInfo {
    /// query-migrate's reply, with integer fields as clients decode them.
    pub fn to_value(&self) -> Value {
        if self.status == MigrationStatus::None {
            return json!({});
        }
        let mut v = json!({ "status": self.status.as_str() });
        let total = match (self.status, self.started) {
            (MigrationStatus::Setup | MigrationStatus::Active, Some(t)) => {
                t.elapsed().as_millis() as u64
            }
            _ => self.total_ms,
        };
        v["total-time"] = json!(total);
        if matches!(
            self.status,
            MigrationStatus::Active | MigrationStatus::Completed
        ) {
            v["ram"] = json!({
                "transferred": self.bytes,
                "total": self.bytes,
                "remaining": 0,
                "duplicate": 0,
                "normal": self.ram_pages,
                "normal-bytes": self.ram_pages * 4096,
                "dirty-sync-count": 1,
                "mbps": 0,
                "pages-per-second": 0,
            });
            v["downtime"] = json!(total);
        }
        if let Some(e) = &self.error {
            v["error-desc"] = json!(e);
        }
        v
    }
}

fn set_status(ctl: &Controller, status: MigrationStatus) {
    let events = {
        let mut m = lock(&ctl.migration);
        m.status = status;
        match status {
            MigrationStatus::Setup => {
                m.started = Some(Instant::now());
                m.error = None;
                m.bytes = 0;
                m.ram_pages = 0;
            }
            MigrationStatus::Completed | MigrationStatus::Failed => {
                m.total_ms = m.started.map_or(0, |t| t.elapsed().as_millis() as u64);
            }
            _ => {}
        }
        m.events
    };
    if events {
        ctl.emit("MIGRATION", Some(json!({ "status": status.as_str() })));
    }
}

fn fail(ctl: &Controller, reason: String) {
    error!("migration failed: {reason}");
    record_failure(ctl, reason);
}

/// The failure for query-migrate and the MIGRATION event, not logged:
/// whoever started the migration reports it.
fn record_failure(ctl: &Controller, reason: String) {
    lock(&ctl.migration).error = Some(reason);
    set_status(ctl, MigrationStatus::Failed);
}

/// Starts saving the VM to `uri` in the background (QMP migrate).
pub fn start_outgoing(ctl: &Arc<Controller>, uri: StreamUri) -> Result<(), String> {
    match ctl.state() {
        RunState::InMigrate => {
            return Err("the VM has not been restored yet; it has nothing to migrate".into())
        }
        RunState::Shutdown => return Err("the guest has shut down".into()),
        RunState::FinishMigrate => return Err("a migration is already in progress".into()),
        _ => {}
    }
    if matches!(
        lock(&ctl.migration).status,
        MigrationStatus::Setup | MigrationStatus::Active
    ) {
        return Err("a migration is already in progress".into());
    }
    check_target(ctl, &uri)?;
    set_status(ctl, MigrationStatus::Setup);
    let me = ctl.clone();
    thread::Builder::new()
        .name("migrate".into())
        .spawn(move || outgoing(&me, &uri))
        .map_err(|e| format!("starting the migration thread: {e}"))?;
    Ok(())
}

/// What is checked before the VM is stopped, so that a refusal leaves it
/// running (no STOP): in mode cpr-reboot the target must be a `file:`
/// with room for the RAM the checkpoint writes; in mode normal a target
/// that may be too small is only reported (all-zero pages are not written,
/// and a failed save resumes the VM).
fn check_target(ctl: &Controller, uri: &StreamUri) -> Result<(), String> {
    let vhost_user = ctl.with_machine(|m| Ok(m.vhost_user_devices()))?;
    if let Some(name) = vhost_user.first() {
        return Err(crate::snapshot::SnapshotError::NotSaveable(name.clone()).to_string());
    }
    let (mode, ignore_shared) = {
        let m = lock(&ctl.migration);
        (m.mode, m.ignore_shared)
    };
    let cpr = mode == MigMode::CprReboot;
    let path = match uri {
        StreamUri::File(p) => p,
        StreamUri::Exec(cmd) if cpr => {
            return Err(format!(
                "migration mode cpr-reboot needs a file:PATH target, not exec:{cmd}: the \
                 checkpoint is read back by a vmm started after this one quit, and only a file \
                 can be checked for room beforehand; migrate to file:PATH, or set mode normal \
                 (migrate-set-parameters) to save through a command"
            ))
        }
        StreamUri::Exec(_) => return Ok(()),
    };
    let need = ctl.with_machine(|m| Ok(room::Needed::of(m, ignore_shared)))?;
    if cpr {
        if need.boot_ram == 0 {
            let cfg = lock(&ctl.cfg);
            if let Some(ram) = save::shared_ram_file(&cfg) {
                match room::volatile_fs(ram) {
                    Some(fs) => warn!("cpr-reboot: guest RAM stays in {}, which is on {fs}: the checkpoint survives a restart of vmm, not a reboot of the host", ram.display()),
                    None => info!("cpr-reboot: guest RAM stays in place in {} (x-ignore-shared)", ram.display()),
                }
            }
        } else if let Some(ram) = &need.shared_file_copied {
            info!("cpr-reboot: guest RAM is in the share=on file {} but x-ignore-shared is off, so it is copied into the checkpoint", ram.display());
        }
        room::check(path, &need).map_err(|e| format!("migration mode cpr-reboot: {e}"))
    } else {
        if let Err(e) = room::check(path, &need) {
            warn!("{e} (the save goes ahead: all-zero pages are not written)");
        }
        Ok(())
    }
}

fn outgoing(ctl: &Controller, uri: &StreamUri) {
    let was = ctl.state();
    let was_running = was == RunState::Running;
    let opts = {
        let m = lock(&ctl.migration);
        SaveOptions {
            ignore_shared: m.ignore_shared,
            cpr: m.mode == MigMode::CprReboot,
        }
    };
    let sink = match Sink::open(uri) {
        Ok(s) => s,
        Err(e) => return fail(ctl, e.to_string()),
    };
    set_status(ctl, MigrationStatus::Active);
    if was_running {
        if let Err(e) = ctl.with_machine(|m| m.pause()) {
            return fail(ctl, e);
        }
        ctl.emit("STOP", None);
    }
    ctl.set_state(RunState::FinishMigrate);
    let result = {
        let g = lock(&ctl.machine);
        match g.as_ref() {
            Some(m) => save::save(m, sink, was_running, opts),
            None => Err(SnapshotError::Machine(crate::machine::MachineError::Ended(
                "no VM".into(),
            ))),
        }
    };
    let result = result.and_then(|(sink, report)| {
        sink.commit()?;
        Ok(report)
    });
    match result {
        Ok(report) => {
            {
                let mut m = lock(&ctl.migration);
                m.bytes = report.bytes;
                m.ram_pages = report.ram.pages_written;
            }
            ctl.set_state(RunState::PostMigrate);
            info!("migration to {uri} completed: {} bytes", report.bytes);
            set_status(ctl, MigrationStatus::Completed);
        }
        Err(e) => {
            // As QEMU: a failed migration leaves the VM as it was.
            ctl.set_state(if was_running { RunState::Paused } else { was });
            if was_running {
                match ctl.with_machine(|m| m.resume()) {
                    Ok(()) => {
                        ctl.set_state(RunState::Running);
                        ctl.emit("RESUME", None);
                    }
                    Err(r) => error!("resuming after the failed migration: {r}"),
                }
            }
            fail(ctl, e.to_string());
        }
    }
}

/// Restores the VM from `uri` (--incoming, or QMP migrate-incoming in the
/// background). On failure the process stays in `inmigrate` and can take
/// another migrate-incoming; the reason is in query-migrate.
pub fn incoming(ctl: &Arc<Controller>, uri: &StreamUri) -> Result<(), (String, IncomingRefusal)> {
    if ctl.state() != RunState::InMigrate {
        return Err((
            "the VM is not waiting for an incoming migration".into(),
            IncomingRefusal::Failed,
        ));
    }
    set_status(ctl, MigrationStatus::Setup);
    let result = (|| -> Result<_, SnapshotError> {
        let source = Source::open(uri)?;
        set_status(ctl, MigrationStatus::Active);
        let mut cfg = lock(&ctl.cfg).clone();
        let mut source = source;
        let prepared = ctl.take_prepared();
        let restored = restore::restore(&mut cfg, &mut source, prepared)?;
        source.finish()?;
        Ok(restored)
    })();
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            record_failure(ctl, msg.clone());
            let why = match e {
                SnapshotError::ConfigMismatch(_) => IncomingRefusal::Config,
                SnapshotError::Machine(crate::machine::MachineError::Policy(_)) => {
                    IncomingRefusal::Policy
                }
                _ => IncomingRefusal::Failed,
            };
            return Err((msg, why));
        }
    };
    let run = restored.saved_running && *lock(&ctl.autostart);
    ctl.install(restored.machine);
    // The run state goes straight from inmigrate to running (or paused),
    // as in QEMU: a client polling query-status never sees a stop between.
    if run {
        if let Err(e) = ctl.with_machine(|m| m.resume()) {
            ctl.set_state(RunState::Paused);
            set_status(ctl, MigrationStatus::Completed);
            return Err((
                format!("the restored VM could not be resumed: {e}"),
                IncomingRefusal::Failed,
            ));
        }
        ctl.set_state(RunState::Running);
        ctl.emit("RESUME", None);
    } else {
        ctl.set_state(RunState::Paused);
    }
    set_status(ctl, MigrationStatus::Completed);
    info!(
        "incoming migration from {uri} completed; the VM is {}",
        ctl.state().as_str()
    );
    Ok(())
}

/// QMP migrate-incoming: restores in the background.
pub fn start_incoming(ctl: &Arc<Controller>, uri: StreamUri) -> Result<(), String> {
    if ctl.state() != RunState::InMigrate {
        return Err("The incoming migration has already been started; migrate-incoming works only in state inmigrate (-incoming defer)".into());
    }
    if matches!(
        lock(&ctl.migration).status,
        MigrationStatus::Setup | MigrationStatus::Active
    ) {
        return Err("an incoming migration is already in progress".into());
    }
    // Before the reply: a query-migrate right after it sees the migration.
    set_status(ctl, MigrationStatus::Setup);
    let me = ctl.clone();
    thread::Builder::new()
        .name("migrate-in".into())
        .spawn(move || {
            if let Err((reason, _)) = incoming(&me, &uri) {
                error!("incoming migration failed: {reason}");
            }
        })
        .map_err(|e| format!("starting the migration thread: {e}"))?;
    Ok(())
}
