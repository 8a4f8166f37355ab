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

lab_result() {
    echo "$1" >/tmp/lab-result
    echo "LAB-RESULT $LAB_SCENARIO $1 $2"
    exit 0
}
lab_pass() { lab_result PASS "$*"; }
lab_fail() { lab_result FAIL "$*"; }
lab_uptime() { cut -d' ' -f1 /proc/uptime; }
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
