# L2 side of "snapshot" and "snapshot-paused": a counter in a shell
# variable (guest RAM and registers) and a sequence of fsync'ed records on
# the disk. A save and restore in between must not show in either.
. /lab/scenarios/snapshot.common.sh
[ -b /dev/vda ] || { echo "LAB-L2-SNAP-MISSING /dev/vda; disks: $(ls /sys/block | tr '\n' ' ')"; exit 1; }
n=0
while [ $n -lt $SNAP_RECORDS ]; do
    n=$((n + 1))
    printf 'SEQ %08d\n' $n | dd of=/dev/vda bs=512 seek=$n conv=sync,notrunc,fsync 2>/dev/null ||
        { echo "LAB-L2-SNAP-WRITE-FAILED record=$n"; exit 1; }
    echo "LAB-L2-COUNT $n"
    usleep 20000
done
echo "LAB-L2-SNAP-DONE records=$n"
