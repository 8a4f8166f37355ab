//! The guest driver's side: RAM, the two queues, buffers it posts and reads back.

use std::collections::HashMap;
use std::sync::Arc;

use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

use super::frames::GUEST_MAC;
use super::netns::retry_busy;
use crate::ram::{GuestMemoryMmap, GuestRam};
use crate::virtio::net::{Net, NetConfig, RX_QUEUE, TX_QUEUE};
use crate::virtio::testing::{init_device, Buf, DriverQueue, InterruptLog};
use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};

pub const RAM_SIZE: u64 = 8 << 20;
const RXQ_BASE: u64 = 0;
const TXQ_BASE: u64 = 0x4000;
const ARENA_START: u64 = 0x10000;

/// Bytes a fresh RX buffer holds, so untouched bytes are recognisable.
pub const FILL: u8 = 0xee;

pub fn config(tap: &str) -> NetConfig {
    NetConfig {
        id: "net0".into(),
        tap: tap.into(),
        mac: GUEST_MAC,
    }
}

pub struct Guest {
    pub ram: Arc<GuestRam>,
    pub rxq: DriverQueue,
    pub txq: DriverQueue,
    next: u64,
    /// Buffers of the chains the device still holds, by head.
    rx_chains: HashMap<u16, Vec<Buf>>,
    rx_seen: u16,
    tx_seen: u16,
}

impl Guest {
    pub fn new(qsize: u16) -> Guest {
        let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
        let rxq = DriverQueue::new(ram.memory(), GuestAddress(RXQ_BASE), qsize);
        let txq = DriverQueue::new(ram.memory(), GuestAddress(TXQ_BASE), qsize);
        assert!(rxq.end().0 <= TXQ_BASE && txq.end().0 <= ARENA_START);
        Guest {
            ram,
            rxq,
            txq,
            next: ARENA_START,
            rx_chains: HashMap::new(),
            rx_seen: 0,
            tx_seen: 0,
        }
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// Opens the TAP and runs driver initialisation with `features` (VERSION_1 added).
    pub fn start(&self, tap: &str, features: u64) -> (Net, Arc<InterruptLog>) {
        let mut dev = retry_busy(|| Net::new(&config(tap), self.ram.clone())).unwrap();
        let log = init_device(
            &mut dev,
            features | VIRTIO_F_VERSION_1,
            &[&self.rxq, &self.txq],
        )
        .unwrap();
        assert!(dev.common().activated);
        (dev, log)
    }

    /// Guest RAM for a buffer, reused round-robin.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = (u64::from(len) + 15) & !15;
        if self.next + len > RAM_SIZE {
            self.next = ARENA_START;
        }
        let at = self.next;
        self.next += len.max(16);
        at
    }

    /// Copies `data` into guest RAM as device-readable buffers of the given
    /// lengths (the last takes the rest).
    pub fn tx_bufs(&mut self, data: &[u8], split: &[usize]) -> Vec<Buf> {
        let mut bufs = Vec::new();
        let mut off = 0;
        for (i, &n) in split.iter().chain(std::iter::once(&usize::MAX)).enumerate() {
            let n = n.min(data.len() - off);
            if n == 0 && i < split.len() {
                continue;
            }
            let at = self.alloc(n as u32);
            self.mem()
                .write_slice(&data[off..off + n], GuestAddress(at))
                .unwrap();
            bufs.push(Buf::r(at, n as u32));
            off += n;
            if off == data.len() {
                break;
            }
        }
        bufs
    }

    /// Sends `pkt` (header and frame) as one TX chain and notifies the device.
    pub fn send(&mut self, dev: &mut Net, pkt: &[u8], split: &[usize]) -> u16 {
        let bufs = self.tx_bufs(pkt, split);
        let head = self.txq.add_chain(&bufs);
        dev.queue_notify(TX_QUEUE);
        head
    }

    /// Posts one single-buffer RX chain per size. Returns their heads.
    pub fn post_rx(&mut self, sizes: &[u32]) -> Vec<u16> {
        sizes
            .iter()
            .map(|&len| {
                let at = self.alloc(len);
                self.post_rx_chain(&[Buf::w(at, len)])
            })
            .collect()
    }

    pub fn post_rx_chain(&mut self, bufs: &[Buf]) -> u16 {
        for b in bufs {
            if b.addr + u64::from(b.len) <= RAM_SIZE {
                self.mem()
                    .write_slice(&vec![FILL; b.len as usize], GuestAddress(b.addr))
                    .unwrap();
            }
        }
        let head = self.rxq.add_chain(bufs);
        self.rx_chains.insert(head, bufs.to_vec());
        head
    }

    /// Publishes descriptors exactly as given (malformed ones included) as an RX chain.
    pub fn post_rx_raw(&mut self, head: u16, table: &[(u16, RawDescriptor)]) -> u16 {
        self.rxq.add_raw_chain(head, table);
        self.rx_chains.insert(head, Vec::new());
        head
    }

    pub fn rx_outstanding(&self) -> usize {
        self.rx_chains.len()
    }

    /// RX chains the device returned: head, used length, and the bytes it wrote.
    pub fn rx_used(&mut self) -> Vec<(u16, u32, Vec<u8>)> {
        let used = self.rxq.used();
        self.rx_seen = self.rx_seen.wrapping_add(used.len() as u16);
        // Like a driver that always wants to hear about the next buffer.
        self.rxq.set_used_event(self.rx_seen);
        used.into_iter()
            .map(|e| {
                let head = e.id() as u16;
                let bufs = self
                    .rx_chains
                    .remove(&head)
                    .unwrap_or_else(|| panic!("device returned RX chain {head} it was not given"));
                let mut data = Vec::new();
                let mut left = e.len() as usize;
                for b in bufs {
                    let n = left.min(b.len as usize);
                    let mut part = vec![0u8; n];
                    self.mem()
                        .read_slice(&mut part, GuestAddress(b.addr))
                        .unwrap();
                    data.extend_from_slice(&part);
                    left -= n;
                }
                assert_eq!(left, 0, "used length {} exceeds chain {head}", e.len());
                (head, e.len(), data)
            })
            .collect()
    }

    /// TX chains the device returned: head and used length.
    pub fn tx_used(&mut self) -> Vec<(u16, u32)> {
        let used = self.txq.used();
        self.tx_seen = self.tx_seen.wrapping_add(used.len() as u16);
        self.txq.set_used_event(self.tx_seen);
        used.into_iter().map(|e| (e.id() as u16, e.len())).collect()
    }
}

/// Interrupts on one queue since the last call.
pub fn irqs(log: &InterruptLog) -> Vec<crate::virtio::InterruptKind> {
    log.take()
}

pub const RX: crate::virtio::InterruptKind = crate::virtio::InterruptKind::Queue(RX_QUEUE);
pub const TX: crate::virtio::InterruptKind = crate::virtio::InterruptKind::Queue(TX_QUEUE);
