//! The QMP wire format: the greeting, capabilities negotiation, input
//! framing, and the shape of replies, errors and events.
//!
//! Nothing here does I/O: [`Framer`] turns received bytes into JSON values,
//! [`Session`] turns one value into an [`Outcome`], and the `*_line`
//! functions produce the bytes to send. The server (`server.rs`) glues them
//! to a socket.
//!
//! Output follows QEMU's own writer: one JSON object per line ended by
//! "\r\n", `", "` and `": "` separators, and every character outside
//! printable ASCII escaped as `\uXXXX`.

use std::fmt;
use std::io;
use std::time::Duration;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use serde_json::{json, Map, Value};

use super::commands::{self, Command};

/// The QEMU release whose QMP behaviour this server follows, reported in
/// the greeting and by `query-version` (Kata's govmm refuses a major
/// below 5).
pub const QEMU_VERSION: (u64, u64, u64) = (10, 0, 0);

/// The most bytes one input value may take while it is being received.
/// Past it the client gets an error and is disconnected.
pub const MAX_INPUT: usize = 1 << 20;

/// The QMP capabilities offered in the greeting. `oob` is offered, as QEMU
/// 10 does, and may be enabled; no command of this server runs out of
/// band, so with it enabled `exec-oob` is accepted as a key and every
/// command refuses it ("The command X does not support OOB"), exactly
/// what QEMU answers for its own in-band-only commands.
pub const CAPABILITIES: &[&str] = &["oob"];

/// `package` in the greeting and in `query-version`.
pub fn package() -> String {
    format!("vmm {}", env!("CARGO_PKG_VERSION"))
}

/// QMP error classes, spelled on the wire as QEMU spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotFound,
    DeviceNotActive,
    KVMMissingCap,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            ErrorClass::GenericError,
            ErrorClass::CommandNotFound,
            ErrorClass::DeviceNotFound,
            ErrorClass::DeviceNotActive,
            ErrorClass::KVMMissingCap,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A QMP error reply: `{"error": {"class": CLASS, "desc": DESC}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// `GenericError`, the class of almost every QEMU error.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::GenericError, desc)
    }

    /// `CommandNotFound` for the command `cmd`, worded as QEMU words it.
    pub fn not_found(cmd: &str) -> Self {
        Self::new(
            ErrorClass::CommandNotFound,
            format!("The command {cmd} has not been found"),
        )
    }

    /// `DeviceNotFound`, e.g. "Device 'x' not found".
    pub fn device_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotFound, desc)
    }

    /// `DeviceNotActive`, e.g. QEMU's "No balloon device has been activated".
    pub fn device_not_active(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotActive, desc)
    }

    /// `KVMMissingCap`.
    pub fn kvm_missing_cap(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::KVMMissingCap, desc)
    }

    /// The error object as it appears under `"error"`.
    pub fn to_value(&self) -> Value {
        json!({"class": self.class.as_str(), "desc": self.desc})
    }
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for QmpError {}

// ---------------------------------------------------------------------------
// Output

/// serde_json formatting the way QEMU's JSON writer does.
struct QemuFormatter;

impl Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..'\x7f').contains(&c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{:04X}", u)?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write!(w, "\\u{:04X}", b),
        };
        w.write_all(s)
    }
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let mut ser = serde_json::Serializer::with_formatter(out, QemuFormatter);
    // Serializing a Value or a str into memory cannot fail.
    v.serialize(&mut ser).expect("JSON into memory");
}

/// A JSON value whose object members keep the order they are given in
/// (serde_json's own maps are sorted), for messages shaped as QEMU shapes
/// them.
enum Out<'a> {
    Obj(Vec<(&'a str, Out<'a>)>),
    Val(&'a Value),
    Owned(Value),
}

impl Out<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Out::Obj(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    write_json(out, *k);
                    out.extend_from_slice(b": ");
                    v.write(out);
                }
                out.push(b'}');
            }
            Out::Val(v) => write_json(out, *v),
            Out::Owned(v) => write_json(out, v),
        }
    }

    fn line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write(&mut out);
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// One value in QEMU's compact form, without a line end.
pub fn to_qemu_json(v: &Value) -> String {
    let mut out = Vec::new();
    write_json(&mut out, v);
    String::from_utf8(out).expect("the formatter writes ASCII")
}

/// The greeting sent on connect:
/// `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": "vmm 0.1.0"}, "capabilities": ["oob"]}}`.
pub fn greeting_line() -> Vec<u8> {
    let (major, minor, micro) = QEMU_VERSION;
    let caps = Value::from(CAPABILITIES.to_vec());
    Out::Obj(vec![(
        "QMP",
        Out::Obj(vec![
            ("version", version_out(major, minor, micro)),
            ("capabilities", Out::Owned(caps)),
        ]),
    )])
    .line()
}

fn version_out(major: u64, minor: u64, micro: u64) -> Out<'static> {
    Out::Obj(vec![
        (
            "qemu",
            Out::Obj(vec![
                ("micro", Out::Owned(micro.into())),
                ("minor", Out::Owned(minor.into())),
                ("major", Out::Owned(major.into())),
            ]),
        ),
        ("package", Out::Owned(package().into())),
    ])
}

/// The return value of `query-version`.
pub fn version_value() -> Value {
    let (major, minor, micro) = QEMU_VERSION;
    json!({"qemu": {"major": major, "minor": minor, "micro": micro}, "package": package()})
}

/// An event line: `{"timestamp": {"seconds": S, "microseconds": US}, "event": NAME, "data": DATA}`,
/// without `data` when there is none (as QEMU sends STOP and RESUME).
/// `since_epoch` is the wall-clock time of the event.
pub fn event_line(event: &str, data: Option<&Value>, since_epoch: Duration) -> Vec<u8> {
    let ts = Out::Obj(vec![
        ("seconds", Out::Owned(since_epoch.as_secs().into())),
        (
            "microseconds",
            Out::Owned(since_epoch.subsec_micros().into()),
        ),
    ]);
    let name = Value::from(event);
    let mut members = vec![("timestamp", ts), ("event", Out::Val(&name))];
    if let Some(d) = data {
        members.push(("data", Out::Val(d)));
    }
    Out::Obj(members).line()
}

/// The reply to one input: `{"return": V}` or `{"error": {...}}`, with the
/// input's `id` (any JSON value) echoed after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub result: Result<Value, QmpError>,
    pub id: Option<Value>,
}

impl Reply {
    pub fn ok(v: Value, id: Option<Value>) -> Self {
        Reply { result: Ok(v), id }
    }

    pub fn err(e: QmpError, id: Option<Value>) -> Self {
        Reply { result: Err(e), id }
    }

    pub fn line(&self) -> Vec<u8> {
        let mut members = Vec::with_capacity(2);
        match &self.result {
            Ok(v) => members.push(("return", Out::Val(v))),
            Err(e) => members.push((
                "error",
                Out::Obj(vec![
                    ("class", Out::Owned(e.class.as_str().into())),
                    ("desc", Out::Owned(e.desc.as_str().into())),
                ]),
            )),
        }
        if let Some(id) = &self.id {
            members.push(("id", Out::Val(id)));
        }
        Out::Obj(members).line()
    }
}

// ---------------------------------------------------------------------------
// Input framing

/// What the framer found in the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// One complete JSON value.
    Value(Value),
    /// Malformed input; the text is the error's `desc` ("JSON parse error, ...").
    /// The framer has already skipped the bad bytes.
    Error(String),
    /// A value grew past [`MAX_INPUT`] bytes before it was complete.
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between values.
    Idle,
    /// Inside an object or array, outside strings.
    Nested,
    /// Inside a string. `quote` is `"` or `'`; `top` is a string that is
    /// itself the whole value.
    Str { quote: u8, top: bool, escape: bool },
    /// A number or keyword at the top level, ended by whitespace or a
    /// structural character.
    Scalar,
}

/// Splits a byte stream into JSON values the way QEMU's JSON streamer does:
/// a value ends where its braces and brackets balance (strings are
/// tracked, so braces inside them do not count), whatever comes before or
/// after it, so clients may send values with or without newlines, several
/// in one write, or one split across many writes.
///
/// Each complete value is then parsed with serde_json. A malformed value is
/// therefore dropped as a whole, with one error, and the next value is
/// read normally: the connection stays usable. Further resynchronisation,
/// as in QEMU's lexer: a raw control character (such as a newline) inside a
/// string ends the bad value there, so an unterminated string costs one
/// line, and a stray `}` or `]` between values is an error of its own.
///
/// QEMU's extension of single-quoted strings (`{'execute': 'stop'}`) is
/// accepted: they are rewritten to standard JSON before parsing.
pub struct Framer {
    cur: Vec<u8>,
    state: State,
    depth: usize,
    limit: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    pub fn new() -> Self {
        Self::with_limit(MAX_INPUT)
    }

    pub fn with_limit(limit: usize) -> Self {
        Framer {
            cur: Vec::new(),
            state: State::Idle,
            depth: 0,
            limit,
        }
    }

    /// Whether part of a value has been received and not yet completed.
    pub fn has_partial(&self) -> bool {
        self.state != State::Idle
    }

    fn reset(&mut self) {
        self.cur.clear();
        self.state = State::Idle;
        self.depth = 0;
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        let frame = match serde_json::from_slice::<Value>(&self.cur) {
            Ok(v) => Frame::Value(v),
            Err(e) => Frame::Error(format!("JSON parse error, {e}")),
        };
        out.push(frame);
        self.reset();
    }

    fn push(&mut self, b: u8, out: &mut Vec<Frame>) -> bool {
        self.cur.push(b);
        if self.cur.len() > self.limit {
            self.reset();
            out.push(Frame::TooLong);
            return false;
        }
        true
    }

    /// Feeds received bytes; returns the frames they complete, in order.
    /// After a [`Frame::TooLong`] the rest of `data` is not looked at.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::Idle => match b {
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    b'{' | b'[' => {
                        self.depth = 1;
                        self.state = State::Nested;
                        self.cur.push(b);
                    }
                    b'"' | b'\'' => {
                        self.state = State::Str {
                            quote: b,
                            top: true,
                            escape: false,
                        };
                        self.cur.push(b'"');
                    }
                    b'}' | b']' => {
                        out.push(Frame::Error(format!(
                            "JSON parse error, stray '{}'",
                            b as char
                        )));
                    }
                    _ => {
                        self.state = State::Scalar;
                        self.cur.push(b);
                    }
                },
                State::Scalar => match b {
                    b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'[' | b'}' | b']' | b'"' | b'\'' => {
                        self.finish(&mut out);
                        continue; // look at this byte again, between values
                    }
                    _ => {
                        if !self.push(b, &mut out) {
                            return out;
                        }
                    }
                },
                State::Nested => {
                    match b {
                        b'"' | b'\'' => {
                            self.state = State::Str {
                                quote: b,
                                top: false,
                                escape: false,
                            };
                            if !self.push(b'"', &mut out) {
                                return out;
                            }
                        }
                        _ => {
                            if !self.push(b, &mut out) {
                                return out;
                            }
                        }
                    }
                    match b {
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                self.finish(&mut out);
                            }
                        }
                        _ => {}
                    }
                }
                State::Str { quote, top, escape } => {
                    if b < 0x20 {
                        out.push(Frame::Error(format!(
                            "JSON parse error, control character {b:#04x} inside a string"
                        )));
                        self.reset();
                        i += 1;
                        continue;
                    }
                    let ok = if escape {
                        self.state = State::Str {
                            quote,
                            top,
                            escape: false,
                        };
                        // QEMU accepts \' in either kind of string.
                        if b == b'\'' {
                            self.push(b, &mut out)
                        } else {
                            self.push(b'\\', &mut out) && self.push(b, &mut out)
                        }
                    } else if b == b'\\' {
                        self.state = State::Str {
                            quote,
                            top,
                            escape: true,
                        };
                        true
                    } else if b == quote {
                        let ok = self.push(b'"', &mut out);
                        if ok {
                            if top {
                                self.finish(&mut out);
                            } else {
                                self.state = State::Nested;
                            }
                        }
                        ok
                    } else if b == b'"' {
                        // A double quote inside a single-quoted string.
                        self.push(b'\\', &mut out) && self.push(b'"', &mut out)
                    } else {
                        self.push(b, &mut out)
                    };
                    if !ok {
                        return out;
                    }
                }
            }
            i += 1;
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Sessions

/// What to do with one input value.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send this reply; nothing else happens.
    Reply(Reply),
    /// `qmp_capabilities` succeeded: send this reply, and only then let
    /// events through to this client (qemu.qmp reads the reply to
    /// `qmp_capabilities` as the very next message).
    Negotiated(Reply),
    /// Run the command on the handler, then reply echoing `id`.
    Execute { command: Command, id: Option<Value> },
}

/// The state of one client connection: before or after capabilities
/// negotiation, and whether it enabled `oob`.
#[derive(Debug, Default)]
pub struct Session {
    negotiated: bool,
    oob: bool,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the client has completed `qmp_capabilities`.
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Whether the client enabled the `oob` capability.
    pub fn oob_enabled(&self) -> bool {
        self.oob
    }

    /// Decides what one complete input value asks for, with QEMU's checks
    /// in QEMU's order: the shape of the input, then the command name, then
    /// out-of-band use, then the arguments.
    pub fn handle(&mut self, input: Value) -> Outcome {
        let Value::Object(obj) = input else {
            return Outcome::Reply(Reply::err(
                QmpError::generic("QMP input must be a JSON object"),
                None,
            ));
        };
        let id = obj.get("id").cloned();
        match self.dispatch(&obj, &id) {
            Ok(outcome) => outcome,
            Err(mut e) => {
                if !self.negotiated && e.class == ErrorClass::CommandNotFound {
                    e.desc = "Expecting capabilities negotiation with 'qmp_capabilities'".into();
                }
                Outcome::Reply(Reply::err(e, id))
            }
        }
    }

    fn dispatch(
        &mut self,
        obj: &Map<String, Value>,
        id: &Option<Value>,
    ) -> Result<Outcome, QmpError> {
        let mut exec_key: Option<&str> = None;
        for (key, value) in obj {
            match key.as_str() {
                k @ ("execute" | "exec-oob") if k == "execute" || self.oob => {
                    if !value.is_string() {
                        return Err(QmpError::generic(format!(
                            "QMP input member '{k}' must be a string"
                        )));
                    }
                    if let Some(prev) = exec_key {
                        return Err(QmpError::generic(format!(
                            "QMP input member '{k}' clashes with '{prev}'"
                        )));
                    }
                    exec_key = Some(k);
                }
                "arguments" => {
                    if !value.is_object() {
                        return Err(QmpError::generic(
                            "QMP input member 'arguments' must be an object",
                        ));
                    }
                }
                "id" => {}
                k => {
                    return Err(QmpError::generic(format!(
                        "QMP input member '{k}' is unexpected"
                    )))
                }
            }
        }
        let Some(key) = exec_key else {
            return Err(QmpError::generic("QMP input lacks member 'execute'"));
        };
        let name = obj[key].as_str().unwrap_or_default();
        let oob = key == "exec-oob";
        let empty = Map::new();
        let args = obj
            .get("arguments")
            .and_then(Value::as_object)
            .unwrap_or(&empty);

        if name == "qmp_capabilities" {
            if oob {
                return Err(QmpError::generic(
                    "The command qmp_capabilities does not support OOB",
                ));
            }
            let enable_oob = commands::parse_qmp_capabilities(args)?;
            if self.negotiated {
                return Err(QmpError::new(
                    ErrorClass::CommandNotFound,
                    "Capabilities negotiation is already complete, command ignored",
                ));
            }
            self.negotiated = true;
            self.oob = enable_oob;
            return Ok(Outcome::Negotiated(Reply::ok(json!({}), id.clone())));
        }
        if !self.negotiated || !commands::is_command(name) {
            return Err(QmpError::not_found(name));
        }
        if oob {
            return Err(QmpError::generic(format!(
                "The command {name} does not support OOB"
            )));
        }
        let command = Command::parse(name, args)?;
        let reply = |v| Ok(Outcome::Reply(Reply::ok(v, id.clone())));
        match command {
            Command::QueryVersion => reply(version_value()),
            Command::QueryCommands => reply(commands::query_commands_value()),
            command => Ok(Outcome::Execute {
                command,
                id: id.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
