use super::frames::*;
use super::guest::{config, Guest};
use super::netns::{add_tap, in_netns};
use crate::virtio::net::*;
use crate::virtio::{VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

#[test]
fn offers_the_documented_features_and_config_space() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let g = Guest::new(256);
        let mut dev = Net::new(&config("tnet0"), g.ram.clone()).unwrap();
        assert_eq!(dev.device_type(), TYPE_NET);
        let offered = dev.common().avail_features;
        for f in [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_STATUS,
        ] {
            assert_ne!(offered & f, 0, "feature {f:#x} not offered");
        }
        assert_eq!(offered, AVAIL_FEATURES | VIRTIO_F_VERSION_1);
        assert_eq!(dev.common().queues.len(), 2);
        assert!(dev.common().queues.iter().all(|q| {
            use virtio_queue::QueueT;
            q.max_size() == QUEUE_MAX_SIZE
        }));

        let mut cfg = [0u8; 10];
        dev.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &GUEST_MAC);
        assert_eq!(&cfg[6..8], &[1, 0], "status: link up");
        assert_eq!(&cfg[8..10], &[1, 0], "one queue pair");
        let mut status = [0u8; 2];
        dev.read_config(6, &mut status);
        assert_eq!(status, [1, 0]);
        let mut past = [0xffu8; 4];
        dev.read_config(8, &mut past);
        assert_eq!(past, [1, 0, 0, 0]);
        dev.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 4]);

        dev.write_config(0, &[0xaa; 6]);
        dev.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &GUEST_MAC, "the MAC is read-only");
        assert_eq!(dev.config(), &config("tnet0"));
    });
}

#[test]
fn multicast_mac_is_refused() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let g = Guest::new(256);
        let mut cfg = config("tnet0");
        cfg.mac = [0x01, 0, 0x5e, 0, 0, 1];
        let msg = Net::new(&cfg, g.ram.clone()).err().unwrap().to_string();
        assert!(
            msg.contains("01:00:5e:00:00:01") && msg.contains("unicast"),
            "{msg}"
        );
    });
}

/// Nothing moves before the driver sets DRIVER_OK, and a reset forgets a held packet.
#[test]
fn queues_are_idle_until_activation_and_after_reset() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = super::netns::PacketSocket::bind("tnet0");
        let g = Guest::new(256);
        let mut dev = Net::new(&config("tnet0"), g.ram.clone()).unwrap();
        dev.queue_notify(RX_QUEUE);
        dev.queue_notify(TX_QUEUE);
        dev.queue_notify(7);
        dev.process_rx();
        drop(dev);

        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", 0);
        super::rx::inject(&mut dev, &host, &test_frame(GUEST_MAC, HOST_MAC, 1, 100));
        assert!(dev.rx_stalled());
        dev.reset();
        assert!(!dev.rx_stalled());
        assert!(!dev.common().activated);
        g.post_rx(&[2048]);
        dev.queue_notify(RX_QUEUE);
        assert!(g.rx_used().is_empty());
    });
}

/// With event-idx the device interrupts only when the driver's used_event is crossed.
#[test]
fn tx_interrupts_honour_used_event() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let mut g = Guest::new(256);
        let (mut dev, log) = g.start("tnet0", VIRTIO_RING_F_EVENT_IDX);
        // Ask to be told only once used idx passes 3.
        g.txq.set_used_event(3);
        let frame = with_hdr(
            VnetHdr::default(),
            &test_frame(NOBODY_MAC, GUEST_MAC, 1, 60),
        );
        for _ in 0..3 {
            g.send(&mut dev, &frame, &[]);
        }
        assert!(log.take().is_empty());
        g.send(&mut dev, &frame, &[]);
        assert_eq!(log.take(), vec![super::guest::TX]);
        assert_eq!(g.txq.used().len(), 4);
    });
}
