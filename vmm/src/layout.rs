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

/// The BIOS area (0xE0000-0xFFFFF), reserved in the e820 map: the ACPI
/// tables in its first 64 KiB, where Linux scans for the RSDP, and the
/// reset stub at the x86 reset vector at its top.
pub const BIOS_AREA_START: u64 = 0x000E_0000;
pub const BIOS_AREA_END: u64 = 0x0010_0000;
/// ACPI tables, RSDP first.
pub const ACPI_START: u64 = BIOS_AREA_START;
pub const ACPI_END: u64 = 0x000F_0000;
/// Where a CPU starts after reset (F000:FFF0). Linux jumps here as its last
/// way to reboot ("BIOS" reboot), which it reaches first on a
/// hardware-reduced ACPI platform without EFI (it prefers EFI reboot there,
/// and has no EFI).
pub const RESET_VECTOR: u64 = 0x000F_FFF0;
/// The VM Generation ID: one page right after the ACPI tables, in the
/// reserved BIOS area (so the guest never allocates it), of which the
/// 16-byte GUID takes the first bytes. The DSDT's `\_SB.VGEN.ADDR`
/// returns this address. It lies in boot RAM: a template clone writes its
/// own GUID into a private copy of the page, never into the template's file.
pub const VMGENID_ADDR: u64 = ACPI_END;
pub const VMGENID_SIZE: u64 = 0x1000;
const _: () = assert!(
    VMGENID_ADDR.is_multiple_of(0x1000)
        && VMGENID_ADDR >= ACPI_END
        && VMGENID_ADDR + VMGENID_SIZE <= RESET_VECTOR
        && VMGENID_ADDR + VMGENID_SIZE <= MIN_RAM,
    "the generation ID page lies in the BIOS area, clear of the ACPI tables and the reset stub"
);

/// virtio-mmio device windows, one page each, low in the MMIO hole (the
/// IOAPIC is at 0xFEC0_0000 and the LAPIC at 0xFEE0_0000).
pub const VIRTIO_MMIO_START: u64 = 0xD000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

/// COM1 and its ISA interrupt.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// First GSI for virtio-mmio devices; each device takes the next free one
/// up to the IOAPIC's last pin.
pub const VIRTIO_FIRST_IRQ: u32 = 5;
pub const IOAPIC_LAST_IRQ: u32 = 23;
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_LAST_IRQ - VIRTIO_FIRST_IRQ + 1) as usize;

/// ACPI hardware-reduced power management: the FADT's sleep control and
/// sleep status registers and its reset register, one byte each.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// The Generic Event Device's event register (one byte, read clears it)
/// and its interrupt: an ISA pin nothing else uses (COM2's).
pub const GED_PORT: u16 = 0x603;
pub const GED_GSI: u32 = 3;
/// Value written to the reset register to reboot.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP of S5 (soft off) in the DSDT's \_S5 package: the guest writes
/// `(S5_SLP_TYP << 2) | SLP_EN` to the sleep control register.
pub const S5_SLP_TYP: u8 = 5;
pub const SLP_EN: u8 = 1 << 5;

/// The guest-physical window of the `index`th virtio-mmio device and its GSI.
pub fn virtio_mmio_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_FIRST_IRQ + index as u32,
    )
}
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
