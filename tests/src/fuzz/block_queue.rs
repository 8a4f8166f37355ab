//! `block_queue`: the virtio-blk device serving its request queue over
//! guest memory and queue state taken from the input.
//!
//! Input: `flags u8` (bit 0: read-only disk), the driver's `features
//! u64`, the queue ([`QueueSetup`]), a part (`u16` length) of extra
//! notifications (one queue index per byte), then memory chunks.

use devices::virtio::block::Block;
use devices::virtio::testing::{Buf, DriverQueue};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use vm_memory::{Bytes, GuestAddress};

use super::guest::{self, QueueSetup, MAX_NOTIFIES};
use super::input::{Builder, Input};

/// Runs one input; returns how many chains the device put in the used ring.
pub fn run(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let flags = input.u8();
    let features = input.u64();
    let setup = QueueSetup::read(&mut input);
    let notifies = input.part().rest();
    let ram = guest::boot_ram();
    let (_image, config) = guest::disk_image(flags & 1 != 0);
    let mut dev = Block::new(&config, ram.clone()).expect("the disk image opens");
    guest::load_chunks(ram.memory(), &mut input);
    if guest::bring_up(&mut dev, features, &[setup]).is_none() {
        return 0;
    }
    dev.queue_notify(0);
    for &q in notifies.iter().take(MAX_NOTIFIES) {
        dev.queue_notify(u16::from(q));
    }
    guest::used_since(dev.common(), &[setup])
}

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// One request laid out as Linux lays it out: header, data, status.
struct Req {
    kind: u32,
    sector: u64,
    /// Device-readable data after the header.
    out: Vec<u8>,
    /// Device-writable bytes before the status byte.
    inn: u32,
}

/// An input with `reqs` made available on a 16-entry queue at 0x1000,
/// their buffers from 0x8000 on (from `data_at`, to place one across the
/// boundary between the first two RAM regions).
fn seed(readonly: bool, features: u64, reqs: &[Req], data_at: u64) -> Vec<u8> {
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let mut dq = DriverQueue::new(mem, GuestAddress(0x1000), 16);
    let mut at = data_at;
    let mut put = |bytes: &[u8], len: u32| {
        let a = at;
        if !bytes.is_empty() {
            mem.write_slice(bytes, GuestAddress(a)).unwrap();
        }
        at += u64::from(len).next_multiple_of(0x100);
        a
    };
    for r in reqs {
        let mut bufs = vec![Buf::r(put(&header(r.kind, r.sector), 16), 16)];
        if !r.out.is_empty() {
            bufs.push(Buf::r(put(&r.out, r.out.len() as u32), r.out.len() as u32));
        }
        if r.inn > 0 {
            bufs.push(Buf::w(put(&[], r.inn), r.inn));
        }
        bufs.push(Buf::w(put(&[], 1), 1));
        dq.add_chain(&bufs);
    }
    let mut b = Builder::new();
    b.u8(u8::from(readonly)).u64(features);
    QueueSetup::of(&dq).write(&mut b);
    b.part(&[0]);
    b.bytes(&guest::image_chunks(mem));
    b.build()
}

fn every_kind() -> Vec<Req> {
    let req = |kind, sector, out: Vec<u8>, inn| Req {
        kind,
        sector,
        out,
        inn,
    };
    vec![
        req(T_GET_ID, 0, vec![], 20),
        req(T_OUT, 1, vec![0x5a; 1024], 0),
        req(T_IN, 0, vec![], 2048),
        req(T_FLUSH, 0, vec![], 0),
        req(T_DISCARD, 0, segment(8, 8, 0), 0),
        req(T_WRITE_ZEROES, 0, segment(16, 8, 1), 0),
        req(T_IN, 127, vec![], 512),
        req(99, 0, vec![], 0),
    ]
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all = u64::MAX;
    let plain = VIRTIO_F_VERSION_1;
    let read = |sector, inn| Req {
        kind: T_IN,
        sector,
        out: vec![],
        inn,
    };
    vec![
        ("every-request", seed(false, all, &every_kind(), 0x8000)),
        ("read-only-disk", seed(true, all, &every_kind(), 0x8000)),
        ("no-event-idx", seed(false, plain, &every_kind(), 0x8000)),
        (
            "across-regions",
            seed(
                false,
                plain | VIRTIO_RING_F_EVENT_IDX,
                &[read(4, 4096)],
                0x1fff8,
            ),
        ),
        ("past-the-end", seed(false, all, &[read(126, 4096)], 0x8000)),
    ]
}
