#!/usr/bin/env bash
# Installs what the benchmarks compare against: QEMU 10 and the lab's QEMU
# 7.2 (scripts/install-qemu.sh, which scripts/setup.sh runs too). Safe to
# run again.
set -euo pipefail
bash "$(dirname "$0")/install-qemu.sh"
