//! Transmit: the driver's TX chains onto the TAP, straight from guest memory.
//!
//! A function of one TX queue, any guest memory and a TAP, shared by the
//! in-process device and the vhost-user daemon.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;

use crate::{guest_warn, host_warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;

use super::device::{NetCounters, MAX_PACKET_LEN};
use super::ring::{avail_overrun, put_used, BadChain, QueueRun};
use super::tap::{Tap, VNET_HDR_LEN};
use crate::virtio::chain::{pop_chain, Chain};
use crate::virtio::counter::bump;

/// writev refuses more than IOV_MAX segments.
const MAX_IOVECS: usize = 1024;

/// Sends every chain available on TX queue `q` to `tap`, until the ring is
/// empty with notifications re-enabled.
pub fn process_tx<M: GuestMemoryBackend>(
    q: &mut Queue,
    mem: &M,
    tap: &Tap,
    counters: &mut NetCounters,
    id: &str,
) -> QueueRun {
    let used_before = q.next_used();
    let mut run = QueueRun::default();
    let mut empty_passes = 0;
    loop {
        if let Err(e) = q.disable_notification(mem) {
            guest_warn!("net {id}: TX queue: {e}");
        }
        match q.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) if !avail_overrun(q, idx.0, "TX", id) => {}
            Ok(_) => {
                run.broken = true;
                break;
            }
            Err(e) => {
                guest_warn!("net {id}: TX queue unreadable: {e}");
                run.broken = true;
                break;
            }
        }
        let mut popped = 0;
        while let Some(chain) = pop_chain(q, mem, &format_args!("net {id}: TX queue")) {
            popped += 1;
            let head = chain.head_index();
            match transmit(tap, mem, chain) {
                Ok(frame_len) => {
                    bump(&mut counters.tx_packets, 1);
                    bump(&mut counters.tx_bytes, frame_len as u64);
                }
                Err(e @ TxDrop::Tap(_)) => {
                    bump(&mut counters.tx_dropped, 1);
                    host_warn!("net {id}: TX chain {head} dropped: {e}");
                }
                Err(e) => {
                    bump(&mut counters.tx_dropped, 1);
                    guest_warn!("net {id}: TX chain {head} dropped: {e}");
                }
            }
            // The device writes nothing into TX buffers.
            put_used(q, mem, head, 0, id);
        }
        empty_passes = if popped == 0 { empty_passes + 1 } else { 0 };
        match q.enable_notification(mem) {
            // One empty pass is the driver publishing between the last
            // look and re-enabling notifications. Two mean the ring
            // announces chains that cannot be taken: going on would spin.
            Ok(true) if empty_passes >= 2 => {
                guest_warn!("net {id}: TX queue: the available index announces chains that cannot be taken; waiting for the next notification");
                break;
            }
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                guest_warn!("net {id}: TX queue: {e}");
                break;
            }
        }
    }
    run.completed = q.next_used() != used_before;
    run
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

/// Writes one TX chain (header and frame) to the TAP. Returns the frame length.
fn transmit<M: GuestMemoryBackend>(
    tap: &Tap,
    mem: &M,
    mut chain: Chain<&M>,
) -> Result<usize, TxDrop> {
    let mut iovs: Vec<libc::iovec> = Vec::new();
    let mut guards = Vec::new();
    let mut total = 0usize;
    let mut ends = false;
    for d in chain.by_ref() {
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
    if chain.met_indirect() {
        return Err(TxDrop::Chain(BadChain::Indirect));
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
        host_warn!("TAP {:?} took {written} of {total} bytes", tap.name());
    }
    Ok(total - VNET_HDR_LEN)
}
