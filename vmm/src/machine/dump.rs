//! A diagnostic dump of the whole VM: every vCPU's state and the guest's
//! last serial output, taken on SIGUSR1, by QMP `x-query-vcpu-dump`, and
//! when the guest triple-faults or the VM fails. A running VM's vCPUs are paused for it
//! (the device thread keeps running) and resumed after.

use log::warn;
use serde_json::{json, Value};

use super::{vcpus, Machine};
use crate::bus::lock;
use crate::platform::serial::{escape_bytes, OutputTail};
use crate::vstate::VcpuDump;

/// Every line of a dump starts with this, so that `grep vcpu-dump:` finds
/// it in a log.
pub const PREFIX: &str = "vcpu-dump:";

pub struct VmDump {
    /// The run state as query-status names it (the caller knows it).
    pub status: String,
    /// The vCPUs were running and were paused for the dump.
    pub paused_for_dump: bool,
    /// Why pausing failed, if it did (the dump still reads every vCPU
    /// that answers).
    pub pause_error: Option<String>,
    /// The first vCPU that triple-faulted, if one did.
    pub triple_fault: Option<u8>,
    pub vcpus: Vec<(u8, Result<VcpuDump, String>)>,
    /// None without COM1 (`--serial off`).
    pub serial: Option<OutputTail>,
}

impl Machine {
    /// Pauses the vCPUs if they run, reads each one's state, resumes them
    /// and reads COM1's last output. `status` is the run state to report.
    pub fn dump(&self, status: &str) -> VmDump {
        let pause = self.running && vcpus::ended(&self.exit).is_none();
        let mut pause_error = None;
        if pause {
            if let Err(e) = self.vcpus.pause() {
                pause_error = Some(e.to_string());
            }
        }
        let states = self.vcpus.dump();
        if pause {
            // Those that did not park get their pause, dump and resume in
            // that order whenever they come out of KVM_RUN.
            if let Err(e) = self.vcpus.resume() {
                warn!("resuming the vCPUs after the dump: {e}");
            }
        }
        VmDump {
            status: status.to_string(),
            paused_for_dump: pause,
            pause_error,
            triple_fault: self.vcpus.triple_faulted(),
            vcpus: states,
            serial: self.serial.as_ref().map(|s| lock(s, "COM1").output_tail()),
        }
    }
}

impl VmDump {
    /// The dump as log lines, each starting with [`PREFIX`]: a `begin`
    /// line, two per vCPU (registers, events), the serial line and `end`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut head = format!(
            "{PREFIX} begin: VM {}, {} vCPUs",
            self.status,
            self.vcpus.len()
        );
        if self.paused_for_dump {
            head.push_str("; vCPUs paused for the dump and resumed");
        }
        if let Some(e) = &self.pause_error {
            head.push_str(&format!("; pausing them failed: {e}"));
        }
        if let Some(i) = self.triple_fault {
            head.push_str(&format!("; vCPU {i} triple-faulted"));
        }
        out.push(head);
        for (i, r) in &self.vcpus {
            match r {
                Ok(d) => {
                    out.push(format!("{PREFIX} vcpu{i} {}", d.registers_line()));
                    out.push(format!("{PREFIX} vcpu{i} {}", d.events_line()));
                }
                Err(e) => out.push(format!("{PREFIX} vcpu{i} unreadable: {e}")),
            }
        }
        out.push(match &self.serial {
            Some(t) => format!(
                "{PREFIX} serial: last {} of {} bytes: \"{}\"",
                t.bytes.len(),
                t.total,
                escape_bytes(&t.bytes)
            ),
            None => format!("{PREFIX} serial: none (--serial off)"),
        });
        out.push(format!("{PREFIX} end"));
        out
    }

    /// As QMP's x-query-vcpu-dump returns it.
    pub fn to_json(&self) -> Value {
        let vcpus: Vec<Value> = self
            .vcpus
            .iter()
            .map(|(i, r)| match r {
                Ok(d) => d.to_json(),
                Err(e) => json!({"cpu-index": i, "error": e}),
            })
            .collect();
        let mut v = json!({
            "status": self.status,
            "paused-for-dump": self.paused_for_dump,
            "vcpus": vcpus,
        });
        if let Some(e) = &self.pause_error {
            v["pause-error"] = json!(e);
        }
        if let Some(i) = self.triple_fault {
            v["triple-fault-cpu"] = json!(i);
        }
        if let Some(t) = &self.serial {
            v["serial"] = json!({
                "total-bytes": t.total,
                "tail": escape_bytes(&t.bytes),
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(index: u8) -> VcpuDump {
        VcpuDump {
            index,
            rip: 0x100210,
            rsp: 0,
            rflags: 0x2,
            cs: 0x10,
            cr0: 0x8000_0011,
            cr2: 0,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            mp_state: 0,
            events: Default::default(),
        }
    }

    #[test]
    fn every_line_is_prefixed_and_the_dump_ends_with_end() {
        let d = VmDump {
            status: "running".into(),
            paused_for_dump: true,
            pause_error: None,
            triple_fault: None,
            vcpus: vec![
                (0, Ok(vcpu(0))),
                (1, Err("did not answer within 2 s".into())),
            ],
            serial: Some(OutputTail {
                bytes: b"C=1\n".to_vec(),
                total: 40,
            }),
        };
        let lines = d.lines();
        assert!(
            lines.iter().all(|l| l.starts_with("vcpu-dump: ")),
            "{lines:#?}"
        );
        assert_eq!(
            lines[0],
            "vcpu-dump: begin: VM running, 2 vCPUs; vCPUs paused for the dump and resumed"
        );
        assert!(lines[1].starts_with("vcpu-dump: vcpu0 rip=0x100210 "));
        assert!(lines[2].starts_with("vcpu-dump: vcpu0 exception=none "));
        assert_eq!(
            lines[3],
            "vcpu-dump: vcpu1 unreadable: did not answer within 2 s"
        );
        assert_eq!(
            lines[4],
            r#"vcpu-dump: serial: last 4 of 40 bytes: "C=1\n""#
        );
        assert_eq!(lines[5], "vcpu-dump: end");
        let j = d.to_json();
        assert_eq!(j["vcpus"][0]["rip"], 0x100210);
        assert_eq!(j["vcpus"][1]["error"], "did not answer within 2 s");
        assert_eq!(j["serial"]["tail"], r"C=1\n");
        assert_eq!(j["serial"]["total-bytes"], 40);
    }
}
