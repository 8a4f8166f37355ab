//! Discarding guest RAM: the operation balloon and virtio-mem depend on.

use std::io;
use std::os::unix::io::AsRawFd;

use log::debug;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::backing::BackingKind;
use super::guest_ram::GuestRam;

#[derive(Debug, Error)]
pub enum DiscardError {
    #[error("cannot discard guest RAM {addr:#x}+{len:#x}: the range is not inside one RAM region")]
    OutOfRange { addr: u64, len: u64 },
    #[error("cannot discard guest RAM {addr:#x}+{len:#x}: not aligned to the {granularity:#x}-byte pages of {backing}")]
    Unaligned {
        addr: u64,
        len: u64,
        granularity: u64,
        backing: String,
    },
    #[error("cannot discard guest RAM {addr:#x}+{len:#x} on {backing}: a private file mapping would show the file's content again instead of zeroes; use share=on or anonymous RAM")]
    PrivateFileBacked {
        addr: u64,
        len: u64,
        backing: String,
    },
    #[error("discarding guest RAM {addr:#x}+{len:#x} on {backing}: {op} failed: {source}")]
    Io {
        addr: u64,
        len: u64,
        backing: String,
        op: &'static str,
        source: io::Error,
    },
}

impl GuestRam {
    /// Makes `[addr, addr + len)` read back as zero and gives its host memory
    /// back: MADV_DONTNEED on private anonymous RAM, a punched hole in the fd
    /// for shared RAM, both for a private memfd. Refused on private file-backed
    /// RAM, where the file would show through.
    pub fn discard(&self, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
        let region = self
            .region_of(addr, len)
            .ok_or(DiscardError::OutOfRange { addr: addr.0, len })?;
        let backing = &region.backing;
        let gran = backing.discard_granularity();
        if len == 0 || !addr.0.is_multiple_of(gran) || !len.is_multiple_of(gran) {
            return Err(DiscardError::Unaligned {
                addr: addr.0,
                len,
                granularity: gran,
                backing: backing.to_string(),
            });
        }
        if !backing.discard_reads_zero() {
            return Err(DiscardError::PrivateFileBacked {
                addr: addr.0,
                len,
                backing: backing.to_string(),
            });
        }
        let io_err = |op, source| DiscardError::Io {
            addr: addr.0,
            len,
            backing: backing.to_string(),
            op,
            source,
        };
        let spec = backing.spec();
        if !spec.share {
            debug_assert!(!matches!(spec.kind, BackingKind::File(_)));
            let host = self
                .memory()
                .get_host_address(addr)
                .map_err(|e| io_err("host address lookup", io::Error::other(e.to_string())))?;
            // SAFETY: the range lies inside one mapping owned by this GuestRam
            // (checked above); MADV_DONTNEED only drops its pages.
            let rc = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
            if rc != 0 {
                return Err(io_err("madvise(MADV_DONTNEED)", io::Error::last_os_error()));
            }
        }
        // Shared RAM lives in the fd; a private memfd's fd still holds the pages
        // the guest read, and only this process maps it, so punching is safe.
        if spec.share || matches!(spec.kind, BackingKind::Memfd) {
            let file = region.file.as_ref().ok_or_else(|| {
                io_err(
                    "punch hole",
                    io::Error::other("fd-backed RAM without an fd"),
                )
            })?;
            let offset = region.file_offset.unwrap_or(0) + (addr.0 - region.guest_base.0);
            // SAFETY: fallocate on a valid fd with in-range values; no memory is touched.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(io_err("fallocate(PUNCH_HOLE)", io::Error::last_os_error()));
            }
        }
        debug!("discarded {:#x}+{len:#x} ({backing})", addr.0);
        Ok(())
    }
}
