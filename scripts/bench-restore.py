#!/usr/bin/env python3
"""Restore benchmark on this host's KVM: a 64 MiB template saved with
x-ignore-shared, then clones restored from it, vmm beside QEMU 10 and
QEMU 7.2 in the same run.

    scripts/bench-restore.py [--runs N] [--vmm PATH] [--only vmm]

The guest is the same for every VMM: a PVH ELF whose 32-bit entry writes
'x' to COM1 in a loop. The template (RAM in a file, share=on) runs, is
saved over QMP with x-ignore-shared while running, and quits; each clone
maps the file share=off (QEMU 10 and vmm also readonly=on,rom=off; QEMU
7.2 has no rom=) and restores. Measured per clone, medians of N:
- start -> output: process start to the first byte the restored guest
  writes to COM1 (it prints from its first instruction, so this is
  start to running);
- own PSS: the VMM's PSS (smaps) without the guest RAM mapping, 0.3 s
  after the guest runs again.
vmm is measured with `--incoming file:` and with Kata's flow
(`-S --incoming defer`, then QMP migrate-set-capabilities,
migrate-incoming and cont); QEMU with `-incoming defer` and the same QMP
commands (neither 7.2 nor 10.0 can set x-ignore-shared on the command
line).
QEMU 10 is /usr/bin/qemu-system-x86_64 (bookworm-backports, which
scripts/setup-bench.sh installs); QEMU 7.2 is the lab's unpacked copy
(tests/lab/setup).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEM = 64 << 20

# mov dx, 0x3f8; loop: mov al, 'x'; out dx, al; jmp loop
CODE = bytes([0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x78, 0xEE, 0xEB, 0xFB])


def pvh_elf(code):
    """An ELF vmlinux loaded at 1 MiB with a Xen PHYS32_ENTRY note."""
    load = 0x100000
    f = bytearray(0x100)
    f[0:4] = b"\x7fELF"
    f[4], f[5], f[6] = 2, 1, 1
    f[16:18] = struct.pack("<H", 2)
    f[18:20] = struct.pack("<H", 0x3E)
    f[20:24] = struct.pack("<I", 1)
    f[24:32] = struct.pack("<Q", load)
    f[32:40] = struct.pack("<Q", 64)
    f[52:54] = struct.pack("<H", 64)
    f[54:56] = struct.pack("<H", 56)
    f[56:58] = struct.pack("<H", 2)

    def phdr(at, kind, off, addr, size, align):
        f[at:at + 4] = struct.pack("<I", kind)
        f[at + 4:at + 8] = struct.pack("<I", 7)
        f[at + 8:at + 16] = struct.pack("<Q", off)
        f[at + 16:at + 24] = struct.pack("<Q", addr)
        f[at + 24:at + 32] = struct.pack("<Q", addr)
        f[at + 32:at + 40] = struct.pack("<Q", size)
        f[at + 40:at + 48] = struct.pack("<Q", size)
        # QEMU's ELF loader divides by the alignment.
        f[at + 48:at + 56] = struct.pack("<Q", align)

    phdr(64, 1, 0x100, load, len(code), 0x100)
    phdr(120, 4, 0xB0, 0, 20, 4)
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", load)
    f[0xB0:0xB0 + len(note)] = note
    return bytes(f) + code


class Qmp:
    def __init__(self, path, timeout=20):
        end = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.0005)
        self.f = self.s.makefile("rwb")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, args=None):
        m = {"execute": name}
        if args:
            m["arguments"] = args
        self.f.write(json.dumps(m).encode() + b"\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"]))
            return r["return"]

    def close(self):
        self.s.close()


def wait_migration(q):
    while True:
        st = q.cmd("query-migrate").get("status")
        if st in ("completed", "failed"):
            return st
        time.sleep(0.01)


def wait_output(path, since_size, proc, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if os.path.getsize(path) > since_size:
                return time.monotonic()
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("exited with %s before any output" % proc.returncode)
        time.sleep(0.0002)
    raise RuntimeError("no output in %d s" % timeout)


def own_pss_kb(pid, ram_path):
    """PSS of every mapping but the guest RAM file's, in kB."""
    total, skip = 0, False
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
                skip = len(parts) >= 6 and parts[5] == ram_path
            elif parts and parts[0] == "Pss:" and not skip:
                total += int(parts[1])
    return total


class Vmm:
    """One VMM kind: how to start a template and a clone."""

    def __init__(self, name, binary, env=None, qemu=False, rom=True, prefix=()):
        self.name, self.binary, self.env, self.qemu, self.rom = name, binary, env, qemu, rom
        # Arguments right after the binary (QEMU 7.2's -L for its firmware).
        self.prefix = list(prefix)

    def template_cmd(self, d, kernel):
        ram, q, s = d + "/ram", d + "/tq", d + "/ts"
        if self.qemu:
            return [self.binary] + self.prefix + [
                    "-accel", "kvm", "-M", "microvm", "-nodefaults", "-display", "none",
                    "-m", "64M", "-object",
                    "memory-backend-file,id=mem,size=64M,mem-path=%s,share=on" % ram,
                    "-machine", "memory-backend=mem", "-kernel", kernel,
                    "-serial", "file:" + s, "-qmp", "unix:%s,server=on,wait=off" % q]
        return [self.binary, "run", "--kernel", kernel, "--memory",
                "size=64M,backing=file,path=%s,share=on" % ram, "--serial", "file=" + s,
                "--qmp", "unix:" + q]

    def clone_cmd(self, d, i, kernel, mode):
        ram, q, s = d + "/ram", "%s/q%d" % (d, i), "%s/s%d" % (d, i)
        if self.qemu:
            backing = "memory-backend-file,id=mem,size=64M,mem-path=%s,share=off" % ram
            if self.rom:
                backing += ",readonly=on,rom=off"
            cmd = [self.binary] + self.prefix + [
                   "-accel", "kvm", "-M", "microvm", "-nodefaults", "-display", "none",
                   "-m", "64M", "-object", backing, "-machine", "memory-backend=mem",
                   "-kernel", kernel, "-serial", "file:" + s,
                   "-qmp", "unix:%s,server=on,wait=off" % q]
            return cmd + ["-incoming", "defer"], q, s
        cmd = [self.binary, "run", "--memory",
               "size=64M,backing=file,path=%s,share=off,readonly=on,rom=off" % ram,
               "--serial", "file=" + s, "--qmp", "unix:" + q]
        if mode == "file":
            cmd += ["--incoming", "file:%s/state" % d]
        else:
            cmd += ["-S", "--incoming", "defer"]
        return cmd, q, s


def make_template(v, d, kernel):
    out = open(d + "/template.log", "wb")
    p = subprocess.Popen(v.template_cmd(d, kernel), env=v.env, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            q = Qmp(d + "/tq")
        except OSError as e:
            p.kill()
            p.wait()
            raise RuntimeError("%s: template QMP: %s; its log: %s" % (
                v.name, e, open(d + "/template.log", "rb").read()[-2000:].decode(errors="replace")))
        wait_output(d + "/ts", 0, p)
        q.cmd("migrate-set-capabilities",
              {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        uri = "exec:cat > %s/state" % d
        q.cmd("migrate", {"uri": uri})
        if wait_migration(q) != "completed":
            raise RuntimeError("%s: template migration failed" % v.name)
        q.cmd("quit")
        q.close()
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return os.path.getsize(d + "/state")


def one_clone(v, d, i, kernel, mode):
    cmd, qpath, serial = v.clone_cmd(d, i, kernel, mode)
    log = open("%s/clone%d.log" % (d, i), "wb")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=v.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        if mode == "defer":
            q = Qmp(qpath)
            q.cmd("migrate-set-capabilities",
                  {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
            q.cmd("migrate-incoming", {"uri": "exec:cat %s/state" % d if not v.rom else "file:%s/state" % d})
            while q.cmd("query-status")["status"] == "inmigrate":
                time.sleep(0.0005)
            if q.cmd("query-status")["status"] != "running":
                q.cmd("cont")
            q.close()
        try:
            t1 = wait_output(serial, 0, p)
        except RuntimeError as e:
            p.kill()
            p.wait()
            raise RuntimeError("%s %s clone: %s; its log: %s" % (v.name, mode, e, open(
                "%s/clone%d.log" % (d, i), "rb").read()[-2000:].decode(errors="replace")))
        time.sleep(0.3)
        pss = own_pss_kb(p.pid, d + "/ram")
        return (t1 - t0) * 1000.0, pss
    finally:
        p.kill()
        p.wait()


def bench(v, runs, kernel):
    d = tempfile.mkdtemp(prefix="bench-restore-%s-" % v.name.replace(" ", "-"))
    try:
        size = make_template(v, d, kernel)
        results = {}
        # QEMU sets x-ignore-shared on the destination only over QMP
        # (10.0 has no -global migration.x-ignore-shared), so only defer.
        modes = ["defer"] if v.qemu else ["file", "defer"]
        for mode in modes:
            times, pss = [], []
            for i in range(runs):
                t, m = one_clone(v, d, len(times) + 100 * modes.index(mode), kernel, mode)
                times.append(t)
                pss.append(m)
            results[mode] = (statistics.median(times), min(times), max(times), statistics.median(pss))
        return size, results
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target/release/vmm"))
    ap.add_argument("--only", choices=["vmm"], help="measure vmm alone (no QEMU needed)")
    a = ap.parse_args()
    kernel_dir = tempfile.mkdtemp(prefix="bench-restore-kernel-")
    kernel = os.path.join(kernel_dir, "tiny.elf")
    with open(kernel, "wb") as f:
        f.write(pvh_elf(CODE))
    vmms = [Vmm("vmm", a.vmm)]
    if a.only:
        pass
    elif shutil.which("qemu-system-x86_64"):
        vmms.append(Vmm("QEMU 10", shutil.which("qemu-system-x86_64"), qemu=True))
    sysroot = os.path.join(ROOT, "tests/lab/work/sysroot")
    q72 = os.path.join(sysroot, "usr/bin/qemu-system-x86_64")
    if os.path.exists(q72) and not a.only:
        libs = [os.path.join(sysroot, p) for p in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")]
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(libs))
        vmms.append(Vmm("QEMU 7.2", q72, env=env, qemu=True, rom=False,
                        prefix=["-L", os.path.join(sysroot, "usr/share/qemu")]))
    rows = []
    for v in vmms:
        size, res = bench(v, a.runs, kernel)
        for mode, (med, lo, hi, pss) in res.items():
            rows.append((v.name, mode, size, med, lo, hi, pss))
    print("restore of a 64 MiB x-ignore-shared template, %d runs each (medians)" % a.runs)
    print("%-9s %-6s %10s %14s %18s %12s" % ("VMM", "mode", "state B", "start->output", "min..max ms", "own PSS kB"))
    for name, mode, size, med, lo, hi, pss in rows:
        print("%-9s %-6s %10d %11.1f ms %8.1f..%-8.1f %12d" % (name, mode, size, med, lo, hi, pss))
    base = {m: r for r in rows if r[0] == "vmm" for m in [r[1]]}
    for name, mode, size, med, lo, hi, pss in rows:
        if name != "vmm" and mode in base:
            print("vmm/%s (%s): time %.3f, own PSS %.3f" % (name, mode, base[mode][3] / med, base[mode][6] / pss))
    shutil.rmtree(kernel_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
