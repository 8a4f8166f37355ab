# L2 side of "clone-identity": 16 bytes of /dev/urandom read in each clone
# right after it is released (its id on COM1, see template.common.sh), and
# whether the kernel logged the reseed of its VM generation ID driver.
#
# The crng also reseeds on a schedule, from its input pool: every
# max(1 s, uptime/2) in the first two minutes, then every 60 s (Linux 6.1
# reseeds at the first read after the seed got old; later kernels in a
# delayed work at those times, which from boot fall near 9, 13, 19, 28 s).
# The input pool takes each clone's own interrupt timings and RDRAND, so a
# reseed between the template's last read and a clone's read would make
# the clones differ even without a generation ID, and the control run
# would show nothing. So the template reads 16 bytes (a reseed due by then
# happens before the pause, not in the clones) at uptime 23 s: the seed is
# then good for at least 11 s, and the next scheduled reseed is ~5 s away,
# while a clone reads 1-3 s of guest time after that (the clock goes on
# from the saved one; the time is the pause and the clone's own start).
# After the release every clone runs the same commands (each fork and
# exec draws from the crng too), so without a new generation ID they read
# the same bytes.
. /lab/scenarios/template.common.sh
up=$(cut -d. -f1 /proc/uptime)
[ "$up" -ge 23 ] || sleep $((23 - up))
dd if=/dev/urandom bs=16 count=1 2>/dev/null >/dev/null
echo "$TPL_READY uptime=$(cut -d' ' -f1 /proc/uptime)"
read -r id
rand=$(dd if=/dev/urandom bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
fork=$(dmesg | grep -c 'crng reseeded due to virtual machine fork')
echo "LAB-CI id=$id rand=$rand fork=$fork uptime=$(cut -d' ' -f1 /proc/uptime)"
