//! One virtio-blk request: find its status byte, check the chain's layout,
//! parse the header and run it against the disk.
//!
//! The chain is treated as two byte streams (virtio 1.x requires devices not
//! to assume a particular split into descriptors): the device-readable
//! stream holds the 16-byte header and any data to the device, the
//! device-writable stream holds any data to the driver and ends with the
//! status byte, which is therefore the last byte of the last descriptor.

use std::collections::VecDeque;
use std::io;

use crate::{guest_warn, host_error};
use log::debug;
use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::{Disk, DIRECT_ALIGN, SECTOR_SHIFT, SECTOR_SIZE};
use crate::virtio::chain::{add_used, pop_chain, Chain};

pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
const HEADER_LEN: usize = 16;
/// `struct virtio_blk_discard_write_zeroes`: sector le64, num_sectors le32, flags le32.
const SEGMENT_LEN: usize = 16;
/// Bounce-buffer size: large requests are copied in pieces so a guest cannot
/// make the device allocate the whole request at once.
const IO_CHUNK: usize = 128 << 10;

/// Largest DISCARD / WRITE_ZEROES the device accepts (1 GiB): bounds the work
/// one request can cost when zeroes have to be written out.
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) >> SECTOR_SHIFT;
pub const MAX_WRITE_ZEROES_SECTORS: u32 = MAX_DISCARD_SECTORS;
/// Only one segment per DISCARD / WRITE_ZEROES, as Linux and QEMU use.
pub const MAX_DISCARD_SEG: u32 = 1;
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;

#[derive(Debug, Error)]
enum RequestError {
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is not inside guest RAM")]
    OutsideRam { index: usize, addr: u64, len: u32 },
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("a write request has {0} device-writable bytes before its status byte; the data to write must be device-readable (virtio 1.2, 5.2.6)")]
    WritableWriteData(usize),
    #[error("the chain has {0} readable bytes, fewer than the 16-byte request header")]
    ShortHeader(usize),
    #[error("the request's buffers are shorter than its data")]
    Exhausted,
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    #[error("flags {0:#x} are not supported for this request")]
    UnsupportedFlags(u32),
    #[error("{0} segments given, only {MAX_DISCARD_SEG} is supported")]
    TooManySegments(usize),
    #[error("{what} is {len} bytes, not a multiple of {unit}")]
    BadLength {
        what: &'static str,
        len: usize,
        unit: u64,
    },
    #[error("sectors {sector}+{sectors} lie beyond the disk's {capacity} sectors")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("{sectors} sectors exceed the per-request limit of {max}")]
    TooLarge { sectors: u32, max: u32 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("disk I/O failed: {0}")]
    Disk(io::Error),
    #[error("copying to or from guest RAM failed: {0}")]
    Guest(vm_memory::GuestMemoryError),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_)
            | RequestError::UnsupportedFlags(_)
            | RequestError::TooManySegments(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Serves every request the driver has made available on `queue`, until
/// the ring is empty with notifications re-enabled. Returns how many
/// requests were completed; the caller decides whether to interrupt the
/// driver (`Queue::needs_notification`). Both the in-process device and the
/// vhost-user daemon run their queues through this.
pub fn process_queue<M: GuestMemoryBackend>(
    queue: &mut Queue,
    mem: &M,
    disk: &Disk,
    id: &[u8; ID_BYTES],
) -> usize {
    let mut total = 0usize;
    let mut empty_rounds = 0;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            guest_warn!("virtio-blk: cannot suppress notifications: {e}");
        }
        let mut processed = 0usize;
        while let Some(chain) = pop_chain(queue, mem, &"virtio-blk") {
            let head = chain.head_index();
            let len = process(disk, id, mem, chain);
            if let Err(e) = add_used(queue, mem, head, len) {
                guest_warn!("virtio-blk: cannot return descriptor {head} to the driver: {e}");
            }
            processed += 1;
        }
        total += processed;
        empty_rounds = if processed == 0 { empty_rounds + 1 } else { 0 };
        match queue.enable_notification(mem) {
            Ok(false) => break,
            // One empty round is the driver publishing between our last
            // look and re-enabling notifications: look again.
            Ok(true) if empty_rounds >= 2 => {
                // The avail index promises chains pop_chain
                // refuses (it is over a queue ahead); retrying would spin.
                guest_warn!("virtio-blk: the driver's avail index is inconsistent; waiting for the next notification");
                break;
            }
            Ok(true) => {}
            Err(e) => {
                guest_warn!("virtio-blk: cannot re-enable notifications: {e}");
                break;
            }
        }
    }
    total
}

/// Runs the request in `chain` and writes its status. Returns the used
/// length: bytes written to the driver's buffers, status byte included, or
/// 0 when the chain has no status byte the device could write.
pub fn process<M: GuestMemoryBackend>(
    disk: &Disk,
    id: &[u8; ID_BYTES],
    mem: &M,
    chain: Chain<&M>,
) -> u32 {
    Request::from_chain(chain).run(disk, id, mem)
}

/// A request taken off the ring, to run now or on another thread.
pub struct Request {
    head: u16,
    descs: Vec<Descriptor>,
    /// The chain refers to an indirect table, which is never negotiated.
    indirect: bool,
}

impl Request {
    /// Walks the chain once: the guest may rewrite its descriptors while
    /// the request runs, so everything uses this copy, validated once.
    pub fn from_chain<M: GuestMemoryBackend>(mut chain: Chain<&M>) -> Request {
        let descs = chain.by_ref().collect();
        Request {
            head: chain.head_index(),
            descs,
            indirect: chain.met_indirect(),
        }
    }

    /// The head descriptor, which the used entry names.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Runs the request against `disk` and writes its status; returns the
    /// used length, as [`process`] does.
    pub fn run<M: GuestMemoryBackend>(&self, disk: &Disk, id: &[u8; ID_BYTES], mem: &M) -> u32 {
        if self.indirect {
            // Its status byte, the chain's last, is in the table, which is
            // not read: there is nothing to answer in.
            guest_warn!(
                "virtio-blk: chain at descriptor {} refers to an indirect descriptor table, but VIRTIO_F_INDIRECT_DESC is not offered; returned without processing",
                self.head
            );
            return 0;
        }
        run_descs(disk, id, mem, self.head, &self.descs)
    }
}

fn run_descs<M: GuestMemoryBackend>(
    disk: &Disk,
    id: &[u8; ID_BYTES],
    mem: &M,
    head: u16,
    descs: &[Descriptor],
) -> u32 {
    let Some(status_addr) = status_location(descs, mem) else {
        guest_warn!(
            "virtio-blk: chain at descriptor {head} ({} descriptors) has no device-writable status byte in guest RAM; returned without processing",
            descs.len()
        );
        return 0;
    };
    let (status, written) = match execute(disk, id, mem, descs) {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
        Err(e) => {
            match e {
                _ if e.status() == VIRTIO_BLK_S_UNSUPP as u8 => {
                    debug!("virtio-blk: request at descriptor {head}: {e}")
                }
                RequestError::Disk(_) => {
                    host_error!("virtio-blk: request at descriptor {head} failed: {e}")
                }
                _ => guest_warn!("virtio-blk: request at descriptor {head} failed: {e}"),
            }
            // The used length only promises bytes certainly written, so a
            // failed request reports the status byte alone.
            (e.status(), 0)
        }
    };
    if let Err(e) = mem.write_obj(status, status_addr) {
        guest_warn!("virtio-blk: chain at descriptor {head}: writing the status byte failed: {e}");
        return 0;
    }
    written.saturating_add(1)
}

/// The status byte: last byte of the last descriptor, which must end the
/// chain (a chain cut short by a loop or a bad index has no defined end),
/// be device-writable, non-empty and in guest RAM.
fn status_location<M: GuestMemoryBackend>(descs: &[Descriptor], mem: &M) -> Option<GuestAddress> {
    let last = descs.last()?;
    if last.has_next() || !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    GuestMemoryBackend::check_range(mem, addr, 1).then_some(addr)
}

/// Every buffer lies in guest RAM and readable buffers precede writable
/// ones (virtio 1.x, 2.7.4.2), so the streams below are well defined.
fn check_layout<M: GuestMemoryBackend>(descs: &[Descriptor], mem: &M) -> Result<(), RequestError> {
    let mut seen_writable = false;
    for (index, d) in descs.iter().enumerate() {
        let in_ram = d.addr().checked_add(u64::from(d.len())).is_some()
            && GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize);
        if !in_ram {
            return Err(RequestError::OutsideRam {
                index,
                addr: d.addr().0,
                len: d.len(),
            });
        }
        if d.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return Err(RequestError::ReadableAfterWritable);
        }
    }
    Ok(())
}

fn execute<M: GuestMemoryBackend>(
    disk: &Disk,
    id: &[u8; ID_BYTES],
    mem: &M,
    descs: &[Descriptor],
) -> Result<u32, RequestError> {
    check_layout(descs, mem)?;
    let (mut reader, mut writer) = GuestStream::split(mem, descs);

    if reader.remaining() < HEADER_LEN {
        return Err(RequestError::ShortHeader(reader.remaining()));
    }
    let mut header = [0u8; HEADER_LEN];
    reader.read(&mut header)?;
    let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());

    match request_type {
        VIRTIO_BLK_T_IN => {
            let len = writer.remaining();
            let offset = sector_range(disk, sector, len, "read data")?;
            if let Some(mut io) = writer.iovecs() {
                // SAFETY: every iovec is a guest RAM range `check_layout`
                // found inside a mapping that `mem` keeps alive (and the
                // guards pin) for the whole call.
                unsafe { disk.preadv_all(&mut io.iov, offset) }.map_err(RequestError::Disk)?;
                return Ok(stream_len(len));
            }
            with_bounce(|buf| {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(IO_CHUNK);
                    disk.read_exact_at(&mut buf[..n], offset + done as u64)
                        .map_err(RequestError::Disk)?;
                    writer.write(&buf[..n])?;
                    done += n;
                }
                Ok(stream_len(len))
            })
        }
        VIRTIO_BLK_T_OUT => {
            if writer.remaining() != 0 {
                return Err(RequestError::WritableWriteData(writer.remaining()));
            }
            if disk.readonly() {
                return Err(RequestError::ReadOnly);
            }
            let len = reader.remaining();
            let offset = sector_range(disk, sector, len, "write data")?;
            if let Some(mut io) = reader.iovecs() {
                // SAFETY: as for reads; the kernel only reads these ranges.
                unsafe { disk.pwritev_all(&mut io.iov, offset) }.map_err(RequestError::Disk)?;
                return Ok(0);
            }
            with_bounce(|buf| {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(IO_CHUNK);
                    reader.read(&mut buf[..n])?;
                    disk.write_all_at(&buf[..n], offset + done as u64)
                        .map_err(RequestError::Disk)?;
                    done += n;
                }
                Ok(0)
            })
        }
        VIRTIO_BLK_T_FLUSH => {
            disk.flush().map_err(RequestError::Disk)?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            // A buffer shorter than the id gets its prefix, as in QEMU.
            let n = writer.remaining().min(ID_BYTES);
            writer.write(&id[..n])?;
            Ok(stream_len(n))
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = request_type == VIRTIO_BLK_T_DISCARD;
            discard_or_zero(disk, &mut reader, discard)?;
            Ok(0)
        }
        other => Err(RequestError::UnsupportedType(other)),
    }
}

fn discard_or_zero<M: GuestMemoryBackend>(
    disk: &Disk,
    reader: &mut GuestStream<'_, M>,
    discard: bool,
) -> Result<(), RequestError> {
    if disk.readonly() {
        return Err(RequestError::ReadOnly);
    }
    let len = reader.remaining();
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN) {
        return Err(RequestError::BadLength {
            what: "the segment list",
            len,
            unit: SEGMENT_LEN as u64,
        });
    }
    if len / SEGMENT_LEN > MAX_DISCARD_SEG as usize {
        return Err(RequestError::TooManySegments(len / SEGMENT_LEN));
    }
    let mut seg = [0u8; SEGMENT_LEN];
    reader.read(&mut seg)?;
    let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap());
    let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap());
    let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap());

    // virtio 1.2, 5.2.6.2: unknown flags, and UNMAP on a discard, are UNSUPP.
    let allowed = if discard {
        0
    } else {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    };
    if flags & !allowed != 0 {
        return Err(RequestError::UnsupportedFlags(flags));
    }
    let max = if discard {
        MAX_DISCARD_SECTORS
    } else {
        MAX_WRITE_ZEROES_SECTORS
    };
    if sectors > max {
        return Err(RequestError::TooLarge { sectors, max });
    }
    let bytes = u64::from(sectors) << SECTOR_SHIFT;
    let offset = sector_range(disk, sector, bytes as usize, "the range")?;
    let result = if discard {
        disk.discard(offset, bytes)
    } else {
        disk.write_zeroes(
            offset,
            bytes,
            flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        )
    };
    result.map_err(RequestError::Disk)
}

/// Checks `len` bytes from `sector` are whole sectors inside the disk; returns the byte offset.
fn sector_range(
    disk: &Disk,
    sector: u64,
    len: usize,
    what: &'static str,
) -> Result<u64, RequestError> {
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::BadLength {
            what,
            len,
            unit: SECTOR_SIZE,
        });
    }
    let sectors = len as u64 >> SECTOR_SHIFT;
    let capacity = disk.capacity_sectors();
    match sector.checked_add(sectors) {
        // capacity fits in u64 bytes, so any sector <= capacity does too.
        Some(end) if end <= capacity => Ok(sector << SECTOR_SHIFT),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity,
        }),
    }
}

/// One direction of a chain as a byte stream, over buffers `check_layout`
/// found inside guest RAM.
struct GuestStream<'a, M> {
    mem: &'a M,
    bufs: VecDeque<(GuestAddress, usize)>,
}

impl<'a, M: GuestMemoryBackend> GuestStream<'a, M> {
    /// The device-readable stream, and the device-writable one without its
    /// final status byte.
    fn split(mem: &'a M, descs: &[Descriptor]) -> (Self, Self) {
        let mut readable = GuestStream {
            mem,
            bufs: VecDeque::new(),
        };
        let mut writable = GuestStream {
            mem,
            bufs: VecDeque::new(),
        };
        for d in descs.iter().filter(|d| d.len() > 0) {
            let s = if d.is_write_only() {
                &mut writable
            } else {
                &mut readable
            };
            s.bufs.push_back((d.addr(), d.len() as usize));
        }
        if let Some(last) = writable.bufs.back_mut() {
            last.1 -= 1;
        }
        (readable, writable)
    }

    fn remaining(&self) -> usize {
        self.bufs.iter().map(|b| b.1).sum()
    }

    /// Fills `buf` from the front of the stream; the caller checked `remaining()`.
    fn read(&mut self, buf: &mut [u8]) -> Result<(), RequestError> {
        let mut done = 0;
        while done < buf.len() {
            let (addr, n) = self.take(buf.len() - done)?;
            self.mem
                .read_slice(&mut buf[done..done + n], addr)
                .map_err(RequestError::Guest)?;
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), RequestError> {
        let mut done = 0;
        while done < buf.len() {
            let (addr, n) = self.take(buf.len() - done)?;
            self.mem
                .write_slice(&buf[done..done + n], addr)
                .map_err(RequestError::Guest)?;
            done += n;
        }
        Ok(())
    }

    /// The rest of the stream as iovecs straight into guest memory, for one
    /// preadv/pwritev instead of a copy through the bounce buffer. None when
    /// it spans more segments than one call takes.
    fn iovecs(&self) -> Option<GuestIovecs> {
        let mut io = GuestIovecs {
            iov: Vec::with_capacity(self.bufs.len()),
            _guards: Vec::with_capacity(self.bufs.len()),
        };
        for &(addr, len) in self.bufs.iter().filter(|b| b.1 > 0) {
            for slice in GuestMemoryBackend::get_slices(self.mem, addr, len) {
                let guard = slice.ok()?.ptr_guard_mut();
                io.iov.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: guard.len(),
                });
                io._guards.push(Box::new(guard));
            }
            if io.iov.len() > MAX_IOVECS {
                return None;
            }
        }
        Some(io)
    }

    /// Consumes up to `want` bytes of the front buffer.
    fn take(&mut self, want: usize) -> Result<(GuestAddress, usize), RequestError> {
        loop {
            let Some(front) = self.bufs.front_mut() else {
                return Err(RequestError::Exhausted);
            };
            if front.1 == 0 {
                self.bufs.pop_front();
                continue;
            }
            let n = want.min(front.1);
            let addr = front.0;
            // In RAM, so this cannot wrap.
            front.0 = front.0.unchecked_add(n as u64);
            front.1 -= n;
            return Ok((addr, n));
        }
    }
}

/// preadv/pwritev take at most IOV_MAX segments.
const MAX_IOVECS: usize = 1024;

/// Guest buffers as iovecs, with what keeps their pointers valid.
struct GuestIovecs {
    iov: Vec<libc::iovec>,
    _guards: Vec<Box<dyn std::any::Any>>,
}

/// One bounce buffer per thread, aligned for O_DIRECT, reused by every
/// request the thread serves (allocating 128 KiB per request cost an mmap
/// and a munmap each time).
struct Bounce {
    ptr: std::ptr::NonNull<u8>,
}

impl Bounce {
    const LAYOUT: std::alloc::Layout =
        match std::alloc::Layout::from_size_align(IO_CHUNK, DIRECT_ALIGN) {
            Ok(l) => l,
            Err(_) => panic!("IO_CHUNK and DIRECT_ALIGN make a valid layout"),
        };

    fn new() -> Bounce {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        let ptr = std::ptr::NonNull::new(p)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::LAYOUT));
        Bounce { ptr }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds IO_CHUNK initialised bytes, owned by
        // this value and borrowed mutably through it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), IO_CHUNK) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::LAYOUT) }
    }
}

thread_local! {
    static BOUNCE: std::cell::RefCell<Bounce> = std::cell::RefCell::new(Bounce::new());
}

fn with_bounce<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BOUNCE.with(|b| f(b.borrow_mut().as_mut_slice()))
}

/// A stream length as a used length; a chain carries under 4 GiB, so this never saturates.
fn stream_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
