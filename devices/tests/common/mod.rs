//! What the daemon tests share: a scratch directory and a daemon process
//! whose log lines the test can wait for.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
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
