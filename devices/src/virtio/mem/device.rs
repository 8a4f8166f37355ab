//! The virtio-mem device model (virtio 1.2, section 5.15).
//!
//! The device owns one guest-physical region, mapped at start with its own
//! backing. The guest asks to plug and unplug blocks of it through one
//! request queue; the device keeps the plugged-block bitmap and discards
//! every block it unplugs, so that unplugged memory costs no host memory and
//! a block plugged later reads as zero.

use std::ops::Range;
use std::sync::Arc;

use crate::{guest_warn, host_error};
use log::{debug, info, warn};
use thiserror::Error;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::bitmap::BlockBitmap;
use super::config::{MemConfig, MIN_BLOCK_SIZE};
use crate::ram::{DiscardError, GuestMemoryMmap, GuestRam, RegionRole};
use crate::size::format_size;
use crate::virtio::chain::{add_used, pop_chain, Chain};
use crate::virtio::{
    read_config_bytes, ActivateError, VirtioCommon, VirtioDevice, TYPE_MEM, VIRTIO_RING_F_EVENT_IDX,
};

/// `node_id` is an ACPI proximity domain. Not offered: the VMM has no NUMA.
pub const VIRTIO_MEM_F_ACPI_PXM: u64 = 1 << 0;
/// The driver does not access unplugged memory.
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 128;

pub const VIRTIO_MEM_REQ_PLUG: u16 = 0;
pub const VIRTIO_MEM_REQ_UNPLUG: u16 = 1;
pub const VIRTIO_MEM_REQ_UNPLUG_ALL: u16 = 2;
pub const VIRTIO_MEM_REQ_STATE: u16 = 3;

pub const VIRTIO_MEM_RESP_ACK: u16 = 0;
pub const VIRTIO_MEM_RESP_NACK: u16 = 1;
pub const VIRTIO_MEM_RESP_BUSY: u16 = 2;
pub const VIRTIO_MEM_RESP_ERROR: u16 = 3;

pub const VIRTIO_MEM_STATE_PLUGGED: u16 = 0;
pub const VIRTIO_MEM_STATE_UNPLUGGED: u16 = 1;
pub const VIRTIO_MEM_STATE_MIXED: u16 = 2;

/// `struct virtio_mem_config`.
pub const CONFIG_SIZE: usize = 56;
/// `struct virtio_mem_req`: type, padding, then addr, nb_blocks and padding.
pub const REQ_SIZE: usize = 24;
/// The type and padding of a request: all UNPLUG_ALL needs.
pub const REQ_HEADER_SIZE: usize = 8;
/// `struct virtio_mem_resp`: type, padding, state.
pub const RESP_SIZE: usize = 10;
/// The type and padding of a response: all an answer other than STATE needs.
pub const RESP_HEADER_SIZE: usize = 8;

#[derive(Debug, Error)]
pub enum MemError {
    #[error("{device}: block-size={} is not a power of two; use a power of two of at least {}, e.g. block-size=2M", format_size(*block_size), format_size(MIN_BLOCK_SIZE))]
    BlockSizeNotPowerOfTwo { device: String, block_size: u64 },
    #[error("{device}: block-size={} is smaller than {}: {why}; use block-size={} or larger", format_size(*block_size), format_size(*min), format_size(*min))]
    BlockSizeTooSmall {
        device: String,
        block_size: u64,
        min: u64,
        why: String,
    },
    #[error("{device}: size={} is not a positive multiple of block-size={}; use a size in whole blocks", format_size(*size), format_size(*block_size))]
    SizeNotMultiple {
        device: String,
        size: u64,
        block_size: u64,
    },
    #[error("{device}: requested={} is larger than size={}; request at most the size of the device's region", format_size(*requested), format_size(*size))]
    RequestedTooLarge {
        device: String,
        requested: u64,
        size: u64,
    },
    #[error("{device}: requested={} is not a multiple of block-size={}; request whole blocks", format_size(*requested), format_size(*block_size))]
    RequestedNotMultiple {
        device: String,
        requested: u64,
        block_size: u64,
    },
    #[error("{device}: its region at guest address {addr:#x} is not aligned to block-size={}; place the region at a multiple of the block size", format_size(*block_size))]
    AddrUnaligned {
        device: String,
        addr: u64,
        block_size: u64,
    },
    #[error("{device}: guest RAM has no region for this device; map its region (role virtio-mem '{id}') before creating the device")]
    RegionMissing { device: String, id: String },
    #[error("{device}: its region is mapped at {found_addr:#x}+{found_size:#x}, but the device expects {addr:#x}+{size:#x}; map exactly one range of size= at the device's address")]
    RegionMismatch {
        device: String,
        addr: u64,
        size: u64,
        found_addr: u64,
        found_size: u64,
    },
    #[error("{device}: its region is mapped in {count} pieces; map it as one range")]
    RegionSplit { device: String, count: usize },
    #[error("{device}: clearing its region at start failed: {source}")]
    InitialDiscard {
        device: String,
        #[source]
        source: DiscardError,
    },
}

/// One request the driver sent, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Plug { addr: u64, nb_blocks: u16 },
    Unplug { addr: u64, nb_blocks: u16 },
    UnplugAll,
    State { addr: u64, nb_blocks: u16 },
}

/// The answer: a response type, and for STATE the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Response {
    kind: u16,
    state: u16,
}

impl Response {
    fn of(kind: u16) -> Self {
        Response { kind, state: 0 }
    }

    fn bytes(self) -> [u8; RESP_SIZE] {
        let mut b = [0u8; RESP_SIZE];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[8..10].copy_from_slice(&self.state.to_le_bytes());
        b
    }
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// The virtio-mem device.
pub struct Mem {
    pub(super) common: VirtioCommon,
    /// The configuration the device was created with (`requested` is the
    /// initial request; the current one is `requested_size`).
    pub(super) config: MemConfig,
    pub(super) addr: GuestAddress,
    pub(super) usable_region_size: u64,
    pub(super) requested_size: u64,
    pub(super) plugged: BlockBitmap,
    /// Told the plugged size in bytes whenever requests change it: QMP's
    /// MEMORY_DEVICE_SIZE_CHANGE. Not saved.
    size_listener: Option<Box<dyn Fn(u64) + Send>>,
}

impl Mem {
    /// Creates the device for the region `config` describes, mapped in `ram`
    /// at `addr`, with nothing plugged. The whole region is discarded so that
    /// every block reads as zero when the guest first plugs it, whatever a
    /// shared file backing held before.
    pub fn new(
        config: &MemConfig,
        addr: GuestAddress,
        ram: Arc<GuestRam>,
    ) -> Result<Mem, MemError> {
        let dev = Self::build(config, addr, ram, config.requested)?;
        let region = dev.region_of(&dev.common.ram);
        if region.backing.discard_reads_zero() {
            dev.common
                .ram
                .discard(addr, config.size)
                .map_err(|source| MemError::InitialDiscard {
                    device: config.device_name(),
                    source,
                })?;
        } else {
            // The RAM policy refuses this backing before anything starts; only a
            // caller that skipped it gets here, and unplug will answer ERROR.
            warn!(
                "{}: backing {} cannot discard; unplugged blocks will show the file's content",
                config.device_name(),
                region.backing
            );
        }
        Ok(dev)
    }

    /// Validates the configuration against the mapped RAM and builds the
    /// device with nothing plugged and no memory touched (restore uses it too).
    pub(super) fn build(
        config: &MemConfig,
        addr: GuestAddress,
        ram: Arc<GuestRam>,
        requested: u64,
    ) -> Result<Mem, MemError> {
        let device = config.device_name();
        let bs = config.block_size;
        if !bs.is_power_of_two() {
            return Err(MemError::BlockSizeNotPowerOfTwo {
                device,
                block_size: bs,
            });
        }
        if bs < MIN_BLOCK_SIZE {
            return Err(MemError::BlockSizeTooSmall {
                device,
                block_size: bs,
                min: MIN_BLOCK_SIZE,
                why: "Linux plugs memory in pageblocks of 2M at least".into(),
            });
        }
        if config.size == 0 || !config.size.is_multiple_of(bs) {
            return Err(MemError::SizeNotMultiple {
                device,
                size: config.size,
                block_size: bs,
            });
        }
        check_requested(config, requested)?;
        if !addr.0.is_multiple_of(bs) {
            return Err(MemError::AddrUnaligned {
                device,
                addr: addr.0,
                block_size: bs,
            });
        }
        let role = RegionRole::VirtioMem(config.id.clone());
        let regions: Vec<_> = ram.regions().iter().filter(|r| r.role == role).collect();
        let region = match regions.as_slice() {
            [] => {
                return Err(MemError::RegionMissing {
                    device,
                    id: config.id.clone(),
                })
            }
            [r] => *r,
            _ => {
                return Err(MemError::RegionSplit {
                    device,
                    count: regions.len(),
                })
            }
        };
        if region.guest_base != addr || region.size != config.size {
            return Err(MemError::RegionMismatch {
                device,
                addr: addr.0,
                size: config.size,
                found_addr: region.guest_base.0,
                found_size: region.size,
            });
        }
        let granularity = region.backing.discard_granularity();
        if bs < granularity {
            return Err(MemError::BlockSizeTooSmall {
                device,
                block_size: bs,
                min: granularity,
                why: format!(
                    "unplugging discards whole pages of the backing ({})",
                    region.backing
                ),
            });
        }
        let blocks = usize::try_from(config.size / bs).expect("block count fits in usize");
        let offered = VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE | VIRTIO_RING_F_EVENT_IDX;
        Ok(Mem {
            common: VirtioCommon::new(TYPE_MEM, offered, &[QUEUE_SIZE], ram),
            config: config.clone(),
            addr,
            // The whole region stays usable: it is mapped once at start with
            // MAP_NORESERVE, so a larger usable area costs the host nothing, and
            // Linux only adds memory blocks where it actually plugs.
            usable_region_size: config.size,
            requested_size: requested,
            plugged: BlockBitmap::new(blocks),
            size_listener: None,
        })
    }

    fn region_of<'a>(&self, ram: &'a GuestRam) -> &'a crate::ram::RamRegion {
        ram.region_of(self.addr, self.config.size)
            .expect("the region was checked when the device was built")
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The configuration the device was created with.
    pub fn config(&self) -> &MemConfig {
        &self.config
    }

    pub fn addr(&self) -> GuestAddress {
        self.addr
    }

    pub fn region_size(&self) -> u64 {
        self.config.size
    }

    pub fn usable_region_size(&self) -> u64 {
        self.usable_region_size
    }

    pub fn block_size(&self) -> u64 {
        self.config.block_size
    }

    pub fn plugged_size(&self) -> u64 {
        self.plugged.count() as u64 * self.config.block_size
    }

    pub fn requested_size(&self) -> u64 {
        self.requested_size
    }

    /// Whether any block is plugged: a template cannot be created then,
    /// because plugged memory is not part of the template's RAM file.
    pub fn has_plugged_memory(&self) -> bool {
        self.plugged.count() > 0
    }

    /// The plugged memory as maximal guest ranges `(address, length)`, in order.
    pub fn plugged_ranges(&self) -> Vec<(GuestAddress, u64)> {
        self.plugged
            .runs()
            .into_iter()
            .map(|r| {
                let bs = self.config.block_size;
                (
                    GuestAddress(self.addr.0 + r.start as u64 * bs),
                    (r.end - r.start) as u64 * bs,
                )
            })
            .collect()
    }

    /// Calls `f` with the plugged size in bytes each time the guest's
    /// requests change it.
    pub fn set_size_listener(&mut self, f: Box<dyn Fn(u64) + Send>) {
        self.size_listener = Some(f);
    }

    /// Asks the guest to plug or unplug until `bytes` are plugged (a control
    /// command). Raises a configuration interrupt when the request changes.
    pub fn set_requested(&mut self, bytes: u64) -> Result<(), MemError> {
        check_requested(&self.config, bytes)?;
        if bytes != self.requested_size {
            info!(
                "{}: requested size {} -> {}",
                self.config.device_name(),
                format_size(self.requested_size),
                format_size(bytes)
            );
            self.requested_size = bytes;
            self.common.notify_config();
        }
        Ok(())
    }

    /// Unplugs every block and discards the region: what a VM reset does, so
    /// the guest starts over with nothing plugged. On failure nothing changed.
    pub fn unplug_all(&mut self) -> Result<(), DiscardError> {
        if self.plugged.count() == 0 {
            return Ok(());
        }
        self.common.ram.discard(self.addr, self.config.size)?;
        self.plugged.clear_all();
        self.plugged_size_changed();
        Ok(())
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..8].copy_from_slice(&self.config.block_size.to_le_bytes());
        // node_id (8..10) stays 0: VIRTIO_MEM_F_ACPI_PXM is not offered.
        c[16..24].copy_from_slice(&self.addr.0.to_le_bytes());
        c[24..32].copy_from_slice(&self.config.size.to_le_bytes());
        c[32..40].copy_from_slice(&self.usable_region_size.to_le_bytes());
        c[40..48].copy_from_slice(&self.plugged_size().to_le_bytes());
        c[48..56].copy_from_slice(&self.requested_size.to_le_bytes());
        c
    }

    /// plugged_size changed under the driver: the spec sends no interrupt
    /// for it, but the generation changes so a driver reading the 64-bit
    /// field in two halves retries instead of mixing old and new.
    fn plugged_size_changed(&mut self) {
        self.common.config_generation = self.common.config_generation.wrapping_add(1);
    }

    /// The blocks `[addr, addr + nb_blocks * block_size)` cover, if the range
    /// is block-aligned, non-empty and inside the usable region.
    fn block_range(&self, addr: u64, nb_blocks: u16) -> Option<Range<usize>> {
        let bs = self.config.block_size;
        let len = u64::from(nb_blocks).checked_mul(bs)?;
        let end = addr.checked_add(len)?;
        if nb_blocks == 0
            || !addr.is_multiple_of(bs)
            || addr < self.addr.0
            || end > self.addr.0 + self.usable_region_size
        {
            return None;
        }
        let first = ((addr - self.addr.0) / bs) as usize;
        Some(first..first + usize::from(nb_blocks))
    }

    fn execute(&mut self, req: Request) -> Response {
        let device = self.config.device_name();
        match req {
            Request::Plug { addr, nb_blocks } => {
                let Some(blocks) = self.block_range(addr, nb_blocks) else {
                    debug!("{device}: PLUG {addr:#x} x{nb_blocks}: not a range of usable blocks");
                    return Response::of(VIRTIO_MEM_RESP_ERROR);
                };
                let size = u64::from(nb_blocks) * self.config.block_size;
                // Checked before the block states, as QEMU does, so a driver
                // over its budget hears NACK (try later) rather than ERROR.
                if self.plugged_size() + size > self.requested_size {
                    debug!(
                        "{device}: PLUG {addr:#x} x{nb_blocks}: would exceed the requested size"
                    );
                    return Response::of(VIRTIO_MEM_RESP_NACK);
                }
                if self.plugged.count_in(blocks.clone()) != 0 {
                    debug!(
                        "{device}: PLUG {addr:#x} x{nb_blocks}: some blocks are already plugged"
                    );
                    return Response::of(VIRTIO_MEM_RESP_ERROR);
                }
                // Unplugged blocks were discarded (or never touched), so they read as zero.
                self.plugged.assign(blocks, true);
                self.plugged_size_changed();
                Response::of(VIRTIO_MEM_RESP_ACK)
            }
            Request::Unplug { addr, nb_blocks } => {
                let Some(blocks) = self.block_range(addr, nb_blocks) else {
                    debug!("{device}: UNPLUG {addr:#x} x{nb_blocks}: not a range of usable blocks");
                    return Response::of(VIRTIO_MEM_RESP_ERROR);
                };
                if self.plugged.count_in(blocks.clone()) != blocks.len() {
                    debug!("{device}: UNPLUG {addr:#x} x{nb_blocks}: some blocks are not plugged");
                    return Response::of(VIRTIO_MEM_RESP_ERROR);
                }
                let size = u64::from(nb_blocks) * self.config.block_size;
                if let Err(e) = self.common.ram.discard(GuestAddress(addr), size) {
                    // The blocks stay plugged: their memory was not given back,
                    // and forgetting them would let a later PLUG hand out
                    // memory that does not read as zero.
                    host_error!("{device}: UNPLUG {addr:#x} x{nb_blocks} refused: {e}");
                    return Response::of(VIRTIO_MEM_RESP_ERROR);
                }
                self.plugged.assign(blocks, false);
                self.plugged_size_changed();
                Response::of(VIRTIO_MEM_RESP_ACK)
            }
            Request::UnplugAll => match self.unplug_all() {
                Ok(()) => Response::of(VIRTIO_MEM_RESP_ACK),
                Err(e) => {
                    // BUSY is the only refusal the spec gives UNPLUG_ALL, and it
                    // requires the state unchanged, which unplug_all guarantees.
                    host_error!("{device}: UNPLUG_ALL refused: {e}");
                    Response::of(VIRTIO_MEM_RESP_BUSY)
                }
            },
            Request::State { addr, nb_blocks } => {
                let Some(blocks) = self.block_range(addr, nb_blocks) else {
                    debug!("{device}: STATE {addr:#x} x{nb_blocks}: not a range of usable blocks");
                    return Response::of(VIRTIO_MEM_RESP_ERROR);
                };
                let n = self.plugged.count_in(blocks.clone());
                let state = if n == blocks.len() {
                    VIRTIO_MEM_STATE_PLUGGED
                } else if n == 0 {
                    VIRTIO_MEM_STATE_UNPLUGGED
                } else {
                    VIRTIO_MEM_STATE_MIXED
                };
                Response {
                    kind: VIRTIO_MEM_RESP_ACK,
                    state,
                }
            }
        }
    }

    /// Handles one chain; returns the number of bytes written for the used ring.
    fn process_chain(&mut self, mem: &GuestMemoryMmap, chain: Chain<&GuestMemoryMmap>) -> u32 {
        let device = self.config.device_name();
        let head = chain.head_index();
        let (readable, writable) = match split_chain(chain) {
            Ok(s) => s,
            Err(why) => {
                guest_warn!("{device}: chain {head}: {why}; returned unanswered");
                return 0;
            }
        };

        // The answer must fit before the request runs: a plug or unplug the
        // driver never hears about would leave the two sides disagreeing.
        let capacity: u64 = writable.iter().map(|s| s.len).sum();
        if capacity < RESP_HEADER_SIZE as u64 {
            guest_warn!("{device}: chain {head}: response buffer of {capacity} bytes, needs at least {RESP_HEADER_SIZE}; returned unanswered");
            return 0;
        }
        let resp_len = if capacity >= RESP_SIZE as u64 {
            RESP_SIZE
        } else {
            RESP_HEADER_SIZE
        };
        if let Err(why) = check_writable(mem, &writable, resp_len) {
            guest_warn!("{device}: chain {head}: {why}; returned unanswered");
            return 0;
        }

        let response = match read_request(mem, &readable) {
            Err(why) => {
                guest_warn!("{device}: chain {head}: {why}; answered ERROR");
                Response::of(VIRTIO_MEM_RESP_ERROR)
            }
            Ok(Request::State { .. }) if resp_len < RESP_SIZE => {
                guest_warn!("{device}: chain {head}: STATE needs a {RESP_SIZE}-byte response buffer, got {capacity}; answered ERROR");
                Response::of(VIRTIO_MEM_RESP_ERROR)
            }
            Ok(req) => self.execute(req),
        };

        let bytes = response.bytes();
        match write_segments(mem, &writable, &bytes[..resp_len]) {
            Ok(()) => resp_len as u32,
            Err(why) => {
                // Checked above; only a concurrent remap could get here.
                guest_warn!("{device}: chain {head}: writing the response: {why}");
                0
            }
        }
    }

    fn process_queue(&mut self) {
        let ram = self.common.ram.clone();
        let mem = ram.memory();
        let device = self.config.device_name();
        let mut used = false;
        loop {
            let mut handled = 0usize;
            while let Some(chain) = pop_chain(&mut self.common.queues[0], mem, &device) {
                let head = chain.head_index();
                let len = self.process_chain(mem, chain);
                handled += 1;
                match add_used(&mut self.common.queues[0], mem, head, len) {
                    Ok(()) => used = true,
                    // A head index outside the table: there is no slot to return it in.
                    Err(e) => guest_warn!("{device}: chain {head}: cannot return it: {e}"),
                }
            }
            match self.common.queues[0].enable_notification(mem) {
                Ok(true) if handled > 0 => continue,
                Ok(true) => {
                    // More is announced but nothing can be popped: the avail
                    // index is corrupt. Stop rather than spin.
                    guest_warn!(
                        "{device}: the available ring index is invalid; device needs reset"
                    );
                    self.common.set_needs_reset();
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    guest_warn!(
                        "{device}: the available ring is unreadable: {e}; device needs reset"
                    );
                    self.common.set_needs_reset();
                    break;
                }
            }
        }
        if used {
            self.common.notify_queue(0);
        }
    }
}

fn check_requested(config: &MemConfig, requested: u64) -> Result<(), MemError> {
    if requested > config.size {
        return Err(MemError::RequestedTooLarge {
            device: config.device_name(),
            requested,
            size: config.size,
        });
    }
    if !requested.is_multiple_of(config.block_size) {
        return Err(MemError::RequestedNotMultiple {
            device: config.device_name(),
            requested,
            block_size: config.block_size,
        });
    }
    Ok(())
}

/// Splits a chain into its device-readable and device-writable buffers,
/// refusing chains that are broken or out of order.
fn split_chain(mut chain: Chain<&GuestMemoryMmap>) -> Result<(Vec<Segment>, Vec<Segment>), String> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut last_has_next = true;
    for desc in chain.by_ref() {
        last_has_next = desc.has_next();
        let seg = Segment {
            addr: desc.addr(),
            len: u64::from(desc.len()),
        };
        if desc.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return Err("a device-readable buffer follows a device-writable one".into());
        }
    }
    if chain.met_indirect() {
        return Err("the chain refers to an indirect descriptor table, but VIRTIO_F_INDIRECT_DESC is not offered".into());
    }
    // The chain iterator stops silently on a loop, a next index past the
    // table, an unreadable descriptor or a total length past 4 GiB; all of
    // them leave the last descriptor it yielded still pointing onwards.
    if last_has_next {
        return Err("the descriptor chain is broken (a loop, a bad next index, an unreadable descriptor or an oversized chain)".into());
    }
    Ok((readable, writable))
}

/// Checks that the first `len` bytes of `segs` lie in guest RAM.
fn check_writable(mem: &GuestMemoryMmap, segs: &[Segment], len: usize) -> Result<(), String> {
    let mut left = len as u64;
    for s in segs {
        if left == 0 {
            break;
        }
        let n = s.len.min(left);
        if n > 0 && !GuestMemoryBackend::check_range(mem, s.addr, n as usize) {
            return Err(format!(
                "response buffer {:#x}+{n:#x} is outside guest RAM",
                s.addr.0
            ));
        }
        left -= n;
    }
    Ok(())
}

fn write_segments(mem: &GuestMemoryMmap, segs: &[Segment], mut data: &[u8]) -> Result<(), String> {
    for s in segs {
        if data.is_empty() {
            break;
        }
        let n = (s.len.min(data.len() as u64)) as usize;
        mem.write_slice(&data[..n], s.addr)
            .map_err(|e| format!("response buffer {:#x}+{n:#x}: {e}", s.addr.0))?;
        data = &data[n..];
    }
    Ok(())
}

/// Gathers up to `buf.len()` bytes from `segs`; returns how many there were.
fn read_segments(mem: &GuestMemoryMmap, segs: &[Segment], buf: &mut [u8]) -> Result<usize, String> {
    let mut at = 0;
    for s in segs {
        if at == buf.len() {
            break;
        }
        let n = (s.len.min((buf.len() - at) as u64)) as usize;
        mem.read_slice(&mut buf[at..at + n], s.addr)
            .map_err(|_| format!("request buffer {:#x}+{n:#x} is outside guest RAM", s.addr.0))?;
        at += n;
    }
    Ok(at)
}

fn read_request(mem: &GuestMemoryMmap, segs: &[Segment]) -> Result<Request, String> {
    let mut buf = [0u8; REQ_SIZE];
    let got = read_segments(mem, segs, &mut buf)?;
    if got < REQ_HEADER_SIZE {
        return Err(format!(
            "request of {got} bytes is shorter than its {REQ_HEADER_SIZE}-byte header"
        ));
    }
    let kind = u16::from_le_bytes([buf[0], buf[1]]);
    let addr = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let nb_blocks = u16::from_le_bytes([buf[16], buf[17]]);
    let needs_body = |req: Request| {
        if got < REQ_SIZE {
            Err(format!(
                "request of type {kind} has {got} bytes, needs {REQ_SIZE}"
            ))
        } else {
            Ok(req)
        }
    };
    match kind {
        VIRTIO_MEM_REQ_PLUG => needs_body(Request::Plug { addr, nb_blocks }),
        VIRTIO_MEM_REQ_UNPLUG => needs_body(Request::Unplug { addr, nb_blocks }),
        VIRTIO_MEM_REQ_UNPLUG_ALL => Ok(Request::UnplugAll),
        VIRTIO_MEM_REQ_STATE => needs_body(Request::State { addr, nb_blocks }),
        _ => Err(format!("unknown request type {kind}")),
    }
}

impl VirtioDevice for Mem {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(
            "{}: driver wrote {} bytes at config offset {offset:#x}; the configuration is read-only, ignored",
            self.config.device_name(),
            data.len()
        );
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.common.prepare_activation()?;
        if !self.common.has_feature(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) {
            // Such a driver may read unplugged memory; that is allowed and reads
            // zero here, so the device still works.
            info!(
                "{}: driver did not accept VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE (Linux before 5.16)",
                self.config.device_name()
            );
        }
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index != 0 {
            guest_warn!(
                "{}: notification for queue {index}, which does not exist; ignored",
                self.config.device_name()
            );
            return;
        }
        if !self.common.activated {
            guest_warn!(
                "{}: queue notified before DRIVER_OK; ignored",
                self.config.device_name()
            );
            return;
        }
        if !self.common.queues[0].ready() {
            // Its ring addresses are unset: touching them would write guest memory at 0.
            guest_warn!(
                "{}: queue notified but never made ready; ignored",
                self.config.device_name()
            );
            return;
        }
        let before = self.plugged.count();
        self.process_queue();
        if self.plugged.count() != before {
            info!(
                "{}: {} plugged (requested {})",
                self.config.device_name(),
                format_size(self.plugged_size()),
                format_size(self.requested_size)
            );
            if let Some(f) = &self.size_listener {
                f(self.plugged_size());
            }
        }
    }

    fn reset(&mut self) {
        // Plugged blocks survive a device reset (the guest's memory is still
        // in them); a re-probing driver unplugs them with UNPLUG_ALL.
        self.common.reset();
    }
}
