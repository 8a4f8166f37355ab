# lab-timeout: 150
# lab-needs: vmm
# virtio-mem with 256 MiB requested at start: the guest's MemTotal rises by
# that much once virtio_mem has plugged it.
. /lab/scenarios/virtio-mem.common.sh
lab_l2 /tmp/l2.log 120 --cpus 2 --mem 256M --insmod virtio_mmio \
    --virtio-mem size=$VMEM_SIZE,requested=$VMEM_REQUESTED
lab_l2_line LAB-L2-BOOTED >/dev/null || lab_fail "L2 printed no LAB-L2-BOOTED: $(lab_l2_why)"
b=$(lab_l2_line LAB-L2-VMEM-BEFORE)
a=$(lab_l2_line LAB-L2-VMEM-AFTER)
[ -n "$b" ] && [ -n "$a" ] || lab_fail "L2 did not report MemTotal before and after: $(lab_l2_lines 'LAB-L2-VMEM') $(lab_l2_why)"
rose=$(echo "$a" | sed -n 's/.* rose=\(-*[0-9]*\).*/\1/p')
# The memmap of the new memory comes from the memory that was there, so
# MemTotal may rise by a little less than the plug.
[ "${rose:-0}" -ge $((VMEM_REQUESTED_KIB * 95 / 100)) ] && [ "$rose" -le $((VMEM_REQUESTED_KIB + 4096)) ] ||
    lab_fail "MemTotal rose by ${rose:-?} kB, not the $VMEM_REQUESTED_KIB kB requested: $b; $a"
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "$(lab_l2_why)"
lab_pass "$b; $a (requested $VMEM_REQUESTED_KIB kB); $LAB_VMM exited 0 after $LAB_L2_SECONDS s"
