//! A device saved and restored at arbitrary points behaves exactly like
//! one that ran straight through: same used entries, same bytes in guest
//! buffers, same frames on the host side, same interrupts.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::frames::*;
use super::guest::{config, Guest};
use super::netns::{add_tap, in_netns, retry_busy, PacketSocket};
use super::rx::inject;
use crate::virtio::net::{Net, NetState, RX_QUEUE, VIRTIO_NET_F_MRG_RXBUF};
use crate::virtio::persist::Persist;
use crate::virtio::testing::InterruptLog;
use crate::virtio::{VirtioDevice, VIRTIO_RING_F_EVENT_IDX};

const QSIZE: u16 = 16;

#[derive(Clone, Debug)]
enum Op {
    /// The guest sends a frame of `len` bytes, its chain split after `split` bytes.
    Tx {
        seed: u64,
        len: usize,
        split: usize,
    },
    /// The host sends a frame to the guest (skipped while one is held, since
    /// frames queued in the kernel's TAP are not part of saved state).
    Inject {
        seed: u64,
        len: usize,
    },
    /// The guest posts RX buffers and notifies.
    AddRx {
        sizes: Vec<u32>,
    },
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u64>(), 14usize..1500, 0usize..1600)
            .prop_map(|(seed, len, split)| Op::Tx { seed, len, split }),
        3 => (any::<u64>(), 14usize..1500).prop_map(|(seed, len)| Op::Inject { seed, len }),
        3 => proptest::collection::vec(prop_oneof![Just(64u32), 128u32..600, Just(2048)], 1..4)
            .prop_map(|sizes| Op::AddRx { sizes }),
        2 => Just(Op::Snapshot),
    ]
}

struct Side {
    tap: &'static str,
    guest: Guest,
    /// Empty only while a snapshot is being taken.
    dev: Option<Net>,
    log: Arc<InterruptLog>,
    host: PacketSocket,
}

impl Side {
    fn new(tap: &'static str, features: u64) -> Side {
        add_tap(tap, HOST_MAC, None);
        let host = PacketSocket::bind(tap);
        let guest = Guest::new(QSIZE);
        let (dev, log) = guest.start(tap, features);
        Side {
            tap,
            guest,
            dev: Some(dev),
            log,
            host,
        }
    }

    fn dev(&mut self) -> &mut Net {
        self.dev.as_mut().unwrap()
    }

    fn state(&self) -> NetState {
        let mut s = self.dev.as_ref().unwrap().save();
        s.config.tap = String::new();
        s
    }
}

fn run(features: u64, ops: &[Op]) {
    in_netns(|| {
        let mut a = Side::new("ta", features);
        let mut b = Side::new("tb", features);
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Tx { seed, len, split } => {
                    let frame = test_frame(NOBODY_MAC, GUEST_MAC, *seed, *len);
                    let pkt = with_hdr(VnetHdr::default(), &frame);
                    for s in [&mut a, &mut b] {
                        s.guest.send(s.dev.as_mut().unwrap(), &pkt, &[*split]);
                        let got = s.host.recv(Duration::from_secs(5));
                        assert_eq!(got.as_ref(), Some(&frame), "op {i}: frame on {}", s.tap);
                    }
                }
                Op::Inject { seed, len } => {
                    assert_eq!(a.dev().rx_stalled(), b.dev().rx_stalled(), "op {i}");
                    if !a.dev().rx_stalled() {
                        let frame = test_frame(GUEST_MAC, HOST_MAC, *seed, *len);
                        for s in [&mut a, &mut b] {
                            inject(s.dev.as_mut().unwrap(), &s.host, &frame);
                        }
                    }
                }
                Op::AddRx { sizes } => {
                    if a.guest.rx_outstanding() + sizes.len() <= usize::from(QSIZE) {
                        for s in [&mut a, &mut b] {
                            s.guest.post_rx(sizes);
                            s.dev().queue_notify(RX_QUEUE);
                        }
                    }
                }
                Op::Snapshot => {
                    let bytes = b.dev().save_bytes();
                    // The old device lets go of the TAP before the new one
                    // opens it, as when a new VMM process restores.
                    b.dev = None;
                    let ram = b.guest.ram.clone();
                    let mut dev =
                        retry_busy(|| Net::restore_bytes((config("tb"), ram.clone()), &bytes))
                            .unwrap_or_else(|e| panic!("op {i}: restore failed: {e}"));
                    dev.common_mut().interrupt = Some(b.log.clone());
                    b.dev = Some(dev);
                }
            }
            assert_eq!(a.guest.rx_used(), b.guest.rx_used(), "op {i}: RX used");
            assert_eq!(a.guest.tx_used(), b.guest.tx_used(), "op {i}: TX used");
            assert_eq!(a.log.take(), b.log.take(), "op {i}: interrupts");
            assert_eq!(a.state(), b.state(), "op {i}: device state");
        }
        for s in [&a, &b] {
            assert_eq!(
                s.host.recv(Duration::from_millis(20)),
                None,
                "unexpected frame on {}",
                s.tap
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn snapshots_do_not_change_behaviour(
        mrg in any::<bool>(),
        event_idx in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut features = 0;
        if mrg {
            features |= VIRTIO_NET_F_MRG_RXBUF;
        }
        if event_idx {
            features |= VIRTIO_RING_F_EVENT_IDX;
        }
        run(features, &ops);
    }
}
