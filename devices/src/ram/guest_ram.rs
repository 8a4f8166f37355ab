//! Mapping guest RAM from its backings into the VMM, on vm-memory.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::Arc;

use log::{info, warn};
use thiserror::Error;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::backing::{BackingError, BackingKind, BackingSpec, RamBacking};
use super::host_mapping::{HostMapping, MappingLease};

/// Guest RAM as devices access it. Each region owns its host mapping, so a
/// clone of this value (as vhost-user code keeps in a `GuestMemoryAtomic`)
/// stays valid after the `GuestRam` it came from is dropped.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<MappingLease>;
type GuestRegionMmap = vm_memory::GuestRegionMmap<MappingLease>;

const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// x86-64's transparent huge page size: every mapping starts on this boundary.
const THP_SIZE: u64 = 2 << 20;

/// What a range of guest RAM is for: the policy checks devices against the
/// region they use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionRole {
    /// Boot RAM (`--memory`).
    Boot,
    /// The memory region of the virtio-mem device with this id.
    VirtioMem(String),
}

/// One contiguous guest-physical range and the backing behind it.
#[derive(Clone, Debug)]
pub struct RamRegion {
    pub role: RegionRole,
    pub guest_base: GuestAddress,
    pub size: u64,
    pub backing: RamBacking,
    /// Offset of `guest_base` in the backing fd, when there is one.
    pub file_offset: Option<u64>,
    pub(super) file: Option<Arc<File>>,
}

impl RamRegion {
    pub fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        addr.0 >= self.guest_base.0
            && addr
                .0
                .checked_add(len)
                .is_some_and(|end| end <= self.guest_base.0 + self.size)
    }

    /// The fd another process can map to see the same pages, when the backing allows it.
    pub fn shared_fd(&self) -> Option<&Arc<File>> {
        if self.backing.shareable() {
            self.file.as_ref()
        } else {
            None
        }
    }
}

/// All of guest RAM: the vm-memory view devices use and the facts the policy needs.
#[derive(Clone, Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    regions: Vec<RamRegion>,
}

impl GuestRam {
    pub fn builder() -> GuestRamBuilder {
        GuestRamBuilder::default()
    }

    /// Anonymous RAM at guest address 0: the common case in tests.
    pub fn anonymous(size: u64) -> Result<Self, GuestRamError> {
        let mut b = Self::builder();
        b.add(
            "--memory",
            &BackingSpec::anonymous(),
            RegionRole::Boot,
            &[(GuestAddress(0), size)],
        )?;
        b.build()
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// The region holding `[addr, addr + len)`, if one holds all of it.
    pub fn region_of(&self, addr: GuestAddress, len: u64) -> Option<&RamRegion> {
        self.regions.iter().find(|r| r.contains(addr, len))
    }

    /// Each region's role and backing, as the policy check takes them.
    pub fn backings(&self) -> Vec<(RegionRole, RamBacking)> {
        self.regions
            .iter()
            .map(|r| (r.role.clone(), r.backing.clone()))
            .collect()
    }

    /// Total size of the regions with this role.
    pub fn size_of(&self, role: &RegionRole) -> u64 {
        self.regions
            .iter()
            .filter(|r| &r.role == role)
            .map(|r| r.size)
            .sum()
    }
}

#[derive(Debug, Error)]
pub enum GuestRamError {
    #[error(transparent)]
    Backing(#[from] BackingError),
    #[error("{what} ({backing}): size {size:#x} at {base:#x} is not a multiple of {align:#x} bytes; use a size in whole {align}-byte pages")]
    Unaligned {
        what: String,
        backing: String,
        base: u64,
        size: u64,
        align: u64,
    },
    #[error("{what} ({backing}): cannot open {path}: {source}; {fix}")]
    Open {
        what: String,
        backing: String,
        path: String,
        fix: String,
        source: io::Error,
    },
    #[error(
        "{what} ({backing}): {path} is {file_size} bytes but the RAM needs {needed} bytes; {fix}"
    )]
    FileTooShort {
        what: String,
        backing: String,
        path: String,
        file_size: u64,
        needed: u64,
        fix: String,
    },
    #[error("{what} ({backing}): {reason}; {fix}")]
    Host {
        what: String,
        backing: String,
        reason: String,
        fix: String,
    },
    #[error("{what} ({backing}): {op} failed: {source}")]
    Io {
        what: String,
        backing: String,
        op: String,
        source: io::Error,
    },
    #[error("guest RAM regions overlap or are empty: {0}")]
    Layout(String),
}

/// Collects backings and their guest ranges, then maps them all at once.
#[derive(Default)]
pub struct GuestRamBuilder {
    regions: Vec<(RamRegion, GuestRegionMmap)>,
}

impl GuestRamBuilder {
    /// Maps `spec` at the given guest ranges; consecutive ranges take
    /// consecutive offsets in the backing fd (RAM split around the MMIO hole
    /// is one file). `what` names the memory in errors.
    pub fn add(
        &mut self,
        what: &str,
        spec: &BackingSpec,
        role: RegionRole,
        ranges: &[(GuestAddress, u64)],
    ) -> Result<&mut Self, GuestRamError> {
        let backing = spec.validate(what)?;
        let align = backing.discard_granularity();
        let total = ranges.iter().try_fold(0u64, |acc, (base, size)| {
            if *size == 0 || size % align != 0 || base.0 % align != 0 {
                return Err(GuestRamError::Unaligned {
                    what: what.into(),
                    backing: spec.to_string(),
                    base: base.0,
                    size: *size,
                    align,
                });
            }
            acc.checked_add(*size)
                .ok_or_else(|| GuestRamError::Layout(format!("{what}: total size overflows")))
        })?;
        if spec.hugepages {
            check_hugepages(what, spec, total)?;
        }
        let file = open_backing(what, spec, total)?.map(Arc::new);

        let mut prot = libc::PROT_READ | libc::PROT_WRITE;
        if spec.is_rom() {
            prot = libc::PROT_READ;
        }
        let mut flags = libc::MAP_NORESERVE;
        flags |= if spec.share {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if file.is_none() {
            flags |= libc::MAP_ANONYMOUS;
            if spec.hugepages {
                flags |= libc::MAP_HUGETLB;
            }
        }

        let align = if spec.hugepages {
            huge_page_size().max(THP_SIZE)
        } else {
            THP_SIZE
        } as usize;
        let mut offset = 0u64;
        for (base, size) in ranges {
            let fd = file.as_ref().map_or(-1, |f| f.as_raw_fd());
            let host = HostMapping::new(*size as usize, prot, flags, fd, offset, align).map_err(
                |source| GuestRamError::Io {
                    what: what.into(),
                    backing: spec.to_string(),
                    op: format!("mmap of {size:#x} bytes"),
                    source,
                },
            )?;
            if file.is_none() && !spec.hugepages {
                // Where the host leaves transparent huge pages to madvise,
                // ask for them, as QEMU does for guest RAM.
                // SAFETY: advice on a mapping this builder owns; failure only loses the hint.
                unsafe {
                    libc::madvise(host.addr().cast(), *size as usize, libc::MADV_HUGEPAGE);
                }
            }
            let addr = host.addr();
            // SAFETY: `host` is a live mapping of exactly `size` bytes, and
            // the lease that owns it is the region's own, so it is unmapped
            // only after the region and every clone of it are gone.
            let mut builder = unsafe {
                MmapRegionBuilder::new_with_bitmap(*size as usize, MappingLease::new(host))
                    .with_raw_mmap_pointer(addr)
            }
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .with_hugetlbfs(spec.hugepages);
            if let Some(f) = &file {
                builder = builder.with_file_offset(FileOffset::from_arc(f.clone(), offset));
            }
            let mapping = builder.build().map_err(|e| GuestRamError::Io {
                what: what.into(),
                backing: spec.to_string(),
                op: format!("mmap of {size:#x} bytes"),
                source: io::Error::other(e.to_string()),
            })?;
            let region = GuestRegionMmap::new(mapping, *base).ok_or_else(|| {
                GuestRamError::Layout(format!("{what}: region at {:#x} overflows", base.0))
            })?;
            self.regions.push((
                RamRegion {
                    role: role.clone(),
                    guest_base: *base,
                    size: *size,
                    backing: backing.clone(),
                    file_offset: file.as_ref().map(|_| offset),
                    file: file.clone(),
                },
                region,
            ));
            offset += size;
        }
        Ok(self)
    }

    pub fn build(mut self) -> Result<GuestRam, GuestRamError> {
        self.regions.sort_by_key(|(r, _)| r.guest_base);
        let (regions, mmaps): (Vec<_>, Vec<_>) = self.regions.into_iter().unzip();
        let memory = GuestMemoryMmap::from_regions(mmaps)
            .map_err(|e| GuestRamError::Layout(e.to_string()))?;
        debug_assert_eq!(memory.num_regions(), regions.len());
        for (m, r) in memory.iter().zip(&regions) {
            debug_assert_eq!(m.start_addr(), r.guest_base);
        }
        Ok(GuestRam { memory, regions })
    }
}

fn open_backing(what: &str, spec: &BackingSpec, size: u64) -> Result<Option<File>, GuestRamError> {
    match &spec.kind {
        BackingKind::Anonymous => Ok(None),
        BackingKind::Memfd => {
            let name = CString::new("guest-ram").expect("static name has no NUL");
            let mut mfd_flags = libc::MFD_CLOEXEC;
            if spec.hugepages {
                mfd_flags |= libc::MFD_HUGETLB;
            }
            // SAFETY: name is a valid C string; the returned fd is checked and owned by the File.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), mfd_flags) };
            if fd < 0 {
                return Err(GuestRamError::Io {
                    what: what.into(),
                    backing: spec.to_string(),
                    op: "memfd_create".into(),
                    source: io::Error::last_os_error(),
                });
            }
            // SAFETY: fd is a fresh memfd that nothing else owns.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(size).map_err(|e| GuestRamError::Io {
                what: what.into(),
                backing: spec.to_string(),
                op: format!("ftruncate of the memfd to {size} bytes"),
                source: e,
            })?;
            Ok(Some(file))
        }
        BackingKind::File(path) => open_file(what, spec, path, size).map(Some),
    }
}

fn open_file(
    what: &str,
    spec: &BackingSpec,
    path: &Path,
    size: u64,
) -> Result<File, GuestRamError> {
    let open_err = |e: io::Error, fix: &str| open_error(what, spec, path, e, fix);
    if path.is_dir() {
        return Err(open_err(
            io::Error::other("it is a directory"),
            "give the path of a file (it is created if missing, unless readonly=on)",
        ));
    }
    let file = if spec.readonly {
        // O_RDONLY is what guarantees the template file is never modified.
        OpenOptions::new().read(true).open(path).map_err(|e| {
            open_err(
                e,
                "a template clone needs the template's RAM file; create the template first",
            )
        })?
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(e, "check the path and its permissions"))?
    };
    let meta = file.metadata().map_err(|e| open_err(e, "check the path"))?;
    if !meta.is_file() {
        return Err(open_err(
            io::Error::other("not a regular file"),
            "give the path of a regular file",
        ));
    }
    if spec.hugepages && !is_hugetlbfs(&file) {
        return Err(GuestRamError::Host {
            what: what.into(),
            backing: spec.to_string(),
            reason: format!("{} is not on a hugetlbfs mount", path.display()),
            fix: "put the file on hugetlbfs (mount -t hugetlbfs none /dev/hugepages) or use hugepages=off".into(),
        });
    }
    let len = meta.len();
    if len < size {
        if let Some(e) = refuse_short_file(what, spec, path, len, size) {
            return Err(e);
        }
        file.set_len(size).map_err(|e| GuestRamError::Io {
            what: what.into(),
            backing: spec.to_string(),
            op: format!("growing {} to {size} bytes", path.display()),
            source: e,
        })?;
        if len > 0 {
            info!("{what}: grew {} from {len} to {size} bytes", path.display());
        }
    } else if len > size {
        warn!(
            "{what}: {} is {len} bytes, larger than the {size} bytes of RAM; only the start is used",
            path.display()
        );
    }
    Ok(file)
}

fn open_error(
    what: &str,
    spec: &BackingSpec,
    path: &Path,
    source: io::Error,
    fix: &str,
) -> GuestRamError {
    GuestRamError::Open {
        what: what.into(),
        backing: spec.to_string(),
        path: path.display().to_string(),
        fix: fix.into(),
        source,
    }
}

/// A file of `len` bytes is too short for `size` bytes of RAM and may not
/// be grown: it is read-only, or growing it would change a file that a
/// private mapping promises not to write. An empty or new file is grown.
fn refuse_short_file(
    what: &str,
    spec: &BackingSpec,
    path: &Path,
    len: u64,
    size: u64,
) -> Option<GuestRamError> {
    if len >= size || !(spec.readonly || (!spec.share && len > 0)) {
        return None;
    }
    let fix = if spec.readonly {
        "a clone's memory size must equal the template's; give the template's size"
    } else {
        "use the memory size the file was made for, or share=on to let the VMM grow it"
    };
    Some(GuestRamError::FileTooShort {
        what: what.into(),
        backing: spec.to_string(),
        path: path.display().to_string(),
        file_size: len,
        needed: size,
        fix: fix.into(),
    })
}

fn is_hugetlbfs(file: &File) -> bool {
    // SAFETY: statfs is plain data; fstatfs fills it for a valid fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is valid for the life of `file`, and `st` is writable.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
}

fn meminfo_value(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The host's default huge page size, in bytes (2 MiB on x86-64).
pub(super) fn huge_page_size() -> u64 {
    // Fixed for the life of the host kernel, and asked on every discard.
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| meminfo_value("Hugepagesize:").map_or(2 << 20, |kb| kb * 1024))
}

fn check_hugepages(what: &str, spec: &BackingSpec, size: u64) -> Result<(), GuestRamError> {
    let page = huge_page_size();
    let free = meminfo_value("HugePages_Free:").unwrap_or(0);
    let needed = size.div_ceil(page);
    if free < needed {
        return Err(GuestRamError::Host {
            what: what.into(),
            backing: spec.to_string(),
            reason: format!(
                "hugepages=on needs {needed} free huge pages of {} KiB but the host has {free}",
                page / 1024
            ),
            fix: format!(
                "reserve them (echo {needed} > /proc/sys/vm/nr_hugepages) or use hugepages=off"
            ),
        });
    }
    Ok(())
}

/// Checks a backing for `size` bytes without creating, growing or mapping
/// anything: what `--dry-run` can promise about the files and the host.
pub fn preflight(what: &str, spec: &BackingSpec, size: u64) -> Result<(), GuestRamError> {
    spec.validate(what)?;
    if spec.hugepages {
        check_hugepages(what, spec, size)?;
    }
    let BackingKind::File(path) = &spec.kind else {
        return Ok(());
    };
    let open_err = |e: io::Error, fix: &str| open_error(what, spec, path, e, fix);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !spec.readonly => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            return match parent.map(std::fs::metadata) {
                Some(Err(e)) => Err(open_err(e, "create its directory first")),
                _ => Ok(()),
            };
        }
        Err(e) => {
            return Err(open_err(
                e,
                "a template clone needs the template's RAM file; create the template first",
            ))
        }
    };
    if !meta.is_file() {
        return Err(open_err(
            io::Error::other("not a regular file"),
            "give the path of a regular file",
        ));
    }
    // Opening without O_CREAT or O_TRUNC changes nothing but proves the run can.
    let mut o = OpenOptions::new();
    o.read(true).write(!spec.readonly);
    o.open(path)
        .map_err(|e| open_err(e, "check the file's permissions"))?;
    if let Some(e) = refuse_short_file(what, spec, path, meta.len(), size) {
        return Err(e);
    }
    Ok(())
}
