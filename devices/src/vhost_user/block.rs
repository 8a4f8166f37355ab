//! The vhost-user block device: the in-process virtio-blk request code
//! serving rings that live in a front end's shared guest RAM.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread;

use crate::{guest_warn, host_error};
use log::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::kick_watch::KickWatch;
use super::serve::{ring_servable, worker_exit_event, DaemonDevice};
use crate::virtio::block::{
    config_space, offered_features, serial_id, BlockError, Disk, Request, CONFIG_SPACE_SIZE,
    ID_BYTES,
};
use crate::virtio::chain::{add_used, pop_chain};
use crate::virtio::VIRTIO_F_VERSION_1;

/// What `vhost-user-blk` serves.
#[derive(Clone, Debug)]
pub struct BlockDaemonConfig {
    pub image: PathBuf,
    pub readonly: bool,
    /// O_DIRECT for requests aligned to 4 KiB.
    pub direct: bool,
    pub queues: u16,
    pub queue_size: u16,
    /// Reported to GET_ID (cut to 20 bytes).
    pub serial: String,
    /// Threads that run requests in parallel when a queue has several
    /// waiting (0: each queue's worker runs its requests one by one).
    pub io_threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockDaemonError {
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error("cannot start the I/O threads: {0}; lower --io-threads or raise the process limit")]
    Threads(io::Error),
}

/// Largest queue count: each queue gets a worker thread.
pub const MAX_QUEUES: u16 = 64;

/// A disk image served to vhost-user front ends, one at a time. Clones
/// share the image and its state (the daemon framework wants one per worker).
#[derive(Clone)]
pub struct BlockBackend(Arc<Inner>);

struct Inner {
    name: String,
    disk: Disk,
    serial: [u8; ID_BYTES],
    config_space: [u8; CONFIG_SPACE_SIZE],
    features: u64,
    queues: u16,
    queue_size: u16,
    event_idx: AtomicBool,
    mem: Mutex<GuestMemoryAtomic<GuestMemoryMmap>>,
    watches: Vec<Mutex<KickWatch>>,
    gate: RwLock<()>,
    pool: Option<IoPool>,
    /// Requests handed to the pool and not yet completed, per queue.
    in_flight: Vec<AtomicUsize>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run requests, shared by every queue: with O_DIRECT a
/// request waits for the disk, and one at a time per queue would leave a
/// deep queue as slow as a shallow one.
struct IoPool {
    jobs: mpsc::Sender<Job>,
}

impl IoPool {
    fn new(threads: usize, name: &str) -> io::Result<IoPool> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("{name} io{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(IoPool { jobs })
    }
}

impl BlockBackend {
    /// Opens the image; the configuration is checked by the caller.
    pub fn new(config: &BlockDaemonConfig) -> Result<BlockBackend, BlockDaemonError> {
        let disk = Disk::open_with(&config.image, config.readonly, config.direct)?;
        let name = format!("vhost-user-blk {}", config.image.display());
        Ok(BlockBackend(Arc::new(Inner {
            serial: serial_id(&config.serial),
            config_space: config_space(disk.capacity_sectors(), config.readonly, config.queues),
            features: offered_features(config.readonly, config.queues)
                | VIRTIO_F_VERSION_1
                | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            disk,
            name,
            queues: config.queues,
            queue_size: config.queue_size,
            event_idx: AtomicBool::new(false),
            mem: Mutex::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
            watches: (0..config.queues)
                .map(|_| Mutex::new(KickWatch::default()))
                .collect(),
            gate: RwLock::new(()),
            pool: match config.io_threads {
                0 => None,
                n => Some(IoPool::new(n, "vhost-user-blk").map_err(BlockDaemonError::Threads)?),
            },
            in_flight: (0..config.queues).map(|_| AtomicUsize::new(0)).collect(),
        })))
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.0.disk.capacity_sectors()
    }

    /// Takes every request the driver made available. One request, with
    /// none of this queue's still running, runs here (the lowest latency);
    /// more go to the pool, to run in parallel and complete in any order.
    fn serve_queue(&self, queue_index: usize, vring: &VringRwLock) {
        let inner = &self.0;
        let _gate = inner.gate.read().unwrap_or_else(|e| e.into_inner());
        let mem = inner.mem.lock().unwrap_or_else(|e| e.into_inner()).memory();
        if !ring_servable(&inner.name, queue_index, vring.get_ref().get_queue(), &*mem) {
            return;
        }
        let batch = take_requests(vring.get_mut().get_queue_mut(), &mem, &inner.name);
        inner.watches[queue_index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kicked(batch.len(), &inner.name, queue_index);
        let in_flight = &inner.in_flight[queue_index];
        let pool = match &inner.pool {
            Some(p) if batch.len() > 1 || in_flight.load(Ordering::Acquire) > 0 => p,
            _ => {
                let done: Vec<(u16, u32)> = batch
                    .iter()
                    .map(|r| (r.head(), r.run(&inner.disk, &inner.serial, &*mem)))
                    .collect();
                self.complete(queue_index, vring, &mem, &done);
                return;
            }
        };
        for request in batch {
            in_flight.fetch_add(1, Ordering::AcqRel);
            let me = self.clone();
            let vring = vring.clone();
            let mem = mem.clone();
            let job: Job = Box::new(move || {
                let inner = &me.0;
                let gate = inner.gate.read().unwrap_or_else(|e| e.into_inner());
                let len = request.run(&inner.disk, &inner.serial, &*mem);
                me.complete(queue_index, &vring, &mem, &[(request.head(), len)]);
                drop(gate);
                inner.in_flight[queue_index].fetch_sub(1, Ordering::AcqRel);
            });
            if let Err(mpsc::SendError(job)) = pool.jobs.send(job) {
                // The pool is gone (only at exit): run it here.
                job();
            }
        }
    }

    /// Returns finished requests to the driver and signals it if it asked.
    fn complete(
        &self,
        queue_index: usize,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        done: &[(u16, u32)],
    ) {
        if done.is_empty() {
            return;
        }
        let name = &self.0.name;
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        for &(head, len) in done {
            if let Err(e) = add_used(queue, mem, head, len) {
                guest_warn!("{name}: queue {queue_index}: cannot return descriptor {head}: {e}");
            }
        }
        let notify = queue.needs_notification(mem).unwrap_or_else(|e| {
            // An unreadable used-event field: interrupt rather than stall.
            guest_warn!("{name}: queue {queue_index}: {e}");
            true
        });
        if notify {
            if let Err(e) = state.signal_used_queue() {
                host_error!("{name}: queue {queue_index}: signalling the front end: {e}");
            }
        }
    }
}

/// Every request available on `queue`, until the ring is empty with
/// notifications re-enabled.
fn take_requests(queue: &mut Queue, mem: &GuestMemoryMmap, name: &str) -> Vec<Request> {
    let mut batch = Vec::new();
    let mut empty_rounds = 0;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            guest_warn!("{name}: cannot suppress notifications: {e}");
        }
        let before = batch.len();
        while let Some(chain) = pop_chain(queue, mem, &name) {
            batch.push(Request::from_chain(chain));
        }
        empty_rounds = if batch.len() == before {
            empty_rounds + 1
        } else {
            0
        };
        match queue.enable_notification(mem) {
            // One empty round is the driver publishing between our last
            // look and re-enabling notifications: look again.
            Ok(true) if empty_rounds < 2 => {}
            Ok(true) => {
                // The avail index promises chains pop_chain
                // refuses (it is over a queue ahead); retrying would spin.
                guest_warn!("{name}: the driver's avail index is inconsistent; waiting for the next notification");
                break;
            }
            Ok(false) => break,
            Err(e) => {
                guest_warn!("{name}: cannot re-enable notifications: {e}");
                break;
            }
        }
    }
    batch
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.0.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.0.queue_size)
    }

    fn features(&self) -> u64 {
        self.0.features
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        read_config(&self.0.config_space, offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.0.mem.lock().unwrap_or_else(|e| e.into_inner()) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.0.queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        worker_exit_event(&self.0.name)
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        // One queue per worker: its kick is local event 0 and the thread's
        // index is the queue's.
        match vrings.get(usize::from(device_event)) {
            Some(vring) if thread_id < usize::from(self.0.queues) => {
                self.serve_queue(thread_id, vring)
            }
            _ => warn!(
                "{}: worker {thread_id}: unexpected event {device_event}; ignored",
                self.0.name
            ),
        }
        Ok(())
    }
}

impl DaemonDevice for BlockBackend {
    fn describe(&self) -> String {
        self.0.name.clone()
    }

    fn io_gate(&self) -> &RwLock<()> {
        &self.0.gate
    }

    fn connected(&self, _daemon: &VhostUserDaemon<Self>) -> io::Result<()> {
        Ok(())
    }

    fn disconnected(&self) {
        let inner = &self.0;
        if !inner.disk.readonly() {
            if let Err(e) = inner.disk.sync_all() {
                error!(
                    "{}: making the image durable after the front end left: {e}",
                    inner.name
                );
            }
        }
        *inner.mem.lock().unwrap_or_else(|e| e.into_inner()) =
            GuestMemoryAtomic::new(GuestMemoryMmap::new());
        for w in &inner.watches {
            *w.lock().unwrap_or_else(|e| e.into_inner()) = KickWatch::default();
        }
    }
}

/// `size` bytes of the config space from `offset`; bytes past its end read
/// as zero, as a driver reading a field the device does not have would see.
pub(super) fn read_config(space: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size.min(256) as usize];
    let start = offset as usize;
    if start < space.len() {
        let n = out.len().min(space.len() - start);
        out[..n].copy_from_slice(&space[start..start + n]);
    }
    out
}
