//! Saved device state: the common virtio part, the `Persist` trait every
//! device implements, and the versioned envelope the bytes travel in.
//!
//! Saved state is untrusted input (a snapshot file can be edited or
//! corrupted): every restore validates before it builds anything.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_queue::{Queue, QueueState, QueueT};

use super::common::{ring_layout_fault, Ring, VirtioCommon};
use super::{STATUS_DRIVER_OK, VIRTIO_F_VERSION_1};

/// Largest state blob accepted; a virtio-mem bitmap of a 1 TiB region in
/// 2 MiB blocks is 64 KiB, so this leaves room without letting a corrupt
/// length allocate gigabytes.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

const MAGIC: [u8; 4] = *b"VDEV";

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("device state is not a saved virtio device state (bad magic); was the file written by this VMM?")]
    BadMagic,
    #[error("device state is for virtio device type {found}, but it is being restored into type {expected}")]
    WrongDevice { expected: u32, found: u32 },
    #[error("device state format version {found} of device type {device_type} is not supported (this build reads {min} to {max}); restore with the VMM version that saved it")]
    UnsupportedVersion {
        device_type: u32,
        found: u16,
        min: u16,
        max: u16,
    },
    #[error("device state is truncated or corrupt: {0}")]
    Decode(String),
    #[error("device state does not match this device: {0}")]
    Mismatch(String),
    #[error("device state is inconsistent: {0}")]
    Invalid(String),
    #[error("restoring the device failed: {0}")]
    Device(String),
}

/// A device whose state can be saved and restored into a fresh instance.
pub trait Persist: Sized {
    type State: Serialize + DeserializeOwned;
    /// What a fresh device needs besides its state (RAM, backend files).
    type RestoreArgs;

    const DEVICE_TYPE: u32;
    /// Version of `State`; bump it when the layout changes.
    const STATE_VERSION: u16;
    /// Oldest version `restore` still reads.
    const MIN_STATE_VERSION: u16 = Self::STATE_VERSION;

    fn save(&self) -> Self::State;
    fn restore(args: Self::RestoreArgs, state: &Self::State) -> Result<Self, PersistError>;

    fn save_bytes(&self) -> Vec<u8> {
        encode(Self::DEVICE_TYPE, Self::STATE_VERSION, &self.save())
    }

    fn restore_bytes(args: Self::RestoreArgs, bytes: &[u8]) -> Result<Self, PersistError> {
        let state = decode(
            bytes,
            Self::DEVICE_TYPE,
            Self::MIN_STATE_VERSION..=Self::STATE_VERSION,
        )?;
        Self::restore(args, &state)
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    magic: [u8; 4],
    device_type: u32,
    version: u16,
    payload: Vec<u8>,
}

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(MAX_STATE_BYTES)
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Serializes `state` inside a versioned envelope.
pub fn encode<S: Serialize>(device_type: u32, version: u16, state: &S) -> Vec<u8> {
    use bincode::Options;
    let payload = options()
        .serialize(state)
        .expect("device state serializes: plain data well under the limit");
    options()
        .serialize(&Envelope {
            magic: MAGIC,
            device_type,
            version,
            payload,
        })
        .expect("envelope serializes")
}

/// Reads an envelope, checks it is for `device_type` at a readable version, and decodes it.
pub fn decode<S: DeserializeOwned>(
    bytes: &[u8],
    device_type: u32,
    versions: std::ops::RangeInclusive<u16>,
) -> Result<S, PersistError> {
    use bincode::Options;
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return Err(PersistError::BadMagic);
    }
    let env: Envelope = options()
        .deserialize(bytes)
        .map_err(|e| PersistError::Decode(e.to_string()))?;
    if env.device_type != device_type {
        return Err(PersistError::WrongDevice {
            expected: device_type,
            found: env.device_type,
        });
    }
    if !versions.contains(&env.version) {
        return Err(PersistError::UnsupportedVersion {
            device_type,
            found: env.version,
            min: *versions.start(),
            max: *versions.end(),
        });
    }
    options()
        .deserialize(&env.payload)
        .map_err(|e| PersistError::Decode(e.to_string()))
}

/// One queue, as `virtio_queue::QueueState` but serializable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// The state every virtio device saves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioCommonState {
    pub device_type: u32,
    pub avail_features: u64,
    pub acked_features: u64,
    pub status: u8,
    pub config_generation: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
}

impl VirtioCommonState {
    pub fn save(common: &VirtioCommon) -> Self {
        VirtioCommonState {
            device_type: common.device_type,
            avail_features: common.avail_features,
            acked_features: common.acked_features,
            status: common.status,
            config_generation: common.config_generation,
            activated: common.activated,
            queues: common.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Applies the saved state to a freshly built `common` (same device
    /// configuration, so the same offer and queue count), validating every
    /// field the saved bytes could have corrupted.
    pub fn restore_into(&self, common: &mut VirtioCommon) -> Result<(), PersistError> {
        if self.device_type != common.device_type {
            return Err(PersistError::WrongDevice {
                expected: common.device_type,
                found: self.device_type,
            });
        }
        if self.avail_features != common.avail_features {
            return Err(PersistError::Mismatch(format!(
                "the saved device offered features {:#x} but this one offers {:#x}; start it with the options it was saved with",
                self.avail_features, common.avail_features
            )));
        }
        if self.acked_features & !self.avail_features != 0 {
            return Err(PersistError::Invalid(format!(
                "accepted features {:#x} include some never offered ({:#x})",
                self.acked_features, self.avail_features
            )));
        }
        if self.queues.len() != common.queues.len() {
            return Err(PersistError::Mismatch(format!(
                "{} queues saved, this device has {}",
                self.queues.len(),
                common.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, (saved, fresh)) in self.queues.iter().zip(&common.queues).enumerate() {
            if saved.max_size != fresh.max_size() {
                return Err(PersistError::Mismatch(format!(
                    "queue {i} had maximum size {}, this device's is {}",
                    saved.max_size,
                    fresh.max_size()
                )));
            }
            let q = Queue::try_from(QueueState::from(*saved))
                .map_err(|e| PersistError::Invalid(format!("queue {i}: {e}")))?;
            if self.activated && q.ready() {
                if let Some(fault) = ring_layout_fault(&q, common.ram.memory()) {
                    return Err(PersistError::Invalid(format!("queue {i}: {fault}")));
                }
            }
            queues.push(q);
        }
        let activated_ok =
            self.status & STATUS_DRIVER_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0;
        if self.activated && !activated_ok {
            return Err(PersistError::Invalid(
                "device marked active without DRIVER_OK and VERSION_1".into(),
            ));
        }
        common.acked_features = self.acked_features;
        common.status = self.status;
        common.config_generation = self.config_generation;
        common.activated = self.activated;
        // The saved queues hold what the driver wrote, all of it checked
        // when it was first activated (or above).
        common.ring_addrs = queues
            .iter()
            .map(|q| Ring::ALL.map(|r| Some(r.address(q))))
            .collect();
        common.queues = queues;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: Vec<u8>,
    }

    fn sample() -> Sample {
        Sample {
            a: 7,
            b: vec![1, 2, 3],
        }
    }

    #[test]
    fn envelope_round_trips() {
        let bytes = encode(2, 1, &sample());
        assert_eq!(decode::<Sample>(&bytes, 2, 1..=1).unwrap(), sample());
    }

    #[test]
    fn envelope_refusals_are_specific() {
        let bytes = encode(2, 3, &sample());
        assert!(matches!(
            decode::<Sample>(b"nope", 2, 1..=3),
            Err(PersistError::BadMagic)
        ));
        assert!(matches!(
            decode::<Sample>(&bytes, 5, 1..=3),
            Err(PersistError::WrongDevice {
                expected: 5,
                found: 2
            })
        ));
        let e = decode::<Sample>(&bytes, 2, 1..=2).unwrap_err();
        assert!(matches!(
            e,
            PersistError::UnsupportedVersion { found: 3, .. }
        ));
        assert!(e.to_string().contains("reads 1 to 2"), "{e}");
        for cut in 4..bytes.len() {
            assert!(
                matches!(
                    decode::<Sample>(&bytes[..cut], 2, 1..=3),
                    Err(PersistError::Decode(_))
                ),
                "truncated at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Sample>(&longer, 2, 1..=3).is_err());
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let mut bytes = encode(2, 1, &sample());
        // The payload length field follows magic (4), type (4) and version (2).
        bytes[10..18].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&bytes, 2, 1..=1),
            Err(PersistError::Decode(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&data);
            let _ = decode::<VirtioCommonState>(&data, 2, 1..=1);
            let _ = decode::<VirtioCommonState>(&with_magic, 2, 1..=1);
        }
    }
}
