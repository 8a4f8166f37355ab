//! `vmm template clone`: a new VM from a template. Its RAM maps the
//! template's `memory` file privately and read-only (pages it never writes
//! stay shared in the host's page cache; the file is never written), each
//! writable disk is a copy of the captured one, and the restore gives the
//! guest a new generation ID.

use std::fs;
use std::path::{Path, PathBuf};

use log::{info, warn};

use super::copy::{copy_file, crc32c_file};
use super::lock::{FileLock, LockError, LockKind};
use super::manifest::{Manifest, CREATING, MEMORY};
use super::TemplateError;
use crate::config::{RawOptions, VmConfig};
use crate::control::QmpListen;
use crate::kvlist::KvList;
use crate::lifecycle::{self, Incoming, RunEnd, RunOptions};
use crate::snapshot::uri::StreamUri;

pub struct CloneArgs {
    pub dir: PathBuf,
    /// `id=ID,path=P`: where disk ID's copy goes.
    pub disks: Vec<String>,
    /// `id=ID,tap=T`: the TAP NIC ID uses.
    pub nets: Vec<String>,
    pub qmp: Option<QmpListen>,
    pub serial: String,
    pub paused: bool,
    pub vmgenid: bool,
}

/// A clone's disk copies made at default paths: removed when it ends.
struct EphemeralDisks(Vec<PathBuf>);

impl Drop for EphemeralDisks {
    fn drop(&mut self) {
        for p in &self.0 {
            match fs::remove_file(p) {
                Ok(()) => info!("removed the clone's disk {}", p.display()),
                Err(e) => warn!("removing the clone's disk {}: {e}", p.display()),
            }
        }
    }
}

/// Reads the template in `dir`, refusing one being created or changed.
pub fn open_template(dir: &Path) -> Result<Manifest, TemplateError> {
    match Manifest::read(dir).map_err(TemplateError::Refused)? {
        Some(m) => Ok(m),
        None if dir.join(CREATING).exists() => Err(TemplateError::Refused(format!(
            "--dir {}: the template is being created (or its creation was interrupted); wait for `vmm template create` to finish",
            dir.display()
        ))),
        None => Err(TemplateError::Refused(format!(
            "--dir {}: no template there (no template.json); make one with `vmm template create --dir {}`",
            dir.display(),
            dir.display()
        ))),
    }
}

/// Every template file must be the one recorded; the state also by checksum
/// (it is small and every clone reads all of it).
fn check_files(dir: &Path, m: &Manifest) -> Result<(), TemplateError> {
    let mut problems = Vec::new();
    for f in m.files() {
        let path = dir.join(&f.file);
        if let Some(change) = f.identity.check(&path) {
            problems.push(format!("{}: {change}", path.display()));
        }
    }
    let state = dir.join(&m.state.file);
    if problems.is_empty() {
        match crc32c_file(&state) {
            Ok(c) if c == m.state.crc32c => {}
            Ok(c) => problems.push(format!(
                "{}: checksum {c:#010x}, recorded {:#010x}: the file is damaged",
                state.display(),
                m.state.crc32c
            )),
            Err(e) => problems.push(format!("{}: {e}", state.display())),
        }
    }
    for d in &m.disks {
        if let Some(id) = &d.source_identity {
            if let Some(change) = id.check(&d.source) {
                problems.push(format!(
                    "read-only disk id={} ({}): {change}; the template's RAM caches it as it was",
                    d.id,
                    d.source.display()
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.push(format!(
        "the template in {} no longer matches what it was made from; create it again",
        dir.display()
    ));
    Err(TemplateError::Refused(problems.join("\n")))
}

/// `key=value` overrides by device id, checked against the template's ids.
fn overrides(
    option: &str,
    items: &[String],
    key: &str,
    known: &[&str],
) -> Result<Vec<(String, String)>, TemplateError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for text in items {
        let kv = KvList::parse(option, text, &["id", key], &format!("id=ID,{key}=..."))
            .map_err(|e| TemplateError::Refused(e.to_string()))?;
        let id = kv
            .require("id", "name the template's device: id=ID")
            .map_err(|e| TemplateError::Refused(e.to_string()))?
            .to_string();
        let value = kv
            .require(key, "")
            .map_err(|e| TemplateError::Refused(e.to_string()))?
            .to_string();
        if !known.contains(&id.as_str()) {
            return Err(TemplateError::Refused(format!(
                "{option} id={id}: the template has no such device; its ids are [{}]",
                known.join(", ")
            )));
        }
        if out.iter().any(|(i, _)| *i == id) {
            return Err(TemplateError::Refused(format!(
                "{option} id={id}: given twice"
            )));
        }
        out.push((id, value));
    }
    Ok(out)
}

/// Where a disk copy goes when the user names none: beside the template
/// directory, named after it, this process and the disk.
fn default_disk_path(dir: &Path, id: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "template".into(), |n| n.to_string_lossy().into_owned());
    let parent = dir.parent().unwrap_or(Path::new("/"));
    parent.join(format!("{name}.clone-{}-{id}.img", std::process::id()))
}

pub fn clone(args: CloneArgs) -> Result<RunEnd, TemplateError> {
    let dir = std::path::absolute(&args.dir)
        .map_err(|e| TemplateError::Failed(format!("resolving {}: {e}", args.dir.display())))?;
    let m = open_template(&dir)?;
    let memory = dir.join(MEMORY);
    // Held for the clone's life: the template cannot be re-created or
    // destroyed (without --force) under it.
    let _lock = FileLock::try_shared(&memory).map_err(|e| match e {
        LockError::Busy { ref holders, .. }
            if holders.iter().any(|h| h.kind == LockKind::Exclusive) =>
        {
            TemplateError::Refused(format!(
                "--dir {}: the template is being created ({}); wait for `vmm template create` to finish",
                dir.display(),
                super::describe_holders(holders)
            ))
        }
        e => TemplateError::Refused(e.to_string()),
    })?;
    check_files(&dir, &m)?;

    let writable: Vec<&str> = m
        .disks
        .iter()
        .filter(|d| !d.readonly)
        .map(|d| d.id.as_str())
        .collect();
    let disk_paths = overrides("--disk", &args.disks, "path", &writable)?;
    let net_ids: Vec<&str> = m.nets.iter().map(|n| n.id.as_str()).collect();
    let taps = overrides("--net", &args.nets, "tap", &net_ids)?;

    let mut ephemeral = EphemeralDisks(Vec::new());
    let mut disks = Vec::new();
    for d in &m.disks {
        let path = match &d.captured {
            None => d.source.clone(),
            Some(captured) => {
                let named = disk_paths.iter().find(|(i, _)| *i == d.id);
                let dst = match named {
                    Some((_, p)) => PathBuf::from(p),
                    None => default_disk_path(&dir, &d.id),
                };
                let how = copy_file(&dir.join(&captured.file), &dst)
                    .map_err(|e| TemplateError::Failed(format!("--disk id={}: {e}", d.id)))?;
                info!("--disk id={}: {} (a {how})", d.id, dst.display());
                if named.is_none() {
                    ephemeral.0.push(dst.clone());
                }
                dst
            }
        };
        disks.push(format!(
            "path={},readonly={},id={}",
            path.display(),
            if d.readonly { "on" } else { "off" },
            d.id
        ));
    }
    let nets = m
        .nets
        .iter()
        .map(|n| {
            let tap = taps
                .iter()
                .find(|(i, _)| *i == n.id)
                .map_or(n.tap.as_str(), |(_, t)| t.as_str());
            format!("tap={tap},mac={},id={}", n.mac, n.id)
        })
        .collect();
    let raw = RawOptions {
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: None,
        cpus: m.cpus,
        memory: format!(
            "size={},backing=file,path={},share=off,readonly=on,rom=off",
            m.memory_size,
            memory.display()
        ),
        disks,
        nets,
        balloon: m.balloon.as_ref().map(|b| {
            let onoff = |v: bool| if v { "on" } else { "off" };
            format!(
                "free-page-reporting={},deflate-on-oom={},stats={}",
                onoff(b.free_page_reporting),
                onoff(b.deflate_on_oom),
                onoff(b.stats)
            )
        }),
        virtio_mems: m
            .virtio_mems
            .iter()
            .map(|v| {
                format!(
                    "size={},block-size={},backing={},requested=0,id={}",
                    v.size, v.block_size, v.backing, v.id
                )
            })
            .collect(),
        // A clone's RAM is private: vhost-user cannot serve it (the
        // template's creation refused such devices).
        vhost_user_blks: Vec::new(),
        vhost_user_nets: Vec::new(),
        serial: args.serial.clone(),
        vmgenid: Some(if args.vmgenid { "on" } else { "off" }.into()),
    };
    let cfg = VmConfig::parse(&raw)
        .and_then(|c| c.validate_except_kernel().map(|()| c))
        .map_err(|e| TemplateError::Refused(e.to_string()))?;
    let opts = RunOptions {
        start_paused: args.paused,
        incoming: Some(Incoming::Uri(StreamUri::File(dir.join(&m.state.file)))),
        qmp: args.qmp,
        template: None,
    };
    info!("cloning the template in {}", dir.display());
    let end = lifecycle::run(cfg, opts).map_err(|e| TemplateError::Failed(e.to_string()))?;
    drop(ephemeral);
    Ok(end)
}
