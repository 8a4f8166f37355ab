//! The virtio-mmio interrupt: an InterruptStatus register shared with the
//! transport, and an EventFd the VMM registers as a KVM irqfd.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use devices::virtio::{InterruptKind, VirtioInterrupt};
use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit 0: the device used buffers in at least one queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 1 << 0;
/// InterruptStatus bit 1: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 1 << 1;
/// Every bit of InterruptStatus the spec defines.
pub const VIRTIO_MMIO_INT_ALL: u32 = VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG;

/// What a device raises its interrupts through.
///
/// It takes no lock: devices trigger it while the event loop or a vCPU holds
/// the device lock, and the transport's own lock may be held by another vCPU
/// waiting for that same device lock.
pub struct MmioInterrupt {
    status: AtomicU32,
    irq_evt: EventFd,
}

impl MmioInterrupt {
    pub fn new(irq_evt: EventFd) -> Self {
        MmioInterrupt {
            status: AtomicU32::new(0),
            irq_evt,
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver handled the causes in `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: pending causes belong to the state the driver dropped.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Sets `bits` of InterruptStatus and signals the irqfd.
    pub fn raise(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irq_evt.write(1)
    }

    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue(_) => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        };
        // The bit must be visible before the guest's handler can run and read it.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq_evt.write(1)
    }
}
