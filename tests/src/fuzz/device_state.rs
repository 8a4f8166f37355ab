//! `device_state`: each device's saved-state decoder (`restore_bytes`:
//! the versioned envelope, bincode, then the device's own checks) on
//! arbitrary bytes, as a snapshot file delivers them. A state that is
//! accepted must give a device that works: its queues are notified and
//! its host-side calls made, and saving it must give a state that
//! restores again to the same bytes.
//!
//! Input: `device u8` (bits 0-1: block, net, balloon, virtio-mem; bit 2:
//! the disk is configured read-only), then the state.
//!
//! Net's `restore_bytes` opens the TAP its configuration names; here the
//! decoded state goes to `Net::restore_with_tap` (which `restore_bytes`
//! ends in) with a real TAP in a private network namespace instead.

use std::sync::Arc;

use devices::ram::GuestRam;
use devices::virtio::balloon::{Balloon, BalloonConfig};
use devices::virtio::block::Block;
use devices::virtio::mem::{Mem, MemRestoreArgs};
use devices::virtio::net::{Net, NetConfig, NetState};
use devices::virtio::persist::{decode, encode, Persist};
use devices::virtio::testing::{Buf, DriverQueue, InterruptLog};
use devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress};

use super::guest::{self, QueueSetup, MEM_BASE, MEM_BLOCK};
use super::input::{Builder, Input};

pub const BLOCK: u8 = 0;
pub const NET: u8 = 1;
pub const BALLOON: u8 = 2;
pub const MEM: u8 = 3;
const READONLY: u8 = 4;

fn net_config() -> NetConfig {
    NetConfig {
        id: "net0".into(),
        tap: guest::TAP_NAME.into(),
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    }
}

fn mem_args(ram: Arc<GuestRam>) -> MemRestoreArgs {
    MemRestoreArgs {
        config: guest::mem_config(0),
        addr: GuestAddress(MEM_BASE),
        ram,
    }
}

/// What the transport does to a restored device before the guest runs:
/// it installs an interrupt.
fn attach(dev: &mut dyn VirtioDevice) {
    dev.common_mut().interrupt = Some(Arc::new(InterruptLog::default()));
}

/// Every queue notified, config space read, as a resumed guest may.
fn exercise(dev: &mut dyn VirtioDevice) {
    let n = dev.common().queues.len() as u16;
    for q in 0..=n {
        dev.queue_notify(q);
    }
    let mut config = [0u8; 64];
    dev.read_config(0, &mut config);
}

/// A state accepted once must survive another save and restore unchanged.
fn round_trip<D: Persist>(dev: &D, again: impl FnOnce(&[u8]) -> Result<D, String>) {
    let saved = dev.save_bytes();
    let restored = again(&saved)
        .unwrap_or_else(|e| panic!("a restored device saved a state that does not restore: {e}"));
    assert!(
        restored.save_bytes() == saved,
        "a state changed across a save and restore"
    );
}

/// Runs one input; returns 1 when the state was accepted.
pub fn run(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let which = input.u8();
    let bytes = input.rest();
    match which & 3 {
        BLOCK => {
            let (_image, config) = guest::disk_image(which & READONLY != 0);
            let ram = guest::boot_ram();
            let args = || (config.clone(), ram.clone());
            let Ok(mut dev) = Block::restore_bytes(args(), bytes) else {
                return 0;
            };
            round_trip(&dev, |b| {
                Block::restore_bytes(args(), b).map_err(|e| e.to_string())
            });
            attach(&mut dev);
            exercise(&mut dev);
        }
        NET => {
            let ram = guest::boot_ram();
            let Ok(state) = decode::<NetState>(
                bytes,
                Net::DEVICE_TYPE,
                Net::STATE_VERSION..=Net::STATE_VERSION,
            ) else {
                return 0;
            };
            let restore = |state: &NetState| {
                Net::restore_with_tap(&net_config(), guest::real_tap(), ram.clone(), state)
            };
            let Ok(mut dev) = restore(&state) else {
                return 0;
            };
            round_trip(&dev, |b| {
                let s = decode::<NetState>(
                    b,
                    Net::DEVICE_TYPE,
                    Net::STATE_VERSION..=Net::STATE_VERSION,
                )
                .map_err(|e| e.to_string())?;
                restore(&s).map_err(|e| e.to_string())
            });
            attach(&mut dev);
            dev.process_rx();
            exercise(&mut dev);
            dev.reset();
        }
        BALLOON => {
            let ram = guest::boot_ram();
            let Ok(mut dev) = Balloon::restore_bytes(ram.clone(), bytes) else {
                return 0;
            };
            round_trip(&dev, |b| {
                Balloon::restore_bytes(ram.clone(), b).map_err(|e| e.to_string())
            });
            attach(&mut dev);
            dev.state_ram_requirements();
            dev.request_stats();
            exercise(&mut dev);
            let _ = (dev.actual_bytes(), dev.target_bytes());
        }
        _ => {
            let ram = guest::ram_with_mem();
            let Ok(mut dev) = Mem::restore_bytes(mem_args(ram.clone()), bytes) else {
                return 0;
            };
            round_trip(&dev, |b| {
                Mem::restore_bytes(mem_args(ram.clone()), b).map_err(|e| e.to_string())
            });
            attach(&mut dev);
            exercise(&mut dev);
            let _ = dev.plugged_ranges();
            let _ = dev.set_requested(MEM_BLOCK);
            let _ = dev.unplug_all();
        }
    }
    1
}

fn with_selector(which: u8, state: Vec<u8>) -> Vec<u8> {
    Builder::new().u8(which).bytes(&state).build()
}

/// Brings `dev` up with `queues` queues at 0x1000, 0x2000, ...; with
/// `moved`, the queues then hold the positions a device that has been
/// running for a while has.
fn live(dev: &mut dyn VirtioDevice, queues: usize, moved: bool) -> Vec<DriverQueue> {
    let ram = dev.common().ram.clone();
    let dqs: Vec<_> = (0..queues)
        .map(|i| DriverQueue::new(ram.memory(), GuestAddress(0x1000 * (i as u64 + 1)), 16))
        .collect();
    let setups: Vec<_> = dqs
        .iter()
        .enumerate()
        .map(|(i, dq)| {
            let mut s = QueueSetup::of(dq);
            if moved {
                s.next_avail = 3 + i as u16;
                s.next_used = 3 + i as u16;
            }
            s
        })
        .collect();
    guest::bring_up(dev, u64::MAX, &setups).expect("the device goes live");
    dqs
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    // The image's path is not part of what a restore compares; a fixed
    // one keeps the seeds the same from run to run.
    let block_state = |block: &Block| {
        let mut state = block.save();
        state.config.path = "disk.img".into();
        encode(Block::DEVICE_TYPE, Block::STATE_VERSION, &state)
    };
    let (_image, config) = guest::disk_image(false);
    let mut block = Block::new(&config, guest::boot_ram()).unwrap();
    out.push(("block-fresh", with_selector(BLOCK, block_state(&block))));
    live(&mut block, 1, true);
    out.push(("block-live", with_selector(BLOCK, block_state(&block))));
    let (_image, config) = guest::disk_image(true);
    let mut block = Block::new(&config, guest::boot_ram()).unwrap();
    live(&mut block, 1, true);
    out.push((
        "block-read-only",
        with_selector(BLOCK | READONLY, block_state(&block)),
    ));

    let mut net = Net::with_tap(&net_config(), guest::real_tap(), guest::boot_ram()).unwrap();
    out.push(("net-fresh", with_selector(NET, net.save_bytes())));
    live(&mut net, 2, true);
    let mut state = net.save();
    // A packet read from the TAP that no RX buffer took yet.
    let mut held = vec![0u8; 12];
    held.extend_from_slice(&[0xcd; 60]);
    state.rx_pending = Some(held);
    state.counters.rx_packets = 5;
    out.push((
        "net-live-holding-a-packet",
        with_selector(NET, encode(Net::DEVICE_TYPE, Net::STATE_VERSION, &state)),
    ));

    let full = BalloonConfig {
        free_page_reporting: true,
        deflate_on_oom: true,
        stats: true,
        target: Some(128 << 10),
    };
    let ram = guest::boot_ram();
    let mut balloon = Balloon::new(&full, ram.clone()).unwrap();
    out.push((
        "balloon-fresh",
        with_selector(BALLOON, balloon.save_bytes()),
    ));
    let mut dqs = live(&mut balloon, 4, false);
    // The driver's first stats buffer, which the device holds.
    let mem = ram.memory();
    mem.write_slice(&[4, 0, 1, 0, 0, 0, 0, 0, 0, 0], GuestAddress(0x18000))
        .unwrap();
    dqs[2].add_chain(&[Buf::r(0x18000, 10)]);
    balloon.queue_notify(2);
    balloon.write_config(4, &7u32.to_le_bytes());
    assert!(balloon.stats_pending(), "the stats buffer is held");
    out.push((
        "balloon-live-holding-stats",
        with_selector(BALLOON, balloon.save_bytes()),
    ));

    let ram = guest::ram_with_mem();
    let mut mem_dev = Mem::new(
        &guest::mem_config(2 * MEM_BLOCK),
        GuestAddress(MEM_BASE),
        ram.clone(),
    )
    .unwrap();
    out.push(("mem-fresh", with_selector(MEM, mem_dev.save_bytes())));
    live(&mut mem_dev, 1, true);
    let mut state = mem_dev.save();
    state.plugged = vec![0b101];
    state.plugged_size = 2 * MEM_BLOCK;
    out.push((
        "mem-live-plugged",
        with_selector(MEM, encode(Mem::DEVICE_TYPE, Mem::STATE_VERSION, &state)),
    ));
    out
}
