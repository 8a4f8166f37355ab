# The template benchmark's L1 side (tests/lab/bench-template boots one L1
# with it as lab.scenario=bench-template). The same L2 guest (Debian's
# kernel, the lab's initramfs, 1 vCPU; scenarios/bench-tpl.l2.sh prints
# LAB-TPL-READY, then a tick LAB-TPL-TICK N every 50 ms, later every 2 s)
# for each VMM:
#
# vmm:  `vmm template create --ready serial=LAB-TPL-READY` (RAM in
#       DIR/memory, share=on; x-ignore-shared save to DIR/state), clones
#       with `vmm template clone --dir DIR` (DIR/memory private and
#       read-only), cold boots with `vmm run --memory size=S`.
# QEMU 7.2, the flow of QEMU's x-ignore-shared commit (seed 002) and
#       Kata: template with -object memory-backend-file,id=pc.ram,
#       size=S,mem-path=F,share=on -machine memory-backend=pc.ram; at
#       LAB-TPL-READY, QMP migrate-set-capabilities x-ignore-shared, stop,
#       migrate exec:cat>STATE, quit. Clones with the same command line but
#       share=off (QEMU 7.2 has no rom=, and readonly=on without it makes
#       the RAM read-only to the guest: LAB.md) and -incoming defer, then
#       QMP migrate-set-capabilities x-ignore-shared, migrate-incoming
#       exec:cat STATE, and cont once it is paused (the template was saved
#       paused). Cold boots with -m S (anonymous RAM).
# Both on microvm (QEMU: -M microvm,acpi=on,rtc=on as the lab's lab_l2).
#
# Times are L1 uptimes (10 ms resolution), read with the shell's own
# `read` from /proc/uptime (no process started): t0 just before the VMM
# is executed (a `sh -c` that records its pid and execs the VMM); a
# guest line when it comes out of the VMM's COM1 (stdout, a pipe) into a
# reader; vmm's "VM running" when that log line comes out of its stderr;
# QEMU's running when `cont` has been answered (or query-status says
# running). One line per measurement:
#   LAB-TPLBENCH <vmm> template <size> ok create=<s> ready=<s> state=<bytes> memfile_kb=<kB>
#   LAB-TPLBENCH <vmm> cold <run> ok tick=<s>
#   LAB-TPLBENCH <vmm> clone-<size> <run> ok running=<s> tick=<s> [read_ms=<ms>]
#   LAB-TPLBENCH <vmm> mem-<cold|clone> 0 ok n=<n> added_kb=<kB> ... pss_kb=<a,b,...>
#   LAB-TPLBENCH <vmm> <what> <run> fail <why>
runs=$(lab_arg lab.bench_runs)
runs=${runs:-5}
vmms=$(lab_arg lab.bench_vmms | tr , ' ')
vmms=${vmms:-vmm qemu}
nmem=$(lab_arg lab.bench_mem_vms)
nmem=${nmem:-10}
cmdline="console=ttyS0 panic=-1 quiet lab.scenario=bench-tpl"
W=/tmp/tb
T=/dev/shm/tpl
rm -rf $W $T
mkdir -p $W $T
QEMU="qemu-system-x86_64 -enable-kvm -cpu host -M microvm,acpi=on,rtc=on -nodefaults
 -global virtio-mmio.force-legacy=false -smp 1 -display none -serial stdio -no-reboot
 -kernel /lab/vmlinuz -initrd /lab/l2.cpio"

# serial_reader DIR: the VM's COM1 on stdin; the L1 uptime of the first
# LAB-TPL-READY goes to DIR/ready, of the first tick to DIR/tick; every
# line to DIR/serial.
serial_reader() {
    while IFS= read -r _l; do
        printf '%s\n' "$_l" >>"$1/serial"
        case $_l in
        *LAB-TPL-READY*) read -r _u _ </proc/uptime; [ -e "$1/ready" ] || echo "$_u" >"$1/ready" ;;
        *LAB-TPL-TICK*) read -r _u _ </proc/uptime; echo "$_u" >"$1/tick"; break ;;
        esac
    done
    cat >>"$1/serial"
}

# log_reader DIR: the VMM's stderr on stdin, to DIR/err; the uptime of
# vmm's "VM running" goes to DIR/running.
log_reader() {
    while IFS= read -r _l; do
        printf '%s\n' "$_l" >>"$1/err"
        case $_l in
        *"VM running"*) read -r _u _ </proc/uptime; [ -e "$1/running" ] || echo "$_u" >"$1/running" ;;
        # vmm template create: it saw its ready text on COM1 (it pauses the
        # guest before the line's newline, so the COM1 reader gets that line
        # only at the end).
        *"the guest is ready after"*) read -r _u _ </proc/uptime; echo "$_u" >"$1/logready" ;;
        esac
    done
}

# launch DIR CMD...: CMD in the background, stdout through serial_reader,
# stderr through log_reader; DIR/t0 is the uptime just before the exec.
# Sets PID (the VMM's own pid).
launch() {
    _d=$1
    shift
    rm -rf "$_d"
    mkdir -p "$_d"
    mkfifo "$_d/errpipe" "$_d/qmp.in" "$_d/qmp.out"
    log_reader "$_d" <"$_d/errpipe" &
    # shellcheck disable=SC2016
    sh -c 'echo $$ >"$0/pid"; read -r u _ </proc/uptime; echo "$u" >"$0/t0"; exec "$@"' \
        "$_d" "$@" </dev/null 2>"$_d/errpipe" | serial_reader "$_d" &
    _n=3000
    while [ ! -s "$_d/pid" ] && [ $_n -gt 0 ]; do sleep 0.01; _n=$((_n - 1)); done
    PID=0
    [ -s "$_d/pid" ] && read -r PID <"$_d/pid"
}

# alive PID: the process exists and is not a zombie (the VMM is the first
# process of a background pipeline, which `wait PID` does not reap).
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    read -r _a _b _st _c <"/proc/$1/stat" 2>/dev/null || return 1
    [ "$_st" != Z ]
}

# wait_for FILE PID SECONDS: until FILE is there; 1 if PID ended or time ran out.
wait_for() {
    _n=$(($3 * 20))
    while [ ! -s "$1" ]; do
        alive "$2" || { sleep 0.2; [ -s "$1" ]; return; }
        _n=$((_n - 1))
        [ $_n -gt 0 ] || return 1
        sleep 0.05
    done
}

# now_s: NOW is L1's uptime in whole seconds (the shell's own read).
now_s() {
    read -r _nu _ </proc/uptime
    NOW=${_nu%.*}
}

# proc_state PID: what a process is doing, for a fail line.
proc_state() {
    echo "pid $1: $(sed -n 's/^State:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null | tr -d '\n')," \
        "wchan $(cat "/proc/$1/wchan" 2>/dev/null), stack $(tr '\n' ' ' <"/proc/$1/stack" 2>/dev/null | cut -c1-300)"
}

since() { # DIR FILE: seconds from DIR/t0 to the uptime in DIR/FILE
    awk -v a="$(cat "$1/t0")" -v b="$(cat "$1/$2")" 'BEGIN { printf "%.2f", b - a }'
}

stop_vm() { # PID: SIGKILL, and wait until it is gone (30 s at most)
    kill -9 "$1" 2>/dev/null
    now_s
    _dls=$((NOW + 30))
    while alive "$1"; do
        now_s
        if [ "$NOW" -ge $_dls ]; then
            echo "LAB-TPLBENCH-STUCK a VMM outlived SIGKILL by 30 s: $(proc_state "$1")"
            return 1
        fi
        sleep 0.05
    done
}

why() { # DIR: how the VMM ended, for a fail line
    echo "$(tail -n 3 "$1/err" 2>/dev/null | tr '\n' '|')$(tail -n 2 "$1/serial" 2>/dev/null | tr -d '\r' | tr '\n' '|')"
}

# QMP over a pipe chardev (-qmp pipe:DIR/qmp): fds 3 (commands) and 4
# (replies). qmp JSON: sends it, sets QR to the reply (events skipped).
qmp_open() {
    exec 3<>"$1/qmp.in" 4<>"$1/qmp.out"
}
qmp_close() { exec 3>&- 4>&-; }
qmp() {
    echo "$1" >&3
    while read -r -t 60 QR <&4; do
        case $QR in
        *'"return"'*) return 0 ;;
        *'"error"'*) return 1 ;;
        esac
    done
    QR="no reply in 60 s"
    return 1
}
IGNORE_SHARED='{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "x-ignore-shared", "state": true}]}}'

qemu_mem() { # SIZE FILE SHARE
    echo "-m $1 -object memory-backend-file,id=pc.ram,size=$1,mem-path=$2,share=$3 -machine memory-backend=pc.ram"
}

# make_template VMM SIZE: the template $T/VMM-SIZE; prints the result line.
make_template() {
    _v=$1 _s=$2 _d=$W/$1-template-$2 _t=$T/$1-$2
    rm -rf "$_t"
    if [ "$_v" = vmm ]; then
        launch "$_d" vmm template create --dir "$_t" --ready serial=LAB-TPL-READY \
            --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$cmdline" --cpus 1 \
            --memory "size=$_s" --serial stdio
        now_s
        _dlc=$((NOW + 400))
        while alive "$PID" && [ "$NOW" -lt $_dlc ]; do sleep 0.05; now_s; done
        read -r _u _ </proc/uptime
        echo "$_u" >"$_d/done"
        if [ ! -s "$_t/template.json" ]; then
            alive "$PID" && stop_vm "$PID"
            echo "LAB-TPLBENCH $_v template $_s fail no template.json: $(why "$_d")"
            return 1
        fi
        _state=$_t/state _mem=$_t/memory _ready=logready
    else
        _ready=ready
        mkdir -p "$_t"
        _mem=$_t/memory _state=$_t/state
        # shellcheck disable=SC2046
        launch "$_d" $QEMU $(qemu_mem "$_s" "$_mem" on) -append "$cmdline" -qmp "pipe:$_d/qmp"
        qmp_open "$_d"
        if ! wait_for "$_d/ready" "$PID" 240; then
            echo "LAB-TPLBENCH $_v template $_s fail no LAB-TPL-READY: $(why "$_d")"
            qmp_close; stop_vm "$PID"; return 1
        fi
        _ok=1
        qmp '{"execute": "qmp_capabilities"}' && qmp "$IGNORE_SHARED" && qmp '{"execute": "stop"}' &&
            qmp "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"exec:cat > $_state\"}}" || _ok=0
        now_s
        _dlm=$((NOW + 120))
        while [ $_ok = 1 ]; do
            qmp '{"execute": "query-migrate"}' || { _ok=0; break; }
            now_s
            [ "$NOW" -lt $_dlm ] || { _ok=0; QR="not completed in 120 s: $QR"; break; }
            case $QR in
            *'"status": "completed"'*) break ;;
            *'"status": "failed"'* | *'"status": "cancelled"'*) _ok=0 ;;
            esac
            sleep 0.02
        done
        [ $_ok = 1 ] && qmp '{"execute": "quit"}'
        qmp_close
        if [ $_ok = 0 ]; then
            echo "LAB-TPLBENCH $_v template $_s fail the save failed: $QR $(why "$_d")"
            stop_vm "$PID"; return 1
        fi
        now_s
        _dlc=$((NOW + 60))
        while alive "$PID" && [ "$NOW" -lt $_dlc ]; do sleep 0.05; now_s; done
        read -r _u _ </proc/uptime
        echo "$_u" >"$_d/done"
        alive "$PID" && { echo "LAB-TPLBENCH $_v template $_s fail QEMU did not quit: $(proc_state "$PID")"; stop_vm "$PID"; return 1; }
    fi
    # vmm's own log of the creation, for the record (not a marker).
    sed 's/^/    create log| /' "$_d/err" 2>/dev/null
    echo "LAB-TPLBENCH $_v template $_s ok create=$(since "$_d" done) ready=$(since "$_d" $_ready) state=$(stat -c %s "$_state") memfile_kb=$(du -k "$_mem" | cut -f1)"
}

# start_clone VMM SIZE DIR: a clone of $T/VMM-SIZE in the background (PID);
# for QEMU, also the QMP steps to running. 1 on failure (DIR/fail says why).
start_clone() {
    _v=$1 _s=$2 _d=$3 _t=$T/$1-$2
    if [ "$_v" = vmm ]; then
        launch "$_d" vmm template clone --dir "$_t" --serial stdio
        return 0
    fi
    # shellcheck disable=SC2046
    launch "$_d" $QEMU $(qemu_mem "$_s" "$_t/memory" off) -append "$cmdline" \
        -qmp "pipe:$_d/qmp" -incoming defer
    qmp_open "$_d"
    if ! { qmp '{"execute": "qmp_capabilities"}' && qmp "$IGNORE_SHARED" &&
        qmp "{\"execute\": \"migrate-incoming\", \"arguments\": {\"uri\": \"exec:cat $_t/state\"}}"; }; then
        echo "QMP: $QR" >"$_d/fail"
        qmp_close
        return 1
    fi
    now_s
    _dlq=$((NOW + 60))
    while :; do
        if ! qmp '{"execute": "query-status"}'; then
            echo "query-status: $QR" >"$_d/fail"; break
        fi
        now_s
        if [ "$NOW" -ge $_dlq ]; then
            qmp '{"execute": "query-migrate"}'
            echo "still inmigrate after 60 s; query-migrate: $QR; $(proc_state "$PID")" >"$_d/fail"
            break
        fi
        case $QR in
        *'"status": "inmigrate"'*) sleep 0.01 ;;
        *'"status": "paused"'*)
            qmp '{"execute": "cont"}' || echo "cont: $QR" >"$_d/fail"
            break ;;
        *'"status": "running"'*) break ;;
        *) echo "status: $QR" >"$_d/fail"; break ;;
        esac
    done
    read -r _u _ </proc/uptime
    [ -e "$_d/fail" ] || echo "$_u" >"$_d/running"
    qmp_close
    [ ! -e "$_d/fail" ]
}

# start_cold VMM SIZE DIR: a cold boot in the background (PID).
start_cold() {
    if [ "$1" = vmm ]; then
        launch "$3" vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "$cmdline" \
            --cpus 1 --memory "size=$2" --serial stdio
    else
        # shellcheck disable=SC2086
        launch "$3" $QEMU -m "$2" -append "$cmdline"
    fi
}

# timed_clone VMM SIZE RUN: one clone, to its first tick; a result line.
timed_clone() {
    _d=$W/$1-clone-$2-$3
    if start_clone "$1" "$2" "$_d" && wait_for "$_d/tick" "$PID" 60 && [ -s "$_d/running" ]; then
        _rd=$(sed -n 's/.*loaded in \([0-9.]*\) ms.*/\1/p' "$_d/err" 2>/dev/null | head -n1)
        echo "LAB-TPLBENCH $1 clone-$2 $3 ok running=$(since "$_d" running) tick=$(since "$_d" tick)${_rd:+ read_ms=$_rd}"
        stop_vm "$PID"
        return 0
    fi
    echo "LAB-TPLBENCH $1 clone-$2 $3 fail $(cat "$_d/fail" 2>/dev/null) $(why "$_d")"
    stop_vm "$PID"
    return 1
}

timed_cold() { # VMM SIZE RUN
    _d=$W/$1-cold-$3
    start_cold "$1" "$2" "$_d"
    if wait_for "$_d/tick" "$PID" 240; then
        echo "LAB-TPLBENCH $1 cold $3 ok tick=$(since "$_d" tick)"
        stop_vm "$PID"
        return 0
    fi
    echo "LAB-TPLBENCH $1 cold $3 fail $(why "$_d")"
    stop_vm "$PID"
    return 1
}

# retry CMD...: CMD once more if it failed (a line says so); a second
# failure stands.
retry() {
    "$@" && return 0
    echo "LAB-TPLBENCH-RETRY $*"
    "$@"
}

meminfo() { sed -n "s/^$1: *\([0-9]*\) kB/\1/p" /proc/meminfo; }
used_kb() { echo $(($(meminfo MemTotal) - $(meminfo MemAvailable))); }
rollup() { sed -n "s/^$2: *\([0-9]*\) kB/\1/p" "/proc/$1/smaps_rollup" 2>/dev/null; }

# mem_group VMM cold|clone: N VMs of 128 MiB (clones started together,
# cold boots one after the other); once each printed a tick, 5 s to
# settle, then L1's used memory (MemTotal - MemAvailable) against just
# before the first started, and each VMM process's PSS.
mem_group() {
    _v=$1 _k=$2
    sleep 2
    _before=$(used_kb)
    _pids=""
    _fail=""
    for _i in $(seq 1 "$nmem"); do
        _d=$W/$1-mem-$2-$_i
        if [ "$_k" = cold ]; then
            # One boot at a time: ten Linux boots at once on L1's two
            # emulated CPUs took L1 down once (a kernel panic in L1).
            start_cold "$_v" 128M "$_d"
            wait_for "$_d/tick" "$PID" 400
        else
            start_clone "$_v" 128M "$_d" || _fail="$_fail clone $_i: $(cat "$_d/fail");"
        fi
        _pids="$_pids $PID"
    done
    # A VM that printed no tick (now and then an L2 is reset in this
    # nesting, see tests/lab/README.md) is started once more; both are said.
    _i=0 _ran=""
    for _p in $_pids; do
        _i=$((_i + 1))
        _d=$W/$1-mem-$2-$_i
        if ! wait_for "$_d/tick" "$_p" 400; then
            echo "LAB-TPLBENCH-RETRY mem_group $_v $_k VM $_i printed no tick: $(why "$_d")"
            stop_vm "$_p"
            if [ "$_k" = cold ]; then
                start_cold "$_v" 128M "$_d"
            else
                start_clone "$_v" 128M "$_d" || _fail="$_fail clone $_i again: $(cat "$_d/fail");"
            fi
            _p=$PID
            wait_for "$_d/tick" "$_p" 400 || _fail="$_fail VM $_i printed no tick twice: $(why "$_d");"
        fi
        _ran="$_ran $_p"
    done
    _pids=$_ran
    sleep 5
    _after=$(used_kb)
    _pss="" _anon="" _shm="" _rss=""
    for _p in $_pids; do
        _pss="$_pss,$(rollup "$_p" Pss)" _rss="$_rss,$(rollup "$_p" Rss)"
        _anon="$_anon,$(rollup "$_p" Pss_Anon)" _shm="$_shm,$(rollup "$_p" Pss_Shmem)"
    done
    echo "LAB-TPLBENCH $_v mem-$_k 0 $([ -z "$_fail" ] && echo ok || echo fail) n=$nmem before_kb=$_before after_kb=$((_after)) added_kb=$((_after - _before)) pss_kb=${_pss#,} pss_anon_kb=${_anon#,} pss_shmem_kb=${_shm#,} rss_kb=${_rss#,} $_fail"
    for _p in $_pids; do stop_vm "$_p"; done
}

echo "LAB-TPLBENCH-INFO memtotal_kb=$(meminfo MemTotal) memavailable_kb=$(meminfo MemAvailable) runs=$runs vmms=$(echo $vmms | tr ' ' ,) mem_vms=$nmem"
for v in $vmms; do
    retry make_template "$v" 128M
    retry make_template "$v" 1G
done
for i in $(seq 1 "$runs"); do
    for v in $vmms; do
        retry timed_cold "$v" 128M "$i"
        [ -s "$T/$v-128M/state" ] && retry timed_clone "$v" 128M "$i"
        [ -s "$T/$v-1G/state" ] && retry timed_clone "$v" 1G "$i"
    done
done
rm -rf "$T"/*-1G
for v in $vmms; do
    mem_group "$v" cold
    [ -s "$T/$v-128M/state" ] && mem_group "$v" clone
done
rm -rf "$T" "$W"
lab_pass "$runs run(s) each of $vmms"
