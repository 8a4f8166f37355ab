# L2 side of "block". vda: write the pattern, drop the page cache, read it
# back with O_DIRECT so that the bytes come from the device. vdb: readonly,
# a write must fail.
. /lab/scenarios/block.common.sh
for d in vda vdb; do
    [ -b /dev/$d ] || { echo "LAB-L2-BLOCK-MISSING /dev/$d; disks: $(ls /sys/block | tr '\n' ' ')"; exit 1; }
done
block_pattern | dd of=/dev/vda bs=4096 seek=$BLOCK_SEEK iflag=fullblock conv=fsync 2>/tmp/dd.err ||
    { echo "LAB-L2-BLOCK-RW write failed: $(tail -n1 /tmp/dd.err)"; exit 1; }
sync
echo 3 >/proc/sys/vm/drop_caches
sum=$(dd if=/dev/vda bs=4096 skip=$BLOCK_SEEK count=$BLOCK_COUNT iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
echo "LAB-L2-BLOCK-RW vda sectors=$(cat /sys/block/vda/size) wrote 1 MiB at 1 MiB, readback=$sum"

if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct conv=fsync 2>/tmp/dd.err; then
    w=succeeded
else
    w="failed ($(grep -m1 '^dd:' /tmp/dd.err || tail -n1 /tmp/dd.err))"
fi
echo "LAB-L2-BLOCK-RO vdb sectors=$(cat /sys/block/vdb/size) ro=$(cat /sys/block/vdb/ro) write=$w"
