//! Restoring a VM from a snapshot stream in a new process. Everything is
//! read and checked (magic, version, every checksum and length, the saved
//! configuration against the command line, every section's content)
//! before KVM is touched or a guest instruction runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use log::info;
use serde::de::DeserializeOwned;

use super::format::{GuestRamSink, Reader};
use super::save::RunSection;
use super::saved_config::SavedConfig;
use super::{decode, SnapshotError};
use crate::config::VmConfig;
use crate::machine::build::{self, Prepared, Restored};
use crate::machine::Machine;
use crate::memory::build_guest_ram;
use crate::platform::ged::GedState;
use crate::platform::serial::ComState;
use crate::transport::mmio::MmioTransportState;
use crate::vstate::{VcpuState, VmState};

/// A restored VM, paused, and whether the snapshot was taken running.
pub struct RestoredVm {
    pub machine: Machine,
    pub saved_running: bool,
}

struct Sections(BTreeMap<String, Vec<u8>>);

impl Sections {
    fn take(&mut self, name: &str) -> Result<Vec<u8>, SnapshotError> {
        self.0
            .remove(name)
            .ok_or_else(|| SnapshotError::MissingSection(name.to_string()))
    }

    fn decode<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, SnapshotError> {
        let bytes = self.take(name)?;
        decode(name, &bytes)
    }
}

/// Reads `input` completely and builds the VM it describes with `cfg`
/// (the restoring command line), leaving it paused. `cfg` may be adjusted
/// where the command line left a choice to chance (a random MAC).
///
/// `prepared` (RAM and a VM made from the command line beforehand) is used
/// instead of mapping RAM and creating the VM here; it is consumed either
/// way, since a failed restore may have loaded part of the RAM.
pub fn restore<R: Read>(
    cfg: &mut VmConfig,
    input: R,
    prepared: Option<Prepared>,
) -> Result<RestoredVm, SnapshotError> {
    let t0 = Instant::now();
    let mut r = Reader::new(input)?;
    let saved: SavedConfig = decode("config", r.config())?;
    saved.adopt_into(cfg);
    let diffs = saved.differences(cfg);
    if !diffs.is_empty() {
        return Err(SnapshotError::ConfigMismatch(diffs));
    }
    let mut sections = Sections(r.sections()?.into_iter().collect());
    let run: RunSection = sections.decode("run")?;
    let vm: VmState = sections.decode("vm")?;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for i in 0..cfg.cpus {
        let v: VcpuState = sections.decode(&format!("vcpu{i}"))?;
        v.validate(i).map_err(|e| SnapshotError::BadSection {
            name: format!("vcpu{i}"),
            reason: e.to_string(),
        })?;
        vcpus.push(v);
    }
    // COM1's state is kept only where the restoring VM has a COM1 too.
    let com1: Option<ComState> = match sections.0.contains_key("com1") {
        true => Some(sections.decode("com1")?),
        false => None,
    };
    let ged: GedState = sections.decode("ged")?;
    ged.validate().map_err(|reason| SnapshotError::BadSection {
        name: "ged".into(),
        reason,
    })?;
    let ids: Vec<String> = cfg
        .disks
        .iter()
        .map(|d| d.id.clone())
        .chain(cfg.nets.iter().map(|n| n.id.clone()))
        .chain(cfg.balloon.iter().map(|_| "balloon0".to_string()))
        .chain(cfg.virtio_mems.iter().map(|m| m.id.clone()))
        .collect();
    let mut devices = Vec::with_capacity(ids.len());
    for id in &ids {
        let t: MmioTransportState = sections.decode(&format!("transport:{id}"))?;
        let d = sections.take(&format!("device:{id}"))?;
        devices.push((t, d));
    }
    if let Some(name) = sections.0.keys().next() {
        return Err(SnapshotError::UnknownSection(name.clone()));
    }

    let (ram, kvm_vm) = match prepared {
        Some(p) => (p.ram, Some(p.vm)),
        None => (Arc::new(build_guest_ram(cfg)?), None),
    };
    let mut sink = GuestRamSink(ram.memory());
    let read = r.ram_and_end(&mut sink)?;
    info!(
        "snapshot read and checked: {} RAM bytes loaded in {:.1} ms",
        read.ram_bytes,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let restored = Restored {
        vm,
        vcpus,
        com1,
        ged,
        vmgenid: saved.vmgenid,
        devices,
    };
    let machine = build::restore(cfg, ram, kvm_vm, &restored, true)?;
    Ok(RestoredVm {
        machine,
        saved_running: run.running,
    })
}
