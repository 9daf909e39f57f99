"""The broker under test, and helpers shared by the interop tests.

By default every test class starts its own `dispatch-broker --listen 127.0.0.1:0` in a
temp dir and reads back its address from the ready line. With INTEROP_BROKER_URL set
(e.g. amqp://guest:guest@127.0.0.1:5672) the tests run against that broker instead:
that is how the suite is checked against RabbitMQ, the reference.

Environment:
  INTEROP_BROKER_URL   use this broker instead of starting dispatch-broker
  DISPATCH_BROKER_BIN  the broker binary (default: target/debug/dispatch-broker)
  CI=true              a missing tool fails the test instead of skipping it
"""

import faulthandler
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STARTUP_TIMEOUT = 20  # seconds for the broker to print its ready line
STOP_TIMEOUT = 10  # seconds for the broker to exit after SIGTERM
CALL_TIMEOUT = 10  # seconds for one client call or command
TEST_TIMEOUT = 60  # seconds for a whole test before the run is aborted
READY_PREFIX = "listening on "


def in_ci():
    return os.environ.get("CI") == "true"


def require(available, what):
    """Skip (with a visible reason) when `what` is missing; fail under CI=true."""
    if available:
        return
    message = f"{what} is not available"
    if in_ci():
        raise AssertionError(message + " (a failure under CI=true)")
    raise unittest.SkipTest(message)


def unique(prefix):
    return f"interop.{prefix}.{uuid.uuid4().hex[:12]}"


class DispatchBroker:
    """A dispatch-broker process on 127.0.0.1:0 with its own data dir."""

    def __init__(self, *extra_args):
        binary = os.environ.get("DISPATCH_BROKER_BIN") or os.path.join(
            ROOT, "target", "debug", "dispatch-broker"
        )
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} not found: run `cargo build` first")
        self.dir = tempfile.mkdtemp(prefix="dispatch-interop-")
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w+b")
        args = [binary, "--listen", "127.0.0.1:0", "--data-dir", os.path.join(self.dir, "data")]
        self.process = subprocess.Popen(
            args + list(extra_args), stdout=subprocess.PIPE, stderr=self.stderr
        )
        try:
            self.port = self._read_ready_line()
        except Exception:
            self.stop()
            raise
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}"

    def _read_ready_line(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(
                        f"dispatch-broker printed no ready line within {STARTUP_TIMEOUT}s"
                        + self.stderr_tail()
                    )
                chunk = os.read(self.process.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(
                        f"dispatch-broker exited (code {self.process.wait(STOP_TIMEOUT)}) "
                        f"before its ready line; stdout so far: {line!r}" + self.stderr_tail()
                    )
                line += chunk
        text = line.decode().strip()
        host_port = text[len(READY_PREFIX):] if text.startswith(READY_PREFIX) else ""
        host, _, port = host_port.rpartition(":")
        if host != "127.0.0.1" or not port.isdigit():
            raise RuntimeError(f"unexpected ready line {text!r}, want 'listening on 127.0.0.1:PORT'")
        return int(port)

    def stderr_tail(self, lines=20):
        self.stderr.flush()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace").splitlines()[-lines:]
        return "\n--- dispatch-broker stderr ---\n" + "\n".join(tail) if tail else ""

    def stop(self):
        """SIGTERM, then wait; returns the exit code (None if it had to be killed)."""
        code = self.process.poll()
        if code is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                code = None
        self.process.stdout.close()
        self.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


class BrokerTestCase(unittest.TestCase):
    """Gives each test class a broker URL (`cls.url`) and each test a time limit."""

    broker = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        external = os.environ.get("INTEROP_BROKER_URL")
        if external:
            cls.url = external.rstrip("/")
        else:
            cls.broker = DispatchBroker()
            cls.url = cls.broker.url
        parts = urllib.parse.urlsplit(cls.url)
        cls.host, cls.port = parts.hostname, parts.port or 5672

    @classmethod
    def tearDownClass(cls):
        if cls.broker is not None:
            cls.broker.stop()
            cls.broker = None
        super().tearDownClass()

    def setUp(self):
        # A hung client call must not hang the run: dump every stack and exit.
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
        self.addCleanup(faulthandler.cancel_dump_traceback_later)

    def url_with(self, user=None, password=None):
        parts = urllib.parse.urlsplit(self.url)
        user = user if user is not None else parts.username or "guest"
        password = password if password is not None else parts.password or "guest"
        netloc = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@{self.host}:{self.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
