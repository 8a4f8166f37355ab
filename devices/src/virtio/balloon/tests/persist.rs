//! Saving and restoring: what survives, and what a damaged state gets.

use std::sync::Arc;

use super::*;
use crate::virtio::balloon::{
    BalloonCounters, BalloonState, MAX_STATS_ENTRIES, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::persist::{encode, Persist, PersistError};
use crate::virtio::testing::InterruptLog;
use crate::virtio::{InterruptKind, TYPE_BALLOON, TYPE_NET};

/// A device with something in every field: a target, an `actual`, counters,
/// statistics and a held stats buffer (head 1, after one was returned).
fn busy_rig() -> Rig {
    let config = BalloonConfig {
        target: Some(RAM_SIZE - 64 * PAGE_SIZE),
        ..full_config()
    };
    let mut rig = Rig::new(&config, Backing::Anonymous);
    rig.fill_page(300, 1);
    rig.inflate(&[300, 301, RAM_PAGES + 1]);
    rig.report(&[(page_addr(310), PAGE_SIZE as u32)]);
    rig.dev.write_config(4, &3u32.to_le_bytes());
    rig.post_stats(&[(4, 40)]);
    assert!(rig.dev.request_stats());
    rig.post_stats(&[(4, 41), (5, 50)]);
    rig.dev.set_target(RAM_SIZE - 32 * PAGE_SIZE).unwrap();
    rig.irq.take();
    for i in 0..rig.queues.len() as u16 {
        rig.used_at(i);
    }
    rig
}

fn restore(rig: &Rig, bytes: &[u8]) -> Result<Balloon, PersistError> {
    Balloon::restore_bytes(rig.ram.clone(), bytes)
}

fn restore_state(rig: &Rig, state: &BalloonState) -> Result<Balloon, PersistError> {
    restore(rig, &encode(TYPE_BALLOON, 1, state))
}

#[test]
fn round_trip_keeps_every_field_and_the_held_stats_buffer() {
    let mut rig = busy_rig();
    let saved = rig.dev.save();
    assert_eq!(saved.stats_head, Some(1));
    assert_eq!(saved.num_pages, 32);
    assert_eq!(saved.actual, 3);
    assert_eq!(saved.stats, vec![(4, 41), (5, 50)]);
    assert_eq!(saved.counters.inflated_pages, 2);
    assert_eq!(saved.counters.invalid_pfns, 1);

    let mut dev = restore(&rig, &rig.dev.save_bytes()).expect("restore");
    assert_eq!(dev.save(), saved);
    assert_eq!(dev.target_bytes(), RAM_SIZE - 32 * PAGE_SIZE);
    assert_eq!(dev.actual_bytes(), RAM_SIZE - 3 * PAGE_SIZE);
    assert_eq!(dev.config().target, Some(RAM_SIZE - 32 * PAGE_SIZE));
    let irq = Arc::new(InterruptLog::default());
    dev.common_mut().interrupt = Some(irq.clone());
    rig.dev = dev;
    rig.irq = irq;

    // The restored device returns the buffer the driver gave the old one.
    assert!(rig.dev.request_stats());
    assert_eq!(rig.used(BalloonQueue::Stats), vec![(1, 0)]);
    // And goes on where the old one stopped.
    rig.fill_page(320, 9);
    assert_eq!(rig.inflate(&[320]), vec![(1, 0)]);
    assert!(rig.page_is(320, 0));
    rig.dev.set_target(RAM_SIZE).unwrap();
    assert_eq!(
        rig.dev.common().config_generation,
        saved.virtio.config_generation + 1
    );
    assert!(rig.irq.take().contains(&InterruptKind::Config));
}

#[test]
fn fresh_device_round_trips() {
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let dev = Balloon::new(&BalloonConfig::default(), ram.clone()).unwrap();
    let back = Balloon::restore_bytes(ram, &dev.save_bytes()).unwrap();
    assert_eq!(back.save(), dev.save());
    assert!(!back.common().activated);
}

#[test]
fn envelope_errors() {
    let rig = busy_rig();
    let bytes = rig.dev.save_bytes();
    let state = rig.dev.save();

    let mut bad = bytes.clone();
    bad[0] ^= 0xff;
    assert!(matches!(restore(&rig, &bad), Err(PersistError::BadMagic)));
    assert!(matches!(restore(&rig, &[]), Err(PersistError::BadMagic)));
    assert!(matches!(
        restore(&rig, &encode(TYPE_NET, 1, &state)),
        Err(PersistError::WrongDevice {
            expected: TYPE_BALLOON,
            found: TYPE_NET
        })
    ));
    for v in [0, 2, u16::MAX] {
        let e = restore(&rig, &encode(TYPE_BALLOON, v, &state)).err();
        assert!(
            matches!(e, Some(PersistError::UnsupportedVersion { found, min: 1, max: 1, .. }) if found == v),
            "{e:?}"
        );
    }
    assert!(matches!(
        restore(&rig, &encode(TYPE_BALLOON, 1, &"not a balloon")),
        Err(PersistError::Decode(_))
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(restore(&rig, &long), Err(PersistError::Decode(_))));
    for n in 0..bytes.len() {
        let e = restore(&rig, &bytes[..n]).err();
        assert!(
            matches!(e, Some(PersistError::BadMagic | PersistError::Decode(_))),
            "{n} bytes: {e:?}"
        );
    }
    // Every single-byte corruption is either accepted or refused; none panics.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] = b[i].wrapping_add(0x41);
        let _ = restore(&rig, &b);
    }
}

fn invalid(rig: &Rig, state: &BalloonState, what: &str) {
    match restore_state(rig, state) {
        Err(PersistError::Invalid(msg)) => assert!(msg.contains(what), "{msg}"),
        Err(e) => panic!("expected Invalid({what}), got {e}"),
        Ok(_) => panic!("expected Invalid({what}), got a device"),
    }
}

#[test]
fn inconsistent_fields_are_refused() {
    let rig = busy_rig();
    let good = rig.dev.save();
    assert!(restore_state(&rig, &good).is_ok());

    let mut s = good.clone();
    s.num_pages = RAM_PAGES + 1;
    invalid(&rig, &s, "pages");
    let mut s = good.clone();
    s.num_pages = RAM_PAGES;
    assert!(
        restore_state(&rig, &s).is_ok(),
        "a balloon of all RAM is possible"
    );

    let mut s = good.clone();
    s.stats_head = Some(QSIZE);
    invalid(&rig, &s, "outside the stats queue");
    let mut s = good.clone();
    s.stats_head = Some(u16::MAX);
    invalid(&rig, &s, "outside the stats queue");

    let mut s = good.clone();
    s.virtio.acked_features &= !VIRTIO_BALLOON_F_STATS_VQ;
    invalid(&rig, &s, "did not negotiate the stats queue");

    let mut s = good.clone();
    s.virtio.activated = false;
    invalid(&rig, &s, "not active");

    let mut s = good.clone();
    s.stats = vec![(5, 1), (4, 1)];
    invalid(&rig, &s, "sorted");
    let mut s = good.clone();
    s.stats = vec![(4, 1), (4, 2)];
    invalid(&rig, &s, "sorted");
    let mut s = good.clone();
    s.stats = (0..=MAX_STATS_ENTRIES as u16).map(|t| (t, 0)).collect();
    invalid(&rig, &s, "statistics");

    // From the common part: features never offered, a queue off RAM.
    let mut s = good.clone();
    s.virtio.acked_features |= 1 << 3;
    invalid(&rig, &s, "never offered");
    let mut s = good.clone();
    s.virtio.queues[0].used_ring = RAM_SIZE * 4;
    invalid(&rig, &s, "outside guest RAM");
}

#[test]
fn mismatches_are_refused() {
    let rig = busy_rig();
    let good = rig.dev.save();

    // Restored into a VM with another memory size.
    let other = Arc::new(GuestRam::anonymous(RAM_SIZE * 2).unwrap());
    let e = Balloon::restore_bytes(other, &rig.dev.save_bytes()).err();
    assert!(
        matches!(e, Some(PersistError::Mismatch(ref m)) if m.contains("boot RAM")),
        "{e:?}"
    );

    // A configuration that offers other queues than were saved.
    let mut s = good.clone();
    s.config.free_page_reporting = false;
    assert!(matches!(
        restore_state(&rig, &s),
        Err(PersistError::Mismatch(_))
    ));

    let mut s = good.clone();
    s.virtio.device_type = TYPE_NET;
    assert!(matches!(
        restore_state(&rig, &s),
        Err(PersistError::WrongDevice { .. })
    ));
}

/// Counters come back from the snapshot as they were saved, whatever they
/// hold; a device restored with them at the maximum goes on working and
/// keeps them there (fuzzing found the panic: `device_state`,
/// `balloon-counters-at-the-maximum`).
#[test]
fn counters_restored_at_the_maximum_stay_there() {
    let rig = busy_rig();
    let mut s = rig.dev.save();
    s.counters = BalloonCounters {
        inflated_pages: u64::MAX,
        deflated_pages: u64::MAX,
        reported_bytes: u64::MAX,
        discarded_bytes: u64::MAX,
        discard_refusals: u64::MAX,
        refused_bytes: u64::MAX,
        invalid_pfns: u64::MAX,
        invalid_reports: u64::MAX,
        malformed_chains: u64::MAX,
        stats_updates: u64::MAX,
    };
    let mut dev = restore_state(&rig, &s).expect("restore");
    let irq = Arc::new(InterruptLog::default());
    dev.common_mut().interrupt = Some(irq.clone());
    let mut rig = rig;
    rig.dev = dev;
    rig.irq = irq;

    assert!(rig.dev.request_stats());
    rig.post_stats(&[(4, 42)]);
    rig.fill_page(320, 9);
    assert_eq!(rig.inflate(&[320, RAM_PAGES + 1]), vec![(1, 0)]);
    assert!(rig.page_is(320, 0));
    rig.deflate(&[320]);
    rig.report(&[(page_addr(330), PAGE_SIZE as u32)]);
    assert_eq!(rig.dev.save().counters, s.counters);
}
