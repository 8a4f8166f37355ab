# Helpers for scenario scripts, sourced in L1 before the scenario file.
# A scenario ends with lab_pass or lab_fail; both print the LAB-RESULT line
# the host runner reads, and exit.
#
# What L1 holds for scenarios:
#   /lab/vmlinuz        the L2 kernel (the same Debian kernel as L1)
#   /lab/l2.cpio        the L2 initramfs (busybox, /init, virtio modules)
#   /usr/bin/qemu-system-x86_64 with its libraries and x86 firmware
#   /usr/local/bin/     the project's binaries, when they were built
#   lab-insmod NAME     loads a module of L1's and its dependencies
#
# LAB_VMM (from lab.vmm= on L1's command line, default vmm) picks the L2
# VMM that lab_l2 runs: the project's vmm, or qemu as the peer that checks
# the guest side of a scenario.
LAB_VMM=${LAB_VMM:-vmm}

lab_result() {
    echo "$1" >/tmp/lab-result
    echo "LAB-RESULT $LAB_SCENARIO $1 $2"
    exit 0
}
lab_pass() { lab_result PASS "${LAB_L2_RERUN:-}$*"; }
lab_fail() { lab_result FAIL "$*"; }
lab_uptime() { cut -d' ' -f1 /proc/uptime; }
# lab_arg NAME: the value of NAME= on L1's kernel command line (the last one).
lab_arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n1; }
# LAB_L2_BASE starts every L2 kernel command line. lab.l2_append= on L1's
# command line (LAB_L2_APPEND on the host, commas for spaces) adds to it:
# LAB_L2_APPEND=no5lvl runs L2 with 4-level paging.
LAB_L2_BASE="console=ttyS0 panic=-1"
_l2_append=$(lab_arg lab.l2_append | tr , ' ')
[ -z "$_l2_append" ] || LAB_L2_BASE="$LAB_L2_BASE $_l2_append"
# Seconds (two decimals) from uptime $1 to now.
lab_since() { awk -v a="$1" -v b="$(lab_uptime)" 'BEGIN { printf "%.2f", b - a }'; }
lab_log() { echo "LAB-LOG $LAB_SCENARIO: $*"; }

# lab_run_l2 LOG TIMEOUT CMD...: runs an L2 VMM, its output both into LOG
# and onto L1's console (each line prefixed "L2| "), killed after TIMEOUT
# seconds. Sets LAB_L2_STATUS (the VMM's exit status; 143 when busybox
# timeout killed it) and LAB_L2_SECONDS (start to exit).
lab_run_l2() {
    _log=$1 _timeout=$2
    shift 2
    _t0=$(lab_uptime)
    : >"$_log"
    { timeout "$_timeout" "$@" </dev/null 2>&1; echo "$?" >"$_log.status"; } \
        | while IFS= read -r _line || [ -n "$_line" ]; do
            printf '%s\n' "$_line" >>"$_log"
            printf 'L2| %s\n' "$_line"
        done
    LAB_L2_STATUS=$(cat "$_log.status" 2>/dev/null || echo 255)
    LAB_L2_SECONDS=$(lab_since "$_t0")
}

# lab_l2 LOG TIMEOUT OPTION...: boots an L2 guest from a description that
# does not depend on the VMM, with LAB_VMM's VMM (see lab_l2_cmd), and
# waits for it to exit. Its output goes to LOG and onto L1's console as with
# lab_run_l2; sets LAB_L2_STATUS and LAB_L2_SECONDS the same way.
lab_l2() { lab_l2_retry lab_l2_once "$@"; }
lab_l2_once() {
    lab_l2_start "$@" || return 1
    lab_l2_wait
}

# The vCPU dump. `vmm` logs it on SIGUSR1, and by itself when a vCPU
# triple-faults, as lines containing "vcpu-dump: " (begin, two per vCPU,
# the guest's last serial output, end; see docs/usage.md). A scenario
# asks for it before it kills an L2 that timed out (lab_vmm_dump,
# lab_vmm_kill); the dump then appears under the scenario's result as
# LAB-L2-VCPU-DUMP lines, and in short in its FAIL line (lab_l2_why,
# lab_dump_summary).

# lab_dump_lines LOG: the lines of the last dump in LOG, from "begin:" on,
# without what precedes "vcpu-dump: ".
lab_dump_lines() {
    tr -d '\r' <"$1" 2>/dev/null | sed -n 's/.*vcpu-dump: //p' |
        awk '/^begin:/ { n = 0 } { l[n++] = $0 } END { for (i = 0; i < n; i++) print l[i] }'
}

# lab_dump_markers LOG: the last dump in LOG as LAB-L2-VCPU-DUMP lines on
# L1's console, which the host runner shows as evidence.
lab_dump_markers() {
    lab_dump_lines "$1" | while IFS= read -r _l; do printf 'LAB-L2-VCPU-DUMP %s\n' "$_l"; done
}

# lab_dump_summary LOG: the last dump in LOG on one line, for a result
# line: each vCPU's registers, its events when one is pending, and the
# last 200 characters of the serial output. Empty without a dump.
lab_dump_summary() {
    lab_dump_lines "$1" | awk '
        /^begin:/ { if ($0 ~ /triple-faulted|failed/) { sub(/^begin: /, ""); out = $0 }; next }
        /^end$/ { next }
        / exception=none interrupt=none interrupt_shadow=[0-9]+ nmi=none / { next }
        /^serial: / && length($0) > 260 {
            i = index($0, ": \""); $0 = substr($0, 1, i + 2) "..." substr($0, length($0) - 200)
        }
        { out = out (out == "" ? "" : " | ") $0 }
        END { print out }'
}

# lab_vmm_dump PID LOG: asks the vmm process PID for its vCPU dump
# (SIGUSR1) and waits up to 20 s for it to reach LOG, where PID's stderr
# goes (a dump takes milliseconds, but about 12 s when a vCPU is stuck in
# the host kernel: 5 s for the pause, 2 s for its state, 5 s for the
# resume); then prints it with lab_dump_markers. Returns 1, asking nothing,
# when PID is not a vmm (QEMU as the L2 VMM) or is gone.
lab_vmm_dump() {
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = vmm ] || return 1
    _n=$(grep -c -E 'vcpu-dump: (end|none)' "$2" 2>/dev/null)
    kill -USR1 "$1" 2>/dev/null || return 1
    for _i in $(seq 200); do
        [ "$(grep -c -E 'vcpu-dump: (end|none)' "$2" 2>/dev/null)" -gt "${_n:-0}" ] && break
        sleep 0.1
    done
    lab_dump_markers "$2"
}

# lab_vmm_kill PID LOG: for a vmm that did not get where the scenario
# waited for it: its dump (lab_vmm_dump), then SIGKILL.
lab_vmm_kill() {
    lab_vmm_dump "$1" "$2"
    kill -9 "$1" 2>/dev/null
}

# lab_dump_why LOG: "; vCPU dump: ..." when LOG has a dump, for a FAIL line.
lab_dump_why() {
    _d=$(lab_dump_summary "$1")
    [ -z "$_d" ] || printf '; vCPU dump: %s\n' "$_d"
}

# KVM's tracepoints in L1 (guest/l1-init enables them unless
# lab.kvm_trace=0): on an AMD host KVM reinitialises a vCPU's VMCB when it
# shuts down (triple fault), so vmm's dump after a reset shows the reset
# state, while the trace still has the exits that led there.
LAB_KVM_TRACE=/sys/kernel/tracing/trace

# lab_kvm_trace_why: the last exits of the vCPU thread that shut down
# (the latest kvm_exit with reason "shutdown"), as LAB-KVM-TRACE lines on
# L1's console, which the host runner shows as evidence. Prints nothing
# without a trace or a shutdown in it.
#
# It also sets LAB_KVM_SIG when the trace has the signature of the
# emulated platform's resets (docs/lab-reliability.md): the vCPU shut down
# while an event was being delivered into L2 (intr_info: a page fault, or
# an external interrupt such as the timer's), right after an exit that
# L1's KVM handled itself (hlt, msr, cpuid, npf, interrupt) or a port
# access (io), whose answer cannot unmap the guest's memory: the guest
# then failed to reach its own IDT, stack or next instruction. Every
# reset traced so far (seven) has had it, with vmm and with QEMU as the L2
# VMM.
lab_kvm_trace_why() {
    LAB_KVM_SIG=""
    [ -r "$LAB_KVM_TRACE" ] || return 0
    grep -v '^#' "$LAB_KVM_TRACE" >/tmp/lab-kvm-trace 2>/dev/null || return 0
    _task=$(grep 'kvm_exit: .*reason shutdown' /tmp/lab-kvm-trace | tail -n 1 | awk '{ print $1 }')
    [ -n "$_task" ] || { echo "LAB-KVM-TRACE no shutdown exit in the trace ($(wc -l </tmp/lab-kvm-trace) events)"; return 0; }
    awk -v t="$_task" '$1 == t' /tmp/lab-kvm-trace | tail -n 30 | cut -c1-220 | sed 's/^ */LAB-KVM-TRACE /'
    LAB_KVM_SIG=$(awk -v t="$_task" '$1 == t && / kvm_exit: / {
            prev = reason
            for (i = 1; i < NF; i++) {
                if ($i == "reason") reason = $(i + 1)
                if ($i == "intr_info") intr = $(i + 1)
            }
        }
        END {
            # A page fault (0x80000b0e) or an external interrupt (0x800000NN);
            # not a software interrupt such as the int3 of a forced reset.
            event = intr ~ /^0x80000b0e$/ || intr ~ /^0x800000[0-9a-f][0-9a-f]$/
            if (reason == "shutdown" && event && prev ~ /^(hlt|msr|cpuid|npf|interrupt|io)$/)
                printf "shutdown while delivering event %s, right after a%s %s exit", intr, prev == "io" ? "n" : "", prev
        }' /tmp/lab-kvm-trace)
}

# lab_reset_evidence LOG: what a retry keeps of a reset L2, before it runs
# again: LOG as LOG-reset, vmm's vCPU dump in LOG as markers, and KVM's
# trace (which sets LAB_KVM_SIG).
lab_reset_evidence() {
    cp "$1" "$1-reset"
    lab_dump_markers "$1"
    lab_kvm_trace_why
}

# lab_retry_line WHAT: the LAB-L2-RESET-RETRY line the host runner counts,
# ending with lab_kvm_trace_why's verdict, which the runner reads.
lab_retry_line() {
    echo "LAB-L2-RESET-RETRY $LAB_SCENARIO: $* [trace: ${LAB_KVM_SIG:-no known signature}]"
}

# The retries below hide a failure, so each one is counted: the line
# LAB-L2-RESET-RETRY goes to the host runner, which prints every retry in
# its summary and fails the run when more than one scenario needed one
# for a reset without the signature above, or more than three at all.

# lab_reset_unasked LOG...: whether the reset these logs of vmm show is
# the lab's unasked one, a triple fault. A reset the guest asked for (the
# ACPI reset register) is never run again: a panic of the guest's kernel
# ends that way too (panic=-1), and a device model that corrupts guest
# memory shows up as one.
lab_reset_unasked() {
    grep -qs 'triple fault' "$@"
}

# lab_l2_retry CMD...: runs CMD, which boots one L2 and waits for it (a
# scenario's own function when it acts from L1 while L2 runs). If the VMM
# ended with status 3 after a triple fault, which no scenario asks for:
# now and then (about 1 boot in 25 in CI) L2 triple-faults in this
# emulated nesting, as L1 itself now and then panics or resets. CMD then
# runs once more, the first log is kept as LOG-reset, and lab_pass puts
# what happened (with vmm's dump of the vCPUs) at the head of the result
# line.
lab_l2_retry() {
    LAB_L2_RERUN=""
    "$@" || return 1
    [ "$LAB_VMM" = vmm ] && [ "$LAB_L2_STATUS" = 3 ] && lab_reset_unasked "$LAB_L2_LOG" || return 0
    _why=$(grep -v 'vcpu-dump: ' "$LAB_L2_LOG" | grep -E 'LAB-L2-[A-Z-]+|triple fault' |
        tail -n 2 | tr -d '\r' | tr '\n' '|' | sed 's/|$//')
    LAB_L2_RERUN="second L2 run, the first was reset: $_why$(lab_dump_why "$LAB_L2_LOG"); "
    lab_reset_evidence "$LAB_L2_LOG"
    lab_retry_line "vmm exited 3 (the guest was reset): $_why"
    lab_log "L2 was reset (status 3): running it once more"
    "$@"
}

# lab_reset_retry OUT CMD...: for scenarios that start vmm themselves:
# runs CMD, which starts an L2 and waits until it is ready (returning 0),
# with vmm's stderr in OUT. If vmm ended with status 3 first, after a
# triple fault (which lab_l2_retry explains), CMD runs once more and
# lab_pass puts what happened at the head of the result line.
lab_reset_retry() {
    _out=$1
    shift
    "$@" && return 0
    [ "${LAB_VMM_STATUS:-}" = 3 ] && lab_reset_unasked "$_out" || return 1
    _why=$(grep -v 'vcpu-dump: ' "$_out" | grep -m1 -E 'triple fault|guest reset|reboot' | cut -c1-300)
    LAB_L2_RERUN="second L2 run, the first was reset: $_why$(lab_dump_why "$_out"); "
    lab_reset_evidence "$_out"
    lab_retry_line "vmm exited 3 (the guest was reset) before it was ready: $_why"
    lab_log "L2 was reset (status 3) before it was ready: running it once more"
    "$@"
}

# lab_l2_start LOG TIMEOUT OPTION...: the same, in the background, for
# scenarios that act from L1 while L2 runs. Sets LAB_L2_PID (the VMM
# process itself, for /proc/PID/status), LAB_L2_LOG and LAB_L2_T0 (L1
# uptime at the start). LOG.booted gets L1's uptime when LAB-L2-BOOTED
# came out. End with lab_l2_wait.
lab_l2_start() {
    LAB_L2_LOG=$1
    _timeout=$2
    shift 2
    lab_l2_cmd "$@" || return 1
    rm -f "$LAB_L2_LOG".*
    : >"$LAB_L2_LOG"
    lab_l2_monitor_fifos
    echo "LAB-LOG $LAB_SCENARIO: L2 by $LAB_VMM: $LAB_L2_CMD"
    LAB_L2_T0=$(lab_uptime)
    {
        # exec, so that $! is the VMM and not a shell around it.
        {
            eval "exec $LAB_L2_CMD" </dev/null 2>&1 &
            echo $! >"$LAB_L2_LOG.pid"
            wait $!
            echo $? >"$LAB_L2_LOG.status"
        } | while IFS= read -r _line || [ -n "$_line" ]; do
            case $_line in
            *LAB-L2-BOOTED*) [ -e "$LAB_L2_LOG.booted" ] || lab_uptime >"$LAB_L2_LOG.booted" ;;
            esac
            printf '%s\n' "$_line" >>"$LAB_L2_LOG"
            printf 'L2| %s\n' "$_line"
        done
        : >"$LAB_L2_LOG.done"
    } &
    while [ ! -s "$LAB_L2_LOG.pid" ]; do sleep 0.05; done
    LAB_L2_PID=$(cat "$LAB_L2_LOG.pid")
    # The watchdog checks the status file first: once the VMM is gone its
    # pid may belong to another process.
    (
        sleep "$_timeout"
        [ -e "$LAB_L2_LOG.status" ] && exit 0
        echo "LAB-LOG $LAB_SCENARIO: L2 still running after $_timeout s: asking $LAB_VMM for its vCPU dump, then killing it"
        lab_vmm_dump "$LAB_L2_PID" "$LAB_L2_LOG"
        [ -e "$LAB_L2_LOG.status" ] && exit 0
        # vmm ends with status 0 on SIGTERM: lab_l2_why reads this instead.
        : >"$LAB_L2_LOG.killed"
        kill "$LAB_L2_PID" 2>/dev/null
        sleep 3
        [ -e "$LAB_L2_LOG.status" ] || kill -9 "$LAB_L2_PID" 2>/dev/null
    ) &
    LAB_L2_WATCHDOG=$!
    lab_l2_monitor_balloon
    return 0
}

# lab_l2_monitor_fifos: before a QEMU L2 that lab_l2_cmd gave a monitor
# (LAB_L2_MONITOR) starts, makes that monitor's two FIFOs afresh.
lab_l2_monitor_fifos() {
    [ -n "$LAB_L2_MONITOR" ] || return 0
    rm -f "$LAB_L2_MONITOR.in" "$LAB_L2_MONITOR.out"
    mkfifo "$LAB_L2_MONITOR.in" "$LAB_L2_MONITOR.out"
}

# lab_l2_monitor_balloon: once that QEMU is started, gives it the balloon
# target: QEMU sets none from its command line, it takes it from its
# monitor, before the guest's driver reads it. In the background: opening
# a FIFO blocks until QEMU has it open, and forever if QEMU failed to start.
lab_l2_monitor_balloon() {
    [ -n "$LAB_L2_MONITOR" ] || return 0
    cat "$LAB_L2_MONITOR.out" >/dev/null &
    echo "balloon $LAB_L2_BALLOON_MIB" >"$LAB_L2_MONITOR.in" &
}

# lab_l2_wait: waits until the L2 VMM started by lab_l2_start has exited
# and its output is all in the log; sets LAB_L2_STATUS and LAB_L2_SECONDS.
lab_l2_wait() {
    while [ ! -e "$LAB_L2_LOG.done" ]; do sleep 0.1; done
    LAB_L2_STATUS=$(cat "$LAB_L2_LOG.status" 2>/dev/null || echo 255)
    LAB_L2_SECONDS=$(lab_since "$LAB_L2_T0")
    kill "$LAB_L2_WATCHDOG" 2>/dev/null
    return 0
}

# lab_l2_until PATTERN SECONDS: waits until a line of the running L2's log
# matches PATTERN (grep -E). Prints that line (without CR) and returns 0;
# returns 1 when the VMM exited or SECONDS passed first.
lab_l2_until() {
    _t=$(lab_uptime)
    while :; do
        if grep -v 'vcpu-dump: ' "$LAB_L2_LOG" 2>/dev/null | grep -E -m1 "$1" | tr -d '\r' | grep .; then
            return 0
        fi
        [ -e "$LAB_L2_LOG.done" ] && return 1
        awk -v a="$_t" -v b="$(lab_uptime)" -v s="$2" 'BEGIN { exit !(b - a > s) }' && return 1
        sleep 0.2
    done
}

# lab_l2_line PATTERN: the first line of the L2 log matching PATTERN.
# (A dump's serial line repeats the guest's output: never a match.)
lab_l2_line() { grep -v 'vcpu-dump: ' "$LAB_L2_LOG" 2>/dev/null | grep -E -m1 "$1" | tr -d '\r'; }

# lab_l2_why: what the L2 VMM did, for a FAIL line: its exit status, how
# long it ran, its last lines (the vmm's own "vmm: ..." refusals or
# "not implemented" come out there) and, when it has one (a timeout, a
# triple fault), vmm's dump of the vCPUs.
lab_l2_why() {
    case $LAB_L2_STATUS in
    143 | 137) _st="was killed after its timeout ($LAB_L2_STATUS)" ;;
    *) _st="exited with status $LAB_L2_STATUS" ;;
    esac
    [ ! -e "$LAB_L2_LOG.killed" ] || _st="was killed after its timeout (exit status $LAB_L2_STATUS)"
    printf '%s\n' "$LAB_VMM $_st after $LAB_L2_SECONDS s; its last lines: $(grep -v -e 'vcpu-dump: ' \
        -e 'SIGUSR1: dumping' "$LAB_L2_LOG" | tail -n 3 | tr -d '\r' | tr '\n' '|' |
        sed 's/|$//')$(lab_dump_why "$LAB_L2_LOG")"
}

# lab_vmstat PID FIELD: a /proc/PID/status field in kB (VmRSS, VmHWM, ...).
lab_vmstat() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status" 2>/dev/null; }

# lab_mib SIZE: a size with an optional K, M or G suffix, in MiB.
lab_mib() {
    case $1 in
    *[kK]) echo $((${1%?} / 1024)) ;;
    *[mM]) echo "${1%?}" ;;
    *[gG]) echo $((${1%?} * 1024)) ;;
    *) echo $(($1 / 1048576)) ;;
    esac
}

# lab_q ARG: ARG quoted for eval.
lab_q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# lab_kv LIST KEY: the value of KEY in a key=value,... list.
lab_kv() { printf '%s\n' "$1" | tr , '\n' | sed -n "s/^$2=//p" | tail -n1; }

# lab_l2_cmd OPTION...: the command line of LAB_VMM's VMM for an L2 guest
# described by
#   --cpus N                       vCPUs (2)
#   --mem SIZE                     RAM (256M)
#   --kernel PATH                  the L2 kernel (/lab/vmlinuz, a bzImage)
#   --disk path=P[,readonly=on]    a virtio-blk disk (raw image); repeatable
#   --net tap=NAME[,mac=MAC]       a virtio-net NIC on an L1 TAP; repeatable
#   --balloon [free-page-reporting=on][,deflate-on-oom=on][,target=SIZE]
#   --virtio-mem size=S[,requested=R]
#   --insmod a,b                   modules L2's init loads (lab.insmod=)
#   --append STR                   more guest kernel arguments
# Both VMMs get the L2 kernel and image from /lab, the guest's console on
# the first serial port to stdout, and "console=ttyS0 panic=-1 quiet
# lab.scenario=$LAB_SCENARIO" first on the guest's command line. Sets
# LAB_L2_CMD (quoted for eval), and LAB_L2_MONITOR and LAB_L2_BALLOON_MIB
# when QEMU must be given the balloon target through its monitor.
lab_l2_cmd() {
    _cpus=2 _mem=256M _append="" _insmod="" _vm="" _extra="" _n=0 _kernel=/lab/vmlinuz
    LAB_L2_MONITOR="" LAB_L2_BALLOON_MIB=""
    # QEMU 7.2's microvm has no device memory region: it takes virtio-mem
    # on virtio-mmio, but the guest sees it at address 0 and its probe
    # fails ("could not reserve device region"). So with virtio-mem, the
    # QEMU peer is a pc machine with every device on PCI.
    _qbus=device _machine=microvm,acpi=on,rtc=on
    case " $* " in
    *" --virtio-mem "*) _qbus=pci _machine=pc ;;
    esac
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || { echo "lab_l2: $1 needs a value" >&2; return 1; }
        _n=$((_n + 1))
        case $1 in
        --cpus) _cpus=$2 ;;
        --mem) _mem=$2 ;;
        --kernel) _kernel=$2 ;;
        --append) _append="$_append $2" ;;
        --insmod) _insmod=$2 ;;
        --disk)
            if [ "$LAB_VMM" = qemu ]; then
                _ro=""
                [ "$(lab_kv "$2" readonly)" = on ] && _ro=",readonly=on"
                _extra="$_extra -drive $(lab_q "if=none,id=disk$_n,format=raw,file=$(lab_kv "$2" path)$_ro")"
                _extra="$_extra -device virtio-blk-$_qbus,drive=disk$_n"
            else
                _extra="$_extra --disk $(lab_q "$2")"
            fi ;;
        --net)
            if [ "$LAB_VMM" = qemu ]; then
                _mac=$(lab_kv "$2" mac)
                _extra="$_extra -netdev $(lab_q "tap,id=net$_n,ifname=$(lab_kv "$2" tap),script=no,downscript=no")"
                _extra="$_extra -device $(lab_q "virtio-net-$_qbus,netdev=net$_n${_mac:+,mac=$_mac}")"
            else
                _extra="$_extra --net $(lab_q "$2")"
            fi ;;
        --balloon)
            if [ "$LAB_VMM" = qemu ]; then
                _dev=virtio-balloon-$_qbus
                for _k in free-page-reporting deflate-on-oom; do
                    _v=$(lab_kv "$2" $_k)
                    [ -z "$_v" ] || _dev="$_dev,$_k=$_v"
                done
                _extra="$_extra -device $_dev"
                _target=$(lab_kv "$2" target)
                if [ -n "$_target" ]; then
                    LAB_L2_MONITOR=/tmp/l2-monitor.$$
                    LAB_L2_BALLOON_MIB=$(lab_mib "$_target")
                    _extra="$_extra -monitor pipe:$LAB_L2_MONITOR"
                fi
            else
                _extra="$_extra --balloon $(lab_q "$2")"
            fi ;;
        --virtio-mem)
            if [ "$LAB_VMM" = qemu ]; then
                _vm=$2
                _size=$(lab_kv "$2" size)
                _extra="$_extra -object memory-backend-ram,id=vmem$_n,size=$_size"
                _extra="$_extra -device virtio-mem-pci,memdev=vmem$_n,requested-size=$(lab_kv "$2" requested)"
            else
                _extra="$_extra --virtio-mem $(lab_q "$2")"
            fi ;;
        --vhost-user-blk | --vhost-user-net)
            [ "$LAB_VMM" = vmm ] || { echo "lab_l2: $1 is for vmm only" >&2; return 1; }
            _extra="$_extra $1 $(lab_q "$2")" ;;
        *) echo "lab_l2: unknown option $1" >&2; return 1 ;;
        esac
        shift 2
    done
    # The guest finds PCI devices only once virtio_pci is loaded.
    [ "$LAB_VMM.$_qbus" = qemu.pci ] && _insmod="${_insmod:+$_insmod,}virtio_pci"
    _cmdline="$LAB_L2_BASE quiet lab.scenario=$LAB_SCENARIO${_insmod:+ lab.insmod=$_insmod}$_append"
    case $LAB_VMM in
    qemu)
        _m=$_mem
        # virtio-mem's region lies in QEMU's device memory: one slot, and
        # maxmem as large as boot RAM plus the region.
        [ -z "$_vm" ] || _m="$_mem,slots=1,maxmem=$(($(lab_mib "$_mem") + $(lab_mib "$(lab_kv "$_vm" size)")))M"
        LAB_L2_CMD="qemu-system-x86_64 -enable-kvm -cpu host -M $_machine -nodefaults"
        LAB_L2_CMD="$LAB_L2_CMD -global virtio-mmio.force-legacy=false -smp $_cpus -m $_m"
        LAB_L2_CMD="$LAB_L2_CMD -display none -serial stdio -no-reboot"
        [ -n "$LAB_L2_MONITOR" ] || LAB_L2_CMD="$LAB_L2_CMD -monitor none"
        LAB_L2_CMD="$LAB_L2_CMD -kernel $_kernel -initrd /lab/l2.cpio -append $(lab_q "$_cmdline")$_extra"
        ;;
    vmm)
        LAB_L2_CMD="vmm run --kernel $_kernel --initrd /lab/l2.cpio --cmdline $(lab_q "$_cmdline")"
        LAB_L2_CMD="$LAB_L2_CMD --cpus $_cpus --memory size=$_mem --serial stdio$_extra"
        ;;
    *) echo "lab_l2: LAB_VMM=$LAB_VMM: use vmm or qemu" >&2; return 1 ;;
    esac
}

# lab_l2_booted_after: seconds from the L2 VMM's start to LAB-L2-BOOTED on
# its serial output ("never" without one).
lab_l2_booted_after() {
    if [ -s "$LAB_L2_LOG.booted" ]; then
        awk -v a="$LAB_L2_T0" -v b="$(cat "$LAB_L2_LOG.booted")" 'BEGIN { printf "%.2f", b - a }'
    else
        echo never
    fi
}

# lab_l2_lines PATTERN: every line of the L2 log matching PATTERN, on one line.
lab_l2_lines() { grep -v 'vcpu-dump: ' "$LAB_L2_LOG" 2>/dev/null | grep -E "$1" | tr -d '\r' | tr '\n' ';' | sed 's/;$//; s/;/; /g'; }

# lab_policy_message N [RAMFILE]: item N under "## The messages" of
# docs/policy.md (carried into L1 as /lab/policy.md) as vmm prints it,
# with the page's example RAM file /srv/template/ram replaced by RAMFILE.
lab_policy_message() {
    awk -v n="$1" '
        /^## The messages/ { on = 1; next }
        !on { next }
        /^[0-9]+\. `/ { cur = $1; sub(/\.$/, "", cur) }
        !/^([0-9]+\.|   ) *`/ { cur = "" }
        cur == n { s = $0; sub(/^[^`]*`/, "", s); sub(/`[^`]*$/, "", s); print "vmm: " s }
    ' /lab/policy.md | sed "s|/srv/template/ram|${2:-/srv/template/ram}|g"
}
