//! Puts the kernel, initrd and command line into guest RAM and writes what
//! the kernel reads at entry: the zero page (Linux 64-bit boot protocol,
//! bzImage) or the PVH start info (ELF vmlinux), each with the e820 map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::vstate::{BootEntry, EntryMode};
use devices::ram::GuestMemoryMmap;

/// Where the kernel goes: the conventional 1 MiB "high memory" start.
const HIMEM_START: u64 = 0x10_0000;
/// The end of conventional memory; above it the EBDA and BIOS area.
const EBDA_START: u64 = 0x9_fc00;
const ZERO_PAGE: u64 = 0x7000;
const PVH_START_INFO: u64 = 0x6000;
const PVH_MODLIST: u64 = 0x6040;
const PVH_MEMMAP: u64 = 0x6100;
const CMDLINE_ADDR: u64 = 0x2_0000;
const CMDLINE_MAX: usize = 0x1_0000;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// xloadflags: the kernel has the 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
const PVH_MAGIC: u32 = 0x336e_c578;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read --kernel {path}: {source}")]
    KernelFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--kernel {path}: {source}; give a Linux bzImage (e.g. /boot/vmlinuz-*) or an ELF vmlinux built with CONFIG_PVH")]
    Kernel {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("--kernel {path} is an ELF file without a PVH entry point (CONFIG_PVH=y); use the bzImage of the same kernel instead")]
    NoPvhEntry { path: String },
    #[error("--kernel {path} is a bzImage without a 64-bit entry point (boot protocol {version:#x}); use a 64-bit kernel")]
    Not64Bit { path: String, version: u16 },
    #[error("--cmdline is {len} bytes, and this kernel accepts at most {max}; shorten it")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("--cmdline contains a NUL byte; remove it")]
    CmdlineNul,
    #[error("cannot read --initrd {path}: {source}")]
    InitrdFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--initrd {path} ({size} bytes) does not fit in guest RAM below {limit:#x} above the kernel (which ends at {kernel_end:#x}); give the VM more --memory or use a smaller initrd")]
    InitrdTooBig {
        path: String,
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
    #[error("writing {what} into guest RAM at {addr:#x} failed: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// What the loader needs to know about the VM.
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Boot RAM size (the e820 map describes it around the MMIO hole).
    pub ram_size: u64,
    pub rsdp: GuestAddress,
}

/// The e820 map: low RAM, the reserved BIOS area holding the ACPI tables,
/// and RAM from 1 MiB on either side of the MMIO hole. virtio-mem regions
/// are not listed: the guest learns of them from the device.
pub fn e820_map(ram_size: u64) -> Vec<(u64, u64, u32)> {
    let mut m = vec![
        (0, EBDA_START, E820_RAM),
        (
            layout::BIOS_AREA_START,
            layout::BIOS_AREA_END - layout::BIOS_AREA_START,
            E820_RESERVED,
        ),
    ];
    for (base, size) in layout::boot_ram_ranges(ram_size) {
        let start = base.0.max(HIMEM_START);
        let end = base.0 + size;
        if end > start {
            m.push((start, end - start, E820_RAM));
        }
    }
    m
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    v: T,
) -> Result<(), LoadError> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(|source| LoadError::Write { what, addr, source })
}

fn write_bytes(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LoadError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LoadError::Write { what, addr, source })
}

fn is_elf(f: &mut File) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(0))?;
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(n == 4 && magic == *b"\x7fELF")
}

/// Real-mode code at the reset vector: write the reset value to the ACPI
/// reset register, so that a guest rebooting through its BIOS path ends
/// the VM like the other ways of rebooting do.
fn reset_stub() -> [u8; 8] {
    let [lo, hi] = layout::ACPI_RESET_PORT.to_le_bytes();
    [
        0xb0,
        layout::ACPI_RESET_VALUE, // mov al, value
        0xba,
        lo,
        hi,   // mov dx, port
        0xee, // out dx, al
        0xf4, // hlt
        0xf4, // hlt
    ]
}

/// Loads everything and returns where the boot vCPU starts.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<BootEntry, LoadError> {
    let kpath = spec.kernel.display().to_string();
    let file_err = |source| LoadError::KernelFile {
        path: kpath.clone(),
        source,
    };
    let mut kernel = File::open(spec.kernel).map_err(file_err)?;
    let elf = is_elf(&mut kernel).map_err(file_err)?;
    let kernel_err = |source| LoadError::Kernel {
        path: kpath.clone(),
        source,
    };
    let loaded: KernelLoaderResult = if elf {
        Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))).map_err(kernel_err)?
    } else {
        BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
            .map_err(kernel_err)?
    };

    let low_ram_end = spec.ram_size.min(layout::MMIO_HOLE_START);
    let (cmdline_max, initrd_max) = match &loaded.setup_header {
        Some(h) if h.version >= 0x206 => (h.cmdline_size as usize, u64::from(h.initrd_addr_max)),
        Some(h) if h.version >= 0x203 => (255, u64::from(h.initrd_addr_max)),
        Some(_) => (255, 0x37ff_ffff),
        None => (CMDLINE_MAX - 1, low_ram_end - 1),
    };
    let cmdline_max = cmdline_max.min(CMDLINE_MAX - 1);
    if spec.cmdline.len() > cmdline_max {
        return Err(LoadError::CmdlineTooLong {
            len: spec.cmdline.len(),
            max: cmdline_max,
        });
    }
    if spec.cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineNul);
    }
    write_bytes(mem, "the reset stub", layout::RESET_VECTOR, &reset_stub())?;
    let mut cmd = spec.cmdline.as_bytes().to_vec();
    cmd.push(0);
    write_bytes(mem, "the command line", CMDLINE_ADDR, &cmd)?;

    let initrd = match spec.initrd {
        Some(p) => Some(load_initrd(
            mem,
            p,
            (initrd_max + 1).min(low_ram_end),
            loaded.kernel_end,
        )?),
        None => None,
    };

    let e820 = e820_map(spec.ram_size);
    if elf {
        let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
            return Err(LoadError::NoPvhEntry { path: kpath });
        };
        write_pvh(mem, spec, &e820, initrd)?;
        Ok(BootEntry {
            mode: EntryMode::Protected32,
            entry: entry.0,
            boot_info: PVH_START_INFO,
        })
    } else {
        let hdr = loaded
            .setup_header
            .expect("the bzImage loader always returns a setup header");
        if hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::Not64Bit {
                path: kpath,
                version: hdr.version,
            });
        }
        let mut params = boot_params {
            hdr,
            ..Default::default()
        };
        params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
        params.hdr.boot_flag = KERNEL_BOOT_FLAG;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
        params.hdr.cmdline_size = cmd.len() as u32;
        if let Some((addr, size)) = initrd {
            params.hdr.ramdisk_image = addr as u32;
            params.hdr.ramdisk_size = size as u32;
        }
        params.acpi_rsdp_addr = spec.rsdp.0;
        for (i, (addr, size, type_)) in e820.iter().enumerate() {
            params.e820_table[i] = boot_e820_entry {
                addr: *addr,
                size: *size,
                r#type: *type_,
            };
        }
        params.e820_entries = e820.len() as u8;
        write(mem, "the zero page", ZERO_PAGE, params)?;
        Ok(BootEntry {
            mode: EntryMode::Long,
            entry: loaded.kernel_load.0 + 0x200,
            boot_info: ZERO_PAGE,
        })
    }
}

/// Copies the initrd to the highest page-aligned address below `limit`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    limit: u64,
    kernel_end: u64,
) -> Result<(u64, u64), LoadError> {
    let p = path.display().to_string();
    let file_err = |source| LoadError::InitrdFile {
        path: p.clone(),
        source,
    };
    let mut f = File::open(path).map_err(file_err)?;
    let size = f.metadata().map_err(file_err)?.len();
    let too_big = || LoadError::InitrdTooBig {
        path: p.clone(),
        size,
        limit,
        kernel_end,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end || size > u64::from(u32::MAX) {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| LoadError::InitrdFile {
            path: p.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    spec: &BootSpec,
    e820: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
) -> Result<(), LoadError> {
    for (i, (addr, size, type_)) in e820.iter().enumerate() {
        write(
            mem,
            "the PVH memory map",
            PVH_MEMMAP + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64,
            hvm_memmap_table_entry {
                addr: *addr,
                size: *size,
                type_: *type_,
                reserved: 0,
            },
        )?;
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: spec.rsdp.0,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        write(
            mem,
            "the PVH module list",
            PVH_MODLIST,
            hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            },
        )?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
    }
    write(mem, "the PVH start info", PVH_START_INFO, info)
}
