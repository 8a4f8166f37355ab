# lab-timeout: 120
# lab-needs: vmm
# The RAM policy's refusals through the real binary (vmm run, not
# --dry-run), in L1 where /dev/kvm works: each refused cell must exit with
# status 2 before any vCPU runs (nothing on stdout, where the guest's
# serial console goes) and print on stderr exactly the lines docs/policy.md
# gives for it. The page's example RAM file is /srv/template/ram, so L1
# makes one there. Cells 11-27 (creating a template, vhost-user) have no
# vmm run option yet.
doc=/lab/policy.md
[ -f $doc ] || lab_fail "no $doc in L1"
command -v vmm >/dev/null || lab_fail "no vmm in L1"
P=/srv/template/ram
mkdir -p /srv/template
truncate -s 1G $P
dd if=/dev/zero of=/tmp/disk.img bs=1M count=1 2>/dev/null
clone="size=1G,backing=file,path=$P,share=off,readonly=on,rom=off"

checked="" n=0
# refused "N[ N...]" ARGS...: vmm run ARGS must be refused with messages N...
refused() {
    want=$1
    shift
    : >/tmp/want
    for m in $want; do
        lab_policy_message "$m" >>/tmp/want
    done
    [ -s /tmp/want ] || lab_fail "docs/policy.md has no message $want"
    vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cmdline "console=ttyS0 lab.scenario=policy" \
        --cpus 1 --serial stdio "$@" </dev/null >/tmp/out 2>/tmp/err
    rc=$?
    [ $rc = 2 ] || lab_fail "cell [$want] ($*): exit status $rc, not 2; stderr: $(head -c 300 /tmp/err)"
    [ ! -s /tmp/out ] || lab_fail "cell [$want] ($*): output on stdout (did a vCPU run?): $(head -c 200 /tmp/out)"
    if ! cmp -s /tmp/want /tmp/err; then
        echo "LAB-LOG policy: cell [$want] expected:"
        sed 's/^/    /' /tmp/want
        echo "LAB-LOG policy: cell [$want] got:"
        sed 's/^/    /' /tmp/err
        lab_fail "cell [$want] ($*): stderr differs from docs/policy.md (both above)"
    fi
    checked="$checked [$(echo $want | tr ' ' +)]"
    n=$((n + $(wc -l </tmp/want)))
}

refused 1 --memory size=1G,backing=file,path=$P,share=off,readonly=on,rom=on
refused 2 --memory size=1G,hugepages=on --balloon free-page-reporting=on
refused 3 --memory size=1G,backing=file,path=$P,share=off --balloon free-page-reporting=on
refused 4 --memory $clone --balloon free-page-reporting=on
refused 5 --memory size=1G,hugepages=on --balloon target=512M
refused 6 --memory size=1G,backing=file,path=$P,share=off --balloon target=512M
refused 7 --memory $clone --balloon target=512M
refused 8 --memory size=1G --virtio-mem id=mem0,size=1G,requested=0,backing=file,path=$P,share=off
refused 9 --memory $clone --virtio-mem id=mem0,size=1G,requested=0,backing=file,path=$P,share=off,readonly=on,rom=off
refused 10 --memory $clone --virtio-mem id=mem0,size=1G,requested=0,backing=file,path=$P,share=off,readonly=on,rom=on
# All refusals of one configuration come together.
refused "4 7" --memory $clone --balloon free-page-reporting=on,target=512M
sum_before=$(md5sum <$P)

# A clone with the devices it can have is accepted.
ok_args="--memory $clone --disk path=/tmp/disk.img --balloon stats=on,deflate-on-oom=on --virtio-mem id=mem0,size=1G,requested=0"
# shellcheck disable=SC2086
vmm run --kernel /lab/vmlinuz --initrd /lab/l2.cpio --cpus 1 $ok_args --dry-run </dev/null >/tmp/out 2>/tmp/err
rc=$?
[ $rc = 0 ] || lab_fail "a valid clone setup was refused by --dry-run (status $rc): $(head -c 300 /tmp/err)"
[ "$(md5sum <$P)" = "$sum_before" ] || lab_fail "the template file changed"
lab_pass "vmm run refused cells$checked with exit status 2, no guest output and the $n documented line(s) exactly;" \
    "the clone with disk, balloon stats/deflate-on-oom and virtio-mem requested=0 passes --dry-run; template file unchanged"
