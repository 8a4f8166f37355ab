#!/usr/bin/env bash
# Every check the project has: formatting, lints, all unit and integration
# tests, then every scenario of the nested lab (real Linux guests booted by
# the release `vmm` under KVM inside a TCG-emulated L1).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# Tests open TAP devices, memfds and files, and create network namespaces: run as root.
mkdir -p target
cargo test --workspace --all-features 2>&1 | tee target/test-output.txt
summary=$(grep -E '^test result:' target/test-output.txt | awk '{p+=$4; f+=$6} END {print p" passed, "f" failed"}')
echo "tests: $summary"

# The lab copies the release binaries into L1.
cargo build --release --workspace --bins
tests/lab/run
