//! The vhost-user net device: the in-process virtio-net RX and TX code
//! serving queue pairs whose rings live in a front end's shared guest RAM,
//! one TAP queue (fd) per pair.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::{guest_warn, host_error};
use log::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_net;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::block::read_config;
use super::kick_watch::KickWatch;
use super::serve::{ring_servable, worker_exit_event, DaemonDevice};
use crate::virtio::net::tap::offload_flags;
use crate::virtio::net::{
    process_tx, NetCounters, QueueRun, RxQueue, RxRetry, Tap, TapError, AVAIL_FEATURES,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};
use crate::virtio::VIRTIO_F_VERSION_1;

const VIRTIO_NET_F_MQ: u64 = 1 << virtio_net::VIRTIO_NET_F_MQ;

/// Largest ring a front end may choose: QEMU asks for 1024 by default.
const MAX_QUEUE_SIZE: usize = 1024;

/// Largest number of queue pairs: each pair gets a worker thread and a TAP queue.
pub const MAX_QUEUE_PAIRS: u16 = 32;

/// What `vhost-user-net` serves.
#[derive(Clone, Debug)]
pub struct NetDaemonConfig {
    pub tap: String,
    pub queue_pairs: u16,
    pub mac: [u8; 6],
}

/// A TAP served to vhost-user front ends, one at a time.
#[derive(Clone)]
pub struct NetBackend(Arc<Inner>);

struct Inner {
    name: String,
    mac: [u8; 6],
    features: u64,
    acked: AtomicU64,
    pairs: Vec<Pair>,
    mem: Mutex<GuestMemoryAtomic<GuestMemoryMmap>>,
    gate: RwLock<()>,
}

/// One queue pair (RX 2p, TX 2p+1) and the TAP queue behind it.
struct Pair {
    tap: Tap,
    state: Mutex<PairState>,
}

struct PairState {
    rx: RxQueue,
    /// Reads the TAP again after a read error (see [`RxRetry`]).
    rx_retry: RxRetry,
    counters: NetCounters,
    rx_watch: KickWatch,
    tx_watch: KickWatch,
    /// The RX ring's avail index at the last kick: RX buffers stay
    /// available until packets come, so new ones show only in the index.
    rx_avail_seen: Option<u16>,
}

/// Local event numbers of a pair's worker: its two kicks, then the TAP.
const RX_EVENT: u16 = 0;
const TX_EVENT: u16 = 1;

impl NetBackend {
    pub fn new(config: &NetDaemonConfig) -> Result<NetBackend, TapError> {
        let taps = Tap::open_queues(&config.tap, usize::from(config.queue_pairs))?;
        let name = format!("vhost-user-net {}", config.tap);
        let mut features =
            AVAIL_FEATURES | VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if config.queue_pairs > 1 {
            features |= VIRTIO_NET_F_MQ;
        }
        features &= !unsupported_offloads(&taps[0], features, &name);
        Ok(NetBackend(Arc::new(Inner {
            name,
            mac: config.mac,
            features,
            acked: AtomicU64::new(0),
            pairs: taps
                .into_iter()
                .map(|tap| {
                    let rx_retry = RxRetry::new().map_err(|source| TapError::RetryTimer {
                        tap: config.tap.clone(),
                        source,
                    })?;
                    Ok(Pair {
                        tap,
                        state: Mutex::new(PairState {
                            rx: RxQueue::default(),
                            rx_retry,
                            counters: NetCounters::default(),
                            rx_watch: KickWatch::default(),
                            tx_watch: KickWatch::default(),
                            rx_avail_seen: None,
                        }),
                    })
                })
                .collect::<Result<_, TapError>>()?,
            mem: Mutex::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
            gate: RwLock::new(()),
        })))
    }

    /// Counters summed over every queue pair.
    pub fn counters(&self) -> NetCounters {
        let mut sum = NetCounters::default();
        for p in &self.0.pairs {
            let c = lock(&p.state).counters;
            sum.rx_packets += c.rx_packets;
            sum.rx_bytes += c.rx_bytes;
            sum.rx_dropped += c.rx_dropped;
            sum.rx_bad_chains += c.rx_bad_chains;
            sum.tx_packets += c.tx_packets;
            sum.tx_bytes += c.tx_bytes;
            sum.tx_dropped += c.tx_dropped;
        }
        sum
    }

    fn tap_event(&self) -> u64 {
        // Event data up to the queue count is the framework's own.
        2 * self.0.pairs.len() as u64 + 1
    }

    /// A pair's RX retry timer expired (after a TAP read error).
    fn retry_event(&self) -> u64 {
        self.tap_event() + 1
    }

    fn serve(&self, pair: usize, event: u16, vrings: &[VringRwLock]) {
        let inner = &self.0;
        let (Some(p), [rx_ring, tx_ring]) = (inner.pairs.get(pair), vrings) else {
            warn!(
                "{}: worker {pair}: event {event} for a pair it does not serve; ignored",
                inner.name
            );
            return;
        };
        let _gate = inner.gate.read().unwrap_or_else(|e| e.into_inner());
        let mem = lock(&inner.mem).memory();
        let features = inner.acked.load(Ordering::Relaxed);
        let mut st = lock(&p.state);
        let PairState {
            rx,
            rx_retry,
            counters,
            rx_watch,
            tx_watch,
            rx_avail_seen,
        } = &mut *st;
        let retry = u64::from(event) == self.retry_event();
        if retry && !rx_retry.fired() {
            return;
        }
        let tap_event = u64::from(event) == self.tap_event() || retry;
        if event == RX_EVENT || tap_event {
            let mut ring = rx_ring.get_mut();
            if !ring.get_queue().ready() || !ring.is_enabled() {
                // Reading the TAP resumes when the driver kicks the RX queue.
                return;
            }
            if !ring_servable(&inner.name, 2 * pair, ring.get_queue(), &*mem) {
                return;
            }
            let run = rx.process(
                ring.get_queue_mut(),
                &*mem,
                &p.tap,
                features,
                counters,
                &inner.name,
            );
            if let Err(e) = rx_retry.after_pass(run.tap_error) {
                host_error!(
                    "{}: pair {pair}: arming the RX retry timer: {e}; RX waits for the next packet or RX kick",
                    inner.name
                );
            }
            self.finish(&mut ring, &mem, run, 2 * pair);
            if event == RX_EVENT {
                // An RX kick means buffers were added: the avail index moved.
                let avail = ring
                    .get_queue()
                    .avail_idx(&*mem, Ordering::Acquire)
                    .map(|w| w.0)
                    .ok();
                let moved = avail.is_some() && avail != *rx_avail_seen && avail != Some(0);
                *rx_avail_seen = avail;
                rx_watch.kicked(usize::from(moved), &inner.name, 2 * pair);
            }
        } else if event == TX_EVENT {
            let mut ring = tx_ring.get_mut();
            if ring.get_queue().ready()
                && !ring_servable(&inner.name, 2 * pair + 1, ring.get_queue(), &*mem)
            {
                return;
            }
            let before = ring.get_queue().next_avail();
            let run = process_tx(ring.get_queue_mut(), &*mem, &p.tap, counters, &inner.name);
            let served = ring.get_queue().next_avail().wrapping_sub(before);
            self.finish(&mut ring, &mem, run, 2 * pair + 1);
            tx_watch.kicked(usize::from(served), &inner.name, 2 * pair + 1);
        } else {
            debug!("{}: worker {pair}: unknown event {event}", inner.name);
        }
    }

    fn finish(
        &self,
        ring: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>,
        mem: &GuestMemoryMmap,
        run: QueueRun,
        queue: usize,
    ) {
        let name = &self.0.name;
        if run.broken {
            // Without a status channel to the driver the ring stays as it
            // is; the front end resets the device when the guest does.
            guest_warn!("{name}: queue {queue}: the driver corrupted the ring; serving stopped until the device is reset");
        }
        if run.completed {
            let notify = ring.get_queue_mut().needs_notification(mem).unwrap_or(true);
            if notify {
                if let Err(e) = ring.signal_used_queue() {
                    host_error!("{name}: queue {queue}: signalling the front end: {e}");
                }
            }
        }
    }
}

/// Guest offloads (as feature bits) the TAP refuses; the daemon does not
/// offer them, so no driver can accept what the kernel would not honour.
fn unsupported_offloads(tap: &Tap, features: u64, name: &str) -> u64 {
    let mut dropped = 0u64;
    for bit in [
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
    ] {
        if tap.set_offload(offload_flags(features & !dropped)).is_ok() {
            break;
        }
        dropped |= bit;
        info!("{name}: the TAP refuses an offload; not offering feature bit {bit:#x}");
    }
    if let Err(e) = tap.set_offload(0) {
        warn!("{name}: clearing the TAP's offloads: {e}");
    }
    dropped
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.0.pairs.len()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.0.features
    }

    fn acked_features(&self, features: u64) {
        let inner = &self.0;
        inner.acked.store(features, Ordering::Relaxed);
        let flags = offload_flags(features);
        for (i, p) in inner.pairs.iter().enumerate() {
            if let Err(e) = p.tap.set_offload(flags) {
                host_error!(
                    "{}: pair {i}: applying the guest's receive offloads {flags:#x}: {e}",
                    inner.name
                );
            }
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.0.mac);
        c[6..8].copy_from_slice(&(virtio_net::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&(self.0.pairs.len() as u16).to_le_bytes());
        read_config(&c, offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *lock(&self.0.mem) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.0.pairs.len())
            .map(|p| 0b11u64 << (2 * p))
            .collect()
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
        self.serve(thread_id, device_event, vrings);
        Ok(())
    }
}

impl DaemonDevice for NetBackend {
    fn describe(&self) -> String {
        self.0.name.clone()
    }

    fn io_gate(&self) -> &RwLock<()> {
        &self.0.gate
    }

    fn connected(&self, daemon: &VhostUserDaemon<Self>) -> io::Result<()> {
        let handlers = daemon.get_epoll_handlers();
        for (p, handler) in self.0.pairs.iter().zip(handlers) {
            handler.register_listener(
                p.tap.as_raw_fd(),
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                self.tap_event(),
            )?;
            let mut st = lock(&p.state);
            // A timer left armed by the previous front end would fire into
            // rings that are not set up yet; the new front end's first RX
            // kick reads the TAP anyway.
            st.rx_retry.cancel()?;
            handler.register_listener(st.rx_retry.fd(), EventSet::IN, self.retry_event())?;
        }
        Ok(())
    }

    fn disconnected(&self) {
        let inner = &self.0;
        let c = self.counters();
        info!(
            "{}: rx {} packets {} bytes ({} dropped), tx {} packets {} bytes ({} dropped)",
            inner.name,
            c.rx_packets,
            c.rx_bytes,
            c.rx_dropped,
            c.tx_packets,
            c.tx_bytes,
            c.tx_dropped
        );
        inner.acked.store(0, Ordering::Relaxed);
        for p in &inner.pairs {
            let mut st = lock(&p.state);
            st.rx.clear();
            st.rx_watch = KickWatch::default();
            st.tx_watch = KickWatch::default();
            st.rx_avail_seen = None;
            if let Err(e) = p.tap.set_offload(0) {
                warn!("{}: clearing the TAP's offloads: {e}", inner.name);
            }
        }
        *lock(&inner.mem) = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    }
}
