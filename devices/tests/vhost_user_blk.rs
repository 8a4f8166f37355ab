//! The `vhost-user-blk` binary driven over its socket by the crate's
//! vhost-user front end, with a driver-side ring in shared memfd RAM: what
//! QEMU or vmm would do, without a guest.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::io::AsRawFd;

use common::{pattern, Daemon, PrivateFront, Scratch};
use devices::ram::{BackingSpec, GuestRam, RegionRole};
use devices::vhost_user::frontend::{BackendConnection, RingAddrs};
use devices::virtio::testing::{Buf, DriverQueue};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const MIB: u64 = 1 << 20;
const RING: u64 = 0x10000;
const HDR: u64 = 0x100000;
const DATA: u64 = 0x200000;
const STATUS: u64 = 0x300000;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const FLUSH: u64 = 1 << 9;
const RO: u64 = 1 << 5;
const MQ: u64 = 1 << 12;
const DISCARD: u64 = 1 << 13;

/// A front end with one ring in 16 MiB of memfd RAM, as a driver sets it up.
struct Front {
    ram: GuestRam,
    conn: BackendConnection,
    queue: DriverQueue,
    kick: EventFd,
    call: EventFd,
}

impl Front {
    fn connect(socket: &Path, ram_spec: &BackingSpec) -> Result<Front, String> {
        Front::connect_ring(socket, ram_spec, 1, 0)
    }

    /// Negotiates `queues` queues and drives ring `index` of them.
    fn connect_ring(
        socket: &Path,
        ram_spec: &BackingSpec,
        queues: usize,
        index: usize,
    ) -> Result<Front, String> {
        Front::connect_laid_out(socket, ram_spec, queues, index, |r| r)
    }

    /// As `connect_ring`, with the ring addresses the back end is given
    /// passed through `layout` first.
    fn connect_laid_out(
        socket: &Path,
        ram_spec: &BackingSpec,
        queues: usize,
        index: usize,
        layout: impl FnOnce(RingAddrs) -> RingAddrs,
    ) -> Result<Front, String> {
        let mut b = GuestRam::builder();
        b.add(
            "--memory",
            ram_spec,
            RegionRole::Boot,
            &[(GuestAddress(0), 16 * MIB)],
        )
        .unwrap();
        let ram = b.build().unwrap();
        let mut conn = BackendConnection::connect(socket, queues).map_err(|e| e.to_string())?;
        let features = conn.offered_features() & (VIRTIO_F_VERSION_1 | FLUSH | MQ | DISCARD);
        conn.set_features(features).map_err(|e| e.to_string())?;
        conn.set_memory(&ram).map_err(|e| e.to_string())?;
        let queue = DriverQueue::new(ram.memory(), GuestAddress(RING), 64);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let ring = RingAddrs {
            size: 64,
            desc: queue.desc_table(),
            avail: queue.avail_ring(),
            used: queue.used_ring(),
        };
        conn.start_ring(&ram, index, layout(ring), 0, &kick, &call)
            .map_err(|e| e.to_string())?;
        Ok(Front {
            ram,
            conn,
            queue,
            kick,
            call,
        })
    }

    fn shared(socket: &Path) -> Front {
        Front::connect(socket, &BackingSpec::memfd(true)).unwrap()
    }

    /// Makes one request available, kicks, and waits for its used entry.
    /// Returns the status byte and the used length.
    fn request(&mut self, kind: u32, sector: u64, data: Option<(&[u8], bool)>) -> (u8, u32) {
        let mem = self.ram.memory();
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut bufs = vec![Buf::r(HDR, 16)];
        if let Some((bytes, to_device)) = data {
            if to_device {
                mem.write_slice(bytes, GuestAddress(DATA)).unwrap();
                bufs.push(Buf::r(DATA, bytes.len() as u32));
            } else {
                bufs.push(Buf::w(DATA, bytes.len() as u32));
            }
        }
        bufs.push(Buf::w(STATUS, 1));
        let head = self.queue.add_chain(&bufs);
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(u) = self.queue.used().into_iter().next() {
                assert_eq!(u.id(), u32::from(head));
                let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
                return (status, u.len());
            }
            assert!(Instant::now() < deadline, "no used entry within 10 s");
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn read(&mut self, sector: u64, len: usize) -> Vec<u8> {
        let buf = vec![0u8; len];
        let (status, used) = self.request(VIRTIO_BLK_T_IN, sector, Some((&buf, false)));
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(used as usize, len + 1);
        let mut out = vec![0u8; len];
        self.ram
            .memory()
            .read_slice(&mut out, GuestAddress(DATA))
            .unwrap();
        out
    }
}

fn image(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("disk.img");
    let f = fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

/// A zeroed image of `size` bytes in a new scratch directory, and the daemon
/// serving it on a socket there with `extra` options.
fn serve_image(tag: &str, size: u64, extra: &[&str]) -> (Scratch, PathBuf, PathBuf, Daemon) {
    let dir = Scratch::new(tag);
    let img = image(&dir.0, size);
    let sock = dir.0.join("blk.sock");
    let mut args = vec!["--image", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    let d = Daemon::start(DAEMON, &sock, &args);
    (dir, img, sock, d)
}

#[test]
fn writes_reach_the_image_reads_come_back_and_the_call_eventfd_fires() {
    let (_dir, img, sock, mut d) = serve_image("rw", 4 * MIB, &["--serial", "disk-7"]);
    let mut f = Front::shared(&sock);
    d.wait_for("front end 1 connected");

    let cfg = f.conn.config(0, 8).unwrap();
    assert_eq!(
        u64::from_le_bytes(cfg.try_into().unwrap()),
        4 * MIB / 512,
        "capacity in the config space"
    );

    let data = pattern(8192, 3);
    let (status, used) = f.request(VIRTIO_BLK_T_OUT, 16, Some((&data, true)));
    assert_eq!((status, used), (VIRTIO_BLK_S_OK as u8, 1));
    assert!(
        f.call.read().unwrap() >= 1,
        "the daemon signals the call eventfd itself"
    );
    let mut on_disk = vec![0u8; data.len()];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut on_disk, 16 * 512)
        .unwrap();
    assert_eq!(on_disk, data, "the write is in the image file");
    assert_eq!(f.read(16, 8192), data);

    let (status, _) = f.request(VIRTIO_BLK_T_FLUSH, 0, None);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    let id = [0u8; 20];
    let (status, used) = f.request(VIRTIO_BLK_T_GET_ID, 0, Some((&id, false)));
    assert_eq!((status, used), (VIRTIO_BLK_S_OK as u8, 21));
    let mut got = [0u8; 6];
    f.ram
        .memory()
        .read_slice(&mut got, GuestAddress(DATA))
        .unwrap();
    assert_eq!(&got, b"disk-7");

    // Past the end: an error status, not a crash.
    let (status, _) = f.request(VIRTIO_BLK_T_IN, 4 * MIB / 512, Some((&[0u8; 512], false)));
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn with_direct_aligned_and_unaligned_requests_both_reach_the_image() {
    let (_dir, img, sock, d) = serve_image("direct", 4 * MIB, &["--direct"]);
    assert!(
        d.seen.iter().any(|l| l.contains("O_DIRECT")),
        "{:?}",
        d.seen
    );
    let mut f = Front::shared(&sock);
    let small = pattern(512, 21);
    let big = pattern(64 << 10, 22);
    for (sector, data) in [(1u64, &small), (64, &big)] {
        let (status, _) = f.request(VIRTIO_BLK_T_OUT, sector, Some((data, true)));
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(&f.read(sector, data.len()), data);
        let mut on_disk = vec![0u8; data.len()];
        fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut on_disk, sector * 512)
            .unwrap();
        assert_eq!(&on_disk, data, "sector {sector}");
    }
}

#[test]
fn readonly_offers_ro_and_refuses_writes_leaving_the_image_alone() {
    let dir = Scratch::new("ro");
    let img = image(&dir.0, MIB);
    fs::write(&img, pattern(MIB as usize, 4)).unwrap();
    let sock = dir.0.join("blk.sock");
    let _d = Daemon::start(
        DAEMON,
        &sock,
        &["--image", img.to_str().unwrap(), "--readonly"],
    );
    let mut f = Front::shared(&sock);
    assert_ne!(f.conn.offered_features() & RO, 0, "VIRTIO_BLK_F_RO offered");
    assert_eq!(
        f.conn.offered_features() & DISCARD,
        0,
        "no DISCARD on a read-only disk"
    );
    let (status, _) = f.request(VIRTIO_BLK_T_OUT, 0, Some((&[0u8; 512], true)));
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(f.read(0, 512), pattern(MIB as usize, 4)[..512].to_vec());
    assert_eq!(fs::read(&img).unwrap(), pattern(MIB as usize, 4));
}

#[test]
fn several_queues_are_offered_and_each_is_served() {
    let (_dir, _img, sock, _d) = serve_image("mq", 4 * MIB, &["--queues", "2"]);
    let data = pattern(4096, 13);
    let mut f = Front::connect_ring(&sock, &BackingSpec::memfd(true), 2, 1).unwrap();
    assert_ne!(f.conn.offered_features() & MQ, 0, "VIRTIO_BLK_F_MQ offered");
    let cfg = f.conn.config(34, 2).unwrap();
    assert_eq!(
        u16::from_le_bytes([cfg[0], cfg[1]]),
        2,
        "num_queues in the config"
    );
    let (status, _) = f.request(VIRTIO_BLK_T_OUT, 40, Some((&data, true)));
    assert_eq!(status, VIRTIO_BLK_S_OK as u8, "served on queue 1");
    assert_eq!(f.read(40, 4096), data);
}

#[test]
fn discard_punches_the_range_back_to_zeroes() {
    let (_dir, _img, sock, _d) = serve_image("discard", 4 * MIB, &[]);
    let mut f = Front::shared(&sock);
    let data = pattern(8192, 17);
    assert_eq!(
        f.request(VIRTIO_BLK_T_OUT, 64, Some((&data, true))).0,
        VIRTIO_BLK_S_OK as u8
    );
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&64u64.to_le_bytes());
    seg[8..12].copy_from_slice(&16u32.to_le_bytes());
    assert_eq!(
        f.request(VIRTIO_BLK_T_DISCARD, 0, Some((&seg, true))).0,
        VIRTIO_BLK_S_OK as u8
    );
    assert_eq!(f.read(64, 8192), vec![0u8; 8192]);
}

#[test]
fn a_second_front_end_is_served_after_the_first_goes_away() {
    let (_dir, _img, sock, mut d) = serve_image("reconnect", 4 * MIB, &[]);
    let data = pattern(4096, 9);
    {
        let mut f = Front::shared(&sock);
        let (status, _) = f.request(VIRTIO_BLK_T_OUT, 8, Some((&data, true)));
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        // Dropped without any goodbye, as a killed QEMU would.
    }
    d.wait_for("front end 1 disconnected");
    d.wait_for("waiting for the next front end");
    let mut f = Front::shared(&sock);
    d.wait_for("front end 2 connected");
    assert_eq!(
        f.read(8, 4096),
        data,
        "the second front end reads the first's write"
    );
}

#[test]
fn ram_offered_through_a_read_only_fd_is_refused_with_the_reason() {
    let (dir, _img, sock, mut d) = serve_image("rofd", MIB, &[]);
    // A template clone's RAM: the template's file opened read-only. vmm's
    // own front end refuses such RAM before connecting, so this speaks the
    // protocol directly, as a front end without that check would.
    let ram_file = dir.0.join("memory");
    fs::File::create(&ram_file)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let ro = fs::File::open(&ram_file).unwrap();
    let mut fe = Frontend::connect(&sock, 1).unwrap();
    fe.set_owner().unwrap();
    fe.get_features().unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    fe.set_features(VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
        .unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 16 * MIB,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
        mmap_handle: ro.as_raw_fd(),
    };
    let err = fe
        .set_mem_table(&[region])
        .expect_err("the daemon accepted RAM it cannot map writable")
        .to_string();
    drop(fe);
    assert!(!err.is_empty());
    let line = d.wait_for("read-only fd");
    assert!(line.contains("share=on"), "{line}");
    // Refusing one front end leaves the daemon serving the next.
    d.wait_for("waiting for the next front end");
    let mut f = Front::shared(&sock);
    assert_eq!(f.read(0, 512), vec![0u8; 512]);
}

#[test]
fn a_front_end_with_private_ram_is_reported_instead_of_a_silent_hang() {
    // What QEMU does with memory-backend-file,share=off: the guest's RAM is
    // a private mapping of a file, and the file's fd is what the back end
    // gets. Mapping it works; the driver's writes just never show.
    let (dir, _img, sock, mut d) = serve_image("private", MIB, &[]);
    let mut p = PrivateFront::connect(&sock, &dir.0.join("memory"), 1);
    let mut q = DriverQueue::new(p.ram.memory(), GuestAddress(RING), 64);
    let (kick, _call) = p.start_ring(0, &q);
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    p.ram.memory().write_slice(&hdr, GuestAddress(HDR)).unwrap();
    q.add_chain(&[Buf::r(HDR, 16), Buf::w(DATA, 512), Buf::w(STATUS, 1)]);
    kick.write(1).unwrap();
    let line = d.wait_for("probably private");
    assert!(line.contains("share=on"), "{line}");
    assert!(q.used().is_empty(), "nothing can have been served");
}

#[test]
fn sigterm_syncs_removes_the_socket_and_exits_zero() {
    let (_dir, _img, sock, mut d) = serve_image("term", MIB, &[]);
    let mut f = Front::shared(&sock);
    let (status, _) = f.request(VIRTIO_BLK_T_OUT, 0, Some((&pattern(512, 1), true)));
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    d.signal(libc::SIGTERM);
    d.wait_for("stopped");
    let status = d.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "the socket file is removed");
}

#[test]
fn bad_options_get_one_clear_line_and_status_2() {
    for (args, expect) in [
        (
            vec!["--socket", "/tmp/x", "--image", "/nonexistent/disk.img"],
            "cannot open disk image",
        ),
        (
            vec![
                "--socket",
                "/tmp/x",
                "--image",
                "/dev/null",
                "--queue-size",
                "100",
            ],
            "power of two",
        ),
        (
            vec![
                "--socket",
                "/tmp/x",
                "--image",
                "/dev/null",
                "--queues",
                "0",
            ],
            "--queues",
        ),
    ] {
        let out = Command::new(DAEMON).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_used_ring_over_the_available_ring_is_reported_and_not_served() {
    let (_dir, img, sock, mut d) = serve_image("overlap", MIB, &[]);
    // A front end other than vmm's may hand over any addresses: here the
    // device's used entries would land on the available ring it reads.
    let mut f = Front::connect_laid_out(&sock, &BackingSpec::memfd(true), 1, 0, |r| RingAddrs {
        used: r.avail,
        ..r
    })
    .unwrap();
    d.wait_for("front end 1 connected");
    let mem = f.ram.memory();
    mem.write_slice(&pattern(512, 5), GuestAddress(DATA))
        .unwrap();
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    f.queue
        .add_chain(&[Buf::r(HDR, 16), Buf::r(DATA, 512), Buf::w(STATUS, 1)]);
    f.kick.write(1).unwrap();
    let line = d.wait_for("overlaps its");
    assert!(
        line.contains("queue 0") && line.contains("not served"),
        "{line}"
    );
    assert_eq!(
        fs::read(&img).unwrap(),
        vec![0u8; MIB as usize],
        "nothing was written"
    );
    drop(f);

    // The daemon is not stuck: the next front end, with its rings apart, is served.
    let mut f = Front::shared(&sock);
    d.wait_for("front end 2 connected");
    let data = pattern(512, 6);
    let (status, _) = f.request(VIRTIO_BLK_T_OUT, 0, Some((&data, true)));
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
}
