use super::*;

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap()
}

#[test]
fn greeting_is_qemu_10s_shape() {
    assert_eq!(
        text(greeting_line()),
        format!(
            "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": 0, \"minor\": 0, \"major\": 10}}, \"package\": \"vmm {}\"}}, \"capabilities\": [\"oob\"]}}}}\r\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn version_value_matches_the_greeting() {
    let v = version_value();
    assert_eq!(v["qemu"], json!({"major": 10, "minor": 0, "micro": 0}));
    assert_eq!(v["package"], format!("vmm {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn events_carry_a_timestamp_and_data_only_when_given() {
    let ts = Duration::new(1_700_000_000, 123_456_789);
    assert_eq!(
        text(event_line("STOP", None, ts)),
        "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456}, \"event\": \"STOP\"}\r\n"
    );
    assert_eq!(
        text(event_line("MIGRATION", Some(&json!({"status": "completed"})), ts)),
        "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456}, \"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}\r\n"
    );
}

#[test]
fn replies_echo_any_id_after_the_result() {
    assert_eq!(
        text(Reply::ok(json!({}), None).line()),
        "{\"return\": {}}\r\n"
    );
    assert_eq!(
        text(Reply::ok(json!([1, {"a": true}]), Some(json!({"n": [1]}))).line()),
        "{\"return\": [1, {\"a\": true}], \"id\": {\"n\": [1]}}\r\n"
    );
    assert_eq!(
        text(Reply::err(QmpError::generic("bad"), Some(json!(7))).line()),
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad\"}, \"id\": 7}\r\n"
    );
}

/// A number as `id` comes back as the number the client sent, as QEMU's
/// correctly rounded parser and printer give it. serde_json's default
/// float parser can be a bit off, so vmm echoed 8.888888888888889e77 as
/// 8.88888888888889e77 (found by fuzzing qmp_input); it now parses
/// floats exactly (serde_json's float_roundtrip).
#[test]
fn a_float_id_is_echoed_exactly() {
    for id in ["8.888888888888889e77", "0.1", "1e-300", &"8".repeat(78)] {
        let input = format!("{{\"execute\": \"qmp_capabilities\", \"id\": {id}}}");
        let frames = Framer::new().feed(input.as_bytes());
        let [Frame::Value(v)] = &frames[..] else {
            panic!("{frames:?}");
        };
        let Outcome::Negotiated(reply) = Session::new().handle(v.clone()) else {
            panic!("capabilities negotiated");
        };
        let line = text(reply.line());
        let echoed = line
            .strip_prefix("{\"return\": {}, \"id\": ")
            .and_then(|l| l.strip_suffix("}\r\n"))
            .unwrap_or_else(|| panic!("{line}"));
        assert_eq!(
            echoed.parse::<f64>().unwrap(),
            id.parse::<f64>().unwrap(),
            "id {id} came back as {echoed}"
        );
    }
}

#[test]
fn output_is_ascii_with_qemu_escapes() {
    assert_eq!(
        to_qemu_json(&json!("é\u{7f}\u{1}\n\"\\/😀")),
        "\"\\u00E9\\u007F\\u0001\\n\\\"\\\\/\\uD83D\\uDE00\""
    );
}

#[test]
fn error_classes_are_spelled_as_qemu_spells_them() {
    for (c, s) in [
        (ErrorClass::GenericError, "GenericError"),
        (ErrorClass::CommandNotFound, "CommandNotFound"),
        (ErrorClass::DeviceNotFound, "DeviceNotFound"),
        (ErrorClass::DeviceNotActive, "DeviceNotActive"),
        (ErrorClass::KVMMissingCap, "KVMMissingCap"),
    ] {
        assert_eq!(c.as_str(), s);
        assert_eq!(ErrorClass::from_name(s), Some(c));
        assert_eq!(serde_json::to_value(c).unwrap(), json!(s));
    }
    assert_eq!(
        QmpError::not_found("frob").to_value(),
        json!({"class": "CommandNotFound", "desc": "The command frob has not been found"})
    );
}

// --- framing

fn values(frames: Vec<Frame>) -> Vec<Value> {
    frames
        .into_iter()
        .map(|f| match f {
            Frame::Value(v) => v,
            other => panic!("expected a value, got {other:?}"),
        })
        .collect()
}

#[test]
fn a_value_without_a_newline_is_complete_at_its_closing_brace() {
    let mut f = Framer::new();
    assert_eq!(
        values(f.feed(br#"{"execute":"qmp_capabilities"}"#)),
        vec![json!({"execute": "qmp_capabilities"})]
    );
    assert!(!f.has_partial());
}

#[test]
fn values_split_byte_by_byte_are_reassembled() {
    let input = br#"{"execute": "qom-set", "arguments": {"path": "/a{b}", "property": "x\"}", "value": [1, {"k": "]"}]}}"#;
    let mut f = Framer::new();
    let mut got = Vec::new();
    for (i, b) in input.iter().enumerate() {
        let frames = f.feed(std::slice::from_ref(b));
        if i + 1 < input.len() {
            assert!(frames.is_empty(), "early frame at byte {i}: {frames:?}");
            assert!(f.has_partial());
        }
        got.extend(values(frames));
    }
    assert_eq!(got, vec![serde_json::from_slice::<Value>(input).unwrap()]);
}

#[test]
fn several_values_in_one_write_come_out_in_order() {
    let mut f = Framer::new();
    let got = values(f.feed(b"{\"a\":1}{\"b\":2}\r\n  {\"c\":3}\n[4]"));
    assert_eq!(
        got,
        vec![
            json!({"a": 1}),
            json!({"b": 2}),
            json!({"c": 3}),
            json!([4])
        ]
    );
}

#[test]
fn a_malformed_value_costs_one_error_and_the_next_value_is_read() {
    let mut f = Framer::new();
    let frames = f.feed(b"{\"execute\": foo}{\"execute\":\"stop\"}");
    assert_eq!(frames.len(), 2, "{frames:?}");
    match &frames[0] {
        Frame::Error(e) => assert!(e.starts_with("JSON parse error, "), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(frames[1], Frame::Value(json!({"execute": "stop"})));
}

#[test]
fn an_unterminated_string_ends_at_the_newline() {
    let mut f = Framer::new();
    let frames = f.feed(b"{\"execute\": \"stop}\n{\"execute\":\"cont\"}\n");
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(matches!(&frames[0], Frame::Error(e) if e.starts_with("JSON parse error, ")));
    assert_eq!(frames[1], Frame::Value(json!({"execute": "cont"})));
}

#[test]
fn stray_closers_and_scalars_are_reported_separately() {
    let mut f = Framer::new();
    let frames = f.feed(b"} 42 \"s\" nope [1]");
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert_eq!(
        frames[0],
        Frame::Error("JSON parse error, stray '}'".into())
    );
    assert_eq!(frames[1], Frame::Value(json!(42)));
    assert_eq!(frames[2], Frame::Value(json!("s")));
    assert!(matches!(&frames[3], Frame::Error(e) if e.starts_with("JSON parse error, ")));
    assert_eq!(frames[4], Frame::Value(json!([1])));
}

#[test]
fn a_number_waits_for_its_end() {
    let mut f = Framer::new();
    assert!(f.feed(b"12").is_empty());
    assert_eq!(values(f.feed(b"3\n")), vec![json!(123)]);
}

#[test]
fn single_quoted_strings_are_accepted_as_qemu_accepts_them() {
    let mut f = Framer::new();
    assert_eq!(
        values(f.feed(br#"{'execute': 'qom-get', 'arguments': {'path': 'a"b\'c'}}"#)),
        vec![json!({"execute": "qom-get", "arguments": {"path": "a\"b'c"}})]
    );
}

#[test]
fn invalid_utf8_is_a_parse_error() {
    let mut f = Framer::new();
    let frames = f.feed(b"{\"a\": \"\xff\"}");
    assert!(matches!(&frames[..], [Frame::Error(e)] if e.starts_with("JSON parse error, ")));
}

#[test]
fn input_past_the_limit_is_refused() {
    let mut f = Framer::with_limit(16);
    assert_eq!(
        f.feed(b"{\"a\": \"0123456789abcdef\"}"),
        vec![Frame::TooLong]
    );
    let mut f = Framer::with_limit(16);
    assert_eq!(
        values(f.feed(b"{\"a\": \"01234\"}")),
        vec![json!({"a": "01234"})]
    );
}

// --- sessions

fn reply_of(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn err_of(o: Outcome) -> (ErrorClass, String, Option<Value>) {
    let r = reply_of(o);
    let e = r.result.unwrap_err();
    (e.class, e.desc, r.id)
}

fn negotiated() -> Session {
    let mut s = Session::new();
    assert!(matches!(
        s.handle(json!({"execute": "qmp_capabilities"})),
        Outcome::Negotiated(_)
    ));
    s
}

#[test]
fn commands_before_negotiation_are_refused_as_qemu_refuses_them() {
    let mut s = Session::new();
    for cmd in ["query-status", "stop", "no-such-command", "query-version"] {
        assert_eq!(
            err_of(s.handle(json!({"execute": cmd, "id": "x"}))),
            (
                ErrorClass::CommandNotFound,
                "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
                Some(json!("x"))
            )
        );
    }
    // Malformed input keeps its own message.
    assert_eq!(
        err_of(s.handle(json!({"id": 1}))).1,
        "QMP input lacks member 'execute'"
    );
    assert!(!s.negotiated());
}

#[test]
fn negotiation_happens_once() {
    let mut s = Session::new();
    match s.handle(json!({"execute": "qmp_capabilities", "id": 5})) {
        Outcome::Negotiated(r) => assert_eq!(r, Reply::ok(json!({}), Some(json!(5)))),
        other => panic!("{other:?}"),
    }
    assert!(s.negotiated());
    assert!(!s.oob_enabled());
    assert_eq!(
        err_of(s.handle(json!({"execute": "qmp_capabilities"}))),
        (
            ErrorClass::CommandNotFound,
            "Capabilities negotiation is already complete, command ignored".into(),
            None
        )
    );
}

#[test]
fn oob_can_be_enabled_and_no_command_runs_out_of_band() {
    let mut s = Session::new();
    // exec-oob is not a known member until oob is enabled.
    assert_eq!(
        err_of(s.handle(json!({"exec-oob": "qmp_capabilities"}))).1,
        "QMP input member 'exec-oob' is unexpected"
    );
    assert!(matches!(
        s.handle(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}})),
        Outcome::Negotiated(_)
    ));
    assert!(s.oob_enabled());
    assert_eq!(
        err_of(s.handle(json!({"exec-oob": "stop", "id": 1}))),
        (
            ErrorClass::GenericError,
            "The command stop does not support OOB".into(),
            Some(json!(1))
        )
    );
    assert_eq!(
        err_of(s.handle(json!({"exec-oob": "stop", "execute": "cont"}))).1,
        "QMP input member 'execute' clashes with 'exec-oob'"
    );
    assert_eq!(
        err_of(s.handle(json!({"exec-oob": "nope"}))).1,
        "The command nope has not been found"
    );
}

#[test]
fn qmp_capabilities_arguments_are_checked() {
    let cases = [
        (
            json!({"enable": "oob"}),
            "Invalid parameter type for 'enable', expected: array",
        ),
        (
            json!({"enable": [1]}),
            "Invalid parameter type for 'enable[0]', expected: string",
        ),
        (
            json!({"enable": ["frob"]}),
            "Parameter 'null' does not accept value 'frob'",
        ),
        (json!({"frob": 1}), "Parameter 'frob' is unexpected"),
    ];
    for (args, msg) in cases {
        let mut s = Session::new();
        assert_eq!(
            err_of(s.handle(json!({"execute": "qmp_capabilities", "arguments": args}))),
            (ErrorClass::GenericError, msg.to_string(), None)
        );
        assert!(!s.negotiated());
    }
}

#[test]
fn malformed_inputs_get_qemus_messages() {
    let mut s = negotiated();
    let cases = [
        (json!([1]), "QMP input must be a JSON object"),
        (json!("stop"), "QMP input must be a JSON object"),
        (json!({}), "QMP input lacks member 'execute'"),
        (
            json!({"execute": 1}),
            "QMP input member 'execute' must be a string",
        ),
        (
            json!({"execute": "stop", "arguments": []}),
            "QMP input member 'arguments' must be an object",
        ),
        (
            json!({"execute": "stop", "extra": 1}),
            "QMP input member 'extra' is unexpected",
        ),
    ];
    for (input, msg) in cases {
        assert_eq!(
            err_of(s.handle(input.clone())),
            (ErrorClass::GenericError, msg.to_string(), None),
            "{input}"
        );
    }
    assert_eq!(
        err_of(s.handle(json!({"execute": "frob", "id": [1, 2]}))),
        (
            ErrorClass::CommandNotFound,
            "The command frob has not been found".into(),
            Some(json!([1, 2]))
        )
    );
}

#[test]
fn version_and_commands_are_answered_here_and_others_go_to_the_handler() {
    let mut s = negotiated();
    assert_eq!(
        reply_of(s.handle(json!({"execute": "query-version", "id": "v"}))),
        Reply::ok(version_value(), Some(json!("v")))
    );
    let r = reply_of(s.handle(json!({"execute": "query-commands"})));
    let names: Vec<String> = r
        .result
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, commands::COMMAND_NAMES);
    assert_eq!(
        s.handle(json!({"execute": "balloon", "arguments": {"value": 1024}, "id": null})),
        Outcome::Execute {
            command: Command::Balloon { value: 1024 },
            id: Some(Value::Null)
        }
    );
}
