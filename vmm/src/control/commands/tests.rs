use super::*;

fn parse(name: &str, args: Value) -> Result<Command, QmpError> {
    Command::parse(
        name,
        args.as_object().expect("test arguments are an object"),
    )
}

fn err(name: &str, args: Value) -> String {
    let e = parse(name, args.clone()).expect_err(&format!("{name} {args} should fail"));
    assert_eq!(e.class, super::super::ErrorClass::GenericError, "{e}");
    e.desc
}

#[test]
fn every_listed_name_parses_or_needs_arguments() {
    for name in COMMAND_NAMES.iter().filter(|n| **n != "qmp_capabilities") {
        match parse(name, json!({})) {
            Ok(c) => assert_eq!(c.name(), *name),
            Err(e) => assert!(
                e.desc.contains("is missing") || e.desc.contains("need either"),
                "{name}: {e}"
            ),
        }
    }
    assert_eq!(
        parse("frob", json!({})).unwrap_err(),
        QmpError::not_found("frob")
    );
}

#[test]
fn commands_without_arguments_refuse_extra_ones() {
    for name in [
        "stop",
        "cont",
        "quit",
        "query-status",
        "query-name",
        "query-migrate",
        "query-vm-generation-id",
        "x-query-vcpu-dump",
    ] {
        assert_eq!(
            err(name, json!({"force": true})),
            "Parameter 'force' is unexpected"
        );
    }
}

#[test]
fn balloon() {
    assert_eq!(
        parse("balloon", json!({"value": 1 << 30})).unwrap(),
        Command::Balloon { value: 1 << 30 }
    );
    assert_eq!(err("balloon", json!({})), "Parameter 'value' is missing");
    for bad in [
        json!("1G"),
        json!(1.5),
        json!(true),
        json!(u64::MAX),
        json!(null),
    ] {
        assert_eq!(
            err("balloon", json!({ "value": bad })),
            "Invalid parameter type for 'value', expected: integer"
        );
    }
    assert_eq!(
        err("balloon", json!({"value": 0})),
        "Parameter 'target' expects a size"
    );
    assert_eq!(
        err("balloon", json!({"value": 1, "size": 2})),
        "Parameter 'size' is unexpected"
    );
}

#[test]
fn qom_set_and_get() {
    assert_eq!(
        parse(
            "qom-set",
            json!({"path": "/machine", "property": "p", "value": {"x": [1]}})
        )
        .unwrap(),
        Command::QomSet {
            path: "/machine".into(),
            property: "p".into(),
            value: json!({"x": [1]})
        }
    );
    assert_eq!(
        err("qom-set", json!({"property": "p", "value": 1})),
        "Parameter 'path' is missing"
    );
    assert_eq!(
        err("qom-set", json!({"path": "/m", "value": 1})),
        "Parameter 'property' is missing"
    );
    assert_eq!(
        err("qom-set", json!({"path": "/m", "property": "p"})),
        "Parameter 'value' is missing"
    );
    assert_eq!(
        err("qom-set", json!({"path": 1, "property": "p", "value": 1})),
        "Invalid parameter type for 'path', expected: string"
    );
    assert_eq!(
        parse("qom-get", json!({"path": "/m", "property": "p"})).unwrap(),
        Command::QomGet {
            path: "/m".into(),
            property: "p".into()
        }
    );
    assert_eq!(
        err("qom-get", json!({"path": "/m", "property": ["p"]})),
        "Invalid parameter type for 'property', expected: string"
    );
}

#[test]
fn migrate_set_capabilities() {
    assert_eq!(
        parse(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true},
                                    {"capability": "mapped-ram", "state": false}]})
        )
        .unwrap(),
        Command::MigrateSetCapabilities {
            capabilities: vec![
                MigrationCapabilityStatus {
                    capability: "x-ignore-shared".into(),
                    state: true
                },
                MigrationCapabilityStatus {
                    capability: "mapped-ram".into(),
                    state: false
                },
            ]
        }
    );
    let cases = [
        (json!({}), "Parameter 'capabilities' is missing"),
        (
            json!({"capabilities": {}}),
            "Invalid parameter type for 'capabilities', expected: array",
        ),
        (
            json!({"capabilities": [1]}),
            "Invalid parameter type for 'capabilities[0]', expected: object",
        ),
        (
            json!({"capabilities": [{"capability": "events", "state": true}, {"state": true}]}),
            "Parameter 'capabilities[1].capability' is missing",
        ),
        (
            json!({"capabilities": [{"capability": "events"}]}),
            "Parameter 'capabilities[0].state' is missing",
        ),
        (
            json!({"capabilities": [{"capability": "events", "state": "on"}]}),
            "Invalid parameter type for 'capabilities[0].state', expected: boolean",
        ),
        (
            json!({"capabilities": [{"capability": 3, "state": true}]}),
            "Invalid parameter type for 'capabilities[0].capability', expected: string",
        ),
        (
            json!({"capabilities": [{"capability": "warp", "state": true}]}),
            "Parameter 'capability' does not accept value 'warp'",
        ),
        (
            json!({"capabilities": [{"capability": "events", "state": true, "x": 1}]}),
            "Parameter 'capabilities[0].x' is unexpected",
        ),
        (
            json!({"capabilities": [], "x": 1}),
            "Parameter 'x' is unexpected",
        ),
    ];
    for (args, msg) in cases {
        assert_eq!(err("migrate-set-capabilities", args), msg);
    }
}

#[test]
fn migrate_set_parameters() {
    let Command::MigrateSetParameters(p) = parse(
        "migrate-set-parameters",
        json!({"mode": "cpr-reboot", "downtime-limit": 300, "tls-creds": null, "multifd-channels": 4}),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(p.mode, Some(MigMode::CprReboot));
    assert_eq!(p.other.len(), 3);
    assert_eq!(p.other["downtime-limit"], json!(300));
    assert_eq!(
        parse("migrate-set-parameters", json!({})).unwrap(),
        Command::MigrateSetParameters(MigrateParameters::default())
    );
    let cases = [
        (
            json!({"mode": "warp"}),
            "Parameter 'mode' does not accept value 'warp'",
        ),
        (
            json!({"mode": 1}),
            "Invalid parameter type for 'mode', expected: string",
        ),
        (
            json!({"mode": "cpr-transfer"}),
            "Migration mode 'cpr-transfer' is not supported by vmm; use 'normal' or 'cpr-reboot'",
        ),
        (
            json!({"multifd-channels": 256}),
            "Parameter 'multifd-channels' expects uint8",
        ),
        (
            json!({"downtime-limit": "300"}),
            "Parameter 'downtime-limit' expects uint64",
        ),
        (
            json!({"direct-io": 1}),
            "Invalid parameter type for 'direct-io', expected: boolean",
        ),
        (
            json!({"tls-creds": 1}),
            "Invalid parameter type for 'tls-creds', expected: StrOrNull",
        ),
        (json!({"speed": 1}), "Parameter 'speed' is unexpected"),
    ];
    for (args, msg) in cases {
        assert_eq!(err("migrate-set-parameters", args), msg);
    }
}

#[test]
fn migrate_and_migrate_incoming() {
    assert_eq!(
        parse("migrate", json!({"uri": "file:/tmp/x", "detach": true})).unwrap(),
        Command::Migrate {
            uri: "file:/tmp/x".into(),
            resume: false
        }
    );
    assert_eq!(
        parse("migrate", json!({"uri": "unix:/s", "resume": true})).unwrap(),
        Command::Migrate {
            uri: "unix:/s".into(),
            resume: true
        }
    );
    assert_eq!(
        parse("migrate-incoming", json!({"uri": "defer"})).unwrap(),
        Command::MigrateIncoming {
            uri: "defer".into(),
            exit_on_error: true
        }
    );
    assert_eq!(
        parse(
            "migrate-incoming",
            json!({"uri": "defer", "exit-on-error": false})
        )
        .unwrap(),
        Command::MigrateIncoming {
            uri: "defer".into(),
            exit_on_error: false
        }
    );
    for name in ["migrate", "migrate-incoming"] {
        assert_eq!(
            err(name, json!({})),
            "need either 'uri' or 'channels' argument"
        );
        assert_eq!(
            err(name, json!({"uri": "x", "channels": []})),
            "need either 'uri' or 'channels' argument"
        );
        assert_eq!(
            err(name, json!({"channels": [{"channel-type": "main"}]})),
            "vmm does not support the 'channels' argument; give the destination as 'uri'"
        );
        assert_eq!(
            err(name, json!({"uri": 5})),
            "Invalid parameter type for 'uri', expected: string"
        );
        assert_eq!(
            err(name, json!({"uri": "x", "blk": true})),
            "Parameter 'blk' is unexpected"
        );
    }
    assert_eq!(
        err("migrate", json!({"uri": "x", "resume": "yes"})),
        "Invalid parameter type for 'resume', expected: boolean"
    );
}
