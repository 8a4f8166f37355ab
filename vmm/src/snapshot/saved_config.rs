//! The configuration a snapshot was saved with, and what a restore's
//! command line may and may not change about it.
//!
//! May differ: the RAM backing's share/readonly/rom/hugepages (a template's
//! RAM becomes a clone's), a disk's path, a TAP's name, where COM1 goes,
//! the control socket, and the kernel, initrd and command line (not loaded
//! on restore). Must match: vCPUs, RAM size, the devices in their order
//! with their ids, each disk's size and read-only flag, each NIC's MAC,
//! the balloon's features, each virtio-mem's size and block size; and when
//! RAM was left out of the stream (x-ignore-shared), the very file it
//! stays in. A CPR checkpoint (`cpr`) also needs each disk image to be
//! the very file it was, unmodified (device, inode, size, mtime): the
//! guest's page cache of it is in the saved RAM.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use devices::ram::{BackingKind, BackingSpec};
use devices::size::format_size;
use devices::virtio::block::BlockConfig;
use serde::{Deserialize, Serialize};

use super::file_identity::FileIdentity;
use crate::config::{format_mac, VmConfig};

/// The file that holds boot RAM when the snapshot left it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamFile {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
}

impl RamFile {
    pub fn of(path: &Path) -> std::io::Result<RamFile> {
        let m = fs::metadata(path)?;
        Ok(RamFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisk {
    pub id: String,
    pub path: PathBuf,
    pub size: u64,
    pub readonly: bool,
    /// The image as it was when the VM was saved; a CPR restore refuses an
    /// image changed since (the guest's page cache of it is in RAM).
    pub identity: FileIdentity,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNet {
    pub id: String,
    pub tap: String,
    pub mac: [u8; 6],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBalloon {
    pub free_page_reporting: bool,
    pub deflate_on_oom: bool,
    pub stats: bool,
}

impl SavedBalloon {
    /// The features of a configured balloon (its target is run-time state).
    pub fn of(b: &devices::virtio::balloon::BalloonConfig) -> SavedBalloon {
        SavedBalloon {
            free_page_reporting: b.free_page_reporting,
            deflate_on_oom: b.deflate_on_oom,
            stats: b.stats,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMem {
    pub id: String,
    pub size: u64,
    pub block_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// The VMM that wrote it, for messages.
    pub vmm_version: String,
    pub cpus: u8,
    pub memory_size: u64,
    pub memory_backing: BackingSpec,
    /// Set when boot RAM is not in the stream (x-ignore-shared).
    pub ram_file: Option<RamFile>,
    pub disks: Vec<SavedDisk>,
    pub nets: Vec<SavedNet>,
    pub balloon: Option<SavedBalloon>,
    pub virtio_mems: Vec<SavedMem>,
    pub kernel: PathBuf,
    pub cmdline: String,
    /// The VM has a VM Generation ID device (its ACPI tables describe it).
    /// Not a difference a restore refuses: the restored VM has the device
    /// when the saved one had it, whatever `--vmgenid` says; the option
    /// only decides whether it gets a new generation ID.
    pub vmgenid: bool,
    /// Saved in migration mode cpr-reboot: a restore must find every disk
    /// image unmodified.
    pub cpr: bool,
}

impl SavedConfig {
    /// Describes `cfg` as it runs now; disk sizes are read from the images.
    pub fn of(cfg: &VmConfig, ram_file: Option<RamFile>) -> std::io::Result<SavedConfig> {
        let mut disks = Vec::with_capacity(cfg.disks.len());
        for d in &cfg.disks {
            let identity = FileIdentity::of(&d.path)?;
            disks.push(SavedDisk {
                id: d.id.clone(),
                path: d.path.clone(),
                size: identity.size,
                readonly: d.readonly,
                identity,
            });
        }
        Ok(SavedConfig {
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            cpus: cfg.cpus,
            memory_size: cfg.memory.size,
            memory_backing: cfg.memory.backing.clone(),
            ram_file,
            disks,
            nets: cfg
                .nets
                .iter()
                .map(|n| SavedNet {
                    id: n.id.clone(),
                    tap: n.tap.clone(),
                    mac: n.mac,
                })
                .collect(),
            balloon: cfg.balloon.as_ref().map(SavedBalloon::of),
            virtio_mems: cfg
                .virtio_mems
                .iter()
                .map(|m| SavedMem {
                    id: m.id.clone(),
                    size: m.size,
                    block_size: m.block_size,
                })
                .collect(),
            kernel: cfg.kernel.clone(),
            cmdline: cfg.cmdline.clone(),
            vmgenid: cfg.vmgenid,
            cpr: false,
        })
    }

    /// Takes over what the command line left to chance: the MAC of a NIC
    /// given without `mac=` is the saved one (the guest knows it); without
    /// `--kernel`, the saved kernel and command line are recorded again
    /// when this VM is saved.
    pub fn adopt_into(&self, cfg: &mut VmConfig) {
        if cfg.kernel.as_os_str().is_empty() {
            cfg.kernel = self.kernel.clone();
            cfg.cmdline = self.cmdline.clone();
        }
        for (i, n) in cfg.nets.iter_mut().enumerate() {
            if !cfg.mac_given.get(i).copied().unwrap_or(true) {
                if let Some(saved) = self.nets.get(i) {
                    n.mac = saved.mac;
                }
            }
        }
    }

    /// One line per way `cfg` differs from the saved VM in what may not
    /// change; empty when the snapshot can be restored with `cfg`.
    pub fn differences(&self, cfg: &VmConfig) -> Vec<String> {
        let mut d = Vec::new();
        if self.cpus != cfg.cpus {
            d.push(format!(
                "--cpus: the snapshot has {} vCPUs, the command line {}",
                self.cpus, cfg.cpus
            ));
        }
        if self.memory_size != cfg.memory.size {
            d.push(format!(
                "--memory: the snapshot has size={}, the command line size={}",
                format_size(self.memory_size),
                format_size(cfg.memory.size)
            ));
        }
        if let Some(f) = &self.ram_file {
            ram_file_differences(f, &cfg.memory.backing, &mut d);
        }
        list_differences(
            "--disk",
            &self.disks,
            &cfg.disks,
            |s| s.id.clone(),
            |c| c.id.clone(),
            |s, c, d| {
                if self.cpr {
                    // The guest's page cache of the disk is in the saved
                    // RAM: the image must be the very file, unchanged.
                    if let Some(change) = s.identity.check(&c.path) {
                        let was = if c.path == s.path {
                            String::new()
                        } else {
                            format!(" (the checkpoint had {})", s.path.display())
                        };
                        d.push(format!(
                            "--disk id={}: {}{was}: {change} since the CPR checkpoint; put back the image exactly as it was at the checkpoint, or boot the VM fresh instead of restoring it",
                            s.id,
                            c.path.display(),
                        ));
                    }
                } else {
                    size_difference(s, c, d);
                }
                if s.readonly != c.readonly {
                    d.push(format!(
                        "--disk id={}: the snapshot has readonly={}, the command line readonly={}",
                        s.id,
                        onoff(s.readonly),
                        onoff(c.readonly)
                    ));
                }
            },
            &mut d,
        );
        list_differences(
            "--net",
            &self.nets,
            &cfg.nets,
            |s| s.id.clone(),
            |c| c.id.clone(),
            |s, c, d| {
                if s.mac != c.mac {
                    d.push(format!(
                        "--net id={}: the snapshot has mac={}, the command line mac={}; the guest already uses the saved one",
                        s.id,
                        format_mac(&s.mac),
                        format_mac(&c.mac)
                    ));
                }
            },
            &mut d,
        );
        match (&self.balloon, &cfg.balloon) {
            (None, None) => {}
            (Some(_), None) => {
                d.push("--balloon: the snapshot has a balloon, the command line none".into())
            }
            (None, Some(_)) => d.push(
                "--balloon: the command line adds a balloon the snapshot does not have".into(),
            ),
            (Some(s), Some(c)) => {
                for (key, a, b) in [
                    (
                        "free-page-reporting",
                        s.free_page_reporting,
                        c.free_page_reporting,
                    ),
                    ("deflate-on-oom", s.deflate_on_oom, c.deflate_on_oom),
                    ("stats", s.stats, c.stats),
                ] {
                    if a != b {
                        d.push(format!(
                            "--balloon: the snapshot has {key}={}, the command line {key}={}",
                            onoff(a),
                            onoff(b)
                        ));
                    }
                }
            }
        }
        list_differences(
            "--virtio-mem",
            &self.virtio_mems,
            &cfg.virtio_mems,
            |s| s.id.clone(),
            |c| c.id.clone(),
            |s, c, d| {
                if s.size != c.size || s.block_size != c.block_size {
                    d.push(format!(
                        "--virtio-mem id={}: the snapshot has size={},block-size={}, the command line size={},block-size={}",
                        s.id,
                        format_size(s.size),
                        format_size(s.block_size),
                        format_size(c.size),
                        format_size(c.block_size)
                    ));
                }
            },
            &mut d,
        );
        d
    }
}

/// A disk of a normal snapshot may be another file (a template clone
/// gets a copy), of the saved size.
fn size_difference(s: &SavedDisk, c: &BlockConfig, d: &mut Vec<String>) {
    match fs::metadata(&c.path).map(|m| m.len()) {
        Ok(n) if n != s.size => d.push(format!(
            "--disk id={}: {} is {n} bytes, the saved disk {} bytes; give an image of the saved size",
            s.id,
            c.path.display(),
            s.size
        )),
        Err(e) => d.push(format!("--disk id={}: {}: {e}", s.id, c.path.display())),
        Ok(_) => {}
    }
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Boot RAM stayed in `f`: the restore must map that same file.
fn ram_file_differences(f: &RamFile, backing: &BackingSpec, d: &mut Vec<String>) {
    let BackingKind::File(path) = &backing.kind else {
        d.push(format!(
            "--memory: the snapshot left guest RAM in {} (x-ignore-shared); map that file: backing=file,path={}",
            f.path.display(),
            f.path.display()
        ));
        return;
    };
    match RamFile::of(path) {
        Ok(now) if now.dev == f.dev && now.ino == f.ino && now.size == f.size => {}
        Ok(now) if now.dev == f.dev && now.ino == f.ino => d.push(format!(
            "--memory: {} is {} bytes now, {} bytes when the snapshot was saved; the RAM file was changed",
            path.display(),
            now.size,
            f.size
        )),
        Ok(_) => d.push(format!(
            "--memory: {} is not the file the snapshot left guest RAM in ({}); map that file",
            path.display(),
            f.path.display()
        )),
        Err(e) => d.push(format!("--memory: {}: {e}", path.display())),
    }
}

/// Compares two lists of devices by position and id, then each pair.
fn list_differences<S, C>(
    option: &str,
    saved: &[S],
    now: &[C],
    saved_id: impl Fn(&S) -> String,
    now_id: impl Fn(&C) -> String,
    each: impl Fn(&S, &C, &mut Vec<String>),
    d: &mut Vec<String>,
) {
    let a: Vec<String> = saved.iter().map(&saved_id).collect();
    let b: Vec<String> = now.iter().map(&now_id).collect();
    if a != b {
        d.push(format!(
            "{option}: the snapshot has [{}], the command line [{}]; give the same devices with the same ids in the same order",
            a.join(", "),
            b.join(", ")
        ));
        return;
    }
    for (s, c) in saved.iter().zip(now) {
        each(s, c, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawOptions;
    use std::io::Write;

    fn cfg_with_disk(path: &Path) -> VmConfig {
        VmConfig::parse(&RawOptions {
            cpus: 1,
            memory: "size=64M".into(),
            disks: vec![format!("path={},id=d0", path.display())],
            serial: "off".into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn cfg(vmgenid: &str) -> VmConfig {
        VmConfig::parse(&RawOptions {
            cpus: 1,
            memory: "size=64M".into(),
            serial: "off".into(),
            vmgenid: Some(vmgenid.into()),
            ..RawOptions::default()
        })
        .unwrap()
    }

    /// A CPR checkpoint names every change to a disk image; a normal
    /// snapshot only compares sizes (a clone's disk is a copy).
    #[test]
    fn a_cpr_checkpoint_refuses_a_changed_disk_and_a_normal_snapshot_does_not() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-saved-cfg-").unwrap();
        let p = dir.as_path().join("disk.img");
        fs::write(&p, vec![0u8; 4096]).unwrap();
        let cfg = cfg_with_disk(&p);
        let mut saved = SavedConfig::of(&cfg, None).unwrap();
        assert_eq!(saved.differences(&cfg), Vec::<String>::new());
        saved.cpr = true;
        assert_eq!(saved.differences(&cfg), Vec::<String>::new(), "unchanged");

        // Opened for writing, not written: still the same.
        drop(fs::File::options().read(true).write(true).open(&p).unwrap());
        assert_eq!(saved.differences(&cfg), Vec::<String>::new(), "opened rw");

        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(9))
            .unwrap();
        let d = saved.differences(&cfg);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with(&format!("--disk id=d0: {}: it was modified", p.display()))
                && d[0].contains("CPR checkpoint")
                && d[0].contains("boot the VM fresh"),
            "{d:?}"
        );
        // A normal snapshot does not mind.
        saved.cpr = false;
        assert_eq!(saved.differences(&cfg), Vec::<String>::new());

        // A copy at the same path is another file: refused for CPR only.
        saved = SavedConfig::of(&cfg, None).unwrap();
        let q = dir.as_path().join("copy.img");
        fs::copy(&p, &q).unwrap();
        fs::rename(&q, &p).unwrap();
        assert_eq!(saved.differences(&cfg), Vec::<String>::new());
        saved.cpr = true;
        let d = saved.differences(&cfg);
        assert!(d.len() == 1 && d[0].contains("replaced"), "{d:?}");

        // A grown image is named once, by its size.
        saved = SavedConfig::of(&cfg, None).unwrap();
        saved.cpr = true;
        fs::File::options()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[1u8; 512])
            .unwrap();
        let d = saved.differences(&cfg);
        assert!(
            d.len() == 1 && d[0].contains("size changed from 4096 to 4608"),
            "{d:?}"
        );
    }

    #[test]
    fn the_generation_id_device_is_recorded_and_never_a_difference() {
        for (saved, now) in [("on", "off"), ("off", "on"), ("on", "on")] {
            let s = SavedConfig::of(&cfg(saved), None).unwrap();
            assert_eq!(s.vmgenid, saved == "on");
            assert_eq!(s.differences(&cfg(now)), Vec::<String>::new());
        }
    }
}
