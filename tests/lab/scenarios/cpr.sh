# lab-timeout: 420
# lab-needs: vmm
# CPR (cpr-reboot): the counting guest of "snapshot", its RAM in a share=on
# file, is checkpointed running over QMP (x-ignore-shared, mode
# cpr-reboot, migrate to file:), and the process quits; a copy of the vmm
# binary at another path restores it: the counter and the disk records go
# on with no gap or repeat, the guest finishes and vmm exits 0. A second
# guest is checkpointed the same way, its disk image is touched, and the
# restore by the copy must be refused (exit 2, the disk id, path and
# "modified" on stderr) with no guest output.
. /lab/scenarios/snapshot.common.sh
disk=/tmp/cpr-disk.img mem=/dev/shm/cpr.mem snap=/tmp/cpr.state new=/tmp/vmm-new
cmdline="$LAB_L2_BASE quiet lab.scenario=cpr lab.insmod=virtio_mmio,virtio_blk"
common="--cpus 2 --memory size=128M,backing=file,path=$mem,share=on --disk path=$disk,id=vda"
cp "$(command -v vmm)" $new || lab_fail "cannot copy vmm to $new"

# cpr_boot NAME: a fresh disk and RAM file, vmm run with COM1 to
# /tmp/NAME.serial and QMP on /tmp/NAME.qmp; waits for 40 records. Sets pid
# (and LAB_VMM_STATUS when vmm ended first, for lab_reset_retry).
cpr_boot() {
    rm -f $disk $mem $snap /tmp/$1.*
    dd if=/dev/zero of=$disk bs=1M count=$SNAP_DISK_MIB 2>/dev/null
    truncate -s 128M $mem
    LAB_VMM_STATUS=""
    # shellcheck disable=SC2086
    vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$cmdline" $common \
        --serial file=/tmp/$1.serial --qmp unix:/tmp/$1.qmp </dev/null >/tmp/$1.out 2>&1 &
    pid=$!
    if snap_wait_count /tmp/$1.serial 40 150; then
        lab_log "$1: the guest counted to 40; checkpointing it"
        return 0
    fi
    if kill -0 $pid 2>/dev/null; then
        lab_vmm_kill $pid /tmp/$1.out
    else
        wait $pid
        LAB_VMM_STATUS=$?
    fi
    return 1
}

# cpr_checkpoint NAME: the CPR checkpoint of the VM started by cpr_boot
# NAME, then QMP quit; vmm must exit 0. Sets saved (the last count before
# it), size (of the checkpoint), ckpt_s and state (query-status after it).
cpr_checkpoint() {
    q=/tmp/$1.qmp
    snap_ctl $q migrate-set-capabilities '{"capabilities": [{"capability": "x-ignore-shared", "state": true}]}' >/dev/null ||
        lab_fail "$1: migrate-set-capabilities failed"
    snap_ctl $q migrate-set-parameters '{"mode": "cpr-reboot"}' >/dev/null || lab_fail "$1: migrate-set-parameters failed"
    ts=$(lab_uptime)
    snap_ctl $q migrate "{\"uri\": \"file:$snap\"}" >/tmp/$1.migrate 2>&1 ||
        lab_fail "$1: QMP migrate failed: $(tr '\n' ' ' </tmp/$1.migrate)"
    st=""
    for _i in $(seq 300); do
        st=$(snap_ctl $q query-migrate | snap_status)
        case $st in completed | failed) break ;; esac
        sleep 0.1
    done
    ckpt_s=$(lab_since "$ts")
    [ "$st" = completed ] || lab_fail "$1: the checkpoint ended as '$st': $(snap_ctl $q query-migrate | tr '\n' ' ')"
    state=$(snap_ctl $q query-status | snap_status)
    saved=$(snap_counts /tmp/$1.serial | tail -n1)
    snap_ctl $q quit >/dev/null
    for _i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -0 $pid 2>/dev/null && { kill -9 $pid; lab_fail "$1: vmm still runs 10 s after QMP quit"; }
    wait $pid
    qs=$?
    [ $qs = 0 ] || lab_fail "$1: vmm exited $qs after QMP quit: $(tail -n 3 /tmp/$1.out | tr '\n' '|')"
    size=$(stat -c %s $snap)
}

# 1. Checkpoint, quit, restore with the copy, run to the end.
lab_reset_retry /tmp/cpr1.out cpr_boot cpr1 ||
    lab_fail "the guest wrote no 40 records: $(tail -n 3 /tmp/cpr1.serial /tmp/cpr1.out | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/cpr1.out)"
cpr_checkpoint cpr1
lab_log "checkpoint at count $saved: $size bytes in $ckpt_s s, VM $state, vmm quit with 0"
[ "$state" = postmigrate ] || lab_fail "the VM is '$state' after the checkpoint, not postmigrate"
saved1=$saved size1=$size ckpt1=$ckpt_s
tr=$(lab_uptime)
# shellcheck disable=SC2086
$new run $common --serial file=/tmp/cpr2.serial --qmp unix:/tmp/cpr2.qmp --incoming file:$snap \
    </dev/null >/tmp/cpr2.out 2>&1 &
pid=$!
for _i in $(seq 1500); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then
    lab_vmm_kill $pid /tmp/cpr2.out
    lab_fail "the restored VM did not power off in 150 s: $(tail -n 3 /tmp/cpr2.serial /tmp/cpr2.out | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/cpr2.out)"
fi
wait $pid
status2=$?
run2_s=$(lab_since "$tr")
done_line=$(tr -d '\r' </tmp/cpr2.serial | grep -m1 LAB-L2-SNAP-DONE)
[ -n "$done_line" ] || lab_fail "the restored guest did not finish (vmm exited $status2): $(tail -n 3 /tmp/cpr2.serial | tr -d '\r' | tr '\n' '|')|$(grep -v 'vcpu-dump: ' /tmp/cpr2.out | tail -n 3 | tr '\n' '|')$(lab_dump_why /tmp/cpr2.out)"
[ "$status2" = 0 ] || lab_fail "the restored vmm exited $status2: $(tail -n 3 /tmp/cpr2.out | tr '\n' '|')"
snap_counts /tmp/cpr1.serial /tmp/cpr2.serial | awk -v n=$SNAP_RECORDS '
    $1 != NR { print "count " NR " reads " $1; bad = 1; exit 1 }
    END { if (!bad && NR != n) { print "counted to " NR " of " n; exit 1 } }' >/tmp/cpr.check ||
    lab_fail "the counter is not contiguous across the restart (checkpoint at $saved1): $(cat /tmp/cpr.check)"
first=$(snap_counts /tmp/cpr2.serial | head -n1)
bad=$(dd if=$disk bs=512 skip=1 count=$SNAP_RECORDS 2>/dev/null | tr -d '\000' |
    awk -v n=$SNAP_RECORDS '$0 != sprintf("SEQ %08d", NR) { print "record " NR ": [" $0 "]"; exit }
        END { if (NR != n) print "records: " NR " of " n }')
[ -z "$bad" ] || lab_fail "the disk is not a contiguous sequence after the restart: $bad"
grep -qi 'x-ignore-shared\|tmpfs\|ramfs' /tmp/cpr1.out && lab_log "vmm on the checkpoint: $(grep -i 'x-ignore-shared\|tmpfs\|ramfs' /tmp/cpr1.out | head -n 2 | tr '\n' '|')"

# 2. Checkpoint, quit, touch the disk: the copy must refuse to restore.
lab_reset_retry /tmp/cpr3.out cpr_boot cpr3 ||
    lab_fail "the second guest wrote no 40 records: $(tail -n 3 /tmp/cpr3.serial /tmp/cpr3.out | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/cpr3.out)"
cpr_checkpoint cpr3
saved3=$saved
sleep 1
touch $disk
# shellcheck disable=SC2086
timeout 60 $new run $common --serial file=/tmp/cpr4.serial --incoming file:$snap </dev/null >/tmp/cpr4.out 2>/tmp/cpr4.err
status4=$?
[ "$status4" = 2 ] || lab_fail "restoring after the disk was touched exited $status4, not 2: $(tail -n 3 /tmp/cpr4.err /tmp/cpr4.serial | tr -d '\r' | tr '\n' '|')"
lab_log "the refused restore's stderr: $(tr '\n' '|' </tmp/cpr4.err)"
# docs/cpr.md: a header line, then one line per changed disk.
grep -qx -F "vmm: the snapshot does not match this VM (its command line or its files); nothing was started:" /tmp/cpr4.err ||
    lab_fail "the refusal has no 'the snapshot does not match this VM ...' line: $(tr '\n' '|' </tmp/cpr4.err)"
refusal=$(grep -m1 -F -- "vmm: --disk id=vda: $disk: it was modified (" /tmp/cpr4.err)
[ -n "$refusal" ] || lab_fail "no refusal line 'vmm: --disk id=vda: $disk: it was modified (...': $(tr '\n' '|' </tmp/cpr4.err)"
[ ! -s /tmp/cpr4.serial ] && [ ! -s /tmp/cpr4.out ] ||
    lab_fail "the refused restore let the guest print: $(head -c 200 /tmp/cpr4.serial /tmp/cpr4.out | tr -d '\r' | tr '\n' '|')"

lab_pass "checkpoint (cpr-reboot, x-ignore-shared, RAM in $mem share=on) at count $saved1: $size1 bytes in $ckpt1 s, vmm quit 0;" \
    "the copy $new restored it, first count $first, ran $run2_s s to '$done_line', exit 0; counter 1..$SNAP_RECORDS" \
    "contiguous and disk records 1..$SNAP_RECORDS once each; second checkpoint at count $saved3 ($size bytes), disk touched:" \
    "restore exit 2, no guest output, '$(echo "$refusal" | cut -c1-200)...'"
