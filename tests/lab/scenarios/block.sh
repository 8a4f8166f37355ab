# lab-timeout: 150
# lab-needs: vmm
# Two virtio-blk disks from raw images in L1: the guest writes a pattern
# to /dev/vda and reads it back past its page cache; after the VMM exits,
# L1 finds the same bytes in the image. /dev/vdb is readonly: the guest's
# write must fail and the image must not change.
. /lab/scenarios/block.common.sh
rw=/tmp/vda.img ro=/tmp/vdb.img
dd if=/dev/zero of=$rw bs=1M count=16 2>/dev/null
yes lab-readonly-disk | head -c 4194304 >$ro
ro_before=$(md5sum <$ro | cut -d' ' -f1)
want=$(block_pattern | md5sum | cut -d' ' -f1)

lab_l2 /tmp/l2.log 120 --cpus 2 --mem 256M --insmod virtio_mmio,virtio_blk \
    --disk path=$rw --disk path=$ro,readonly=on
lab_l2_line LAB-L2-BOOTED >/dev/null || lab_fail "L2 printed no LAB-L2-BOOTED: $(lab_l2_why)"
wrote=$(lab_l2_line LAB-L2-BLOCK-RW)
refused=$(lab_l2_line LAB-L2-BLOCK-RO)
[ -n "$wrote" ] && [ -n "$refused" ] || lab_fail "L2 did not report both disks: $(lab_l2_lines LAB-L2-BLOCK) $(lab_l2_why)"
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "$(lab_l2_why)"

guest=$(echo "$wrote" | sed -n 's/.* readback=\([0-9a-f]*\).*/\1/p')
host=$(dd if=$rw bs=4096 skip=$BLOCK_SEEK count=$BLOCK_COUNT 2>/dev/null | md5sum | cut -d' ' -f1)
ro_after=$(md5sum <$ro | cut -d' ' -f1)
[ "$guest" = "$want" ] || lab_fail "the guest read back $guest, not the pattern's $want ($wrote)"
[ "$host" = "$want" ] || lab_fail "the image holds $host at block $BLOCK_SEEK after exit, not the pattern's $want ($wrote)"
# The rest of the image must still be zeroes: the write landed where it was aimed.
zeros=$(dd if=/dev/zero bs=4096 count=$BLOCK_SEEK 2>/dev/null | md5sum | cut -d' ' -f1)
head_sum=$(dd if=$rw bs=4096 count=$BLOCK_SEEK 2>/dev/null | md5sum | cut -d' ' -f1)
[ "$head_sum" = "$zeros" ] || lab_fail "the image changed before block $BLOCK_SEEK ($wrote)"
case "$refused" in
*" ro=1 write=failed"*) ;;
*) lab_fail "the readonly disk took a write: $refused" ;;
esac
[ "$ro_after" = "$ro_before" ] || lab_fail "the readonly image changed: $ro_before -> $ro_after ($refused)"
lab_pass "$wrote; host image md5 $host at the same range; $refused; readonly image unchanged ($ro_after);" \
    "$LAB_VMM exited 0 after $LAB_L2_SECONDS s"
