//! State every virtio device shares: features, status, queues, interrupt.

use std::sync::Arc;

use log::{error, warn};
use thiserror::Error;
use virtio_queue::{Queue, QueueT};

use super::{
    InterruptKind, VirtioInterrupt, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::ram::GuestRam;

#[derive(Debug, Error)]
pub enum ActivateError {
    #[error("queue {index} is not usable: its size or ring addresses lie outside guest RAM")]
    InvalidQueue { index: usize },
    #[error("the driver did not accept VIRTIO_F_VERSION_1; legacy drivers are not supported")]
    Legacy,
    #[error("no interrupt was installed before activation")]
    NoInterrupt,
    #[error("{0}")]
    Device(String),
}

/// The transport-independent part of a virtio device.
pub struct VirtioCommon {
    pub device_type: u32,
    /// Features this device offers.
    pub avail_features: u64,
    /// Features the driver accepted (a subset of `avail_features`).
    pub acked_features: u64,
    /// Bits the driver's last write of each features page set although the
    /// device never offered them. They are kept out of `acked_features`,
    /// and while any remain the device refuses FEATURES_OK (virtio 1.2,
    /// 2.2.2), so the driver learns that its choice was not accepted. Only
    /// meaningful before FEATURES_OK, so it is not part of the saved state.
    pub(super) unoffered_features: u64,
    pub status: u8,
    pub config_generation: u32,
    pub queues: Vec<Queue>,
    /// Set once DRIVER_OK activated the device, cleared by reset.
    pub activated: bool,
    pub ram: Arc<GuestRam>,
    pub interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

impl VirtioCommon {
    pub fn new(
        device_type: u32,
        avail_features: u64,
        queue_max_sizes: &[u16],
        ram: Arc<GuestRam>,
    ) -> Self {
        let queues = queue_max_sizes
            .iter()
            .map(|&s| Queue::new(s).expect("device queue sizes are powers of two"))
            .collect();
        VirtioCommon {
            device_type,
            avail_features: avail_features | VIRTIO_F_VERSION_1,
            acked_features: 0,
            unoffered_features: 0,
            status: 0,
            config_generation: 0,
            queues,
            activated: false,
            ram,
            interrupt: None,
        }
    }

    pub fn has_feature(&self, bit: u64) -> bool {
        self.acked_features & bit != 0
    }

    /// Page `select` (0 or 1) of the features offered, as the transport reads them.
    pub fn features_page(&self, select: u32) -> u32 {
        match select {
            0 => self.avail_features as u32,
            1 => (self.avail_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver writes page `select` of the features it accepts; bits not
    /// offered are remembered (FEATURES_OK will be refused while a page
    /// holds any), and nothing changes after FEATURES_OK.
    pub fn ack_features_page(&mut self, select: u32, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            warn!(
                "virtio type {}: driver wrote features after FEATURES_OK; ignored",
                self.device_type
            );
            return;
        }
        let (shift, mask) = match select {
            0 => (0, 0xffff_ffffu64),
            1 => (32, 0xffff_ffffu64 << 32),
            _ => return,
        };
        let wanted = (u64::from(value) << shift) & mask;
        // A later write of the same page replaces the earlier one, so a
        // driver that corrects its choice before FEATURES_OK is accepted.
        self.unoffered_features =
            (self.unoffered_features & !mask) | (wanted & !self.avail_features);
        self.acked_features = (self.acked_features & !mask) | (wanted & self.avail_features);
    }

    /// Applies a status write from the driver. Returns true when this write
    /// set DRIVER_OK, so the caller must activate the device. A write of 0 is
    /// a reset, which the caller performs through `VirtioDevice::reset`.
    pub fn set_status(&mut self, status: u8) -> bool {
        if status == 0 {
            return false;
        }
        let old = self.status;
        // Bits only go up between resets (virtio 1.x, 2.1.1).
        if status & old != old {
            warn!(
                "virtio type {}: status {status:#x} clears bits of {old:#x} without reset; ignored",
                self.device_type
            );
            return false;
        }
        let mut new = status;
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && self.acked_features & VIRTIO_F_VERSION_1 == 0
        {
            error!(
                "virtio type {}: driver did not accept VIRTIO_F_VERSION_1; refusing FEATURES_OK",
                self.device_type
            );
            new &= !STATUS_FEATURES_OK;
        }
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && self.unoffered_features != 0
        {
            warn!(
                "virtio type {}: driver accepted features {:#x} that the device never offered (it offers {:#x}); refusing FEATURES_OK (virtio 1.2, 2.2.2), the driver must reset the device and accept only offered features",
                self.device_type, self.unoffered_features, self.avail_features
            );
            new &= !STATUS_FEATURES_OK;
        }
        let needs = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        if new & STATUS_DRIVER_OK != 0 && new & needs != needs {
            warn!(
                "virtio type {}: DRIVER_OK before FEATURES_OK; ignored",
                self.device_type
            );
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new;
        new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 && new & STATUS_FAILED == 0
    }

    /// Common part of activation: event-idx on the queues, queues valid, interrupt present.
    pub fn prepare_activation(&mut self) -> Result<(), ActivateError> {
        if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(ActivateError::Legacy);
        }
        if self.interrupt.is_none() {
            return Err(ActivateError::NoInterrupt);
        }
        let event_idx = self.has_feature(VIRTIO_RING_F_EVENT_IDX);
        let mem = self.ram.memory();
        for (index, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(mem) {
                return Err(ActivateError::InvalidQueue { index });
            }
        }
        self.activated = true;
        Ok(())
    }

    /// Marks the device broken so the driver resets it (used on fatal device errors).
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.trigger(InterruptKind::Config);
    }

    /// Back to the state before the driver's first access; the offer stays.
    pub fn reset(&mut self) {
        self.acked_features = 0;
        self.unoffered_features = 0;
        self.status = 0;
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
    }

    /// Interrupts the driver for `queue` if it wants to hear about new used buffers.
    pub fn notify_queue(&mut self, queue: u16) {
        let Some(q) = self.queues.get_mut(usize::from(queue)) else {
            return;
        };
        match q.needs_notification(self.ram.memory()) {
            Ok(true) => self.trigger(InterruptKind::Queue(queue)),
            Ok(false) => {}
            Err(e) => {
                // The used-event field is unreadable: interrupt rather than stall the driver.
                warn!("virtio type {}: queue {queue}: {e}", self.device_type);
                self.trigger(InterruptKind::Queue(queue));
            }
        }
    }

    /// The config space changed: bump the generation and interrupt.
    pub fn notify_config(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.activated {
            self.trigger(InterruptKind::Config);
        }
    }

    pub fn trigger(&self, kind: InterruptKind) {
        if let Some(irq) = &self.interrupt {
            if let Err(e) = irq.trigger(kind) {
                error!(
                    "virtio type {}: raising {kind:?} interrupt failed: {e}",
                    self.device_type
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: u64 = VIRTIO_RING_F_EVENT_IDX | 1 << 5;
    const DRIVER: u8 = STATUS_ACKNOWLEDGE | STATUS_DRIVER;

    fn common() -> VirtioCommon {
        let ram = Arc::new(GuestRam::anonymous(1 << 20).unwrap());
        let mut c = VirtioCommon::new(2, OFFERED, &[16], ram);
        c.set_status(STATUS_ACKNOWLEDGE);
        c.set_status(DRIVER);
        c
    }

    fn accept(c: &mut VirtioCommon, features: u64) {
        c.ack_features_page(0, features as u32);
        c.ack_features_page(1, (features >> 32) as u32);
    }

    #[test]
    fn features_ok_needs_a_subset_of_the_offer() {
        let all = OFFERED | VIRTIO_F_VERSION_1;
        for extra in [1u64 << 0, 1 << 6, 1 << 31, 1 << 33, 1 << 63] {
            let mut c = common();
            accept(&mut c, all | extra);
            assert_eq!(c.acked_features, all, "only offered bits are negotiated");
            c.set_status(DRIVER | STATUS_FEATURES_OK);
            assert_eq!(c.status, DRIVER, "extra bit {extra:#x}");
        }
        // The offer itself, or part of it, is accepted.
        for features in [all, VIRTIO_F_VERSION_1] {
            let mut c = common();
            accept(&mut c, features);
            c.set_status(DRIVER | STATUS_FEATURES_OK);
            assert_eq!(c.status, DRIVER | STATUS_FEATURES_OK);
            assert_eq!(c.acked_features, features);
        }
    }
}
