//! The raw image file behind a block device.
//!
//! Every access is positioned (`pread`/`pwrite`/`fallocate` at an offset),
//! so the file offset is never shared state between requests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

/// Largest zero-fill buffer; bounds host memory use when fallocate is unavailable.
const ZERO_CHUNK: usize = 1 << 20;

/// What O_DIRECT needs of buffer address, file offset and length on any
/// host disk (4 KiB logical blocks included).
pub const DIRECT_ALIGN: usize = 4096;

#[derive(Debug, Error)]
pub enum BlockError {
    #[error("cannot open disk image {} {}: {source}; {hint}", .path.display(), if *.readonly { "read-only" } else { "read-write" })]
    Open {
        path: PathBuf,
        readonly: bool,
        hint: &'static str,
        source: io::Error,
    },
    #[error("cannot read the size of disk image {}: {source}; check that the file is accessible", .path.display())]
    Metadata { path: PathBuf, source: io::Error },
    #[error("disk image {} is not a regular file; only raw image files are supported, so pass the path of an image file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("disk image {} is {size} bytes, which is not a whole number of 512-byte sectors; resize it to a multiple of 512 (e.g. `truncate -s {rounded} {}`)", .path.display(), .path.display())]
    UnalignedSize {
        path: PathBuf,
        size: u64,
        rounded: u64,
    },
}

/// An open image and its fixed size.
pub struct Disk {
    file: File,
    /// The same image opened with O_DIRECT, for requests aligned to
    /// [`DIRECT_ALIGN`]; the others go through `file` and the page cache.
    direct: Option<File>,
    capacity_sectors: u64,
    readonly: bool,
}

impl Disk {
    pub fn open(path: &Path, readonly: bool) -> Result<Self, BlockError> {
        Disk::open_with(path, readonly, false)
    }

    /// With `direct`, aligned reads and writes bypass the host page cache.
    pub fn open_with(path: &Path, readonly: bool, direct: bool) -> Result<Self, BlockError> {
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(!readonly)
                .custom_flags(flags)
                .open(path)
                .map_err(|source| BlockError::Open {
                    path: path.to_path_buf(),
                    readonly,
                    hint: open_hint(&source, readonly),
                    source,
                })
        };
        let file = open(0)?;
        let direct = if direct {
            Some(open(libc::O_DIRECT)?)
        } else {
            None
        };
        let meta = file.metadata().map_err(|source| BlockError::Metadata {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BlockError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let size = meta.len();
        if !size.is_multiple_of(SECTOR_SIZE) {
            // A partial last sector could be neither read nor written as a
            // whole sector, and the guest would see a truncated disk.
            return Err(BlockError::UnalignedSize {
                path: path.to_path_buf(),
                size,
                rounded: size.next_multiple_of(SECTOR_SIZE),
            });
        }
        Ok(Disk {
            file,
            direct,
            capacity_sectors: size >> SECTOR_SHIFT,
            readonly,
        })
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The fd for a transfer of `buf` at `offset`: the O_DIRECT one when
    /// there is one and everything is aligned for it.
    fn fd_for(&self, buf: &[u8], offset: u64) -> &File {
        match &self.direct {
            Some(d)
                if (buf.as_ptr() as usize | buf.len()).is_multiple_of(DIRECT_ALIGN)
                    && offset.is_multiple_of(DIRECT_ALIGN as u64) =>
            {
                d
            }
            _ => &self.file,
        }
    }

    /// The fd for a transfer of `iov` at `offset`: the O_DIRECT one when
    /// there is one and every segment is aligned for it.
    fn fd_for_iov(&self, iov: &[libc::iovec], offset: u64) -> &File {
        match &self.direct {
            Some(d)
                if offset.is_multiple_of(DIRECT_ALIGN as u64)
                    && iov.iter().all(|v| {
                        (v.iov_base as usize | v.iov_len).is_multiple_of(DIRECT_ALIGN)
                    }) =>
            {
                d
            }
            _ => &self.file,
        }
    }

    /// Reads into every byte `iov` describes, from `offset` on; consumes
    /// `iov` as it goes.
    ///
    /// # Safety
    /// Each iovec must be writable memory that stays valid for the call.
    pub unsafe fn preadv_all(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        let fd = self.fd_for_iov(iov, offset).as_raw_fd();
        // SAFETY: the caller vouches for the buffers; the fd is ours.
        transfer_all(iov, offset, |v, n, off| unsafe {
            libc::preadv(fd, v, n, off)
        })
    }

    /// Writes every byte `iov` describes at `offset`; consumes `iov`.
    ///
    /// # Safety
    /// Each iovec must be readable memory that stays valid for the call.
    pub unsafe fn pwritev_all(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        let fd = self.fd_for_iov(iov, offset).as_raw_fd();
        // SAFETY: the caller vouches for the buffers; the fd is ours.
        transfer_all(iov, offset, |v, n, off| unsafe {
            libc::pwritev(fd, v, n, off)
        })
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fd_for(buf, offset).read_exact_at(buf, offset)
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fd_for(buf, offset).write_all_at(buf, offset)
    }

    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Makes every write so far durable, metadata (size, mtime) included.
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// The open image's metadata: the file the device really uses, even if
    /// its path now names another.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// Deallocates `[offset, offset + len)`; the range reads back as zero.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate_or_zero(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `[offset, offset + len)`, deallocating it when `unmap` allows.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        self.fallocate_or_zero(mode, offset, len)
    }

    /// Runs fallocate; where the filesystem lacks the mode, writes zeroes
    /// instead, so a discarded range reads back as zero on every host and a
    /// restored VM sees the same disk contents whatever filesystem holds it.
    fn fallocate_or_zero(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate only takes integers and an fd this struct owns; it touches no memory of ours.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => self.write_zeroes_slow(offset, len),
            _ => Err(err),
        }
    }

    fn write_zeroes_slow(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; usize::try_from(len).map_or(ZERO_CHUNK, |l| l.min(ZERO_CHUNK))];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Repeats `op` (preadv or pwritev) until every byte of `iov` moved,
/// advancing past what each call did; a call that moves nothing is an
/// error (end of file, which a sector range inside the disk never meets).
fn transfer_all(
    mut iov: &mut [libc::iovec],
    mut offset: u64,
    op: impl Fn(*const libc::iovec, libc::c_int, libc::off_t) -> isize,
) -> io::Result<()> {
    while !iov.is_empty() {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let n = op(iov.as_ptr(), iov.len() as libc::c_int, off);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut n = n as usize;
        offset += n as u64;
        while let Some(first) = iov.first_mut() {
            if n < first.iov_len {
                // SAFETY: moves the base within the same segment.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
                first.iov_len -= n;
                break;
            }
            n -= first.iov_len;
            iov = &mut iov[1..];
        }
    }
    Ok(())
}

fn open_hint(err: &io::Error, readonly: bool) -> &'static str {
    if err.raw_os_error() == Some(libc::EROFS) {
        return "it lies on a read-only filesystem: attach it with readonly=on";
    }
    match err.kind() {
        io::ErrorKind::NotFound => {
            "the file does not exist: fix the path, or create the image first (e.g. `truncate -s 1G PATH`)"
        }
        io::ErrorKind::PermissionDenied if !readonly => {
            "this user may not write it: fix its permissions, or attach it with readonly=on"
        }
        io::ErrorKind::PermissionDenied => "this user may not read it: fix its permissions",
        _ => "check that the path names an accessible raw image file",
    }
}
