//! `vmm template status` and `vmm template destroy`.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use devices::size::format_size;
use log::warn;

use super::clone::open_template;
use super::copy::crc32c_file;
use super::create::remove_template_files;
use super::lock::{self, FileLock, LockKind};
use super::manifest::{Manifest, MEMORY};
use super::TemplateError;

/// Bytes of `path` in the page cache (mincore over a shared read mapping).
pub fn page_cache_bytes(path: &Path) -> std::io::Result<u64> {
    let f = fs::File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a new read-only shared mapping of a whole file we opened; it
    // is only passed to mincore and unmapped before returning.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let page = 4096usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: addr/len is the mapping made above; vec has one byte per page.
    let r = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(addr, len) };
    if r != 0 {
        return Err(err);
    }
    let resident = vec.iter().filter(|b| *b & 1 == 1).count() as u64;
    Ok((resident * page as u64).min(len as u64))
}

fn on_disk(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// The report `template status` prints; with `verify`, every file's
/// checksum is computed again.
pub fn status(dir: &Path, verify: bool) -> Result<String, TemplateError> {
    let m: Manifest = open_template(dir)?;
    let mut s = String::new();
    let _ = writeln!(s, "template:  {}", dir.display());
    let _ = writeln!(
        s,
        "made by:   vmm {} (template format {}, snapshot format {}), ready on {} after {:.2} s",
        m.vmm_version,
        m.format,
        m.snapshot_format,
        m.ready,
        m.ready_after_ms as f64 / 1000.0
    );
    let _ = writeln!(s, "kernel:    {}", m.kernel.display());
    if let Some(i) = &m.initrd {
        let _ = writeln!(s, "initrd:    {}", i.display());
    }
    let _ = writeln!(s, "cmdline:   {}", m.cmdline);
    let _ = writeln!(
        s,
        "vm:        {} vCPUs, {} RAM, generation ID device {}",
        m.cpus,
        format_size(m.memory_size),
        if m.vmgenid { "on" } else { "off" }
    );
    for d in &m.disks {
        match &d.captured {
            Some(f) => {
                let _ = writeln!(
                    s,
                    "disk:      id={} captured in {} ({} bytes) from {}",
                    d.id,
                    f.file,
                    f.size,
                    d.source.display()
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "disk:      id={} read-only, used in place: {}",
                    d.id,
                    d.source.display()
                );
            }
        }
    }
    for n in &m.nets {
        let _ = writeln!(
            s,
            "net:       id={} mac={} (template's tap {})",
            n.id, n.mac, n.tap
        );
    }
    let mut total = 0;
    for f in m.files() {
        let path = dir.join(&f.file);
        let used = on_disk(&path);
        total += used;
        let changed = f.identity.check(&path);
        let mut line = format!(
            "file:      {:<16} {:>12} bytes, {:>12} on disk, crc32c {:#010x}",
            f.file, f.size, used, f.crc32c
        );
        if let Some(c) = &changed {
            let _ = write!(line, "  CHANGED: {c}");
        } else if verify {
            match crc32c_file(&path) {
                Ok(c) if c == f.crc32c => line.push_str("  verified"),
                Ok(c) => {
                    let _ = write!(line, "  DAMAGED: checksum now {c:#010x}");
                }
                Err(e) => {
                    let _ = write!(line, "  unreadable: {e}");
                }
            }
        }
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(s, "on disk:   {} in all", format_size(total));
    let memory = dir.join(MEMORY);
    match page_cache_bytes(&memory) {
        Ok(b) => {
            let _ = writeln!(
                s,
                "page cache: {} of {} RAM resident ({:.0}%)",
                format_size(b),
                format_size(m.memory_size),
                b as f64 * 100.0 / m.memory_size.max(1) as f64
            );
        }
        Err(e) => {
            let _ = writeln!(s, "page cache: unknown ({e})");
        }
    }
    let holders = lock::holders(&memory).map_err(|e| {
        TemplateError::Failed(format!("reading the locks of {}: {e}", memory.display()))
    })?;
    let clones: Vec<i32> = holders
        .iter()
        .filter(|h| h.kind == LockKind::Shared)
        .map(|h| h.pid)
        .collect();
    let _ = writeln!(
        s,
        "clones:    {}{}",
        clones.len(),
        if clones.is_empty() {
            String::new()
        } else {
            format!(
                " (pids {})",
                clones
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    Ok(s)
}

/// Removes the template; refused while clones map its RAM unless `force`
/// (their mappings keep the removed file's pages alive until they end).
pub fn destroy(dir: &Path, force: bool) -> Result<String, TemplateError> {
    if !dir.is_dir() {
        return Err(TemplateError::Refused(format!(
            "--dir {}: no such directory",
            dir.display()
        )));
    }
    let manifest = Manifest::read(dir).map_err(TemplateError::Refused);
    let creating = dir.join(super::manifest::CREATING).exists();
    if matches!(manifest, Ok(None)) && !creating {
        return Err(TemplateError::Refused(format!(
            "--dir {}: no template there (no template.json)",
            dir.display()
        )));
    }
    let memory = dir.join(MEMORY);
    // Exclusive while removing: a clone starting now waits for nothing and
    // fails cleanly on the missing manifest.
    let _lock = if memory.exists() {
        match FileLock::try_exclusive(&memory) {
            Ok(l) => Some(l),
            Err(super::lock::LockError::Busy { holders, .. }) if !force => {
                let clones = holders
                    .iter()
                    .filter(|h| h.kind == LockKind::Shared)
                    .count();
                return Err(TemplateError::Refused(format!(
                    "--dir {}: {} clone(s) still run from it ({}){}; stop them first, or give --force (running clones keep working: their RAM stays mapped until they end)",
                    dir.display(),
                    clones,
                    super::describe_holders(&holders),
                    if holders.iter().any(|h| h.kind == LockKind::Exclusive) {
                        ", and it is being created"
                    } else {
                        ""
                    }
                )));
            }
            Err(super::lock::LockError::Busy { holders, .. }) => {
                warn!(
                    "--force: removing the template under {}",
                    super::describe_holders(&holders)
                );
                None
            }
            Err(e) => return Err(TemplateError::Failed(e.to_string())),
        }
    } else {
        None
    };
    remove_template_files(dir);
    let removed_dir = fs::remove_dir(dir).is_ok();
    Ok(if removed_dir {
        format!("template {} destroyed", dir.display())
    } else {
        format!(
            "template {} destroyed; the directory holds other files and was kept",
            dir.display()
        )
    })
}
