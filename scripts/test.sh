#!/usr/bin/env bash
# Every check the project has: formatting, lints, then all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# Tests open TAP devices, memfds and files, and create network namespaces: run as root.
mkdir -p target
cargo test --workspace --all-features 2>&1 | tee target/test-output.txt
summary=$(grep -E '^test result:' target/test-output.txt | awk '{p+=$4; f+=$6} END {print p" passed, "f" failed"}')
echo "tests: $summary"
