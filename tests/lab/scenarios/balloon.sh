# lab-timeout: 240
# lab-needs: vmm
# virtio-balloon with a target below the RAM size: the guest's available
# memory drops when it loads the driver and comes back when it unloads it.
# With free page reporting on anonymous RAM, the VMM's RSS seen from L1
# falls after the guest frees 100 MiB it had filled.
. /lab/scenarios/balloon.common.sh
rss() { lab_vmstat "$LAB_L2_PID" VmRSS; }
run_l2() {
    rss0="" rss1="" rss2=""
    lab_l2_start /tmp/l2.log 200 --cpus 2 --mem $BALLOON_MEM --insmod virtio_mmio \
        --balloon free-page-reporting=on,deflate-on-oom=on,target=$BALLOON_TARGET
    lab_l2_until LAB-L2-BALLOON-FILL-START 150 >/dev/null && rss0=$(rss)
    lab_l2_until LAB-L2-BALLOON-FILLED 60 >/dev/null && rss1=$(rss)
    lab_l2_until LAB-L2-BALLOON-FREED 60 >/dev/null && rss2=$(rss)
    lab_l2_wait
}
lab_l2_retry run_l2
lab_l2_line LAB-L2-BOOTED >/dev/null || lab_fail "L2 printed no LAB-L2-BOOTED: $(lab_l2_why)"
b=$(lab_l2_line LAB-L2-BALLOON-BEFORE)
i=$(lab_l2_line LAB-L2-BALLOON-INFLATED)
d=$(lab_l2_line LAB-L2-BALLOON-DEFLATED)
[ -n "$b" ] && [ -n "$i" ] && [ -n "$d" ] || lab_fail "L2 did not get through the balloon steps: $(lab_l2_lines 'LAB-L2-BALLOON') $(lab_l2_why)"
num() { echo "$1" | sed -n "s/.* $2=\(-*[0-9]*\).*/\1/p"; }
dropped=$(num "$i" dropped)
da=$(num "$d" avail) ia=$(num "$i" avail)
back=$((${da:-0} - ${ia:-0}))
[ "${dropped:-0}" -ge $((BALLOON_KIB * 85 / 100)) ] ||
    lab_fail "MemAvailable fell by ${dropped:-?} kB, not the $BALLOON_KIB kB the target takes: $b; $i"
[ "$back" -ge $((dropped * 9 / 10)) ] ||
    lab_fail "MemAvailable came back by $back kB only after rmmod virtio_balloon: $b; $i; $d"
[ -n "${rss2:-}" ] || lab_fail "L1 could not sample the VMM's RSS (rss=${rss0:-?}/${rss1:-?}/${rss2:-?} kB): $(lab_l2_lines 'LAB-L2-BALLOON-F') $(lab_l2_why)"
fell=$((rss1 - rss2))
[ "$fell" -ge $((BALLOON_FILL_MIB * 1024 / 2)) ] ||
    lab_fail "the VMM's RSS fell by $fell kB only after the guest freed $BALLOON_FILL_MIB MiB (VmRSS ${rss0} -> ${rss1} filled -> ${rss2} kB freed)"
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "$(lab_l2_why)"
lab_pass "$b; $i; $d; VmRSS of $LAB_VMM: ${rss0} kB, ${rss1} kB after filling $BALLOON_FILL_MIB MiB," \
    "${rss2} kB after freeing it (fell by $((fell / 1024)) MiB); exited 0 after $LAB_L2_SECONDS s"
