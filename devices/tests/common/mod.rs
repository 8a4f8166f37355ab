//! What the daemon tests share: a scratch directory and a daemon process
//! whose log lines the test can wait for.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A directory of its own under the temp dir, removed at the end.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("vu-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The daemon process; its stderr lines arrive on a channel.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line waited through so far.
    pub seen: Vec<String>,
}

impl Daemon {
    /// Starts `binary --socket SOCKET ARGS...` and waits until it listens.
    pub fn start(binary: &str, socket: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(binary)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut d = Daemon {
            child,
            lines,
            seen: Vec::new(),
        };
        d.wait_for("waiting for a front end");
        d
    }

    /// Waits for a stderr line containing `text`; panics with the log so far.
    pub fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "daemon never logged {text:?}; it logged:\n{}",
            self.seen.join("\n")
        );
    }

    /// Every line logged so far, after a moment for the last ones to arrive.
    pub fn all_lines(&mut self) -> &[String] {
        thread::sleep(Duration::from_millis(200));
        self.seen.extend(self.lines.try_iter());
        &self.seen
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child's own pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            // The daemon's side of a failure, after the test's own message.
            thread::sleep(Duration::from_millis(100));
            self.seen.extend(self.lines.try_iter());
            eprintln!("daemon log:\n{}", self.seen.join("\n"));
        }
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A front end as QEMU is with `memory-backend-file,share=off`: guest RAM
/// is a private mapping of a file, and the file's fd is what the back end
/// gets. Mapping it works; the driver's writes just never show there.
pub struct PrivateFront {
    pub ram: devices::ram::GuestRam,
    pub fe: vhost::vhost_user::Frontend,
    _fd: fs::File,
}

impl PrivateFront {
    pub fn connect(socket: &Path, ram_file: &Path, queues: u64) -> PrivateFront {
        use devices::ram::{BackingSpec, GuestRam, RegionRole};
        use vhost::vhost_user::message::VhostUserHeaderFlag;
        use vhost::vhost_user::{
            Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
        };
        use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
        use vm_memory::{GuestAddress, GuestMemoryBackend};

        let size = 16u64 << 20;
        let mut b = GuestRam::builder();
        b.add(
            "--memory",
            &BackingSpec::file(ram_file, false),
            RegionRole::Boot,
            &[(GuestAddress(0), size)],
        )
        .unwrap();
        let ram = b.build().unwrap();
        let fd = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(ram_file)
            .unwrap();
        let mut fe = Frontend::connect(socket, queues).unwrap();
        fe.set_owner().unwrap();
        fe.get_features().unwrap();
        let proto = fe.get_protocol_features().unwrap();
        fe.set_protocol_features(
            proto & (VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ),
        )
        .unwrap();
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        fe.set_features(1 << 32 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            .unwrap();
        let host = ram.memory().get_host_address(GuestAddress(0)).unwrap() as u64;
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: fd.as_raw_fd(),
        }])
        .expect("a writable fd maps fine: nothing fails, which is the danger");
        PrivateFront { ram, fe, _fd: fd }
    }

    /// Hands ring `index` (laid out by `q`) over and enables it; returns
    /// its kick and call eventfds.
    pub fn start_ring(
        &mut self,
        index: usize,
        q: &devices::virtio::testing::DriverQueue,
    ) -> (
        vmm_sys_util::eventfd::EventFd,
        vmm_sys_util::eventfd::EventFd,
    ) {
        use vhost::vhost_user::VhostUserFrontend;
        use vhost::{VhostBackend, VringConfigData};
        use vm_memory::{GuestAddress, GuestMemoryBackend};
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

        let mem = self.ram.memory();
        let host = |a: GuestAddress| mem.get_host_address(a).unwrap() as u64;
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let fe = &mut self.fe;
        fe.set_vring_num(index, q.size()).unwrap();
        fe.set_vring_addr(
            index,
            &VringConfigData {
                queue_max_size: q.size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table()),
                used_ring_addr: host(q.used_ring()),
                avail_ring_addr: host(q.avail_ring()),
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(index, 0).unwrap();
        fe.set_vring_call(index, &call).unwrap();
        fe.set_vring_kick(index, &kick).unwrap();
        fe.set_vring_enable(index, true).unwrap();
        (kick, call)
    }
}
