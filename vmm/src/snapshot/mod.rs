//! Snapshots: the stream format ([`format`]), where a stream goes to or
//! comes from ([`uri`]), what a VM saves ([`save`]) and how it comes back
//! ([`restore`]), checked against the restoring command line
//! ([`saved_config`]).

mod error;
pub mod file_identity;
pub mod format;
pub mod restore;
pub mod room;
pub mod save;
pub mod saved_config;
pub mod uri;

pub use error::{decode, encode, SnapshotError};
