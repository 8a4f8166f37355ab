//! Tests against real image files and real guest RAM, driven through a
//! driver-side split queue as a guest would drive the device.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::ram::{GuestMemoryMmap, GuestRam};
use crate::virtio::persist::{encode, Persist, PersistError};
use crate::virtio::testing::{
    init_device, raw, write_table, Buf, DriverQueue, InterruptLog, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use crate::virtio::{
    InterruptKind, VirtioDevice, TYPE_BLOCK, TYPE_NET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

const RAM_SIZE: u64 = 4 << 20;
const DATA_BASE: u64 = 1 << 20;
const QSIZE: u16 = 16;
const DISK_SECTORS: u64 = 64;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// What status buffers hold before the device answers.
const UNTOUCHED: u8 = 0xa5;
const ALL_FEATURES: u64 = u64::MAX;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "virtio-block-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn image(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Distinct, non-zero bytes per sector so misplaced sectors show.
fn pattern(sectors: u64) -> Vec<u8> {
    (0..sectors * 512)
        .map(|i| ((i % 251) as u8 ^ (i / 512) as u8) | 1)
        .collect()
}

fn cfg(path: PathBuf, readonly: bool) -> BlockConfig {
    BlockConfig {
        id: "disk-0".into(),
        path,
        readonly,
    }
}

fn header(ty: u32, sector: u64) -> Vec<u8> {
    let mut h = ty.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A device, its guest RAM and image, and the driver's view of the queue.
struct Rig {
    cfg: BlockConfig,
    ram: Arc<GuestRam>,
    dq: DriverQueue,
    dev: Block,
    irq: Arc<InterruptLog>,
    next_buf: u64,
    used_seen: u16,
}

/// One answered request, as the driver sees it.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    used: Vec<(u32, u32)>,
    status: u8,
    data: Vec<u8>,
}

impl Rig {
    fn new(cfg: BlockConfig, features: u64) -> Rig {
        let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
        let dq = DriverQueue::new(ram.memory(), GuestAddress(0), QSIZE);
        assert!(dq.end().0 <= DATA_BASE);
        let mut dev = Block::new(&cfg, ram.clone()).unwrap();
        let irq = init_device(&mut dev, features, &[&dq]).unwrap();
        assert!(dev.common().activated);
        Rig {
            cfg,
            ram,
            dq,
            dev,
            irq,
            next_buf: DATA_BASE,
            used_seen: 0,
        }
    }

    fn mem(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// A fresh guest buffer; allocation wraps, which is safe because every
    /// request is answered long before its buffers come round again.
    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len > RAM_SIZE {
            self.next_buf = DATA_BASE;
        }
        let a = self.next_buf;
        self.next_buf += len.next_multiple_of(16);
        a
    }

    fn put(&mut self, bytes: &[u8]) -> u64 {
        let a = self.alloc(bytes.len() as u64);
        self.mem().write_slice(bytes, GuestAddress(a)).unwrap();
        a
    }

    /// A device-writable buffer filled with a marker, so untouched bytes show.
    fn out_buf(&mut self, len: u32) -> u64 {
        self.put(&vec![UNTOUCHED; len as usize])
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem().read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn notify(&mut self) -> Vec<(u32, u32)> {
        self.dev.queue_notify(0);
        let used: Vec<_> = self.dq.used().iter().map(|e| (e.id(), e.len())).collect();
        self.used_seen = self.used_seen.wrapping_add(used.len() as u16);
        used
    }

    /// Header, optional data to the device, optional data to the driver, status.
    fn request(&mut self, ty: u32, sector: u64, out: &[u8], in_len: u32) -> Reply {
        let h = header(ty, sector);
        let h = self.put(&h);
        let mut bufs = vec![Buf::r(h, 16)];
        if !out.is_empty() {
            let o = self.put(out);
            bufs.push(Buf::r(o, out.len() as u32));
        }
        let i = self.out_buf(in_len);
        if in_len > 0 {
            bufs.push(Buf::w(i, in_len));
        }
        let s = self.out_buf(1);
        bufs.push(Buf::w(s, 1));
        self.dq.add_chain(&bufs);
        let used = self.notify();
        Reply {
            used,
            status: self.read(s, 1)[0],
            data: self.read(i, in_len as usize),
        }
    }

    fn read_sectors(&mut self, sector: u64, sectors: u32) -> Reply {
        self.request(VIRTIO_BLK_T_IN, sector, &[], sectors * 512)
    }

    fn image(&self) -> Vec<u8> {
        fs::read(&self.cfg.path).unwrap()
    }

    /// A valid read after a malformed chain: the device must still work.
    fn assert_healthy(&mut self) {
        let expect = self.image()[512..1024].to_vec();
        let r = self.read_sectors(1, 1);
        assert_eq!(r.status, OK);
        assert_eq!(r.data, expect);
        assert_eq!(r.used.len(), 1);
        assert_eq!(r.used[0].1, 513);
    }

    /// Submits `bufs` as one chain; returns the used elements and the chain's head.
    fn submit(&mut self, bufs: &[Buf]) -> (Vec<(u32, u32)>, u16) {
        let head = self.dq.add_chain(bufs);
        (self.notify(), head)
    }

    fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.dq.desc_table().0 + 16 * u64::from(index);
        self.mem()
            .write_obj(raw(addr, len, flags, next), GuestAddress(at))
            .unwrap();
    }
}

fn rig(readonly: bool) -> (TempDir, Rig) {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &pattern(DISK_SECTORS));
    let rig = Rig::new(cfg(path, readonly), ALL_FEATURES);
    (dir, rig)
}

// ---- construction, features, config space ----

#[test]
fn missing_image_is_refused_with_path_and_fix() {
    let dir = TempDir::new();
    let path = dir.0.join("absent.img");
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let err = Block::new(&cfg(path.clone(), false), ram).err().unwrap();
    assert!(matches!(err, BlockError::Open { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn unaligned_image_is_refused() {
    let dir = TempDir::new();
    let path = dir.image("odd.img", &[0u8; 1000]);
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let err = Block::new(&cfg(path, false), ram).err().unwrap();
    assert!(
        matches!(
            err,
            BlockError::UnalignedSize {
                size: 1000,
                rounded: 1024,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("512"), "{err}");
}

#[test]
fn directory_is_refused() {
    let dir = TempDir::new();
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let err = Block::new(&cfg(dir.0.clone(), true), ram).err().unwrap();
    assert!(matches!(err, BlockError::NotAFile { .. }), "{err}");
}

#[test]
fn capacity_is_file_size_in_sectors() {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &vec![0u8; 512 * 9]);
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let dev = Block::new(&cfg(path, false), ram).unwrap();
    assert_eq!(dev.capacity_sectors(), 9);
    assert_eq!(dev.device_type(), TYPE_BLOCK);
    assert_eq!(dev.common().queues.len(), 1);
    assert_eq!(dev.common().queues[0].max_size(), 256);
}

#[test]
fn feature_offer_depends_on_readonly() {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &pattern(4));
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let rw = Block::new(&cfg(path.clone(), false), ram.clone()).unwrap();
    let ro = Block::new(&cfg(path, true), ram).unwrap();
    let base = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_BLK_F_FLUSH
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_SEG_MAX;
    assert_eq!(
        rw.common().avail_features,
        base | 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES
    );
    assert_eq!(ro.common().avail_features, base | 1 << VIRTIO_BLK_F_RO);
}

fn le32(dev: &Block, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn config_space_layout() {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &pattern(DISK_SECTORS));
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let mut dev = Block::new(&cfg(path.clone(), false), ram.clone()).unwrap();

    // Offsets from the virtio 1.2 spec (5.2.4), not from the bindings.
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    assert_eq!(le32(&dev, 8), 0, "size_max not offered");
    assert_eq!(le32(&dev, 12), 254, "seg_max");
    assert_eq!(le32(&dev, 16), 0, "geometry not offered");
    assert_eq!(le32(&dev, 20), 512, "blk_size");
    assert_eq!(le32(&dev, 36), MAX_DISCARD_SECTORS);
    assert_eq!(le32(&dev, 40), 1, "max_discard_seg");
    assert_eq!(le32(&dev, 44), 8, "discard_sector_alignment");
    assert_eq!(le32(&dev, 48), MAX_WRITE_ZEROES_SECTORS);
    assert_eq!(le32(&dev, 52), 1, "max_write_zeroes_seg");
    let mut b = [0u8; 1];
    dev.read_config(56, &mut b);
    assert_eq!(b[0], 1, "write_zeroes_may_unmap");

    // Unaligned and partial reads, and reads past the end.
    let mut two = [0u8; 2];
    dev.read_config(20, &mut two);
    assert_eq!(two, [0x00, 0x02]);
    let mut far = [0xffu8; 4];
    dev.read_config(4096, &mut far);
    assert_eq!(far, [0; 4]);
    dev.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 4]);

    // Writes are ignored.
    dev.write_config(0, &[1, 2, 3, 4]);
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);

    let ro = Block::new(&cfg(path, true), ram).unwrap();
    for off in [36, 40, 44, 48, 52] {
        assert_eq!(le32(&ro, off), 0, "offset {off} without discard");
    }
    assert_eq!(le32(&ro, 20), 512);
}

// ---- requests ----

#[test]
fn read_returns_image_bytes() {
    let (_d, mut r) = rig(false);
    let img = r.image();
    let rep = r.read_sectors(3, 4);
    assert_eq!(rep.status, OK);
    assert_eq!(rep.data, img[3 * 512..7 * 512]);
    assert_eq!(rep.used, vec![(0, 4 * 512 + 1)]);
    // The last sector is readable, the one after is not.
    assert_eq!(r.read_sectors(DISK_SECTORS - 1, 1).status, OK);
    let rep = r.read_sectors(DISK_SECTORS, 1);
    assert_eq!(rep.status, IOERR);
    assert_eq!(
        rep.data,
        vec![UNTOUCHED; 512],
        "failed read wrote guest data"
    );
    assert_eq!(rep.used[0].1, 1);
}

#[test]
fn read_into_scattered_buffers_and_combined_status() {
    let (_d, mut r) = rig(false);
    let img = r.image();
    let h = r.put(&header(VIRTIO_BLK_T_IN, 2));
    let a = r.out_buf(100);
    let b = r.out_buf(412 + 1);
    // The second buffer carries the rest of the sector and the status byte.
    let (used, head) = r.submit(&[Buf::r(h, 16), Buf::w(a, 100), Buf::w(b, 413)]);
    assert_eq!(used, vec![(u32::from(head), 513)]);
    let mut got = r.read(a, 100);
    got.extend(r.read(b, 412));
    assert_eq!(got, img[1024..1536]);
    assert_eq!(r.read(b + 412, 1), vec![OK]);
}

#[test]
fn write_stores_bytes_in_image() {
    let (_d, mut r) = rig(false);
    let mut expect = r.image();
    let payload = data(3 * 512, 7);
    let rep = r.request(VIRTIO_BLK_T_OUT, 10, &payload, 0);
    assert_eq!(rep.status, OK);
    assert_eq!(rep.used[0].1, 1);
    expect[10 * 512..13 * 512].copy_from_slice(&payload);
    assert_eq!(r.image(), expect);
    assert_eq!(r.read_sectors(10, 3).data, payload);
}

#[test]
fn write_with_header_and_data_in_one_descriptor() {
    let (_d, mut r) = rig(false);
    let mut req = header(VIRTIO_BLK_T_OUT, 5);
    let payload = data(512, 99);
    req.extend_from_slice(&payload);
    let a = r.put(&req);
    let s = r.out_buf(1);
    let (used, _) = r.submit(&[Buf::r(a, 16 + 512), Buf::w(s, 1)]);
    assert_eq!(used[0].1, 1);
    assert_eq!(r.read(s, 1), vec![OK]);
    assert_eq!(r.image()[5 * 512..6 * 512], payload);
}

#[test]
fn large_requests_cross_bounce_buffer_chunks() {
    let dir = TempDir::new();
    let path = dir.image("big.img", &pattern(2048));
    let mut r = Rig::new(cfg(path, false), ALL_FEATURES);
    // 300 KiB over three uneven buffers: more than two 128 KiB chunks.
    let payload = data(600 * 512, 42);
    let h = r.put(&header(VIRTIO_BLK_T_OUT, 1000));
    let (a, b, c) = (
        r.put(&payload[..1000]),
        r.put(&payload[1000..200_000]),
        r.put(&payload[200_000..]),
    );
    let s = r.out_buf(1);
    let (used, _) = r.submit(&[
        Buf::r(h, 16),
        Buf::r(a, 1000),
        Buf::r(b, 199_000),
        Buf::r(c, payload.len() as u32 - 200_000),
        Buf::w(s, 1),
    ]);
    assert_eq!(used[0].1, 1);
    assert_eq!(r.read(s, 1), vec![OK]);
    assert_eq!(r.image()[1000 * 512..1600 * 512], payload);
    let rep = r.read_sectors(1000, 600);
    assert_eq!(rep.status, OK);
    assert_eq!(rep.data, payload);
    assert_eq!(rep.used[0].1, 600 * 512 + 1);
}

#[test]
fn bad_write_ranges_fail_without_touching_the_image() {
    let (_d, mut r) = rig(false);
    let before = r.image();
    for (sector, len) in [
        (DISK_SECTORS - 1, 1024),
        (DISK_SECTORS, 512),
        (u64::MAX, 512),
        (u64::MAX - 1, 1024),
        (0, 100),
        (0, 513),
    ] {
        let rep = r.request(VIRTIO_BLK_T_OUT, sector, &data(len, 1), 0);
        assert_eq!(rep.status, IOERR, "sector {sector} len {len}");
        assert_eq!(rep.used[0].1, 1);
    }
    assert_eq!(r.image(), before);
    let rep = r.request(VIRTIO_BLK_T_IN, 0, &[], 700);
    assert_eq!(rep.status, IOERR, "partial-sector read");
}

#[test]
fn readonly_refuses_writes() {
    let (_d, mut r) = rig(true);
    let before = r.image();
    let rep = r.request(VIRTIO_BLK_T_OUT, 0, &data(512, 3), 0);
    assert_eq!(rep.status, IOERR);
    let rep = r.request(VIRTIO_BLK_T_DISCARD, 0, &segment(0, 1, 0), 0);
    assert_eq!(rep.status, IOERR);
    let rep = r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segment(0, 1, 0), 0);
    assert_eq!(rep.status, IOERR);
    assert_eq!(r.image(), before);
    // Reads, flushes and ids still work.
    assert_eq!(r.read_sectors(0, 1).data, before[..512]);
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0).status, OK);
    assert_eq!(r.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20).status, OK);
}

#[test]
fn readonly_image_opened_without_write_access() {
    let dir = TempDir::new();
    let path = dir.image("ro.img", &pattern(2));
    let mut perms = fs::metadata(&path).unwrap().permissions();
    perms.set_readonly(true);
    fs::set_permissions(&path, perms).unwrap();
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    // Root may write anyway, so only the read-only open is asserted.
    assert!(Block::new(&cfg(path, true), ram).is_ok());
}

#[test]
fn flush_succeeds() {
    let (_d, mut r) = rig(false);
    let rep = r.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!(rep.status, OK);
    assert_eq!(rep.used[0].1, 1);
}

#[test]
fn get_id_returns_padded_id() {
    let (_d, mut r) = rig(false);
    let rep = r.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!(rep.status, OK);
    let mut expect = b"disk-0".to_vec();
    expect.resize(20, 0);
    assert_eq!(rep.data, expect);
    assert_eq!(rep.used[0].1, 21);
    // A short buffer gets the prefix.
    let rep = r.request(VIRTIO_BLK_T_GET_ID, 0, &[], 4);
    assert_eq!(rep.data, b"disk");
    assert_eq!(rep.used[0].1, 5);
}

#[test]
fn get_id_truncates_long_ids() {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &pattern(2));
    let mut c = cfg(path, false);
    c.id = "a-very-long-disk-identifier".into();
    let mut r = Rig::new(c, ALL_FEATURES);
    let rep = r.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!(rep.data, b"a-very-long-disk-ide");
}

#[test]
fn discard_reads_back_zero_and_keeps_size() {
    let (_d, mut r) = rig(false);
    let mut expect = r.image();
    let rep = r.request(VIRTIO_BLK_T_DISCARD, 0, &segment(8, 16, 0), 0);
    assert_eq!(rep.status, OK);
    assert_eq!(rep.used[0].1, 1);
    expect[8 * 512..24 * 512].fill(0);
    assert_eq!(r.image(), expect);
    assert_eq!(r.read_sectors(8, 4).data, vec![0; 2048]);
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let (_d, mut r) = rig(false);
    let mut expect = r.image();
    let rep = r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segment(1, 2, 0), 0);
    assert_eq!(rep.status, OK);
    expect[512..1536].fill(0);
    let rep = r.request(
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &segment(20, 9, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        0,
    );
    assert_eq!(rep.status, OK);
    expect[20 * 512..29 * 512].fill(0);
    // The very end of the disk.
    let rep = r.request(
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &segment(DISK_SECTORS - 1, 1, 0),
        0,
    );
    assert_eq!(rep.status, OK);
    let n = expect.len();
    expect[n - 512..].fill(0);
    assert_eq!(r.image(), expect);
}

#[test]
fn discard_and_write_zeroes_validation() {
    let (_d, mut r) = rig(false);
    let before = r.image();
    let two = [segment(0, 1, 0), segment(4, 1, 0)].concat();
    let cases: Vec<(u32, Vec<u8>, u8)> = vec![
        // UNMAP on a discard, unknown flags: unsupported (virtio 1.2, 5.2.6.2).
        (VIRTIO_BLK_T_DISCARD, segment(0, 1, 1), UNSUPP),
        (VIRTIO_BLK_T_DISCARD, segment(0, 1, 4), UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1, 2), UNSUPP),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            segment(0, 1, 0x8000_0001),
            UNSUPP,
        ),
        // More segments than max_*_seg.
        (VIRTIO_BLK_T_DISCARD, two.clone(), UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, two, UNSUPP),
        // No segment, a partial one.
        (VIRTIO_BLK_T_DISCARD, vec![], IOERR),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            segment(0, 1, 0)[..12].to_vec(),
            IOERR,
        ),
        // Out of range, overflowing, over the size limit.
        (VIRTIO_BLK_T_DISCARD, segment(DISK_SECTORS - 1, 2, 0), IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, segment(u64::MAX, 1, 0), IOERR),
        (
            VIRTIO_BLK_T_DISCARD,
            segment(0, MAX_DISCARD_SECTORS + 1, 0),
            IOERR,
        ),
        (VIRTIO_BLK_T_WRITE_ZEROES, segment(0, u32::MAX, 0), IOERR),
    ];
    for (ty, payload, status) in cases {
        let rep = r.request(ty, 0, &payload, 0);
        assert_eq!(rep.status, status, "type {ty} payload {payload:?}");
        assert_eq!(rep.used[0].1, 1);
    }
    assert_eq!(r.image(), before);
    // Zero sectors is a valid no-op.
    let rep = r.request(VIRTIO_BLK_T_DISCARD, 0, &segment(DISK_SECTORS, 0, 0), 0);
    assert_eq!(rep.status, OK);
    assert_eq!(r.image(), before);
}

#[test]
fn unknown_types_are_unsupported() {
    let (_d, mut r) = rig(false);
    let before = r.image();
    // SCSI (2, 3), unassigned (9), secure erase and zone report (not offered), the legacy barrier bit.
    for ty in [2, 3, 9, 14, 16, 0x8000_0000, u32::MAX] {
        let rep = r.request(ty, 0, &data(512, 0), 16);
        assert_eq!(rep.status, UNSUPP, "type {ty:#x}");
        assert_eq!(rep.data, vec![UNTOUCHED; 16]);
        assert_eq!(rep.used[0].1, 1);
    }
    assert_eq!(r.image(), before);
}

// ---- notifications ----

#[test]
fn interrupts_follow_event_idx() {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &pattern(DISK_SECTORS));
    let mut r = Rig::new(cfg(path, false), ALL_FEATURES);
    assert!(r.dev.common().has_feature(VIRTIO_RING_F_EVENT_IDX));
    // The driver asks to hear only after the 3rd used buffer (used_event = 2).
    r.dq.set_used_event(2);
    r.read_sectors(0, 1);
    r.read_sectors(0, 1);
    assert!(r.irq.take().is_empty());
    r.read_sectors(0, 1);
    assert_eq!(r.irq.take(), vec![InterruptKind::Queue(0)]);
    r.read_sectors(0, 1);
    assert!(r.irq.take().is_empty());

    let path = dir.image("disk2.img", &pattern(DISK_SECTORS));
    let mut r = Rig::new(cfg(path, false), ALL_FEATURES & !VIRTIO_RING_F_EVENT_IDX);
    r.dq.set_used_event(100);
    r.read_sectors(0, 1);
    r.read_sectors(0, 1);
    assert_eq!(r.irq.take(), vec![InterruptKind::Queue(0); 2]);
}

#[test]
fn one_notification_processes_every_chain() {
    let (_d, mut r) = rig(false);
    let mut heads = Vec::new();
    for sector in 0..4 {
        let h = r.put(&header(VIRTIO_BLK_T_IN, sector));
        let d = r.out_buf(512);
        let s = r.out_buf(1);
        heads.push(r.dq.add_chain(&[Buf::r(h, 16), Buf::w(d, 512), Buf::w(s, 1)]));
    }
    let used = r.notify();
    let expect: Vec<_> = heads.iter().map(|&h| (u32::from(h), 513)).collect();
    assert_eq!(used, expect);
    assert_eq!(r.irq.take(), vec![InterruptKind::Queue(0)]);
}

#[test]
fn notify_before_activation_or_on_bad_queue_is_ignored() {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &pattern(4));
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let mut dev = Block::new(&cfg(path, false), ram).unwrap();
    dev.queue_notify(0);
    dev.queue_notify(1);
    dev.queue_notify(u16::MAX);
    assert!(!dev.common().activated);

    let (_d, mut r) = rig(false);
    r.dev.queue_notify(1);
    assert!(r.irq.take().is_empty());
    r.assert_healthy();
}

#[test]
fn reset_forgets_driver_state_and_reinitialises() {
    let (_d, mut r) = rig(false);
    r.assert_healthy();
    r.dev.reset();
    let c = r.dev.common();
    assert_eq!((c.status, c.acked_features, c.activated), (0, 0, false));
    assert!(!c.queues[0].ready());
    assert_ne!(c.avail_features, 0, "the offer survives reset");
    // A fresh driver brings it back up on a fresh queue.
    r.dq = DriverQueue::new(r.ram.memory(), GuestAddress(0), QSIZE);
    r.used_seen = 0;
    r.irq = init_device(&mut r.dev, ALL_FEATURES, &[&r.dq]).unwrap();
    r.assert_healthy();
}

// ---- malformed chains ----

/// Submits a chain the device can answer only with IOERR in its status byte.
fn assert_ioerr_chain(r: &mut Rig, bufs: &[Buf], status: u64) {
    let (used, head) = r.submit(bufs);
    assert_eq!(used, vec![(u32::from(head), 1)], "{bufs:?}");
    assert_eq!(r.read(status, 1), vec![IOERR], "{bufs:?}");
    r.assert_healthy();
}

/// Submits a chain with no status byte the device can write: returned with length 0.
fn assert_unanswerable_chain(r: &mut Rig, bufs: &[Buf]) {
    let (used, head) = r.submit(bufs);
    assert_eq!(used, vec![(u32::from(head), 0)], "{bufs:?}");
    r.assert_healthy();
}

#[test]
fn buffers_outside_ram_get_ioerr() {
    let (_d, mut r) = rig(false);
    let before = r.image();
    let h = r.put(&header(VIRTIO_BLK_T_OUT, 0));
    let s = r.out_buf(1);
    // Data entirely outside, straddling the end, header outside.
    assert_ioerr_chain(
        &mut r,
        &[Buf::r(h, 16), Buf::r(RAM_SIZE + 4096, 512), Buf::w(s, 1)],
        s,
    );
    assert_ioerr_chain(
        &mut r,
        &[Buf::r(h, 16), Buf::r(RAM_SIZE - 256, 512), Buf::w(s, 1)],
        s,
    );
    assert_ioerr_chain(&mut r, &[Buf::r(1 << 40, 16), Buf::w(s, 1)], s);
    // Read data into a buffer outside RAM.
    let hi = r.put(&header(VIRTIO_BLK_T_IN, 0));
    assert_ioerr_chain(
        &mut r,
        &[Buf::r(hi, 16), Buf::w(RAM_SIZE, 512), Buf::w(s, 1)],
        s,
    );
    assert_eq!(r.image(), before);
}

#[test]
fn overflowing_lengths_get_ioerr() {
    let (_d, mut r) = rig(false);
    let h = r.put(&header(VIRTIO_BLK_T_OUT, 0));
    let s = r.out_buf(1);
    // addr + len wraps around the address space.
    assert_ioerr_chain(
        &mut r,
        &[Buf::r(h, 16), Buf::r(u64::MAX - 15, 512), Buf::w(s, 1)],
        s,
    );
    assert_ioerr_chain(
        &mut r,
        &[
            Buf::r(h, 16),
            Buf::r(DATA_BASE, u32::MAX - 64),
            Buf::w(s, 1),
        ],
        s,
    );
    // Total chain length over 4 GiB: the chain cannot be walked to its end.
    assert_unanswerable_chain(
        &mut r,
        &[
            Buf::r(h, 16),
            Buf::r(DATA_BASE, u32::MAX - 8),
            Buf::r(DATA_BASE, u32::MAX - 8),
            Buf::w(s, 1),
        ],
    );
}

#[test]
fn header_problems_get_ioerr() {
    let (_d, mut r) = rig(false);
    let h = r.put(&header(VIRTIO_BLK_T_IN, 0));
    let s = r.out_buf(1);
    // Header in a device-writable buffer: must not be read, nor overwritten.
    assert_ioerr_chain(&mut r, &[Buf::w(h, 16), Buf::w(s, 1)], s);
    assert_eq!(r.read(h, 16), header(VIRTIO_BLK_T_IN, 0));
    // Header shorter than 16 bytes, and no header at all.
    assert_ioerr_chain(&mut r, &[Buf::r(h, 8), Buf::w(s, 1)], s);
    assert_ioerr_chain(&mut r, &[Buf::w(s, 1)], s);
    // A header split over two descriptors is fine.
    let d = r.out_buf(512);
    let (used, _) = r.submit(&[
        Buf::r(h, 10),
        Buf::r(h + 10, 6),
        Buf::w(d, 512),
        Buf::w(s, 1),
    ]);
    assert_eq!(used[0].1, 513);
    assert_eq!(r.read(s, 1), vec![OK]);
}

#[test]
fn readable_after_writable_gets_ioerr() {
    let (_d, mut r) = rig(false);
    let h = r.put(&header(VIRTIO_BLK_T_IN, 0));
    let d = r.out_buf(512);
    let x = r.put(&[0; 16]);
    let s = r.out_buf(1);
    assert_ioerr_chain(
        &mut r,
        &[Buf::r(h, 16), Buf::w(d, 512), Buf::r(x, 16), Buf::w(s, 1)],
        s,
    );
    assert_eq!(r.read(d, 512), vec![UNTOUCHED; 512]);
}

/// A write's data is device-readable (virtio 1.2, 5.2.6). Data in a
/// device-writable buffer used to be skipped: the write completed with OK
/// and nothing written.
#[test]
fn write_with_device_writable_data_gets_ioerr() {
    let (_d, mut r) = rig(false);
    let before = r.image();
    let h = r.put(&header(VIRTIO_BLK_T_OUT, 2));
    let d = r.put(&data(1024, 9));
    let s = r.out_buf(1);
    assert_ioerr_chain(&mut r, &[Buf::r(h, 16), Buf::w(d, 512), Buf::w(s, 1)], s);
    // Part of the data readable, part writable: nothing of it is written.
    assert_ioerr_chain(
        &mut r,
        &[
            Buf::r(h, 16),
            Buf::r(d, 512),
            Buf::w(d + 512, 512),
            Buf::w(s, 1),
        ],
        s,
    );
    assert_eq!(r.read(d, 1024), data(1024, 9), "the guest's buffer changed");
    assert_eq!(r.image(), before);
}

/// VIRTIO_F_INDIRECT_DESC is never offered, so a descriptor referring to
/// an indirect table is a driver error (virtio 1.2, 2.7.5.3.1): its chain
/// is returned unanswered and the request does not run, whether the table
/// is the chain's head or follows direct descriptors.
#[test]
fn chains_with_indirect_descriptors_are_refused() {
    let (_d, mut r) = rig(false);
    let before = r.image();
    let h = r.put(&header(VIRTIO_BLK_T_OUT, 1));
    let d = r.put(&data(512, 3));
    let s = r.out_buf(1);
    let (whole, rest) = (r.alloc(48), r.alloc(32));
    let whole_len = write_table(
        r.mem(),
        whole,
        &[
            raw(h, 16, VIRTQ_DESC_F_NEXT, 1),
            raw(d, 512, VIRTQ_DESC_F_NEXT, 2),
            raw(s, 1, VIRTQ_DESC_F_WRITE, 0),
        ],
    );
    let rest_len = write_table(
        r.mem(),
        rest,
        &[
            raw(d, 512, VIRTQ_DESC_F_NEXT, 1),
            raw(s, 1, VIRTQ_DESC_F_WRITE, 0),
        ],
    );
    let chains = [
        vec![(14, raw(whole, whole_len, VIRTQ_DESC_F_INDIRECT, 0))],
        vec![
            (14, raw(h, 16, VIRTQ_DESC_F_NEXT, 15)),
            (15, raw(rest, rest_len, VIRTQ_DESC_F_INDIRECT, 0)),
        ],
    ];
    for table in chains {
        r.dq.add_raw_chain(14, &table);
        assert_eq!(r.notify(), vec![(14, 0)], "{table:?}");
        assert_eq!(r.read(s, 1), vec![UNTOUCHED]);
        assert_eq!(r.image(), before, "the write ran");
        r.assert_healthy();
    }
}

#[test]
fn chains_without_status_are_returned_empty() {
    let (_d, mut r) = rig(false);
    let before = r.image();
    let h = r.put(&header(VIRTIO_BLK_T_OUT, 0));
    let d = r.put(&data(512, 5));
    let s = r.out_buf(1);
    // Last descriptor device-readable.
    assert_unanswerable_chain(&mut r, &[Buf::r(h, 16), Buf::r(d, 512)]);
    // Zero-length status.
    assert_unanswerable_chain(&mut r, &[Buf::r(h, 16), Buf::r(d, 512), Buf::w(s, 0)]);
    // Status outside RAM.
    assert_unanswerable_chain(
        &mut r,
        &[Buf::r(h, 16), Buf::r(d, 512), Buf::w(RAM_SIZE + 1, 1)],
    );
    assert_unanswerable_chain(
        &mut r,
        &[Buf::r(h, 16), Buf::r(d, 512), Buf::w(u64::MAX, 1)],
    );
    // A request without a status is not executed.
    assert_eq!(r.image(), before);
    assert_eq!(r.read(s, 1), vec![UNTOUCHED]);
}

#[test]
fn descriptor_loop_and_bad_next_are_survived() {
    let (_d, mut r) = rig(false);
    let h = r.put(&header(VIRTIO_BLK_T_IN, 0));
    let d = r.out_buf(512);
    let s = r.out_buf(1);
    for bad_next in [None, Some(QSIZE), Some(u16::MAX)] {
        let head =
            r.dq.add_chain(&[Buf::r(h, 16), Buf::w(d, 512), Buf::w(s, 1)]);
        let last = (head + 2) % QSIZE;
        // Point the status descriptor back at the head, or past the table.
        let next = bad_next.unwrap_or(head);
        r.set_desc(last, s, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next);
        let used = r.notify();
        assert_eq!(used, vec![(u32::from(head), 0)]);
        assert_eq!(r.read(s, 1), vec![UNTOUCHED]);
        r.assert_healthy();
    }
}

#[test]
fn head_index_outside_the_table_is_survived() {
    let (_d, mut r) = rig(false);
    r.dq.add_raw_chain(QSIZE + 3, &[]);
    // Not a descriptor, so it cannot be returned; the queue carries on.
    assert!(r.notify().is_empty());
    r.assert_healthy();
    r.assert_healthy();
}

#[test]
fn bad_avail_index_does_not_spin() {
    let (_d, mut r) = rig(false);
    // The driver claims far more chains than the queue holds.
    let idx_addr = r.dq.avail_ring().0 + 2;
    r.mem().write_obj(1000u16, GuestAddress(idx_addr)).unwrap();
    assert!(r.notify().is_empty());
    r.mem().write_obj(0u16, GuestAddress(idx_addr)).unwrap();
    r.assert_healthy();
}

#[test]
fn malformed_and_valid_chains_in_one_batch() {
    let (_d, mut r) = rig(false);
    let img = r.image();
    let h = r.put(&header(VIRTIO_BLK_T_IN, 2));
    let d1 = r.out_buf(512);
    let s1 = r.out_buf(1);
    let s2 = r.out_buf(1);
    let d3 = r.out_buf(512);
    let s3 = r.out_buf(1);
    let a =
        r.dq.add_chain(&[Buf::r(h, 16), Buf::w(d1, 512), Buf::w(s1, 1)]);
    let b =
        r.dq.add_chain(&[Buf::r(h, 16), Buf::w(RAM_SIZE, 512), Buf::w(s2, 1)]);
    let c = r.dq.add_chain(&[Buf::r(h, 16), Buf::w(d3, 512)]);
    let e =
        r.dq.add_chain(&[Buf::r(h, 16), Buf::w(d3, 512), Buf::w(s3, 1)]);
    let used = r.notify();
    assert_eq!(
        used,
        vec![
            (u32::from(a), 513),
            (u32::from(b), 1),
            // The last byte of d3 was taken as status: 511 bytes is not a sector.
            (u32::from(c), 1),
            (u32::from(e), 513)
        ]
    );
    assert_eq!(r.read(s1, 1), vec![OK]);
    assert_eq!(r.read(s2, 1), vec![IOERR]);
    assert_eq!(r.read(s3, 1), vec![OK]);
    assert_eq!(r.read(d1, 512), img[1024..1536]);
    assert_eq!(r.read(d3, 512), img[1024..1536]);
    assert_eq!(r.irq.take(), vec![InterruptKind::Queue(0)]);
}

// ---- persistence ----

fn restore_args(r: &Rig) -> (BlockConfig, Arc<GuestRam>) {
    (r.cfg.clone(), r.ram.clone())
}

#[test]
fn save_restore_continues_the_queue() {
    let (_d, mut r) = rig(false);
    r.request(VIRTIO_BLK_T_OUT, 4, &data(512, 9), 0);
    // A chain the driver made available before the snapshot is processed after it.
    let h = r.put(&header(VIRTIO_BLK_T_IN, 4));
    let d = r.out_buf(512);
    let s = r.out_buf(1);
    let head =
        r.dq.add_chain(&[Buf::r(h, 16), Buf::w(d, 512), Buf::w(s, 1)]);

    let bytes = r.dev.save_bytes();
    let mut dev = Block::restore_bytes(restore_args(&r), &bytes).unwrap();
    assert!(dev.common().interrupt.is_none());
    assert_eq!(dev.save_bytes(), bytes, "restore is lossless");
    let irq = Arc::new(InterruptLog::default());
    dev.common_mut().interrupt = Some(irq.clone());
    r.dev = dev;
    r.irq = irq;

    // Event-idx state carries over: the driver asks for an interrupt on the next buffer.
    assert!(r.dev.common().queues[0].event_idx_enabled());
    r.dq.set_used_event(r.used_seen);
    assert_eq!(r.notify(), vec![(u32::from(head), 513)]);
    assert_eq!(r.read(d, 512), data(512, 9));
    assert_eq!(r.irq.take(), vec![InterruptKind::Queue(0)]);
    r.assert_healthy();
}

#[test]
fn restore_of_unactivated_device() {
    let dir = TempDir::new();
    let path = dir.image("disk.img", &pattern(4));
    let ram = Arc::new(GuestRam::anonymous(RAM_SIZE).unwrap());
    let c = cfg(path, true);
    let dev = Block::new(&c, ram.clone()).unwrap();
    let state = dev.save();
    let back = Block::restore((c, ram), &state).unwrap();
    assert_eq!(back.save(), state);
    assert!(!back.common().activated);
}

#[test]
fn restore_rejects_corrupt_bytes() {
    let (_d, r) = rig(false);
    let good = r.dev.save_bytes();
    let args = || restore_args(&r);

    let mut bad = good.clone();
    bad[0] ^= 0xff;
    assert!(matches!(
        Block::restore_bytes(args(), &bad),
        Err(PersistError::BadMagic)
    ));
    assert!(matches!(
        Block::restore_bytes(args(), &[]),
        Err(PersistError::BadMagic)
    ));

    let state = r.dev.save();
    let other = encode(TYPE_NET, 1, &state);
    assert!(matches!(
        Block::restore_bytes(args(), &other),
        Err(PersistError::WrongDevice {
            expected: TYPE_BLOCK,
            found: TYPE_NET
        })
    ));
    let future = encode(TYPE_BLOCK, 2, &state);
    let err = Block::restore_bytes(args(), &future).err().unwrap();
    assert!(
        matches!(err, PersistError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );

    // Every truncation fails cleanly.
    for len in 0..good.len() {
        assert!(
            Block::restore_bytes(args(), &good[..len]).is_err(),
            "truncated to {len} bytes"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert!(Block::restore_bytes(args(), &long).is_err());
}

#[test]
fn restore_rejects_rings_outside_ram() {
    let (_d, r) = rig(false);
    for (desc, avail, used) in [
        (RAM_SIZE, 0x1000, 0x2000),
        (0, RAM_SIZE - 2, 0x2000),
        (0, 0x1000, u64::MAX - 3),
    ] {
        let mut state = r.dev.save();
        let q = &mut state.virtio.queues[0];
        (q.desc_table, q.avail_ring, q.used_ring) = (desc, avail, used);
        let bytes = encode(TYPE_BLOCK, 1, &state);
        let err = Block::restore_bytes(restore_args(&r), &bytes)
            .err()
            .unwrap();
        assert!(matches!(err, PersistError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("outside guest RAM"), "{err}");
    }
    // A queue size over the maximum is refused too.
    let mut state = r.dev.save();
    state.virtio.queues[0].size = 512;
    let err = Block::restore((r.cfg.clone(), r.ram.clone()), &state)
        .err()
        .unwrap();
    assert!(matches!(err, PersistError::Invalid(_)), "{err}");
}

/// A snapshot cannot bring back rings that activation refuses: a device
/// area over the driver's rings would have the device rewrite the ring it
/// reads, without end.
#[test]
fn restore_rejects_overlapping_rings() {
    let (_d, r) = rig(false);
    let mut state = r.dev.save();
    let q = &mut state.virtio.queues[0];
    (q.desc_table, q.avail_ring, q.used_ring) = (0, 0, 0);
    let bytes = encode(TYPE_BLOCK, 1, &state);
    let err = Block::restore_bytes(restore_args(&r), &bytes)
        .err()
        .unwrap();
    assert!(matches!(err, PersistError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("overlaps"), "{err}");
}

#[test]
fn restore_rejects_changed_image_or_config() {
    let (_d, r) = rig(false);
    let bytes = r.dev.save_bytes();

    // Grown image.
    let mut img = r.image();
    img.extend_from_slice(&[0; 512]);
    fs::write(&r.cfg.path, &img).unwrap();
    let err = Block::restore_bytes(restore_args(&r), &bytes)
        .err()
        .unwrap();
    assert!(matches!(err, PersistError::Mismatch(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("65 sectors") && msg.contains("64"), "{msg}");
    img.truncate(img.len() - 512);
    fs::write(&r.cfg.path, &img).unwrap();
    assert!(Block::restore_bytes(restore_args(&r), &bytes).is_ok());

    // Different access mode, path, id.
    let mut ro = r.cfg.clone();
    ro.readonly = true;
    let err = Block::restore_bytes((ro, r.ram.clone()), &bytes)
        .err()
        .unwrap();
    assert!(
        matches!(&err, PersistError::Mismatch(m) if m.contains("readonly")),
        "{err}"
    );
    // A copy of the image at another path is the same disk (a template
    // clone's own copy): restored, reading the copy.
    let mut moved = r.cfg.clone();
    moved.path.set_extension("copy");
    fs::copy(&r.cfg.path, &moved.path).unwrap();
    let dev = Block::restore_bytes((moved.clone(), r.ram.clone()), &bytes).unwrap();
    assert_eq!(dev.save().config.path, moved.path);
    fs::remove_file(&moved.path).unwrap();
    let mut renamed = r.cfg.clone();
    renamed.id = "disk-1".into();
    assert!(matches!(
        Block::restore_bytes((renamed, r.ram.clone()), &bytes),
        Err(PersistError::Mismatch(_))
    ));

    // The image is gone.
    fs::remove_file(&r.cfg.path).unwrap();
    let err = Block::restore_bytes(restore_args(&r), &bytes)
        .err()
        .unwrap();
    assert!(matches!(err, PersistError::Device(_)), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn restore_rejects_features_never_offered() {
    let (_d, r) = rig(true);
    let mut state = r.dev.save();
    state.virtio.acked_features |= 1 << VIRTIO_BLK_F_DISCARD;
    let err = Block::restore((r.cfg.clone(), r.ram.clone()), &state)
        .err()
        .unwrap();
    assert!(matches!(err, PersistError::Invalid(_)), "{err}");
}

// ---- property: a snapshot at any point changes nothing the guest can see ----

#[derive(Clone, Debug)]
enum Malformed {
    Loop,
    BadNext,
    DataOutsideRam,
    HeaderOutsideRam,
    OverflowingLength,
    NoStatus,
    EmptyStatus,
    StatusOutsideRam,
    HeaderWriteOnly,
    ShortHeader,
    ReadableAfterWritable,
    BadHead,
}

#[derive(Clone, Debug)]
enum Req {
    Read {
        sector: u64,
        len: u32,
        split: bool,
    },
    Write {
        sector: u64,
        len: u32,
        seed: u8,
    },
    Flush,
    GetId,
    Discard {
        sector: u64,
        sectors: u32,
        flags: u32,
        segments: u8,
    },
    WriteZeroes {
        sector: u64,
        sectors: u32,
        flags: u32,
        segments: u8,
    },
    Unsupported(u32),
    Malformed(Malformed),
}

#[derive(Clone, Debug)]
enum Op {
    /// Chains made available together, then one notification; optionally
    /// snapshotted between the two.
    Batch {
        reqs: Vec<Req>,
        snapshot_before_notify: bool,
    },
    Snapshot,
    UsedEvent(u16),
}

fn sector_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0..DISK_SECTORS + 4,
        1 => Just(u64::MAX),
        1 => Just(DISK_SECTORS - 1),
    ]
}

fn len_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => (0..=4u32).prop_map(|s| s * 512),
        1 => 1..2048u32,
    ]
}

fn flags_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(0u32), 2 => Just(1u32), 1 => Just(2u32), 1 => any::<u32>()]
}

fn req_strategy() -> impl Strategy<Value = Req> {
    let malformed = prop_oneof![
        Just(Malformed::Loop),
        Just(Malformed::BadNext),
        Just(Malformed::DataOutsideRam),
        Just(Malformed::HeaderOutsideRam),
        Just(Malformed::OverflowingLength),
        Just(Malformed::NoStatus),
        Just(Malformed::EmptyStatus),
        Just(Malformed::StatusOutsideRam),
        Just(Malformed::HeaderWriteOnly),
        Just(Malformed::ShortHeader),
        Just(Malformed::ReadableAfterWritable),
        Just(Malformed::BadHead),
    ];
    prop_oneof![
        5 => (sector_strategy(), len_strategy(), any::<bool>())
            .prop_map(|(sector, len, split)| Req::Read { sector, len, split }),
        5 => (sector_strategy(), len_strategy(), any::<u8>())
            .prop_map(|(sector, len, seed)| Req::Write { sector, len, seed }),
        1 => Just(Req::Flush),
        1 => Just(Req::GetId),
        2 => (sector_strategy(), 0..10u32, flags_strategy(), prop_oneof![8 => Just(1u8), 1 => Just(0u8), 1 => Just(2u8)])
            .prop_map(|(sector, sectors, flags, segments)| Req::Discard { sector, sectors, flags, segments }),
        2 => (sector_strategy(), 0..10u32, flags_strategy(), prop_oneof![8 => Just(1u8), 1 => Just(0u8), 1 => Just(2u8)])
            .prop_map(|(sector, sectors, flags, segments)| Req::WriteZeroes { sector, sectors, flags, segments }),
        1 => prop_oneof![Just(2u32), Just(14u32), any::<u32>()]
            .prop_filter("known request type", |t| ![0, 1, 4, 8, 11, 13].contains(t))
            .prop_map(Req::Unsupported),
        3 => malformed.prop_map(Req::Malformed),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec(req_strategy(), 1..=3), prop::bool::weighted(0.2))
            .prop_map(|(reqs, snapshot_before_notify)| Op::Batch { reqs, snapshot_before_notify }),
        2 => Just(Op::Snapshot),
        1 => (0..4u16).prop_map(Op::UsedEvent),
    ]
}

/// A request made available but not yet answered.
struct Pending {
    status: Option<u64>,
    data: Option<(u64, u32)>,
}

/// Everything the guest could observe of one batch.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    used: Vec<(u32, u32)>,
    replies: Vec<(Option<u8>, Vec<u8>)>,
    interrupts: Vec<InterruptKind>,
}

impl Rig {
    fn add_req(&mut self, req: &Req) -> Pending {
        let normal = |r: &mut Rig, ty: u32, sector: u64, out: &[u8], in_len: u32, split: bool| {
            let h = r.put(&header(ty, sector));
            let mut bufs = vec![Buf::r(h, 16)];
            if !out.is_empty() {
                let o = r.put(out);
                bufs.push(Buf::r(o, out.len() as u32));
            }
            let i = r.out_buf(in_len);
            if in_len > 0 {
                if split && in_len > 1 {
                    let first = in_len / 3 + 1;
                    bufs.push(Buf::w(i, first));
                    bufs.push(Buf::w(i + u64::from(first), in_len - first));
                } else {
                    bufs.push(Buf::w(i, in_len));
                }
            }
            let s = r.out_buf(1);
            bufs.push(Buf::w(s, 1));
            r.dq.add_chain(&bufs);
            Pending {
                status: Some(s),
                data: Some((i, in_len)),
            }
        };
        let segments = |sector: u64, sectors: u32, flags: u32, n: u8| -> Vec<u8> {
            (0..n)
                .flat_map(|k| segment(sector.wrapping_add(u64::from(k) * 2), sectors, flags))
                .collect()
        };
        match req {
            Req::Read { sector, len, split } => {
                normal(self, VIRTIO_BLK_T_IN, *sector, &[], *len, *split)
            }
            Req::Write { sector, len, seed } => normal(
                self,
                VIRTIO_BLK_T_OUT,
                *sector,
                &data(*len as usize, *seed),
                0,
                false,
            ),
            Req::Flush => normal(self, VIRTIO_BLK_T_FLUSH, 0, &[], 0, false),
            Req::GetId => normal(self, VIRTIO_BLK_T_GET_ID, 0, &[], 20, false),
            Req::Discard {
                sector,
                sectors,
                flags,
                segments: n,
            } => {
                let p = segments(*sector, *sectors, *flags, *n);
                normal(self, VIRTIO_BLK_T_DISCARD, 0, &p, 0, false)
            }
            Req::WriteZeroes {
                sector,
                sectors,
                flags,
                segments: n,
            } => {
                let p = segments(*sector, *sectors, *flags, *n);
                normal(self, VIRTIO_BLK_T_WRITE_ZEROES, 0, &p, 0, false)
            }
            Req::Unsupported(ty) => normal(self, *ty, 0, &data(512, 1), 8, false),
            Req::Malformed(m) => self.add_malformed(m),
        }
    }

    fn add_malformed(&mut self, m: &Malformed) -> Pending {
        let h = self.put(&header(VIRTIO_BLK_T_IN, 1));
        let hw = self.put(&header(VIRTIO_BLK_T_OUT, 1));
        let d = self.out_buf(512);
        let s = self.out_buf(1);
        let status = Some(s);
        let bufs = match m {
            Malformed::Loop | Malformed::BadNext => {
                let head = self
                    .dq
                    .add_chain(&[Buf::r(h, 16), Buf::w(d, 512), Buf::w(s, 1)]);
                let next = if matches!(m, Malformed::Loop) {
                    head
                } else {
                    QSIZE + 1
                };
                self.set_desc(
                    (head + 2) % QSIZE,
                    s,
                    1,
                    VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
                    next,
                );
                return Pending {
                    status,
                    data: Some((d, 512)),
                };
            }
            Malformed::BadHead => {
                self.dq.add_raw_chain(QSIZE + 7, &[]);
                return Pending {
                    status: None,
                    data: None,
                };
            }
            Malformed::DataOutsideRam => vec![Buf::r(hw, 16), Buf::r(RAM_SIZE, 512), Buf::w(s, 1)],
            Malformed::HeaderOutsideRam => vec![Buf::r(RAM_SIZE + 64, 16), Buf::w(s, 1)],
            Malformed::OverflowingLength => {
                vec![Buf::r(hw, 16), Buf::r(u64::MAX - 100, 512), Buf::w(s, 1)]
            }
            Malformed::NoStatus => vec![Buf::r(hw, 16), Buf::r(d, 512)],
            Malformed::EmptyStatus => vec![Buf::r(hw, 16), Buf::r(d, 512), Buf::w(s, 0)],
            Malformed::StatusOutsideRam => {
                vec![Buf::r(h, 16), Buf::w(d, 512), Buf::w(RAM_SIZE + 9, 1)]
            }
            Malformed::HeaderWriteOnly => vec![Buf::w(h, 16), Buf::w(d, 512), Buf::w(s, 1)],
            Malformed::ShortHeader => vec![Buf::r(h, 12), Buf::w(d, 512), Buf::w(s, 1)],
            Malformed::ReadableAfterWritable => {
                vec![Buf::r(h, 16), Buf::w(d, 512), Buf::r(hw, 16), Buf::w(s, 1)]
            }
        };
        self.dq.add_chain(&bufs);
        Pending {
            status,
            data: Some((d, 512)),
        }
    }

    fn observe(&self, p: &Pending) -> (Option<u8>, Vec<u8>) {
        (
            p.status.map(|s| self.read(s, 1)[0]),
            p.data
                .map(|(a, l)| self.read(a, l as usize))
                .unwrap_or_default(),
        )
    }

    fn snapshot(&mut self, interrupts: &mut Vec<InterruptKind>) {
        interrupts.extend(self.irq.take());
        let bytes = self.dev.save_bytes();
        let mut dev = Block::restore_bytes(restore_args(self), &bytes)
            .unwrap_or_else(|e| panic!("restore failed: {e}"));
        assert_eq!(dev.save_bytes(), bytes, "restore is lossless");
        let irq = Arc::new(InterruptLog::default());
        dev.common_mut().interrupt = Some(irq.clone());
        self.dev = dev;
        self.irq = irq;
    }

    /// Runs `ops`, snapshotting and restoring the device where they say so
    /// when `snapshots` is set. Returns what the guest saw, batch by batch.
    fn run(&mut self, ops: &[Op], snapshots: bool, model: &mut [u8]) -> Vec<Observed> {
        let mut seen = Vec::new();
        for op in ops {
            match op {
                Op::Snapshot => {
                    if snapshots {
                        let mut irqs = Vec::new();
                        self.snapshot(&mut irqs);
                        assert!(irqs.is_empty(), "interrupts are taken per batch");
                    }
                }
                Op::UsedEvent(delta) => self.dq.set_used_event(self.used_seen.wrapping_add(*delta)),
                Op::Batch {
                    reqs,
                    snapshot_before_notify,
                } => {
                    let pending: Vec<Pending> = reqs.iter().map(|r| self.add_req(r)).collect();
                    let mut interrupts = Vec::new();
                    if snapshots && *snapshot_before_notify {
                        self.snapshot(&mut interrupts);
                    }
                    let used = self.notify();
                    interrupts.extend(self.irq.take());
                    let replies: Vec<_> = pending.iter().map(|p| self.observe(p)).collect();
                    for (req, (status, bytes)) in reqs.iter().zip(&replies) {
                        check_against_model(req, *status, bytes, model);
                    }
                    seen.push(Observed {
                        used,
                        replies,
                        interrupts,
                    });
                }
            }
        }
        seen
    }
}

/// A plain in-memory disk: successful reads must match it, successful
/// writes update it, so both runs are also checked for being right.
fn check_against_model(req: &Req, status: Option<u8>, bytes: &[u8], model: &mut [u8]) {
    let range = |sector: u64, len: u64| {
        let start = (sector * 512) as usize;
        start..start + len as usize
    };
    match req {
        Req::Read { sector, len, .. } if status == Some(OK) => {
            assert_eq!(bytes, &model[range(*sector, u64::from(*len))]);
        }
        Req::Write { sector, len, seed } if status == Some(OK) => {
            model[range(*sector, u64::from(*len))].copy_from_slice(&data(*len as usize, *seed));
        }
        Req::Discard {
            sector, sectors, ..
        }
        | Req::WriteZeroes {
            sector, sectors, ..
        } if status == Some(OK) => {
            model[range(*sector, u64::from(*sectors) * 512)].fill(0);
        }
        Req::Unsupported(_) => assert_eq!(status, Some(UNSUPP)),
        Req::Flush | Req::GetId => assert_eq!(status, Some(OK)),
        Req::Malformed(
            Malformed::Loop
            | Malformed::BadNext
            | Malformed::NoStatus
            | Malformed::EmptyStatus
            | Malformed::StatusOutsideRam,
        ) => assert_eq!(status, Some(UNTOUCHED)),
        Req::Malformed(Malformed::BadHead) => {}
        Req::Malformed(_) => assert_eq!(status, Some(IOERR)),
        _ => assert!(
            matches!(status, Some(IOERR) | Some(UNSUPP)),
            "{req:?}: {status:?}"
        ),
    }
}

fn ram_bytes(r: &Rig) -> Vec<u8> {
    r.read(0, RAM_SIZE as usize)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn snapshots_are_invisible_to_the_guest(
        ops in prop::collection::vec(op_strategy(), 1..24),
        event_idx in any::<bool>(),
        readonly in prop::bool::weighted(0.2),
    ) {
        let dir = TempDir::new();
        let image = pattern(DISK_SECTORS);
        let features = if event_idx { ALL_FEATURES } else { ALL_FEATURES & !VIRTIO_RING_F_EVENT_IDX };
        let mut a = Rig::new(cfg(dir.image("a.img", &image), readonly), features);
        let mut b = Rig::new(cfg(dir.image("b.img", &image), readonly), features);

        let mut model_a = image.clone();
        let mut model_b = image.clone();
        let seen_a = a.run(&ops, false, &mut model_a);
        let seen_b = b.run(&ops, true, &mut model_b);

        prop_assert_eq!(seen_a.len(), seen_b.len());
        for (i, (x, y)) in seen_a.iter().zip(&seen_b).enumerate() {
            prop_assert_eq!(x, y, "batch {}", i);
        }
        prop_assert_eq!(a.image(), b.image());
        prop_assert_eq!(&a.image(), &model_a);
        prop_assert!(ram_bytes(&a) == ram_bytes(&b), "guest RAM differs");
        let (sa, sb) = (a.dev.save(), b.dev.save());
        prop_assert_eq!(sa.virtio, sb.virtio);
        prop_assert_eq!(sa.capacity_sectors, sb.capacity_sectors);
    }
}
