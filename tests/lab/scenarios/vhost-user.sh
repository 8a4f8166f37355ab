# lab-timeout: 240
# lab-needs: vmm
# vmm's vhost-user front end with the project's daemons in L1: a disk
# served by vhost-user-blk and a NIC by vhost-user-net (guest RAM is a
# memfd, share=on). The guest checks them as the block and net scenarios
# do (a pattern written and read back past its page cache and found in the
# image; pings both ways). Then, while the guest idles, both daemons are
# restarted: vmm reconnects, L1's pings reach the guest again, and the
# guest's second write lands in the image.
. /lab/scenarios/block.common.sh
. /lab/scenarios/net.common.sh
img=/tmp/vu.img bsock=/tmp/vu-blk.sock nsock=/tmp/vu-net.sock
dd if=/dev/zero of=$img bs=1M count=16 2>/dev/null
want=$(block_pattern | md5sum | cut -d' ' -f1)
want2=$(block_pattern2 | md5sum | cut -d' ' -f1)
lab-insmod tun || lab_fail "L1 could not load tun"
tunctl -t tap0 >/dev/null || lab_fail "L1 could not create tap0"
ip addr add $NET_L1_IP/24 dev tap0 && ip link set tap0 up || lab_fail "L1 could not set up tap0"

# start_daemons N: the Nth pair of daemons, logs in /tmp/vu-*.N.log.
start_daemons() {
    vhost-user-blk --socket $bsock --image $img >/tmp/vu-blk.$1.log 2>&1 &
    echo $! >/tmp/vu-blk.pid
    vhost-user-net --socket $nsock --tap tap0 >/tmp/vu-net.$1.log 2>&1 &
    echo $! >/tmp/vu-net.pid
    for i in $(seq 1 100); do
        [ -S $bsock ] && [ -S $nsock ] && return 0
        sleep 0.05
    done
    lab_fail "daemons ($1) never listened: $(tail -n 2 /tmp/vu-blk.$1.log /tmp/vu-net.$1.log | tr '\n' '|')"
}
stop_daemons() {
    kill -TERM "$(cat /tmp/vu-blk.pid)" "$(cat /tmp/vu-net.pid)"
    for i in $(seq 1 100); do
        kill -0 "$(cat /tmp/vu-blk.pid)" 2>/dev/null || kill -0 "$(cat /tmp/vu-net.pid)" 2>/dev/null || return 0
        sleep 0.05
    done
    lab_fail "daemons did not stop on SIGTERM"
}
# pings_until_answered MAX: L1 pings the guest until one answers (vmm
# reconnects to a restarted daemon within a second), then NET_PINGS more.
pings_until_answered() {
    for i in $(seq 1 "$1"); do
        ping -c 1 -W 1 $NET_L2_IP >/dev/null 2>&1 && break
    done
    ping -c $NET_PINGS -W 10 $NET_L2_IP 2>&1 | grep 'packets transmitted'
}

# One L2 with a fresh pair of daemons; run again by lab_l2_retry should
# the guest be reset (the daemons of the first run are stopped first).
vu_run() {
    [ -f /tmp/vu-blk.pid ] && stop_daemons
    up="" l1_ping="" idle="" l1_ping2="" restart_s=""
    start_daemons 1
    lab_l2_start /tmp/l2.log 200 --cpus 2 --mem 256M,backing=memfd \
        --insmod virtio_mmio,virtio_blk,virtio_net \
        --vhost-user-blk socket=$bsock,id=vub0 --vhost-user-net socket=$nsock,mac=$NET_MAC,id=vun0 ||
        return 1
    up=$(lab_l2_until LAB-L2-NET-UP 90)
    [ -n "$up" ] && l1_ping=$(ping -c $NET_PINGS -W 10 $NET_L2_IP 2>&1 | grep 'packets transmitted')
    idle=$(lab_l2_until LAB-L2-VU-IDLE 60)
    if [ -n "$idle" ]; then
        t0=$(lab_uptime)
        stop_daemons
        start_daemons 2
        l1_ping2=$(pings_until_answered 30)
        restart_s=$(lab_since "$t0")
    fi
    lab_l2_wait
}
lab_l2_retry vu_run || lab_fail "L2 did not start: $(tail -n 3 /tmp/l2.log 2>/dev/null | tr '\n' '|')"

lab_l2_line LAB-L2-BOOTED >/dev/null || lab_fail "L2 printed no LAB-L2-BOOTED: $(lab_l2_why)"
wrote=$(lab_l2_line LAB-L2-BLOCK-RW)
[ -n "$wrote" ] || lab_fail "L2 did not report its disk: $(lab_l2_lines 'LAB-L2-(BLOCK|VU)') $(lab_l2_why)"
[ -n "$up" ] || lab_fail "L2 did not bring up its NIC: $(lab_l2_lines 'LAB-L2-NET') $(lab_l2_why)"
[ -n "$idle" ] || lab_fail "L2 never went idle: $(lab_l2_lines 'LAB-L2-') $(lab_l2_why)"
after=$(lab_l2_line LAB-L2-VU-AFTER-RESTART)
out=$(lab_l2_line LAB-L2-NET-PING-L1)
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "$(lab_l2_why)"
guest=$(echo "$wrote" | sed -n 's/.* readback=\([0-9a-f]*\).*/\1/p')
guest2=$(echo "$after" | sed -n 's/.* readback=\([0-9a-f]*\).*/\1/p')
host=$(dd if=$img bs=4096 skip=$BLOCK_SEEK count=$BLOCK_COUNT 2>/dev/null | md5sum | cut -d' ' -f1)
host2=$(dd if=$img bs=4096 skip=$BLOCK_SEEK2 count=$BLOCK_COUNT 2>/dev/null | md5sum | cut -d' ' -f1)
[ "$guest" = "$want" ] || lab_fail "the guest read back $guest, not the pattern's $want ($wrote)"
[ "$host" = "$want" ] || lab_fail "the image holds $host at block $BLOCK_SEEK, not the pattern's $want ($wrote)"
[ "$guest2" = "$want2" ] || lab_fail "after the daemons' restart the guest read back ${guest2:-nothing}, not $want2 (${after:-no LAB-L2-VU-AFTER-RESTART}; $(lab_l2_lines 'LAB-L2-VU'))"
[ "$host2" = "$want2" ] || lab_fail "after the restart the image holds $host2 at block $BLOCK_SEEK2, not $want2 ($after)"
case "$out" in
*" $NET_PINGS packets received"*) ;;
*) lab_fail "L2 -> L1 ping failed: ${out:-no LAB-L2-NET-PING-L1} ($up)" ;;
esac
case "$l1_ping" in
*" $NET_PINGS packets received"*) ;;
*) lab_fail "L1 -> L2 ping failed: ${l1_ping:-not tried} ($up; $out)" ;;
esac
case "$l1_ping2" in
*" $NET_PINGS packets received"*) ;;
*) lab_fail "L1 -> L2 ping after the daemons' restart failed: ${l1_ping2:-no reply} ($(tail -n 3 /tmp/vu-net.2.log | tr '\n' '|'))" ;;
esac
grep -q "front end 1 connected" /tmp/vu-blk.2.log && grep -q "front end 1 connected" /tmp/vu-net.2.log ||
    lab_fail "vmm did not reconnect to both restarted daemons: $(tail -n 2 /tmp/vu-blk.2.log /tmp/vu-net.2.log | tr '\n' '|')"
grep -q "reconnected" "$LAB_L2_LOG" || lab_fail "vmm never logged a reconnection: $(grep -m3 vhost-user "$LAB_L2_LOG" | tr '\n' '|')"
lab_pass "$wrote; image md5 $host; $out; L1 -> L2: $l1_ping;" \
    "daemons restarted while idle, L1 -> L2 answered again after ${restart_s} s: $l1_ping2; $after; image md5 $host2;" \
    "$LAB_VMM exited 0 after $LAB_L2_SECONDS s"
