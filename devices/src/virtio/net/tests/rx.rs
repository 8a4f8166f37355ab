use std::net::UdpSocket;
use std::time::Duration;

use super::frames::*;
use super::guest::{irqs, Guest, FILL, RX};
use super::netns::{add_tap, in_netns, ip, mac_str, wait_link_up, wait_readable, PacketSocket};
use crate::virtio::net::{Net, RX_QUEUE, VIRTIO_NET_F_MRG_RXBUF};
use crate::virtio::{VirtioDevice, VIRTIO_RING_F_EVENT_IDX};

const WAIT: Duration = Duration::from_secs(5);

/// Injects `frame` towards the guest and lets the device read it, as the
/// event loop would once the TAP fd turns readable.
pub fn inject(dev: &mut Net, host: &PacketSocket, frame: &[u8]) {
    host.send(frame);
    assert!(
        wait_readable(dev.tap_fd(), WAIT),
        "injected frame never reached the TAP"
    );
    dev.process_rx();
}

#[test]
fn rx_udp_from_the_host_lands_in_a_guest_buffer() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, Some(HOST_CIDR));
        ip(&[
            "neigh",
            "add",
            "10.0.2.2",
            "lladdr",
            &mac_str(&GUEST_MAC),
            "dev",
            "tnet0",
            "nud",
            "permanent",
        ]);
        let mut g = Guest::new(256);
        let (mut dev, log) = g.start("tnet0", 0);
        wait_link_up("tnet0");
        let heads = g.post_rx(&[2048, 2048, 2048]);
        dev.queue_notify(RX_QUEUE);
        assert!(g.rx_used().is_empty());

        let sock = UdpSocket::bind("10.0.2.1:6000").unwrap();
        sock.send_to(b"hello guest", "10.0.2.2:7000").unwrap();
        assert!(wait_readable(dev.tap_fd(), WAIT));
        dev.process_rx();

        let used = g.rx_used();
        assert_eq!(used.len(), 1);
        let (head, len, data) = &used[0];
        assert_eq!(*head, heads[0]);
        let frame_len = ETH_HLEN + 20 + 8 + 11;
        assert_eq!(*len as usize, 12 + frame_len);
        let hdr = VnetHdr::parse(data);
        assert_eq!(
            hdr,
            VnetHdr {
                num_buffers: 1,
                ..Default::default()
            }
        );
        let frame = &data[12..];
        assert_eq!(&frame[..6], &GUEST_MAC);
        assert_eq!(&frame[6..12], &HOST_MAC);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(
            &frame[ETH_HLEN + 12..ETH_HLEN + 20],
            &[10, 0, 2, 1, 10, 0, 2, 2]
        );
        assert_eq!(&frame[frame_len - 11..], b"hello guest");
        assert_eq!(irqs(&log), vec![RX]);
        let c = dev.counters();
        assert_eq!(
            (c.rx_packets, c.rx_bytes, c.rx_dropped),
            (1, frame_len as u64, 0)
        );
        assert!(!dev.rx_stalled());
    });
}

#[test]
fn rx_mergeable_packet_spans_two_buffers() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, log) = g.start("tnet0", VIRTIO_NET_F_MRG_RXBUF);
        let heads = g.post_rx(&[64, 64, 64]);

        let frame = test_frame(GUEST_MAC, HOST_MAC, 7, 100);
        inject(&mut dev, &host, &frame);

        let used = g.rx_used();
        let lens: Vec<_> = used.iter().map(|(h, l, _)| (*h, *l)).collect();
        assert_eq!(lens, vec![(heads[0], 64), (heads[1], 48)]);
        let data: Vec<u8> = used.iter().flat_map(|(_, _, d)| d.clone()).collect();
        assert_eq!(VnetHdr::parse(&data).num_buffers, 2);
        assert_eq!(&data[12..], &frame[..]);
        assert_eq!(irqs(&log), vec![RX]);

        // The third buffer is still the guest's.
        assert_eq!(g.rx_outstanding(), 1);
    });
}

#[test]
fn rx_without_mergeable_buffers_drops_packets_that_do_not_fit() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", 0);
        let heads = g.post_rx(&[80]);

        inject(&mut dev, &host, &test_frame(GUEST_MAC, HOST_MAC, 1, 100));
        assert!(
            g.rx_used().is_empty(),
            "a too-small buffer must not be used"
        );
        assert_eq!(dev.counters().rx_dropped, 1);
        assert!(!dev.rx_stalled());

        let small = test_frame(GUEST_MAC, HOST_MAC, 2, 60);
        inject(&mut dev, &host, &small);
        let used = g.rx_used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, heads[0]);
        assert_eq!(used[0].1 as usize, 12 + 60);
        assert_eq!(VnetHdr::parse(&used[0].2).num_buffers, 1);
        assert_eq!(&used[0].2[12..], &small[..]);
    });
}

/// With no buffers the packet is held and the TAP left alone; buffers and a
/// notification deliver it and whatever queued behind it, in order.
#[test]
fn rx_packet_waits_for_buffers() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, log) = g.start("tnet0", 0);

        let first = test_frame(GUEST_MAC, HOST_MAC, 1, 200);
        let second = test_frame(GUEST_MAC, HOST_MAC, 2, 300);
        inject(&mut dev, &host, &first);
        assert!(dev.rx_stalled());
        inject(&mut dev, &host, &second);
        assert!(g.rx_used().is_empty());
        assert!(irqs(&log).is_empty());
        // The second frame is still in the kernel's queue.
        assert!(wait_readable(dev.tap_fd(), Duration::ZERO));

        g.post_rx(&[1600, 1600]);
        dev.queue_notify(RX_QUEUE);
        let used = g.rx_used();
        assert_eq!(used.len(), 2);
        assert_eq!(&used[0].2[12..], &first[..]);
        assert_eq!(&used[1].2[12..], &second[..]);
        assert!(!dev.rx_stalled());
        assert_eq!(irqs(&log), vec![RX]);
        assert_eq!(dev.counters().rx_packets, 2);
    });
}

/// With event-idx and too few mergeable buffers for the packet, the device
/// must ask to be notified on the next addition, not at its own position.
#[test]
fn rx_partial_room_with_event_idx_requests_a_kick() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let qsize = 64u16;
        let mut g = Guest::new(qsize);
        let (mut dev, log) = g.start("tnet0", VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX);
        g.post_rx(&[64]);

        let frame = test_frame(GUEST_MAC, HOST_MAC, 3, 100);
        inject(&mut dev, &host, &frame);
        assert!(dev.rx_stalled());
        assert!(g.rx_used().is_empty());
        let avail_event_at = g.rxq.used_ring().0 + 4 + 8 * u64::from(qsize);
        let avail_event: u16 =
            vm_memory::Bytes::read_obj(g.mem(), vm_memory::GuestAddress(avail_event_at)).unwrap();
        assert_eq!(
            avail_event, 1,
            "the driver must kick once avail idx passes 1"
        );
        assert_eq!(virtio_queue::QueueT::next_avail(&dev.common().queues[0]), 0);

        g.post_rx(&[64]);
        dev.queue_notify(RX_QUEUE);
        let used = g.rx_used();
        assert_eq!(used.len(), 2);
        let data: Vec<u8> = used.iter().flat_map(|(_, _, d)| d.clone()).collect();
        assert_eq!(VnetHdr::parse(&data).num_buffers, 2);
        assert_eq!(&data[12..], &frame[..]);
        assert_eq!(irqs(&log), vec![RX]);
    });
}

/// Buffers the device never wrote keep their fill pattern past the used length.
#[test]
fn rx_writes_only_the_used_length() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let host = PacketSocket::bind("tnet0");
        let mut g = Guest::new(256);
        let (mut dev, _log) = g.start("tnet0", VIRTIO_NET_F_MRG_RXBUF);
        let at = g.alloc(256);
        g.post_rx_chain(&[crate::virtio::testing::Buf::w(at, 256)]);
        inject(&mut dev, &host, &test_frame(GUEST_MAC, HOST_MAC, 4, 64));
        assert_eq!(g.rx_used()[0].1, 12 + 64);
        let mut tail = vec![0u8; 256 - 76];
        vm_memory::Bytes::read_slice(g.mem(), &mut tail, vm_memory::GuestAddress(at + 76)).unwrap();
        assert!(tail.iter().all(|&b| b == FILL));
    });
}

/// Replaces what the open file `fd` refers to by `with` (dup2), as if the
/// TAP behind the device's fd had changed under it.
fn swap_fd(fd: std::os::fd::RawFd, with: &impl std::os::fd::AsRawFd) {
    // SAFETY: both fds are open; dup2 closes fd's old file atomically.
    assert_eq!(unsafe { libc::dup2(with.as_raw_fd(), fd) }, fd);
}

#[test]
fn rx_resumes_by_itself_after_a_tap_read_error() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let mut g = Guest::new(256);
        let (mut dev, log) = g.start("tnet0", 0);
        g.post_rx(&[2048]);
        dev.queue_notify(RX_QUEUE);
        let tap_fd = dev.tap_fd();

        // Reads of the TAP fail (EISDIR): the pass ends in an error.
        swap_fd(tap_fd, &std::fs::File::open("/").unwrap());
        dev.process_rx();
        assert!(g.rx_used().is_empty());

        // Meanwhile a packet waits behind the fd, and no edge announces it:
        // only the retry timer can bring it in.
        let (stand_in, mut host) = super::netns::seqpacket_pair();
        let frame = test_frame(GUEST_MAC, HOST_MAC, 9, 100);
        let mut pkt = vec![0u8; 12];
        pkt.extend_from_slice(&frame);
        std::io::Write::write_all(&mut host, &pkt).unwrap();
        swap_fd(tap_fd, &stand_in);

        assert!(
            wait_readable(dev.rx_retry_fd(), WAIT),
            "no retry was scheduled after the TAP read error"
        );
        dev.rx_retry_due();
        let used = g.rx_used();
        assert_eq!(used.len(), 1, "the waiting packet did not reach the guest");
        assert_eq!(&used[0].2[12..], &frame[..]);
        assert_eq!(irqs(&log), vec![RX]);

        // A pass without an error schedules nothing more.
        assert!(!wait_readable(
            dev.rx_retry_fd(),
            Duration::from_millis(100)
        ));
    });
}
