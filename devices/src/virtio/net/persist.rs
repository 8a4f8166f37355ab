//! Saving and restoring a net device.

use std::sync::Arc;

use log::info;
use serde::{Deserialize, Serialize};

use super::device::{format_mac, Net, NetCounters, AVAIL_FEATURES, MAX_PACKET_LEN};
use super::tap::{offload_flags, Tap, VNET_HDR_LEN};
use super::NetConfig;
use crate::ram::GuestRam;
use crate::virtio::persist::{Persist, PersistError, VirtioCommonState};
use crate::virtio::{TYPE_NET, VIRTIO_F_VERSION_1};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub virtio: VirtioCommonState,
    /// The configuration the device ran with.
    pub config: NetConfig,
    /// TUN_F_* offloads that were applied to the TAP.
    pub tap_offloads: u32,
    /// A packet read from the TAP and not yet given to the guest (header
    /// included). Packets still queued in the kernel's TAP are lost: closing
    /// the TAP discards them.
    pub rx_pending: Option<Vec<u8>>,
    pub counters: NetCounters,
}

impl Persist for Net {
    type State = NetState;
    /// The configuration to restore with and guest RAM. The TAP named in
    /// the configuration is opened, so it may differ from the saved one
    /// (each clone of a snapshot needs its own TAP); the MAC and id may not.
    type RestoreArgs = (NetConfig, Arc<GuestRam>);

    const DEVICE_TYPE: u32 = TYPE_NET;
    const STATE_VERSION: u16 = 1;

    fn save(&self) -> NetState {
        NetState {
            virtio: VirtioCommonState::save(&self.common),
            config: self.config.clone(),
            tap_offloads: self.tap_offloads,
            rx_pending: self.rx.held().map(<[u8]>::to_vec),
            counters: self.counters,
        }
    }

    fn restore((config, ram): Self::RestoreArgs, state: &NetState) -> Result<Net, PersistError> {
        // Check before touching the TAP, so a refused restore leaves it alone.
        check_state(&config, state)?;
        let tap = Tap::open(&config.tap)
            .map_err(|e| PersistError::Device(format!("net {}: {e}", config.id)))?;
        Net::restore_with_tap(&config, tap, ram, state)
    }
}

impl Net {
    /// Restores onto a TAP the caller already opened.
    ///
    /// The restored device has no interrupt yet; once the transport installs
    /// one, call [`Net::process_rx`] so a held packet reaches buffers the
    /// driver may have added while the VM was stopped.
    pub fn restore_with_tap(
        config: &NetConfig,
        tap: Tap,
        ram: Arc<GuestRam>,
        state: &NetState,
    ) -> Result<Net, PersistError> {
        check_state(config, state)?;
        if config.tap != state.config.tap {
            info!(
                "net {}: restoring onto TAP {:?} (saved with {:?})",
                config.id, config.tap, state.config.tap
            );
        }
        let mut net =
            Net::with_tap(config, tap, ram).map_err(|e| PersistError::Device(e.to_string()))?;
        state.virtio.restore_into(&mut net.common)?;
        let expected = state.tap_offloads;
        net.tap
            .set_offload(expected)
            .map_err(|e| PersistError::Device(format!("net {}: {e}", config.id)))?;
        net.tap_offloads = expected;
        if let Some(pkt) = &state.rx_pending {
            net.rx.hold(pkt);
        }
        net.counters = state.counters;
        Ok(net)
    }
}

fn check_state(config: &NetConfig, state: &NetState) -> Result<(), PersistError> {
    if config.id != state.config.id {
        return Err(PersistError::Mismatch(format!(
            "state of net device {:?} restored into net device {:?}; pair saved and configured devices by id",
            state.config.id, config.id
        )));
    }
    if config.mac != state.config.mac {
        return Err(PersistError::Mismatch(format!(
            "net {}: saved with MAC {} but configured with {}; the guest still uses {}, so restore with mac={}",
            config.id,
            format_mac(&state.config.mac),
            format_mac(&config.mac),
            format_mac(&state.config.mac),
            format_mac(&state.config.mac),
        )));
    }
    // restore_into checks these too, but only after the TAP is open.
    if state.virtio.device_type != TYPE_NET {
        return Err(PersistError::WrongDevice {
            expected: TYPE_NET,
            found: state.virtio.device_type,
        });
    }
    let offered = AVAIL_FEATURES | VIRTIO_F_VERSION_1;
    if state.virtio.avail_features != offered {
        return Err(PersistError::Mismatch(format!(
            "net {}: the saved device offered features {:#x}, this one offers {offered:#x}; restore with the VMM version that saved it",
            config.id, state.virtio.avail_features
        )));
    }
    let expected = if state.virtio.activated {
        offload_flags(state.virtio.acked_features)
    } else {
        0
    };
    if state.tap_offloads != expected {
        return Err(PersistError::Invalid(format!(
            "net {}: TAP offloads {:#x} do not follow from the accepted features {:#x} (expected {expected:#x})",
            config.id, state.tap_offloads, state.virtio.acked_features
        )));
    }
    if let Some(pkt) = &state.rx_pending {
        if pkt.len() < VNET_HDR_LEN || pkt.len() > MAX_PACKET_LEN {
            return Err(PersistError::Invalid(format!(
                "net {}: held RX packet of {} bytes (must be {VNET_HDR_LEN} to {MAX_PACKET_LEN})",
                config.id,
                pkt.len()
            )));
        }
    }
    Ok(())
}
