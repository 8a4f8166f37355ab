# lab-timeout: 120
# L1 boots under TCG, kvm_amd loads, /dev/kvm is there, and L1's init
# holds one paused KVM VM (guest/l1-init says why).
[ -c /dev/kvm ] || lab_fail "no /dev/kvm in L1"
[ -d /sys/module/kvm_amd ] || lab_fail "kvm_amd not loaded"
for _i in $(seq 50); do
    grep -q "paused" /tmp/lab-vm-holder.log 2>/dev/null && break
    sleep 0.1
done
grep -q "paused" /tmp/lab-vm-holder.log 2>/dev/null ||
    lab_fail "L1's init holds no KVM VM: $(tr '\n' '|' </tmp/lab-vm-holder.log 2>/dev/null)"
lab_pass "/dev/kvm $(ls -l /dev/kvm | awk '{print $5 $6}')," \
    "kvm_amd$(for p in nested npt vgif; do printf ' %s=%s' $p "$(cat /sys/module/kvm_amd/parameters/$p 2>/dev/null)"; done)," \
    "$(grep -c ^processor /proc/cpuinfo) CPU(s) with svm: $(grep -c -w svm /proc/cpuinfo)," \
    "kernel $(uname -r), L1 up $(lab_uptime) s; VM held: $(grep -o 'guest started.*' /tmp/lab-vm-holder.log)"
