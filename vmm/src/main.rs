use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use log::{error, info};

use vmm::config::{RawOptions, VmConfig};
use vmm::control::QmpListen;
use vmm::exit::VmExit;
use vmm::lifecycle::{Incoming, IncomingRefusal, RunEnd, RunOptions};

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
    ///
    /// SIGTERM, SIGINT and SIGHUP end the VM cleanly (status 0). SIGUSR1 logs every
    /// vCPU's registers, mp_state and pending events and the guest's last
    /// serial output (lines starting "vcpu-dump:"), and the VM goes on.
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// Make a template VM, start clones of it, show or remove it.
    ///
    /// A template boots once, is paused when its guest is ready and saved
    /// with its RAM left in DIR/memory; each clone maps that file privately
    /// (pages it never writes stay shared) and resumes from the saved state.
    /// See docs/templating.md.
    #[command(subcommand, verbatim_doc_comment)]
    Template(TemplateCommand),
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

#[derive(Subcommand)]
enum TemplateCommand {
    /// Boot a VM, wait until its guest is ready, save it as a template in DIR.
    ///
    /// DIR gets memory (the RAM, a file mapped share=on), state (the VM
    /// without its RAM), disk-ID.img per writable disk (the template runs on
    /// this copy, so the given image is never written) and template.json.
    /// What clones could not run (balloon inflation, free page reporting,
    /// plugged virtio-mem) is refused before the guest boots. A guest that is
    /// not ready in time, or ends first, leaves no template behind.
    ///
    /// Exit status: 0 the template was made; 1 it was not (the reason is
    /// printed); 2 the options were refused (nothing started).
    #[command(verbatim_doc_comment)]
    Create(Box<TemplateCreateArgs>),
    /// Start a VM from a template: its RAM maps DIR/memory privately and
    /// read-only, each writable disk is a copy of the captured one, and the
    /// guest gets a new generation ID.
    ///
    /// Exit statuses as `vmm run`.
    Clone(TemplateCloneArgs),
    /// What a template was made from, its files, how much of its RAM is in
    /// the page cache, and the clones that map it.
    Status {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Also compute every file's checksum again.
        #[arg(long)]
        verify: bool,
    },
    /// Remove a template; refused while clones run from it, unless --force
    /// (running clones keep working: their RAM stays mapped until they end).
    Destroy {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct TemplateCreateArgs {
    /// The template's directory: new or empty.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// When the guest is ready: serial=TEXT (it printed TEXT on COM1; the
    /// kernel command line must not contain TEXT) or qmp (a QMP client
    /// paused it with stop).
    #[arg(long, value_name = "serial=TEXT|qmp")]
    ready: String,
    /// Give up (and leave no template) when the guest is not ready in this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    ready_timeout: f64,
    /// Guest kernel: a bzImage or an ELF vmlinux (PVH).
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// The VM's options as for `vmm run`; --memory takes only size=SIZE.
    #[command(flatten)]
    vm: VmArgs,
    /// QMP control socket while the template is made: unix:PATH.
    #[arg(long, value_name = "unix:PATH")]
    qmp: Option<String>,
}

#[derive(Args)]
struct TemplateCloneArgs {
    /// The template's directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Where writable disk ID's copy goes: id=ID,path=P (kept when the clone
    /// ends). Without it the copy goes beside DIR and is removed at the end.
    #[arg(long, value_name = "id=ID,path=P")]
    disk: Vec<String>,
    /// The TAP NIC ID uses: id=ID,tap=T (default: the template's; each
    /// running clone needs its own). The MAC stays the template's.
    #[arg(long, value_name = "id=ID,tap=T")]
    net: Vec<String>,
    /// QMP control socket: unix:PATH or unix:fd=N.
    #[arg(long, value_name = "unix:PATH")]
    qmp: Option<String>,
    /// Where COM1 goes: stdio, file=PATH or off.
    #[arg(long, value_name = "stdio|file=P|off", default_value = "stdio")]
    serial: String,
    /// Stay paused after the restore until QMP cont.
    #[arg(short = 'S', long = "paused")]
    paused: bool,
    /// Give the clone a new generation ID (on|off); off shows the hazard
    /// of clones sharing their random number generator's state.
    #[arg(long, value_name = "on|off", default_value = "on")]
    vmgenid: String,
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
    #[command(flatten)]
    vm: VmArgs,
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

/// The guest's hardware, shared by `run` and `template create`.
#[derive(Args)]
struct VmArgs {
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
    /// Disk served by a vhost-user back end: socket=PATH[,id=ID][,queues=N]. Repeatable.
    ///
    /// The back end (vhost-user-blk, qemu-storage-daemon ...) must be listening.
    /// Guest RAM must be shareable (backing=memfd, or backing=file,share=on); other RAM is refused.
    #[arg(
        long = "vhost-user-blk",
        value_name = "KEY=VALUE,...",
        verbatim_doc_comment
    )]
    vhost_user_blk: Vec<String>,
    /// NIC served by a vhost-user back end: socket=PATH[,mac=MAC][,id=ID]. Repeatable.
    ///
    /// The back end (vhost-user-net ...) must be listening; one queue pair.
    /// Guest RAM must be shareable, as for --vhost-user-blk.
    #[arg(
        long = "vhost-user-net",
        value_name = "KEY=VALUE,...",
        verbatim_doc_comment
    )]
    vhost_user_net: Vec<String>,
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
}

impl VmArgs {
    fn raw(&self, kernel: Option<PathBuf>) -> RawOptions {
        RawOptions {
            kernel: kernel.unwrap_or_default(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            cpus: self.cpus,
            memory: self.memory.clone(),
            disks: self.disk.clone(),
            nets: self.net.clone(),
            balloon: self.balloon.clone(),
            virtio_mems: self.virtio_mem.clone(),
            vhost_user_blks: self.vhost_user_blk.clone(),
            vhost_user_nets: self.vhost_user_net.clone(),
            serial: self.serial.clone(),
            vmgenid: Some(self.vmgenid.clone()),
        }
    }
}

fn parse_qmp(spec: Option<&str>) -> Result<Option<QmpListen>, ExitCode> {
    spec.map(QmpListen::parse)
        .transpose()
        .map_err(|e| refuse(&format!("--qmp: {e}"), 2))
}

fn run(args: RunArgs) -> ExitCode {
    let raw = args.vm.raw(args.kernel);
    let incoming = match args.incoming.as_deref().map(Incoming::parse).transpose() {
        Ok(i) => i,
        Err(e) => return refuse(&e, 2),
    };
    let qmp = match parse_qmp(args.qmp.as_deref()) {
        Ok(q) => q,
        Err(code) => return code,
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
        template: None,
    };
    report_end(vmm::lifecycle::run(cfg, opts))
}

/// The exit status and last words of a VM's run (`run`, `template clone`).
fn report_end(end: Result<RunEnd, vmm::machine::MachineError>) -> ExitCode {
    match end {
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
        Ok(RunEnd::IncomingFailed { reason, why }) => {
            let mut lines = reason.lines();
            match why {
                IncomingRefusal::Config => eprintln!(
                    "vmm: the snapshot does not match this VM (its command line or its files); nothing was started:"
                ),
                IncomingRefusal::Policy => eprintln!(
                    "vmm: the saved VM's devices need what this VM's RAM cannot do; nothing was started:"
                ),
                IncomingRefusal::Failed => {
                    if let Some(first) = lines.next() {
                        eprintln!("vmm: restoring the snapshot failed; nothing was started: {first}");
                    }
                }
            }
            for line in lines {
                eprintln!("vmm: {line}");
            }
            ExitCode::from(match why {
                IncomingRefusal::Failed => 1,
                _ => 2,
            })
        }
        Ok(RunEnd::Signal(name)) => {
            info!("ended by {name}");
            ExitCode::SUCCESS
        }
        Ok(RunEnd::Template(_)) => ExitCode::from(1),
        Err(e) => refuse(&e.to_string(), 1),
    }
}

fn template(cmd: TemplateCommand) -> ExitCode {
    use vmm::template::{clone, create, status};
    let result = match cmd {
        TemplateCommand::Create(a) => {
            let ready = match create::parse_ready(&a.ready) {
                Ok(r) => r,
                Err(e) => return refuse(&e, 2),
            };
            let timeout = match Duration::try_from_secs_f64(a.ready_timeout) {
                Ok(t) if !t.is_zero() => t,
                _ => {
                    return refuse(
                        &format!(
                            "--ready-timeout {}: give a positive number of seconds",
                            a.ready_timeout
                        ),
                        2,
                    )
                }
            };
            let qmp = match parse_qmp(a.qmp.as_deref()) {
                Ok(q) => q,
                Err(code) => return code,
            };
            let args = create::CreateArgs {
                dir: a.dir,
                ready,
                timeout,
                raw: a.vm.raw(Some(a.kernel)),
                qmp,
            };
            create::create(args).map(|c| {
                println!(
                    "template created in {}: {} RAM in memory, state {} bytes, guest ready after {:.2} s",
                    c.dir.display(),
                    devices::size::format_size(c.manifest.memory_size),
                    c.state_bytes,
                    c.manifest.ready_after_ms as f64 / 1000.0
                );
                ExitCode::SUCCESS
            })
        }
        TemplateCommand::Clone(a) => {
            let qmp = match parse_qmp(a.qmp.as_deref()) {
                Ok(q) => q,
                Err(code) => return code,
            };
            let vmgenid = match a.vmgenid.as_str() {
                "on" => true,
                "off" => false,
                other => return refuse(&format!("--vmgenid {other}: use on or off"), 2),
            };
            let args = clone::CloneArgs {
                dir: a.dir,
                disks: a.disk,
                nets: a.net,
                qmp,
                serial: a.serial,
                paused: a.paused,
                vmgenid,
            };
            clone::clone(args).map(|end| report_end(Ok(end)))
        }
        TemplateCommand::Status { dir, verify } => status::status(&dir, verify).map(|s| {
            print!("{s}");
            ExitCode::SUCCESS
        }),
        TemplateCommand::Destroy { dir, force } => status::destroy(&dir, force).map(|s| {
            println!("{s}");
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| refuse(&e.to_string(), e.status()))
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
    // A panic must not leave the terminal in raw mode.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        vmm::platform::terminal::restore();
        default_hook(info)
    }));
    let status = match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Ctl(args) => ctl(args),
        Command::Template(cmd) => template(cmd),
        Command::HostCheck => {
            let report = vmm::host_check::run();
            print!("{}", report.text);
            if report.can_boot_stock_kernel {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    };
    // What the guest made the devices leave out of the log since the last count.
    devices::log_limit::report_all();
    status
}
