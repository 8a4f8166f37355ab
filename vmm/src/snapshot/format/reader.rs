//! Reading and checking a snapshot stream. Nothing read is trusted before
//! its CRC matches, no length is allocated before it is checked against its
//! bound, and every malformed input is an error, never a panic.

use std::collections::HashSet;
use std::io::{BufReader, ErrorKind, Read};

use log::debug;

use super::{
    name_problem, FormatError, RamSink, Rec, CONFIG_SECTION, FORMAT_VERSION, MAGIC,
    MAX_CHUNK_BYTES, MAX_NAME_BYTES, MAX_SECTION_BYTES, PAGE, TAG_END, TAG_RAM, TAG_SECTION,
};

/// Bytes read ahead from the input.
const BUFFER_BYTES: usize = 256 << 10;
/// A section payload grows by at most this much before its bytes arrive.
const PAYLOAD_STEP: usize = 1 << 20;

/// What [`Reader::ram_and_end`] found in the whole stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Records before the end record (sections, config included, and RAM chunks).
    pub records: u64,
    /// Sections, config included.
    pub sections: u64,
    pub ram_chunks: u64,
    /// Guest bytes handed to the sink.
    pub ram_bytes: u64,
    /// The stream's length in bytes.
    pub stream_bytes: u64,
}

/// Reads one snapshot stream front to back: [`Reader::new`] (header and
/// config), [`Reader::sections`], [`Reader::ram_and_end`].
pub struct Reader<R: Read> {
    input: BufReader<R>,
    /// Bytes consumed so far (the offset of the next byte).
    pos: u64,
    /// CRC32C of the record being read, up to `pos`.
    crc: u32,
    version: u32,
    config: Vec<u8>,
    /// Complete records read, config included.
    records: u64,
    sections: u64,
    names: HashSet<String>,
    /// A tag that `sections` read but left for `ram_and_end`, with its offset.
    next: Option<(u8, u64)>,
    /// Reused buffer for RAM chunks.
    chunk: Vec<u8>,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header and the config section.
    pub fn new(input: R) -> Result<Self, FormatError> {
        let mut r = Reader {
            input: BufReader::with_capacity(BUFFER_BYTES, input),
            pos: 0,
            crc: 0,
            version: 0,
            config: Vec::new(),
            records: 0,
            sections: 0,
            names: HashSet::new(),
            next: None,
            chunk: Vec::new(),
        };
        r.read_magic()?;
        let version = r.read_u32(Rec::Header)?;
        r.check_crc(0, Rec::Header)?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        r.version = version;
        let (tag, off) = r.read_tag()?;
        let found = match tag {
            TAG_SECTION => None,
            TAG_RAM => Some("a RAM chunk".to_string()),
            TAG_END => Some("the end record".to_string()),
            tag => return Err(FormatError::UnknownTag { offset: off, tag }),
        };
        if let Some(found) = found {
            return Err(FormatError::ConfigNotFirst { offset: off, found });
        }
        let (_, config) = r.read_section(off, true)?;
        r.config = config;
        Ok(r)
    }

    /// The stream's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The payload of the "config" section.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Reads every following section up to the first RAM chunk or the end
    /// record; each is checked (CRC, name, size, uniqueness) before it is
    /// returned. A second call returns no sections. A payload grows as its
    /// bytes arrive (at most 64 MiB each), so what the sections hold never
    /// exceeds what the stream delivered.
    pub fn sections(&mut self) -> Result<Vec<(String, Vec<u8>)>, FormatError> {
        let mut out = Vec::new();
        if self.next.is_some() {
            return Ok(out);
        }
        loop {
            let (tag, off) = self.read_tag()?;
            match tag {
                TAG_SECTION => out.push(self.read_section(off, false)?),
                TAG_RAM | TAG_END => {
                    self.next = Some((tag, off));
                    return Ok(out);
                }
                tag => return Err(FormatError::UnknownTag { offset: off, tag }),
            }
        }
    }

    /// Reads the RAM chunks (there may be none) into `sink`, then the end
    /// record, checking its counts, and makes sure nothing follows it. After
    /// this the whole stream has been verified. Sections that
    /// [`Reader::sections`] did not read are verified and skipped.
    pub fn ram_and_end(mut self, sink: &mut dyn RamSink) -> Result<ReadStats, FormatError> {
        let mut chunks = 0u64;
        let mut ram_bytes = 0u64;
        loop {
            let (tag, off) = match self.next.take() {
                Some(next) => next,
                None => self.read_tag()?,
            };
            match tag {
                TAG_SECTION if chunks == 0 => {
                    let (name, payload) = self.read_section(off, false)?;
                    debug!(
                        "snapshot: skipped section {name:?} ({} bytes)",
                        payload.len()
                    );
                }
                TAG_SECTION => {
                    let name = self.read_name(off)?;
                    return Err(FormatError::SectionAfterRam { offset: off, name });
                }
                TAG_RAM => {
                    ram_bytes += self.read_chunk(off, sink)?;
                    chunks += 1;
                }
                TAG_END => {
                    self.read_end(off, ram_bytes)?;
                    break;
                }
                tag => return Err(FormatError::UnknownTag { offset: off, tag }),
            }
        }
        self.expect_eof()?;
        let stats = ReadStats {
            records: self.records,
            sections: self.sections,
            ram_chunks: chunks,
            ram_bytes,
            stream_bytes: self.pos,
        };
        debug!("snapshot: stream verified: {stats:?}");
        Ok(stats)
    }

    fn read_magic(&mut self) -> Result<(), FormatError> {
        let mut magic = [0u8; 8];
        let mut got = 0;
        while got < magic.len() {
            match self.input.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => return Err(self.io_error(Rec::Header, source)),
            }
        }
        self.crc = crc32c::crc32c(&magic[..got]);
        self.pos = got as u64;
        if magic[..got] != MAGIC[..got] {
            return Err(FormatError::NotASnapshot {
                found: format!("\"{}\"", magic[..got].escape_ascii()),
            });
        }
        if got < magic.len() {
            return Err(FormatError::Truncated {
                offset: self.pos,
                inside: if got == 0 {
                    "the header (the stream is empty)".into()
                } else {
                    Rec::Header.to_string()
                },
            });
        }
        Ok(())
    }

    /// Starts a record: reads its tag, returns it with its offset.
    fn read_tag(&mut self) -> Result<(u8, u64), FormatError> {
        self.crc = 0;
        let off = self.pos;
        let mut tag = [0u8];
        self.fill(&mut tag, Rec::Tag)?;
        Ok((tag[0], off))
    }

    /// Reads a section's name, its tag already read at `off`.
    fn read_name(&mut self, off: u64) -> Result<String, FormatError> {
        let len = self.read_u16(Rec::SectionHead)? as usize;
        if len == 0 || len > MAX_NAME_BYTES {
            return Err(FormatError::BadName {
                offset: off,
                name: String::new(),
                reason: format!("its length is {len} bytes"),
            });
        }
        let mut name = [0u8; MAX_NAME_BYTES];
        self.fill(&mut name[..len], Rec::SectionHead)?;
        let name = &name[..len];
        if let Some(reason) = name_problem(name) {
            return Err(FormatError::BadName {
                offset: off,
                name: String::from_utf8_lossy(name).into_owned(),
                reason: reason.to_string(),
            });
        }
        // Printable ASCII (checked above) is UTF-8.
        Ok(String::from_utf8_lossy(name).into_owned())
    }

    /// Reads a section, its tag already read at `off`.
    fn read_section(&mut self, off: u64, first: bool) -> Result<(String, Vec<u8>), FormatError> {
        let name = self.read_name(off)?;
        if first && name != CONFIG_SECTION {
            return Err(FormatError::ConfigNotFirst {
                offset: off,
                found: format!("section {name:?}"),
            });
        }
        let rec = Rec::Section(&name);
        let len = self.read_u64(rec)?;
        if len > MAX_SECTION_BYTES {
            return Err(FormatError::SectionTooLarge {
                offset: off,
                name,
                len,
                max: MAX_SECTION_BYTES,
            });
        }
        // Grow the payload as its bytes arrive, so that a truncated stream
        // costs no more memory than it has bytes.
        let len = len as usize;
        let mut payload = Vec::with_capacity(len.min(PAYLOAD_STEP));
        while payload.len() < len {
            let start = payload.len();
            let end = start + (len - start).min(PAYLOAD_STEP);
            if end > payload.capacity() {
                let want = (payload.capacity() * 2).clamp(end, len);
                payload.reserve_exact(want - start);
            }
            payload.resize(end, 0);
            self.fill(&mut payload[start..], rec)?;
        }
        self.check_crc(off, rec)?;
        if !self.names.insert(name.clone()) {
            return Err(FormatError::DuplicateSection { offset: off, name });
        }
        self.records += 1;
        self.sections += 1;
        Ok((name, payload))
    }

    /// Reads a RAM chunk into `sink`, its tag already read at `off`.
    /// Returns its length.
    fn read_chunk(&mut self, off: u64, sink: &mut dyn RamSink) -> Result<u64, FormatError> {
        let gpa = self.read_u64(Rec::RamHead)?;
        let len = self.read_u32(Rec::RamHead)?;
        let bad = |reason| FormatError::BadChunk {
            offset: off,
            gpa,
            len: len.into(),
            reason,
        };
        if !gpa.is_multiple_of(PAGE as u64) {
            return Err(bad("its guest address is not a multiple of 4096"));
        }
        if len == 0 {
            return Err(bad("it is empty"));
        }
        if !len.is_multiple_of(PAGE as u32) {
            return Err(bad("its length is not a multiple of 4096"));
        }
        if len > MAX_CHUNK_BYTES {
            return Err(bad("it is longer than 4 MiB"));
        }
        if gpa.checked_add(len.into()).is_none() {
            return Err(bad("it runs past the end of the address space"));
        }
        let rec = Rec::Ram(gpa);
        let mut data = std::mem::take(&mut self.chunk);
        data.resize(len as usize, 0);
        let result = self
            .fill(&mut data, rec)
            .and_then(|()| self.check_crc(off, rec))
            .and_then(|()| {
                sink.write(gpa, &data)
                    .map_err(|reason| FormatError::ChunkRejected {
                        offset: off,
                        gpa,
                        len: len.into(),
                        reason,
                    })
            });
        self.chunk = data;
        result?;
        self.records += 1;
        Ok(len.into())
    }

    /// Reads and checks the end record, its tag already read at `off`.
    fn read_end(&mut self, off: u64, ram_bytes: u64) -> Result<(), FormatError> {
        let records = self.read_u64(Rec::End)?;
        let recorded_ram = self.read_u64(Rec::End)?;
        self.check_crc(off, Rec::End)?;
        let mismatch = |what, recorded, actual| FormatError::EndMismatch {
            offset: off,
            what,
            recorded,
            actual,
        };
        if records != self.records {
            return Err(mismatch("records", records, self.records));
        }
        if recorded_ram != ram_bytes {
            return Err(mismatch("RAM bytes", recorded_ram, ram_bytes));
        }
        Ok(())
    }

    /// Refuses any byte after the end record.
    fn expect_eof(&mut self) -> Result<(), FormatError> {
        let mut byte = [0u8];
        loop {
            match self.input.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(FormatError::TrailingData { offset: self.pos }),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(FormatError::Io {
                        offset: self.pos,
                        doing: "checking that the stream ends after its end record".into(),
                        source,
                    })
                }
            }
        }
    }

    /// Reads the stored CRC that ends the record at `off` and compares it
    /// with the one computed over the record's bytes.
    fn check_crc(&mut self, off: u64, rec: Rec) -> Result<(), FormatError> {
        let computed = self.crc;
        let mut stored = [0u8; 4];
        self.fill(&mut stored, rec)?;
        let stored = u32::from_le_bytes(stored);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                offset: off,
                record: rec.to_string(),
                stored,
                computed,
            });
        }
        Ok(())
    }

    fn read_u16(&mut self, rec: Rec) -> Result<u16, FormatError> {
        let mut b = [0u8; 2];
        self.fill(&mut b, rec)?;
        Ok(u16::from_le_bytes(b))
    }

    fn read_u32(&mut self, rec: Rec) -> Result<u32, FormatError> {
        let mut b = [0u8; 4];
        self.fill(&mut b, rec)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(&mut self, rec: Rec) -> Result<u64, FormatError> {
        let mut b = [0u8; 8];
        self.fill(&mut b, rec)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Fills `buf` from the input as part of the current record, adding
    /// its bytes to the record's CRC. The end of the input is `Truncated`.
    fn fill(&mut self, buf: &mut [u8], rec: Rec) -> Result<(), FormatError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(FormatError::Truncated {
                        offset: self.pos,
                        inside: rec.to_string(),
                    })
                }
                Ok(n) => {
                    self.crc = crc32c::crc32c_append(self.crc, &buf[got..got + n]);
                    self.pos += n as u64;
                    got += n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => return Err(self.io_error(rec, source)),
            }
        }
        Ok(())
    }

    fn io_error(&self, rec: Rec, source: std::io::Error) -> FormatError {
        FormatError::Io {
            offset: self.pos,
            doing: format!("reading {rec}"),
            source,
        }
    }
}
