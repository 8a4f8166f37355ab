//! The console on stdin/stdout (`--serial stdio`): host input reaches the
//! guest whole however fast it comes.

use std::fs;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{bzimage, Dir, VMM};

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
