# lab-timeout: 360
# lab-needs: vmm
# The RAM policy where templates are made and cloned, with a Linux guest:
# (a) QEMU's manual templating flow (vmm run with RAM in a share=on file,
#     balloon free-page-reporting=on, saved with x-ignore-shared) and a
#     clone command line (the file share=off,readonly=on,rom=off) that asks
#     for free-page-reporting=on: refused before anything runs (exit 2,
#     docs/policy.md's line [4], no guest output);
# (b) the same flow with a plain balloon whose target was lowered over QMP
#     before the save: the clone's restore is refused by the policy run on
#     the saved balloon state (exit 2, "the saved state" line);
# (c) vmm template create with free-page-reporting=on: refused before the
#     guest boots (exit 2, line [4] for DIR/memory), DIR not created.
doc=/lab/policy.md
[ -f $doc ] || lab_fail "no $doc in L1"
. /lab/scenarios/snapshot.common.sh
base="$LAB_L2_BASE quiet lab.scenario=template-policy lab.insmod=virtio_mmio"

clone_mem() { echo "size=128M,backing=file,path=$1,share=off,readonly=on,rom=off"; }

# tp_boot NAME MEM BALLOON: vmm run with RAM in MEM (share=on), the
# balloon options BALLOON, COM1 to /tmp/NAME.serial, QMP /tmp/NAME.qmp;
# waits until the guest is ready. Sets pid (LAB_VMM_STATUS when vmm ended).
tp_boot() {
    rm -f "$2" /tmp/$1.*
    truncate -s 128M "$2"
    LAB_VMM_STATUS=""
    vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$base,virtio_balloon" --cpus 1 \
        --memory size=128M,backing=file,path=$2,share=on --balloon "$3" \
        --serial file=/tmp/$1.serial --qmp unix:/tmp/$1.qmp </dev/null >/tmp/$1.out 2>&1 &
    pid=$!
    for _i in $(seq 600); do
        grep -q LAB-TP-READY /tmp/$1.serial 2>/dev/null && return 0
        kill -0 $pid 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 $pid 2>/dev/null; then
        lab_vmm_kill $pid /tmp/$1.out
    else
        wait $pid
        LAB_VMM_STATUS=$?
    fi
    return 1
}
# tp_save NAME: x-ignore-shared, migrate to /tmp/NAME.state, quit (exit 0).
tp_save() {
    q=/tmp/$1.qmp
    snap_ctl $q migrate-set-capabilities '{"capabilities": [{"capability": "x-ignore-shared", "state": true}]}' >/dev/null ||
        lab_fail "$1: migrate-set-capabilities failed"
    snap_ctl $q migrate "{\"uri\": \"file:/tmp/$1.state\"}" >/dev/null || lab_fail "$1: QMP migrate failed"
    st=""
    for _i in $(seq 300); do
        st=$(snap_ctl $q query-migrate | snap_status)
        case $st in completed | failed) break ;; esac
        sleep 0.1
    done
    [ "$st" = completed ] || lab_fail "$1: the save ended as '$st'"
    snap_ctl $q quit >/dev/null
    for _i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -0 $pid 2>/dev/null && { kill -9 $pid; lab_fail "$1: vmm still runs 10 s after QMP quit"; }
    wait $pid
    qs=$?
    [ $qs = 0 ] || lab_fail "$1: vmm exited $qs after QMP quit: $(tail -n 3 /tmp/$1.out | tr '\n' '|')"
}

# (c) first: it boots nothing.
D=/tmp/tpc
rm -rf $D
vmm template create --dir $D --ready serial=LAB-TP-READY --kernel /lab/vmlinuz --initrd /lab/l2.cpio \
    --cmdline "$base" --memory size=128M --balloon free-page-reporting=on </dev/null >/tmp/tpc.out 2>/tmp/tpc.err
rc=$?
[ $rc = 2 ] || lab_fail "(c) template create with free-page-reporting=on exited $rc, not 2: $(head -c 300 /tmp/tpc.err)"
want=$(lab_policy_message 4 $D/memory)
[ -n "$want" ] || lab_fail "docs/policy.md has no message 4"
[ "$(head -n 1 /tmp/tpc.err)" = "$want" ] || {
    lab_log "(c) expected first line: $want"
    lab_log "(c) got: $(cat /tmp/tpc.err)"
    lab_fail "(c) template create's refusal is not docs/policy.md's line [4] for $D/memory (both above)"
}
[ ! -s /tmp/tpc.out ] || lab_fail "(c) template create printed on stdout: $(head -c 200 /tmp/tpc.out)"
[ ! -e $D ] || lab_fail "(c) the refused template create left $D behind: $(ls -la $D | tr '\n' '|')"
lab_log "(c) template create refused: exit 2, $(wc -l </tmp/tpc.err) line(s), $D not created"

# (a) the manual flow with free page reporting.
mem=/tmp/tp.mem
lab_reset_retry /tmp/tpa.out tp_boot tpa $mem free-page-reporting=on ||
    lab_fail "(a) the template guest was not ready: $(tail -n 3 /tmp/tpa.serial /tmp/tpa.out | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/tpa.out)"
tp_save tpa
sizea=$(stat -c %s /tmp/tpa.state)
vmm run --incoming file:/tmp/tpa.state --cpus 1 --memory "$(clone_mem $mem)" --balloon free-page-reporting=on \
    --serial stdio </dev/null >/tmp/tpa.clone.out 2>/tmp/tpa.clone.err
rc=$?
[ $rc = 2 ] || lab_fail "(a) the clone with free-page-reporting=on exited $rc, not 2: $(head -c 300 /tmp/tpa.clone.err)"
[ ! -s /tmp/tpa.clone.out ] || lab_fail "(a) the refused clone printed on stdout (COM1): $(head -c 200 /tmp/tpa.clone.out)"
lab_policy_message 4 $mem >/tmp/tpa.want
cmp -s /tmp/tpa.want /tmp/tpa.clone.err || {
    lab_log "(a) expected: $(cat /tmp/tpa.want)"
    lab_log "(a) got: $(cat /tmp/tpa.clone.err)"
    lab_fail "(a) the clone's refusal differs from docs/policy.md's line [4] for $mem (both above)"
}
lab_log "(a) saved ($sizea bytes); clone refused: exit 2, line [4], no output"

# (b) a plain balloon, its target lowered before the save.
mem=/tmp/tpb.mem
lab_reset_retry /tmp/tpb.out tp_boot tpb $mem stats=on ||
    lab_fail "(b) the template guest was not ready: $(tail -n 3 /tmp/tpb.serial /tmp/tpb.out | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/tpb.out)"
target=$((96 * 1048576))
snap_ctl /tmp/tpb.qmp balloon "{\"value\": $target}" >/dev/null || lab_fail "(b) QMP balloon failed"
actual=""
for _i in $(seq 150); do
    actual=$(snap_ctl /tmp/tpb.qmp query-balloon | sed -n 's/.*"actual": *\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$actual" ] && [ "$actual" -le $target ] && break
    sleep 0.2
done
tp_save tpb
sizeb=$(stat -c %s /tmp/tpb.state)
vmm run --incoming file:/tmp/tpb.state --cpus 1 --memory "$(clone_mem $mem)" --balloon stats=on \
    --serial stdio </dev/null >/tmp/tpb.clone.out 2>/tmp/tpb.clone.err
rc=$?
[ $rc = 2 ] || lab_fail "(b) the clone of a template with a lowered balloon target exited $rc, not 2: $(head -c 300 /tmp/tpb.clone.err)"
[ ! -s /tmp/tpb.clone.out ] || lab_fail "(b) the refused clone printed on stdout (COM1): $(head -c 200 /tmp/tpb.clone.out)"
# After vmm's log lines: the header, then the policy's line for the state.
head1="vmm: the saved VM's devices need what this VM's RAM cannot do; nothing was started:"
line=$(awk -v h="$head1" 'seen { print; exit } $0 == h { seen = 1 }' /tmp/tpb.clone.err)
lab_log "(b) the refused clone's stderr: $(tr '\n' '|' </tmp/tpb.clone.err)"
[ -n "$line" ] || lab_fail "(b) no line [$head1] followed by the policy's line: $(tr '\n' '|' </tmp/tpb.clone.err)"
echo "$line" | grep -q -E "^vmm: balloon: the saved state \(target 96M, [^)]+ inflated\) cannot work on guest RAM \(--memory backing=file,path=$mem,share=off,readonly=on,rom=off\): " ||
    lab_fail "(b) the line after the header is not 'vmm: balloon: the saved state (target 96M, ... inflated) cannot work on guest RAM (--memory ...)': [$line]"

lab_pass "(a) template with free-page-reporting=on saved ($sizea bytes, x-ignore-shared), clone with free-page-reporting=on" \
    "refused: exit 2, docs/policy.md line [4] exactly, no output; (b) balloon lowered to 96M (guest at $((${actual:-0} / 1048576)) MiB)," \
    "saved ($sizeb bytes), clone refused: exit 2, no output, '$(echo "$line" | cut -c1-120)...';" \
    "(c) template create with free-page-reporting=on: exit 2, line [4] for $D/memory, $D not created"
