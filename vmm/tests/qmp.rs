//! The QMP server against clients written by others: the `qemu.qmp`
//! Python package (tests/qmp/test_protocol.py), and the real `vmm ctl`
//! binary. The server runs in this process with a stand-in VM.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};
use vmm::control::{Command, EventSender, QmpError, QmpHandler, QmpListen, QmpServer};

/// A stand-in VM: pauses and resumes with STOP/RESUME events, as QEMU does.
#[derive(Default)]
struct FakeVm {
    events: OnceLock<EventSender>,
    paused: AtomicBool,
}

impl QmpHandler for FakeVm {
    fn execute(&self, command: Command) -> Result<Value, QmpError> {
        let events = self.events.get().expect("events set at start");
        match command {
            Command::Stop => {
                self.paused.store(true, Ordering::SeqCst);
                events.emit("STOP", None);
                Ok(json!({}))
            }
            Command::Cont => {
                self.paused.store(false, Ordering::SeqCst);
                events.emit("RESUME", None);
                Ok(json!({}))
            }
            Command::QueryStatus => {
                let paused = self.paused.load(Ordering::SeqCst);
                Ok(json!({
                    "running": !paused,
                    "singlestep": false,
                    "status": if paused { "paused" } else { "running" },
                }))
            }
            Command::Balloon { .. } | Command::QueryBalloon => Err(QmpError::device_not_active(
                "No balloon device has been activated",
            )),
            _ => Ok(json!({})),
        }
    }
}

struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn start() -> Server {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "vmm-qmp-it-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let vm = Arc::new(FakeVm::default());
    let (events, _) = QmpServer::start(QmpListen::Path(path.clone()), vm.clone()).unwrap();
    vm.events.set(events).ok().unwrap();
    Server { path }
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
    let s = start();
    let out = Process::new(&python)
        .arg(workspace().join("tests/qmp/test_protocol.py"))
        .env("QMP_SOCKET", &s.path)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\nOK"), "{}", show(&out));
    eprintln!("{stderr}");
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
    let s = start();
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
