//! `cli_kvlist`: `vmm run`'s options as the user types them: the
//! `key=value` list parser (`KvList`) and `VmConfig::parse` with
//! everything that looks at a parsed configuration without touching the
//! host (the RAM policy, the guest-physical layout, `--dry-run`'s
//! description).
//!
//! Input: text (invalid UTF-8 replaced), one option per line as
//! `NAME VALUE`: `memory`, `disk`, `net`, `balloon`, `virtio-mem`,
//! `vhost-user-blk`, `vhost-user-net`, `serial`, `vmgenid`, `cpus`,
//! `cmdline`, `kernel`, `initrd`, or `kv` for a bare `KvList` over every
//! key the options know.

use std::path::PathBuf;

use devices::ram::policy::{self, Operation};
use devices::size::{format_size, parse_size};
use vmm::config::{RawOptions, VmConfig};
use vmm::kvlist::KvList;
use vmm::layout;

/// Every key some option takes.
const KEYS: &[&str] = &[
    "size",
    "backing",
    "path",
    "share",
    "readonly",
    "rom",
    "hugepages",
    "id",
    "tap",
    "mac",
    "socket",
    "queues",
    "free-page-reporting",
    "deflate-on-oom",
    "stats",
    "target",
    "requested",
    "block-size",
];

/// Runs one input; returns how many options lists were accepted (a
/// configuration that parses counts one more).
pub fn run(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let mut raw = RawOptions {
        cpus: 1,
        memory: "size=64M".into(),
        serial: "stdio".into(),
        ..RawOptions::default()
    };
    let mut accepted = 0;
    for line in text.lines() {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = value.to_string();
        match name {
            "memory" => raw.memory = value,
            "disk" => raw.disks.push(value),
            "net" => raw.nets.push(value),
            "balloon" => raw.balloon = Some(value),
            "virtio-mem" => raw.virtio_mems.push(value),
            "vhost-user-blk" => raw.vhost_user_blks.push(value),
            "vhost-user-net" => raw.vhost_user_nets.push(value),
            "serial" => raw.serial = value,
            "vmgenid" => raw.vmgenid = Some(value),
            "cpus" => raw.cpus = value.parse().unwrap_or(0),
            "cmdline" => raw.cmdline = Some(value),
            "kernel" => raw.kernel = PathBuf::from(value),
            "initrd" => raw.initrd = Some(PathBuf::from(value)),
            "kv" => accepted += usize::from(kv(&value)),
            _ => {}
        }
    }
    let Ok(cfg) = VmConfig::parse(&raw) else {
        return accepted;
    };
    let description = cfg.describe();
    assert!(!description.is_empty());
    let reqs = cfg.ram_requirements();
    if let Ok(backings) = cfg.ram_backings() {
        for op in [Operation::Run, Operation::CreateTemplate] {
            let _ = policy::check(&reqs, &backings, op);
        }
    }
    let _ = layout::check_fits(&cfg);
    let bases = layout::virtio_mem_bases(&cfg);
    assert_eq!(bases.len(), cfg.virtio_mems.len());
    let _ = layout::boot_ram_ranges(cfg.memory.size);
    let _ = cfg.virtio_device_count();
    accepted + 1
}

/// A bare list: every accessor on every key. Returns whether it parsed.
fn kv(text: &str) -> bool {
    let Ok(list) = KvList::parse("--kv", text, KEYS, "size=1G") else {
        return false;
    };
    for key in KEYS {
        let _ = list.get(key);
        let _ = list.require(key, "hint");
        let _ = list.flag(key, false);
        if let Ok(Some(n)) = list.size(key) {
            // What --dry-run prints must read back as the same size.
            assert_eq!(parse_size(&format_size(n)), Ok(n), "size {n}");
        }
    }
    true
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seed = |lines: &[&str]| lines.join("\n").into_bytes();
    vec![
        (
            "every-device",
            seed(&[
                "kernel /boot/vmlinuz",
                "cpus 2",
                "memory size=512M,backing=memfd,share=on",
                "disk path=disk.img,id=root",
                "disk path=data.img,readonly=on",
                "net tap=tap0,mac=52:54:00:12:34:56,id=eth0",
                "balloon free-page-reporting=on,deflate-on-oom=on,stats=on,target=256M",
                "virtio-mem size=4G,requested=1G,block-size=2M,backing=memfd",
                "vhost-user-blk socket=/run/vu-blk.sock,queues=4",
                "vhost-user-net socket=/run/vu-net.sock,mac=52:54:00:ab:cd:ef",
                "serial file=/tmp/console.log",
                "vmgenid off",
                "cmdline console=ttyS0 reboot=k",
            ]),
        ),
        (
            "template-clone-ram",
            seed(&[
                "memory size=1G,backing=file,path=/tmp/t/memory,share=off,readonly=on,rom=off",
                "balloon target=512M",
                "virtio-mem size=2G,backing=file,path=/tmp/vmem",
            ]),
        ),
        (
            "hugepages-and-big-ram",
            seed(&[
                "memory size=5G,hugepages=on",
                "virtio-mem size=1T,block-size=1G",
            ]),
        ),
        (
            "bare-lists",
            seed(&[
                "kv size=1GiB,share=yes,readonly=0,rom=auto",
                "kv ,,size=99999999999T,,",
                "kv mac=52:54:00:12:34:56,id=a_b-c,queues=16",
                "kv target=4096,block-size=2m,requested=0",
            ]),
        ),
        (
            "refusals",
            seed(&[
                "memory size=12K",
                "disk id=dup,path=a",
                "net id=dup,tap=tap0,mac=01:00:00:00:00:00",
                "balloon target=1G",
                "virtio-mem size=3M,block-size=3M",
                "cpus 65",
            ]),
        ),
    ]
}
