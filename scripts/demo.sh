#!/usr/bin/env bash
# The main job: build the release binaries, report what the host can run,
# validate a template and a clone configuration, show the policy refusing
# a clone setup that would silently break, then boot Debian's stock kernel
# with vmm and show the guest using its disk (in the nested lab when this
# host's KVM cannot boot stock kernels, as on PVM hosts), save a running
# guest over QMP, kill the VMM and restore it in a new process, make a
# template of the Debian guest and start clones of it (clone start time and
# memory beside a cold boot, vmm beside QEMU 7.2's templating flow), and
# start clones of a saved tiny VM on this host's own KVM; and the
# vhost-user daemons serving a Debian guest's disk and NIC (restarted
# under it), with vhost-user beside RAM a clone could not share refused.
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p vmm -p devices --bins
vmm=${CARGO_TARGET_DIR:-target}/release/vmm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A stand-in kernel image: --dry-run only checks the bzImage signature.
head -c 4096 /dev/zero > "$work/bzImage"
printf 'HdrS' | dd of="$work/bzImage" bs=1 seek=$((0x202)) conv=notrunc status=none
truncate -s 256M "$work/template.ram"

echo "== host-check"
$vmm host-check
echo "== template VM (RAM file share=on)"
$vmm run --dry-run --kernel "$work/bzImage" \
    --memory "size=256M,backing=file,path=$work/template.ram,share=on" \
    --balloon stats=on
echo "== clone (share=off,readonly=on,rom=off), virtio-mem plugged per clone"
$vmm run --dry-run --kernel "$work/bzImage" \
    --memory "size=256M,backing=file,path=$work/template.ram,share=off,readonly=on,rom=off" \
    --balloon stats=on,deflate-on-oom=on --virtio-mem size=1G,requested=256M
echo "== clone with free page reporting: refused before anything runs"
if $vmm run --dry-run --kernel "$work/bzImage" \
    --memory "size=256M,backing=file,path=$work/template.ram,share=off,readonly=on,rom=off" \
    --balloon free-page-reporting=on; then
    echo "demo: the policy should have refused this" >&2
    exit 1
fi
echo "== a disk on vhost-user with template-clone RAM: refused before anything runs"
if $vmm run --dry-run --kernel "$work/bzImage" \
    --memory "size=256M,backing=file,path=$work/template.ram,share=off,readonly=on,rom=off" \
    --vhost-user-blk socket=$work/vu.sock; then
    echo "demo: the policy should have refused this" >&2
    exit 1
fi
echo "== Debian's stock kernel booted by vmm, 2 vCPUs, a disk written and read back"
tests/lab/run boot block || exit 1
echo "== a Linux guest saved mid-run over QMP, vmm killed, restored in a new process"
tests/lab/run snapshot || exit 1
echo "== a template of the Debian guest, five clones at once, each with its own generation ID"
tests/lab/run template clone-identity || exit 1
echo "== clone start and memory beside a cold boot: vmm and QEMU 7.2's templating flow, one L1"
tests/lab/bench-template --runs 1 --no-doc || exit 1
echo "== clones of a 64 MiB VM whose RAM stays in its file (x-ignore-shared), on this host's KVM"
python3 scripts/bench-restore.py --only vmm --runs 5 || exit 1
echo "== vhost-user-blk and vhost-user-net serving a Debian guest on vmm, both restarted under it"
tests/lab/run vhost-user || exit 1
echo "demo: ok"
