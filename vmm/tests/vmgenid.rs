//! The VM Generation ID on this host's real KVM: a tiny hand-made guest
//! watches the GUID in its RAM and prints it whenever it changes; every
//! restore of one snapshot must show it a new one (and the GED's event),
//! `--vmgenid off` must leave it alone, and QMP's query-vm-generation-id
//! must name what the guest sees.

use std::fs;
use std::time::Duration;

use serde_json::json;
use vmm::platform::vmgenid::Guid;

mod common;
use common::{bzimage, read_log, wait_until, Dir, Qmp, Vmm, GENID_WATCH};

/// What the guest printed: (the 16 bytes at VMGENID_ADDR, the GED's
/// event register), one pair per change it saw, complete pairs only.
fn seen(log: &str) -> Vec<([u8; 16], u8)> {
    let lines: Vec<&str> = log
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(str::trim)
        .collect();
    let mut out = Vec::new();
    for w in lines.windows(2) {
        let (Some(g), Some(e)) = (w[0].strip_prefix("G="), w[1].strip_prefix("E=")) else {
            continue;
        };
        if g.len() != 32 || e.len() != 2 {
            continue;
        }
        let mut b = [0u8; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&g[2 * i..2 * i + 2], 16).expect("hex digits");
        }
        out.push((b, u8::from_str_radix(e, 16).expect("hex digits")));
    }
    out
}

/// The guest's bytes as the GUID string QMP reports.
fn as_guid(b: [u8; 16]) -> String {
    Guid::from_guest_bytes(b).to_string()
}

fn query_guid(q: &mut Qmp) -> String {
    let r = q.ok("query-vm-generation-id", json!({}));
    r["guid"]
        .as_str()
        .unwrap_or_else(|| panic!("no guid in {r}"))
        .to_string()
}

fn args(dir: &Dir, name: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--memory".into(),
        "size=64M".into(),
        format!("--serial=file={}", dir.path(&format!("{name}.log"))),
        format!("--qmp=unix:{}", dir.path(&format!("{name}.qmp"))),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Boots the watcher guest as `boot` and waits for its first report.
fn boot(dir: &Dir, extra: &[&str]) -> (Vmm, Qmp, [u8; 16], u8) {
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(GENID_WATCH)).unwrap();
    let mut a = vec!["--kernel", kernel.as_str()];
    a.extend_from_slice(extra);
    let vmm = Vmm::start(&args(dir, "boot", &a));
    let log = dir.path("boot.log");
    wait_until(20, "the guest's first G= line", || {
        !seen(&read_log(&log)).is_empty()
    });
    let q = Qmp::connect(dir.path("boot.qmp").as_ref());
    let (g, e) = seen(&read_log(&log))[0];
    (vmm, q, g, e)
}

/// Restores `state` as `name`; returns once the VM runs.
fn restore(dir: &Dir, name: &str, state: &str, extra: &[&str]) -> (Vmm, Qmp) {
    let incoming = format!("file:{state}");
    let mut a = vec!["--incoming", incoming.as_str()];
    a.extend_from_slice(extra);
    let vmm = Vmm::start(&args(dir, name, &a));
    let mut q = Qmp::connect(dir.path(&format!("{name}.qmp")).as_ref());
    wait_until(20, "the restored VM to run", || {
        q.ok("query-status", json!({}))["status"] == "running"
    });
    (vmm, q)
}

/// The values a restored guest reported that are not `saved`: a save that
/// lands between the guest's decision to print and its output leaves the
/// saved value to be printed once more after the restore.
fn new_values(log: &str, saved: [u8; 16]) -> Vec<([u8; 16], u8)> {
    seen(log).into_iter().filter(|(g, _)| *g != saved).collect()
}

#[test]
fn every_restore_gets_a_new_generation_id_and_off_keeps_the_saved_one() {
    let dir = Dir::new("vmgenid");
    let (vm, mut q, booted, events) = boot(&dir, &[]);
    assert_ne!(booted, [0; 16], "a GUID is written at boot");
    assert_eq!(events, 0, "no GED event at boot");
    let guid = query_guid(&mut q);
    assert_eq!(guid, as_guid(booted), "QMP names what the guest sees");
    assert_eq!(&guid[14..15], "4", "version 4: {guid}");

    let state = dir.path("state");
    q.migrate(&format!("file:{state}"));
    drop(q);
    drop(vm);

    let mut clones = Vec::new();
    for name in ["clone-a", "clone-b"] {
        let (vm, mut q) = restore(&dir, name, &state, &[]);
        let log = dir.path(&format!("{name}.log"));
        wait_until(20, &format!("{name}'s new G= line"), || {
            !new_values(&read_log(&log), booted).is_empty()
        });
        let fresh = new_values(&read_log(&log), booted);
        assert_eq!(fresh.len(), 1, "one new GUID, seen once: {fresh:x?}");
        let (g, e) = fresh[0];
        assert_eq!(
            e & 0x02,
            0x02,
            "{name}: the GED's generation ID event is pending when the guest sees the new GUID"
        );
        assert_eq!(query_guid(&mut q), as_guid(g), "{name}: QMP");
        assert!(!clones.contains(&g), "{name} got another clone's GUID");
        clones.push(g);
        let err = vm.kill_and_stderr();
        assert!(
            err.contains(&format!("VM generation ID {}", as_guid(g))),
            "{name} logs its new GUID:\n{err}"
        );
    }

    let (vm, mut q) = restore(&dir, "control", &state, &["--vmgenid", "off"]);
    std::thread::sleep(Duration::from_secs(1));
    let log = read_log(&dir.path("control.log"));
    assert!(
        new_values(&log, booted).is_empty(),
        "--vmgenid off: the guest must see no new GUID:\n{log}"
    );
    assert_eq!(
        query_guid(&mut q),
        as_guid(booted),
        "the saved GUID is kept"
    );
    let err = vm.kill_and_stderr();
    assert!(err.contains("--vmgenid off"), "{err}");
}

#[test]
fn a_vm_booted_without_the_device_has_none_after_a_restore() {
    let dir = Dir::new("no-vmgenid");
    let (vm, mut q, booted, _) = boot(&dir, &["--vmgenid", "off"]);
    assert_eq!(booted, [0; 16], "nothing is written without the device");
    let e = q.execute("query-vm-generation-id", json!({}));
    assert_eq!(e["error"]["class"], "GenericError", "{e}");
    assert_eq!(
        e["error"]["desc"],
        "the VM has no generation ID device (--vmgenid off)"
    );
    let state = dir.path("state");
    q.migrate(&format!("file:{state}"));
    drop(q);
    drop(vm);

    // --vmgenid on (the default) cannot add the device to a saved guest:
    // one warning, and guest RAM is left as it was.
    let (vm, mut q) = restore(&dir, "restored", &state, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let log = read_log(&dir.path("restored.log"));
    assert!(new_values(&log, booted).is_empty(), "{log}");
    let e = q.execute("query-vm-generation-id", json!({}));
    assert_eq!(e["error"]["class"], "GenericError", "{e}");
    let err = vm.kill_and_stderr();
    assert_eq!(
        err.matches("no VM generation ID device").count(),
        1,
        "one warning:\n{err}"
    );
    assert!(err.contains("share RNG state"), "{err}");
}
