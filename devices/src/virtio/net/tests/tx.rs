use std::net::UdpSocket;
use std::time::Duration;

use super::frames::*;
use super::guest::{irqs, Guest, TX};
use super::netns::{add_tap, in_netns, PacketSocket};
use crate::virtio::net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn tx_udp_reaches_a_host_socket() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, Some(HOST_CIDR));
        let sock = UdpSocket::bind("10.0.2.1:5000").unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut g = Guest::new(256);
        let (mut dev, log) = g.start("tnet0", 0);

        let head = g.send(
            &mut dev,
            &with_hdr(
                VnetHdr::default(),
                &udp_to_host(b"hello from the guest", 5000),
            ),
            &[],
        );
        assert_eq!(g.tx_used(), vec![(head, 0)]);
        assert_eq!(irqs(&log), vec![TX]);

        let mut buf = [0u8; 100];
        let (n, from) = sock.recv_from(&mut buf).expect("datagram from the guest");
        assert_eq!(&buf[..n], b"hello from the guest");
        assert_eq!(from.to_string(), "10.0.2.2:4000");
        let c = dev.counters();
        assert_eq!((c.tx_packets, c.tx_dropped), (1, 0));
        assert_eq!(c.tx_bytes, 14 + 20 + 8 + 20);
    });
}

/// The header travels to the TAP unchanged even when split across
/// descriptors, so the host completes a partial checksum.
#[test]
fn tx_partial_checksum_over_a_scattered_chain() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, Some(HOST_CIDR));
        let sock = UdpSocket::bind("10.0.2.1:5001").unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", VIRTIO_NET_F_CSUM);

        let payload = b"checksummed by the host";
        let mut frame = udp_to_host(payload, 5001);
        let l4_len = 8 + payload.len();
        let sum = pseudo_sum(GUEST_IP, HOST_IP, 17, l4_len);
        frame[ETH_HLEN + 20 + 6..ETH_HLEN + 20 + 8].copy_from_slice(&sum.to_be_bytes());
        let hdr = VnetHdr {
            flags: HDR_F_NEEDS_CSUM,
            csum_start: (ETH_HLEN + 20) as u16,
            csum_offset: 6,
            ..Default::default()
        };
        // Header split 5 + 7, frame split in three.
        g.send(&mut dev, &with_hdr(hdr, &frame), &[5, 7, 10, 30]);
        assert_eq!(g.tx_used().len(), 1);

        let mut buf = [0u8; 100];
        let n = sock.recv(&mut buf).expect("datagram from the guest");
        assert_eq!(&buf[..n], payload);
        assert_eq!(dev.counters().tx_dropped, 0);
    });
}

/// A TSO packet reaches the host as one GSO frame: segmentation is left
/// to the host kernel.
#[test]
fn tx_tso_packet_enters_the_host_unsegmented() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, Some(HOST_CIDR));
        let cap = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4);

        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let mut seg = tcp(4000, 5002, 1000, &payload);
        let sum = pseudo_sum(GUEST_IP, HOST_IP, 6, seg.len());
        seg[16..18].copy_from_slice(&sum.to_be_bytes());
        // Addressed to a MAC nobody owns so the host stack ignores it.
        let frame = eth(
            NOBODY_MAC,
            GUEST_MAC,
            0x0800,
            &ipv4(GUEST_IP, HOST_IP, 6, &seg),
        );
        let hdr = VnetHdr {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (ETH_HLEN + 20 + 20) as u16,
            gso_size: 1000,
            csum_start: (ETH_HLEN + 20) as u16,
            csum_offset: 16,
            num_buffers: 0,
        };
        g.send(&mut dev, &with_hdr(hdr, &frame), &[12]);
        assert_eq!(g.tx_used().len(), 1);

        let got = cap.recv(WAIT).expect("frame on the TAP");
        assert_eq!(got.len(), frame.len());
        assert_eq!(&got[ETH_HLEN + 40..], &payload[..]);
        assert_eq!(dev.counters().tx_packets, 1);
    });
}

/// Frames in many chains, each notified, come out in order.
#[test]
fn tx_many_frames_in_order() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let cap = PacketSocket::bind("tnet0");
        let mut g = Guest::new(16);
        let (mut dev, _log) = g.start("tnet0", crate::virtio::VIRTIO_RING_F_EVENT_IDX);
        let frames: Vec<Vec<u8>> = (0..40)
            .map(|i| test_frame(NOBODY_MAC, GUEST_MAC, i, 60 + i as usize * 37))
            .collect();
        for chunk in frames.chunks(5) {
            for f in chunk {
                let bufs = g.tx_bufs(&with_hdr(VnetHdr::default(), f), &[12]);
                g.txq.add_chain(&bufs);
            }
            crate::virtio::VirtioDevice::queue_notify(&mut dev, crate::virtio::net::TX_QUEUE);
            assert_eq!(g.tx_used().len(), chunk.len());
        }
        for f in &frames {
            assert_eq!(&cap.recv(WAIT).expect("frame on the TAP"), f);
        }
        assert_eq!(dev.counters().tx_packets, 40);
    });
}

/// The driver's available ring at guest address 0, which virtio-queue's
/// own iterator refuses: TX once spun forever on it, announcing a chain it
/// could not take (fuzz/regressions/net_queue/avail-ring-at-0). The TAP
/// is one end of a socket pair, which shows what was written.
#[test]
fn tx_with_the_available_ring_at_guest_address_0() {
    use std::io::Read;

    use crate::ram::GuestRam;
    use crate::virtio::net::{process_tx, NetCounters, Tap};
    use crate::virtio::testing::raw;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    let ram = GuestRam::anonymous(1 << 20).unwrap();
    let mem = ram.memory();
    let mut q = Queue::new(16).unwrap();
    q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(0)).unwrap();
    q.try_set_used_ring_address(GuestAddress(0x2000)).unwrap();
    q.set_ready(true);
    let packet: Vec<u8> = (0..72u8).collect();
    mem.write_slice(&packet, GuestAddress(0x3000)).unwrap();
    mem.write_obj(raw(0x3000, 72, 0, 0), GuestAddress(0x1000))
        .unwrap();
    mem.write_obj(0u16.to_le(), GuestAddress(4)).unwrap();
    mem.write_obj(1u16.to_le(), GuestAddress(2)).unwrap();

    let (dev, mut host) = crate::virtio::testing::netns::seqpacket_pair();
    let tap = Tap::from_file_for_tests(dev, "pair");

    let mut counters = NetCounters::default();
    let run = process_tx(&mut q, mem, &tap, &mut counters, "t");
    assert!(run.completed && !run.broken, "{run:?}");
    assert_eq!((counters.tx_packets, counters.tx_dropped), (1, 0));
    let mut got = [0u8; 128];
    let n = host.read(&mut got).expect("the packet reached the TAP");
    assert_eq!(&got[..n], &packet[..]);
    assert_eq!(q.next_used(), 1);
}
