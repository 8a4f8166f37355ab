//! `vmm host-check`: can this host boot a stock Linux guest, and if not, why.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM relies on, by KVM_CAP_* number.
const CAPS: &[(&str, libc::c_ulong)] = &[
    ("KVM_CAP_IRQCHIP", 0),
    ("KVM_CAP_USER_MEMORY", 3),
    ("KVM_CAP_SET_TSS_ADDR", 4),
    ("KVM_CAP_EXT_CPUID", 7),
    ("KVM_CAP_PIT2", 33),
    ("KVM_CAP_IRQFD", 32),
    ("KVM_CAP_IOEVENTFD", 36),
    ("KVM_CAP_XSAVE", 55),
    ("KVM_CAP_NESTED_STATE", 157),
];

pub struct Report {
    pub text: String,
    /// `vmm run` can boot an unmodified distribution kernel here.
    pub can_boot_stock_kernel: bool,
}

fn read_trim(p: &str) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The host's KVM is PVM, which boots only kernels built for it.
pub fn host_kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub fn run() -> Report {
    let mut t = String::new();
    let mut ok = true;

    let pvm = host_kvm_is_pvm();
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Err(e) => {
            ok = false;
            let _ = writeln!(t, "/dev/kvm: cannot open ({e}); load kvm-intel or kvm-amd, and run as a user with access to /dev/kvm");
        }
        Ok(f) => {
            // SAFETY: KVM ioctls that take no argument and only return a value.
            let api = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
            if api != KVM_API_VERSION {
                ok = false;
            }
            let _ = writeln!(t, "/dev/kvm: open, API version {api}");
            for (name, cap) in CAPS {
                // SAFETY: as above; the argument is a plain integer.
                let r = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CHECK_EXTENSION, *cap) };
                let needed = *name != "KVM_CAP_NESTED_STATE";
                if r <= 0 && needed {
                    ok = false;
                }
                let _ = writeln!(t, "  {name}: {}", if r > 0 { "yes" } else { "no" });
            }
        }
    }
    if pvm {
        ok = false;
        let _ = writeln!(t, "host KVM is PVM (module kvm_pvm): it runs only guest kernels built for PVM, so a stock distribution kernel will not boot here; use a host with VMX/SVM, or the nested lab (tests/lab/run)");
    } else {
        let _ = writeln!(t, "host KVM is not PVM");
    }

    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let vmx = flags.contains(&"vmx");
    let svm = flags.contains(&"svm");
    let _ = writeln!(
        t,
        "CPU virtualization: {}",
        match (vmx, svm) {
            (true, _) => "VMX (Intel)",
            (_, true) => "SVM (AMD)",
            _ =>
                "none visible (no vmx/svm flag); guests of this VMM cannot run their own KVM guests",
        }
    );
    for (module, opt) in [("kvm_intel", "kvm-intel"), ("kvm_amd", "kvm-amd")] {
        if let Some(v) = read_trim(&format!("/sys/module/{module}/parameters/nested")) {
            let on = v == "Y" || v == "1";
            let _ = writeln!(
                t,
                "nested virtualization ({module}): {}",
                if on {
                    "enabled".to_string()
                } else {
                    format!("disabled; enable it with `options {opt} nested=1` in /etc/modprobe.d/{module}.conf, then `rmmod {module} && modprobe {module}`")
                }
            );
        }
    }

    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let _ = writeln!(
        t,
        "huge pages: {} free of {} ({} kB each){}",
        field("HugePages_Free:"),
        field("HugePages_Total:"),
        field("Hugepagesize:"),
        if field("HugePages_Total:") == "0" {
            "; hugepages=on needs some: echo N > /proc/sys/vm/nr_hugepages"
        } else {
            ""
        }
    );
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    let _ = writeln!(
        t,
        "TAP: {}",
        match tun {
            Ok(_) => "/dev/net/tun usable".to_string(),
            Err(e) => format!(
                "/dev/net/tun not usable ({e}); load the tun module (modprobe tun) for --net"
            ),
        }
    );
    let _ = writeln!(
        t,
        "verdict: {}",
        if ok {
            "this host can boot a stock Linux guest"
        } else {
            "this host cannot boot a stock Linux guest"
        }
    );
    Report {
        text: t,
        can_boot_stock_kernel: ok,
    }
}
