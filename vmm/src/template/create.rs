//! `vmm template create`: boot a VM with its RAM in `D/memory` (a file
//! mapped share=on), wait until the guest is ready, pause it, save its
//! state with the RAM left in the file, and describe the lot in
//! `D/template.json`. Whatever stops it on the way leaves no template.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use devices::ram::policy::{self, Operation};
use devices::ram::{BackingKind, BackingSpec, RegionRole};
use log::{info, warn};

use super::copy::{copy_file, crc32c_file};
use super::lock::FileLock;
use super::manifest::{
    disk_file, is_template_file, Manifest, TemplateDisk, TemplateFile, TemplateMem, TemplateNet,
    CREATING, MANIFEST, MANIFEST_FORMAT, MEMORY, STATE,
};
use super::TemplateError;
use crate::config::{format_mac, RawOptions, VmConfig};
use crate::control::QmpListen;
use crate::exit::VmExit;
use crate::kvlist::KvList;
use crate::lifecycle::{self, Ready, RunEnd, RunOptions, TemplateOutcome, TemplateSave};
use crate::snapshot::file_identity::FileIdentity;
use crate::snapshot::saved_config::SavedBalloon;

pub struct CreateArgs {
    pub dir: PathBuf,
    pub ready: Ready,
    pub timeout: Duration,
    /// The VM's options; `memory` holds only `size=`.
    pub raw: RawOptions,
    pub qmp: Option<QmpListen>,
}

/// What `template create` made.
#[derive(Debug)]
pub struct Created {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub state_bytes: u64,
}

/// Parses `--ready serial=TEXT|qmp`.
pub fn parse_ready(s: &str) -> Result<Ready, String> {
    if s == "qmp" {
        return Ok(Ready::QmpStop);
    }
    match s.strip_prefix("serial=") {
        Some(t) if !t.is_empty() => Ok(Ready::Serial(t.to_string())),
        _ => Err(format!(
            "--ready {s}: use serial=TEXT (the guest prints TEXT on its serial line when it is ready) or qmp (a QMP client pauses the VM with stop)"
        )),
    }
}

/// The RAM size from `--memory`, which may say nothing else: a template's
/// RAM is always its directory's `memory` file, mapped share=on.
fn memory_size(text: &str) -> Result<u64, TemplateError> {
    let kv = KvList::parse("--memory", text, &["size"], "size=512M").map_err(|e| {
        TemplateError::Refused(format!(
            "{e}\n--memory: a template's RAM is always DIR/memory, a file mapped share=on that clones map privately; give only size=SIZE"
        ))
    })?;
    kv.size("size")
        .map_err(|e| TemplateError::Refused(e.to_string()))?
        .ok_or_else(|| TemplateError::Refused("--memory: give size=SIZE".into()))
}

/// Removes what a create that did not finish made, unless disarmed.
struct Cleanup {
    dir: PathBuf,
    created_dir: bool,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        remove_template_files(&self.dir);
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
        info!(
            "no template was made; {} was cleaned up",
            self.dir.display()
        );
    }
}

/// Removes every file a template directory can hold, manifest first (so
/// that no clone starts from a half-removed template).
pub fn remove_template_files(dir: &Path) {
    let _ = fs::remove_file(dir.join(MANIFEST));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if is_template_file(name) && name != CREATING {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    let _ = fs::remove_file(dir.join(CREATING));
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> TemplateError {
    TemplateError::Failed(format!("{what} {}: {e}", path.display()))
}

/// Prepares the directory: new or empty, or the leftovers of a create that
/// was killed; never a template or a directory with other files.
fn claim_dir(dir: &Path) -> Result<bool, TemplateError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| failed("creating", dir, e))?;
            return Ok(true);
        }
        Err(e) => return Err(failed("reading", dir, e)),
        Ok(m) if !m.is_dir() => {
            return Err(TemplateError::Refused(format!(
                "--dir {}: not a directory; give a new or empty directory",
                dir.display()
            )))
        }
        Ok(_) => {}
    }
    let memory = dir.join(MEMORY);
    if memory.exists() {
        let holders = super::lock::holders(&memory)
            .map_err(|e| failed("reading the locks of", &memory, e))?;
        if !holders.is_empty() {
            return Err(TemplateError::Refused(format!(
                "--dir {}: {} process(es) still map its memory file ({}); a new template would change the RAM under them. Stop those clones (or `vmm template destroy --dir {} --force`) first, or use another directory",
                dir.display(),
                holders.len(),
                super::describe_holders(&holders),
                dir.display()
            )));
        }
    }
    if dir.join(MANIFEST).exists() {
        return Err(TemplateError::Refused(format!(
            "--dir {}: it already holds a template; `vmm template destroy --dir {}` first, or use another directory",
            dir.display(),
            dir.display()
        )));
    }
    let names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| failed("listing", dir, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    if names.iter().any(|n| n == CREATING) {
        warn!(
            "{}: removing what an interrupted `vmm template create` left",
            dir.display()
        );
        remove_template_files(dir);
    } else if !names.is_empty() {
        return Err(TemplateError::Refused(format!(
            "--dir {}: it is not empty ({}) and holds no template; give a new or empty directory",
            dir.display(),
            names.join(", ")
        )));
    }
    Ok(false)
}

/// Records `path` (inside `dir`) as a template file, read-only from now on.
fn seal(dir: &Path, name: &str) -> Result<TemplateFile, TemplateError> {
    let path = dir.join(name);
    let f = fs::File::open(&path).map_err(|e| failed("opening", &path, e))?;
    f.sync_all().map_err(|e| failed("syncing", &path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444))
        .map_err(|e| failed("making read-only", &path, e))?;
    let crc32c = crc32c_file(&path).map_err(|e| failed("reading", &path, e))?;
    let identity = FileIdentity::of(&path).map_err(|e| failed("reading", &path, e))?;
    Ok(TemplateFile {
        file: name.to_string(),
        size: identity.size,
        crc32c,
        identity,
    })
}

pub fn create(args: CreateArgs) -> Result<Created, TemplateError> {
    let size = memory_size(&args.raw.memory)?;
    if let (Ready::Serial(text), Some(cmdline)) = (&args.ready, &args.raw.cmdline) {
        if cmdline.contains(text.as_str()) {
            return Err(TemplateError::Refused(format!(
                "--ready serial={text}: the kernel command line contains that text and the kernel prints its command line at boot, so the template would be taken too early; wait for a text only the ready guest prints"
            )));
        }
    }
    if matches!(args.ready, Ready::Serial(_)) && args.raw.serial == "off" {
        return Err(TemplateError::Refused(
            "--ready serial=TEXT watches the guest's COM1, which --serial off removes; use --serial file=PATH (or stdio)".into(),
        ));
    }
    let dir = std::path::absolute(&args.dir).map_err(|e| failed("resolving", &args.dir, e))?;
    let memory = dir.join(MEMORY);
    let mut raw = args.raw.clone();
    raw.memory = format!(
        "size={size},backing=file,path={},share=on",
        memory.display()
    );
    if raw.memory.matches(',').count() != 3 {
        return Err(TemplateError::Refused(format!(
            "--dir {}: a path with ',' cannot be given to --memory; use another directory",
            dir.display()
        )));
    }
    let mut cfg = VmConfig::parse(&raw).map_err(|e| TemplateError::Refused(e.to_string()))?;
    refuse_unclonable(&cfg, &memory)?;
    // Everything but the RAM file, which is made below: memfd share=on
    // stands in for it (the policy treats both the same).
    let mut check = cfg.clone();
    check.memory.backing = BackingSpec::memfd(true);
    check
        .validate()
        .map_err(|e| TemplateError::Refused(e.to_string()))?;

    let created_dir = claim_dir(&dir)?;
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        created_dir,
        armed: true,
    };
    fs::write(dir.join(CREATING), format!("{}\n", std::process::id()))
        .map_err(|e| failed("writing", &dir.join(CREATING), e))?;
    let ram_file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&memory)
        .map_err(|e| failed("creating", &memory, e))?;
    ram_file
        .set_len(size)
        .map_err(|e| failed("sizing", &memory, e))?;
    drop(ram_file);
    let _lock =
        FileLock::try_exclusive(&memory).map_err(|e| TemplateError::Refused(e.to_string()))?;

    // Writable disks run on their copy in the directory: the user's image
    // is never written, and at the pause the copy is the captured disk.
    let mut disks = Vec::new();
    for d in &mut cfg.disks {
        if d.readonly {
            let identity = FileIdentity::of(&d.path).map_err(|e| failed("reading", &d.path, e))?;
            disks.push(TemplateDisk {
                id: d.id.clone(),
                source: d.path.clone(),
                readonly: true,
                captured: None,
                source_identity: Some(identity),
            });
            continue;
        }
        let dst = dir.join(disk_file(&d.id));
        let how = copy_file(&d.path, &dst).map_err(|e| TemplateError::Failed(e.to_string()))?;
        info!(
            "--disk id={}: the template runs on {}, made from {} by a {how}",
            d.id,
            dst.display(),
            d.path.display()
        );
        disks.push(TemplateDisk {
            id: d.id.clone(),
            source: d.path.clone(),
            readonly: false,
            captured: None,
            source_identity: None,
        });
        d.path = dst;
    }

    let state = dir.join(STATE);
    let opts = RunOptions {
        start_paused: false,
        incoming: None,
        qmp: args.qmp,
        template: Some(TemplateSave {
            ready: args.ready.clone(),
            timeout: args.timeout,
            state: state.clone(),
        }),
    };
    let end =
        lifecycle::run(cfg.clone(), opts).map_err(|e| TemplateError::Failed(e.to_string()))?;
    let ready_after = match end {
        RunEnd::Template(TemplateOutcome::Saved { ready_after, .. }) => ready_after,
        RunEnd::Template(TemplateOutcome::Failed(why)) => return Err(TemplateError::Failed(why)),
        RunEnd::Vm(VmExit::PowerOff) => {
            return Err(TemplateError::Failed(
                "the guest powered off before it was ready".into(),
            ))
        }
        RunEnd::Vm(VmExit::Reboot) => {
            return Err(TemplateError::Failed(
                "the guest asked for a reboot before it was ready".into(),
            ))
        }
        RunEnd::Vm(VmExit::Failed(why)) => {
            return Err(TemplateError::Failed(format!(
                "the VM failed before the guest was ready: {why}"
            )))
        }
        RunEnd::Quit => {
            return Err(TemplateError::Failed(
                "a QMP client quit before the guest was ready".into(),
            ))
        }
        RunEnd::IncomingFailed { reason, .. } => return Err(TemplateError::Failed(reason)),
        RunEnd::Signal(name) => {
            return Err(TemplateError::Failed(format!(
                "{name} arrived before the template was made"
            )))
        }
    };

    let memory_file = seal(&dir, MEMORY)?;
    let state_file = seal(&dir, STATE)?;
    for d in &mut disks {
        if !d.readonly {
            d.captured = Some(seal(&dir, &disk_file(&d.id))?);
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        vmm_version: env!("CARGO_PKG_VERSION").to_string(),
        snapshot_format: crate::snapshot::format::FORMAT_VERSION,
        created_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ready: match &args.ready {
            Ready::Serial(t) => format!("serial={t}"),
            Ready::QmpStop => "qmp".into(),
        },
        ready_after_ms: ready_after.as_millis() as u64,
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        cmdline: cfg.cmdline.clone(),
        cpus: cfg.cpus,
        memory_size: size,
        memory: memory_file,
        state: state_file,
        disks,
        nets: cfg
            .nets
            .iter()
            .map(|n| TemplateNet {
                id: n.id.clone(),
                tap: n.tap.clone(),
                mac: format_mac(&n.mac),
            })
            .collect(),
        balloon: cfg.balloon.as_ref().map(SavedBalloon::of),
        virtio_mems: cfg
            .virtio_mems
            .iter()
            .map(|m| TemplateMem {
                id: m.id.clone(),
                size: m.size,
                block_size: m.block_size,
                backing: match m.backing.kind {
                    BackingKind::Memfd => "memfd".into(),
                    _ => "anon".into(),
                },
            })
            .collect(),
        vmgenid: cfg.vmgenid,
    };
    manifest
        .write(&dir)
        .map_err(|e| failed("writing", &dir.join(MANIFEST), e))?;
    fs::set_permissions(dir.join(MANIFEST), fs::Permissions::from_mode(0o444))
        .map_err(|e| failed("making read-only", &dir.join(MANIFEST), e))?;
    let _ = fs::remove_file(dir.join(CREATING));
    cleanup.armed = false;
    let state_bytes = manifest.state.size;
    Ok(Created {
        dir,
        manifest,
        state_bytes,
    })
}

/// Refuses, before anything runs, what clones of this template could not
/// run: the RAM policy for the clones' RAM (the template file mapped
/// privately) and for taking a template.
fn refuse_unclonable(cfg: &VmConfig, memory: &Path) -> Result<(), TemplateError> {
    let mut backings = vec![(
        RegionRole::Boot,
        BackingSpec::template_clone(memory)
            .validate("--memory")
            .map_err(|e| TemplateError::Refused(e.to_string()))?,
    )];
    for m in &cfg.virtio_mems {
        backings.push((
            RegionRole::VirtioMem(m.id.clone()),
            m.backing
                .validate(&format!("--virtio-mem id={}", m.id))
                .map_err(|e| TemplateError::Refused(e.to_string()))?,
        ));
    }
    policy::check(&cfg.ram_requirements(), &backings, Operation::CreateTemplate).map_err(|e| {
        TemplateError::Refused(format!(
            "{e}\n(a template's clones map its RAM file privately: what they could not run, the template refuses before it boots)"
        ))
    })
}
