use std::sync::Arc;

use super::frames::*;
use super::guest::{config, Guest, RX};
use super::netns::{add_tap, in_netns, retry_busy, tx_csum_offload, PacketSocket};
use super::rx::inject;
use crate::virtio::net::*;
use crate::virtio::persist::{encode, Persist, PersistError};
use crate::virtio::testing::InterruptLog;
use crate::virtio::{VirtioDevice, TYPE_BLOCK, TYPE_NET};

const OFFLOADS: u64 = VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4;

/// A device holding a packet, with offloads on, and the bytes it saves.
fn saved_with_pending(g: &mut Guest, host: &PacketSocket, frame: &[u8]) -> (Vec<u8>, NetCounters) {
    let (mut dev, _log) = g.start("tnet0", OFFLOADS | VIRTIO_NET_F_MRG_RXBUF);
    g.post_rx(&[2048]);
    inject(&mut dev, host, &test_frame(GUEST_MAC, HOST_MAC, 100, 80));
    assert_eq!(g.rx_used().len(), 1);
    inject(&mut dev, host, frame);
    assert!(dev.rx_stalled());
    (dev.save_bytes(), dev.counters())
}

/// The device those bytes restore on tnet0, its interrupts logged.
fn restored_on_tnet0(g: &Guest, bytes: &[u8]) -> (Net, Arc<InterruptLog>) {
    let mut dev =
        retry_busy(|| Net::restore_bytes((config("tnet0"), g.ram.clone()), bytes)).unwrap();
    let log = Arc::new(InterruptLog::default());
    dev.common_mut().interrupt = Some(log.clone());
    (dev, log)
}

#[test]
fn a_held_packet_counters_and_offloads_survive_save_and_restore() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let frame = test_frame(GUEST_MAC, HOST_MAC, 5, 700);
        let (bytes, counters) = saved_with_pending(&mut g, &host, &frame);
        // The saving device is gone (its TAP fd closed) before the restore.

        let (mut dev, log) = restored_on_tnet0(&g, &bytes);
        assert!(dev.common().activated);
        assert!(dev.rx_stalled());
        assert_eq!(dev.counters(), counters);
        assert_eq!(dev.tap_offloads(), tap::offload_flags(OFFLOADS));
        assert!(tx_csum_offload("tnet0"));

        g.post_rx(&[2048]);
        dev.queue_notify(RX_QUEUE);
        let used = g.rx_used();
        assert_eq!(used.len(), 1);
        assert_eq!(&used[0].2[12..], &frame[..]);
        assert_eq!(VnetHdr::parse(&used[0].2).num_buffers, 1);
        assert_eq!(log.take(), vec![RX]);
        assert_eq!(dev.counters().rx_packets, counters.rx_packets + 1);

        // The restored device keeps receiving.
        let later = test_frame(GUEST_MAC, HOST_MAC, 6, 90);
        g.post_rx(&[2048]);
        inject(&mut dev, &host, &later);
        assert_eq!(&g.rx_used()[0].2[12..], &later[..]);
    });
}

/// Counters come back as saved, whatever they hold: restored at the
/// maximum, the device goes on receiving and keeps them there (the same
/// panic fuzzing found in the balloon's).
#[test]
fn counters_restored_at_the_maximum_stay_there() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let frame = test_frame(GUEST_MAC, HOST_MAC, 5, 700);
        let (bytes, _) = saved_with_pending(&mut g, &host, &frame);
        let mut state: NetState = crate::virtio::persist::decode(&bytes, TYPE_NET, 1..=1).unwrap();
        let max = NetCounters {
            rx_packets: u64::MAX,
            rx_bytes: u64::MAX,
            rx_dropped: u64::MAX,
            rx_bad_chains: u64::MAX,
            tx_packets: u64::MAX,
            tx_bytes: u64::MAX,
            tx_dropped: u64::MAX,
        };
        state.counters = max;
        let (mut dev, _log) = restored_on_tnet0(&g, &encode(TYPE_NET, 1, &state));
        g.post_rx(&[2048]);
        dev.queue_notify(RX_QUEUE);
        assert_eq!(&g.rx_used()[0].2[12..], &frame[..]);
        assert_eq!(dev.counters(), max);
    });
}

/// Clones of one snapshot each need their own TAP: the TAP may change, the MAC may not.
#[test]
fn restore_onto_another_tap() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        add_tap("tnet1", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let frame = test_frame(GUEST_MAC, HOST_MAC, 5, 300);
        let (bytes, _) = saved_with_pending(&mut g, &host, &frame);
        let mut dev = Net::restore_bytes((config("tnet1"), g.ram.clone()), &bytes).unwrap();
        dev.common_mut().interrupt = Some(Arc::new(InterruptLog::default()));
        assert_eq!(dev.tap().name(), "tnet1");
        assert!(tx_csum_offload("tnet1"));
        g.post_rx(&[2048]);
        dev.queue_notify(RX_QUEUE);
        assert_eq!(&g.rx_used()[0].2[12..], &frame[..]);

        let other = PacketSocket::bind("tnet1");
        let next = test_frame(GUEST_MAC, HOST_MAC, 8, 64);
        g.post_rx(&[2048]);
        inject(&mut dev, &other, &next);
        assert_eq!(&g.rx_used()[0].2[12..], &next[..]);
    });
}

#[test]
fn restore_refuses_bad_state_with_clear_errors() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let frame = test_frame(GUEST_MAC, HOST_MAC, 5, 300);
        let (bytes, _) = saved_with_pending(&mut g, &host, &frame);
        let ram = g.ram.clone();
        let restore = |cfg: NetConfig, bytes: &[u8]| {
            retry_busy(|| Net::restore_bytes((cfg.clone(), ram.clone()), bytes))
                .err()
                .expect("restore refused")
        };
        let state: NetState = crate::virtio::persist::decode(&bytes, TYPE_NET, 1..=1).unwrap();
        let reencode = |s: &NetState| encode(TYPE_NET, 1, s);

        assert!(matches!(
            restore(config("tnet0"), b"garbage"),
            PersistError::BadMagic
        ));
        assert!(matches!(
            restore(config("tnet0"), &bytes[..bytes.len() - 7]),
            PersistError::Decode(_)
        ));
        assert!(matches!(
            restore(config("tnet0"), &encode(TYPE_BLOCK, 1, &state)),
            PersistError::WrongDevice { .. }
        ));
        assert!(matches!(
            restore(config("tnet0"), &encode(TYPE_NET, 2, &state)),
            PersistError::UnsupportedVersion { found: 2, .. }
        ));

        let mut other_mac = config("tnet0");
        other_mac.mac = [0x52, 0x54, 0, 0, 0, 1];
        let e = restore(other_mac, &bytes);
        let msg = e.to_string();
        assert!(matches!(e, PersistError::Mismatch(_)), "{e:?}");
        assert!(
            msg.contains("52:54:00:12:34:56") && msg.contains("52:54:00:00:00:01"),
            "{msg}"
        );

        let mut other_id = config("tnet0");
        other_id.id = "net1".into();
        assert!(matches!(
            restore(other_id, &bytes),
            PersistError::Mismatch(_)
        ));

        let mut s = state.clone();
        s.rx_pending = Some(vec![0; 5]);
        assert!(matches!(
            restore(config("tnet0"), &reencode(&s)),
            PersistError::Invalid(_)
        ));
        s.rx_pending = Some(vec![0; MAX_PACKET_LEN + 1]);
        assert!(matches!(
            restore(config("tnet0"), &reencode(&s)),
            PersistError::Invalid(_)
        ));

        let mut s = state.clone();
        s.tap_offloads = libc::TUN_F_CSUM | libc::TUN_F_UFO;
        assert!(matches!(
            restore(config("tnet0"), &reencode(&s)),
            PersistError::Invalid(_)
        ));

        let mut s = state.clone();
        s.virtio.device_type = TYPE_BLOCK;
        assert!(matches!(
            restore(config("tnet0"), &reencode(&s)),
            PersistError::WrongDevice { .. }
        ));

        // Checked once the TAP is open.
        let mut s = state.clone();
        s.virtio.queues.pop();
        assert!(matches!(
            restore(config("tnet0"), &reencode(&s)),
            PersistError::Mismatch(_)
        ));
        let mut s = state.clone();
        s.virtio.queues[0].desc_table = u64::MAX - 8;
        assert!(matches!(
            restore(config("tnet0"), &reencode(&s)),
            PersistError::Invalid(_)
        ));

        let mut s = state.clone();
        s.virtio.avail_features &= !VIRTIO_NET_F_MRG_RXBUF;
        assert!(matches!(
            restore(config("tnet0"), &reencode(&s)),
            PersistError::Mismatch(_)
        ));

        // The TAP is held by someone else: the error says which TAP.
        let held = retry_busy(|| Tap::open("tnet0")).unwrap();
        let e = Net::restore_bytes((config("tnet0"), ram.clone()), &bytes)
            .err()
            .expect("restore onto a busy TAP refused");
        assert!(matches!(e, PersistError::Device(_)), "{e:?}");
        assert!(e.to_string().contains("tnet0"), "{e}");
        drop(held);

        // Flipping any single byte never panics; it either fails or yields a device.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xa5;
            let _ = Net::restore_bytes((config("tnet0"), ram.clone()), &b);
        }

        // The untouched bytes still restore.
        assert!(retry_busy(|| Net::restore_bytes((config("tnet0"), ram.clone()), &bytes)).is_ok());
    });
}

#[test]
fn a_device_saved_before_activation_restores_idle() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let g = Guest::new(256);
        let dev = Net::new(&config("tnet0"), g.ram.clone()).unwrap();
        let bytes = dev.save_bytes();
        drop(dev);
        let mut dev =
            retry_busy(|| Net::restore_bytes((config("tnet0"), g.ram.clone()), &bytes)).unwrap();
        assert!(!dev.common().activated);
        assert_eq!(dev.tap_offloads(), 0);
        assert!(!tx_csum_offload("tnet0"));
        // And the driver can still bring it up.
        let log = crate::virtio::testing::init_device(
            &mut dev,
            crate::virtio::VIRTIO_F_VERSION_1 | OFFLOADS,
            &[&g.rxq, &g.txq],
        )
        .unwrap();
        drop(log);
        assert!(dev.common().activated);
        assert!(tx_csum_offload("tnet0"));
    });
}
