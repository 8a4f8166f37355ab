"""A real `vmm run` driven by the qemu.qmp package as a management tool
drives QEMU: pause and resume with events, a migration to a file with
MIGRATION events, the queries, refusals with QEMU's error classes, quit.

Needs QMP_SOCKET (the VM's socket), VM_SERIAL (its COM1 log; the guest
prints a counter line every few tens of milliseconds) and VM_DIR (a
scratch directory). vmm/tests/qmp.rs starts the VM and runs this file:

    QMP_SOCKET=... VM_SERIAL=... VM_DIR=... target/qmp-venv/bin/python tests/qmp/test_vm.py
"""

import asyncio
import os
import sys
import unittest

from qemu.qmp import EventListener, ExecuteError, QMPClient

SOCKET = os.environ.get("QMP_SOCKET")
SERIAL = os.environ.get("VM_SERIAL")
DIR = os.environ.get("VM_DIR")
TIMEOUT = 20


def serial_size():
    try:
        return os.path.getsize(SERIAL)
    except OSError:
        return 0


class VmOverQmp(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.qmp = QMPClient("vmm-vm-test")
        await asyncio.wait_for(self.qmp.connect(SOCKET), TIMEOUT)

    async def asyncTearDown(self):
        try:
            await self.qmp.disconnect()
        except EOFError:
            # After quit the VMM closes the socket, as QEMU does; qemu.qmp
            # reports the closed stream when it disconnects.
            if not getattr(self, "quit_sent", False):
                raise

    async def execute(self, cmd, args=None):
        return await asyncio.wait_for(self.qmp.execute(cmd, args), TIMEOUT)

    async def status(self):
        return (await self.execute("query-status"))["status"]

    async def test_1_queries(self):
        self.assertEqual(await self.status(), "running")
        self.assertEqual(await self.execute("query-kvm"), {"enabled": True, "present": True})
        cpus = await self.execute("query-cpus-fast")
        self.assertEqual([c["cpu-index"] for c in cpus], [0, 1])
        for c in cpus:
            # The thread ids are the vCPU threads of the VMM process.
            with open("/proc/%d/comm" % c["thread-id"]) as f:
                self.assertEqual(f.read().strip(), "vcpu%d" % c["cpu-index"])
        self.assertEqual(await self.execute("query-memory-devices"), [])
        with self.assertRaises(ExecuteError) as cm:
            await self.execute("query-balloon")
        self.assertEqual(cm.exception.error_class, "DeviceNotActive")
        with self.assertRaises(ExecuteError) as cm:
            await self.execute("qom-get", {"path": "/machine/peripheral/nope",
                                           "property": "requested-size"})
        self.assertEqual(cm.exception.error_class, "DeviceNotFound")
        with self.assertRaises(ExecuteError) as cm:
            await self.execute("migrate", {"uri": "tcp:127.0.0.1:4444"})
        self.assertEqual(cm.exception.error_class, "GenericError")
        self.assertIn("file:", str(cm.exception))
        self.assertEqual(await self.status(), "running")

    async def test_2_stop_and_cont(self):
        listener = EventListener(("STOP", "RESUME"))
        with self.qmp.listen(listener):
            await self.execute("stop")
            self.assertEqual((await asyncio.wait_for(listener.get(), TIMEOUT))["event"], "STOP")
            self.assertEqual(await self.status(), "paused")
            size = serial_size()
            await asyncio.sleep(0.3)
            self.assertEqual(serial_size(), size, "the guest ran while paused")
            await self.execute("cont")
            self.assertEqual((await asyncio.wait_for(listener.get(), TIMEOUT))["event"], "RESUME")
        self.assertEqual(await self.status(), "running")
        for _ in range(100):
            if serial_size() > size:
                break
            await asyncio.sleep(0.05)
        self.assertGreater(serial_size(), size, "no output after cont")

    async def test_3_migrate_to_file(self):
        await self.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": "events", "state": True}]})
        path = os.path.join(DIR, "snap")
        statuses = []
        listener = EventListener("MIGRATION")
        with self.qmp.listen(listener):
            await self.execute("migrate", {"uri": "file:" + path})
            while not statuses or statuses[-1] not in ("completed", "failed"):
                ev = await asyncio.wait_for(listener.get(), TIMEOUT)
                statuses.append(ev["data"]["status"])
        self.assertEqual(statuses, ["setup", "active", "completed"])
        info = await self.execute("query-migrate")
        self.assertEqual(info["status"], "completed")
        self.assertIsInstance(info["total-time"], int)
        self.assertEqual(info["ram"]["transferred"], os.path.getsize(path))
        self.assertEqual(await self.status(), "postmigrate")
        await self.execute("cont")
        self.assertEqual(await self.status(), "running")

    async def test_4_powerdown_then_quit(self):
        listener = EventListener(("POWERDOWN", "SHUTDOWN"))
        with self.qmp.listen(listener):
            await self.execute("system_powerdown")
            self.assertEqual((await asyncio.wait_for(listener.get(), TIMEOUT))["event"], "POWERDOWN")
            # The tiny guest has no ACPI driver: it runs on.
            self.assertEqual(await self.status(), "running")
            self.quit_sent = True
            await self.execute("quit")
            ev = await asyncio.wait_for(listener.get(), TIMEOUT)
        self.assertEqual(ev["event"], "SHUTDOWN")
        self.assertEqual(ev["data"], {"guest": False, "reason": "host-qmp-quit"})


if __name__ == "__main__":
    if not (SOCKET and SERIAL and DIR):
        sys.exit("QMP_SOCKET, VM_SERIAL and VM_DIR must be set")
    unittest.main(verbosity=2)
