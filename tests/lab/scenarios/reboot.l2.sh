# L2 side of "reboot".
echo LAB-L2-REBOOTING
reboot -f
sleep 30
