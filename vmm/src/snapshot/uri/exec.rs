//! Running an `exec:` command: `/bin/sh -c CMD` with one end piped, its
//! standard error logged and its last lines kept for the error message.

use std::io::{ErrorKind, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use log::{debug, warn};

use super::UriError;

/// Bytes of standard error kept for an error message.
const STDERR_TAIL: usize = 1024;
/// How long to wait, once the command has exited, for its standard error to
/// close (a background process it started may keep it open).
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// Which end of the command is piped to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// The VMM writes the command's standard input.
    ToCommand,
    /// The VMM reads the command's standard output.
    FromCommand,
}

/// A running `exec:` command. Dropped before [`Exec::wait`], its process
/// group is killed and the shell reaped.
pub(super) struct Exec {
    cmd: String,
    child: Option<Child>,
    tail: Arc<Mutex<Vec<u8>>>,
    stderr_done: Receiver<()>,
}

impl Exec {
    /// Starts `/bin/sh -c cmd` with the pipe for `dir`; the other end is `/dev/null`.
    pub(super) fn spawn(
        cmd: &str,
        dir: Direction,
    ) -> Result<(Exec, Option<ChildStdin>, Option<ChildStdout>), UriError> {
        let (stdin, stdout) = match dir {
            Direction::ToCommand => (Stdio::piped(), Stdio::null()),
            Direction::FromCommand => (Stdio::null(), Stdio::piped()),
        };
        // Its own process group, so that an abandoned stream stops the
        // whole pipeline the command may have started, not just the shell.
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .process_group(0)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| UriError::Spawn {
                cmd: cmd.to_string(),
                source,
            })?;
        debug!("snapshot: started `{cmd}` (exec:), pid {}", child.id());
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, stderr_done) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&tail);
            let owned_cmd = cmd.to_string();
            let drain = thread::Builder::new()
                .name("exec-stderr".into())
                .spawn(move || {
                    drain_stderr(stderr, &owned_cmd, &tail);
                    let _ = done_tx.send(());
                });
            if let Err(e) = drain {
                // The pipe is closed with the closure: the command's writes
                // to standard error fail, the stream itself is unaffected.
                warn!("snapshot: cannot read the standard error of `{cmd}` (exec:): {e}");
            }
        }
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let exec = Exec {
            cmd: cmd.to_string(),
            child: Some(child),
            tail,
            stderr_done,
        };
        Ok((exec, stdin, stdout))
    }

    pub(super) fn cmd(&self) -> &str {
        &self.cmd
    }

    /// The exit status, if the command has already exited.
    pub(super) fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The end of what the command has written to standard error so far,
    /// as "; its standard error ends with: ...", or "" if nothing.
    pub(super) fn stderr_note(&self) -> String {
        let tail = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        let text = String::from_utf8_lossy(&tail);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!(
                "; its standard error ends with: {}",
                text.replace('\n', " | ")
            )
        }
    }

    /// Waits for the command; a non-zero status is an error quoting the
    /// end of its standard error. Close the pipe before calling this.
    pub(super) fn wait(mut self) -> Result<(), UriError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait().map_err(|source| UriError::Wait {
            cmd: self.cmd.clone(),
            source,
        })?;
        let _ = self.stderr_done.recv_timeout(STDERR_GRACE);
        debug!("snapshot: `{}` (exec:) exited: {status}", self.cmd);
        if status.success() {
            Ok(())
        } else {
            Err(UriError::Failed {
                cmd: self.cmd.clone(),
                status,
                stderr: self.stderr_note(),
            })
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            warn!(
                "snapshot: stopping `{}` (exec:): the stream was abandoned",
                self.cmd
            );
            // SAFETY: kill(2) with the group of a child we have not reaped
            // yet, so the id cannot have been reused.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Logs what the command writes to standard error and keeps the last
/// `STDERR_TAIL` bytes of it in `tail`, until the pipe closes.
fn drain_stderr(mut stderr: ChildStderr, cmd: &str, tail: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stderr.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for line in String::from_utf8_lossy(&buf[..n]).lines() {
            if !line.trim().is_empty() {
                warn!("`{cmd}` (exec:): {line}");
            }
        }
        if let Ok(mut t) = tail.lock() {
            t.extend_from_slice(&buf[..n]);
            let excess = t.len().saturating_sub(STDERR_TAIL);
            t.drain(..excess);
        }
    }
}
