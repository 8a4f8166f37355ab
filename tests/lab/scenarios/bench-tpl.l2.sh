# L2 side of the template benchmark (tests/lab/bench-template): prints
# LAB-TPL-READY (where `vmm template create --ready serial=LAB-TPL-READY`
# pauses, and where the QEMU flow's L1 side sends `stop`), then a tick on
# COM1, LAB-TPL-TICK N: every 50 ms for the first 40, then every 2 s, so
# that the first tick after a boot or a clone's resume comes within 50 ms
# while ten guests that have settled cost little CPU.
echo LAB-TPL-READY
n=0
while :; do
    n=$((n + 1))
    echo "LAB-TPL-TICK $n"
    if [ $n -le 40 ]; then usleep 50000; else sleep 2; fi
done
