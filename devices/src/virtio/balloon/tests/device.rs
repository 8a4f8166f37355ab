//! Inflation, deflation, reporting, statistics, config space and queue
//! layout, on every kind of RAM backing.

use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::*;
use crate::ram::{GuestRam, RegionRole, PAGE_SIZE};
use crate::virtio::balloon::device::pages_for_target;
use crate::virtio::balloon::{
    queue_layout, BalloonError, BalloonQueue, VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_S_MEMFREE,
    VIRTIO_BALLOON_S_MEMTOT,
};
use crate::virtio::{InterruptKind, VirtioDevice, VIRTIO_RING_F_EVENT_IDX};

const PATTERN: u8 = 0xa5;

/// Writes a pattern in pages 300..308 and 400, inflates 300..306 and 400.
/// Discarding backings must read zero and drop the host pages; the others
/// must refuse, keep every byte, leave the file alone and keep working.
fn inflate_on(backing: Backing) {
    let mut rig = Rig::new(&full_config(), backing);
    let hash_before = rig.file.as_ref().map(TempFile::hash);
    for pfn in (300..308).chain([400]) {
        rig.fill_page(pfn, PATTERN);
    }
    // 310 is never written: on a file backing it shows the file.
    let pfns: Vec<u32> = (300..306).chain([400, 310]).collect();
    let used = rig.inflate(&pfns);
    assert_eq!(used, vec![(0, 0)], "completed, nothing written into it");
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(0)]);

    let c = rig.dev.counters().clone();
    assert_eq!(c.inflated_pages, 8);
    assert_eq!(c.invalid_pfns, 0);
    assert_eq!(c.malformed_chains, 0);
    if backing.discards() {
        if backing.mincore_shows_discard() {
            for pfn in [300, 305, 400, 310] {
                assert!(
                    !resident(&rig.ram, page_addr(pfn)),
                    "page {pfn} still resident"
                );
            }
        }
        for pfn in pfns.iter().copied() {
            assert!(rig.page_is(pfn, 0), "page {pfn} does not read zero");
        }
        assert_eq!(c.discarded_bytes, 8 * PAGE_SIZE);
        assert_eq!(c.discard_refusals, 0);
    } else {
        for pfn in (300..306).chain([400]) {
            assert!(
                rig.page_is(pfn, PATTERN),
                "page {pfn} lost the guest's data"
            );
        }
        assert!(
            rig.page_is(310, file_byte(page_addr(310))),
            "page 310 lost the file's content"
        );
        assert_eq!(c.discarded_bytes, 0);
        // 300..306, 310 and 400: three runs, three refused discards.
        assert_eq!(c.discard_refusals, 3);
        assert_eq!(c.refused_bytes, 8 * PAGE_SIZE);
    }
    // Neighbours are untouched either way.
    for pfn in [306, 307] {
        assert!(rig.page_is(pfn, PATTERN));
    }
    assert_eq!(
        rig.file.as_ref().map(TempFile::hash),
        hash_before,
        "the backing file changed"
    );

    // The device keeps working: deflate, statistics, another inflation.
    assert_eq!(
        rig.deflate(&[300, 301]),
        vec![(0, 0)],
        "first chain on deflateq"
    );
    assert_eq!(rig.dev.counters().deflated_pages, 2);
    assert!(rig
        .post_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 1 << 20)])
        .is_empty());
    assert_eq!(
        rig.dev.stats().get(&VIRTIO_BALLOON_S_MEMFREE),
        Some(&(1 << 20))
    );
    assert_eq!(rig.inflate(&[307]).len(), 1);
    assert_eq!(rig.page_is(307, 0), backing.discards());
    assert_eq!(rig.file.as_ref().map(TempFile::hash), hash_before);
}

#[test]
fn inflate_anonymous_discards() {
    inflate_on(Backing::Anonymous);
}

#[test]
fn inflate_private_memfd_discards() {
    inflate_on(Backing::MemfdPrivate);
}

#[test]
fn inflate_shared_memfd_punches_holes() {
    inflate_on(Backing::MemfdShared);
}

#[test]
fn inflate_private_file_is_refused() {
    inflate_on(Backing::PrivateFile);
}

#[test]
fn inflate_template_clone_is_refused() {
    inflate_on(Backing::TemplateClone);
}

#[test]
fn inflate_skips_pfns_outside_ram_and_coalesces_runs() {
    // On refusing RAM, every discard call is counted: the count shows how
    // the PFNs were grouped.
    let mut rig = Rig::new(&full_config(), Backing::PrivateFile);
    let pfns = [500, 501, 502, RAM_PAGES, u32::MAX, 503, 600, 599];
    assert_eq!(rig.inflate(&pfns), vec![(0, 0)]);
    let c = rig.dev.counters();
    assert_eq!(c.invalid_pfns, 2);
    assert_eq!(c.inflated_pages, 6);
    // 500..503, 503, 600, 599: the out-of-RAM PFNs break the run.
    assert_eq!(c.discard_refusals, 4);
    assert_eq!(c.refused_bytes, 6 * PAGE_SIZE);

    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    for pfn in [500, 501, 502, 503, 504] {
        rig.fill_page(pfn, PATTERN);
    }
    // A run that ends at the last page of RAM and one that starts past it.
    let last = RAM_PAGES - 1;
    rig.fill_page(last, PATTERN);
    rig.inflate(&[500, 501, 502, RAM_PAGES, 503, last, RAM_PAGES + 1]);
    for pfn in [500, 501, 502, 503, last] {
        assert!(rig.page_is(pfn, 0), "page {pfn}");
    }
    assert!(rig.page_is(504, PATTERN));
    let c = rig.dev.counters();
    assert_eq!(c.invalid_pfns, 2);
    assert_eq!(c.inflated_pages, 5);
    assert_eq!(c.discarded_bytes, 5 * PAGE_SIZE);
}

#[test]
fn deflate_leaves_memory_alone() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    rig.fill_page(700, PATTERN);
    rig.inflate(&[701]);
    assert_eq!(rig.deflate(&[700, 701, RAM_PAGES + 7]), vec![(0, 0)]);
    assert!(rig.page_is(700, PATTERN), "deflation must not discard");
    let c = rig.dev.counters();
    assert_eq!(c.deflated_pages, 2);
    assert_eq!(c.invalid_pfns, 1);
    assert_eq!(c.discarded_bytes, PAGE_SIZE);
    // The page comes back (zeroed) on first touch.
    rig.fill_page(701, 7);
    assert!(rig.page_is(701, 7));
}

/// Reports two free ranges (one spanning 8 pages), one range outside RAM
/// and one that crosses the end of RAM.
fn report_on(backing: Backing) {
    let mut rig = Rig::new(&full_config(), backing);
    let hash_before = rig.file.as_ref().map(TempFile::hash);
    for pfn in 300..312 {
        rig.fill_page(pfn, PATTERN);
    }
    let last = RAM_PAGES - 1;
    rig.fill_page(last, PATTERN);
    let used = rig.report(&[
        (page_addr(300), 8 * PAGE_SIZE as u32),
        (page_addr(310), PAGE_SIZE as u32),
        (RAM_SIZE + PAGE_SIZE, PAGE_SIZE as u32),
        (page_addr(last), 2 * PAGE_SIZE as u32),
    ]);
    assert_eq!(used, vec![(0, 0)]);
    let reporting = rig.q(BalloonQueue::Reporting);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(reporting)]);
    let c = rig.dev.counters().clone();
    assert_eq!(c.reported_bytes, 9 * PAGE_SIZE);
    assert_eq!(c.invalid_reports, 2);
    assert!(rig.page_is(308, PATTERN) && rig.page_is(309, PATTERN) && rig.page_is(311, PATTERN));
    assert!(
        rig.page_is(last, PATTERN),
        "a range crossing the end of RAM is not touched"
    );
    if backing.discards() {
        for pfn in (300..308).chain([310]) {
            if backing.mincore_shows_discard() {
                assert!(
                    !resident(&rig.ram, page_addr(pfn)),
                    "page {pfn} still resident"
                );
            }
            assert!(rig.page_is(pfn, 0), "page {pfn}");
        }
        assert_eq!(c.discarded_bytes, 9 * PAGE_SIZE);
        assert_eq!(c.discard_refusals, 0);
    } else {
        for pfn in (300..308).chain([310]) {
            assert!(rig.page_is(pfn, PATTERN), "page {pfn}");
        }
        assert_eq!(c.discarded_bytes, 0);
        assert_eq!(c.discard_refusals, 2);
        assert_eq!(c.refused_bytes, 9 * PAGE_SIZE);
    }
    assert_eq!(
        rig.file.as_ref().map(TempFile::hash),
        hash_before,
        "the backing file changed"
    );
    // Still working.
    assert_eq!(
        rig.report(&[(page_addr(311), PAGE_SIZE as u32)]),
        vec![(4, 0)]
    );
    assert_eq!(rig.page_is(311, 0), backing.discards());
}

#[test]
fn report_anonymous_discards() {
    report_on(Backing::Anonymous);
}

#[test]
fn report_shared_memfd_punches_holes() {
    report_on(Backing::MemfdShared);
}

#[test]
fn report_private_file_is_refused() {
    report_on(Backing::PrivateFile);
}

#[test]
fn report_template_clone_is_refused() {
    report_on(Backing::TemplateClone);
}

#[test]
fn report_unaligned_range_is_refused_by_the_ram_layer() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    rig.fill_page(300, PATTERN);
    rig.report(&[(page_addr(300) + 512, 1024)]);
    assert!(rig.page_is(300, PATTERN));
    assert_eq!(rig.dev.counters().discard_refusals, 1);
}

#[test]
fn stats_buffer_is_parsed_held_and_returned_on_request() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    let statsq = rig.q(BalloonQueue::Stats);
    assert_eq!(statsq, 2);
    assert!(!rig.dev.request_stats(), "nothing to return yet");
    let used = rig.post_stats(&[
        (VIRTIO_BALLOON_S_MEMFREE, 123 << 20),
        (VIRTIO_BALLOON_S_MEMTOT, 4 << 20),
        (0x7777, 9),
    ]);
    assert!(used.is_empty(), "the device keeps the stats buffer");
    assert!(rig.irq.take().is_empty());
    assert!(rig.dev.stats_pending());
    let stats = rig.dev.stats();
    assert_eq!(stats.len(), 3);
    assert_eq!(stats[&VIRTIO_BALLOON_S_MEMFREE], 123 << 20);
    assert_eq!(stats[&VIRTIO_BALLOON_S_MEMTOT], 4 << 20);
    assert_eq!(stats[&0x7777], 9);
    assert_eq!(rig.dev.counters().stats_updates, 1);

    assert!(rig.dev.request_stats());
    assert_eq!(rig.used(BalloonQueue::Stats), vec![(0, 0)]);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(statsq)]);
    assert!(!rig.dev.stats_pending());
    assert!(!rig.dev.request_stats(), "returned only once");

    // The driver refills: values are replaced as a whole.
    assert!(rig.post_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 1)]).is_empty());
    assert_eq!(rig.dev.stats().len(), 1);
    assert_eq!(rig.dev.stats()[&VIRTIO_BALLOON_S_MEMFREE], 1);
    assert!(rig.dev.request_stats());
    assert_eq!(rig.used(BalloonQueue::Stats), vec![(1, 0)]);
}

#[test]
fn second_stats_buffer_returns_the_first() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    assert!(rig.post_stats(&[(1, 1)]).is_empty());
    assert_eq!(rig.post_stats(&[(1, 2)]), vec![(0, 0)]);
    assert_eq!(rig.dev.stats()[&1], 2);
    assert!(rig.dev.request_stats());
    assert_eq!(rig.used(BalloonQueue::Stats), vec![(1, 0)]);
}

#[test]
fn stats_split_over_descriptors_and_empty_buffer() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    let bytes = stats_bytes(&[(4, 0x1122_3344_5566_7788), (5, 2)]);
    let a = rig.buffer(&bytes[..7]);
    let b = rig.buffer(&bytes[7..]);
    assert!(rig.send(BalloonQueue::Stats, &[a, b]).is_empty());
    assert_eq!(rig.dev.stats()[&4], 0x1122_3344_5566_7788);
    assert_eq!(rig.dev.stats()[&5], 2);
    // An empty buffer is a valid (if useless) answer.
    assert_eq!(rig.post_stats(&[]), vec![(0, 0)]);
    assert!(rig.dev.stats().is_empty());
}

#[test]
fn no_stats_queue_without_the_feature() {
    let config = BalloonConfig {
        stats: false,
        ..full_config()
    };
    let mut rig = Rig::new(&config, Backing::Anonymous);
    assert_eq!(rig.dev.common().queues.len(), 3);
    assert_eq!(rig.dev.queue_index(BalloonQueue::Stats), None);
    assert_eq!(rig.q(BalloonQueue::Reporting), 2);
    assert!(!rig.dev.request_stats());
    rig.fill_page(300, PATTERN);
    assert_eq!(
        rig.report(&[(page_addr(300), PAGE_SIZE as u32)]),
        vec![(0, 0)]
    );
    assert!(rig.page_is(300, 0));
}

#[test]
fn features_follow_the_configuration() {
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    for bits in 0..8u8 {
        let config = BalloonConfig {
            stats: bits & 1 != 0,
            deflate_on_oom: bits & 2 != 0,
            free_page_reporting: bits & 4 != 0,
            target: None,
        };
        let dev = Balloon::new(&config, ram.clone()).unwrap();
        let f = dev.common().avail_features;
        assert_eq!(f & VIRTIO_BALLOON_F_STATS_VQ != 0, config.stats);
        assert_eq!(
            f & VIRTIO_BALLOON_F_DEFLATE_ON_OOM != 0,
            config.deflate_on_oom
        );
        assert_eq!(
            f & VIRTIO_BALLOON_F_PAGE_REPORTING != 0,
            config.free_page_reporting
        );
        assert_ne!(f & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(
            dev.common().queues.len(),
            2 + usize::from(config.stats) + usize::from(config.free_page_reporting)
        );
        assert!(dev.common().queues.iter().all(|q| q.max_size() == 256));
    }
}

#[test]
fn queue_layout_is_compacted_in_spec_order() {
    use BalloonQueue::*;
    let s = VIRTIO_BALLOON_F_STATS_VQ;
    let r = VIRTIO_BALLOON_F_PAGE_REPORTING;
    assert_eq!(queue_layout(0), vec![Inflate, Deflate]);
    assert_eq!(queue_layout(s), vec![Inflate, Deflate, Stats]);
    assert_eq!(queue_layout(r), vec![Inflate, Deflate, Reporting]);
    assert_eq!(
        queue_layout(s | r),
        vec![Inflate, Deflate, Stats, Reporting]
    );
    assert_eq!(
        queue_layout(s | r | VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
        queue_layout(s | r)
    );
}

#[test]
fn driver_declining_stats_finds_reporting_at_index_2() {
    // Linux numbers queues from the negotiated features: without STATS_VQ,
    // reporting_vq is its second queue after the pair.
    let mut rig = Rig::with_features(
        &full_config(),
        Backing::Anonymous,
        ALL_FEATURES & !VIRTIO_BALLOON_F_STATS_VQ,
    );
    assert_eq!(
        rig.dev.common().queues.len(),
        4,
        "the offer has four queues"
    );
    assert_eq!(rig.q(BalloonQueue::Reporting), 2);
    rig.fill_page(300, PATTERN);
    assert_eq!(
        rig.report(&[(page_addr(300), PAGE_SIZE as u32)]),
        vec![(0, 0)]
    );
    assert!(rig.page_is(300, 0));
    // The fourth queue is not part of the negotiated layout: ignored.
    rig.queues[3].add_chain(&[Buf::r(page_addr(301), 4)]);
    rig.dev.queue_notify(3);
    assert!(rig.used_at(3).is_empty());
    rig.dev.queue_notify(9);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(2)]);
}

#[test]
fn config_space_fields() {
    let config = BalloonConfig {
        target: Some(RAM_SIZE - 100 * PAGE_SIZE),
        ..full_config()
    };
    let mut rig = Rig::new(&config, Backing::Anonymous);
    let cs = rig.config_space();
    assert_eq!(&cs[0..4], &100u32.to_le_bytes());
    assert_eq!(&cs[4..16], &[0u8; 12]);
    assert_eq!(rig.dev.num_pages(), 100);
    assert_eq!(rig.dev.target_bytes(), RAM_SIZE - 100 * PAGE_SIZE);
    assert_eq!(rig.dev.actual_bytes(), RAM_SIZE);

    // The driver reports what it holds.
    rig.dev.write_config(4, &60u32.to_le_bytes());
    assert_eq!(rig.dev.actual_pages(), 60);
    assert_eq!(rig.dev.actual_bytes(), RAM_SIZE - 60 * PAGE_SIZE);
    // num_pages and the fields after actual are the device's.
    rig.dev.write_config(0, &7u32.to_le_bytes());
    rig.dev.write_config(8, &[1; 8]);
    assert_eq!(rig.dev.num_pages(), 100);
    // A write straddling num_pages and actual only changes actual's bytes.
    rig.dev.write_config(2, &[0xff, 0xff, 0x01, 0x02]);
    assert_eq!(rig.dev.actual_pages(), 0x0201);
    // Byte access.
    rig.dev.write_config(7, &[0x80]);
    assert_eq!(rig.dev.actual_pages(), 0x8000_0201);
    let cs = rig.config_space();
    assert_eq!(&cs[0..4], &100u32.to_le_bytes());
    assert_eq!(&cs[4..8], &0x8000_0201u32.to_le_bytes());
    assert_eq!(&cs[8..16], &[0u8; 8]);
    // Partial and out-of-range reads.
    let mut b = [0xeeu8; 4];
    rig.dev.read_config(2, &mut b);
    assert_eq!(b, [0, 0, 0x01, 0x02]);
    rig.dev.read_config(14, &mut b);
    assert_eq!(b, [0; 4]);
    rig.dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
    rig.dev.write_config(u64::MAX, &[1, 2]);
    assert_eq!(rig.dev.actual_pages(), 0x8000_0201);
    // A bogus actual does not upset the byte count.
    rig.dev.write_config(4, &u32::MAX.to_le_bytes());
    assert_eq!(rig.dev.actual_bytes(), 0);
    assert!(rig.irq.take().is_empty(), "config writes raise nothing");
}

#[test]
fn set_target_updates_num_pages_and_interrupts() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    assert_eq!(rig.dev.num_pages(), 0);
    let gen = rig.dev.common().config_generation;
    rig.dev.set_target(RAM_SIZE - 10 * PAGE_SIZE).unwrap();
    assert_eq!(rig.dev.num_pages(), 10);
    assert_eq!(&rig.config_space()[0..4], &10u32.to_le_bytes());
    assert_eq!(rig.dev.common().config_generation, gen.wrapping_add(1));
    assert_eq!(rig.irq.take(), vec![InterruptKind::Config]);
    assert_eq!(rig.dev.config().target, Some(RAM_SIZE - 10 * PAGE_SIZE));
    // A target that is not a whole number of pages below RAM rounds the balloon down.
    rig.dev.set_target(RAM_SIZE - 10 * PAGE_SIZE + 1).unwrap();
    assert_eq!(rig.dev.num_pages(), 9);
    // At or above the RAM size the balloon empties.
    rig.dev.set_target(RAM_SIZE * 2).unwrap();
    assert_eq!(rig.dev.num_pages(), 0);
    assert_eq!(rig.dev.target_bytes(), RAM_SIZE);
    rig.dev.set_target(0).unwrap();
    assert_eq!(rig.dev.num_pages(), RAM_PAGES);
    assert_eq!(rig.dev.common().config_generation, gen.wrapping_add(4));
    assert_eq!(rig.irq.take(), vec![InterruptKind::Config; 3]);

    // Before DRIVER_OK the generation moves but nothing is raised.
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let mut dev = Balloon::new(&full_config(), ram).unwrap();
    let irq = Arc::new(crate::virtio::testing::InterruptLog::default());
    dev.common_mut().interrupt = Some(irq.clone());
    dev.set_target(0).unwrap();
    assert_eq!(dev.common().config_generation, 1);
    assert!(irq.take().is_empty());
}

#[test]
fn targets_and_ram() {
    assert_eq!(pages_for_target(RAM_SIZE, None).unwrap(), 0);
    assert_eq!(pages_for_target(RAM_SIZE, Some(RAM_SIZE)).unwrap(), 0);
    assert_eq!(pages_for_target(RAM_SIZE, Some(0)).unwrap(), RAM_PAGES);
    assert!(matches!(
        pages_for_target(1 << 50, Some(0)),
        Err(BalloonError::TargetTooLow { pages, .. }) if pages == 1 << 38
    ));
    assert_eq!(
        pages_for_target(1 << 50, Some((1 << 50) - (u64::from(u32::MAX) << 12))).unwrap(),
        u32::MAX
    );

    // Only boot RAM counts; a guest without any is refused.
    let mut b = GuestRam::builder();
    b.add(
        "virtio-mem",
        &crate::ram::BackingSpec::anonymous(),
        RegionRole::VirtioMem("mem0".into()),
        &[(GuestAddress(0), RAM_SIZE)],
    )
    .unwrap();
    let ram = Arc::new(b.build().unwrap());
    assert!(matches!(
        Balloon::new(&full_config(), ram),
        Err(BalloonError::NoBootRam)
    ));

    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &crate::ram::BackingSpec::anonymous(),
        RegionRole::Boot,
        &[(GuestAddress(0), RAM_SIZE)],
    )
    .unwrap();
    b.add(
        "virtio-mem",
        &crate::ram::BackingSpec::anonymous(),
        RegionRole::VirtioMem("mem0".into()),
        &[(GuestAddress(RAM_SIZE), RAM_SIZE)],
    )
    .unwrap();
    let ram = Arc::new(b.build().unwrap());
    let config = BalloonConfig {
        target: Some(RAM_SIZE / 2),
        ..full_config()
    };
    let dev = Balloon::new(&config, ram).unwrap();
    assert_eq!(u64::from(dev.num_pages()), RAM_SIZE / 2 / PAGE_SIZE);
}

#[test]
fn inflation_spans_adjacent_regions() {
    // Two regions back to back with different backings: one run of PFNs
    // across the boundary becomes one discard per region.
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &crate::ram::BackingSpec::anonymous(),
        RegionRole::Boot,
        &[(GuestAddress(0), RAM_SIZE)],
    )
    .unwrap();
    b.add(
        "virtio-mem",
        &crate::ram::BackingSpec::memfd(true),
        RegionRole::VirtioMem("mem0".into()),
        &[(GuestAddress(RAM_SIZE), RAM_SIZE)],
    )
    .unwrap();
    let ram = Arc::new(b.build().unwrap());
    let mut rig = Rig::on_ram(&full_config(), ram, None, ALL_FEATURES);
    let last = RAM_PAGES - 1;
    rig.fill_page(last, PATTERN);
    rig.fill_page(RAM_PAGES, PATTERN);
    rig.inflate(&[last, RAM_PAGES]);
    assert!(rig.page_is(last, 0) && rig.page_is(RAM_PAGES, 0));
    let c = rig.dev.counters();
    assert_eq!(c.discarded_bytes, 2 * PAGE_SIZE);
    assert_eq!(c.discard_refusals, 0);
    assert_eq!(c.invalid_pfns, 0);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    assert!(rig.event_idx());
    // used_event = 0: interrupt when the used index moves past 0.
    rig.inflate(&[300]);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(0)]);
    rig.inflate(&[301]);
    assert!(
        rig.irq.take().is_empty(),
        "the driver asked for no interrupt yet"
    );
    rig.queues[0].set_used_event(2);
    rig.inflate(&[302]);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(0)]);

    let mut rig = Rig::with_features(
        &full_config(),
        Backing::Anonymous,
        ALL_FEATURES & !VIRTIO_RING_F_EVENT_IDX,
    );
    rig.inflate(&[300]);
    rig.inflate(&[301]);
    assert_eq!(rig.irq.take(), vec![InterruptKind::Queue(0); 2]);
}

#[test]
fn several_chains_in_one_notification() {
    let mut rig = Rig::new(&full_config(), Backing::Anonymous);
    for pfn in 300..304 {
        rig.fill_page(pfn, PATTERN);
    }
    let bufs: Vec<Buf> = (300..304u32)
        .map(|p| rig.buffer(&p.to_le_bytes()))
        .collect();
    for b in &bufs {
        rig.queues[0].add_chain(&[*b]);
    }
    rig.dev.queue_notify(0);
    assert_eq!(rig.used_at(0), vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    assert_eq!(
        rig.irq.take(),
        vec![InterruptKind::Queue(0)],
        "one interrupt per burst"
    );
    assert!((300..304).all(|p| rig.page_is(p, 0)));
}

#[test]
fn reset_forgets_the_driver() {
    let config = BalloonConfig {
        target: Some(RAM_SIZE / 2),
        ..full_config()
    };
    let mut rig = Rig::new(&config, Backing::Anonymous);
    rig.post_stats(&[(4, 4)]);
    rig.dev.write_config(4, &5u32.to_le_bytes());
    rig.dev.reset();
    assert!(!rig.dev.stats_pending());
    assert!(!rig.dev.request_stats());
    assert_eq!(rig.dev.actual_pages(), 0);
    assert_eq!(
        u64::from(rig.dev.num_pages()),
        RAM_SIZE / 2 / PAGE_SIZE,
        "the target stays"
    );
    assert_eq!(rig.dev.stats()[&4], 4, "last known statistics stay");
    assert!(!rig.dev.common().activated);
    // Notifications before the next DRIVER_OK do nothing.
    rig.queues[0].add_chain(&[Buf::r(page_addr(300), 4)]);
    rig.dev.queue_notify(0);
    assert!(rig.used_at(0).is_empty());
    assert!(rig.irq.take().is_empty());
}

#[test]
fn stats_buffer_primed_before_driver_ok_is_taken_at_activation() {
    use crate::virtio::testing::InterruptLog;
    use crate::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
    };
    // Linux's init_vqs: queues set up, the first stats buffer added and
    // notified, and only then DRIVER_OK.
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let mut dev = Balloon::new(&full_config(), ram.clone()).unwrap();
    let queues: Vec<DriverQueue> = (0..4u64)
        .map(|i| DriverQueue::new(ram.memory(), GuestAddress(i * 0x4000), QSIZE))
        .collect();
    let irq = Arc::new(InterruptLog::default());
    let c = dev.common_mut();
    c.interrupt = Some(irq.clone());
    c.set_status(STATUS_ACKNOWLEDGE);
    c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let f = c.avail_features | VIRTIO_F_VERSION_1;
    c.ack_features_page(0, f as u32);
    c.ack_features_page(1, (f >> 32) as u32);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    c.set_status(ok);
    for (i, q) in queues.iter().enumerate() {
        q.configure(c, i);
    }
    let mut statsq = queues.into_iter().nth(2).unwrap();
    let bytes = stats_bytes(&[(VIRTIO_BALLOON_S_MEMFREE, 77)]);
    let at = 0x20000;
    vm_memory::Bytes::write_slice(ram.memory(), &bytes, GuestAddress(at)).unwrap();
    statsq.add_chain(&[Buf::r(at, bytes.len() as u32)]);
    dev.queue_notify(2);
    assert!(dev.stats().is_empty(), "not before DRIVER_OK");

    assert!(dev.common_mut().set_status(ok | STATUS_DRIVER_OK));
    dev.activate().unwrap();
    assert_eq!(dev.stats().get(&VIRTIO_BALLOON_S_MEMFREE), Some(&77));
    assert!(dev.stats_pending());
    assert!(dev.request_stats());
    assert_eq!(
        statsq
            .used()
            .iter()
            .map(|e| (e.id(), e.len()))
            .collect::<Vec<_>>(),
        vec![(0, 0)]
    );
    assert_eq!(irq.take(), vec![InterruptKind::Queue(2)]);
}

#[test]
fn later_target_below_ram_is_refused_on_template_clone_ram() {
    for backing in [Backing::TemplateClone, Backing::PrivateFile] {
        let (ram, _file) = make_ram(backing);
        let mut dev = Balloon::new(&full_config(), ram).unwrap();
        let before = (dev.num_pages(), dev.common().config_generation);
        let err = dev
            .set_target(RAM_PAGES as u64 * PAGE_SIZE / 2)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("balloon: target=") && msg.contains("leave target unset"),
            "{msg}"
        );
        assert_eq!((dev.num_pages(), dev.common().config_generation), before);
        // A target equal to the RAM size never inflates, so it is allowed.
        dev.set_target(RAM_PAGES as u64 * PAGE_SIZE).unwrap();
    }
    let (ram, _file) = make_ram(Backing::Anonymous);
    let mut dev = Balloon::new(&full_config(), ram).unwrap();
    dev.set_target(RAM_PAGES as u64 * PAGE_SIZE / 2).unwrap();
    assert_eq!(dev.num_pages(), RAM_PAGES / 2);
}
