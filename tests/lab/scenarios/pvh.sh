# lab-timeout: 180
# lab-needs: vmm
# The same Debian kernel as an ELF vmlinux, booted through its PVH entry
# point (CONFIG_PVH=y) instead of the bzImage's 64-bit entry (the image
# carries it gzipped: images.py takes it from the bzImage's xz payload).
# The L2 must boot with both vCPUs and power off with status 0.
gunzip -c /lab/vmlinux.gz >/tmp/vmlinux
magic=$(head -c 4 /tmp/vmlinux | tail -c 3)
[ "$magic" = ELF ] || lab_fail "unpacking /lab/vmlinux.gz failed (got '$magic')"
size=$(wc -c </tmp/vmlinux)
lab_l2 /tmp/l2.log 90 --kernel /tmp/vmlinux --cpus 2 --mem 256M
booted=$(lab_l2_line LAB-L2-BOOTED)
[ -n "$booted" ] || lab_fail "the vmlinux ($size bytes) printed no LAB-L2-BOOTED: $(lab_l2_why)"
case "$booted" in
*" cpus=2 "*) ;;
*) lab_fail "L2 sees the wrong number of CPUs: $booted" ;;
esac
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "L2 booted ($booted) but $(lab_l2_why)"
lab_pass "vmlinux of $size bytes through PVH: $booted; exit status 0 after $LAB_L2_SECONDS s"
