//! `vmm template create|clone|status|destroy` on this host's real KVM with
//! tiny hand-made guests: real files, real locks, real processes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::{
    bzimage, read_log, tagged_values, wait_until, Dir, Qmp, Vmm, HALT_FOREVER, POWER_OFF, SCRIBBLER,
};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("vmm runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `vmm template create` of a 32 MiB VM that waits for a QMP `stop`
/// (`extra` adds options, e.g. the QMP socket).
fn create_on_stop(tpl: &str, kernel: &str, extra: &[&str]) -> Vmm {
    let mut args = vec![
        "template",
        "create",
        "--dir",
        tpl,
        "--ready",
        "qmp",
        "--kernel",
        kernel,
        "--memory",
        "size=32M",
        "--serial=off",
    ];
    args.extend_from_slice(extra);
    Vmm::spawn(&args)
}

/// What `vmm template status` prints.
fn status_text(tpl: &str) -> String {
    String::from_utf8_lossy(&vmm(&["template", "status", "--dir", tpl]).stdout).into_owned()
}

/// Waits until `template status` counts `n` clones.
fn wait_for_clones(tpl: &str, n: usize) {
    let want = format!("clones:    {n} (pids");
    wait_until(20, "the clones' locks", || status_text(tpl).contains(&want));
}

/// sha256 of every file in `dir`, by name (sha256sum: another program's hash).
fn hashes(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let out = Command::new("sha256sum").arg(e.path()).output().unwrap();
            let sum = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            (e.file_name().to_string_lossy().into_owned(), sum)
        })
        .collect();
    v.sort();
    v
}

/// Makes a template of the scribbler guest in `dir/tpl` with one writable
/// and one read-only disk; ready once it printed pass 2.
fn make_template(dir: &Dir) -> (String, String) {
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(SCRIBBLER)).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    fs::write(dir.path("rw.img"), &data).unwrap();
    fs::write(dir.path("ro.img"), vec![0x5a; 1 << 16]).unwrap();
    let tpl = dir.path("tpl");
    let o = vmm(&[
        "template",
        "create",
        "--dir",
        &tpl,
        "--ready",
        "serial=P=0000000000000002",
        "--ready-timeout",
        "30",
        "--kernel",
        &kernel,
        "--memory",
        "size=64M",
        "--disk",
        &format!("path={},id=rw", dir.path("rw.img")),
        "--disk",
        &format!("path={},readonly=on,id=ro", dir.path("ro.img")),
        &format!("--serial=file={}", dir.path("template.log")),
    ]);
    assert_eq!(o.status.code(), Some(0), "create: {}", stderr(&o));
    assert_eq!(
        fs::read(dir.path("rw.img")).unwrap(),
        data,
        "the given image is never written"
    );
    (tpl, read_log(&dir.path("template.log")))
}

#[test]
fn ten_clones_write_all_their_memory_and_disks_and_the_template_never_changes() {
    let dir = Dir::new("tpl-ten");
    let (tpl, template_log) = make_template(&dir);
    let tpl_path = Path::new(&tpl);
    let mut names: Vec<String> = fs::read_dir(tpl_path)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["disk-rw.img", "memory", "state", "template.json"]);
    for n in &names {
        let mode = fs::metadata(tpl_path.join(n)).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "{n} is read-only after creation");
    }
    let m: Value =
        serde_json::from_slice(&fs::read(tpl_path.join("template.json")).unwrap()).unwrap();
    assert_eq!(m["memory_size"], json!(64u64 << 20));
    assert_eq!(m["disks"][0]["id"], json!("rw"));
    assert!(m["disks"][0]["captured"].is_object());
    assert!(m["disks"][1]["captured"].is_null());
    assert!(
        m["state"]["size"].as_u64().unwrap() < 1 << 20,
        "RAM stayed in the memory file: {}",
        m["state"]
    );
    // The pause comes at the ready text's last byte: the newline after
    // pass 2 may or may not be out yet, so pass 2 is read from the text.
    let template_passes = tagged_values(&format!("{template_log}\n"), "P");
    assert_eq!(template_passes, [1, 2], "{template_log}");
    let before = hashes(tpl_path);

    let mut clones = Vec::new();
    for i in 0..10 {
        let log = dir.path(&format!("clone{i}.log"));
        let disk = dir.path(&format!("clone{i}.img"));
        let c = Vmm::spawn(&[
            "template",
            "clone",
            "--dir",
            &tpl,
            "--disk",
            &format!("id=rw,path={disk}"),
            &format!("--serial=file={log}"),
        ]);
        clones.push((c, log, disk));
    }
    let last = *template_passes.last().unwrap();
    for (_, log, _) in &clones {
        // Two passes after the restore: every page above 4 MiB written.
        wait_until(60, "two passes in each clone", || {
            tagged_values(&read_log(log), "P").len() >= 2
        });
        let passes = tagged_values(&read_log(log), "P");
        assert_eq!(
            passes[0],
            last + 1,
            "a clone goes on from the template's pause: {passes:?}"
        );
    }
    let status = vmm(&["template", "status", "--dir", &tpl]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(text.contains("clones:    10 (pids"), "{text}");
    for (c, _, _) in &clones {
        assert!(text.contains(&c.id().to_string()), "{text}");
    }
    let refused = vmm(&["template", "destroy", "--dir", &tpl]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("10 clone(s) still run from it"),
        "{}",
        stderr(&refused)
    );
    // Each clone's disk is its own file: write all of it.
    for (_, _, disk) in &clones {
        fs::write(disk, vec![0xee; 1 << 20]).unwrap();
    }
    drop(clones);
    assert_eq!(hashes(tpl_path), before, "no template file changed");

    let gone = vmm(&["template", "destroy", "--dir", &tpl]);
    assert_eq!(gone.status.code(), Some(0), "{}", stderr(&gone));
    assert!(!tpl_path.exists());
    assert!(Path::new(&dir.path("rw.img")).exists(), "sources are kept");
}

#[test]
fn a_clone_refuses_a_template_being_created_and_a_changed_one() {
    let dir = Dir::new("tpl-lock");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(HALT_FOREVER)).unwrap();
    let tpl = dir.path("tpl");
    let q = dir.path("qmp.sock");
    let creating = create_on_stop(&tpl, &kernel, &[&format!("--qmp=unix:{q}")]);
    wait_until(20, "the QMP socket", || Path::new(&q).exists());
    let mut qmp = Qmp::connect(Path::new(&q));
    let o = vmm(&["template", "clone", "--dir", &tpl, "--serial=off"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is being created"), "{}", stderr(&o));
    let o = vmm(&["template", "destroy", "--dir", &tpl]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("being created"), "{}", stderr(&o));

    qmp.ok("stop", json!({}));
    let mut creating = creating;
    let status = creating.child().wait().unwrap();
    assert_eq!(status.code(), Some(0), "create ends once the VM is stopped");
    assert!(Path::new(&tpl).join("template.json").exists());

    // A clone runs; the manifest goes away by hand: create refuses the
    // directory whose memory the clone still maps.
    let clone = Vmm::spawn(&["template", "clone", "--dir", &tpl, "--serial=off"]);
    let pid = clone.id();
    wait_for_clones(&tpl, 1);
    let manifest = Path::new(&tpl).join("template.json");
    let saved = fs::read(&manifest).unwrap();
    fs::remove_file(&manifest).unwrap();
    let o = vmm(&[
        "template", "create", "--dir", &tpl, "--ready", "qmp", "--kernel", &kernel, "--memory",
        "size=32M",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("still map its memory file") && e.contains(&pid.to_string()),
        "{e}"
    );
    fs::write(&manifest, saved).unwrap();
    drop(clone);

    // A changed template file is named and refused.
    let state = Path::new(&tpl).join("state");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o644)).unwrap();
    let f = fs::File::options().write(true).open(&state).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let o = vmm(&["template", "clone", "--dir", &tpl, "--serial=off"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("state: it was modified") && e.contains("create it again"),
        "{e}"
    );
}

#[test]
fn what_clones_could_not_run_is_refused_before_booting() {
    let dir = Dir::new("tpl-refuse");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(HALT_FOREVER)).unwrap();
    let tpl = dir.path("tpl");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--memory", "size=32M,backing=anon"],
            "give only size=SIZE",
        ),
        (
            &[
                "--memory",
                "size=32M",
                "--balloon",
                "free-page-reporting=on",
            ],
            "balloon: free-page-reporting=on cannot work on guest RAM",
        ),
        (
            &["--memory", "size=32M", "--balloon", "target=16M"],
            "balloon: target=16M cannot work on guest RAM",
        ),
        (
            &[
                "--memory",
                "size=32M",
                "--virtio-mem",
                "size=1G,requested=128M,id=mem0",
            ],
            "requested=128M",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "template", "create", "--dir", &tpl, "--ready", "qmp", "--kernel", &kernel,
        ];
        args.extend_from_slice(extra);
        let o = vmm(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
        assert!(!Path::new(&tpl).exists(), "{extra:?}: nothing was made");
    }
    // A directory with other files is not taken.
    fs::create_dir(&tpl).unwrap();
    fs::write(Path::new(&tpl).join("mine.txt"), b"keep").unwrap();
    let o = vmm(&[
        "template", "create", "--dir", &tpl, "--ready", "qmp", "--kernel", &kernel, "--memory",
        "size=32M",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not empty (mine.txt)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read(Path::new(&tpl).join("mine.txt")).unwrap(), b"keep");
}

#[test]
fn a_guest_not_ready_in_time_or_powered_off_leaves_no_template() {
    let dir = Dir::new("tpl-fail");
    for (code, want) in [
        (
            HALT_FOREVER,
            "did not print \"NEVER\" on its serial line within 1 s",
        ),
        (POWER_OFF, "the guest powered off before it was ready"),
    ] {
        let kernel = dir.path("kernel");
        fs::write(&kernel, bzimage(code)).unwrap();
        let tpl = dir.path("tpl");
        let o = vmm(&[
            "template",
            "create",
            "--dir",
            &tpl,
            "--ready",
            "serial=NEVER",
            "--ready-timeout",
            "1",
            "--kernel",
            &kernel,
            "--memory",
            "size=32M",
            "--serial=file=/dev/null",
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
        assert!(!Path::new(&tpl).exists(), "no half-made template: {want}");
    }
}

#[test]
fn a_balloon_lowered_before_the_save_is_refused_on_a_clone() {
    let dir = Dir::new("tpl-balloon");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(HALT_FOREVER)).unwrap();
    let ram = dir.path("ram");
    let q = dir.path("qmp.sock");
    let state = dir.path("state");
    let template = Vmm::spawn(&[
        "run",
        "--kernel",
        &kernel,
        "--memory",
        &format!("size=64M,backing=file,path={ram},share=on"),
        "--balloon",
        "stats=on",
        "--serial=off",
        &format!("--qmp=unix:{q}"),
    ]);
    wait_until(20, "the QMP socket", || Path::new(&q).exists());
    let mut qmp = Qmp::connect(Path::new(&q));
    qmp.ok("balloon", json!({"value": 48u64 << 20}));
    qmp.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
    );
    qmp.migrate(&format!("file:{state}"));
    drop(template);

    let clone_ram = format!("size=64M,backing=file,path={ram},share=off,readonly=on,rom=off");
    let o = vmm(&[
        "run",
        "--memory",
        &clone_ram,
        "--balloon",
        "stats=on",
        "--serial=off",
        "--incoming",
        &format!("file:{state}"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("the saved VM's devices need what this VM's RAM cannot do; nothing was started")
            && e.contains(
                "balloon: the saved state (target 48M, 0 inflated) cannot work on guest RAM"
            )
            && e.contains("a template clone's RAM is a private mapping of the template file"),
        "{e}"
    );
    // The same snapshot restores where RAM can discard (the template's own file, shared).
    let ok = Vmm::spawn(&[
        "run",
        "--memory",
        &format!("size=64M,backing=file,path={ram},share=on"),
        "--balloon",
        "stats=on",
        "--serial=off",
        &format!("--qmp=unix:{q}2"),
        "--incoming",
        &format!("file:{state}"),
    ]);
    wait_until(20, "the restored VM's QMP socket", || {
        Path::new(&format!("{q}2")).exists()
    });
    let mut qmp = Qmp::connect(Path::new(&format!("{q}2")));
    wait_until(20, "the restored VM running", || {
        qmp.ok("query-status", json!({}))["status"] == "running"
    });
    drop(ok);
}

fn sigterm(c: &Vmm) {
    // SAFETY: sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(c.id() as i32, libc::SIGTERM) }, 0);
}

#[test]
fn sigterm_ends_a_clone_cleanly_and_leaves_no_half_made_template() {
    let dir = Dir::new("tpl-term");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(HALT_FOREVER)).unwrap();
    let tpl = dir.path("tpl");

    // A template waiting for its guest: SIGTERM, exit 1, nothing left.
    let mut creating = create_on_stop(&tpl, &kernel, &[]);
    wait_until(20, "the template's memory file", || {
        Path::new(&tpl).join("memory").exists()
    });
    std::thread::sleep(Duration::from_millis(200));
    sigterm(&creating);
    let status = creating.child().wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(!Path::new(&tpl).exists(), "no half-made template");

    // A clone with a disk copy at the default path: SIGTERM removes the
    // copy and releases the template.
    fs::write(dir.path("d.img"), vec![1u8; 1 << 16]).unwrap();
    let q = dir.path("qmp.sock");
    let creating = create_on_stop(
        &tpl,
        &kernel,
        &[
            "--disk",
            &format!("path={},id=d", dir.path("d.img")),
            &format!("--qmp=unix:{q}"),
        ],
    );
    wait_until(20, "the QMP socket", || Path::new(&q).exists());
    Qmp::connect(Path::new(&q)).ok("stop", json!({}));
    let mut creating = creating;
    assert_eq!(creating.child().wait().unwrap().code(), Some(0));
    let mut clone = Vmm::spawn(&["template", "clone", "--dir", &tpl, "--serial=off"]);
    let copy = Path::new(&dir.0).join(format!("tpl.clone-{}-d.img", clone.id()));
    wait_until(20, "the clone's disk copy", || copy.exists());
    wait_for_clones(&tpl, 1);
    sigterm(&clone);
    assert_eq!(
        clone.child().wait().unwrap().code(),
        Some(0),
        "SIGTERM ends a clone as quit does"
    );
    assert!(!copy.exists(), "the clone's disk copy is removed");
    let text = status_text(&tpl);
    assert!(text.contains("clones:    0"), "{text}");
}
