//! Descriptor chains walked without following indirect tables.
//!
//! No device here offers VIRTIO_F_INDIRECT_DESC, and a driver that accepts
//! it anyway does not get FEATURES_OK, so it is never negotiated: a
//! descriptor with VIRTQ_DESC_F_INDIRECT is a driver error (virtio 1.2,
//! 2.7.5.3.1), and the chain holding it is refused like any other
//! malformed chain. virtio-queue's `DescriptorChain` follows indirect
//! tables by itself and does not tell when it did, so the devices take
//! chains off their queues with [`pop_chain`] and walk them with
//! [`Chain`], which yields the same descriptors and stops at an indirect
//! one. The flag is judged on the very descriptor the walk reads, so a
//! driver rewriting descriptors meanwhile cannot slip one past it.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use crate::guest_warn;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// The descriptors of one available chain, read from the queue's
/// descriptor table as the iteration goes. Like `DescriptorChain`, the
/// walk just ends on a loop (after as many descriptors as the queue has),
/// a next index outside the table, an unreadable descriptor or a total
/// length over 4 GiB: a chain that ended properly has a last descriptor
/// without NEXT. It also ends at a descriptor that refers to an indirect
/// table, which it does not yield; [`Chain::met_indirect`] then says so.
pub struct Chain<M> {
    mem: M,
    table: GuestAddress,
    size: u16,
    head: u16,
    next: u16,
    ttl: u16,
    bytes: u32,
    indirect: bool,
}

impl<M> Chain<M>
where
    M: Deref,
    M::Target: GuestMemoryBackend,
{
    /// The chain starting at descriptor `head` of `queue`'s table.
    pub fn new(mem: M, queue: &Queue, head: u16) -> Self {
        Chain {
            mem,
            table: GuestAddress(queue.desc_table()),
            size: queue.size(),
            head,
            next: head,
            ttl: queue.size(),
            bytes: 0,
            indirect: false,
        }
    }

    /// The head descriptor's index, which the used entry names.
    pub fn head_index(&self) -> u16 {
        self.head
    }

    pub fn memory(&self) -> &M::Target {
        &self.mem
    }

    /// The walk stopped at a descriptor that refers to an indirect table.
    pub fn met_indirect(&self) -> bool {
        self.indirect
    }
}

impl<M> Iterator for Chain<M>
where
    M: Deref,
    M::Target: GuestMemoryBackend,
{
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        if self.ttl == 0 || self.next >= self.size {
            return None;
        }
        // Ends the walk; every exit below that yields nothing goes through it.
        let stop = |c: &mut Self| {
            c.ttl = 0;
            None
        };
        let Some(addr) = self.table.checked_add(u64::from(self.next) * 16) else {
            return stop(self);
        };
        let Ok(desc) = self.mem.read_obj::<Descriptor>(addr) else {
            return stop(self);
        };
        if desc.refers_to_indirect_table() {
            self.indirect = true;
            return stop(self);
        }
        // virtio 1.2, 2.7.5.2: a chain carries less than 4 GiB.
        let Some(bytes) = self.bytes.checked_add(desc.len()) else {
            return stop(self);
        };
        self.bytes = bytes;
        if desc.has_next() {
            self.next = desc.next();
            self.ttl -= 1;
        } else {
            self.ttl = 0;
        }
        Some(desc)
    }
}

/// Takes the next available chain off `queue`, or `None` when there is
/// none. An available index the queue cannot follow (the driver claims
/// more chains than the queue holds) or an unreadable ring also gives
/// `None`, with a warning naming `device`; `pop_descriptor_chain` would
/// log it at ERROR.
///
/// The ring is read here rather than through `Queue::iter`, which takes
/// an available ring at guest address 0 for a queue that was reset and
/// refuses it: a driver may place its ring there (activation accepts
/// it), and such a queue had chains announced that none could take,
/// which left net's TX spinning forever (found by fuzzing). Callers
/// check that the queue is ready.
pub fn pop_chain<M>(queue: &mut Queue, mem: M, device: &dyn fmt::Display) -> Option<Chain<M>>
where
    M: Clone + Deref,
    M::Target: GuestMemoryBackend,
{
    let next = queue.next_avail();
    let avail = match queue.avail_idx(&*mem, Ordering::Acquire) {
        Ok(idx) => idx.0,
        Err(e) => {
            guest_warn!("{device}: cannot read the available index: {e}");
            return None;
        }
    };
    if avail == next {
        return None;
    }
    let size = queue.size();
    if avail.wrapping_sub(next) > size || size == 0 {
        guest_warn!(
            "{device}: cannot take a chain off the available ring: the driver published index {avail}, {} chains ahead of the device in a queue of {size}",
            avail.wrapping_sub(next)
        );
        return None;
    }
    // flags and idx (4 bytes), then one u16 head per entry.
    let slot = GuestAddress(queue.avail_ring()).checked_add(4 + 2 * u64::from(next % size))?;
    let head = match mem.load::<u16>(slot, Ordering::Acquire) {
        Ok(h) => u16::from_le(h),
        Err(e) => {
            guest_warn!("{device}: cannot read available ring entry {next}: {e}");
            return None;
        }
    };
    queue.set_next_avail(next.wrapping_add(1));
    Some(Chain::new(mem, queue, head))
}

/// Puts chain `head` in `queue`'s used ring, as `Queue::add_used` does,
/// but refuses a head outside the descriptor table (the driver published a
/// bad index: there is no slot to return it in) without `add_used`'s own
/// ERROR line, so that the caller's bounded warning is the only one.
pub fn add_used<M>(
    queue: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error>
where
    M: GuestMemoryBackend,
{
    if head >= queue.size() {
        return Err(virtio_queue::Error::InvalidDescriptorIndex);
    }
    queue.add_used(mem, head, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::GuestRam;
    use crate::virtio::testing::{raw, DriverQueue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

    const INDIRECT: u16 = 4;
    const QSIZE: u16 = 8;

    /// A descriptor table entry: index, then (addr, len, flags, next).
    type Entry = (u16, (u64, u32, u16, u16));

    fn queue_with(table: &[Entry], head: u16) -> (GuestRam, Queue) {
        let ram = GuestRam::anonymous(1 << 20).unwrap();
        let mut dq = DriverQueue::new(ram.memory(), GuestAddress(0), QSIZE);
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(dq.desc_table()).unwrap();
        q.try_set_avail_ring_address(dq.avail_ring()).unwrap();
        q.try_set_used_ring_address(dq.used_ring()).unwrap();
        q.set_ready(true);
        let table: Vec<_> = table
            .iter()
            .map(|&(i, (a, l, f, n))| (i, raw(a, l, f, n)))
            .collect();
        dq.add_raw_chain(head, &table);
        (ram, q)
    }

    fn walk(table: &[Entry], head: u16) -> (Vec<u64>, bool) {
        let (ram, mut q) = queue_with(table, head);
        let mut chain = pop_chain(&mut q, ram.memory(), &"test").expect("a chain");
        assert_eq!(chain.head_index(), head);
        let addrs = chain.by_ref().map(|d| d.addr().0).collect();
        (addrs, chain.met_indirect())
    }

    #[test]
    fn direct_chains_are_walked_as_virtio_queue_walks_them() {
        let (addrs, indirect) = walk(
            &[
                (2, (0x1000, 16, VIRTQ_DESC_F_NEXT, 5)),
                (5, (0x2000, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1)),
                (1, (0x3000, 1, VIRTQ_DESC_F_WRITE, 0)),
            ],
            2,
        );
        assert_eq!((addrs, indirect), (vec![0x1000, 0x2000, 0x3000], false));
        // A loop ends after as many descriptors as the queue has.
        let (addrs, indirect) = walk(&[(0, (0x1000, 16, VIRTQ_DESC_F_NEXT, 0))], 0);
        assert_eq!((addrs.len(), indirect), (usize::from(QSIZE), false));
        // A next index outside the table ends the walk.
        let (addrs, _) = walk(&[(0, (0x1000, 16, VIRTQ_DESC_F_NEXT, QSIZE))], 0);
        assert_eq!(addrs, vec![0x1000]);
        // More than 4 GiB in total ends it too.
        let (addrs, _) = walk(
            &[
                (0, (0x1000, u32::MAX, VIRTQ_DESC_F_NEXT, 1)),
                (1, (0x1000, 1, 0, 0)),
            ],
            0,
        );
        assert_eq!(addrs, vec![0x1000]);
    }

    /// A driver may put its available ring at guest address 0, which
    /// `Queue::iter` refuses as "not ready": such a queue once announced
    /// chains none could take, and net's TX spun on it for good
    /// (fuzz/regressions/net_queue/avail-ring-at-0).
    #[test]
    fn an_available_ring_at_guest_address_0_gives_its_chains() {
        let ram = GuestRam::anonymous(1 << 20).unwrap();
        let mem = ram.memory();
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(0)).unwrap();
        q.try_set_used_ring_address(GuestAddress(0x2000)).unwrap();
        q.set_ready(true);
        mem.write_obj(raw(0x3000, 16, 0, 0), GuestAddress(0x1000 + 16 * 5))
            .unwrap();
        mem.write_obj(5u16.to_le(), GuestAddress(4)).unwrap();
        mem.write_obj(1u16.to_le(), GuestAddress(2)).unwrap();
        let mut chain = pop_chain(&mut q, mem, &"test").expect("the chain in slot 0");
        assert_eq!(chain.head_index(), 5);
        assert_eq!(chain.next().map(|d| d.addr().0), Some(0x3000));
        assert!(pop_chain(&mut q, mem, &"test").is_none(), "one chain only");
        assert_eq!(q.next_avail(), 1);

        // An index more than a queue ahead gives nothing and takes nothing.
        mem.write_obj((2 + QSIZE).to_le(), GuestAddress(2)).unwrap();
        assert!(pop_chain(&mut q, mem, &"test").is_none());
        assert_eq!(q.next_avail(), 1);
    }

    #[test]
    fn an_indirect_descriptor_ends_the_walk_unfollowed() {
        let (addrs, indirect) = walk(&[(0, (0x8000, 16, INDIRECT, 0))], 0);
        assert_eq!((addrs, indirect), (vec![], true));
        // After direct descriptors, too.
        let (addrs, indirect) = walk(
            &[
                (0, (0x1000, 16, VIRTQ_DESC_F_NEXT, 3)),
                (3, (0x8000, 16, INDIRECT, 0)),
            ],
            0,
        );
        assert_eq!((addrs, indirect), (vec![0x1000], true));
    }
}
