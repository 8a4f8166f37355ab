//! Builds a VM from a validated configuration and runs it to its end:
//! RAM, KVM, platform devices, virtio-mmio devices, ACPI, the kernel, the
//! device thread and the vCPU threads.

use std::fs::OpenOptions;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread;

use devices::virtio::balloon::Balloon;
use devices::virtio::block::Block;
use devices::virtio::mem::Mem;
use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;
use log::{info, warn};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::acpi::{self, AcpiPlatform};
use crate::boot::loader::{self, BootSpec};
use crate::bus::{lock, Bus, BusDevice, BusError};
use crate::config::{SerialConfig, VmConfig};
use crate::event_loop::EventLoop;
use crate::exit::{ExitSignal, VmExit};
use crate::layout;
use crate::memory::build_guest_ram;
use crate::platform::power::{AcpiPower, I8042Reset};
use crate::platform::serial::{SerialDevice, SerialOut};
use crate::platform::terminal::RawStdin;
use crate::transport::mmio::{MmioTransport, NOTIFY_OFFSET};
use crate::vstate::{self, Vcpu, Vm};

#[derive(Debug, Error)]
pub enum MachineError {
    #[error(transparent)]
    Ram(#[from] devices::ram::GuestRamError),
    #[error(transparent)]
    Vm(#[from] vstate::VmError),
    #[error(transparent)]
    Vcpu(#[from] vstate::VcpuError),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    #[error("--serial file={path}: {source}")]
    SerialFile {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

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
    slots: Vec<(u64, u32)>,
}

impl Wiring<'_> {
    fn attach(
        &mut self,
        name: String,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<(), MachineError> {
        let (base, gsi) = layout::virtio_mmio_slot(self.slots.len());
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(host("creating an interrupt eventfd"))?;
        self.vm.register_irqfd(&irq, gsi)?;
        let transport = MmioTransport::new(device.clone(), irq)
            .map_err(host("creating a virtio-mmio transport"))?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_mmio_ioevent(evt, base + NOTIFY_OFFSET, q as u32)?;
            let evt = evt
                .try_clone()
                .map_err(host("duplicating a queue eventfd"))?;
            self.events
                .add_queue(&name, device.clone(), q as u16, evt)
                .map_err(host("watching a queue eventfd"))?;
        }
        self.mmio.insert(
            &name,
            Arc::new(Mutex::new(transport)),
            base,
            layout::VIRTIO_MMIO_SIZE,
        )?;
        info!("{name}: virtio-mmio at {base:#x}, GSI {gsi}");
        self.slots.push((base, gsi));
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
fn guarded(what: &str, exit: &ExitSignal, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        exit.signal(VmExit::Failed(format!("{what} panicked")));
    }
}

/// Boots the VM described by `cfg` (already validated) and returns how it ended.
pub fn run(cfg: &VmConfig) -> Result<VmExit, MachineError> {
    if crate::host_check::host_kvm_is_pvm() {
        warn!("this host's KVM is PVM (kvm_pvm): only kernels built for PVM boot here, and a stock kernel will hang without output; `vmm host-check` explains");
    }
    let ram = Arc::new(build_guest_ram(cfg)?);
    let vm = Vm::new(cfg.cpus)?;
    vm.map_ram(&ram)?;
    let exit = Arc::new(ExitSignal::new().map_err(host("creating the exit eventfd"))?);

    let mut pio = Bus::new("port I/O");
    let mut mmio = Bus::new("MMIO");
    let mut events = EventLoop::new().map_err(host("creating the device epoll"))?;

    let mut raw_stdin = None;
    let serial = match serial_out(&cfg.serial)? {
        Some(out) => {
            let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(host("creating the COM1 interrupt eventfd"))?;
            vm.register_irqfd(&irq, layout::COM1_IRQ)?;
            let com1 = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
            pio.insert("COM1", com1.clone(), u64::from(layout::COM1_PORT), 8)?;
            if matches!(cfg.serial, SerialConfig::Stdio) {
                events.add_stdin(com1.clone());
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
    for d in &cfg.disks {
        let name = format!("--disk id={}", d.id);
        let dev = Block::new(d, ram.clone()).map_err(|e| device_err(&name, e))?;
        w.attach(name, Arc::new(Mutex::new(dev)))?;
    }
    for n in &cfg.nets {
        let name = format!("--net id={}", n.id);
        let dev = Arc::new(Mutex::new(
            Net::new(n, ram.clone()).map_err(|e| device_err(&name, e))?,
        ));
        w.attach(name.clone(), dev.clone())?;
        w.events
            .add_tap(&name, dev)
            .map_err(host("watching a TAP device"))?;
    }
    if let Some(b) = &cfg.balloon {
        let name = "--balloon".to_string();
        let dev = Balloon::new(b, ram.clone()).map_err(|e| device_err(&name, e))?;
        w.attach(name, Arc::new(Mutex::new(dev)))?;
    }
    for (m, base) in cfg.virtio_mems.iter().zip(layout::virtio_mem_bases(cfg)) {
        let name = format!("--virtio-mem id={}", m.id);
        let dev = Mem::new(m, base, ram.clone()).map_err(|e| device_err(&name, e))?;
        w.attach(name, Arc::new(Mutex::new(dev)))?;
    }
    let slots = std::mem::take(&mut w.slots);

    let rsdp = acpi::write_acpi_tables(
        ram.memory(),
        &AcpiPlatform {
            cpus: cfg.cpus,
            virtio_mmio: &slots,
        },
    )?;
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
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for i in 0..cfg.cpus {
        let boot = (i == 0).then_some((ram.memory(), entry));
        vcpus.push(Vcpu::new(&vm, &cpuid, i, cfg.cpus, boot)?);
    }

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
                events.run(loop_exit, stop_loop)
            })
        })
        .map_err(host("starting the device thread"))?;

    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let (pio, mmio, exit) = (pio.clone(), mmio.clone(), exit.clone());
        thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let e = exit.clone();
                guarded("a vCPU thread", &e, move || vcpu.run(pio, mmio, exit))
            })
            .map_err(host("starting a vCPU thread"))?;
    }
    info!(
        "guest started: {} vCPUs, {} virtio devices",
        cfg.cpus,
        slots.len()
    );

    let why = exit.wait();
    let _ = stop.write(1);
    if let Some(com1) = serial {
        lock(&com1, "COM1").flush();
    }
    // vCPU threads may still be inside KVM_RUN; the process exit ends them
    // together with the VM. Disk writes are already in the host page cache.
    drop(raw_stdin);
    drop(vm);
    Ok(why)
}
