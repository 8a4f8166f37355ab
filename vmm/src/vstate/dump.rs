//! What one vCPU is doing, for diagnosing a guest that hangs or dies:
//! where it runs (RIP, RSP, RFLAGS, CS), its paging and mode (CR0, CR2,
//! CR3, CR4, EFER), whether it sleeps (mp_state) and the events KVM holds
//! for it (an exception, interrupt or NMI injected or pending). Read on the
//! vCPU's own thread, outside KVM_RUN.

use kvm_bindings::kvm_vcpu_events;
use kvm_ioctls::VcpuFd;
use serde_json::{json, Value};

use super::vcpu::VcpuError;

#[derive(Clone, Debug, PartialEq)]
pub struct VcpuDump {
    pub index: u8,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub mp_state: u32,
    pub events: kvm_vcpu_events,
}

/// KVM's names of the multiprocessing states (KVM_MP_STATE_*), lower-case.
pub fn mp_state_name(s: u32) -> &'static str {
    match s {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "runnable",
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "uninitialized",
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "init-received",
        kvm_bindings::KVM_MP_STATE_HALTED => "halted",
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "sipi-received",
        kvm_bindings::KVM_MP_STATE_STOPPED => "stopped",
        kvm_bindings::KVM_MP_STATE_AP_RESET_HOLD => "ap-reset-hold",
        kvm_bindings::KVM_MP_STATE_SUSPENDED => "suspended",
        _ => "unknown",
    }
}

impl VcpuDump {
    /// Reads vCPU `index`'s state; the caller is the vCPU's own thread,
    /// outside KVM_RUN.
    pub fn read(index: u8, fd: &VcpuFd) -> Result<VcpuDump, VcpuError> {
        let kvm = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        let r = fd.get_regs().map_err(kvm("reading its registers"))?;
        let s = fd
            .get_sregs()
            .map_err(kvm("reading its special registers"))?;
        let mp = fd.get_mp_state().map_err(kvm("reading its mp_state"))?;
        let events = fd
            .get_vcpu_events()
            .map_err(kvm("reading its pending events"))?;
        Ok(VcpuDump {
            index,
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            cs: s.cs.selector,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            mp_state: mp.mp_state,
            events,
        })
    }

    /// The registers on one line: `rip=0x... rsp=0x... ... mp_state=NAME`.
    pub fn registers_line(&self) -> String {
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} mp_state={}",
            self.rip,
            self.rsp,
            self.rflags,
            self.cs,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer,
            mp_state_name(self.mp_state)
        )
    }

    /// The events KVM holds, on one line: `exception=none interrupt=none
    /// nmi=none` when nothing waits; otherwise which vector and whether it
    /// is being injected or pending.
    pub fn events_line(&self) -> String {
        let e = &self.events;
        let ex = &e.exception;
        let exception = match (ex.injected != 0, ex.pending != 0) {
            (false, false) => "none".to_string(),
            (inj, _) => format!(
                "{}:{}{}",
                if inj { "injected" } else { "pending" },
                ex.nr,
                if ex.has_error_code != 0 {
                    format!(",error_code={:#x}", ex.error_code)
                } else {
                    String::new()
                }
            ),
        };
        let it = &e.interrupt;
        let interrupt = if it.injected != 0 {
            format!(
                "injected:{:#x}{}",
                it.nr,
                if it.soft != 0 { ",soft" } else { "" }
            )
        } else {
            "none".to_string()
        };
        let n = &e.nmi;
        let nmi = match (n.injected != 0, n.pending != 0) {
            (false, false) => "none",
            (true, _) => "injected",
            (false, true) => "pending",
        };
        format!(
            "exception={exception} interrupt={interrupt} interrupt_shadow={} nmi={nmi} nmi_masked={} sipi_vector={:#x}",
            it.shadow, n.masked, e.sipi_vector
        )
    }

    /// As QMP's x-query-vcpu-dump returns it (numbers as integers).
    pub fn to_json(&self) -> Value {
        let e = &self.events;
        json!({
            "cpu-index": self.index,
            "rip": self.rip,
            "rsp": self.rsp,
            "rflags": self.rflags,
            "cs": self.cs,
            "cr0": self.cr0,
            "cr2": self.cr2,
            "cr3": self.cr3,
            "cr4": self.cr4,
            "efer": self.efer,
            "mp-state": mp_state_name(self.mp_state),
            "exception": {
                "injected": e.exception.injected != 0,
                "pending": e.exception.pending != 0,
                "nr": e.exception.nr,
                "has-error-code": e.exception.has_error_code != 0,
                "error-code": e.exception.error_code,
            },
            "interrupt": {
                "injected": e.interrupt.injected != 0,
                "nr": e.interrupt.nr,
                "soft": e.interrupt.soft != 0,
                "shadow": e.interrupt.shadow,
            },
            "nmi": {
                "injected": e.nmi.injected != 0,
                "pending": e.nmi.pending != 0,
                "masked": e.nmi.masked != 0,
            },
            "sipi-vector": e.sipi_vector,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> VcpuDump {
        VcpuDump {
            index: 1,
            rip: 0x100200,
            rsp: 0x8ff0,
            rflags: 0x2,
            cs: 0x10,
            cr0: 0x8000_0011,
            cr2: 0,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            mp_state: kvm_bindings::KVM_MP_STATE_HALTED,
            events: kvm_vcpu_events::default(),
        }
    }

    #[test]
    fn lines_name_every_register_and_event() {
        let mut d = dump();
        assert_eq!(
            d.registers_line(),
            "rip=0x100200 rsp=0x8ff0 rflags=0x2 cs=0x10 cr0=0x80000011 cr2=0x0 cr3=0x9000 cr4=0x20 efer=0x500 mp_state=halted"
        );
        assert_eq!(
            d.events_line(),
            "exception=none interrupt=none interrupt_shadow=0 nmi=none nmi_masked=0 sipi_vector=0x0"
        );
        d.events.exception.pending = 1;
        d.events.exception.nr = 14;
        d.events.exception.has_error_code = 1;
        d.events.exception.error_code = 2;
        d.events.interrupt.injected = 1;
        d.events.interrupt.nr = 0xec;
        d.events.nmi.pending = 1;
        d.events.nmi.masked = 1;
        assert_eq!(
            d.events_line(),
            "exception=pending:14,error_code=0x2 interrupt=injected:0xec interrupt_shadow=0 nmi=pending nmi_masked=1 sipi_vector=0x0"
        );
        let j = d.to_json();
        assert_eq!(j["rip"], 0x100200);
        assert_eq!(j["mp-state"], "halted");
        assert_eq!(j["exception"]["nr"], 14);
        assert_eq!(j["nmi"]["pending"], true);
    }

    #[test]
    fn unknown_mp_states_are_named_so() {
        assert_eq!(mp_state_name(77), "unknown");
        assert_eq!(mp_state_name(0), "runnable");
    }
}
