//! A vCPU: its boot state and its run loop.

use std::sync::Arc;

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, warn};
use thiserror::Error;
use vm_memory::GuestMemory;

use super::cpuid;
use super::regs::{self, EntryMode};
use super::vm::Vm;
use crate::bus::Bus;
use crate::exit::{ExitSignal, VmExit};

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "vCPU {index}: KVM accepted {set} of {total} boot MSRs (MSR {first_refused:#x} refused)"
    )]
    Msrs {
        index: u8,
        set: usize,
        total: usize,
        first_refused: u32,
    },
    #[error("vCPU {index}: writing its boot page tables and GDT into guest RAM failed: {source}")]
    BootMemory {
        index: u8,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the boot vCPU starts, as the kernel loader decided.
#[derive(Clone, Copy, Debug)]
pub struct BootEntry {
    pub mode: EntryMode,
    pub entry: u64,
    /// Zero page (64-bit Linux protocol) or PVH start info.
    pub boot_info: u64,
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

/// LAPIC local vector table entries and their delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

impl Vcpu {
    /// Creates vCPU `index` of `cpus` with CPUID, MSRs, FPU and LAPIC set;
    /// the boot vCPU (index 0) also gets the entry registers. The others
    /// wait in KVM for the INIT/SIPI the guest sends them.
    pub fn new<M: GuestMemory>(
        vm: &Vm,
        supported: &CpuId,
        index: u8,
        cpus: u8,
        boot: Option<(&M, BootEntry)>,
    ) -> Result<Vcpu, VcpuError> {
        let kvm_err = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("creating it"))?;

        let mut cpuid = supported.clone();
        cpuid::patch(&mut cpuid, index, cpus);
        fd.set_cpuid2(&cpuid).map_err(kvm_err("setting CPUID"))?;

        let entries = regs::boot_msrs();
        let msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
            index,
            set: 0,
            total: entries.len(),
            first_refused: entries[0].index,
        })?;
        let set = fd.set_msrs(&msrs).map_err(kvm_err("setting MSRs"))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs {
                index,
                set,
                total: entries.len(),
                first_refused: entries[set].index,
            });
        }
        fd.set_fpu(&regs::boot_fpu())
            .map_err(kvm_err("setting the FPU"))?;

        let mut lapic = fd.get_lapic().map_err(kvm_err("reading the LAPIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(kvm_err("setting the LAPIC"))?;

        if let Some((mem, entry)) = boot {
            let sregs = fd
                .get_sregs()
                .map_err(kvm_err("reading special registers"))?;
            let sregs = regs::setup_sregs(mem, entry.mode, sregs)
                .map_err(|source| VcpuError::BootMemory { index, source })?;
            fd.set_sregs(&sregs)
                .map_err(kvm_err("setting special registers"))?;
            fd.set_regs(&regs::entry_regs(entry.mode, entry.entry, entry.boot_info))
                .map_err(kvm_err("setting registers"))?;
        }
        Ok(Vcpu { index, fd })
    }

    /// Runs the vCPU until the VM ends; I/O exits go to the buses.
    pub fn run(mut self, pio: Arc<Bus>, mmio: Arc<Bus>, exit: Arc<ExitSignal>) {
        let index = self.index;
        while !exit.is_set() {
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio.read(addr, data) {
                        debug!("vCPU {index}: MMIO read at {addr:#x} hits no device");
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !mmio.write(addr, data) {
                        debug!("vCPU {index}: MMIO write at {addr:#x} hits no device");
                    }
                    None
                }
                Ok(VcpuExit::Hlt) => {
                    // The in-kernel LAPIC handles HLT; this exit is spurious.
                    debug!("vCPU {index}: HLT exit");
                    None
                }
                Ok(VcpuExit::Shutdown) => {
                    warn!(
                        "vCPU {index}: triple fault; the guest is reset ({})",
                        self.describe_state()
                    );
                    Some(VmExit::Reboot)
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reboot),
                    KVM_SYSTEM_EVENT_CRASH => Some(VmExit::Failed(format!(
                        "vCPU {index}: the guest reported a crash"
                    ))),
                    other => {
                        warn!("vCPU {index}: unknown system event {other}; ignored");
                        None
                    }
                },
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::Failed(format!(
                    "vCPU {index}: KVM could not enter the guest (hardware reason {reason:#x} on host CPU {cpu})"
                ))),
                Ok(VcpuExit::InternalError) => Some(VmExit::Failed(format!(
                    "vCPU {index}: KVM internal error (often an instruction KVM cannot emulate; {})",
                    self.describe_state()
                ))),
                Ok(VcpuExit::Intr) => None,
                Ok(other) => {
                    warn!("vCPU {index}: unexpected exit {other:?}; ignored");
                    None
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(VmExit::Failed(format!("vCPU {index}: KVM_RUN failed: {e}"))),
            };
            if let Some(why) = outcome {
                if let VmExit::Failed(msg) = &why {
                    error!("{msg}");
                }
                exit.signal(why);
            }
        }
    }
}

impl Vcpu {
    /// The registers that say where and how a guest died, for the log.
    fn describe_state(&self) -> String {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "registers unreadable".to_string();
        };
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} idt={:#x}+{:#x} cs={:#x}",
            r.rip, r.rsp, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.idt.base, s.idt.limit, s.cs.selector
        )
    }
}

/// The CPUID KVM can offer a vCPU, before this VM's topology is applied.
pub fn supported_cpuid(vm: &Vm) -> Result<CpuId, VcpuError> {
    vm.kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VcpuError::Kvm {
            index: 0,
            what: "reading the supported CPUID",
            source,
        })
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as std::os::raw::c_char;
    }
}
