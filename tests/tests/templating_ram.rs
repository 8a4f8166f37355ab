//! A template's RAM file and its clones, through the VMM's own configuration
//! and memory code: what a clone sees, what it may change, what is refused.

use std::fs;
use std::path::{Path, PathBuf};

use devices::ram::{DiscardError, RegionRole};
use vm_memory::{Bytes, GuestAddress};
use vmm::config::{RawOptions, VmConfig};
use vmm::memory::build_guest_ram;

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("templating-{}-{tag}", std::process::id()));
    let _ = fs::remove_file(&p);
    p
}

fn kernel(tag: &str) -> PathBuf {
    let p = tmp(tag);
    let mut k = vec![0u8; 4096];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    fs::write(&p, k).unwrap();
    p
}

fn config(kernel: &Path, memory: String, balloon: Option<&str>) -> VmConfig {
    VmConfig::parse(&RawOptions {
        kernel: kernel.to_path_buf(),
        cpus: 1,
        memory,
        balloon: balloon.map(str::to_string),
        serial: "off".into(),
        ..RawOptions::default()
    })
    .unwrap()
}

fn checksum(p: &Path) -> u64 {
    fs::read(p)
        .unwrap()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
}

#[test]
fn clones_read_the_template_write_privately_and_never_touch_the_file() {
    let k = kernel("k1");
    let file = tmp("ram1");
    let size = 64u64 << 20;

    let template = config(
        &k,
        format!("size=64M,backing=file,path={},share=on", file.display()),
        Some("stats=on"),
    );
    template.validate().unwrap();
    let ram = build_guest_ram(&template).unwrap();
    for page in (0..size).step_by(4096) {
        ram.memory()
            .write_obj(page ^ 0x5a5a, GuestAddress(page))
            .unwrap();
    }
    drop(ram);
    let sum = checksum(&file);

    let clone_mem = format!(
        "size=64M,backing=file,path={},share=off,readonly=on,rom=off",
        file.display()
    );
    let clone_cfg = config(&k, clone_mem.clone(), Some("stats=on,deflate-on-oom=on"));
    clone_cfg.validate().unwrap();
    let a = build_guest_ram(&clone_cfg).unwrap();
    let b = build_guest_ram(&clone_cfg).unwrap();
    for page in (0..size).step_by(1 << 20) {
        assert_eq!(
            a.memory().read_obj::<u64>(GuestAddress(page)).unwrap(),
            page ^ 0x5a5a
        );
    }
    a.memory()
        .write_obj(0xdead_u64, GuestAddress(8192))
        .unwrap();
    assert_eq!(
        a.memory().read_obj::<u64>(GuestAddress(8192)).unwrap(),
        0xdead
    );
    assert_eq!(
        b.memory().read_obj::<u64>(GuestAddress(8192)).unwrap(),
        8192 ^ 0x5a5a,
        "clones do not see each other's writes"
    );
    // Discard is refused on the clone's RAM: the page would show the file again.
    assert!(matches!(
        a.discard(GuestAddress(8192), 4096),
        Err(DiscardError::PrivateFileBacked { .. })
    ));
    assert_eq!(
        a.memory().read_obj::<u64>(GuestAddress(8192)).unwrap(),
        0xdead
    );
    assert!(a.regions()[0].shared_fd().is_none());
    assert_eq!(a.size_of(&RegionRole::Boot), size);
    drop((a, b));
    assert_eq!(checksum(&file), sum, "the template file is unchanged");

    // The policy refuses, before mapping anything, what would discard clone RAM.
    let err = config(&k, clone_mem, Some("free-page-reporting=on"))
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("template clone") && err.contains("set free-page-reporting=off"),
        "{err}"
    );
    assert_eq!(checksum(&file), sum);
    let _ = fs::remove_file(&file);
    let _ = fs::remove_file(&k);
}

#[test]
fn clone_with_a_different_memory_size_is_refused_early() {
    let k = kernel("k2");
    let file = tmp("ram2");
    fs::write(&file, vec![1u8; 32 << 20]).unwrap();
    let cfg = config(
        &k,
        format!(
            "size=64M,backing=file,path={},readonly=on,rom=off",
            file.display()
        ),
        None,
    );
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("33554432 bytes but the RAM needs 67108864"),
        "{err}"
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), 32 << 20);
    let _ = fs::remove_file(&file);
    let _ = fs::remove_file(&k);
}
