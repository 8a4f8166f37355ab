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
boots=$(lab_arg lab.rate_boots)
boots=${boots:-50}
vmms=$(lab_arg lab.rate_vmms | tr , ' ')
vmms=${vmms:-vmm qemu}
trace=$(lab_arg lab.rate_trace)
T=/sys/kernel/tracing

if [ "$trace" = 1 ]; then
    mount -t tracefs nodev $T 2>/dev/null
    echo 256 >$T/buffer_size_kb
    for e in kvm_exit kvm_inj_exception kvm_msr; do
        echo 1 >$T/events/kvm/$e/enable || lab_fail "cannot enable the tracepoint kvm:$e"
    done
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
        LAB_SCENARIO=boot
        lab_l2_cmd --cpus 2 --mem 256M || lab_fail "lab_l2_cmd failed for $v"
        LAB_SCENARIO=boot-rate
        [ "$trace" = 1 ] && : >$T/trace
        t0=$(lab_uptime)
        # exec, so that $! is the VMM itself.
        eval "exec $LAB_L2_CMD" </dev/null >"$log" 2>&1 &
        pid=$!
        status=""
        for _i in $(seq 900); do
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
        if [ "$trace" = 1 ]; then
            grep -v '^#' $T/trace | tail -n 25 | cut -c1-200 | sed 's/^/LAB-RATE-TRACE /'
        fi
        cp "$log" "/tmp/rate.$v.$n.fail"
    done
done
lab_pass "$boots boot(s) with each of: $vmms"
