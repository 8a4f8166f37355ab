# L2 side of "template": the template's guest prints the ready text and
# blocks reading a line from its console; vmm template create pauses and
# saves it there. Each clone resumes in that read, gets its id (see
# template.common.sh), writes "CLONE <id>" to its disk (O_DIRECT, fsync)
# and into guest RAM (a shell variable and a tmpfs file with the id before
# and after TPL_FILL_MIB MiB of zeroes: private pages of the clone), reads
# both back and prints them, then powers off (l2-init).
. /lab/scenarios/template.common.sh
[ -b /dev/vda ] || { echo "LAB-CLONE-MISSING /dev/vda; disks: $(ls /sys/block | tr '\n' ' ')"; exit 1; }
echo "$TPL_READY"
read -r id action
# "ID reset" (lab.tpl_reset_clone=ID, template.sh) resets this clone at
# once with a triple fault, as the lab's unasked resets come: how its
# retry of a reset clone is tested. (A reset the guest asks for the usual
# way, through the ACPI reset register, is never retried.)
if [ "$action" = reset ]; then
    echo triple >/sys/kernel/reboot/type
    echo b >/proc/sysrq-trigger
fi
mark="CLONE $id"
printf '%s' "$mark" | dd of=/dev/vda bs=512 seek=$TPL_SECTOR conv=sync,notrunc,fsync oflag=direct 2>/dev/null ||
    echo "LAB-CLONE-WRITE-FAILED id=$id"
{
    echo "$mark"
    dd if=/dev/zero bs=1M count=$TPL_FILL_MIB 2>/dev/null
    echo
    echo "$mark"
} >/tmp/clone-mem
disk=$(dd if=/dev/vda bs=512 skip=$TPL_SECTOR count=1 iflag=direct 2>/dev/null | tr -d '\000')
first=$(head -n 1 /tmp/clone-mem)
last=$(tail -n 1 /tmp/clone-mem)
mem=$last
[ "$first" = "$last" ] && [ "$last" = "$mark" ] || mem="file-head:$first,file-tail:$last,variable:$mark"
echo "LAB-CLONE id=$id disk=$disk mem=$mem"
