//! `snapshot_reader`: a snapshot stream read as `vmm run --incoming`
//! reads it, up to where KVM would be needed: the header, the config
//! section decoded and compared with a command line, every other section
//! decoded into what its name says it holds (vCPU, VM, COM1, GED,
//! transport) and checked, then the RAM chunks loaded into guest memory
//! and the end record. Device sections are the `device_state` target's.
//!
//! Input: `mode u8`, then the stream. Mode bit 0 rewrites every record's
//! CRC to match before reading (the stream's layout is walked as far as
//! its lengths allow), so that mutations get past the checksums to the
//! parsers behind them; bit 1 delivers the stream a few bytes per read,
//! and bit 2 with an `Interrupted` error between reads, as a pipe can.

use std::io::{self, Read};
use std::path::PathBuf;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::{RawOptions, VmConfig};
use vmm::platform::ged::GedState;
use vmm::platform::serial::ComState;
use vmm::snapshot::file_identity::FileIdentity;
use vmm::snapshot::format::{GuestRamSink, Reader, Writer, HEADER_BYTES};
use vmm::snapshot::save::RunSection;
use vmm::snapshot::saved_config::{SavedConfig, SavedDisk};
use vmm::snapshot::{decode, encode};
use vmm::transport::mmio::MmioTransportState;
use vmm::vstate::{VcpuState, VmState};

use super::guest;

const FIX_CRCS: u8 = 1;
const TRICKLE: u8 = 2;
const INTERRUPTED: u8 = 4;

const MIB: u64 = 1 << 20;
/// Guest RAM the chunks go to: a region at 0 and one at 4 GiB.
const RAM_RANGES: [(u64, usize); 2] = [(0, MIB as usize), (4 << 30, MIB as usize)];

/// The restoring command line the saved configuration is compared with.
fn command_line(disk: &std::path::Path) -> VmConfig {
    VmConfig::parse(&RawOptions {
        cpus: 1,
        memory: "size=16M".into(),
        disks: vec![format!("path={},id=disk0", disk.display())],
        nets: vec!["tap=tap0,mac=52:54:00:12:34:56,id=net0".into()],
        balloon: Some("stats=on".into()),
        virtio_mems: vec!["size=2G,id=mem0".into()],
        serial: "stdio".into(),
        ..RawOptions::default()
    })
    .expect("the fixed command line parses")
}

/// Runs one input; returns how many records were read and accepted.
pub fn run(data: &[u8]) -> usize {
    let Some((&mode, stream)) = data.split_first() else {
        return 0;
    };
    let mut stream = stream.to_vec();
    if mode & FIX_CRCS != 0 {
        fix_crcs(&mut stream);
    }
    let source = Trickle {
        data: &stream,
        step: if mode & TRICKLE != 0 { 3 } else { usize::MAX },
        interrupt: mode & INTERRUPTED != 0,
        interrupted: false,
    };
    let Ok(mut reader) = Reader::new(source) else {
        return 0;
    };
    let mut accepted = 1;
    let (_image, disk) = guest::disk_image(false);
    let mut cfg = command_line(&disk.path);
    if let Ok(saved) = decode::<SavedConfig>("config", reader.config()) {
        saved.adopt_into(&mut cfg);
        let _ = saved.differences(&cfg);
    }
    let Ok(sections) = reader.sections() else {
        return accepted;
    };
    for (name, payload) in &sections {
        accepted += usize::from(section(name, payload));
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(
        &RAM_RANGES.map(|(base, size)| (GuestAddress(base), size)),
    )
    .expect("snapshot RAM maps");
    if let Ok(stats) = reader.ram_and_end(&mut GuestRamSink(&mem)) {
        assert_eq!(
            stats.stream_bytes,
            stream.len() as u64,
            "the whole stream was read"
        );
        accepted += 1 + stats.ram_chunks as usize;
    }
    accepted
}

/// Decodes a section into what its name says and checks it as a restore
/// does; returns whether it was accepted.
fn section(name: &str, payload: &[u8]) -> bool {
    if let Some(index) = name.strip_prefix("vcpu") {
        let Ok(index) = index.parse::<u8>() else {
            return false;
        };
        return decode::<VcpuState>(name, payload).is_ok_and(|v| v.validate(index).is_ok());
    }
    if name.starts_with("transport:") {
        return decode::<MmioTransportState>(name, payload).is_ok();
    }
    match name {
        "run" => decode::<RunSection>(name, payload).is_ok(),
        "vm" => decode::<VmState>(name, payload).is_ok(),
        "com1" => decode::<ComState>(name, payload).is_ok(),
        "ged" => decode::<GedState>(name, payload).is_ok_and(|g| g.validate().is_ok()),
        _ => false,
    }
}

/// A reader that hands out at most `step` bytes per call and, if asked,
/// fails every other call with `Interrupted`.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    interrupt: bool,
    interrupted: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.interrupt {
            self.interrupted = !self.interrupted;
            if self.interrupted {
                return Err(io::ErrorKind::Interrupted.into());
            }
        }
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let bytes = b.get(at..at.checked_add(n)?)?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(bytes);
    Some(u64::from_le_bytes(v))
}

/// Rewrites the header's and every record's CRC32C to match its bytes,
/// walking the layout `vmm::snapshot::format` documents until a length
/// leads past the end or a tag is unknown.
pub fn fix_crcs(b: &mut [u8]) {
    if b.len() < HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c(&b[..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    let mut at = HEADER_BYTES;
    while let Some(end) = record_end(b, at) {
        if end + 4 > b.len() {
            return;
        }
        let crc = crc32c::crc32c(&b[at..end]);
        b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        at = end + 4;
    }
}

/// Where the record starting at `at` ends (its CRC's offset).
fn record_end(b: &[u8], at: usize) -> Option<usize> {
    let body = at + 1;
    let end = match *b.get(at)? {
        1 => {
            let name = le(b, body, 2)? as usize;
            let len = le(b, body + 2 + name, 8)?;
            (body + 2 + name + 8).checked_add(usize::try_from(len).ok()?)?
        }
        2 => {
            let len = le(b, body + 8, 4)? as usize;
            body + 12 + len
        }
        3 => body + 16,
        _ => return None,
    };
    (end <= b.len()).then_some(end)
}

fn vcpu(index: u8) -> VcpuState {
    VcpuState {
        index,
        cpuid: vec![kvm_cpuid_entry2 {
            function: 0,
            eax: 0xd,
            ..Default::default()
        }],
        msrs: Vec::new(),
        regs: kvm_regs {
            rip: 0x100000,
            rflags: 2,
            ..Default::default()
        },
        sregs: kvm_sregs::default(),
        xsave: vec![0; 1024],
        xcrs: kvm_xcrs::default(),
        debug_regs: kvm_debugregs::default(),
        lapic: kvm_lapic_state::default(),
        mp_state: kvm_mp_state::default(),
        events: kvm_vcpu_events::default(),
        tsc_khz: Some(2_000_000),
    }
}

/// A snapshot of the fixed command line's VM (with `cpus` vCPUs), as
/// `vmm` writes one, with `pages` RAM pages of content.
fn stream(cpus: u8, cpr: bool, pages: &[(u64, u8)]) -> Vec<u8> {
    let cfg = command_line(&PathBuf::from("/nonexistent/disk.img"));
    let mut cfg_nodisk = cfg.clone();
    cfg_nodisk.disks.clear();
    cfg_nodisk.cpus = cpus;
    let mut saved = SavedConfig::of(&cfg_nodisk, None).expect("no file to look at");
    // Fixed, so that the seed is the same on every machine.
    saved.vmm_version = "0.1.0".into();
    saved.disks.push(SavedDisk {
        id: "disk0".into(),
        path: cfg.disks[0].path.clone(),
        size: guest::DISK_BYTES,
        readonly: false,
        identity: FileIdentity {
            dev: 0x803,
            ino: 12,
            size: guest::DISK_BYTES,
            mtime_ns: 1_700_000_000_000_000_000,
        },
    });
    saved.cpr = cpr;
    let mut w = Writer::new(Vec::new(), &encode(&saved)).expect("writing to memory");
    w.section("run", &encode(&RunSection { running: true }))
        .unwrap();
    let vm = VmState {
        pic_master: kvm_irqchip::default(),
        pic_slave: kvm_irqchip {
            chip_id: 1,
            ..Default::default()
        },
        ioapic: kvm_irqchip {
            chip_id: 2,
            ..Default::default()
        },
        pit: kvm_pit_state2::default(),
        clock: kvm_clock_data::default(),
    };
    w.section("vm", &encode(&vm)).unwrap();
    for i in 0..cpus {
        w.section(&format!("vcpu{i}"), &encode(&vcpu(i))).unwrap();
    }
    let com1 = ComState {
        baud_divisor_low: 12,
        baud_divisor_high: 0,
        interrupt_enable: 0,
        interrupt_identification: 1,
        line_control: 3,
        line_status: 0x60,
        modem_control: 8,
        modem_status: 0xb0,
        scratch: 0,
        in_buffer: b"ok\n".to_vec(),
    };
    w.section("com1", &encode(&com1)).unwrap();
    w.section("ged", &encode(&GedState { pending: 1 })).unwrap();
    let transport = MmioTransportState {
        device_features_sel: 1,
        driver_features_sel: 0,
        queue_sel: 0,
        shm_sel: 0,
        interrupt_status: 1,
    };
    for id in ["disk0", "net0", "balloon0", "mem0"] {
        w.section(&format!("transport:{id}"), &encode(&transport))
            .unwrap();
        w.section(&format!("device:{id}"), b"VDEV").unwrap();
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(
        &RAM_RANGES.map(|(base, size)| (GuestAddress(base), size)),
    )
    .unwrap();
    for &(gpa, byte) in pages {
        mem.write_slice(&[byte; 64], GuestAddress(gpa)).unwrap();
    }
    w.ram(&mem).unwrap();
    w.finish().unwrap().0
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with_mode = |mode: u8, s: Vec<u8>| [vec![mode], s].concat();
    let pages = [(0x1000, 0xaa), (0x2000, 0x55), (0x3000, 1), (4 << 30, 7)];
    let full = stream(1, false, &pages);
    let mut tiny = Writer::new(Vec::new(), b"{}").unwrap();
    tiny.section("vm", b"").unwrap();
    let tiny = tiny.finish().unwrap().0;
    vec![
        ("vm-one-vcpu", with_mode(0, full.clone())),
        (
            "vm-one-vcpu-trickled",
            with_mode(TRICKLE | INTERRUPTED, full),
        ),
        (
            "cpr-two-vcpus",
            with_mode(FIX_CRCS, stream(2, true, &pages[..1])),
        ),
        ("no-ram", with_mode(0, stream(1, false, &[]))),
        ("tiny", with_mode(FIX_CRCS, tiny)),
    ]
}
