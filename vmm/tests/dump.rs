//! The diagnostic dump of a running VM (SIGUSR1, QMP x-query-vcpu-dump):
//! each vCPU's registers, mp_state and pending events, and the guest's
//! last serial output, taken from tiny guests on this host's KVM; the VM
//! must go on afterwards.

use std::fs;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{json, Value};

mod common;
use common::{
    boot_counter, bzimage, counter_values, read_log, wait_until, Dir, Qmp, Vmm, COUNTER,
    HALT_FOREVER,
};

/// Where a bzImage's 64-bit entry code is loaded: code32_start + 0x200.
const ENTRY: u64 = 0x10_0200;

/// Collects a child's stderr while it runs.
fn stream_stderr(vmm: &mut Vmm) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let mut err = vmm.child().stderr.take().expect("stderr is piped");
    let o = out.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

fn sigusr1(vmm: &Vmm) {
    // SAFETY: sends a signal to the child this test started.
    let r = unsafe { libc::kill(vmm.id() as libc::pid_t, libc::SIGUSR1) };
    assert_eq!(r, 0, "kill -USR1");
}

/// The `vcpu-dump:` lines of the `n`th dump (from 1) in a log, without
/// their prefix and the logger's.
fn dump_lines(log: &str, n: usize) -> Vec<String> {
    let mut dumps: Vec<Vec<String>> = Vec::new();
    for l in log.lines() {
        let Some((_, rest)) = l.split_once("vcpu-dump: ") else {
            continue;
        };
        if rest.starts_with("begin:") {
            dumps.push(Vec::new());
        }
        if let Some(d) = dumps.last_mut() {
            d.push(rest.to_string());
        }
    }
    dumps.get(n - 1).cloned().unwrap_or_default()
}

/// The value of `key=0x...` in a dump line.
fn hex(line: &str, key: &str) -> u64 {
    let v = line
        .split(' ')
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

fn wait_dumps(err: &Mutex<String>, n: usize) -> Vec<String> {
    wait_until(20, "the dump's end line", || {
        err.lock().unwrap().matches("vcpu-dump: end").count() >= n
    });
    dump_lines(&err.lock().unwrap(), n)
}

#[test]
fn sigusr1_logs_every_vcpu_and_the_serial_tail_and_the_guest_goes_on() {
    let dir = Dir::new("dump-usr1");
    let serial = dir.path("serial.log");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(COUNTER)).unwrap();
    let mut vmm = Vmm::start(&[
        "--kernel",
        &kernel,
        "--memory",
        "size=64M",
        "--cpus",
        "2",
        &format!("--serial=file={serial}"),
    ]);
    let err = stream_stderr(&mut vmm);
    wait_until(20, "two counter lines", || {
        counter_values(&read_log(&serial)).len() >= 2
    });

    sigusr1(&vmm);
    let d = wait_dumps(&err, 1);
    let log = err.lock().unwrap().clone();
    assert_eq!(d.len(), 7, "begin, 2 per vCPU, serial, end:\n{log}");
    assert_eq!(
        d[0], "begin: VM running, 2 vCPUs; vCPUs paused for the dump and resumed",
        "{log}"
    );
    // The boot vCPU runs the counter's code; the other waits for INIT.
    assert!(d[1].starts_with("vcpu0 rip="), "{log}");
    let rip = hex(&d[1], "rip");
    assert!(
        (ENTRY..ENTRY + COUNTER.len() as u64).contains(&rip),
        "vcpu0's RIP {rip:#x} is outside the guest's code ({ENTRY:#x} + {}):\n{log}",
        COUNTER.len()
    );
    assert_eq!(hex(&d[1], "cr3"), 0x9000, "the boot page tables: {log}");
    assert!(hex(&d[1], "efer") & 0x400 != 0, "long mode active: {log}");
    assert!(d[1].ends_with("mp_state=runnable"), "{log}");
    assert!(d[2].starts_with("vcpu0 exception="), "{log}");
    assert!(d[3].starts_with("vcpu1 rip=0xfff0 "), "{log}");
    assert!(d[3].ends_with("mp_state=uninitialized"), "{log}");
    assert!(
        d[4].starts_with("vcpu1 exception=none interrupt=none"),
        "{log}"
    );
    // The serial tail: the counter's lines, escaped on one line.
    let printed = counter_values(&read_log(&serial));
    assert!(d[5].starts_with("serial: last "), "{log}");
    assert!(
        d[5].contains(&format!("C={:016X}\\n", printed[1])),
        "the serial tail lacks counter line 2:\n{log}"
    );
    assert_eq!(d[6], "end");

    // The guest goes on, and a second dump finds it elsewhere in time.
    let seen = printed.len();
    wait_until(20, "the counter after the dump", || {
        counter_values(&read_log(&serial)).len() >= seen + 2
    });
    sigusr1(&vmm);
    let d2 = wait_dumps(&err, 2);
    assert!(d2[0].starts_with("begin: VM running"), "{d2:?}");
    assert!(
        vmm.child().try_wait().unwrap().is_none(),
        "vmm ended after SIGUSR1"
    );
}

#[test]
fn a_halted_vcpu_is_dumped_halted_where_it_sleeps() {
    let dir = Dir::new("dump-halt");
    let serial = dir.path("serial.log");
    let kernel = dir.path("kernel");
    fs::write(&kernel, bzimage(HALT_FOREVER)).unwrap();
    let mut vmm = Vmm::start(&[
        "--kernel",
        &kernel,
        "--memory",
        "size=64M",
        &format!("--serial=file={serial}"),
    ]);
    let err = stream_stderr(&mut vmm);
    wait_until(20, "the guest's H", || read_log(&serial) == "H\n");
    // Give the vCPU time to reach its hlt.
    thread::sleep(std::time::Duration::from_millis(200));
    sigusr1(&vmm);
    let d = wait_dumps(&err, 1);
    let log = err.lock().unwrap().clone();
    // cli (offset 10), hlt (11), jmp hlt (12): it sleeps past a hlt.
    let rip = hex(&d[1], "rip");
    assert!(
        [ENTRY + 12, ENTRY + 11].contains(&rip),
        "RIP {rip:#x} is not at the guest's hlt:\n{log}"
    );
    assert_eq!(hex(&d[1], "rflags") & 0x200, 0, "interrupts are off: {log}");
    assert!(d[1].ends_with("mp_state=halted"), "{log}");
    assert_eq!(d[3], r#"serial: last 2 of 2 bytes: "H\n""#, "{log}");
    assert!(vmm.child().try_wait().unwrap().is_none());
}

#[test]
fn sigusr1_before_there_is_a_vm_says_so_and_ends_nothing() {
    let mut vmm = Vmm::start(&["--memory", "size=64M", "--incoming", "defer"]);
    let err = stream_stderr(&mut vmm);
    wait_until(20, "vmm waiting for its incoming migration", || {
        err.lock()
            .unwrap()
            .contains("waiting for an incoming migration")
    });
    sigusr1(&vmm);
    wait_until(20, "the dump's refusal", || {
        err.lock().unwrap().contains("vcpu-dump: none: ")
    });
    thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        vmm.child().try_wait().unwrap().is_none(),
        "{}",
        err.lock().unwrap()
    );
}

#[test]
fn qmp_x_query_vcpu_dump_returns_the_same_and_keeps_the_run_state() {
    let dir = Dir::new("dump-qmp");
    let q = dir.path("qmp.sock");
    let serial = dir.path("serial.log");
    let _vmm = boot_counter(&dir, &q, &serial, "size=64M", &["--cpus", "2"], 2);
    let mut qmp = Qmp::connect(q.as_ref());
    let in_code = |v: &Value| {
        let rip = v["rip"].as_u64().unwrap();
        (ENTRY..ENTRY + COUNTER.len() as u64).contains(&rip)
    };

    let d = qmp.ok("x-query-vcpu-dump", json!({}));
    assert_eq!(d["status"], "running", "{d}");
    assert_eq!(d["paused-for-dump"], true, "{d}");
    let vcpus = d["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 2, "{d}");
    assert_eq!(vcpus[0]["cpu-index"], 0);
    assert!(in_code(&vcpus[0]), "{d}");
    assert_eq!(vcpus[0]["cr3"], 0x9000, "{d}");
    assert_eq!(vcpus[0]["mp-state"], "runnable", "{d}");
    assert_eq!(vcpus[0]["exception"]["injected"], false, "{d}");
    assert_eq!(vcpus[1]["mp-state"], "uninitialized", "{d}");
    assert!(
        d["serial"]["tail"]
            .as_str()
            .unwrap()
            .contains("C=0000000000000002\\n"),
        "{d}"
    );
    assert!(
        d["serial"]["total-bytes"].as_u64().unwrap() >= 2 * 19,
        "{d}"
    );
    assert_eq!(
        qmp.ok("query-status", json!({}))["status"],
        "running",
        "the dump left the VM paused"
    );
    let seen = counter_values(&read_log(&serial)).len();
    wait_until(20, "the counter after the dump", || {
        counter_values(&read_log(&serial)).len() >= seen + 2
    });

    // A paused VM is dumped as it is and stays paused.
    qmp.ok("stop", json!({}));
    let d = qmp.ok("x-query-vcpu-dump", json!({}));
    assert_eq!(d["status"], "paused", "{d}");
    assert_eq!(d["paused-for-dump"], false, "{d}");
    assert!(in_code(&d["vcpus"][0]), "{d}");
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "paused");
    qmp.ok("cont", json!({}));
    let e = qmp.execute("x-query-vcpu-dump", json!({"cpu": 0}));
    assert_eq!(e["error"]["desc"], "Parameter 'cpu' is unexpected", "{e}");
}
