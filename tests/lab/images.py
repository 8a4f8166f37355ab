#!/usr/bin/env python3
"""Builds the nested lab's initramfs images (newc cpio, written directly).

L2: busybox-static, guest/l2-init as /init, lab-insmod, Debian's virtio
    modules with their dependency table, and the L2 parts of the scenarios
    (scenarios/NAME.l2.sh, at /lab/scenarios/NAME.sh) with what they share
    with L1 (scenarios/NAME.common.sh, at the same path in both images).
L1: busybox-static, guest/l1-init as /init, kvm/kvm-amd (+ tun, vhost_net)
    with their dependencies, the scenarios (scenarios/NAME.sh), the RAM
    policy page (docs/policy.md, at /lab/policy.md), the L2 kernel
    and initramfs under /lab/, qemu-system-x86_64 with its libraries and x86
    firmware, and the project's own binaries (see project_binaries()).

Needs tests/lab/setup to have run (it writes work/lab.env). Used by
tests/lab/run; `python3 tests/lab/images.py` builds both images alone.
"""

import gzip
import json
import lzma
import os
import re
import shlex
import stat
import struct
import subprocess
import sys

LAB = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(LAB, "work")
GUEST = os.path.join(LAB, "guest")
SCENARIOS = os.path.join(LAB, "scenarios")
REPO = os.path.dirname(os.path.dirname(LAB))

# Modules L1 loads at boot: kvm_amd (with irqbypass, ccp, kvm). tun and
# vhost_net are carried for network scenarios; load them with lab-insmod.
L1_MODULES = ["kvm_amd", "tun", "vhost_net"]
# Modules the L2 image carries; its /init loads those named by
# lab.insmod=a,b on its command line (dependencies first).
L2_MODULES = [
    "virtio", "virtio_ring", "virtio_mmio", "virtio_pci", "virtio_blk",
    "virtio_net", "virtio_balloon", "virtio_mem",
    # The ACPI power button (through the Generic Event Device) and the
    # input events it sends: what QMP system_powerdown presses.
    "button", "evdev",
]
# Firmware QEMU may look for in L1, relative to the sysroot. microvm needs
# only bios-microvm.bin (qboot); the rest is for -M pc / q35 and PCI NICs.
QEMU_FIRMWARE = [
    "usr/share/qemu/bios-microvm.bin",
    "usr/share/qemu/qboot.rom",
    "usr/share/qemu/linuxboot.bin",
    "usr/share/qemu/linuxboot_dma.bin",
    "usr/share/qemu/pvh.bin",
    "usr/share/qemu/kvmvapic.bin",
    "usr/share/qemu/multiboot.bin",
    "usr/share/qemu/multiboot_dma.bin",
    "usr/share/seabios/bios.bin",
    "usr/share/seabios/bios-256k.bin",
    "usr/share/seabios/vgabios-stdvga.bin",
    "usr/lib/ipxe/qemu/efi-virtio.rom",
]
REQUIRED_FIRMWARE = {"usr/share/qemu/bios-microvm.bin"}


def load_env():
    """work/lab.env (shell assignments written by setup) as a dict."""
    path = os.path.join(WORK, "lab.env")
    if not os.path.exists(path):
        sys.exit("lab: %s missing; run tests/lab/setup" % path)
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                env[key] = " ".join(shlex.split(value))
    return env


class Cpio:
    """A newc ("070701") archive, written as entries are added."""

    def __init__(self, path):
        self.path = path
        self.f = open(path + ".tmp", "wb")
        self.ino = 1
        self.names = set()

    def _header(self, name, mode, size, rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, size, 0, 0,
                  rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08x" % v for v in fields) + name_b
        self.f.write(hdr + b"\0" * (-len(hdr) % 4))

    def _data(self, data):
        self.f.write(data)
        self.f.write(b"\0" * (-len(data) % 4))

    def _parents(self, name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def _claim(self, name):
        name = name.strip("/")
        if name in self.names:
            return None
        self._parents(name)
        self.names.add(name)
        return name

    def dir(self, name, mode=0o755):
        name = self._claim(name)
        if name:
            self._header(name, stat.S_IFDIR | mode, 0, nlink=2)

    def data(self, name, data, mode=0o644):
        name = self._claim(name)
        if name:
            self._header(name, stat.S_IFREG | mode, len(data))
            self._data(data)

    def file(self, name, src, mode=None):
        """Adds host file src (symlinks followed) as name."""
        with open(src, "rb") as f:
            data = f.read()
        if mode is None:
            mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
        self.data(name, data, mode)

    def symlink(self, name, target):
        name = self._claim(name)
        if name:
            t = target.encode()
            self._header(name, stat.S_IFLNK | 0o777, len(t))
            self._data(t)

    def chardev(self, name, major, minor, mode=0o600):
        name = self._claim(name)
        if name:
            self._header(name, stat.S_IFCHR | mode, 0, rdev=(major, minor))

    def close(self):
        self._header("TRAILER!!!", 0, 0, nlink=1)
        self.f.write(b"\0" * (-self.f.tell() % 512))
        self.f.close()
        os.replace(self.path + ".tmp", self.path)
        return os.path.getsize(self.path)


def modinfo_depends(path):
    """The depends= field of a .ko's .modinfo section (what `modinfo -F
    depends` prints), read from the ELF file."""
    with open(path, "rb") as f:
        d = f.read()
    if d[:4] != b"\x7fELF" or d[4] != 2:
        raise ValueError("%s: not a 64-bit ELF module" % path)
    shoff, = struct.unpack_from("<Q", d, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize)
            for i in range(shnum)]
    stroff = secs[shstrndx][4]
    for sec in secs:
        name = d[stroff + sec[0]:d.index(b"\0", stroff + sec[0])]
        if name == b".modinfo":
            for kv in d[sec[4]:sec[4] + sec[5]].split(b"\0"):
                if kv.startswith(b"depends="):
                    deps = kv[len(b"depends="):].decode()
                    return [x.replace("-", "_") for x in deps.split(",") if x]
            return []
    raise ValueError("%s: no .modinfo section" % path)


def add_modules(cpio, env, wanted):
    """Adds the wanted modules and their dependencies under
    /lib/modules/KVER/ and writes the table lab-insmod reads. Returns the
    modules in a valid load order."""
    moddir = env["LAB_MODULES"]
    kver = env["LAB_KVER"]
    index = {}
    for root, _dirs, files in os.walk(os.path.join(moddir, "kernel")):
        for fn in files:
            if fn.endswith(".ko"):
                index[fn[:-3].replace("-", "_")] = os.path.join(root, fn)
    order, deps = [], {}

    def visit(name, chain):
        if name in deps:
            return
        if name in chain:
            raise ValueError("module dependency loop: %s" % " -> ".join(chain))
        if name not in index:
            raise ValueError("module %s not in %s" % (name, moddir))
        deps[name] = modinfo_depends(index[name])
        for dep in deps[name]:
            visit(dep, chain + [name])
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), [])
    table = []
    for name in order:
        rel = os.path.relpath(index[name], moddir)
        dest = "lib/modules/%s/%s" % (kver, rel)
        cpio.file(dest, index[name], 0o644)
        table.append(" ".join([name, "/" + dest] + deps[name]))
    cpio.data("etc/lab/modules", ("\n".join(table) + "\n").encode())
    return order


def add_busybox(cpio, env):
    bb = os.path.join(env["LAB_SYSROOT"], "bin/busybox")
    cpio.file("bin/busybox", bb, 0o755)
    applets = subprocess.run([bb, "--list-full"], check=True,
                             capture_output=True, text=True).stdout.split()
    for path in applets:
        if path != "bin/busybox":
            cpio.symlink(path, "/bin/busybox")


def add_base(cpio, init):
    """The skeleton every image shares; `init` is the host path of its /init."""
    for d in ("dev", "proc", "sys", "tmp", "run", "root", "etc", "lab"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("init", init, 0o755)
    cpio.file("bin/lab-insmod", os.path.join(GUEST, "lab-insmod"), 0o755)
    cpio.data("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.data("etc/group", b"root:x:0:\n")


def in_root(root, path):
    """Resolves path (absolute, inside root) following symlinks inside root."""
    cur = os.path.join(root, path.lstrip("/"))
    for _ in range(40):
        if not os.path.islink(cur):
            return cur
        target = os.readlink(cur)
        if target.startswith("/"):
            cur = os.path.join(root, target.lstrip("/"))
        else:
            cur = os.path.normpath(os.path.join(os.path.dirname(cur), target))
    raise ValueError("symlink loop at %s" % path)


def add_executable(cpio, env, src, dest, added_libs):
    """Adds an executable at dest and every shared library ldd finds for it
    (the sysroot's libraries first, then the host's), at the paths the
    dynamic loader searches."""
    cpio.file(dest, src, 0o755)
    sysroot = env["LAB_SYSROOT"].rstrip("/") + "/"
    run_env = dict(os.environ, LD_LIBRARY_PATH=env["LAB_LD_LIBRARY_PATH"])
    out = subprocess.run(["ldd", src], capture_output=True, text=True,
                         env=run_env)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return
        raise RuntimeError("ldd %s: %s" % (src, out.stderr.strip()))
    for line in out.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise RuntimeError("%s: library %s" % (src, line))
        if "=>" in line:
            path = line.split("=>", 1)[1].split("(")[0].strip()
        else:
            path = line.split("(")[0].strip()
        if not path.startswith("/"):
            continue  # linux-vdso.so.1
        dest_lib = path[len(sysroot) - 1:] if path.startswith(sysroot) else path
        if dest_lib not in added_libs:
            added_libs.add(dest_lib)
            cpio.file(dest_lib, os.path.realpath(path), 0o755)


# The venv scripts/setup.sh makes, with the qemu.qmp package: its
# interpreter and the modules the "qmp" scenario's client imports are
# carried into L1 (at their host paths), so that QEMU's own Python client
# drives vmm there.
VENV = os.path.join(REPO, "target", "qmp-venv")
QMP_CLIENT = os.path.join(LAB, "qmp_client.py")
# Run by the venv's interpreter (without site, as in L1): imports the
# client without running it and prints what it took.
_LIST_MODULES = r"""
import importlib.util, json, os, sys
site = os.path.join(sys.argv[2], "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
sys.path.insert(0, site)
spec = importlib.util.spec_from_file_location("qmp_client", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
files = sorted({m.__file__ for m in list(sys.modules.values())
                if getattr(m, "__file__", None) and os.path.isfile(m.__file__)})
print(json.dumps({"python": os.path.realpath(sys.executable), "site": site, "files": files}))
"""


def stripped(path):
    """A copy of the ELF file at `path` without its symbols, cached in work/."""
    out = os.path.join(WORK, "images", "stripped", path.lstrip("/").replace("/", "_"))
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(path):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run(["strip", "--strip-unneeded", "-o", out + ".tmp", os.path.realpath(path)], check=True)
        os.replace(out + ".tmp", out)
    return out


def add_python_qmp(cpio, env, libs):
    """The venv's interpreter, the modules the qmp client needs (each
    extension module with its libraries) and /lab/python/run, which runs
    a script with them. Returns False when there is no venv."""
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        return False
    out = subprocess.run([py, "-S", "-c", _LIST_MODULES, QMP_CLIENT, VENV],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("listing the qmp client's modules with %s: %s" % (py, out.stderr.strip()))
    info = json.loads(out.stdout)
    # libpython (pyenv builds it with debug info) goes in stripped; the
    # interpreter finds it where ldd found it.
    ldd = subprocess.run(["ldd", info["python"]], capture_output=True, text=True).stdout
    for line in ldd.splitlines():
        m = re.search(r"=> (\S*libpython\S*) ", line)
        if m and m.group(1) not in libs:
            libs.add(m.group(1))
            cpio.file(m.group(1).lstrip("/"), stripped(m.group(1)), 0o755)
    add_executable(cpio, env, info["python"], info["python"].lstrip("/"), libs)
    for f in info["files"]:
        if f.endswith(".so"):
            add_executable(cpio, env, f, f.lstrip("/"), libs)
        else:
            cpio.file(f.lstrip("/"), f, 0o644)
    run = "#!/bin/sh\nPYTHONPATH=%s PYTHONUTF8=1 PYTHONDONTWRITEBYTECODE=1 exec %s -S \"$@\"\n" % (
        info["site"], info["python"])
    cpio.data("lab/python/run", run.encode(), 0o755)
    cpio.file("lab/qmp_client.py", QMP_CLIENT, 0o644)
    return True


def scenario_names():
    """scenarios/NAME.sh; NAME.l2.sh and NAME.common.sh are parts of NAME."""
    return sorted(fn[:-3] for fn in os.listdir(SCENARIOS)
                  if fn.endswith(".sh") and "." not in fn[:-3])


def add_common(cpio):
    """scenarios/NAME.common.sh: definitions a scenario's L1 and L2 sides
    both source (at /lab/scenarios/NAME.common.sh)."""
    for fn in sorted(os.listdir(SCENARIOS)):
        if fn.endswith(".common.sh"):
            cpio.file("lab/scenarios/" + fn, os.path.join(SCENARIOS, fn), 0o644)


def project_bin_dir():
    """The project's binaries to carry into L1: every executable file at
    the top of $LAB_BIN_DIR, by default the cargo release folder
    (${CARGO_TARGET_DIR:-<repo>/target}/release). Build them first
    (cargo build --release); missing folder = none carried."""
    default = os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"),
        "release")
    return os.environ.get("LAB_BIN_DIR") or default


def project_binaries():
    d = project_bin_dir()
    found = []
    if os.path.isdir(d):
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            if (os.path.isfile(p) and os.access(p, os.X_OK)
                    and not fn.endswith((".so", ".d", ".rlib"))):
                found.append(p)
    return found


def build_l2(env, out):
    cpio = Cpio(out)
    add_base(cpio, os.path.join(GUEST, "l2-init"))
    add_busybox(cpio, env)
    add_modules(cpio, env, L2_MODULES)
    for fn in sorted(os.listdir(SCENARIOS)):
        if fn.endswith(".l2.sh"):
            cpio.file("lab/scenarios/%s.sh" % fn[:-6],
                      os.path.join(SCENARIOS, fn), 0o755)
    add_common(cpio)
    return cpio.close()


def vmlinux(env):
    """The ELF vmlinux inside the bzImage (its xz payload), cached in
    work/images: a PVH boot of it skips the kernel's own decompression,
    which takes about 6 s under TCG."""
    out = os.path.join(WORK, "images", "vmlinux")
    src = env["LAB_VMLINUZ"]
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    with open(src, "rb") as f:
        data = f.read()
    at = data.find(b"\xfd7zXZ\x00")
    if at < 0:
        raise RuntimeError("%s has no xz payload: cannot make a vmlinux of it" % src)
    elf = lzma.LZMADecompressor().decompress(data[at:])
    if elf[:4] != b"\x7fELF":
        raise RuntimeError("the xz payload of %s is not an ELF vmlinux" % src)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "wb") as f:
        f.write(elf)
    os.replace(out + ".tmp", out)
    return out


def vmlinux_gz(env):
    """vmlinux(env) gzipped, for the pvh scenario: busybox's unxz cannot
    undo the kernel's x86 BCJ filter, and 66 MB unpacked would double the
    L1 image. Cached in work/images."""
    out = os.path.join(WORK, "images", "vmlinux.gz")
    src = vmlinux(env)
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    with open(src, "rb") as f:
        elf = f.read()
    with open(out + ".tmp", "wb") as f:
        f.write(gzip.compress(elf, 6))
    os.replace(out + ".tmp", out)
    return out


def build_l1(env, out, l2_image):
    cpio = Cpio(out)
    add_base(cpio, os.path.join(GUEST, "l1-init"))
    add_busybox(cpio, env)
    add_modules(cpio, env, L1_MODULES)
    cpio.file("lab/lib.sh", os.path.join(GUEST, "lib.sh"), 0o644)
    # The policy scenario checks the vmm's refusals against this page.
    cpio.file("lab/policy.md", os.path.join(REPO, "docs", "policy.md"), 0o644)
    for name in scenario_names():
        cpio.file("lab/scenarios/%s.sh" % name,
                  os.path.join(SCENARIOS, name + ".sh"), 0o755)
    add_common(cpio)
    # The boot benchmark's L1 side (tests/lab/bench): run as lab.scenario=bench,
    # but not a scenario of tests/lab/run.
    cpio.file("lab/scenarios/bench.sh", os.path.join(LAB, "bench.sh"), 0o755)
    # The snapshot benchmark's L1 side (tests/lab/bench-snapshot).
    cpio.file("lab/scenarios/bench-snapshot.sh", os.path.join(LAB, "bench-snapshot.sh"), 0o755)
    # The template benchmark's L1 side (tests/lab/bench-template).
    cpio.file("lab/scenarios/bench-template.sh", os.path.join(LAB, "bench-template.sh"), 0o755)
    # The boot failure rate's L1 side (tests/lab/boot-rate).
    cpio.file("lab/scenarios/boot-rate.sh", os.path.join(LAB, "boot-rate.sh"), 0o755)
    cpio.file("lab/vmlinuz", env["LAB_VMLINUZ"], 0o644)
    cpio.file("lab/vmlinux.gz", vmlinux_gz(env), 0o644)
    cpio.file("lab/l2.cpio", l2_image, 0o644)
    libs = set()
    sysroot = env["LAB_SYSROOT"]
    add_executable(cpio, env, os.path.join(sysroot, "usr/bin/qemu-system-x86_64"),
                   "usr/bin/qemu-system-x86_64", libs)
    for fw in QEMU_FIRMWARE:
        src = in_root(sysroot, fw)
        if os.path.exists(src):
            cpio.file(fw, src, 0o644)
        elif fw in REQUIRED_FIRMWARE:
            raise RuntimeError("QEMU firmware %s missing in %s" % (fw, sysroot))
    carried = []
    if add_python_qmp(cpio, env, libs):
        carried.append("python+qemu.qmp")
    for path in project_binaries():
        add_executable(cpio, env, path, "usr/local/bin/" + os.path.basename(path), libs)
        carried.append(os.path.basename(path))
    info = "kernel=%s\nqemu=%s\nproject_binaries=%s\n" % (
        env["LAB_KVER"], env["LAB_QEMU_VERSION"], " ".join(carried))
    cpio.data("etc/lab/info", info.encode())
    return cpio.close(), carried


# The guest of devices/tests/vhost_user_qemu.rs, booted on the host by QEMU
# under TCG as the front end of vhost-user daemons (not part of the lab's
# runs: it reuses the lab's kernel, busybox and module table).
VHOST_USER_INIT = os.path.join(REPO, "tests", "vhost-user", "guest-init")
VHOST_USER_MODULES = ["virtio_mmio", "virtio_blk", "virtio_net"]


def build_vhost_user(env, out):
    cpio = Cpio(out)
    add_base(cpio, VHOST_USER_INIT)
    add_busybox(cpio, env)
    add_modules(cpio, env, VHOST_USER_MODULES)
    return cpio.close()


def build_all(env):
    images = os.path.join(WORK, "images")
    os.makedirs(images, exist_ok=True)
    l2 = os.path.join(images, "l2.cpio")
    l1 = os.path.join(images, "l1.cpio")
    l2_size = build_l2(env, l2)
    l1_size, carried = build_l1(env, l1, l2)
    return {"l1": l1, "l2": l2, "l1_size": l1_size, "l2_size": l2_size,
            "carried": carried}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--vhost-user"] and len(sys.argv) == 3:
        # Read by devices/tests/vhost_user_qemu.rs: the initramfs it asked
        # for and the kernel to boot it with.
        env = load_env()
        build_vhost_user(env, sys.argv[2])
        print("initrd %s" % sys.argv[2])
        print("kernel %s" % vmlinux(env))
        sys.exit(0)
    if len(sys.argv) > 1:
        sys.exit("usage: images.py [--vhost-user OUT]")
    r = build_all(load_env())
    print("L2 %s: %.1f MB" % (r["l2"], r["l2_size"] / 1e6))
    print("L1 %s: %.1f MB (project binaries: %s)" % (
        r["l1"], r["l1_size"] / 1e6, " ".join(r["carried"]) or "none"))
