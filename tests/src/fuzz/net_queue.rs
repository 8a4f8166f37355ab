//! `net_queue`: virtio-net's RX and TX paths (`RxQueue::process`,
//! `process_tx`, which the in-process device and the vhost-user daemon
//! share) over guest memory and queue state taken from the input.
//!
//! The TAP is one end of a `SOCK_SEQPACKET` socket pair: the input sends
//! the device packets of any length and content (a real TAP only yields
//! what the host kernel sends), and what the device transmits is read
//! back from the other end. With bit 0 of `flags`, the whole `Net` device
//! runs instead, on a real TAP in a private network namespace (which
//! receives nothing), for its activation, reset and offload handling.
//!
//! Input: `flags u8`, the driver's `features u64`, RX and TX queues
//! ([`QueueSetup`] each), a part of operations, then memory chunks. Each
//! operation is a byte: 0 the RX path runs, 1 the TX path runs, 2 a
//! packet (`u16` length, bytes) is sent to the device, 3 the device is
//! reset. With no operations, RX runs, then TX.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use devices::virtio::net::{
    process_tx, Net, NetConfig, NetCounters, RxQueue, Tap, AVAIL_FEATURES, MAX_PACKET_LEN,
    QUEUE_MAX_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MRG_RXBUF,
};
use devices::virtio::testing::{Buf, DriverQueue, InterruptLog};
use devices::virtio::{
    VirtioCommon, VirtioDevice, STATUS_NEEDS_RESET, TYPE_NET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::guest::{self, QueueSetup};
use super::input::{Builder, Input};

const OP_RX: u8 = 0;
const OP_TX: u8 = 1;
const OP_PACKET: u8 = 2;
const OP_RESET: u8 = 3;
/// Operations one input may ask for.
const MAX_OPS: usize = 64;
/// The virtio-net header every packet starts with.
const VNET_HDR_LEN: usize = 12;

/// Runs one input; returns how many chains went to the used rings.
pub fn run(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let flags = input.u8();
    let features = input.u64();
    let queues = [QueueSetup::read(&mut input), QueueSetup::read(&mut input)];
    let ops = input.part();
    let ram = guest::boot_ram();
    guest::load_chunks(ram.memory(), &mut input);
    if flags & 1 != 0 {
        run_device(ram, features, &queues, ops)
    } else {
        run_paths(ram, features, &queues, ops)
    }
}

/// The queues as `Net` holds them, driven through the shared RX and TX
/// functions the way `Net` drives them.
struct Paths {
    common: VirtioCommon,
    rx: RxQueue,
    tap: Tap,
    counters: NetCounters,
}

impl Paths {
    fn usable(&self, q: u16) -> bool {
        self.common.activated
            && self.common.status & STATUS_NEEDS_RESET == 0
            && self.common.queues[usize::from(q)].ready()
    }

    fn rx(&mut self) {
        if !self.usable(RX_QUEUE) {
            return;
        }
        let q = &mut self.common.queues[usize::from(RX_QUEUE)];
        let run = self.rx.process(
            q,
            self.common.ram.memory(),
            &self.tap,
            self.common.acked_features,
            &mut self.counters,
            "fuzz",
        );
        if run.broken {
            self.common.set_needs_reset();
        }
    }

    fn tx(&mut self) {
        if !self.usable(TX_QUEUE) {
            return;
        }
        let q = &mut self.common.queues[usize::from(TX_QUEUE)];
        let run = process_tx(
            q,
            self.common.ram.memory(),
            &self.tap,
            &mut self.counters,
            "fuzz",
        );
        if run.broken {
            self.common.set_needs_reset();
        }
    }
}

fn run_paths(
    ram: Arc<devices::ram::GuestRam>,
    features: u64,
    queues: &[QueueSetup],
    mut ops: Input,
) -> usize {
    let (tap, mut host) = guest::packet_pair("fuzz");
    let mut p = Paths {
        common: VirtioCommon::new(TYPE_NET, AVAIL_FEATURES, &[QUEUE_MAX_SIZE; 2], ram),
        rx: RxQueue::default(),
        tap,
        counters: NetCounters::default(),
    };
    let log = Arc::new(InterruptLog::default());
    if !guest::negotiate(&mut p.common, features, queues, log) {
        return 0;
    }
    guest::set_positions(&mut p.common, queues);
    // Net::activate is this, then the offload ioctl a socket refuses.
    if p.common.prepare_activation().is_err() {
        return 0;
    }
    if ops.is_empty() {
        p.rx();
        p.tx();
    }
    let mut work = guest::used_since(&p.common, queues);
    for _ in 0..MAX_OPS {
        if ops.is_empty() {
            break;
        }
        let before = guest::next_used(&p.common);
        match ops.u8() % 4 {
            OP_RX => p.rx(),
            OP_TX => {
                p.tx();
                check_transmitted(&mut host);
            }
            OP_PACKET => {
                let packet = ops.part().rest();
                // A full socket drops it, as a TAP's full queue would.
                let _ = std::io::Write::write(&mut host, packet);
            }
            _ => {
                p.common.reset();
                p.rx.clear();
                continue;
            }
        }
        work += guest::moved(&p.common, &before);
    }
    check_transmitted(&mut host);
    work
}

/// Every packet the device wrote is a whole one: a virtio-net header and
/// at most `MAX_PACKET_LEN` bytes in all.
fn check_transmitted(host: &mut File) {
    let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
    while let Ok(n) = host.read(&mut buf) {
        assert!(
            (VNET_HDR_LEN..=MAX_PACKET_LEN).contains(&n),
            "the device transmitted a {n}-byte packet"
        );
    }
}

fn run_device(
    ram: Arc<devices::ram::GuestRam>,
    features: u64,
    queues: &[QueueSetup],
    mut ops: Input,
) -> usize {
    let config = NetConfig {
        id: "net0".into(),
        tap: guest::TAP_NAME.into(),
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    };
    let mut dev = Net::with_tap(&config, guest::real_tap(), ram).expect("a unicast MAC");
    if guest::bring_up(&mut dev, features, queues).is_none() {
        return 0;
    }
    if ops.is_empty() {
        dev.queue_notify(RX_QUEUE);
        dev.queue_notify(TX_QUEUE);
    }
    let mut work = guest::used_since(dev.common(), queues);
    for _ in 0..MAX_OPS {
        if ops.is_empty() {
            break;
        }
        let before = guest::next_used(dev.common());
        match ops.u8() % 4 {
            OP_RX => dev.process_rx(),
            OP_TX => dev.queue_notify(TX_QUEUE),
            OP_PACKET => {
                // Nothing can be sent through a TAP that is down: the
                // notification is what the device gets.
                ops.part();
                dev.queue_notify(RX_QUEUE);
            }
            _ => {
                dev.reset();
                continue;
            }
        }
        work += guest::moved(dev.common(), &before);
    }
    work
}

/// A packet as the TAP hands it over: header (flags, GSO type, lengths,
/// `num_buffers` 0) and an Ethernet frame.
fn packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    p
}

/// An input with RX buffers (`rx`, device-writable) and TX chains (`tx`,
/// each a header buffer and a frame buffer) posted, `packets` sent to the
/// device, then `ops`.
fn seed(
    flags: u8,
    features: u64,
    rx: &[u32],
    tx: &[usize],
    packets: &[Vec<u8>],
    ops: &[u8],
) -> Vec<u8> {
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let mut rxq = DriverQueue::new(mem, GuestAddress(0x1000), 16);
    let mut txq = DriverQueue::new(mem, GuestAddress(0x3000), 16);
    let mut at = 0x8000u64;
    for &len in rx {
        rxq.add_chain(&[Buf::w(at, len)]);
        at += u64::from(len).next_multiple_of(0x100);
    }
    for (i, &len) in tx.iter().enumerate() {
        let frame = packet(len, i as u8);
        mem.write_slice(&frame, GuestAddress(at)).unwrap();
        txq.add_chain(&[
            Buf::r(at, VNET_HDR_LEN as u32),
            Buf::r(at + VNET_HDR_LEN as u64, len as u32),
        ]);
        at += (frame.len() as u64).next_multiple_of(0x100);
    }
    let mut op_bytes = Builder::new();
    for p in packets {
        op_bytes.u8(OP_PACKET).part(p);
    }
    op_bytes.bytes(ops);
    let mut b = Builder::new();
    b.u8(flags).u64(features);
    QueueSetup::of(&rxq).write(&mut b);
    QueueSetup::of(&txq).write(&mut b);
    b.part(&op_bytes.build());
    b.bytes(&guest::image_chunks(mem));
    b.build()
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all = u64::MAX;
    let plain = VIRTIO_F_VERSION_1;
    let mrg = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX;
    let two = [packet(60, 1), packet(1500, 2)];
    vec![
        (
            "rx-and-tx",
            seed(
                0,
                all,
                &[2048, 2048, 2048],
                &[60, 1500],
                &two,
                &[OP_RX, OP_TX],
            ),
        ),
        (
            "rx-merged-buffers",
            seed(
                0,
                mrg,
                &[256, 256, 512, 1024],
                &[],
                &[packet(1500, 3)],
                &[OP_RX],
            ),
        ),
        (
            "rx-short-packets",
            seed(
                0,
                plain,
                &[64, 64],
                &[],
                &[vec![1, 2, 3], packet(100, 4)],
                &[OP_RX, OP_RX],
            ),
        ),
        (
            "rx-waits-for-buffers",
            seed(
                0,
                all,
                &[],
                &[],
                &[packet(200, 5)],
                &[OP_RX, OP_RESET, OP_RX],
            ),
        ),
        (
            "tx-only",
            seed(0, plain, &[], &[14, 60, 9000], &[], &[OP_TX]),
        ),
        (
            "device-on-a-tap",
            seed(1, all, &[2048], &[60], &[], &[OP_TX, OP_RX, OP_RESET]),
        ),
    ]
}
