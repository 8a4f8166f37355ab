//! Advisory locks on a template's memory file.
//!
//! Creating a template and starting clones from it must not overlap:
//!
//! - a clone must not start from a template that is still being created
//!   (its memory and state are incomplete), so `template create` holds an
//!   exclusive lock until the template is complete;
//! - a template must not be re-created or destroyed while clones run from
//!   it (they map its memory file privately, and its pages are still read
//!   from that file), so every clone holds a shared lock for as long as it
//!   runs, and `template create` and `template destroy` need the exclusive
//!   one.
//!
//! The locks are flock(2) locks: the kernel drops them when the last file
//! descriptor of the lock goes away, including when a process dies, so a
//! crashed VMM never leaves a template locked; and `/proc/locks` tells who
//! holds them, so a refusal can name the processes ([`holders`]). They are
//! advisory: they only keep VMMs that take them apart.
//!
//! The lock belongs to the open file description: a [`FileLock`] conflicts
//! with another [`FileLock`] on the same file even within one process.
//! Holders are found by the file's device and inode; on btrfs subvolumes the
//! device `stat` reports can differ from the one in `/proc/locks`, and then
//! a refusal names no holders.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use log::warn;
use thiserror::Error;

/// Shared (`LOCK_SH`, a clone) or exclusive (`LOCK_EX`, creation and
/// destruction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKind {
    Shared,
    Exclusive,
}

impl LockKind {
    fn with_article(self) -> &'static str {
        match self {
            LockKind::Shared => "a shared",
            LockKind::Exclusive => "an exclusive",
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
        })
    }
}

/// A process holding a flock lock on a file, as `/proc/locks` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    /// In this process's pid namespace; 0 when the holder is not visible
    /// from it (or has exited while the lock lives on in a child that
    /// inherited the file descriptor).
    pub pid: i32,
    pub kind: LockKind,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pid > 0 {
            write!(f, "pid {} ({})", self.pid, self.kind)
        } else {
            write!(f, "a process without a visible pid ({})", self.kind)
        }
    }
}

/// "pid 123 (shared), pid 456 (shared)".
fn describe(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "held by a process not listed in /proc/locks".to_string();
    }
    let list: Vec<String> = holders.iter().map(Holder::to_string).collect();
    format!("held by {}", list.join(", "))
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error("cannot take {} lock on {}: {}", .wanted.with_article(), .path.display(), describe(.holders))]
    Busy {
        path: PathBuf,
        wanted: LockKind,
        holders: Vec<Holder>,
    },
    #[error("cannot take {} lock on {}: {source}", .wanted.with_article(), .path.display())]
    Io {
        path: PathBuf,
        wanted: LockKind,
        #[source]
        source: io::Error,
    },
}

/// A flock lock held on a file; dropping it releases the lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    kind: LockKind,
}

impl FileLock {
    /// Takes the exclusive lock on `path` without waiting; [`LockError::Busy`]
    /// names the holders if any process holds a lock on it.
    pub fn try_exclusive(path: &Path) -> Result<FileLock, LockError> {
        Self::try_lock(path, LockKind::Exclusive)
    }

    /// Takes a shared lock on `path` without waiting; [`LockError::Busy`]
    /// names the holder if a process holds the exclusive lock.
    pub fn try_shared(path: &Path) -> Result<FileLock, LockError> {
        Self::try_lock(path, LockKind::Shared)
    }

    fn try_lock(path: &Path, kind: LockKind) -> Result<FileLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            wanted: kind,
            source,
        };
        // Read-only is enough for flock; File::open sets O_CLOEXEC, so a
        // child process does not inherit (and keep) the lock.
        let file = File::open(path).map_err(io_err)?;
        let op = match kind {
            LockKind::Shared => libc::LOCK_SH,
            LockKind::Exclusive => libc::LOCK_EX,
        };
        loop {
            // SAFETY: flock on an fd we own; no memory involved.
            if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
                return Ok(FileLock { file, kind });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => break,
                _ => return Err(io_err(e)),
            }
        }
        let holders = file
            .metadata()
            .and_then(|m| holders_of(m.dev(), m.ino()))
            .unwrap_or_else(|e| {
                warn!("cannot tell who locks {}: {e}", path.display());
                Vec::new()
            });
        Err(LockError::Busy {
            path: path.to_path_buf(),
            wanted: kind,
            holders,
        })
    }

    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// The locked file, opened read-only.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file would release it too, unless the descriptor was
        // duplicated; LOCK_UN releases it for every duplicate.
        // SAFETY: flock on an fd we own; no memory involved.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The processes holding flock locks on the file at `path` now (waiters
/// not included), each once per kind of lock.
pub fn holders(path: &Path) -> io::Result<Vec<Holder>> {
    let meta = fs::metadata(path)?;
    holders_of(meta.dev(), meta.ino())
}

fn holders_of(dev: u64, ino: u64) -> io::Result<Vec<Holder>> {
    let text = fs::read_to_string("/proc/locks")?;
    Ok(parse_proc_locks(
        &text,
        libc::major(dev) as u64,
        libc::minor(dev) as u64,
        ino,
    ))
}

/// Picks the granted FLOCK locks on (`major`:`minor`, `ino`) out of
/// `/proc/locks`, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 1234 fe:00:10010832 0 EOF` (device numbers in
/// hex, inode in decimal) and, for a waiter, `1: -> FLOCK  ADVISORY ...`.
fn parse_proc_locks(text: &str, major: u64, minor: u64, ino: u64) -> Vec<Holder> {
    let mut found = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace().peekable();
        if !fields.next().is_some_and(|id| id.ends_with(':')) {
            continue;
        }
        // Waiters are indented with "->"; they hold nothing yet.
        if fields.peek() == Some(&"->") {
            continue;
        }
        // POSIX and OFDLCK locks, leases and delegations are not ours.
        if fields.next() != Some("FLOCK") {
            continue;
        }
        let _advisory = fields.next();
        let kind = match fields.next() {
            Some("READ") => LockKind::Shared,
            Some("WRITE") => LockKind::Exclusive,
            _ => continue,
        };
        let Some(Ok(pid)) = fields.next().map(str::parse::<i32>) else {
            continue;
        };
        let Some(file) = fields.next() else {
            continue;
        };
        let mut parts = file.split(':');
        let (Some(maj), Some(min), Some(i), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let same = u64::from_str_radix(maj, 16) == Ok(major)
            && u64::from_str_radix(min, 16) == Ok(minor)
            && i.parse::<u64>() == Ok(ino);
        let holder = Holder { pid, kind };
        if same && !found.contains(&holder) {
            found.push(holder);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use vmm_sys_util::tempdir::TempDir;

    fn lock_file(dir: &TempDir) -> PathBuf {
        let path = dir.as_path().join("memory");
        fs::write(&path, b"template memory").unwrap();
        path
    }

    /// `flock(1)` holding a lock on a file in a child process. The lock
    /// belongs to the flock process itself (`-o` keeps it from the command
    /// it runs), and its pid is the one /proc/locks shows.
    struct Locker {
        child: Child,
        path: PathBuf,
    }

    impl Locker {
        /// `None` (after saying why) where util-linux's flock is missing.
        fn spawn(path: &Path, kind: LockKind) -> Option<Locker> {
            let flag = match kind {
                LockKind::Shared => "-s",
                LockKind::Exclusive => "-x",
            };
            let child = match Command::new("flock")
                .args([flag, "-o"])
                .arg(path)
                .args(["sleep", "30"])
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    println!("skipped: cannot run flock(1) from util-linux: {e}");
                    return None;
                }
            };
            let locker = Locker {
                child,
                path: path.to_path_buf(),
            };
            let want = Holder {
                pid: locker.pid(),
                kind,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !holders(path).unwrap().contains(&want) {
                assert!(
                    Instant::now() < deadline,
                    "flock {flag} never took its lock on {}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(locker)
        }

        fn pid(&self) -> i32 {
            self.child.id() as i32
        }

        /// Kills flock and its sleep; the lock is gone when this returns.
        fn kill(self) {}
    }

    impl Drop for Locker {
        fn drop(&mut self) {
            // The process group this test started (flock and its sleep).
            // SAFETY: plain syscall on a pid we spawned.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
            // Measured on a loaded host: /proc/locks can still list the
            // lock for a moment after its owner was reaped (the kernel
            // finishes closing a killed task's files asynchronously).
            // Wait for it to go, so the next assertion sees the state
            // this Locker promises.
            let deadline = Instant::now() + Duration::from_secs(5);
            while holders(&self.path).is_ok_and(|h| h.iter().any(|h| h.pid == self.pid())) {
                if Instant::now() > deadline || std::thread::panicking() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn sorted(mut v: Vec<Holder>) -> Vec<Holder> {
        v.sort();
        v
    }

    #[test]
    fn shared_holder_refuses_exclusive_but_not_shared() {
        let dir = TempDir::new().unwrap();
        let path = lock_file(&dir);
        let Some(child) = Locker::spawn(&path, LockKind::Shared) else {
            return;
        };
        let pid = child.pid();

        let err = FileLock::try_exclusive(&path).unwrap_err();
        println!("{err}");
        match &err {
            LockError::Busy {
                path: p,
                wanted,
                holders,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*wanted, LockKind::Exclusive);
                assert_eq!(
                    holders,
                    &[Holder {
                        pid,
                        kind: LockKind::Shared
                    }]
                );
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("an exclusive lock"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("held by pid {pid} (shared)")),
            "{msg}"
        );

        let shared = FileLock::try_shared(&path).unwrap();
        assert_eq!(shared.kind(), LockKind::Shared);
        let me = std::process::id() as i32;
        assert_eq!(
            sorted(holders(&path).unwrap()),
            sorted(vec![
                Holder {
                    pid,
                    kind: LockKind::Shared
                },
                Holder {
                    pid: me,
                    kind: LockKind::Shared
                },
            ])
        );
        drop(shared);

        child.kill();
        let ex = FileLock::try_exclusive(&path).unwrap();
        assert_eq!(ex.kind(), LockKind::Exclusive);
        assert_eq!(
            holders(&path).unwrap(),
            vec![Holder {
                pid: me,
                kind: LockKind::Exclusive
            }]
        );
    }

    #[test]
    fn exclusive_holder_refuses_shared() {
        let dir = TempDir::new().unwrap();
        let path = lock_file(&dir);
        let Some(child) = Locker::spawn(&path, LockKind::Exclusive) else {
            return;
        };
        let pid = child.pid();

        let err = FileLock::try_shared(&path).unwrap_err();
        println!("{err}");
        assert!(
            matches!(&err, LockError::Busy { wanted: LockKind::Shared, holders, .. }
                if holders == &[Holder { pid, kind: LockKind::Exclusive }]),
            "{err}"
        );
        assert!(err.to_string().contains(&format!(
            "a shared lock on {}: held by pid {pid} (exclusive)",
            path.display()
        )));
        assert!(matches!(
            FileLock::try_exclusive(&path),
            Err(LockError::Busy { .. })
        ));

        child.kill();
        FileLock::try_shared(&path).unwrap();
    }

    #[test]
    fn holders_lists_exactly_the_live_holders() {
        let dir = TempDir::new().unwrap();
        let path = lock_file(&dir);
        assert_eq!(holders(&path).unwrap(), vec![]);
        let Some(a) = Locker::spawn(&path, LockKind::Shared) else {
            return;
        };
        let Some(b) = Locker::spawn(&path, LockKind::Shared) else {
            return;
        };
        let (pa, pb) = (a.pid(), b.pid());
        let shared = |pid| Holder {
            pid,
            kind: LockKind::Shared,
        };

        let err = FileLock::try_exclusive(&path).unwrap_err();
        println!("{err}");
        assert_eq!(
            sorted(holders(&path).unwrap()),
            sorted(vec![shared(pa), shared(pb)])
        );

        a.kill();
        assert_eq!(holders(&path).unwrap(), vec![shared(pb)]);
        b.kill();
        assert_eq!(holders(&path).unwrap(), vec![]);

        // Another file on the same filesystem is not confused with it.
        let other = dir.as_path().join("other");
        fs::write(&other, b"").unwrap();
        let _held = FileLock::try_shared(&other).unwrap();
        assert_eq!(holders(&path).unwrap(), vec![]);
    }

    #[test]
    fn locks_conflict_within_one_process_and_drop_releases() {
        let dir = TempDir::new().unwrap();
        let path = lock_file(&dir);
        let me = std::process::id() as i32;
        let ex = FileLock::try_exclusive(&path).unwrap();
        let err = FileLock::try_exclusive(&path).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(&format!("held by pid {me} (exclusive)")),
            "{err}"
        );
        drop(ex);
        let a = FileLock::try_shared(&path).unwrap();
        let _b = FileLock::try_shared(&path).unwrap();
        // Two shared locks of one process are listed once.
        assert_eq!(
            holders(&path).unwrap(),
            vec![Holder {
                pid: me,
                kind: LockKind::Shared
            }]
        );
        drop(a);
        assert!(FileLock::try_exclusive(&path).is_err());
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("missing");
        let err = FileLock::try_shared(&path).unwrap_err();
        assert!(
            matches!(&err, LockError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(err.to_string().contains("a shared lock on"), "{err}");
        assert!(holders(&path).is_err());
    }

    #[test]
    fn proc_locks_lines() {
        let text = "\
1: POSIX  ADVISORY  WRITE 700 fe:00:42 0 EOF
2: OFDLCK ADVISORY  READ  -1 fe:00:42 0 EOF
3: FLOCK  ADVISORY  READ 13900 fe:00:42 0 EOF
3: -> FLOCK  ADVISORY  WRITE 13950 fe:00:42 0 EOF
4: FLOCK  ADVISORY  READ 13898 fe:00:42 0 EOF
5: FLOCK  ADVISORY  WRITE 800 fe:01:42 0 EOF
6: FLOCK  ADVISORY  WRITE 801 fe:00:420 0 EOF
7: FLOCK  ADVISORY  WRITE 802 103:0a:42 0 EOF
8: LEASE  ACTIVE    READ 900 fe:00:42 0 EOF
9: FLOCK  ADVISORY  READ 13898 fe:00:42 0 EOF
garbage
";
        assert_eq!(
            parse_proc_locks(text, 0xfe, 0, 42),
            vec![
                Holder {
                    pid: 13900,
                    kind: LockKind::Shared
                },
                Holder {
                    pid: 13898,
                    kind: LockKind::Shared
                },
            ]
        );
        assert_eq!(
            parse_proc_locks(text, 0x103, 0x0a, 42),
            vec![Holder {
                pid: 802,
                kind: LockKind::Exclusive
            }]
        );
        assert_eq!(parse_proc_locks(text, 0xfe, 1, 43), vec![]);
    }
}
