//! Saving a paused VM into a snapshot stream: the configuration, the
//! run state, the KVM VM and vCPU state, COM1, each transport and device,
//! then RAM (unless it stays in a shared file).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use devices::ram::{BackingKind, RegionRole};
use devices::virtio::persist::Persist;
use log::info;
use serde::{Deserialize, Serialize};

use super::file_identity::FileIdentity;
use super::format::{RamStats, Writer};
use super::saved_config::{RamFile, SavedConfig};
use super::{encode, SnapshotError};
use crate::bus::lock;
use crate::config::VmConfig;
use crate::machine::{DeviceHandle, Machine};

/// The run state the VM had when it was saved: a VM saved running arrives
/// running after an incoming migration (unless started with -S).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSection {
    pub running: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions {
    /// QEMU's x-ignore-shared: leave RAM out when it is shared and backed
    /// by a named file (QEMU 8.1+: memfd RAM is still written).
    pub ignore_shared: bool,
    /// Migration mode cpr-reboot: the snapshot is a checkpoint for a
    /// restart of vmm, and its restore refuses any disk image changed
    /// since (SavedConfig::cpr).
    pub cpr: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct SaveReport {
    pub bytes: u64,
    pub ram: RamStats,
    /// Boot RAM was left in its file.
    pub ram_left_out: bool,
    pub duration: Duration,
}

/// The file boot RAM stays in when x-ignore-shared is on: boot RAM that is
/// file-backed and shared, as QEMU 8.1+ decides it.
pub fn shared_ram_file(cfg: &VmConfig) -> Option<&Path> {
    let b = &cfg.memory.backing;
    match &b.kind {
        BackingKind::File(p) if b.share => Some(p),
        _ => None,
    }
}

/// Makes each writable disk image durable (fsync) and records the identity
/// (device, inode, size, mtime) of every image the VM has open. The VM is
/// paused: its vCPUs are out of KVM_RUN and its device thread, the only
/// one that processes block requests, is parked between two requests, so
/// nothing writes an image between the fsync, the identity and the end of
/// the save. As QEMU flushes every drive when it stops a VM for a
/// migration, this is done for every save, not only for CPR.
fn checkpoint_disks(m: &Machine) -> Result<Vec<(String, FileIdentity)>, SnapshotError> {
    let mut out = Vec::new();
    for slot in &m.slots {
        let DeviceHandle::Block(d) = &slot.device else {
            continue;
        };
        let dev = lock(d, &slot.name);
        let path = dev.config().path.clone();
        let io_err = |what: &str| {
            let what = format!("{what} of disk image {} ({})", path.display(), slot.name);
            move |source| SnapshotError::Io { what, source }
        };
        if !dev.config().readonly {
            dev.sync_all().map_err(io_err("fsync"))?;
        }
        let meta = dev.image_metadata().map_err(io_err("fstat"))?;
        out.push((slot.id.clone(), FileIdentity::from_metadata(&meta)));
    }
    Ok(out)
}

/// Writes the whole VM to `out`. The VM must be paused; `was_running`
/// is the state to restore it into.
pub fn save<W: Write>(
    m: &Machine,
    out: W,
    was_running: bool,
    opts: SaveOptions,
) -> Result<(W, SaveReport), SnapshotError> {
    if m.is_running() {
        return Err(SnapshotError::Running);
    }
    let t0 = Instant::now();
    let left_out = shared_ram_file(&m.cfg).filter(|_| opts.ignore_shared);
    let ram_file = match &left_out {
        Some(p) => {
            // The snapshot relies on the file: make the guest's writes to
            // it durable too (a no-op on tmpfs), so that the pair survives
            // a host crash or reboot as the committed snapshot file does.
            let io_err = |what: &str| {
                let what = format!("{what} the RAM file {}", p.display());
                move |source| SnapshotError::Io { what, source }
            };
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(io_err("fsync of"))?;
            Some(RamFile::of(p).map_err(io_err("reading"))?)
        }
        None => None,
    };
    let mut config = SavedConfig::of(&m.cfg, ram_file).map_err(|e| SnapshotError::Io {
        what: "reading the disk images' sizes".into(),
        source: e,
    })?;
    for (id, identity) in checkpoint_disks(m)? {
        if let Some(d) = config.disks.iter_mut().find(|d| d.id == id) {
            d.size = identity.size;
            d.identity = identity;
        }
    }
    config.cpr = opts.cpr;
    let mut w = Writer::new(out, &encode(&config))?;
    w.section(
        "run",
        &encode(&RunSection {
            running: was_running,
        }),
    )?;
    w.section("vm", &encode(&m.vm.save_state()?))?;
    for state in m.vcpus.save()? {
        w.section(&format!("vcpu{}", state.index), &encode(&state))?;
    }
    if let Some(com1) = &m.serial {
        w.section("com1", &encode(&lock(com1, "COM1").save()))?;
    }
    w.section("ged", &encode(&lock(&m.ged, "GED").save()))?;
    for slot in &m.slots {
        let t = lock(&slot.transport, &slot.name).save_state();
        w.section(&format!("transport:{}", slot.id), &encode(&t))?;
        let bytes = match &slot.device {
            DeviceHandle::Block(d) => lock(d, &slot.name).save_bytes(),
            DeviceHandle::Net(d) => lock(d, &slot.name).save_bytes(),
            DeviceHandle::Balloon(d) => lock(d, &slot.name).save_bytes(),
            DeviceHandle::Mem(d) => lock(d, &slot.name).save_bytes(),
            DeviceHandle::VhostUser(_) => {
                return Err(SnapshotError::NotSaveable(slot.name.clone()))
            }
        };
        w.section(&format!("device:{}", slot.id), &bytes)?;
    }
    let skip_boot = left_out.is_some();
    let ram = w.ram_filtered(m.ram.memory(), |gpa| {
        let role = m
            .ram
            .region_of(vm_memory::GuestAddress(gpa), 1)
            .map(|r| &r.role);
        !(skip_boot && role == Some(&RegionRole::Boot))
    })?;
    let (out, bytes) = w.finish()?;
    let report = SaveReport {
        bytes,
        ram,
        ram_left_out: skip_boot,
        duration: t0.elapsed(),
    };
    info!(
        "VM saved{}: {bytes} bytes, {} RAM pages of {} written{} in {:.1} ms",
        if opts.cpr {
            " as a cpr-reboot checkpoint"
        } else {
            ""
        },
        ram.pages_written,
        ram.pages_scanned,
        if skip_boot {
            " (boot RAM left in its shared file: x-ignore-shared)"
        } else {
            ""
        },
        report.duration.as_secs_f64() * 1000.0
    );
    Ok((out, report))
}
