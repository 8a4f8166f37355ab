//! The guest-physical address map (x86-64).
//!
//! RAM starts at 0 and stops below the 32-bit MMIO hole (3 GiB to 4 GiB:
//! LAPIC, IOAPIC, virtio-mmio devices); the rest continues at 4 GiB.
//! virtio-mem regions follow the end of RAM, each 1 GiB aligned so that
//! Linux can online their memory blocks.

use vm_memory::GuestAddress;

use crate::config::VmConfig;

pub const MMIO_HOLE_START: u64 = 0xC000_0000;
pub const MMIO_HOLE_END: u64 = 1 << 32;
pub const MIN_RAM: u64 = 16 << 20;
pub const MAX_RAM: u64 = 1 << 40;
const VIRTIO_MEM_ALIGN: u64 = 1 << 30;
/// Highest guest-physical address the layout hands out (46-bit address space).
const MAX_GPA: u64 = 1 << 46;

/// Boot RAM ranges for `size` bytes of RAM.
pub fn boot_ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

/// First address after boot RAM.
pub fn ram_end(size: u64) -> u64 {
    boot_ram_ranges(size).last().map_or(0, |(b, s)| b.0 + s)
}

/// Base address of each virtio-mem region, in configuration order.
pub fn virtio_mem_bases(cfg: &VmConfig) -> Vec<GuestAddress> {
    let mut next = ram_end(cfg.memory.size).max(MMIO_HOLE_END);
    cfg.virtio_mems
        .iter()
        .map(|m| {
            let base = next.div_ceil(VIRTIO_MEM_ALIGN) * VIRTIO_MEM_ALIGN;
            next = base.saturating_add(m.size);
            GuestAddress(base)
        })
        .collect()
}

/// The regions fit in the guest-physical address space.
pub fn check_fits(cfg: &VmConfig) -> Result<(), String> {
    for (m, base) in cfg.virtio_mems.iter().zip(virtio_mem_bases(cfg)) {
        if base.0.saturating_add(m.size) > MAX_GPA {
            return Err(format!(
                "virtio-mem '{}' would end past the {} TiB guest address space; use a smaller size",
                m.id,
                MAX_GPA >> 40
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(boot_ram_ranges(1 << 30), vec![(GuestAddress(0), 1 << 30)]);
        let r = boot_ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(1 << 32), (4 << 30) - MMIO_HOLE_START));
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }
}
