//! Copying a template's files without ever writing them.
//!
//! A template is created once and then read by many clones, so nothing
//! here may write, truncate or replace a source file, and a copy never
//! overwrites an existing destination (a clone's disk that already exists
//! belongs to someone). [`copy_file`] first asks the filesystem to share
//! the source's blocks (a reflink: instant, and no extra space until the
//! clone writes), and otherwise copies only the source's data extents, so a
//! mostly empty disk image stays mostly unallocated in every clone. Either
//! way the destination is complete and synced when it returns, or it does
//! not exist.
//!
//! [`crc32c_file`] checksums a file for the template's manifest.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use log::{debug, warn};
use thiserror::Error;

/// Buffer for the read/write fallback and for checksums.
const BUF_SIZE: usize = 1 << 20;

/// Largest request handed to one `copy_file_range` call (the kernel caps a
/// call a little below 2 GiB anyway).
const MAX_COPY_CHUNK: u64 = 1 << 30;

/// How [`copy_file`] produced the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// The destination shares the source's blocks (FICLONE).
    Reflink,
    /// The source's data extents were copied and its holes left as holes.
    Sparse {
        /// Bytes copied: the sum of the source's data extents.
        data_bytes: u64,
    },
}

impl fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyMethod::Reflink => write!(f, "reflink (blocks shared with the source)"),
            CopyMethod::Sparse { data_bytes } => {
                write!(f, "sparse copy of {data_bytes} data bytes")
            }
        }
    }
}

/// The step of [`copy_file`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStep {
    OpenSource,
    StatSource,
    CreateDestination,
    SetPermissions,
    Reflink,
    FindData,
    FindHole,
    CopyFileRange,
    Read,
    Write,
    Truncate,
    Sync,
}

impl fmt::Display for CopyStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyStep::OpenSource => "opening the source",
            CopyStep::StatSource => "inspecting the source",
            CopyStep::CreateDestination => "creating the destination",
            CopyStep::SetPermissions => "setting the destination's permissions",
            CopyStep::Reflink => "cloning the source's blocks (FICLONE)",
            CopyStep::FindData => "finding the source's data (SEEK_DATA)",
            CopyStep::FindHole => "finding the source's holes (SEEK_HOLE)",
            CopyStep::CopyFileRange => "copying data (copy_file_range)",
            CopyStep::Read => "reading the source",
            CopyStep::Write => "writing the destination",
            CopyStep::Truncate => "setting the destination's length",
            CopyStep::Sync => "syncing the destination",
        })
    }
}

/// Why [`copy_file`] failed. The destination does not exist afterwards
/// unless it existed before ([`CopyError::DestinationExists`]).
#[derive(Debug, Error)]
pub enum CopyError {
    #[error("cannot copy {} to {}: the destination already exists (a copy never overwrites)", .src.display(), .dst.display())]
    DestinationExists { src: PathBuf, dst: PathBuf },
    #[error("cannot copy {} to {}: {step}: {source}", .src.display(), .dst.display())]
    Io {
        src: PathBuf,
        dst: PathBuf,
        step: CopyStep,
        #[source]
        source: io::Error,
    },
}

fn last_os_error() -> io::Error {
    io::Error::last_os_error()
}

/// Copies `src` to a new file `dst`.
///
/// `dst` is created exclusively (an existing `dst`, even a dangling
/// symlink, is refused and left alone) with the source's permission bits
/// (without execute bits, and always readable and writable by its owner).
/// The source is opened read-only. A reflink is tried first; where the
/// filesystem cannot share blocks (ext4, tmpfs, or `src` and `dst` on
/// different filesystems) only the source's data extents are copied and
/// its holes, including a trailing one, stay holes. `dst` is fsynced before
/// this returns. On error `dst` is removed, and the error names `src`,
/// `dst`, the failed step and the OS error.
pub fn copy_file(src: &Path, dst: &Path) -> Result<CopyMethod, CopyError> {
    let io_err = |step: CopyStep, source: io::Error| CopyError::Io {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
        step,
        source,
    };

    let src_file = File::open(src).map_err(|e| io_err(CopyStep::OpenSource, e))?;
    let meta = src_file
        .metadata()
        .map_err(|e| io_err(CopyStep::StatSource, e))?;
    if !meta.file_type().is_file() {
        return Err(io_err(
            CopyStep::StatSource,
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let mode = (meta.permissions().mode() & 0o666) | 0o600;

    let dst_file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dst)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(CopyError::DestinationExists {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(CopyStep::CreateDestination, e)),
    };

    match fill(&src_file, &dst_file, mode, meta.len()) {
        Ok(method) => {
            debug!("copied {} to {}: {method}", src.display(), dst.display());
            Ok(method)
        }
        Err((step, e)) => {
            remove_created(dst, &dst_file);
            Err(io_err(step, e))
        }
    }
}

/// Gives the freshly created `dst` the source's contents, length and mode.
fn fill(src: &File, dst: &File, mode: u32, len: u64) -> Result<CopyMethod, (CopyStep, io::Error)> {
    // The mode given at creation went through the umask.
    dst.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| (CopyStep::SetPermissions, e))?;

    let method = if try_reflink(src, dst)? {
        CopyMethod::Reflink
    } else {
        let data_bytes = sparse_copy(src, dst, len, true)?;
        // Trailing holes: the last extent copied may end before `len`.
        dst.set_len(len).map_err(|e| (CopyStep::Truncate, e))?;
        CopyMethod::Sparse { data_bytes }
    };
    dst.sync_all().map_err(|e| (CopyStep::Sync, e))?;
    Ok(method)
}

/// FICLONE: makes `dst` share all of `src`'s blocks. `Ok(false)` when the
/// filesystem (or the pair of filesystems) cannot.
fn try_reflink(src: &File, dst: &File) -> Result<bool, (CopyStep, io::Error)> {
    // SAFETY: FICLONE takes the source fd as its argument and reads no
    // memory of ours; both fds are open for the duration of the call.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if ret == 0 {
        return Ok(true);
    }
    let e = last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS) => {
            debug!("reflink not possible ({e}); copying data extents");
            Ok(false)
        }
        _ => Err((CopyStep::Reflink, e)),
    }
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on an fd we own; no memory involved.
    let ret = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if ret >= 0 {
        return Ok(Some(ret as u64));
    }
    let e = last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        // No data (or hole) at or after `offset`.
        return Ok(None);
    }
    Err(e)
}

/// Copies the data extents of `src[0..len]` to the same offsets of `dst`
/// and returns how many bytes that was. `dst` is not extended past the last
/// extent. `use_copy_file_range: false` goes straight to read/write.
fn sparse_copy(
    src: &File,
    dst: &File,
    len: u64,
    use_copy_file_range: bool,
) -> Result<u64, (CopyStep, io::Error)> {
    let mut copier = Copier {
        src,
        dst,
        use_copy_file_range,
        buf: Vec::new(),
    };
    let mut copied = 0u64;
    let mut offset = 0u64;
    while offset < len {
        let data = match lseek(src, offset, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e)
                if offset == 0
                    && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
            {
                debug!("SEEK_DATA not supported ({e}); copying the whole file");
                copier.copy(0, len)?;
                return Ok(len);
            }
            Err(e) => return Err((CopyStep::FindData, e)),
        };
        if data >= len {
            break;
        }
        let hole = lseek(src, data, libc::SEEK_HOLE)
            .map_err(|e| (CopyStep::FindHole, e))?
            .unwrap_or(len)
            .min(len);
        copier.copy(data, hole - data)?;
        copied += hole - data;
        offset = hole;
    }
    Ok(copied)
}

struct Copier<'a> {
    src: &'a File,
    dst: &'a File,
    use_copy_file_range: bool,
    buf: Vec<u8>,
}

impl Copier<'_> {
    /// Copies `src[offset..offset + len]` to the same range of `dst`.
    fn copy(&mut self, mut offset: u64, mut len: u64) -> Result<(), (CopyStep, io::Error)> {
        while len > 0 {
            let n = if self.use_copy_file_range {
                match self.copy_file_range(offset, len) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
                        ) =>
                    {
                        debug!("copy_file_range not possible ({e}); reading and writing");
                        self.use_copy_file_range = false;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err((CopyStep::CopyFileRange, e)),
                }
            } else {
                self.read_write(offset, len)?
            };
            if n == 0 {
                return Err((
                    CopyStep::Read,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the source ended at byte {offset}, before its recorded length; was it truncated during the copy?"),
                    ),
                ));
            }
            offset += n;
            len -= n;
        }
        Ok(())
    }

    fn copy_file_range(&self, offset: u64, len: u64) -> io::Result<u64> {
        let mut off_in = offset as libc::loff_t;
        let mut off_out = offset as libc::loff_t;
        // SAFETY: both fds are open; the offsets are valid loff_t we own,
        // which the kernel updates and which we do not read afterwards.
        let ret = unsafe {
            libc::copy_file_range(
                self.src.as_raw_fd(),
                &mut off_in,
                self.dst.as_raw_fd(),
                &mut off_out,
                len.min(MAX_COPY_CHUNK) as usize,
                0,
            )
        };
        if ret < 0 {
            return Err(last_os_error());
        }
        Ok(ret as u64)
    }

    fn read_write(&mut self, offset: u64, len: u64) -> Result<u64, (CopyStep, io::Error)> {
        if self.buf.is_empty() {
            self.buf = vec![0; BUF_SIZE];
        }
        let want = len.min(self.buf.len() as u64) as usize;
        let n = loop {
            match self.src.read_at(&mut self.buf[..want], offset) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((CopyStep::Read, e)),
            }
        };
        self.dst
            .write_all_at(&self.buf[..n], offset)
            .map_err(|e| (CopyStep::Write, e))?;
        Ok(n as u64)
    }
}

/// Removes the half-made `dst`, but only while `dst` still names the file
/// this copy created.
fn remove_created(dst: &Path, file: &File) {
    let ours = match (fs::symlink_metadata(dst), file.metadata()) {
        (Ok(at_path), Ok(created)) => {
            at_path.dev() == created.dev() && at_path.ino() == created.ino()
        }
        _ => false,
    };
    if !ours {
        warn!(
            "not removing {} after a failed copy: it is no longer the file the copy created",
            dst.display()
        );
        return;
    }
    if let Err(e) = fs::remove_file(dst) {
        warn!(
            "cannot remove {} after a failed copy: {e}; remove it by hand",
            dst.display()
        );
    }
}

/// CRC32C (Castagnoli) of the bytes of the file at `path`, read in 1 MiB
/// pieces.
pub fn crc32c_file(path: &Path) -> io::Result<u32> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut crc = 0u32;
    let mut offset = 0u64;
    // Holes read as zeroes; their CRC is combined in without reading them,
    // so a template's mostly sparse RAM file is hashed at the speed of its data.
    while offset < len {
        let data = match lseek(&file, offset, libc::SEEK_DATA) {
            Ok(Some(d)) => d.min(len),
            Ok(None) => len,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => offset,
            Err(e) => return Err(e),
        };
        crc = crc32c_zeros(crc, data - offset);
        if data >= len {
            break;
        }
        let hole = match lseek(&file, data, libc::SEEK_HOLE) {
            Ok(h) => h.unwrap_or(len).min(len),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => len,
            Err(e) => return Err(e),
        };
        let mut at = data;
        while at < hole {
            let want = (hole - at).min(BUF_SIZE as u64) as usize;
            let n = match file.read_at(&mut buf[..want], at) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was read",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            at += n as u64;
        }
        offset = hole;
    }
    Ok(crc)
}

/// `crc` extended by `len` zero bytes, without touching them.
fn crc32c_zeros(mut crc: u32, mut len: u64) -> u32 {
    const BLOCK: u64 = 1 << 20;
    if len >= BLOCK {
        let block = crc32c::crc32c(&vec![0u8; BLOCK as usize]);
        while len >= BLOCK {
            crc = crc32c::crc32c_combine(crc, block, BLOCK as usize);
            len -= BLOCK;
        }
    }
    crc32c::crc32c_append(crc, &vec![0u8; len as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use vmm_sys_util::tempdir::TempDir;

    const MIB: u64 = 1 << 20;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    /// Makes a sparse file of `len` bytes with `extents` written into it.
    fn sparse_file(path: &Path, len: u64, extents: &[(u64, usize)]) {
        let f = File::create(path).unwrap();
        f.set_len(len).unwrap();
        for (i, &(off, n)) in extents.iter().enumerate() {
            f.write_all_at(&pattern(n, i as u8), off).unwrap();
        }
        f.sync_all().unwrap();
    }

    fn allocated(path: &Path) -> u64 {
        fs::metadata(path).unwrap().blocks() * 512
    }

    fn fs_type(path: &Path) -> libc::c_long {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs fills the zeroed struct we pass; the path is a
        // valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        st.f_type as libc::c_long
    }

    fn fs_name(t: libc::c_long) -> &'static str {
        match t {
            0xEF53 => "ext4",
            0x0102_1994 => "tmpfs",
            0x9123_683E => "btrfs",
            0x5846_5342 => "xfs",
            _ => "other",
        }
    }

    #[test]
    fn sparse_source_copies_identically_and_stays_sparse() {
        let dir = TempDir::new().unwrap();
        let src = dir.as_path().join("disk.img");
        let dst = dir.as_path().join("clone.img");
        let len = 64 * MIB;
        // Start, middle, and a tail that ends 4 MiB before the end.
        let extents = [
            (0, 64 << 10),
            (32 * MIB, 1 << 20),
            (60 * MIB - (256 << 10), 256 << 10),
        ];
        let data: u64 = extents.iter().map(|&(_, n)| n as u64).sum();
        sparse_file(&src, len, &extents);
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        let src_sparse = allocated(&src) < 8 * MIB;

        let before = fs::metadata(&src).unwrap();
        let crc_before = crc32c_file(&src).unwrap();

        let method = copy_file(&src, &dst).unwrap();
        let fs_t = fs_type(dir.as_path());
        println!(
            "copy on {} ({:#x}): {method}; source allocates {} bytes, copy {} bytes",
            fs_name(fs_t),
            fs_t,
            allocated(&src),
            allocated(&dst)
        );

        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        assert_eq!(fs::metadata(&dst).unwrap().len(), len);
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o640
        );

        match fs_name(fs_t) {
            "ext4" | "tmpfs" => assert!(
                matches!(method, CopyMethod::Sparse { data_bytes } if data_bytes >= data && data_bytes <= data + MIB),
                "{method}"
            ),
            "btrfs" | "xfs" => assert_eq!(method, CopyMethod::Reflink),
            _ => {}
        }
        if src_sparse {
            assert!(
                allocated(&dst) <= data + MIB,
                "copy allocates {} bytes for {data} data bytes",
                allocated(&dst)
            );
        } else {
            println!("this filesystem does not keep the source sparse; not checking the copy's allocation");
        }

        // The source is untouched.
        let after = fs::metadata(&src).unwrap();
        assert_eq!(crc32c_file(&src).unwrap(), crc_before);
        assert_eq!(after.modified().unwrap(), before.modified().unwrap());
        assert_eq!(after.len(), len);
        assert_eq!(after.permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn all_hole_source_copies_no_data() {
        let dir = TempDir::new().unwrap();
        let src = dir.as_path().join("empty.img");
        let dst = dir.as_path().join("clone.img");
        sparse_file(&src, 8 * MIB, &[]);
        let method = copy_file(&src, &dst).unwrap();
        if let CopyMethod::Sparse { data_bytes } = method {
            assert_eq!(data_bytes, 0);
        }
        assert_eq!(fs::metadata(&dst).unwrap().len(), 8 * MIB);
        assert!(fs::read(&dst).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn read_write_fallback_copies_extents() {
        let dir = TempDir::new().unwrap();
        let src_path = dir.as_path().join("src");
        let dst_path = dir.as_path().join("dst");
        let len = 8 * MIB;
        sparse_file(
            &src_path,
            len,
            &[(4096, 3 * MIB as usize + 5), (7 * MIB, 4096)],
        );
        let src = File::open(&src_path).unwrap();
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dst_path)
            .unwrap();
        let copied = sparse_copy(&src, &dst, len, false).unwrap();
        dst.set_len(len).unwrap();
        assert!(copied >= 3 * MIB + 4096 + 5, "{copied}");
        assert_eq!(fs::read(&src_path).unwrap(), fs::read(&dst_path).unwrap());
    }

    #[test]
    fn permissions_keep_source_bits_without_execute_and_owner_rw() {
        let dir = TempDir::new().unwrap();
        let src = dir.as_path().join("src");
        let dst = dir.as_path().join("dst");
        fs::write(&src, b"x").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o455)).unwrap();
        copy_file(&src, &dst).unwrap();
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn existing_destination_is_refused_and_untouched() {
        let dir = TempDir::new().unwrap();
        let src = dir.as_path().join("src");
        let dst = dir.as_path().join("dst");
        fs::write(&src, b"new contents").unwrap();
        fs::write(&dst, b"keep me").unwrap();
        let err = copy_file(&src, &dst).unwrap_err();
        assert!(matches!(err, CopyError::DestinationExists { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("already exists") && msg.contains(&dst.display().to_string()),
            "{msg}"
        );
        assert_eq!(fs::read(&dst).unwrap(), b"keep me");

        // A dangling symlink is not followed either.
        let link = dir.as_path().join("link");
        std::os::unix::fs::symlink(dir.as_path().join("nowhere"), &link).unwrap();
        assert!(matches!(
            copy_file(&src, &link),
            Err(CopyError::DestinationExists { .. })
        ));
        assert!(!dir.as_path().join("nowhere").exists());
    }

    #[test]
    fn missing_or_non_regular_source_creates_nothing() {
        let dir = TempDir::new().unwrap();
        let dst = dir.as_path().join("dst");
        let err = copy_file(&dir.as_path().join("missing"), &dst).unwrap_err();
        assert!(
            matches!(
                err,
                CopyError::Io {
                    step: CopyStep::OpenSource,
                    ..
                }
            ),
            "{err}"
        );
        let err = copy_file(dir.as_path(), &dst).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(!dst.exists());
    }

    /// A tmpfs mounted for one test, unmounted when dropped.
    struct Mount(PathBuf);

    impl Mount {
        fn tmpfs(at: &Path, options: &str) -> io::Result<Mount> {
            let target = CString::new(at.as_os_str().as_bytes()).unwrap();
            let opts = CString::new(options).unwrap();
            // SAFETY: all pointers are valid C strings for the call.
            let ret = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                )
            };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Mount(at.to_path_buf()))
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid C string; MNT_DETACH so a leftover open file
            // cannot keep the test mount around.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn failure_midway_removes_the_destination() {
        let dir = TempDir::new().unwrap();
        let src = dir.as_path().join("src");
        sparse_file(&src, 8 * MIB, &[(0, 4 * MIB as usize)]);
        let mnt = dir.as_path().join("full");
        fs::create_dir(&mnt).unwrap();
        let _mount = match Mount::tmpfs(&mnt, "size=1M") {
            Ok(m) => m,
            Err(e) => {
                println!(
                    "skipped: cannot mount a 1 MiB tmpfs at {}: {e}",
                    mnt.display()
                );
                return;
            }
        };
        let dst = mnt.join("dst");
        let crc_before = crc32c_file(&src).unwrap();

        let err = copy_file(&src, &dst).unwrap_err();
        println!("{err}");
        match &err {
            CopyError::Io { step, source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}");
                assert!(
                    matches!(
                        step,
                        CopyStep::Write | CopyStep::CopyFileRange | CopyStep::Sync
                    ),
                    "{err}"
                );
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&src.display().to_string()) && msg.contains(&dst.display().to_string()),
            "{msg}"
        );
        assert!(!dst.exists(), "half copy left behind");
        assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0);
        assert_eq!(crc32c_file(&src).unwrap(), crc_before);
    }

    #[test]
    fn sparse_copy_within_tmpfs_and_across_filesystems() {
        let dir = TempDir::new().unwrap();
        let mnt = dir.as_path().join("tmpfs");
        fs::create_dir(&mnt).unwrap();
        let _mount = match Mount::tmpfs(&mnt, "size=64M") {
            Ok(m) => m,
            Err(e) => {
                println!("skipped: cannot mount a tmpfs at {}: {e}", mnt.display());
                return;
            }
        };
        let len = 32 * MIB;
        let extents = [(0, 8192), (16 * MIB, 1 << 20), (20 * MIB, 4096)];
        let data: u64 = extents.iter().map(|&(_, n)| n as u64).sum();
        let src = mnt.join("src");
        sparse_file(&src, len, &extents);

        // tmpfs to tmpfs, then tmpfs to /tmp's filesystem (copy_file_range
        // may refuse to cross filesystems; read/write takes over).
        for dst in [mnt.join("dst"), dir.as_path().join("dst")] {
            let method = copy_file(&src, &dst).unwrap();
            println!(
                "tmpfs to {}: {method}",
                fs_name(fs_type(dst.parent().unwrap()))
            );
            assert_eq!(method, CopyMethod::Sparse { data_bytes: data });
            assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
            assert!(allocated(&dst) <= data + MIB, "{}", allocated(&dst));
        }
    }

    #[test]
    fn crc32c_file_matches_crc_of_the_bytes() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("f");
        let bytes = pattern(3 * MIB as usize + 5, 7);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(crc32c_file(&path).unwrap(), crc32c::crc32c(&bytes));
        // A sparse file: holes count as the zeroes they read as.
        let sparse = dir.as_path().join("sparse");
        let f = File::create(&sparse).unwrap();
        f.set_len(5 << 20).unwrap();
        f.write_all_at(b"data in the middle", (2 << 20) + 3)
            .unwrap();
        f.write_all_at(b"tail", (5 << 20) - 4).unwrap();
        drop(f);
        let whole = fs::read(&sparse).unwrap();
        assert_eq!(crc32c_file(&sparse).unwrap(), crc32c::crc32c(&whole));
        let holes_only = dir.as_path().join("holes");
        File::create(&holes_only).unwrap().set_len(3 << 20).unwrap();
        assert_eq!(
            crc32c_file(&holes_only).unwrap(),
            crc32c::crc32c(&vec![0u8; 3 << 20])
        );
        fs::write(&path, b"123456789").unwrap();
        // The CRC32C check value.
        assert_eq!(crc32c_file(&path).unwrap(), 0xE306_9283);
        fs::write(&path, b"").unwrap();
        assert_eq!(crc32c_file(&path).unwrap(), 0);
    }
}
