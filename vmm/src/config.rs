//! Command-line options -> a validated `VmConfig`.
//!
//! Parsing catches malformed options (one clear line each); `validate`
//! then checks everything outside the process that can be checked without
//! starting the VM: files, sizes, and the RAM policy.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use devices::ram::policy::{self, Operation};
use devices::ram::{
    BackingKind, BackingSpec, PolicyError, RamBacking, RamRequirement, RegionRole, RomMode,
};
use devices::size::format_size;
use devices::vhost_user::{VhostUserBlkConfig, VhostUserNetConfig};
use devices::virtio::balloon::BalloonConfig;
use devices::virtio::block::BlockConfig;
use devices::virtio::mem::{MemConfig, MIN_BLOCK_SIZE};
use devices::virtio::net::NetConfig;
use thiserror::Error;

use crate::kvlist::{KvError, KvList};
use crate::layout;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Option(#[from] KvError),
    #[error("{option}: {reason}")]
    Invalid { option: String, reason: String },
    #[error("{option}: {path}: {reason}")]
    File {
        option: String,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Ram(#[from] devices::ram::GuestRamError),
    #[error("{0}")]
    Backing(#[from] devices::ram::BackingError),
}

fn invalid(option: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option: option.into(),
        reason: reason.into(),
    }
}

/// Where the guest's COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    Stdio,
    File(PathBuf),
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    pub size: u64,
    pub backing: BackingSpec,
}

/// Everything `vmm run` was asked for, parsed.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u8,
    pub memory: MemoryConfig,
    pub disks: Vec<BlockConfig>,
    pub nets: Vec<NetConfig>,
    pub balloon: Option<BalloonConfig>,
    pub virtio_mems: Vec<MemConfig>,
    /// Devices served by vhost-user back ends, after the in-process ones.
    pub vhost_user_blks: Vec<VhostUserBlkConfig>,
    pub vhost_user_nets: Vec<VhostUserNetConfig>,
    pub serial: SerialConfig,
    /// Per NIC: whether `mac=` was given. A restore keeps the saved MAC of a
    /// NIC whose MAC was made up at random on the command line.
    pub mac_given: Vec<bool>,
    /// `--vmgenid`: a booted VM gets a VM Generation ID device; a restored
    /// VM that has one gets a new generation ID.
    pub vmgenid: bool,
}

/// The raw option strings, as clap collected them.
#[derive(Clone, Debug, Default)]
pub struct RawOptions {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: u8,
    pub memory: String,
    pub disks: Vec<String>,
    pub nets: Vec<String>,
    pub balloon: Option<String>,
    pub virtio_mems: Vec<String>,
    pub vhost_user_blks: Vec<String>,
    pub vhost_user_nets: Vec<String>,
    pub serial: String,
    /// `--vmgenid on|off`; None means the default, on.
    pub vmgenid: Option<String>,
}

/// Request queues of one vhost-user-blk device (each a virtio-mmio queue).
pub const MAX_VHOST_USER_QUEUES: u16 = 16;

/// `socket=P`, which must name a listening unix socket (the daemon runs
/// before the VM starts).
fn vhost_user_socket(kv: &KvList, start: &str) -> Result<PathBuf, KvError> {
    let p = kv.require("socket", "give the back end's socket: socket=PATH")?;
    if p.is_empty() {
        return Err(kv.bad(
            "socket",
            p,
            format!("give the back end's socket, e.g. start `{start}` first"),
        ));
    }
    Ok(PathBuf::from(p))
}

pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
pub const MAX_CPUS: u8 = 64;
const BACKING_KEYS: &[&str] = &["backing", "path", "share", "readonly", "rom", "hugepages"];

/// Reads `backing=`, `path=`, `share=`, `readonly=`, `rom=`, `hugepages=`.
fn parse_backing(kv: &KvList, allow_file: bool) -> Result<BackingSpec, KvError> {
    let kind = match kv.get("backing").unwrap_or(if kv.get("path").is_some() {
        "file"
    } else {
        "anon"
    }) {
        "anon" | "anonymous" | "ram" => BackingKind::Anonymous,
        "memfd" => BackingKind::Memfd,
        "file" if allow_file => BackingKind::File(PathBuf::from(
            kv.require("path", "backing=file needs path=FILE (the RAM file)")?,
        )),
        v => {
            return Err(kv.bad(
                "backing",
                v,
                if allow_file {
                    "use anon, memfd or file"
                } else {
                    "use anon or memfd"
                },
            ))
        }
    };
    if kv.get("path").is_some() && !matches!(kind, BackingKind::File(_)) {
        return Err(kv.bad(
            "path",
            kv.get("path").unwrap_or(""),
            "path= goes with backing=file only",
        ));
    }
    // As QEMU: memfd defaults to share=on, files to share=off.
    let share_default = matches!(kind, BackingKind::Memfd);
    let rom = match kv.get("rom") {
        None | Some("auto") => RomMode::Auto,
        Some("on") => RomMode::On,
        Some("off") => RomMode::Off,
        Some(v) => return Err(kv.bad("rom", v, "use on, off or auto")),
    };
    Ok(BackingSpec {
        kind,
        share: kv.flag("share", share_default)?,
        readonly: kv.flag("readonly", false)?,
        rom,
        hugepages: kv.flag("hugepages", false)?,
    })
}

fn parse_mac(kv: &KvList, text: &str) -> Result<[u8; 6], KvError> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(kv.bad("mac", text, "write six hex bytes, e.g. 52:54:00:12:34:56"));
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| kv.bad("mac", text, "write six hex bytes, e.g. 52:54:00:12:34:56"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(kv.bad(
            "mac",
            text,
            "a multicast address cannot be a NIC's address; clear the lowest bit of the first byte",
        ));
    }
    if mac == [0; 6] {
        return Err(kv.bad("mac", text, "the all-zero address is not valid"));
    }
    Ok(mac)
}

/// A MAC in QEMU's 52:54:00 range with random low bytes, so that VMs started
/// without `mac=` do not collide on one bridge.
fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut r))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        r = [t as u8, (t >> 8) as u8, (t >> 16) as u8];
    }
    [0x52, 0x54, 0x00, r[0], r[1], r[2]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn valid_id(kv: &KvList, id: &str) -> Result<(), KvError> {
    if id.is_empty()
        || id.len() > 32
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(kv.bad("id", id, "use 1 to 32 letters, digits, '-' or '_'"));
    }
    Ok(())
}

impl VmConfig {
    pub fn parse(raw: &RawOptions) -> Result<VmConfig, ConfigError> {
        if raw.cpus == 0 || raw.cpus > MAX_CPUS {
            return Err(invalid(
                "--cpus",
                format!("{} is out of range; use 1 to {MAX_CPUS}", raw.cpus),
            ));
        }
        let memory = Self::parse_memory(&raw.memory)?;
        let mut ids: Vec<String> = Vec::new();
        let mut claim = |option: &str, id: String| -> Result<String, ConfigError> {
            if ids.contains(&id) {
                return Err(invalid(
                    option,
                    format!("id '{id}' is used by another device; give each device its own id="),
                ));
            }
            ids.push(id.clone());
            Ok(id)
        };

        let mut disks = Vec::new();
        for (i, text) in raw.disks.iter().enumerate() {
            let kv = KvList::parse(
                "--disk",
                text,
                &["path", "readonly", "id"],
                "path=disk.img,readonly=on",
            )?;
            let path = PathBuf::from(kv.require("path", "give the raw image: path=disk.img")?);
            let id = kv
                .get("id")
                .map_or_else(|| format!("disk{i}"), str::to_string);
            valid_id(&kv, &id)?;
            disks.push(BlockConfig {
                id: claim("--disk", id)?,
                path,
                readonly: kv.flag("readonly", false)?,
            });
        }

        let mut nets = Vec::new();
        let mut mac_given = Vec::new();
        for (i, text) in raw.nets.iter().enumerate() {
            let kv = KvList::parse(
                "--net",
                text,
                &["tap", "mac", "id"],
                "tap=tap0,mac=52:54:00:12:34:56",
            )?;
            let tap = kv
                .require("tap", "name the host TAP device: tap=tap0")?
                .to_string();
            if tap.is_empty()
                || tap.len() > 15
                || tap.contains('/')
                || tap.chars().any(char::is_whitespace)
            {
                return Err(kv
                    .bad(
                        "tap",
                        &tap,
                        "an interface name has 1 to 15 characters, no '/' or spaces",
                    )
                    .into());
            }
            mac_given.push(kv.get("mac").is_some());
            let mac = match kv.get("mac") {
                Some(m) => parse_mac(&kv, m)?,
                None => random_mac(),
            };
            let id = kv
                .get("id")
                .map_or_else(|| format!("net{i}"), str::to_string);
            valid_id(&kv, &id)?;
            if nets.iter().any(|n: &NetConfig| n.tap == tap) {
                return Err(invalid(
                    "--net",
                    format!("TAP '{tap}' is given twice; each NIC needs its own TAP"),
                ));
            }
            nets.push(NetConfig {
                id: claim("--net", id)?,
                tap,
                mac,
            });
        }

        let mut vhost_user_blks = Vec::new();
        for (i, text) in raw.vhost_user_blks.iter().enumerate() {
            let kv = KvList::parse(
                "--vhost-user-blk",
                text,
                &["socket", "id", "queues"],
                "socket=/run/vu-blk.sock,queues=2",
            )?;
            let socket = vhost_user_socket(&kv, "vhost-user-blk --socket P --image disk.img")?;
            let id = kv
                .get("id")
                .map_or_else(|| format!("vublk{i}"), str::to_string);
            valid_id(&kv, &id)?;
            let queues = match kv.get("queues") {
                None => 1,
                Some(q) => q
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=MAX_VHOST_USER_QUEUES).contains(n))
                    .ok_or_else(|| {
                        kv.bad(
                            "queues",
                            q,
                            format!("use 1 to {MAX_VHOST_USER_QUEUES} request queues"),
                        )
                    })?,
            };
            vhost_user_blks.push(VhostUserBlkConfig {
                id: claim("--vhost-user-blk", id)?,
                socket,
                queues,
            });
        }
        let mut vhost_user_nets = Vec::new();
        for (i, text) in raw.vhost_user_nets.iter().enumerate() {
            let kv = KvList::parse(
                "--vhost-user-net",
                text,
                &["socket", "mac", "id"],
                "socket=/run/vu-net.sock,mac=52:54:00:12:34:56",
            )?;
            let socket = vhost_user_socket(&kv, "vhost-user-net --socket P --tap tap0")?;
            let mac = match kv.get("mac") {
                Some(m) => parse_mac(&kv, m)?,
                None => random_mac(),
            };
            let id = kv
                .get("id")
                .map_or_else(|| format!("vunet{i}"), str::to_string);
            valid_id(&kv, &id)?;
            vhost_user_nets.push(VhostUserNetConfig {
                id: claim("--vhost-user-net", id)?,
                socket,
                mac,
            });
        }

        let balloon = match &raw.balloon {
            None => None,
            Some(text) => {
                let kv = KvList::parse(
                    "--balloon",
                    text,
                    &["free-page-reporting", "deflate-on-oom", "stats", "target"],
                    "free-page-reporting=on,stats=on",
                )?;
                let target = kv.size("target")?;
                if let Some(t) = target {
                    if t > memory.size {
                        return Err(kv.bad("target", &format_size(t), format!("the target is the guest's memory size after inflation and cannot exceed --memory size={}", format_size(memory.size))).into());
                    }
                    if t % devices::ram::PAGE_SIZE != 0 {
                        return Err(kv
                            .bad("target", &format_size(t), "use a multiple of 4K")
                            .into());
                    }
                }
                Some(BalloonConfig {
                    free_page_reporting: kv.flag("free-page-reporting", false)?,
                    deflate_on_oom: kv.flag("deflate-on-oom", false)?,
                    stats: kv.flag("stats", false)?,
                    target,
                })
            }
        };

        let mut virtio_mems = Vec::new();
        for (i, text) in raw.virtio_mems.iter().enumerate() {
            let mut keys = vec!["size", "requested", "block-size", "id"];
            keys.extend_from_slice(BACKING_KEYS);
            let kv = KvList::parse("--virtio-mem", text, &keys, "size=4G,requested=1G")?;
            let size = kv.size("size")?.ok_or_else(|| KvError::Missing {
                option: "--virtio-mem".into(),
                key: "size".into(),
                hint: "give the most memory it may plug: size=4G".into(),
            })?;
            let block_size = kv.size("block-size")?.unwrap_or(MIN_BLOCK_SIZE);
            if !block_size.is_power_of_two() || block_size < MIN_BLOCK_SIZE {
                return Err(kv
                    .bad(
                        "block-size",
                        &format_size(block_size),
                        "use a power of two of at least 2M",
                    )
                    .into());
            }
            if size == 0 || size % block_size != 0 {
                return Err(kv
                    .bad(
                        "size",
                        &format_size(size),
                        format!(
                            "use a non-zero multiple of the block size ({})",
                            format_size(block_size)
                        ),
                    )
                    .into());
            }
            let requested = kv.size("requested")?.unwrap_or(0);
            if requested > size || requested % block_size != 0 {
                return Err(kv
                    .bad(
                        "requested",
                        &format_size(requested),
                        format!(
                            "use a multiple of the block size ({}) no larger than size={}",
                            format_size(block_size),
                            format_size(size)
                        ),
                    )
                    .into());
            }
            let id = kv
                .get("id")
                .map_or_else(|| format!("mem{i}"), str::to_string);
            valid_id(&kv, &id)?;
            virtio_mems.push(MemConfig {
                id: claim("--virtio-mem", id)?,
                size,
                requested,
                block_size,
                backing: parse_backing(&kv, true)?,
            });
        }

        let serial = match raw.serial.as_str() {
            "stdio" => SerialConfig::Stdio,
            "off" | "none" => SerialConfig::Off,
            s => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => SerialConfig::File(PathBuf::from(p)),
                _ => {
                    return Err(invalid(
                        "--serial",
                        format!("'{s}' is not stdio, file=PATH or off"),
                    ))
                }
            },
        };

        let vmgenid = match raw.vmgenid.as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(v) => return Err(invalid("--vmgenid", format!("'{v}' is not on or off"))),
        };

        Ok(VmConfig {
            kernel: raw.kernel.clone(),
            initrd: raw.initrd.clone(),
            cmdline: raw
                .cmdline
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            cpus: raw.cpus,
            memory,
            disks,
            nets,
            balloon,
            virtio_mems,
            vhost_user_blks,
            vhost_user_nets,
            serial,
            mac_given,
            vmgenid,
        })
    }

    fn parse_memory(text: &str) -> Result<MemoryConfig, ConfigError> {
        let mut keys = vec!["size"];
        keys.extend_from_slice(BACKING_KEYS);
        let kv = KvList::parse("--memory", text, &keys, "size=512M")?;
        let size = kv.size("size")?.ok_or_else(|| KvError::Missing {
            option: "--memory".into(),
            key: "size".into(),
            hint: "give the guest's RAM size: size=512M".into(),
        })?;
        let backing = parse_backing(&kv, true)?;
        let align = if backing.hugepages {
            2 << 20
        } else {
            devices::ram::PAGE_SIZE
        };
        if size < layout::MIN_RAM || size % align != 0 {
            return Err(kv
                .bad(
                    "size",
                    &format_size(size),
                    format!(
                        "use at least {} in whole {} pages",
                        format_size(layout::MIN_RAM),
                        format_size(align)
                    ),
                )
                .into());
        }
        if size > layout::MAX_RAM {
            return Err(kv
                .bad(
                    "size",
                    &format_size(size),
                    format!("the most this VMM maps is {}", format_size(layout::MAX_RAM)),
                )
                .into());
        }
        Ok(MemoryConfig { size, backing })
    }

    /// What every configured device needs from guest RAM.
    pub fn ram_requirements(&self) -> Vec<RamRequirement> {
        let mut reqs = Vec::new();
        for d in &self.disks {
            reqs.extend(d.ram_requirements());
        }
        for n in &self.nets {
            reqs.extend(n.ram_requirements());
        }
        if let Some(b) = &self.balloon {
            reqs.extend(b.ram_requirements(self.memory.size));
        }
        for m in &self.virtio_mems {
            reqs.extend(m.ram_requirements());
        }
        for v in &self.vhost_user_blks {
            reqs.extend(v.ram_requirements());
        }
        for v in &self.vhost_user_nets {
            reqs.extend(v.ram_requirements());
        }
        reqs
    }

    /// Every RAM region's role and validated backing.
    pub fn ram_backings(&self) -> Result<Vec<(RegionRole, RamBacking)>, ConfigError> {
        let mut v = vec![(RegionRole::Boot, self.memory.backing.validate("--memory")?)];
        for m in &self.virtio_mems {
            v.push((
                RegionRole::VirtioMem(m.id.clone()),
                m.backing.validate(&format!("--virtio-mem id={}", m.id))?,
            ));
        }
        Ok(v)
    }

    /// Everything that can be checked before the VM starts, in the order a
    /// user would fix it: backings and policy first, then files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_except_kernel()?;
        check_kernel(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_readable("--initrd", initrd)?;
        }
        Ok(())
    }

    /// As [`VmConfig::validate`], for a VM restored from a snapshot: the
    /// kernel and initrd are not loaded (their content is in the saved RAM).
    pub fn validate_except_kernel(&self) -> Result<(), ConfigError> {
        let backings = self.ram_backings()?;
        policy::check(&self.ram_requirements(), &backings, Operation::Run)?;
        devices::ram::preflight("--memory", &self.memory.backing, self.memory.size)?;
        for m in &self.virtio_mems {
            devices::ram::preflight(&format!("--virtio-mem id={}", m.id), &m.backing, m.size)?;
        }
        for d in &self.disks {
            check_disk(d)?;
        }
        layout::check_fits(self).map_err(|r| invalid("--virtio-mem", r))?;
        let n = self.virtio_device_count();
        if n > layout::MAX_VIRTIO_DEVICES {
            return Err(invalid(
                "--disk/--net/--balloon/--virtio-mem/--vhost-user-*",
                format!(
                    "{n} virtio devices asked, and the platform has interrupts for {}; use fewer devices",
                    layout::MAX_VIRTIO_DEVICES
                ),
            ));
        }
        Ok(())
    }

    /// Devices on virtio-mmio, in the order their windows are assigned.
    pub fn virtio_device_count(&self) -> usize {
        self.disks.len()
            + self.nets.len()
            + usize::from(self.balloon.is_some())
            + self.virtio_mems.len()
            + self.vhost_user_blks.len()
            + self.vhost_user_nets.len()
    }

    /// The resolved configuration, as `--dry-run` prints it.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "kernel:  {}", self.kernel.display());
        if let Some(i) = &self.initrd {
            let _ = writeln!(s, "initrd:  {}", i.display());
        }
        let _ = writeln!(s, "cmdline: {}", self.cmdline);
        let _ = writeln!(s, "cpus:    {}", self.cpus);
        let _ = writeln!(
            s,
            "memory:  size={},{}",
            format_size(self.memory.size),
            self.memory.backing
        );
        for (base, size) in layout::boot_ram_ranges(self.memory.size) {
            let _ = writeln!(s, "  ram    {:#014x}-{:#014x}", base.0, base.0 + size - 1);
        }
        for d in &self.disks {
            let _ = writeln!(
                s,
                "disk:    id={},path={},readonly={}",
                d.id,
                d.path.display(),
                onoff(d.readonly)
            );
        }
        for n in &self.nets {
            let _ = writeln!(
                s,
                "net:     id={},tap={},mac={}",
                n.id,
                n.tap,
                format_mac(&n.mac)
            );
        }
        if let Some(b) = &self.balloon {
            let _ = writeln!(
                s,
                "balloon: free-page-reporting={},deflate-on-oom={},stats={},target={}",
                onoff(b.free_page_reporting),
                onoff(b.deflate_on_oom),
                onoff(b.stats),
                b.target.map_or_else(|| "none".to_string(), format_size)
            );
        }
        for (m, base) in self.virtio_mems.iter().zip(layout::virtio_mem_bases(self)) {
            let _ = writeln!(
                s,
                "virtio-mem: id={},size={},requested={},block-size={},{} at {:#x}",
                m.id,
                format_size(m.size),
                format_size(m.requested),
                format_size(m.block_size),
                m.backing,
                base.0
            );
        }
        for v in &self.vhost_user_blks {
            let _ = writeln!(
                s,
                "vhost-user-blk: id={},socket={},queues={}",
                v.id,
                v.socket.display(),
                v.queues
            );
        }
        for v in &self.vhost_user_nets {
            let _ = writeln!(
                s,
                "vhost-user-net: id={},socket={},mac={}",
                v.id,
                v.socket.display(),
                format_mac(&v.mac)
            );
        }
        let serial = match &self.serial {
            SerialConfig::Stdio => "stdio".to_string(),
            SerialConfig::File(p) => format!("file={}", p.display()),
            SerialConfig::Off => "off".to_string(),
        };
        let _ = writeln!(s, "serial:  {serial}");
        let _ = writeln!(
            s,
            "vmgenid: {}{}",
            onoff(self.vmgenid),
            if self.vmgenid {
                format!(
                    " (GUID at {:#x}, new on every restore)",
                    layout::VMGENID_ADDR
                )
            } else {
                " (clones of a snapshot share RNG state)".to_string()
            }
        );
        s
    }
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The file is a regular file this process can read; returns it open, with its size.
fn check_readable(option: &str, path: &Path) -> Result<(File, u64), ConfigError> {
    let err = |reason: String| ConfigError::File {
        option: option.into(),
        path: path.display().to_string(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| err(format!("{e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let file = File::open(path).map_err(|e| err(format!("cannot be opened for reading: {e}")))?;
    Ok((file, meta.len()))
}

/// A bzImage has "HdrS" at 0x202; an ELF vmlinux starts with "\x7fELF".
fn check_kernel(path: &Path) -> Result<(), ConfigError> {
    let (mut file, _) = check_readable("--kernel", path)?;
    let mut head = [0u8; 0x206];
    let n = file.read(&mut head).unwrap_or(0);
    let elf = n >= 4 && head[..4] == *b"\x7fELF";
    let bzimage = n >= 0x206 && head[0x202..0x206] == *b"HdrS";
    if !elf && !bzimage {
        return Err(ConfigError::File {
            option: "--kernel".into(),
            path: path.display().to_string(),
            reason:
                "neither a bzImage nor an ELF vmlinux; give the kernel image (e.g. /boot/vmlinuz-*)"
                    .into(),
        });
    }
    Ok(())
}

fn check_disk(d: &BlockConfig) -> Result<(), ConfigError> {
    let option = format!("--disk id={}", d.id);
    let (_, len) = check_readable(&option, &d.path)?;
    if len % 512 != 0 {
        return Err(ConfigError::File {
            option,
            path: d.path.display().to_string(),
            reason: format!("{len} bytes is not a whole number of 512-byte sectors; resize the raw image (truncate -s)"),
        });
    }
    if !d.readonly {
        // Opening for writing changes nothing but proves the run will be able to.
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&d.path)
            .map_err(|e| ConfigError::File {
                option,
                path: d.path.display().to_string(),
                reason: format!(
                    "cannot be opened for writing ({e}); add readonly=on or fix its permissions"
                ),
            })?;
    }
    Ok(())
}
