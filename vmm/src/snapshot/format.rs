//! The snapshot stream format: one sequential layout that can be written to
//! and read from a pipe as well as a file (nothing is ever seeked).
//!
//! All integers are little-endian. Every part ends with a CRC32C over all of
//! its bytes (tag included), so corruption is found where it happens.
//!
//! ```text
//! header   "VMMSNAP\0" (8)  version u32  crc u32 (over the 12 bytes before it)
//! section  1 u8  name_len u16  name  payload_len u64  payload  crc u32
//! ram      2 u8  gpa u64  len u32  bytes  crc u32
//! end      3 u8  records u64  ram_bytes u64  crc u32
//! ```
//!
//! - The header layout (magic, version, CRC) is the same in every version, so
//!   a reader can always tell "not a snapshot" from "a version I cannot read".
//! - The first record is a section named `config`. Section names are 1 to
//!   [`MAX_NAME_BYTES`] printable ASCII characters (no spaces) and are unique.
//!   A payload is at most [`MAX_SECTION_BYTES`].
//! - RAM chunks come after every section. A chunk starts on a page boundary
//!   and its length is a non-zero multiple of [`PAGE`], at most
//!   [`MAX_CHUNK_BYTES`]. Only pages that are not all zero are written, so a
//!   restore must start from zeroed RAM.
//! - The end record counts the records before it and the RAM bytes written.
//!   A stream without it is truncated; bytes after it are refused.

mod error;
mod reader;
mod sink;
mod writer;

#[cfg(test)]
mod tests;

pub use error::FormatError;
pub use reader::{ReadStats, Reader};
pub use sink::{DiscardSink, GuestRamSink, RamSink};
pub use writer::{RamStats, Writer};

/// The first 8 bytes of every snapshot stream.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\0";
/// The format version this build writes, and the only one it reads.
pub const FORMAT_VERSION: u32 = 2;
/// The largest section payload, in bytes (64 MiB).
pub const MAX_SECTION_BYTES: u64 = 64 << 20;
/// Guest pages: the unit of RAM chunks.
pub const PAGE: usize = 4096;
/// The largest RAM chunk, in bytes (4 MiB).
pub const MAX_CHUNK_BYTES: u32 = 4 << 20;
/// The longest section name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The name of the section that must come first.
pub const CONFIG_SECTION: &str = "config";

/// Bytes in the header: magic, version, CRC.
pub const HEADER_BYTES: usize = 16;

pub(crate) const TAG_SECTION: u8 = 1;
pub(crate) const TAG_RAM: u8 = 2;
pub(crate) const TAG_END: u8 = 3;

/// Why `name` cannot be a section name, if it cannot.
pub(crate) fn name_problem(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("it is longer than 64 bytes")
    } else if !name.iter().all(u8::is_ascii_graphic) {
        Some("it has a byte that is not printable ASCII (spaces and control characters included)")
    } else {
        None
    }
}

static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Whether `buf` is all zero. Compares a page at a time with a zero page:
/// the slice comparison is a `memcmp`, word-wise and vectorized (also in
/// debug builds), and stops at the first difference.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(PAGE).all(|c| c == &ZERO_PAGE[..c.len()])
}

/// Which part of the stream is being read or written, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rec<'a> {
    Header,
    Tag,
    SectionHead,
    Section(&'a str),
    RamHead,
    Ram(u64),
    End,
}

impl std::fmt::Display for Rec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rec::Header => write!(f, "the header"),
            Rec::Tag => write!(
                f,
                "the next record's tag (the end record has not been seen)"
            ),
            Rec::SectionHead => write!(f, "a section's name and length"),
            Rec::Section(name) => write!(f, "section {name:?}"),
            Rec::RamHead => write!(f, "a RAM chunk's address and length"),
            Rec::Ram(gpa) => write!(f, "the RAM chunk at guest address {gpa:#x}"),
            Rec::End => write!(f, "the end record"),
        }
    }
}
