//! Snapshot round trip under random driver traffic.
//!
//! Two VMs with separate guest RAM receive the same operations. A runs
//! uninterrupted; B is saved and restored into a fresh device at random
//! points, its driver queue carrying on over the same guest memory. Every
//! observable must agree: used entries, response bytes, interrupts, config
//! space, saved state, and the region's memory. A reference model of the
//! plugged blocks checks the answers themselves.

use proptest::prelude::*;

use super::*;
use crate::virtio::persist::Persist;
use crate::virtio::testing::{raw, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE};
use crate::virtio::InterruptKind;

const BLOCKS: u64 = REGION / BLOCK;

#[derive(Clone, Debug)]
enum Op {
    Plug {
        first: u64,
        n: u16,
        skew: u64,
    },
    Unplug {
        first: u64,
        n: u16,
        skew: u64,
    },
    State {
        first: u64,
        n: u16,
        skew: u64,
    },
    UnplugAll,
    SetRequested(u64),
    /// The guest writes a pattern over a block, if it is plugged.
    Write {
        block: u64,
        byte: u8,
    },
    Malformed(u8),
    UsedEvent(u16),
    Snapshot,
}

fn range() -> impl Strategy<Value = (u64, u16, u64)> {
    (
        0..BLOCKS + 4,
        prop_oneof![8 => 1u16..5, 1 => Just(0u16), 1 => 5u16..40],
        prop_oneof![9 => Just(0u64), 1 => Just(4096u64)],
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => range().prop_map(|(first, n, skew)| Op::Plug { first, n, skew }),
        4 => range().prop_map(|(first, n, skew)| Op::Unplug { first, n, skew }),
        2 => range().prop_map(|(first, n, skew)| Op::State { first, n, skew }),
        1 => Just(Op::UnplugAll),
        2 => prop_oneof![
            4 => (0..=BLOCKS + 2).prop_map(|b| b * BLOCK),
            1 => Just(MIB),
        ]
        .prop_map(Op::SetRequested),
        3 => (0..BLOCKS, 1u8..=255).prop_map(|(block, byte)| Op::Write { block, byte }),
        2 => (0u8..7).prop_map(Op::Malformed),
        1 => any::<u16>().prop_map(Op::UsedEvent),
        2 => Just(Op::Snapshot),
    ]
}

/// What the driver can see after one operation.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    used: Vec<(u32, u32)>,
    response: [u8; 16],
    interrupts: Vec<InterruptKind>,
    config: [u8; CONFIG_SIZE],
    generation: u32,
}

/// The plugged blocks, the request, and what each block should hold.
struct Model {
    plugged: Vec<bool>,
    content: Vec<u8>,
    requested: u64,
}

impl Model {
    fn range(&self, first: u64, n: u16, skew: u64) -> Option<std::ops::Range<usize>> {
        if n == 0 || skew != 0 || first + u64::from(n) > BLOCKS {
            return None;
        }
        Some(first as usize..first as usize + usize::from(n))
    }

    fn plugged_size(&self) -> u64 {
        self.plugged.iter().filter(|p| **p).count() as u64 * BLOCK
    }

    /// The expected (response type, state) of a request, applied to the model.
    fn request(&mut self, op: &Op) -> (u16, u16) {
        match *op {
            Op::Plug { first, n, skew } => match self.range(first, n, skew) {
                None => (VIRTIO_MEM_RESP_ERROR, 0),
                Some(_) if self.plugged_size() + u64::from(n) * BLOCK > self.requested => {
                    (VIRTIO_MEM_RESP_NACK, 0)
                }
                Some(r) if self.plugged[r.clone()].iter().any(|p| *p) => (VIRTIO_MEM_RESP_ERROR, 0),
                Some(r) => {
                    self.plugged[r].fill(true);
                    (VIRTIO_MEM_RESP_ACK, 0)
                }
            },
            Op::Unplug { first, n, skew } => match self.range(first, n, skew) {
                Some(r) if self.plugged[r.clone()].iter().all(|p| *p) => {
                    self.plugged[r.clone()].fill(false);
                    self.content[r].fill(0);
                    (VIRTIO_MEM_RESP_ACK, 0)
                }
                _ => (VIRTIO_MEM_RESP_ERROR, 0),
            },
            Op::State { first, n, skew } => match self.range(first, n, skew) {
                None => (VIRTIO_MEM_RESP_ERROR, 0),
                Some(r) => {
                    let k = self.plugged[r.clone()].iter().filter(|p| **p).count();
                    let state = if k == r.len() {
                        VIRTIO_MEM_STATE_PLUGGED
                    } else if k == 0 {
                        VIRTIO_MEM_STATE_UNPLUGGED
                    } else {
                        VIRTIO_MEM_STATE_MIXED
                    };
                    (VIRTIO_MEM_RESP_ACK, state)
                }
            },
            Op::UnplugAll => {
                self.plugged.fill(false);
                self.content.fill(0);
                (VIRTIO_MEM_RESP_ACK, 0)
            }
            _ => unreachable!("not a request"),
        }
    }
}

fn set_request(vm: &Vm, kind: u16, first: u64, n: u16, skew: u64) {
    vm.mem()
        .write_slice(&req(kind, block(first) + skew, n), GuestAddress(REQ_ADDR))
        .unwrap();
}

/// Applies `op` to one VM and returns what the driver sees.
fn apply(vm: &mut Vm, op: &Op) -> Seen {
    vm.mem()
        .write_slice(&[POISON; 16], GuestAddress(RESP_ADDR))
        .unwrap();
    match *op {
        Op::Plug { first, n, skew } => {
            set_request(vm, VIRTIO_MEM_REQ_PLUG, first, n, skew);
            vm.dq
                .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 10)]);
            vm.dev.queue_notify(0);
        }
        Op::Unplug { first, n, skew } => {
            set_request(vm, VIRTIO_MEM_REQ_UNPLUG, first, n, skew);
            vm.dq
                .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 10)]);
            vm.dev.queue_notify(0);
        }
        Op::State { first, n, skew } => {
            set_request(vm, VIRTIO_MEM_REQ_STATE, first, n, skew);
            vm.dq
                .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 10)]);
            vm.dev.queue_notify(0);
        }
        Op::UnplugAll => {
            set_request(vm, VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0, 0);
            vm.dq
                .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 10)]);
            vm.dev.queue_notify(0);
        }
        Op::SetRequested(bytes) => {
            let _ = vm.dev.set_requested(bytes);
        }
        Op::Write { block: b, byte } => {
            if vm
                .dev
                .plugged_ranges()
                .iter()
                .any(|(a, l)| (a.0..a.0 + l).contains(&block(b)))
            {
                vm.fill(block(b), BLOCK, byte);
            }
        }
        Op::Malformed(kind) => {
            // Every malformed chain carries a valid PLUG of block 0, which must not run
            // unless it can be answered.
            set_request(vm, VIRTIO_MEM_REQ_PLUG, 0, 1, 0);
            match kind {
                0 => {
                    vm.dq
                        .add_raw_chain(40, &[(40, raw(REQ_ADDR, 24, NEXT, 40))]);
                }
                1 => {
                    vm.dq
                        .add_chain(&[Buf::r(0xdead_0000_0000, 24), Buf::w(RESP_ADDR, 10)]);
                }
                2 => {
                    vm.dq
                        .add_chain(&[Buf::r(REQ_ADDR, 12), Buf::w(RESP_ADDR, 10)]);
                }
                3 => {
                    vm.dq
                        .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::r(RESP_ADDR, 10)]);
                }
                4 => {
                    vm.dq
                        .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 4)]);
                }
                5 => {
                    vm.dq.add_raw_chain(300, &[(41, raw(REQ_ADDR, 24, 0, 0))]);
                }
                _ => {
                    vm.dq.add_raw_chain(
                        42,
                        &[
                            (42, raw(RESP_ADDR, 10, WRITE | NEXT, 43)),
                            (43, raw(REQ_ADDR, 24, 0, 0)),
                        ],
                    );
                }
            }
            vm.dev.queue_notify(0);
        }
        Op::UsedEvent(v) => vm.dq.set_used_event(v),
        Op::Snapshot => {}
    }
    let mut response = [0u8; 16];
    vm.mem()
        .read_slice(&mut response, GuestAddress(RESP_ADDR))
        .unwrap();
    Seen {
        used: vm.dq.used().iter().map(|e| (e.id(), e.len())).collect(),
        response,
        interrupts: vm.log.take(),
        config: vm.config_bytes(),
        generation: crate::virtio::VirtioDevice::common(&vm.dev).config_generation,
    }
}

/// Replaces B's device by one restored from its saved bytes, with a fresh
/// interrupt sink as a restoring transport would install.
fn save_and_restore(vm: &mut Vm) {
    let bytes = vm.dev.save_bytes();
    let args = MemRestoreArgs {
        config: vm.dev.config().clone(),
        addr: GuestAddress(BASE),
        ram: vm.ram.clone(),
    };
    let mut dev = Mem::restore_bytes(args, &bytes).expect("saved state restores");
    let log = Arc::new(InterruptLog::default());
    crate::virtio::VirtioDevice::common_mut(&mut dev).interrupt = Some(log.clone());
    vm.dev = dev;
    vm.log = log;
}

fn same_memory(a: &Vm, b: &Vm) -> bool {
    (0..BLOCKS).all(|i| {
        // SAFETY: each range is one block of the region, mapped for the VMs' lifetime.
        let (x, y) = unsafe {
            (
                std::slice::from_raw_parts(host_ptr(&a.ram, block(i), BLOCK), BLOCK as usize),
                std::slice::from_raw_parts(host_ptr(&b.ram, block(i), BLOCK), BLOCK as usize),
            )
        };
        x == y
    })
}

fn run(requested_blocks: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let cfg = mem_config(REGION, requested_blocks * BLOCK, BackingSpec::anonymous());
    let mut a = Vm::new(&cfg);
    let mut b = Vm::new(&cfg);
    let mut model = Model {
        plugged: vec![false; BLOCKS as usize],
        content: vec![0; BLOCKS as usize],
        requested: cfg.requested,
    };
    for (step, op) in ops.iter().enumerate() {
        if let Op::Snapshot = op {
            save_and_restore(&mut b);
            prop_assert!(same_memory(&a, &b), "step {}: memory differs", step);
        }
        let seen_a = apply(&mut a, op);
        let seen_b = apply(&mut b, op);
        prop_assert_eq!(&seen_a, &seen_b, "step {}: {:?}", step, op);
        prop_assert_eq!(a.dev.save(), b.dev.save(), "step {}: {:?}", step, op);

        // The answers themselves, against the model.
        match op {
            Op::Plug { .. } | Op::Unplug { .. } | Op::State { .. } | Op::UnplugAll => {
                let (kind, state) = model.request(op);
                prop_assert_eq!(seen_a.used.len(), 1);
                prop_assert_eq!(seen_a.used[0].1, RESP_SIZE as u32);
                let r = &seen_a.response;
                prop_assert_eq!(
                    u16::from_le_bytes([r[0], r[1]]),
                    kind,
                    "step {}: {:?}",
                    step,
                    op
                );
                prop_assert_eq!(u16::from_le_bytes([r[8], r[9]]), state);
                prop_assert_eq!(&r[10..], &[POISON; 6], "wrote past the response");
            }
            Op::SetRequested(bytes) => {
                if *bytes <= REGION && bytes % BLOCK == 0 {
                    let changed = *bytes != model.requested;
                    model.requested = *bytes;
                    prop_assert_eq!(
                        seen_a.interrupts.clone(),
                        if changed {
                            vec![InterruptKind::Config]
                        } else {
                            vec![]
                        }
                    );
                }
                prop_assert_eq!(a.dev.requested_size(), model.requested);
            }
            Op::Write { block, byte } => {
                if model.plugged[*block as usize] {
                    model.content[*block as usize] = *byte;
                }
            }
            Op::Malformed(kind) => {
                let expect_len = match kind {
                    1 | 2 => Some(RESP_SIZE as u32),
                    5 => None,
                    _ => Some(0),
                };
                prop_assert_eq!(
                    seen_a.used.first().map(|u| u.1),
                    expect_len,
                    "kind {}",
                    kind
                );
                if expect_len == Some(RESP_SIZE as u32) {
                    let r = &seen_a.response;
                    prop_assert_eq!(u16::from_le_bytes([r[0], r[1]]), VIRTIO_MEM_RESP_ERROR);
                }
            }
            Op::UsedEvent(_) | Op::Snapshot => {}
        }
        prop_assert_eq!(a.dev.plugged_size(), model.plugged_size());
    }
    prop_assert!(same_memory(&a, &b), "memory differs at the end");
    for (i, byte) in model.content.iter().enumerate() {
        prop_assert!(
            is_filled(&a.ram, block(i as u64), BLOCK, *byte),
            "block {} should hold {:#x}",
            i,
            byte
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_round_trip_is_invisible(
        requested in 0..=BLOCKS,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(requested, &ops)?;
    }
}

#[test]
fn a_snapshot_between_every_step() {
    // A fixed sequence touching every kind of operation, saved before each step.
    let mut ops = vec![
        Op::Plug {
            first: 0,
            n: 3,
            skew: 0,
        },
        Op::Write { block: 1, byte: 7 },
        Op::UsedEvent(3),
        Op::State {
            first: 0,
            n: 4,
            skew: 0,
        },
        Op::Malformed(0),
        Op::Unplug {
            first: 1,
            n: 1,
            skew: 0,
        },
        Op::SetRequested(2 * BLOCK),
        Op::Plug {
            first: 5,
            n: 1,
            skew: 0,
        },
        Op::Malformed(3),
        Op::UnplugAll,
        Op::Malformed(5),
        Op::Plug {
            first: 31,
            n: 1,
            skew: 0,
        },
        Op::Write { block: 31, byte: 9 },
    ];
    ops = ops.into_iter().flat_map(|o| [Op::Snapshot, o]).collect();
    run(8, &ops).unwrap();
}
