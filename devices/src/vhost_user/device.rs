//! A virtio device whose queues a vhost-user back end serves: the VMM keeps
//! the transport (registers, features, config space, interrupts) and hands
//! guest RAM, the rings and their eventfds to the back end.
//!
//! Kicks go from KVM's ioeventfds straight to the back end. Its "call"
//! signals come back to the VMM rather than to KVM's irqfd: virtio-mmio's
//! InterruptStatus must show a used-buffer notification before the guest's
//! handler looks at any queue, and only the VMM can set it.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use crate::{guest_warn, host_warn};
use log::{error, info, warn};
use thiserror::Error;
use virtio_bindings::{virtio_blk, virtio_net, virtio_ring};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::config::{VhostUserBlkConfig, VhostUserNetConfig};
use super::frontend::{BackendConnection, FrontendError, RingAddrs};
use crate::ram::GuestRam;
use crate::virtio::block::CONFIG_SPACE_SIZE as BLK_CONFIG_SIZE;
use crate::virtio::{
    read_config_bytes, ActivateError, InterruptKind, VirtioCommon, VirtioDevice, TYPE_BLOCK,
    TYPE_NET, VIRTIO_F_VERSION_1,
};

/// Ring size offered to the driver; the daemons and qemu-storage-daemon
/// take up to 256 or more.
pub const QUEUE_SIZE: u16 = 256;

const RING_FEATURES: u64 = VIRTIO_F_VERSION_1
    | 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX
    | 1 << virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// What a block back end may offer the guest through this transport.
const BLK_FEATURES: u64 = RING_FEATURES
    | 1 << virtio_blk::VIRTIO_BLK_F_SIZE_MAX
    | 1 << virtio_blk::VIRTIO_BLK_F_SEG_MAX
    | 1 << virtio_blk::VIRTIO_BLK_F_GEOMETRY
    | 1 << virtio_blk::VIRTIO_BLK_F_RO
    | 1 << virtio_blk::VIRTIO_BLK_F_BLK_SIZE
    | 1 << virtio_blk::VIRTIO_BLK_F_FLUSH
    | 1 << virtio_blk::VIRTIO_BLK_F_TOPOLOGY
    | 1 << virtio_blk::VIRTIO_BLK_F_DISCARD
    | 1 << virtio_blk::VIRTIO_BLK_F_WRITE_ZEROES;

/// What a net back end may offer; one queue pair and no control queue,
/// whose commands only the VMM could answer.
const NET_FEATURES: u64 = RING_FEATURES
    | 1 << virtio_net::VIRTIO_NET_F_CSUM
    | 1 << virtio_net::VIRTIO_NET_F_GUEST_CSUM
    | 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO4
    | 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO6
    | 1 << virtio_net::VIRTIO_NET_F_GUEST_ECN
    | 1 << virtio_net::VIRTIO_NET_F_GUEST_UFO
    | 1 << virtio_net::VIRTIO_NET_F_HOST_TSO4
    | 1 << virtio_net::VIRTIO_NET_F_HOST_TSO6
    | 1 << virtio_net::VIRTIO_NET_F_HOST_ECN
    | 1 << virtio_net::VIRTIO_NET_F_HOST_UFO
    | 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF;

#[derive(Debug, Error)]
pub enum VhostUserDeviceError {
    #[error(transparent)]
    Backend(#[from] FrontendError),
    #[error("back end at {socket} offers none of VIRTIO_F_VERSION_1; it cannot serve a virtio 1.x guest")]
    Legacy { socket: String },
    #[error("creating an eventfd: {0}")]
    Eventfd(io::Error),
}

/// A vhost-user block or net device as the guest sees it.
pub struct VhostUserDevice {
    common: VirtioCommon,
    name: String,
    socket: PathBuf,
    config_space: Vec<u8>,
    conn: Option<BackendConnection>,
    /// The transport's queue eventfds (KVM ioeventfds), one per queue.
    kicks: Vec<EventFd>,
    /// Signalled by the back end; the VMM turns them into interrupts.
    calls: Vec<EventFd>,
    /// Rings handed to the current back end.
    started: Vec<bool>,
}

impl VhostUserDevice {
    /// Connects to the block back end and reads its config space.
    pub fn blk(
        cfg: &VhostUserBlkConfig,
        ram: Arc<GuestRam>,
    ) -> Result<VhostUserDevice, VhostUserDeviceError> {
        let queues = usize::from(cfg.queues);
        let mut conn = BackendConnection::connect(&cfg.socket, queues)?;
        let mut mask = BLK_FEATURES;
        if queues > 1 {
            mask |= 1 << virtio_blk::VIRTIO_BLK_F_MQ;
        }
        let features = conn.offered_features() & mask;
        let config_space = conn.config(0, BLK_CONFIG_SIZE as u32)?;
        VhostUserDevice::new(
            TYPE_BLOCK,
            format!("vhost-user-blk '{}'", cfg.id),
            cfg.socket.clone(),
            features,
            queues,
            config_space,
            conn,
            ram,
        )
    }

    /// Connects to the net back end; the config space (MAC, link up, one
    /// queue pair) is the VMM's.
    pub fn net(
        cfg: &VhostUserNetConfig,
        ram: Arc<GuestRam>,
    ) -> Result<VhostUserDevice, VhostUserDeviceError> {
        let conn = BackendConnection::connect(&cfg.socket, 2)?;
        let features = conn.offered_features() & NET_FEATURES
            | 1 << virtio_net::VIRTIO_NET_F_MAC
            | 1 << virtio_net::VIRTIO_NET_F_STATUS;
        let mut config_space = vec![0u8; 10];
        config_space[..6].copy_from_slice(&cfg.mac);
        config_space[6..8]
            .copy_from_slice(&(virtio_net::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
        VhostUserDevice::new(
            TYPE_NET,
            format!("vhost-user-net '{}'", cfg.id),
            cfg.socket.clone(),
            features,
            2,
            config_space,
            conn,
            ram,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        device_type: u32,
        name: String,
        socket: PathBuf,
        features: u64,
        queues: usize,
        config_space: Vec<u8>,
        conn: BackendConnection,
        ram: Arc<GuestRam>,
    ) -> Result<VhostUserDevice, VhostUserDeviceError> {
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(VhostUserDeviceError::Legacy {
                socket: socket.display().to_string(),
            });
        }
        let calls = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<io::Result<Vec<_>>>()
            .map_err(VhostUserDeviceError::Eventfd)?;
        info!(
            "{name}: back end at {} offers features {features:#x}",
            socket.display()
        );
        Ok(VhostUserDevice {
            common: VirtioCommon::new(device_type, features, &vec![QUEUE_SIZE; queues], ram),
            name,
            socket,
            config_space,
            conn: Some(conn),
            kicks: Vec::new(),
            calls,
            started: vec![false; queues],
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The transport's queue eventfds, handed to the back end as its kicks.
    pub fn set_kicks(&mut self, kicks: Vec<EventFd>) {
        self.kicks = kicks;
    }

    /// The eventfds the back end signals, one per queue, for the VMM to
    /// watch and turn into interrupts.
    pub fn call_evts(&self) -> io::Result<Vec<EventFd>> {
        self.calls.iter().map(EventFd::try_clone).collect()
    }

    /// The back end signalled queue `queue`: raise the used-buffer interrupt.
    pub fn backend_called(&self, queue: u16) {
        self.common.trigger(InterruptKind::Queue(queue));
    }

    /// Hands memory and every ready ring to the connected back end. A back
    /// end that restarted resumes each ring at the used index in guest RAM:
    /// what it completed is done, what it had only taken is served again.
    fn start_rings(&mut self, resumed: bool) -> Result<(), FrontendError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.set_features(self.common.acked_features)?;
        conn.set_memory(&self.common.ram)?;
        for (i, q) in self.common.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let base = if resumed {
                used_index(&self.common.ram, q)
            } else {
                q.next_avail()
            };
            let ring = RingAddrs {
                size: q.size(),
                desc: GuestAddress(q.desc_table()),
                avail: GuestAddress(q.avail_ring()),
                used: GuestAddress(q.used_ring()),
            };
            let Some(kick) = self.kicks.get(i) else {
                warn!("{}: queue {i} has no kick eventfd; not started", self.name);
                continue;
            };
            conn.start_ring(&self.common.ram, i, ring, base, kick, &self.calls[i])?;
            self.started[i] = true;
        }
        Ok(())
    }

    fn stop_rings(&mut self) {
        for (i, started) in self.started.iter_mut().enumerate() {
            if std::mem::take(started) {
                if let Some(conn) = self.conn.as_mut() {
                    if let Err(e) = conn.stop_ring(i) {
                        host_warn!("{}: stopping queue {i}: {e}", self.name);
                    }
                }
            }
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        self.conn.as_ref().map(BackendConnection::as_raw_fd)
    }

    fn backend_lost(&mut self) {
        if self.conn.take().is_some() {
            self.started.fill(false);
            warn!(
                "{}: the back end at {} went away; reconnecting (the guest's requests wait meanwhile)",
                self.name,
                self.socket.display()
            );
        }
    }

    fn backend_back(&mut self, conn: BackendConnection) {
        self.conn = Some(conn);
        info!(
            "{}: back end at {} reconnected",
            self.name,
            self.socket.display()
        );
        if !self.common.activated {
            return;
        }
        if let Err(e) = self.start_rings(true) {
            error!("{}: resuming the rings on the new back end: {e}", self.name);
            self.conn = None;
            self.started.fill(false);
        }
    }
}

/// The used index the driver last saw from the device.
fn used_index(ram: &GuestRam, q: &Queue) -> u16 {
    ram.memory()
        .read_obj::<u16>(GuestAddress(q.used_ring() + 2))
        .map(u16::from_le)
        .unwrap_or_else(|_| q.next_avail())
}

/// Watches the device's back end for as long as the device exists: when
/// the back end goes away (the daemon exits or restarts), reconnects to the
/// same socket and, if the guest had started the device, hands the new back
/// end memory and rings again.
pub fn watch_backend(device: &Arc<Mutex<VhostUserDevice>>) -> io::Result<()> {
    let weak = Arc::downgrade(device);
    let name = lock(device).name.clone();
    thread::Builder::new()
        .name(format!("{name} watch"))
        .spawn(move || watch_loop(weak))
        .map(|_| ())
}

fn lock(d: &Mutex<VhostUserDevice>) -> std::sync::MutexGuard<'_, VhostUserDevice> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

fn watch_loop(weak: Weak<Mutex<VhostUserDevice>>) {
    loop {
        let Some(dev) = weak.upgrade() else { return };
        let fd = lock(&dev).backend_fd();
        drop(dev);
        if let Some(fd) = fd {
            // SAFETY: dup of an fd the device owns; the copy is closed below.
            let own = unsafe { libc::dup(fd) };
            if own < 0 {
                return;
            }
            let gone = wait_for_hangup(own, &weak);
            // SAFETY: closes the dup made above.
            unsafe { libc::close(own) };
            match gone {
                None => return,
                Some(()) => match weak.upgrade() {
                    Some(dev) => lock(&dev).backend_lost(),
                    None => return,
                },
            }
        }
        let (socket, queues) = match weak.upgrade() {
            Some(dev) => {
                let d = lock(&dev);
                (d.socket.clone(), d.calls.len())
            }
            None => return,
        };
        let mut delay = Duration::from_millis(50);
        let conn = loop {
            thread::sleep(delay);
            if weak.strong_count() == 0 {
                return;
            }
            match BackendConnection::connect(&socket, queues) {
                Ok(c) => break c,
                Err(_) => delay = (delay * 2).min(Duration::from_secs(1)),
            }
        };
        match weak.upgrade() {
            Some(dev) => lock(&dev).backend_back(conn),
            None => return,
        }
    }
}

/// Blocks until the peer of `fd` hangs up (Some) or the device is gone (None).
fn wait_for_hangup(fd: RawFd, weak: &Weak<Mutex<VhostUserDevice>>) -> Option<()> {
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: polls one valid pollfd for up to a second.
        let n = unsafe { libc::poll(&mut p, 1, 1000) };
        if weak.strong_count() == 0 {
            return None;
        }
        if n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Some(());
        }
    }
}

impl VirtioDevice for VhostUserDevice {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(
            "{}: driver wrote {} bytes at config offset {offset}; the config space is read-only, ignored",
            self.name,
            data.len()
        );
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.common.prepare_activation()?;
        if self.conn.is_none() {
            host_warn!(
                "{}: the driver started the device while the back end is away; its rings start when the back end reconnects",
                self.name
            );
            return Ok(());
        }
        self.start_rings(false).map_err(|e| {
            self.common.activated = false;
            ActivateError::Device(format!("{}: {e}", self.name))
        })
    }

    fn queue_notify(&mut self, index: u16) {
        // Only a notify that missed the ioeventfd gets here: pass it on.
        if let Some(kick) = self.kicks.get(usize::from(index)) {
            if let Err(e) = kick.write(1) {
                host_warn!("{}: forwarding a kick of queue {index}: {e}", self.name);
            }
        }
    }

    fn reset(&mut self) {
        self.stop_rings();
        self.common.reset();
    }
}
