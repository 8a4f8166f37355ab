//! `balloon_queue`: the balloon serving its inflate, deflate, stats and
//! free page reporting queues over guest memory and queue state taken
//! from the input. Inflation and reporting discard real guest RAM.
//!
//! Input: `config u8` (bit 0 stats, 1 deflate-on-oom, 2 free page
//! reporting, 3 a target of half the RAM), the driver's `features u64`,
//! four queues ([`QueueSetup`]; those the device lacks are ignored), a
//! part of operations, then memory chunks. Operations, one byte each
//! (modulo 12): 0 to 7 notify that queue index, 8 ask for statistics, 9
//! the driver writes `actual` (`u32`), 10 a new target (`u64` bytes), 11
//! reset. With no operations every queue is notified once.

use devices::virtio::balloon::{Balloon, BalloonConfig};
use devices::virtio::testing::{Buf, DriverQueue};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress};

use super::guest::{self, QueueSetup};
use super::input::{Builder, Input};

const OP_STATS: u8 = 8;
const OP_ACTUAL: u8 = 9;
const OP_TARGET: u8 = 10;
const OP_RESET: u8 = 11;
const MAX_OPS: usize = 64;

fn config(flags: u8) -> BalloonConfig {
    let ram: u64 = guest::RAM_RANGES.iter().map(|r| r.1).sum();
    BalloonConfig {
        stats: flags & 1 != 0,
        deflate_on_oom: flags & 2 != 0,
        free_page_reporting: flags & 4 != 0,
        target: (flags & 8 != 0).then_some(ram / 2),
    }
}

/// Runs one input; returns how many chains went to the used rings.
pub fn run(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let flags = input.u8();
    let features = input.u64();
    let queues: Vec<_> = (0..4).map(|_| QueueSetup::read(&mut input)).collect();
    let mut ops = input.part();
    let ram = guest::boot_ram();
    guest::load_chunks(ram.memory(), &mut input);
    let mut dev = Balloon::new(&config(flags), ram).expect("a valid balloon configuration");
    if guest::bring_up(&mut dev, features, &queues).is_none() {
        return 0;
    }
    // Activation drains every ready queue already.
    let mut work = guest::used_since(dev.common(), &queues);
    let before = guest::next_used(dev.common());
    if ops.is_empty() {
        for q in 0..4 {
            dev.queue_notify(q);
        }
    }
    work += guest::moved(dev.common(), &before);
    for _ in 0..MAX_OPS {
        if ops.is_empty() {
            break;
        }
        let before = guest::next_used(dev.common());
        match ops.u8() % 12 {
            q @ 0..=7 => dev.queue_notify(u16::from(q)),
            OP_STATS => {
                dev.request_stats();
            }
            OP_ACTUAL => dev.write_config(4, &ops.u32().to_le_bytes()),
            OP_TARGET => {
                let _ = dev.set_target(ops.u64());
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

const PAGE: u64 = 4096;

fn pfns(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn stats(entries: &[(u16, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(t, v)| {
            let mut e = t.to_le_bytes().to_vec();
            e.extend_from_slice(&v.to_le_bytes());
            e
        })
        .collect()
}

/// An input with every queue of a full-featured balloon at 0x1000 +
/// 0x1000 * index holding `chains`: per queue, buffers of driver data
/// (device-readable) or, for reporting, ranges of guest RAM.
fn seed(
    flags: u8,
    features: u64,
    chains: &[(usize, Vec<u8>)],
    reports: &[(u64, u32)],
    ops: &[u8],
) -> Vec<u8> {
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let mut dqs: Vec<DriverQueue> = (0..4)
        .map(|i| DriverQueue::new(mem, GuestAddress(0x1000 * (i + 1)), 32))
        .collect();
    let mut at = 0x8000u64;
    for (q, data) in chains {
        mem.write_slice(data, GuestAddress(at)).unwrap();
        dqs[*q].add_chain(&[Buf::r(at, data.len() as u32)]);
        at += (data.len() as u64).next_multiple_of(0x100);
    }
    let reporting = if flags & 1 != 0 { 3 } else { 2 };
    for &(addr, len) in reports {
        dqs[reporting].add_chain(&[Buf::w(addr, len)]);
    }
    let mut b = Builder::new();
    b.u8(flags).u64(features);
    for dq in &dqs {
        QueueSetup::of(dq).write(&mut b);
    }
    b.part(ops);
    b.bytes(&guest::image_chunks(mem));
    b.build()
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all = u64::MAX;
    // Pages from 0x10000 on hold nothing the seeds use.
    let inflate = pfns(&[0x10, 0x11, 0x12, 0x20, 0x21, 0x100, 0x101, 0x7ffff]);
    let deflate = pfns(&[0x10, 0x11, 0x100]);
    let st = stats(&[(4, 1 << 20), (5, 4 << 20), (6, 2 << 20), (99, 7)]);
    let reports = [
        (0x30 * PAGE, 4 * PAGE as u32),
        (0x1f * PAGE, 2 * PAGE as u32),
    ];
    vec![
        (
            "every-queue",
            seed(
                0x0f,
                all,
                &[(0, inflate.clone()), (1, deflate.clone()), (2, st.clone())],
                &reports,
                &[],
            ),
        ),
        (
            "stats-returned",
            seed(
                0x01,
                all,
                &[(2, st.clone())],
                &[],
                &[
                    2, OP_STATS, 2, OP_ACTUAL, 4, 0, 0, 0, OP_TARGET, 0, 0, 1, 0, 0, 0, 0, 0,
                ],
            ),
        ),
        (
            "reporting-without-stats",
            seed(
                0x04,
                VIRTIO_F_VERSION_1 | 1 << 5,
                &[(0, inflate)],
                &reports,
                &[0, 2],
            ),
        ),
        (
            "bad-lengths",
            seed(
                0x03,
                all,
                &[(0, vec![1, 2, 3]), (1, deflate), (2, vec![0; 7])],
                &[],
                &[0, 1, 2, OP_RESET, 0],
            ),
        ),
    ]
}
