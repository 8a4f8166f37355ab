//! Driver-side helpers for tests: a split virtqueue the test fills as a
//! guest driver would, in real guest memory, and an interrupt sink.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
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
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    base: GuestAddress,
    size: u16,
    next_desc: u16,
    seen_used: u16,
}

impl DriverQueue {
    /// Lays the rings out at `base` (16-byte aligned) and zeroes them.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let q = DriverQueue {
            mem: mem.clone(),
            base,
            size,
            next_desc: 0,
            seen_used: 0,
        };
        let len = (q.end().0 - base.0) as usize;
        mem.write_slice(&vec![0u8; len], base)
            .expect("driver queue lies in guest memory");
        q
    }

    fn mock(&self) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::create(&self.mem, self.base, self.size)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// First byte after the rings.
    pub fn end(&self) -> GuestAddress {
        self.mock().end()
    }

    pub fn desc_table(&self) -> GuestAddress {
        self.mock().desc_table_addr()
    }
    pub fn avail_ring(&self) -> GuestAddress {
        self.mock().avail_addr()
    }
    pub fn used_ring(&self) -> GuestAddress {
        self.mock().used_addr()
    }

    /// What a driver writes into the transport's queue registers.
    pub fn configure(&self, q: &mut Queue) {
        let m = self.mock();
        q.set_size(self.size);
        q.set_desc_table_address(
            Some(m.desc_table_addr().0 as u32),
            Some((m.desc_table_addr().0 >> 32) as u32),
        );
        q.set_avail_ring_address(
            Some(m.avail_addr().0 as u32),
            Some((m.avail_addr().0 >> 32) as u32),
        );
        q.set_used_ring_address(
            Some(m.used_addr().0 as u32),
            Some((m.used_addr().0 >> 32) as u32),
        );
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
        let m = self.mock();
        for (i, d) in table {
            m.desc_table()
                .store(*i, *d)
                .expect("descriptor index in table");
        }
        let avail_idx = m.avail().idx().load();
        m.avail()
            .ring()
            .ref_at(usize::from(avail_idx % self.size))
            .expect("ring slot")
            .store(head);
        m.avail().idx().store(avail_idx.wrapping_add(1));
        head
    }

    /// Used elements the device returned since the last call, in order.
    pub fn used(&mut self) -> Vec<VirtqUsedElem> {
        let (seen, size) = (self.seen_used, self.size);
        let m = self.mock();
        let idx = m.used().idx().load();
        let mut out = Vec::new();
        let mut at = seen;
        while at != idx {
            let e = m
                .used()
                .ring()
                .ref_at(usize::from(at % size))
                .expect("used slot")
                .load();
            out.push(e);
            at = at.wrapping_add(1);
        }
        self.seen_used = at;
        out
    }

    /// Sets `used_event` (event-idx): the driver wants an interrupt once used idx passes it.
    pub fn set_used_event(&self, value: u16) {
        let addr = self.avail_ring().0 + 4 + 2 * u64::from(self.size);
        self.mem
            .write_obj(value, GuestAddress(addr))
            .expect("used_event in guest memory");
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
