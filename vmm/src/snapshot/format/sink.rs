//! Where restored RAM goes.

use vm_memory::{
    Address, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

/// Where restored RAM goes. [`Reader::ram_and_end`](super::Reader::ram_and_end)
/// calls `write` once per chunk, after checking the chunk's CRC, its
/// alignment and its length. An `Err` stops the restore; its text says why
/// (it ends up in [`FormatError::ChunkRejected`](super::FormatError::ChunkRejected)).
pub trait RamSink {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), String>;
}

/// Restores chunks into guest memory (e.g. a `GuestMemoryMmap`), which must
/// start zeroed: zero pages are not in the stream. Every chunk must lie
/// inside one region of the memory.
pub struct GuestRamSink<'a, M: ?Sized>(pub &'a M);

/// How many regions an "outside guest RAM" message lists.
const REGIONS_LISTED: usize = 8;

impl<M: GuestMemory + ?Sized> RamSink for GuestRamSink<'_, M> {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), String> {
        let phys = self
            .0
            .physical_memory()
            .ok_or("the memory is behind an IOMMU; restore into the physical memory instead")?;
        let len = data.len() as u64;
        let region = gpa
            .checked_add(len.saturating_sub(1))
            .and_then(|last| {
                phys.find_region(GuestAddress(gpa))
                    .filter(|r| last <= r.last_addr().raw_value())
            })
            .ok_or_else(|| outside(phys, gpa, len))?;
        let offset = gpa - region.start_addr().raw_value();
        let slice = region
            .get_slice(MemoryRegionAddress(offset), data.len())
            .map_err(|e| format!("guest memory at {gpa:#x}: {e}"))?;
        slice.copy_from(data);
        Ok(())
    }
}

/// The message for a chunk that no region holds whole.
fn outside<P: GuestMemoryBackend + ?Sized>(phys: &P, gpa: u64, len: u64) -> String {
    let mut regions: Vec<String> = phys
        .iter()
        .take(REGIONS_LISTED)
        .map(|r| {
            let start = r.start_addr().raw_value();
            format!("{start:#x}..{:#x}", start + r.len())
        })
        .collect();
    if phys.num_regions() > REGIONS_LISTED {
        regions.push("...".into());
    }
    format!(
        "guest addresses {gpa:#x}..{:#x} are outside guest RAM (regions: {}); restore into a VM \
         with the same memory layout as the one saved",
        gpa.saturating_add(len),
        if regions.is_empty() {
            "none".to_string()
        } else {
            regions.join(", ")
        }
    )
}

/// Verifies a stream without restoring it: accepts every chunk and counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardSink {
    pub chunks: u64,
    pub bytes: u64,
}

impl RamSink for DiscardSink {
    fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), String> {
        self.chunks += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }
}
