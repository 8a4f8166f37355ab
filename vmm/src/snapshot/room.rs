//! Whether a `file:` target has room for a snapshot, checked before the VM
//! is stopped: a CPR checkpoint that cannot be written is refused while
//! the guest still runs, rather than stopping it and failing half way.
//!
//! The bound is an upper one: every page of RAM that goes into the stream
//! (boot RAM unless x-ignore-shared leaves it in its shared file, and each
//! virtio-mem device's plugged or requested size, whichever is larger),
//! plus the record headers around RAM chunks and the state sections.
//! All-zero pages are not written, so a save may need much less.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::save::shared_ram_file;
use crate::bus::lock;
use crate::machine::{DeviceHandle, Machine};

/// Room for the state sections: far above a real VM's (about 50 KB for
/// one vCPU and a few devices).
const STATE_BASE: u64 = 256 << 10;
const STATE_PER_VCPU: u64 = 64 << 10;

/// What a save of a VM may write, in parts for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    /// Boot RAM that goes into the stream (0 when left in its file).
    pub boot_ram: u64,
    /// The file boot RAM is in, when it is a share=on file but
    /// x-ignore-shared is off (so it is copied all the same).
    pub shared_file_copied: Option<PathBuf>,
    /// virtio-mem memory that may be plugged when the VM stops.
    pub virtio_mem: u64,
    /// State sections and record headers.
    pub state: u64,
}

impl Needed {
    pub fn total(&self) -> u64 {
        self.boot_ram + self.virtio_mem + self.state
    }

    /// What a save of `m` may write with x-ignore-shared `ignore_shared`.
    pub fn of(m: &Machine, ignore_shared: bool) -> Needed {
        let shared = shared_ram_file(&m.cfg);
        let boot_ram = match (shared, ignore_shared) {
            (Some(_), true) => 0,
            _ => m.cfg.memory.size,
        };
        let virtio_mem = m
            .slots
            .iter()
            .map(|s| match &s.device {
                DeviceHandle::Mem(d) => {
                    let d = lock(d, &s.name);
                    d.plugged_size().max(d.requested_size())
                }
                _ => 0,
            })
            .sum::<u64>();
        let ram = boot_ram + virtio_mem;
        Needed {
            boot_ram,
            shared_file_copied: shared.filter(|_| !ignore_shared).map(Path::to_path_buf),
            virtio_mem,
            // Record headers: well under 1/64 of the RAM they carry.
            state: STATE_BASE + STATE_PER_VCPU * u64::from(m.cfg.cpus) + ram / 64,
        }
    }
}

impl fmt::Display for Needed {
    /// "up to 64M (boot RAM 64M, virtio-mem 0, state 1.2M)"
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "up to {} (boot RAM {}",
            human(self.total()),
            human(self.boot_ram)
        )?;
        if self.virtio_mem > 0 {
            write!(f, ", virtio-mem {}", human(self.virtio_mem))?;
        }
        write!(f, ", state {})", human(self.state))
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `dir` (statvfs f_bavail).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid C string and `st` a plain struct statvfs
    // fills in; nothing is kept after the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Both are u64 on x86_64 glibc; other targets have narrower types.
    #[allow(clippy::useless_conversion)]
    let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(avail.saturating_mul(frsize))
}

/// The name of the filesystem holding `path` when it lives in memory
/// (tmpfs, ramfs, hugetlbfs), so that its content is lost on a host reboot.
pub fn volatile_fs(path: &Path) -> Option<&'static str> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: as in free_bytes.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        HUGETLBFS_MAGIC => Some("hugetlbfs"),
        _ => None,
    }
}

/// Checks that the directory `dest` is written in has room for `need`;
/// the refusal says how much is needed, how much is free, where, and
/// what to do instead.
pub fn check(dest: &Path, need: &Needed) -> Result<(), String> {
    let dir = super::uri::dir_of(dest);
    let free = free_bytes(dir).map_err(|e| {
        format!(
            "cannot read the free space of {} (where {} would be written): {e}",
            dir.display(),
            dest.display()
        )
    })?;
    if need.total() <= free {
        return Ok(());
    }
    let fix = match &need.shared_file_copied {
        Some(p) => format!(
            "boot RAM is already in the share=on file {}: turn on the x-ignore-shared capability \
             (migrate-set-capabilities) to leave it there, or migrate to a filesystem with room",
            p.display()
        ),
        None => "give boot RAM as a file mapped share=on (--memory \
                 size=...,backing=file,path=PATH,share=on) and turn on the x-ignore-shared \
                 capability so that RAM stays in place, or migrate to a filesystem with room"
            .to_string(),
    };
    Err(format!(
        "saving the VM would write {need} to {}, but its filesystem has only {} free \
         (guest RAM goes into the stream); {fix}",
        dest.display(),
        human(free)
    ))
}

/// "64.0 MiB", "512 bytes": sizes for people, to a tenth.
fn human(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift {
            return format!("{:.1} {unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_directory_is_read_and_a_missing_one_is_an_error() {
        let free = free_bytes(Path::new("/tmp")).unwrap();
        assert!(free > 0);
        assert!(free_bytes(Path::new("/nonexistent/dir")).is_err());
        let need = Needed {
            boot_ram: u64::MAX / 4,
            shared_file_copied: None,
            virtio_mem: 0,
            state: 1,
        };
        let why = check(Path::new("/tmp/x.state"), &need).unwrap_err();
        assert!(
            why.contains("/tmp/x.state") && why.contains("free") && why.contains("share=on"),
            "{why}"
        );
        let small = Needed {
            boot_ram: 0,
            shared_file_copied: None,
            virtio_mem: 0,
            state: 4096,
        };
        assert_eq!(check(Path::new("/tmp/x.state"), &small), Ok(()));
        let why = check(Path::new("/nonexistent/dir/x.state"), &small).unwrap_err();
        assert!(why.contains("/nonexistent/dir"), "{why}");
    }
}
