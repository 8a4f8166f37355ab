//! The VM's side of the QMP socket: each command acts on the controller.

use std::sync::Arc;

use serde_json::{json, Value};

use super::migration::{self, MigrationStatus};
use super::{lock, Controller, RunEnd, RunState};
use crate::bus::lock as lock_dev;
use crate::control::{Command, MigMode, QmpError, QmpHandler};
use crate::machine::DeviceHandle;
use crate::snapshot::uri::StreamUri;

pub struct Handler(pub Arc<Controller>);

/// Capabilities migrate-set-capabilities takes; the others QEMU has are
/// accepted with state false only.
const CAPABILITIES: &[&str] = &["x-ignore-shared", "events"];

/// query-vm-generation-id without the device (QEMU: "VM Generation ID
/// device not found").
pub const NO_VMGENID: &str = "the VM has no generation ID device (--vmgenid off)";

/// QEMU's path of a device given with id=ID.
const PERIPHERAL: &str = "/machine/peripheral/";

impl QmpHandler for Handler {
    fn execute(&self, command: Command) -> Result<Value, QmpError> {
        let ctl = &self.0;
        match command {
            Command::QueryStatus => {
                let s = ctl.state();
                Ok(
                    json!({"status": s.as_str(), "running": s == RunState::Running, "singlestep": false}),
                )
            }
            Command::QueryKvm => Ok(json!({"enabled": true, "present": true})),
            Command::QueryName => Ok(json!({})),
            Command::QueryVmGenerationId => ctl
                .with_machine(|m| Ok(m.vmgenid))
                .map_err(generic)?
                .map(|g| json!({"guid": g.guid.to_string()}))
                .ok_or_else(|| generic(NO_VMGENID)),
            Command::QueryCpusFast => {
                let cpus = ctl.with_machine(|m| Ok(m.vcpus.info())).unwrap_or_default();
                Ok(Value::Array(
                    cpus.iter()
                        .map(|c| {
                            json!({
                                "cpu-index": c.index,
                                "qom-path": format!("/machine/unattached/device[{}]", c.index),
                                "thread-id": c.thread_id,
                                "props": {"core-id": 0, "thread-id": 0, "socket-id": c.index},
                                "target": "x86_64",
                            })
                        })
                        .collect(),
                ))
            }
            Command::XQueryVcpuDump => ctl.dump().map(|d| d.to_json()).map_err(generic),
            Command::Stop => ctl.stop().map(|()| json!({})).map_err(generic),
            Command::Cont => ctl.cont().map(|()| json!({})).map_err(generic),
            Command::Quit => Ok(json!({})),
            Command::SystemPowerdown => {
                ctl.with_machine(|m| m.power_button()).map_err(generic)?;
                ctl.emit("POWERDOWN", None);
                Ok(json!({}))
            }
            Command::SystemReset => {
                // This VMM has no in-place reset: it ends with the reboot
                // status, as when the guest reboots, and a supervisor
                // starts it again.
                ctl.with_machine(|_| Ok(())).map_err(generic)?;
                Ok(json!({}))
            }
            Command::MigrateSetCapabilities { capabilities } => {
                for c in &capabilities {
                    if !CAPABILITIES.contains(&c.capability.as_str()) && c.state {
                        return Err(generic(format!(
                            "Migration capability '{}' is not supported by vmm; it supports {}",
                            c.capability,
                            CAPABILITIES.join(", ")
                        )));
                    }
                }
                let mut m = lock(&ctl.migration);
                if matches!(m.status, MigrationStatus::Setup | MigrationStatus::Active) {
                    return Err(generic("There's a migration process in progress"));
                }
                for c in capabilities {
                    match c.capability.as_str() {
                        "x-ignore-shared" => m.ignore_shared = c.state,
                        "events" => m.events = c.state,
                        _ => {}
                    }
                }
                Ok(json!({}))
            }
            Command::QueryMigrateCapabilities => {
                let m = lock(&ctl.migration);
                Ok(json!([
                    {"capability": "x-ignore-shared", "state": m.ignore_shared},
                    {"capability": "events", "state": m.events},
                ]))
            }
            Command::MigrateSetParameters(p) => {
                let mut m = lock(&ctl.migration);
                if let Some(mode) = p.mode {
                    m.mode = mode;
                    if mode == MigMode::CprReboot {
                        log::info!("migration mode cpr-reboot set: the next migrate saves for a restart of vmm");
                    }
                }
                for (k, v) in p.other {
                    m.other_params.insert(k, v);
                }
                Ok(json!({}))
            }
            Command::QueryMigrateParameters => {
                let m = lock(&ctl.migration);
                let mut v = json!({"mode": m.mode.as_str()});
                for (k, val) in &m.other_params {
                    v[k] = val.clone();
                }
                Ok(v)
            }
            Command::Migrate { uri, resume } => {
                if resume {
                    return Err(generic("Parameter 'resume' is not supported: vmm has no postcopy migration to resume"));
                }
                let uri = StreamUri::parse(&uri).map_err(|e| generic(e.to_string()))?;
                migration::start_outgoing(ctl, uri).map_err(generic)?;
                Ok(json!({}))
            }
            Command::QueryMigrate => Ok(lock(&ctl.migration).to_value()),
            Command::MigrateIncoming { uri, .. } => {
                let uri = StreamUri::parse(&uri).map_err(|e| generic(e.to_string()))?;
                migration::start_incoming(ctl, uri).map_err(generic)?;
                Ok(json!({}))
            }
            Command::Balloon { value } => {
                let target = u64::try_from(value)
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| generic("Parameter 'value' expects a size above zero"))?;
                ctl.with_machine(|m| {
                    let Some(b) = m.balloon() else {
                        return Ok(Err(QmpError::device_not_active(
                            "No balloon device has been activated",
                        )));
                    };
                    Ok(lock_dev(b, "--balloon")
                        .set_target(target)
                        .map_err(|e| generic(e.to_string())))
                })
                .map_err(generic)??;
                Ok(json!({}))
            }
            Command::QueryBalloon => ctl
                .with_machine(|m| {
                    Ok(m.balloon()
                        .map(|b| json!({"actual": lock_dev(b, "--balloon").actual_bytes()})))
                })
                .map_err(generic)?
                .ok_or_else(|| QmpError::device_not_active("No balloon device has been activated")),
            Command::QomSet {
                path,
                property,
                value,
            } => {
                let id = peripheral_id(&path)?;
                if property != "requested-size" {
                    return Err(generic(format!("Property '{property}' of {path} cannot be set; vmm sets requested-size of virtio-mem devices")));
                }
                let bytes = value.as_u64().ok_or_else(|| {
                    generic("Invalid parameter type for 'value', expected: integer")
                })?;
                ctl.with_machine(|m| {
                    Ok(match m.device(&id) {
                        Some(DeviceHandle::Mem(d)) => lock_dev(d, &id)
                            .set_requested(bytes)
                            .map_err(|e| generic(e.to_string())),
                        _ => Err(QmpError::device_not_found(format!(
                            "Device '{path}' not found"
                        ))),
                    })
                })
                .map_err(generic)??;
                Ok(json!({}))
            }
            Command::QomGet { path, property } => {
                let id = peripheral_id(&path)?;
                ctl.with_machine(|m| {
                    Ok(match m.device(&id) {
                        Some(DeviceHandle::Mem(d)) => {
                            let d = lock_dev(d, &id);
                            match property.as_str() {
                                "requested-size" => Ok(json!(d.requested_size())),
                                "size" => Ok(json!(d.plugged_size())),
                                "block-size" => Ok(json!(d.block_size())),
                                "max-size" => Ok(json!(d.region_size())),
                                _ => Err(generic(format!("Property '{property}' not found"))),
                            }
                        }
                        _ => Err(QmpError::device_not_found(format!(
                            "Device '{path}' not found"
                        ))),
                    })
                })
                .map_err(generic)?
            }
            Command::QueryMemoryDevices => ctl
                .with_machine(|m| {
                    Ok(m.slots
                        .iter()
                        .filter_map(|s| match &s.device {
                            DeviceHandle::Mem(d) => {
                                let d = lock_dev(d, &s.id);
                                Some(json!({
                                    "type": "virtio-mem",
                                    "data": {
                                        "id": s.id,
                                        "memaddr": d.addr().0,
                                        "requested-size": d.requested_size(),
                                        "size": d.plugged_size(),
                                        "max-size": d.region_size(),
                                        "block-size": d.block_size(),
                                        "node": 0,
                                        "memdev": format!("/objects/{}-mem", s.id),
                                    }
                                }))
                            }
                            _ => None,
                        })
                        .collect::<Vec<_>>())
                })
                .map(Value::Array)
                .or_else(|_| Ok(json!([]))),
            Command::QueryVersion | Command::QueryCommands => {
                Err(generic("answered by the protocol layer"))
            }
        }
    }

    fn after_reply(&self, command: &Command) {
        match command {
            // The last event before the process ends: written before it does.
            Command::Quit => {
                self.0.emit_last(
                    "SHUTDOWN",
                    Some(json!({"guest": false, "reason": "host-qmp-quit"})),
                );
                self.0.finish(RunEnd::Quit);
            }
            Command::SystemReset => {
                self.0.emit_last(
                    "RESET",
                    Some(json!({"guest": false, "reason": "host-qmp-system-reset"})),
                );
                self.0.finish(RunEnd::Vm(crate::exit::VmExit::Reboot));
            }
            _ => {}
        }
    }
}

fn generic(desc: impl Into<String>) -> QmpError {
    QmpError::generic(desc)
}

/// `/machine/peripheral/ID` -> ID.
fn peripheral_id(path: &str) -> Result<String, QmpError> {
    path.strip_prefix(PERIPHERAL)
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_string)
        .ok_or_else(|| {
            QmpError::device_not_found(format!(
                "Device '{path}' not found; vmm devices are {PERIPHERAL}ID with the id= they were given"
            ))
        })
}

/// Wires the balloon's size reports to BALLOON_CHANGE and each
/// virtio-mem device's plugged size to MEMORY_DEVICE_SIZE_CHANGE.
pub fn watch_devices(ctl: &Arc<Controller>) {
    let _ = ctl.with_machine(|m| {
        if let Some(b) = m.balloon() {
            let me = Arc::downgrade(ctl);
            lock_dev(b, "--balloon").set_actual_listener(Box::new(move |actual| {
                if let Some(c) = me.upgrade() {
                    c.emit("BALLOON_CHANGE", Some(json!({ "actual": actual })));
                }
            }));
        }
        for slot in &m.slots {
            if let DeviceHandle::Mem(d) = &slot.device {
                let me = Arc::downgrade(ctl);
                let id = slot.id.clone();
                lock_dev(d, &slot.name).set_size_listener(Box::new(move |size| {
                    if let Some(c) = me.upgrade() {
                        c.emit(
                            "MEMORY_DEVICE_SIZE_CHANGE",
                            Some(json!({
                                "id": id,
                                "size": size,
                                "qom-path": format!("{PERIPHERAL}{id}"),
                            })),
                        );
                    }
                }));
            }
        }
        Ok(())
    });
}
