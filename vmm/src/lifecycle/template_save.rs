//! Taking a template: wait until the guest is ready (a text on its serial
//! line, or a QMP `stop`), pause it, save it with its RAM left in the
//! shared file (x-ignore-shared), and end the process. A guest that does
//! not get ready in time, or ends first, makes no template.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info};

use super::{lock, Controller, RunEnd, RunState};
use crate::snapshot::save::{self, SaveOptions, SaveReport};
use crate::snapshot::uri::{Sink, StreamUri};

/// What says the guest is ready to be taken as a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ready {
    /// The guest printed this text on COM1.
    Serial(String),
    /// A QMP client paused the VM (`stop`).
    QmpStop,
}

/// How `vmm template create` asks `run` to take the template.
#[derive(Clone, Debug)]
pub struct TemplateSave {
    pub ready: Ready,
    pub timeout: Duration,
    /// Where the VM's state goes (the template's `state` file).
    pub state: PathBuf,
}

/// How taking the template ended.
#[derive(Clone, Debug)]
pub enum TemplateOutcome {
    Saved {
        report: SaveReport,
        /// From the start of the VM to the guest being ready.
        ready_after: Duration,
    },
    Failed(String),
}

/// Signals that the guest is ready; sent once by the serial watcher or QMP.
#[derive(Clone)]
pub struct ReadySignal(Arc<Mutex<Option<Sender<()>>>>);

impl ReadySignal {
    pub fn fire(&self) {
        if let Some(tx) = lock(&self.0).take() {
            let _ = tx.send(());
        }
    }
}

pub fn ready_channel() -> (ReadySignal, Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    (ReadySignal(Arc::new(Mutex::new(Some(tx)))), rx)
}

/// Waits for the guest in the background, then takes the template and
/// ends the run with the outcome.
pub fn start(ctl: &Arc<Controller>, t: TemplateSave, ready: Receiver<()>) {
    let me = ctl.clone();
    let spawned = thread::Builder::new()
        .name("template".into())
        .spawn(move || {
            let started = Instant::now();
            let outcome = match ready.recv_timeout(t.timeout) {
                Ok(()) => take(&me, &t, started.elapsed()),
                Err(RecvTimeoutError::Timeout) => TemplateOutcome::Failed(match &t.ready {
                    Ready::Serial(text) => format!(
                        "the guest did not print {text:?} on its serial line within {} s (--ready-timeout)",
                        t.timeout.as_secs_f64()
                    ),
                    Ready::QmpStop => format!(
                        "no QMP client paused the VM (stop) within {} s (--ready-timeout)",
                        t.timeout.as_secs_f64()
                    ),
                }),
                // The run ended first; its own reason stands.
                Err(RecvTimeoutError::Disconnected) => return,
            };
            me.finish(RunEnd::Template(outcome));
        });
    if let Err(e) = spawned {
        ctl.finish(RunEnd::Template(TemplateOutcome::Failed(format!(
            "starting the template thread: {e}"
        ))));
    }
}

fn take(ctl: &Controller, t: &TemplateSave, ready_after: Duration) -> TemplateOutcome {
    info!(
        "the guest is ready after {:.2} s; pausing it and saving the template state",
        ready_after.as_secs_f64()
    );
    match ctl.state() {
        RunState::Running => {
            if let Err(e) = ctl.stop() {
                return TemplateOutcome::Failed(format!("pausing the VM: {e}"));
            }
        }
        RunState::Paused => {}
        s => {
            return TemplateOutcome::Failed(format!(
                "the VM is {} and cannot be taken as a template",
                s.as_str()
            ))
        }
    }
    ctl.set_state(RunState::FinishMigrate);
    let uri = StreamUri::File(t.state.clone());
    let result = (|| {
        let sink = Sink::open(&uri)?;
        let g = lock(&ctl.machine);
        let Some(m) = g.as_ref() else {
            return Err(crate::snapshot::SnapshotError::Machine(
                crate::machine::MachineError::Ended("no VM".into()),
            ));
        };
        let opts = SaveOptions {
            ignore_shared: true,
            ..Default::default()
        };
        let (sink, report) = save::save(m, sink, true, opts)?;
        sink.commit()?;
        Ok(report)
    })();
    ctl.set_state(RunState::PostMigrate);
    match result {
        Ok(report) if report.ram_left_out => TemplateOutcome::Saved {
            report,
            ready_after,
        },
        Ok(_) => TemplateOutcome::Failed(
            "the guest RAM was written into the state file instead of staying in the RAM file"
                .into(),
        ),
        Err(e) => {
            error!("saving the template state: {e}");
            TemplateOutcome::Failed(format!("saving the template state: {e}"))
        }
    }
}
