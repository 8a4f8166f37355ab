//! vmm's vhost-user device (the transport side the guest driver talks to)
//! against two real back ends: this crate's `vhost-user-blk` and QEMU's
//! `qemu-storage-daemon`. A driver-side ring in shared memfd RAM stands in
//! for the guest; kicks and calls are the eventfds KVM and the VMM's event
//! loop would hold.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{pattern, Daemon, Scratch};
use devices::ram::{BackingSpec, GuestRam, RegionRole};
use devices::vhost_user::{watch_backend, VhostUserBlkConfig, VhostUserDevice};
use devices::virtio::testing::{init_device, Buf, DriverQueue, InterruptLog};
use devices::virtio::{InterruptKind, VirtioDevice};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const MIB: u64 = 1 << 20;
const HDR: u64 = 0x100000;
const DATA: u64 = 0x200000;
const STATUS: u64 = 0x300000;

fn ram() -> Arc<GuestRam> {
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &BackingSpec::memfd(true),
        RegionRole::Boot,
        &[(GuestAddress(0), 16 * MIB)],
    )
    .unwrap();
    Arc::new(b.build().unwrap())
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    fs::File::create(&p).unwrap().set_len(4 * MIB).unwrap();
    p
}

/// The device as the VMM wires it, with the guest's driver side.
struct Rig {
    ram: Arc<GuestRam>,
    dev: Arc<Mutex<VhostUserDevice>>,
    queue: DriverQueue,
    kick: EventFd,
    call: EventFd,
    irqs: Arc<InterruptLog>,
    done: u16,
}

impl Rig {
    fn new(socket: &Path) -> Rig {
        let ram = ram();
        let cfg = VhostUserBlkConfig {
            id: "vu0".into(),
            socket: socket.to_path_buf(),
            queues: 1,
        };
        let mut dev = VhostUserDevice::blk(&cfg, ram.clone()).unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        dev.set_kicks(vec![kick.try_clone().unwrap()]);
        let call = dev.call_evts().unwrap().remove(0);
        let queue = DriverQueue::new(ram.memory(), GuestAddress(0x10000), 64);
        let irqs = init_device(&mut dev, u64::MAX, &[&queue]).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        watch_backend(&dev).unwrap();
        Rig {
            ram,
            dev,
            queue,
            kick,
            call,
            irqs,
            done: 0,
        }
    }

    /// One request, as a driver makes it; what the VMM's event loop does
    /// with the call eventfd is done here. Returns the status byte.
    fn request(&mut self, kind: u32, sector: u64, data: &[u8], to_device: bool) -> u8 {
        let mem = self.ram.memory();
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let data_buf = if to_device {
            mem.write_slice(data, GuestAddress(DATA)).unwrap();
            Buf::r(DATA, data.len() as u32)
        } else {
            Buf::w(DATA, data.len() as u32)
        };
        self.queue
            .add_chain(&[Buf::r(HDR, 16), data_buf, Buf::w(STATUS, 1)]);
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut used = Vec::new();
        while used.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the back end never used the chain"
            );
            thread::sleep(Duration::from_millis(1));
            used = self.queue.used();
        }
        assert_eq!(used.len(), 1);
        // The used entry may land a moment before the back end signals.
        while self.call.read().is_err() {
            assert!(Instant::now() < deadline, "the back end never signalled");
            thread::sleep(Duration::from_millis(1));
        }
        self.dev.lock().unwrap().backend_called(0);
        assert_eq!(
            self.irqs.take(),
            vec![InterruptKind::Queue(0)],
            "a used-buffer interrupt, which the transport shows in InterruptStatus"
        );
        // As Linux does with EVENT_IDX: interrupt me after the next one.
        self.done += 1;
        self.queue.set_used_event(self.done);
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn read(&mut self, sector: u64, len: usize) -> Vec<u8> {
        let status = self.request(VIRTIO_BLK_T_IN, sector, &vec![0u8; len], false);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let mut out = vec![0u8; len];
        self.ram
            .memory()
            .read_slice(&mut out, GuestAddress(DATA))
            .unwrap();
        out
    }
}

fn write_read_check(rig: &mut Rig, img: &Path) {
    let data = pattern(4096, 5);
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, 24, &data, true),
        VIRTIO_BLK_S_OK as u8
    );
    let mut on_disk = vec![0u8; data.len()];
    fs::File::open(img)
        .unwrap()
        .read_exact_at(&mut on_disk, 24 * 512)
        .unwrap();
    assert_eq!(on_disk, data);
    assert_eq!(rig.read(24, 4096), data);
}

#[test]
fn the_device_serves_the_guest_through_our_daemon_and_survives_its_restart() {
    let dir = Scratch::new("dev-ours");
    let img = image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let image_arg = ["--image", img.to_str().unwrap()];
    let mut d = Daemon::start(DAEMON, &sock, &image_arg);
    let mut rig = Rig::new(&sock);
    let capacity = {
        let mut c = [0u8; 8];
        rig.dev.lock().unwrap().read_config(0, &mut c);
        u64::from_le_bytes(c)
    };
    assert_eq!(
        capacity,
        4 * MIB / 512,
        "the config space is the back end's"
    );
    write_read_check(&mut rig, &img);

    // The daemon restarts while the guest is idle: the device reconnects
    // and hands the new daemon its memory and ring where it left off.
    d.signal(libc::SIGTERM);
    d.child.wait().unwrap();
    let mut d2 = Daemon::start(DAEMON, &sock, &image_arg);
    d2.wait_for("front end 1 connected");
    // A kick made before the ring is handed over stays counted in the
    // eventfd, so the request below is served either way.
    let data = pattern(1024, 11);
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, 100, &data, true),
        VIRTIO_BLK_S_OK as u8,
        "served by the restarted daemon"
    );
    assert_eq!(rig.read(24, 4096), pattern(4096, 5));
}

/// qemu-storage-daemon's vhost-user-blk export, QEMU's own back end.
struct Qsd(Child);

impl Qsd {
    fn start(socket: &Path, image: &Path) -> Qsd {
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=disk,filename={}",
                image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable=on",
                socket.display()
            ))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-storage-daemon (Debian package qemu-utils) must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon never listened"
            );
            thread::sleep(Duration::from_millis(10));
        }
        Qsd(child)
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_device_serves_the_guest_through_qemu_storage_daemon() {
    let dir = Scratch::new("dev-qsd");
    let img = image(&dir.0);
    let sock = dir.0.join("qsd.sock");
    let _qsd = Qsd::start(&sock, &img);
    let mut rig = Rig::new(&sock);
    write_read_check(&mut rig, &img);
}
