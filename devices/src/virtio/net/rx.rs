//! Receive: packets from the TAP into the driver's RX buffers.
//!
//! A function of one RX queue, any guest memory and a TAP, so that the
//! in-process device and the vhost-user daemon (whose memory comes from the
//! front end) run the same code.

use std::io;
use std::sync::atomic::{fence, Ordering};

use crate::virtio::counter::bump;
use crate::{guest_warn, host_error, host_warn};
use log::debug;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::device::{NetCounters, MAX_PACKET_LEN, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use super::ring::{avail_overrun, put_used, BadChain, QueueRun};
use super::tap::{Tap, VNET_HDR_LEN};
use crate::virtio::chain::{pop_chain, Chain};

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Offset of `flags` in `virtio_net_hdr_v1`.
const FLAGS_OFFSET: usize = 0;

/// The receive side of one queue pair: a packet read from the TAP waits here
/// while the driver has no room for it.
///
/// [`RxQueue::process`] reads until the TAP is empty or the guest runs out
/// of RX buffers; in the latter case one packet is held and the TAP is not
/// read again until the driver adds buffers (its notification on the RX
/// queue resumes reading). So the fd suits edge-triggered polling (EPOLLET);
/// with level-triggered polling, skip the fd while [`RxQueue::stalled`].
pub struct RxQueue {
    buf: Box<[u8]>,
    /// Length of the packet held in `buf`, header included.
    pending: Option<usize>,
}

impl Default for RxQueue {
    fn default() -> Self {
        RxQueue {
            buf: vec![0u8; MAX_PACKET_LEN].into_boxed_slice(),
            pending: None,
        }
    }
}

impl RxQueue {
    /// A packet is waiting for RX buffers; the TAP is not read meanwhile.
    pub fn stalled(&self) -> bool {
        self.pending.is_some()
    }

    /// The held packet, header included.
    pub fn held(&self) -> Option<&[u8]> {
        self.pending.map(|n| &self.buf[..n])
    }

    /// Holds `pkt` (checked by the caller to be a header plus at most
    /// `MAX_PACKET_LEN` bytes) as if it had just been read from the TAP.
    pub(super) fn hold(&mut self, pkt: &[u8]) {
        self.buf[..pkt.len()].copy_from_slice(pkt);
        self.pending = Some(pkt.len());
    }

    /// Forgets the held packet (device reset).
    pub fn clear(&mut self) {
        self.pending = None;
    }

    /// Moves packets from `tap` into the buffers of RX queue `q` until the
    /// TAP is empty or the buffers run out. `features` are the driver's.
    pub fn process<M: GuestMemoryBackend>(
        &mut self,
        q: &mut Queue,
        mem: &M,
        tap: &Tap,
        features: u64,
        counters: &mut NetCounters,
        id: &str,
    ) -> QueueRun {
        let used_before = q.next_used();
        let mut run = QueueRun::default();
        loop {
            let len = match self.pending {
                Some(len) => len,
                None => match tap.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) if n < VNET_HDR_LEN => {
                        host_warn!(
                            "net {id}: {n}-byte read from TAP {:?} is shorter than a virtio-net header; dropped",
                            tap.name()
                        );
                        bump(&mut counters.rx_dropped, 1);
                        continue;
                    }
                    Ok(n) => {
                        self.pending = Some(n);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        host_error!("net {id}: reading TAP {:?} failed: {e}", tap.name());
                        run.tap_error = true;
                        break;
                    }
                },
            };
            match self.deliver(q, mem, len, features, counters, id) {
                RxOutcome::Delivered | RxOutcome::Dropped => self.pending = None,
                RxOutcome::NoBuffers { seen_avail } => {
                    if arm_rx_kick(q, mem, seen_avail, id) {
                        continue;
                    }
                    break;
                }
                RxOutcome::Broken => {
                    run.broken = true;
                    break;
                }
            }
        }
        run.completed = q.next_used() != used_before;
        run
    }

    /// Places the pending packet (`len` bytes of `buf`) into guest buffers.
    fn deliver<M: GuestMemoryBackend>(
        &mut self,
        q: &mut Queue,
        mem: &M,
        len: usize,
        features: u64,
        counters: &mut NetCounters,
        id: &str,
    ) -> RxOutcome {
        let mrg = features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let guest_csum = features & VIRTIO_NET_F_GUEST_CSUM != 0;
        let seen_avail = match q.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) => idx.0,
            Err(e) => {
                guest_warn!("net {id}: RX queue unreadable: {e}");
                return RxOutcome::Broken;
            }
        };
        if avail_overrun(q, seen_avail, "RX", id) {
            return RxOutcome::Broken;
        }

        let mut chains: Vec<RxChain> = Vec::new();
        let mut cap = 0usize;
        while cap < len {
            let Some(chain) = pop_chain(q, mem, &format_args!("net {id}: RX queue")) else {
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
                    bump(&mut counters.rx_dropped, 1);
                    debug!(
                        "net {id}: {len}-byte packet does not fit a {}-byte RX buffer; dropped",
                        c.cap
                    );
                    return RxOutcome::Dropped;
                }
                Ok(c) => {
                    cap += c.cap;
                    chains.push(c);
                }
                Err(why) => {
                    guest_warn!("net {id}: RX chain {head}: {why}; returned unused");
                    bump(&mut counters.rx_bad_chains, 1);
                    if first {
                        put_used(q, mem, head, 0, id);
                        continue;
                    }
                    // Chains before it already hold part of the packet and
                    // used entries must stay in order: give them all back
                    // empty and drop the packet.
                    for c in chains.drain(..) {
                        put_used(q, mem, c.head, 0, id);
                    }
                    put_used(q, mem, head, 0, id);
                    bump(&mut counters.rx_dropped, 1);
                    return RxOutcome::Dropped;
                }
            }
        }

        let pkt = &mut self.buf[..len];
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
                    guest_warn!("net {id}: writing RX buffer at {:#x}: {e}", addr.0);
                    break;
                }
                off += n;
                written += n;
            }
            put_used(q, mem, c.head, written as u32, id);
        }
        bump(&mut counters.rx_packets, 1);
        bump(&mut counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
        RxOutcome::Delivered
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

/// Asks the driver to notify the RX queue when it adds buffers. Returns
/// true if buffers arrived since `seen_avail` was read, so the caller must
/// try again instead of waiting for a notification that may never come.
fn arm_rx_kick<M: GuestMemoryBackend>(q: &mut Queue, mem: &M, seen_avail: u16, id: &str) -> bool {
    if let Err(e) = q.enable_notification(mem) {
        guest_warn!("net {id}: RX queue: {e}");
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
            guest_warn!("net {id}: RX queue avail_event: {e}");
        }
    }
    fence(Ordering::SeqCst);
    match q.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => idx.0 != seen_avail,
        Err(_) => false,
    }
}

/// A device-writable chain checked to lie in guest RAM.
struct RxChain {
    head: u16,
    segs: Vec<(GuestAddress, usize)>,
    cap: usize,
}

fn parse_rx_chain<M: GuestMemoryBackend>(
    mem: &M,
    mut chain: Chain<&M>,
) -> Result<RxChain, BadChain> {
    let head = chain.head_index();
    let mut segs = Vec::new();
    let mut cap = 0usize;
    let mut ends = false;
    for d in chain.by_ref() {
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
    if chain.met_indirect() {
        return Err(BadChain::Indirect);
    }
    if !ends {
        return Err(BadChain::Truncated);
    }
    Ok(RxChain { head, segs, cap })
}
