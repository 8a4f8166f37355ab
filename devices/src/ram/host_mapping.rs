//! Host mappings of guest RAM that start on a huge-page boundary.
//!
//! KVM maps guest memory 2 MiB at a time only where the guest-physical and
//! host-virtual addresses agree modulo 2 MiB and the host page behind them
//! is huge. A plain mmap lands on any 4 KiB boundary, which leaves every
//! guest access to 4 KiB translations; so each region is placed inside a
//! larger reservation at an aligned address, as QEMU does.

use std::io;
use std::os::unix::io::RawFd;
use std::ptr::null_mut;
use std::sync::Arc;

use vm_memory::bitmap::{Bitmap, WithBitmapSlice};

/// One mapping this module made; unmapped on drop.
#[derive(Debug)]
pub struct HostMapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may touch it is governed by the
// GuestMemoryMmap built on it, which is itself Send + Sync.
unsafe impl Send for HostMapping {}
// SAFETY: as above.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Maps `len` bytes (`prot`, `flags`, `fd`/`offset` as for mmap) at an
    /// address aligned to `align`, a power of two.
    pub fn new(
        len: usize,
        prot: i32,
        flags: i32,
        fd: RawFd,
        offset: u64,
        align: usize,
    ) -> io::Result<HostMapping> {
        let reserve = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh, inaccessible anonymous reservation; nothing else uses it.
        let r = unsafe {
            libc::mmap(
                null_mut(),
                reserve,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        let start = (r + align - 1) & !(align - 1);
        // SAFETY: [start, start + len) lies inside the reservation made
        // above, which this function owns, so MAP_FIXED replaces nothing else.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                prot,
                flags | libc::MAP_FIXED,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: unmaps the reservation made above.
            unsafe { libc::munmap(r as *mut libc::c_void, reserve) };
            return Err(e);
        }
        // The reservation's unused head and tail go back.
        // SAFETY: both ranges are parts of the reservation outside [start, start + len).
        unsafe {
            if start > r {
                libc::munmap(r as *mut libc::c_void, start - r);
            }
            let (end, rend) = (start + len, r + reserve);
            if rend > end {
                libc::munmap(end as *mut libc::c_void, rend - end);
            }
        }
        Ok(HostMapping {
            addr: start as *mut u8,
            len,
        })
    }

    pub fn addr(&self) -> *mut u8 {
        self.addr
    }
}

/// Keeps a region's host mapping alive for as long as the region, and every
/// clone of the memory holding it, exists.
///
/// vm-memory does not unmap a region built on a pointer it did not map, and
/// the only per-region value it carries is the dirty bitmap: so the owner
/// travels in that slot. It tracks nothing (as `()` would).
#[derive(Clone, Debug)]
pub struct MappingLease(#[allow(dead_code)] Arc<HostMapping>);

impl MappingLease {
    pub fn new(mapping: HostMapping) -> Self {
        MappingLease(Arc::new(mapping))
    }
}

impl WithBitmapSlice<'_> for MappingLease {
    type S = ();
}

impl Bitmap for MappingLease {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is unmapped once.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_mapping_is_aligned_usable_and_unmapped_on_drop() {
        let align = 2 << 20;
        for len in [4096, 3 << 20, 64 << 20] {
            let m = HostMapping::new(
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
                align,
            )
            .unwrap();
            assert_eq!(m.addr() as usize % align, 0);
            // SAFETY: the mapping is len bytes of readable, writable memory.
            unsafe {
                *m.addr() = 7;
                *m.addr().add(len - 1) = 9;
                assert_eq!(*m.addr().add(len - 1), 9);
            }
            let addr = m.addr();
            drop(m);
            // mincore fails with ENOMEM on an address that is no longer mapped.
            let mut v = [0u8; 1];
            // SAFETY: mincore only inspects the page tables.
            let rc = unsafe { libc::mincore(addr as *mut libc::c_void, 4096, v.as_mut_ptr()) };
            assert_eq!(rc, -1);
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOMEM)
            );
        }
    }
}
