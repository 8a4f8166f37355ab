//! ACPI tables describing the platform to the guest.
//!
//! The platform is hardware-reduced ACPI (no PM1 blocks, no SCI, no GPEs):
//! power-off and reboot go through the FADT's sleep control and reset
//! registers, devices are found in the DSDT, CPUs and the IOAPIC in the MADT.
//! Everything lands in the BIOS area so that a kernel that ignores the RSDP
//! address in boot_params still finds it by scanning.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use log::debug;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::{
    ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
    ACPI_START, COM1_IRQ, COM1_PORT, GED_GSI, GED_PORT, IOAPIC_LAST_IRQ, MAX_VIRTIO_DEVICES,
    S5_SLP_TYP, VIRTIO_MMIO_SIZE, VMGENID_ADDR,
};
use crate::platform::ged::{EVENT_GENERATION_ID, EVENT_POWER_BUTTON};

#[cfg(test)]
mod tests;

const OEM_ID: [u8; 6] = *b"TMPLVM";
const OEM_REVISION: u32 = 1;
/// Lets a guest tell this VMM from others without CPUID games.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"TMPLVMM\0";

/// Where KVM's in-kernel irqchip puts the interrupt controllers.
const LAPIC_ADDR: u32 = 0xFEE0_0000;
const IOAPIC_ADDR: u32 = 0xFEC0_0000;
const IOAPIC_ID: u8 = 0;
/// The in-kernel PIT drives this pin, so no device may share it.
const PIT_GSI: u32 = 0;

/// DSDT revision 2 and up makes AML integers 64 bits wide.
const DSDT_REVISION: u8 = 2;

/// RSDP and tables start on 16-byte boundaries, the alignment the BIOS-area
/// scan for "RSD PTR " uses.
const TABLE_ALIGN: u64 = 16;

/// IA-PC boot architecture flags (FADT offset 109). Leaving "legacy
/// devices" and "8042" clear tells Linux there is no ISA PnP BIOS and no
/// keyboard controller, so it does not probe ports nobody emulates.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// Nothing delivers MSIs (no PCI); Linux then does not try them.
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
/// Keeps Linux from registering rtc_cmos on ports 0x70/0x71.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// What the guest is told about the machine.
#[derive(Clone, Copy, Debug)]
pub struct AcpiPlatform<'a> {
    /// vCPUs, APIC ids 0..cpus.
    pub cpus: u8,
    /// (window base, gsi) of each virtio-mmio device.
    pub virtio_mmio: &'a [(u64, u32)],
    /// A VM Generation ID device (`\_SB.VGEN`), its GUID at VMGENID_ADDR.
    pub vmgenid: bool,
}

#[derive(Debug, Error)]
pub enum AcpiError {
    #[error(
        "ACPI tables: the platform has no vCPU, and the MADT needs at least one \
         enabled Local APIC; start the VM with --cpus 1 or more"
    )]
    NoCpus,
    #[error(
        "ACPI tables: {count} virtio-mmio devices, but the IOAPIC has free GSIs \
         for only {max}; configure fewer disks, network, balloon and virtio-mem devices"
    )]
    TooManyDevices { count: usize, max: usize },
    #[error(
        "ACPI tables: virtio-mmio device {index} at {base:#x}: {reason}; \
         take its window from layout::virtio_mmio_slot"
    )]
    BadWindow {
        index: usize,
        base: u64,
        reason: &'static str,
    },
    #[error(
        "ACPI tables: virtio-mmio device {index}: GSI {gsi} {reason}; \
         take its GSI from layout::virtio_mmio_slot"
    )]
    BadGsi {
        index: usize,
        gsi: u32,
        reason: &'static str,
    },
    #[error(
        "ACPI tables need {needed} bytes but the ACPI area {start:#x}..{end:#x} \
         holds {available}; describe fewer devices or enlarge the area in layout.rs"
    )]
    TooLarge {
        needed: u64,
        available: u64,
        start: u64,
        end: u64,
    },
    #[error(
        "ACPI tables: cannot write the {table} ({len} bytes) at guest address \
         {addr:#x}: {source}; guest RAM must cover {ACPI_START:#x}..{ACPI_END:#x}"
    )]
    Write {
        table: &'static str,
        addr: u64,
        len: usize,
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT into `mem` within
/// ACPI_START..ACPI_END; returns the RSDP's guest address.
pub fn write_acpi_tables<M: GuestMemory>(
    mem: &M,
    p: &AcpiPlatform,
) -> Result<GuestAddress, AcpiError> {
    write_tables_in(mem, p, ACPI_START, ACPI_END)
}

/// A table's bytes and where they go.
struct Placed {
    name: &'static str,
    addr: u64,
    bytes: Vec<u8>,
}

/// Hands out addresses one after another; the total is checked against
/// the area once everything is placed, so the error can say how much the
/// tables need.
struct Placer {
    next: u64,
    tables: Vec<Placed>,
}

impl Placer {
    fn place(&mut self, name: &'static str, bytes: Vec<u8>) -> u64 {
        let addr = self.next;
        self.next = (addr + bytes.len() as u64).next_multiple_of(TABLE_ALIGN);
        self.tables.push(Placed { name, addr, bytes });
        addr
    }
}

fn write_tables_in<M: GuestMemory>(
    mem: &M,
    p: &AcpiPlatform,
    start: u64,
    end: u64,
) -> Result<GuestAddress, AcpiError> {
    check_platform(p)?;

    // The RSDP takes the area's first bytes; every other table is placed
    // after the tables it points to, so their addresses are known.
    let rsdp_addr = start;
    let mut placer = Placer {
        next: (start + Rsdp::len() as u64).next_multiple_of(TABLE_ALIGN),
        tables: Vec::new(),
    };
    let dsdt_addr = placer.place("DSDT", dsdt(p));
    let fadt_addr = placer.place("FADT", fadt(dsdt_addr));
    let madt_addr = placer.place("MADT", madt(p.cpus));
    let xsdt_addr = placer.place("XSDT", xsdt(&[fadt_addr, madt_addr]));
    placer.tables.push(Placed {
        name: "RSDP",
        addr: rsdp_addr,
        bytes: to_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
    });

    let used_end = placer
        .tables
        .iter()
        .map(|t| t.addr + t.bytes.len() as u64)
        .max();
    let needed = used_end.unwrap_or(start) - start;
    if start + needed > end {
        return Err(AcpiError::TooLarge {
            needed,
            available: end.saturating_sub(start),
            start,
            end,
        });
    }

    for t in &placer.tables {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|source| AcpiError::Write {
                table: t.name,
                addr: t.addr,
                len: t.bytes.len(),
                source,
            })?;
        debug!("acpi: {} at {:#x}, {} bytes", t.name, t.addr, t.bytes.len());
    }
    Ok(GuestAddress(rsdp_addr))
}

/// Refuses what the tables cannot describe truthfully, before anything is
/// written: a guest that finds two devices on one pin or a window it cannot
/// map fails in ways far from the cause.
fn check_platform(p: &AcpiPlatform) -> Result<(), AcpiError> {
    if p.cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if p.virtio_mmio.len() > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyDevices {
            count: p.virtio_mmio.len(),
            max: MAX_VIRTIO_DEVICES,
        });
    }
    for (index, &(base, gsi)) in p.virtio_mmio.iter().enumerate() {
        let bad_window = |reason| AcpiError::BadWindow {
            index,
            base,
            reason,
        };
        if base % VIRTIO_MMIO_SIZE != 0 {
            return Err(bad_window("the window is not page aligned"));
        }
        // Memory32Fixed carries a 32-bit base.
        if base + VIRTIO_MMIO_SIZE > 1 << 32 {
            return Err(bad_window("the window ends above 4 GiB"));
        }
        let earlier = &p.virtio_mmio[..index];
        if earlier.iter().any(|&(b, _)| b == base) {
            return Err(bad_window("another device has the same window"));
        }
        let bad_gsi = |reason| AcpiError::BadGsi { index, gsi, reason };
        if gsi > IOAPIC_LAST_IRQ {
            return Err(bad_gsi("is past the IOAPIC's last pin"));
        }
        if gsi == PIT_GSI {
            return Err(bad_gsi("belongs to the PIT"));
        }
        if gsi == COM1_IRQ {
            return Err(bad_gsi("belongs to COM1"));
        }
        if gsi == GED_GSI {
            return Err(bad_gsi("belongs to the Generic Event Device"));
        }
        if earlier.iter().any(|&(_, g)| g == gsi) {
            return Err(bad_gsi("belongs to another virtio-mmio device"));
        }
    }
    Ok(())
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn table_id(kind: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"TMPL____";
    id[4..].copy_from_slice(kind);
    id
}

fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, table_id(b"FACP"), OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons, if any, are control-method devices: there
        // is no fixed-feature button behind them.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT
        | IAPC_MSI_NOT_SUPPORTED
        | IAPC_PCIE_ASPM_CONTROLS
        | IAPC_CMOS_RTC_NOT_PRESENT)
        .into();
    f.reset_reg = io_byte_register(ACPI_RESET_PORT);
    f.reset_value = ACPI_RESET_VALUE;
    f.sleep_control_reg = io_byte_register(ACPI_SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io_byte_register(ACPI_SLEEP_STATUS_PORT);
    f.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    to_bytes(&f.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        table_id(b"APIC"),
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(IOAPIC_ID, IOAPIC_ADDR, 0));
    to_bytes(&m)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut x = XSDT::new(OEM_ID, table_id(b"XSDT"), OEM_REVISION);
    for &e in entries {
        x.add_entry(e);
    }
    to_bytes(&x)
}

fn dsdt(p: &AcpiPlatform) -> Vec<u8> {
    let mut sb = Vec::new();
    com1_aml(&mut sb);
    ged_aml(p.vmgenid, &mut sb);
    if p.vmgenid {
        vmgenid_aml(&mut sb);
    }
    for (index, &(base, gsi)) in p.virtio_mmio.iter().enumerate() {
        virtio_mmio_aml(index, base, gsi, &mut sb);
    }
    let mut body = aml::Scope::raw("\\_SB_".into(), sb);
    // Package {SLP_TYPa, SLP_TYPb, reserved, reserved}: on hardware-reduced
    // platforms Linux writes SLP_TYPa to the sleep control register.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);

    let mut t = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        table_id(b"DSDT"),
        OEM_REVISION,
    );
    t.append_slice(&body);
    t.as_slice().to_vec()
}

fn com1_aml(sink: &mut Vec<u8>) {
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_DDN".into(), &"COM1"),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io, &irq])),
        ],
    )
    .to_aml_bytes(sink);
}

/// The Generic Event Device (ACPI0013) through which a hardware-reduced
/// platform raises events, and the power button it notifies. On the GED's
/// interrupt Linux runs `_EVT`, which reads (and so clears) the event
/// register and notifies the devices whose bits are set: the power button,
/// and with `vmgenid` the generation ID device.
fn ged_aml(vmgenid: bool, sink: &mut Vec<u8>) {
    let irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let port = u64::from(GED_PORT);
    let gevt = aml::Path::new("GEVT");
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let read = aml::Store::new(&aml::Local(0), &gevt);
    let power_bit = aml::And::new(&aml::ZERO, &aml::Local(0), &EVENT_POWER_BUTTON);
    let notify_power = aml::Notify::new(&pwrb, &0x80u8);
    let on_power = aml::If::new(&power_bit, vec![&notify_power]);
    let vgen = aml::Path::new("\\_SB_.VGEN");
    let genid_bit = aml::And::new(&aml::ZERO, &aml::Local(0), &EVENT_GENERATION_ID);
    let notify_genid = aml::Notify::new(&vgen, &0x80u8);
    let on_genid = aml::If::new(&genid_bit, vec![&notify_genid]);
    let mut evt: Vec<&dyn Aml> = vec![&read, &on_power];
    if vmgenid {
        evt.push(&on_genid);
    }
    aml::Device::new(
        "GED0".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq])),
            &aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemIO, &port, &1u8),
            &aml::Field::new(
                "GDST".into(),
                aml::FieldAccessType::Byte,
                aml::FieldLockRule::NoLock,
                aml::FieldUpdateRule::WriteAsZeroes,
                vec![aml::FieldEntry::Named(*b"GEVT", 8)],
            ),
            &aml::Method::new("_EVT".into(), 1, true, evt),
        ],
    )
    .to_aml_bytes(sink);
    aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(sink);
}

/// The VM Generation ID device as QEMU describes it (hw/acpi/vmgenid.c):
/// Linux's vmgenid driver binds to its `_CID` (ACPICA upper-cases it to
/// "VM_GEN_COUNTER"), Windows to `_CID`/`_DDN` "VM_Gen_Counter"; both call
/// `ADDR` for the GUID's guest-physical address, a Package of its low and
/// high 32 bits, and re-read the GUID on Notify(VGEN, 0x80).
fn vmgenid_aml(sink: &mut Vec<u8>) {
    let lo = (VMGENID_ADDR & 0xffff_ffff) as u32;
    let hi = (VMGENID_ADDR >> 32) as u32;
    let addr = aml::Package::new(vec![&lo, &hi]);
    let ret_addr = aml::Return::new(&addr);
    let ret_sta = aml::Return::new(&0xfu8);
    aml::Device::new(
        "VGEN".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMUVGID"),
            &aml::Name::new("_CID".into(), &"VM_Gen_Counter"),
            &aml::Name::new("_DDN".into(), &"VM_Gen_Counter"),
            &aml::Method::new("_STA".into(), 0, false, vec![&ret_sta]),
            &aml::Method::new("ADDR".into(), 0, false, vec![&ret_addr]),
        ],
    )
    .to_aml_bytes(sink);
}

/// The device Linux's virtio_mmio driver binds to through its ACPI match
/// table ("LNRO0005"), as on Firecracker and QEMU's microvm.
fn virtio_mmio_aml(index: usize, base: u64, gsi: u32, sink: &mut Vec<u8>) {
    // check_platform keeps the window below 4 GiB and index below 1000.
    let mem = aml::Memory32Fixed::new(true, base as u32, VIRTIO_MMIO_SIZE as u32);
    let irq = aml::Interrupt::new(true, true, false, false, gsi);
    let name = format!("V{index:03}");
    aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &(index as u32)),
            // DMA is cache coherent: guest RAM is ordinary host memory.
            &aml::Name::new("_CCA".into(), &aml::ONE),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem, &irq])),
        ],
    )
    .to_aml_bytes(sink);
}
