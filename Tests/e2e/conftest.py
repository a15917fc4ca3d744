"""End-to-end fixtures: the real `streamotter` binary against independent peers.

The gateway under test is started as a subprocess (`streamotter serve`, embedded Kafka);
the peers are Python `websockets`, raw sockets, `kcat` and `confluent-kafka`. Nothing in
this suite talks to StreamOtter through StreamOtter's own client code.

Binary lookup (docs in /work/notes/cli-spec.md): $STREAMOTTER_BIN, else
<repo>/build/bin/streamotter, else <repo>/.build/release/streamotter-cli. Without a binary
the suite is skipped, unless CI or STREAMOTTER_E2E_REQUIRE=1 is set, where it fails.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[2]

STARTUP_TIMEOUT = float(os.environ.get("STREAMOTTER_E2E_STARTUP_TIMEOUT", "20"))
STOP_TIMEOUT = 20.0

RE_BOOTSTRAP = re.compile(r"^kafka: (?:embedded )?bootstrap\.servers=(\S+)\s*$")
RE_LISTENING = re.compile(r"^listening: ws://([^/\s]+):(\d+)/(?: \(\d+ engines\))?\s*$")


# --------------------------------------------------------------------------- binary


def find_binary() -> str | None:
    env = os.environ.get("STREAMOTTER_BIN")
    if env:
        return env
    for p in (REPO / "build/bin/streamotter", REPO / ".build/release/streamotter-cli"):
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def _require(what: str, path: str | None) -> str:
    if path:
        return path
    msg = f"{what} not found"
    if os.environ.get("CI") or os.environ.get("STREAMOTTER_E2E_REQUIRE") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def streamotter_bin() -> str:
    return _require(
        "streamotter binary (set STREAMOTTER_BIN or run `make build`)", find_binary()
    )


@pytest.fixture(scope="session")
def gateway_exec(streamotter_bin, tmp_path_factory) -> str:
    """The binary under a private name (a symlink: same bytes, RUNPATH still resolved
    from the real file). Other work on a shared machine that stops stray gateways by name
    (`pkill streamotter`) then leaves this suite's processes alone: such SIGTERMs
    arriving mid-test were seen while developing the suite."""
    link = tmp_path_factory.mktemp("bin") / "sot-e2e-gw"
    link.symlink_to(os.path.realpath(streamotter_bin))
    return str(link)


@pytest.fixture(scope="session")
def kcat_bin() -> str:
    return _require("kcat", shutil.which("kcat") or shutil.which("kafkacat"))


# --------------------------------------------------------------------------- processes


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A subprocess whose stdout and stderr are drained by threads (no pipe stalls)."""

    def __init__(self, args: list[str], name: str, stdin=subprocess.DEVNULL):
        self.args = args
        self.name = name
        self.proc = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(REPO),
        )
        self.pid = self.proc.pid
        self.stdout_lines: list[str] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=400)
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _drain(self, stream, is_stdout: bool):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                if is_stdout:
                    self.stdout_lines.append(line)
                else:
                    self.stderr_tail.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, regex: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stdout_lines:
                    m = regex.match(line)
                    if m:
                        return m
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"{self.name} exited with {self.proc.returncode} before printing "
                        f"{regex.pattern!r}\n{self.diagnostics()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.name} did not print {regex.pattern!r} within {timeout}s\n"
                        f"{self.diagnostics()}"
                    )
                self._cond.wait(min(left, 0.2))

    def diagnostics(self) -> str:
        with self._cond:
            out = "\n".join(self.stdout_lines[-50:])
            err = "\n".join(list(self.stderr_tail)[-80:])
        return (
            f"--- {self.name} {' '.join(self.args)}\n--- stdout (last 50 lines):\n{out}\n"
            f"--- stderr (last 80 lines):\n{err}\n---"
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait; on a hang, SIGKILL and fail. Returns the exit code."""
        self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if rc is None:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s of SIGTERM (killed)\n"
                f"{self.diagnostics()}"
            )
        for t in self._threads:
            t.join(2)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


class Gateway:
    """A running `streamotter serve` (or `dev-kafka`, where url/host/port are None)."""

    def __init__(self, proc: Proc, topics: dict[str, str], partitions: dict[str, int]):
        self.proc = proc
        self.topics = topics  # logical name -> real (unique) topic name
        self.partitions = partitions  # real topic name -> partition count
        self.bootstrap: str = ""
        self.host: str | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.stopped_rc: int | None = None

    def topic(self, logical: str) -> str:
        return self.topics[logical]

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.stopped_rc is None:
            self.stopped_rc = self.proc.stop(timeout)
        return self.stopped_rc

    def diagnostics(self) -> str:
        return self.proc.diagnostics()


DEFAULT_TOPICS = {"t1": 1, "t3": 3}


class GatewayFactory:
    def __init__(self, binary: str):
        self.binary = binary
        self.started: list[Gateway] = []

    def start(
        self,
        topics: dict[str, int] | None = None,
        args: list[str] | tuple = (),
        command: str = "serve",
        listen: str = "127.0.0.1:0",
        unique_topics: bool = True,
    ) -> Gateway:
        topics = dict(DEFAULT_TOPICS if topics is None else topics)
        names = {k: (unique(k) if unique_topics else k) for k in topics}
        partitions = {names[k]: p for k, p in topics.items()}
        argv = [self.binary, command]
        if command == "serve":
            argv += ["--listen", listen]
        for real, p in partitions.items():
            argv += ["--topic", f"{real}:{p}"]
        argv += list(args)
        proc = Proc(argv, f"streamotter {command}")
        gw = Gateway(proc, names, partitions)
        self.started.append(gw)
        try:
            m = proc.wait_line(RE_BOOTSTRAP, STARTUP_TIMEOUT)
            gw.bootstrap = m.group(1)
            if command == "serve":
                m = proc.wait_line(RE_LISTENING, STARTUP_TIMEOUT)
                gw.host, gw.port = m.group(1), int(m.group(2))
                assert gw.port != 0, f"listening line shows port 0: {m.group(0)}"
                gw.url = f"ws://{gw.host}:{gw.port}/"
        except BaseException:
            proc.kill()
            gw.stopped_rc = proc.proc.returncode
            raise
        return gw

    def finish(self):
        problems = []
        for gw in reversed(self.started):  # gateways before the dev-kafka they may use
            if gw.stopped_rc is not None:
                continue
            if not gw.proc.alive():
                rc = gw.proc.proc.returncode
                gw.stopped_rc = rc
                problems.append(
                    f"{gw.proc.name} died during the test with exit code {rc}\n{gw.diagnostics()}"
                )
                continue
            try:
                rc = gw.stop()
            except AssertionError as e:
                problems.append(str(e))
                continue
            if rc != 0:
                problems.append(
                    f"{gw.proc.name} exited with {rc} after SIGTERM (want 0)\n{gw.diagnostics()}"
                )
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def gateway_factory(gateway_exec):
    f = GatewayFactory(gateway_exec)
    try:
        yield f
    finally:
        f.finish()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "gateway(topics=None, args=()): options for the `gateway` fixture; topics maps a "
        "logical name to a partition count, each becomes a unique topic",
    )


@pytest.fixture
def gateway(request, gateway_factory) -> Gateway:
    """`streamotter serve --listen 127.0.0.1:0 --topic ...` with embedded Kafka.

    Stopped with SIGTERM at teardown; teardown fails unless the exit code is 0.
    """
    m = request.node.get_closest_marker("gateway")
    kw = dict(m.kwargs) if m else {}
    return gateway_factory.start(topics=kw.get("topics"), args=kw.get("args", ()))


# --------------------------------------------------------------------------- failure dumps


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("call", "setup"):
        f = item.funcargs.get("gateway_factory") if hasattr(item, "funcargs") else None
        if f is not None:
            for gw in f.started:
                rep.sections.append((f"gateway pid {gw.proc.pid}", gw.diagnostics()))


# --------------------------------------------------------------------------- asyncio


def run(coro, timeout: float = 120):
    """Run a coroutine with an overall deadline (no pytest-asyncio needed)."""

    async def guarded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())
