//! How the guest reaches devices: the virtio-mmio transport.

pub mod interrupt;
pub mod mmio;

pub use interrupt::{MmioInterrupt, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
pub use mmio::{MmioTransport, NOTIFY_OFFSET};
