# L2 side of "boot": what the guest sees of its CPUs and RAM (the firmware
# map's System RAM ranges, and MemTotal), before the init powers off.
ram=0
for r in $(sed -n 's/^\([0-9a-f]*\)-\([0-9a-f]*\) : System RAM$/\1-\2/p' /proc/iomem); do
    ram=$((ram + 0x${r#*-} - 0x${r%-*} + 1))
done
echo "LAB-L2-BOOT-SEEN online=$(cat /sys/devices/system/cpu/online)" \
    "ram_map_kib=$((ram / 1024))" \
    "memtotal_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
