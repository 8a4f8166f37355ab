//! The VM object: guest RAM, the KVM VM, the buses, the transports with
//! their typed devices, the device thread and the vCPU threads, owned
//! together so that the VM can be paused, saved and controlled while it
//! runs. [`build`] has the two ways to make one: booting a kernel, or
//! restoring a snapshot (which writes no kernel, ACPI table or boot
//! register).

pub mod build;
pub mod dump;
pub mod vcpus;

use std::io;
use std::sync::{Arc, Mutex};

use devices::ram::GuestRam;
use devices::vhost_user::VhostUserDevice;
use devices::virtio::balloon::Balloon;
use devices::virtio::block::Block;
use devices::virtio::mem::Mem;
use devices::virtio::net::Net;
use log::info;
use thiserror::Error;

use crate::bus::lock;
use crate::config::VmConfig;
use crate::event_loop::LoopHandle;
use crate::exit::ExitSignal;
use crate::platform::ged::{Ged, EVENT_POWER_BUTTON};
use crate::platform::serial::SerialDevice;
use crate::platform::vmgenid::VmGenId;
use crate::transport::MmioTransport;
use crate::vstate::{self, Vm};

pub use build::{boot, guarded};
pub use vcpus::{VcpuInfo, Vcpus};

#[derive(Debug, Error)]
pub enum MachineError {
    #[error(transparent)]
    Ram(#[from] devices::ram::GuestRamError),
    #[error(transparent)]
    Vm(#[from] vstate::VmError),
    #[error(transparent)]
    Vcpu(#[from] vstate::VcpuError),
    #[error(transparent)]
    VcpuState(#[from] vstate::VcpuStateError),
    #[error(transparent)]
    Load(#[from] crate::boot::loader::LoadError),
    #[error(transparent)]
    Acpi(#[from] crate::boot::acpi::AcpiError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    /// The RAM policy refused what a snapshot's device state needs.
    #[error("{0}")]
    Policy(devices::ram::PolicyError),
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
    #[error("{0}")]
    Vcpus(String),
    #[error("the VM has ended ({0}); it can no longer be paused, resumed or saved")]
    Ended(String),
}

/// A virtio device with its concrete type, for control commands.
#[derive(Clone)]
pub enum DeviceHandle {
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net>>),
    Balloon(Arc<Mutex<Balloon>>),
    Mem(Arc<Mutex<Mem>>),
    /// Served by a vhost-user back end; its state lives there.
    VhostUser(Arc<Mutex<VhostUserDevice>>),
}

/// One device on virtio-mmio, in window order.
pub struct VirtioSlot {
    /// The user's id (`disk0`, `net0`, `balloon0`, `mem0`).
    pub id: String,
    /// How logs and errors name it (`--disk id=disk0`).
    pub name: String,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub device: DeviceHandle,
    pub base: u64,
    pub gsi: u32,
}

pub struct Machine {
    /// The configuration; `vmgenid` says whether the VM has the device.
    pub cfg: VmConfig,
    /// The VM Generation ID device and the GUID the guest sees now.
    pub vmgenid: Option<VmGenId>,
    pub ram: Arc<GuestRam>,
    pub vm: Vm,
    pub exit: Arc<ExitSignal>,
    pub slots: Vec<VirtioSlot>,
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    pub ged: Arc<Mutex<Ged>>,
    pub vcpus: Vcpus,
    device_loop: LoopHandle,
    /// Written when the VM ends: the device thread leaves its loop.
    stop_loop: vmm_sys_util::eventfd::EventFd,
    running: bool,
    /// Kept for as long as the VM: stdin in raw mode while COM1 reads it.
    _raw_stdin: Option<crate::platform::terminal::RawStdin>,
}

impl Machine {
    pub fn is_running(&self) -> bool {
        self.running
    }

    fn check_alive(&self) -> Result<(), MachineError> {
        match vcpus::ended(&self.exit) {
            Some(why) => Err(MachineError::Ended(format!("{why:?}"))),
            None => Ok(()),
        }
    }

    /// Stops the vCPUs (each leaves KVM_RUN, even from a halt), then the
    /// device thread between two requests. Idempotent.
    pub fn pause(&mut self) -> Result<(), MachineError> {
        if !self.running {
            return Ok(());
        }
        self.check_alive()?;
        self.vcpus.pause()?;
        self.device_loop
            .pause()
            .map_err(|source| MachineError::Host {
                what: "pausing the device thread",
                source,
            })?;
        self.running = false;
        info!("VM paused");
        Ok(())
    }

    /// Devices first, so that the first kick after resume is served.
    pub fn resume(&mut self) -> Result<(), MachineError> {
        if self.running {
            return Ok(());
        }
        self.check_alive()?;
        self.device_loop
            .resume()
            .map_err(|source| MachineError::Host {
                what: "resuming the device thread",
                source,
            })?;
        self.vcpus.resume()?;
        self.running = true;
        info!("VM running");
        Ok(())
    }

    /// The VM has ended: stops the device thread and flushes COM1's
    /// output. vCPU threads stay parked until the process exits.
    pub fn shut_down(&self) {
        let _ = self.stop_loop.write(1);
        if let Some(com1) = &self.serial {
            lock(com1, "COM1").flush();
        }
    }

    /// Presses the ACPI power button: a guest that handles it shuts down.
    pub fn power_button(&self) -> Result<(), MachineError> {
        self.check_alive()?;
        lock(&self.ged, "GED")
            .raise(EVENT_POWER_BUTTON)
            .map_err(|source| MachineError::Host {
                what: "raising the power button event",
                source,
            })
    }

    pub fn device(&self, id: &str) -> Option<&DeviceHandle> {
        self.slots.iter().find(|s| s.id == id).map(|s| &s.device)
    }

    /// How logs name each device a vhost-user back end serves.
    pub fn vhost_user_devices(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| matches!(s.device, DeviceHandle::VhostUser(_)))
            .map(|s| s.name.clone())
            .collect()
    }

    pub fn balloon(&self) -> Option<&Arc<Mutex<Balloon>>> {
        self.slots.iter().find_map(|s| match &s.device {
            DeviceHandle::Balloon(b) => Some(b),
            _ => None,
        })
    }
}
