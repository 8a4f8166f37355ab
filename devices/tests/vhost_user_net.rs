//! The `vhost-user-net` binary on a real TAP in a private network
//! namespace, driven over its socket by the crate's vhost-user front end with
//! driver-side RX and TX rings in shared memfd RAM.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{Daemon, PrivateFront, Scratch};
use devices::ram::{BackingSpec, GuestRam, RegionRole};
use devices::vhost_user::frontend::{BackendConnection, RingAddrs};
use devices::virtio::testing::frames::*;
use devices::virtio::testing::netns::{add_tap, in_netns, ip, PacketSocket};
use devices::virtio::testing::{Buf, DriverQueue};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-net");
const MIB: u64 = 1 << 20;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const RX_BUFS: u64 = 0x100000;
const TX_BUF: u64 = 0x200000;
const BUF_LEN: u32 = 2048;
const WAIT: Duration = Duration::from_secs(5);

/// A front end with one queue pair, RX buffers posted.
struct Front {
    ram: GuestRam,
    _conn: BackendConnection,
    rx: DriverQueue,
    tx: DriverQueue,
    kicks: [EventFd; 2],
    _calls: [EventFd; 2],
}

impl Front {
    fn connect(socket: &Path) -> Front {
        Front::connect_pair(socket, 1, 0)
    }

    /// Negotiates `pairs` queue pairs and drives pair `pair` of them.
    fn connect_pair(socket: &Path, pairs: usize, pair: usize) -> Front {
        let mut b = GuestRam::builder();
        b.add(
            "--memory",
            &BackingSpec::memfd(true),
            RegionRole::Boot,
            &[(GuestAddress(0), 16 * MIB)],
        )
        .unwrap();
        let ram = b.build().unwrap();
        let mut conn = BackendConnection::connect(socket, 2 * pairs).unwrap();
        conn.set_features(conn.offered_features() & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ))
            .unwrap();
        conn.set_memory(&ram).unwrap();
        let rx = DriverQueue::new(ram.memory(), GuestAddress(0x10000), 16);
        let tx = DriverQueue::new(ram.memory(), GuestAddress(0x20000), 16);
        let kicks = [ev(), ev()];
        let calls = [ev(), ev()];
        for (i, q) in [&rx, &tx].into_iter().enumerate() {
            let ring = RingAddrs {
                size: q.size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
            };
            conn.start_ring(&ram, 2 * pair + i, ring, 0, &kicks[i], &calls[i])
                .unwrap();
        }
        let mut f = Front {
            ram,
            _conn: conn,
            rx,
            tx,
            kicks,
            _calls: calls,
        };
        for i in 0..8 {
            f.rx.add_chain(&[Buf::w(RX_BUFS + u64::from(i * BUF_LEN), BUF_LEN)]);
        }
        f.kicks[0].write(1).unwrap();
        f
    }

    /// Sends `pkt` (header and frame) on the TX ring and waits until it is used.
    fn send(&mut self, pkt: &[u8]) {
        self.ram
            .memory()
            .write_slice(pkt, GuestAddress(TX_BUF))
            .unwrap();
        self.tx.add_chain(&[Buf::r(TX_BUF, pkt.len() as u32)]);
        self.kicks[1].write(1).unwrap();
        wait_until("the TX chain to be used", || !self.tx.used().is_empty());
    }

    /// The next packet the daemon delivered into an RX buffer.
    fn receive(&mut self) -> Vec<u8> {
        let mut got = None;
        wait_until("an RX buffer to be used", || {
            got = self.rx.used().into_iter().next();
            got.is_some()
        });
        let u = got.unwrap();
        let mut pkt = vec![0u8; u.len() as usize];
        let addr = RX_BUFS + u64::from(u.id()) * u64::from(BUF_LEN);
        self.ram
            .memory()
            .read_slice(&mut pkt, GuestAddress(addr))
            .unwrap();
        pkt
    }
}

fn ev() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn packets_flow_both_ways_and_a_second_front_end_is_served() {
    in_netns(|| {
        add_tap("vun0", HOST_MAC, Some(HOST_CIDR));
        let dir = Scratch::new("net");
        let sock = dir.0.join("net.sock");
        let mut d = Daemon::start(DAEMON, &sock, &["--tap", "vun0"]);
        let host_udp = UdpSocket::bind("10.0.2.1:5000").unwrap();
        host_udp.set_read_timeout(Some(WAIT)).unwrap();
        let host_raw = PacketSocket::bind("vun0");

        for round in 1..=2 {
            let mut f = Front::connect(&sock);
            d.wait_for(&format!("front end {round} connected"));

            let msg = format!("hello {round} from the guest");
            f.send(&with_hdr(
                VnetHdr::default(),
                &udp_to_host(msg.as_bytes(), 5000),
            ));
            let mut buf = [0u8; 64];
            let (n, from) = host_udp
                .recv_from(&mut buf)
                .expect("datagram from the guest");
            assert_eq!(&buf[..n], msg.as_bytes());
            assert_eq!(from.to_string(), "10.0.2.2:4000");

            let frame = test_frame(GUEST_MAC, HOST_MAC, round, 200);
            host_raw.send(&frame);
            let pkt = f.receive();
            assert_eq!(&pkt[12..], &frame[..], "header, then the frame as sent");
            assert_eq!(VnetHdr::parse(&pkt[..12]).flags, 0);
            drop(f);
            d.wait_for(&format!("front end {round} disconnected"));
        }
        // The TAP stayed attached across front ends.
        assert!(ip(&["-o", "link", "show", "dev", "vun0"]).contains("UP"));
    });
}

#[test]
fn each_queue_pair_has_its_own_tap_queue() {
    in_netns(|| {
        ip(&[
            "tuntap",
            "add",
            "dev",
            "vumq0",
            "mode",
            "tap",
            "multi_queue",
        ]);
        ip(&[
            "link",
            "set",
            "dev",
            "vumq0",
            "address",
            "02:00:00:00:00:01",
        ]);
        ip(&["addr", "add", HOST_CIDR, "dev", "vumq0"]);
        ip(&["link", "set", "dev", "vumq0", "up"]);
        let dir = Scratch::new("netmq");
        let sock = dir.0.join("net.sock");
        let mut d = Daemon::start(DAEMON, &sock, &["--tap", "vumq0", "--queues", "2"]);
        let host_udp = UdpSocket::bind("10.0.2.1:5002").unwrap();
        host_udp.set_read_timeout(Some(WAIT)).unwrap();
        let mut f = Front::connect_pair(&sock, 2, 1);
        d.wait_for("front end 1 connected");
        f.send(&with_hdr(
            VnetHdr::default(),
            &udp_to_host(b"on pair 1", 5002),
        ));
        let mut buf = [0u8; 64];
        let (n, _) = host_udp
            .recv_from(&mut buf)
            .expect("datagram sent on pair 1");
        assert_eq!(&buf[..n], b"on pair 1");
    });
}

#[test]
fn a_front_end_with_private_ram_is_reported_instead_of_a_silent_hang() {
    in_netns(|| {
        add_tap("vun2", HOST_MAC, None);
        let dir = Scratch::new("netpriv");
        let sock = dir.0.join("net.sock");
        let mut d = Daemon::start(DAEMON, &sock, &["--tap", "vun2"]);
        let mut p = PrivateFront::connect(&sock, &dir.0.join("memory"), 2);
        let mut rx = DriverQueue::new(p.ram.memory(), GuestAddress(0x10000), 16);
        let (kick, _call) = p.start_ring(0, &rx);
        // As Linux's driver does at probe: post RX buffers, kick once.
        for i in 0..8 {
            rx.add_chain(&[Buf::w(RX_BUFS + u64::from(i * BUF_LEN), BUF_LEN)]);
        }
        kick.write(1).unwrap();
        let line = d.wait_for("probably private");
        assert!(
            line.contains("queue 0") && line.contains("share=on"),
            "{line}"
        );
    });
}

#[test]
fn a_missing_multi_queue_tap_is_one_clear_line() {
    in_netns(|| {
        add_tap("vun1", HOST_MAC, None);
        let out = std::process::Command::new(DAEMON)
            .args([
                "--socket",
                "/tmp/vun1.sock",
                "--tap",
                "vun1",
                "--queues",
                "2",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("multi_queue"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    });
}
