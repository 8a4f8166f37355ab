//! PLUG, UNPLUG, UNPLUG_ALL and STATE, against real memory and backings.

use std::os::unix::fs::MetadataExt;

use super::*;
use crate::virtio::{InterruptKind, STATUS_NEEDS_RESET};

const ACK: u16 = VIRTIO_MEM_RESP_ACK;
const NACK: u16 = VIRTIO_MEM_RESP_NACK;
const BUSY: u16 = VIRTIO_MEM_RESP_BUSY;
const ERROR: u16 = VIRTIO_MEM_RESP_ERROR;

fn anon_vm(requested: u64) -> Vm {
    Vm::new(&mem_config(REGION, requested, BackingSpec::anonymous()))
}

#[test]
fn plug_and_state() {
    let mut vm = anon_vm(8 * MIB);
    assert_eq!(vm.state(0, 32), (ACK, VIRTIO_MEM_STATE_UNPLUGGED));
    assert_eq!(vm.plug(0, 2), ACK);
    assert_eq!(vm.dev.plugged_size(), 2 * BLOCK);
    assert_eq!(vm.state(0, 2), (ACK, VIRTIO_MEM_STATE_PLUGGED));
    assert_eq!(vm.state(1, 1), (ACK, VIRTIO_MEM_STATE_PLUGGED));
    assert_eq!(vm.state(0, 4), (ACK, VIRTIO_MEM_STATE_MIXED));
    assert_eq!(vm.state(1, 2), (ACK, VIRTIO_MEM_STATE_MIXED));
    assert_eq!(vm.state(2, 30), (ACK, VIRTIO_MEM_STATE_UNPLUGGED));

    // Already plugged, even partly: ERROR, nothing changes.
    assert_eq!(vm.plug(1, 1), ERROR);
    assert_eq!(vm.plug(1, 2), ERROR);
    assert_eq!(vm.dev.plugged_size(), 2 * BLOCK);
    // More than requested: NACK, also when the range is partly plugged (the
    // size check comes first, as in QEMU).
    assert_eq!(vm.plug(2, 3), NACK);
    assert_eq!(vm.plug(1, 3), NACK);
    // Exactly up to the request is fine.
    assert_eq!(vm.plug(30, 2), ACK);
    assert_eq!(vm.dev.plugged_size(), 8 * MIB);
    assert_eq!(vm.plug(2, 1), NACK);
    assert_eq!(
        vm.dev.plugged_ranges(),
        vec![
            (GuestAddress(block(0)), 2 * BLOCK),
            (GuestAddress(block(30)), 2 * BLOCK)
        ]
    );
}

#[test]
fn ranges_that_are_not_usable_blocks_are_errors() {
    let mut vm = anon_vm(REGION);
    let bad: &[(u64, u16)] = &[
        (BASE + 4096, 1),          // not block aligned
        (BASE + MIB, 1),           // half a block
        (BASE, 0),                 // no blocks
        (BASE - BLOCK, 1),         // below the region
        (BASE - BLOCK, 2),         // straddles its start
        (block(31), 2),            // straddles its end
        (block(32), 1),            // just past it
        (0, 1),                    // boot RAM
        (u64::MAX - BLOCK + 1, 1), // the end of the address space
        (BASE, u16::MAX),          // far too many blocks
    ];
    for kind in [
        VIRTIO_MEM_REQ_PLUG,
        VIRTIO_MEM_REQ_UNPLUG,
        VIRTIO_MEM_REQ_STATE,
    ] {
        for &(addr, n) in bad {
            assert_eq!(vm.call(kind, addr, n), ERROR, "type {kind} {addr:#x} x{n}");
        }
    }
    assert_eq!(vm.dev.plugged_size(), 0);
    // The whole region at once is a valid range.
    assert_eq!(vm.plug(0, 32), ACK);
    assert_eq!(vm.state(0, 32), (ACK, VIRTIO_MEM_STATE_PLUGGED));
}

#[test]
fn unknown_request_types_are_errors() {
    let mut vm = anon_vm(REGION);
    for kind in [4u16, 0x100, u16::MAX] {
        assert_eq!(vm.call(kind, BASE, 1), ERROR);
    }
    assert_eq!(vm.dev.plugged_size(), 0);
}

#[test]
fn unplug_needs_every_block_plugged() {
    let mut vm = anon_vm(8 * MIB);
    assert_eq!(vm.unplug(0, 1), ERROR);
    assert_eq!(vm.plug(0, 2), ACK);
    assert_eq!(vm.unplug(1, 2), ERROR);
    assert_eq!(vm.unplug(0, 3), ERROR);
    assert_eq!(vm.dev.plugged_size(), 2 * BLOCK);
    // Part of a plugged range can go.
    assert_eq!(vm.unplug(1, 1), ACK);
    assert_eq!(vm.state(0, 2), (ACK, VIRTIO_MEM_STATE_MIXED));
    assert_eq!(vm.unplug(1, 1), ERROR);
    assert_eq!(vm.unplug(0, 1), ACK);
    assert_eq!(vm.dev.plugged_size(), 0);
    // Unplugging is allowed whatever the request says.
    assert_eq!(vm.plug(0, 4), ACK);
    vm.dev.set_requested(0).unwrap();
    assert_eq!(vm.unplug(0, 4), ACK);
}

#[test]
fn plugged_size_changes_bump_the_generation_without_interrupts() {
    let mut vm = anon_vm(8 * MIB);
    let g0 = vm.dev.common().config_generation;
    assert_eq!(vm.plug(0, 1), ACK);
    let g1 = vm.dev.common().config_generation;
    assert_ne!(g0, g1);
    assert_eq!(vm.state(0, 1), (ACK, VIRTIO_MEM_STATE_PLUGGED));
    assert_eq!(vm.plug(0, 1), ERROR);
    assert_eq!(vm.dev.common().config_generation, g1, "no change, no bump");
    assert_eq!(vm.unplug(0, 1), ACK);
    assert_ne!(vm.dev.common().config_generation, g1);
    assert!(vm.log.take().iter().all(|k| *k == InterruptKind::Queue(0)));
}

/// Plugs two blocks, fills them, unplugs the first: it must read zero and
/// (when `freed`) its host memory must be gone, while the second keeps its content.
fn unplug_discards(vm: &mut Vm, freed: bool) {
    assert_eq!(vm.plug(4, 2), ACK);
    assert!(
        vm.is_filled(block(4), 2 * BLOCK, 0),
        "plugged blocks start zeroed"
    );
    vm.fill(block(4), 2 * BLOCK, 0x5a);
    assert_eq!(
        resident_pages(&vm.ram, block(4), BLOCK),
        (BLOCK / 4096) as usize
    );

    assert_eq!(vm.unplug(4, 1), ACK);
    if freed {
        assert_eq!(
            resident_pages(&vm.ram, block(4), BLOCK),
            0,
            "host memory freed"
        );
    }
    assert!(vm.is_filled(block(4), BLOCK, 0));
    assert!(
        vm.is_filled(block(5), BLOCK, 0x5a),
        "the other block is untouched"
    );

    // Plugged again, the block reads zero.
    assert_eq!(vm.plug(4, 1), ACK);
    assert!(vm.is_filled(block(4), BLOCK, 0));
}

#[test]
fn unplug_discards_anonymous_memory() {
    let mut vm = anon_vm(8 * MIB);
    unplug_discards(&mut vm, true);
}

#[test]
fn unplug_punches_a_hole_in_a_shared_memfd() {
    let mut vm = Vm::new(&mem_config(REGION, 8 * MIB, BackingSpec::memfd(true)));
    let fd = vm
        .ram
        .region_of(GuestAddress(BASE), REGION)
        .unwrap()
        .shared_fd()
        .unwrap()
        .clone();
    unplug_discards(&mut vm, true);
    // mincore saw the page cache go; st_blocks sees the memfd itself shrink.
    assert!(fd.metadata().unwrap().blocks() * 512 >= BLOCK);
    assert_eq!(vm.unplug(4, 2), ACK);
    assert_eq!(fd.metadata().unwrap().blocks(), 0);
}

#[test]
fn unplug_discards_a_private_memfd() {
    // MADV_DONTNEED drops the private copies, so the block reads the memfd's
    // (zero) pages again; those pages themselves stay in the memfd, so
    // residency is not checked here.
    let mut vm = Vm::new(&mem_config(REGION, 8 * MIB, BackingSpec::memfd(false)));
    unplug_discards(&mut vm, false);
}

#[test]
fn unplug_all() {
    let mut vm = anon_vm(REGION);
    // Nothing plugged: nothing to do.
    assert_eq!(vm.unplug_all(), ACK);
    assert_eq!(vm.plug(0, 2), ACK);
    assert_eq!(vm.plug(7, 1), ACK);
    assert_eq!(vm.plug(31, 1), ACK);
    vm.fill(block(0), 2 * BLOCK, 1);
    vm.fill(block(7), BLOCK, 2);
    vm.fill(block(31), BLOCK, 3);
    let gen = vm.dev.common().config_generation;
    assert_eq!(vm.unplug_all(), ACK);
    assert_ne!(
        vm.dev.common().config_generation,
        gen,
        "plugged_size changed"
    );
    assert_eq!(vm.dev.plugged_size(), 0);
    assert!(vm.dev.plugged_ranges().is_empty());
    assert_eq!(vm.state(0, 32), (ACK, VIRTIO_MEM_STATE_UNPLUGGED));
    // mincore first: reading maps the zero page, which counts as resident.
    assert_eq!(resident_pages(&vm.ram, BASE, REGION), 0);
    assert!(vm.is_filled(BASE, REGION, 0));
    // The usable region does not shrink: the guest may plug anywhere again.
    assert_eq!(vm.dev.usable_region_size(), REGION);
    assert_eq!(vm.plug(31, 1), ACK);
    assert_eq!(vm.unplug_all(), ACK);
}

#[test]
fn a_shared_file_region_starts_zeroed() {
    // Whatever the file held, the guest must not find it in newly plugged blocks.
    let file = TempFile::new("shared", &vec![0x77u8; (4 * MIB) as usize]);
    let mut vm = Vm::new(&mem_config(
        4 * MIB,
        4 * MIB,
        BackingSpec::file(file.path(), true),
    ));
    assert_eq!(vm.plug(0, 2), ACK);
    assert!(vm.is_filled(BASE, 4 * MIB, 0));
}

#[test]
fn unplug_on_a_private_file_is_refused_and_the_block_stays_plugged() {
    // The RAM policy refuses this backing for virtio-mem; the device must
    // still not lose track of memory when someone bypasses it.
    let content: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    let file = TempFile::new("private", &content);
    let cfg = mem_config(4 * MIB, 4 * MIB, BackingSpec::file(file.path(), false));
    let mut vm = Vm::new(&cfg);
    // Nothing could be discarded at start: the file shows through.
    assert_eq!(snapshot_bytes(&vm.ram, BASE, 4 * MIB), content);

    assert_eq!(vm.plug(0, 1), ACK);
    vm.fill(block(0), BLOCK, 0xee);
    assert_eq!(vm.unplug(0, 1), ERROR);
    assert_eq!(vm.state(0, 1), (ACK, VIRTIO_MEM_STATE_PLUGGED));
    assert_eq!(vm.dev.plugged_size(), BLOCK);
    assert!(vm.is_filled(block(0), BLOCK, 0xee), "guest data kept");

    // UNPLUG_ALL may only answer BUSY, with nothing changed.
    assert_eq!(vm.unplug_all(), BUSY);
    assert_eq!(vm.dev.plugged_size(), BLOCK);
    assert!(vm.dev.unplug_all().is_err());
    assert!(vm.dev.has_plugged_memory());

    assert_eq!(
        std::fs::read(file.path()).unwrap(),
        content,
        "file unchanged"
    );
}

#[test]
fn every_request_interrupts_without_event_idx() {
    let mut vm = Vm::with_features(
        &mem_config(REGION, 8 * MIB, BackingSpec::anonymous()),
        NO_EVENT_IDX,
    );
    vm.plug(0, 1);
    vm.state(0, 1);
    vm.plug(0, 1);
    assert_eq!(vm.log.take(), vec![InterruptKind::Queue(0); 3]);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut vm = anon_vm(8 * MIB);
    assert!(vm.dev.common().has_feature(VIRTIO_RING_F_EVENT_IDX));
    // Interrupt once the used index moves past 2.
    vm.dq.set_used_event(2);
    vm.state(0, 1);
    vm.state(0, 1);
    assert!(vm.log.take().is_empty());
    vm.state(0, 1);
    assert_eq!(vm.log.take(), vec![InterruptKind::Queue(0)]);
    vm.state(0, 1);
    assert!(vm.log.take().is_empty());
}

#[test]
fn several_chains_in_one_notification() {
    let mut vm = Vm::with_features(
        &mem_config(REGION, 8 * MIB, BackingSpec::anonymous()),
        NO_EVENT_IDX,
    );
    for i in 0..3u64 {
        let at = REQ_ADDR + 0x100 * i;
        vm.mem()
            .write_slice(&req(VIRTIO_MEM_REQ_PLUG, block(i), 1), GuestAddress(at))
            .unwrap();
        vm.dq.add_chain(&[Buf::r(at, 24), Buf::w(at + 0x80, 10)]);
    }
    vm.dev.queue_notify(0);
    let used = vm.dq.used();
    assert_eq!(used.len(), 3);
    assert!(used.iter().all(|e| e.len() == 10));
    assert_eq!(vm.dev.plugged_size(), 3 * BLOCK);
    // One interrupt for the batch.
    assert_eq!(vm.log.take(), vec![InterruptKind::Queue(0)]);
}

#[test]
fn notifications_before_activation_or_for_other_queues_are_ignored() {
    let cfg = mem_config(REGION, 8 * MIB, BackingSpec::anonymous());
    let ram = ram_with(&cfg);
    let mut dev = Mem::new(&cfg, GuestAddress(BASE), ram.clone()).unwrap();
    dev.queue_notify(0);
    dev.queue_notify(1);
    let mut vm = anon_vm(8 * MIB);
    vm.mem()
        .write_slice(&req(VIRTIO_MEM_REQ_PLUG, BASE, 1), GuestAddress(REQ_ADDR))
        .unwrap();
    vm.dq
        .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 10)]);
    vm.dev.queue_notify(1);
    assert!(vm.dq.used().is_empty());
    vm.dev.queue_notify(0);
    assert_eq!(vm.dq.used().len(), 1);
}

#[test]
fn device_reset_keeps_plugged_blocks() {
    let mut vm = anon_vm(8 * MIB);
    assert_eq!(vm.plug(2, 2), ACK);
    vm.fill(block(2), 2 * BLOCK, 9);
    vm.dev.reset();
    assert!(!vm.dev.common().activated);
    assert_eq!(vm.dev.plugged_size(), 2 * BLOCK);

    // The driver comes back, sees memory plugged, and unplugs it all.
    vm.dq = DriverQueue::new(vm.ram.memory(), GuestAddress(QUEUE_BASE), QUEUE_SIZE);
    vm.log = init_device(&mut vm.dev, u64::MAX, &[&vm.dq]).unwrap();
    let c = vm.config_bytes();
    assert_eq!(u64::from_le_bytes(c[40..48].try_into().unwrap()), 2 * BLOCK);
    assert!(vm.is_filled(block(2), 2 * BLOCK, 9));
    assert_eq!(vm.state(2, 2), (ACK, VIRTIO_MEM_STATE_PLUGGED));
    assert_eq!(vm.unplug_all(), ACK);
    assert!(!vm.dev.has_plugged_memory());
}

#[test]
fn a_corrupt_available_index_marks_the_device_broken_without_spinning() {
    let mut vm = anon_vm(8 * MIB);
    let idx_addr = GuestAddress(vm.dq.avail_ring().0 + 2);
    vm.mem().write_obj(500u16, idx_addr).unwrap();
    vm.dev.queue_notify(0);
    assert_ne!(vm.dev.common().status & STATUS_NEEDS_RESET, 0);
    assert!(vm.log.take().contains(&InterruptKind::Config));
}

#[test]
fn a_queue_never_made_ready_is_left_alone() {
    let cfg = mem_config(REGION, 8 * MIB, BackingSpec::anonymous());
    let ram = ram_with(&cfg);
    let mut dev = Mem::new(&cfg, GuestAddress(BASE), ram.clone()).unwrap();
    let log = init_device(&mut dev, u64::MAX, &[]).unwrap();
    assert!(dev.common().activated);
    fill(&ram, 0, 0x1000, 0x33);
    dev.queue_notify(0);
    assert!(is_filled(&ram, 0, 0x1000, 0x33), "ring address 0 untouched");
    assert_eq!(dev.common().status & STATUS_NEEDS_RESET, 0);
    assert!(log.take().is_empty());
}

/// What QMP's MEMORY_DEVICE_SIZE_CHANGE reports: the listener hears the
/// plugged size after each notification that changed it, and only then.
#[test]
fn the_size_listener_hears_each_change() {
    use std::sync::{Arc, Mutex};
    let mut vm = anon_vm(8 * MIB);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    vm.dev
        .set_size_listener(Box::new(move |size| h.lock().unwrap().push(size)));
    assert_eq!(vm.state(0, 2), (ACK, VIRTIO_MEM_STATE_UNPLUGGED));
    assert_eq!(vm.plug(0, 2), ACK);
    assert_eq!(vm.plug(0, 1), ERROR);
    assert_eq!(vm.call(VIRTIO_MEM_REQ_UNPLUG, block(1), 1), ACK);
    assert_eq!(*heard.lock().unwrap(), vec![2 * BLOCK, BLOCK]);
}
