#!/usr/bin/env bash
# Installs what building and testing the project needs on a bare Debian 12
# machine with a Rust toolchain. Safe to run again.
set -euo pipefail

need_pkgs=()
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc)
# iasl: the ACPI table tests decode the generated tables with ACPICA.
command -v iasl >/dev/null 2>&1 || need_pkgs+=(acpica-tools)
# python3 with venv (ensurepip): the QMP test drives vmm with the qemu.qmp package.
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
for c in clippy rustfmt; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$c"
    fi
done

# A venv with qemu.qmp (QEMU's own Python QMP client, tested with 0.0.6)
# for tests/qmp/test_protocol.py, which vmm/tests/qmp.rs runs.
venv="$(dirname "$0")/../target/qmp-venv"
if ! "$venv/bin/python" -c 'import qemu.qmp' >/dev/null 2>&1; then
    python3 -m venv --clear "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check qemu.qmp
fi

# QEMU 10 (with qemu-storage-daemon) and the lab's kernel, busybox and
# QEMU 7.2: the vhost-user tests boot Linux with QEMU as the front end.
bash "$(dirname "$0")/install-qemu.sh"

# TAP devices for the virtio-net tests.
[ -e /dev/net/tun ] || modprobe tun 2>/dev/null || true
echo "setup: ok"
