# The snapshot benchmark's L1 side (tests/lab/bench-snapshot boots one L1
# with it as lab.scenario=bench-snapshot). For each VMM (vmm, QEMU 7.2)
# and each RAM mode (anonymous RAM in the stream; shared file RAM left
# out with x-ignore-shared): boot the same L2 (Debian's kernel, the lab's
# initramfs, 256 MiB, 1 vCPU, a tick on COM1 every 10 ms) once, save it
# running over QMP to a file with `exec:cat>FILE` (both VMMs take it) N
# times (`cont` between), kill it, then restore the last file N times,
# each in a new process with `-incoming defer` and QMP (x-ignore-shared
# set on both sides). With shared RAM the restores map the file as a
# template's clone does: privately (vmm and QEMU 10: share=off,readonly=on,
# rom=off; QEMU 7.2 has no rom=, so share=off on a writable file), so that
# the file keeps the RAM the snapshot was saved with.
# Times in L1 (10 ms resolution): save = QMP migrate to `completed`
# (query-migrate's total-time, in ms); restore = process start to
# `running` in query-status, and to the first tick on COM1 after it.
# One line per run:
#   LAB-SNAPBENCH <vmm> <mode> <run> ok size=<bytes> save_ms=<ms> running=<s> output=<s>
#   LAB-SNAPBENCH <vmm> <mode> <run> fail <why>
runs=$(lab_arg lab.bench_runs)
runs=${runs:-5}
vmms=$(lab_arg lab.bench_vmms | tr , ' ')
cmdline="console=ttyS0 panic=-1 quiet lab.scenario=bench-snap"
ctl() { vmm ctl --qmp "$1" --timeout 60 "$2" ${3:+"$3"}; }
status_of() { sed -n 's/.*"status": "\([a-z-]*\)".*/\1/p' | head -n1; }
num_of() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" | head -n1; }

# start VMM MODE ROLE QMP SERIAL: a VMM process in the background ($!).
start() {
    _v=$1 _mode=$2 _role=$3 _q=$4 _s=$5
    rm -f "$_q" "$_s"
    if [ "$_v" = vmm ]; then
        _mem="size=256M"
        [ "$_mode.$_role" = shared.boot ] && _mem="size=256M,backing=file,path=/dev/shm/ram,share=on"
        [ "$_mode.$_role" = shared.restore ] && _mem="size=256M,backing=file,path=/dev/shm/ram,share=off,readonly=on,rom=off"
        if [ "$_role" = boot ]; then
            vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$cmdline" --cpus 1 \
                --memory "$_mem" --serial "file=$_s" --qmp "unix:$_q" </dev/null >/tmp/vmm.$_role.out 2>&1 &
        else
            vmm run --cpus 1 --memory "$_mem" --serial "file=$_s" --qmp "unix:$_q" --incoming defer \
                </dev/null >/tmp/vmm.$_role.out 2>&1 &
        fi
    else
        _mem=""
        [ "$_mode.$_role" = shared.boot ] && _mem="-object memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/ram,share=on -machine memory-backend=mem"
        [ "$_mode.$_role" = shared.restore ] && _mem="-object memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/ram,share=off -machine memory-backend=mem"
        _in=""
        [ "$_role" = boot ] || _in="-incoming defer"
        # shellcheck disable=SC2086
        qemu-system-x86_64 -enable-kvm -cpu host -M microvm,acpi=on,rtc=on -nodefaults \
            -smp 1 -m 256M $_mem -display none -no-reboot -serial "file:$_s" \
            -qmp "unix:$_q,server=on,wait=off" -kernel /lab/vmlinuz -initrd /lab/l2.cpio \
            -append "$cmdline" $_in </dev/null >/tmp/qemu.$_role.out 2>&1 &
    fi
}

wait_tick() { # SERIAL SECONDS: until a tick is on COM1
    _t=$(lab_uptime)
    while ! grep -q LAB-L2-TICK "$1" 2>/dev/null; do
        awk -v a="$_t" -v b="$(lab_uptime)" -v s="$2" 'BEGIN { exit !(b - a > s) }' && return 1
        sleep 0.01
    done
}

caps() { # QMP MODE: the capabilities both ends need
    _c='{"capability": "events", "state": false}'
    [ "$2" = shared ] && _c='{"capability": "x-ignore-shared", "state": true}'
    ctl "$1" migrate-set-capabilities "{\"capabilities\": [$_c]}" >/dev/null
}

save() { # QMP MODE FILE: prints "size save_ms" or fails
    caps "$1" "$2" || return 1
    rm -f "$3"
    ctl "$1" migrate "{\"uri\": \"exec:cat > $3\"}" >/dev/null || return 1
    for _i in $(seq 600); do
        _r=$(ctl "$1" query-migrate | tr -d '\n')
        case $(echo "$_r" | status_of) in
        completed) echo "$(stat -c %s "$3") $(echo "$_r" | num_of total-time)"; return 0 ;;
        failed) return 1 ;;
        esac
        sleep 0.05
    done
    return 1
}

for v in ${vmms:-vmm qemu}; do
    for mode in anon shared; do
        rm -f /dev/shm/ram
        start $v $mode boot /tmp/b.qmp /tmp/b.serial
        pid=$!
        if ! wait_tick /tmp/b.serial 120; then
            echo "LAB-SNAPBENCH $v $mode 0 fail the guest printed no tick: $(tail -n 2 /tmp/$v.boot.out | tr '\n' '|')"
            kill -9 $pid; wait $pid 2>/dev/null; continue
        fi
        img=/tmp/state.$v.$mode
        sizes="" saves="" failed=""
        for i in $(seq 1 $runs); do
            if r=$(save /tmp/b.qmp $mode $img.$i); then
                set -- $r
                sizes="$sizes $1" saves="$saves $2"
            else
                failed="save $i failed: $(ctl /tmp/b.qmp query-migrate | tr '\n' ' ')"
                break
            fi
            # The last save is the one restored: with shared RAM, the
            # file must still hold the RAM that save left in it.
            [ $i = $runs ] && break
            rm -f $img.$i
            ctl /tmp/b.qmp cont >/dev/null
            sleep 0.2
        done
        kill -9 $pid; wait $pid 2>/dev/null
        if [ -n "$failed" ]; then
            echo "LAB-SNAPBENCH $v $mode 0 fail $failed"
            continue
        fi
        for i in $(seq 1 $runs); do
            t0=$(lab_uptime)
            start $v $mode restore /tmp/r.qmp /tmp/r.serial
            pid=$!
            ok=0 running="" output=""
            for _i in $(seq 3000); do
                [ -S /tmp/r.qmp ] && caps /tmp/r.qmp $mode 2>/dev/null && ok=1 && break
                sleep 0.01
            done
            [ $ok = 1 ] && ctl /tmp/r.qmp migrate-incoming "{\"uri\": \"exec:cat $img.$runs\"}" >/dev/null || ok=0
            while [ $ok = 1 ]; do
                st=$(ctl /tmp/r.qmp query-status 2>/dev/null | status_of)
                [ "$st" = running ] && { running=$(lab_since "$t0"); break; }
                kill -0 $pid 2>/dev/null || { ok=0; break; }
                awk -v a="$t0" -v b="$(lab_uptime)" 'BEGIN { exit !(b - a > 120) }' && { ok=0; break; }
                sleep 0.01
            done
            [ $ok = 1 ] && wait_tick /tmp/r.serial 60 && output=$(lab_since "$t0") || ok=0
            size=$(echo $sizes | cut -d' ' -f$i) save_ms=$(echo $saves | cut -d' ' -f$i)
            if [ $ok = 1 ]; then
                echo "LAB-SNAPBENCH $v $mode $i ok size=$size save_ms=$save_ms running=$running output=$output"
            else
                echo "LAB-SNAPBENCH $v $mode $i fail $(tail -n 2 /tmp/$v.restore.out | tr '\n' '|') $(ctl /tmp/r.qmp query-migrate 2>&1 | tr '\n' ' ')"
            fi
            kill -9 $pid; wait $pid 2>/dev/null
        done
        rm -f $img.$runs /dev/shm/ram
    done
done
lab_pass "$runs run(s) each of ${vmms:-vmm qemu}, anonymous and shared RAM"
