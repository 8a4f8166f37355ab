//! The real `vmm` binary: `run --dry-run` validation, refusals and help.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vmm-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn file(&self, name: &str, content: &[u8]) -> String {
        let p = self.0.join(name);
        fs::write(&p, content).unwrap();
        p.display().to_string()
    }
    /// Enough of a bzImage for validation: the "HdrS" signature at 0x202.
    fn kernel(&self) -> String {
        let mut k = vec![0u8; 4096];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        self.file("bzImage", &k)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("vmm runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The numbered messages of docs/policy.md, unquoted.
fn documented_messages() -> Vec<String> {
    let doc =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md")).unwrap();
    doc.lines()
        .filter_map(|l| {
            let (num, rest) = l.split_once(". `")?;
            num.parse::<u32>().ok()?;
            Some(rest.trim_end_matches('`').to_string())
        })
        .collect()
}

#[test]
fn dry_run_prints_the_resolved_configuration() {
    let d = Dir::new();
    let kernel = d.kernel();
    let disk = d.file("disk.img", &vec![0u8; 1 << 20]);
    let o = vmm(&[
        "run",
        "--kernel",
        &kernel,
        "--cpus",
        "2",
        "--memory",
        "size=4G",
        "--disk",
        &format!("path={disk},id=root"),
        "--net",
        "tap=tap7,mac=52:54:00:aa:bb:cc",
        "--balloon",
        "stats=on,target=3G",
        "--virtio-mem",
        "size=2G,requested=512M,backing=memfd",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "cpus:    2",
        "memory:  size=4G,backing=anon,share=off",
        "ram    0x000000000000-0x0000bfffffff",
        "ram    0x000100000000-0x00013fffffff",
        "disk:    id=root",
        "mac=52:54:00:aa:bb:cc",
        "balloon: free-page-reporting=off,deflate-on-oom=off,stats=on,target=3G",
        "virtio-mem: id=mem0,size=2G,requested=512M,block-size=2M,backing=memfd,share=on at 0x140000000",
        "configuration valid",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn vmgenid_is_on_by_default_and_takes_on_or_off() {
    let d = Dir::new();
    let kernel = d.kernel();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--kernel",
            &kernel,
            "--memory",
            "size=64M",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        vmm(&args)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("vmgenid: on (GUID at 0xf0000, new on every restore)"),
        "{}",
        stdout(&o)
    );
    let o = run(&["--vmgenid", "off"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("vmgenid: off (clones of a snapshot share RNG state)"),
        "{}",
        stdout(&o)
    );
    let o = run(&["--vmgenid", "maybe"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "vmm: --vmgenid: 'maybe' is not on or off\n");
    let help = stdout(&vmm(&["run", "--help"]));
    assert!(help.contains("--vmgenid <on|off>"), "{help}");
    assert!(help.contains("share RNG state"), "{help}");
}

#[test]
fn dry_run_needs_no_kvm_and_starts_nothing() {
    let d = Dir::new();
    let ram = d.0.join("ram");
    let o = vmm(&[
        "run",
        "--kernel",
        &d.kernel(),
        "--memory",
        &format!("size=64M,backing=file,path={},share=on", ram.display()),
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!ram.exists(), "--dry-run created the RAM file");
}

#[test]
fn policy_refusals_print_the_documented_messages() {
    let d = Dir::new();
    let kernel = d.kernel();
    let docs = documented_messages();
    assert!(docs.len() > 10, "docs/policy.md lists its messages");
    let clone = "size=1G,backing=file,path=/srv/template/ram,share=off,readonly=on,rom=off";
    let cases: &[&[&str]] = &[
        &["--memory", clone, "--balloon", "free-page-reporting=on"],
        &["--memory", clone, "--balloon", "target=512M"],
        &[
            "--memory",
            "size=1G,backing=file,path=/srv/template/ram,share=off",
            "--balloon",
            "target=512M",
        ],
        &[
            "--memory",
            clone,
            "--virtio-mem",
            "size=1G,backing=file,path=/srv/template/ram,readonly=on,rom=off",
        ],
        &[
            "--memory",
            "size=1G,backing=file,path=/srv/template/ram,readonly=on,rom=on",
        ],
        &[
            "--memory",
            clone,
            "--vhost-user-blk",
            "socket=/run/vu.sock,id=vu0",
        ],
        &[
            "--memory",
            "size=1G",
            "--vhost-user-net",
            "socket=/run/vu.sock,id=vu0",
        ],
        &[
            "--memory",
            "size=1G,backing=memfd,share=off",
            "--vhost-user-blk",
            "socket=/run/vu.sock,id=vu0",
        ],
    ];
    for extra in cases {
        let mut args = vec!["run", "--kernel", &kernel, "--dry-run"];
        args.extend_from_slice(extra);
        let o = vmm(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().collect();
        assert!(!lines.is_empty());
        for line in lines {
            let msg = line
                .strip_prefix("vmm: ")
                .expect("one prefixed line per problem");
            assert!(
                docs.iter().any(|d| d == msg),
                "{extra:?}: message not in docs/policy.md:\n{msg}"
            );
        }
    }
    // A clone with the settings the policy allows passes the policy; it then
    // fails only because the template file does not exist here.
    let o = vmm(&[
        "run",
        "--kernel",
        &kernel,
        "--dry-run",
        "--memory",
        clone,
        "--balloon",
        "stats=on,deflate-on-oom=on",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/srv/template/ram: No such file"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("create the template first"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn several_refusals_are_reported_together() {
    let d = Dir::new();
    let o = vmm(&[
        "run",
        "--kernel",
        &d.kernel(),
        "--dry-run",
        "--memory",
        "size=1G,backing=file,path=/srv/t,readonly=on,rom=off",
        "--balloon",
        "free-page-reporting=on,target=512M",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.contains("free-page-reporting=on") && err.contains("target=512M"),
        "{err}"
    );
}

#[test]
fn template_clone_file_checks() {
    let d = Dir::new();
    let kernel = d.kernel();
    let template = d.file("template", &vec![7u8; 32 << 20]);
    let ok = vmm(&[
        "run",
        "--kernel",
        &kernel,
        "--dry-run",
        "--memory",
        &format!("size=32M,backing=file,path={template},readonly=on,rom=off"),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let short = vmm(&[
        "run",
        "--kernel",
        &kernel,
        "--dry-run",
        "--memory",
        &format!("size=64M,backing=file,path={template},readonly=on,rom=off"),
    ]);
    assert_eq!(short.status.code(), Some(2));
    assert!(
        stderr(&short).contains("is 33554432 bytes but the RAM needs 67108864 bytes"),
        "{}",
        stderr(&short)
    );
    assert_eq!(fs::metadata(&template).unwrap().len(), 32 << 20);
}

#[test]
fn vhost_user_devices_pass_the_policy_on_shared_ram() {
    let d = Dir::new();
    let kernel = d.kernel();
    let o = vmm(&[
        "run",
        "--kernel",
        &kernel,
        "--dry-run",
        "--memory",
        "size=256M,backing=memfd",
        "--vhost-user-blk",
        "socket=/run/vu-blk.sock,queues=4",
        "--vhost-user-net",
        "socket=/run/vu-net.sock,mac=52:54:00:00:00:09,id=n1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("vhost-user-blk: id=vublk0,socket=/run/vu-blk.sock,queues=4"),
        "{out}"
    );
    assert!(
        out.contains("vhost-user-net: id=n1,socket=/run/vu-net.sock,mac=52:54:00:00:00:09"),
        "{out}"
    );
}

#[test]
fn bad_options_get_one_clear_line() {
    let d = Dir::new();
    let kernel = d.kernel();
    let odd_disk = d.file("odd.img", &[0u8; 1000]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--memory".into(), "sise=1G".into()], "--memory: unknown key 'sise'; known keys: size, backing, path, share, readonly, rom, hugepages"),
        (vec!["--memory".into(), "size=1.5G".into()], "--memory: size=1.5G is not valid: '1.5G' is not a size"),
        (vec!["--memory".into(), "size=1G,backing=disk".into()], "backing=disk is not valid: use anon, memfd or file"),
        (vec!["--memory".into(), "size=1G,backing=file".into()], "--memory: missing path=; backing=file needs path=FILE"),
        (vec!["--memory".into(), "size=1G,share=maybe".into()], "share=maybe is not valid: use on or off"),
        (vec!["--memory".into(), "size=1G,share=on".into()], "anonymous RAM has no fd"),
        (vec!["--memory".into(), "size=1G".into(), "--disk".into(), "path=/nonexistent.img".into()], "--disk id=disk0: /nonexistent.img: No such file"),
        (vec!["--memory".into(), "size=1G".into(), "--disk".into(), format!("path={odd_disk}")], "not a whole number of 512-byte sectors"),
        (vec!["--memory".into(), "size=1G".into(), "--net".into(), "tap=t0,mac=01:00:00:00:00:01".into()], "multicast"),
        (vec!["--memory".into(), "size=1G".into(), "--net".into(), "tap=t0".into(), "--net".into(), "tap=t0".into()], "TAP 't0' is given twice"),
        (vec!["--memory".into(), "size=1G".into(), "--balloon".into(), "target=2G".into()], "cannot exceed --memory size=1G"),
        (vec!["--memory".into(), "size=1G".into(), "--virtio-mem".into(), "size=3M".into()], "use a non-zero multiple of the block size (2M)"),
        (vec!["--memory".into(), "size=1G".into(), "--virtio-mem".into(), "size=1G,requested=2G".into()], "no larger than size=1G"),
        (vec!["--memory".into(), "size=1G".into(), "--disk".into(), "path=x,id=a".into(), "--net".into(), "tap=t,id=a".into()], "id 'a' is used by another device"),
        (vec!["--memory".into(), "size=1G".into(), "--serial".into(), "pty".into()], "--serial: 'pty' is not stdio, file=PATH or off"),
        (vec!["--memory".into(), "size=1G".into(), "--cpus".into(), "0".into()], "--cpus: 0 is out of range"),
        (vec!["--memory".into(), "size=1G,backing=memfd".into(), "--vhost-user-blk".into(), "id=a".into()], "--vhost-user-blk: missing socket=; give the back end's socket"),
        (vec!["--memory".into(), "size=1G,backing=memfd".into(), "--vhost-user-blk".into(), "socket=/s,queues=0".into()], "queues=0 is not valid: use 1 to 16"),
        (vec!["--memory".into(), "size=1G,backing=memfd".into(), "--vhost-user-net".into(), "socket=/s,mac=ff:ff:ff:ff:ff:ff".into()], "multicast"),
    ];
    for (extra, want) in cases {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--kernel".into(),
            kernel.clone(),
            "--dry-run".into(),
        ];
        args.extend(extra.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = vmm(&argv);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: want {want:?}, got {err}");
    }
    let o = vmm(&[
        "run",
        "--kernel",
        "/nonexistent/vmlinuz",
        "--memory",
        "size=1G",
        "--dry-run",
    ]);
    assert!(
        stderr(&o).contains("--kernel: /nonexistent/vmlinuz: No such file"),
        "{}",
        stderr(&o)
    );
    let notk = d.file("notakernel", b"hello");
    let o = vmm(&["run", "--kernel", &notk, "--memory", "size=1G", "--dry-run"]);
    assert!(
        stderr(&o).contains("neither a bzImage nor an ELF vmlinux"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_documents_every_key() {
    let o = vmm(&["run", "--help"]);
    let help = stdout(&o);
    for key in [
        "size=",
        "backing=",
        "path=",
        "share=",
        "readonly=",
        "rom=",
        "hugepages=",
        "readonly=on",
        "id=",
        "tap=",
        "mac=",
        "free-page-reporting=",
        "deflate-on-oom=",
        "stats=",
        "target=",
        "requested=",
        "block-size=",
        "--dry-run",
        "--serial",
        "--cpus",
        "--initrd",
        "--cmdline",
    ] {
        assert!(help.contains(key), "--help lacks {key}");
    }
}

#[test]
fn host_check_reports_and_sets_status() {
    let o = vmm(&["host-check"]);
    let out = stdout(&o);
    assert!(out.contains("verdict:"), "{out}");
    let can = out.contains("this host can boot a stock Linux guest");
    assert_eq!(o.status.success(), can);
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(out.contains("PVM") && !can, "{out}");
    }
}
