//! `template.json`: what a template was made from and the identity and
//! checksum of every file in its directory, so a clone can refuse a
//! template whose files changed and `template status` can show it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::snapshot::file_identity::FileIdentity;
use crate::snapshot::saved_config::SavedBalloon;

/// The manifest's own format; a reader refuses others.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST: &str = "template.json";
pub const MEMORY: &str = "memory";
pub const STATE: &str = "state";
/// Present while `template create` works on the directory.
pub const CREATING: &str = ".creating";

/// The captured copy of disk `id` inside the template directory.
pub fn disk_file(id: &str) -> String {
    format!("disk-{id}.img")
}

/// A file in the template directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateFile {
    /// Its name inside the directory.
    pub file: String,
    pub size: u64,
    pub crc32c: u32,
    pub identity: FileIdentity,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateDisk {
    pub id: String,
    /// The image the template was made from (never written: a writable
    /// disk ran on its captured copy).
    pub source: PathBuf,
    pub readonly: bool,
    /// A writable disk's content at the pause.
    pub captured: Option<TemplateFile>,
    /// A read-only disk as it was: clones use it in place, so it must not change.
    pub source_identity: Option<FileIdentity>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateNet {
    pub id: String,
    pub tap: String,
    pub mac: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMem {
    pub id: String,
    pub size: u64,
    pub block_size: u64,
    /// `anon` or `memfd`.
    pub backing: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub vmm_version: String,
    /// The snapshot format of `state`.
    pub snapshot_format: u32,
    pub created_unix: u64,
    /// What said the guest was ready: `serial=TEXT` or `qmp`.
    pub ready: String,
    /// From the VM's start to the guest being ready, in milliseconds.
    pub ready_after_ms: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u8,
    pub memory_size: u64,
    pub memory: TemplateFile,
    pub state: TemplateFile,
    pub disks: Vec<TemplateDisk>,
    pub nets: Vec<TemplateNet>,
    /// The balloon's features, as a snapshot records them.
    pub balloon: Option<SavedBalloon>,
    pub virtio_mems: Vec<TemplateMem>,
    /// The guest has a VM Generation ID device.
    pub vmgenid: bool,
}

impl Manifest {
    /// Reads `dir/template.json`; Ok(None) when there is none.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, String> {
        let path = dir.join(MANIFEST);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        // A format field first, so that a future manifest is named as such.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "{}: not a template manifest ({e}); the directory is damaged or not a template",
                path.display()
            )
        })?;
        if head.format != MANIFEST_FORMAT {
            return Err(format!(
                "{}: template format {} is not supported: this vmm reads format {MANIFEST_FORMAT}; create the template again with this vmm",
                path.display(),
                head.format
            ));
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}; the manifest is damaged", path.display()))
    }

    /// Writes `dir/template.json` atomically and durably.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = dir.join(".template.json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(MANIFEST))?;
        fs::File::open(dir)?.sync_all()
    }

    /// Every file the template directory holds, manifest last.
    pub fn files(&self) -> Vec<&TemplateFile> {
        let mut v = vec![&self.memory, &self.state];
        v.extend(self.disks.iter().filter_map(|d| d.captured.as_ref()));
        v
    }
}

/// Every name a template directory may hold (for destroy and for
/// cleaning up after a failed create), besides captured disks.
pub fn is_template_file(name: &str) -> bool {
    matches!(
        name,
        MANIFEST | MEMORY | STATE | CREATING | ".template.json.tmp"
    ) || (name.starts_with("disk-") && name.ends_with(".img"))
        // The snapshot writer's temporary file for `state`.
        || name.starts_with(".state.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let id = FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        let f = |name: &str| TemplateFile {
            file: name.into(),
            size: 3,
            crc32c: 5,
            identity: id,
        };
        Manifest {
            format: MANIFEST_FORMAT,
            vmm_version: "0".into(),
            snapshot_format: 2,
            created_unix: 0,
            ready: "serial=READY".into(),
            ready_after_ms: 10,
            kernel: "/k".into(),
            initrd: None,
            cmdline: "c".into(),
            cpus: 1,
            memory_size: 1 << 27,
            memory: f(MEMORY),
            state: f(STATE),
            disks: vec![TemplateDisk {
                id: "disk0".into(),
                source: "/d".into(),
                readonly: false,
                captured: Some(f(&disk_file("disk0"))),
                source_identity: None,
            }],
            nets: vec![],
            balloon: None,
            virtio_mems: vec![],
            vmgenid: true,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-manifest-").unwrap();
        let d = dir.as_path();
        assert_eq!(Manifest::read(d).unwrap(), None, "no manifest");
        let m = sample();
        m.write(d).unwrap();
        assert_eq!(Manifest::read(d).unwrap(), Some(m.clone()));
        assert_eq!(m.files().len(), 3);

        fs::write(d.join(MANIFEST), br#"{"format": 9}"#).unwrap();
        let e = Manifest::read(d).unwrap_err();
        assert!(
            e.contains("format 9") && e.contains("reads format 1"),
            "{e}"
        );
        fs::write(d.join(MANIFEST), b"garbage").unwrap();
        let e = Manifest::read(d).unwrap_err();
        assert!(e.contains("not a template manifest"), "{e}");
        fs::write(d.join(MANIFEST), br#"{"format": 1, "cpus": 1}"#).unwrap();
        let e = Manifest::read(d).unwrap_err();
        assert!(e.contains("damaged"), "{e}");
    }
}
