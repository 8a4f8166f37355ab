# L2 side of "balloon". virtio_balloon is loaded here, late, so that
# MemAvailable is seen before it inflates to the VMM's target; rmmod
# deflates it all. Then, with it loaded again (free page reporting on), the
# guest fills tmpfs and frees it, printing a marker at each step for L1 to
# sample the VMM's RSS; the sleeps give L1 time to see each marker, and
# page reporting (which starts about 2 s after pages are freed) time to
# hand the freed memory back.
. /lab/scenarios/balloon.common.sh
avail() { sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
total() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
# wait_avail CMP KIB SECONDS: waits while MemAvailable CMP KIB holds
# (CMP: -gt, -lt), for SECONDS at most.
# The last value read is in seen_avail: the one that ended the wait.
wait_avail() {
    i=0
    seen_avail=$(avail)
    while [ "$seen_avail" "$1" "$2" ] && [ $i -lt $(($3 * 5)) ]; do
        sleep 0.2
        i=$((i + 1))
        seen_avail=$(avail)
    done
}

before=$(avail)
echo "LAB-L2-BALLOON-BEFORE avail=$before total=$(total)"
lab-insmod virtio_balloon || { echo "LAB-L2-BALLOON-FAILED insmod virtio_balloon"; exit 1; }
# Inflated: MemAvailable fell by 85% of the target's share at least.
low=$((before - BALLOON_KIB * 85 / 100))
wait_avail -gt $low 90
# The value that crossed the threshold: MemAvailable moves on by itself
# afterwards (seen from 39 to 157 MiB below the start a moment later).
a=$seen_avail
echo "LAB-L2-BALLOON-INFLATED avail=$a dropped=$((before - a)) total=$(total) avail_now=$(avail)"
rmmod virtio_balloon
wait_avail -lt $((before - BALLOON_KIB / 10)) 30
a=$(avail)
echo "LAB-L2-BALLOON-DEFLATED avail=$a total=$(total)"

lab-insmod virtio_balloon
wait_avail -gt $low 90
echo "LAB-L2-BALLOON-FILL-START avail=$(avail)"
sleep 3
dd if=/dev/zero of=/tmp/fill bs=1M count=$BALLOON_FILL_MIB 2>/dev/null
echo "LAB-L2-BALLOON-FILLED avail=$(avail)"
sleep 3
rm /tmp/fill
sleep 8
echo "LAB-L2-BALLOON-FREED avail=$(avail)"
sleep 3
