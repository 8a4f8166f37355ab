//! Pause, save and restore of a whole VM on this host's real KVM, driven
//! over QMP like a management tool drives QEMU: tiny hand-made guests are
//! saved by one `vmm` process and go on in another.

use std::fs;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{
    assert_contiguous, boot_counter, bzimage, counter_values, read_log, run_output, wait_until,
    Dir, Qmp, Vmm, COUNTER, HALT_FOREVER, VMM,
};

fn vmm_output(args: &[&str]) -> Output {
    run_output(VMM, args)
}

/// Resumes a restored VM, and checks its counter goes on from `saved`
/// (the COM1 output before the save).
fn cont_and_check(qmp: &mut Qmp, serial: &str, saved: &str) {
    qmp.ok("cont", json!({}));
    wait_until(20, "output after cont", || {
        !counter_values(&read_log(serial)).is_empty()
    });
    assert_contiguous(
        &counter_values(&(saved.to_string() + &read_log(serial))),
        "output across the restore",
    );
}

#[test]
fn a_running_vm_saved_over_qmp_goes_on_in_a_new_process() {
    let dir = Dir::new("snap-running");
    let (q1, s1, snap) = (dir.path("q1"), dir.path("s1"), dir.path("snap"));
    let vm = boot_counter(&dir, &q1, &s1, "size=64M", &[], 3);
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    qmp.migrate(&format!("file:{snap}"));
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "postmigrate");
    // The VM stopped for the save and stays stopped: STOP, then MIGRATION events.
    qmp.wait_event("STOP");
    let saved = read_log(&s1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_log(&s1), saved, "the guest ran on after the save");
    drop(vm);

    let (q2, s2) = (dir.path("q2"), dir.path("s2"));
    let _vm2 = Vmm::start(&[
        "--memory",
        "size=64M",
        &format!("--serial=file={s2}"),
        &format!("--qmp=unix:{q2}"),
        &format!("--incoming=file:{snap}"),
    ]);
    let mut qmp2 = Qmp::connect(q2.as_ref());
    // Saved running, started without -S: it runs once restored.
    wait_until(20, "the restored VM to run", || {
        qmp2.ok("query-status", json!({}))["status"] == "running"
    });
    let before = counter_values(&saved).len();
    wait_until(20, "the restored guest's output", || {
        counter_values(&(saved.clone() + &read_log(&s2))).len() >= before + 3
    });
    let all = counter_values(&(saved + &read_log(&s2)));
    assert_contiguous(&all, "saved then restored output");
}

#[test]
fn a_vm_saved_paused_comes_back_paused_and_cont_runs_it() {
    let dir = Dir::new("snap-paused");
    let (q1, s1, snap) = (dir.path("q1"), dir.path("s1"), dir.path("snap"));
    let vm = boot_counter(&dir, &q1, &s1, "size=64M", &[], 2);
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.ok("stop", json!({}));
    qmp.wait_event("STOP");
    qmp.migrate(&format!("exec:cat > {snap}"));
    let saved = read_log(&s1);
    qmp.ok("quit", json!({}));
    let (status, err) = vm.finish();
    assert_eq!(status, Some(0), "quit ends vmm with 0: {err}");

    let (q2, s2) = (dir.path("q2"), dir.path("s2"));
    let _vm2 = Vmm::start(&[
        "--memory",
        "size=64M",
        &format!("--serial=file={s2}"),
        &format!("--qmp=unix:{q2}"),
        "--incoming",
        &format!("exec:cat {snap}"),
    ]);
    let mut qmp2 = Qmp::connect(q2.as_ref());
    wait_until(20, "the restore", || {
        qmp2.ok("query-status", json!({}))["status"] == "paused"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        read_log(&s2),
        "",
        "a VM saved paused must not run before cont"
    );
    cont_and_check(&mut qmp2, &s2, &saved);
    qmp2.wait_event("RESUME");
}

#[test]
fn a_halted_vcpu_pauses_at_once_and_its_state_saves() {
    let dir = Dir::new("snap-halt");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(HALT_FOREVER)).unwrap();
    let (q, s, snap) = (dir.path("q"), dir.path("s"), dir.path("snap"));
    let _vm = Vmm::start(&[
        "--kernel",
        &kernel,
        "--memory",
        "size=64M",
        "--cpus",
        "2",
        &format!("--serial=file={s}"),
        &format!("--qmp=unix:{q}"),
    ]);
    wait_until(20, "the guest's H", || read_log(&s) == "H\n");
    let mut qmp = Qmp::connect(q.as_ref());
    let t = Instant::now();
    qmp.ok("stop", json!({}));
    // Bounded by the vCPU kick timeout (5 s), not by the guest: a halted
    // vCPU that never left KVM_RUN would make stop fail instead.
    assert!(t.elapsed() < Duration::from_secs(5));
    let cpus = qmp.ok("query-cpus-fast", json!({}));
    assert_eq!(cpus.as_array().map(Vec::len), Some(2), "{cpus}");
    for c in cpus.as_array().unwrap() {
        assert!(c["thread-id"].as_i64().unwrap_or(0) > 0, "{c}");
    }
    qmp.migrate(&format!("file:{snap}"));
    qmp.ok("cont", json!({}));
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "running");
}

#[test]
fn a_restore_that_differs_from_the_saved_vm_is_refused_line_by_line() {
    let dir = Dir::new("snap-differ");
    let (q1, s1, snap) = (dir.path("q1"), dir.path("s1"), dir.path("snap"));
    let disk = dir.path("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("--disk=path={disk},id=d0");
    let vm = boot_counter(&dir, &q1, &s1, "size=64M", &[&disk_arg], 1);
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.migrate(&format!("file:{snap}"));
    drop(vm);

    let s2 = dir.path("s2");
    let out = vmm_output(&[
        "--memory",
        "size=128M",
        "--cpus",
        "2",
        &format!("--disk=path={disk},id=d0,readonly=on"),
        &format!("--serial=file={s2}"),
        &format!("--incoming=file:{snap}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "--cpus: the snapshot has 1 vCPUs, the command line 2",
        "--memory: the snapshot has size=64M, the command line size=128M",
        "--disk id=d0: the snapshot has readonly=off, the command line readonly=on",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(read_log(&s2), "", "nothing may run");

    // A changed device set is one line too.
    let out = vmm_output(&[
        "--memory",
        "size=64M",
        &format!("--serial=file={s2}"),
        &format!("--incoming=file:{snap}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--disk: the snapshot has [d0], the command line []"),
        "{err}"
    );
    assert_eq!(read_log(&s2), "");
}

#[test]
fn a_corrupt_or_truncated_snapshot_is_refused_and_nothing_runs() {
    let dir = Dir::new("snap-corrupt");
    let (q1, s1, snap) = (dir.path("q1"), dir.path("s1"), dir.path("snap"));
    let vm = boot_counter(&dir, &q1, &s1, "size=64M", &[], 1);
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.migrate(&format!("file:{snap}"));
    drop(vm);
    let good = fs::read(&snap).unwrap();
    let bad = dir.path("bad");
    let s2 = dir.path("s2");
    // A flipped byte in the middle (a section or RAM), and a cut file.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    for (what, bytes) in [
        ("flipped", flipped),
        ("truncated", good[..good.len() - 7].to_vec()),
    ] {
        fs::write(&bad, &bytes).unwrap();
        let out = vmm_output(&[
            "--memory",
            "size=64M",
            &format!("--serial=file={s2}"),
            &format!("--incoming=file:{bad}"),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("restoring the snapshot failed; nothing was started"),
            "{what}: {err}"
        );
        assert_eq!(read_log(&s2), "", "{what}: the guest ran");
    }
}

#[test]
fn a_failed_migrate_incoming_stays_in_inmigrate_and_takes_another() {
    let dir = Dir::new("snap-defer");
    let (q1, s1, snap) = (dir.path("q1"), dir.path("s1"), dir.path("snap"));
    let vm = boot_counter(&dir, &q1, &s1, "size=64M", &[], 2);
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.migrate(&format!("file:{snap}"));
    let saved = read_log(&s1);
    drop(vm);

    let (q2, s2) = (dir.path("q2"), dir.path("s2"));
    let _vm2 = Vmm::start(&[
        "--memory",
        "size=64M",
        "-S",
        &format!("--serial=file={s2}"),
        &format!("--qmp=unix:{q2}"),
        "--incoming=defer",
    ]);
    let mut qmp2 = Qmp::connect(q2.as_ref());
    assert_eq!(qmp2.ok("query-status", json!({}))["status"], "inmigrate");
    let r = qmp2.execute("migrate-incoming", json!({"uri": "file:/nonexistent/snap"}));
    assert!(r.get("return").is_some() || r.get("error").is_some(), "{r}");
    let failed = qmp2.wait_migration();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error-desc"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/snap"),
        "{failed}"
    );
    assert_eq!(qmp2.ok("query-status", json!({}))["status"], "inmigrate");

    qmp2.ok("migrate-incoming", json!({"uri": format!("file:{snap}")}));
    assert_eq!(qmp2.wait_migration()["status"], "completed");
    // Saved running, but started with -S: it waits for cont, as QEMU does.
    assert_eq!(qmp2.ok("query-status", json!({}))["status"], "paused");
    cont_and_check(&mut qmp2, &s2, &saved);
}

/// x-ignore-shared: a template's RAM stays in its file; a clone maps the
/// file privately and read-only, restores, runs, and the file is unchanged.
#[test]
fn x_ignore_shared_leaves_file_ram_out_and_a_clone_runs_from_the_file() {
    let dir = Dir::new("snap-shared");
    let (q1, s1, snap, ram) = (
        dir.path("q1"),
        dir.path("s1"),
        dir.path("snap"),
        dir.path("ram"),
    );
    let mem = format!("size=64M,backing=file,path={ram},share=on");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(COUNTER)).unwrap();
    let vm = Vmm::start(&[
        "--kernel",
        &kernel,
        "--memory",
        &mem,
        &format!("--serial=file={s1}"),
        &format!("--qmp=unix:{q1}"),
    ]);
    wait_until(20, "the template's output", || {
        counter_values(&read_log(&s1)).len() >= 2
    });
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.ok("stop", json!({}));
    qmp.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
    );
    let caps = qmp.ok("query-migrate-capabilities", json!({}));
    assert!(
        caps.as_array()
            .unwrap()
            .iter()
            .any(|c| c["capability"] == "x-ignore-shared" && c["state"] == true),
        "{caps}"
    );
    qmp.migrate(&format!("file:{snap}"));
    qmp.ok("quit", json!({}));
    assert_eq!(vm.finish().0, Some(0));
    let size = fs::metadata(&snap).unwrap().len();
    assert!(
        size < 64 << 10,
        "RAM left out: the snapshot is {size} bytes"
    );
    let saved = read_log(&s1);
    let ram_before = fs::read(&ram).unwrap();

    let (q2, s2) = (dir.path("q2"), dir.path("s2"));
    let clone_mem = format!("size=64M,backing=file,path={ram},share=off,readonly=on,rom=off");
    let _clone = Vmm::start(&[
        "--memory",
        &clone_mem,
        &format!("--serial=file={s2}"),
        &format!("--qmp=unix:{q2}"),
        &format!("--incoming=file:{snap}"),
    ]);
    let mut qmp2 = Qmp::connect(q2.as_ref());
    wait_until(20, "the clone's restore", || {
        qmp2.ok("query-status", json!({}))["status"] == "paused"
    });
    qmp2.ok("cont", json!({}));
    wait_until(20, "the clone's output", || {
        counter_values(&read_log(&s2)).len() >= 3
    });
    assert_contiguous(
        &counter_values(&(saved + &read_log(&s2))),
        "template then clone",
    );
    assert!(
        fs::read(&ram).unwrap() == ram_before,
        "the template's RAM file changed"
    );

    // Anonymous RAM cannot stand in for the file the RAM was left in.
    let out = vmm_output(&["--memory", "size=64M", &format!("--incoming=file:{snap}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("left guest RAM in") && err.contains(&ram),
        "{err}"
    );
}

/// Named sections, and RAM chunks by guest address.
type Sections = Vec<(String, Vec<u8>)>;
type RamChunks = Vec<(u64, Vec<u8>)>;

/// The sections of a snapshot file by name, and its RAM chunks.
fn sections(path: &str) -> (Sections, RamChunks) {
    use vmm::snapshot::format::{RamSink, Reader};
    struct Collect(RamChunks);
    impl RamSink for Collect {
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), String> {
            self.0.push((gpa, data.to_vec()));
            Ok(())
        }
    }
    let mut r = Reader::new(fs::File::open(path).unwrap()).unwrap();
    let mut all = vec![("config".to_string(), r.config().to_vec())];
    all.extend(r.sections().unwrap());
    let mut ram = Collect(Vec::new());
    r.ram_and_end(&mut ram).unwrap();
    (all, ram.0)
}

#[test]
fn save_restore_save_again_gives_the_same_state() {
    let dir = Dir::new("snap-again");
    let (q1, s1, a, b) = (dir.path("q1"), dir.path("s1"), dir.path("a"), dir.path("b"));
    let vm = boot_counter(&dir, &q1, &s1, "size=64M", &["--cpus", "2"], 2);
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.ok("stop", json!({}));
    qmp.migrate(&format!("file:{a}"));
    drop(vm);

    // --vmgenid off: a restore otherwise gives the guest a new generation
    // ID (RAM at VMGENID_ADDR and a GED event change on purpose; see
    // tests/vmgenid.rs); here every byte must come back as it was saved.
    let q2 = dir.path("q2");
    let _vm2 = Vmm::start(&[
        "--memory",
        "size=64M",
        "--cpus",
        "2",
        "--vmgenid",
        "off",
        &format!("--serial=file={}", dir.path("s2")),
        &format!("--qmp=unix:{q2}"),
        &format!("--incoming=file:{a}"),
    ]);
    let mut qmp2 = Qmp::connect(q2.as_ref());
    wait_until(20, "the restore", || {
        qmp2.ok("query-status", json!({}))["status"] == "paused"
    });
    qmp2.migrate(&format!("file:{b}"));

    let (sa, ram_a) = sections(&a);
    let (sb, ram_b) = sections(&b);
    let names = |s: &Sections| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&sa), names(&sb));
    assert!(
        ram_a == ram_b,
        "guest RAM differs after a restore and a second save"
    );
    // Time goes on while the VM is stopped between the two saves: the
    // kvmclock and the TSC (an MSR, and the PIT's count) may differ; every
    // other byte of state must be the same.
    let mut differ = Vec::new();
    for ((name, x), (_, y)) in sa.iter().zip(&sb) {
        if x != y {
            differ.push(name.clone());
        }
    }
    let allowed = ["vm", "vcpu0", "vcpu1"];
    assert!(
        differ.iter().all(|n| allowed.contains(&n.as_str())),
        "sections that changed: {differ:?}"
    );
    for name in ["vcpu0", "vcpu1"] {
        let x = &sa.iter().find(|(n, _)| n == name).unwrap().1;
        let y = &sb.iter().find(|(n, _)| n == name).unwrap().1;
        let va: vmm::vstate::VcpuState = vmm::snapshot::decode(name, x).unwrap();
        let vb: vmm::vstate::VcpuState = vmm::snapshot::decode(name, y).unwrap();
        assert_eq!(va.regs.rip, vb.regs.rip, "{name}");
        assert_eq!(format!("{:?}", va.regs), format!("{:?}", vb.regs), "{name}");
        assert_eq!(
            format!("{:?}", va.sregs),
            format!("{:?}", vb.sregs),
            "{name}"
        );
        assert_eq!(va.xsave, vb.xsave, "{name}");
        assert_eq!(
            format!("{:?}", va.lapic.regs),
            format!("{:?}", vb.lapic.regs),
            "{name}"
        );
        assert_eq!(va.mp_state.mp_state, vb.mp_state.mp_state, "{name}");
        assert_eq!(va.cpuid.len(), vb.cpuid.len(), "{name}");
        // MSRs: the same set; values equal except the TSC (0x10).
        let msrs = |v: &vmm::vstate::VcpuState| {
            v.msrs
                .iter()
                .filter(|m| m.index != 0x10)
                .map(|m| (m.index, m.data))
                .collect::<Vec<_>>()
        };
        assert_eq!(msrs(&va), msrs(&vb), "{name}");
    }
}

/// Snapshot files are untrusted, and a checksum only catches accidents:
/// a file rewritten with valid checksums around bad content (each section
/// truncated, filled with garbage, or with bytes flipped; a section
/// missing, doubled under another name, or added) must be refused with a
/// clear error, never panic the VMM, and never run the guest.
#[test]
fn crafted_sections_with_valid_checksums_are_refused_without_a_panic() {
    use vmm::snapshot::format::Writer;

    let dir = Dir::new("snap-crafted");
    let (q1, s1, snap) = (dir.path("q1"), dir.path("s1"), dir.path("snap"));
    let disk = dir.path("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("--disk=path={disk},id=d0");
    let vm = boot_counter(
        &dir,
        &q1,
        &s1,
        "size=64M",
        &[&disk_arg, "--balloon=stats=on"],
        1,
    );
    let mut qmp = Qmp::connect(q1.as_ref());
    qmp.migrate(&format!("file:{snap}"));
    drop(vm);
    let (sections, ram) = sections(&snap);

    let write = |path: &str, sections: &[(String, Vec<u8>)]| {
        let f = fs::File::create(path).unwrap();
        let mut w = Writer::new(f, &sections[0].1).unwrap();
        for (name, payload) in &sections[1..] {
            w.section(name, payload).unwrap();
        }
        // RAM goes back as it was: only the sections are crafted.
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(0),
            64 << 20,
        )])
        .unwrap();
        for (gpa, data) in &ram {
            use vm_memory::Bytes;
            mem.write_slice(data, vm_memory::GuestAddress(*gpa))
                .unwrap();
        }
        w.ram(&mem).unwrap();
        w.finish().unwrap();
    };
    let s2 = dir.path("s2");
    let bad = dir.path("bad");
    let mut cases: Vec<(String, Sections)> = Vec::new();
    for (i, (name, payload)) in sections.iter().enumerate() {
        let mut cut = sections.clone();
        cut[i].1.truncate(payload.len() / 2);
        cases.push((format!("{name} truncated"), cut));
        let mut garbage = sections.clone();
        garbage[i].1 = (0..payload.len()).map(|j| (j * 7 + 13) as u8).collect();
        cases.push((format!("{name} garbage"), garbage));
        let mut ones = sections.clone();
        ones[i].1.iter_mut().for_each(|b| *b = 0xff);
        cases.push((format!("{name} all ones"), ones));
        if i > 0 {
            let mut missing = sections.clone();
            missing.remove(i);
            cases.push((format!("{name} missing"), missing));
        }
    }
    let mut extra = sections.clone();
    extra.push(("device:nobody".into(), vec![1, 2, 3]));
    cases.push(("an unknown section".into(), extra));

    let mut refused = 0;
    for (what, crafted) in &cases {
        write(&bad, crafted);
        let _ = fs::remove_file(&s2);
        let vm = Vmm::start(&[
            "--memory",
            "size=64M",
            &disk_arg,
            "--balloon=stats=on",
            &format!("--serial=file={s2}"),
            &format!("--incoming=file:{bad}"),
        ]);
        let (status, err) = vm.finish_within(Duration::from_secs(5));
        assert!(!err.contains("panicked"), "{what}: vmm panicked:\n{err}");
        match status {
            Some(1 | 2) => {
                refused += 1;
                assert!(
                    err.lines().any(|l| l.starts_with("vmm: ")),
                    "{what}: no error line:\n{err}"
                );
                assert_eq!(read_log(&s2), "", "{what}: the guest ran");
            }
            // A VM saved with --serial off has no COM1 state: one restored
            // with a COM1 starts it fresh, so this file is a valid one.
            None if what == "com1 missing" => {}
            other => panic!("{what}: status {other:?} (None: still running after 5 s):\n{err}"),
        }
    }
    eprintln!("{refused} of {} crafted snapshots refused", cases.len());
    assert_eq!(refused, cases.len() - 1);
}

/// On KVM a port write is complete only once KVM_RUN is entered again: a
/// vCPU saved right after its OUT exit would write that byte a second
/// time after the restore (and one saved after an IN would read a
/// read-to-clear register twice). A guest that does nothing but write
/// 0, 1, 2, ... to COM1 is paused almost always just there; its output,
/// before the save and after the restore put end to end, must still
/// count up by one. This host's PVM happens to complete port writes at
/// the exit itself, so here the test guards the property for hosts with
/// KVM's documented behaviour (the nested lab's L1 is one).
#[test]
fn a_port_write_in_flight_at_the_pause_is_not_replayed_after_restore() {
    // mov dx, 0x3f8; xor eax, eax; l: out dx, al; inc al; jmp l
    const COUNT_BYTES: &[u8] = &[
        0x66, 0xba, 0xf8, 0x03, 0x31, 0xc0, 0xee, 0xfe, 0xc0, 0xeb, 0xfb,
    ];
    let dir = Dir::new("snap-pio");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(COUNT_BYTES)).unwrap();
    let (q1, s1, snap) = (dir.path("q1"), dir.path("s1"), dir.path("snap"));
    for round in 0..3 {
        let _ = fs::remove_file(&s1);
        let vm = Vmm::start(&[
            "--kernel",
            &kernel,
            "--memory",
            "size=64M",
            &format!("--serial=file={s1}"),
            &format!("--qmp=unix:{q1}"),
        ]);
        let size = |p: &str| fs::metadata(p).map_or(0, |m| m.len());
        wait_until(20, "the guest's output", || size(&s1) > 1000);
        let mut qmp = Qmp::connect(q1.as_ref());
        qmp.ok("stop", json!({}));
        qmp.migrate(&format!("file:{snap}"));
        drop(vm);
        let before = fs::read(&s1).unwrap();

        let (q2, s2) = (dir.path("q2"), dir.path("s2"));
        let _ = fs::remove_file(&s2);
        let vm2 = Vmm::start(&[
            "--memory",
            "size=64M",
            &format!("--serial=file={s2}"),
            &format!("--qmp=unix:{q2}"),
            &format!("--incoming=file:{snap}"),
        ]);
        let mut qmp2 = Qmp::connect(q2.as_ref());
        wait_until(20, "the restore", || {
            qmp2.ok("query-status", json!({}))["status"] == "paused"
        });
        qmp2.ok("cont", json!({}));
        wait_until(20, "output after the restore", || size(&s2) > 1000);
        drop(vm2);
        let mut all = before.clone();
        all.extend(fs::read(&s2).unwrap());
        for (i, w) in all.windows(2).enumerate() {
            assert_eq!(
                w[1],
                w[0].wrapping_add(1),
                "round {round}: byte {i} of the output ({} before the save): {:#x} then {:#x}",
                before.len(),
                w[0],
                w[1]
            );
        }
    }
}
