//! Block I/O through vhost-user, measured from the front end's side: this
//! crate's vhost-user front end and a driver-side ring in memfd RAM, with no
//! guest, against `vhost-user-blk` and against `qemu-storage-daemon
//! --export type=vhost-user-blk` on the same image, and against the
//! in-process virtio-blk device driven through the same ring.
//!
//! ```sh
//! cargo bench -p devices --features test-utils --bench vhost_user_blk -- --runs 5
//! ```
//!
//! Options: `--runs N` (medians of N, default 5), `--seconds S` per
//! measurement (default 1.5), `--image-mib M` (default 256), `--dir D`
//! (where the image goes, default /var/tmp: O_DIRECT needs a real disk),
//! `--quick` (one run of 0.3 s each, to check the harness), `--jobs TEXT`
//! (only the jobs whose name contains TEXT), `--direct on|off` (only that
//! O_DIRECT setting), `--io-threads N` (passed to vhost-user-blk).

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use devices::ram::{BackingSpec, GuestRam, RegionRole};
use devices::vhost_user::frontend::{BackendConnection, RingAddrs};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::testing::{init_device, Buf, DriverQueue};
use devices::virtio::VirtioDevice;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MIB: u64 = 1 << 20;
const RING: u64 = 0x10000;
const QUEUE_SIZE: u16 = 256;
const HDRS: u64 = 0x100000;
const STATUSES: u64 = 0x200000;
const DATA: u64 = 0x400000;
const MAX_BS: u64 = 128 << 10;
const MAX_QD: usize = 32;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

#[derive(Clone, Copy)]
struct Job {
    name: &'static str,
    write: bool,
    random: bool,
    bs: u64,
    qd: usize,
}

const JOBS: &[Job] = &[
    Job {
        name: "4K randread QD1",
        write: false,
        random: true,
        bs: 4096,
        qd: 1,
    },
    Job {
        name: "4K randread QD32",
        write: false,
        random: true,
        bs: 4096,
        qd: 32,
    },
    Job {
        name: "4K randwrite QD1",
        write: true,
        random: true,
        bs: 4096,
        qd: 1,
    },
    Job {
        name: "4K randwrite QD32",
        write: true,
        random: true,
        bs: 4096,
        qd: 32,
    },
    Job {
        name: "128K seqread QD8",
        write: false,
        random: false,
        bs: 128 << 10,
        qd: 8,
    },
    Job {
        name: "128K seqwrite QD8",
        write: true,
        random: false,
        bs: 128 << 10,
        qd: 8,
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Ours,
    Qsd,
    InProcess,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Ours => "vhost-user-blk",
            Target::Qsd => "qemu-storage-daemon",
            Target::InProcess => "in-process virtio-blk",
        }
    }
}

struct Opts {
    /// Only the jobs whose name contains this.
    jobs: Option<String>,
    /// Only O_DIRECT on (Some(true)) or off.
    direct: Option<bool>,
    /// Passed to vhost-user-blk.
    io_threads: Option<String>,
    runs: usize,
    seconds: f64,
    image_mib: u64,
    dir: PathBuf,
}

fn opts() -> Opts {
    let mut o = Opts {
        jobs: None,
        direct: None,
        io_threads: None,
        runs: 5,
        seconds: 1.5,
        image_mib: 256,
        dir: PathBuf::from("/var/tmp"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |what: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{what} needs a value"))
        };
        match a.as_str() {
            "--runs" => o.runs = val("--runs").parse().expect("--runs N"),
            "--seconds" => o.seconds = val("--seconds").parse().expect("--seconds S"),
            "--image-mib" => o.image_mib = val("--image-mib").parse().expect("--image-mib M"),
            "--dir" => o.dir = PathBuf::from(val("--dir")),
            "--jobs" => o.jobs = Some(val("--jobs")),
            "--direct" => o.direct = Some(val("--direct") == "on"),
            "--io-threads" => o.io_threads = Some(val("--io-threads")),
            "--quick" => {
                o.runs = 1;
                o.seconds = 0.3;
            }
            // What cargo bench passes along.
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// One measurement's outcome.
struct Sample {
    iops: f64,
    mib_s: f64,
    mean_us: f64,
    p99_us: f64,
}

/// The driver: requests in flight on one ring, in shared memfd RAM.
struct Driver {
    ram: Arc<GuestRam>,
    queue: DriverQueue,
    rng: u64,
    next_seq: u64,
    sectors: u64,
    done: u16,
}

impl Driver {
    fn new(image_bytes: u64) -> Driver {
        let mut b = GuestRam::builder();
        b.add(
            "--memory",
            &BackingSpec::memfd(true),
            RegionRole::Boot,
            &[(GuestAddress(0), 64 * MIB)],
        )
        .unwrap();
        let ram = Arc::new(b.build().unwrap());
        let queue = DriverQueue::new(ram.memory(), GuestAddress(RING), QUEUE_SIZE);
        Driver {
            ram,
            queue,
            rng: 0x9e37_79b9_7f4a_7c15,
            next_seq: 0,
            sectors: image_bytes / 512,
            done: 0,
        }
    }

    fn sector(&mut self, job: &Job) -> u64 {
        let blocks = self.sectors * 512 / job.bs;
        let block = if job.random {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % blocks
        } else {
            let b = self.next_seq % blocks;
            self.next_seq += 1;
            b
        };
        block * job.bs / 512
    }

    /// Makes request `slot` available; returns its head.
    fn submit(&mut self, job: &Job, slot: usize) -> u16 {
        let sector = self.sector(job);
        let mem = self.ram.memory();
        let hdr = HDRS + 16 * slot as u64;
        let status = STATUSES + slot as u64;
        let data = DATA + MAX_BS * slot as u64;
        let kind = if job.write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let data_buf = if job.write {
            Buf::r(data, job.bs as u32)
        } else {
            Buf::w(data, job.bs as u32)
        };
        self.queue
            .add_chain(&[Buf::r(hdr, 16), data_buf, Buf::w(status, 1)])
    }

    fn status(&self, slot: usize) -> u8 {
        self.ram
            .memory()
            .read_obj(GuestAddress(STATUSES + slot as u64))
            .unwrap()
    }
}

/// How requests reach a back end and completions come back.
trait Engine {
    fn driver(&mut self) -> &mut Driver;
    fn kick(&mut self);
    /// Blocks until the back end may have used buffers.
    fn wait(&mut self);
}

struct VhostUser {
    d: Driver,
    _conn: BackendConnection,
    kick: EventFd,
    call: EventFd,
}

impl VhostUser {
    fn connect(socket: &Path, image_bytes: u64) -> VhostUser {
        let d = Driver::new(image_bytes);
        let mut conn = BackendConnection::connect(socket, 1).unwrap();
        let features = conn.offered_features() & (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        conn.set_features(features).unwrap();
        conn.set_memory(&d.ram).unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let call = EventFd::new(0).unwrap();
        let ring = RingAddrs {
            size: QUEUE_SIZE,
            desc: d.queue.desc_table(),
            avail: d.queue.avail_ring(),
            used: d.queue.used_ring(),
        };
        conn.start_ring(&d.ram, 0, ring, 0, &kick, &call).unwrap();
        VhostUser {
            d,
            _conn: conn,
            kick,
            call,
        }
    }
}

impl Engine for VhostUser {
    fn driver(&mut self) -> &mut Driver {
        &mut self.d
    }
    fn kick(&mut self) {
        self.kick.write(1).unwrap();
    }
    fn wait(&mut self) {
        let mut p = libc::pollfd {
            fd: std::os::unix::io::AsRawFd::as_raw_fd(&self.call),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a timeout only means "look again".
        if unsafe { libc::poll(&mut p, 1, 1000) } > 0 {
            let _ = self.call.read();
        }
    }
}

struct InProcess {
    d: Driver,
    dev: Block,
}

impl InProcess {
    fn new(image: &Path, image_bytes: u64) -> InProcess {
        let d = Driver::new(image_bytes);
        let cfg = BlockConfig {
            id: "bench".into(),
            path: image.to_path_buf(),
            readonly: false,
        };
        let mut dev = Block::new(&cfg, d.ram.clone()).unwrap();
        init_device(
            &mut dev,
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
            &[&d.queue],
        )
        .unwrap();
        InProcess { d, dev }
    }
}

impl Engine for InProcess {
    fn driver(&mut self) -> &mut Driver {
        &mut self.d
    }
    fn kick(&mut self) {
        // The device thread's work, done on the driver's thread.
        self.dev.queue_notify(0);
    }
    fn wait(&mut self) {}
}

/// Keeps `job.qd` requests in flight for `seconds`, as a driver with
/// EVENT_IDX does: refill and kick after each batch of completions, and ask
/// for the next interrupt after the last completion seen.
fn measure(e: &mut dyn Engine, job: &Job, seconds: f64) -> Sample {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut in_flight: VecDeque<(u16, usize, Instant)> = VecDeque::new();
    let mut lat: Vec<u32> = Vec::new();
    for slot in 0..job.qd {
        let head = e.driver().submit(job, slot);
        in_flight.push_back((head, slot, Instant::now()));
    }
    e.kick();
    while !in_flight.is_empty() {
        let used = e.driver().queue.used();
        if used.is_empty() {
            let d = e.driver();
            d.queue.set_used_event(d.done);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let again = d.queue.used();
            if again.is_empty() {
                e.wait();
                continue;
            }
            complete(e, job, again, &mut in_flight, &mut lat, end);
        } else {
            complete(e, job, used, &mut in_flight, &mut lat, end);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let n = lat.len().max(1);
    let mean = lat.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    let p99 = lat.get((n * 99 / 100).min(n - 1)).copied().unwrap_or(0);
    Sample {
        iops: lat.len() as f64 / secs,
        mib_s: lat.len() as f64 * job.bs as f64 / MIB as f64 / secs,
        mean_us: mean / 1000.0,
        p99_us: f64::from(p99) / 1000.0,
    }
}

fn complete(
    e: &mut dyn Engine,
    job: &Job,
    used: Vec<virtio_queue::desc::split::VirtqUsedElem>,
    in_flight: &mut VecDeque<(u16, usize, Instant)>,
    lat: &mut Vec<u32>,
    end: Instant,
) {
    let now = Instant::now();
    let mut resubmitted = false;
    for u in used {
        let pos = in_flight
            .iter()
            .position(|(h, _, _)| u32::from(*h) == u.id())
            .expect("a used head the driver made available");
        let (_, slot, t) = in_flight.remove(pos).unwrap();
        assert_eq!(
            e.driver().status(slot),
            VIRTIO_BLK_S_OK as u8,
            "request failed"
        );
        lat.push(now.duration_since(t).as_nanos().min(u128::from(u32::MAX)) as u32);
        e.driver().done = e.driver().done.wrapping_add(1);
        if now < end {
            let head = e.driver().submit(job, slot);
            in_flight.push_back((head, slot, Instant::now()));
            resubmitted = true;
        }
    }
    if resubmitted {
        e.kick();
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_socket(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        thread::sleep(Duration::from_millis(10));
    }
}

fn start(
    target: Target,
    direct: bool,
    image: &Path,
    socket: &Path,
    io_threads: Option<&str>,
) -> Option<Daemon> {
    let _ = fs::remove_file(socket);
    let child = match target {
        Target::InProcess => return None,
        Target::Ours => {
            let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/release/vhost-user-blk");
            let mut c = Command::new(&bin);
            c.arg("--socket").arg(socket).arg("--image").arg(image);
            if direct {
                c.arg("--direct");
            }
            if let Some(n) = io_threads {
                c.arg("--io-threads").arg(n);
            }
            c.env("RUST_LOG", "warn")
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; build it first: cargo build --release -p devices --bins",
                        bin.display()
                    )
                })
        }
        Target::Qsd => Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=disk,filename={},cache.direct={}",
                image.display(),
                if direct { "on" } else { "off" }
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable=on,num-queues=1",
                socket.display()
            ))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-storage-daemon (qemu-utils)"),
    };
    wait_socket(socket);
    Some(Daemon(child))
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    v.swap_remove(v.len() / 2)
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).unwrap();
    let image = o.dir.join(format!("vu-bench-{}.img", std::process::id()));
    let socket = o.dir.join(format!("vu-bench-{}.sock", std::process::id()));
    let image_bytes = o.image_mib * MIB;
    {
        // Written out, so that reads hit allocated blocks, not holes.
        let mut f = fs::File::create(&image).unwrap();
        let chunk: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 + 3) as u8).collect();
        for _ in 0..o.image_mib {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let qsd_version = Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "vhost-user block benchmark: image {} MiB in {}, {} run(s) of {} s each, medians; {qsd_version}",
        o.image_mib,
        o.dir.display(),
        o.runs,
        o.seconds
    );
    println!();
    println!("| target | O_DIRECT | job | IOPS | MiB/s | mean latency (µs) | p99 latency (µs) |");
    println!("|---|---|---|---|---|---|---|");
    let mut results: Vec<(Target, bool, &'static str, f64)> = Vec::new();
    for direct in [false, true] {
        if o.direct.is_some_and(|d| d != direct) {
            continue;
        }
        let targets: &[Target] = if direct {
            &[Target::Ours, Target::Qsd]
        } else {
            &[Target::Ours, Target::Qsd, Target::InProcess]
        };
        for job in JOBS {
            if o.jobs
                .as_ref()
                .is_some_and(|j| !job.name.contains(j.as_str()))
            {
                continue;
            }
            // The targets take turns within each run, so that whatever
            // else the machine does falls on all of them alike.
            let mut samples: Vec<Vec<Sample>> = targets.iter().map(|_| Vec::new()).collect();
            for _ in 0..o.runs {
                for (t, &target) in targets.iter().enumerate() {
                    let _daemon = start(target, direct, &image, &socket, o.io_threads.as_deref());
                    let mut engine: Box<dyn Engine> = match target {
                        Target::InProcess => Box::new(InProcess::new(&image, image_bytes)),
                        _ => Box::new(VhostUser::connect(&socket, image_bytes)),
                    };
                    assert!(job.qd <= MAX_QD);
                    // Warm up the path (and the page cache for reads).
                    measure(engine.as_mut(), job, (o.seconds / 5.0).min(0.3));
                    samples[t].push(measure(engine.as_mut(), job, o.seconds));
                }
            }
            for (&target, s) in targets.iter().zip(samples) {
                let s = median(s);
                println!(
                    "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
                    target.label(),
                    if direct { "on" } else { "off" },
                    job.name,
                    s.iops,
                    s.mib_s,
                    s.mean_us,
                    s.p99_us
                );
                results.push((target, direct, job.name, s.iops));
            }
        }
    }
    println!();
    println!("| job | O_DIRECT | vhost-user-blk / qemu-storage-daemon (IOPS) | in-process / vhost-user-blk |");
    println!("|---|---|---|---|");
    let get = |t: Target, d: bool, j: &str| {
        results
            .iter()
            .find(|r| r.0 == t && r.1 == d && r.2 == j)
            .map(|r| r.3)
    };
    for direct in [false, true] {
        for job in JOBS {
            let Some(ours) = get(Target::Ours, direct, job.name) else {
                continue;
            };
            let qsd = get(Target::Qsd, direct, job.name).unwrap_or(f64::NAN);
            let inproc = get(Target::InProcess, direct, job.name)
                .map_or("-".to_string(), |v| format!("{:.2}", v / ours));
            println!(
                "| {} | {} | {:.2} | {inproc} |",
                job.name,
                if direct { "on" } else { "off" },
                ours / qsd
            );
        }
    }
    let _ = fs::remove_file(&image);
    let _ = fs::remove_file(&socket);
}
