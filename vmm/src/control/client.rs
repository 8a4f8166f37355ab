//! `vmm ctl`: a one-shot QMP client for scripts and people.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::protocol::{ErrorClass, QmpError};
use super::ControlError;

struct Conn {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    start: Instant,
    deadline: Instant,
}

impl Conn {
    fn timeout(&self, waiting: &str) -> ControlError {
        ControlError::Timeout {
            secs: self.start.elapsed().as_secs_f64(),
            waiting: format!("waiting for {waiting}"),
        }
    }

    fn send(&mut self, msg: &Value) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(msg).expect("JSON into memory");
        line.push(b'\n');
        self.stream.write_all(&line)?;
        Ok(())
    }

    /// The next message from the server.
    fn next(&mut self, waiting: &str) -> Result<Value, ControlError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout(waiting));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    return Err(ControlError::Protocol(format!(
                        "the server closed the connection while vmm ctl was waiting for {waiting}"
                    )))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timeout(waiting))
                }
                Err(e) => return Err(e.into()),
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&line).map_err(|e| {
                ControlError::Protocol(format!(
                    "the server sent invalid JSON ({e}): {}",
                    line.trim()
                ))
            });
        }
    }

    /// The next reply (a message with `return` or `error`); events read on
    /// the way are kept in `events`.
    fn reply(&mut self, waiting: &str, events: &mut Vec<Value>) -> Result<Value, ControlError> {
        loop {
            let msg = self.next(waiting)?;
            if msg.get("event").is_some() {
                events.push(msg);
                continue;
            }
            if let Some(err) = msg.get("error") {
                let class = err.get("class").and_then(Value::as_str).unwrap_or_default();
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or_default();
                return Err(ControlError::Qmp(QmpError::new(
                    ErrorClass::from_name(class).unwrap_or(ErrorClass::GenericError),
                    desc,
                )));
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            return Err(ControlError::Protocol(format!(
                "unexpected message while waiting for {waiting}: {msg}"
            )));
        }
    }
}

/// Runs one QMP command on the server at `socket`: connects, reads the
/// greeting, negotiates, sends `{"execute": command, "arguments": args}`
/// (`args` is JSON text for an object) and returns the reply's `return`
/// as pretty JSON. With `wait_event`, then waits for that event (one that
/// arrived before the reply counts) and appends it, pretty, after a
/// newline. `timeout` bounds the whole exchange.
///
/// A QMP error reply is [`ControlError::Qmp`]; a socket that cannot be
/// reached is [`ControlError::Connect`]; invalid `args` is
/// [`ControlError::BadArgs`].
pub fn run_ctl(
    socket: &Path,
    command: &str,
    args: Option<&str>,
    wait_event: Option<&str>,
    timeout: Duration,
) -> Result<String, ControlError> {
    let arguments = match args {
        None => None,
        Some(text) => {
            let bad = |reason: String| ControlError::BadArgs {
                text: text.to_string(),
                reason,
            };
            let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
            if !v.is_object() {
                return Err(bad("the arguments must be a JSON object".into()));
            }
            Some(v)
        }
    };

    let stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_path_buf(),
        exists: socket.symlink_metadata().is_ok(),
        source,
    })?;
    let start = Instant::now();
    let mut conn = Conn {
        reader: BufReader::new(stream.try_clone()?),
        stream,
        start,
        deadline: start + timeout,
    };

    let greeting = conn.next("the QMP greeting")?;
    if greeting.get("QMP").is_none() {
        return Err(ControlError::Protocol(format!(
            "not a QMP greeting: {greeting}"
        )));
    }
    let mut events = Vec::new();
    conn.send(&json!({"execute": "qmp_capabilities"}))?;
    conn.reply("the reply to qmp_capabilities", &mut events)?;

    let mut msg = json!({ "execute": command });
    if let Some(a) = arguments {
        msg["arguments"] = a;
    }
    conn.send(&msg)?;
    let ret = conn.reply(&format!("the reply to {command}"), &mut events)?;
    let mut out = serde_json::to_string_pretty(&ret).expect("JSON into memory");

    if let Some(name) = wait_event {
        let is_it = |m: &Value| m.get("event").and_then(Value::as_str) == Some(name);
        let event = match events.into_iter().find(is_it) {
            Some(e) => e,
            None => loop {
                let m = conn.next(&format!("event {name}"))?;
                if is_it(&m) {
                    break m;
                }
            },
        };
        out.push('\n');
        out.push_str(&serde_json::to_string_pretty(&event).expect("JSON into memory"));
    }
    Ok(out)
}
