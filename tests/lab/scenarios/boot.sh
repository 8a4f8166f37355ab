# lab-timeout: 120
# lab-needs: vmm
# An L2 with 2 vCPUs and 256 MiB boots to its init, which reports what it
# sees and powers off; the VMM must then exit with status 0.
lab_l2 /tmp/l2.log 90 --cpus 2 --mem 256M
booted=$(lab_l2_line LAB-L2-BOOTED)
[ -n "$booted" ] || lab_fail "L2 printed no LAB-L2-BOOTED: $(lab_l2_why)"
seen=$(lab_l2_line LAB-L2-BOOT-SEEN)
[ -n "$seen" ] || lab_fail "L2 booted but its boot.sh printed nothing ($booted): $(lab_l2_why)"
case "$booted" in
*" cpus=2 "*) ;;
*) lab_fail "L2 sees the wrong number of CPUs: $booted ($seen)" ;;
esac
total=$(echo "$booted" | sed -n 's/.*memtotal=\([0-9]*\).*/\1/p')
# 256 MiB less the kernel, its reservations and the 64 MiB of swiotlb
# buffers: QEMU's L2 shows about 208000 kB.
[ "${total:-0}" -gt 150000 ] && [ "$total" -le 262144 ] ||
    lab_fail "L2's MemTotal ${total:-?} kB is not plausible for 256 MiB ($booted)"
lab_l2_line LAB-L2-SCENARIO-DONE >/dev/null || lab_fail "L2 did not finish its scenario ($booted): $(lab_l2_why)"
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "L2 powered off but $(lab_l2_why)"
lab_pass "$booted; $seen; marker $(lab_l2_booted_after) s after $LAB_VMM started," \
    "exit status 0 after $LAB_L2_SECONDS s"
