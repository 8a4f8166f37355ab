//! Why a save or a restore failed, and the bincode encoding of sections.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use super::format::FormatError;
use super::uri::UriError;
use crate::machine::MachineError;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Vm(#[from] crate::vstate::VmError),
    #[error(transparent)]
    Ram(#[from] devices::ram::GuestRamError),
    #[error("the VM is running; pause it (QMP stop) before saving")]
    Running,
    #[error("{0} cannot be saved: its rings and requests in flight live in the vhost-user back end's process; a VM with vhost-user devices cannot be snapshotted, checkpointed or made a template (use the in-process --disk/--net for that)")]
    NotSaveable(String),
    #[error("{}", .0.join("\n"))]
    ConfigMismatch(Vec<String>),
    #[error("snapshot section '{name}' cannot be decoded: {reason}; the file was written by another VMM version or is damaged")]
    BadSection { name: String, reason: String },
    #[error("snapshot has no section '{0}', which this VM needs; the snapshot is incomplete or for another VM")]
    MissingSection(String),
    #[error("snapshot has a section '{0}' that no device of this VM takes; restore with the command line the VM was saved with")]
    UnknownSection(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Largest decoded section: far above any real one (a vCPU is ~10 KiB).
const SECTION_LIMIT: u64 = 16 << 20;

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(SECTION_LIMIT)
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    use bincode::Options;
    options()
        .serialize(v)
        .expect("snapshot sections are plain data under the size limit")
}

pub fn decode<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, SnapshotError> {
    use bincode::Options;
    options()
        .deserialize(bytes)
        .map_err(|e| SnapshotError::BadSection {
            name: name.to_string(),
            reason: e.to_string(),
        })
}
