# What template.sh / clone-identity.sh (L1) and template.l2.sh /
# clone-identity.l2.sh (L2) share.
#
# How a clone learns its id: on COM1. Each clone runs with --serial stdio
# and its stdin is a pipe holding "ID\n"; vmm's device thread reads stdin
# (epoll, a pipe is pollable) into the UART's receive FIFO, and the guest,
# which blocked in `read` on /dev/console (ttyS0) when the template was
# paused, gets the line once the clone resumes. The template itself runs
# with stdin from /dev/null (not pollable: no input), so it stays blocked
# in that read. The alternative, polling the disk with iflag=direct for an
# id L1 writes into each clone's copy, would cost a loop of reads (exits
# to the VMM) and a race with the copy; the console needs neither.

# What the guest prints once it is ready to be saved (not on the kernel
# command line, or the template would be taken at the kernel's banner).
TPL_READY=LAB-TPL-READY
# The sector of the clone's disk that gets "CLONE <id>".
TPL_SECTOR=8
TPL_DISK_MIB=4
# MiB of tmpfs each clone fills between two copies of its id.
TPL_FILL_MIB=4

# tpl_create DIR OUT ARG...: vmm template create, its output in OUT; sets
# TPL_CREATE_S (seconds) and LAB_VMM_STATUS, which is 3 when the guest was
# reset before it was ready (the lab's rare L2 reset at boot, which
# lab_reset_retry runs once more). Returns 0 when the template was made.
tpl_create() {
    _dir=$1 _out=$2
    shift 2
    rm -rf "$_dir"
    _t0=$(lab_uptime)
    vmm template create --dir "$_dir" --ready serial=$TPL_READY --ready-timeout 150 \
        --kernel /lab/vmlinuz --initrd /lab/l2.cpio "$@" </dev/null >"$_out" 2>&1
    LAB_VMM_STATUS=$?
    TPL_CREATE_S=$(lab_since "$_t0")
    [ $LAB_VMM_STATUS = 0 ] && return 0
    grep -q 'reboot before it was ready' "$_out" && LAB_VMM_STATUS=3
    return 1
}

# tpl_create_disk_guest DIR OUT IMAGE: tpl_create of the "template"
# scenario's guest (1 vCPU, 128 MiB, IMAGE as its writable disk vda, its
# console in /tmp/tpl.serial), which template.l2.sh runs.
tpl_create_disk_guest() {
    tpl_create "$1" "$2" --cmdline \
        "$LAB_L2_BASE quiet lab.scenario=template lab.insmod=virtio_mmio,virtio_blk" \
        --cpus 1 --memory size=128M --disk path="$3",id=vda --serial file=/tmp/tpl.serial
}

# tpl_clone_line I: clone I's LAB-CLONE line (template.l2.sh), without CR.
tpl_clone_line() { tr -d '\r' </tmp/clone$1.out | grep -m1 '^LAB-CLONE id='; }
# tpl_clone_want I: the line clone I prints when its id came back from its
# disk and from its RAM.
tpl_clone_want() { echo "LAB-CLONE id=$1 disk=CLONE $1 mem=CLONE $1"; }

# tpl_clone_start I INPUT ARG...: starts `vmm template clone ARG...` in the
# background with INPUT as its COM1 input and --serial stdio. Its COM1
# output goes to /tmp/clone$I.out, its stderr to /tmp/clone$I.err, its
# exit status to /tmp/clone$I.status; /tmp/clone$I.t0 holds L1's uptime at
# the start, /tmp/clone$I.tline when the guest's first LAB-CLONE line came
# out, /tmp/clone$I.done appears at the end.
tpl_clone_start() {
    _i=$1 _in=$2
    shift 2
    rm -f /tmp/clone$_i.out /tmp/clone$_i.err /tmp/clone$_i.status /tmp/clone$_i.tline /tmp/clone$_i.done
    lab_uptime >/tmp/clone$_i.t0
    {
        {
            echo "$_in" | timeout 150 vmm template clone --serial stdio "$@" 2>/tmp/clone$_i.err
            echo $? >/tmp/clone$_i.status
        } | while IFS= read -r _l || [ -n "$_l" ]; do
            case $_l in
            *LAB-CLONE*) [ -e /tmp/clone$_i.tline ] || lab_uptime >/tmp/clone$_i.tline ;;
            esac
            printf '%s\n' "$_l" >>/tmp/clone$_i.out
        done
        : >/tmp/clone$_i.done
    } &
}

# tpl_clone_wait N SECONDS: until clones 1..N are done, or SECONDS passed.
tpl_clone_wait() {
    _t=$(lab_uptime)
    while :; do
        _left=0
        for _i in $(seq "$1"); do [ -e /tmp/clone$_i.done ] || _left=$((_left + 1)); done
        [ $_left = 0 ] && return 0
        awk -v a="$_t" -v b="$(lab_uptime)" -v s="$2" 'BEGIN { exit !(b - a > s) }' && return 1
        sleep 0.2
    done
}

# tpl_start_s I: seconds from clone I's command start to its LAB-CLONE line.
tpl_start_s() {
    [ -s /tmp/clone$1.tline ] || { echo never; return; }
    awk -v a="$(cat /tmp/clone$1.t0)" -v b="$(cat /tmp/clone$1.tline)" 'BEGIN { printf "%.2f", b - a }'
}
