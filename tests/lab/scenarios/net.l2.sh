# L2 side of "net": configure the NIC, ping L1, then wait for L1's pings
# (the Icmp InEchos counter), so that the VMM runs until both ways are done.
. /lab/scenarios/net.common.sh
in_echos() {
    awk '/^Icmp:/ { if (!n) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i; n = 1 } else print $c }' /proc/net/snmp
}
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
# L1 starts its pings when it sees LAB-L2-NET-UP.
n=0
for i in $(seq 1 300); do
    n=$(in_echos)
    [ "$n" -ge $NET_PINGS ] && break
    sleep 0.1
done
echo "LAB-L2-NET-PINGED answered=$n"
