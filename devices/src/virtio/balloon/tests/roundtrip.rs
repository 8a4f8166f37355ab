//! Saving and restoring at any point is invisible to the driver.
//!
//! Two identical guests run the same random sequence of driver and VMM
//! operations: A without interruption, B with its device saved to bytes
//! and rebuilt from them at random points. Each has its own guest RAM, and
//! B's test driver carries on over its RAM with the same queues. After
//! every step both must have returned the same used entries, raised the
//! same interrupts and show the same config space, statistics and state;
//! at the end their guest memory must be identical.

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::virtio::balloon::{
    queue_layout, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::persist::Persist;
use crate::virtio::testing::{raw, InterruptLog, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

#[derive(Clone, Debug)]
enum Op {
    /// The guest writes a page.
    Touch {
        pfn: u32,
        byte: u8,
    },
    Inflate(Vec<u32>),
    Deflate(Vec<u32>),
    /// Free ranges as (first page, pages).
    Report(Vec<(u32, u8)>),
    PostStats(Vec<(u16, u64)>),
    RequestStats,
    SetTarget(u64),
    WriteActual(u32),
    /// The driver moves `used_event` of a queue to what it has seen plus `ahead`.
    UsedEvent {
        queue: u8,
        ahead: u8,
    },
    Malformed {
        queue: u8,
        kind: u8,
    },
    /// Only in B: save the device and rebuild it from the bytes.
    Snapshot,
}

#[derive(Clone, Debug)]
struct Setup {
    config: BalloonConfig,
    features: u64,
    backing: Backing,
}

fn pfn() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => DATA_PFN..RAM_PAGES,
        1 => RAM_PAGES..RAM_PAGES + 16,
        1 => RAM_PAGES..=u32::MAX,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (DATA_PFN..RAM_PAGES, 1..=u8::MAX).prop_map(|(pfn, byte)| Op::Touch { pfn, byte }),
        4 => vec(pfn(), 0..12).prop_map(Op::Inflate),
        2 => vec(pfn(), 0..12).prop_map(Op::Deflate),
        3 => vec((DATA_PFN..RAM_PAGES + 4, 1..=16u8), 1..4).prop_map(Op::Report),
        2 => vec((0u16..20, any::<u64>()), 0..12).prop_map(Op::PostStats),
        2 => Just(Op::RequestStats),
        1 => prop_oneof![0..=RAM_SIZE * 2, Just(RAM_SIZE)].prop_map(Op::SetTarget),
        1 => any::<u32>().prop_map(Op::WriteActual),
        1 => (any::<u8>(), 0..3u8).prop_map(|(queue, ahead)| Op::UsedEvent { queue, ahead }),
        2 => (any::<u8>(), 0..4u8).prop_map(|(queue, kind)| Op::Malformed { queue, kind }),
        3 => Just(Op::Snapshot),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<[bool; 4]>(),
        proptest::option::of(0..=RAM_SIZE * 2),
        any::<bool>(),
        prop_oneof![
            3 => Just(Backing::Anonymous),
            1 => Just(Backing::MemfdShared),
            1 => Just(Backing::TemplateClone),
        ],
    )
        .prop_map(
            |([stats, reporting, oom, event_idx], target, ack_all, backing)| {
                let mut features = ALL_FEATURES;
                if !event_idx {
                    features &= !VIRTIO_RING_F_EVENT_IDX;
                }
                if !ack_all {
                    // A driver that declines some of the offer.
                    features &= !(VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
                }
                Setup {
                    config: BalloonConfig {
                        free_page_reporting: reporting,
                        deflate_on_oom: oom,
                        stats,
                        target,
                    },
                    features,
                    backing,
                }
            },
        )
}

/// Applies one operation as driver or VMM; identical on A and B.
fn apply(rig: &mut Rig, op: &Op, seen: &mut [u16]) {
    let layout = queue_layout(rig.dev.common().acked_features);
    let has = |q: BalloonQueue| layout.contains(&q);
    match op {
        Op::Touch { pfn, byte } => rig.fill_page(*pfn, *byte),
        Op::Inflate(pfns) => {
            rig.inflate(pfns);
        }
        Op::Deflate(pfns) => {
            rig.deflate(pfns);
        }
        Op::Report(ranges) if has(BalloonQueue::Reporting) => {
            let ranges: Vec<(u64, u32)> = ranges
                .iter()
                .map(|&(p, n)| (page_addr(p), u32::from(n) * PAGE_SIZE as u32))
                .collect();
            rig.report(&ranges);
        }
        Op::PostStats(entries) if has(BalloonQueue::Stats) => {
            rig.post_stats(entries);
        }
        Op::RequestStats => {
            rig.dev.request_stats();
        }
        Op::SetTarget(t) => {
            // RAM that cannot discard refuses any inflating target; both runs see the same.
            let discards = rig
                .dev
                .common()
                .ram
                .regions()
                .iter()
                .all(|r| r.backing.discard_reads_zero());
            match rig.dev.set_target(*t) {
                Ok(()) => {}
                Err(crate::virtio::balloon::BalloonError::Policy(_)) if !discards => {}
                Err(e) => panic!("target {t}: {e}"),
            }
        }
        Op::WriteActual(a) => rig.dev.write_config(4, &a.to_le_bytes()),
        Op::UsedEvent { queue, ahead } => {
            let i = usize::from(*queue) % layout.len();
            rig.queues[i].set_used_event(seen[i].wrapping_add(u16::from(*ahead)));
        }
        Op::Malformed { queue, kind } => {
            let i = (usize::from(*queue) % layout.len()) as u16;
            let buf = rig.buffer(&[0x11; 16]);
            let (d0, d1) = (QSIZE - 2, QSIZE - 1);
            let table = match kind {
                0 => vec![
                    (d0, raw(buf.addr, 8, VIRTQ_DESC_F_NEXT, d1)),
                    (d1, raw(buf.addr + 8, 8, VIRTQ_DESC_F_NEXT, d0)),
                ],
                1 => vec![(d0, raw(RAM_SIZE + PAGE_SIZE, 8, 0, 0))],
                2 => vec![(d0, raw(buf.addr, 6, 0, 0))],
                _ => vec![(d0, raw(buf.addr, 16, VIRTQ_DESC_F_WRITE, 0))],
            };
            rig.queues[usize::from(i)].add_raw_chain(d0, &table);
            rig.dev.queue_notify(i);
        }
        _ => {}
    }
}

/// Collects what the driver sees after an operation.
fn observe(rig: &mut Rig, seen: &mut [u16]) -> Vec<Vec<(u32, u32)>> {
    (0..rig.queues.len())
        .map(|i| {
            let used = rig.used_at(i as u16);
            seen[i] = seen[i].wrapping_add(used.len() as u16);
            used
        })
        .collect()
}

fn snapshot(rig: &mut Rig) {
    let bytes = rig.dev.save_bytes();
    let mut dev = Balloon::restore_bytes(rig.ram.clone(), &bytes).expect("restore saved state");
    let irq = Arc::new(InterruptLog::default());
    dev.common_mut().interrupt = Some(irq.clone());
    rig.dev = dev;
    rig.irq = irq;
}

fn run(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut a = Rig::with_features(&setup.config, setup.backing, setup.features);
    let mut b = Rig::with_features(&setup.config, setup.backing, setup.features);
    let hashes = |r: &Rig| r.file.as_ref().map(TempFile::hash);
    let (ha, hb) = (hashes(&a), hashes(&b));
    let mut seen_a = vec![0u16; a.queues.len()];
    let mut seen_b = vec![0u16; b.queues.len()];
    for (step, op) in ops.iter().enumerate() {
        if let Op::Snapshot = op {
            snapshot(&mut b);
            continue;
        }
        apply(&mut a, op, &mut seen_a);
        apply(&mut b, op, &mut seen_b);
        let ctx = || format!("step {step}: {op:?}");
        prop_assert_eq!(
            observe(&mut a, &mut seen_a),
            observe(&mut b, &mut seen_b),
            "{}",
            ctx()
        );
        prop_assert_eq!(a.irq.take(), b.irq.take(), "{}", ctx());
        prop_assert_eq!(a.config_space(), b.config_space(), "{}", ctx());
        prop_assert_eq!(a.dev.stats(), b.dev.stats(), "{}", ctx());
        prop_assert_eq!(a.dev.counters(), b.dev.counters(), "{}", ctx());
        prop_assert_eq!(a.dev.save(), b.dev.save(), "{}", ctx());

        // What the operation must have done to memory, on both.
        if let Op::Inflate(pfns) = op {
            if setup.backing.discards() {
                for &p in pfns.iter().filter(|&&p| p < RAM_PAGES) {
                    prop_assert!(a.page_is(p, 0) && b.page_is(p, 0), "{}: page {p}", ctx());
                }
            }
        }
    }
    // Guest memory: same bytes everywhere, discarded pages included.
    let (ma, mb) = (a.read(0, RAM_SIZE as usize), b.read(0, RAM_SIZE as usize));
    if let Some(at) = ma.iter().zip(&mb).position(|(x, y)| x != y) {
        prop_assert!(false, "guest memory differs at {at:#x}");
    }
    // A template clone's file is never written.
    prop_assert_eq!(hashes(&a), ha);
    prop_assert_eq!(hashes(&b), hb);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn snapshots_are_invisible_to_the_driver(setup in setup(), ops in vec(op(), 1..48)) {
        run(&setup, &ops)?;
    }
}

#[test]
fn reporting_ranges_are_page_multiples() {
    // The property test reports whole pages; make sure it really discards.
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    rig.fill_page(DATA_PFN, 3);
    let mut seen = vec![0u16; rig.queues.len()];
    apply(&mut rig, &Op::Report(vec![(DATA_PFN, 1)]), &mut seen);
    assert!(rig.page_is(DATA_PFN, 0));
    assert_eq!(rig.dev.counters().discarded_bytes, PAGE_SIZE);
}
