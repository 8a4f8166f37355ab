//! The virtio-net device: one RX/TX queue pair backed by a TAP.

use std::fmt;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crate::ram::GuestMemoryMmap;
use log::{debug, error, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_bindings::virtio_net;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::tap::{offload_flags, Tap, TapError, VNET_HDR_LEN};
use super::NetConfig;
use crate::ram::GuestRam;
use crate::virtio::{
    read_config_bytes, ActivateError, VirtioCommon, VirtioDevice, STATUS_NEEDS_RESET, TYPE_NET,
    VIRTIO_RING_F_EVENT_IDX,
};

pub const VIRTIO_NET_F_CSUM: u64 = 1 << virtio_net::VIRTIO_NET_F_CSUM;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_CSUM;
pub const VIRTIO_NET_F_MAC: u64 = 1 << virtio_net::VIRTIO_NET_F_MAC;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO4;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO6;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_ECN;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_UFO;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_TSO4;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_TSO6;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_ECN;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_UFO;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << virtio_net::VIRTIO_NET_F_STATUS;

/// Everything the device offers (VirtioCommon adds VERSION_1).
pub const AVAIL_FEATURES: u64 = VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_HOST_UFO
    | VIRTIO_NET_F_STATUS;

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Largest packet either way, header included: a 64 KiB GSO packet plus
/// its Ethernet header (the size Linux uses for "big packet" RX buffers).
pub const MAX_PACKET_LEN: usize = 65562;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Offset of `flags` in `virtio_net_hdr_v1`.
const FLAGS_OFFSET: usize = 0;

/// mac[6], status le16, max_virtqueue_pairs le16.
const CONFIG_LEN: usize = 10;

/// writev refuses more than IOV_MAX segments.
const MAX_IOVECS: usize = 1024;

/// Traffic and error counts, saved with the device so they survive a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    /// Packets written into guest RX buffers.
    pub rx_packets: u64,
    /// Frame bytes (headers excluded) delivered to the guest.
    pub rx_bytes: u64,
    /// Packets read from the TAP that the guest never saw.
    pub rx_dropped: u64,
    /// RX chains returned unused because they were malformed.
    pub rx_bad_chains: u64,
    /// Packets written to the TAP.
    pub tx_packets: u64,
    /// Frame bytes (headers excluded) written to the TAP.
    pub tx_bytes: u64,
    /// TX chains that did not reach the TAP (malformed, too large, refused by the kernel).
    pub tx_dropped: u64,
}

#[derive(Debug, Error)]
pub enum NetError {
    #[error("net device {id:?}: {source}")]
    Tap {
        id: String,
        #[source]
        source: TapError,
    },
    #[error("net device {id:?}: MAC {mac} is a multicast address; give it a unicast MAC (even first octet), e.g. 52:54:00:12:34:56")]
    MulticastMac { id: String, mac: String },
}

pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A virtio-net device with one queue pair.
///
/// The event loop watches [`Net::tap_fd`] for input and calls
/// [`Net::process_rx`] when it is readable. `process_rx` reads until the TAP
/// is empty or the guest runs out of RX buffers; in the latter case one
/// packet is held and the TAP is not read again until the driver adds
/// buffers (its notification on the RX queue resumes reading). So the fd
/// suits edge-triggered polling (EPOLLET); with level-triggered polling,
/// skip the fd while [`Net::rx_stalled`] is true.
pub struct Net {
    pub(super) common: VirtioCommon,
    pub(super) config: NetConfig,
    pub(super) tap: Tap,
    /// The TUN_F_* flags last applied to the TAP.
    pub(super) tap_offloads: u32,
    /// Packet read from the TAP; its first `rx_pending` bytes are valid.
    pub(super) rx_buf: Box<[u8]>,
    /// Length of a packet waiting in `rx_buf` for guest buffers.
    pub(super) rx_pending: Option<usize>,
    pub(super) counters: NetCounters,
}

impl Net {
    /// Opens the TAP named in `config` and builds the device.
    pub fn new(config: &NetConfig, ram: Arc<GuestRam>) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap).map_err(|source| NetError::Tap {
            id: config.id.clone(),
            source,
        })?;
        Net::with_tap(config, tap, ram)
    }

    /// Builds the device on a TAP the caller already opened (`config.tap`
    /// is then only a label).
    pub fn with_tap(config: &NetConfig, tap: Tap, ram: Arc<GuestRam>) -> Result<Net, NetError> {
        if config.mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac {
                id: config.id.clone(),
                mac: format_mac(&config.mac),
            });
        }
        Ok(Net {
            common: VirtioCommon::new(
                TYPE_NET,
                AVAIL_FEATURES,
                &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE],
                ram,
            ),
            config: config.clone(),
            tap,
            tap_offloads: 0,
            rx_buf: vec![0u8; MAX_PACKET_LEN].into_boxed_slice(),
            rx_pending: None,
            counters: NetCounters::default(),
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The fd the event loop polls for packets from the host.
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// A packet is waiting for RX buffers; the TAP is not read meanwhile.
    pub fn rx_stalled(&self) -> bool {
        self.rx_pending.is_some()
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The TUN_F_* offloads currently applied to the TAP.
    pub fn tap_offloads(&self) -> u32 {
        self.tap_offloads
    }

    fn queue_usable(&self, index: u16) -> bool {
        self.common.activated
            && self.common.status & STATUS_NEEDS_RESET == 0
            && self.common.queues[usize::from(index)].ready()
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.config.mac);
        c[6..8].copy_from_slice(&(virtio_net::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Moves packets from the TAP into guest RX buffers until the TAP is
    /// empty or the buffers run out.
    pub fn process_rx(&mut self) {
        if !self.queue_usable(RX_QUEUE) {
            return;
        }
        let ram = self.common.ram.clone();
        let mem = ram.memory();
        let used_before = self.common.queues[usize::from(RX_QUEUE)].next_used();
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read(&mut self.rx_buf) {
                    Ok(0) => break,
                    Ok(n) if n < VNET_HDR_LEN => {
                        warn!(
                            "net {}: {n}-byte read from TAP {:?} is shorter than a virtio-net header; dropped",
                            self.config.id,
                            self.tap.name()
                        );
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => {
                        self.rx_pending = Some(n);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        error!(
                            "net {}: reading TAP {:?} failed: {e}",
                            self.config.id,
                            self.tap.name()
                        );
                        break;
                    }
                },
            };
            match self.deliver(mem, len) {
                RxOutcome::Delivered | RxOutcome::Dropped => self.rx_pending = None,
                RxOutcome::NoBuffers { seen_avail } => {
                    if self.arm_rx_kick(mem, seen_avail) {
                        continue;
                    }
                    break;
                }
                RxOutcome::Broken => {
                    self.common.set_needs_reset();
                    break;
                }
            }
        }
        if self.common.queues[usize::from(RX_QUEUE)].next_used() != used_before {
            self.common.notify_queue(RX_QUEUE);
        }
    }

    /// Places the pending packet (`len` bytes of `rx_buf`) into guest buffers.
    fn deliver(&mut self, mem: &GuestMemoryMmap, len: usize) -> RxOutcome {
        let mrg = self.common.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let guest_csum = self.common.has_feature(VIRTIO_NET_F_GUEST_CSUM);
        let Net {
            common,
            rx_buf,
            counters,
            config,
            ..
        } = self;
        let q = &mut common.queues[usize::from(RX_QUEUE)];
        let seen_avail = match q.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) => idx.0,
            Err(e) => {
                error!("net {}: RX queue unreadable: {e}", config.id);
                return RxOutcome::Broken;
            }
        };
        if avail_overrun(q, seen_avail, "RX", &config.id) {
            return RxOutcome::Broken;
        }

        let mut chains: Vec<RxChain> = Vec::new();
        let mut cap = 0usize;
        while cap < len {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                // Not enough room yet: give the chains back and hold the packet.
                for _ in &chains {
                    q.go_to_previous_position();
                }
                return RxOutcome::NoBuffers { seen_avail };
            };
            let head = chain.head_index();
            let first = chains.is_empty();
            let parsed = parse_rx_chain(mem, chain).and_then(|c| {
                if first && c.cap < VNET_HDR_LEN {
                    Err(BadChain::NoRoomForHeader(c.cap))
                } else if c.cap == 0 {
                    Err(BadChain::Empty)
                } else {
                    Ok(c)
                }
            });
            match parsed {
                Ok(c) if !mrg && c.cap < len => {
                    // The buffer is fine, just too small for this packet:
                    // keep it for the next one.
                    q.go_to_previous_position();
                    counters.rx_dropped += 1;
                    debug!(
                        "net {}: {len}-byte packet does not fit a {}-byte RX buffer; dropped",
                        config.id, c.cap
                    );
                    return RxOutcome::Dropped;
                }
                Ok(c) => {
                    cap += c.cap;
                    chains.push(c);
                }
                Err(why) => {
                    warn!("net {}: RX chain {head}: {why}; returned unused", config.id);
                    counters.rx_bad_chains += 1;
                    if first {
                        put_used(q, mem, head, 0, &config.id);
                        continue;
                    }
                    // Chains before it already hold part of the packet and
                    // used entries must stay in order: give them all back
                    // empty and drop the packet.
                    for c in chains.drain(..) {
                        put_used(q, mem, c.head, 0, &config.id);
                    }
                    put_used(q, mem, head, 0, &config.id);
                    counters.rx_dropped += 1;
                    return RxOutcome::Dropped;
                }
            }
        }

        let pkt = &mut rx_buf[..len];
        let num_buffers = chains.len() as u16;
        pkt[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num_buffers.to_le_bytes());
        if !guest_csum {
            // Without GUEST_CSUM the flags must be zero (virtio 1.x 5.1.6.4.1);
            // the kernel may still mark packets DATA_VALID.
            pkt[FLAGS_OFFSET] = 0;
        }
        let mut off = 0usize;
        for c in chains {
            let mut written = 0usize;
            for (addr, seg_len) in c.segs {
                if off == len {
                    break;
                }
                let n = seg_len.min(len - off);
                if let Err(e) = mem.write_slice(&pkt[off..off + n], addr) {
                    // The range was checked a moment ago; only a RAM layout
                    // change could get here.
                    error!("net {}: writing RX buffer at {:#x}: {e}", config.id, addr.0);
                    break;
                }
                off += n;
                written += n;
            }
            put_used(q, mem, c.head, written as u32, &config.id);
        }
        counters.rx_packets += 1;
        counters.rx_bytes += (len - VNET_HDR_LEN) as u64;
        RxOutcome::Delivered
    }

    /// Asks the driver to notify the RX queue when it adds buffers. Returns
    /// true if buffers arrived since `seen_avail` was read, so the caller
    /// must try again instead of waiting for a notification that may never come.
    fn arm_rx_kick(&mut self, mem: &GuestMemoryMmap, seen_avail: u16) -> bool {
        let q = &mut self.common.queues[usize::from(RX_QUEUE)];
        if let Err(e) = q.enable_notification(mem) {
            error!("net {}: RX queue: {e}", self.config.id);
        }
        if q.event_idx_enabled() {
            // enable_notification set avail_event to our position, which can
            // be behind buffers that are available but too few for the packet;
            // the driver only kicks when it crosses avail_event, so move it
            // to the index we saw.
            let addr = q.used_ring() + 4 + 8 * u64::from(q.size());
            if let Err(e) = mem.store(
                u16::to_le(seen_avail),
                GuestAddress(addr),
                Ordering::Release,
            ) {
                error!("net {}: RX queue avail_event: {e}", self.config.id);
            }
        }
        fence(Ordering::SeqCst);
        match q.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) => idx.0 != seen_avail,
            Err(_) => false,
        }
    }

    fn process_tx(&mut self) {
        if !self.queue_usable(TX_QUEUE) {
            return;
        }
        let ram = self.common.ram.clone();
        let mem = ram.memory();
        let Net {
            common,
            tap,
            counters,
            config,
            ..
        } = self;
        let q = &mut common.queues[usize::from(TX_QUEUE)];
        let used_before = q.next_used();
        let mut broken = false;
        loop {
            if let Err(e) = q.disable_notification(mem) {
                error!("net {}: TX queue: {e}", config.id);
            }
            match q.avail_idx(mem, Ordering::Acquire) {
                Ok(idx) if !avail_overrun(q, idx.0, "TX", &config.id) => {}
                Ok(_) => {
                    broken = true;
                    break;
                }
                Err(e) => {
                    error!("net {}: TX queue unreadable: {e}", config.id);
                    broken = true;
                    break;
                }
            }
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                match transmit(tap, mem, chain) {
                    Ok(frame_len) => {
                        counters.tx_packets += 1;
                        counters.tx_bytes += frame_len as u64;
                    }
                    Err(e) => {
                        counters.tx_dropped += 1;
                        warn!("net {}: TX chain {head} dropped: {e}", config.id);
                    }
                }
                // The device writes nothing into TX buffers.
                put_used(q, mem, head, 0, &config.id);
            }
            match q.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    error!("net {}: TX queue: {e}", config.id);
                    break;
                }
            }
        }
        if q.next_used() != used_before {
            common.notify_queue(TX_QUEUE);
        }
        if broken {
            common.set_needs_reset();
        }
    }
}

enum RxOutcome {
    Delivered,
    Dropped,
    NoBuffers {
        seen_avail: u16,
    },
    /// The driver corrupted the ring; nothing more can be done until reset.
    Broken,
}

/// The driver claims more chains than the queue holds: the ring is corrupt
/// and every further pass would misread it.
fn avail_overrun(q: &Queue, avail_idx: u16, name: &str, id: &str) -> bool {
    let ahead = avail_idx.wrapping_sub(q.next_avail());
    if ahead > q.size() {
        error!(
            "net {id}: {name} queue: driver published avail index {avail_idx}, {ahead} chains ahead of the device in a queue of {}; device needs reset",
            q.size()
        );
        return true;
    }
    false
}

/// A device-writable chain checked to lie in guest RAM.
struct RxChain {
    head: u16,
    segs: Vec<(GuestAddress, usize)>,
    cap: usize,
}

#[derive(Debug)]
enum BadChain {
    DeviceReadable,
    WriteOnly,
    OutsideRam {
        addr: u64,
        len: u32,
    },
    /// The NEXT flags lead out of the table or around a loop.
    Truncated,
    NoRoomForHeader(usize),
    Empty,
}

impl fmt::Display for BadChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadChain::DeviceReadable => write!(f, "device-readable descriptor in an RX chain"),
            BadChain::WriteOnly => write!(f, "device-writable descriptor in a TX chain"),
            BadChain::OutsideRam { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} lies outside guest RAM")
            }
            BadChain::Truncated => write!(
                f,
                "chain loops or its next index leaves the descriptor table"
            ),
            BadChain::NoRoomForHeader(cap) => write!(
                f,
                "{cap} bytes cannot hold the {VNET_HDR_LEN}-byte virtio-net header"
            ),
            BadChain::Empty => write!(f, "chain has no room"),
        }
    }
}

fn parse_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<RxChain, BadChain> {
    let head = chain.head_index();
    let mut segs = Vec::new();
    let mut cap = 0usize;
    let mut ends = false;
    for d in chain {
        ends = !d.has_next();
        if !d.is_write_only() {
            return Err(BadChain::DeviceReadable);
        }
        let len = d.len() as usize;
        if !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(BadChain::OutsideRam {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        if len > 0 {
            segs.push((d.addr(), len));
            cap += len;
        }
    }
    if !ends {
        return Err(BadChain::Truncated);
    }
    Ok(RxChain { head, segs, cap })
}

#[derive(Debug)]
enum TxDrop {
    Chain(BadChain),
    TooShort(usize),
    TooLarge,
    TooManySegments,
    Tap(io::Error),
}

impl fmt::Display for TxDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxDrop::Chain(b) => b.fmt(f),
            TxDrop::TooShort(n) => write!(
                f,
                "{n} bytes cannot hold the {VNET_HDR_LEN}-byte virtio-net header"
            ),
            TxDrop::TooLarge => write!(f, "packet exceeds {MAX_PACKET_LEN} bytes"),
            TxDrop::TooManySegments => write!(f, "packet spans more than {MAX_IOVECS} segments"),
            TxDrop::Tap(e) => write!(f, "the TAP refused it: {e}"),
        }
    }
}

/// Writes one TX chain (header and frame) to the TAP straight from guest
/// memory. Returns the frame length.
fn transmit(
    tap: &Tap,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<usize, TxDrop> {
    let mut iovs: Vec<libc::iovec> = Vec::new();
    let mut guards = Vec::new();
    let mut total = 0usize;
    let mut ends = false;
    for d in chain {
        ends = !d.has_next();
        if d.is_write_only() {
            return Err(TxDrop::Chain(BadChain::WriteOnly));
        }
        total += d.len() as usize;
        if total > MAX_PACKET_LEN {
            return Err(TxDrop::TooLarge);
        }
        let outside = || {
            TxDrop::Chain(BadChain::OutsideRam {
                addr: d.addr().0,
                len: d.len(),
            })
        };
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(outside());
        }
        for slice in GuestMemoryBackend::get_slices(mem, d.addr(), d.len() as usize) {
            let guard = slice.map_err(|_| outside())?.ptr_guard();
            iovs.push(libc::iovec {
                iov_base: guard.as_ptr() as *mut libc::c_void,
                iov_len: guard.len(),
            });
            guards.push(guard);
        }
        if iovs.len() > MAX_IOVECS {
            return Err(TxDrop::TooManySegments);
        }
    }
    if !ends {
        return Err(TxDrop::Chain(BadChain::Truncated));
    }
    if total < VNET_HDR_LEN {
        return Err(TxDrop::TooShort(total));
    }
    // SAFETY: every iovec points into a guest RAM mapping kept alive by
    // `mem` (and `guards`) for the whole call.
    let written = unsafe { tap.writev_raw(&iovs) }.map_err(TxDrop::Tap)?;
    drop(guards);
    if written != total {
        warn!("TAP {:?} took {written} of {total} bytes", tap.name());
    }
    Ok(total - VNET_HDR_LEN)
}

fn put_used(q: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32, id: &str) {
    if let Err(e) = q.add_used(mem, head, len) {
        // Only a head index beyond the queue gets here: the driver
        // published garbage, and there is no slot to return it in.
        warn!("net {id}: cannot return chain {head}: {e}");
    }
}

impl VirtioDevice for Net {
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
        // Every field is read-only for a virtio 1.x driver.
        debug!(
            "net {}: ignored {}-byte config write at {offset:#x}",
            self.config.id,
            data.len()
        );
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.common.prepare_activation()?;
        let flags = offload_flags(self.common.acked_features);
        if let Err(e) = self.tap.set_offload(flags) {
            self.common.activated = false;
            return Err(ActivateError::Device(format!(
                "net {}: applying the guest's receive offloads: {e}",
                self.config.id
            )));
        }
        self.tap_offloads = flags;
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => warn!(
                "net {}: notification for queue {index}, which does not exist",
                self.config.id
            ),
        }
    }

    fn reset(&mut self) {
        self.common.reset();
        self.rx_pending = None;
        if self.tap_offloads != 0 {
            match self.tap.set_offload(0) {
                Ok(()) => self.tap_offloads = 0,
                Err(e) => error!("net {}: clearing offloads on reset: {e}", self.config.id),
            }
        }
    }
}
