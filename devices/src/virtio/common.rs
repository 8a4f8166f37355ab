//! State every virtio device shares: features, status, queues, interrupt.

use std::fmt;
use std::sync::Arc;

use crate::{guest_warn, host_error};
use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{
    InterruptKind, VirtioInterrupt, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::ram::GuestRam;

#[derive(Debug, Error)]
pub enum ActivateError {
    #[error("queue {index} is not usable: {fault}")]
    InvalidQueue { index: usize, fault: QueueFault },
    #[error("the driver did not accept VIRTIO_F_VERSION_1; legacy drivers are not supported")]
    Legacy,
    #[error("no interrupt was installed before activation")]
    NoInterrupt,
    #[error("{0}")]
    Device(String),
}

/// The three areas of a split virtqueue the driver places (virtio 1.2, 2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    Descriptors,
    /// The available ring.
    Driver,
    /// The used ring.
    Device,
}

impl Ring {
    pub const ALL: [Ring; 3] = [Ring::Descriptors, Ring::Driver, Ring::Device];

    /// The alignment virtio 1.2, 2.7 requires of the area.
    pub const fn align(self) -> u64 {
        match self {
            Ring::Descriptors => 16,
            Ring::Driver => 2,
            Ring::Device => 4,
        }
    }

    /// The area's size for a queue of `size` entries, the event-index
    /// field included (the device may touch it whatever was negotiated).
    pub fn bytes(self, size: u16) -> u64 {
        let n = u64::from(size);
        match self {
            Ring::Descriptors => 16 * n,
            Ring::Driver => 6 + 2 * n,
            Ring::Device => 6 + 8 * n,
        }
    }

    /// Where `q` has the area now.
    pub fn address(self, q: &Queue) -> u64 {
        match self {
            Ring::Descriptors => q.desc_table(),
            Ring::Driver => q.avail_ring(),
            Ring::Device => q.used_ring(),
        }
    }
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ring::Descriptors => "descriptor table",
            Ring::Driver => "driver area (available ring)",
            Ring::Device => "device area (used ring)",
        })
    }
}

/// Why a queue the driver made ready cannot be used. Each would have the
/// device read descriptors from, or write used entries to, memory the
/// driver never gave it (an unset address is guest-physical 0).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum QueueFault {
    #[error("the driver made it ready without writing its {ring} address; write all three ring addresses before QueueReady")]
    Unset { ring: Ring },
    #[error("its {ring} address {addr:#x} is not {}-byte aligned (virtio 1.2, 2.7)", ring.align())]
    Misaligned { ring: Ring, addr: u64 },
    #[error("its {ring} ({len} bytes at {addr:#x}) lies outside guest RAM")]
    OutsideRam { ring: Ring, addr: u64, len: u64 },
    #[error("its device area (used ring, {used_len} bytes at {used:#x}) overlaps its {ring} ({len} bytes at {addr:#x}); give each ring its own memory")]
    Overlap {
        ring: Ring,
        addr: u64,
        len: u64,
        used: u64,
        used_len: u64,
    },
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
    /// Per queue, each ring address as the driver last wrote it since the
    /// reset (`None`: never written), indexed like [`Ring::ALL`]. `Queue`
    /// cannot tell: it starts at address 0 and keeps its old address when
    /// given a misaligned one, so a driver's mistake would leave a ring at
    /// guest-physical 0 that looks valid. A restored device counts every
    /// address as written, since its queues hold what the driver gave.
    pub(super) ring_addrs: Vec<[Option<u64>; 3]>,
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
            .collect::<Vec<_>>();
        VirtioCommon {
            ring_addrs: vec![[None; 3]; queues.len()],
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
            guest_warn!(
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
            guest_warn!(
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
            guest_warn!(
                "virtio type {}: driver did not accept VIRTIO_F_VERSION_1; refusing FEATURES_OK",
                self.device_type
            );
            new &= !STATUS_FEATURES_OK;
        }
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && self.unoffered_features != 0
        {
            guest_warn!(
                "virtio type {}: driver accepted features {:#x} that the device never offered (it offers {:#x}); refusing FEATURES_OK (virtio 1.2, 2.2.2), the driver must reset the device and accept only offered features",
                self.device_type, self.unoffered_features, self.avail_features
            );
            new &= !STATUS_FEATURES_OK;
        }
        let needs = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        if new & STATUS_DRIVER_OK != 0 && new & needs != needs {
            guest_warn!(
                "virtio type {}: DRIVER_OK before FEATURES_OK; ignored",
                self.device_type
            );
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new;
        new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 && new & STATUS_FAILED == 0
    }

    /// The driver wrote the low and/or high half of `ring`'s address for
    /// queue `index` (the transport checked that the queue may still be
    /// configured). The queue takes the address only if it is aligned; the
    /// address as written is remembered for [`Self::prepare_activation`].
    pub fn write_ring_address(
        &mut self,
        index: usize,
        ring: Ring,
        low: Option<u32>,
        high: Option<u32>,
    ) {
        let (Some(q), Some(addrs)) = (self.queues.get_mut(index), self.ring_addrs.get_mut(index))
        else {
            return;
        };
        let slot = &mut addrs[ring as usize];
        let old = slot.unwrap_or(0);
        let low = low.map_or(old & 0xffff_ffff, u64::from);
        let high = high.map_or(old >> 32, u64::from);
        let addr = (high << 32) | low;
        *slot = Some(addr);
        if !addr.is_multiple_of(ring.align()) {
            // Refused at activation; Queue's own setters would log an
            // error on every such write, which the guest controls.
            return;
        }
        let addr = GuestAddress(addr);
        // Aligned, so none of these can fail.
        let _ = match ring {
            Ring::Descriptors => q.try_set_desc_table_address(addr),
            Ring::Driver => q.try_set_avail_ring_address(addr),
            Ring::Device => q.try_set_used_ring_address(addr),
        };
    }

    /// Why ready queue `index` cannot be used, if it cannot.
    pub fn queue_fault(&self, index: usize) -> Option<QueueFault> {
        let q = self.queues.get(index)?;
        let addrs = self.ring_addrs.get(index)?;
        for ring in Ring::ALL {
            match addrs[ring as usize] {
                None => return Some(QueueFault::Unset { ring }),
                Some(addr) if !addr.is_multiple_of(ring.align()) => {
                    return Some(QueueFault::Misaligned { ring, addr })
                }
                Some(_) => {}
            }
        }
        ring_layout_fault(q, self.ram.memory())
    }

    /// Common part of activation: event-idx on the queues, every ready
    /// queue set up as virtio requires, interrupt present.
    pub fn prepare_activation(&mut self) -> Result<(), ActivateError> {
        if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(ActivateError::Legacy);
        }
        if self.interrupt.is_none() {
            return Err(ActivateError::NoInterrupt);
        }
        let event_idx = self.has_feature(VIRTIO_RING_F_EVENT_IDX);
        for index in 0..self.queues.len() {
            self.queues[index].set_event_idx(event_idx);
            if !self.queues[index].ready() {
                continue;
            }
            if let Some(fault) = self.queue_fault(index) {
                return Err(ActivateError::InvalidQueue { index, fault });
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
        self.ring_addrs.fill([None; 3]);
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
                guest_warn!("virtio type {}: queue {queue}: {e}", self.device_type);
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
                host_error!(
                    "virtio type {}: raising {kind:?} interrupt failed: {e}",
                    self.device_type
                );
            }
        }
    }
}

/// The first of `q`'s rings that does not lie inside guest RAM.
fn rings_outside_ram<M: GuestMemoryBackend>(q: &Queue, mem: &M) -> Option<QueueFault> {
    Ring::ALL.into_iter().find_map(|ring| {
        let (addr, len) = (ring.address(q), ring.bytes(q.size()));
        let inside =
            addr.checked_add(len).is_some() && mem.check_range(GuestAddress(addr), len as usize);
        (!inside).then_some(QueueFault::OutsideRam { ring, addr, len })
    })
}

/// Why `q`'s rings, as placed, cannot be used: outside RAM, or a device
/// area that overlaps the descriptor table or the driver area.
///
/// The device writes only its device area. Over the driver's areas, its
/// writes would rewrite the ring it reads: a used entry written over the
/// available index makes more chains appear, whose used entries make
/// more, and the device never runs dry (a guest held a device thread so,
/// found by fuzzing). No driver lays rings out so on purpose.
pub(super) fn ring_layout_fault<M: GuestMemoryBackend>(q: &Queue, mem: &M) -> Option<QueueFault> {
    if let Some(fault) = rings_outside_ram(q, mem) {
        return Some(fault);
    }
    let size = q.size();
    // In RAM, as checked above, so no end overflows.
    let used = Ring::Device.address(q);
    let used_len = Ring::Device.bytes(size);
    [Ring::Descriptors, Ring::Driver]
        .into_iter()
        .find_map(|ring| {
            let (addr, len) = (ring.address(q), ring.bytes(size));
            let overlap = addr < used + used_len && used < addr + len;
            overlap.then_some(QueueFault::Overlap {
                ring,
                addr,
                len,
                used,
                used_len,
            })
        })
}

/// Why `q`'s rings, at the addresses a front end gave a vhost-user back end
/// (which has no transport of its own to check them), cannot be used:
/// misaligned (virtio 1.2, 2.7), outside the memory it was given, or a
/// device area over the driver's rings. The checks a transport makes on
/// activation ([`VirtioCommon::queue_fault`]), for the daemons.
pub fn ring_placement_fault<M: GuestMemoryBackend>(q: &Queue, mem: &M) -> Option<QueueFault> {
    Ring::ALL
        .into_iter()
        .find_map(|ring| {
            let addr = ring.address(q);
            (!addr.is_multiple_of(ring.align())).then_some(QueueFault::Misaligned { ring, addr })
        })
        .or_else(|| ring_layout_fault(q, mem))
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

    fn ready_queue(addrs: [Option<u64>; 3]) -> VirtioCommon {
        let mut c = common();
        for (ring, addr) in Ring::ALL.into_iter().zip(addrs) {
            if let Some(a) = addr {
                c.write_ring_address(0, ring, Some(a as u32), Some((a >> 32) as u32));
            }
        }
        c.queues[0].set_ready(true);
        c
    }

    #[test]
    fn a_ready_queue_needs_every_ring_written_aligned_and_in_ram() {
        let good = [Some(0), Some(0x100), Some(0x200)];
        assert_eq!(
            ready_queue(good).queue_fault(0),
            None,
            "rings at 0 are fine"
        );
        let mut unset = good;
        unset[2] = None;
        assert_eq!(
            ready_queue(unset).queue_fault(0),
            Some(QueueFault::Unset { ring: Ring::Device })
        );
        let mut skewed = good;
        skewed[1] = Some(0x101);
        let c = ready_queue(skewed);
        assert_eq!(
            c.queue_fault(0),
            Some(QueueFault::Misaligned {
                ring: Ring::Driver,
                addr: 0x101
            })
        );
        assert_eq!(c.queues[0].avail_ring(), 0, "the queue never took it");
        let mut far = good;
        far[0] = Some(1 << 32);
        assert!(matches!(
            ready_queue(far).queue_fault(0),
            Some(QueueFault::OutsideRam {
                ring: Ring::Descriptors,
                ..
            })
        ));

        // Halves combine, and a corrected address replaces a misaligned one.
        let mut c = ready_queue(skewed);
        c.queues[0].set_ready(false);
        c.write_ring_address(0, Ring::Driver, Some(0x102), None);
        c.write_ring_address(0, Ring::Driver, None, Some(0));
        c.queues[0].set_ready(true);
        assert_eq!(c.queue_fault(0), None);
        assert_eq!(c.queues[0].avail_ring(), 0x102);

        // A reset forgets the addresses.
        c.reset();
        c.queues[0].set_ready(true);
        assert_eq!(
            c.queue_fault(0),
            Some(QueueFault::Unset {
                ring: Ring::Descriptors
            })
        );
    }

    /// The device writes its used entries only where they cannot rewrite
    /// the rings it reads (a net device's TX once looped forever on rings
    /// all at 0: fuzz/regressions/net_queue/rings-all-at-0).
    #[test]
    fn a_device_area_over_the_driver_rings_is_refused() {
        // Size 16: descriptors 256 bytes, driver area 38, device area 134.
        let overlaps = |addrs: [u64; 3]| ready_queue(addrs.map(Some)).queue_fault(0);
        for (addrs, ring) in [
            ([0, 0, 0], Ring::Descriptors),
            ([0x1000, 0x100, 0xfc], Ring::Driver),
            ([0x1000, 0x100, 0x124], Ring::Driver),
            ([0, 0x100, 0xfc], Ring::Descriptors),
            ([0x200, 0x100, 0x180], Ring::Descriptors),
        ] {
            assert!(
                matches!(overlaps(addrs), Some(QueueFault::Overlap { ring: r, .. }) if r == ring),
                "{addrs:x?}: {:?}",
                overlaps(addrs)
            );
        }
        // Touching is not overlapping, and the driver's two areas may overlap
        // each other: the device only reads them.
        for addrs in [[0, 0x100, 0x128], [0x200, 0x100, 0x300], [0, 0x80, 0x200]] {
            assert_eq!(overlaps(addrs), None, "{addrs:x?}");
        }
        // Activation refuses it, so the device never runs on such rings.
        let mut c = ready_queue([Some(0), Some(0), Some(0)]);
        accept(&mut c, VIRTIO_F_VERSION_1);
        c.interrupt = Some(Arc::new(crate::virtio::testing::InterruptLog::default()));
        assert!(matches!(
            c.prepare_activation(),
            Err(ActivateError::InvalidQueue {
                index: 0,
                fault: QueueFault::Overlap { .. }
            })
        ));
        assert!(!c.activated);
    }
}
