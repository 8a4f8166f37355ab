# The boot failure rate's L1 side (tests/lab/boot-rate boots one L1 with
# it as lab.scenario=boot-rate). Boots the "boot" scenario's L2 (Debian's
# kernel, the lab's initramfs, 2 vCPUs, 256 MiB; the guest reports what it
# sees and powers off) N times with each VMM in turn (vmm, QEMU 7.2:
# lab_l2_cmd's command lines, the same for every scenario), and says how
# each boot ended. With lab.rate_trace=1, KVM's kvm_exit and
# kvm_inj_exception tracepoints record what L2 did just before a failure:
# on an AMD host KVM reinitialises the VMCB when a vCPU shuts down (triple
# fault), so the registers vmm's dump shows afterwards are the reset
# state, while the trace still has the exits that led there.
# One line per boot:
#   LAB-RATE <vmm> <n> ok booted=<s> exit=<s>
#   LAB-RATE <vmm> <n> reset|hang|exit-<status>|no-marker <what the guest printed last>
# and, after a failure, LAB-RATE-DUMP (vmm's vCPU dump) and LAB-RATE-TRACE
# (the last exits) lines.
# lab.rate_scenario=balloon runs the "balloon" scenario's L2 instead
# (balloon.common.sh: inflation to a target, 100 MiB filled and freed with
# free page reporting, deflation; the guest powers off when done).
scenario=$(lab_arg lab.rate_scenario)
scenario=${scenario:-boot}
case $scenario in
boot) l2_args="--cpus 2 --mem 256M" limit=900 ;;
balloon)
    . /lab/scenarios/balloon.common.sh
    l2_args="--cpus 2 --mem $BALLOON_MEM --insmod virtio_mmio"
    l2_args="$l2_args --balloon free-page-reporting=on,deflate-on-oom=on,target=$BALLOON_TARGET"
    limit=2000 ;;
template) . /lab/scenarios/template.common.sh ;;
*) lab_fail "lab.rate_scenario=$scenario: use boot, balloon or template" ;;
esac
boots=$(lab_arg lab.rate_boots)
boots=${boots:-50}
vmms=$(lab_arg lab.rate_vmms | tr , ' ')
vmms=${vmms:-vmm qemu}
trace=$(lab_arg lab.rate_trace)
T=/sys/kernel/tracing

if [ "$trace" = 1 ]; then
    mount -t tracefs nodev $T 2>/dev/null
    echo 1024 >$T/buffer_size_kb
    for e in kvm_exit kvm_inj_exception kvm_msr kvm_page_fault kvm_userspace_exit; do
        echo 1 >$T/events/kvm/$e/enable || lab_log "no tracepoint kvm:$e in this kernel"
    done
fi

# lab.rate_scenario=template: the "template" scenario's clones. One
# template is made (as template.sh makes it), then each round starts 5
# clones at once and prints one LAB-RATE line per clone, numbered by the
# round: ok (it printed its own id from disk and RAM and powered off),
# reset, hang (still running after 150 s) or another exit.
if [ "$scenario" = template ]; then
    src=/tmp/tpl-src.img
    dd if=/dev/zero of=$src bs=1M count=$TPL_DISK_MIB 2>/dev/null
    tpl_create_disk_guest /tmp/tpl /tmp/tpl.out $src ||
        lab_fail "vmm template create exited $LAB_VMM_STATUS: $(tail -n 3 /tmp/tpl.out | tr '\n' '|')"
    lab_log "template made in $TPL_CREATE_S s"
    n=0
    while [ $n -lt "$boots" ]; do
        n=$((n + 1))
        [ "$trace" = 1 ] && : >$T/trace
        for i in 1 2 3 4 5; do
            rm -f /tmp/clone$i.img
            tpl_clone_start $i $i --dir /tmp/tpl --disk id=vda,path=/tmp/clone$i.img
        done
        tpl_clone_wait 5 170 || lab_fail "round $n: clones still running 20 s after their timeout"
        for i in 1 2 3 4 5; do
            st=$(cat /tmp/clone$i.status 2>/dev/null)
            line=$(tpl_clone_line $i)
            if [ "$line" = "$(tpl_clone_want $i)" ] && [ "$st" = 0 ]; then
                echo "LAB-RATE vmm $n ok booted=$(tpl_start_s $i)"
                continue
            fi
            case $st in
            3) kind=reset ;;
            124) kind=hang ;;
            *) kind=exit-$st ;;
            esac
            echo "LAB-RATE vmm $n $kind clone $i; printed [$line]; last: $(tail -n 2 /tmp/clone$i.out | tr -d '\r' | tr '\n' '|')"
            lab_dump_lines /tmp/clone$i.err | sed 's/^/LAB-RATE-DUMP /'
            [ "$trace" = 1 ] && [ $kind = reset ] && lab_kvm_trace_why | sed 's/^LAB-KVM-TRACE/LAB-RATE-TRACE/'
            cp /tmp/clone$i.err "/tmp/rate.clone.$n.$i.fail"
        done
    done
    lab_pass "$boots round(s) of 5 clones"
    exit 0
fi

# A line of the guest's own output, for a failure's description.
last_marker() {
    tr -d '\r' <"$1" | grep -v -e 'vcpu-dump: ' -e '^\[' | grep -E 'LAB-L2|Kernel panic|BUG|Oops|error' |
        tail -n 1 | cut -c1-160
}

n=0
while [ $n -lt "$boots" ]; do
    n=$((n + 1))
    for v in $vmms; do
        log=/tmp/rate.$v.out
        LAB_VMM=$v
        LAB_SCENARIO=$scenario
        # shellcheck disable=SC2086 # l2_args holds separate options
        lab_l2_cmd $l2_args || lab_fail "lab_l2_cmd failed for $v"
        LAB_SCENARIO=boot-rate
        [ "$trace" = 1 ] && : >$T/trace
        lab_l2_monitor_fifos
        t0=$(lab_uptime)
        # exec, so that $! is the VMM itself.
        eval "exec $LAB_L2_CMD" </dev/null >"$log" 2>&1 &
        pid=$!
        lab_l2_monitor_balloon
        status=""
        for _i in $(seq $limit); do
            kill -0 $pid 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 $pid 2>/dev/null; then
            lab_vmm_dump "$pid" "$log" >/dev/null
            kill -9 $pid 2>/dev/null
            wait $pid 2>/dev/null
            kind=hang
        else
            wait $pid
            status=$?
            took=$(lab_since "$t0")
            if grep -q LAB-L2-SCENARIO-DONE "$log" && [ "$status" = 0 ]; then
                b=$(grep -m1 LAB-L2-BOOTED "$log" | sed -n 's/.*uptime=\([0-9.]*\).*/\1/p')
                echo "LAB-RATE $v $n ok booted=${b:-?} exit=$took"
                continue
            fi
            case $v.$status in
            vmm.3) kind=reset ;;
            # QEMU runs with -no-reboot: a reset ends it with status 0.
            qemu.0) kind=reset ;;
            *) kind=exit-$status ;;
            esac
        fi
        echo "LAB-RATE $v $n $kind after $(lab_since "$t0") s; last: $(last_marker "$log")"
        lab_dump_lines "$log" | sed 's/^/LAB-RATE-DUMP /'
        if [ "$trace" = 1 ] && [ $kind = reset ]; then
            lab_kvm_trace_why | sed 's/^LAB-KVM-TRACE/LAB-RATE-TRACE/'
        elif [ "$trace" = 1 ]; then
            grep -v '^#' $T/trace | tail -n 40 | cut -c1-200 | sed 's/^/LAB-RATE-TRACE /'
        fi
        cp "$log" "/tmp/rate.$v.$n.fail"
    done
done
lab_pass "$boots boot(s) with each of: $vmms"
