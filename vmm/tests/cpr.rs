//! CPR (QEMU's cpr-reboot migration mode) on this host's real KVM: a VM
//! is checkpointed over QMP, the process quits, and another copy of the
//! `vmm` binary restores it, with its disks checked against the
//! checkpoint; a checkpoint that cannot be written is refused while the
//! guest runs on.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

mod common;
use common::{
    assert_contiguous, boot_counter, bzimage, counter_values, read_log, run_output, wait_until,
    Dir, Qmp, Vmm, COUNTER, VMM,
};

fn status(qmp: &mut Qmp) -> Value {
    qmp.ok("query-status", json!({}))["status"].clone()
}

fn set_cpr(qmp: &mut Qmp, ignore_shared: bool) {
    qmp.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [
            {"capability": "x-ignore-shared", "state": ignore_shared},
            {"capability": "events", "state": true},
        ]}),
    );
    qmp.ok("migrate-set-parameters", json!({"mode": "cpr-reboot"}));
    assert_eq!(
        qmp.ok("query-migrate-parameters", json!({}))["mode"],
        "cpr-reboot"
    );
}

/// The copy of the binary a host upgrade would install.
fn copy_of_vmm(dir: &Dir) -> String {
    let bin = dir.path("vmm-new");
    fs::copy(VMM, &bin).unwrap();
    bin
}

fn mtime(p: &str) -> SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

/// Puts the mtime back: the image is then as it was at the checkpoint.
fn set_mtime(p: &str, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// RAM in a share=on file with x-ignore-shared stays in place: the
/// checkpoint holds only the state. The disk given to the VM is checked
/// on restore: touched, written or replaced, the restore is refused with
/// the disk named (exit 2, nothing runs); as it was, the copy of the
/// binary restores and the guest counts on.
#[test]
fn a_cpr_checkpoint_leaves_ram_in_place_and_another_binary_resumes_it_with_its_disk_unchanged() {
    let dir = Dir::new("cpr-roundtrip");
    let (q1, s1, snap, ram, disk) = (
        dir.path("q1"),
        dir.path("s1"),
        dir.path("vm.state"),
        dir.path("ram"),
        dir.path("disk.img"),
    );
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mem = format!("size=64M,backing=file,path={ram},share=on");
    let disk_arg = format!("--disk=path={disk},id=d0");
    let vm = boot_counter(&dir, &q1, &s1, &mem, &[&disk_arg], 3);
    let mut qmp = Qmp::connect(q1.as_ref());
    set_cpr(&mut qmp, true);
    qmp.migrate(&format!("file:{snap}"));
    qmp.wait_event("STOP");
    assert_eq!(status(&mut qmp), "postmigrate");
    let saved = read_log(&s1);
    qmp.ok("quit", json!({}));
    let (code, err) = vm.finish();
    assert_eq!(code, Some(0), "quit: {err}");
    let size = fs::metadata(&snap).unwrap().len();
    assert!(
        size < 64 << 10,
        "RAM left in place: the checkpoint is {size} bytes"
    );

    let bin = copy_of_vmm(&dir);
    let s2 = dir.path("s2");
    let serial2 = format!("--serial=file={s2}");
    let incoming = format!("--incoming=file:{snap}");
    let restore_args = ["--memory", &mem, &disk_arg, &serial2, &incoming];
    let refused = |what: &str, want: &[&str]| {
        let out = run_output(&bin, &restore_args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("--disk id=d0"))
            .unwrap_or_else(|| panic!("{what}: no line for the disk:\n{err}"));
        assert!(line.contains(&disk), "{what}: {line}");
        assert!(
            want.iter().any(|w| line.contains(w)),
            "{what}: none of {want:?} in {line}"
        );
        assert!(
            line.contains("as it was at the checkpoint") && line.contains("boot the VM fresh"),
            "{what}: {line}"
        );
        assert_eq!(read_log(&s2), "", "{what}: the guest ran");
    };
    let t0 = mtime(&disk);

    // touch: only the mtime changes.
    std::thread::sleep(Duration::from_millis(20));
    assert!(Command::new("touch").arg(&disk).status().unwrap().success());
    refused("touched", &["modified"]);
    set_mtime(&disk, t0);

    // One byte written in place.
    let original = fs::read(&disk).unwrap();
    let mut changed = original.clone();
    changed[4096] = 0x5a;
    fs::write(&disk, &changed).unwrap();
    refused("written", &["modified", "size"]);
    fs::write(&disk, &original).unwrap();
    set_mtime(&disk, t0);

    // Replaced by a copy: same content, another inode.
    let keep = dir.path("disk.orig");
    fs::hard_link(&disk, &keep).unwrap();
    let copy = dir.path("disk.copy");
    fs::copy(&disk, &copy).unwrap();
    set_mtime(&copy, t0);
    fs::rename(&copy, &disk).unwrap();
    refused("replaced", &["replaced"]);
    fs::rename(&keep, &disk).unwrap();

    // As it was: the copy of the binary restores, and the guest goes on
    // running (it was running at the checkpoint).
    let ino = fs::metadata(&disk).unwrap().ino();
    let q2 = dir.path("q2");
    let qmp_arg = format!("--qmp=unix:{q2}");
    let mut args = restore_args.to_vec();
    args.push(&qmp_arg);
    let _vm2 = Vmm::start_bin(&bin, &args);
    let mut qmp2 = Qmp::connect(q2.as_ref());
    wait_until(20, "the restored VM to run", || {
        status(&mut qmp2) == "running"
    });
    let before = counter_values(&saved).len();
    wait_until(20, "the restored guest's output", || {
        counter_values(&(saved.clone() + &read_log(&s2))).len() >= before + 3
    });
    assert_contiguous(
        &counter_values(&(saved + &read_log(&s2))),
        "checkpoint then restore",
    );
    assert_eq!(fs::metadata(&disk).unwrap().ino(), ino);
}

/// A VM stopped before the checkpoint comes back paused; with anonymous
/// RAM the RAM goes into the checkpoint. The restore is QEMU's incoming
/// sequence: -incoming defer, mode cpr-reboot, migrate-incoming.
#[test]
fn a_paused_cpr_checkpoint_restores_paused_through_migrate_incoming() {
    let dir = Dir::new("cpr-paused");
    let (q1, s1, snap, disk) = (
        dir.path("q1"),
        dir.path("s1"),
        dir.path("vm.state"),
        dir.path("disk.img"),
    );
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("--disk=path={disk},id=d0");
    let vm = boot_counter(&dir, &q1, &s1, "size=64M", &[&disk_arg], 2);
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.ok("stop", json!({}));
    set_cpr(&mut qmp, true);
    qmp.migrate(&format!("file:{snap}"));
    let saved = read_log(&s1);
    qmp.ok("quit", json!({}));
    assert_eq!(vm.finish().0, Some(0));
    let size = fs::metadata(&snap).unwrap().len();
    assert!(
        size > 4096,
        "anonymous RAM is in the checkpoint: {size} bytes"
    );

    let bin = copy_of_vmm(&dir);
    let (q2, s2) = (dir.path("q2"), dir.path("s2"));
    let _vm2 = Vmm::start_bin(
        &bin,
        &[
            "--memory",
            "size=64M",
            &disk_arg,
            &format!("--serial=file={s2}"),
            &format!("--qmp=unix:{q2}"),
            "--incoming=defer",
        ],
    );
    let mut qmp2 = Qmp::connect(q2.as_ref());
    assert_eq!(status(&mut qmp2), "inmigrate");
    qmp2.ok("migrate-set-parameters", json!({"mode": "cpr-reboot"}));
    qmp2.ok("migrate-incoming", json!({"uri": format!("file:{snap}")}));
    assert_eq!(qmp2.wait_migration()["status"], "completed");
    assert_eq!(status(&mut qmp2), "paused");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_log(&s2), "", "saved paused: nothing runs before cont");
    qmp2.ok("cont", json!({}));
    wait_until(20, "output after cont", || {
        !counter_values(&read_log(&s2)).is_empty()
    });
    assert_contiguous(
        &counter_values(&(saved + &read_log(&s2))),
        "output across the restore",
    );
}

/// The target on a 1 MiB tmpfs (mounted in a private mount namespace the
/// VMM runs in) cannot hold 64 MiB of anonymous RAM: migrate is refused at
/// once with what is needed, what is free, where, and the fix; the VM
/// never stops. exec: is refused in mode cpr-reboot. In mode normal the
/// same target only earns a warning and the save is tried.
#[test]
fn a_cpr_checkpoint_without_room_or_to_exec_is_refused_and_the_vm_runs_on() {
    let dir = Dir::new("cpr-room");
    let (q, s, small) = (dir.path("q"), dir.path("s"), dir.path("small"));
    fs::create_dir_all(&small).unwrap();
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(COUNTER)).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1M tmpfs {small} && exec {VMM} run --kernel {kernel} \
         --memory size=64M --serial=file={s} --qmp=unix:{q}"
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare runs");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut child);
    wait_until(20, "the guest's output", || {
        counter_values(&read_log(&s)).len() >= 2
    });
    let mut qmp = Qmp::connect(q.as_ref());
    set_cpr(&mut qmp, true);
    let target = format!("{small}/vm.state");

    let r = qmp.execute("migrate", json!({"uri": format!("file:{target}")}));
    let desc = r["error"]["desc"].as_str().unwrap_or_else(|| panic!("{r}"));
    for want in [
        "cpr-reboot",
        target.as_str(),
        "64.0 MiB",
        "free",
        "share=on",
        "x-ignore-shared",
        "filesystem with room",
    ] {
        assert!(desc.contains(want), "missing {want:?} in: {desc}");
    }

    let r = qmp.execute(
        "migrate",
        json!({"uri": format!("exec:cat > {}", dir.path("x"))}),
    );
    let desc = r["error"]["desc"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(
        desc.contains("cpr-reboot") && desc.contains("file:PATH") && desc.contains("exec:"),
        "{desc}"
    );
    assert!(!Path::new(&dir.path("x")).exists(), "the command ran");

    // Still running, never stopped, no migration started.
    let lines = counter_values(&read_log(&s)).len();
    wait_until(20, "the guest to go on", || {
        counter_values(&read_log(&s)).len() > lines
    });
    assert_eq!(status(&mut qmp), "running");
    assert_eq!(qmp.ok("query-migrate", json!({})), json!({}));
    assert!(
        !qmp.events.iter().any(|e| e["event"] == "STOP"),
        "{:?}",
        qmp.events
    );

    // Mode normal: only a warning, and the save is tried. This guest has
    // written a few pages of its 64 MiB and all-zero pages are not
    // written, so it fits: the bound CPR refuses on is an upper one.
    qmp.ok("migrate-set-parameters", json!({"mode": "normal"}));
    qmp.migrate(&format!("file:{target}"));
    assert_eq!(status(&mut qmp), "postmigrate");
}
