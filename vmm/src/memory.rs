//! Guest RAM for a `VmConfig`: boot RAM around the MMIO hole plus each
//! virtio-mem region, each with its own backing.

use devices::ram::{GuestRam, GuestRamError, RegionRole};

use crate::config::VmConfig;
use crate::layout;

pub fn build_guest_ram(cfg: &VmConfig) -> Result<GuestRam, GuestRamError> {
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &cfg.memory.backing,
        RegionRole::Boot,
        &layout::boot_ram_ranges(cfg.memory.size),
    )?;
    for (m, base) in cfg.virtio_mems.iter().zip(layout::virtio_mem_bases(cfg)) {
        b.add(
            &format!("--virtio-mem id={}", m.id),
            &m.backing,
            RegionRole::VirtioMem(m.id.clone()),
            &[(base, m.size)],
        )?;
    }
    b.build()
}
