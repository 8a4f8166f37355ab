//! `mem_queue`: virtio-mem serving its request queue (plug, unplug,
//! unplug all, state) over guest memory and queue state taken from the
//! input. Its region (four 2 MiB blocks at 1 GiB) is real anonymous
//! memory, and unplugging discards it.
//!
//! Input: `requested u8` (blocks asked for, modulo 5), the driver's
//! `features u64`, the queue ([`QueueSetup`]), a part of operations, then
//! memory chunks. Operations, one byte each (modulo 5): 0 notify queue 0,
//! 1 notify the queue index in the next byte, 2 a new requested size
//! (`u64` bytes, as QMP `qom-set` gives it), 3 unplug everything (as
//! before a template is saved), 4 reset. With no operations the queue is
//! notified once.

use devices::virtio::mem::{
    Mem, REQ_SIZE, RESP_SIZE, VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_STATE, VIRTIO_MEM_REQ_UNPLUG,
    VIRTIO_MEM_REQ_UNPLUG_ALL,
};
use devices::virtio::testing::{Buf, DriverQueue};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress};

use super::guest::{self, QueueSetup, MEM_BASE, MEM_BLOCK};
use super::input::{Builder, Input};

const MAX_OPS: usize = 64;

/// Runs one input; returns how many chains went to the used ring.
pub fn run(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let requested = u64::from(input.u8() % 5) * MEM_BLOCK;
    let features = input.u64();
    let setup = QueueSetup::read(&mut input);
    let mut ops = input.part();
    let ram = guest::ram_with_mem();
    let mut dev = Mem::new(
        &guest::mem_config(requested),
        GuestAddress(MEM_BASE),
        ram.clone(),
    )
    .expect("the virtio-mem region is mapped as configured");
    guest::load_chunks(ram.memory(), &mut input);
    if guest::bring_up(&mut dev, features, &[setup]).is_none() {
        return 0;
    }
    if ops.is_empty() {
        dev.queue_notify(0);
    }
    let mut work = guest::used_since(dev.common(), &[setup]);
    for _ in 0..MAX_OPS {
        if ops.is_empty() {
            break;
        }
        let before = guest::next_used(dev.common());
        match ops.u8() % 5 {
            0 => dev.queue_notify(0),
            1 => dev.queue_notify(u16::from(ops.u8())),
            2 => {
                let _ = dev.set_requested(ops.u64());
            }
            3 => {
                let _ = dev.unplug_all();
            }
            _ => {
                dev.reset();
                continue;
            }
        }
        work += guest::moved(dev.common(), &before);
    }
    work
}

fn req(kind: u16, addr: u64, nb_blocks: u16) -> Vec<u8> {
    let mut r = vec![0u8; REQ_SIZE];
    r[0..2].copy_from_slice(&kind.to_le_bytes());
    r[8..16].copy_from_slice(&addr.to_le_bytes());
    r[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
    r
}

fn block(i: u64) -> u64 {
    MEM_BASE + i * MEM_BLOCK
}

/// An input with `reqs` made available (request buffer, then a response
/// buffer of `resp` bytes) on a 32-entry queue at 0x1000.
fn seed(requested: u8, features: u64, reqs: &[(Vec<u8>, u32)], ops: &[u8]) -> Vec<u8> {
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let mut dq = DriverQueue::new(mem, GuestAddress(0x1000), 32);
    let mut at = 0x8000u64;
    for (r, resp) in reqs {
        mem.write_slice(r, GuestAddress(at)).unwrap();
        dq.add_chain(&[Buf::r(at, r.len() as u32), Buf::w(at + 0x40, *resp)]);
        at += 0x100;
    }
    let mut b = Builder::new();
    b.u8(requested).u64(features);
    QueueSetup::of(&dq).write(&mut b);
    b.part(ops);
    b.bytes(&guest::image_chunks(mem));
    b.build()
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all = u64::MAX;
    let resp = RESP_SIZE as u32;
    let r = |kind, first, n| (req(kind, block(first), n), resp);
    vec![
        (
            "plug-state-unplug",
            seed(
                3,
                all,
                &[
                    r(VIRTIO_MEM_REQ_PLUG, 0, 2),
                    r(VIRTIO_MEM_REQ_STATE, 0, 4),
                    r(VIRTIO_MEM_REQ_PLUG, 3, 1),
                    r(VIRTIO_MEM_REQ_UNPLUG, 1, 1),
                    r(VIRTIO_MEM_REQ_STATE, 0, 1),
                    r(VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0),
                ],
                &[],
            ),
        ),
        (
            "over-budget-and-bad-ranges",
            seed(
                1,
                VIRTIO_F_VERSION_1,
                &[
                    r(VIRTIO_MEM_REQ_PLUG, 0, 2),
                    r(VIRTIO_MEM_REQ_PLUG, 4, 1),
                    r(VIRTIO_MEM_REQ_UNPLUG, 0, 1),
                    (req(VIRTIO_MEM_REQ_STATE, MEM_BASE + 4096, 1), resp),
                    (req(VIRTIO_MEM_REQ_STATE, block(0), 1), 8),
                    (req(7, 0, 0), resp),
                ],
                &[],
            ),
        ),
        (
            "resize-and-unplug-all",
            seed(
                4,
                all,
                &[r(VIRTIO_MEM_REQ_PLUG, 0, 4)],
                &[0, 2, 0, 0, 0x20, 0, 0, 0, 0, 3, 4, 0],
            ),
        ),
    ]
}
