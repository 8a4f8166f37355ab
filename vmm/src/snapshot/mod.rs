//! Snapshots: the stream format ([`format`]) and where a stream goes to or comes from ([`uri`]).

pub mod format;
pub mod uri;
