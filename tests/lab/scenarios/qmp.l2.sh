# L2 side of "qmp": reports MemTotal and MemAvailable on COM1 every 0.3 s
# for the QMP client in L1, onlines memory that virtio-mem plugs, and
# shuts down when the ACPI power button is pressed.
mem=/sys/devices/system/memory
echo online_movable >$mem/auto_online_blocks
lab-insmod virtio_balloon virtio_mem button evdev ||
    { echo "LAB-L2-QMP-FAILED insmod"; exit 1; }
dev=""
for d in /sys/class/input/event*; do
    [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] && dev=/dev/input/${d##*/}
done
[ -n "$dev" ] || { echo "LAB-L2-QMP-FAILED no power button"; exit 1; }
(
    dd if="$dev" bs=24 count=1 of=/dev/null 2>/dev/null
    echo "LAB-L2-QMP-POWER-BUTTON pressed; shutting down"
    sync
    poweroff -f
) &
while :; do
    for s in $mem/memory*/state; do
        [ "$(cat "$s")" = offline ] && echo online_movable >"$s" 2>/dev/null
    done
    echo "LAB-L2-QMP-MEM total=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)" \
        "avail=$(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo)" \
        "blocks=$(ls -d $mem/memory* | wc -l) online=$(cat $mem/memory*/state | grep -c '^online')"
    usleep 300000
done
