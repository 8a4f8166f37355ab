use std::path::PathBuf;
use std::process::Command;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::layout::{virtio_mmio_slot, COM1_IRQ, SLP_EN};

type Mem = GuestMemoryMmap<()>;

fn guest_mem(size: usize) -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

fn slots(n: usize) -> Vec<(u64, u32)> {
    (0..n).map(virtio_mmio_slot).collect()
}

fn read(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn assert_in_area(what: &str, addr: u64, len: usize) {
    assert!(
        addr >= ACPI_START && addr + len as u64 <= ACPI_END,
        "{what} at {addr:#x}+{len:#x} leaves the ACPI area"
    );
}

/// A whole system description table, after checking its signature, that it
/// lies in the ACPI area and that its checksum holds.
fn table(mem: &Mem, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let header = read(mem, addr, 36);
    assert_eq!(
        &header[0..4],
        signature,
        "table at {addr:#x} has signature {:?}",
        String::from_utf8_lossy(&header[0..4])
    );
    let len = u32_at(&header, 4) as usize;
    assert_in_area(&String::from_utf8_lossy(signature), addr, len);
    let t = read(mem, addr, len);
    assert_eq!(
        sum(&t),
        0,
        "{} checksum",
        String::from_utf8_lossy(signature)
    );
    assert_eq!(&t[10..16], b"TMPLVM");
    t
}

/// Every table the guest reaches from the RSDP, checked on the way.
struct Tables {
    rsdp: Vec<u8>,
    xsdt: Vec<u8>,
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

fn write_and_read_back(p: &AcpiPlatform) -> Tables {
    let mem = guest_mem(64 << 20);
    let rsdp_addr = write_acpi_tables(&mem, p).unwrap();
    assert_eq!(rsdp_addr, GuestAddress(ACPI_START));

    let rsdp = read(&mem, rsdp_addr.0, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP checksum (ACPI 1.0 part)");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");

    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    assert_eq!(xsdt.len(), 36 + 2 * 8, "XSDT lists FADT and MADT only");
    let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
    let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
    let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
    Tables {
        rsdp,
        xsdt,
        fadt,
        madt,
        dsdt,
    }
}

#[test]
fn rsdp_xsdt_fadt_madt_dsdt_chain_with_valid_checksums() {
    let devs = slots(3);
    let t = write_and_read_back(&AcpiPlatform {
        cpus: 4,
        virtio_mmio: &devs,
        vmgenid: false,
    });
    assert_eq!(&t.rsdp[9..15], b"TMPLVM");
    assert_eq!(t.xsdt[8], 1, "XSDT revision");
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let t = write_and_read_back(&AcpiPlatform {
        cpus: 1,
        virtio_mmio: &[],
        vmgenid: false,
    });
    let f = &t.fadt;
    assert_eq!(f.len(), 276, "FADT length of ACPI 6.x");
    assert_eq!(f[8], 6, "FADT major revision");
    assert_eq!(f[131], 5, "FADT minor revision");
    assert_eq!(u32_at(f, 36), 0, "no FACS on a hardware-reduced platform");
    assert_eq!(u32_at(f, 40), 0, "32-bit DSDT left for X_DSDT");

    let flags = u32_at(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");

    let iapc = u16_at(f, 109);
    assert_eq!(iapc & 0b11, 0, "no legacy devices, no 8042");
    assert_ne!(iapc & (1 << 2), 0, "VGA not present");
    assert_ne!(iapc & (1 << 5), 0, "CMOS RTC not present");

    // GAS: space id, bit width, bit offset, access size, address.
    let gas = |off: usize| {
        (
            f[off],
            f[off + 1],
            f[off + 2],
            f[off + 3],
            u64_at(f, off + 4),
        )
    };
    let io_byte = |port: u16| (1, 8, 0, 1, u64::from(port));
    assert_eq!(gas(116), io_byte(ACPI_RESET_PORT), "RESET_REG");
    assert_eq!(f[128], ACPI_RESET_VALUE, "RESET_VALUE");
    assert_eq!(
        gas(244),
        io_byte(ACPI_SLEEP_CONTROL_PORT),
        "SLEEP_CONTROL_REG"
    );
    assert_eq!(
        gas(256),
        io_byte(ACPI_SLEEP_STATUS_PORT),
        "SLEEP_STATUS_REG"
    );
    assert_eq!(&f[268..276], b"TMPLVMM\0", "hypervisor vendor identity");
}

/// (APIC id, flags) of each Local APIC entry and (id, address, GSI base) of
/// each IOAPIC entry; fails on any other entry type.
type MadtEntries = (Vec<(u8, u32)>, Vec<(u8, u32, u32)>);

fn madt_entries(m: &[u8]) -> MadtEntries {
    let mut lapics = Vec::new();
    let mut ioapics = Vec::new();
    let mut off = 44;
    while off < m.len() {
        let (kind, len) = (m[off], m[off + 1] as usize);
        match kind {
            0 => {
                assert_eq!(len, 8);
                assert_eq!(m[off + 2], m[off + 3], "processor UID equals APIC id");
                lapics.push((m[off + 3], u32_at(m, off + 4)));
            }
            1 => {
                assert_eq!(len, 12);
                ioapics.push((m[off + 2], u32_at(m, off + 4), u32_at(m, off + 8)));
            }
            _ => panic!("unexpected MADT entry type {kind}"),
        }
        off += len;
    }
    assert_eq!(off, m.len(), "MADT entries end with the table");
    (lapics, ioapics)
}

#[test]
fn madt_has_one_enabled_lapic_per_cpu_and_the_ioapic() {
    for cpus in [1u8, 2, 7, 255] {
        let t = write_and_read_back(&AcpiPlatform {
            cpus,
            virtio_mmio: &[],
            vmgenid: false,
        });
        assert_eq!(u32_at(&t.madt, 36), 0xFEE0_0000, "local APIC address");
        let (lapics, ioapics) = madt_entries(&t.madt);
        let want: Vec<(u8, u32)> = (0..cpus).map(|id| (id, 1)).collect();
        assert_eq!(lapics, want, "{cpus} cpus");
        assert_eq!(ioapics, vec![(0, 0xFEC0_0000, 0)]);
    }
}

#[test]
fn largest_platform_fits_in_the_area() {
    let devs = slots(MAX_VIRTIO_DEVICES);
    let t = write_and_read_back(&AcpiPlatform {
        cpus: u8::MAX,
        virtio_mmio: &devs,
        vmgenid: true,
    });
    assert!(t.dsdt.len() > 36 + MAX_VIRTIO_DEVICES * 32);
}

fn write_err(p: &AcpiPlatform) -> AcpiError {
    let mem = guest_mem(64 << 20);
    let e = write_acpi_tables(&mem, p).unwrap_err();
    assert_eq!(
        read(&mem, ACPI_START, (ACPI_END - ACPI_START) as usize),
        vec![0; (ACPI_END - ACPI_START) as usize],
        "a refused platform leaves the area untouched"
    );
    e
}

#[test]
fn refuses_platforms_it_cannot_describe() {
    let e = write_err(&AcpiPlatform {
        cpus: 0,
        virtio_mmio: &[],
        vmgenid: false,
    });
    assert!(matches!(e, AcpiError::NoCpus), "{e}");

    let devs = slots(MAX_VIRTIO_DEVICES + 1);
    let e = write_err(&AcpiPlatform {
        cpus: 1,
        virtio_mmio: &devs,
        vmgenid: false,
    });
    assert!(
        matches!(e, AcpiError::TooManyDevices { count, max } if count == MAX_VIRTIO_DEVICES + 1 && max == MAX_VIRTIO_DEVICES),
        "{e}"
    );
    assert!(e.to_string().contains("configure fewer"), "{e}");

    let (base, gsi) = virtio_mmio_slot(0);
    let cases: [(&[(u64, u32)], &str); 7] = [
        (&[(base, IOAPIC_LAST_IRQ + 1)], "past the IOAPIC"),
        (&[(base, COM1_IRQ)], "COM1"),
        (&[(base, 0)], "PIT"),
        (&[(base, gsi), (base + 0x1000, gsi)], "another virtio-mmio"),
        (&[(base, gsi), (base, gsi + 1)], "same window"),
        (&[(base + 8, gsi)], "page aligned"),
        (&[(1 << 32, gsi)], "above 4 GiB"),
    ];
    for (devs, why) in cases {
        let e = write_err(&AcpiPlatform {
            cpus: 1,
            virtio_mmio: devs,
            vmgenid: false,
        });
        assert!(
            matches!(e, AcpiError::BadGsi { .. } | AcpiError::BadWindow { .. }),
            "{devs:x?}: {e}"
        );
        assert!(e.to_string().contains(why), "{devs:x?}: {e}");
        assert!(e.to_string().contains("virtio_mmio_slot"), "{e}");
    }
}

#[test]
fn tables_larger_than_the_area_are_refused() {
    let mem = guest_mem(64 << 20);
    let devs = slots(4);
    let p = AcpiPlatform {
        cpus: 8,
        virtio_mmio: &devs,
        vmgenid: false,
    };
    let end = ACPI_START + 512;
    let e = write_tables_in(&mem, &p, ACPI_START, end).unwrap_err();
    match e {
        AcpiError::TooLarge {
            needed, available, ..
        } => {
            assert_eq!(available, 512);
            assert!(needed > 512, "{needed}");
        }
        ref other => panic!("expected TooLarge, got {other}"),
    }
    assert!(e.to_string().contains("enlarge the area"), "{e}");
    assert_eq!(read(&mem, ACPI_START, 512), vec![0; 512]);
}

#[test]
fn guest_ram_without_the_bios_area_is_an_error() {
    // RAM ends below the ACPI area: the first table written misses it.
    let mem = guest_mem(0x8_0000);
    let e = write_acpi_tables(
        &mem,
        &AcpiPlatform {
            cpus: 1,
            virtio_mmio: &[],
            vmgenid: false,
        },
    )
    .unwrap_err();
    assert!(matches!(e, AcpiError::Write { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("guest RAM must cover 0xe0000..0xf0000"),
        "{e}"
    );
}

/// A scratch directory for iasl, which writes its output next to its input.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-acpi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs iasl in `dir` and returns its log, failing the test if it fails.
fn iasl(dir: &Scratch, args: &[&str]) -> String {
    let out = match Command::new("iasl").args(args).current_dir(&dir.0).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "iasl (ACPICA's compiler/disassembler) not found: run scripts/setup.sh, \
             which installs the acpica-tools package"
        ),
        Err(e) => panic!("cannot run iasl: {e}"),
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl {args:?} failed:\n{log}");
    log
}

/// Disassembles `table` with ACPICA's iasl and returns the listing.
fn iasl_disassemble(name: &str, table: &[u8]) -> String {
    let dir = Scratch::new(name);
    let input = format!("{name}.dat");
    std::fs::write(dir.0.join(&input), table).unwrap();
    let log = iasl(&dir, &["-d", &input]);
    std::fs::read_to_string(dir.0.join(format!("{name}.dsl")))
        .unwrap_or_else(|e| panic!("iasl wrote no {name}.dsl ({e}):\n{log}"))
}

/// Compiles ASL with iasl, which checks what its disassembler is lenient
/// about (names, scopes, resource descriptors); returns the compiler's log.
fn iasl_compile(name: &str, asl: &str) -> String {
    let dir = Scratch::new(name);
    let input = format!("{name}.dsl");
    std::fs::write(dir.0.join(&input), asl).unwrap();
    iasl(&dir, &[&input])
}

/// An iasl listing without its `//` comments, each run of white space
/// made one blank, so that multi-line constructs match one string.
fn squash(dsl: &str) -> String {
    let code = dsl.lines().map(|l| l.split("//").next().unwrap_or(""));
    code.flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text of `Device (name) { ... }` in an iasl listing.
fn device_block<'a>(dsl: &'a str, name: &str) -> &'a str {
    let start = dsl
        .find(&format!("Device ({name})"))
        .unwrap_or_else(|| panic!("no Device ({name}) in:\n{dsl}"));
    let rest = &dsl[start..];
    let end = rest[1..].find("Device (").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn iasl_decodes_the_dsdt_devices_and_s5() {
    let devs = slots(3);
    let t = write_and_read_back(&AcpiPlatform {
        cpus: 2,
        virtio_mmio: &devs,
        vmgenid: false,
    });
    let dsl = iasl_disassemble("dsdt", &t.dsdt);
    let squashed = squash(&dsl);

    assert!(dsl.contains("Scope (\\_SB)"), "{dsl}");
    let com1 = device_block(&dsl, "COM1");
    for want in [
        "EisaId (\"PNP0501\")",
        "IO (Decode16",
        "0x03F8,",
        "0x08,",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000004,",
    ] {
        assert!(com1.contains(want), "COM1 lacks {want:?}:\n{com1}");
    }

    for (i, &(base, gsi)) in devs.iter().enumerate() {
        let dev = device_block(&dsl, &format!("V{i:03}"));
        let base = format!("0x{base:08X},");
        let gsi = format!("0x{gsi:08X},");
        for want in [
            "Name (_HID, \"LNRO0005\")",
            "Memory32Fixed (ReadWrite,",
            base.as_str(),
            "0x00001000,",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
            gsi.as_str(),
        ] {
            assert!(dev.contains(want), "V{i:03} lacks {want:?}:\n{dev}");
        }
        let uid = match i {
            0 => "Name (_UID, Zero)".to_string(),
            1 => "Name (_UID, One)".to_string(),
            _ => format!("Name (_UID, 0x{i:02X})"),
        };
        assert!(dev.contains(&uid), "V{i:03} lacks {uid:?}:\n{dev}");
    }
    assert!(!dsl.contains("Device (V003)"), "{dsl}");

    let ged = device_block(&dsl, "GED0");
    for want in [
        "Name (_HID, \"ACPI0013\"",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000003,",
        "OperationRegion (GDST, SystemIO, 0x0603, One)",
        "GEVT,   8",
        "Method (_EVT, 1, Serialized)",
        "Local0 = GEVT",
        "Notify (\\_SB.PWRB, 0x80)",
    ] {
        assert!(ged.contains(want), "GED0 lacks {want:?}:\n{ged}");
    }
    let pwrb = device_block(&dsl, "PWRB");
    assert!(pwrb.contains("EisaId (\"PNP0C0C\")"), "{pwrb}");

    let s5 = format!("Name (_S5, Package (0x04) {{ 0x{S5_SLP_TYP:02X}, Zero, Zero, Zero }})");
    assert!(squashed.contains(&s5), "no {s5:?} in:\n{dsl}");
    // What Linux then writes to the sleep control register to power off.
    assert_eq!((S5_SLP_TYP << 2) | SLP_EN, 0x34);

    let log = iasl_compile("dsdt-again", &dsl);
    assert!(log.contains("0 Errors, 0 Warnings"), "{log}");
}

#[test]
fn iasl_decodes_the_generation_id_device_and_its_ged_event() {
    let t = write_and_read_back(&AcpiPlatform {
        cpus: 1,
        virtio_mmio: &[],
        vmgenid: true,
    });
    let dsl = iasl_disassemble("dsdt-vmgenid", &t.dsdt);
    let vgen = squash(device_block(&dsl, "VGEN"));
    let addr = format!(
        "Method (ADDR, 0, NotSerialized) {{ Return (Package (0x02) {{ 0x{:08X}, Zero }}) }}",
        VMGENID_ADDR
    );
    for want in [
        "Name (_HID, \"QEMUVGID\")",
        "Name (_CID, \"VM_Gen_Counter\")",
        "Name (_DDN, \"VM_Gen_Counter\")",
        "Method (_STA, 0, NotSerialized) { Return (0x0F) }",
        addr.as_str(),
    ] {
        assert!(vgen.contains(want), "VGEN lacks {want:?}:\n{vgen}");
    }
    assert!(dsl.contains("Scope (\\_SB)"), "{dsl}");
    let ged = squash(device_block(&dsl, "GED0"));
    for want in [
        "If ((Local0 & One)) { Notify (\\_SB.PWRB, 0x80) }",
        "If ((Local0 & 0x02)) { Notify (\\_SB.VGEN, 0x80) }",
    ] {
        assert!(ged.contains(want), "GED0 lacks {want:?}:\n{ged}");
    }
    assert_eq!(crate::platform::ged::EVENT_GENERATION_ID, 0x02);
    // iasl's compiler wants a _HID string of a vendor prefix and four hex
    // digits and refuses QEMU's "QEMUVGID" (which QEMU's own DSDT carries,
    // and which Linux and Windows ignore: they match the _CID); the rest
    // of the listing must compile cleanly.
    let dsl = dsl.replace("\"QEMUVGID\"", "\"QEMU0002\"");
    let log = iasl_compile("dsdt-vmgenid-again", &dsl);
    assert!(log.contains("0 Errors, 0 Warnings"), "{log}");
}

#[test]
fn without_the_device_the_dsdt_has_no_vgen_and_ged_never_notifies_it() {
    let t = write_and_read_back(&AcpiPlatform {
        cpus: 1,
        virtio_mmio: &[],
        vmgenid: false,
    });
    let dsl = iasl_disassemble("dsdt-no-vmgenid", &t.dsdt);
    assert!(!dsl.contains("VGEN"), "{dsl}");
    assert!(!dsl.contains("VM_Gen_Counter"), "{dsl}");
    assert!(dsl.contains("Notify (\\_SB.PWRB, 0x80)"), "{dsl}");
    // The raw AML too: no name segment VGEN anywhere.
    assert!(!t.dsdt.windows(4).any(|w| w == b"VGEN"));
    let with = write_and_read_back(&AcpiPlatform {
        cpus: 1,
        virtio_mmio: &[],
        vmgenid: true,
    });
    assert!(with.dsdt.windows(4).any(|w| w == b"VGEN"));
}

#[test]
fn iasl_decodes_the_fadt_and_madt() {
    let t = write_and_read_back(&AcpiPlatform {
        cpus: 3,
        virtio_mmio: &[],
        vmgenid: false,
    });
    let fadt = iasl_disassemble("facp", &t.fadt);
    for want in [
        "Hardware Reduced (V5) : 1",
        "Reset Register Supported (V2) : 1",
        "VGA Not Present (V4) : 1",
        "CMOS RTC Not Present (V5) : 1",
        "Reset Register : [Generic Address Structure] [074h 0116 1] Space ID : 01 [SystemIO]",
        "[078h 0120 8] Address : 0000000000000602",
        "[0F8h 0248 8] Address : 0000000000000600",
        "[104h 0260 8] Address : 0000000000000601",
    ] {
        assert!(squash(&fadt).contains(want), "FADT lacks {want:?}:\n{fadt}");
    }
    assert!(!fadt.contains("Invalid"), "{fadt}");

    let madt = iasl_disassemble("apic", &t.madt);
    assert_eq!(
        madt.matches("Subtable Type : 00 [Processor Local APIC]")
            .count(),
        3,
        "{madt}"
    );
    assert!(madt.contains("Subtable Type : 01 [I/O APIC]"), "{madt}");
    assert!(madt.contains("Address : FEC00000"), "{madt}");
}
