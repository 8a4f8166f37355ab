//! Driver-side helpers for tests: a split virtqueue the test fills as a
//! guest driver would, in real guest memory, and an interrupt sink.

use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt, STATUS_ACKNOWLEDGE, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

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
///
/// The rings are laid out and accessed here directly (virtio 1.x, 2.7):
/// `virtio_queue::mock::MockSplitQueue::create` zeroes the ring indices
/// each time it is called and places the used ring inside the available
/// ring (its `end()` counts elements, not bytes), so it cannot describe a
/// queue that lives on across calls.
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    next_desc: u16,
    seen_used: u16,
}

impl DriverQueue {
    /// Lays the rings out at `base` (16-byte aligned) and zeroes them.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let n = u64::from(size);
        let avail = GuestAddress(base.0 + 16 * n);
        // flags, idx, ring, used_event; the used ring is 4-byte aligned.
        let used = GuestAddress((avail.0 + 6 + 2 * n).next_multiple_of(4));
        let q = DriverQueue {
            mem: mem.clone(),
            desc: base,
            avail,
            used,
            size,
            next_desc: 0,
            seen_used: 0,
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
        // flags, idx, ring, avail_event.
        GuestAddress(self.used.0 + 6 + 8 * u64::from(self.size))
    }

    pub fn desc_table(&self) -> GuestAddress {
        self.desc
    }
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail
    }
    pub fn used_ring(&self) -> GuestAddress {
        self.used
    }

    fn load_u16(&self, addr: u64) -> u16 {
        u16::from_le(
            self.mem
                .read_obj(GuestAddress(addr))
                .expect("ring field in guest memory"),
        )
    }

    fn store_u16(&self, addr: u64, value: u16) {
        self.mem
            .write_obj(value.to_le(), GuestAddress(addr))
            .expect("ring field in guest memory");
    }

    /// What a driver writes into the transport's queue registers.
    pub fn configure(&self, q: &mut Queue) {
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc.0 as u32), Some((self.desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail.0 as u32), Some((self.avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q.set_ready(true);
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
                .write_obj(*d, GuestAddress(self.desc.0 + 16 * u64::from(*i)))
                .expect("descriptor table in guest memory");
        }
        let avail_idx = self.load_u16(self.avail.0 + 2);
        let slot = self.avail.0 + 4 + 2 * u64::from(avail_idx % self.size);
        self.store_u16(slot, head);
        fence(Ordering::SeqCst);
        self.store_u16(self.avail.0 + 2, avail_idx.wrapping_add(1));
        head
    }

    /// Used elements the device returned since the last call, in order.
    pub fn used(&mut self) -> Vec<VirtqUsedElem> {
        let idx = self.load_u16(self.used.0 + 2);
        let mut out = Vec::new();
        let mut at = self.seen_used;
        while at != idx {
            let slot = self.used.0 + 4 + 8 * u64::from(at % self.size);
            out.push(
                self.mem
                    .read_obj(GuestAddress(slot))
                    .expect("used slot in guest memory"),
            );
            at = at.wrapping_add(1);
        }
        self.seen_used = at;
        out
    }

    /// Sets `used_event` (event-idx): the driver wants an interrupt once used idx passes it.
    pub fn set_used_event(&self, value: u16) {
        self.store_u16(self.avail.0 + 4 + 2 * u64::from(self.size), value);
    }
}

pub fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
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
        dq.configure(&mut c.queues[i]);
    }
    if c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK) {
        dev.activate()?;
    }
    Ok(log)
}
