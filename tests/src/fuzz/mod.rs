//! The fuzz targets' bodies. `fuzz/fuzz_targets/*.rs` (cargo-fuzz, on a
//! nightly toolchain) wraps each `run` in `fuzz_target!`; on stable,
//! `tests/tests/fuzz_corpus.rs` runs every file of `fuzz/corpus/TARGET`
//! and `fuzz/regressions/TARGET` through the same function, so each
//! corpus is a regression test. See docs/fuzzing.md.
//!
//! A target panics only on a finding: a device or parser that panicked,
//! or a property of its output that does not hold. Everything the input
//! can make fail (a refused setup, a state that does not decode) returns
//! normally. Each `run` returns how much work got through, which the
//! seed tests use to check that every seed reaches the code it is for.

pub mod balloon_queue;
pub mod block_queue;
pub mod cli_kvlist;
pub mod device_state;
pub mod guest;
pub mod input;
pub mod mem_queue;
pub mod mmio_registers;
pub mod net_queue;
pub mod qmp_input;
pub mod snapshot_reader;

/// A target: its name (the cargo-fuzz target and corpus directory), its
/// body, and the seeds of its corpus (name, input).
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> usize,
    pub seeds: fn() -> Vec<(&'static str, Vec<u8>)>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "block_queue",
        run: block_queue::run,
        seeds: block_queue::seeds,
    },
    Target {
        name: "net_queue",
        run: net_queue::run,
        seeds: net_queue::seeds,
    },
    Target {
        name: "balloon_queue",
        run: balloon_queue::run,
        seeds: balloon_queue::seeds,
    },
    Target {
        name: "mem_queue",
        run: mem_queue::run,
        seeds: mem_queue::seeds,
    },
    Target {
        name: "mmio_registers",
        run: mmio_registers::run,
        seeds: mmio_registers::seeds,
    },
    Target {
        name: "device_state",
        run: device_state::run,
        seeds: device_state::seeds,
    },
    Target {
        name: "cli_kvlist",
        run: cli_kvlist::run,
        seeds: cli_kvlist::seeds,
    },
    Target {
        name: "snapshot_reader",
        run: snapshot_reader::run,
        seeds: snapshot_reader::seeds,
    },
    Target {
        name: "qmp_input",
        run: qmp_input::run,
        seeds: qmp_input::seeds,
    },
];

pub fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}
