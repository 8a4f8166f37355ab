//! Configuration space, offered features, constructor validation, set_requested.

use super::*;
use crate::virtio::{InterruptKind, VIRTIO_F_VERSION_1};

fn le64(c: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(c[at..at + 8].try_into().unwrap())
}

#[test]
fn config_space_layout() {
    let mut vm = Vm::new(&mem_config(REGION, 8 * MIB, BackingSpec::anonymous()));
    let c = vm.config_bytes();
    assert_eq!(le64(&c, 0), BLOCK, "block_size");
    assert_eq!(&c[8..16], &[0; 8], "node_id and padding");
    assert_eq!(le64(&c, 16), BASE, "addr");
    assert_eq!(le64(&c, 24), REGION, "region_size");
    assert_eq!(le64(&c, 32), REGION, "usable_region_size");
    assert_eq!(le64(&c, 40), 0, "plugged_size");
    assert_eq!(le64(&c, 48), 8 * MIB, "requested_size");

    assert_eq!(vm.plug(3, 2), VIRTIO_MEM_RESP_ACK);
    let c = vm.config_bytes();
    assert_eq!(le64(&c, 40), 2 * BLOCK);

    // Partial and misaligned reads see the same bytes; past the end reads zero.
    let mut part = [0xffu8; 4];
    vm.dev.read_config(41, &mut part);
    assert_eq!(part, c[41..45]);
    let mut tail = [0xffu8; 8];
    vm.dev.read_config(52, &mut tail);
    assert_eq!(&tail[..4], &c[52..56]);
    assert_eq!(&tail[4..], &[0; 4]);
    vm.dev.read_config(CONFIG_SIZE as u64, &mut tail);
    assert_eq!(tail, [0; 8]);
    vm.dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);

    // The driver cannot change anything.
    vm.dev.write_config(48, &[0xff; 8]);
    vm.dev.write_config(0, &[0; CONFIG_SIZE]);
    assert_eq!(vm.config_bytes(), c);
}

#[test]
fn features_offered() {
    let cfg = mem_config(REGION, 0, BackingSpec::anonymous());
    let dev = Mem::new(&cfg, GuestAddress(BASE), ram_with(&cfg)).unwrap();
    assert_eq!(
        dev.common().avail_features,
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE
    );
    assert_eq!(dev.common().avail_features & VIRTIO_MEM_F_ACPI_PXM, 0);
    assert_eq!(dev.device_type(), crate::virtio::TYPE_MEM);
    assert_eq!(dev.common().queues.len(), 1);
    assert_eq!(
        virtio_queue::QueueT::max_size(&dev.common().queues[0]),
        QUEUE_SIZE
    );
}

#[test]
fn a_driver_without_unplugged_inaccessible_still_works() {
    let mut vm = Vm::with_features(
        &mem_config(REGION, 4 * MIB, BackingSpec::anonymous()),
        !VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
    );
    assert!(vm.dev.common().activated);
    assert_eq!(vm.plug(0, 1), VIRTIO_MEM_RESP_ACK);
}

/// Builds the device for `cfg` in RAM mapping `cfg`'s region at `mapped`
/// (or nothing), at guest address `addr`, and returns the error text.
fn new_error(cfg: &MemConfig, mapped: Option<(u64, u64)>, addr: u64) -> String {
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &BackingSpec::anonymous(),
        RegionRole::Boot,
        &[(GuestAddress(0), BOOT_SIZE)],
    )
    .unwrap();
    if let Some((base, size)) = mapped {
        b.add(
            "virtio-mem",
            &BackingSpec::anonymous(),
            RegionRole::VirtioMem("mem0".into()),
            &[(GuestAddress(base), size)],
        )
        .unwrap();
    }
    let ram = Arc::new(b.build().unwrap());
    match Mem::new(cfg, GuestAddress(addr), ram) {
        Ok(_) => panic!("{cfg:?} at {addr:#x} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn new_refuses_bad_configurations() {
    let anon = BackingSpec::anonymous();
    let ok = Some((BASE, REGION));
    let with_block = |bs| MemConfig {
        block_size: bs,
        ..mem_config(REGION, 0, anon.clone())
    };

    let e = new_error(&with_block(3 * MIB), ok, BASE);
    assert!(e.contains("block-size=3M is not a power of two"), "{e}");
    let e = new_error(&with_block(MIB), ok, BASE);
    assert!(
        e.contains("block-size=1M is smaller than 2M") && e.contains("use block-size=2M"),
        "{e}"
    );
    let e = new_error(&with_block(0), ok, BASE);
    assert!(e.contains("not a power of two"), "{e}");

    let e = new_error(
        &mem_config(63 * MIB, 0, anon.clone()),
        Some((BASE, 63 * MIB)),
        BASE,
    );
    assert!(
        e.contains("size=63M is not a positive multiple of block-size=2M"),
        "{e}"
    );
    let e = new_error(&mem_config(0, 0, anon.clone()), ok, BASE);
    assert!(e.contains("size=0"), "{e}");

    let e = new_error(&mem_config(REGION, REGION + BLOCK, anon.clone()), ok, BASE);
    assert!(e.contains("requested=66M is larger than size=64M"), "{e}");
    let e = new_error(&mem_config(REGION, MIB, anon.clone()), ok, BASE);
    assert!(
        e.contains("requested=1M is not a multiple of block-size=2M"),
        "{e}"
    );

    let e = new_error(
        &mem_config(REGION, 0, anon.clone()),
        Some((BASE + MIB, REGION)),
        BASE + MIB,
    );
    assert!(e.contains("not aligned to block-size=2M"), "{e}");

    let e = new_error(&mem_config(REGION, 0, anon.clone()), None, BASE);
    assert!(e.contains("guest RAM has no region for this device"), "{e}");
    let e = new_error(
        &mem_config(REGION, 0, anon.clone()),
        Some((BASE, REGION / 2)),
        BASE,
    );
    assert!(
        e.contains("mapped at 0x40000000+0x2000000") && e.contains("expects 0x40000000+0x4000000"),
        "{e}"
    );
    let e = new_error(&mem_config(REGION, 0, anon.clone()), ok, BASE + REGION);
    assert!(e.contains("expects 0x44000000+0x4000000"), "{e}");

    // Every message names the device.
    assert!(e.starts_with("virtio-mem 'mem0'"), "{e}");
}

#[test]
fn new_refuses_a_region_in_pieces() {
    let cfg = mem_config(REGION, 0, BackingSpec::anonymous());
    let mut b = GuestRam::builder();
    b.add(
        "virtio-mem",
        &cfg.backing,
        RegionRole::VirtioMem("mem0".into()),
        &[
            (GuestAddress(BASE), REGION / 2),
            (GuestAddress(BASE + REGION / 2), REGION / 2),
        ],
    )
    .unwrap();
    let ram = Arc::new(b.build().unwrap());
    let e = Mem::new(&cfg, GuestAddress(BASE), ram).err().unwrap();
    assert!(e.to_string().contains("mapped in 2 pieces"), "{e}");
}

#[test]
fn accessors() {
    let mut vm = Vm::new(&mem_config(REGION, 8 * MIB, BackingSpec::anonymous()));
    assert_eq!(vm.dev.id(), "mem0");
    assert_eq!(vm.dev.addr(), GuestAddress(BASE));
    assert_eq!(vm.dev.region_size(), REGION);
    assert_eq!(vm.dev.usable_region_size(), REGION);
    assert_eq!(vm.dev.block_size(), BLOCK);
    assert_eq!(vm.dev.requested_size(), 8 * MIB);
    assert!(!vm.dev.has_plugged_memory());
    assert!(vm.dev.plugged_ranges().is_empty());
    assert_eq!(vm.plug(0, 2), VIRTIO_MEM_RESP_ACK);
    assert_eq!(vm.plug(5, 1), VIRTIO_MEM_RESP_ACK);
    assert!(vm.dev.has_plugged_memory());
    assert_eq!(vm.dev.plugged_size(), 3 * BLOCK);
    assert_eq!(
        vm.dev.plugged_ranges(),
        vec![
            (GuestAddress(block(0)), 2 * BLOCK),
            (GuestAddress(block(5)), BLOCK)
        ]
    );
}

#[test]
fn set_requested_raises_a_config_interrupt() {
    let mut vm = Vm::new(&mem_config(REGION, 0, BackingSpec::anonymous()));
    assert!(vm.log.take().is_empty());
    let gen = vm.dev.common().config_generation;

    vm.dev.set_requested(6 * MIB).unwrap();
    assert_eq!(vm.log.take(), vec![InterruptKind::Config]);
    assert_eq!(vm.dev.common().config_generation, gen.wrapping_add(1));
    assert_eq!(le64(&vm.config_bytes(), 48), 6 * MIB);
    assert_eq!(vm.dev.requested_size(), 6 * MIB);

    // The same value again changes nothing and says nothing.
    vm.dev.set_requested(6 * MIB).unwrap();
    assert!(vm.log.take().is_empty());
    assert_eq!(vm.dev.common().config_generation, gen.wrapping_add(1));

    // Refused values change nothing either.
    let e = vm.dev.set_requested(REGION + BLOCK).unwrap_err();
    assert!(e.to_string().contains("is larger than size=64M"), "{e}");
    let e = vm.dev.set_requested(3 * MIB).unwrap_err();
    assert!(
        e.to_string().contains("not a multiple of block-size=2M"),
        "{e}"
    );
    assert!(vm.log.take().is_empty());
    assert_eq!(vm.dev.requested_size(), 6 * MIB);

    // The guest may plug up to the new request, and no further.
    assert_eq!(vm.plug(0, 3), VIRTIO_MEM_RESP_ACK);
    assert_eq!(vm.plug(3, 1), VIRTIO_MEM_RESP_NACK);

    vm.log.take();
    // Lowering the request below what is plugged is how the host asks for memory back.
    vm.dev.set_requested(0).unwrap();
    assert_eq!(vm.log.take(), vec![InterruptKind::Config]);
    assert_eq!(vm.dev.plugged_size(), 6 * MIB);
}

#[test]
fn set_requested_before_activation_interrupts_nobody() {
    let cfg = mem_config(REGION, 0, BackingSpec::anonymous());
    let mut dev = Mem::new(&cfg, GuestAddress(BASE), ram_with(&cfg)).unwrap();
    let log = Arc::new(InterruptLog::default());
    dev.common_mut().interrupt = Some(log.clone());
    dev.set_requested(REGION).unwrap();
    assert!(log.take().is_empty());
    assert_eq!(dev.common().config_generation, 1);
    assert_eq!(dev.requested_size(), REGION);
}
