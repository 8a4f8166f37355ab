//! Walks every cell of the RAM policy matrix (device configuration x RAM
//! backing): the outcome must match the expectations written out below from
//! the templating seeds, and the exact message must match docs/policy.md.
//!
//! `UPDATE_POLICY_DOC=1 cargo test -p devices --test policy_matrix`
//! rewrites the document from the code; review the diff before committing.

use std::path::PathBuf;

use devices::ram::policy::{check, Operation};
use devices::ram::{BackingSpec, RamBacking, RamRequirement, RegionRole, RomMode};
use devices::vhost_user;
use devices::virtio::balloon::BalloonConfig;
use devices::virtio::block::BlockConfig;
use devices::virtio::mem::MemConfig;
use devices::virtio::net::NetConfig;

const MIB: u64 = 1 << 20;
const RAM: u64 = 1024 * MIB;
const FILE: &str = "/srv/template/ram";

struct Column {
    name: &'static str,
    spec: BackingSpec,
}

fn columns() -> Vec<Column> {
    let mut huge = BackingSpec::anonymous();
    huge.hugepages = true;
    let mut rom = BackingSpec::template_clone(FILE);
    rom.rom = RomMode::On;
    vec![
        Column {
            name: "anon",
            spec: BackingSpec::anonymous(),
        },
        Column {
            name: "anon, hugepages=on",
            spec: huge,
        },
        Column {
            name: "memfd, share=on",
            spec: BackingSpec::memfd(true),
        },
        Column {
            name: "memfd, share=off",
            spec: BackingSpec::memfd(false),
        },
        Column {
            name: "file, share=on (template)",
            spec: BackingSpec::file(FILE, true),
        },
        Column {
            name: "file, share=off",
            spec: BackingSpec::file(FILE, false),
        },
        Column {
            name: "file, share=off, readonly=on, rom=off (clone)",
            spec: BackingSpec::template_clone(FILE),
        },
        Column {
            name: "file, readonly=on, rom=on",
            spec: rom,
        },
    ]
}

/// A row: which device configuration, and which RAM the column's backing is for.
struct Row {
    name: &'static str,
    /// Expected outcome per column, `.` allowed and `X` refused, in column order.
    expect: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        name: "virtio-blk",
        expect: ".......",
    },
    Row {
        name: "virtio-net",
        expect: ".......",
    },
    Row {
        name: "balloon stats=on,deflate-on-oom=on",
        expect: ".......",
    },
    Row {
        name: "balloon free-page-reporting=on",
        expect: ".X...XX",
    },
    Row {
        name: "balloon target=512M (below RAM: inflates)",
        expect: ".X...XX",
    },
    Row {
        name: "virtio-mem requested=0 (column = its own region)",
        expect: ".....XX",
    },
    Row {
        name: "virtio-mem requested=256M, creating a template",
        expect: "XXXXXXX",
    },
    Row {
        name: "vhost-user-blk",
        expect: "XX.X.XX",
    },
    Row {
        name: "vhost-user-net",
        expect: "XX.X.XX",
    },
];

fn mem_config(requested: u64, backing: BackingSpec) -> MemConfig {
    MemConfig {
        id: "mem0".into(),
        size: 1024 * MIB,
        requested,
        block_size: 2 * MIB,
        backing,
    }
}

/// Backing validation, then the policy check, as the VMM runs them.
fn outcome(row: &str, col: &BackingSpec) -> Result<(), String> {
    let validate = |what: &str, s: &BackingSpec| -> Result<RamBacking, String> {
        s.validate(what).map_err(|e| e.to_string())
    };
    let clone_ram = BackingSpec::template_clone(FILE);
    let template_ram = BackingSpec::file(FILE, true);
    let (boot, mem, reqs, op): (
        BackingSpec,
        Option<MemConfig>,
        Vec<RamRequirement>,
        Operation,
    ) = match row {
        "virtio-blk" => (
            col.clone(),
            None,
            BlockConfig {
                id: "disk0".into(),
                path: "/srv/disk.img".into(),
                readonly: false,
            }
            .ram_requirements(),
            Operation::Run,
        ),
        "virtio-net" => (
            col.clone(),
            None,
            NetConfig {
                id: "net0".into(),
                tap: "tap0".into(),
                mac: [2, 0, 0, 0, 0, 1],
            }
            .ram_requirements(),
            Operation::Run,
        ),
        r if r.starts_with("balloon") => {
            let cfg = BalloonConfig {
                free_page_reporting: r.contains("free-page-reporting=on"),
                deflate_on_oom: r.contains("deflate-on-oom=on"),
                stats: r.contains("stats=on"),
                target: r.contains("target=512M").then_some(512 * MIB),
            };
            (col.clone(), None, cfg.ram_requirements(RAM), Operation::Run)
        }
        r if r.starts_with("virtio-mem requested=0") => {
            let m = mem_config(0, col.clone());
            let reqs = m.ram_requirements();
            (clone_ram, Some(m), reqs, Operation::Run)
        }
        r if r.starts_with("virtio-mem requested=256M") => {
            let m = mem_config(256 * MIB, col.clone());
            let reqs = m.ram_requirements();
            (template_ram, Some(m), reqs, Operation::CreateTemplate)
        }
        r if r.starts_with("vhost-user-") => (
            col.clone(),
            None,
            vec![vhost_user::ram_requirement(r, "vu0")],
            Operation::Run,
        ),
        other => panic!("unknown row {other}"),
    };
    let mut regions = vec![(RegionRole::Boot, validate("--memory", &boot)?)];
    if let Some(m) = &mem {
        regions.push((
            RegionRole::VirtioMem(m.id.clone()),
            validate(&format!("--virtio-mem id={}", m.id), &m.backing)?,
        ));
    }
    check(&reqs, &regions, op).map_err(|e| e.to_string())
}

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.md")
}

fn render() -> String {
    let cols = columns();
    let mut messages: Vec<String> = Vec::new();
    let mut table = String::new();
    table.push_str("| device / option |");
    for c in &cols {
        table.push_str(&format!(" {} |", c.name));
    }
    table.push_str("\n|---|");
    for _ in &cols {
        table.push_str("---|");
    }
    table.push('\n');
    for row in ROWS {
        table.push_str(&format!("| {} |", row.name));
        for c in &cols {
            match outcome(row.name, &c.spec) {
                Ok(()) => table.push_str(" ok |"),
                Err(m) => {
                    let n = match messages.iter().position(|x| *x == m) {
                        Some(i) => i + 1,
                        None => {
                            messages.push(m);
                            messages.len()
                        }
                    };
                    table.push_str(&format!(" refused [{n}] |"));
                }
            }
        }
        table.push('\n');
    }
    let mut out = String::from(include_str!("policy_intro.md"));
    out.push_str("\n## The matrix\n\n");
    out.push_str(&table);
    out.push_str(
        "\n## The messages\n\nExactly as the VMM prints them (the file path is the example `",
    );
    out.push_str(FILE);
    out.push_str("`).\n\n");
    for (i, m) in messages.iter().enumerate() {
        out.push_str(&format!("{}. ", i + 1));
        for (j, line) in m.lines().enumerate() {
            if j > 0 {
                out.push_str("\n   ");
            }
            out.push_str(&format!("`{line}`"));
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_cell_matches_the_expectations() {
    let cols = columns();
    // The rom=on column: the backing itself is refused whatever the device.
    for row in ROWS {
        assert_eq!(row.expect.len() + 1, cols.len(), "row {}", row.name);
        let expect: Vec<bool> = row.expect.chars().map(|c| c == 'X').chain([true]).collect();
        for (c, refused) in cols.iter().zip(expect) {
            let got = outcome(row.name, &c.spec);
            assert_eq!(
                got.is_err(),
                refused,
                "{} on {}: got {:?}",
                row.name,
                c.name,
                got
            );
        }
    }
}

#[test]
fn refusals_name_device_option_backing_reason_and_fix() {
    let clone = BackingSpec::template_clone(FILE);
    let m = outcome("balloon free-page-reporting=on", &clone).unwrap_err();
    assert!(m.starts_with("balloon: free-page-reporting=on cannot work on guest RAM (--memory backing=file,path=/srv/template/ram,share=off,readonly=on,rom=off)"), "{m}");
    assert!(
        m.contains("template clone") && m.ends_with("set free-page-reporting=off"),
        "{m}"
    );
    let m = outcome("virtio-mem requested=0 (column = its own region)", &clone).unwrap_err();
    assert!(
        m.contains("virtio-mem 'mem0'") && m.contains("give virtio-mem an anonymous backing"),
        "{m}"
    );
    let m = outcome("vhost-user-blk", &clone).unwrap_err();
    assert!(
        m.contains("vhost-user-blk 'vu0'") && m.contains("use backing=memfd,share=on"),
        "{m}"
    );
    let m = outcome(
        "balloon target=512M (below RAM: inflates)",
        &BackingSpec::file(FILE, false),
    )
    .unwrap_err();
    assert!(
        m.contains("target=512M") && m.contains("share=off maps the file privately"),
        "{m}"
    );
    let m = outcome(
        "virtio-mem requested=256M, creating a template",
        &BackingSpec::anonymous(),
    )
    .unwrap_err();
    assert!(
        m.contains("requested=256M") && m.contains("create the template with requested=0"),
        "{m}"
    );
}

#[test]
fn docs_policy_md_matches_the_code() {
    let rendered = render();
    if std::env::var_os("UPDATE_POLICY_DOC").is_some() {
        std::fs::write(doc_path(), &rendered).unwrap();
    }
    let doc = std::fs::read_to_string(doc_path()).expect("docs/policy.md exists");
    assert!(
        doc == rendered,
        "docs/policy.md differs from the policy the code applies; run UPDATE_POLICY_DOC=1 cargo test -p devices --test policy_matrix and review the diff"
    );
}
