# lab-timeout: 420
# QEMU as the L2 VMM inside L1, under KVM: microvm, 256 MiB, 2 vCPUs,
# Debian's kernel with the lab's L2 initramfs, to its init's marker; the L2
# init also loads the virtio modules the image carries (for later scenarios).
log=/tmp/l2.log
mods=virtio_mmio,virtio_pci,virtio_blk,virtio_net,virtio_balloon,virtio_mem
lab_run_l2 "$log" 300 qemu-system-x86_64 -enable-kvm -cpu host -M microvm,rtc=on \
    -m 256 -smp 2 -nographic -no-reboot \
    -kernel /lab/vmlinuz -initrd /lab/l2.cpio \
    -append "$LAB_L2_BASE quiet lab.scenario=$LAB_SCENARIO lab.insmod=$mods"
booted=$(grep -m1 'LAB-L2-BOOTED' "$log" | tr -d '\r')
[ -n "$booted" ] || lab_fail "L2 printed no LAB-L2-BOOTED (qemu status $LAB_L2_STATUS after $LAB_L2_SECONDS s; last line: $(tail -n1 "$log" | tr -d '\r'))"
case "$booted" in
*"cpus=2 "*) ;;
*) lab_fail "L2 booted with the wrong CPU count: $booted" ;;
esac
grep -q 'LAB-L2-MODULES ok' "$log" || lab_fail "L2 could not load its virtio modules ($booted)"
[ "$LAB_L2_STATUS" = 0 ] || lab_fail "qemu exited with status $LAB_L2_STATUS after $LAB_L2_SECONDS s ($booted)"
lab_pass "$booted; L2 took $LAB_L2_SECONDS s from QEMU start to exit"
