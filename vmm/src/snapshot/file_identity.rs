//! Which file a path names and whether it was changed: device, inode, size
//! and modification time. Recorded for the files a saved VM relies on
//! (disks at a CPR checkpoint, a template's read-only disks and RAM file)
//! and compared before a restore, so that a VM never resumes with page
//! cache that no longer matches its disk.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch (may be negative).
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        Ok(Self::from_metadata(&fs::metadata(path)?))
    }

    pub fn from_metadata(m: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }

    /// What changed between `self` (recorded) and `now`, in words; None
    /// when it is the same, unmodified file.
    pub fn change(&self, now: &FileIdentity) -> Option<String> {
        if self.dev != now.dev || self.ino != now.ino {
            return Some(format!(
                "it is another file now (device {:#x} inode {}, recorded device {:#x} inode {}): it was replaced",
                now.dev, now.ino, self.dev, self.ino
            ));
        }
        if self.size != now.size {
            return Some(format!(
                "its size changed from {} to {} bytes",
                self.size, now.size
            ));
        }
        if self.mtime_ns != now.mtime_ns {
            return Some(format!(
                "it was modified (mtime {} now, {} when recorded)",
                format_mtime(now.mtime_ns),
                format_mtime(self.mtime_ns)
            ));
        }
        None
    }

    /// What changed about the file at `path` since `self` was recorded.
    pub fn check(&self, path: &Path) -> Option<String> {
        match FileIdentity::of(path) {
            Ok(now) => self.change(&now),
            Err(e) => Some(format!("it cannot be read: {e}")),
        }
    }
}

/// Seconds.nanoseconds since the epoch: exact, and what `stat` shows.
fn format_mtime(ns: i128) -> String {
    format!(
        "{}.{:09}",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_touch_a_write_and_a_replacement_are_each_named() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-identity-").unwrap();
        let p = dir.as_path().join("disk.img");
        fs::write(&p, vec![0u8; 4096]).unwrap();
        let id = FileIdentity::of(&p).unwrap();
        assert_eq!(id.check(&p), None, "unchanged");

        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        let why = id.check(&p).expect("a touch is a change");
        assert!(
            why.contains("modified") && why.contains("7.000000000"),
            "{why}"
        );

        let mut f = fs::File::options().append(true).open(&p).unwrap();
        f.write_all(b"x").unwrap();
        let why = id.check(&p).expect("a write is a change");
        assert!(why.contains("4096 to 4097"), "{why}");

        let q = dir.as_path().join("other.img");
        fs::write(&q, vec![0u8; 4096]).unwrap();
        fs::rename(&q, &p).unwrap();
        let why = id.check(&p).expect("a replacement is a change");
        assert!(why.contains("replaced"), "{why}");

        fs::remove_file(&p).unwrap();
        let why = id.check(&p).expect("a missing file is a change");
        assert!(why.contains("cannot be read"), "{why}");
    }
}
