//! Tests of the balloon against real guest memory: every discard is a real
//! madvise or hole punch (or a refusal) on a real mapping.

mod device;
mod malformed;
mod persist;
mod roundtrip;

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{Balloon, BalloonConfig, BalloonQueue};
use crate::ram::{BackingSpec, GuestRam, RegionRole, PAGE_SIZE};
use crate::virtio::testing::{init_device, Buf, DriverQueue, InterruptLog};
use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

pub const RAM_SIZE: u64 = 4 << 20;
pub const RAM_PAGES: u32 = (RAM_SIZE / PAGE_SIZE) as u32;
pub const QSIZE: u16 = 64;
/// Rings of queue i live at i * RING_STRIDE.
const RING_STRIDE: u64 = 0x4000;
/// Buffers the test driver hands the device (PFN arrays, stats).
const SCRATCH_BASE: u64 = 0x10000;
const SCRATCH_END: u64 = 0x80000;
/// First page the tests inflate, report and check; nothing else lives above.
pub const DATA_PFN: u32 = 256;

/// Every feature the device may offer.
pub const ALL_FEATURES: u64 = u64::MAX;

pub fn full_config() -> BalloonConfig {
    BalloonConfig {
        free_page_reporting: true,
        deflate_on_oom: true,
        stats: true,
        target: None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    Anonymous,
    MemfdShared,
    MemfdPrivate,
    /// A file mapped share=off, readonly=off.
    PrivateFile,
    /// share=off, readonly=on, rom=off: how a clone maps its template.
    TemplateClone,
}

impl Backing {
    pub fn discards(self) -> bool {
        !matches!(self, Backing::PrivateFile | Backing::TemplateClone)
    }

    /// Whether mincore shows a discarded page as gone. For a private
    /// memfd it reports the memfd's page cache, which the copy-on-write
    /// fault populated and MADV_DONTNEED leaves in place.
    pub fn mincore_shows_discard(self) -> bool {
        matches!(self, Backing::Anonymous | Backing::MemfdShared)
    }
}

/// A file removed when dropped.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn with_content(content: &[u8]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "balloon-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, content).expect("write temp file");
        TempFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        h.write(&std::fs::read(&self.path).expect("read temp file"));
        h.finish()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The byte the template file holds at `offset`: never zero, different per page.
pub fn file_byte(offset: u64) -> u8 {
    ((offset / PAGE_SIZE) % 251) as u8 + 1
}

pub fn make_ram(backing: Backing) -> (Arc<GuestRam>, Option<TempFile>) {
    let (spec, file) = match backing {
        Backing::Anonymous => (BackingSpec::anonymous(), None),
        Backing::MemfdShared => (BackingSpec::memfd(true), None),
        Backing::MemfdPrivate => (BackingSpec::memfd(false), None),
        Backing::PrivateFile | Backing::TemplateClone => {
            let content: Vec<u8> = (0..RAM_SIZE).map(file_byte).collect();
            let f = TempFile::with_content(&content);
            let spec = if backing == Backing::PrivateFile {
                BackingSpec::file(f.path(), false)
            } else {
                BackingSpec::template_clone(f.path())
            };
            (spec, Some(f))
        }
    };
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &spec,
        RegionRole::Boot,
        &[(GuestAddress(0), RAM_SIZE)],
    )
    .expect("map test RAM");
    (Arc::new(b.build().expect("build test RAM")), file)
}

/// Whether the host page behind guest page `addr` is resident (mincore):
/// false right after a real discard.
pub fn resident(ram: &GuestRam, addr: u64) -> bool {
    let host = ram
        .memory()
        .get_host_address(GuestAddress(addr))
        .expect("address in RAM");
    let mut vec = 0u8;
    // SAFETY: `host` is the page-aligned start of a page of a live mapping,
    // and `vec` has room for the one page asked about.
    let rc = unsafe { libc::mincore(host.cast(), PAGE_SIZE as usize, &mut vec) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec & 1 == 1
}

pub fn page_addr(pfn: u32) -> u64 {
    u64::from(pfn) * PAGE_SIZE
}

pub fn stats_bytes(entries: &[(u16, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(t, v)| {
            let mut e = t.to_le_bytes().to_vec();
            e.extend_from_slice(&v.to_le_bytes());
            e
        })
        .collect()
}

/// A balloon, its guest RAM and a test driver on the other side.
pub struct Rig {
    pub ram: Arc<GuestRam>,
    pub file: Option<TempFile>,
    pub dev: Balloon,
    pub irq: Arc<InterruptLog>,
    /// One per transport queue, in index order.
    pub queues: Vec<DriverQueue>,
    scratch: u64,
}

impl Rig {
    pub fn new(config: &BalloonConfig, backing: Backing) -> Self {
        Self::with_features(config, backing, ALL_FEATURES)
    }

    pub fn with_features(config: &BalloonConfig, backing: Backing, features: u64) -> Self {
        let (ram, file) = make_ram(backing);
        Self::on_ram(config, ram, file, features)
    }

    pub fn on_ram(
        config: &BalloonConfig,
        ram: Arc<GuestRam>,
        file: Option<TempFile>,
        features: u64,
    ) -> Self {
        let mut dev = Balloon::new(config, ram.clone()).expect("balloon");
        let queues: Vec<DriverQueue> = (0..dev.common().queues.len() as u64)
            .map(|i| {
                let dq = DriverQueue::new(ram.memory(), GuestAddress(i * RING_STRIDE), QSIZE);
                assert!(dq.end().0 <= (i + 1) * RING_STRIDE);
                dq
            })
            .collect();
        let refs: Vec<&DriverQueue> = queues.iter().collect();
        let irq = init_device(&mut dev, features | VIRTIO_F_VERSION_1, &refs).expect("activate");
        Rig {
            ram,
            file,
            dev,
            irq,
            queues,
            scratch: SCRATCH_BASE,
        }
    }

    pub fn event_idx(&self) -> bool {
        self.dev.common().has_feature(VIRTIO_RING_F_EVENT_IDX)
    }

    pub fn q(&self, queue: BalloonQueue) -> u16 {
        self.dev
            .queue_index(queue)
            .unwrap_or_else(|| panic!("{queue} not negotiated"))
    }

    /// Room for a driver buffer; the area is reused round-robin.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.div_ceil(16) * 16;
        assert!(len <= SCRATCH_END - SCRATCH_BASE);
        if self.scratch + len > SCRATCH_END {
            self.scratch = SCRATCH_BASE;
        }
        let at = self.scratch;
        self.scratch += len;
        at
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.ram
            .memory()
            .write_slice(bytes, GuestAddress(addr))
            .expect("write guest memory");
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.ram
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read guest memory");
        v
    }

    pub fn fill_page(&self, pfn: u32, byte: u8) {
        self.write(page_addr(pfn), &[byte; PAGE_SIZE as usize]);
    }

    pub fn page(&self, pfn: u32) -> Vec<u8> {
        self.read(page_addr(pfn), PAGE_SIZE as usize)
    }

    pub fn page_is(&self, pfn: u32, byte: u8) -> bool {
        self.page(pfn).iter().all(|&b| b == byte)
    }

    /// Puts `bytes` in a scratch buffer and returns it as one readable buffer.
    pub fn buffer(&mut self, bytes: &[u8]) -> Buf {
        let at = self.alloc(bytes.len() as u64);
        self.write(at, bytes);
        Buf::r(at, bytes.len() as u32)
    }

    /// Adds a chain to `queue`, notifies, and returns what the device used.
    pub fn send(&mut self, queue: BalloonQueue, bufs: &[Buf]) -> Vec<(u32, u32)> {
        let i = self.q(queue);
        self.queues[usize::from(i)].add_chain(bufs);
        self.dev.queue_notify(i);
        self.used_at(i)
    }

    pub fn send_pfns(&mut self, queue: BalloonQueue, pfns: &[u32]) -> Vec<(u32, u32)> {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let buf = self.buffer(&bytes);
        self.send(queue, &[buf])
    }

    pub fn inflate(&mut self, pfns: &[u32]) -> Vec<(u32, u32)> {
        self.send_pfns(BalloonQueue::Inflate, pfns)
    }

    pub fn deflate(&mut self, pfns: &[u32]) -> Vec<(u32, u32)> {
        self.send_pfns(BalloonQueue::Deflate, pfns)
    }

    /// Reports free ranges as Linux does: device-writable buffers.
    pub fn report(&mut self, ranges: &[(u64, u32)]) -> Vec<(u32, u32)> {
        let bufs: Vec<Buf> = ranges.iter().map(|&(a, l)| Buf::w(a, l)).collect();
        self.send(BalloonQueue::Reporting, &bufs)
    }

    pub fn post_stats(&mut self, entries: &[(u16, u64)]) -> Vec<(u32, u32)> {
        let buf = self.buffer(&stats_bytes(entries));
        self.send(BalloonQueue::Stats, &[buf])
    }

    /// Used elements returned on `queue` since last looked at.
    pub fn used(&mut self, queue: BalloonQueue) -> Vec<(u32, u32)> {
        self.used_at(self.q(queue))
    }

    /// Used elements (id, len) returned on transport queue `i`.
    pub fn used_at(&mut self, i: u16) -> Vec<(u32, u32)> {
        self.queues[usize::from(i)]
            .used()
            .iter()
            .map(|e| (e.id(), e.len()))
            .collect()
    }

    pub fn config_space(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.dev.read_config(0, &mut b);
        b
    }
}
