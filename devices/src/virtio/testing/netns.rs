//! Real TAP devices in a private network namespace.
//!
//! A network namespace belongs to a thread: `in_netns` runs the test body on
//! a fresh thread that first moves itself into a new namespace, so TAPs,
//! sockets and `ip` child processes (which inherit the spawning thread's
//! namespace) all live there and vanish with it. Nothing reaches the host's
//! own network.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::Duration;

/// Runs `f` on a thread of its own inside a new, empty network namespace.
/// Fails loudly when the namespace cannot be made: these tests exercise a
/// real TAP and must not pass by skipping.
pub fn in_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            // SAFETY: unshare only changes this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "unshare(CLONE_NEWNET) failed: {}; the virtio-net tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to build a private network namespace with real TAP devices",
                    io::Error::last_os_error()
                );
            }
            // The kernel would otherwise send IPv6 neighbour discovery and
            // MLD through every TAP that comes up, which tests would see as
            // unexpected RX traffic. Absent when IPv6 is not built in.
            for knob in ["default", "all"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1");
            }
            ip(&["link", "set", "lo", "up"]);
            f()
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `ip ARGS` in the calling thread's namespace, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` ({e}); install iproute2 (`apt-get install -y iproute2`)")
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates a persistent TAP with a fixed MAC, optionally an IPv4 address, and brings it up.
pub fn add_tap(name: &str, mac: [u8; 6], cidr: Option<&str>) {
    ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    ip(&["link", "set", "dev", name, "address", &mac_str(&mac)]);
    if let Some(cidr) = cidr {
        ip(&["addr", "add", cidr, "dev", name]);
    }
    ip(&["link", "set", "dev", name, "up"]);
}

/// Waits until the kernel has processed the TAP's carrier coming up (which
/// happens asynchronously once a device attaches). Until then its transmit
/// queue discards everything the host stack sends through it.
pub fn wait_link_up(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if ip(&["-o", "link", "show", "dev", name]).contains(" state UP ") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never came up: {}",
            ip(&["-o", "link", "show", "dev", name])
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Retries `f` while it fails with EBUSY, for up to five seconds.
///
/// Closing a TAP fd detaches the TAP only when the last reference goes, and
/// a child forked by another thread (any test spawning `ip`) holds a copy of
/// every fd, close-on-exec or not, until it execs. Reopening a TAP right
/// after closing it can therefore see EBUSY for a moment.
pub fn retry_busy<T, E: std::fmt::Display>(mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(e)
                if e.to_string().contains("(os error 16)")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            r => return r,
        }
    }
}

pub fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(
        idx != 0,
        "no interface {name}: {}",
        io::Error::last_os_error()
    );
    idx as i32
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// A connected pair of non-blocking `SOCK_SEQPACKET` sockets: one end
/// stands in for a TAP ([`crate::virtio::net::Tap::from_file_for_tests`]),
/// keeping packet boundaries as a TAP does; the other is the host side.
pub fn seqpacket_pair() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: fresh fds nothing else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// An AF_PACKET socket on one interface: sends frames out of it (they come
/// out of the TAP fd) and receives frames coming in (written to the TAP fd).
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn bind(ifname: &str) -> PacketSocket {
        let ifindex = ifindex(ifname);
        // Protocol 0 receives nothing until bind names the interface, so no
        // frame from elsewhere slips in first.
        // SAFETY: plain socket creation.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
        // Straight to the TAP's transmit routine: the frame is queued on the
        // TAP fd before send returns.
        let one: libc::c_int = 1;
        // SAFETY: an int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        PacketSocket { fd, ifindex }
    }

    /// Transmits `frame` out of the interface (towards whoever reads the TAP).
    pub fn send(&self, frame: &[u8]) {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and sll are valid for the sizes given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "AF_PACKET send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame that came in on the interface (outgoing copies of our
    /// own sends are skipped), or None after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !wait_readable(self.fd.as_raw_fd(), left) {
                return None;
            }
            let mut buf = vec![0u8; 70_000];
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and sll are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut sl,
                )
            };
            if n < 0 {
                continue;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n as usize);
            return Some(buf);
        }
    }
}

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GTSO: u32 = 0x1e;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ethtool_get(ifname: &str, cmd: u32) -> bool {
    // SAFETY: plain socket creation.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0);
    // SAFETY: a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut val = EthtoolValue { cmd, data: 0 };
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut val as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL with a get command fills `val` through ifr_data.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    assert_eq!(
        rc,
        0,
        "SIOCETHTOOL {cmd:#x} on {ifname}: {}",
        io::Error::last_os_error()
    );
    val.data != 0
}

/// Whether the interface hands checksum work to its reader (TUN_F_CSUM).
pub fn tx_csum_offload(ifname: &str) -> bool {
    ethtool_get(ifname, ETHTOOL_GTXCSUM)
}

/// Whether the interface passes TCP segmentation to its reader (TUN_F_TSO4).
pub fn tso_offload(ifname: &str) -> bool {
    ethtool_get(ifname, ETHTOOL_GTSO)
}
