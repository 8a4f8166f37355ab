//! vhost-user-blk: serves a raw disk image to one vhost-user front end at a
//! time (QEMU's vhost-user-blk, vmm's --vhost-user-blk), with the same
//! request code as vmm's in-process virtio-blk.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use devices::vhost_user::block::MAX_QUEUES;
use devices::vhost_user::{serve, BlockBackend, BlockDaemonConfig};

/// Serve a raw disk image over vhost-user.
///
/// Guest RAM must be shared with this process (memfd or file, share=on):
/// a front end whose RAM is private or read-only is refused or reported in
/// the log. The daemon serves one front end at a time and, when it goes away
/// (quit, crash, restart), waits for the next on the same socket with the
/// image still open. Every write is made durable (fsync) on FLUSH and when a
/// front end disconnects. SIGTERM or SIGINT lets requests in flight finish,
/// syncs the image, removes the socket and exits 0. Log verbosity follows
/// RUST_LOG (default info).
#[derive(Parser, Debug)]
#[command(name = "vhost-user-blk", version)]
struct Args {
    /// Path of the listening unix socket (replaced if it exists).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Raw image file (its size must be a multiple of 512 bytes).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// Open the image read-only and offer VIRTIO_BLK_F_RO; writes fail.
    #[arg(long)]
    readonly: bool,
    /// Bypass the host page cache (O_DIRECT) for reads and writes aligned to
    /// 4 KiB; smaller or unaligned ones still go through it. FLUSH still
    /// fsyncs, for the file's metadata and the cached ones.
    #[arg(long)]
    direct: bool,
    /// Request queues, each served by its own thread (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUES as i64))]
    queues: u16,
    /// Largest ring size a front end may choose (a power of two, 1 to 32768;
    /// QEMU asks for 1024 by default).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = queue_size)]
    queue_size: u16,
    /// Threads that run requests in parallel when several wait (0: each
    /// queue's worker runs them one by one). A lone request always runs on
    /// its queue's worker, for the lowest latency.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    io_threads: u16,
    /// Serial number the guest reads with GET_ID (up to 20 bytes).
    #[arg(long, value_name = "TEXT", default_value = "vhost-user-blk")]
    serial: String,
}

fn queue_size(s: &str) -> Result<u16, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number; give a power of two from 1 to 32768"))?;
    if n == 0 || n > 32768 || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two from 1 to 32768 (virtio 1.x split rings)"
        ));
    }
    Ok(n as u16)
}

fn main() -> ExitCode {
    devices::vhost_user::cli::init();
    let args = Args::parse();
    let config = BlockDaemonConfig {
        image: args.image,
        readonly: args.readonly,
        direct: args.direct,
        queues: args.queues,
        queue_size: args.queue_size,
        serial: args.serial,
        io_threads: usize::from(args.io_threads),
    };
    let backend = match BlockBackend::new(&config) {
        Ok(b) => b,
        Err(e) => return devices::vhost_user::cli::fail("vhost-user-blk", &e),
    };
    log::info!(
        "vhost-user-blk: {} ({} sectors{}{}), {} queue(s) of up to {}",
        config.image.display(),
        backend.capacity_sectors(),
        if config.readonly { ", read-only" } else { "" },
        if config.direct { ", O_DIRECT" } else { "" },
        config.queues,
        config.queue_size
    );
    match serve(backend, &args.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => devices::vhost_user::cli::fail("vhost-user-blk", &e),
    }
}
