//! How a running VM ends, and how the thread that noticed tells the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use log::debug;
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped. `vmm run` turns this into its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5 or a KVM shutdown system event).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register, i8042, triple fault).
    Reboot,
    /// The VM cannot go on: a KVM error or a state KVM could not run.
    Failed(String),
}

impl VmExit {
    /// Documented in `vmm run --help` and docs/usage.md.
    pub fn status(&self) -> u8 {
        match self {
            VmExit::PowerOff => 0,
            VmExit::Failed(_) => 1,
            VmExit::Reboot => 3,
        }
    }
}

/// Set once, by whichever vCPU or device sees the end first.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<VmExit>>,
    /// `reason` is set: read by every vCPU after every exit, without the lock.
    set: AtomicBool,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(libc::EFD_CLOEXEC)?,
            reason: Mutex::new(None),
            set: AtomicBool::new(false),
        })
    }

    pub fn signal(&self, why: VmExit) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            debug!("VM exit: {why:?}");
            *r = Some(why);
            self.set.store(true, Ordering::Release);
            // A full eventfd counter still leaves it readable, so the waiter wakes anyway.
            let _ = self.evt.write(1);
        }
    }

    /// Blocks until some thread signalled.
    pub fn wait(&self) -> VmExit {
        loop {
            if let Some(r) = self
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return r;
            }
            let _ = self.evt.read();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
}
