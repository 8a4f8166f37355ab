//! What the integration tests share: a scratch directory, tiny hand-made
//! kernels for this host's KVM, and a small QMP client.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-boot-{tag}-{}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// 64-bit code: a counter in guest RAM (at 3 MiB), incremented and printed
/// as `C=<16 hex digits>` on COM1 every 2^26 TSC ticks, forever. After a
/// restore the sequence must go on where it stopped: RAM, registers (the
/// digit loop's state) and COM1 all have to come back.
///
/// ```text
///     mov dx, 0x3f8
///     mov qword ptr [0x300000], 0
/// next:
///     inc qword ptr [0x300000]
///     mov rbx, qword ptr [0x300000]
///     out 'C', out '='
///     16 times: rol rbx, 4; print the low nibble in hex
///     out '\n'
///     rdtsc-based wait of 0x4000000 ticks (pause in the loop)
///     mov dx, 0x3f8
///     jmp next
/// ```
pub const COUNTER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x48, 0xc7, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x48, 0xff, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00, 0x48, 0x8b, 0x1c, 0x25, 0x00, 0x00, 0x30, 0x00,
    0xb0, 0x43, 0xee, 0xb0, 0x3d, 0xee, 0x48, 0xc7, 0xc1, 0x10, 0x00, 0x00, 0x00, 0x48, 0xc1, 0xc3,
    0x04, 0x88, 0xd8, 0x24, 0x0f, 0x04, 0x30, 0x3c, 0x39, 0x76, 0x02, 0x04, 0x07, 0xee, 0x48, 0xff,
    0xc9, 0x75, 0xea, 0xb0, 0x0a, 0xee, 0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48,
    0x89, 0xc6, 0x48, 0x81, 0xc6, 0x00, 0x00, 0x00, 0x04, 0xf3, 0x90, 0x0f, 0x31, 0x48, 0xc1, 0xe2,
    0x20, 0x48, 0x09, 0xd0, 0x48, 0x39, 0xf0, 0x72, 0xf0, 0x66, 0xba, 0xf8, 0x03, 0xeb, 0xa1,
];

/// Prints "H\n", then halts with interrupts off, forever: the vCPU sleeps
/// inside KVM_RUN and only a kick brings it out.
pub const HALT_FOREVER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'H', 0xee, //       out 'H'
    0xb0, 0x0a, 0xee, //       out '\n'
    0xfa, //                   cli
    0xf4, //                   hlt
    0xeb, 0xfd, //             jmp hlt
];

/// 64-bit code that writes every page of a 64 MiB guest from 4 MiB up
/// (the pass number into the page's first 8 bytes), then prints
/// `P=<pass, 16 hex digits>` on COM1, waits 2^26 TSC ticks, and starts
/// the next pass, forever. A template clone running it writes all of its
/// RAM above 4 MiB once per pass.
///
/// ```text
///     mov dx, 0x3f8
///     xor r8, r8
/// pass:
///     inc r8
///     mov rdi, 0x400000
/// fill:
///     mov [rdi], r8 ; add rdi, 0x1000 ; cmp rdi, 0x4000000 ; jb fill
///     out 'P', out '='
///     16 times: rol rbx(=r8), 4; print the low nibble in hex
///     out '\n'
///     rdtsc-based wait of 0x4000000 ticks (pause in the loop)
///     mov dx, 0x3f8
///     jmp pass
/// ```
pub const SCRIBBLER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x4d, 0x31, 0xc0, 0x49, 0xff, 0xc0, 0x48, 0xc7, 0xc7, 0x00, 0x00, 0x40,
    0x00, 0x4c, 0x89, 0x07, 0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, 0x48, 0x81, 0xff, 0x00, 0x00,
    0x00, 0x04, 0x72, 0xed, 0xb0, 0x50, 0xee, 0xb0, 0x3d, 0xee, 0x4c, 0x89, 0xc3, 0x48, 0xc7, 0xc1,
    0x10, 0x00, 0x00, 0x00, 0x48, 0xc1, 0xc3, 0x04, 0x88, 0xd8, 0x24, 0x0f, 0x04, 0x30, 0x3c, 0x39,
    0x76, 0x02, 0x04, 0x07, 0xee, 0x48, 0xff, 0xc9, 0x75, 0xea, 0xb0, 0x0a, 0xee, 0x0f, 0x31, 0x48,
    0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x89, 0xc6, 0x48, 0x81, 0xc6, 0x00, 0x00, 0x00, 0x04,
    0xf3, 0x90, 0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x39, 0xf0, 0x72, 0xf0,
    0x66, 0xba, 0xf8, 0x03, 0xeb, 0x91,
];

/// Writes S5 to the ACPI sleep control register: the guest powers off.
pub const POWER_OFF: &[u8] = &[
    0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
    0xb0, 0x34, //             mov al, (5 << 2) | SLP_EN
    0xee, //                   out dx, al
    0xf4, //                   hlt
    0xeb, 0xfd, //             jmp hlt
];

/// The values of `TAG=<16 hex digits>` lines in a serial log, in order
/// (a partial last line is left out).
pub fn tagged_values(log: &str, tag: &str) -> Vec<u64> {
    log.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix(tag)?.strip_prefix('='))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .collect()
}

/// Watches the VM Generation ID: polls the 16 bytes at 0xF0000 (the
/// layout's VMGENID_ADDR) and, at the start and whenever they differ from
/// the last value it printed, reads the GED's event register (port 0x603,
/// which clears it) and prints `G=<the 16 bytes in memory order, 32 hex
/// digits>\n` then `E=<the GED events, 2 hex digits>\n` on COM1; pauses
/// 2^23 TSC ticks between polls. The last value lives in r8/r9 (r10: set
/// once something was printed), so it comes back with the registers on a
/// restore. Assembled with GNU as (`as --64`, Intel syntax):
///
/// ```text
/// .macro hexnib            # al's low nibble as a hex digit on port dx
///     and al, 0x0f; add al, 0x30; cmp al, 0x39; jbe 1f; add al, 7
/// 1:  out dx, al
/// .endm
/// .macro hexbyte           # bl as two hex digits
///     mov al, bl; shr al, 4; hexnib; mov al, bl; hexnib
/// .endm
///     xor r10d, r10d
/// poll:
///     mov rax, [0xf0000]
///     mov rbx, [0xf0008]
///     test r10, r10
///     jz print
///     cmp rax, r8
///     jne print
///     cmp rbx, r9
///     je wait
/// print:
///     mov r8, rax; mov r9, rbx; mov r10d, 1
///     mov dx, 0x603; in al, dx; mov r11b, al
///     mov dx, 0x3f8; out 'G'; out '='
///     mov ecx, 8
/// 2:  mov bl, r8b; hexbyte; ror r8, 8; dec ecx; jnz 2b
///     mov ecx, 8
/// 3:  mov bl, r9b; hexbyte; ror r9, 8; dec ecx; jnz 3b
///     out '\n'; out 'E'; out '='
///     mov bl, r11b; hexbyte
///     out '\n'
/// wait:
///     rdtsc; shl rdx, 32; or rax, rdx; lea rsi, [rax + 0x800000]
/// 4:  pause; rdtsc; shl rdx, 32; or rax, rdx; cmp rax, rsi; jb 4b
///     jmp poll
/// ```
pub const GENID_WATCH: &[u8] = &[
    0x45, 0x31, 0xd2, 0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x0f, 0x00, 0x48, 0x8b, 0x1c, 0x25, 0x08,
    0x00, 0x0f, 0x00, 0x4d, 0x85, 0xd2, 0x74, 0x0e, 0x4c, 0x39, 0xc0, 0x75, 0x09, 0x4c, 0x39, 0xcb,
    0x0f, 0x84, 0xa4, 0x00, 0x00, 0x00, 0x49, 0x89, 0xc0, 0x49, 0x89, 0xd9, 0x41, 0xba, 0x01, 0x00,
    0x00, 0x00, 0x66, 0xba, 0x03, 0x06, 0xec, 0x41, 0x88, 0xc3, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x47,
    0xee, 0xb0, 0x3d, 0xee, 0xb9, 0x08, 0x00, 0x00, 0x00, 0x44, 0x88, 0xc3, 0x88, 0xd8, 0xc0, 0xe8,
    0x04, 0x24, 0x0f, 0x04, 0x30, 0x3c, 0x39, 0x76, 0x02, 0x04, 0x07, 0xee, 0x88, 0xd8, 0x24, 0x0f,
    0x04, 0x30, 0x3c, 0x39, 0x76, 0x02, 0x04, 0x07, 0xee, 0x49, 0xc1, 0xc8, 0x08, 0xff, 0xc9, 0x75,
    0xd8, 0xb9, 0x08, 0x00, 0x00, 0x00, 0x44, 0x88, 0xcb, 0x88, 0xd8, 0xc0, 0xe8, 0x04, 0x24, 0x0f,
    0x04, 0x30, 0x3c, 0x39, 0x76, 0x02, 0x04, 0x07, 0xee, 0x88, 0xd8, 0x24, 0x0f, 0x04, 0x30, 0x3c,
    0x39, 0x76, 0x02, 0x04, 0x07, 0xee, 0x49, 0xc1, 0xc9, 0x08, 0xff, 0xc9, 0x75, 0xd8, 0xb0, 0x0a,
    0xee, 0xb0, 0x45, 0xee, 0xb0, 0x3d, 0xee, 0x44, 0x88, 0xdb, 0x88, 0xd8, 0xc0, 0xe8, 0x04, 0x24,
    0x0f, 0x04, 0x30, 0x3c, 0x39, 0x76, 0x02, 0x04, 0x07, 0xee, 0x88, 0xd8, 0x24, 0x0f, 0x04, 0x30,
    0x3c, 0x39, 0x76, 0x02, 0x04, 0x07, 0xee, 0xb0, 0x0a, 0xee, 0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20,
    0x48, 0x09, 0xd0, 0x48, 0x8d, 0xb0, 0x00, 0x00, 0x80, 0x00, 0xf3, 0x90, 0x0f, 0x31, 0x48, 0xc1,
    0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x39, 0xf0, 0x72, 0xf0, 0xe9, 0x14, 0xff, 0xff, 0xff,
];

/// The counter values a serial log holds, in order (a partial last line
/// is left out; one cut by a save is completed by the restored guest).
pub fn counter_values(log: &str) -> Vec<u64> {
    log.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix("C="))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .collect()
}

/// Waits until `f` holds, polling; panics with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A QMP connection past capabilities negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects, retrying while the VMM is still creating the socket.
    pub fn connect(path: &Path) -> Qmp {
        let mut stream = None;
        wait_until(20, "the QMP socket", || {
            stream = UnixStream::connect(path).ok();
            stream.is_some()
        });
        let s = stream.unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: Vec::new(),
        };
        let greeting = q.read();
        assert!(
            greeting["QMP"]["version"]["qemu"]["major"].is_u64(),
            "{greeting}"
        );
        let r = q.execute("qmp_capabilities", json!({}));
        assert_eq!(r, json!({"return": {}}));
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reading QMP");
        assert!(n > 0, "the QMP socket closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"))
    }

    /// Sends a command; returns the whole reply, keeping events aside.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Value {
        let mut m = json!({ "execute": cmd });
        if args != json!({}) {
            m["arguments"] = args;
        }
        self.writer.write_all(m.to_string().as_bytes()).unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    /// The command's `return`; panics on an error reply.
    pub fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.execute(cmd, args);
        r.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{cmd} failed: {r}"))
    }

    /// Polls query-migrate until it leaves setup/active; returns its reply.
    pub fn wait_migration(&mut self) -> Value {
        let mut last = Value::Null;
        wait_until(30, "the migration to finish", || {
            last = self.ok("query-migrate", json!({}));
            !matches!(last["status"].as_str(), Some("setup" | "active"))
        });
        last
    }

    /// Saves the VM with `migrate` to `uri` and waits until it completed.
    pub fn migrate(&mut self, uri: &str) {
        self.ok("migrate", json!({ "uri": uri }));
        let done = self.wait_migration();
        assert_eq!(done["status"], "completed", "migrate to {uri}: {done}");
    }

    /// Waits for an event named `name` (already received or coming).
    pub fn wait_event(&mut self, name: &str) -> Value {
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i);
            }
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }
}

/// The serial log as text ("" while it does not exist).
pub fn read_log(p: &str) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// A bzImage of boot protocol 2.15: one setup sector, then the "protected
/// mode kernel", whose first 0x200 bytes are the 32-bit entry (unused) and
/// then the 64-bit entry.
pub fn bzimage(entry64: &[u8]) -> Vec<u8> {
    let mut k = vec![0u8; 1024 + 0x200 + entry64.len()];
    k[0x1f1] = 1; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k[0x211] = 0x01; // loadflags: LOADED_HIGH
    k[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    k[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    k[0x236..0x238].copy_from_slice(&0x1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    k[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    k[1024 + 0x200..].copy_from_slice(entry64);
    k
}

/// The binary under test.
pub const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// A running `vmm` with its stderr piped, killed if the test ends first.
pub struct Vmm(Option<std::process::Child>);

impl Vmm {
    /// `BIN ARGS...` (BIN: the binary under test or a copy of it).
    pub fn spawn_bin<S: AsRef<std::ffi::OsStr>>(bin: &str, args: &[S]) -> Vmm {
        Vmm(Some(
            std::process::Command::new(bin)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("vmm starts"),
        ))
    }

    /// `vmm ARGS...`
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vmm {
        Self::spawn_bin(VMM, args)
    }

    /// `BIN run ARGS...`
    pub fn start_bin<S: AsRef<std::ffi::OsStr>>(bin: &str, args: &[S]) -> Vmm {
        let mut all: Vec<&std::ffi::OsStr> = vec!["run".as_ref()];
        all.extend(args.iter().map(AsRef::as_ref));
        Self::spawn_bin(bin, &all)
    }

    /// `vmm run ARGS...`
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vmm {
        Self::start_bin(VMM, args)
    }

    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the process is still held")
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("the process is still held").id()
    }

    /// Waits for the process to end; its status and stderr.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let out = self
            .0
            .take()
            .expect("the process is still held")
            .wait_with_output()
            .expect("vmm exits");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// As `finish`, but kills the process after `limit`; its status is
    /// then None.
    pub fn finish_within(mut self, limit: Duration) -> (Option<i32>, String) {
        let end = Instant::now() + limit;
        let child = self.child();
        let mut status = None;
        while Instant::now() < end {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (status.and_then(|s| s.code()), self.take_stderr())
    }

    /// Kills it (SIGKILL); its stderr.
    pub fn kill_and_stderr(mut self) -> String {
        let child = self.child();
        let _ = child.kill();
        let _ = child.wait();
        self.take_stderr()
    }

    fn take_stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child().stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `BIN run ARGS...` to its end, stdin empty.
pub fn run_output(bin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin)
        .arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("vmm runs")
}

/// Every value once, in order, from 1: nothing lost, nothing repeated.
pub fn assert_contiguous(values: &[u64], what: &str) {
    assert!(!values.is_empty(), "{what}: no counter output");
    for (i, v) in values.iter().enumerate() {
        assert_eq!(
            *v,
            i as u64 + 1,
            "{what}: value {i} is {v:#x}; all: {values:x?}"
        );
    }
}

/// Boots the counter guest with `--memory MEMORY`, QMP at `q` and COM1
/// into `serial` (plus `extra` options); returns once it printed `lines`
/// lines.
pub fn boot_counter(
    dir: &Dir,
    q: &str,
    serial: &str,
    memory: &str,
    extra: &[&str],
    lines: usize,
) -> Vmm {
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(COUNTER)).unwrap();
    let serial_arg = format!("--serial=file={serial}");
    let qmp_arg = format!("--qmp=unix:{q}");
    let mut args = vec![
        "--kernel",
        &kernel,
        "--memory",
        memory,
        &serial_arg,
        &qmp_arg,
    ];
    args.extend_from_slice(extra);
    let vmm = Vmm::start(&args);
    wait_until(20, "the counter guest's output", || {
        counter_values(&read_log(serial)).len() >= lines
    });
    vmm
}
