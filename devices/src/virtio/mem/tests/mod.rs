//! Tests of the virtio-mem device, driven as a guest driver would through a
//! split virtqueue in real guest memory.

mod chains;
mod config;
mod persist;
mod requests;
mod roundtrip;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::*;
use crate::ram::{BackingSpec, GuestMemoryMmap, GuestRam, RegionRole};
use crate::virtio::testing::{init_device, Buf, DriverQueue, InterruptLog};
use crate::virtio::{VirtioDevice, VIRTIO_RING_F_EVENT_IDX};

pub const MIB: u64 = 1 << 20;
pub const BLOCK: u64 = 2 * MIB;
/// Boot RAM holds the queue and the request and response buffers.
pub const BOOT_SIZE: u64 = 2 * MIB;
pub const BASE: u64 = 1 << 30;
pub const REGION: u64 = 64 * MIB;
pub const QUEUE_BASE: u64 = 0x1000;
pub const REQ_ADDR: u64 = 0x10000;
pub const RESP_ADDR: u64 = 0x20000;
/// What the response buffer holds before the device writes: shows what it wrote.
pub const POISON: u8 = 0xa5;

pub fn mem_config(size: u64, requested: u64, backing: BackingSpec) -> MemConfig {
    MemConfig {
        id: "mem0".into(),
        size,
        requested,
        block_size: BLOCK,
        backing,
    }
}

/// Boot RAM at 0 plus the device's region at `BASE`.
pub fn ram_with(cfg: &MemConfig) -> Arc<GuestRam> {
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &BackingSpec::anonymous(),
        RegionRole::Boot,
        &[(GuestAddress(0), BOOT_SIZE)],
    )
    .unwrap();
    b.add(
        &cfg.device_name(),
        &cfg.backing,
        RegionRole::VirtioMem(cfg.id.clone()),
        &[(GuestAddress(BASE), cfg.size)],
    )
    .unwrap();
    Arc::new(b.build().unwrap())
}

/// A PLUG, UNPLUG or STATE request (any type, in fact) as the driver lays it out.
pub fn req(kind: u16, addr: u64, nb_blocks: u16) -> [u8; REQ_SIZE] {
    let mut r = [0u8; REQ_SIZE];
    r[0..2].copy_from_slice(&kind.to_le_bytes());
    r[8..16].copy_from_slice(&addr.to_le_bytes());
    r[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
    r
}

/// Guest address of block `i` of the region.
pub fn block(i: u64) -> u64 {
    BASE + i * BLOCK
}

/// A driven device: its RAM, the driver's queue and the interrupts it raised.
pub struct Vm {
    pub ram: Arc<GuestRam>,
    pub dev: Mem,
    pub dq: DriverQueue,
    pub log: Arc<InterruptLog>,
}

impl Vm {
    pub fn new(cfg: &MemConfig) -> Vm {
        Self::with_features(cfg, u64::MAX)
    }

    pub fn with_features(cfg: &MemConfig, features: u64) -> Vm {
        let ram = ram_with(cfg);
        let mut dev = Mem::new(cfg, GuestAddress(BASE), ram.clone()).unwrap();
        let dq = DriverQueue::new(ram.memory(), GuestAddress(QUEUE_BASE), QUEUE_SIZE);
        let log = init_device(&mut dev, features, &[&dq]).unwrap();
        Vm { ram, dev, dq, log }
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// Poisons the response buffer, queues `bufs` as one chain and notifies.
    /// Returns the used length, or None when the chain came back unreturned.
    pub fn submit(&mut self, bufs: &[Buf]) -> Option<u32> {
        self.mem()
            .write_slice(&[POISON; 64], GuestAddress(RESP_ADDR))
            .unwrap();
        let head = self.dq.add_chain(bufs);
        self.dev.queue_notify(0);
        let used = self.dq.used();
        assert!(used.len() <= 1, "one chain in, at most one out: {used:?}");
        used.first().map(|e| {
            assert_eq!(e.id(), u32::from(head));
            e.len()
        })
    }

    /// Sends `request` the way Linux does: one readable and one writable buffer.
    /// Returns the used length and the response bytes.
    pub fn send(&mut self, request: &[u8]) -> (u32, [u8; RESP_SIZE]) {
        self.mem()
            .write_slice(request, GuestAddress(REQ_ADDR))
            .unwrap();
        let len = self
            .submit(&[
                Buf::r(REQ_ADDR, request.len() as u32),
                Buf::w(RESP_ADDR, RESP_SIZE as u32),
            ])
            .expect("a well-formed chain is returned");
        (len, self.response())
    }

    pub fn response(&self) -> [u8; RESP_SIZE] {
        let mut r = [0u8; RESP_SIZE];
        self.mem()
            .read_slice(&mut r, GuestAddress(RESP_ADDR))
            .unwrap();
        r
    }

    /// Sends a request and returns the response type (checking the 10-byte answer).
    pub fn call(&mut self, kind: u16, addr: u64, nb_blocks: u16) -> u16 {
        let (len, resp) = self.send(&req(kind, addr, nb_blocks));
        assert_eq!(len, RESP_SIZE as u32);
        assert_eq!(&resp[2..8], &[0; 6], "padding is zero");
        if kind != VIRTIO_MEM_REQ_STATE {
            assert_eq!(&resp[8..10], &[0; 2]);
        }
        u16::from_le_bytes([resp[0], resp[1]])
    }

    pub fn plug(&mut self, first: u64, n: u16) -> u16 {
        self.call(VIRTIO_MEM_REQ_PLUG, block(first), n)
    }

    pub fn unplug(&mut self, first: u64, n: u16) -> u16 {
        self.call(VIRTIO_MEM_REQ_UNPLUG, block(first), n)
    }

    pub fn unplug_all(&mut self) -> u16 {
        self.call(VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0)
    }

    /// (response type, state) of a STATE request.
    pub fn state(&mut self, first: u64, n: u16) -> (u16, u16) {
        let (len, resp) = self.send(&req(VIRTIO_MEM_REQ_STATE, block(first), n));
        assert_eq!(len, RESP_SIZE as u32);
        (
            u16::from_le_bytes([resp[0], resp[1]]),
            u16::from_le_bytes([resp[8], resp[9]]),
        )
    }

    pub fn fill(&self, addr: u64, len: u64, byte: u8) {
        fill(&self.ram, addr, len, byte);
    }

    pub fn is_filled(&self, addr: u64, len: u64, byte: u8) -> bool {
        is_filled(&self.ram, addr, len, byte)
    }

    pub fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        crate::virtio::VirtioDevice::read_config(&self.dev, 0, &mut c);
        c
    }
}

/// Host address of guest memory `[addr, addr + len)`, which must lie in one region.
pub fn host_ptr(ram: &GuestRam, addr: u64, len: u64) -> *mut u8 {
    assert!(ram.region_of(GuestAddress(addr), len).is_some());
    ram.memory().get_host_address(GuestAddress(addr)).unwrap()
}

pub fn fill(ram: &GuestRam, addr: u64, len: u64, byte: u8) {
    let host = host_ptr(ram, addr, len);
    // SAFETY: the range lies inside one mapping that `ram` keeps alive, and
    // nothing else accesses it during the call (tests are single-threaded).
    unsafe { std::ptr::write_bytes(host, byte, len as usize) };
}

/// Whether every byte of the range equals `byte` (compared a block at a time).
pub fn is_filled(ram: &GuestRam, addr: u64, len: u64, byte: u8) -> bool {
    let want = vec![byte; len.min(BLOCK) as usize];
    // SAFETY: as in `fill`; the slice is only read while `ram` is borrowed.
    let have = unsafe { std::slice::from_raw_parts(host_ptr(ram, addr, len), len as usize) };
    have.chunks(want.len()).all(|c| c == &want[..c.len()])
}

/// A copy of guest memory `[addr, addr + len)`.
pub fn snapshot_bytes(ram: &GuestRam, addr: u64, len: u64) -> Vec<u8> {
    // SAFETY: as in `is_filled`.
    unsafe { std::slice::from_raw_parts(host_ptr(ram, addr, len), len as usize) }.to_vec()
}

/// Host pages of the range that are resident (mincore): discarded memory is not.
pub fn resident_pages(ram: &GuestRam, addr: u64, len: u64) -> usize {
    let host = host_ptr(ram, addr, len);
    let mut vec = vec![0u8; (len / 4096) as usize];
    // SAFETY: `host` is page aligned (regions are) and the range is mapped;
    // `vec` has one byte per page.
    let rc = unsafe { libc::mincore(host.cast(), len as usize, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|b| **b & 1 != 0).count()
}

/// A file in the temp directory, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, content: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("virtio-mem-test-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// All features but event-idx: every used buffer interrupts.
pub const NO_EVENT_IDX: u64 = !VIRTIO_RING_F_EVENT_IDX;
