//! The virtio-net device: one RX/TX queue pair backed by a TAP.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use crate::{guest_warn, host_error};
use log::debug;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_bindings::virtio_net;
use virtio_queue::QueueT;

use super::ring::QueueRun;
use super::rx::RxQueue;
use super::rx_retry::RxRetry;
use super::tap::{offload_flags, Tap, TapError};
use super::tx::process_tx;
use super::NetConfig;
use crate::ram::GuestRam;
use crate::virtio::{
    read_config_bytes, ActivateError, VirtioCommon, VirtioDevice, STATUS_NEEDS_RESET, TYPE_NET,
    VIRTIO_RING_F_EVENT_IDX,
};

pub const VIRTIO_NET_F_CSUM: u64 = 1 << virtio_net::VIRTIO_NET_F_CSUM;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_CSUM;
pub const VIRTIO_NET_F_MAC: u64 = 1 << virtio_net::VIRTIO_NET_F_MAC;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO4;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO6;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_ECN;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_UFO;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_TSO4;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_TSO6;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_ECN;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_UFO;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << virtio_net::VIRTIO_NET_F_STATUS;

/// Everything the device offers (VirtioCommon adds VERSION_1).
pub const AVAIL_FEATURES: u64 = VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_HOST_UFO
    | VIRTIO_NET_F_STATUS;

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Largest packet either way, header included: a 64 KiB GSO packet plus
/// its Ethernet header (the size Linux uses for "big packet" RX buffers).
pub const MAX_PACKET_LEN: usize = 65562;

/// mac[6], status le16, max_virtqueue_pairs le16.
const CONFIG_LEN: usize = 10;

/// Traffic and error counts, saved with the device so they survive a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    /// Packets written into guest RX buffers.
    pub rx_packets: u64,
    /// Frame bytes (headers excluded) delivered to the guest.
    pub rx_bytes: u64,
    /// Packets read from the TAP that the guest never saw.
    pub rx_dropped: u64,
    /// RX chains returned unused because they were malformed.
    pub rx_bad_chains: u64,
    /// Packets written to the TAP.
    pub tx_packets: u64,
    /// Frame bytes (headers excluded) written to the TAP.
    pub tx_bytes: u64,
    /// TX chains that did not reach the TAP (malformed, too large, refused by the kernel).
    pub tx_dropped: u64,
}

#[derive(Debug, Error)]
pub enum NetError {
    #[error("net device {id:?}: {source}")]
    Tap {
        id: String,
        #[source]
        source: TapError,
    },
    #[error("net device {id:?}: MAC {mac} is a multicast address; give it a unicast MAC (even first octet), e.g. 52:54:00:12:34:56")]
    MulticastMac { id: String, mac: String },
    #[error("net device {id:?}: creating its RX retry timer: {source}")]
    Timer {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A virtio-net device with one queue pair.
///
/// The event loop watches [`Net::tap_fd`] for input and calls
/// [`Net::process_rx`] when it is readable; see [`RxQueue`] for how the TAP
/// suits edge-triggered polling. It also watches [`Net::rx_retry_fd`] and
/// calls [`Net::rx_retry_due`] when that is readable: after a TAP read
/// error, the TAP is read again on a timer ([`RxRetry`]).
pub struct Net {
    pub(super) common: VirtioCommon,
    pub(super) config: NetConfig,
    pub(super) tap: Tap,
    /// The TUN_F_* flags last applied to the TAP.
    pub(super) tap_offloads: u32,
    pub(super) rx: RxQueue,
    pub(super) rx_retry: RxRetry,
    pub(super) counters: NetCounters,
}

impl Net {
    /// Opens the TAP named in `config` and builds the device.
    pub fn new(config: &NetConfig, ram: Arc<GuestRam>) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap).map_err(|source| NetError::Tap {
            id: config.id.clone(),
            source,
        })?;
        Net::with_tap(config, tap, ram)
    }

    /// Builds the device on a TAP the caller already opened (`config.tap`
    /// is then only a label).
    pub fn with_tap(config: &NetConfig, tap: Tap, ram: Arc<GuestRam>) -> Result<Net, NetError> {
        if config.mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac {
                id: config.id.clone(),
                mac: format_mac(&config.mac),
            });
        }
        let rx_retry = RxRetry::new().map_err(|source| NetError::Timer {
            id: config.id.clone(),
            source,
        })?;
        Ok(Net {
            common: VirtioCommon::new(
                TYPE_NET,
                AVAIL_FEATURES,
                &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE],
                ram,
            ),
            config: config.clone(),
            tap,
            tap_offloads: 0,
            rx: RxQueue::default(),
            rx_retry,
            counters: NetCounters::default(),
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The fd the event loop polls for packets from the host.
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// The fd the event loop polls for the RX retry timer.
    pub fn rx_retry_fd(&self) -> RawFd {
        self.rx_retry.fd()
    }

    /// The RX retry timer's fd is readable: reads the TAP again if the
    /// timer really expired.
    pub fn rx_retry_due(&mut self) {
        if self.rx_retry.fired() {
            self.process_rx();
        }
    }

    /// A packet is waiting for RX buffers; the TAP is not read meanwhile.
    pub fn rx_stalled(&self) -> bool {
        self.rx.stalled()
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The TUN_F_* offloads currently applied to the TAP.
    pub fn tap_offloads(&self) -> u32 {
        self.tap_offloads
    }

    fn queue_usable(&self, index: u16) -> bool {
        self.common.activated
            && self.common.status & STATUS_NEEDS_RESET == 0
            && self.common.queues[usize::from(index)].ready()
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.config.mac);
        c[6..8].copy_from_slice(&(virtio_net::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Moves packets from the TAP into guest RX buffers until the TAP is
    /// empty or the buffers run out.
    pub fn process_rx(&mut self) {
        if !self.queue_usable(RX_QUEUE) {
            return;
        }
        let Net {
            common,
            tap,
            rx,
            counters,
            config,
            ..
        } = self;
        let q = &mut common.queues[usize::from(RX_QUEUE)];
        let run = rx.process(
            q,
            common.ram.memory(),
            tap,
            common.acked_features,
            counters,
            &config.id,
        );
        if let Err(e) = self.rx_retry.after_pass(run.tap_error) {
            host_error!(
                "net {}: arming the RX retry timer: {e}; RX waits for the next packet or RX kick",
                self.config.id
            );
        }
        self.finish(RX_QUEUE, run);
    }

    fn process_tx(&mut self) {
        if !self.queue_usable(TX_QUEUE) {
            return;
        }
        let Net {
            common,
            tap,
            counters,
            config,
            ..
        } = self;
        let q = &mut common.queues[usize::from(TX_QUEUE)];
        let run = process_tx(q, common.ram.memory(), tap, counters, &config.id);
        self.finish(TX_QUEUE, run);
    }

    fn finish(&mut self, queue: u16, run: QueueRun) {
        if run.completed {
            self.common.notify_queue(queue);
        }
        if run.broken {
            self.common.set_needs_reset();
        }
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field is read-only for a virtio 1.x driver.
        debug!(
            "net {}: ignored {}-byte config write at {offset:#x}",
            self.config.id,
            data.len()
        );
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.common.prepare_activation()?;
        let flags = offload_flags(self.common.acked_features);
        if let Err(e) = self.tap.set_offload(flags) {
            self.common.activated = false;
            return Err(ActivateError::Device(format!(
                "net {}: applying the guest's receive offloads: {e}",
                self.config.id
            )));
        }
        self.tap_offloads = flags;
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => guest_warn!(
                "net {}: notification for queue {index}, which does not exist",
                self.config.id
            ),
        }
    }

    fn reset(&mut self) {
        self.common.reset();
        self.rx.clear();
        if let Err(e) = self.rx_retry.cancel() {
            host_error!(
                "net {}: disarming the RX retry timer on reset: {e}",
                self.config.id
            );
        }
        if self.tap_offloads != 0 {
            match self.tap.set_offload(0) {
                Ok(()) => self.tap_offloads = 0,
                Err(e) => host_error!("net {}: clearing offloads on reset: {e}", self.config.id),
            }
        }
    }
}
