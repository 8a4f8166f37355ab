//! The transport driven through its registers as Linux's virtio_mmio driver
//! drives it, in front of real devices on real files and real guest RAM.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::ram::{GuestMemoryMmap, GuestRam};
use devices::virtio::balloon::{Balloon, BalloonConfig};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::testing::{Buf, DriverQueue};
use devices::virtio::{
    VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET, TYPE_BLOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use proptest::prelude::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::transport::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

const RAM_SIZE: u64 = 4 << 20;
const DATA_BASE: u64 = 1 << 20;
const QSIZE: u16 = 16;
const DISK_SECTORS: u64 = 64;
const SECTOR: usize = 512;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_S_OK: u8 = 0;
/// What status buffers hold before the device answers.
const UNTOUCHED: u8 = 0xa5;
const DRIVER_STATUS: u32 = (STATUS_ACKNOWLEDGE | STATUS_DRIVER) as u32;
const FEATURES_STATUS: u32 = DRIVER_STATUS | STATUS_FEATURES_OK as u32;
const LIVE_STATUS: u32 = FEATURES_STATUS | STATUS_DRIVER_OK as u32;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-mmio-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A block device on a temporary image behind a transport, and the guest's view.
struct Rig {
    _dir: TempDir,
    image: PathBuf,
    ram: Arc<GuestRam>,
    block: Arc<Mutex<Block>>,
    irq: EventFd,
    t: MmioTransport,
    next_buf: u64,
}

impl Rig {
    fn new() -> Rig {
        let dir = TempDir::new();
        let image = dir.0.join("disk.img");
        fs::write(&image, vec![0u8; DISK_SECTORS as usize * SECTOR]).unwrap();
        let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
        let cfg = BlockConfig {
            id: "disk-0".into(),
            path: image.clone(),
            readonly: false,
        };
        let block = Arc::new(Mutex::new(Block::new(&cfg, ram.clone()).unwrap()));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(block.clone(), irq.try_clone().unwrap()).unwrap();
        Rig {
            _dir: dir,
            image,
            ram,
            block,
            irq,
            t,
            next_buf: DATA_BASE,
        }
    }

    fn mem(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    fn r32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(&mut self, offset: u64, value: u32) {
        self.t.write(offset, &value.to_le_bytes());
    }

    fn read_n(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0xeeu8; len];
        self.t.read(offset, &mut b);
        b
    }

    /// How many interrupts the irqfd would have delivered since the last call.
    fn irq_count(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    fn device_features(&mut self) -> u64 {
        self.w32(DEVICE_FEATURES_SEL_OFFSET, 1);
        let high = self.r32(DEVICE_FEATURES_OFFSET);
        self.w32(DEVICE_FEATURES_SEL_OFFSET, 0);
        let low = self.r32(DEVICE_FEATURES_OFFSET);
        (u64::from(high) << 32) | u64::from(low)
    }

    fn write_driver_features(&mut self, features: u64) {
        self.w32(DRIVER_FEATURES_SEL_OFFSET, 1);
        self.w32(DRIVER_FEATURES_OFFSET, (features >> 32) as u32);
        self.w32(DRIVER_FEATURES_SEL_OFFSET, 0);
        self.w32(DRIVER_FEATURES_OFFSET, features as u32);
    }

    /// vm_probe, then virtio_dev_probe up to FEATURES_OK: reset, ACKNOWLEDGE,
    /// DRIVER, features (page 1 first, as Linux does), FEATURES_OK read back.
    /// Returns the status read back.
    fn negotiate(&mut self, features: u64) -> u32 {
        self.w32(STATUS_OFFSET, 0);
        self.w32(STATUS_OFFSET, u32::from(STATUS_ACKNOWLEDGE));
        self.w32(STATUS_OFFSET, DRIVER_STATUS);
        let offered = self.device_features();
        self.write_driver_features(offered & features);
        self.w32(STATUS_OFFSET, FEATURES_STATUS);
        self.r32(STATUS_OFFSET)
    }

    /// vm_setup_vq for queue `index`, with rings laid out at `base`.
    fn setup_queue(&mut self, index: u32, base: u64) -> DriverQueue {
        self.w32(QUEUE_SEL_OFFSET, index);
        assert_eq!(self.r32(QUEUE_READY_OFFSET), 0, "queue already set up");
        assert!(self.r32(QUEUE_NUM_MAX_OFFSET) >= u32::from(QSIZE));
        let dq = DriverQueue::new(self.mem(), GuestAddress(base), QSIZE);
        self.w32(QUEUE_NUM_OFFSET, u32::from(QSIZE));
        for (low, addr) in [
            (QUEUE_DESC_LOW_OFFSET, dq.desc_table()),
            (QUEUE_DRIVER_LOW_OFFSET, dq.avail_ring()),
            (QUEUE_DEVICE_LOW_OFFSET, dq.used_ring()),
        ] {
            self.w32(low, addr.0 as u32);
            self.w32(low + 4, (addr.0 >> 32) as u32);
        }
        self.w32(QUEUE_READY_OFFSET, 1);
        assert_eq!(self.r32(QUEUE_READY_OFFSET), 1);
        dq
    }

    /// The whole initialisation; the device is live afterwards.
    /// Event-idx is left out so that every used buffer interrupts.
    fn init(&mut self) -> DriverQueue {
        let status = self.negotiate(!VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(status, FEATURES_STATUS);
        let dq = self.setup_queue(0, 0);
        assert!(dq.end().0 <= DATA_BASE);
        self.w32(STATUS_OFFSET, LIVE_STATUS);
        assert_eq!(self.r32(STATUS_OFFSET), LIVE_STATUS);
        assert!(self.block.lock().unwrap().common().activated);
        dq
    }

    fn put(&mut self, bytes: &[u8]) -> u64 {
        let a = self.next_buf;
        self.next_buf += (bytes.len() as u64).next_multiple_of(16);
        assert!(self.next_buf <= RAM_SIZE);
        self.mem().write_slice(bytes, GuestAddress(a)).unwrap();
        a
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem().read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Queues a block request; returns the addresses of its data-in buffer and status byte.
    fn submit(
        &mut self,
        dq: &mut DriverQueue,
        ty: u32,
        sector: u64,
        out: &[u8],
        in_len: u32,
    ) -> (u64, u64) {
        let mut h = ty.to_le_bytes().to_vec();
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        let h = self.put(&h);
        let mut bufs = vec![Buf::r(h, 16)];
        if !out.is_empty() {
            let o = self.put(out);
            bufs.push(Buf::r(o, out.len() as u32));
        }
        let i = self.put(&vec![UNTOUCHED; in_len as usize]);
        if in_len > 0 {
            bufs.push(Buf::w(i, in_len));
        }
        let s = self.put(&[UNTOUCHED]);
        bufs.push(Buf::w(s, 1));
        dq.add_chain(&bufs);
        (i, s)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn probe_reads_identity_and_queue_limits() {
    let mut rig = Rig::new();
    assert_eq!(rig.r32(MAGIC_VALUE_OFFSET), 0x7472_6976);
    assert_eq!(rig.read_n(MAGIC_VALUE_OFFSET, 4), b"virt");
    assert_eq!(rig.r32(VERSION_OFFSET), 2);
    assert_eq!(rig.r32(DEVICE_ID_OFFSET), TYPE_BLOCK);
    assert_eq!(rig.r32(DEVICE_ID_OFFSET), 2);
    assert_eq!(rig.r32(VENDOR_ID_OFFSET), VENDOR_ID);
    assert_eq!(rig.r32(STATUS_OFFSET), 0);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), 0);
    assert_eq!(rig.r32(CONFIG_GENERATION_OFFSET), 0);

    rig.w32(QUEUE_SEL_OFFSET, 0);
    assert_eq!(
        rig.r32(QUEUE_NUM_MAX_OFFSET),
        u32::from(devices::virtio::block::QUEUE_SIZE)
    );
    assert_eq!(rig.r32(QUEUE_READY_OFFSET), 0);
    for sel in [1, 2, 0xffff, u32::MAX] {
        rig.w32(QUEUE_SEL_OFFSET, sel);
        assert_eq!(
            rig.r32(QUEUE_NUM_MAX_OFFSET),
            0,
            "queue {sel} does not exist"
        );
        assert_eq!(rig.r32(QUEUE_READY_OFFSET), 0);
    }

    // No shared memory regions: length -1 for any selector.
    for sel in [0, 1, 7] {
        rig.w32(SHM_SEL_OFFSET, sel);
        assert_eq!(rig.r32(SHM_LEN_LOW_OFFSET), u32::MAX);
        assert_eq!(rig.r32(SHM_LEN_HIGH_OFFSET), u32::MAX);
    }
    assert_eq!(rig.t.queue_evts().len(), 1);
}

#[test]
fn features_are_negotiated_through_both_pages() {
    let mut rig = Rig::new();
    let offered = rig.device_features();
    assert_eq!(offered, rig.block.lock().unwrap().common().avail_features);
    assert_ne!(
        offered & VIRTIO_F_VERSION_1,
        0,
        "VERSION_1 is offered on page 1"
    );
    rig.w32(DEVICE_FEATURES_SEL_OFFSET, 2);
    assert_eq!(rig.r32(DEVICE_FEATURES_OFFSET), 0, "no third page");

    // Before DRIVER the driver may not write features.
    rig.write_driver_features(offered);
    assert_eq!(rig.block.lock().unwrap().common().acked_features, 0);

    let status = rig.negotiate(u64::MAX);
    assert_eq!(status, FEATURES_STATUS);
    assert_eq!(rig.block.lock().unwrap().common().acked_features, offered);

    // After FEATURES_OK the negotiated set is fixed.
    rig.write_driver_features(VIRTIO_F_VERSION_1);
    assert_eq!(rig.block.lock().unwrap().common().acked_features, offered);
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let mut rig = Rig::new();
    let status = rig.negotiate(!VIRTIO_F_VERSION_1);
    assert_eq!(status, DRIVER_STATUS, "FEATURES_OK must not stick");
    // Only the low page got through.
    let acked = rig.block.lock().unwrap().common().acked_features;
    assert_eq!(acked & VIRTIO_F_VERSION_1, 0);
    assert_ne!(acked, 0);
}

/// virtio 1.2, 2.2.2: the device refuses FEATURES_OK when it does not
/// accept the driver's choice, which includes bits it never offered; the
/// driver sees that by reading the status back.
#[test]
fn features_ok_is_refused_for_features_never_offered() {
    let mut rig = Rig::new();
    rig.w32(STATUS_OFFSET, u32::from(STATUS_ACKNOWLEDGE));
    rig.w32(STATUS_OFFSET, DRIVER_STATUS);
    let offered = rig.device_features();
    let not_offered = 1u64 << (!offered).trailing_zeros();
    assert_eq!(offered & not_offered, 0);
    rig.write_driver_features(offered | not_offered);
    rig.w32(STATUS_OFFSET, FEATURES_STATUS);
    assert_eq!(
        rig.r32(STATUS_OFFSET),
        DRIVER_STATUS,
        "FEATURES_OK must not stick"
    );
    // Nor can the device go live on that choice.
    rig.w32(STATUS_OFFSET, LIVE_STATUS);
    assert_eq!(rig.r32(STATUS_OFFSET), DRIVER_STATUS);
    assert!(!rig.block.lock().unwrap().common().activated);

    // A bit the device never offered on the high page counts the same.
    let high = 1u64 << (32 + (!(offered >> 32)).trailing_zeros());
    assert_eq!(offered & high, 0);
    rig.write_driver_features(offered | high);
    rig.w32(STATUS_OFFSET, FEATURES_STATUS);
    assert_eq!(rig.r32(STATUS_OFFSET), DRIVER_STATUS);

    // A driver that corrects its choice before FEATURES_OK is accepted.
    rig.write_driver_features(offered);
    rig.w32(STATUS_OFFSET, FEATURES_STATUS);
    assert_eq!(rig.r32(STATUS_OFFSET), FEATURES_STATUS);

    // A reset forgets the refused choice too.
    rig.w32(STATUS_OFFSET, 0);
    rig.w32(STATUS_OFFSET, u32::from(STATUS_ACKNOWLEDGE));
    rig.w32(STATUS_OFFSET, DRIVER_STATUS);
    rig.write_driver_features(offered | not_offered);
    rig.w32(STATUS_OFFSET, 0);
    let _dq = rig.init();
}

#[test]
fn block_write_and_read_through_the_registers() {
    let mut rig = Rig::new();
    let mut dq = rig.init();
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), 0);
    assert_eq!(rig.irq_count(), 0);

    // Write two sectors at sector 3.
    let payload = pattern(2 * SECTOR, 7);
    let (_, status) = rig.submit(&mut dq, VIRTIO_BLK_T_OUT, 3, &payload, 0);
    rig.w32(NOTIFY_OFFSET, 0);
    let used: Vec<_> = dq.used().iter().map(|e| (e.id(), e.len())).collect();
    assert_eq!(
        used,
        vec![(0, 1)],
        "one chain, head 0, one status byte written"
    );
    assert_eq!(rig.get(status, 1), [VIRTIO_BLK_S_OK]);
    let file = fs::read(&rig.image).unwrap();
    assert_eq!(&file[3 * SECTOR..5 * SECTOR], &payload[..]);
    assert!(file[..3 * SECTOR].iter().all(|&b| b == 0));
    assert!(file[5 * SECTOR..].iter().all(|&b| b == 0));

    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
    assert_eq!(rig.irq_count(), 1);
    rig.w32(INTERRUPT_ACK_OFFSET, VIRTIO_MMIO_INT_VRING);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), 0);

    // Read sector 4 back.
    let (data, status) = rig.submit(&mut dq, VIRTIO_BLK_T_IN, 4, &[], SECTOR as u32);
    rig.w32(NOTIFY_OFFSET, 0);
    let used: Vec<_> = dq.used().iter().map(|e| (e.id(), e.len())).collect();
    assert_eq!(used, vec![(3, SECTOR as u32 + 1)]);
    assert_eq!(rig.get(status, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(rig.get(data, SECTOR), &payload[SECTOR..]);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
    assert_eq!(rig.irq_count(), 1);

    // Acknowledging a bit that is not set leaves the others alone.
    rig.w32(INTERRUPT_ACK_OFFSET, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
    rig.w32(
        INTERRUPT_ACK_OFFSET,
        VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG,
    );
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), 0);

    // A notification naming no queue changes nothing.
    rig.submit(&mut dq, VIRTIO_BLK_T_IN, 0, &[], SECTOR as u32);
    rig.w32(NOTIFY_OFFSET, 1);
    rig.w32(NOTIFY_OFFSET, 0x1_0000);
    assert!(dq.used().is_empty());
    assert_eq!(rig.irq_count(), 0);
    // The queue's ioeventfd path: the event loop locks the device and notifies.
    rig.t.device().lock().unwrap().queue_notify(0);
    assert_eq!(dq.used().len(), 1);
    assert_eq!(rig.irq_count(), 1);
}

#[test]
fn config_space_reads_capacity_at_every_width() {
    let mut rig = Rig::new();
    let cap = CONFIG_SPACE_OFFSET;
    assert_eq!(rig.read_n(cap, 8), DISK_SECTORS.to_le_bytes());
    assert_eq!(rig.r32(cap), DISK_SECTORS as u32);
    assert_eq!(rig.r32(cap + 4), 0);
    assert_eq!(rig.read_n(cap, 2), [DISK_SECTORS as u8, 0]);
    assert_eq!(rig.read_n(cap, 1), [DISK_SECTORS as u8]);
    assert_eq!(rig.read_n(cap + 1, 1), [0]);
    // Odd sizes are not config accesses: zeros.
    assert_eq!(rig.read_n(cap, 3), [0, 0, 0]);
    assert_eq!(rig.read_n(cap, 16), [0; 16]);
    // Past the block config, and at the very end of the window: zeros.
    assert_eq!(rig.read_n(0x800, 8), [0; 8]);
    assert_eq!(rig.read_n(VIRTIO_MMIO_SIZE - 8, 8), [0; 8]);
    // Straddling or past the window end: zeros.
    assert_eq!(rig.read_n(VIRTIO_MMIO_SIZE - 4, 8), [0; 8]);
    assert_eq!(rig.read_n(VIRTIO_MMIO_SIZE, 4), [0; 4]);
    assert_eq!(rig.read_n(u64::MAX - 1, 4), [0; 4]);

    // Capacity is read-only: a write leaves it alone.
    rig.t.write(cap, &1u64.to_le_bytes());
    assert_eq!(rig.read_n(cap, 8), DISK_SECTORS.to_le_bytes());
}

#[test]
fn config_generation_and_config_interrupt() {
    let mut rig = Rig::new();
    let _dq = rig.init();
    let before = rig.r32(CONFIG_GENERATION_OFFSET);
    // What a device does when its configuration changes (a resize, say).
    rig.block.lock().unwrap().common_mut().notify_config();
    assert_eq!(rig.r32(CONFIG_GENERATION_OFFSET), before.wrapping_add(1));
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(rig.irq_count(), 1);
    rig.w32(INTERRUPT_ACK_OFFSET, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), 0);
}

#[test]
fn registers_accept_only_aligned_32_bit_accesses() {
    let mut rig = Rig::new();
    for len in [1, 2, 3, 8] {
        assert_eq!(
            rig.read_n(MAGIC_VALUE_OFFSET, len),
            vec![0; len],
            "{len}-byte read"
        );
    }
    assert_eq!(rig.read_n(MAGIC_VALUE_OFFSET + 1, 4), [0; 4]);
    assert_eq!(rig.read_n(VERSION_OFFSET + 2, 4), [0; 4]);

    rig.t.write(STATUS_OFFSET, &[STATUS_ACKNOWLEDGE]);
    rig.t
        .write(STATUS_OFFSET, &u64::from(STATUS_ACKNOWLEDGE).to_le_bytes());
    rig.t.write(
        STATUS_OFFSET - 2,
        &(u32::from(STATUS_ACKNOWLEDGE) << 16).to_le_bytes(),
    );
    assert_eq!(rig.r32(STATUS_OFFSET), 0);
    // Bits above the eight the spec defines make the whole write void.
    rig.w32(STATUS_OFFSET, 0x100 | u32::from(STATUS_ACKNOWLEDGE));
    assert_eq!(rig.r32(STATUS_OFFSET), 0);
    rig.w32(STATUS_OFFSET, u32::from(STATUS_ACKNOWLEDGE));
    assert_eq!(rig.r32(STATUS_OFFSET), u32::from(STATUS_ACKNOWLEDGE));

    // Read-only, write-only and unknown registers.
    rig.w32(MAGIC_VALUE_OFFSET, 0);
    assert_eq!(rig.r32(MAGIC_VALUE_OFFSET), MAGIC_VALUE);
    rig.w32(QUEUE_NUM_MAX_OFFSET, 1);
    assert_eq!(rig.r32(QUEUE_NUM_MAX_OFFSET), 256);
    assert_eq!(rig.r32(QUEUE_NUM_OFFSET), 0);
    assert_eq!(rig.r32(NOTIFY_OFFSET), 0);
    rig.w32(0x0c0, 1);
    assert_eq!(rig.r32(0x0c0), 0);
    assert_eq!(rig.r32(0x0f8), 0);
}

#[test]
fn queue_configuration_is_frozen_once_ready_or_live() {
    let mut rig = Rig::new();
    assert_eq!(rig.negotiate(u64::MAX), FEATURES_STATUS);
    let queue = |rig: &Rig| {
        let dev = rig.block.lock().unwrap();
        let q = &dev.common().queues[0];
        (
            q.size(),
            q.desc_table(),
            q.avail_ring(),
            q.used_ring(),
            q.ready(),
        )
    };

    // Sizes that are not powers of two, or above the maximum, are refused.
    rig.w32(QUEUE_SEL_OFFSET, 0);
    for bad in [0, 3, 512, 0x1_0000] {
        rig.w32(QUEUE_NUM_OFFSET, bad);
        assert_eq!(queue(&rig).0, 256, "size {bad}");
    }
    // Writes for a queue that does not exist go nowhere.
    rig.w32(QUEUE_SEL_OFFSET, 5);
    rig.w32(QUEUE_NUM_OFFSET, 8);
    rig.w32(QUEUE_DESC_LOW_OFFSET, 0x1000);
    rig.w32(QUEUE_READY_OFFSET, 1);
    assert_eq!(queue(&rig), (256, 0, 0, 0, false));

    let dq = rig.setup_queue(0, 0x1_0000);
    let configured = (
        QSIZE,
        dq.desc_table().0,
        dq.avail_ring().0,
        dq.used_ring().0,
        true,
    );
    assert_eq!(queue(&rig), configured);

    // Ready: every configuration register is ignored.
    rig.w32(QUEUE_NUM_OFFSET, 8);
    for off in [
        QUEUE_DESC_LOW_OFFSET,
        QUEUE_DESC_HIGH_OFFSET,
        QUEUE_DRIVER_LOW_OFFSET,
        QUEUE_DRIVER_HIGH_OFFSET,
        QUEUE_DEVICE_LOW_OFFSET,
        QUEUE_DEVICE_HIGH_OFFSET,
    ] {
        rig.w32(off, 0x2000);
    }
    assert_eq!(queue(&rig), configured);

    // The driver may give the queue up before DRIVER_OK (Linux's vm_del_vq).
    rig.w32(QUEUE_READY_OFFSET, 0);
    assert_eq!(rig.r32(QUEUE_READY_OFFSET), 0);
    rig.w32(QUEUE_READY_OFFSET, 2);
    assert_eq!(rig.r32(QUEUE_READY_OFFSET), 0);
    rig.w32(QUEUE_READY_OFFSET, 1);

    rig.w32(STATUS_OFFSET, LIVE_STATUS);
    assert_eq!(rig.r32(STATUS_OFFSET), LIVE_STATUS);
    // Live: neither configuration nor readiness changes.
    rig.w32(QUEUE_READY_OFFSET, 0);
    rig.w32(QUEUE_DESC_LOW_OFFSET, 0x2000);
    assert_eq!(queue(&rig), configured);
    assert_eq!(rig.r32(QUEUE_READY_OFFSET), 1);
}

/// A queue the driver did not set up before DRIVER_OK stays unconfigured:
/// without queue reset the configuration is fixed once the device is live.
#[test]
fn queue_left_unset_stays_unset_after_driver_ok() {
    let mut rig = Rig::new();
    assert_eq!(rig.negotiate(u64::MAX), FEATURES_STATUS);
    rig.w32(STATUS_OFFSET, LIVE_STATUS);
    assert_eq!(rig.r32(STATUS_OFFSET), LIVE_STATUS);
    rig.w32(QUEUE_SEL_OFFSET, 0);
    rig.w32(QUEUE_NUM_OFFSET, u32::from(QSIZE));
    rig.w32(QUEUE_DESC_LOW_OFFSET, 0x1000);
    rig.w32(QUEUE_DRIVER_LOW_OFFSET, 0x2000);
    rig.w32(QUEUE_DEVICE_LOW_OFFSET, 0x3000);
    rig.w32(QUEUE_READY_OFFSET, 1);
    assert_eq!(rig.r32(QUEUE_READY_OFFSET), 0);
    let dev = rig.block.lock().unwrap();
    let q = &dev.common().queues[0];
    assert_eq!(
        (
            q.size(),
            q.desc_table(),
            q.avail_ring(),
            q.used_ring(),
            q.ready()
        ),
        (256, 0, 0, 0, false)
    );
}

#[test]
fn status_zero_resets_device_and_transport() {
    let mut rig = Rig::new();
    let mut dq = rig.init();
    rig.submit(&mut dq, VIRTIO_BLK_T_IN, 0, &[], SECTOR as u32);
    rig.w32(NOTIFY_OFFSET, 0);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
    rig.w32(QUEUE_SEL_OFFSET, 3);
    rig.w32(DEVICE_FEATURES_SEL_OFFSET, 1);

    rig.w32(STATUS_OFFSET, 0);
    assert_eq!(rig.r32(STATUS_OFFSET), 0);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), 0);
    // Selectors are back to 0: queue 0 shows, page 0 of the features shows.
    assert_eq!(rig.r32(QUEUE_NUM_MAX_OFFSET), 256);
    assert_eq!(rig.r32(QUEUE_READY_OFFSET), 0);
    let offered = rig.block.lock().unwrap().common().avail_features;
    assert_eq!(rig.r32(DEVICE_FEATURES_OFFSET), offered as u32);
    {
        let dev = rig.block.lock().unwrap();
        assert!(!dev.common().activated);
        assert_eq!(dev.common().acked_features, 0);
        assert!(!dev.common().queues[0].ready());
    }
    // A notification after reset processes nothing.
    rig.irq_count();
    rig.w32(NOTIFY_OFFSET, 0);
    assert_eq!(rig.irq_count(), 0);

    // And the driver can bring the device up again from scratch.
    rig.next_buf = DATA_BASE;
    let mut dq = rig.init();
    let payload = pattern(SECTOR, 9);
    let (_, s) = rig.submit(&mut dq, VIRTIO_BLK_T_OUT, 0, &payload, 0);
    rig.w32(NOTIFY_OFFSET, 0);
    assert_eq!(dq.used().len(), 1);
    assert_eq!(rig.get(s, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(&fs::read(&rig.image).unwrap()[..SECTOR], &payload[..]);
}

#[test]
fn activation_failure_sets_needs_reset() {
    let mut rig = Rig::new();
    assert_eq!(rig.negotiate(u64::MAX), FEATURES_STATUS);
    rig.w32(QUEUE_SEL_OFFSET, 0);
    rig.w32(QUEUE_NUM_OFFSET, u32::from(QSIZE));
    // Rings far outside the 4 MiB of RAM.
    rig.w32(QUEUE_DESC_LOW_OFFSET, 0);
    rig.w32(QUEUE_DESC_HIGH_OFFSET, 1);
    rig.w32(QUEUE_DRIVER_LOW_OFFSET, 0x1000);
    rig.w32(QUEUE_DRIVER_HIGH_OFFSET, 1);
    rig.w32(QUEUE_DEVICE_LOW_OFFSET, 0x2000);
    rig.w32(QUEUE_DEVICE_HIGH_OFFSET, 1);
    rig.w32(QUEUE_READY_OFFSET, 1);
    rig.w32(STATUS_OFFSET, LIVE_STATUS);

    let status = rig.r32(STATUS_OFFSET);
    assert_ne!(
        status & u32::from(STATUS_NEEDS_RESET),
        0,
        "status {status:#x}"
    );
    assert!(!rig.block.lock().unwrap().common().activated);
    // The driver hears of it through a configuration change interrupt.
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(rig.irq_count(), 1);
    // Notifying the broken queue is harmless.
    rig.w32(NOTIFY_OFFSET, 0);

    // Reset clears it and the device works again.
    rig.w32(STATUS_OFFSET, 0);
    assert_eq!(rig.r32(STATUS_OFFSET), 0);
    let mut dq = rig.init();
    let (_, s) = rig.submit(&mut dq, VIRTIO_BLK_T_IN, 1, &[], SECTOR as u32);
    rig.w32(NOTIFY_OFFSET, 0);
    assert_eq!(rig.get(s, 1), [VIRTIO_BLK_S_OK]);
}

/// Sets queue 0 up with rings at `base` (laid out as `DriverQueue` does),
/// writing only the rings in `write` and adding `skew[ring]` to each
/// address; then DRIVER_OK. Returns the status read back.
fn setup_skewed(rig: &mut Rig, base: u64, write: [bool; 3], skew: [u64; 3]) -> u32 {
    assert_eq!(rig.negotiate(!VIRTIO_RING_F_EVENT_IDX), FEATURES_STATUS);
    let dq = DriverQueue::new(rig.mem(), GuestAddress(base), QSIZE);
    rig.w32(QUEUE_SEL_OFFSET, 0);
    rig.w32(QUEUE_NUM_OFFSET, u32::from(QSIZE));
    let rings = [
        (QUEUE_DESC_LOW_OFFSET, dq.desc_table()),
        (QUEUE_DRIVER_LOW_OFFSET, dq.avail_ring()),
        (QUEUE_DEVICE_LOW_OFFSET, dq.used_ring()),
    ];
    for (i, (low, addr)) in rings.into_iter().enumerate() {
        if write[i] {
            let addr = addr.0 + skew[i];
            rig.w32(low, addr as u32);
            rig.w32(low + 4, (addr >> 32) as u32);
        }
    }
    rig.w32(QUEUE_READY_OFFSET, 1);
    rig.w32(STATUS_OFFSET, LIVE_STATUS);
    rig.r32(STATUS_OFFSET)
}

/// virtio 1.2, 2.7: the descriptor table is 16-byte aligned, the driver
/// area 2, the device area 4. A misaligned address used to leave the
/// queue at guest-physical 0, which the device then read descriptors from
/// and wrote used entries to; now the device refuses to go live.
#[test]
fn misaligned_rings_are_refused_with_needs_reset() {
    const LOW: usize = 0x1000;
    for (ring, skew) in [(0, 8), (0, 1), (1, 1), (2, 2), (2, 1)] {
        let mut rig = Rig::new();
        rig.mem()
            .write_slice(&[0x5a; LOW], GuestAddress(0))
            .unwrap();
        let mut skews = [0; 3];
        skews[ring] = skew;
        let status = setup_skewed(&mut rig, 0x1_0000, [true; 3], skews);
        assert_ne!(
            status & u32::from(STATUS_NEEDS_RESET),
            0,
            "ring {ring} off by {skew}: status {status:#x}"
        );
        assert!(!rig.block.lock().unwrap().common().activated);
        assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_CONFIG);
        // A notification touches nothing, least of all guest-physical 0.
        rig.w32(NOTIFY_OFFSET, 0);
        assert_eq!(
            rig.get(0, LOW),
            vec![0x5a; LOW],
            "ring {ring} off by {skew}"
        );
        // The driver can start again properly.
        rig.w32(STATUS_OFFSET, 0);
        let mut dq = rig.init();
        let (_, s) = rig.submit(&mut dq, VIRTIO_BLK_T_IN, 0, &[], SECTOR as u32);
        rig.w32(NOTIFY_OFFSET, 0);
        assert_eq!(rig.get(s, 1), [VIRTIO_BLK_S_OK]);
    }
}

/// QueueReady before (some of) the ring addresses: the missing rings
/// would be at guest-physical 0. A ring the driver really places at 0 is
/// fine (`Rig::init` puts the descriptor table there).
#[test]
fn rings_never_written_are_refused_with_needs_reset() {
    const LOW: usize = 0x1000;
    for write in [
        [false; 3],
        [false, true, true],
        [true, false, true],
        [true, true, false],
    ] {
        let mut rig = Rig::new();
        rig.mem()
            .write_slice(&[0x5a; LOW], GuestAddress(0))
            .unwrap();
        let status = setup_skewed(&mut rig, 0x1_0000, write, [0; 3]);
        assert_ne!(
            status & u32::from(STATUS_NEEDS_RESET),
            0,
            "written {write:?}: status {status:#x}"
        );
        assert!(!rig.block.lock().unwrap().common().activated);
        rig.w32(NOTIFY_OFFSET, 0);
        assert_eq!(rig.get(0, LOW), vec![0x5a; LOW], "written {write:?}");
    }
    // A reset forgets what was written: writing the addresses before the
    // reset does not count after it.
    let mut rig = Rig::new();
    let status = setup_skewed(&mut rig, 0x1_0000, [true; 3], [0; 3]);
    assert_eq!(status, LIVE_STATUS);
    let status = setup_skewed(&mut rig, 0x1_0000, [false; 3], [0; 3]);
    assert_ne!(status & u32::from(STATUS_NEEDS_RESET), 0);
}

#[test]
fn queue_evts_match_the_device_queues() {
    let rig = Rig::new();
    assert_eq!(rig.t.queue_evts().len(), 1);

    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let cfg = BalloonConfig {
        free_page_reporting: true,
        deflate_on_oom: false,
        stats: true,
        target: None,
    };
    let balloon = Arc::new(Mutex::new(Balloon::new(&cfg, ram).unwrap()));
    let queues = balloon.lock().unwrap().common().queues.len();
    assert!(queues > 2, "the balloon has {queues} queues");
    let mut t = MmioTransport::new(balloon, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    assert_eq!(t.queue_evts().len(), queues);
    let mut b = [0u8; 4];
    t.read(DEVICE_ID_OFFSET, &mut b);
    assert_eq!(u32::from_le_bytes(b), devices::virtio::TYPE_BALLOON);
    for i in 0..queues as u32 {
        t.write(QUEUE_SEL_OFFSET, &i.to_le_bytes());
        t.read(QUEUE_NUM_MAX_OFFSET, &mut b);
        assert_ne!(u32::from_le_bytes(b), 0, "queue {i}");
    }
    t.write(QUEUE_SEL_OFFSET, &(queues as u32).to_le_bytes());
    t.read(QUEUE_NUM_MAX_OFFSET, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0);
}

/// A vCPU thread holding the transport lock and an event loop holding the
/// device lock, while the device interrupts, must not deadlock.
#[test]
fn vcpu_and_event_loop_do_not_deadlock() {
    let mut rig = Rig::new();
    let mut dq = rig.init();
    for _ in 0..4 {
        rig.submit(&mut dq, VIRTIO_BLK_T_IN, 0, &[], SECTOR as u32);
    }
    // The VMM keeps the transport in a Mutex on its MMIO bus.
    let Rig { _dir, t, .. } = rig;
    let device = t.device().clone();
    let t = Arc::new(Mutex::new(t));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let vcpu = {
        let t = t.clone();
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                let mut t = t.lock().unwrap();
                let mut b = [0u8; 4];
                t.read(INTERRUPT_STATUS_OFFSET, &mut b);
                t.write(INTERRUPT_ACK_OFFSET, &b);
                t.write(NOTIFY_OFFSET, &0u32.to_le_bytes());
                t.read(CONFIG_SPACE_OFFSET, &mut b);
            }
            done_tx.send(()).unwrap();
        })
    };
    let event_loop = std::thread::spawn(move || {
        for _ in 0..2000 {
            let mut dev = device.lock().unwrap();
            dev.queue_notify(0);
            dev.common_mut().notify_config();
        }
        done_tx.send(()).unwrap();
    });
    for _ in 0..2 {
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("both threads finish");
    }
    vcpu.join().unwrap();
    event_loop.join().unwrap();
    assert_eq!(dq.used().len(), 4);
}

/// A guest decides how often it accesses registers wrongly. A line for
/// each bad access let it fill the host's disk through the VMM's log
/// (10,000 notifications to a queue that does not exist gave 10,030
/// lines); now each kind of message gives a few lines, then a count.
#[test]
fn a_storm_of_bad_accesses_logs_a_bounded_number_of_lines() {
    use devices::log_limit::{self, capture::Capture, Level, BURST};
    const N: usize = 10_000;

    let cap = Capture::start();
    let mut rig = Rig::new();
    let mut dq = rig.init();
    let before = log_limit::suppressed_total();
    type BadAccess = Box<dyn Fn(&mut Rig, &mut DriverQueue)>;
    let kinds: Vec<(&str, BadAccess)> = vec![
        (
            "notify a missing queue",
            Box::new(|r, _| r.w32(NOTIFY_OFFSET, 7)),
        ),
        (
            "read an unknown register",
            Box::new(|r, _| {
                r.r32(0x0c0);
            }),
        ),
        (
            "write a read-only register",
            Box::new(|r, _| r.w32(MAGIC_VALUE_OFFSET, 0)),
        ),
        (
            "2-byte register read",
            Box::new(|r, _| {
                r.read_n(STATUS_OFFSET, 2);
            }),
        ),
        (
            "status above 8 bits",
            Box::new(|r, _| r.w32(STATUS_OFFSET, 0x1ff)),
        ),
        (
            "QueueReady once live",
            Box::new(|r, _| r.w32(QUEUE_READY_OFFSET, 0)),
        ),
        (
            "write the read-only block config",
            Box::new(|r, _| r.t.write(CONFIG_SPACE_OFFSET, &[1; 4])),
        ),
        (
            "a request without a status byte",
            Box::new(|r, dq| {
                let h = r.put(&[0; 16]);
                r.next_buf = DATA_BASE;
                dq.add_chain(&[Buf::r(h, 16)]);
                r.w32(NOTIFY_OFFSET, 0);
            }),
        ),
        // Last: it also meets the status-byte message of the kind before.
        (
            "a chain whose head is beyond the queue",
            Box::new(|r, dq| {
                dq.add_raw_chain(QSIZE + 1, &[]);
                r.w32(NOTIFY_OFFSET, 0);
            }),
        ),
    ];
    for (what, access) in &kinds {
        let seen = cap.lines().len();
        for _ in 0..N {
            access(&mut rig, &mut dq);
        }
        assert!(cap.lines().len() > seen, "{what}: logged nothing at all");
    }
    let lines = cap.lines();
    // A slow run may pass one interval: one more line per kind.
    let bound = kinds.len() * (BURST as usize + 2);
    assert!(
        lines.len() <= bound,
        "{} lines for {} bad accesses (at most {bound} expected); the first: {:?}",
        lines.len(),
        kinds.len() * N,
        &lines[..lines.len().min(5)]
    );
    assert!(
        lines.iter().all(|(level, _)| *level == Level::Warn),
        "guest misbehaviour is logged at WARN at most: {lines:?}"
    );
    assert!(log_limit::suppressed_total() - before >= (kinds.len() * N - bound) as u64);

    // What was left out is counted in the log, too.
    log_limit::report_all();
    let counts: Vec<u64> = cap.lines()[lines.len()..]
        .iter()
        .filter(|(_, l)| l.contains("vmm/src/transport/mmio/mod.rs"))
        .filter_map(|(_, l)| l.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        counts.iter().any(|&n| n >= N as u64 / 2),
        "no count of the left-out notifications: {counts:?}"
    );
    // The device still works.
    rig.w32(STATUS_OFFSET, 0);
    rig.next_buf = DATA_BASE;
    let mut dq = rig.init();
    let (_, s) = rig.submit(&mut dq, VIRTIO_BLK_T_IN, 0, &[], SECTOR as u32);
    rig.w32(NOTIFY_OFFSET, 0);
    assert_eq!(rig.get(s, 1), [VIRTIO_BLK_S_OK]);
}

/// Offsets worth hitting: every register, around them, the config space, past the window.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..0x40).prop_map(|r| r * 4),
        0u64..0x1100,
        Just(CONFIG_SPACE_OFFSET),
        Just(VIRTIO_MMIO_SIZE - 4),
        Just(u64::MAX - 3),
    ]
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4,
        0u64..0x200,
        any::<u64>(),
        Just(u64::from(LIVE_STATUS))
    ]
}

#[derive(Clone, Debug)]
enum Access {
    Read(u64, usize),
    Write(u64, usize, u64),
}

fn access() -> impl Strategy<Value = Access> {
    let size = prop_oneof![Just(1usize), Just(2), Just(4), Just(8), 0usize..17];
    prop_oneof![
        (offset(), size.clone()).prop_map(|(o, s)| Access::Read(o, s)),
        (offset(), size, value()).prop_map(|(o, s, v)| Access::Write(o, s, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of accesses, on a fresh device or a live one with
    /// requests pending, is answered without a panic, and the identity
    /// registers stay intact.
    #[test]
    fn random_accesses_never_panic(
        live in any::<bool>(),
        accesses in prop::collection::vec(access(), 1..200),
    ) {
        let mut rig = Rig::new();
        if live {
            let mut dq = rig.init();
            rig.submit(&mut dq, VIRTIO_BLK_T_IN, 0, &[], SECTOR as u32);
        }
        for a in accesses {
            match a {
                Access::Read(off, len) => {
                    let mut b = vec![0u8; len];
                    rig.t.read(off, &mut b);
                }
                Access::Write(off, len, v) => {
                    let bytes = v.to_le_bytes();
                    let mut b = vec![0u8; len];
                    let n = len.min(8);
                    b[..n].copy_from_slice(&bytes[..n]);
                    rig.t.write(off, &b);
                }
            }
        }
        prop_assert_eq!(rig.r32(MAGIC_VALUE_OFFSET), MAGIC_VALUE);
        prop_assert_eq!(rig.r32(VERSION_OFFSET), VERSION);
        prop_assert_eq!(rig.r32(DEVICE_ID_OFFSET), TYPE_BLOCK);
        prop_assert_eq!(rig.read_n(CONFIG_SPACE_OFFSET, 8), DISK_SECTORS.to_le_bytes().to_vec());
        prop_assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET) & !VIRTIO_MMIO_INT_ALL, 0);
        // The device still works after a reset.
        rig.w32(STATUS_OFFSET, 0);
        rig.next_buf = DATA_BASE;
        let mut dq = rig.init();
        let (_, s) = rig.submit(&mut dq, VIRTIO_BLK_T_IN, 0, &[], SECTOR as u32);
        rig.w32(NOTIFY_OFFSET, 0);
        prop_assert_eq!(rig.get(s, 1), vec![VIRTIO_BLK_S_OK]);
    }
}

/// A completion the driver has not acknowledged yet (InterruptStatus set,
/// irqfd fired) and a request made available but not yet processed: after
/// saving device and transport and restoring both into new objects, the
/// interrupt is raised again and still reads as pending, the registers
/// read the same, and the waiting request completes.
#[test]
fn a_pending_interrupt_and_a_waiting_request_survive_a_round_trip() {
    use devices::virtio::persist::Persist;

    let mut rig = Rig::new();
    let mut dq = rig.init();
    let payload = pattern(SECTOR, 3);
    rig.submit(&mut dq, VIRTIO_BLK_T_OUT, 1, &payload, 0);
    rig.w32(NOTIFY_OFFSET, 0);
    assert_eq!(rig.irq_count(), 1);
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
    let (data, status) = rig.submit(&mut dq, VIRTIO_BLK_T_IN, 1, &[], SECTOR as u32);
    rig.w32(QUEUE_SEL_OFFSET, 0);
    rig.w32(DEVICE_FEATURES_SEL_OFFSET, 1);

    let t_state = rig.t.save_state();
    assert_eq!(t_state.interrupt_status, VIRTIO_MMIO_INT_VRING);
    let d_state = rig.block.lock().unwrap().save_bytes();
    let cfg = rig.block.lock().unwrap().config().clone();

    let block = Arc::new(Mutex::new(
        Block::restore_bytes((cfg, rig.ram.clone()), &d_state).unwrap(),
    ));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(block.clone(), irq.try_clone().unwrap()).unwrap();
    t.restore_state(&t_state).unwrap();
    assert_eq!(t.save_state(), t_state, "the registers come back as saved");
    assert_eq!(
        irq.read().unwrap(),
        1,
        "the pending interrupt is raised again"
    );
    rig.irq = irq;
    rig.t = t;
    rig.block = block;
    assert_eq!(rig.r32(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
    assert_eq!(rig.r32(STATUS_OFFSET), LIVE_STATUS);
    assert_eq!(
        rig.r32(DEVICE_FEATURES_OFFSET),
        (rig.block.lock().unwrap().common().avail_features >> 32) as u32
    );
    rig.w32(INTERRUPT_ACK_OFFSET, VIRTIO_MMIO_INT_VRING);

    // What the event loop does once after a restore.
    rig.block.lock().unwrap().queue_notify(0);
    assert_eq!(rig.get(status, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(rig.get(data, SECTOR), payload);
    assert_eq!(rig.irq_count(), 1);

    // Bits virtio-mmio does not define are refused.
    let mut bad = t_state.clone();
    bad.interrupt_status = 0x4;
    assert!(rig.t.restore_state(&bad).is_err());
}

/// A save takes each disk's identity (after an fsync) on a paused VM and
/// relies on nothing writing the image afterwards: the device thread is
/// the only one that processes block requests, and once paused it is
/// parked. A write request the guest makes available and notifies then
/// is not processed, and the image keeps its identity, until the resume.
#[test]
fn a_parked_device_thread_leaves_the_image_as_its_identity_says_until_resume() {
    use crate::event_loop::EventLoop;
    use crate::exit::ExitSignal;
    use crate::snapshot::file_identity::FileIdentity;

    let mut rig = Rig::new();
    let mut dq = rig.init();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut el = EventLoop::new().unwrap();
    let handle = el.handle().unwrap();
    let dev: Arc<Mutex<dyn VirtioDevice>> = rig.block.clone();
    el.add_queue("--disk id=disk-0", dev, 0, kick.try_clone().unwrap())
        .unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let stop = EventFd::new(EFD_NONBLOCK).unwrap();
    let device_thread = {
        let (exit, stop) = (exit.clone(), stop.try_clone().unwrap());
        std::thread::spawn(move || el.run(exit, stop, false))
    };

    handle.pause().unwrap();
    let identity = {
        let b = rig.block.lock().unwrap();
        b.sync_all().unwrap();
        FileIdentity::from_metadata(&b.image_metadata().unwrap())
    };
    assert_eq!(identity, FileIdentity::of(&rig.image).unwrap());
    let payload = pattern(SECTOR, 5);
    let (_, status) = rig.submit(&mut dq, VIRTIO_BLK_T_OUT, 2, &payload, 0);
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.get(status, 1), [UNTOUCHED], "processed while paused");
    assert_eq!(identity.check(&rig.image), None, "the image changed");

    handle.resume().unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while rig.get(status, 1) != [VIRTIO_BLK_S_OK] {
        assert!(
            std::time::Instant::now() < end,
            "not processed after resume"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let why = identity
        .check(&rig.image)
        .expect("the write changes the image");
    assert!(why.contains("modified"), "{why}");
    let on_disk = fs::read(&rig.image).unwrap();
    assert_eq!(&on_disk[2 * SECTOR..3 * SECTOR], payload.as_slice());

    stop.write(1).unwrap();
    device_thread.join().unwrap();
}
