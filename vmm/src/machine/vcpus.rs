//! The vCPU threads as the VM object sees them: start, pause, resume,
//! save, each vCPU answering on a shared reply channel.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::bus::Bus;
use crate::exit::{ExitSignal, VmExit};
use crate::vstate::vcpu::{kick_signal, VcpuReply, VcpuRequest, VcpuThreadControl};
use crate::vstate::vcpu_state::StateLayout;
use crate::vstate::{Vcpu, VcpuDump, VcpuState};

use super::MachineError;

/// A vCPU halted in the guest leaves KVM_RUN within microseconds of its
/// kick; this bounds a vCPU stuck in the host kernel.
const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a diagnostic dump waits for each vCPU: a vCPU that does not
/// answer by then is stuck in the host kernel, which the dump then says.
const VCPU_DUMP_TIMEOUT: Duration = Duration::from_secs(2);

struct VcpuHandle {
    index: u8,
    requests: Sender<VcpuRequest>,
    pending: Arc<AtomicBool>,
    tid: Arc<AtomicI32>,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    fn send(&self, r: VcpuRequest) -> bool {
        if self.requests.send(r).is_err() {
            return false;
        }
        self.pending.store(true, Ordering::Release);
        // SAFETY: the thread is not joined while its handle exists, so the
        // pthread_t is valid; the kick handler was installed before it started.
        unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
        true
    }
}

/// All vCPU threads of one VM.
pub struct Vcpus {
    handles: Vec<VcpuHandle>,
    replies: Receiver<(u8, VcpuReply)>,
    /// The first vCPU that triple-faulted, -1 while none has.
    triple_fault: Arc<AtomicI32>,
}

/// One vCPU as query-cpus-fast reports it.
pub struct VcpuInfo {
    pub index: u8,
    pub thread_id: i32,
}

impl Vcpus {
    /// Starts one thread per vCPU; with `paused` they park before their
    /// first KVM_RUN until [`Vcpus::resume`].
    pub fn start(
        vcpus: Vec<Vcpu>,
        layout: Arc<StateLayout>,
        paused: bool,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
    ) -> Result<Vcpus, MachineError> {
        crate::vstate::vcpu::install_kick_handler().map_err(|source| MachineError::Host {
            what: "installing the vCPU kick signal handler",
            source,
        })?;
        let (reply_tx, replies) = mpsc::channel();
        let triple_fault = Arc::new(AtomicI32::new(-1));
        let mut handles = Vec::with_capacity(vcpus.len());
        for (i, vcpu) in vcpus.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let pending = Arc::new(AtomicBool::new(false));
            let tid = Arc::new(AtomicI32::new(0));
            let ctl = VcpuThreadControl {
                requests: rx,
                pending: pending.clone(),
                replies: reply_tx.clone(),
                tid: tid.clone(),
                layout: layout.clone(),
                start_paused: paused,
                triple_fault: triple_fault.clone(),
            };
            let (pio, mmio, exit) = (pio.clone(), mmio.clone(), exit.clone());
            let thread = thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || {
                    let e = exit.clone();
                    super::guarded("a vCPU thread", &e, move || vcpu.run(ctl, pio, mmio, exit))
                })
                .map_err(|source| MachineError::Host {
                    what: "starting a vCPU thread",
                    source,
                })?;
            handles.push(VcpuHandle {
                index: i as u8,
                requests: tx,
                pending,
                tid,
                thread,
            });
        }
        Ok(Vcpus {
            handles,
            replies,
            triple_fault,
        })
    }

    fn all(&self, make: impl Fn() -> VcpuRequest, want: VcpuReply) -> Result<(), MachineError> {
        // Replies left from an earlier request that timed out are stale.
        while self.replies.try_recv().is_ok() {}
        let mut waiting: Vec<u8> = Vec::new();
        for h in &self.handles {
            if h.send(make()) {
                waiting.push(h.index);
            }
        }
        let deadline = Instant::now() + VCPU_ACK_TIMEOUT;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok((i, r)) if r == want => waiting.retain(|&w| w != i),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(MachineError::Vcpus(format!(
                        "vCPU(s) {waiting:?} did not answer {want:?} within {} s",
                        VCPU_ACK_TIMEOUT.as_secs()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(MachineError::Vcpus("the vCPU threads have ended".into()))
                }
            }
        }
        Ok(())
    }

    /// Returns once every vCPU is out of KVM_RUN and parked.
    pub fn pause(&self) -> Result<(), MachineError> {
        self.all(|| VcpuRequest::Pause, VcpuReply::Paused)
    }

    pub fn resume(&self) -> Result<(), MachineError> {
        self.all(|| VcpuRequest::Resume, VcpuReply::Resumed)
    }

    /// Every vCPU's state, in index order; they must be paused.
    pub fn save(&self) -> Result<Vec<VcpuState>, MachineError> {
        let mut states = Vec::with_capacity(self.handles.len());
        for h in &self.handles {
            let (tx, rx) = mpsc::channel();
            if !h.send(VcpuRequest::Save(tx)) {
                return Err(MachineError::Vcpus(format!(
                    "vCPU {} has ended; its state cannot be saved",
                    h.index
                )));
            }
            let state = rx
                .recv_timeout(VCPU_ACK_TIMEOUT)
                .map_err(|_| {
                    MachineError::Vcpus(format!("vCPU {} did not hand over its state", h.index))
                })?
                .map_err(MachineError::VcpuState)?;
            states.push(state);
        }
        Ok(states)
    }

    /// What each vCPU is doing, in index order, read by its own thread
    /// between two KVM_RUNs (parked or not); a vCPU that does not answer
    /// within [`VCPU_DUMP_TIMEOUT`] gets an error saying so.
    pub fn dump(&self) -> Vec<(u8, Result<VcpuDump, String>)> {
        let asked: Vec<_> = self
            .handles
            .iter()
            .map(|h| {
                let (tx, rx) = mpsc::channel();
                (h.index, h.send(VcpuRequest::Dump(tx)).then_some(rx))
            })
            .collect();
        let deadline = Instant::now() + VCPU_DUMP_TIMEOUT;
        asked
            .into_iter()
            .map(|(index, rx)| {
                let r = match rx {
                    None => Err("its thread has ended".to_string()),
                    Some(rx) => {
                        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(RecvTimeoutError::Timeout) => Err(format!(
                            "did not answer within {} s (stuck in KVM_RUN or in the host kernel)",
                            VCPU_DUMP_TIMEOUT.as_secs()
                        )),
                            Err(RecvTimeoutError::Disconnected) => {
                                Err("its thread ended before it answered".to_string())
                            }
                        }
                    }
                };
                (index, r)
            })
            .collect()
    }

    /// The first vCPU that triple-faulted, if one did.
    pub fn triple_faulted(&self) -> Option<u8> {
        u8::try_from(self.triple_fault.load(Ordering::Acquire)).ok()
    }

    pub fn info(&self) -> Vec<VcpuInfo> {
        self.handles
            .iter()
            .map(|h| VcpuInfo {
                index: h.index,
                thread_id: h.tid.load(Ordering::Acquire),
            })
            .collect()
    }
}

/// Why the VM ended, if it has; callers check it before pausing or
/// resuming a VM whose vCPUs no longer answer.
pub fn ended(exit: &ExitSignal) -> Option<VmExit> {
    exit.is_set().then(|| exit.wait())
}
