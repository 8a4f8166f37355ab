# The boot benchmark's L1 side (tests/lab/bench boots one L1 with it as
# lab.scenario=bench). Cold boots of the same L2 (Debian's kernel, the
# lab's initramfs, 256 MiB, 2 vCPUs) by each VMM in turn, so that a load
# change on the host touches both alike. Each run is timed from the VMM's
# start to LAB-L2-BOOTED on its serial output. One line per run:
#   LAB-BENCH <vmm> <run> ok boot=<s> exit=<s>
#   LAB-BENCH <vmm> <run> fail <why>
runs=$(lab_arg lab.bench_runs)
vmms=$(lab_arg lab.bench_vmms | tr , ' ')
for i in $(seq 1 "${runs:-5}"); do
    for LAB_VMM in ${vmms:-vmm qemu}; do
        lab_l2 /tmp/bench.log 120 --cpus 2 --mem 256M >/dev/null
        t=$(lab_l2_booted_after)
        if [ "$t" != never ]; then
            echo "LAB-BENCH $LAB_VMM $i ok boot=$t exit=$LAB_L2_SECONDS status=$LAB_L2_STATUS"
        else
            echo "LAB-BENCH $LAB_VMM $i fail $(lab_l2_why)"
        fi
    done
done
lab_pass "${runs:-5} run(s) each of ${vmms:-vmm qemu}"
