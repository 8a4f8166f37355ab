//! The daemons' outer loop: one front end at a time on a listening socket,
//! the next one served after each disconnect, and a clean stop on SIGTERM or
//! SIGINT.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::thread;

use log::{error, info, warn};
use thiserror::Error;
use vhost::vhost_user::{Error as ProtocolError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use vm_memory::mmap::MmapRegionError;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// What a daemon's device does beyond the vhost-user protocol.
pub trait DaemonDevice:
    VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static
{
    /// Names the device in log lines ("vhost-user-blk disk.img").
    fn describe(&self) -> String;

    /// The gate every request runs under: held shared while a worker serves
    /// a queue, taken exclusively to stop with no request half done.
    fn io_gate(&self) -> &RwLock<()>;

    /// A new front end connected: the workers of its daemon exist now
    /// (a net device registers its TAPs with them here).
    fn connected(&self, daemon: &VhostUserDaemon<Self>) -> io::Result<()>;

    /// The front end went away (or the daemon stops): make durable what it
    /// wrote and forget its rings and memory.
    fn disconnected(&self);
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {path}: {source}; check that its directory exists and that no other daemon serves it")]
    Listen {
        path: String,
        #[source]
        source: ProtocolError,
    },
    #[error("{0}")]
    Daemon(String),
}

/// A worker thread's exit event, as `VhostUserBackend::exit_event` gives it
/// (a fresh pair for each daemon's workers); None, logged, if it cannot be made.
pub fn worker_exit_event(name: &str) -> Option<(EventConsumer, EventNotifier)> {
    new_event_consumer_and_notifier(EventFlag::CLOEXEC)
        .map_err(|e| error!("{name}: creating a worker's exit event: {e}"))
        .ok()
}

/// Serves front ends on `socket` until SIGTERM or SIGINT. The socket file
/// is replaced if it exists and removed at the end.
pub fn serve<D: DaemonDevice>(device: D, socket: &Path) -> Result<(), ServeError> {
    let mut listener = Listener::new(socket, true).map_err(|source| ServeError::Listen {
        path: socket.display().to_string(),
        source,
    })?;
    stop_on_signals(device.clone(), socket.to_path_buf());
    info!(
        "{}: waiting for a front end on {}",
        device.describe(),
        socket.display()
    );
    let mut served = 0u64;
    loop {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(device.describe(), device.clone(), mem)
            .map_err(|e| ServeError::Daemon(format!("{}: {e}", device.describe())))?;
        daemon
            .start(&mut listener)
            .map_err(|e| ServeError::Daemon(format!("{}: accepting: {e}", device.describe())))?;
        served += 1;
        info!("{}: front end {served} connected", device.describe());
        if let Err(e) = device.connected(&daemon) {
            error!("{}: setting up for the front end: {e}", device.describe());
        }
        match daemon.wait() {
            Ok(()) => info!("{}: front end {served} disconnected", device.describe()),
            Err(e) => report_end(&device.describe(), served, &e),
        }
        // Dropping the daemon stops and joins its workers before the device
        // forgets the rings they used.
        drop(daemon);
        device.disconnected();
        // The daemon has no timer of its own: the counts of what this
        // front end's guest made the log leave out are written here.
        crate::log_limit::report_all();
        info!(
            "{}: waiting for the next front end on {}",
            device.describe(),
            socket.display()
        );
    }
}

/// Why a front end's session ended, in terms of what to do about it.
fn report_end(what: &str, n: u64, e: &vhost_user_backend::Error) {
    let vhost_user_backend::Error::HandleRequest(req) = e else {
        error!("{what}: front end {n}: {e}");
        return;
    };
    match req {
        ProtocolError::Disconnected | ProtocolError::PartialMessage => {
            info!("{what}: front end {n} disconnected")
        }
        ProtocolError::ReqHandlerError(io) if is_readonly_mapping(io) => error!(
            "{what}: front end {n} offered guest RAM through a read-only fd, which this process cannot map shared and writable; refused. vhost-user needs share=on RAM (memory-backend-memfd or -file with share=on, not a template clone's private or read-only RAM); use the VMM's in-process device for such a guest"
        ),
        other => warn!("{what}: front end {n} ended with an error: {other}"),
    }
}

/// The mmap of a region's fd failed for lack of write access: the front
/// end gave a read-only fd (vm-memory maps regions shared and writable).
fn is_readonly_mapping(e: &io::Error) -> bool {
    let Some(inner) = e.get_ref() else {
        return false;
    };
    match inner.downcast_ref::<MmapRegionError>() {
        Some(MmapRegionError::Mmap(os)) => {
            matches!(os.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
        }
        _ => false,
    }
}

/// SIGTERM and SIGINT, blocked in the calling thread and so in every
/// thread it starts afterwards. A daemon calls this first thing, before its
/// device starts any thread, so that only [`serve`]'s signal thread ever
/// receives them.
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A thread that waits for SIGTERM or SIGINT, lets requests in flight
/// finish, makes the backend durable, removes the socket and exits 0.
fn stop_on_signals<D: DaemonDevice>(device: D, socket: PathBuf) {
    let set = block_stop_signals();
    thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits on a valid, initialised set.
        while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
        info!(
            "{}: signal {sig} received; finishing requests in flight",
            device.describe()
        );
        let gate = device.io_gate().write();
        device.disconnected();
        let _ = std::fs::remove_file(&socket);
        info!("{}: stopped", device.describe());
        crate::log_limit::report_all();
        drop(gate);
        std::process::exit(0);
    });
}

/// Whether ring `index` (`q`), as the front end placed it in `mem`, may be
/// served; logs why not (rate-limited). A front end other than vmm's may
/// give any addresses, and the daemon has no transport to check them when
/// the driver activates the device.
pub(super) fn ring_servable<M: vm_memory::GuestMemoryBackend>(
    name: &str,
    index: usize,
    q: &virtio_queue::Queue,
    mem: &M,
) -> bool {
    match crate::virtio::ring_placement_fault(q, mem) {
        None => true,
        Some(fault) => {
            crate::guest_warn!(
                "{name}: queue {index}: {fault}; not served until the front end sets the ring up again"
            );
            false
        }
    }
}
