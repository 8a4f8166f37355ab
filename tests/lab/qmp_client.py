"""The "qmp" scenario's driver, run in L1: QEMU's own Python client
(the qemu.qmp package, carried into L1 with its interpreter) drives a
running vmm whose Linux guest reports its memory on COM1.

    qmp_client.py SOCKET SERIAL STATEFILE

The guest (scenarios/qmp.l2.sh) prints "LAB-L2-QMP-MEM total=KB avail=KB"
every 0.3 s and shuts down when its power button is pressed. Steps: stop
and cont (STOP, RESUME, the guest silent while paused); balloon to 64 MiB
below RAM (MemAvailable drops, query-balloon agrees, BALLOON_CHANGE);
virtio-mem requested-size up by 128 MiB with qom-set (MemTotal rises,
qom-get and query-memory-devices agree, MEMORY_DEVICE_SIZE_CHANGE);
migrate to a file (MIGRATION events to completed) and cont;
system_powerdown (POWERDOWN, then SHUTDOWN with reason guest-shutdown).
Prints one "LAB-QMP <step> ..." line per step; exits 1 at the first
failure with "LAB-QMP-FAIL <why>".
"""

import asyncio
import os
import re
import sys
import time

from qemu.qmp import EventListener, QMPClient

RAM_KIB = 384 * 1024
BALLOON_KIB = 64 * 1024
VMEM_KIB = 128 * 1024


class Fail(Exception):
    pass


def guest_mem(serial):
    """The last (total, avail) the guest printed, in kB."""
    try:
        with open(serial, errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    m = re.findall(r"LAB-L2-QMP-MEM total=(\d+) avail=(\d+)", text)
    return (int(m[-1][0]), int(m[-1][1])) if m else None


_seen = []


def settled(serial):
    """MemTotal once it read the same in the last 4 reports, else None."""
    m = guest_mem(serial)
    if m:
        _seen.append(m[0])
    return _seen[-1] if len(_seen) >= 4 and len(set(_seen[-4:])) == 1 else None


async def until(what, check, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = check()
        if v:
            return v
        await asyncio.sleep(0.2)
    raise Fail("timed out after %d s waiting for %s" % (timeout, what))


async def event(listener, name, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ev = await asyncio.wait_for(listener.get(), end - time.monotonic())
        if ev["event"] == name:
            return ev
    raise Fail("no %s event in %d s" % (name, timeout))


async def main(sock, serial, state):
    qmp = QMPClient("lab-qmp")
    await until("the QMP socket", lambda: os.path.exists(sock), 120)
    await qmp.connect(sock)
    ex = qmp.execute
    listener = EventListener()
    qmp.register_listener(listener)
    try:
        v = qmp.greeting.QMP.version
        print("LAB-QMP greeting qemu=%s package=%s" % (v["qemu"], v["package"]), flush=True)
        await until("the guest's memory report", lambda: guest_mem(serial), 180)

        await ex("stop")
        await event(listener, "STOP")
        st = await ex("query-status")
        if st["status"] != "paused":
            raise Fail("query-status after stop: %s" % st)
        size = os.path.getsize(serial)
        await asyncio.sleep(1)
        if os.path.getsize(serial) != size:
            raise Fail("the guest printed while paused")
        await ex("cont")
        await event(listener, "RESUME")
        await until("output after cont", lambda: os.path.getsize(serial) > size, 30)
        print("LAB-QMP stop-cont paused=silent for 1 s, resumed: %s" % (await ex("query-status"))["status"], flush=True)

        total0, avail0 = guest_mem(serial)
        target = (RAM_KIB - BALLOON_KIB) * 1024
        await ex("balloon", {"value": target})
        ev = await event(listener, "BALLOON_CHANGE", 120)
        got = None
        for _ in range(600):
            got = (await ex("query-balloon"))["actual"]
            if got == target:
                break
            await asyncio.sleep(0.2)
        if got != target:
            raise Fail("query-balloon says %d, target %d" % (got, target))
        await until("MemAvailable to drop", lambda: (guest_mem(serial) or (0, avail0))[1] <= avail0 - BALLOON_KIB * 85 // 100, 120)
        _, avail1 = guest_mem(serial)
        print("LAB-QMP balloon target=%d query-balloon=%d BALLOON_CHANGE actual=%d MemAvailable %d -> %d kB (dropped %d kB)"
              % (target, got, ev["data"]["actual"], avail0, avail1, avail0 - avail1), flush=True)

        # The balloon driver takes its pages out of MemTotal as it inflates
        # (without deflate-on-oom), which may still go on after
        # MemAvailable fell: the baseline for virtio-mem is a MemTotal
        # that holds still for a second.
        total1 = await until("MemTotal to settle", lambda: settled(serial), 60)
        path = "/machine/peripheral/mem0"
        req0 = await ex("qom-get", {"path": path, "property": "requested-size"})
        await ex("qom-set", {"path": path, "property": "requested-size", "value": req0 + VMEM_KIB * 1024})
        ev = await event(listener, "MEMORY_DEVICE_SIZE_CHANGE", 120)
        await until("MemTotal to rise", lambda: (guest_mem(serial) or (0, 0))[0] >= total1 + VMEM_KIB * 95 // 100, 180)
        total2, _ = guest_mem(serial)
        devs = await ex("query-memory-devices")
        plugged = [d["data"]["size"] for d in devs if d["data"]["id"] == "mem0"]
        if plugged != [req0 + VMEM_KIB * 1024]:
            raise Fail("query-memory-devices: %s" % devs)
        print("LAB-QMP virtio-mem requested-size %d -> %d, MEMORY_DEVICE_SIZE_CHANGE size=%d, plugged=%d, MemTotal %d -> %d kB"
              % (req0, req0 + VMEM_KIB * 1024, ev["data"]["size"], plugged[0], total1, total2), flush=True)

        await ex("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
        await ex("migrate", {"uri": "file:" + state})
        statuses = []
        while not statuses or statuses[-1] not in ("completed", "failed"):
            statuses.append((await event(listener, "MIGRATION", 300))["data"]["status"])
        info = await ex("query-migrate")
        if statuses[-1] != "completed" or info["ram"]["transferred"] != os.path.getsize(state):
            raise Fail("migration: events %s, query-migrate %s" % (statuses, info))
        st = (await ex("query-status"))["status"]
        await ex("cont")
        print("LAB-QMP migrate file: events %s, %d bytes, then %s and cont" % (
            ",".join(statuses), info["ram"]["transferred"], st), flush=True)

        await ex("system_powerdown")
        await event(listener, "POWERDOWN")
        ev = await event(listener, "SHUTDOWN", 120)
        if ev["data"] != {"guest": True, "reason": "guest-shutdown"}:
            raise Fail("SHUTDOWN: %s" % ev)
        print("LAB-QMP powerdown SHUTDOWN %s" % ev["data"], flush=True)
    finally:
        try:
            await qmp.disconnect()
        except EOFError:
            pass  # vmm closes the socket once the guest is gone


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except Exception as e:  # every failure is one line for the scenario
        print("LAB-QMP-FAIL %s: %s" % (type(e).__name__, e), flush=True)
        sys.exit(1)
