//! The server over real Unix sockets, with a small recording handler.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::control::protocol::ErrorClass;
use crate::control::{run_ctl, COMMAND_NAMES};

/// Records commands; `stop`/`cont` emit STOP/RESUME before replying;
/// `query-migrate` is slow; `quit` waits in `after_reply` for the test to
/// say it has the reply.
#[derive(Default)]
struct TestHandler {
    commands: Mutex<Vec<Command>>,
    events: OnceLock<EventSender>,
    after: Mutex<Vec<Command>>,
    quit_gate: Mutex<Option<mpsc::Receiver<()>>>,
    quit_saw_reply: Mutex<Option<bool>>,
}

impl QmpHandler for TestHandler {
    fn execute(&self, command: Command) -> Result<Value, QmpError> {
        self.commands.lock().unwrap().push(command.clone());
        match command {
            Command::Stop => {
                self.events.get().unwrap().emit("STOP", None);
                Ok(json!({}))
            }
            Command::Cont => {
                self.events.get().unwrap().emit("RESUME", None);
                Ok(json!({}))
            }
            Command::QueryStatus => {
                Ok(json!({"running": true, "singlestep": false, "status": "running"}))
            }
            Command::QueryMigrate => {
                thread::sleep(Duration::from_millis(300));
                Ok(json!({"status": "completed"}))
            }
            Command::SystemReset => panic!("the test handler panics on system_reset"),
            Command::Balloon { .. } => Err(QmpError::device_not_active(
                "No balloon device has been activated",
            )),
            _ => Ok(json!({})),
        }
    }

    fn after_reply(&self, command: &Command) {
        if *command == Command::Quit {
            let gate = self.quit_gate.lock().unwrap().take();
            let saw = gate.map(|g| g.recv_timeout(Duration::from_secs(5)).is_ok());
            *self.quit_saw_reply.lock().unwrap() = saw;
        }
        self.after.lock().unwrap().push(command.clone());
    }
}

fn sock_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "vmm-qmp-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

struct Server {
    path: PathBuf,
    handler: Arc<TestHandler>,
    events: EventSender,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn start() -> Server {
    let path = sock_path();
    let handler = Arc::new(TestHandler::default());
    let (events, _) = QmpServer::start(QmpListen::Path(path.clone()), handler.clone()).unwrap();
    handler.events.set(events.clone()).ok().unwrap();
    Server {
        path,
        handler,
        events,
    }
}

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let w = UnixStream::connect(path).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Client { w, r }
    }

    /// Connects, checks the greeting and negotiates.
    fn ready(path: &Path) -> Client {
        let mut c = Client::connect(path);
        assert!(c.recv().get("QMP").is_some());
        c.send(br#"{"execute": "qmp_capabilities"}"#);
        assert_eq!(c.recv(), json!({"return": {}}));
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("a line before the timeout");
        assert!(n > 0, "unexpected EOF");
        assert!(l.ends_with("\r\n"), "{l:?} does not end with \\r\\n");
        l
    }

    fn recv(&mut self) -> Value {
        serde_json::from_str(&self.line()).unwrap()
    }

    fn exec(&mut self, msg: Value) -> Value {
        self.send(msg.to_string().as_bytes());
        self.recv()
    }

    /// Whether nothing arrives within `ms`.
    fn quiet_for(&mut self, ms: u64) -> bool {
        self.w
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .unwrap();
        let mut l = String::new();
        let r = self.r.read_line(&mut l);
        self.w
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        matches!(r, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock) && l.is_empty()
    }

    fn at_eof(&mut self) -> bool {
        let mut l = String::new();
        matches!(self.r.read_line(&mut l), Ok(0))
    }
}

fn error(class: &str, desc: &str) -> Value {
    json!({"error": {"class": class, "desc": desc}})
}

#[test]
fn greeting_then_negotiation_then_commands() {
    let s = start();
    let mut c = Client::connect(&s.path);
    assert_eq!(
        c.line(),
        format!(
            "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": 0, \"minor\": 0, \"major\": 10}}, \"package\": \"vmm {}\"}}, \"capabilities\": [\"oob\"]}}}}\r\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        c.exec(json!({"execute": "query-status"})),
        error(
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'"
        )
    );
    assert_eq!(
        c.exec(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}})),
        json!({"return": {}})
    );
    assert_eq!(
        c.exec(json!({"execute": "qmp_capabilities"})),
        error(
            "CommandNotFound",
            "Capabilities negotiation is already complete, command ignored"
        )
    );
    assert_eq!(
        c.exec(json!({"execute": "query-status", "id": {"seq": 1}})),
        json!({"return": {"running": true, "singlestep": false, "status": "running"}, "id": {"seq": 1}})
    );
    let v = c.exec(json!({"execute": "query-version"}));
    assert_eq!(v["return"]["qemu"]["major"], 10);
    let cmds = c.exec(json!({"execute": "query-commands"}));
    assert_eq!(
        cmds["return"].as_array().unwrap().len(),
        COMMAND_NAMES.len()
    );
    // The handler saw only what it has to answer.
    assert_eq!(
        *s.handler.commands.lock().unwrap(),
        vec![Command::QueryStatus]
    );
}

#[test]
fn every_input_error_reaches_the_client_with_its_id() {
    let s = start();
    let mut c = Client::ready(&s.path);
    let cases = [
        (
            json!([]),
            error("GenericError", "QMP input must be a JSON object"),
        ),
        (
            json!({"id": 1}),
            json!({"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}, "id": 1}),
        ),
        (
            json!({"execute": 2, "id": "a"}),
            json!({"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}, "id": "a"}),
        ),
        (
            json!({"execute": "stop", "arguments": 1}),
            error(
                "GenericError",
                "QMP input member 'arguments' must be an object",
            ),
        ),
        (
            json!({"execute": "warp", "id": null}),
            json!({"error": {"class": "CommandNotFound", "desc": "The command warp has not been found"}, "id": null}),
        ),
        (
            json!({"execute": "balloon"}),
            error("GenericError", "Parameter 'value' is missing"),
        ),
        (
            json!({"execute": "balloon", "arguments": {"value": "x"}}),
            error(
                "GenericError",
                "Invalid parameter type for 'value', expected: integer",
            ),
        ),
        (
            json!({"execute": "balloon", "arguments": {"value": 5}}),
            error("DeviceNotActive", "No balloon device has been activated"),
        ),
        (
            json!({"execute": "stop", "arguments": {"now": true}}),
            error("GenericError", "Parameter 'now' is unexpected"),
        ),
        (
            json!({"execute": "qom-get", "arguments": {"path": "/"}}),
            error("GenericError", "Parameter 'property' is missing"),
        ),
        (
            json!({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "events"}]}}),
            error(
                "GenericError",
                "Parameter 'capabilities[0].state' is missing",
            ),
        ),
        (
            json!({"execute": "migrate", "arguments": {}}),
            error("GenericError", "need either 'uri' or 'channels' argument"),
        ),
        (
            json!({"execute": "migrate-incoming", "arguments": {"uri": false}}),
            error(
                "GenericError",
                "Invalid parameter type for 'uri', expected: string",
            ),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(c.exec(input.clone()), want, "{input}");
    }
}

#[test]
fn input_framing_without_newlines_split_and_batched() {
    let s = start();
    let mut c = Client::ready(&s.path);
    // One byte per write, no newline, as a slow writer would send.
    for b in br#"{"execute": "query-status", "id": "split"}"# {
        c.send(std::slice::from_ref(b));
    }
    assert_eq!(c.recv()["id"], "split");
    // Several commands in one write, mixed line ends.
    c.send(b"{\"execute\":\"stop\",\"id\":1}{\"execute\":\"cont\",\"id\":2}\r\n{\"execute\":\"query-name\",\"id\":3}\n");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let m = c.recv();
        if m.get("event").is_none() {
            ids.push(m["id"].clone());
        }
    }
    assert_eq!(ids, vec![json!(1), json!(2), json!(3)]);
}

#[test]
fn govmm_style_clients_are_served() {
    // Kata's govmm: one command per line, keys sorted, '>' escaped, no id,
    // and several connections one after another.
    let s = start();
    for _ in 0..3 {
        let mut c = Client::connect(&s.path);
        let g = c.recv();
        assert_eq!(g["QMP"]["version"]["qemu"]["major"], 10);
        c.send(b"{\"execute\":\"qmp_capabilities\"}\n");
        assert_eq!(c.recv(), json!({"return": {}}));
        c.send(b"{\"arguments\":{\"uri\":\"exec:cat \\u003e/tmp/vm.state\"},\"execute\":\"migrate\"}\n");
        assert_eq!(c.recv(), json!({"return": {}}));
    }
    let got = s.handler.commands.lock().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0],
        Command::Migrate {
            uri: "exec:cat >/tmp/vm.state".into(),
            resume: false
        }
    );
}

#[test]
fn malformed_json_then_a_good_command_on_the_same_connection() {
    let s = start();
    let mut c = Client::ready(&s.path);
    c.send(b"{\"execute\": query-status}\n");
    let e = c.recv();
    assert_eq!(e["error"]["class"], "GenericError");
    assert!(
        e["error"]["desc"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error, "),
        "{e}"
    );
    assert!(e.get("id").is_none());
    c.send(b"{\"execute\": \"query-status\", \"id\": 2}");
    assert_eq!(c.recv()["id"], 2);
    // Also without any newline between the bad and the good input.
    c.send(b"{\"execute\" \"x\"}{\"execute\": \"query-status\", \"id\": 3}");
    assert_eq!(c.recv()["error"]["class"], "GenericError");
    assert_eq!(c.recv()["id"], 3);
}

#[test]
fn oversized_input_gets_an_error_and_the_client_is_dropped() {
    let s = start();
    let mut c = Client::ready(&s.path);
    let big = format!("{{\"execute\": \"{}", "a".repeat(protocol::MAX_INPUT + 10));
    c.send(big.as_bytes());
    let e = c.recv();
    assert!(
        e["error"]["desc"].as_str().unwrap().contains("longer than"),
        "{e}"
    );
    assert!(c.at_eof());
    // The server goes on with the next client.
    let mut c2 = Client::ready(&s.path);
    assert_eq!(
        c2.exec(json!({"execute": "query-name"})),
        json!({"return": {}})
    );
}

#[test]
fn events_reach_negotiated_clients_only_with_timestamps() {
    let s = start();
    let mut c = Client::connect(&s.path);
    c.recv(); // greeting
    s.events.emit("STOP", None);
    assert!(!s.events.has_client());
    // The first thing after the greeting is the reply, not the event.
    assert_eq!(
        c.exec(json!({"execute": "qmp_capabilities"})),
        json!({"return": {}})
    );
    assert!(c.quiet_for(100));

    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    s.events
        .emit("MIGRATION", Some(json!({"status": "completed"})));
    let line = c.line();
    assert!(line.starts_with("{\"timestamp\": {\"seconds\": "), "{line}");
    let ev: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["event"], "MIGRATION");
    assert_eq!(ev["data"], json!({"status": "completed"}));
    let secs = ev["timestamp"]["seconds"].as_u64().unwrap();
    assert!(secs >= before && secs <= before + 5);
    assert!(ev["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);

    // STOP comes before the reply to stop, without data.
    c.send(br#"{"execute": "stop", "id": "s"}"#);
    let ev = c.recv();
    assert_eq!(ev["event"], "STOP");
    assert!(ev.get("data").is_none());
    assert_eq!(c.recv(), json!({"return": {}, "id": "s"}));

    // From another thread too.
    let ev_sender = s.events.clone();
    thread::spawn(move || ev_sender.emit("RESUME", None))
        .join()
        .unwrap();
    assert_eq!(c.recv()["event"], "RESUME");
}

#[test]
fn with_nobody_connected_events_are_dropped() {
    let s = start();
    s.events.emit("STOP", None);
    let mut c = Client::ready(&s.path);
    assert!(c.quiet_for(100));
}

#[test]
fn one_client_at_a_time_and_a_fresh_session_for_the_next() {
    let s = start();
    let mut a = Client::ready(&s.path);
    let mut b = Client::connect(&s.path);
    assert!(
        b.quiet_for(200),
        "the second client must wait for the first"
    );
    assert_eq!(
        a.exec(json!({"execute": "query-name"})),
        json!({"return": {}})
    );
    drop(a);
    assert!(b.recv().get("QMP").is_some());
    assert_eq!(
        b.exec(json!({"execute": "stop"})),
        error(
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'"
        )
    );
}

#[test]
fn clients_leaving_mid_command_or_mid_input_do_not_harm_the_server() {
    let s = start();
    {
        let mut c = Client::ready(&s.path);
        c.send(br#"{"execute": "query-migrate"}"#); // slow in the handler
    }
    {
        let mut c = Client::ready(&s.path);
        c.send(br#"{"execute": "query-sta"#); // half a command
    }
    {
        let mut c = Client::connect(&s.path); // leaves before negotiating
        c.recv();
    }
    let mut c = Client::ready(&s.path);
    assert_eq!(
        c.exec(json!({"execute": "query-status"}))["return"]["running"],
        true
    );
    assert!(s
        .handler
        .commands
        .lock()
        .unwrap()
        .contains(&Command::QueryMigrate));
}

#[test]
fn a_panicking_handler_gets_an_error_reply_and_the_server_goes_on() {
    let s = start();
    let mut c = Client::ready(&s.path);
    assert_eq!(
        c.exec(json!({"execute": "system_reset", "id": 1})),
        json!({"error": {"class": "GenericError", "desc": "internal error: the VM failed while running system_reset"}, "id": 1})
    );
    assert_eq!(
        c.exec(json!({"execute": "query-name"})),
        json!({"return": {}})
    );
}

#[test]
fn a_client_that_does_not_read_cannot_stall_events() {
    let s = start();
    let mut c = Client::ready(&s.path);
    let t = Instant::now();
    let data = json!({"pad": "x".repeat(1000)});
    for _ in 0..(EVENT_QUEUE * 4) {
        s.events.emit("BIG", Some(data.clone()));
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "emit blocked for {:?}",
        t.elapsed()
    );
    // The client was cut off; what it gets ends at EOF.
    let mut n = 0;
    loop {
        let mut l = String::new();
        match c.r.read_line(&mut l) {
            Ok(0) => break,
            Ok(_) => n += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(n < EVENT_QUEUE * 4);
    let mut c2 = Client::ready(&s.path);
    assert_eq!(
        c2.exec(json!({"execute": "query-name"})),
        json!({"return": {}})
    );
}

#[test]
fn the_quit_reply_is_flushed_before_after_reply_runs() {
    let s = start();
    let (tx, rx) = mpsc::channel();
    *s.handler.quit_gate.lock().unwrap() = Some(rx);
    let mut c = Client::ready(&s.path);
    assert_eq!(
        c.exec(json!({"execute": "quit", "id": 9})),
        json!({"return": {}, "id": 9})
    );
    tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.handler.quit_saw_reply.lock().unwrap().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*s.handler.quit_saw_reply.lock().unwrap(), Some(true));
    // after_reply is for successes only.
    c.exec(json!({"execute": "balloon", "arguments": {"value": 1}}));
    c.exec(json!({"execute": "query-name"}));
    // Commands run one after another: once this is answered, the
    // after_reply of query-name has returned.
    c.exec(json!({"execute": "query-version"}));
    assert_eq!(
        *s.handler.after.lock().unwrap(),
        vec![Command::Quit, Command::QueryName]
    );
}

#[test]
fn listen_addresses() {
    let p = |s: &str| QmpListen::parse(s);
    assert_eq!(
        p("unix:/run/q.sock").unwrap(),
        QmpListen::Path("/run/q.sock".into())
    );
    assert_eq!(
        p("unix:/run/q.sock,server=on,wait=off").unwrap(),
        QmpListen::Path("/run/q.sock".into())
    );
    assert_eq!(
        p("unix:/run/q.sock,server,nowait").unwrap(),
        QmpListen::Path("/run/q.sock".into())
    );
    assert_eq!(
        p("unix:path=/a,,b").unwrap(),
        QmpListen::Path("/a,b".into())
    );
    assert_eq!(p("unix:fd=3").unwrap(), QmpListen::Fd(3));
    assert_eq!(p("unix:fd=3,server=on,wait=off").unwrap(), QmpListen::Fd(3));
    for bad in [
        "tcp:localhost:4444",
        "/run/q.sock",
        "unix:",
        "unix:fd=x",
        "unix:/a,wait=on",
        "unix:/a,server=off",
        "unix:/a,frob=1",
    ] {
        let e = p(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("'{bad}'")), "{e}");
    }
}

#[test]
fn stale_sockets_are_replaced_and_other_files_refused() {
    let path = sock_path();
    drop(UnixListener::bind(&path).unwrap()); // leaves the file behind
    let h = Arc::new(TestHandler::default());
    QmpServer::start(QmpListen::Path(path.clone()), h.clone()).unwrap();
    Client::ready(&path);
    // Now it is live: a second server must not steal it.
    let e = QmpServer::start(QmpListen::Path(path.clone()), h.clone()).unwrap_err();
    assert!(matches!(e, ControlError::InUse(_)), "{e}");
    fs::remove_file(&path).unwrap();

    fs::write(&path, b"data").unwrap();
    let e = QmpServer::start(QmpListen::Path(path.clone()), h).unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(e.to_string().contains("not a socket"), "{e}");
    fs::remove_file(&path).unwrap();
}

#[test]
fn an_inherited_listening_socket_is_served() {
    let path = sock_path();
    let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
    let h = Arc::new(TestHandler::default());
    let spec = format!("unix:fd={fd},server=on,wait=off");
    QmpServer::start(QmpListen::parse(&spec).unwrap(), h.clone()).unwrap();
    let mut c = Client::ready(&path);
    assert_eq!(
        c.exec(json!({"execute": "query-name"})),
        json!({"return": {}})
    );
    fs::remove_file(&path).unwrap();

    // Descriptors that are not listening Unix sockets are refused.
    let (a, _b) = UnixStream::pair().unwrap();
    let e = QmpServer::start(QmpListen::Fd(a.as_raw_fd()), h.clone()).unwrap_err();
    assert!(e.to_string().contains("not listening"), "{e}");
    let f = fs::File::open("/dev/null").unwrap();
    let e = QmpServer::start(QmpListen::Fd(f.as_raw_fd()), h.clone()).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    let e = QmpServer::start(QmpListen::Fd(100_000), h).unwrap_err();
    assert!(e.to_string().contains("not an open file descriptor"), "{e}");
}

// --- the `vmm ctl` client

const T: Duration = Duration::from_secs(5);

#[test]
fn ctl_prints_the_return_value() {
    let s = start();
    let out = run_ctl(&s.path, "query-status", None, None, T).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"running": true, "singlestep": false, "status": "running"})
    );
    assert!(out.contains("\n  \"running\": true"), "pretty: {out}");
    let out = run_ctl(
        &s.path,
        "qom-get",
        Some(r#"{"path": "/m", "property": "p"}"#),
        None,
        T,
    )
    .unwrap();
    assert_eq!(out, "{}");
    assert_eq!(
        s.handler.commands.lock().unwrap().last(),
        Some(&Command::QomGet {
            path: "/m".into(),
            property: "p".into()
        })
    );
}

#[test]
fn ctl_reports_qmp_errors() {
    let s = start();
    match run_ctl(&s.path, "balloon", Some(r#"{"value": 1}"#), None, T) {
        Err(ControlError::Qmp(e)) => {
            assert_eq!(e.class, ErrorClass::DeviceNotActive);
            assert_eq!(e.desc, "No balloon device has been activated");
        }
        other => panic!("{other:?}"),
    }
    match run_ctl(&s.path, "warp", None, None, T) {
        Err(ControlError::Qmp(e)) => assert_eq!(e.class, ErrorClass::CommandNotFound),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ctl_waits_for_an_event_even_one_sent_before_the_reply() {
    let s = start();
    let out = run_ctl(&s.path, "stop", None, Some("STOP"), T).unwrap();
    let (ret, ev) = out.split_once("\n").unwrap();
    assert_eq!(ret, "{}");
    let ev: Value = serde_json::from_str(ev).unwrap();
    assert_eq!(ev["event"], "STOP");
    assert!(ev["timestamp"]["seconds"].is_u64());

    // An event sent after the reply, from elsewhere.
    let events = s.events.clone();
    let t = thread::spawn(move || {
        let deadline = Instant::now() + T;
        while !events.has_client() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(50));
        events.emit("MIGRATION", Some(json!({"status": "completed"})));
    });
    let out = run_ctl(&s.path, "query-name", None, Some("MIGRATION"), T).unwrap();
    t.join().unwrap();
    assert!(out.contains("\"completed\""), "{out}");
}

#[test]
fn ctl_times_out_and_refuses_bad_arguments_and_paths() {
    let s = start();
    let t = Instant::now();
    let e = run_ctl(
        &s.path,
        "query-name",
        None,
        Some("NEVER"),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(matches!(e, ControlError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("event NEVER"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));

    let e = run_ctl(&s.path, "balloon", Some("{value: 1}"), None, T).unwrap_err();
    assert!(matches!(e, ControlError::BadArgs { .. }), "{e}");
    assert!(e.to_string().contains("{value: 1}"), "{e}");
    let e = run_ctl(&s.path, "balloon", Some("[1]"), None, T).unwrap_err();
    assert!(e.to_string().contains("JSON object"), "{e}");

    let missing = sock_path();
    let e = run_ctl(&missing, "stop", None, None, T).unwrap_err();
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    assert!(e.to_string().contains("does not exist"), "{e}");
    fs::write(&missing, b"").unwrap();
    let e = run_ctl(&missing, "stop", None, None, T).unwrap_err();
    assert!(
        matches!(e, ControlError::Connect { exists: true, .. }),
        "{e}"
    );
    fs::remove_file(&missing).unwrap();
}
