//! A vCPU's saved state: everything KVM holds for it, read while the vCPU
//! is parked outside KVM_RUN and written back into a fresh vCPU before it
//! first runs.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use log::{debug, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The legacy KVM_GET_XSAVE area: 4 KiB.
const XSAVE_LEGACY_BYTES: usize = 4096;
/// KVM_GET_MSRS takes at most this many at once.
const MSR_BATCH: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES;

#[derive(Debug, Error)]
pub enum VcpuStateError {
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM restored {set} of the {total} saved MSRs; MSR {first_refused:#x} was refused (the host's KVM differs from the one that saved the snapshot)")]
    Msrs {
        index: u8,
        set: usize,
        total: usize,
        first_refused: u32,
    },
    #[error("vCPU {index}: saved state is inconsistent: {reason}")]
    Invalid { index: u8, reason: String },
}

/// Everything KVM keeps for one vCPU.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The XSAVE area as KVM_GET_XSAVE2 (or KVM_GET_XSAVE) returned it, in 32-bit words.
    pub xsave: Vec<u32>,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// The guest's TSC rate; None where KVM cannot tell it.
    pub tsc_khz: Option<u32>,
}

/// What this host's KVM says about the shape of vCPU state, asked once
/// per VM: the MSRs it lists as needing save and restore (a vCPU may
/// still refuse some: those are left out), and the size of its XSAVE
/// area (KVM_CAP_XSAVE2; 0 where KVM lacks the capability).
pub struct StateLayout {
    pub msrs: Vec<u32>,
    pub xsave_bytes: usize,
}

impl StateLayout {
    pub fn of(kvm: &Kvm) -> StateLayout {
        let msrs = match kvm.get_msr_index_list() {
            Ok(list) => list.as_slice().to_vec(),
            Err(e) => {
                warn!("KVM_GET_MSR_INDEX_LIST failed ({e}); no MSRs are saved");
                Vec::new()
            }
        };
        StateLayout {
            msrs,
            xsave_bytes: usize::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0),
        }
    }
}

impl VcpuState {
    /// Reads the state of a vCPU that is not inside KVM_RUN; MSRs of the
    /// layout that the vCPU refuses are left out.
    pub fn save(index: u8, fd: &VcpuFd, layout: &StateLayout) -> Result<Self, VcpuStateError> {
        let kvm = |what| {
            move |source| VcpuStateError::Kvm {
                index,
                what,
                source,
            }
        };
        // Taken first: KVM_GET_MP_STATE completes pending APIC events,
        // which the other reads must then see.
        let mp_state = fd.get_mp_state().map_err(kvm("reading the MP state"))?;
        let regs = fd.get_regs().map_err(kvm("reading registers"))?;
        let sregs = fd.get_sregs().map_err(kvm("reading special registers"))?;
        let xsave = read_xsave(fd, layout.xsave_bytes).map_err(kvm("reading the XSAVE area"))?;
        let xcrs = fd.get_xcrs().map_err(kvm("reading XCRs"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(kvm("reading debug registers"))?;
        let lapic = fd.get_lapic().map_err(kvm("reading the LAPIC"))?;
        let events = fd.get_vcpu_events().map_err(kvm("reading vCPU events"))?;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("reading CPUID"))?
            .as_slice()
            .to_vec();
        let msrs = read_msrs(index, fd, &layout.msrs)?;
        let tsc_khz = match fd.get_tsc_khz() {
            Ok(k) if k > 0 => Some(k),
            Ok(_) => None,
            Err(e) => {
                debug!("vCPU {index}: KVM_GET_TSC_KHZ failed ({e}); TSC rate not saved");
                None
            }
        };
        Ok(VcpuState {
            index,
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            events,
            tsc_khz,
        })
    }

    /// Checks what the saved bytes could have corrupted, before any KVM call.
    pub fn validate(&self, index: u8) -> Result<(), VcpuStateError> {
        let invalid = |reason: String| VcpuStateError::Invalid { index, reason };
        if self.index != index {
            return Err(invalid(format!(
                "the state is vCPU {}'s, restored into vCPU {index}",
                self.index
            )));
        }
        if self.cpuid.is_empty() || self.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(invalid(format!(
                "{} CPUID entries (expected 1 to {KVM_MAX_CPUID_ENTRIES})",
                self.cpuid.len()
            )));
        }
        if self.msrs.len() > 4096 {
            return Err(invalid(format!("{} MSRs saved", self.msrs.len())));
        }
        if self.xsave.len() * 4 < XSAVE_LEGACY_BYTES || self.xsave.len() * 4 > (1 << 20) {
            return Err(invalid(format!(
                "an XSAVE area of {} bytes (expected 4 KiB to 1 MiB)",
                self.xsave.len() * 4
            )));
        }
        if self.mp_state.mp_state > kvm_bindings::KVM_MP_STATE_AP_RESET_HOLD {
            return Err(invalid(format!(
                "unknown MP state {}",
                self.mp_state.mp_state
            )));
        }
        Ok(())
    }

    /// Writes the state into a vCPU that has not run yet. The order
    /// follows what KVM needs: CPUID before anything that depends on the
    /// features it names, MSRs after special registers (EFER), the LAPIC
    /// before vCPU events (a pending interrupt needs the APIC in place),
    /// and the MP state last.
    pub fn restore(&self, fd: &VcpuFd, layout: &StateLayout) -> Result<(), VcpuStateError> {
        let index = self.index;
        self.validate(index)?;
        let kvm = |what| {
            move |source| VcpuStateError::Kvm {
                index,
                what,
                source,
            }
        };
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::Invalid {
            index,
            reason: "CPUID entries do not fit KVM's table".into(),
        })?;
        fd.set_cpuid2(&cpuid).map_err(kvm("setting CPUID"))?;
        if let Some(khz) = self.tsc_khz {
            match fd.get_tsc_khz() {
                Ok(now) if now.abs_diff(khz) <= khz / 4000 => {}
                _ => {
                    if let Err(e) = fd.set_tsc_khz(khz) {
                        warn!("vCPU {index}: the guest's TSC ran at {khz} kHz and this host cannot scale it ({e}); guest time may drift");
                    }
                }
            }
        }
        fd.set_sregs(&self.sregs)
            .map_err(kvm("setting special registers"))?;
        fd.set_regs(&self.regs).map_err(kvm("setting registers"))?;
        write_xsave(fd, &self.xsave, layout.xsave_bytes).map_err(kvm("setting the XSAVE area"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm("setting XCRs"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm("setting debug registers"))?;
        fd.set_lapic(&self.lapic)
            .map_err(kvm("setting the LAPIC"))?;
        for chunk in self.msrs.chunks(MSR_BATCH) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError::Invalid {
                index,
                reason: "MSR batch does not fit KVM's table".into(),
            })?;
            let set = fd.set_msrs(&msrs).map_err(kvm("setting MSRs"))?;
            if set != chunk.len() {
                return Err(VcpuStateError::Msrs {
                    index,
                    set,
                    total: self.msrs.len(),
                    first_refused: chunk[set].index,
                });
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(kvm("setting vCPU events"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("setting the MP state"))?;
        Ok(())
    }
}

fn read_xsave(fd: &VcpuFd, size: usize) -> Result<Vec<u32>, kvm_ioctls::Error> {
    if size > XSAVE_LEGACY_BYTES {
        let extra = (size - XSAVE_LEGACY_BYTES).div_ceil(4);
        let mut xsave = Xsave::new(extra).map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))?;
        // SAFETY: `xsave` holds the size KVM_CAP_XSAVE2 reported.
        unsafe { fd.get_xsave2(&mut xsave) }?;
        let fam = xsave.as_fam_struct_ref();
        let mut words = fam.xsave.region.to_vec();
        words.extend_from_slice(xsave.as_slice());
        return Ok(words);
    }
    Ok(fd.get_xsave()?.region.to_vec())
}

fn write_xsave(fd: &VcpuFd, words: &[u32], host_bytes: usize) -> Result<(), kvm_ioctls::Error> {
    let legacy = XSAVE_LEGACY_BYTES / 4;
    if words.len() > legacy && host_bytes < words.len() * 4 {
        // KVM would read past what this host's XSAVE area holds.
        return Err(kvm_ioctls::Error::new(libc::E2BIG));
    }
    let mut xsave =
        Xsave::new(words.len() - legacy).map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))?;
    // SAFETY: plain data is copied within the wrapper's bounds; the FAM
    // length stays what `Xsave::new` set.
    unsafe {
        xsave
            .as_mut_fam_struct()
            .xsave
            .region
            .copy_from_slice(&words[..legacy]);
    }
    xsave.as_mut_slice().copy_from_slice(&words[legacy..]);
    // SAFETY: the wrapper holds the whole area, as large as KVM will read.
    unsafe { fd.set_xsave2(&xsave) }
}

fn read_msrs(index: u8, fd: &VcpuFd, list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(list.len());
    let mut pending: &[u32] = list;
    while !pending.is_empty() {
        let n = pending.len().min(MSR_BATCH);
        let entries: Vec<kvm_msr_entry> = pending[..n]
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Invalid {
            index,
            reason: "MSR batch does not fit KVM's table".into(),
        })?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                index,
                what: "reading MSRs",
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        if read < n {
            // KVM stops at the first MSR it cannot read: skip that one.
            debug!(
                "vCPU {index}: MSR {:#x} is not readable here; not saved",
                pending[read]
            );
            pending = &pending[read + 1..];
        } else {
            pending = &pending[n..];
        }
    }
    Ok(out)
}
