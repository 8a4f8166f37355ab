//! A TAP interface opened through `/dev/net/tun`, carrying virtio-net
//! headers so checksum and segmentation offloads pass between guest and host.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use libc::{c_int, c_short, c_uint};
use thiserror::Error;

use super::device::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
};

const TUN_PATH: &str = "/dev/net/tun";

/// Size of `virtio_net_hdr_v1` (it includes `num_buffers`), the header every
/// virtio 1.x packet starts with, and the one the TAP is told to use so
/// packets pass between guest and TAP unchanged.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("TAP name {name:?} is not usable: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("cannot open {TUN_PATH} for TAP {tap:?}: {source}; {hint}")]
    OpenTun {
        tap: String,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot attach to TAP {tap:?} (TUNSETIFF): {source}; {hint}")]
    Attach {
        tap: String,
        source: io::Error,
        hint: &'static str,
    },
    #[error("TAP {tap:?}: {op} failed: {source}")]
    Ioctl {
        tap: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("TAP {tap:?}: cannot create the timer that retries failed reads: {source}")]
    RetryTimer { tap: String, source: io::Error },
}

/// An attached TAP queue, non-blocking, with 12-byte virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the TAP `name`, creating a transient one if none exists
    /// (which needs CAP_NET_ADMIN; a TAP created beforehand with
    /// `ip tuntap add ... user U` can be opened by U without privileges).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Tap::open_queue(name, false)
    }

    /// Opens `count` queues of the TAP `name`, one fd each. Several queues
    /// need a TAP created with `multi_queue` (or none of that name, so that
    /// a transient multi-queue one is made).
    pub fn open_queues(name: &str, count: usize) -> Result<Vec<Tap>, TapError> {
        (0..count)
            .map(|_| Tap::open_queue(name, count > 1))
            .collect()
    }

    fn open_queue(name: &str, multi_queue: bool) -> Result<Tap, TapError> {
        let ifr_name = ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                tap: name.to_string(),
                hint: open_hint(&source),
                source,
            })?;

        let mut req = new_ifreq(ifr_name);
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags as c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let source = io::Error::last_os_error();
            return Err(TapError::Attach {
                tap: name.to_string(),
                hint: attach_hint(&source),
                source,
            });
        }

        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let hdr_len = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        let rc = unsafe { libc::ioctl(tap.fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        tap.check(rc, "TUNSETVNETHDRSZ")?;
        // A persistent TAP keeps the offloads its previous user set; start
        // from none so the kernel never hands us packets the guest cannot take.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// A `Tap` over an fd that is not a TUN device, for tests and fuzzing
    /// that must hand the RX path packets of their own choosing (a TAP only
    /// yields what the host kernel sends, header included). One end of a
    /// `SOCK_SEQPACKET` socket pair suits: it keeps packet boundaries as a
    /// TAP does. Set `O_NONBLOCK` on it, as [`Tap::open`] does on a TAP,
    /// or an empty read blocks. The TUN ioctls ([`Tap::set_offload`],
    /// [`Tap::driver_features`]) fail on such an fd.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn from_file_for_tests(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn check(&self, rc: c_int, op: &'static str) -> Result<(), TapError> {
        if rc < 0 {
            return Err(TapError::Ioctl {
                tap: self.name.clone(),
                op,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the kernel which offloaded packets (`TUN_F_*`) it may hand to
    /// this reader: partial checksums and unsegmented TSO/UFO packets.
    pub fn set_offload(&self, flags: c_uint) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes the flags by value, not through a pointer.
        // SAFETY: the ioctl reads no memory.
        let rc = unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
        self.check(rc, "TUNSETOFFLOAD")
    }

    /// The `IFF_*` flags the tun driver supports (TUNGETFEATURES).
    pub fn driver_features(&self) -> Result<c_uint, TapError> {
        let mut features: c_uint = 0;
        // SAFETY: TUNGETFEATURES writes one unsigned int through the pointer.
        let rc = unsafe { libc::ioctl(self.fd(), libc::TUNGETFEATURES, &mut features) };
        self.check(rc, "TUNGETFEATURES")?;
        Ok(features)
    }

    /// Reads one packet (virtio-net header first). `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.readv(&mut [IoSliceMut::new(buf)])
    }

    /// Reads one packet scattered over `bufs`.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let cnt = c_int::try_from(bufs.len()).map_err(|_| einval())?;
        // SAFETY: IoSliceMut is ABI-compatible with iovec and each one
        // describes a live, writable buffer.
        let n = unsafe { libc::readv(self.fd(), bufs.as_ptr().cast(), cnt) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet (virtio-net header first) gathered from `bufs`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec and each one describes a live buffer.
        unsafe { self.writev_raw(std::slice::from_raw_parts(bufs.as_ptr().cast(), bufs.len())) }
    }

    /// Writes one packet gathered from raw iovecs, so guest memory can be
    /// handed to the kernel without copying it first.
    ///
    /// # Safety
    ///
    /// Every iovec must describe memory that stays mapped and readable for
    /// the duration of the call.
    pub unsafe fn writev_raw(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let cnt = c_int::try_from(iov.len()).map_err(|_| einval())?;
        // SAFETY: the caller guarantees the iovecs are readable.
        let n = unsafe { libc::writev(self.fd(), iov.as_ptr(), cnt) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

/// The `TUN_F_*` offloads matching the guest's accepted receive offloads.
///
/// The kernel refuses TSO/UFO/ECN without checksum offload and ECN without
/// TSO (the virtio spec has the same dependencies), so bits a driver accepted
/// without their prerequisite are left out rather than failing activation.
pub fn offload_flags(acked_features: u64) -> c_uint {
    let has = |f: u64| acked_features & f != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn ifname(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], TapError> {
    let invalid = |why| TapError::InvalidName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid("interface names are at most 15 bytes"));
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(invalid(
            "interface names cannot contain '/', whitespace or NUL",
        ));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

fn new_ifreq(name: [libc::c_char; libc::IFNAMSIZ]) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = name;
    req
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            "the tun driver is missing: load it with `modprobe tun` (in a container, pass the host's /dev/net/tun through)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "run the VMM as a user allowed to open /dev/net/tun (usually mode 0666, or root)"
        }
        _ => "check that /dev/net/tun is the tun character device (10:200)",
    }
}

fn attach_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "create the TAP beforehand for this user (`ip tuntap add dev NAME mode tap user $USER`) or give the VMM CAP_NET_ADMIN"
        }
        Some(libc::EBUSY) => {
            "another process has the TAP open, or it was created with multi_queue; close the other user or create a fresh TAP with `ip tuntap add dev NAME mode tap`"
        }
        Some(libc::EINVAL) => {
            "an interface of that name exists but is not a TAP with that many queues (a TUN, another device type, or a TAP whose multi_queue setting differs: `ip tuntap add dev NAME mode tap multi_queue` for several queues); pick another name or recreate it"
        }
        _ => "check the TAP exists in this network namespace (`ip link show NAME`)",
    }
}
