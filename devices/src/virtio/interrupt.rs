use std::io;

/// Why the device interrupts the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were used in this queue.
    Queue(u16),
    /// The configuration space changed.
    Config,
}

/// How a device raises an interrupt; the transport supplies it (an irqfd
/// plus the interrupt-status register for virtio-mmio).
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
}
