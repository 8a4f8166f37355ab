#!/usr/bin/env bash
# Installs what the benchmarks compare against, beyond scripts/setup.sh:
# QEMU 10 from Debian's bookworm-backports (installs beside the machine's
# qemu-utils 10 without removing anything), and the lab (tests/lab/setup)
# for QEMU 7.2. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! qemu-system-x86_64 --version 2>/dev/null | grep -q "version 10\."; then
    src=/etc/apt/sources.list.d/bookworm-backports.sources
    if [ ! -e "$src" ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then
        cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86
fi
tests/lab/setup >/dev/null
echo "setup-bench: $(qemu-system-x86_64 --version | head -n1)"
