use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use log::{error, info};

use vmm::config::{RawOptions, VmConfig};
use vmm::control::QmpListen;
use vmm::exit::VmExit;
use vmm::lifecycle::{Incoming, RunEnd, RunOptions};

/// A KVM virtual machine monitor built for VM templating: clones of one
/// template share its RAM file, and setups that would break on such RAM are
/// refused before the guest runs.
#[derive(Parser)]
#[command(name = "vmm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a VM (or, with --dry-run, only validate its configuration).
    ///
    /// Exit status: 0 the guest powered off; 1 the VM could not start or
    /// failed while running; 2 the configuration was refused (nothing
    /// started); 3 the guest asked for a reboot (the VMM exits; a supervisor
    /// starts it again).
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// Report whether this host can run stock Linux guests, and why not.
    ///
    /// Exit status 0 when it can, 1 when it cannot.
    HostCheck,
    /// Send one QMP command to a running VM and print the reply.
    ///
    /// Prints the command's return value as JSON; with --wait-event, then
    /// waits for that event (one sent before the reply counts) and prints it.
    ///
    /// Exit status: 0 the command succeeded; 1 it failed (stderr has
    /// "vmm ctl: CLASS: DESC"), timed out, or the server misbehaved; 2 bad
    /// usage, or the socket cannot be reached.
    #[command(verbatim_doc_comment)]
    Ctl(CtlArgs),
}

#[derive(Args)]
struct CtlArgs {
    /// The VM's QMP socket: its path, or unix:PATH as given to the VM.
    #[arg(long, value_name = "PATH")]
    qmp: PathBuf,
    /// QMP command name, e.g. query-status, stop, cont, migrate.
    #[arg(value_name = "COMMAND")]
    command: String,
    /// The command's arguments as a JSON object, e.g. '{"uri": "file:/tmp/vm.state"}'.
    #[arg(value_name = "JSON-ARGS")]
    args: Option<String>,
    /// After the reply, wait for this event (e.g. STOP, MIGRATION) and print it.
    #[arg(long, value_name = "NAME")]
    wait_event: Option<String>,
    /// Give up after this many seconds in all.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Args)]
struct RunArgs {
    /// Guest kernel: a bzImage (e.g. /boot/vmlinuz-*) or an ELF vmlinux (booted through PVH).
    /// Required unless --incoming restores a snapshot (whose RAM holds the kernel).
    #[arg(long, value_name = "PATH", required_unless_present = "incoming")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u8,
    /// Guest RAM: size=SIZE[,backing=anon|memfd|file][,path=P][,share=on|off][,readonly=on|off][,rom=on|off|auto][,hugepages=on|off]
    ///
    /// size: RAM size (K, M, G, T suffixes; binary units).
    /// backing: anon (private anonymous, default), memfd (share defaults to on), file (path= required; share defaults to off).
    /// share=on: MAP_SHARED, guest writes reach the memfd/file (a template's RAM).
    /// readonly=on: open the file read-only; with share=off,rom=off this is a template clone.
    /// rom: on makes RAM read-only to the guest (refused); auto follows readonly.
    /// hugepages=on: back RAM with huge pages (the host must have them reserved).
    #[arg(long, value_name = "KEY=VALUE,...", verbatim_doc_comment)]
    memory: String,
    /// Raw disk image: path=P[,readonly=on][,id=ID]. Repeatable.
    #[arg(long, value_name = "KEY=VALUE,...")]
    disk: Vec<String>,
    /// NIC on a host TAP: tap=NAME[,mac=MAC][,id=ID]. Repeatable. Without mac= a random 52:54:00:xx:xx:xx is used.
    #[arg(long, value_name = "KEY=VALUE,...")]
    net: Vec<String>,
    /// Memory balloon: [free-page-reporting=on|off][,deflate-on-oom=on|off][,stats=on|off][,target=SIZE]
    ///
    /// target: guest memory size to aim for; below the RAM size the balloon inflates.
    /// free-page-reporting and inflation discard guest RAM: refused on template clones.
    #[arg(long, value_name = "KEY=VALUE,...", num_args = 0..=1, default_missing_value = "", verbatim_doc_comment)]
    balloon: Option<String>,
    /// virtio-mem device: size=S[,requested=R][,block-size=B][,backing=anon|memfd][,id=ID]. Repeatable.
    ///
    /// size: the most memory it can plug; requested: how much the guest should plug now;
    /// block-size: plug granularity (power of two, at least 2M; default 2M);
    /// backing: of its own region (anon or memfd; a private file is refused).
    #[arg(
        long = "virtio-mem",
        value_name = "KEY=VALUE,...",
        verbatim_doc_comment
    )]
    virtio_mem: Vec<String>,
    /// Where COM1 goes: stdio, file=PATH or off.
    #[arg(long, value_name = "stdio|file=P|off", default_value = "stdio")]
    serial: String,
    /// VM Generation ID device (as QEMU's vmgenid): on or off.
    ///
    /// on: the guest finds a GUID through ACPI, and every restore of a snapshot
    /// (every template clone) writes a new one and notifies the guest, so that
    /// Linux reseeds its RNG and clones do not share RNG state.
    /// On restore the device exists if the saved VM had it; off then keeps the
    /// saved GUID and does not notify the guest, only to show the hazard.
    #[arg(
        long,
        value_name = "on|off",
        default_value = "on",
        verbatim_doc_comment
    )]
    vmgenid: String,
    /// QMP control socket (QEMU's protocol): unix:PATH, or unix:fd=N for a
    /// listening socket inherited from the parent.
    #[arg(long, value_name = "unix:PATH")]
    qmp: Option<String>,
    /// Restore instead of booting: file:PATH or exec:CMD (the snapshot is
    /// read from CMD's stdout), or defer to wait for QMP migrate-incoming.
    /// The command line must describe the saved VM; see docs/snapshots.md.
    #[arg(long, value_name = "defer|file:PATH|exec:CMD")]
    incoming: Option<String>,
    /// Start paused (QEMU's -S): the vCPUs wait for QMP cont. A restored VM
    /// that was saved running also waits.
    #[arg(short = 'S', long = "paused")]
    paused: bool,
    /// Validate everything (options, files, the RAM policy), print the resolved
    /// configuration and exit. Starts nothing and needs no /dev/kvm.
    #[arg(long)]
    dry_run: bool,
}

fn run(args: RunArgs) -> ExitCode {
    let raw = RawOptions {
        kernel: args.kernel.unwrap_or_default(),
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory: args.memory,
        disks: args.disk,
        nets: args.net,
        balloon: args.balloon,
        virtio_mems: args.virtio_mem,
        serial: args.serial,
        vmgenid: Some(args.vmgenid),
    };
    let incoming = match args.incoming.as_deref().map(Incoming::parse).transpose() {
        Ok(i) => i,
        Err(e) => return refuse(&e, 2),
    };
    let qmp = match args.qmp.as_deref().map(QmpListen::parse).transpose() {
        Ok(q) => q,
        Err(e) => return refuse(&format!("--qmp: {e}"), 2),
    };
    // A restore loads no kernel: its content is in the saved RAM.
    let validate = |c: &VmConfig| match incoming {
        Some(_) => c.validate_except_kernel(),
        None => c.validate(),
    };
    let cfg = match VmConfig::parse(&raw).and_then(|c| validate(&c).map(|()| c)) {
        Ok(c) => c,
        Err(e) => return refuse(&e.to_string(), 2),
    };
    if args.dry_run {
        print!("{}", cfg.describe());
        println!("configuration valid");
        return ExitCode::SUCCESS;
    }
    let opts = RunOptions {
        start_paused: args.paused,
        incoming,
        qmp,
    };
    match vmm::lifecycle::run(cfg, opts) {
        Ok(RunEnd::Vm(why)) => {
            match &why {
                VmExit::PowerOff => info!("guest powered off"),
                VmExit::Reboot => {
                    info!("guest asked for a reboot; exiting so a supervisor can start it again")
                }
                VmExit::Failed(msg) => error!("the VM stopped: {msg}"),
            }
            ExitCode::from(why.status())
        }
        Ok(RunEnd::Quit) => {
            info!("quit (QMP)");
            ExitCode::SUCCESS
        }
        Ok(RunEnd::IncomingFailed { reason, config }) => {
            let mut lines = reason.lines();
            if config {
                eprintln!("vmm: the snapshot was saved from another VM configuration; nothing was started:");
            } else if let Some(first) = lines.next() {
                eprintln!("vmm: restoring the snapshot failed; nothing was started: {first}");
            }
            for line in lines {
                eprintln!("vmm: {line}");
            }
            ExitCode::from(if config { 2 } else { 1 })
        }
        Err(e) => refuse(&e.to_string(), 1),
    }
}

/// One line per problem, on stderr, without log decoration: users grep these.
fn refuse(text: &str, status: u8) -> ExitCode {
    for line in text.lines() {
        eprintln!("vmm: {line}");
    }
    ExitCode::from(status)
}

fn ctl(args: CtlArgs) -> ExitCode {
    use vmm::control::ControlError;
    let timeout = match Duration::try_from_secs_f64(args.timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!(
                "vmm ctl: --timeout {} is not a positive number of seconds",
                args.timeout
            );
            return ExitCode::from(2);
        }
    };
    // Also take the socket as the VM's --qmp spells it (unix:PATH,...).
    let socket = match args.qmp.to_str().filter(|s| s.starts_with("unix:")) {
        None => args.qmp.clone(),
        Some(spec) => match vmm::control::QmpListen::parse(spec) {
            Ok(vmm::control::QmpListen::Path(p)) => p,
            Ok(vmm::control::QmpListen::Fd(_)) => {
                eprintln!("vmm ctl: --qmp {spec}: give the socket's path, not a descriptor");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("vmm ctl: --qmp: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match vmm::control::run_ctl(
        &socket,
        &args.command,
        args.args.as_deref(),
        args.wait_event.as_deref(),
        timeout,
    ) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmm ctl: {e}");
            match e {
                ControlError::Connect { .. } | ControlError::BadArgs { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Ctl(args) => ctl(args),
        Command::HostCheck => {
            let report = vmm::host_check::run();
            print!("{}", report.text);
            if report.can_boot_stock_kernel {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
