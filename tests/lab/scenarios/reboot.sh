# lab-timeout: 120
# lab-needs: vmm
# The guest reboots (busybox `reboot -f`, the kernel's default reboot
# path, no reboot= argument): the VMM must end with its reboot status, 3,
# rather than hang. With hardware-reduced ACPI and no EFI, Linux's first
# try is the BIOS path, which jumps to the reset vector.
lab_l2_once /tmp/l2.log 60 --cpus 2 --mem 256M
lab_l2_line LAB-L2-REBOOTING >/dev/null || lab_fail "L2 did not get to its reboot: $(lab_l2_why)"
[ "$LAB_VMM" = vmm ] || lab_pass "L2 rebooted; $LAB_VMM exited $LAB_L2_STATUS after $LAB_L2_SECONDS s"
[ "$LAB_L2_STATUS" = 3 ] || lab_fail "the guest rebooted, but $(lab_l2_why)"
lab_pass "L2 rebooted; vmm exited 3 after $LAB_L2_SECONDS s: $(lab_l2_lines 'guest reset')"
