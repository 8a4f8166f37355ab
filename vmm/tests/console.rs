//! The console on stdin/stdout (`--serial stdio`): host input reaches the
//! guest whole however fast it comes, and a terminal gets its settings
//! back however vmm ends.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{bzimage, wait_until, Dir, VMM};

/// 64-bit code: echoes every byte COM1 receives (polling the line status
/// register) until it receives EOT (0x04), then powers off.
///
/// ```text
/// start:  mov dx, 0x3fd
/// poll:   in al, dx ; test al, 1 ; jz poll        ; data ready?
///         mov dx, 0x3f8 ; in al, dx               ; the byte
///         cmp al, 4 ; je off
///         out dx, al ; jmp start                  ; echo it
/// off:    mov dx, 0x600 ; mov al, 0x34 ; out dx, al ; hlt ; jmp hlt
/// ```
const ECHO_UNTIL_EOT: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0x66, 0xba, 0xf8, 0x03, 0xec, 0x3c, 0x04,
    0x74, 0x03, 0xee, 0xeb, 0xeb, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd,
];

fn kernel(dir: &Dir) -> String {
    let k = dir.path("kernel");
    fs::write(&k, bzimage(ECHO_UNTIL_EOT)).unwrap();
    k
}

fn vmm_command(kernel: &str) -> Command {
    let mut c = Command::new(VMM);
    c.args([
        "run", "--kernel", kernel, "--memory", "size=64M", "--serial", "stdio",
    ]);
    c
}

/// Waits for the child to end within `secs`; its status code and stderr.
fn finish(mut child: Child, secs: u64) -> (Option<i32>, String) {
    let end = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.and_then(|s| s.code()), err)
}

#[test]
fn four_kib_pasted_at_once_all_reach_the_guest_in_order() {
    let dir = Dir::new("paste");
    let k = kernel(&dir);
    let mut child = vmm_command(&k)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm starts");
    let pasted: Vec<u8> = (0..4096)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789 .,:;-\n"[i % 43])
        .collect();
    let mut stdin = child.stdin.take().unwrap();
    // One write, far more than COM1's 64-byte FIFO: all of it waits in
    // the pipe before the guest has read a byte.
    stdin.write_all(&pasted).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let echoed = Arc::new(Mutex::new(Vec::new()));
    let e = echoed.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            e.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let end = Instant::now() + Duration::from_secs(30);
    while echoed.lock().unwrap().len() < pasted.len() && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
    let echoed = echoed.lock().unwrap().clone();
    stdin.write_all(&[0x04]).unwrap();
    let (status, err) = finish(child, 20);
    assert_eq!(
        echoed.len(),
        pasted.len(),
        "the guest echoed {} of {} bytes; vmm stderr:\n{err}",
        echoed.len(),
        pasted.len()
    );
    assert!(echoed == pasted, "the echo differs from the input");
    assert_eq!(status, Some(0), "stderr:\n{err}");
    assert!(!err.contains("dropped"), "stderr:\n{err}");
}

/// A pseudo-terminal: vmm gets the slave as its controlling terminal and
/// stdin; the test types into the master.
struct Pty {
    master: File,
    slave: File,
}

impl Pty {
    fn open() -> Pty {
        // SAFETY: plain libc calls on descriptors this function owns.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
            let path = std::ffi::CStr::from_ptr(name.as_ptr())
                .to_str()
                .unwrap()
                .to_string();
            let master = File::from_raw_fd(m);
            let slave = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&path)
                .unwrap();
            Pty { master, slave }
        }
    }

    fn termios(&self) -> libc::termios {
        // SAFETY: tcgetattr fills the struct on success, checked.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(self.slave.as_raw_fd(), &mut t), 0);
            t
        }
    }
}

/// The settings a program can change (libc's termios has no PartialEq).
fn settings(t: &libc::termios) -> (u32, u32, u32, u32, Vec<u8>) {
    (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_cc.to_vec())
}

/// How the test ends vmm.
enum End {
    /// Ctrl-C typed on the terminal.
    CtrlC,
    /// The guest powers off (it reads EOT from the terminal).
    GuestPowerOff,
    Signal(libc::c_int),
}

/// Starts vmm on a terminal, waits until it has put the terminal in raw
/// mode, ends it as `end` says, and checks that it exited 0 and left the
/// terminal's settings as they were.
fn terminal_restored_after(end: End, tag: &str) {
    let dir = Dir::new(tag);
    let k = kernel(&dir);
    let pty = Pty::open();
    let before = pty.termios();
    assert!(before.c_lflag & libc::ICANON != 0, "a new pty is canonical");
    let mut cmd = vmm_command(&k);
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setsid and ioctl are async-signal-safe; the child gets its
    // own session with the pty (its stdin) as controlling terminal, so
    // Ctrl-C on the pty sends it SIGINT.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("vmm starts");
    wait_until(20, "vmm switching the terminal to raw mode", || {
        pty.termios().c_lflag & libc::ICANON == 0
    });
    let raw = pty.termios();
    assert_eq!(raw.c_lflag & libc::ECHO, 0, "raw mode has no echo");
    assert_ne!(raw.c_lflag & libc::ISIG, 0, "Ctrl-C stays a signal");
    let mut master = &pty.master;
    match end {
        End::CtrlC => master.write_all(&[0x03]).unwrap(),
        End::GuestPowerOff => master.write_all(&[0x04]).unwrap(),
        End::Signal(sig) => {
            // SAFETY: signals the child this test started.
            assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
        }
    }
    let (status, err) = finish(child, 20);
    assert_eq!(status, Some(0), "stderr:\n{err}");
    let after = pty.termios();
    assert!(
        settings(&after) == settings(&before),
        "the terminal's settings after vmm ended differ from before: lflag {:#x} (was {:#x}), iflag {:#x} (was {:#x}); stderr:\n{err}",
        after.c_lflag,
        before.c_lflag,
        after.c_iflag,
        before.c_iflag
    );
}

#[test]
fn ctrl_c_on_a_terminal_console_restores_the_terminal() {
    terminal_restored_after(End::CtrlC, "tty-ctrl-c");
}

#[test]
fn a_guest_power_off_restores_the_terminal() {
    terminal_restored_after(End::GuestPowerOff, "tty-poweroff");
}

#[test]
fn sigterm_restores_the_terminal() {
    terminal_restored_after(End::Signal(libc::SIGTERM), "tty-term");
}

#[test]
fn sighup_ends_the_vm_cleanly_and_restores_the_terminal() {
    terminal_restored_after(End::Signal(libc::SIGHUP), "tty-hup");
}
