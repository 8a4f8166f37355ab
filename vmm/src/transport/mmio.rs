//! The virtio-mmio (version 2) transport.
