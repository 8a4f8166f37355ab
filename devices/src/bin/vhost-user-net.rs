//! vhost-user-net: serves a TAP to one vhost-user front end at a time
//! (QEMU's `-netdev vhost-user`, vmm's --vhost-user-net), with the same RX
//! and TX code as vmm's in-process virtio-net.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use devices::vhost_user::net::MAX_QUEUE_PAIRS;
use devices::vhost_user::{serve, NetBackend, NetDaemonConfig};

/// Serve a TAP interface over vhost-user.
///
/// Guest RAM must be shared with this process (memfd or file, share=on): a
/// front end whose RAM is private or read-only is refused or reported in the
/// log. The daemon serves one front end at a time and, when it goes away,
/// waits for the next on the same socket with the TAP still open. Packets
/// keep their virtio-net header, so the host kernel does the checksum and
/// segmentation offloads the guest accepts (those the TAP refuses are not
/// offered). SIGTERM or SIGINT removes the socket and exits 0. Log verbosity
/// follows RUST_LOG (default info).
#[derive(Parser, Debug)]
#[command(name = "vhost-user-net", version)]
struct Args {
    /// Path of the listening unix socket (replaced if it exists).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// TAP interface to attach to (created if missing, which needs
    /// CAP_NET_ADMIN). Several queue pairs need a TAP made with multi_queue.
    #[arg(long, value_name = "NAME")]
    tap: String,
    /// Queue pairs, each served by its own thread and TAP queue (1 to 32).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUE_PAIRS as i64))]
    queues: u16,
    /// MAC address in the device's config space (front ends such as QEMU
    /// use their own); a unicast address.
    #[arg(long, value_name = "MAC", default_value = "52:54:00:12:34:56", value_parser = mac)]
    mac: [u8; 6],
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("{s:?} is not a MAC address; write six hex octets like 52:54:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s} is a multicast address; give a unicast MAC (even first octet), e.g. 52:54:00:12:34:56"
        ));
    }
    Ok(mac)
}

fn main() -> ExitCode {
    devices::vhost_user::cli::init();
    let args = Args::parse();
    let config = NetDaemonConfig {
        tap: args.tap,
        queue_pairs: args.queues,
        mac: args.mac,
    };
    let backend = match NetBackend::new(&config) {
        Ok(b) => b,
        Err(e) => return devices::vhost_user::cli::fail("vhost-user-net", &e),
    };
    log::info!(
        "vhost-user-net: TAP {}, {} queue pair(s)",
        config.tap,
        config.queue_pairs
    );
    match serve(backend, &args.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => devices::vhost_user::cli::fail("vhost-user-net", &e),
    }
}
