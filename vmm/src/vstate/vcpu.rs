//! A vCPU: its boot state and its run loop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Once};

use devices::guest_warn;
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, warn};
use thiserror::Error;
use vm_memory::GuestMemory;

use super::cpuid;
use super::dump::VcpuDump;
use super::regs::{self, EntryMode};
use super::vcpu_state::{StateLayout, VcpuState, VcpuStateError};
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
        let vcpu = Vcpu::create(vm, index)?;
        vcpu.configure_for_boot(supported, cpus, boot)?;
        Ok(vcpu)
    }

    /// A vCPU with nothing set: a restore writes all of its state.
    pub fn create(vm: &Vm, index: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Kvm {
                index,
                what: "creating it",
                source,
            })?;
        Ok(Vcpu { index, fd })
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn configure_for_boot<M: GuestMemory>(
        &self,
        supported: &CpuId,
        cpus: u8,
        boot: Option<(&M, BootEntry)>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let fd = &self.fd;
        let kvm_err = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };

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
        Ok(())
    }

    /// Runs the vCPU on the calling thread under `ctl`'s requests: it runs
    /// the guest, parks when asked to pause, saves its state while parked,
    /// and parks for good once the VM has ended. I/O exits go to the buses.
    pub fn run(
        mut self,
        ctl: VcpuThreadControl,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
    ) {
        ctl.tid.store(gettid(), Ordering::Release);
        let run_ptr: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        // SAFETY: the kvm_run mapping lives as long as `self.fd`, and the
        // pointer is cleared below before `self` is dropped.
        KVM_RUN.with(|c| c.set(unsafe { &raw mut (*run_ptr).immediate_exit }));
        let mut paused = ctl.start_paused;
        loop {
            if paused || exit.is_set() {
                match ctl.requests.recv() {
                    Ok(r) => self.handle(r, &ctl, &mut paused, exit.is_set()),
                    // The VM object is gone: nothing will resume this vCPU.
                    Err(_) => break,
                }
                continue;
            }
            if ctl.pending.swap(false, Ordering::AcqRel) {
                while let Ok(r) = ctl.requests.try_recv() {
                    self.handle(r, &ctl, &mut paused, false);
                }
                continue;
            }
            if let Some(why) = self.run_once(&pio, &mmio, &ctl.triple_fault) {
                if let VmExit::Failed(msg) = &why {
                    error!("{msg}");
                }
                exit.signal(why);
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    fn handle(&mut self, r: VcpuRequest, ctl: &VcpuThreadControl, paused: &mut bool, ended: bool) {
        let index = self.index;
        match r {
            VcpuRequest::Pause => {
                if !*paused && !ended {
                    self.complete_pending_io();
                    // Tells a guest using kvmclock that it was stopped, so its
                    // watchdogs do not report the gap as a soft lockup.
                    if let Err(e) = self.fd.kvmclock_ctrl() {
                        debug!("vCPU {index}: KVM_KVMCLOCK_CTRL: {e} (the guest does not use kvmclock)");
                    }
                }
                *paused = true;
                let _ = ctl.replies.send((index, VcpuReply::Paused));
            }
            VcpuRequest::Resume => {
                *paused = false;
                let _ = ctl.replies.send((index, VcpuReply::Resumed));
            }
            VcpuRequest::Save(reply) => {
                let state = if *paused || ended {
                    VcpuState::save(index, &self.fd, &ctl.layout)
                } else {
                    Err(VcpuStateError::Invalid {
                        index,
                        reason: "asked to save while running".into(),
                    })
                };
                let _ = reply.send(state);
            }
            // Between two KVM_RUNs on this thread, whether parked or not.
            VcpuRequest::Dump(reply) => {
                let _ = reply.send(VcpuDump::read(index, &self.fd));
            }
        }
    }

    /// An I/O or MMIO exit is complete only once KVM_RUN is entered again
    /// (KVM then moves RIP past the instruction, or loads the value read):
    /// before that the vCPU's saved registers would replay the access on
    /// restore, reading a read-to-clear register twice or writing a byte
    /// twice. KVM_RUN with immediate_exit set completes it and returns
    /// before any guest instruction runs.
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => warn!(
                "vCPU {}: completing its last I/O exit before the pause failed: {e}",
                self.index
            ),
            Ok(exit) => warn!(
                "vCPU {}: KVM_RUN with immediate_exit returned {exit:?} instead of EINTR",
                self.index
            ),
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    /// One KVM_RUN and the exit it returned; Some when the VM must end.
    /// A triple fault records this vCPU's index in `triple_fault` (the
    /// first one wins), for the dump the VM logs as it ends.
    fn run_once(&mut self, pio: &Bus, mmio: &Bus, triple_fault: &AtomicI32) -> Option<VmExit> {
        let index = self.index;
        match self.fd.run() {
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
                let _ = triple_fault.compare_exchange(
                    -1,
                    i32::from(index),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                // KVM on AMD (SVM) clears the vCPU and sends it INIT before
                // it reports the shutdown: what it holds then is the reset
                // state, not where the guest died.
                let after_reset = matches!(
                    (self.fd.get_regs(), self.fd.get_sregs()),
                    (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000
                );
                let state = self.describe_state();
                let note = if after_reset {
                    "; KVM reset this vCPU before reporting the fault (AMD), so these are not the registers of the fault"
                } else {
                    ""
                };
                warn!("vCPU {index}: triple fault; the guest is reset ({state}{note})");
                Some(VmExit::Reboot)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reboot),
                KVM_SYSTEM_EVENT_CRASH => Some(VmExit::Failed(format!(
                    "vCPU {index}: the guest reported a crash"
                ))),
                other => {
                    guest_warn!("vCPU {index}: unknown system event {other}; ignored");
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
                guest_warn!("vCPU {index}: unexpected exit {other:?}; ignored");
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick: immediate_exit did its job; the next KVM_RUN must enter.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VmExit::Failed(format!("vCPU {index}: KVM_RUN failed: {e}"))),
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

/// What the VM object asks of a vCPU thread.
pub enum VcpuRequest {
    /// Leave KVM_RUN and park; answered with [`VcpuReply::Paused`].
    Pause,
    /// Run the guest again; answered with [`VcpuReply::Resumed`].
    Resume,
    /// Read the vCPU's state (it must be parked).
    Save(Sender<Result<VcpuState, VcpuStateError>>),
    /// Read what the vCPU is doing, for a diagnostic dump; answered in
    /// any state, parked or not.
    Dump(Sender<Result<VcpuDump, VcpuError>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuReply {
    Paused,
    Resumed,
}

/// The vCPU thread's side of its control channel.
pub struct VcpuThreadControl {
    pub requests: Receiver<VcpuRequest>,
    /// Set after every request sent: checked once per exit instead of the channel.
    pub pending: Arc<AtomicBool>,
    pub replies: Sender<(u8, VcpuReply)>,
    /// The thread's kernel id, for query-cpus-fast.
    pub tid: Arc<AtomicI32>,
    pub layout: Arc<StateLayout>,
    pub start_paused: bool,
    /// The index of the first vCPU that triple-faulted; -1 until one does.
    pub triple_fault: Arc<AtomicI32>,
}

thread_local! {
    /// This thread's vCPU `immediate_exit` byte, for the kick signal's handler.
    static KVM_RUN: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // With immediate_exit set, a kick that lands just before KVM_RUN still
    // makes it return at once instead of being lost.
    let p = KVM_RUN.with(Cell::get);
    if !p.is_null() {
        // SAFETY: set by this thread's `Vcpu::run` to its live kvm_run.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the kick handler once per process, before any vCPU thread starts.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}
