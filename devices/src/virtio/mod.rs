//! Virtio 1.x device models, independent of the transport that carries them.
//!
//! A transport (virtio-mmio in the VMM) drives a device through
//! [`VirtioDevice`]: it reads and writes the common state (features, status,
//! queue configuration) held in [`VirtioCommon`], forwards config-space
//! accesses and queue notifications, and delivers interrupts through the
//! [`VirtioInterrupt`] it installs.

pub mod balloon;
pub mod block;
pub mod chain;
mod common;
pub mod counter;
mod interrupt;
pub mod mem;
pub mod net;
pub mod persist;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use common::{ring_placement_fault, ActivateError, QueueFault, Ring, VirtioCommon};
pub use interrupt::{InterruptKind, VirtioInterrupt};

use virtio_bindings::virtio_config;
use virtio_bindings::virtio_ring;

pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;

pub const STATUS_ACKNOWLEDGE: u8 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
pub const STATUS_DRIVER: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER as u8;
pub const STATUS_FEATURES_OK: u8 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub const STATUS_DRIVER_OK: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub const STATUS_NEEDS_RESET: u8 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
pub const STATUS_FAILED: u8 = virtio_config::VIRTIO_CONFIG_S_FAILED as u8;

/// Device type ids (virtio spec 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_MEM: u32 = 24;

/// A virtio device model. Every method must cope with any guest input: a
/// bad request becomes an error status or a logged, skipped chain.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32 {
        self.common().device_type
    }

    fn common(&self) -> &VirtioCommon;
    fn common_mut(&mut self) -> &mut VirtioCommon;

    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set DRIVER_OK: queues are configured and may be used.
    fn activate(&mut self) -> Result<(), ActivateError>;

    /// The driver notified queue `index`. Processes every available chain.
    fn queue_notify(&mut self, index: u16);

    /// The driver wrote 0 to the status register: forget queues and
    /// negotiated state, keep the configuration the VMM gave.
    fn reset(&mut self);
}

/// Copies `src` (a config-space image) at `offset` into `data`; out-of-range bytes read as zero.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - off);
    data[..n].copy_from_slice(&src[off..off + n]);
}
