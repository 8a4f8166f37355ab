//! Saving and restoring: a faithful round trip, and clear refusals of
//! saved state that is corrupt or belongs to another device.

use super::*;
use crate::virtio::persist::{encode, Persist, PersistError};
use crate::virtio::{TYPE_MEM, TYPE_NET};

fn plugged_vm() -> Vm {
    let mut vm = Vm::new(&mem_config(REGION, 16 * MIB, BackingSpec::anonymous()));
    assert_eq!(vm.plug(0, 3), VIRTIO_MEM_RESP_ACK);
    assert_eq!(vm.plug(20, 2), VIRTIO_MEM_RESP_ACK);
    vm.dev.set_requested(12 * MIB).unwrap();
    vm
}

fn args(vm: &Vm) -> MemRestoreArgs {
    MemRestoreArgs {
        config: vm.dev.config().clone(),
        addr: GuestAddress(BASE),
        ram: vm.ram.clone(),
    }
}

fn restore_err(vm: &Vm, bytes: &[u8]) -> PersistError {
    match Mem::restore_bytes(args(vm), bytes) {
        Ok(_) => panic!("restore accepted bad state"),
        Err(e) => e,
    }
}

fn restore_state_err(vm: &Vm, state: &MemState) -> PersistError {
    restore_err(vm, &encode(TYPE_MEM, 1, state))
}

#[test]
fn round_trip_keeps_everything() {
    let vm = plugged_vm();
    let bytes = vm.dev.save_bytes();
    let dev = Mem::restore_bytes(args(&vm), &bytes).unwrap();
    assert_eq!(dev.save(), vm.dev.save());
    assert_eq!(dev.plugged_ranges(), vm.dev.plugged_ranges());
    assert_eq!(dev.plugged_size(), 5 * BLOCK);
    assert_eq!(dev.requested_size(), 12 * MIB);
    assert!(dev.common().activated);
    let (mut a, mut b) = ([0u8; CONFIG_SIZE], [0u8; CONFIG_SIZE]);
    dev.read_config(0, &mut a);
    vm.dev.read_config(0, &mut b);
    assert_eq!(a, b);
}

#[test]
fn restore_touches_no_memory() {
    // The RAM snapshot owns the region's content; restoring the device must
    // not discard plugged (or any) blocks.
    let vm = plugged_vm();
    vm.fill(block(0), 3 * BLOCK, 0x42);
    let bytes = vm.dev.save_bytes();
    let _dev = Mem::restore_bytes(args(&vm), &bytes).unwrap();
    assert!(vm.is_filled(block(0), 3 * BLOCK, 0x42));
}

#[test]
fn envelope_errors() {
    let vm = plugged_vm();
    let good = vm.dev.save_bytes();

    let mut bad = good.clone();
    bad[0] ^= 0xff;
    assert!(matches!(restore_err(&vm, &bad), PersistError::BadMagic));
    assert!(matches!(restore_err(&vm, &[]), PersistError::BadMagic));

    let wrong = encode(TYPE_NET, 1, &vm.dev.save());
    assert!(matches!(
        restore_err(&vm, &wrong),
        PersistError::WrongDevice {
            expected: TYPE_MEM,
            found: TYPE_NET
        }
    ));

    let newer = encode(TYPE_MEM, 2, &vm.dev.save());
    let e = restore_err(&vm, &newer);
    assert!(
        matches!(
            e,
            PersistError::UnsupportedVersion {
                found: 2,
                min: 1,
                max: 1,
                ..
            }
        ),
        "{e}"
    );

    // Every truncation fails cleanly.
    for n in 4..good.len() {
        let e = restore_err(&vm, &good[..n]);
        assert!(matches!(e, PersistError::Decode(_)), "{n} bytes: {e}");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(restore_err(&vm, &long), PersistError::Decode(_)));
}

#[test]
fn inconsistent_bitmaps_are_refused() {
    let vm = plugged_vm();
    let good = vm.dev.save();

    let mut s = good.clone();
    s.plugged.push(0);
    let e = restore_state_err(&vm, &s);
    assert!(
        matches!(&e, PersistError::Invalid(m) if m.contains("has 2 words, the region needs 1")),
        "{e}"
    );

    let mut s = good.clone();
    s.plugged.clear();
    assert!(matches!(
        restore_state_err(&vm, &s),
        PersistError::Invalid(_)
    ));

    // 32 blocks in one word: bit 40 is past the region.
    let mut s = good.clone();
    s.plugged[0] |= 1 << 40;
    let e = restore_state_err(&vm, &s);
    assert!(
        matches!(&e, PersistError::Invalid(m) if m.contains("past the region's 32 blocks")),
        "{e}"
    );

    let mut s = good.clone();
    s.plugged_size += BLOCK;
    let e = restore_state_err(&vm, &s);
    assert!(
        matches!(&e, PersistError::Invalid(m) if m.contains("does not match the 5 plugged blocks")),
        "{e}"
    );

    let mut s = good.clone();
    s.requested_size = REGION + BLOCK;
    assert!(matches!(
        restore_state_err(&vm, &s),
        PersistError::Invalid(_)
    ));
    let mut s = good.clone();
    s.requested_size = MIB;
    assert!(matches!(
        restore_state_err(&vm, &s),
        PersistError::Invalid(_)
    ));

    let mut s = good.clone();
    s.usable_region_size = REGION / 2;
    assert!(matches!(
        restore_state_err(&vm, &s),
        PersistError::Invalid(_)
    ));

    // The common part is validated too.
    let mut s = good.clone();
    s.virtio.acked_features |= 1 << 40;
    assert!(matches!(
        restore_state_err(&vm, &s),
        PersistError::Invalid(_)
    ));
}

#[test]
fn another_configuration_is_a_mismatch() {
    let vm = plugged_vm();
    let bytes = vm.dev.save_bytes();
    let expect_mismatch = |a: MemRestoreArgs, what: &str| match Mem::restore_bytes(a, &bytes) {
        Err(PersistError::Mismatch(m)) => assert!(m.contains(what), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("restored into a different device"),
    };

    let mut a = args(&vm);
    a.config.block_size = 4 * MIB;
    expect_mismatch(a, "block-size=2M was saved, this VM has block-size=4M");

    let mut a = args(&vm);
    a.config.size = 32 * MIB;
    expect_mismatch(a, "size=64M was saved, this VM has size=32M");

    let mut a = args(&vm);
    a.config.id = "other".into();
    expect_mismatch(a, "id 'mem0' was saved, this VM has 'other'");

    let mut a = args(&vm);
    a.addr = GuestAddress(2 * BASE);
    expect_mismatch(
        a,
        "the region was at 0x40000000, this VM places it at 0x80000000",
    );

    // The configuration agrees but the RAM does not hold the region.
    let mut a = args(&vm);
    a.ram = Arc::new(GuestRam::anonymous(BOOT_SIZE).unwrap());
    expect_mismatch(a, "guest RAM has no region for this device");

    // The requested size of the new configuration does not matter: the saved one wins.
    let mut a = args(&vm);
    a.config.requested = 0;
    let dev = Mem::restore_bytes(a, &bytes).unwrap();
    assert_eq!(dev.requested_size(), 12 * MIB);
}

#[test]
fn garbage_never_panics() {
    let vm = plugged_vm();
    let good = vm.dev.save_bytes();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000 {
        let mut bad = good.clone();
        // Flip a few pseudo-random bytes past the magic.
        for _ in 0..1 + i % 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 4 + (x as usize) % (bad.len() - 4);
            bad[at] ^= (x >> 32) as u8 | 1;
        }
        // Either refused, or a state that passed every check.
        if let Ok(dev) = Mem::restore_bytes(args(&vm), &bad) {
            assert_eq!(dev.plugged_size() % BLOCK, 0);
            assert!(dev.plugged_size() <= REGION);
            assert!(dev.requested_size() <= REGION);
        }
    }
}
