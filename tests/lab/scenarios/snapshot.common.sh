# What snapshot.sh / snapshot-paused.sh (L1) and snapshot.l2.sh (L2) share.
# The guest writes SNAP_RECORDS fsync'ed 512-byte records, record N
# ("SEQ <N, 8 digits>") in sector N of /dev/vda, prints "LAB-L2-COUNT N"
# after each, then "LAB-L2-SNAP-DONE records=N". snap_run is L1's part.
SNAP_RECORDS=400
SNAP_DISK_MIB=4

snap_ctl() { vmm ctl --qmp "$1" --timeout 30 "$2" ${3:+"$3"}; }
# The "status" member of a QMP reply.
snap_status() { sed -n 's/.*"status": "\([a-z-]*\)".*/\1/p' | head -n1; }
# The counter values of whole "LAB-L2-COUNT N" lines in the files given.
snap_counts() { cat "$@" 2>/dev/null | tr -d '\r' | sed -n 's/^LAB-L2-COUNT \([0-9][0-9]*\)$/\1/p'; }

# snap_restored_reset_ok OUT SERIAL FROM MIN: whether the reset of a
# restored guest may be retried by saving and restoring again: vmm, its
# stderr in OUT, ended with a triple fault whose KVM trace has the
# emulated platform's signature, after the restored guest had counted
# (in SERIAL) at least MIN past FROM. A restore that got the vCPU state
# wrong (descriptor tables, a timer) faults at the guest's first
# interrupt, long before that. Prints the LAB-L2-RESET-RETRY line and sets
# SNAP_RERUN when it may.
snap_restored_reset_ok() {
    lab_reset_unasked "$1" || return 1
    _last=$(snap_counts "$2" | tail -n1)
    lab_reset_evidence "$1"
    [ -n "$LAB_KVM_SIG" ] && [ $((${_last:-0} - $3)) -ge "$4" ] || return 1
    SNAP_RERUN="saved and restored again, the first restored guest was reset after counting from $3 to $_last; "
    lab_retry_line "the restored guest was reset after counting from $3 to $_last"
}

# snap_wait_count FILE N SECONDS: until FILE has counted to N or more.
snap_wait_count() {
    _t=$(lab_uptime)
    while :; do
        _c=$(snap_counts "$1" | tail -n1)
        [ "${_c:-0}" -ge "$2" ] && return 0
        awk -v a="$_t" -v b="$(lab_uptime)" -v s="$3" 'BEGIN { exit !(b - a > s) }' && return 1
        sleep 0.2
    done
}

# snap_boot: starts the L2 to save (pid1) and waits for 40 records; sets
# LAB_VMM_STATUS when vmm ended first.
snap_boot() {
    rm -f $s1 /tmp/snap1.qmp
    LAB_VMM_STATUS=""
    # shellcheck disable=SC2086
    vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$cmdline" $common \
        --serial file=$s1 --qmp unix:/tmp/snap1.qmp </dev/null >/tmp/snap1.out 2>&1 &
    pid1=$!
    snap_wait_count $s1 40 150 && return 0
    if ! kill -0 $pid1 2>/dev/null; then
        wait $pid1
        LAB_VMM_STATUS=$?
    else
        lab_vmm_kill $pid1 /tmp/snap1.out
    fi
    return 1
}

# snap_run PAUSED: boots L2 with vmm, a disk and a QMP socket (COM1 to a
# file, byte for byte); once the guest has written some records, saves it
# over QMP (after `stop` when PAUSED is 1), kills the VMM with SIGKILL,
# restores it in a new vmm process and lets it finish. The two COM1 files
# put end to end must count 1..SNAP_RECORDS, and the disk must hold every
# record once. Sets SNAP_EVIDENCE.
snap_run() {
    paused=$1
    disk=/tmp/snap-disk.img snap=/tmp/snap.state s1=/tmp/snap1.serial s2=/tmp/snap2.serial
    rm -f "$disk" "$snap" /tmp/snap1.* /tmp/snap2.*
    dd if=/dev/zero of="$disk" bs=1M count=$SNAP_DISK_MIB 2>/dev/null
    cmdline="$LAB_L2_BASE quiet lab.scenario=snapshot lab.insmod=virtio_mmio,virtio_blk"
    common="--cpus 2 --memory size=256M --disk path=$disk,id=vda"
    lab_reset_retry /tmp/snap1.out snap_boot ||
        lab_fail "the guest wrote no 40 records before the save: $(tail -n 3 $s1 /tmp/snap1.out | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/snap1.out)"
    if [ "$paused" = 1 ]; then
        snap_ctl /tmp/snap1.qmp stop >/dev/null || lab_fail "QMP stop failed: $(tail -n 3 /tmp/snap1.out)"
    fi
    ts=$(lab_uptime)
    snap_ctl /tmp/snap1.qmp migrate "{\"uri\": \"file:$snap\"}" >/dev/null ||
        lab_fail "QMP migrate failed: $(tail -n 3 /tmp/snap1.out)"
    st=""
    for _i in $(seq 300); do
        st=$(snap_ctl /tmp/snap1.qmp query-migrate | snap_status)
        case $st in completed | failed) break ;; esac
        sleep 0.1
    done
    save_s=$(lab_since "$ts")
    [ "$st" = completed ] || lab_fail "the migration ended as '$st': $(snap_ctl /tmp/snap1.qmp query-migrate | tr '\n' ' ')"
    state1=$(snap_ctl /tmp/snap1.qmp query-status | snap_status)
    saved=$(snap_counts $s1 | tail -n1)
    kill -9 $pid1
    wait $pid1 2>/dev/null
    size=$(stat -c %s "$snap")
    lab_log "saved at count $saved in $save_s s ($size bytes), VM $state1; vmm killed with SIGKILL"

    tr=$(lab_uptime)
    # shellcheck disable=SC2086
    vmm run $common --serial file=$s2 --qmp unix:/tmp/snap2.qmp \
        --incoming file:$snap </dev/null >/tmp/snap2.out 2>&1 &
    pid2=$!
    st2=""
    for _i in $(seq 300); do
        st2=$(snap_ctl /tmp/snap2.qmp query-status 2>/dev/null | snap_status)
        case $st2 in running | paused) break ;; esac
        kill -0 $pid2 2>/dev/null || break
        sleep 0.05
    done
    restore_s=$(lab_since "$tr")
    if [ "$paused" = 1 ]; then
        [ "$st2" = paused ] || lab_fail "a VM saved paused came back '$st2': $(tail -n 3 /tmp/snap2.out | tr '\n' '|')"
        sleep 1
        [ ! -s $s2 ] || lab_fail "the VM restored paused printed before cont: $(head -c 200 $s2)"
        snap_ctl /tmp/snap2.qmp cont >/dev/null || lab_fail "QMP cont failed"
    else
        [ "$st2" = running ] || lab_fail "a VM saved running came back '$st2': $(tail -n 3 /tmp/snap2.out | tr '\n' '|')"
    fi
    for _i in $(seq 1500); do
        kill -0 $pid2 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 $pid2 2>/dev/null; then
        lab_vmm_kill $pid2 /tmp/snap2.out
        lab_fail "the restored VM did not power off: $(tail -n 3 $s2 | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/snap2.out)"
    fi
    wait $pid2
    status2=$?
    done_line=$(tr -d '\r' <$s2 | grep -m1 LAB-L2-SNAP-DONE)
    if [ -z "$done_line" ] && [ "$status2" = 3 ] && [ -z "${SNAP_RERUN:-}" ] &&
        snap_restored_reset_ok /tmp/snap2.out $s2 "$saved" 20; then
        snap_run "$paused"
        LAB_L2_RERUN="${LAB_L2_RERUN:-}$SNAP_RERUN"
        return 0
    fi
    [ -n "$done_line" ] || lab_fail "the restored guest did not finish: $(tail -n 3 $s2 /tmp/snap2.out | tr -d '\r' | tr '\n' '|')"
    [ "$status2" = 0 ] || lab_fail "the restored vmm exited $status2: $(tail -n 3 /tmp/snap2.out | tr '\n' '|')"

    # The counter, across the two processes: 1..SNAP_RECORDS, each once.
    snap_counts $s1 $s2 | awk -v n=$SNAP_RECORDS '
        $1 != NR { print "count " NR " reads " $1 " (saved at '"$saved"')"; bad = 1; exit 1 }
        END { if (!bad && NR != n) { print "counted to " NR " of " n; exit 1 } }' >/tmp/snap.check ||
        lab_fail "the counter is not contiguous across the restore: $(cat /tmp/snap.check); COM1 before the save ends with [$(tail -c 80 $s1 | od -An -c | tr -s ' \n' ' ')], after the restore begins with [$(head -c 80 $s2 | od -An -c | tr -s ' \n' ' ')]"
    first=$(snap_counts $s2 | head -n1)

    # The disk: sector N holds record N, for every N, once.
    bad=$(dd if="$disk" bs=512 skip=1 count=$SNAP_RECORDS 2>/dev/null | tr -d '\000' |
        awk -v n=$SNAP_RECORDS '$0 != sprintf("SEQ %08d", NR) { print "record " NR ": [" $0 "]"; exit }
            END { if (NR != n) print "records: " NR " of " n }')
    [ -z "$bad" ] || lab_fail "the disk is not a contiguous sequence: $bad"
    after=$(dd if="$disk" bs=512 skip=$((SNAP_RECORDS + 1)) 2>/dev/null | tr -d '\000' | wc -c)
    [ "$after" = 0 ] || lab_fail "the disk has $after bytes past record $SNAP_RECORDS"

    SNAP_EVIDENCE="saved at count $saved ($size bytes in $save_s s, VM $state1), vmm killed with SIGKILL;"
    SNAP_EVIDENCE="$SNAP_EVIDENCE restored $st2 in $restore_s s, first whole count after it $first; $done_line;"
    SNAP_EVIDENCE="$SNAP_EVIDENCE counter 1..$SNAP_RECORDS contiguous across both processes; disk holds records 1..$SNAP_RECORDS once each; restored vmm exited 0"
}
