//! Building a VM: RAM, devices, KVM, wiring and threads, for a boot (a
//! kernel, ACPI tables and boot registers) or from a snapshot's states
//! (none of those: the restored RAM already holds them).

use std::fs::OpenOptions;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread;

use devices::ram::GuestRam;
use devices::vhost_user::{watch_backend, VhostUserDevice};
use devices::virtio::balloon::Balloon;
use devices::virtio::block::Block;
use devices::virtio::mem::{Mem, MemRestoreArgs};
use devices::virtio::net::Net;
use devices::virtio::persist::Persist;
use devices::virtio::VirtioDevice;
use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceHandle, Machine, MachineError, Vcpus, VirtioSlot};
use crate::boot::acpi::{self, AcpiPlatform};
use crate::boot::loader::{self, BootSpec};
use crate::bus::{lock, Bus, BusDevice};
use crate::config::{SerialConfig, VmConfig};
use crate::event_loop::EventLoop;
use crate::exit::{ExitSignal, VmExit};
use crate::layout;
use crate::memory::build_guest_ram;
use crate::platform::ged::{Ged, GedState, EVENT_GENERATION_ID};
use crate::platform::power::{AcpiPower, I8042Reset};
use crate::platform::serial::{ComState, SerialDevice, SerialOut};
use crate::platform::serial_watch::{SerialWatch, Watched};
use crate::platform::terminal::RawStdin;
use crate::platform::vmgenid::{Guid, VmGenId};
use crate::transport::mmio::{MmioTransport, MmioTransportState, NOTIFY_OFFSET};
use crate::vstate::{self, Vcpu, VcpuState, Vm, VmState};

fn host(what: &'static str) -> impl FnOnce(io::Error) -> MachineError {
    move |source| MachineError::Host { what, source }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

/// Wiring shared by every virtio-mmio device.
struct Wiring<'a> {
    vm: &'a Vm,
    mmio: &'a mut Bus,
    events: &'a mut EventLoop,
    slots: Vec<VirtioSlot>,
}

impl Wiring<'_> {
    fn attach(
        &mut self,
        id: &str,
        name: String,
        handle: DeviceHandle,
        saved: Option<&MmioTransportState>,
    ) -> Result<(), MachineError> {
        let device: Arc<Mutex<dyn VirtioDevice>> = match &handle {
            DeviceHandle::Block(d) => d.clone(),
            DeviceHandle::Net(d) => d.clone(),
            DeviceHandle::Balloon(d) => d.clone(),
            DeviceHandle::Mem(d) => d.clone(),
            DeviceHandle::VhostUser(d) => d.clone(),
        };
        let (base, gsi) = layout::virtio_mmio_slot(self.slots.len());
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(host("creating an interrupt eventfd"))?;
        self.vm.register_irqfd(&irq, gsi)?;
        let mut transport = MmioTransport::new(device.clone(), irq)
            .map_err(host("creating a virtio-mmio transport"))?;
        if let Some(saved) = saved {
            transport
                .restore_state(saved)
                .map_err(|e| device_err(&name, e))?;
            self.events.kick_at_start(&name, device.clone());
        }
        let mut kicks = Vec::new();
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_mmio_ioevent(evt, base + NOTIFY_OFFSET, q as u32)?;
            let evt = evt
                .try_clone()
                .map_err(host("duplicating a queue eventfd"))?;
            if matches!(handle, DeviceHandle::VhostUser(_)) {
                // The back end reads the kicks itself.
                kicks.push(evt);
                continue;
            }
            self.events
                .add_queue(&name, device.clone(), q as u16, evt)
                .map_err(host("watching a queue eventfd"))?;
        }
        if let DeviceHandle::VhostUser(vu) = &handle {
            let calls = {
                let mut d = lock(vu, &name);
                d.set_kicks(kicks);
                d.call_evts()
                    .map_err(host("duplicating a vhost-user call eventfd"))?
            };
            for (q, evt) in calls.into_iter().enumerate() {
                self.events
                    .add_call(&name, vu.clone(), q as u16, evt)
                    .map_err(host("watching a vhost-user call eventfd"))?;
            }
            watch_backend(vu).map_err(host("starting the vhost-user back end watch"))?;
        }
        if let DeviceHandle::Net(net) = &handle {
            self.events
                .add_tap(&name, net.clone())
                .map_err(host("watching a TAP device"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(&name, transport.clone(), base, layout::VIRTIO_MMIO_SIZE)?;
        info!("{name}: virtio-mmio at {base:#x}, GSI {gsi}");
        self.slots.push(VirtioSlot {
            id: id.to_string(),
            name,
            transport,
            device: handle,
            base,
            gsi,
        });
        Ok(())
    }
}

fn device_err(device: &str, e: impl std::fmt::Display) -> MachineError {
    MachineError::Device {
        device: device.to_string(),
        reason: e.to_string(),
    }
}

fn serial_out(cfg: &SerialConfig) -> Result<Option<SerialOut>, MachineError> {
    Ok(match cfg {
        SerialConfig::Stdio => Some(Box::new(io::stdout())),
        SerialConfig::File(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| MachineError::SerialFile {
                    path: p.display().to_string(),
                    source,
                })?;
            Some(Box::new(f))
        }
        SerialConfig::Off => None,
    })
}

/// Runs `f`; a panic in it ends the VM with an error instead of leaving
/// the main thread waiting for an exit nobody will signal.
pub fn guarded(what: &str, exit: &ExitSignal, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        exit.signal(VmExit::Failed(format!("{what} panicked")));
    }
}

/// What a snapshot restores, decoded and checked.
pub struct Restored {
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub com1: Option<ComState>,
    pub ged: GedState,
    /// The saved VM has a VM Generation ID device (its ACPI tables, in
    /// the restored RAM, describe it).
    pub vmgenid: bool,
    /// One per virtio device, in window order: the transport's registers
    /// and the device's own saved bytes.
    pub devices: Vec<(MmioTransportState, Vec<u8>)>,
}

/// A fresh random generation ID, written into guest RAM.
fn new_generation_id(ram: &GuestRam) -> Result<Guid, MachineError> {
    let guid = Guid::random().map_err(host("getrandom for the VM generation ID"))?;
    guid.write_to(ram.memory()).map_err(|e| {
        device_err(
            "VM generation ID",
            format!("writing it into guest RAM: {e}"),
        )
    })?;
    Ok(guid)
}

/// A restored VM's generation ID, before any vCPU runs. With the device
/// in the saved VM and `--vmgenid on` the guest gets a new GUID and the
/// GED's event, which it takes as soon as it resumes (Linux then reseeds
/// its RNG); with `--vmgenid off` it keeps the saved one. A saved VM
/// without the device is left alone: nothing tells its guest to look.
fn restored_generation_id(
    cfg: &VmConfig,
    ram: &GuestRam,
    saved_has_device: bool,
    ged: &mut Ged,
) -> Result<Option<VmGenId>, MachineError> {
    if !saved_has_device {
        if cfg.vmgenid {
            warn!(
                "the restored guest has no VM generation ID device (it was booted with \
                 --vmgenid off): clones of this snapshot will share RNG state"
            );
        }
        return Ok(None);
    }
    let saved = Guid::read_from(ram.memory()).map_err(|e| {
        device_err(
            "VM generation ID",
            format!("reading it from guest RAM: {e}"),
        )
    })?;
    if !cfg.vmgenid {
        info!("--vmgenid off: the VM generation ID stays {saved}, the saved VM's; the guest is not told it was restored");
        return Ok(Some(VmGenId { guid: saved }));
    }
    let guid = new_generation_id(ram)?;
    ged.raise(EVENT_GENERATION_ID)
        .map_err(host("raising the generation ID event"))?;
    info!("VM generation ID {guid} (was {saved})");
    Ok(Some(VmGenId { guid }))
}

/// Boots `cfg`'s kernel (validated configuration) and starts the threads;
/// with `paused` the vCPUs wait for a resume before their first instruction.
/// `watch` looks for a text in the guest's serial output (template creation).
pub fn boot(
    cfg: &VmConfig,
    paused: bool,
    watch: Option<SerialWatch>,
) -> Result<Machine, MachineError> {
    if crate::host_check::host_kvm_is_pvm() {
        warn!("this host's KVM is PVM (kvm_pvm): only kernels built for PVM boot here, and a stock kernel will hang without output; `vmm host-check` explains");
    }
    let ram = Arc::new(build_guest_ram(cfg)?);
    assemble(cfg, ram, None, None, paused, watch)
}

/// Builds the VM around restored RAM and `saved` states, and starts the
/// threads (paused unless `paused` is false).
pub fn restore(
    cfg: &VmConfig,
    ram: Arc<GuestRam>,
    vm: Option<Vm>,
    saved: &Restored,
    paused: bool,
) -> Result<Machine, MachineError> {
    assemble(cfg, ram, vm, Some(saved), paused, None)
}

/// Guest RAM and an empty KVM VM with that RAM in its memory slots, made
/// from the command line alone while a VM waits for its incoming
/// snapshot: installing a memory slot is the slowest step of building a
/// VM on some hosts (milliseconds), and it then no longer delays the
/// restore. Nothing of the snapshot is involved, and no vCPU exists.
pub struct Prepared {
    pub ram: Arc<GuestRam>,
    pub vm: Vm,
}

pub fn prepare(cfg: &VmConfig) -> Result<Prepared, MachineError> {
    let ram = Arc::new(build_guest_ram(cfg)?);
    let vm = Vm::new(cfg.cpus)?;
    vm.map_ram(&ram)?;
    Ok(Prepared { ram, vm })
}

/// Builds or restores every virtio device, in window order.
fn virtio_devices(
    cfg: &VmConfig,
    ram: &Arc<GuestRam>,
    saved: Option<&Restored>,
) -> Result<Vec<(String, String, DeviceHandle)>, MachineError> {
    let mut out = Vec::new();
    let state = |i: usize| saved.map(|s| s.devices[i].1.as_slice());
    let restore_err = |name: &str| {
        let name = name.to_string();
        move |e: devices::virtio::persist::PersistError| {
            device_err(&name, format!("restoring its saved state: {e}"))
        }
    };
    for d in &cfg.disks {
        let name = format!("--disk id={}", d.id);
        let dev = match state(out.len()) {
            Some(b) => {
                Block::restore_bytes((d.clone(), ram.clone()), b).map_err(restore_err(&name))?
            }
            None => Block::new(d, ram.clone()).map_err(|e| device_err(&name, e))?,
        };
        out.push((
            d.id.clone(),
            name,
            DeviceHandle::Block(Arc::new(Mutex::new(dev))),
        ));
    }
    for n in &cfg.nets {
        let name = format!("--net id={}", n.id);
        let dev = match state(out.len()) {
            Some(b) => {
                Net::restore_bytes((n.clone(), ram.clone()), b).map_err(restore_err(&name))?
            }
            None => Net::new(n, ram.clone()).map_err(|e| device_err(&name, e))?,
        };
        out.push((
            n.id.clone(),
            name,
            DeviceHandle::Net(Arc::new(Mutex::new(dev))),
        ));
    }
    if let Some(b) = &cfg.balloon {
        let name = "--balloon".to_string();
        let dev = match state(out.len()) {
            Some(bytes) => {
                Balloon::restore_bytes(ram.clone(), bytes).map_err(restore_err(&name))?
            }
            None => Balloon::new(b, ram.clone()).map_err(|e| device_err(&name, e))?,
        };
        out.push((
            "balloon0".to_string(),
            name,
            DeviceHandle::Balloon(Arc::new(Mutex::new(dev))),
        ));
    }
    for (m, base) in cfg.virtio_mems.iter().zip(layout::virtio_mem_bases(cfg)) {
        let name = format!("--virtio-mem id={}", m.id);
        let dev = match state(out.len()) {
            Some(b) => Mem::restore_bytes(
                MemRestoreArgs {
                    config: m.clone(),
                    addr: base,
                    ram: ram.clone(),
                },
                b,
            )
            .map_err(restore_err(&name))?,
            None => Mem::new(m, base, ram.clone()).map_err(|e| device_err(&name, e))?,
        };
        out.push((
            m.id.clone(),
            name,
            DeviceHandle::Mem(Arc::new(Mutex::new(dev))),
        ));
    }
    if saved.is_none() {
        for v in &cfg.vhost_user_blks {
            let name = format!("--vhost-user-blk id={}", v.id);
            let dev = VhostUserDevice::blk(v, ram.clone()).map_err(|e| device_err(&name, e))?;
            out.push((
                v.id.clone(),
                name,
                DeviceHandle::VhostUser(Arc::new(Mutex::new(dev))),
            ));
        }
        for v in &cfg.vhost_user_nets {
            let name = format!("--vhost-user-net id={}", v.id);
            let dev = VhostUserDevice::net(v, ram.clone()).map_err(|e| device_err(&name, e))?;
            out.push((
                v.id.clone(),
                name,
                DeviceHandle::VhostUser(Arc::new(Mutex::new(dev))),
            ));
        }
    }
    Ok(out)
}

/// The RAM policy on what a snapshot brought along: device state that
/// needs to discard guest RAM (a balloon lowered or inflated before the
/// save) is refused on RAM that cannot discard (a template clone's), so
/// the guest is never started to fail later.
fn check_restored_state_policy(
    cfg: &VmConfig,
    devices: &[(String, String, DeviceHandle)],
) -> Result<(), MachineError> {
    let mut reqs = Vec::new();
    for (_, name, dev) in devices {
        if let DeviceHandle::Balloon(b) = dev {
            reqs.extend(crate::bus::lock(b, name).state_ram_requirements());
        }
    }
    if reqs.is_empty() {
        return Ok(());
    }
    let backings = cfg.ram_backings().map_err(|e| device_err("--memory", e))?;
    devices::ram::policy::check(&reqs, &backings, devices::ram::policy::Operation::Run)
        .map_err(MachineError::Policy)
}

fn assemble(
    cfg: &VmConfig,
    ram: Arc<GuestRam>,
    vm: Option<Vm>,
    saved: Option<&Restored>,
    paused: bool,
    watch: Option<SerialWatch>,
) -> Result<Machine, MachineError> {
    if let Some(s) = saved {
        if s.devices.len() != cfg.virtio_device_count() || s.vcpus.len() != usize::from(cfg.cpus) {
            return Err(MachineError::Device {
                device: "snapshot".into(),
                reason: format!(
                    "{} device and {} vCPU states for a VM with {} devices and {} vCPUs",
                    s.devices.len(),
                    s.vcpus.len(),
                    cfg.virtio_device_count(),
                    cfg.cpus
                ),
            });
        }
        for (i, v) in s.vcpus.iter().enumerate() {
            v.validate(i as u8)?;
        }
    }
    // Devices first: a state they refuse stops the restore before KVM.
    let devices = virtio_devices(cfg, &ram, saved)?;
    if saved.is_some() {
        check_restored_state_policy(cfg, &devices)?;
    }

    let vm = match vm {
        Some(vm) => vm,
        None => {
            let vm = Vm::new(cfg.cpus)?;
            vm.map_ram(&ram)?;
            vm
        }
    };
    let exit = Arc::new(ExitSignal::new().map_err(host("creating the exit eventfd"))?);

    let mut pio = Bus::new("port I/O");
    let mut mmio = Bus::new("MMIO");
    let mut events = EventLoop::new().map_err(host("creating the device epoll"))?;
    let device_loop = events
        .handle()
        .map_err(host("creating the device thread's control"))?;

    let mut raw_stdin = None;
    let serial = match serial_out(&cfg.serial)? {
        Some(out) => {
            let out: SerialOut = match watch {
                Some(w) => Box::new(Watched::new(out, w)),
                None => out,
            };
            let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(host("creating the COM1 interrupt eventfd"))?;
            vm.register_irqfd(&irq, layout::COM1_IRQ)?;
            let drained = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(host("creating the COM1 input eventfd"))?;
            let drained_loop = drained
                .try_clone()
                .map_err(host("duplicating the COM1 input eventfd"))?;
            let dev = match saved.and_then(|s| s.com1.as_ref()) {
                Some(state) => SerialDevice::restore(irq, drained, out, state)
                    .map_err(|e| device_err("COM1", e))?,
                None => SerialDevice::new(irq, drained, out),
            };
            let com1 = Arc::new(Mutex::new(dev));
            pio.insert("COM1", com1.clone(), u64::from(layout::COM1_PORT), 8)?;
            if matches!(cfg.serial, SerialConfig::Stdio) {
                events
                    .add_stdin(com1.clone(), drained_loop)
                    .map_err(host("watching COM1's input eventfd"))?;
                raw_stdin = RawStdin::enable();
            }
            Some(com1)
        }
        None => None,
    };
    pio.insert(
        "ACPI power management",
        Arc::new(Mutex::new(AcpiPower::new(exit.clone()))),
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        AcpiPower::LEN,
    )?;
    let ged_irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(host("creating the GED interrupt eventfd"))?;
    vm.register_irqfd(&ged_irq, layout::GED_GSI)?;
    let ged = Arc::new(Mutex::new(Ged::new(ged_irq)));
    pio.insert(
        "Generic Event Device",
        ged.clone(),
        u64::from(layout::GED_PORT),
        1,
    )?;
    pio.insert(
        "i8042 reset",
        Arc::new(Mutex::new(I8042Reset::new(exit.clone()))),
        0x64,
        1,
    )?;

    let mut w = Wiring {
        vm: &vm,
        mmio: &mut mmio,
        events: &mut events,
        slots: Vec::new(),
    };
    for (i, (id, name, handle)) in devices.into_iter().enumerate() {
        let transport = saved.map(|s| &s.devices[i].0);
        w.attach(&id, name, handle, transport)?;
    }
    let slots = std::mem::take(&mut w.slots);

    let layout = Arc::new(vstate::vcpu_state::StateLayout::of(vm.kvm()));
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    let vmgenid = match saved {
        None => {
            let windows: Vec<(u64, u32)> = slots.iter().map(|s| (s.base, s.gsi)).collect();
            let rsdp = acpi::write_acpi_tables(
                ram.memory(),
                &AcpiPlatform {
                    cpus: cfg.cpus,
                    virtio_mmio: &windows,
                    vmgenid: cfg.vmgenid,
                },
            )?;
            let vmgenid = match cfg.vmgenid {
                true => {
                    let guid = new_generation_id(&ram)?;
                    info!("VM generation ID {guid}");
                    Some(VmGenId { guid })
                }
                false => None,
            };
            let entry = loader::load(
                ram.memory(),
                &BootSpec {
                    kernel: &cfg.kernel,
                    initrd: cfg.initrd.as_deref(),
                    cmdline: &cfg.cmdline,
                    ram_size: cfg.memory.size,
                    rsdp,
                },
            )?;
            let cpuid = vstate::vcpu::supported_cpuid(&vm)?;
            for i in 0..cfg.cpus {
                let boot = (i == 0).then_some((ram.memory(), entry));
                vcpus.push(Vcpu::new(&vm, &cpuid, i, cfg.cpus, boot)?);
            }
            vmgenid
        }
        Some(s) => {
            vm.restore_state(&s.vm)?;
            for (i, state) in s.vcpus.iter().enumerate() {
                let vcpu = Vcpu::create(&vm, i as u8)?;
                state.restore(vcpu.fd(), &layout)?;
                vcpus.push(vcpu);
            }
            // Events are raised once the IOAPIC and the LAPICs hold their
            // saved state: one raised into the new VM's masked IOAPIC pin
            // would be lost.
            let mut ged = lock(&ged, "GED");
            ged.restore(s.ged)
                .map_err(host("raising a restored GED event"))?;
            restored_generation_id(cfg, &ram, s.vmgenid, &mut ged)?
        }
    };

    let stop = EventFd::new(libc::EFD_CLOEXEC).map_err(host("creating the stop eventfd"))?;
    let stop_loop = stop
        .try_clone()
        .map_err(host("duplicating the stop eventfd"))?;
    let loop_exit = exit.clone();
    thread::Builder::new()
        .name("devices".into())
        .spawn(move || {
            let e = loop_exit.clone();
            guarded("the device thread", &e, move || {
                events.run(loop_exit, stop_loop, paused)
            })
        })
        .map_err(host("starting the device thread"))?;

    let vcpus = Vcpus::start(
        vcpus,
        layout,
        paused,
        Arc::new(pio),
        Arc::new(mmio),
        exit.clone(),
    )?;
    info!(
        "guest {}: {} vCPUs, {} virtio devices{}",
        if saved.is_some() {
            "restored"
        } else {
            "started"
        },
        cfg.cpus,
        slots.len(),
        if paused { ", paused" } else { "" }
    );
    // The Machine's configuration says whether its VM has the device, as
    // a save records it: after a restore, what the saved VM had.
    let mut cfg = cfg.clone();
    cfg.vmgenid = vmgenid.is_some();
    Ok(Machine {
        cfg,
        vmgenid,
        ram,
        vm,
        exit,
        slots,
        serial,
        ged,
        vcpus,
        device_loop,
        stop_loop: stop,
        running: !paused,
        _raw_stdin: raw_stdin,
    })
}
