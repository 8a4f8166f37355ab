//! The pieces of a run: a scratch directory that reports on failure, the
//! guest image, QEMU (10 or the lab's 7.2) with its RAM and devices, the
//! daemons, and the data the guest writes.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MIB: usize = 1 << 20;
/// The guest's RAM: small, since TCG boot time hardly depends on it.
pub const RAM_MIB: usize = 256;
pub const IMAGE_MIB: usize = 16;
/// From QEMU's start to the guest's VU-DONE. A boot takes 4 to 15 s here
/// (2 cores shared with builds); the margin is for a loaded CI machine.
pub const BOOT_SECS: u64 = 120;
/// From VU-DONE (or a kill) to QEMU's exit.
const EXIT_SECS: u64 = 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the devices crate sits in the workspace")
        .to_path_buf()
}

/// Runs a test body in a scratch directory of its own. Every QEMU and
/// daemon of the body writes its command, console and stderr there, so a
/// failure (`Err(why)`) is reported with all of them, after the body's
/// processes have been killed; the directory is then kept.
pub fn run(tag: &str, body: impl FnOnce(&Dir) -> Result<(), String>) {
    let dir = Dir::new(tag);
    if let Err(why) = body(&dir) {
        panic!("{why}\n{}", dir.report());
    }
}

pub struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("vhost-user-qemu")
            .join(format!("{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Dir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Each command line, the end of each console and stderr, by name.
    fn report(&self) -> String {
        let mut names: Vec<PathBuf> = fs::read_dir(&self.0)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        let mut out = format!("--- in {}", self.0.display());
        for p in names {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let (what, lines) = match p.extension().and_then(|e| e.to_str()) {
                Some("cmd") => ("command", 5),
                Some("serial") => ("console, last 40 lines", 40),
                Some("stderr") => ("stderr, last 30 lines", 30),
                _ => continue,
            };
            out += &format!("\n--- {name} ({what}):\n{}", tail(&read_lossy(&p), lines));
        }
        out
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A value of the lab's work/lab.env (`KEY='value'` lines that
/// tests/lab/setup writes).
fn lab_env(key: &str) -> String {
    let path = repo().join("tests/lab/work/lab.env");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run tests/lab/setup (bash scripts/setup.sh does): the guest is the lab's kernel and busybox",
            path.display()
        )
    });
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
}

struct GuestImage {
    kernel: PathBuf,
    initrd: PathBuf,
}

/// The guest's initramfs and the kernel to boot it with, built once per
/// test binary by tests/lab/images.py, which prints both paths.
fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    let built = IMAGE.get_or_init(|| {
        let initrd = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vhost-user-guest.cpio");
        let script = repo().join("tests/lab/images.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg("--vhost-user")
            .arg(&initrd)
            .output()
            .map_err(|e| format!("cannot run python3 {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{} --vhost-user failed ({}): {stdout}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map(PathBuf::from)
                .ok_or_else(|| format!("images.py printed no `{name} PATH`: {stdout}"))
        };
        Ok(GuestImage {
            kernel: field("kernel")?,
            initrd: field("initrd")?,
        })
    });
    built.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

/// The host's TSC rate, which TCG's rdtsc hands the guest too. The guest
/// kernel is told it because its own calibration against the PIT fails now
/// and then under TCG on a loaded host, and the boot then hangs for good
/// (tests/lab/README.md, `tsc_early_khz`).
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1))?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Spawns `cmd` with its stdout and stderr in `NAME.stderr` and its command
/// line in `NAME.cmd`. The child gets SIGKILL when the spawning thread
/// ends (PR_SET_PDEATHSIG): the test's own thread, also when it panics.
fn spawn(dir: &Dir, name: &str, mut cmd: Command) -> Result<(Child, PathBuf), String> {
    let stderr = dir.path(&format!("{name}.stderr"));
    let _ = fs::write(dir.path(&format!("{name}.cmd")), format!("{cmd:?}\n"));
    let out = fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}: {cmd:?}"))?;
    Ok((child, stderr))
}

#[derive(Clone, Copy, Debug)]
pub enum Qemu {
    /// `qemu-system-x86_64` on the PATH: 10.x from bookworm-backports.
    V10,
    /// The lab's 7.2 (Debian 12's own), unpacked in tests/lab/work/sysroot.
    Lab72,
}

impl Qemu {
    fn command(self) -> Result<Command, String> {
        let mut cmd = match self {
            Qemu::V10 => {
                check_qemu_10()?;
                Command::new("qemu-system-x86_64")
            }
            Qemu::Lab72 => {
                let sysroot = PathBuf::from(lab_env("LAB_SYSROOT"));
                let mut cmd = Command::new(sysroot.join("usr/bin/qemu-system-x86_64"));
                cmd.env("LD_LIBRARY_PATH", lab_env("LAB_LD_LIBRARY_PATH"))
                    .arg("-L")
                    .arg(sysroot.join("usr/share/qemu"));
                cmd
            }
        };
        // Debian's QEMU 10 gives microvm SeaBIOS, which drives the
        // vhost-user disk itself (BIOS disk services) with its rings in
        // BIOS memory that is not part of the RAM shared with the daemon.
        // A bzImage's setup code probes EDD through it, and then
        // qemu-storage-daemon stops ("vu_panic: virtio: invalid address
        // for buffers") and the guest never prints a line. qboot (7.2's
        // microvm firmware) has no disk services.
        cmd.args(["-bios", "qboot.rom"]);
        Ok(cmd)
    }
}

fn check_qemu_10() -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let out = Command::new("qemu-system-x86_64")
                .arg("--version")
                .output()
                .map_err(|e| format!("cannot run qemu-system-x86_64 ({e}); bash scripts/setup.sh installs QEMU 10"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let major = text
                .split_whitespace()
                .skip_while(|w| *w != "version")
                .nth(1)
                .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
            match major {
                Some(m) if m >= 10 => Ok(()),
                _ => Err(format!(
                    "qemu-system-x86_64 is not QEMU 10 or later ({}); bash scripts/setup.sh installs it from bookworm-backports",
                    text.lines().next().unwrap_or("")
                )),
            }
        })
        .clone()
}

/// Where guest RAM comes from.
#[derive(Clone, Copy, Debug)]
pub enum Ram {
    /// memfd, share=on: what vhost-user needs.
    SharedMemfd,
    /// QEMU's default (`-m` alone): anonymous private memory, no fd to
    /// give a daemon at all.
    Anonymous,
    /// A file mapped share=off (MAP_PRIVATE) and opened read-write: QEMU
    /// 7.2's template clone. A daemon that maps the fd sees the file's
    /// pages, not the guest's private copies.
    PrivateFile,
    /// share=off,readonly=on,rom=off (QEMU 10 only): the template clone of
    /// QEMU 10 and of this project. The fd the daemon gets is read-only.
    PrivateReadonlyFile,
}

impl Ram {
    fn args(self, dir: &Dir, name: &str) -> Result<Vec<String>, String> {
        let size = format!("size={RAM_MIB}M");
        let file = dir.path(&format!("{name}.ram"));
        let object = match self {
            Ram::Anonymous => return Ok(vec![]),
            Ram::SharedMemfd => format!("memory-backend-memfd,id=mem,{size},share=on"),
            Ram::PrivateFile => format!(
                "memory-backend-file,id=mem,{size},mem-path={},share=off",
                file.display()
            ),
            Ram::PrivateReadonlyFile => {
                // QEMU opens it read-only, so it cannot create it.
                fs::File::create(&file)
                    .and_then(|f| f.set_len((RAM_MIB * MIB) as u64))
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                format!(
                    "memory-backend-file,id=mem,{size},mem-path={},share=off,readonly=on,rom=off",
                    file.display()
                )
            }
        };
        Ok(vec![
            "-object".into(),
            object,
            "-machine".into(),
            "memory-backend=mem".into(),
        ])
    }
}

/// A daemon serving one socket; killed on drop.
pub struct Daemon {
    name: String,
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `cmd` as `name` and waits until it listens on `sock`.
    pub fn start(dir: &Dir, name: &str, cmd: Command, sock: &Path) -> Result<Daemon, String> {
        let mut cmd = cmd;
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let (child, stderr) = spawn(dir, name, cmd)?;
        let mut d = Daemon {
            name: name.into(),
            child,
            stderr,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while !listening(sock) {
            d.running()?;
            if Instant::now() > end {
                return Err(format!(
                    "{name} does not listen on {} after 10 s",
                    sock.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr)
    }

    pub fn running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited ({st})", self.name)),
            Err(e) => Err(format!("waiting for {}: {e}", self.name)),
        }
    }

    /// SIGTERM, then SIGKILL after 10 s: the image is checked after this.
    pub fn stop(&mut self) {
        // SAFETY: a signal to our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a unix socket listens at `path`, from the calling thread's
/// network namespace's table (flag __SO_ACCEPTCON). Connecting to find out
/// would make the daemon serve a front end that is not QEMU.
fn listening(path: &Path) -> bool {
    let Ok(table) = fs::read_to_string("/proc/thread-self/net/unix") else {
        return false;
    };
    let path = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8
            && f[7] == path
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}

/// The vhost-user-blk back end under test.
#[derive(Clone, Copy, Debug)]
pub enum BlkBackend {
    QemuStorageDaemon,
    Ours,
}

impl BlkBackend {
    fn command(self, sock: &Path, image: &Path) -> Result<Command, String> {
        match self {
            BlkBackend::QemuStorageDaemon => {
                let mut cmd = Command::new("qemu-storage-daemon");
                cmd.arg("--blockdev")
                    .arg(format!(
                        "driver=file,node-name=disk,filename={}",
                        image.display()
                    ))
                    .arg("--export")
                    .arg(format!(
                        "type=vhost-user-blk,id=vu0,node-name=disk,writable=on,addr.type=unix,addr.path={}",
                        sock.display()
                    ));
                Ok(cmd)
            }
            BlkBackend::Ours => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"));
                cmd.arg("--socket").arg(sock).arg("--image").arg(image);
                Ok(cmd)
            }
        }
    }

    /// A zeroed image of IMAGE_MIB, and the daemon serving it on a socket.
    pub fn start(self, dir: &Dir) -> Result<(Daemon, PathBuf, PathBuf), String> {
        let (sock, image) = (dir.path("blk.sock"), dir.path("disk.img"));
        fs::File::create(&image)
            .and_then(|f| f.set_len((IMAGE_MIB * MIB) as u64))
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let name = match self {
            BlkBackend::QemuStorageDaemon => "qemu-storage-daemon",
            BlkBackend::Ours => "vhost-user-blk",
        };
        let d = Daemon::start(dir, name, self.command(&sock, &image)?, &sock)?;
        Ok((d, sock, image))
    }
}

/// QEMU's arguments for a vhost-user-blk device on `sock`.
pub fn blk_device(sock: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=blk0,path={}", sock.display()),
        // The virtio-mmio variant: microvm has no PCI.
        "-device".into(),
        "vhost-user-blk,chardev=blk0".into(),
    ]
}

/// QEMU's arguments for a vhost-user net device on `sock`.
pub fn net_device(sock: &Path, mac: &str) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=net0,path={}", sock.display()),
        "-netdev".into(),
        "vhost-user,id=n0,chardev=net0".into(),
        "-device".into(),
        format!("virtio-net-device,netdev=n0,mac={mac}"),
    ]
}

/// A QEMU running the guest; killed on drop.
pub struct Vm {
    name: String,
    child: Child,
    serial: PathBuf,
    stderr: PathBuf,
    pub started: Instant,
    exit: Option<ExitStatus>,
}

impl Vm {
    /// Boots the guest with `guest` (tests/vhost-user/guest-init's
    /// `vu.*` arguments) on its kernel command line.
    pub fn start(
        dir: &Dir,
        name: &str,
        qemu: Qemu,
        ram: Ram,
        devices: &[String],
        guest: &str,
    ) -> Result<Vm, String> {
        let image = guest_image();
        let serial = dir.path(&format!("{name}.serial"));
        let tsc = host_tsc_khz().map_or(String::new(), |k| format!(" tsc_early_khz={k}"));
        let mut cmd = qemu.command()?;
        cmd.args(["-accel", "tcg", "-M", "microvm,acpi=on,rtc=on"])
            .args(["-smp", "1", "-m", &format!("{RAM_MIB}M")])
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            // libvhost-user refuses legacy (version 1) virtio-mmio
            // devices, QEMU's default on microvm.
            .args(["-global", "virtio-mmio.force-legacy=false"])
            .args(ram.args(dir, name)?)
            .args(devices)
            // The ELF vmlinux, booted through PVH: a bzImage spends about
            // 6 s of TCG time decompressing itself.
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 quiet panic=-1{tsc} {guest}"))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        let (child, stderr) = spawn(dir, name, cmd)?;
        Ok(Vm {
            name: name.into(),
            child,
            serial,
            stderr,
            started: Instant::now(),
            exit: None,
        })
    }

    /// The guest's console lines that start with `tag`.
    pub fn lines(&self, tag: &str) -> Vec<String> {
        read_lossy(&self.serial)
            .lines()
            .map(|l| l.trim_end().to_string())
            .filter(|l| l.starts_with(tag))
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The value of `key=` in the first console line starting with `tag`.
    pub fn value(&self, tag: &str, key: &str) -> Option<String> {
        let line = self.lines(tag).into_iter().next()?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    }

    /// That value, which must be `want`.
    pub fn expect_value(&self, tag: &str, key: &str, want: &str) -> Result<(), String> {
        match self.value(tag, key) {
            Some(v) if v == want => Ok(()),
            got => Err(format!(
                "{}: the guest's {tag} {key} is {got:?}, not {want}",
                self.name
            )),
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for a console line starting with `tag`; fails when QEMU exits
    /// first or after `secs`.
    pub fn wait_line(&mut self, tag: &str, secs: u64) -> Result<String, String> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            // Read before looking at the exit: the line may come with it.
            let exited = self.exited();
            if let Some(l) = self.lines(tag).into_iter().next() {
                return Ok(l);
            }
            if let Some(st) = exited {
                return Err(format!(
                    "{}: QEMU exited ({st}) without the guest printing {tag}",
                    self.name
                ));
            }
            if Instant::now() >= end {
                return Err(format!(
                    "{}: no {tag} from the guest after {secs} s",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the guest's VU-DONE and QEMU's successful exit.
    pub fn finish(&mut self) -> Result<(), String> {
        self.wait_line("VU-DONE", BOOT_SECS)?;
        let end = Instant::now() + Duration::from_secs(EXIT_SECS);
        loop {
            match self.exited() {
                Some(st) if st.success() => return Ok(()),
                Some(st) => {
                    return Err(format!(
                        "{}: QEMU exited with {st} after the guest's VU-DONE",
                        self.name
                    ))
                }
                None if Instant::now() >= end => {
                    return Err(format!(
                        "{}: QEMU still runs {EXIT_SECS} s after the guest's VU-DONE",
                        self.name
                    ))
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGKILL, as a crash or an orchestrator would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
        }
    }
}

/// What the guest's `pattern SEED MIB` writes: sector I is "vhost-user
/// test seed=SEED sector=I", padded with spaces to 511 bytes, and "\n".
pub fn pattern(seed: &str, mib: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(mib * MIB);
    for i in 0..mib * 2048 {
        let text = format!("vhost-user test seed={seed} sector={i}");
        out.extend_from_slice(format!("{text:<511}\n").as_bytes());
    }
    out
}

/// sha256sum's hex digest (coreutils), as the guest's busybox prints it.
pub fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(data)
        .expect("sha256sum reads its input");
    let out = child.wait_with_output().expect("sha256sum ends");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Checks the image against what the guest was to write: `expect` at
/// `at_mib`, and zeroes everywhere else but in `skip` (bytes the test does
/// not predict).
pub fn check_image(
    image: &Path,
    at_mib: usize,
    expect: &[u8],
    skip: Option<std::ops::Range<usize>>,
) -> Result<(), String> {
    let data = fs::read(image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    if data.len() != IMAGE_MIB * MIB {
        return Err(format!(
            "the image is {} bytes, not {}",
            data.len(),
            IMAGE_MIB * MIB
        ));
    }
    let written = at_mib * MIB..at_mib * MIB + expect.len();
    let got = &data[written.clone()];
    if let Some(sector) = got
        .chunks(512)
        .zip(expect.chunks(512))
        .position(|(g, e)| g != e)
    {
        let off = written.start + sector * 512;
        return Err(format!(
            "the image differs from the pattern at byte {off} (the pattern's sector {sector}): it holds {:?}",
            String::from_utf8_lossy(&data[off..off + 64])
        ));
    }
    let stray = data.iter().enumerate().position(|(i, b)| {
        *b != 0 && !written.contains(&i) && !skip.as_ref().is_some_and(|s| s.contains(&i))
    });
    match stray {
        Some(i) => Err(format!(
            "the image has data outside the written range, at byte {i}"
        )),
        None => Ok(()),
    }
}
