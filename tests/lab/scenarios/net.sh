# lab-timeout: 150
# lab-needs: vmm
# A virtio-net NIC on a TAP in L1. The guest sets its address, pings L1,
# and waits until L1 has pinged it (it counts the echo requests it
# answered); its MAC must be the one given.
. /lab/scenarios/net.common.sh
lab-insmod tun || lab_fail "L1 could not load tun"
tunctl -t tap0 >/dev/null || lab_fail "L1 could not create tap0"
ip addr add $NET_L1_IP/24 dev tap0 && ip link set tap0 up || lab_fail "L1 could not set up tap0"

run_l2() {
    lab_l2_start /tmp/l2.log 120 --cpus 2 --mem 256M --insmod virtio_mmio,virtio_net \
        --net tap=tap0,mac=$NET_MAC
    up=$(lab_l2_until LAB-L2-NET-UP 90)
    if [ -n "$up" ]; then
        ping -c $NET_PINGS -W 10 $NET_L2_IP >/tmp/ping.out 2>&1
        l1_ping=$(grep -m1 'packets transmitted' /tmp/ping.out)
    else
        l1_ping="not tried: L2 never said LAB-L2-NET-UP"
    fi
    lab_l2_wait
}
lab_l2_retry run_l2
lab_l2_line LAB-L2-BOOTED >/dev/null || lab_fail "L2 printed no LAB-L2-BOOTED: $(lab_l2_why)"
[ -n "$up" ] || lab_fail "L2 did not bring up its NIC: $(lab_l2_lines 'LAB-L2-NET') $(lab_l2_why)"
out=$(lab_l2_line LAB-L2-NET-PING-L1)
in=$(lab_l2_line LAB-L2-NET-PINGED)
mac=$(echo "$up" | sed -n 's/.* mac=\([0-9a-f:]*\).*/\1/p')
[ "$mac" = "$NET_MAC" ] || lab_fail "the guest's MAC is ${mac:-?}, not $NET_MAC ($up)"
case "$out" in
*" $NET_PINGS packets received"*) ;;
*) lab_fail "L2 -> L1 ping failed: ${out:-no LAB-L2-NET-PING-L1} ($up)" ;;
esac
case "$l1_ping" in
*" $NET_PINGS packets received"*) ;;
*) lab_fail "L1 -> L2 ping failed: $l1_ping ($up; $out)" ;;
esac
case "$in" in
*" answered=$NET_PINGS"* | *" answered="[4-9]* | *" answered="[1-9][0-9]*) ;;
*) lab_fail "L2 did not see L1's pings: ${in:-no LAB-L2-NET-PINGED} ($up)" ;;
esac
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "$(lab_l2_why)"
tap=$(sed -n 's/.*tap0: *\([0-9]*\) *\([0-9]*\) .*/rx_bytes=\1 rx_packets=\2/p' /proc/net/dev)
lab_pass "$up; $out; L1 -> L2: $l1_ping; $in; tap0 $tap; $LAB_VMM exited 0 after $LAB_L2_SECONDS s"
