//! The QMP socket of a real `vmm run` (a tiny guest on this host's KVM)
//! against clients written by others: the `qemu.qmp` Python package
//! (tests/qmp/*.py), and the real `vmm ctl` binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Output, Stdio};

use serde_json::Value;

mod common;
use common::{bzimage, counter_values, read_log, wait_until, Dir, COUNTER};

/// A `vmm run` of the counter guest with its QMP socket; killed on drop.
struct Server {
    path: PathBuf,
    serial: String,
    dir: Dir,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(tag: &str, extra: &[&str]) -> Server {
    let dir = Dir::new(tag);
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(COUNTER)).unwrap();
    let (sock, serial) = (dir.path("qmp"), dir.path("serial"));
    let child = Process::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["run", "--kernel", &kernel, "--cpus", "2"])
        .args(if extra.iter().any(|a| a.starts_with("--memory")) {
            &[][..]
        } else {
            &["--memory", "size=64M"][..]
        })
        .arg(format!("--serial=file={serial}"))
        .arg(format!("--qmp=unix:{sock}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vmm starts");
    wait_until(20, "the guest's first output", || {
        !counter_values(&read_log(&serial)).is_empty()
    });
    Server {
        path: PathBuf::from(sock),
        serial,
        dir,
        child,
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn qemu_qmp_python_client() {
    let python = workspace().join("target/qmp-venv/bin/python");
    if !python.exists() {
        eprintln!(
            "SKIPPED: {} is missing; scripts/setup.sh creates it (python3 -m venv + pip install qemu.qmp)",
            python.display()
        );
        return;
    }
    for script in ["test_protocol.py", "test_vm.py"] {
        let s = start(&format!("qmp-py-{script}"), &[]);
        let out = Process::new(&python)
            .arg(workspace().join("tests/qmp").join(script))
            .env("QMP_SOCKET", &s.path)
            .env("VM_SERIAL", &s.serial)
            .env("VM_DIR", &s.dir.0)
            .output()
            .expect("python runs");
        assert!(out.status.success(), "{script}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("\nOK"), "{script}: {}", show(&out));
        eprintln!("{stderr}");
    }
}

fn ctl(args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("ctl")
        .args(args)
        .output()
        .expect("vmm runs")
}

#[test]
fn vmm_ctl_exit_statuses_and_output() {
    let s = start("qmp-ctl", &[]);
    let sock = s.path.to_str().unwrap();

    let o = ctl(&["--qmp", sock, "query-status"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "running");

    let spec = format!("unix:{sock},server=on,wait=off");
    let o = ctl(&["--qmp", &spec, "stop", "--wait-event", "STOP"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("{}\n{"), "{out}");
    assert!(out.contains("\"event\": \"STOP\""), "{out}");

    let o = ctl(&["--qmp", sock, "balloon", r#"{"value": 1073741824}"#]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "vmm ctl: DeviceNotActive: No balloon device has been activated"
    );

    let o = ctl(&["--qmp", sock, "balloon"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "vmm ctl: GenericError: Parameter 'value' is missing"
    );

    let o = ctl(&[
        "--qmp",
        sock,
        "cont",
        "--wait-event",
        "NEVER",
        "--timeout",
        "0.3",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("timed out"),
        "{}",
        show(&o)
    );

    let o = ctl(&["--qmp", sock, "balloon", "{value: 1}"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid JSON-ARGS"),
        "{}",
        show(&o)
    );

    let missing = format!("{sock}.missing");
    let o = ctl(&["--qmp", &missing, "query-status"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains(&missing) && e.contains("does not exist"), "{e}");

    let o = ctl(&["--qmp", sock]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

/// On a template clone's RAM (a private mapping of the template file) a
/// balloon cannot give memory back: QMP `balloon` below the RAM size is
/// refused with the RAM policy's message, and the VM runs on.
#[test]
fn balloon_on_template_clone_ram_is_refused_and_the_vm_runs_on() {
    let dir = Dir::new("qmp-clone-balloon");
    let ram = dir.path("template-ram");
    fs::write(&ram, vec![0u8; 64 << 20]).unwrap();
    let mem = format!("--memory=size=64M,backing=file,path={ram},share=off,readonly=on,rom=off");
    let s = start("qmp-clone-balloon", &[&mem, "--balloon"]);
    let sock = s.path.to_str().unwrap();
    let o = ctl(&["--qmp", sock, "balloon", r#"{"value": 33554432}"#]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("GenericError")
            && err.contains("balloon")
            && err.contains("template clone's RAM")
            && err.contains("leave target unset"),
        "{err}"
    );
    let o = ctl(&["--qmp", sock, "query-status"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"running\""),
        "{}",
        show(&o)
    );
    // A target at the RAM size inflates nothing and is allowed.
    let o = ctl(&["--qmp", sock, "balloon", r#"{"value": 67108864}"#]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}
