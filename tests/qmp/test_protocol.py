"""vmm's QMP server as the qemu.qmp package (QEMU's own Python client) sees it.

Needs a running server: QMP_SOCKET=/path/to/qmp.sock. The VM behind it must
emit STOP on `stop` and RESUME on `cont` (as QEMU does). Run with the venv
that scripts/setup.sh creates:

    QMP_SOCKET=/run/vm.qmp target/qmp-venv/bin/python tests/qmp/test_protocol.py
"""

import asyncio
import os
import sys
import unittest
import warnings

from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

SOCKET = os.environ.get("QMP_SOCKET")
TIMEOUT = 10


class QmpProtocol(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.qmp = QMPClient("vmm-test")
        await asyncio.wait_for(self.qmp.connect(SOCKET), TIMEOUT)

    async def asyncTearDown(self):
        await self.qmp.disconnect()

    async def execute(self, cmd, args=None):
        return await asyncio.wait_for(self.qmp.execute(cmd, args), TIMEOUT)

    async def test_greeting(self):
        greeting = self.qmp.greeting
        self.assertIsNotNone(greeting)
        version = greeting.QMP.version
        self.assertEqual(version["qemu"], {"major": 10, "minor": 0, "micro": 0})
        self.assertTrue(version["package"].startswith("vmm "), version)
        self.assertEqual(list(greeting.QMP.capabilities), ["oob"])

    async def test_query_version(self):
        ret = await self.execute("query-version")
        self.assertEqual(ret["qemu"]["major"], 10)
        self.assertEqual(ret["package"], self.qmp.greeting.QMP.version["package"])

    async def test_query_commands(self):
        names = {c["name"] for c in await self.execute("query-commands")}
        for name in ("qmp_capabilities", "query-version", "query-status",
                     "stop", "cont", "quit", "migrate", "migrate-incoming",
                     "migrate-set-capabilities", "balloon", "qom-set"):
            self.assertIn(name, names)

    async def test_unknown_command(self):
        with self.assertRaises(ExecuteError) as cm:
            await self.execute("no-such-command")
        self.assertEqual(cm.exception.error_class, "CommandNotFound")
        self.assertEqual(str(cm.exception),
                         "The command no-such-command has not been found")

    async def test_bad_arguments(self):
        cases = [
            ("balloon", {}, "Parameter 'value' is missing"),
            ("balloon", {"value": "1G"},
             "Invalid parameter type for 'value', expected: integer"),
            ("stop", {"force": True}, "Parameter 'force' is unexpected"),
            ("migrate-set-capabilities",
             {"capabilities": [{"capability": "x-ignore-shared"}]},
             "Parameter 'capabilities[0].state' is missing"),
        ]
        for cmd, args, desc in cases:
            with self.assertRaises(ExecuteError, msg=cmd) as cm:
                await self.execute(cmd, args)
            self.assertEqual(cm.exception.error_class, "GenericError")
            self.assertEqual(str(cm.exception), desc)
        # The session is still usable.
        await self.execute("query-status")

    async def test_events_stop_resume(self):
        await self.execute("stop")
        event = await asyncio.wait_for(self.qmp.events.get(), TIMEOUT)
        self.assertEqual(event["event"], "STOP")
        self.assertNotIn("data", event)
        self.assertIsInstance(event["timestamp"]["seconds"], int)
        self.assertIsInstance(event["timestamp"]["microseconds"], int)

        listener = EventListener("RESUME")
        with self.qmp.listen(listener):
            await self.execute("cont")
            event = await asyncio.wait_for(listener.get(), TIMEOUT)
        self.assertEqual(event["event"], "RESUME")

    async def test_disconnect_and_reconnect(self):
        await self.execute("query-status")
        await self.qmp.disconnect()
        for _ in range(3):
            await asyncio.wait_for(self.qmp.connect(SOCKET), TIMEOUT)
            self.assertEqual(self.qmp.greeting.QMP.version["qemu"]["major"], 10)
            await self.execute("query-status")
            await self.qmp.disconnect()
        # asyncTearDown disconnects again, which is harmless.


class QmpLegacySync(unittest.TestCase):
    """The synchronous wrapper that QEMU's iotests and many scripts use."""

    def test_legacy_client(self):
        # The shim leaves its private event loop open at exit; not ours to fix.
        warnings.simplefilter("ignore", ResourceWarning)
        mon = QEMUMonitorProtocol(SOCKET)
        try:
            greeting = mon.connect()
            self.assertEqual(greeting["QMP"]["version"]["qemu"]["major"], 10)
            self.assertIn("running", mon.cmd("query-status"))
            reply = mon.cmd_raw("no-such-command")
            self.assertEqual(reply["error"]["class"], "CommandNotFound")
        finally:
            mon.close()


if __name__ == "__main__":
    if not SOCKET:
        sys.exit("QMP_SOCKET must name the QMP socket of a running server")
    unittest.main(verbosity=2)
