//! Driver-side helpers for tests: a split virtqueue the test fills as a
//! guest driver would, in real guest memory, and an interrupt sink.

pub mod frames;
pub mod netns;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{
    ActivateError, InterruptKind, Ring, VirtioCommon, VirtioDevice, VirtioInterrupt,
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::ram::GuestMemoryMmap;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// One buffer of a chain: guest address, length, device-writable or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Buf {
    pub fn r(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            write: false,
        }
    }
    pub fn w(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            write: true,
        }
    }
}

/// The driver's side of one split virtqueue living in guest memory.
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    base: GuestAddress,
    size: u16,
    next_desc: u16,
    seen_used: u16,
    // Ring addresses per virtio 1.x 2.7 (split virtqueue). Computed here,
    // not by `MockSplitQueue`: its `create` zeroes the rings' idx fields on
    // every call, and it places the used ring inside the avail ring.
    avail: GuestAddress,
    used: GuestAddress,
    end: GuestAddress,
}

impl DriverQueue {
    /// Lays the rings out at `base` (16-byte aligned) and zeroes them.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let n = u64::from(size);
        // flags, idx, ring[size], used_event / avail_event.
        let avail = base.unchecked_add(16 * n);
        let used = GuestAddress((avail.0 + 6 + 2 * n).next_multiple_of(4));
        let end = used.unchecked_add(6 + 8 * n);
        let q = DriverQueue {
            mem: mem.clone(),
            base,
            size,
            next_desc: 0,
            seen_used: 0,
            avail,
            used,
            end,
        };
        let len = (q.end().0 - base.0) as usize;
        mem.write_slice(&vec![0u8; len], base)
            .expect("driver queue lies in guest memory");
        q
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// First byte after the rings.
    pub fn end(&self) -> GuestAddress {
        self.end
    }

    pub fn desc_table(&self) -> GuestAddress {
        self.base
    }
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail
    }
    pub fn used_ring(&self) -> GuestAddress {
        self.used
    }

    /// What a driver writes into the transport's registers for queue `index`.
    pub fn configure(&self, c: &mut VirtioCommon, index: usize) {
        c.queues[index]
            .try_set_size(self.size)
            .expect("a power-of-two queue size within the device's maximum");
        for (ring, addr) in [
            (Ring::Descriptors, self.base),
            (Ring::Driver, self.avail),
            (Ring::Device, self.used),
        ] {
            c.write_ring_address(
                index,
                ring,
                Some(addr.0 as u32),
                Some((addr.0 >> 32) as u32),
            );
        }
        c.queues[index].set_ready(true);
    }

    /// Writes a well-formed chain into free descriptors and makes it available. Returns its head.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(self.size));
        let idx: Vec<u16> = (0..bufs.len() as u16)
            .map(|i| (self.next_desc + i) % self.size)
            .collect();
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        let table: Vec<(u16, RawDescriptor)> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut flags = if b.write { VIRTQ_DESC_F_WRITE } else { 0 };
                let next = if i + 1 < bufs.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                    idx[i + 1]
                } else {
                    0
                };
                (idx[i], raw(b.addr, b.len, flags, next))
            })
            .collect();
        self.add_raw_chain(idx[0], &table)
    }

    /// Writes descriptors exactly as given (malformed chains included) and
    /// makes `head` available.
    pub fn add_raw_chain(&mut self, head: u16, table: &[(u16, RawDescriptor)]) -> u16 {
        for (i, d) in table {
            assert!(*i < self.size, "descriptor index in table");
            self.mem
                .write_obj(*d, self.base.unchecked_add(16 * u64::from(*i)))
                .expect("descriptor table in guest memory");
        }
        let idx_addr = self.avail.unchecked_add(2);
        let avail_idx = u16::from_le(self.mem.read_obj(idx_addr).expect("avail idx"));
        let slot = self
            .avail
            .unchecked_add(4 + 2 * u64::from(avail_idx % self.size));
        self.mem
            .write_obj(head.to_le(), slot)
            .expect("avail ring slot");
        // One release store, as a driver publishes it: a device on another
        // thread must never see the index before the entry, or half of it.
        self.mem
            .store(
                avail_idx.wrapping_add(1).to_le(),
                idx_addr,
                Ordering::Release,
            )
            .expect("avail idx");
        head
    }

    /// Used elements the device returned since the last call, in order.
    pub fn used(&mut self) -> Vec<VirtqUsedElem> {
        let idx = u16::from_le(
            self.mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)
                .expect("used idx"),
        );
        let mut out = Vec::new();
        let mut at = self.seen_used;
        while at != idx {
            let slot = self.used.unchecked_add(4 + 8 * u64::from(at % self.size));
            out.push(self.mem.read_obj(slot).expect("used slot"));
            at = at.wrapping_add(1);
        }
        self.seen_used = at;
        out
    }

    /// Sets `used_event` (event-idx): the driver wants an interrupt once used idx passes it.
    pub fn set_used_event(&self, value: u16) {
        let addr = self.avail_ring().0 + 4 + 2 * u64::from(self.size);
        self.mem
            .store(value.to_le(), GuestAddress(addr), Ordering::Release)
            .expect("used_event in guest memory");
    }
}

pub fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Writes `descs` as a descriptor table at `at` (an indirect table, say);
/// returns its length in bytes.
pub fn write_table(mem: &GuestMemoryMmap, at: u64, descs: &[RawDescriptor]) -> u32 {
    for (i, d) in descs.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(at + 16 * i as u64))
            .expect("descriptor table in guest memory");
    }
    16 * descs.len() as u32
}

/// Records every interrupt a device raises.
#[derive(Default)]
pub struct InterruptLog {
    events: Mutex<Vec<InterruptKind>>,
}

impl InterruptLog {
    pub fn take(&self) -> Vec<InterruptKind> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl VirtioInterrupt for InterruptLog {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        self.events.lock().unwrap().push(kind);
        Ok(())
    }
}

/// Runs the driver initialisation sequence (virtio 1.x, 3.1.1): status bits,
/// feature negotiation, queue setup, DRIVER_OK, then activates the device.
/// `features` is intersected with the offer. Returns the interrupt log installed.
pub fn init_device(
    dev: &mut dyn VirtioDevice,
    features: u64,
    queues: &[&DriverQueue],
) -> Result<Arc<InterruptLog>, ActivateError> {
    let log = Arc::new(InterruptLog::default());
    let c = dev.common_mut();
    c.interrupt = Some(log.clone());
    c.set_status(STATUS_ACKNOWLEDGE);
    c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let offered = c.avail_features;
    let accept = offered & features;
    c.ack_features_page(0, accept as u32);
    c.ack_features_page(1, (accept >> 32) as u32);
    c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    for (i, dq) in queues.iter().enumerate() {
        dq.configure(c, i);
    }
    if c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK) {
        dev.activate()?;
    }
    Ok(log)
}
