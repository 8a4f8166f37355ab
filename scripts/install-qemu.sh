#!/usr/bin/env bash
# Installs the QEMU the tests and benchmarks run, on Debian 12:
# - QEMU 10 from bookworm-backports, system-wide (it installs beside
#   anything present without removing it): qemu-system-x86, and qemu-utils
#   for qemu-storage-daemon, the peer of the project's vhost-user daemons;
# - through tests/lab/setup, unpacked into tests/lab/work/ and never
#   installed: QEMU 7.2, Debian's stock kernel and busybox, which the nested
#   lab and the QEMU front-end tests boot.
# Used by scripts/setup.sh and scripts/setup-bench.sh. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

is_10() { case "$("$1" --version 2>/dev/null || true)" in *"version 10."*) return 0 ;; esac; return 1; }
if ! is_10 qemu-system-x86_64 || ! is_10 qemu-storage-daemon; then
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
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils
fi
tests/lab/setup >/dev/null
v=$(qemu-system-x86_64 --version)
echo "install-qemu: ${v%%$'\n'*}; the lab's: $(sed -n "s/^LAB_QEMU_VERSION='\(.*\)'$/\1/p" tests/lab/work/lab.env)"
