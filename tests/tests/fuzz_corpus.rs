//! The fuzz targets on stable: every input of `fuzz/corpus/TARGET` and
//! `fuzz/regressions/TARGET` goes through the target's body, so a crash
//! once found (and saved under `fuzz/regressions/`) stays fixed, and the
//! seeds in the corpus are checked to be current and to reach the code
//! they are for. Run as root: the net targets use a real TAP in a
//! private network namespace.
//!
//! `FUZZ_WRITE_SEEDS=1 cargo test -p tests --test fuzz_corpus seeds`
//! rewrites the seed files after a target's input layout changed.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tests::fuzz::{target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/KIND/TARGET`, sorted; none when it does not exist.
fn files(kind: &str, name: &str) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(fuzz_dir().join(kind).join(name)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = dir
        .map(|e| e.expect("a readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs every corpus and regression input of `name`; returns the total
/// work the target reported.
fn replay(name: &str) -> usize {
    let t = target(name);
    let corpus = files("corpus", name);
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
    let mut work = 0;
    for path in corpus.iter().chain(&files("regressions", name)) {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match catch_unwind(AssertUnwindSafe(|| (t.run)(&data))) {
            Ok(n) => work += n,
            Err(_) => panic!("fuzz target {name} fails on {}", path.display()),
        }
    }
    work
}

#[test]
fn block_queue_corpus() {
    assert!(replay("block_queue") > 0);
}

#[test]
fn net_queue_corpus() {
    assert!(replay("net_queue") > 0);
}

#[test]
fn balloon_queue_corpus() {
    assert!(replay("balloon_queue") > 0);
}

#[test]
fn mem_queue_corpus() {
    assert!(replay("mem_queue") > 0);
}

#[test]
fn mmio_registers_corpus() {
    assert!(replay("mmio_registers") > 0);
}

#[test]
fn device_state_corpus() {
    assert!(replay("device_state") > 0);
}

#[test]
fn cli_kvlist_corpus() {
    assert!(replay("cli_kvlist") > 0);
}

#[test]
fn snapshot_reader_corpus() {
    assert!(replay("snapshot_reader") > 0);
}

#[test]
fn qmp_input_corpus() {
    assert!(replay("qmp_input") > 0);
}

/// Every target has a test above.
#[test]
fn every_target_is_replayed() {
    let this = include_str!("fuzz_corpus.rs");
    for t in TARGETS {
        assert!(
            this.contains(&format!("replay(\"{}\")", t.name)),
            "no replay test for {}",
            t.name
        );
    }
}

/// The seed files are what the seed builders make now, so a change to a
/// target's input layout cannot leave its corpus testing nothing.
#[test]
fn seeds_are_current() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for t in TARGETS {
        let dir = fuzz_dir().join("corpus").join(t.name);
        for (seed, data) in (t.seeds)() {
            assert!(
                data.len() <= 64 << 10,
                "seed {}/{seed} is over 64 KiB",
                t.name
            );
            let path = dir.join(seed);
            if write {
                fs::create_dir_all(&dir).unwrap();
                fs::write(&path, &data).unwrap();
            } else if fs::read(&path).ok().as_deref() != Some(&data[..]) {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "seed files differ from what the seed builders make (rewrite them with FUZZ_WRITE_SEEDS=1): {stale:?}"
    );
}

/// What each seed gets through: the work its target reports.
fn seed_work(name: &str, seed: &str) -> usize {
    let t = target(name);
    let (_, data) = (t.seeds)()
        .into_iter()
        .find(|(s, _)| *s == seed)
        .unwrap_or_else(|| panic!("no seed {name}/{seed}"));
    (t.run)(&data)
}

#[test]
fn seeds_reach_their_code() {
    let expect: &[(&str, &str, usize)] = &[
        ("block_queue", "every-request", 8),
        ("block_queue", "read-only-disk", 8),
        ("block_queue", "across-regions", 1),
        ("net_queue", "rx-and-tx", 4),
        ("net_queue", "rx-merged-buffers", 4),
        ("net_queue", "tx-only", 3),
        ("net_queue", "device-on-a-tap", 1),
        ("balloon_queue", "every-queue", 4),
        ("mem_queue", "plug-state-unplug", 6),
        ("mmio_registers", "block-get-id-and-read", 2),
        ("mmio_registers", "balloon-inflate-and-stats", 2),
        ("mmio_registers", "mem-plug", 1),
        ("mmio_registers", "net-tx-rx", 1),
        ("device_state", "block-live", 1),
        ("device_state", "net-live-holding-a-packet", 1),
        ("device_state", "balloon-live-holding-stats", 1),
        ("device_state", "mem-live-plugged", 1),
        ("cli_kvlist", "every-device", 1),
        ("cli_kvlist", "bare-lists", 5),
        ("snapshot_reader", "vm-one-vcpu", 13),
        ("qmp_input", "session", 10),
    ];
    let mut wrong = Vec::new();
    for &(name, seed, want) in expect {
        let got = seed_work(name, seed);
        if got != want {
            wrong.push(format!("{name}/{seed}: {got}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
