# L2 side of the snapshot benchmark (tests/lab/bench-snapshot): a tick on
# COM1 every 10 ms, forever, so that a restored guest's first output
# after it resumes can be timed.
n=0
while :; do
    n=$((n + 1))
    echo "LAB-L2-TICK $n"
    usleep 10000
done
