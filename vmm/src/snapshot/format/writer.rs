//! Writing a snapshot stream: header, sections, RAM, end record.

use std::collections::HashSet;
use std::io::{BufWriter, Write};

use log::debug;
use vm_memory::{Address, GuestMemory, GuestMemoryBackend, GuestMemoryRegion};

use super::{
    is_zero, name_problem, FormatError, Rec, CONFIG_SECTION, FORMAT_VERSION, MAGIC,
    MAX_CHUNK_BYTES, MAX_SECTION_BYTES, PAGE, TAG_END, TAG_RAM, TAG_SECTION,
};

/// Bytes buffered before they reach the output.
const BUFFER_BYTES: usize = 1 << 20;

/// What [`Writer::ram`] scanned and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamStats {
    /// Pages looked at (all the memory's pages).
    pub pages_scanned: u64,
    /// Pages that were not all zero, and so were written.
    pub pages_written: u64,
    /// Guest bytes written (`pages_written` pages), not counting record framing.
    pub bytes_written: u64,
}

/// Writes one snapshot stream to `W`, front to back: [`Writer::new`] (header
/// and config), any [`Writer::section`]s, [`Writer::ram`], [`Writer::finish`].
/// After an I/O error the stream is incomplete and every later call fails.
pub struct Writer<W: Write> {
    out: BufWriter<W>,
    /// Bytes written so far (the offset of the next byte).
    pos: u64,
    /// CRC32C of the record being written.
    crc: u32,
    /// Records written, the end record not included.
    records: u64,
    ram_bytes: u64,
    ram_started: bool,
    names: HashSet<String>,
    failed: bool,
    /// Reused buffer for RAM chunks.
    scratch: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Writes the header and the "config" section.
    pub fn new(out: W, config: &[u8]) -> Result<Self, FormatError> {
        let mut w = Writer {
            out: BufWriter::with_capacity(BUFFER_BYTES, out),
            pos: 0,
            crc: 0,
            records: 0,
            ram_bytes: 0,
            ram_started: false,
            names: HashSet::new(),
            failed: false,
            scratch: Vec::new(),
        };
        w.crc = 0;
        w.put(&MAGIC, Rec::Header)?;
        w.put(&FORMAT_VERSION.to_le_bytes(), Rec::Header)?;
        w.put_crc(Rec::Header)?;
        w.write_section(CONFIG_SECTION, config)?;
        Ok(w)
    }

    /// Writes a section. Names are unique, 1 to 64 printable ASCII
    /// characters; "config" is taken by [`Writer::new`]. Sections must come
    /// before [`Writer::ram`].
    pub fn section(&mut self, name: &str, payload: &[u8]) -> Result<(), FormatError> {
        self.usable()?;
        if self.ram_started {
            return Err(FormatError::SectionAfterRam {
                offset: self.pos,
                name: name.to_string(),
            });
        }
        self.write_section(name, payload)
    }

    /// Writes every non-zero page of `mem`'s regions, region by region, as
    /// RAM chunks of up to 4 MiB of consecutive non-zero pages. Guest memory
    /// is read through vm-memory's volatile slices; the vCPUs and devices
    /// must not be writing it meanwhile. No section may follow.
    pub fn ram<M: GuestMemory>(&mut self, mem: &M) -> Result<RamStats, FormatError> {
        self.ram_filtered(mem, |_| true)
    }

    /// As [`Writer::ram`], for the regions whose start address `include`
    /// accepts (x-ignore-shared leaves a shared file-backed region out).
    pub fn ram_filtered<M: GuestMemory>(
        &mut self,
        mem: &M,
        include: impl Fn(u64) -> bool,
    ) -> Result<RamStats, FormatError> {
        self.usable()?;
        self.ram_started = true;
        let phys = mem.physical_memory().ok_or_else(|| FormatError::Memory {
            gpa: 0,
            reason: "the memory is behind an IOMMU; save the physical memory instead".into(),
        })?;
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(MAX_CHUNK_BYTES as usize, 0);
        let mut stats = RamStats::default();
        let mut result = Ok(());
        for region in phys.iter() {
            if !include(region.start_addr().0) {
                continue;
            }
            result = self.ram_region(region, &mut buf, &mut stats);
            if result.is_err() {
                break;
            }
        }
        self.scratch = buf;
        result?;
        stats.bytes_written = stats.pages_written * PAGE as u64;
        debug!(
            "snapshot: RAM: {} of {} pages written ({} bytes), stream at byte {}",
            stats.pages_written, stats.pages_scanned, stats.bytes_written, self.pos
        );
        Ok(stats)
    }

    /// Writes the end record, flushes, returns the output and the total
    /// bytes written.
    pub fn finish(mut self) -> Result<(W, u64), FormatError> {
        self.usable()?;
        self.crc = 0;
        self.put(&[TAG_END], Rec::End)?;
        self.put(&self.records.to_le_bytes(), Rec::End)?;
        self.put(&self.ram_bytes.to_le_bytes(), Rec::End)?;
        self.put_crc(Rec::End)?;
        let pos = self.pos;
        self.out.flush().map_err(|source| FormatError::Io {
            offset: pos,
            doing: "flushing the stream".into(),
            source,
        })?;
        let out = self.out.into_inner().map_err(|e| FormatError::Io {
            offset: pos,
            doing: "flushing the stream".into(),
            source: e.into_error(),
        })?;
        debug!("snapshot: {} records, {pos} bytes written", self.records);
        Ok((out, pos))
    }

    /// Bytes written so far, buffered ones included.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn usable(&self) -> Result<(), FormatError> {
        if self.failed {
            Err(FormatError::WriterFailed { offset: self.pos })
        } else {
            Ok(())
        }
    }

    fn write_section(&mut self, name: &str, payload: &[u8]) -> Result<(), FormatError> {
        if let Some(reason) = name_problem(name.as_bytes()) {
            return Err(FormatError::BadName {
                offset: self.pos,
                name: name.to_string(),
                reason: reason.to_string(),
            });
        }
        if payload.len() as u64 > MAX_SECTION_BYTES {
            return Err(FormatError::SectionTooLarge {
                offset: self.pos,
                name: name.to_string(),
                len: payload.len() as u64,
                max: MAX_SECTION_BYTES,
            });
        }
        if self.names.contains(name) {
            return Err(FormatError::DuplicateSection {
                offset: self.pos,
                name: name.to_string(),
            });
        }
        let rec = Rec::Section(name);
        self.crc = 0;
        self.put(&[TAG_SECTION], rec)?;
        // The name is at most 64 bytes (checked above).
        self.put(&(name.len() as u16).to_le_bytes(), rec)?;
        self.put(name.as_bytes(), rec)?;
        self.put(&(payload.len() as u64).to_le_bytes(), rec)?;
        self.put(payload, rec)?;
        self.put_crc(rec)?;
        self.names.insert(name.to_string());
        self.records += 1;
        Ok(())
    }

    fn ram_region<R: GuestMemoryRegion>(
        &mut self,
        region: &R,
        buf: &mut [u8],
        stats: &mut RamStats,
    ) -> Result<(), FormatError> {
        let start = region.start_addr().raw_value();
        let len = region.len();
        if !start.is_multiple_of(PAGE as u64) || !len.is_multiple_of(PAGE as u64) {
            return Err(FormatError::Memory {
                gpa: start,
                reason: format!("the region of {len:#x} bytes is not made of whole 4 KiB pages"),
            });
        }
        let memory_error = |gpa: u64, e: &dyn std::fmt::Display| FormatError::Memory {
            gpa,
            reason: e.to_string(),
        };
        let slice = region
            .as_volatile_slice()
            .map_err(|e| memory_error(start, &e))?;
        let mut run_gpa = start;
        let mut run_len = 0usize;
        for page_off in (0..slice.len()).step_by(PAGE) {
            let page = slice
                .subslice(page_off, PAGE)
                .map_err(|e| memory_error(start + page_off as u64, &e))?;
            let dst = &mut buf[run_len..run_len + PAGE];
            page.copy_to(dst);
            stats.pages_scanned += 1;
            if is_zero(dst) {
                if run_len > 0 {
                    self.write_chunk(run_gpa, &buf[..run_len])?;
                    run_len = 0;
                }
                continue;
            }
            if run_len == 0 {
                run_gpa = start + page_off as u64;
            }
            run_len += PAGE;
            stats.pages_written += 1;
            if run_len == buf.len() {
                self.write_chunk(run_gpa, &buf[..run_len])?;
                run_len = 0;
            }
        }
        if run_len > 0 {
            self.write_chunk(run_gpa, &buf[..run_len])?;
        }
        Ok(())
    }

    fn write_chunk(&mut self, gpa: u64, data: &[u8]) -> Result<(), FormatError> {
        let rec = Rec::Ram(gpa);
        self.crc = 0;
        self.put(&[TAG_RAM], rec)?;
        self.put(&gpa.to_le_bytes(), rec)?;
        // At most MAX_CHUNK_BYTES: the scratch buffer's size.
        self.put(&(data.len() as u32).to_le_bytes(), rec)?;
        self.put(data, rec)?;
        self.put_crc(rec)?;
        self.records += 1;
        self.ram_bytes += data.len() as u64;
        Ok(())
    }

    /// Writes `bytes` as part of the current record.
    fn put(&mut self, bytes: &[u8], rec: Rec) -> Result<(), FormatError> {
        if let Err(source) = self.out.write_all(bytes) {
            self.failed = true;
            return Err(FormatError::Io {
                offset: self.pos,
                doing: format!("writing {rec}"),
                source,
            });
        }
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Ends the current record with its CRC.
    fn put_crc(&mut self, rec: Rec) -> Result<(), FormatError> {
        let crc = self.crc;
        self.put(&crc.to_le_bytes(), rec)
    }
}
