use std::net::UdpSocket;
use std::time::Duration;

use super::frames::*;
use super::guest::Guest;
use super::netns::{
    add_tap, in_netns, ip, mac_str, tso_offload, tx_csum_offload, wait_link_up, wait_readable,
};
use crate::virtio::net::tap::offload_flags;
use crate::virtio::net::*;
use crate::virtio::VirtioDevice;

const ALL_GUEST_OFFLOADS: u64 = VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO;

#[test]
fn offload_flags_follow_the_kernels_dependencies() {
    assert_eq!(offload_flags(0), 0);
    assert_eq!(
        offload_flags(ALL_GUEST_OFFLOADS),
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_TSO_ECN
            | libc::TUN_F_UFO
    );
    // Nothing without checksum offload.
    assert_eq!(
        offload_flags(ALL_GUEST_OFFLOADS & !VIRTIO_NET_F_GUEST_CSUM),
        0
    );
    // ECN only alongside TSO.
    assert_eq!(
        offload_flags(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_ECN),
        libc::TUN_F_CSUM
    );
    // Host-side (TX) offloads need nothing from the TAP.
    assert_eq!(
        offload_flags(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_UFO),
        0
    );
}

/// Sends one UDP datagram from the host to the guest and returns the
/// virtio-net header and frame the guest got.
fn host_udp_to_guest(g: &mut Guest, dev: &mut Net) -> (VnetHdr, Vec<u8>) {
    wait_link_up("tnet0");
    g.post_rx(&[2048]);
    let sock = UdpSocket::bind("10.0.2.1:0").unwrap();
    sock.send_to(b"offload probe", "10.0.2.2:7000").unwrap();
    assert!(wait_readable(dev.tap_fd(), Duration::from_secs(5)));
    dev.process_rx();
    let used = g.rx_used();
    assert_eq!(used.len(), 1);
    (VnetHdr::parse(&used[0].2), used[0].2[12..].to_vec())
}

#[test]
fn guest_offloads_are_applied_to_the_tap_and_cleared_on_reset() {
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
        let (mut dev, _log) = g.start("tnet0", ALL_GUEST_OFFLOADS | VIRTIO_NET_F_MRG_RXBUF);
        assert_eq!(dev.tap_offloads(), offload_flags(ALL_GUEST_OFFLOADS));
        assert!(tx_csum_offload("tnet0"));
        assert!(tso_offload("tnet0"));

        // The host now leaves the UDP checksum to the guest.
        let (hdr, frame) = host_udp_to_guest(&mut g, &mut dev);
        assert_eq!(hdr.flags & HDR_F_NEEDS_CSUM, HDR_F_NEEDS_CSUM);
        assert_eq!(hdr.csum_start as usize, ETH_HLEN + 20);
        assert_eq!(hdr.csum_offset, 6);
        assert_eq!(&frame[frame.len() - 13..], b"offload probe");

        dev.reset();
        assert_eq!(dev.tap_offloads(), 0);
        assert!(!tx_csum_offload("tnet0"));
        assert!(!tso_offload("tnet0"));
    });
}

#[test]
fn without_guest_csum_the_host_completes_checksums() {
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
        // A persistent TAP keeps offloads from its last user; opening resets them.
        {
            let tap = Tap::open("tnet0").unwrap();
            tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
                .unwrap();
        }
        let mut g = Guest::new(256);
        // TSO without CSUM: the dependency is missing, so nothing is enabled.
        let (mut dev, _log) = g.start("tnet0", VIRTIO_NET_F_GUEST_TSO4);
        assert_eq!(dev.tap_offloads(), 0);
        assert!(!tx_csum_offload("tnet0"));

        let (hdr, frame) = host_udp_to_guest(&mut g, &mut dev);
        assert_eq!(hdr.flags, 0);
        assert_eq!(hdr.gso_type, GSO_NONE);
        // A complete UDP checksum: the sum over pseudo-header and datagram is 0xffff.
        let l4 = &frame[ETH_HLEN + 20..];
        let sum = fold(l4, u32::from(pseudo_sum(HOST_IP, GUEST_IP, 17, l4.len())));
        assert_eq!(sum, 0xffff);
    });
}

#[test]
fn tap_ioctl_errors_name_the_tap_and_the_request() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let tap = Tap::open("tnet0").unwrap();
        // Unknown offload bits are refused, and the error says where.
        let e = tap.set_offload(0x8000_0000).unwrap_err().to_string();
        assert!(e.contains("tnet0") && e.contains("TUNSETOFFLOAD"), "{e}");
        let features = tap.driver_features().unwrap();
        assert_ne!(features & libc::IFF_VNET_HDR as u32, 0);
    });
}

#[test]
fn tap_open_errors_explain_the_cause_and_fix() {
    in_netns(|| {
        let e = Tap::open("a-name-far-too-long").unwrap_err().to_string();
        assert!(
            e.contains("a-name-far-too-long") && e.contains("15 bytes"),
            "{e}"
        );
        let e = Tap::open("").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");

        add_tap("tnet0", HOST_MAC, None);
        let _held = Tap::open("tnet0").unwrap();
        let e = Tap::open("tnet0").unwrap_err();
        assert!(matches!(e, TapError::Attach { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("tnet0") && msg.contains("another process"),
            "{msg}"
        );

        // Through the device constructor the error also names the device.
        let ram = std::sync::Arc::new(crate::ram::GuestRam::anonymous(1 << 20).unwrap());
        let err = Net::new(&super::guest::config("tnet0"), ram)
            .err()
            .expect("busy TAP refused");
        let msg = err.to_string();
        assert!(msg.contains("net0") && msg.contains("tnet0"), "{msg}");

        // A TUN device of that name cannot be attached as a TAP.
        ip(&["tuntap", "add", "dev", "tun0", "mode", "tun"]);
        let msg = Tap::open("tun0").unwrap_err().to_string();
        assert!(msg.contains("not a TAP with that many queues"), "{msg}");
    });
}

#[test]
fn activation_fails_cleanly_when_the_driver_skips_version_1() {
    in_netns(|| {
        add_tap("tnet0", HOST_MAC, None);
        let g = Guest::new(256);
        let mut dev = Net::new(&super::guest::config("tnet0"), g.ram.clone()).unwrap();
        let c = dev.common_mut();
        c.interrupt = Some(std::sync::Arc::new(
            crate::virtio::testing::InterruptLog::default(),
        ));
        assert!(dev.activate().is_err());
        assert!(!dev.common().activated);
        assert_eq!(dev.tap_offloads(), 0);
    });
}
