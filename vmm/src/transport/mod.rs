//! How the guest reaches devices: the virtio-mmio transport.

pub mod mmio;
