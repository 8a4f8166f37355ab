//! The balloon device model: queues, config space and what each queue does
//! to guest RAM.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::{guest_warn, host_error};
use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::config::BalloonConfig;
use crate::ram::{DiscardError, GuestMemoryMmap, GuestRam, RegionRole, PAGE_SIZE};
use crate::size::format_size;
use crate::virtio::chain::{add_used, pop_chain, Chain};
use crate::virtio::counter::bump;
use crate::virtio::{
    read_config_bytes, ActivateError, VirtioCommon, VirtioDevice, TYPE_BALLOON,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The device has a statistics queue (virtio 1.x, 5.5.3).
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// The driver deflates the balloon when the guest runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// The device has a free page reporting queue.
pub const VIRTIO_BALLOON_F_PAGE_REPORTING: u64 = 1 << 5;

/// Largest queue size offered for every balloon queue.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// `num_pages`, `actual`, `free_page_hint_cmd_id`, `poison_val`: four le32.
pub const CONFIG_SPACE_SIZE: usize = 16;
const ACTUAL_OFFSET: usize = 4;

/// Balloon PFNs are always in 4 KiB units, whatever the guest's page size.
const PFN_SHIFT: u32 = 12;
const PFN_BYTES: u64 = 4;
/// Largest PFN array accepted in one chain: 1024 PFNs, four times what
/// Linux and FreeBSD send (256). Each PFN can cost a discard, and a chain
/// over the cap is refused whole, so that one notification (a queue full
/// of chains) stays a fraction of a second of the device thread's time:
/// with 1 MiB arrays, 255 chains held it for seconds (found by fuzzing),
/// and could have for minutes.
const MAX_PFNS_PER_CHAIN: u64 = 1024;
const MAX_PFN_BYTES_PER_CHAIN: u64 = MAX_PFNS_PER_CHAIN * PFN_BYTES;
/// Bytes read from guest memory at a time while walking a PFN array.
const PFN_READ_CHUNK: usize = 1024;

/// `struct virtio_balloon_stat { le16 tag; le64 val; }`, packed.
const STAT_ENTRY_BYTES: usize = 10;
/// Largest stats buffer accepted. Linux sends one entry per tag it knows
/// (16 today); this leaves room for many more without letting a guest make
/// the device copy megabytes.
pub const MAX_STATS_BYTES: usize = 4096;
/// Most distinct tags one stats buffer (and so a saved state) can hold.
pub const MAX_STATS_ENTRIES: usize = MAX_STATS_BYTES / STAT_ENTRY_BYTES;

/// Memory statistics tags (virtio 1.x, 5.5.6.3; the last six from Linux 6.12).
pub const VIRTIO_BALLOON_S_SWAP_IN: u16 = 0;
pub const VIRTIO_BALLOON_S_SWAP_OUT: u16 = 1;
pub const VIRTIO_BALLOON_S_MAJFLT: u16 = 2;
pub const VIRTIO_BALLOON_S_MINFLT: u16 = 3;
pub const VIRTIO_BALLOON_S_MEMFREE: u16 = 4;
pub const VIRTIO_BALLOON_S_MEMTOT: u16 = 5;
pub const VIRTIO_BALLOON_S_AVAIL: u16 = 6;
pub const VIRTIO_BALLOON_S_CACHES: u16 = 7;
pub const VIRTIO_BALLOON_S_HTLB_PGALLOC: u16 = 8;
pub const VIRTIO_BALLOON_S_HTLB_PGFAIL: u16 = 9;
pub const VIRTIO_BALLOON_S_OOM_KILL: u16 = 10;
pub const VIRTIO_BALLOON_S_ALLOC_STALL: u16 = 11;
pub const VIRTIO_BALLOON_S_ASYNC_SCAN: u16 = 12;
pub const VIRTIO_BALLOON_S_DIRECT_SCAN: u16 = 13;
pub const VIRTIO_BALLOON_S_ASYNC_RECLAIM: u16 = 14;
pub const VIRTIO_BALLOON_S_DIRECT_RECLAIM: u16 = 15;

/// The name QEMU's `guest-stats` uses for a statistics tag, for reporting
/// stats to existing QMP clients.
pub fn stat_name(tag: u16) -> Option<&'static str> {
    Some(match tag {
        VIRTIO_BALLOON_S_SWAP_IN => "stat-swap-in",
        VIRTIO_BALLOON_S_SWAP_OUT => "stat-swap-out",
        VIRTIO_BALLOON_S_MAJFLT => "stat-major-faults",
        VIRTIO_BALLOON_S_MINFLT => "stat-minor-faults",
        VIRTIO_BALLOON_S_MEMFREE => "stat-free-memory",
        VIRTIO_BALLOON_S_MEMTOT => "stat-total-memory",
        VIRTIO_BALLOON_S_AVAIL => "stat-available-memory",
        VIRTIO_BALLOON_S_CACHES => "stat-disk-caches",
        VIRTIO_BALLOON_S_HTLB_PGALLOC => "stat-htlb-pgalloc",
        VIRTIO_BALLOON_S_HTLB_PGFAIL => "stat-htlb-pgfail",
        VIRTIO_BALLOON_S_OOM_KILL => "stat-oom-kills",
        VIRTIO_BALLOON_S_ALLOC_STALL => "stat-alloc-stalls",
        VIRTIO_BALLOON_S_ASYNC_SCAN => "stat-async-scans",
        VIRTIO_BALLOON_S_DIRECT_SCAN => "stat-direct-scans",
        VIRTIO_BALLOON_S_ASYNC_RECLAIM => "stat-async-reclaims",
        VIRTIO_BALLOON_S_DIRECT_RECLAIM => "stat-direct-reclaims",
        _ => return None,
    })
}

/// The queues a balloon can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonQueue {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

impl fmt::Display for BalloonQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BalloonQueue::Inflate => "inflateq",
            BalloonQueue::Deflate => "deflateq",
            BalloonQueue::Stats => "statsq",
            BalloonQueue::Reporting => "reporting_vq",
        })
    }
}

/// Which queue sits at each transport queue index, given a feature set.
///
/// The spec (virtio 1.2/1.3, 5.5.2) numbers the queues 0 inflateq,
/// 1 deflateq, 2 statsq, 3 free_page_vq, 4 reporting_vq, and says each of
/// the last three "only exists" with its feature. The drivers and devices
/// in use read that as: an absent queue takes no index, and the following
/// ones move down. Linux's `init_vqs` fills its array by the fixed
/// numbers, leaves the names of absent queues NULL, and `vm_find_vqs`
/// (virtio-mmio; virtio-pci does the same) skips NULL entries while giving
/// the others consecutive transport indices (`queue_idx++`), based on the
/// *negotiated* features. QEMU adds its queues in the same order, skipping
/// those whose feature it does not offer, and crosvm changed to the same
/// layout because the fixed numbering broke page reporting with Linux.
///
/// So the queues are compacted, in spec order. This device never offers
/// free page hinting, so with stats and reporting the layout is
/// inflateq 0, deflateq 1, statsq 2, reporting_vq 3; without stats,
/// reporting_vq is 2. The transport exposes the queues of the offered
/// features; at run time the layout is taken from the negotiated
/// features, exactly as Linux computes it, so a driver that declines
/// STATS_VQ but takes PAGE_REPORTING still finds reporting_vq at 2 (the
/// stock Linux driver accepts every feature offered here, and then both
/// views agree).
pub fn queue_layout(features: u64) -> Vec<BalloonQueue> {
    let mut layout = vec![BalloonQueue::Inflate, BalloonQueue::Deflate];
    if features & VIRTIO_BALLOON_F_STATS_VQ != 0 {
        layout.push(BalloonQueue::Stats);
    }
    if features & VIRTIO_BALLOON_F_PAGE_REPORTING != 0 {
        layout.push(BalloonQueue::Reporting);
    }
    layout
}

#[derive(Debug, Error)]
pub enum BalloonError {
    #[error(
        "the balloon needs boot RAM (--memory) to size its target against, but the guest has none"
    )]
    NoBootRam,
    #[error("balloon target {} is {pages} pages below the {} of RAM, more than the {} pages a balloon can hold; give a larger target", format_size(*.target), format_size(*.ram), u32::MAX)]
    TargetTooLow { target: u64, ram: u64, pages: u64 },
    #[error("{0}")]
    Policy(#[from] crate::ram::PolicyError),
}

/// What the device did, for monitoring and for the saved state. A refused
/// discard is counted here as well as logged, so it is never silent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonCounters {
    /// Pages inside guest RAM the driver put in the balloon.
    pub inflated_pages: u64,
    /// Pages inside guest RAM the driver took back out.
    pub deflated_pages: u64,
    /// Bytes of guest RAM the driver reported free.
    pub reported_bytes: u64,
    /// Bytes the RAM layer discarded, from inflation and reporting.
    pub discarded_bytes: u64,
    /// Discards the RAM layer refused or failed (private file-backed RAM,
    /// unaligned ranges, host errors), and the bytes they covered.
    pub discard_refusals: u64,
    pub refused_bytes: u64,
    /// PFNs on the inflate or deflate queue outside guest RAM, skipped.
    pub invalid_pfns: u64,
    /// Reported ranges not inside guest RAM, skipped.
    pub invalid_reports: u64,
    /// Chains completed without acting on them because they were malformed.
    pub malformed_chains: u64,
    /// Statistics buffers parsed.
    pub stats_updates: u64,
}

/// Why a chain was not acted on.
#[derive(Debug, Error)]
enum ChainError {
    #[error("descriptor chain {head} is broken: it loops, has a bad next index or an unreadable descriptor, or exceeds 4 GiB")]
    Broken { head: u16 },
    #[error("descriptor chain {head} refers to an indirect descriptor table, but VIRTIO_F_INDIRECT_DESC is not offered")]
    Indirect { head: u16 },
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is device-writable, but this queue only carries data from the driver")]
    WriteOnly { head: u16, addr: u64, len: u32 },
    #[error(
        "descriptor chain {head}: buffer {addr:#x}+{len:#x} is not a whole number of 4-byte PFNs"
    )]
    PfnLength { head: u16, addr: u64, len: u32 },
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is not in guest RAM")]
    OutsideRam { head: u16, addr: u64, len: u32 },
    #[error("descriptor chain {head} carries {len} bytes, more than the {max} this queue accepts")]
    TooLarge { head: u16, len: u64, max: u64 },
    #[error("descriptor chain {head}: a stats buffer of {len} bytes is not a whole number of {STAT_ENTRY_BYTES}-byte entries")]
    StatsLength { head: u16, len: u64 },
}

/// What to do with a chain once handled.
enum Disposition {
    /// Put it in the used ring.
    Complete,
    /// Keep it (the stats buffer); release an older one if given.
    Hold { release: Option<u16> },
}

/// Problems met while draining a queue once. They are logged once per
/// burst with their count, so a guest cannot flood the log.
#[derive(Default)]
struct Burst {
    refusals: u64,
    refused_bytes: u64,
    first_refusal: Option<DiscardError>,
    invalid: u64,
    first_invalid: Option<String>,
    malformed: u64,
    first_malformed: Option<ChainError>,
    /// Stats buffers returned because the driver sent a newer one.
    replaced_stats: u64,
    /// Chains whose head cannot be put in the used ring (index out of range).
    unreturnable: u64,
    first_unreturnable: Option<String>,
}

impl Burst {
    fn refused(&mut self, len: u64, e: DiscardError) {
        self.refusals += 1;
        self.refused_bytes += len;
        self.first_refusal.get_or_insert(e);
    }

    fn invalid(&mut self, what: impl FnOnce() -> String) {
        self.invalid += 1;
        if self.first_invalid.is_none() {
            self.first_invalid = Some(what());
        }
    }

    fn malformed(&mut self, e: ChainError) {
        self.malformed += 1;
        self.first_malformed.get_or_insert(e);
    }

    fn unreturnable(&mut self, what: String) {
        self.unreturnable += 1;
        self.first_unreturnable.get_or_insert(what);
    }

    fn log(&self, queue: BalloonQueue) {
        if let Some(e) = &self.first_refusal {
            host_error!(
                "balloon {queue}: guest RAM was not given back: {} discard(s) of {} in total failed, first: {e}",
                self.refusals,
                format_size(self.refused_bytes)
            );
        }
        if let Some(what) = &self.first_invalid {
            guest_warn!(
                "balloon {queue}: skipped {} range(s) outside guest RAM, first: {what}",
                self.invalid
            );
        }
        if let Some(e) = &self.first_malformed {
            guest_warn!(
                "balloon {queue}: completed {} malformed chain(s) without acting on them, first: {e}",
                self.malformed
            );
        }
        if self.replaced_stats > 0 {
            guest_warn!(
                "balloon {queue}: the driver sent {} stats buffer(s) while the device held one; returned the older",
                self.replaced_stats
            );
        }
        if let Some(what) = &self.first_unreturnable {
            guest_warn!(
                "balloon {queue}: {} chain(s) could not be returned to the driver, first: {what}",
                self.unreturnable
            );
        }
    }
}

/// Groups consecutive PFNs so that a run of pages is one discard call.
#[derive(Default)]
struct PfnRuns {
    start: u64,
    len: u64,
}

impl PfnRuns {
    /// Adds `pfn`; returns the finished run when `pfn` does not extend it.
    fn push(&mut self, pfn: u64) -> Option<(u64, u64)> {
        if self.len != 0 && pfn == self.start + self.len {
            self.len += 1;
            return None;
        }
        let done = self.finish();
        self.start = pfn;
        self.len = 1;
        done
    }

    fn finish(&mut self) -> Option<(u64, u64)> {
        let done = (self.len != 0).then_some((self.start, self.len));
        self.len = 0;
        done
    }
}

/// The traditional virtio memory balloon.
pub struct Balloon {
    pub(super) common: VirtioCommon,
    pub(super) config: BalloonConfig,
    /// Boot RAM size: the reference for the target and for `actual_bytes`.
    pub(super) ram_size: u64,
    /// Pages the device asks the driver to hold (config space, device-owned).
    pub(super) num_pages: u32,
    /// Pages the driver says it holds (config space, driver-written).
    pub(super) actual: u32,
    /// Latest statistics, by tag, from the last stats buffer.
    pub(super) stats: BTreeMap<u16, u64>,
    /// Head of the stats buffer the device holds: giving it back is how the
    /// device asks for fresh statistics (virtio 1.x, 5.5.6.3). It is past
    /// the queue's `next_avail`, so only this field remembers it.
    pub(super) stats_head: Option<u16>,
    pub(super) counters: BalloonCounters,
    /// Driver mistakes already logged: they are logged once per device so
    /// that a guest cannot flood the log with them. Not saved.
    warned: Warned,
    /// Told the guest's memory size (boot RAM minus the balloon) each time
    /// the driver changes `actual`: QMP's BALLOON_CHANGE. Not saved.
    actual_listener: Option<Box<dyn Fn(u64) + Send>>,
}

#[derive(Default)]
struct Warned {
    config_write: bool,
    unknown_queue: bool,
}

/// Pages the balloon must hold for the guest to see `target` bytes of `ram_size`.
pub(super) fn pages_for_target(ram_size: u64, target: Option<u64>) -> Result<u32, BalloonError> {
    let Some(target) = target.filter(|&t| t < ram_size) else {
        return Ok(0);
    };
    let pages = (ram_size - target) / PAGE_SIZE;
    u32::try_from(pages).map_err(|_| BalloonError::TargetTooLow {
        target,
        ram: ram_size,
        pages,
    })
}

impl Balloon {
    /// A balloon for a guest with `ram`; `config.target` (if below the boot
    /// RAM size) is what the guest is asked to shrink to from the start.
    pub fn new(config: &BalloonConfig, ram: Arc<GuestRam>) -> Result<Self, BalloonError> {
        let ram_size = ram.size_of(&RegionRole::Boot);
        if ram_size == 0 {
            return Err(BalloonError::NoBootRam);
        }
        let num_pages = pages_for_target(ram_size, config.target)?;
        let mut features = VIRTIO_RING_F_EVENT_IDX;
        if config.stats {
            features |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if config.deflate_on_oom {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if config.free_page_reporting {
            features |= VIRTIO_BALLOON_F_PAGE_REPORTING;
        }
        let sizes = vec![QUEUE_MAX_SIZE; queue_layout(features).len()];
        Ok(Balloon {
            common: VirtioCommon::new(TYPE_BALLOON, features, &sizes, ram),
            config: config.clone(),
            ram_size,
            num_pages,
            actual: 0,
            stats: BTreeMap::new(),
            stats_head: None,
            counters: BalloonCounters::default(),
            warned: Warned::default(),
            actual_listener: None,
        })
    }

    /// The configuration, with `target` as last set.
    pub fn config(&self) -> &BalloonConfig {
        &self.config
    }

    /// Calls `f` with the guest's memory size in bytes whenever the driver
    /// reports a new balloon size.
    pub fn set_actual_listener(&mut self, f: Box<dyn Fn(u64) + Send>) {
        self.actual_listener = Some(f);
    }

    /// Asks the guest to shrink (or grow back) to `target` bytes of boot
    /// RAM: a target at or above the RAM size empties the balloon. The VMM
    /// runs the RAM policy for a lowered target before calling this; if it
    /// did not, the RAM layer still refuses discards it cannot honour.
    pub fn set_target(&mut self, target: u64) -> Result<(), BalloonError> {
        let pages = pages_for_target(self.ram_size, Some(target))?;
        if pages > 0 {
            // A control command must not inflate where the start-up policy would refuse to.
            crate::ram::check(
                &[super::inflation_requirement(format!(
                    "target={}",
                    format_size(target)
                ))],
                &self.common.ram.backings(),
                crate::ram::policy::Operation::Run,
            )?;
        }
        info!(
            "balloon: target {} ({pages} pages in the balloon, the driver reports {})",
            format_size(target),
            self.actual
        );
        self.num_pages = pages;
        self.config.target = Some(target);
        self.common.notify_config();
        Ok(())
    }

    /// Guest memory the device asks for: boot RAM minus the requested balloon.
    pub fn target_bytes(&self) -> u64 {
        self.ram_size - u64::from(self.num_pages) * PAGE_SIZE
    }

    /// Guest memory as the driver reports it: boot RAM minus the balloon.
    pub fn actual_bytes(&self) -> u64 {
        self.ram_size
            .saturating_sub(u64::from(self.actual) * PAGE_SIZE)
    }

    /// What the state itself needs from guest RAM, beyond what the options
    /// ask for: a restored balloon whose target was lowered at run time
    /// (QMP `balloon`), or that the guest already inflated, goes on
    /// discarding pages, which the restoring VM's RAM must support.
    pub fn state_ram_requirements(&self) -> Vec<crate::ram::RamRequirement> {
        if self.num_pages == 0 && self.actual == 0 {
            return Vec::new();
        }
        let option = format!(
            "the saved state (target {}, {} inflated)",
            format_size(self.target_bytes()),
            format_size(u64::from(self.actual) * PAGE_SIZE)
        );
        let mut req = super::config::inflation_requirement(option);
        req.fix = "save the VM with the balloon deflated (QMP balloon to the full memory size, and wait until it is reached) before cloning it".into();
        vec![req]
    }

    /// `num_pages` in config space.
    pub fn num_pages(&self) -> u32 {
        self.num_pages
    }

    /// `actual` in config space, as the driver last wrote it.
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// Latest memory statistics by tag (see `stat_name`), empty until the
    /// driver sent some.
    pub fn stats(&self) -> &BTreeMap<u16, u64> {
        &self.stats
    }

    pub fn counters(&self) -> &BalloonCounters {
        &self.counters
    }

    /// Whether the device holds a stats buffer it can give back.
    pub fn stats_pending(&self) -> bool {
        self.stats_head.is_some()
    }

    /// The transport index of `queue` under the negotiated features, if
    /// the driver negotiated it.
    pub fn queue_index(&self, queue: BalloonQueue) -> Option<u16> {
        queue_layout(self.common.acked_features)
            .iter()
            .position(|&q| q == queue)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Asks the driver for fresh statistics by returning the stats buffer
    /// it holds. Returns false when there is none to return (no stats
    /// queue, device not active, or the driver has not refilled it yet).
    pub fn request_stats(&mut self) -> bool {
        if !self.common.activated {
            return false;
        }
        let Some(index) = self.queue_index(BalloonQueue::Stats) else {
            return false;
        };
        let Some(head) = self.stats_head.take() else {
            return false;
        };
        if let Err(e) = self.complete(index, head) {
            // The head was checked when popped (or restored): unexpected.
            error!("balloon statsq: cannot return the stats buffer: {e}");
            return false;
        }
        self.common.notify_queue(index);
        true
    }

    fn config_bytes(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut b = [0u8; CONFIG_SPACE_SIZE];
        b[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        b[4..8].copy_from_slice(&self.actual.to_le_bytes());
        // free_page_hint_cmd_id and poison_val stay 0: neither
        // FREE_PAGE_HINT nor PAGE_POISON is offered.
        b
    }

    /// Puts chain `head` in the used ring of queue `index`; the device
    /// never writes into balloon buffers, so the length is 0.
    fn complete(&mut self, index: u16, head: u16) -> Result<(), String> {
        let c = &mut self.common;
        let q = c
            .queues
            .get_mut(usize::from(index))
            .ok_or_else(|| format!("queue {index} does not exist"))?;
        add_used(q, c.ram.memory(), head, 0).map_err(|e| format!("descriptor chain {head}: {e}"))
    }

    /// Drains queue `index` until the driver adds nothing more.
    fn process_queue(&mut self, index: u16, role: BalloonQueue) {
        let ram = self.common.ram.clone();
        let mem = ram.memory();
        let mut burst = Burst::default();
        let mut used = false;
        let mut idle_passes = 0;
        loop {
            let q = &mut self.common.queues[usize::from(index)];
            if let Err(e) = q.disable_notification(mem) {
                guest_warn!("balloon {role}: cannot disable notifications: {e}");
            }
            let mut popped = 0usize;
            while let Some(chain) = pop_chain(
                &mut self.common.queues[usize::from(index)],
                mem,
                &format_args!("balloon {role}"),
            ) {
                popped += 1;
                let head = chain.head_index();
                let done = match self.handle_chain(role, chain, &ram, &mut burst) {
                    Disposition::Complete => Some(head),
                    Disposition::Hold { release } => {
                        burst.replaced_stats += u64::from(release.is_some());
                        release
                    }
                };
                if let Some(head) = done {
                    match self.complete(index, head) {
                        Ok(()) => used = true,
                        Err(e) => burst.unreturnable(e),
                    }
                }
            }
            idle_passes = if popped == 0 { idle_passes + 1 } else { 0 };
            match self.common.queues[usize::from(index)].enable_notification(mem) {
                // More chains arrived while notifications were off. Twice
                // nothing to pop while the ring claims more means its index
                // is corrupt (virtio-queue logged it): stop rather than spin.
                Ok(true) if idle_passes < 2 => continue,
                Ok(true) => {
                    guest_warn!("balloon {role}: the available ring index is invalid; waiting for the next notification");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    guest_warn!("balloon {role}: cannot re-enable notifications: {e}");
                    break;
                }
            }
        }
        burst.log(role);
        if used {
            self.common.notify_queue(index);
        }
    }

    fn handle_chain(
        &mut self,
        role: BalloonQueue,
        chain: Chain<&GuestMemoryMmap>,
        ram: &GuestRam,
        burst: &mut Burst,
    ) -> Disposition {
        let head = chain.head_index();
        let result = match role {
            BalloonQueue::Inflate | BalloonQueue::Deflate => {
                self.handle_pfns(role, chain, ram, burst)
            }
            BalloonQueue::Reporting => self.handle_report(chain, ram, burst),
            BalloonQueue::Stats => match self.handle_stats(chain, ram.memory()) {
                Ok(()) => {
                    // Only one buffer is held: an older one goes back.
                    let release = self.stats_head.replace(head);
                    return Disposition::Hold { release };
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            bump(&mut self.counters.malformed_chains, 1);
            burst.malformed(e);
        }
        Disposition::Complete
    }

    /// Inflate or deflate: the chain holds arrays of le32 PFNs.
    fn handle_pfns(
        &mut self,
        role: BalloonQueue,
        chain: Chain<&GuestMemoryMmap>,
        ram: &GuestRam,
        burst: &mut Burst,
    ) -> Result<(), ChainError> {
        let head = chain.head_index();
        let mem = ram.memory();
        let descs = driver_buffers(chain, mem, MAX_PFN_BYTES_PER_CHAIN)?;
        for d in &descs {
            if u64::from(d.len()) % PFN_BYTES != 0 {
                return Err(ChainError::PfnLength {
                    head,
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
        }
        // The whole chain is valid: only now act on it, so a malformed
        // chain changes nothing.
        let mut runs = PfnRuns::default();
        let mut buf = [0u8; PFN_READ_CHUNK];
        for d in &descs {
            let len = d.len() as usize;
            let mut off = 0usize;
            while off < len {
                let n = (len - off).min(PFN_READ_CHUNK);
                let at = GuestAddress(d.addr().0 + off as u64);
                if mem.read_slice(&mut buf[..n], at).is_err() {
                    // Checked above; guest RAM does not shrink under us.
                    return Err(ChainError::OutsideRam {
                        head,
                        addr: d.addr().0,
                        len: d.len(),
                    });
                }
                for pfn in buf[..n].chunks_exact(PFN_BYTES as usize) {
                    let pfn = u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]);
                    if let Some(run) = runs.push(u64::from(pfn)) {
                        self.apply_run(role, run, ram, burst);
                    }
                }
                off += n;
            }
        }
        if let Some(run) = runs.finish() {
            self.apply_run(role, run, ram, burst);
        }
        Ok(())
    }

    /// `count` pages from `pfn` went in (inflate) or out (deflate).
    fn apply_run(
        &mut self,
        role: BalloonQueue,
        (pfn, count): (u64, u64),
        ram: &GuestRam,
        burst: &mut Burst,
    ) {
        let addr = pfn << PFN_SHIFT;
        let len = count << PFN_SHIFT;
        let spans = ram_spans(ram, addr, len);
        let inside: u64 = spans.iter().map(|(_, l)| l).sum();
        let outside = (len - inside) / PAGE_SIZE;
        if outside > 0 {
            bump(&mut self.counters.invalid_pfns, outside);
            burst.invalid(|| {
                format!(
                    "PFNs {pfn:#x}..{:#x} ({} page(s) not in guest RAM)",
                    pfn + count,
                    outside
                )
            });
        }
        match role {
            BalloonQueue::Inflate => {
                bump(&mut self.counters.inflated_pages, inside / PAGE_SIZE);
                for (a, l) in spans {
                    self.discard(ram, a, l, burst);
                }
            }
            // Nothing to do for the memory: without MUST_TELL_HOST the
            // guest may already be using these pages again, and a discarded
            // page simply faults back in (zeroed) when touched.
            _ => bump(&mut self.counters.deflated_pages, inside / PAGE_SIZE),
        }
    }

    /// Free page reporting: each buffer is a range of free guest RAM.
    fn handle_report(
        &mut self,
        chain: Chain<&GuestMemoryMmap>,
        ram: &GuestRam,
        burst: &mut Burst,
    ) -> Result<(), ChainError> {
        // Linux adds the pages as device-writable buffers (the device may
        // overwrite them); the flag does not matter to a discard, so both
        // directions are accepted.
        let descs = descriptors(chain)?;
        for d in descs {
            let (addr, len) = (d.addr().0, u64::from(d.len()));
            if len == 0 {
                continue;
            }
            let spans = match addr.checked_add(len) {
                Some(_) => ram_spans(ram, addr, len),
                None => Vec::new(),
            };
            let inside: u64 = spans.iter().map(|(_, l)| l).sum();
            if inside != len {
                // Part of the range is not RAM: the driver is confused, so
                // none of it is touched.
                bump(&mut self.counters.invalid_reports, 1);
                burst.invalid(|| format!("reported range {addr:#x}+{len:#x}"));
                continue;
            }
            bump(&mut self.counters.reported_bytes, len);
            for (a, l) in spans {
                self.discard(ram, a, l, burst);
            }
        }
        Ok(())
    }

    /// Parses a stats buffer into `self.stats`.
    fn handle_stats(
        &mut self,
        chain: Chain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), ChainError> {
        let head = chain.head_index();
        let descs = driver_buffers(chain, mem, MAX_STATS_BYTES as u64)?;
        let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
        if !total.is_multiple_of(STAT_ENTRY_BYTES as u64) {
            return Err(ChainError::StatsLength { head, len: total });
        }
        let mut bytes = Vec::with_capacity(total as usize);
        for d in &descs {
            let start = bytes.len();
            bytes.resize(start + d.len() as usize, 0);
            mem.read_slice(&mut bytes[start..], d.addr())
                .map_err(|_| ChainError::OutsideRam {
                    head,
                    addr: d.addr().0,
                    len: d.len(),
                })?;
        }
        // The buffer is the driver's full current picture: tags it no
        // longer sends must not keep stale values.
        let mut stats = BTreeMap::new();
        for e in bytes.chunks_exact(STAT_ENTRY_BYTES) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut val = [0u8; 8];
            val.copy_from_slice(&e[2..10]);
            stats.insert(tag, u64::from_le_bytes(val));
        }
        debug!("balloon statsq: {} statistics from the driver", stats.len());
        self.stats = stats;
        bump(&mut self.counters.stats_updates, 1);
        Ok(())
    }

    /// Discards through the RAM layer, which refuses what the backing
    /// cannot honour; a refusal is counted and logged, never ignored.
    fn discard(&mut self, ram: &GuestRam, addr: u64, len: u64, burst: &mut Burst) {
        match ram.discard(GuestAddress(addr), len) {
            Ok(()) => bump(&mut self.counters.discarded_bytes, len),
            Err(e) => {
                bump(&mut self.counters.discard_refusals, 1);
                bump(&mut self.counters.refused_bytes, len);
                burst.refused(len, e);
            }
        }
    }
}

/// The parts of `[addr, addr + len)` inside guest RAM regions, split at
/// region boundaries (the RAM layer discards within one region at a time).
fn ram_spans(ram: &GuestRam, addr: u64, len: u64) -> Vec<(u64, u64)> {
    let end = addr.saturating_add(len);
    ram.regions()
        .iter()
        .filter_map(|r| {
            let lo = addr.max(r.guest_base.0);
            let hi = end.min(r.guest_base.0 + r.size);
            if lo < hi {
                Some((lo, hi - lo))
            } else {
                None
            }
        })
        .collect()
}

/// Every descriptor of a chain, or an error if the chain does not end
/// properly. The iterator just stops on a loop, a bad index, an unreadable
/// descriptor, a chain over 4 GiB or an indirect descriptor; a chain that
/// ended well has a last descriptor without NEXT.
fn descriptors(mut chain: Chain<&GuestMemoryMmap>) -> Result<Vec<Descriptor>, ChainError> {
    let head = chain.head_index();
    let mut out = Vec::new();
    let mut terminated = false;
    for d in chain.by_ref() {
        terminated = !d.has_next();
        out.push(d);
    }
    if chain.met_indirect() {
        return Err(ChainError::Indirect { head });
    }
    if terminated {
        Ok(out)
    } else {
        Err(ChainError::Broken { head })
    }
}

/// The descriptors of a chain that carries data from the driver: all
/// device-readable, inside guest RAM, `max` bytes at most.
fn driver_buffers(
    chain: Chain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    max: u64,
) -> Result<Vec<Descriptor>, ChainError> {
    let head = chain.head_index();
    let descs = descriptors(chain)?;
    let mut total = 0u64;
    for d in &descs {
        let (addr, len) = (d.addr().0, d.len());
        if d.is_write_only() {
            return Err(ChainError::WriteOnly { head, addr, len });
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), len as usize) {
            return Err(ChainError::OutsideRam { head, addr, len });
        }
        total += u64::from(len);
        if total > max {
            return Err(ChainError::TooLarge {
                head,
                len: total,
                max,
            });
        }
    }
    Ok(descs)
}

impl VirtioDevice for Balloon {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// Only `actual` is the driver's to write; other bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self.actual.to_le_bytes();
        let mut ignored = false;
        for (i, b) in data.iter().enumerate() {
            let pos = offset
                .checked_add(i as u64)
                .and_then(|p| usize::try_from(p).ok());
            match pos {
                Some(p) if (ACTUAL_OFFSET..ACTUAL_OFFSET + 4).contains(&p) => {
                    actual[p - ACTUAL_OFFSET] = *b;
                }
                _ => ignored = true,
            }
        }
        if ignored && !std::mem::replace(&mut self.warned.config_write, true) {
            warn!(
                "balloon: driver wrote {} config byte(s) at {offset:#x} outside 'actual'; read-only bytes ignored (logged once)",
                data.len()
            );
        }
        let actual = u32::from_le_bytes(actual);
        if actual != self.actual {
            debug!(
                "balloon: driver holds {actual} pages (asked for {})",
                self.num_pages
            );
            self.actual = actual;
            if let Some(f) = &self.actual_listener {
                f(self.actual_bytes());
            }
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.common.prepare_activation()?;
        // Linux primes the stats queue with its first buffer and notifies
        // before it sets DRIVER_OK, then waits for the device to return
        // that buffer. Notifications before activation are deferred to
        // here, so every queue is drained once now.
        for (index, role) in queue_layout(self.common.acked_features)
            .into_iter()
            .enumerate()
        {
            let index = index as u16;
            if self.common.queues[usize::from(index)].ready() {
                self.process_queue(index, role);
            }
        }
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if !self.common.activated {
            // Legitimate for the stats queue (see `activate`).
            debug!(
                "balloon: notification for queue {index} before DRIVER_OK; handled at activation"
            );
            return;
        }
        let layout = queue_layout(self.common.acked_features);
        let Some(&role) = layout.get(usize::from(index)) else {
            if !std::mem::replace(&mut self.warned.unknown_queue, true) {
                warn!(
                    "balloon: notification for queue {index}, but the negotiated features give only {} queues; ignored (logged once)",
                    layout.len()
                );
            }
            return;
        };
        let queue = self.common.queues.get(usize::from(index));
        if !queue.is_some_and(|q| q.ready()) {
            // Its rings were never set up, so they are at guest-physical 0:
            // processing it would write the guest's memory there.
            guest_warn!("balloon {role}: queue {index} notified but never made ready; ignored");
            return;
        }
        self.process_queue(index, role);
    }

    fn reset(&mut self) {
        self.common.reset();
        // The queues are gone, and with them the held stats buffer. A new
        // driver starts with an empty balloon: whatever the old one held
        // is ordinary guest RAM again from the guest's point of view.
        self.stats_head = None;
        self.actual = 0;
    }
}
