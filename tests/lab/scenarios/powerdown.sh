# lab-timeout: 200
# lab-needs: vmm
# QMP system_powerdown presses the ACPI power button: the Linux guest sees
# it through the Generic Event Device and its button driver and shuts
# down; vmm reports POWERDOWN, then SHUTDOWN (guest-shutdown), and exits 0.
s=/tmp/pd.serial q=/tmp/pd.qmp
cmdline="$LAB_L2_BASE quiet lab.scenario=powerdown lab.insmod=virtio_mmio,button,evdev"
# Boots L2 and waits for its power button to be ready; sets pid, ready
# and, when vmm ended first, LAB_VMM_STATUS.
pd_boot() {
    rm -f $s $q
    LAB_VMM_STATUS=""
    vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$cmdline" --cpus 2 \
        --memory size=256M --serial file=$s --qmp unix:$q </dev/null >/tmp/pd.out 2>&1 &
    pid=$!
    ready=""
    for _i in $(seq 1500); do
        ready=$(tr -d '\r' <$s 2>/dev/null | grep -m1 -E 'LAB-L2-POWERDOWN-(READY|NO-BUTTON)')
        [ -n "$ready" ] && break
        if ! kill -0 $pid 2>/dev/null; then
            wait $pid
            LAB_VMM_STATUS=$?
            break
        fi
        sleep 0.1
    done
    case $ready in *READY*) return 0 ;; esac
    lab_vmm_kill $pid /tmp/pd.out
    return 1
}
lab_reset_retry /tmp/pd.out pd_boot ||
    lab_fail "the guest found no power button: ${ready:-nothing} $(tail -n 3 $s /tmp/pd.out | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/pd.out)"
t0=$(lab_uptime)
events=$(vmm ctl --qmp $q --timeout 60 system_powerdown --wait-event SHUTDOWN 2>&1 | tr -d '\n' | tr -s ' ')
for _i in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then
    lab_vmm_kill $pid /tmp/pd.out
    lab_fail "vmm still runs 30 s after system_powerdown: $events; $(tail -n 3 $s | tr -d '\r' | tr '\n' '|')$(lab_dump_why /tmp/pd.out)"
fi
wait $pid
status=$?
took=$(lab_since "$t0")
pressed=$(tr -d '\r' <$s | grep -m1 LAB-L2-POWER-BUTTON)
[ -n "$pressed" ] || lab_fail "the guest did not see the button press: $(tail -n 3 $s | tr -d '\r' | tr '\n' '|')"
case $events in
*'"event": "SHUTDOWN"'*'"reason": "guest-shutdown"'* | *'"reason": "guest-shutdown"'*'"event": "SHUTDOWN"'*) ;;
*) lab_fail "no SHUTDOWN (guest-shutdown) event after system_powerdown: $events" ;;
esac
[ "$status" = 0 ] || lab_fail "vmm exited $status: $(tail -n 3 /tmp/pd.out | tr '\n' '|')"
lab_pass "$ready; $pressed; vmm ctl system_powerdown printed: $events; vmm exited 0 after $took s"
