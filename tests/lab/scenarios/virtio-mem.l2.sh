# L2 side of "virtio-mem": MemTotal before and after virtio_mem plugs the
# requested memory. Debian's kernel leaves hot-added memory blocks offline
# (auto_online_blocks=offline), and virtio_mem plugs no further than one
# offline block, so the guest onlines them: automatically from then on,
# and by hand for any block that came before the switch.
. /lab/scenarios/virtio-mem.common.sh
total() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
mem=/sys/devices/system/memory
before=$(total)
auto=$(cat $mem/auto_online_blocks)
echo "LAB-L2-VMEM-BEFORE memtotal=$before auto_online_blocks=$auto block_size=0x$(cat $mem/block_size_bytes)"
[ "$auto" = offline ] && echo online_movable >$mem/auto_online_blocks
lab-insmod virtio_mem || { echo "LAB-L2-VMEM-FAILED insmod virtio_mem"; exit 1; }
# The probe runs within insmod: no device bound means it failed.
if ! ls /sys/bus/virtio/drivers/virtio_mem/ | grep -q '^virtio'; then
    echo "LAB-L2-VMEM-FAILED no virtio-mem device bound: $(dmesg | grep -i virtio.mem | tail -n 3 | tr '\n' '|')"
    exit 1
fi
i=0
while [ $(($(total) - before)) -lt $((VMEM_REQUESTED_KIB * 95 / 100)) ] && [ $i -lt 300 ]; do
    for s in $mem/memory*/state; do
        [ "$(cat "$s")" = offline ] && echo online_movable >"$s" 2>/dev/null
    done
    sleep 0.2
    i=$((i + 1))
done
after=$(total)
echo "LAB-L2-VMEM-AFTER memtotal=$after rose=$((after - before))" \
    "memory_blocks=$(ls -d $mem/memory* | wc -l) online=$(cat $mem/memory*/state | grep -c '^online')"
