# L2 side of "vhost-user": the block scenario's write and read-back on
# vda, the net scenario's pings, then idle until L1 has restarted both
# daemons (it pings again once they are back), then a second write.
. /lab/scenarios/block.common.sh
. /lab/scenarios/net.common.sh
in_echos() {
    awk '/^Icmp:/ { if (!n) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i; n = 1 } else print $c }' /proc/net/snmp
}
# write_check SEEK PATTERN-FUNCTION TAG: write, drop caches, read back direct.
write_check() {
    $2 | dd of=/dev/vda bs=4096 seek=$1 iflag=fullblock conv=fsync 2>/tmp/dd.err ||
        { echo "$3 write failed: $(tail -n1 /tmp/dd.err)"; return 1; }
    sync
    echo 3 >/proc/sys/vm/drop_caches
    sum=$(dd if=/dev/vda bs=4096 skip=$1 count=$BLOCK_COUNT iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    echo "$3 vda sectors=$(cat /sys/block/vda/size) wrote $((BLOCK_COUNT * 4)) KiB at block $1, readback=$sum"
}
[ -b /dev/vda ] || { echo "LAB-L2-BLOCK-MISSING /dev/vda; disks: $(ls /sys/block | tr '\n' ' ')"; exit 1; }
write_check $BLOCK_SEEK block_pattern LAB-L2-BLOCK-RW || exit 1

dev=""
for i in $(seq 1 50); do
    for d in /sys/class/net/*; do
        [ "${d##*/}" = lo ] || dev=${d##*/}
    done
    [ -n "$dev" ] && break
    sleep 0.1
done
[ -n "$dev" ] || { echo "LAB-L2-NET-NONIC no network interface: $(ls /sys/class/net | tr '\n' ' ')"; exit 1; }
ip link set lo up
ip link set "$dev" up
ip addr add $NET_L2_IP/24 dev "$dev"
echo "LAB-L2-NET-UP dev=$dev mac=$(cat /sys/class/net/$dev/address) ip=$NET_L2_IP"
res=$(ping -c $NET_PINGS -W 10 $NET_L1_IP 2>&1 | grep 'packets transmitted')
echo "LAB-L2-NET-PING-L1 ${res:-no reply}"
for i in $(seq 1 300); do
    [ "$(in_echos)" -ge $NET_PINGS ] && break
    sleep 0.1
done
echo "LAB-L2-VU-IDLE answered=$(in_echos)"
# L1 restarts the daemons now and pings until answered, then NET_PINGS more.
for i in $(seq 1 900); do
    [ "$(in_echos)" -ge $((2 * NET_PINGS + 1)) ] && break
    sleep 0.1
done
echo "LAB-L2-VU-PINGED-AGAIN answered=$(in_echos)"
write_check $BLOCK_SEEK2 block_pattern2 LAB-L2-VU-AFTER-RESTART
