//! `qmp_input`: what a QMP client sends, as the server takes it: the
//! framer splitting bytes into JSON values, the session deciding what
//! each asks for (negotiation, command names, arguments), the reply lines,
//! and the parts of executing a command that need no running VM: the
//! migration URI, a balloon target, a virtio-mem requested size.
//!
//! Input: `chunk u8` (0: the bytes arrive in one read, else in reads of
//! that many bytes), `flags u8` (bit 0: a 256-byte input limit instead of
//! 1 MiB, so that the overlong-input path is reachable), then the bytes.
//!
//! Checked on every input: the framer finds the same values however the
//! bytes are split into reads, and every reply is one valid JSON object
//! in printable ASCII ending in CRLF that echoes the input's `id`.

use devices::virtio::balloon::{Balloon, BalloonConfig};
use devices::virtio::mem::Mem;
use serde_json::Value;
use vm_memory::GuestAddress;
use vmm::control::commands::Command;
use vmm::control::protocol::{Frame, Framer, Outcome, QmpError, Reply, Session, MAX_INPUT};
use vmm::snapshot::uri::StreamUri;

use super::guest::{self, MEM_BASE};

/// Runs one input; returns how many values got a successful reply.
pub fn run(data: &[u8]) -> usize {
    let [chunk, flags, bytes @ ..] = data else {
        return 0;
    };
    let limit = if flags & 1 != 0 { 256 } else { MAX_INPUT };
    let whole = until_too_long(Framer::with_limit(limit).feed(bytes));
    let mut framer = Framer::with_limit(limit);
    let mut pieces = Vec::new();
    let step = if *chunk == 0 {
        bytes.len().max(1)
    } else {
        usize::from(*chunk)
    };
    for piece in bytes.chunks(step) {
        pieces.extend(framer.feed(piece));
        if pieces.contains(&Frame::TooLong) {
            break;
        }
    }
    let pieces = until_too_long(pieces);
    assert_eq!(whole, pieces, "framing depends on how the input was split");

    let mut session = Session::new();
    let mut ok = 0;
    for frame in whole {
        match frame {
            Frame::Value(v) => {
                let id = v.as_object().and_then(|o| o.get("id")).cloned();
                let reply = match session.handle(v) {
                    Outcome::Reply(r) | Outcome::Negotiated(r) => r,
                    Outcome::Execute { command, id } => Reply {
                        result: execute(&command),
                        id,
                    },
                };
                ok += usize::from(reply.result.is_ok());
                check_line(&reply.line(), id.as_ref());
            }
            Frame::Error(desc) => {
                check_line(&Reply::err(QmpError::generic(desc), None).line(), None)
            }
            Frame::TooLong => break,
        }
    }
    ok
}

/// The frames up to and including the first `TooLong`, after which the
/// server disconnects.
fn until_too_long(mut frames: Vec<Frame>) -> Vec<Frame> {
    if let Some(i) = frames.iter().position(|f| *f == Frame::TooLong) {
        frames.truncate(i + 1);
    }
    frames
}

/// The part of running `command` that needs no VM.
fn execute(command: &Command) -> Result<Value, QmpError> {
    let generic = |e: String| QmpError::generic(e);
    match command {
        Command::Migrate { uri, .. } | Command::MigrateIncoming { uri, .. } => {
            StreamUri::parse(uri).map_err(|e| generic(e.to_string()))?;
        }
        Command::Balloon { value } => {
            let target = u64::try_from(*value).map_err(|e| generic(e.to_string()))?;
            let config = BalloonConfig {
                stats: true,
                ..BalloonConfig::default()
            };
            let mut b = Balloon::new(&config, guest::boot_ram()).expect("a valid balloon");
            b.set_target(target).map_err(|e| generic(e.to_string()))?;
        }
        Command::QomSet { value, .. } => {
            let bytes = value
                .as_u64()
                .ok_or_else(|| generic("not an integer".into()))?;
            let mut m = Mem::new(
                &guest::mem_config(0),
                GuestAddress(MEM_BASE),
                guest::ram_with_mem(),
            )
            .expect("the virtio-mem region is mapped");
            m.set_requested(bytes).map_err(|e| generic(e.to_string()))?;
        }
        _ => {}
    }
    Ok(Value::Object(Default::default()))
}

fn check_line(line: &[u8], id: Option<&Value>) {
    let text = std::str::from_utf8(line).expect("a reply is ASCII");
    let body = text.strip_suffix("\r\n").expect("a reply ends in CRLF");
    assert!(
        body.bytes().all(|b| (b' '..0x7f).contains(&b)),
        "a reply is printable ASCII: {body}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let obj = v.as_object().expect("a reply is an object");
    assert_eq!(obj.get("id"), id, "the reply echoes the input's id");
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seed =
        |chunk: u8, flags: u8, text: &str| [vec![chunk, flags], text.as_bytes().to_vec()].concat();
    vec![
        (
            "session",
            seed(
                0,
                0,
                concat!(
                    "{\"execute\": \"qmp_capabilities\"}\n",
                    "{\"execute\": \"query-status\", \"id\": 1}\n",
                    "{\"execute\": \"query-version\"}\n",
                    "{\"execute\": \"stop\"}{\"execute\": \"cont\"}\n",
                    "{\"execute\": \"balloon\", \"arguments\": {\"value\": 131072}}\n",
                    "{\"execute\": \"qom-set\", \"arguments\": {\"path\": \"/machine/peripheral/mem0\", \"property\": \"requested-size\", \"value\": 2097152}}\n",
                    "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"file:/tmp/snap\"}, \"id\": \"m1\"}\n",
                    "{\"execute\": \"migrate-incoming\", \"arguments\": {\"uri\": \"exec:cat /tmp/snap\"}}\n",
                    "{\"execute\": \"query-commands\"}\n",
                ),
            ),
        ),
        (
            "qemu-quirks-in-pieces",
            seed(
                5,
                0,
                concat!(
                    "{'execute': 'qmp_capabilities', 'arguments': {'enable': ['oob']}}",
                    "{'exec-oob': 'query-status', 'id': {'a': [1, 2.5, null]}}\r\n",
                    "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": [{\"capability\": \"x-ignore-shared\", \"state\": true}]}}\n",
                    "{\"execute\": \"migrate-set-parameters\", \"arguments\": {\"mode\": \"cpr-reboot\"}}\n",
                    "{\"execute\": \"qom-get\", \"arguments\": {\"path\": \"/machine/peripheral/mem0\", \"property\": \"size\"}}\n",
                    "\"str\\u00e9ing\" 42 ] {\"execute\": \"nope\", \"id\": \"\\u2603\"}\n",
                ),
            ),
        ),
        (
            "malformed",
            seed(
                1,
                0,
                concat!(
                    "{\"execute\": \"query-status\"}\n",
                    "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"nope\"]}}\n",
                    "{\"execute\": \"qmp_capabilities\"}\n",
                    "{\"execute\": 1}\n{\"execute\": \"stop\", \"extra\": 1}\n",
                    "{\"execute\": \"balloon\", \"arguments\": {\"value\": -1}}\n",
                    "{\"execute\": \"stop\", \"arguments\": {\"x\": 1}}\n",
                    "{\"unterminated: \"\n{\"execute\": \"cont\"}\n",
                    "[1, 2, {\"x\": }]\n",
                ),
            ),
        ),
        (
            "too-long",
            seed(
                0,
                1,
                &format!(
                    "{{\"execute\": \"qmp_capabilities\"}}{{\"id\": \"{}\"}}{{\"execute\": \"stop\"}}",
                    "x".repeat(400)
                ),
            ),
        ),
    ]
}
