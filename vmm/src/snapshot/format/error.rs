//! What can be wrong with a snapshot stream, and where.

use std::io;

use thiserror::Error;

/// An error writing or reading a snapshot stream. Offsets are byte offsets
/// in the stream (the header is at 0); for a record, the offset of its tag.
#[derive(Debug, Error)]
pub enum FormatError {
    #[error("snapshot stream: I/O error at byte {offset} while {doing}: {source}")]
    Io {
        offset: u64,
        doing: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "not a snapshot stream: it starts with {found}, not \"VMMSNAP\\0\"; \
         check the file name or the command that produces the stream"
    )]
    NotASnapshot { found: String },
    #[error(
        "snapshot format version {found} is not supported: this build reads version {supported} \
         only; restore with the build that saved the snapshot"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error(
        "snapshot stream corrupt: checksum mismatch in {record} at byte {offset} \
         (stored {stored:#010x}, computed {computed:#010x}); the stream was damaged after it \
         was written: take the snapshot again"
    )]
    ChecksumMismatch {
        offset: u64,
        record: String,
        stored: u32,
        computed: u32,
    },
    #[error(
        "snapshot stream truncated at byte {offset} while reading {inside}: the stream ended \
         early (an interrupted save or a failed command); take the snapshot again"
    )]
    Truncated { offset: u64, inside: String },
    #[error(
        "snapshot stream has data at byte {offset}, after its end record: it is not exactly \
         one snapshot; check the file or the command that produces it"
    )]
    TrailingData { offset: u64 },
    #[error(
        "snapshot stream corrupt: unknown record tag {tag} at byte {offset} \
         (known: 1 section, 2 RAM chunk, 3 end)"
    )]
    UnknownTag { offset: u64, tag: u8 },
    #[error(
        "bad section name {name:?} at byte {offset}: {reason}; a name is 1 to 64 printable \
         ASCII characters"
    )]
    BadName {
        offset: u64,
        name: String,
        reason: String,
    },
    #[error(
        "section {name:?} at byte {offset} is {len} bytes, more than the limit of {max} bytes; \
         the stream is corrupt, or the state must be split into smaller sections"
    )]
    SectionTooLarge {
        offset: u64,
        name: String,
        len: u64,
        max: u64,
    },
    #[error("section {name:?} at byte {offset} appears twice; each section name must be unique")]
    DuplicateSection { offset: u64, name: String },
    #[error(
        "the first record, at byte {offset}, is {found}, not the \"config\" section: \
         the stream is corrupt or was not written by this VMM"
    )]
    ConfigNotFirst { offset: u64, found: String },
    #[error(
        "section {name:?} at byte {offset} comes after RAM chunks; every section must come \
         before the RAM"
    )]
    SectionAfterRam { offset: u64, name: String },
    #[error(
        "RAM chunk at byte {offset} (guest address {gpa:#x}, {len} bytes) is malformed: {reason}"
    )]
    BadChunk {
        offset: u64,
        gpa: u64,
        len: u64,
        reason: &'static str,
    },
    #[error(
        "RAM chunk at byte {offset} (guest address {gpa:#x}, {len} bytes) cannot be restored: \
         {reason}"
    )]
    ChunkRejected {
        offset: u64,
        gpa: u64,
        len: u64,
        reason: String,
    },
    #[error(
        "end record at byte {offset} counts {recorded} {what} but the stream has {actual}; \
         the stream is corrupt: take the snapshot again"
    )]
    EndMismatch {
        offset: u64,
        what: &'static str,
        recorded: u64,
        actual: u64,
    },
    #[error("cannot save guest RAM at {gpa:#x}: {reason}")]
    Memory { gpa: u64, reason: String },
    #[error(
        "snapshot writer: an earlier error left the stream incomplete at byte {offset}; \
         discard it and start a new snapshot"
    )]
    WriterFailed { offset: u64 },
}

impl FormatError {
    /// The byte offset in the stream the error is about, where it has one.
    pub fn offset(&self) -> Option<u64> {
        use FormatError::*;
        match self {
            Io { offset, .. }
            | ChecksumMismatch { offset, .. }
            | Truncated { offset, .. }
            | TrailingData { offset }
            | UnknownTag { offset, .. }
            | BadName { offset, .. }
            | SectionTooLarge { offset, .. }
            | DuplicateSection { offset, .. }
            | ConfigNotFirst { offset, .. }
            | SectionAfterRam { offset, .. }
            | BadChunk { offset, .. }
            | ChunkRejected { offset, .. }
            | EndMismatch { offset, .. }
            | WriterFailed { offset } => Some(*offset),
            NotASnapshot { .. } => Some(0),
            UnsupportedVersion { .. } => Some(8),
            Memory { .. } => None,
        }
    }
}
