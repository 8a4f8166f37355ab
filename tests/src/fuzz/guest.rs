//! What the device targets share: guest RAM laid out to have region
//! boundaries and a hole, guest memory written from the input, a driver
//! bringing a device up with queue state from the input, a disk image and
//! packet fds.

use std::cell::OnceCell;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::Arc;

use devices::ram::{BackingSpec, GuestMemoryMmap, GuestRam, RegionRole};
use devices::virtio::block::BlockConfig;
use devices::virtio::mem::MemConfig;
use devices::virtio::net::Tap;
use devices::virtio::testing::InterruptLog;
use devices::virtio::{
    Ring, VirtioCommon, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::input::{Builder, Input};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Boot RAM: two adjacent regions (each its own mapping, so a buffer can
/// straddle two host mappings) and a third one past a hole.
pub const RAM_RANGES: [(u64, u64); 3] = [(0, 128 * KIB), (128 * KIB, 128 * KIB), (MIB, 64 * KIB)];
/// Where the virtio-mem target's region starts, and its size and blocks.
pub const MEM_BASE: u64 = 1 << 30;
pub const MEM_BLOCK: u64 = 2 * MIB;
pub const MEM_SIZE: u64 = 4 * MEM_BLOCK;
pub const MEM_ID: &str = "mem0";
/// The block targets' disk: 128 sectors.
pub const DISK_BYTES: u64 = 64 * KIB;
pub const DISK_ID: &str = "disk0";
/// Notifications one input may ask for; each drains its queue.
pub const MAX_NOTIFIES: usize = 16;

fn ram_builder() -> devices::ram::GuestRamBuilder {
    let mut b = GuestRam::builder();
    let ranges: Vec<_> = RAM_RANGES
        .iter()
        .map(|&(base, size)| (GuestAddress(base), size))
        .collect();
    b.add(
        "--memory",
        &BackingSpec::anonymous(),
        RegionRole::Boot,
        &ranges,
    )
    .expect("anonymous boot RAM maps");
    b
}

/// Fresh boot RAM, all zero. Made anew for every input, so that nothing
/// one input did is seen by the next.
pub fn boot_ram() -> Arc<GuestRam> {
    Arc::new(ram_builder().build().expect("boot RAM layout is valid"))
}

/// The virtio-mem target's configuration.
pub fn mem_config(requested: u64) -> MemConfig {
    MemConfig {
        id: MEM_ID.into(),
        size: MEM_SIZE,
        requested,
        block_size: MEM_BLOCK,
        backing: BackingSpec::anonymous(),
    }
}

/// Boot RAM plus the virtio-mem region at [`MEM_BASE`].
pub fn ram_with_mem() -> Arc<GuestRam> {
    let mut b = ram_builder();
    let cfg = mem_config(0);
    b.add(
        &cfg.device_name(),
        &cfg.backing,
        RegionRole::VirtioMem(cfg.id.clone()),
        &[(GuestAddress(MEM_BASE), MEM_SIZE)],
    )
    .expect("the virtio-mem region maps");
    Arc::new(b.build().expect("RAM layout is valid"))
}

/// Writes the input's memory chunks (`u32` address, `u16` length, bytes)
/// into guest memory until the input ends. Chunks outside RAM are dropped,
/// as a driver cannot write there either.
pub fn load_chunks(mem: &GuestMemoryMmap, input: &mut Input) {
    while !input.is_empty() {
        let gpa = input.u32();
        let bytes = input.part().rest();
        let _ = mem.write_slice(bytes, GuestAddress(u64::from(gpa)));
    }
}

/// The chunks that recreate every non-zero byte of `mem` (below 4 GiB),
/// in the layout [`load_chunks`] reads.
pub fn image_chunks(mem: &GuestMemoryMmap) -> Vec<u8> {
    const GRAIN: usize = 16;
    let mut b = Builder::new();
    for region in mem.iter() {
        let base = region.start_addr().0;
        let mut bytes = vec![0u8; region.len() as usize];
        mem.read_slice(&mut bytes, region.start_addr())
            .expect("a region reads whole");
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at..(at + GRAIN).min(bytes.len())]
                .iter()
                .all(|&x| x == 0)
            {
                at += GRAIN;
                continue;
            }
            let start = at;
            while at < bytes.len()
                && at - start < 0xff00
                && bytes[at..(at + GRAIN).min(bytes.len())]
                    .iter()
                    .any(|&x| x != 0)
            {
                at += GRAIN;
            }
            let end = at.min(bytes.len());
            let gpa = u32::try_from(base + start as u64).expect("seed memory lies below 4 GiB");
            b.u32(gpa).part(&bytes[start..end]);
        }
    }
    b.build()
}

/// One queue as the driver sets it up, and the positions a restored
/// device may hold (any value: saved state is not checked for them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSetup {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub ready: bool,
}

impl QueueSetup {
    pub fn read(input: &mut Input) -> Self {
        QueueSetup {
            size: input.u16(),
            desc: input.u64(),
            avail: input.u64(),
            used: input.u64(),
            next_avail: input.u16(),
            next_used: input.u16(),
            ready: input.u8() & 1 != 0,
        }
    }

    pub fn write(&self, b: &mut Builder) {
        b.u16(self.size)
            .u64(self.desc)
            .u64(self.avail)
            .u64(self.used)
            .u16(self.next_avail)
            .u16(self.next_used)
            .u8(u8::from(self.ready));
    }

    /// The queue a driver-side [`DriverQueue`] describes, made ready.
    ///
    /// [`DriverQueue`]: devices::virtio::testing::DriverQueue
    pub fn of(dq: &devices::virtio::testing::DriverQueue) -> Self {
        QueueSetup {
            size: dq.size(),
            desc: dq.desc_table().0,
            avail: dq.avail_ring().0,
            used: dq.used_ring().0,
            next_avail: 0,
            next_used: 0,
            ready: true,
        }
    }
}

/// The driver's part up to DRIVER_OK (virtio 1.2, 3.1.1), through the
/// same `VirtioCommon` calls the virtio-mmio transport makes: status bits,
/// the features it accepts out of those offered, each queue's size, rings
/// and readiness. Returns whether the device is to be activated now.
pub fn negotiate(
    c: &mut VirtioCommon,
    features: u64,
    queues: &[QueueSetup],
    log: Arc<InterruptLog>,
) -> bool {
    c.interrupt = Some(log);
    c.set_status(STATUS_ACKNOWLEDGE);
    c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let accept = features & c.avail_features;
    c.ack_features_page(0, accept as u32);
    c.ack_features_page(1, (accept >> 32) as u32);
    c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    for (i, q) in queues.iter().enumerate().take(c.queues.len()) {
        // The transport ignores a size the queue refuses; so does this.
        let _ = c.queues[i].try_set_size(q.size);
        for (ring, addr) in [
            (Ring::Descriptors, q.desc),
            (Ring::Driver, q.avail),
            (Ring::Device, q.used),
        ] {
            c.write_ring_address(i, ring, Some(addr as u32), Some((addr >> 32) as u32));
        }
        c.queues[i].set_ready(q.ready);
    }
    c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
}

/// Gives each queue the positions of `queues`, as a restored device has them.
pub fn set_positions(c: &mut VirtioCommon, queues: &[QueueSetup]) {
    for (q, s) in c.queues.iter_mut().zip(queues) {
        q.set_next_avail(s.next_avail);
        q.set_next_used(s.next_used);
    }
}

/// Negotiates and activates `dev` as the transport does. Returns the
/// interrupt log, or `None` when the device did not go live (the driver's
/// setup was refused, as it is on a real transport).
pub fn bring_up(
    dev: &mut dyn VirtioDevice,
    features: u64,
    queues: &[QueueSetup],
) -> Option<Arc<InterruptLog>> {
    let log = Arc::new(InterruptLog::default());
    if !negotiate(dev.common_mut(), features, queues, log.clone()) {
        return None;
    }
    // Before activation, which may already process queues (the balloon's).
    set_positions(dev.common_mut(), queues);
    if dev.activate().is_err() {
        dev.common_mut().set_needs_reset();
        return None;
    }
    Some(log)
}

/// How far each queue's used index moved from where `queues` put it,
/// summed: what activation already returned.
pub fn used_since(c: &VirtioCommon, queues: &[QueueSetup]) -> usize {
    moved(c, &queues.iter().map(|s| s.next_used).collect::<Vec<_>>())
}

/// Each queue's used index.
pub fn next_used(c: &VirtioCommon) -> Vec<u16> {
    c.queues.iter().map(|q| q.next_used()).collect()
}

/// How far each queue's used index moved since `before`, summed. A queue
/// whose index went back (a reset) counts nothing.
pub fn moved(c: &VirtioCommon, before: &[u16]) -> usize {
    c.queues
        .iter()
        .zip(before)
        .map(|(q, &b)| q.next_used().wrapping_sub(b))
        .filter(|&n| n < 0x8000)
        .map(usize::from)
        .sum()
}

fn memfd(name: &str) -> File {
    let name = CString::new(name).expect("no NUL in the name");
    // SAFETY: a valid C string; the fd is checked and owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

/// A fresh, zeroed disk image of [`DISK_BYTES`] in memory, and the block
/// configuration naming it. The image lives as long as the returned file
/// (the device opens its own fd on it).
pub fn disk_image(readonly: bool) -> (File, BlockConfig) {
    let f = memfd("fuzz-disk");
    f.set_len(DISK_BYTES).expect("sizing the disk image");
    let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let config = BlockConfig {
        id: DISK_ID.into(),
        path,
        readonly,
    };
    (f, config)
}

/// A connected pair of non-blocking `SOCK_SEQPACKET` sockets: the first
/// is the device's TAP stand-in, the second the host side that sends it
/// packets and reads what it transmits.
pub fn packet_pair(name: &str) -> (Tap, File) {
    let (dev, host) = devices::virtio::testing::netns::seqpacket_pair();
    (Tap::from_file_for_tests(dev, name), host)
}

pub const TAP_NAME: &str = "fuzz0";

thread_local! {
    static REAL_TAP: OnceCell<File> = const { OnceCell::new() };
}

/// A real TAP (so its ioctls work), attached once per thread in a network
/// namespace of that thread's own, which nothing else sees and which goes
/// away with the thread. The TAP is never brought up: nothing reaches it.
/// Needs root, like the other TAP tests.
pub fn real_tap() -> Tap {
    REAL_TAP.with(|cell| {
        let file = cell.get_or_init(|| {
            // SAFETY: unshare only changes this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "unshare(CLONE_NEWNET) failed: {}; the net device targets need root for a TAP in a private network namespace",
                    io::Error::last_os_error()
                );
            }
            let tap = Tap::open(TAP_NAME).unwrap_or_else(|e| panic!("{e}"));
            // SAFETY: dup of a live fd; the File owns the copy.
            let fd = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
            assert!(fd >= 0, "dup: {}", io::Error::last_os_error());
            // SAFETY: a fresh fd nothing else owns.
            unsafe { File::from_raw_fd(fd) }
        });
        Tap::from_file_for_tests(file.try_clone().expect("dup of the TAP fd"), TAP_NAME)
    })
}
