//! What the RX and TX paths share: how a queue pass ended, malformed chains,
//! and returning chains to the driver.

use std::fmt;

use crate::guest_warn;
use crate::virtio::chain::add_used;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;

use super::tap::VNET_HDR_LEN;

/// How one pass over a queue ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// Chains were returned to the driver: it may need an interrupt.
    pub completed: bool,
    /// The driver corrupted the ring; nothing more can be done until reset.
    pub broken: bool,
    /// Reading the TAP failed with an error other than "no packet": the
    /// caller must try again later, since an edge-triggered TAP will not
    /// report the packets still queued.
    pub tap_error: bool,
}

/// The driver claims more chains than the queue holds: the ring is corrupt
/// and every further pass would misread it.
pub(super) fn avail_overrun(q: &Queue, avail_idx: u16, name: &str, id: &str) -> bool {
    let ahead = avail_idx.wrapping_sub(q.next_avail());
    if ahead > q.size() {
        guest_warn!(
            "net {id}: {name} queue: driver published avail index {avail_idx}, {ahead} chains ahead of the device in a queue of {}; device needs reset",
            q.size()
        );
        return true;
    }
    false
}

#[derive(Debug)]
pub(super) enum BadChain {
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
    /// A descriptor refers to an indirect table; the feature is never offered.
    Indirect,
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
            BadChain::Indirect => write!(
                f,
                "chain refers to an indirect descriptor table, but VIRTIO_F_INDIRECT_DESC is not offered"
            ),
        }
    }
}

pub(super) fn put_used<M: GuestMemoryBackend>(
    q: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
    id: &str,
) {
    if let Err(e) = add_used(q, mem, head, len) {
        // Only a head index beyond the queue gets here: the driver
        // published garbage, and there is no slot to return it in.
        guest_warn!("net {id}: cannot return chain {head}: {e}");
    }
}
