//! Malformed descriptor chains: the device survives, answers what it can,
//! never runs a request it cannot answer, and keeps serving the queue.

use super::*;
use crate::virtio::testing::{
    raw, write_table, VIRTQ_DESC_F_INDIRECT as INDIRECT, VIRTQ_DESC_F_NEXT as NEXT,
    VIRTQ_DESC_F_WRITE as WRITE,
};

const ACK: u16 = VIRTIO_MEM_RESP_ACK;
const ERROR: u16 = VIRTIO_MEM_RESP_ERROR;

fn vm() -> Vm {
    Vm::new(&mem_config(REGION, 8 * MIB, BackingSpec::anonymous()))
}

fn put_plug(vm: &Vm, first_block: u64) {
    vm.mem()
        .write_slice(
            &req(VIRTIO_MEM_REQ_PLUG, block(first_block), 1),
            GuestAddress(REQ_ADDR),
        )
        .unwrap();
}

fn resp_type(vm: &Vm) -> u16 {
    let r = vm.response();
    u16::from_le_bytes([r[0], r[1]])
}

/// The device still works, and nothing was plugged by the malformed chains.
fn still_serves(vm: &mut Vm) {
    assert_eq!(
        vm.dev.plugged_size(),
        0,
        "no malformed chain plugged anything"
    );
    assert_eq!(vm.plug(7, 1), ACK);
    assert_eq!(vm.dev.plugged_size(), BLOCK);
}

/// Submits raw descriptors with `head` and returns the used length (None: not returned).
fn submit_raw(
    vm: &mut Vm,
    head: u16,
    table: &[(u16, virtio_queue::desc::RawDescriptor)],
) -> Option<u32> {
    vm.mem()
        .write_slice(&[POISON; 64], GuestAddress(RESP_ADDR))
        .unwrap();
    vm.dq.add_raw_chain(head, table);
    vm.dev.queue_notify(0);
    let used = vm.dq.used();
    assert!(used.len() <= 1);
    used.first().map(|e| e.len())
}

#[test]
fn loops_are_returned_unanswered() {
    let mut vm = vm();
    put_plug(&vm, 0);
    // A descriptor that is its own successor.
    let len = submit_raw(&mut vm, 5, &[(5, raw(REQ_ADDR, 24, NEXT, 5))]);
    assert_eq!(len, Some(0));
    // request -> response -> request ...
    let len = submit_raw(
        &mut vm,
        10,
        &[
            (10, raw(REQ_ADDR, 24, NEXT, 11)),
            (11, raw(RESP_ADDR, 10, NEXT | WRITE, 10)),
        ],
    );
    assert_eq!(len, Some(0));
    // request -> response -> response ...: well-ordered, with room for an
    // answer; only the cut-off at the queue size shows it never ends.
    let len = submit_raw(
        &mut vm,
        12,
        &[
            (12, raw(REQ_ADDR, 24, NEXT, 13)),
            (13, raw(RESP_ADDR, 10, NEXT | WRITE, 13)),
        ],
    );
    assert_eq!(len, Some(0));
    assert_eq!(vm.response(), [POISON; RESP_SIZE], "nothing written");
    still_serves(&mut vm);
}

#[test]
fn next_index_past_the_table() {
    let mut vm = vm();
    put_plug(&vm, 0);
    let len = submit_raw(
        &mut vm,
        0,
        &[
            (0, raw(REQ_ADDR, 24, NEXT, 1)),
            (1, raw(RESP_ADDR, 10, NEXT | WRITE, 500)),
        ],
    );
    assert_eq!(len, Some(0));
    still_serves(&mut vm);
}

#[test]
fn head_index_past_the_table_is_dropped() {
    let mut vm = vm();
    put_plug(&vm, 0);
    // There is no used slot for an index that does not exist.
    let len = submit_raw(&mut vm, 300, &[(0, raw(REQ_ADDR, 24, 0, 0))]);
    assert_eq!(len, None);
    still_serves(&mut vm);
}

#[test]
fn chain_longer_than_4g_in_total() {
    let mut vm = vm();
    put_plug(&vm, 0);
    let len = submit_raw(
        &mut vm,
        0,
        &[
            (0, raw(REQ_ADDR, u32::MAX, NEXT, 1)),
            (1, raw(REQ_ADDR, u32::MAX, NEXT, 2)),
            (2, raw(RESP_ADDR, 10, WRITE, 0)),
        ],
    );
    assert_eq!(len, Some(0));
    // The overflow comes after a complete request and response.
    let len = submit_raw(
        &mut vm,
        3,
        &[
            (3, raw(REQ_ADDR, 24, NEXT, 4)),
            (4, raw(RESP_ADDR, 10, WRITE | NEXT, 5)),
            (5, raw(RESP_ADDR + 16, u32::MAX, WRITE | NEXT, 6)),
            (6, raw(RESP_ADDR + 16, u32::MAX, WRITE, 0)),
        ],
    );
    assert_eq!(len, Some(0));
    assert_eq!(vm.response(), [POISON; RESP_SIZE], "nothing written");
    still_serves(&mut vm);
}

#[test]
fn request_outside_ram_is_answered_error() {
    let mut vm = vm();
    for addr in [0xdead_0000_0000, BOOT_SIZE - 8, u64::MAX - 8] {
        let len = vm.submit(&[Buf::r(addr, 24), Buf::w(RESP_ADDR, 10)]);
        assert_eq!(len, Some(10), "request at {addr:#x}");
        assert_eq!(resp_type(&vm), ERROR);
    }
    still_serves(&mut vm);
}

#[test]
fn short_requests() {
    let mut vm = vm();
    // Too short for the header.
    put_plug(&vm, 0);
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 4), Buf::w(RESP_ADDR, 10)]),
        Some(10)
    );
    assert_eq!(resp_type(&vm), ERROR);
    // A header but no body.
    for n in [8, 18, 23] {
        assert_eq!(
            vm.submit(&[Buf::r(REQ_ADDR, n), Buf::w(RESP_ADDR, 10)]),
            Some(10)
        );
        assert_eq!(resp_type(&vm), ERROR, "{n} bytes");
    }
    // No readable buffer at all.
    assert_eq!(vm.submit(&[Buf::w(RESP_ADDR, 10)]), Some(10));
    assert_eq!(resp_type(&vm), ERROR);
    still_serves(&mut vm);

    // UNPLUG_ALL has no body: its header is enough.
    vm.mem()
        .write_slice(
            &req(VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0)[..8],
            GuestAddress(REQ_ADDR),
        )
        .unwrap();
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 8), Buf::w(RESP_ADDR, 10)]),
        Some(10)
    );
    assert_eq!(resp_type(&vm), ACK);
    assert_eq!(vm.dev.plugged_size(), 0);
}

#[test]
fn a_request_split_over_descriptors() {
    let mut vm = vm();
    put_plug(&vm, 3);
    let len = vm.submit(&[
        Buf::r(REQ_ADDR, 3),
        Buf::r(REQ_ADDR + 3, 0),
        Buf::r(REQ_ADDR + 3, 14),
        Buf::r(REQ_ADDR + 17, 100),
        Buf::w(RESP_ADDR, 4),
        Buf::w(RESP_ADDR + 4, 6),
    ]);
    assert_eq!(len, Some(10));
    assert_eq!(resp_type(&vm), ACK);
    assert_eq!(
        vm.dev.plugged_ranges(),
        vec![(GuestAddress(block(3)), BLOCK)]
    );
}

#[test]
fn no_room_for_the_answer_means_no_action() {
    let mut vm = vm();
    put_plug(&vm, 0);
    // No writable buffer.
    assert_eq!(vm.submit(&[Buf::r(REQ_ADDR, 24)]), Some(0));
    // The response buffer is device-readable.
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 24), Buf::r(RESP_ADDR, 10)]),
        Some(0)
    );
    // Too short for even the header.
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 7)]),
        Some(0)
    );
    assert_eq!(
        vm.submit(&[
            Buf::r(REQ_ADDR, 24),
            Buf::w(RESP_ADDR, 3),
            Buf::w(RESP_ADDR + 3, 4)
        ]),
        Some(0)
    );
    // Outside guest RAM, wholly or in part.
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 24), Buf::w(0xdead_0000_0000, 10)]),
        Some(0)
    );
    assert_eq!(
        vm.submit(&[
            Buf::r(REQ_ADDR, 24),
            Buf::w(RESP_ADDR, 4),
            Buf::w(BOOT_SIZE - 2, 6)
        ]),
        Some(0)
    );
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 24), Buf::w(u64::MAX - 3, 10)]),
        Some(0)
    );
    assert_eq!(vm.response(), [POISON; RESP_SIZE], "nothing written");
    still_serves(&mut vm);
}

#[test]
fn readable_after_writable_is_refused() {
    let mut vm = vm();
    put_plug(&vm, 0);
    let len = vm.submit(&[Buf::w(RESP_ADDR, 10), Buf::r(REQ_ADDR, 24)]);
    assert_eq!(len, Some(0));
    let len = vm.submit(&[
        Buf::r(REQ_ADDR, 24),
        Buf::w(RESP_ADDR, 10),
        Buf::r(REQ_ADDR, 24),
    ]);
    assert_eq!(len, Some(0));
    still_serves(&mut vm);
}

#[test]
fn an_eight_byte_response_buffer() {
    let mut vm = vm();
    put_plug(&vm, 0);
    // Enough for an answer without a state: the request runs.
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 8)]),
        Some(8)
    );
    assert_eq!(resp_type(&vm), ACK);
    assert_eq!(vm.response()[8..], [POISON; 2], "only 8 bytes written");
    assert_eq!(vm.dev.plugged_size(), BLOCK);
    // STATE needs room for the state.
    vm.mem()
        .write_slice(&req(VIRTIO_MEM_REQ_STATE, BASE, 1), GuestAddress(REQ_ADDR))
        .unwrap();
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 8)]),
        Some(8)
    );
    assert_eq!(resp_type(&vm), ERROR);
    // A larger buffer is fine; only 10 bytes are used.
    assert_eq!(
        vm.submit(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 64)]),
        Some(10)
    );
    assert_eq!(vm.response()[8..10], VIRTIO_MEM_STATE_PLUGGED.to_le_bytes());
}

#[test]
fn the_queue_keeps_going_after_a_burst_of_garbage() {
    let mut vm = vm();
    put_plug(&vm, 1);
    // Garbage and good chains in one notification, all handled in order.
    vm.dq
        .add_raw_chain(20, &[(20, raw(REQ_ADDR, 24, NEXT, 20))]);
    vm.dq
        .add_chain(&[Buf::r(REQ_ADDR, 24), Buf::w(RESP_ADDR, 10)]);
    vm.dq
        .add_chain(&[Buf::r(0xdead_0000, 24), Buf::w(RESP_ADDR + 16, 10)]);
    vm.dq.add_chain(&[Buf::r(REQ_ADDR, 24)]);
    vm.dev.queue_notify(0);
    let lens: Vec<u32> = vm.dq.used().iter().map(|e| e.len()).collect();
    assert_eq!(lens, vec![0, 10, 10, 0]);
    assert_eq!(resp_type(&vm), ACK);
    assert_eq!(
        vm.dev.plugged_ranges(),
        vec![(GuestAddress(block(1)), BLOCK)]
    );
}

/// VIRTIO_F_INDIRECT_DESC is never offered: a request behind an indirect
/// descriptor is returned unanswered and does not run (virtio 1.2,
/// 2.7.5.3.1).
#[test]
fn indirect_chains_are_returned_unanswered() {
    let mut vm = vm();
    put_plug(&vm, 0);
    let at = 0x30000;
    let len = write_table(
        vm.mem(),
        at,
        &[raw(REQ_ADDR, 24, NEXT, 1), raw(RESP_ADDR, 10, WRITE, 0)],
    );
    assert_eq!(
        submit_raw(&mut vm, 5, &[(5, raw(at, len, INDIRECT, 0))]),
        Some(0)
    );
    let len = write_table(vm.mem(), at, &[raw(RESP_ADDR, 10, WRITE, 0)]);
    assert_eq!(
        submit_raw(
            &mut vm,
            6,
            &[
                (6, raw(REQ_ADDR, 24, NEXT, 7)),
                (7, raw(at, len, INDIRECT, 0))
            ]
        ),
        Some(0)
    );
    assert_eq!(vm.response(), [POISON; RESP_SIZE], "answered");
    still_serves(&mut vm);
}
