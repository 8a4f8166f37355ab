//! Guest-built garbage: every bad chain is returned (or skipped), counted
//! and logged, and the next good packet still flows.

use std::net::UdpSocket;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::frames::*;
use super::guest::{Guest, RAM_SIZE};
use super::netns::{add_tap, in_netns, PacketSocket};
use super::rx::inject;
use crate::virtio::net::{RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MRG_RXBUF};
use crate::virtio::testing::{
    raw, write_table, VIRTQ_DESC_F_INDIRECT as INDIRECT, VIRTQ_DESC_F_NEXT as NEXT,
    VIRTQ_DESC_F_WRITE as WRITE,
};
use crate::virtio::{InterruptKind, VirtioDevice, STATUS_NEEDS_RESET};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn malformed_tx_chains_are_dropped_and_transmit_goes_on() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, Some(HOST_CIDR));
        let cap = PacketSocket::bind("tnet0");
        let sock = UdpSocket::bind("10.0.2.1:5000").unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", 0);

        let good = with_hdr(
            VnetHdr::default(),
            &eth(
                HOST_MAC,
                GUEST_MAC,
                0x0800,
                &ipv4(GUEST_IP, HOST_IP, 17, &udp(4000, 5000, b"still alive")),
            ),
        );
        let data = g.tx_bufs(&good, &[])[0];
        let (a, l) = (data.addr, data.len);

        // A loop: 200 -> 201 -> 200.
        g.txq.add_raw_chain(
            200,
            &[
                (200, raw(a, 12, NEXT, 201)),
                (201, raw(a + 12, l - 12, NEXT, 200)),
            ],
        );
        // A buffer running off the end of RAM.
        g.txq
            .add_raw_chain(202, &[(202, raw(RAM_SIZE - 4, 100, 0, 0))]);
        // Shorter than the virtio-net header.
        g.txq.add_raw_chain(203, &[(203, raw(a, 8, 0, 0))]);
        // A device-writable descriptor in a TX chain.
        g.txq.add_raw_chain(
            204,
            &[(204, raw(a, l, NEXT, 205)), (205, raw(a, 64, WRITE, 0))],
        );
        // Larger than any packet.
        g.txq
            .add_raw_chain(206, &[(206, raw(0x10000, 70_000, 0, 0))]);
        // The next index leaves the table.
        g.txq.add_raw_chain(207, &[(207, raw(a, 12, NEXT, 300))]);
        // A header the kernel refuses: checksum start past the frame.
        let bad_hdr = g.tx_bufs(
            &with_hdr(
                VnetHdr {
                    flags: HDR_F_NEEDS_CSUM,
                    csum_start: 1000,
                    csum_offset: 6,
                    ..Default::default()
                },
                &test_frame(NOBODY_MAC, GUEST_MAC, 1, 60),
            ),
            &[],
        )[0];
        g.txq
            .add_raw_chain(208, &[(208, raw(bad_hdr.addr, bad_hdr.len, 0, 0))]);
        // A head index beyond the queue: nothing to return it in.
        g.txq.add_raw_chain(300, &[]);
        dev.queue_notify(TX_QUEUE);

        let used = g.tx_used();
        assert_eq!(
            used,
            [200, 202, 203, 204, 206, 207, 208]
                .iter()
                .map(|&h| (h, 0))
                .collect::<Vec<_>>()
        );
        assert_eq!(dev.counters().tx_dropped, 8);
        assert_eq!(dev.counters().tx_packets, 0);

        g.send(&mut dev, &good, &[]);
        assert_eq!(g.tx_used().len(), 1);
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("the good datagram");
        assert_eq!(&buf[..n], b"still alive");
        assert_eq!(dev.counters().tx_packets, 1);
        // Nothing from the bad chains reached the host.
        assert_eq!(cap.recv(WAIT).map(|f| f.len()), Some(good.len() - 12));
        assert_eq!(cap.recv(Duration::from_millis(100)), None);
        assert_eq!(dev.common().status & crate::virtio::STATUS_NEEDS_RESET, 0);
    });
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_the_packet_still_arrives() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", 0);
        let at = g.alloc(2048);

        // Device-readable buffer.
        g.post_rx_raw(200, &[(200, raw(at, 2048, 0, 0))]);
        // Off the end of RAM.
        g.post_rx_raw(201, &[(201, raw(RAM_SIZE - 16, 2048, WRITE, 0))]);
        // A loop.
        g.post_rx_raw(
            202,
            &[
                (202, raw(at, 1024, WRITE | NEXT, 203)),
                (203, raw(at + 1024, 1024, WRITE | NEXT, 202)),
            ],
        );
        // No room for the header.
        g.post_rx_raw(204, &[(204, raw(at, 8, WRITE, 0))]);
        // Next index outside the table.
        g.post_rx_raw(205, &[(205, raw(at, 2048, WRITE | NEXT, 999))]);
        let good = g.post_rx(&[2048])[0];

        let frame = test_frame(GUEST_MAC, HOST_MAC, 9, 500);
        inject(&mut dev, &host, &frame);
        let used = g.rx_used();
        let lens: Vec<_> = used.iter().map(|(h, l, _)| (*h, *l)).collect();
        assert_eq!(
            lens,
            vec![
                (200, 0),
                (201, 0),
                (202, 0),
                (204, 0),
                (205, 0),
                (good, 512)
            ]
        );
        assert_eq!(&used[5].2[12..], &frame[..]);
        let c = dev.counters();
        assert_eq!((c.rx_bad_chains, c.rx_dropped, c.rx_packets), (5, 0, 1));
    });
}

#[test]
fn a_bad_chain_inside_a_mergeable_packet_drops_that_packet_only() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", VIRTIO_NET_F_MRG_RXBUF);
        let first = g.post_rx(&[64])[0];
        let at = g.alloc(64);
        g.post_rx_raw(200, &[(200, raw(at, 64, 0, 0))]);
        let spare = g.post_rx(&[2048])[0];

        inject(&mut dev, &host, &test_frame(GUEST_MAC, HOST_MAC, 1, 100));
        let lens: Vec<_> = g.rx_used().iter().map(|(h, l, _)| (*h, *l)).collect();
        assert_eq!(lens, vec![(first, 0), (200, 0)]);
        let c = dev.counters();
        assert_eq!((c.rx_bad_chains, c.rx_dropped), (1, 1));

        let next = test_frame(GUEST_MAC, HOST_MAC, 2, 100);
        inject(&mut dev, &host, &next);
        let used = g.rx_used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, spare);
        assert_eq!(&used[0].2[12..], &next[..]);
    });
}

/// A driver publishing an avail index further ahead than the queue size is
/// ignored without harm.
#[test]
fn corrupt_avail_index_is_survived() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(16);
        let (mut dev, log) = g.start("tnet0", 0);
        for q in [&g.rxq, &g.txq] {
            let idx_at = q.avail_ring().0 + 2;
            vm_memory::Bytes::write_obj(g.mem(), 1000u16, vm_memory::GuestAddress(idx_at)).unwrap();
        }
        dev.queue_notify(TX_QUEUE);
        assert_ne!(dev.common().status & STATUS_NEEDS_RESET, 0);
        assert_eq!(log.take(), vec![InterruptKind::Config]);
        host.send(&test_frame(GUEST_MAC, HOST_MAC, 1, 100));
        dev.process_rx();
        dev.queue_notify(RX_QUEUE);
        assert!(g.txq.used().is_empty());
        assert!(g.rxq.used().is_empty());
        assert!(log.take().is_empty());

        // RX alone detects it too.
        drop(dev);
        let mut g = Guest::new(16);
        let (mut dev, log) = g.start("tnet0", 0);
        let idx_at = g.rxq.avail_ring().0 + 2;
        vm_memory::Bytes::write_obj(g.mem(), 17u16, vm_memory::GuestAddress(idx_at)).unwrap();
        inject(&mut dev, &host, &test_frame(GUEST_MAC, HOST_MAC, 2, 100));
        assert_ne!(dev.common().status & STATUS_NEEDS_RESET, 0);
        assert_eq!(log.take(), vec![InterruptKind::Config]);
        assert!(g.rx_used().is_empty());
    });
}

/// VIRTIO_F_INDIRECT_DESC is never offered, so chains that refer to an
/// indirect table are malformed (virtio 1.2, 2.7.5.3.1): a TX packet
/// behind one is not sent, an RX buffer behind one is not filled.
#[test]
fn indirect_chains_are_refused_both_ways() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", 0);

        let pkt = with_hdr(VnetHdr::default(), &test_frame(HOST_MAC, GUEST_MAC, 3, 200));
        let data = g.tx_bufs(&pkt, &[])[0];
        let table = g.alloc(32);
        let len = write_table(g.mem(), table, &[raw(data.addr, data.len, 0, 0)]);
        g.txq
            .add_raw_chain(200, &[(200, raw(table, len, INDIRECT, 0))]);
        let len = write_table(
            g.mem(),
            table + 16,
            &[raw(data.addr + 12, data.len - 12, 0, 0)],
        );
        g.txq.add_raw_chain(
            201,
            &[
                (201, raw(data.addr, 12, NEXT, 202)),
                (202, raw(table + 16, len, INDIRECT, 0)),
            ],
        );
        dev.queue_notify(TX_QUEUE);
        assert_eq!(g.tx_used(), vec![(200, 0), (201, 0)]);
        assert_eq!(
            (dev.counters().tx_dropped, dev.counters().tx_packets),
            (2, 0)
        );
        assert_eq!(
            host.recv(Duration::from_millis(200)),
            None,
            "sent to the host"
        );

        let buf = g.alloc(2048);
        g.mem()
            .write_slice(&[0x77; 2048], GuestAddress(buf))
            .unwrap();
        let rx_table = g.alloc(16);
        let len = write_table(g.mem(), rx_table, &[raw(buf, 2048, WRITE, 0)]);
        g.post_rx_raw(210, &[(210, raw(rx_table, len, INDIRECT, 0))]);
        let good = g.post_rx(&[2048])[0];
        let frame = test_frame(GUEST_MAC, HOST_MAC, 4, 300);
        inject(&mut dev, &host, &frame);
        let used = g.rx_used();
        let lens: Vec<_> = used.iter().map(|(h, l, _)| (*h, *l)).collect();
        assert_eq!(lens, vec![(210, 0), (good, 12 + frame.len() as u32)]);
        let mut now = vec![0u8; 2048];
        g.mem().read_slice(&mut now, GuestAddress(buf)).unwrap();
        assert!(
            now.iter().all(|&b| b == 0x77),
            "the refused buffer was written"
        );
        assert_eq!(dev.counters().rx_bad_chains, 1);
    });
}
