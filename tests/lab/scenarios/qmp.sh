# lab-timeout: 280
# lab-needs: vmm
# QEMU's own Python QMP client (qemu.qmp, with its interpreter, carried
# into L1) drives vmm running a Linux guest: stop/cont, balloon (the
# guest's MemAvailable drops, query-balloon agrees), virtio-mem resize
# (MemTotal rises), migrate to a file, system_powerdown (the guest shuts
# down, SHUTDOWN). See tests/lab/qmp_client.py.
[ -x /lab/python/run ] || lab_fail "no Python in L1: the lab carries the interpreter of target/qmp-venv (scripts/setup.sh makes it)"
s=/tmp/qmp.serial q=/tmp/qmp.sock
cmdline="$LAB_L2_BASE lab.scenario=qmp lab.insmod=virtio_mmio"
# One vmm and one run of the client; sets rc (the client's status),
# status (vmm's) and, for lab_reset_retry, LAB_VMM_STATUS.
qmp_run() {
    rm -f $s $q
    vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$cmdline" --cpus 2 \
        --memory size=384M --balloon stats=on --virtio-mem size=512M,requested=0,id=mem0 \
        --serial file=$s --qmp unix:$q </dev/null >/tmp/qmp.out 2>&1 &
    pid=$!
    /lab/python/run /lab/qmp_client.py $q $s /tmp/qmp.state >/tmp/qmp.client 2>&1
    rc=$?
    cat /tmp/qmp.client
    for _i in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    if kill -0 $pid 2>/dev/null; then
        lab_vmm_kill $pid /tmp/qmp.out
        lab_log "guest: $(tr -d '\r' <$s | grep -v LAB-L2-QMP-MEM | grep -i 'virtio\|mem' | tail -n 12 | tr '\n' '|')"
        lab_log "guest memory: $(tr -d '\r' <$s | grep LAB-L2-QMP-MEM | tail -n 1)"
        lab_log "vmm: $(tail -n 6 /tmp/qmp.out | tr '\n' '|')"
        lab_fail "vmm still runs after the client ($rc): $(grep -m1 LAB-QMP-FAIL /tmp/qmp.client) $(tail -n 3 $s | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/qmp.out)"
    fi
    wait $pid
    status=$?
    # A triple fault is the lab's known L2 reset (see lab_l2_retry), not a
    # QMP failure: nothing the client asks for resets the guest.
    LAB_VMM_STATUS=""
    if [ $rc != 0 ] && grep -q 'triple fault' /tmp/qmp.out; then
        LAB_VMM_STATUS=$status
        return 1
    fi
    return 0
}
lab_reset_retry /tmp/qmp.out qmp_run || true
if [ $rc != 0 ]; then
    lab_log "guest: $(tr -d '\r' <$s | grep -v LAB-L2-QMP-MEM | tail -n 8 | tr '\n' '|')"
    lab_log "vmm: $(tail -n 6 /tmp/qmp.out | tr '\n' '|')"
    lab_fail "$(grep -m1 LAB-QMP-FAIL /tmp/qmp.client || tail -n 3 /tmp/qmp.client | tr '\n' '|')"
fi
[ $status = 0 ] || lab_fail "vmm exited $status: $(tail -n 3 /tmp/qmp.out | tr '\n' '|')"
lab_pass "$(grep '^LAB-QMP ' /tmp/qmp.client | sed 's/^LAB-QMP //' | tr '\n' ';' | sed 's/;$//; s/;/; /g'); vmm exited 0"
