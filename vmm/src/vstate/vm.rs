//! The KVM VM: in-kernel IOAPIC/PIC/LAPICs and PIT, guest RAM slots.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use log::debug;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use devices::ram::GuestRam;

/// Where KVM keeps the TSS and the identity-mapped page it needs for
/// real-mode emulation on Intel: three pages just below the IOAPIC window,
/// inside the MMIO hole so they never shadow RAM.
const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}; run `vmm host-check` to see what this host lacks")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    #[error("the host KVM lacks {0:?}, which this VMM needs; run `vmm host-check`")]
    MissingCap(Cap),
    #[error("creating the KVM VM failed: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("setting up {what} failed: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "registering guest RAM at {gpa:#x} (length {len:#x}) as KVM slot {slot} failed: {source}"
    )]
    MemorySlot {
        slot: u32,
        gpa: u64,
        len: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the host KVM allows {max} memory slots, and the guest RAM needs {needed}")]
    TooManySlots { max: usize, needed: usize },
    #[error("saved VM state is inconsistent: {0}")]
    BadState(String),
    #[error(
        "{cpus} vCPUs asked, and this host's KVM allows at most {max}; use --cpus {max} or fewer"
    )]
    TooManyVcpus { cpus: u8, max: usize },
}

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

/// What KVM holds for the VM as a whole: the in-kernel PICs and IOAPIC,
/// the PIT and the kvmclock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn irqchip(chip_id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id,
        ..Default::default()
    }
}

impl Vm {
    /// A VM with in-kernel interrupt controllers and PIT, ready for memory and vCPUs.
    pub fn new(cpus: u8) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        for cap in [
            Cap::Irqchip,
            Cap::Ioeventfd,
            Cap::Irqfd,
            Cap::UserMemory,
            Cap::SetTssAddr,
            Cap::Pit2,
            Cap::PitState2,
            Cap::ExtCpuid,
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let max = kvm.get_max_vcpus();
        if usize::from(cpus) > max {
            return Err(VmError::TooManyVcpus { cpus, max });
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let setup = |what, r: Result<(), kvm_ioctls::Error>| {
            r.map_err(|source| VmError::Setup { what, source })
        };
        setup(
            "the TSS address",
            fd.set_tss_address(KVM_TSS_ADDRESS as usize),
        )?;
        setup(
            "the identity map address",
            fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS),
        )?;
        setup("the in-kernel irqchip", fd.create_irq_chip())?;
        // The PC speaker port has no device behind it; without the dummy
        // flag KVM would exit to us for port 0x61.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        setup("the in-kernel PIT", fd.create_pit2(pit))?;
        Ok(Vm { kvm, fd })
    }

    /// Reads the VM-wide state; the vCPUs must be paused.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let setup = |what| move |source| VmError::Setup { what, source };
        let mut pic_master = irqchip(KVM_IRQCHIP_PIC_MASTER);
        let mut pic_slave = irqchip(KVM_IRQCHIP_PIC_SLAVE);
        let mut ioapic = irqchip(KVM_IRQCHIP_IOAPIC);
        self.fd
            .get_irqchip(&mut pic_master)
            .map_err(setup("reading the master PIC"))?;
        self.fd
            .get_irqchip(&mut pic_slave)
            .map_err(setup("reading the slave PIC"))?;
        self.fd
            .get_irqchip(&mut ioapic)
            .map_err(setup("reading the IOAPIC"))?;
        let pit = self.fd.get_pit2().map_err(setup("reading the PIT"))?;
        let clock = self.fd.get_clock().map_err(setup("reading the kvmclock"))?;
        Ok(VmState {
            pic_master,
            pic_slave,
            ioapic,
            pit,
            clock,
        })
    }

    /// Writes saved VM-wide state into this (new) VM before any vCPU runs.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        let setup = |what| move |source| VmError::Setup { what, source };
        for (chip, id, what) in [
            (
                &state.pic_master,
                KVM_IRQCHIP_PIC_MASTER,
                "restoring the master PIC",
            ),
            (
                &state.pic_slave,
                KVM_IRQCHIP_PIC_SLAVE,
                "restoring the slave PIC",
            ),
            (&state.ioapic, KVM_IRQCHIP_IOAPIC, "restoring the IOAPIC"),
        ] {
            if chip.chip_id != id {
                return Err(VmError::BadState(format!(
                    "{what}: the saved chip id is {}, expected {id}",
                    chip.chip_id
                )));
            }
            self.fd.set_irqchip(chip).map_err(setup(what))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(setup("restoring the PIT"))?;
        // KVM refuses flags it only reports (TSC_STABLE and friends).
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            flags: 0,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(setup("restoring the kvmclock"))?;
        Ok(())
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// One KVM slot per mapped region of guest RAM (boot RAM and virtio-mem regions).
    pub fn map_ram(&self, ram: &GuestRam) -> Result<(), VmError> {
        let mem = ram.memory();
        let max = self.kvm.get_nr_memslots();
        let needed = mem.num_regions();
        if needed > max {
            return Err(VmError::TooManySlots { max, needed });
        }
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let gpa = region.start_addr().0;
            let len = region.len();
            let host = region.as_ptr() as u64;
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: host,
            };
            // SAFETY: the mapping lives in `ram`, which the VMM keeps for as
            // long as the VM exists, and regions do not overlap.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::MemorySlot {
                slot,
                gpa,
                len,
                source,
            })?;
            debug!("KVM slot {slot}: {gpa:#x}+{len:#x} at host {host:#x}");
        }
        Ok(())
    }

    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Setup {
                what: "an irqfd",
                source,
            })
    }

    /// A 32-bit write of `datamatch` at `addr` signals `evt` inside KVM
    /// instead of exiting to the VMM.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Setup {
                what: "an ioeventfd",
                source,
            })
    }
}
