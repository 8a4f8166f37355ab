//! Guest input that breaks the rules: the device survives, logs, completes
//! what it can, acts on nothing it cannot trust, and keeps going.

use super::*;
use crate::ram::PAGE_SIZE;
use crate::virtio::balloon::BalloonQueue;
use crate::virtio::testing::{
    raw, write_table, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use crate::virtio::InterruptKind;
use virtio_queue::QueueT;

const PATTERN: u8 = 0x5a;
/// Descriptors for hand-made chains, away from those `add_chain` uses first.
const D0: u16 = QSIZE - 4;
const D1: u16 = QSIZE - 3;

/// A descriptor as (addr, len, flags, next).
type Desc = (u64, u32, u16, u16);

fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// A rig with pattern pages 300..304 and a PFN buffer naming them.
fn rig_with_victims(backing: Backing) -> (Rig, Buf) {
    let mut rig = Rig::new(&full_config(), backing);
    for pfn in 300..304 {
        rig.fill_page(pfn, PATTERN);
    }
    let buf = rig.buffer(&pfn_bytes(&[300, 301, 302, 303]));
    (rig, buf)
}

fn victims_intact(rig: &Rig) -> bool {
    (300..304).all(|p| rig.page_is(p, PATTERN))
}

/// Sends one hand-made chain on `queue` and checks the device completed it
/// with length 0, counted it as malformed and touched nothing, then checks
/// that a good inflation still works.
fn expect_malformed(mut rig: Rig, queue: BalloonQueue, head: u16, table: &[(u16, Desc)]) {
    let i = rig.q(queue);
    let table: Vec<_> = table
        .iter()
        .map(|&(idx, (a, l, f, n))| (idx, raw(a, l, f, n)))
        .collect();
    let before = rig.dev.counters().malformed_chains;
    rig.queues[usize::from(i)].add_raw_chain(head, &table);
    rig.dev.queue_notify(i);
    assert_eq!(rig.used_at(i), vec![(u32::from(head), 0)]);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(i)]);
    assert_eq!(rig.dev.counters().malformed_chains, before + 1);
    assert!(
        victims_intact(&rig),
        "a malformed chain changed guest memory"
    );
    let c = rig.dev.counters();
    assert_eq!(
        (c.inflated_pages, c.deflated_pages, c.reported_bytes),
        (0, 0, 0)
    );

    rig.fill_page(310, PATTERN);
    assert_eq!(rig.inflate(&[310]).len(), 1);
    assert!(rig.page_is(310, 0), "the device stopped working");
}

#[test]
fn looping_chain() {
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[
            (D0, (buf.addr, 8, VIRTQ_DESC_F_NEXT, D1)),
            (D1, (buf.addr + 8, 8, VIRTQ_DESC_F_NEXT, D0)),
        ],
    );
}

#[test]
fn next_index_outside_the_table() {
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[(D0, (buf.addr, 16, VIRTQ_DESC_F_NEXT, 200))],
    );
}

#[test]
fn buffer_outside_ram() {
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[
            (D0, (buf.addr, 16, VIRTQ_DESC_F_NEXT, D1)),
            (D1, (RAM_SIZE + PAGE_SIZE, 8, 0, 0)),
        ],
    );
}

#[test]
fn buffer_crossing_the_end_of_ram() {
    let (rig, _) = rig_with_victims(Backing::Anonymous);
    rig.write(RAM_SIZE - 8, &pfn_bytes(&[300, 301]));
    expect_malformed(
        rig,
        BalloonQueue::Deflate,
        D0,
        &[(D0, (RAM_SIZE - 8, 16, 0, 0))],
    );
}

#[test]
fn address_plus_length_overflows() {
    let (rig, _) = rig_with_victims(Backing::Anonymous);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[(D0, (u64::MAX - 3, 8, 0, 0))],
    );
}

#[test]
fn chain_longer_than_4_gib() {
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[
            (D0, (buf.addr, 0x8000_0000, VIRTQ_DESC_F_NEXT, D1)),
            (D1, (buf.addr, 0x8000_0000, 0, 0)),
        ],
    );
}

#[test]
fn pfn_array_not_a_multiple_of_4() {
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    expect_malformed(rig, BalloonQueue::Inflate, D0, &[(D0, (buf.addr, 6, 0, 0))]);
}

#[test]
fn pfn_array_too_large() {
    let (rig, _) = rig_with_victims(Backing::Anonymous);
    // 2 MiB of PFNs (zeroes: PFN 0 over and over), more than one chain may carry.
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[(D0, (page_addr(DATA_PFN) + (1 << 20), 2 << 20, 0, 0))],
    );
}

/// A queue of chains at the old 1 MiB cap held the device thread for
/// seconds (fuzz/regressions/balloon_queue/pfn-arrays-of-128k): the cap
/// is now 1024 PFNs, and a longer array is refused whole.
#[test]
fn pfn_array_over_1024_entries() {
    let (mut rig, _) = rig_with_victims(Backing::Anonymous);
    let over = rig.buffer(&pfn_bytes(&[300; 1025]));
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[(D0, (over.addr, over.len, 0, 0))],
    );

    // 1024 is still taken, each PFN acted on.
    let (mut rig, _) = rig_with_victims(Backing::Anonymous);
    assert_eq!(rig.inflate(&[300; 1024]).len(), 1);
    assert!(rig.page_is(300, 0), "the page was discarded");
    let c = rig.dev.counters();
    assert_eq!((c.inflated_pages, c.malformed_chains), (1024, 0));
}

#[test]
fn device_writable_pfn_buffer() {
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[(D0, (buf.addr, 16, VIRTQ_DESC_F_WRITE, 0))],
    );
}

#[test]
fn malformed_report_discards_nothing() {
    let (rig, _) = rig_with_victims(Backing::Anonymous);
    let range = (page_addr(300), 4 * PAGE_SIZE as u32);
    expect_malformed(
        rig,
        BalloonQueue::Reporting,
        D0,
        &[
            (
                D0,
                (range.0, range.1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, D1),
            ),
            (
                D1,
                (range.0, range.1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, D0),
            ),
        ],
    );
}

#[test]
fn malformed_stats_buffers_are_returned_and_the_held_one_kept() {
    let (mut rig, _) = rig_with_victims(Backing::Anonymous);
    assert!(rig.post_stats(&[(4, 44)]).is_empty());
    let statsq = rig.q(BalloonQueue::Stats);
    // Not a whole number of entries.
    let odd = rig.buffer(&[1u8; 15]);
    assert_eq!(rig.send(BalloonQueue::Stats, &[odd]), vec![(1, 0)]);
    // Device-writable.
    let w = rig.buffer(&stats_bytes(&[(4, 1)]));
    assert_eq!(
        rig.send(BalloonQueue::Stats, &[Buf::w(w.addr, w.len)]),
        vec![(2, 0)]
    );
    // Larger than any stats buffer.
    let big = Buf::r(page_addr(DATA_PFN), 4100);
    assert_eq!(rig.send(BalloonQueue::Stats, &[big]), vec![(3, 0)]);
    assert_eq!(rig.dev.counters().malformed_chains, 3);
    assert_eq!(rig.dev.stats()[&4], 44, "statistics unchanged");
    // Event-idx with used_event 0: only the first return interrupts.
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(statsq)]);
    assert!(rig.dev.request_stats());
    assert_eq!(rig.used(BalloonQueue::Stats), vec![(0, 0)]);
}

#[test]
fn head_index_outside_the_queue() {
    let (mut rig, buf) = rig_with_victims(Backing::Anonymous);
    // The head cannot even be returned; the chain after it still is.
    rig.queues[0].add_raw_chain(QSIZE + 10, &[]);
    rig.queues[0].add_chain(&[buf]);
    rig.dev.queue_notify(0);
    assert_eq!(rig.used_at(0), vec![(0, 0)]);
    assert_eq!(rig.dev.counters().malformed_chains, 1);
    assert!((300..304).all(|p| rig.page_is(p, 0)));
}

#[test]
fn corrupt_available_index_does_not_hang() {
    let (mut rig, buf) = rig_with_victims(Backing::Anonymous);
    rig.queues[0].add_chain(&[buf]);
    let idx_addr = rig.queues[0].avail_ring().0 + 2;
    rig.write(idx_addr, &1000u16.to_le_bytes());
    rig.dev.queue_notify(0);
    assert!(rig.used_at(0).is_empty());
    assert!(victims_intact(&rig));
    // The driver repairs its ring: work resumes.
    rig.write(idx_addr, &1u16.to_le_bytes());
    rig.dev.queue_notify(0);
    assert_eq!(rig.used_at(0), vec![(0, 0)]);
}

#[test]
fn refusals_do_not_stop_a_burst() {
    // On refusing RAM, many chains in one notification are all completed.
    let (mut rig, buf) = rig_with_victims(Backing::TemplateClone);
    for _ in 0..5 {
        rig.queues[0].add_chain(&[buf]);
    }
    rig.dev.queue_notify(0);
    assert_eq!(rig.used_at(0).len(), 5);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(0)]);
    let c = rig.dev.counters();
    assert_eq!(c.discard_refusals, 5);
    assert_eq!(c.inflated_pages, 20);
    assert!(victims_intact(&rig));
}

/// A queue the driver never made ready has its rings at guest-physical 0,
/// unset: a notification for it must not touch them (as every other
/// device already checked). The queues the driver did set up keep working.
#[test]
fn notify_for_a_queue_never_made_ready_touches_nothing() {
    let ram = make_ram(Backing::Anonymous).0;
    let mut dev = Balloon::new(&full_config(), ram.clone()).expect("balloon");
    // Only inflateq and deflateq, away from guest-physical 0.
    let queues: Vec<DriverQueue> = (1..3u64)
        .map(|i| DriverQueue::new(ram.memory(), GuestAddress(i * RING_STRIDE), QSIZE))
        .collect();
    let irq = init_device(&mut dev, ALL_FEATURES, &[&queues[0], &queues[1]]).expect("activate");
    let low = vec![PATTERN; PAGE_SIZE as usize];
    ram.memory().write_slice(&low, GuestAddress(0)).unwrap();
    let stats = dev.queue_index(BalloonQueue::Stats).unwrap();
    let reporting = dev.queue_index(BalloonQueue::Reporting).unwrap();
    for q in [stats, reporting] {
        assert!(!dev.common().queues[usize::from(q)].ready());
        dev.queue_notify(q);
    }
    let mut now = vec![0u8; low.len()];
    ram.memory().read_slice(&mut now, GuestAddress(0)).unwrap();
    assert!(now == low, "guest-physical 0 was written");
    assert!(irq.take().is_empty());
    assert_eq!(dev.counters(), &Default::default());
    assert!(dev.stats().is_empty());

    let mut inflate = queues.into_iter().next().unwrap();
    let at = 0x20000;
    ram.memory()
        .write_slice(&pfn_bytes(&[DATA_PFN]), GuestAddress(at))
        .unwrap();
    inflate.add_chain(&[Buf::r(at, 4)]);
    dev.queue_notify(0);
    assert_eq!(inflate.used().len(), 1);
    assert_eq!(dev.counters().inflated_pages, 1);
}

/// VIRTIO_F_INDIRECT_DESC is never offered: a chain whose PFNs sit behind
/// an indirect descriptor is malformed (virtio 1.2, 2.7.5.3.1), and none
/// of its pages are inflated.
#[test]
fn indirect_chains_are_malformed() {
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    let table = rig.dev.common().ram.memory().clone();
    let at = 0x70000;
    let len = write_table(&table, at, &[raw(buf.addr, buf.len, 0, 0)]);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[(D0, (at, len, VIRTQ_DESC_F_INDIRECT, 0))],
    );
    // Behind a direct descriptor, too.
    let (rig, buf) = rig_with_victims(Backing::Anonymous);
    let len = write_table(&table, at, &[raw(buf.addr + 4, buf.len - 4, 0, 0)]);
    expect_malformed(
        rig,
        BalloonQueue::Inflate,
        D0,
        &[
            (D0, (buf.addr, 4, VIRTQ_DESC_F_NEXT, D1)),
            (D1, (at, len, VIRTQ_DESC_F_INDIRECT, 0)),
        ],
    );
}
