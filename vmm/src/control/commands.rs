//! The QMP commands this server knows, as a typed [`Command`], and the
//! parsing of their `arguments` with QEMU's error messages.
//!
//! Argument errors are `GenericError`s worded as QEMU's QAPI input visitor
//! words them, naming nested arguments by their full path
//! (`capabilities[0].state`):
//! - "Parameter 'X' is missing"
//! - "Invalid parameter type for 'X', expected: integer" (or string,
//!   boolean, object, array)
//! - "Parameter 'X' expects uint64" (unsigned and size arguments)
//! - "Parameter 'X' does not accept value 'V'" (enumerations)
//! - "Parameter 'X' is unexpected" (an argument the command does not take)

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::protocol::QmpError;

/// Every command name the server accepts, in the order `query-commands`
/// lists them.
pub const COMMAND_NAMES: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-status",
    "query-kvm",
    "query-cpus-fast",
    "stop",
    "cont",
    "quit",
    "system_powerdown",
    "system_reset",
    "migrate-set-capabilities",
    "query-migrate-capabilities",
    "migrate-set-parameters",
    "query-migrate-parameters",
    "migrate",
    "query-migrate",
    "migrate-incoming",
    "balloon",
    "query-balloon",
    "qom-set",
    "qom-get",
    "query-memory-devices",
    "query-name",
    "query-vm-generation-id",
    "x-query-vcpu-dump",
];

/// QEMU 10's migration capabilities (`MigrationCapability`): the names
/// `migrate-set-capabilities` accepts.
pub const MIGRATION_CAPABILITIES: &[&str] = &[
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
    "switchover-ack",
    "dirty-limit",
    "mapped-ram",
];

/// Whether `name` is a command of this server (`qmp_capabilities` included).
pub fn is_command(name: &str) -> bool {
    COMMAND_NAMES.contains(&name)
}

/// The return value of `query-commands`: `[{"name": "..."}, ...]`.
pub fn query_commands_value() -> Value {
    Value::Array(COMMAND_NAMES.iter().map(|n| json!({ "name": n })).collect())
}

/// One entry of `migrate-set-capabilities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationCapabilityStatus {
    /// One of [`MIGRATION_CAPABILITIES`].
    pub capability: String,
    pub state: bool,
}

/// `mode` of `migrate-set-parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigMode {
    Normal,
    CprReboot,
}

impl MigMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MigMode::Normal => "normal",
            MigMode::CprReboot => "cpr-reboot",
        }
    }
}

/// The arguments of `migrate-set-parameters`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrateParameters {
    /// `mode`, when given.
    pub mode: Option<MigMode>,
    /// The other QEMU migration parameters that were given (QEMU 10's
    /// `MigrateSetParameters` members, type-checked as QEMU checks them).
    /// vmm does not act on them; a handler may keep them so that
    /// `query-migrate-parameters` shows them back.
    pub other: BTreeMap<String, Value>,
}

/// A parsed QMP command. `qmp_capabilities` is not here: the protocol
/// layer handles it. The server answers `QueryVersion` and `QueryCommands`
/// itself; a [`QmpHandler`](super::QmpHandler) never receives them.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    QueryVersion,
    QueryCommands,
    /// Returns `{"running": bool, "status": "running"|"paused"|..., "singlestep": false}`.
    QueryStatus,
    /// Returns `{"enabled": bool, "present": bool}`.
    QueryKvm,
    QueryCpusFast,
    /// Pause the vCPUs; QEMU emits `STOP` before replying.
    Stop,
    /// Resume; QEMU emits `RESUME` before replying.
    Cont,
    /// End the process; the reply is flushed first (see
    /// [`QmpHandler::after_reply`](super::QmpHandler::after_reply)).
    Quit,
    SystemPowerdown,
    SystemReset,
    MigrateSetCapabilities {
        capabilities: Vec<MigrationCapabilityStatus>,
    },
    QueryMigrateCapabilities,
    MigrateSetParameters(MigrateParameters),
    QueryMigrateParameters,
    /// `uri` as QEMU takes it (`file:PATH`, `exec:CMD`, `unix:PATH`, ...).
    /// `detach` is accepted and ignored, as QEMU ignores it.
    Migrate {
        uri: String,
        resume: bool,
    },
    QueryMigrate,
    /// `exit-on-error` defaults to true, as in QEMU.
    MigrateIncoming {
        uri: String,
        exit_on_error: bool,
    },
    /// Target guest memory size in bytes (positive).
    Balloon {
        value: i64,
    },
    QueryBalloon,
    QomSet {
        path: String,
        property: String,
        value: Value,
    },
    QomGet {
        path: String,
        property: String,
    },
    QueryMemoryDevices,
    /// Returns `{}` when the VM has no name, `{"name": N}` otherwise.
    QueryName,
    /// Returns `{"guid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"}`, the VM
    /// Generation ID the guest sees now.
    QueryVmGenerationId,
    /// vmm's own (hence `x-`): every vCPU's registers, mp_state and
    /// pending events, and the guest's last serial output; a running VM's
    /// vCPUs are paused for it and resumed.
    XQueryVcpuDump,
}

impl Command {
    /// The command's QMP name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::QueryVersion => "query-version",
            Command::QueryCommands => "query-commands",
            Command::QueryStatus => "query-status",
            Command::QueryKvm => "query-kvm",
            Command::QueryCpusFast => "query-cpus-fast",
            Command::Stop => "stop",
            Command::Cont => "cont",
            Command::Quit => "quit",
            Command::SystemPowerdown => "system_powerdown",
            Command::SystemReset => "system_reset",
            Command::MigrateSetCapabilities { .. } => "migrate-set-capabilities",
            Command::QueryMigrateCapabilities => "query-migrate-capabilities",
            Command::MigrateSetParameters(_) => "migrate-set-parameters",
            Command::QueryMigrateParameters => "query-migrate-parameters",
            Command::Migrate { .. } => "migrate",
            Command::QueryMigrate => "query-migrate",
            Command::MigrateIncoming { .. } => "migrate-incoming",
            Command::Balloon { .. } => "balloon",
            Command::QueryBalloon => "query-balloon",
            Command::QomSet { .. } => "qom-set",
            Command::QomGet { .. } => "qom-get",
            Command::QueryMemoryDevices => "query-memory-devices",
            Command::QueryName => "query-name",
            Command::QueryVmGenerationId => "query-vm-generation-id",
            Command::XQueryVcpuDump => "x-query-vcpu-dump",
        }
    }

    /// Parses command `name` with its `arguments` object (empty when the
    /// input had none). An unknown name is `CommandNotFound`; argument
    /// problems are `GenericError`s worded as QEMU words them.
    pub fn parse(name: &str, args: &Map<String, Value>) -> Result<Command, QmpError> {
        let mut a = Args::new(args, String::new());
        let no_args = |c: Command| move |a: Args| a.finish().map(|()| c);
        let cmd = match name {
            "query-version" => no_args(Command::QueryVersion)(a)?,
            "query-commands" => no_args(Command::QueryCommands)(a)?,
            "query-status" => no_args(Command::QueryStatus)(a)?,
            "query-kvm" => no_args(Command::QueryKvm)(a)?,
            "query-cpus-fast" => no_args(Command::QueryCpusFast)(a)?,
            "stop" => no_args(Command::Stop)(a)?,
            "cont" => no_args(Command::Cont)(a)?,
            "quit" => no_args(Command::Quit)(a)?,
            "system_powerdown" => no_args(Command::SystemPowerdown)(a)?,
            "system_reset" => no_args(Command::SystemReset)(a)?,
            "query-migrate-capabilities" => no_args(Command::QueryMigrateCapabilities)(a)?,
            "query-migrate-parameters" => no_args(Command::QueryMigrateParameters)(a)?,
            "query-migrate" => no_args(Command::QueryMigrate)(a)?,
            "query-balloon" => no_args(Command::QueryBalloon)(a)?,
            "query-memory-devices" => no_args(Command::QueryMemoryDevices)(a)?,
            "query-name" => no_args(Command::QueryName)(a)?,
            "query-vm-generation-id" => no_args(Command::QueryVmGenerationId)(a)?,
            "x-query-vcpu-dump" => no_args(Command::XQueryVcpuDump)(a)?,
            "migrate-set-capabilities" => parse_set_capabilities(a)?,
            "migrate-set-parameters" => parse_set_parameters(a)?,
            "migrate" => {
                let uri = a.opt_str("uri")?;
                let channels = a.opt("channels");
                a.opt_bool("detach")?;
                let resume = a.opt_bool("resume")?.unwrap_or(false);
                a.finish()?;
                Command::Migrate {
                    uri: uri_or_channels(uri, channels)?,
                    resume,
                }
            }
            "migrate-incoming" => {
                let uri = a.opt_str("uri")?;
                let channels = a.opt("channels");
                let exit_on_error = a.opt_bool("exit-on-error")?.unwrap_or(true);
                a.finish()?;
                Command::MigrateIncoming {
                    uri: uri_or_channels(uri, channels)?,
                    exit_on_error,
                }
            }
            "balloon" => {
                let value = a.int("value")?;
                a.finish()?;
                if value <= 0 {
                    // QEMU's own check, worded as QEMU words it.
                    return Err(QmpError::generic("Parameter 'target' expects a size"));
                }
                Command::Balloon { value }
            }
            "qom-set" => {
                let path = a.str("path")?;
                let property = a.str("property")?;
                let value = a.required("value")?.clone();
                a.finish()?;
                Command::QomSet {
                    path,
                    property,
                    value,
                }
            }
            "qom-get" => {
                let path = a.str("path")?;
                let property = a.str("property")?;
                a.finish()?;
                Command::QomGet { path, property }
            }
            _ => return Err(QmpError::not_found(name)),
        };
        Ok(cmd)
    }
}

/// The arguments of `qmp_capabilities` (`{"enable": ["oob"]}` or none);
/// returns whether `oob` is to be enabled.
pub fn parse_qmp_capabilities(args: &Map<String, Value>) -> Result<bool, QmpError> {
    let mut a = Args::new(args, String::new());
    let mut oob = false;
    if let Some(list) = a.opt_array("enable")? {
        for (i, item) in list.iter().enumerate() {
            let Some(s) = item.as_str() else {
                return Err(invalid_type(&format!("enable[{i}]"), "string"));
            };
            // QEMU names list elements 'null' in this message.
            if !super::protocol::CAPABILITIES.contains(&s) {
                return Err(QmpError::generic(format!(
                    "Parameter 'null' does not accept value '{s}'"
                )));
            }
            oob |= s == "oob";
        }
    }
    a.finish()?;
    Ok(oob)
}

fn parse_set_capabilities(mut a: Args) -> Result<Command, QmpError> {
    let list = a.array("capabilities")?;
    let mut capabilities = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let full = format!("capabilities[{i}]");
        let Some(obj) = item.as_object() else {
            return Err(invalid_type(&full, "object"));
        };
        let mut e = Args::new(obj, format!("{full}."));
        let capability = e.enumeration("capability", MIGRATION_CAPABILITIES)?;
        let state = e.bool("state")?;
        e.finish()?;
        capabilities.push(MigrationCapabilityStatus { capability, state });
    }
    a.finish()?;
    Ok(Command::MigrateSetCapabilities { capabilities })
}

/// How QEMU types a `migrate-set-parameters` member.
#[derive(Clone, Copy)]
enum ParamType {
    /// uint8, uint32, uint64 or size: the QAPI name and its largest value.
    Unsigned(&'static str, u64),
    Bool,
    /// `StrOrNull`: a string, or null to reset it.
    StrOrNull,
    Enum(&'static [&'static str]),
    /// A list of structures, only checked to be an array.
    Array,
}

const U8: ParamType = ParamType::Unsigned("uint8", u8::MAX as u64);
const U32: ParamType = ParamType::Unsigned("uint32", u32::MAX as u64);
const U64: ParamType = ParamType::Unsigned("uint64", u64::MAX);
const SIZE: ParamType = ParamType::Unsigned("size", u64::MAX);

/// QEMU 10's `MigrateSetParameters` members other than `mode`, in
/// schema order.
const MIGRATION_PARAMETERS: &[(&str, ParamType)] = &[
    ("announce-initial", SIZE),
    ("announce-max", SIZE),
    ("announce-rounds", SIZE),
    ("announce-step", SIZE),
    ("throttle-trigger-threshold", U8),
    ("cpu-throttle-initial", U8),
    ("cpu-throttle-increment", U8),
    ("cpu-throttle-tailslow", ParamType::Bool),
    ("tls-creds", ParamType::StrOrNull),
    ("tls-hostname", ParamType::StrOrNull),
    ("tls-authz", ParamType::StrOrNull),
    ("max-bandwidth", SIZE),
    ("avail-switchover-bandwidth", SIZE),
    ("downtime-limit", U64),
    ("x-checkpoint-delay", U32),
    ("multifd-channels", U8),
    ("xbzrle-cache-size", SIZE),
    ("max-postcopy-bandwidth", SIZE),
    ("max-cpu-throttle", U8),
    (
        "multifd-compression",
        ParamType::Enum(&["none", "zlib", "zstd", "qpl", "uadk", "qatzip"]),
    ),
    ("multifd-zlib-level", U8),
    ("multifd-qatzip-level", U8),
    ("multifd-zstd-level", U8),
    ("block-bitmap-mapping", ParamType::Array),
    ("x-vcpu-dirty-limit-period", U64),
    ("vcpu-dirty-limit", U64),
    (
        "zero-page-detection",
        ParamType::Enum(&["none", "legacy", "multifd"]),
    ),
    ("direct-io", ParamType::Bool),
];

fn parse_set_parameters(mut a: Args) -> Result<Command, QmpError> {
    let mut params = MigrateParameters::default();
    for &(name, ty) in MIGRATION_PARAMETERS {
        let Some(v) = a.opt(name) else { continue };
        match ty {
            ParamType::Unsigned(qapi, max) => {
                let n = unsigned(v, name)?;
                if n > max {
                    return Err(QmpError::generic(format!(
                        "Parameter '{name}' expects {qapi}"
                    )));
                }
            }
            ParamType::Bool => {
                if !v.is_boolean() {
                    return Err(invalid_type(name, "boolean"));
                }
            }
            ParamType::StrOrNull => {
                if !(v.is_string() || v.is_null()) {
                    return Err(invalid_type(name, "StrOrNull"));
                }
            }
            ParamType::Enum(values) => {
                enum_value(v, name, name, values)?;
            }
            ParamType::Array => {
                if !v.is_array() {
                    return Err(invalid_type(name, "array"));
                }
            }
        }
        params.other.insert(name.to_string(), v.clone());
    }
    if let Some(v) = a.opt("mode") {
        let mode = enum_value(v, "mode", "mode", &["normal", "cpr-reboot", "cpr-transfer"])?;
        params.mode = Some(match mode.as_str() {
            "normal" => MigMode::Normal,
            "cpr-reboot" => MigMode::CprReboot,
            other => {
                return Err(QmpError::generic(format!(
                    "Migration mode '{other}' is not supported by vmm; use 'normal' or 'cpr-reboot'"
                )))
            }
        });
    }
    a.finish()?;
    Ok(Command::MigrateSetParameters(params))
}

/// `migrate` and `migrate-incoming` take exactly one of `uri` and
/// `channels` (QEMU 8.2+). vmm takes the destination as a URI only.
fn uri_or_channels(uri: Option<String>, channels: Option<&Value>) -> Result<String, QmpError> {
    match (uri, channels) {
        (Some(uri), None) => Ok(uri),
        (None, Some(_)) => Err(QmpError::generic(
            "vmm does not support the 'channels' argument; give the destination as 'uri'",
        )),
        _ => Err(QmpError::generic(
            "need either 'uri' or 'channels' argument",
        )),
    }
}

fn invalid_type(full: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{full}', expected: {expected}"
    ))
}

/// QEMU's unsigned input: a non-negative integer, or a negative one taken
/// as its two's complement "for backward compatibility".
fn unsigned(v: &Value, full: &str) -> Result<u64, QmpError> {
    v.as_u64()
        .or_else(|| v.as_i64().map(|n| n as u64))
        .ok_or_else(|| QmpError::generic(format!("Parameter '{full}' expects uint64")))
}

/// An enumeration member: a string (else a type error naming `full`) among
/// `values` (else an error naming the short `name`, as QEMU does).
fn enum_value(v: &Value, full: &str, name: &str, values: &[&str]) -> Result<String, QmpError> {
    let Some(s) = v.as_str() else {
        return Err(invalid_type(full, "string"));
    };
    if !values.contains(&s) {
        return Err(QmpError::generic(format!(
            "Parameter '{name}' does not accept value '{s}'"
        )));
    }
    Ok(s.to_string())
}

/// The members of one arguments object, read in schema order; `finish`
/// refuses the members nobody asked for.
struct Args<'a> {
    map: &'a Map<String, Value>,
    /// Full name of the object, with a trailing '.', or empty at the top.
    prefix: String,
    seen: Vec<&'a str>,
}

impl<'a> Args<'a> {
    fn new(map: &'a Map<String, Value>, prefix: String) -> Self {
        Args {
            map,
            prefix,
            seen: Vec::new(),
        }
    }

    fn full(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    fn opt(&mut self, name: &str) -> Option<&'a Value> {
        let (k, v) = self.map.get_key_value(name)?;
        self.seen.push(k.as_str());
        Some(v)
    }

    fn required(&mut self, name: &str) -> Result<&'a Value, QmpError> {
        self.opt(name)
            .ok_or_else(|| QmpError::generic(format!("Parameter '{}' is missing", self.full(name))))
    }

    fn str(&mut self, name: &str) -> Result<String, QmpError> {
        let v = self.required(name)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| invalid_type(&self.full(name), "string"))
    }

    fn opt_str(&mut self, name: &str) -> Result<Option<String>, QmpError> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| invalid_type(&self.full(name), "string")),
        }
    }

    fn int(&mut self, name: &str) -> Result<i64, QmpError> {
        let v = self.required(name)?;
        v.as_i64()
            .ok_or_else(|| invalid_type(&self.full(name), "integer"))
    }

    fn bool(&mut self, name: &str) -> Result<bool, QmpError> {
        let v = self.required(name)?;
        v.as_bool()
            .ok_or_else(|| invalid_type(&self.full(name), "boolean"))
    }

    fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, QmpError> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| invalid_type(&self.full(name), "boolean")),
        }
    }

    fn array(&mut self, name: &str) -> Result<&'a Vec<Value>, QmpError> {
        let v = self.required(name)?;
        v.as_array()
            .ok_or_else(|| invalid_type(&self.full(name), "array"))
    }

    fn opt_array(&mut self, name: &str) -> Result<Option<&'a Vec<Value>>, QmpError> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| invalid_type(&self.full(name), "array")),
        }
    }

    fn enumeration(&mut self, name: &str, values: &[&str]) -> Result<String, QmpError> {
        let v = self.required(name)?;
        enum_value(v, &self.full(name), name, values)
    }

    fn finish(self) -> Result<(), QmpError> {
        match self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            Some(k) => Err(QmpError::generic(format!(
                "Parameter '{}{}' is unexpected",
                self.prefix, k
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
