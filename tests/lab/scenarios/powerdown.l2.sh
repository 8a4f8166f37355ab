# L2 side of "powerdown": waits for the ACPI power button (the event the
# VMM raises through the Generic Event Device reaches Linux's button
# driver, which sends KEY_POWER on its input device), then shuts down as
# an init system would: sync, unmount, power off.
dev=""
for d in /sys/class/input/event*; do
    [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] && dev=/dev/input/${d##*/}
done
[ -n "$dev" ] || { echo "LAB-L2-POWERDOWN-NO-BUTTON inputs: $(cat /sys/class/input/*/name 2>/dev/null | tr '\n' ',')"; exit 1; }
echo "LAB-L2-POWERDOWN-READY button=$dev"
# One input_event (24 bytes on x86-64) is the press.
dd if="$dev" bs=24 count=1 of=/dev/null 2>/dev/null
echo "LAB-L2-POWER-BUTTON pressed; shutting down"
sync
poweroff -f
