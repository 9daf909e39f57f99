"""amqp-tools (the rabbitmq-c command-line clients) against the broker under test."""

import shutil
import subprocess
import unittest

from broker import CALL_TIMEOUT, BrokerTestCase, require, unique

TOOLS = ("amqp-declare-queue", "amqp-publish", "amqp-get", "amqp-consume", "amqp-delete-queue")


class AmqpToolsTest(BrokerTestCase):
    @classmethod
    def setUpClass(cls):
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        require(not missing, f"amqp-tools ({', '.join(missing)}; apt-get install amqp-tools)")
        super().setUpClass()

    def tool(self, name, *args, stdin=None, check=True):
        """Runs an amqp-tools command against the broker; returns its stdout."""
        result = subprocess.run(
            [name, "--url", self.url, *args],
            input=stdin,
            capture_output=True,
            timeout=CALL_TIMEOUT,
        )
        if check and result.returncode != 0:
            self.fail(f"{name} {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
        return result

    def test_declare_publish_get_consume_delete_round_trip(self):
        queue = unique("tools")
        declared = self.tool("amqp-declare-queue", "-q", queue).stdout.decode().strip()
        self.assertEqual(declared, queue)
        self.addCleanup(self.tool, "amqp-delete-queue", "-q", queue, check=False)

        for i in range(4):
            self.tool("amqp-publish", "-r", queue, "-C", "text/plain", "-b", f"message {i}\n")
        # Several messages from stdin, one per line.
        self.tool("amqp-publish", "-r", queue, "-l", stdin=b"line a\nline b\n")

        self.assertEqual(self.tool("amqp-get", "-q", queue).stdout, b"message 0\n")

        # amqp-consume runs `cat` once per message (body on stdin) and acks it.
        consumed = self.tool("amqp-consume", "-q", queue, "-c", "3", "-p", "1", "cat").stdout
        self.assertEqual(consumed, b"message 1\nmessage 2\nmessage 3\n")

        self.assertEqual(self.tool("amqp-get", "-q", queue).stdout, b"line a\n")
        self.assertEqual(self.tool("amqp-get", "-q", queue).stdout, b"line b\n")
        empty = self.tool("amqp-get", "-q", queue, check=False)
        self.assertNotEqual(empty.returncode, 0, "amqp-get on an empty queue should fail")

        # Deleting the queue drops what it held: declared again, it is empty.
        self.tool("amqp-publish", "-r", queue, "-b", "left behind")
        self.tool("amqp-delete-queue", "-q", queue)
        self.tool("amqp-declare-queue", "-q", queue)
        self.assertNotEqual(self.tool("amqp-get", "-q", queue, check=False).returncode, 0)


if __name__ == "__main__":
    unittest.main()
