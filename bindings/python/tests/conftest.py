"""Fixtures for the Python binding's tests.

The library comes from $STREAMOTTER_LIBRARY (the Makefile's test-python target points it
at build/lib/libstreamotter.so.0), else the source tree's build/lib. The CLI used by the
reconnect test comes from $STREAMOTTER_BIN, else <repo>/build/bin/streamotter.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
HEADER = REPO / "include" / "streamotter.h"

if "STREAMOTTER_LIBRARY" not in os.environ and (REPO / "build/lib/libstreamotter.so.0").is_file():
    os.environ["STREAMOTTER_LIBRARY"] = str(REPO / "build/lib/libstreamotter.so.0")

try:
    import streamotter as so  # noqa: E402  (the installed package: pip install bindings/python)
except ModuleNotFoundError as e:
    if e.name != "streamotter":
        raise
    import sys

    sys.path.insert(0, str(REPO / "bindings" / "python"))  # not installed: the source tree
    import streamotter as so  # noqa: E402

# Topics of the shared gateway's embedded Kafka.
TOPICS = {"rt": 3, "rta": 3, "misc": 1, "cons": 3, "grp": 3, "exc": 1, "gc": 1, "ser": 1}


def wait_until(pred, timeout: float = 10.0, interval: float = 0.005, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def unique(prefix: str = "x") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Counter:
    """A thread-safe counter with a wait."""

    def __init__(self):
        self.n = 0
        self.items: list = []
        self.cv = threading.Condition()

    def add(self, item=None):
        with self.cv:
            self.n += 1
            if item is not None:
                self.items.append(item)
            self.cv.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> int:
        with self.cv:
            self.cv.wait_for(lambda: self.n >= n, timeout)
            return self.n


@pytest.fixture(scope="session")
def gateway():
    """A gateway engine (thread mode) on 127.0.0.1:0 with an embedded Kafka."""
    spec = ",".join(f"{t}:{p}" for t, p in TOPICS.items())
    eng = so.Engine({"mode": "gateway", "listen": "127.0.0.1:0", "embedded.brokers": 1,
                     "embedded.topics": spec, "shutdown.timeout_ms": 3000})
    yield eng
    eng.close()


@pytest.fixture
def gw_url(gateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}/"


@pytest.fixture
def client_engine():
    """A client-mode engine (thread mode) closed after the test."""
    eng = so.Engine({"mode": "client"})
    yield eng
    eng.close()


# --------------------------------------------------------------------------- subprocesses

import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402


def streamotter_bin() -> str:
    b = os.environ.get("STREAMOTTER_BIN") or str(REPO / "build/bin/streamotter")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.skip(f"streamotter CLI not found ({b}); run make build or set STREAMOTTER_BIN")
    return b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str], name: str):
        self.name = name
        self.lines: list[str] = []
        self.cv = threading.Condition()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()

    def wait_line(self, pattern: str, timeout: float = 20.0) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self.proc.poll() is not None:  # exited: give the reader a moment
                    deadline = min(deadline, time.monotonic() + 0.5)
                if left <= 0:
                    raise AssertionError(f"{self.name}: no line matching {pattern!r}; output:\n"
                                         + "\n".join(self.lines[-30:]))
                self.cv.wait(min(left, 0.1))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


def start_dev_kafka(topics: list[str]) -> tuple[Proc, str]:
    args = [streamotter_bin(), "dev-kafka", "--brokers", "1"]
    for t in topics:
        args += ["--topic", t]
    p = Proc(args, "dev-kafka")
    m = p.wait_line(r"bootstrap\.servers=(\S+)")
    return p, m.group(1)


def start_gateway(port: int, brokers: str | None = None, extra: list[str] = ()) -> Proc:
    args = [streamotter_bin(), "serve", "--listen", f"127.0.0.1:{port}"]
    if brokers:
        args += ["--brokers", brokers]
    args += list(extra)
    p = Proc(args, "gateway")
    p.wait_line(r"^listening: ws://")
    return p


@pytest.fixture(scope="module")
def gateway_process():
    """`streamotter serve` as a subprocess with its own embedded Kafka (so that memory
    measured in this process is the binding's and the client engine's only)."""
    port = free_port()
    p = start_gateway(port, extra=["--topic", "sp:1", "--set", "embedded.brokers=1"])
    yield f"ws://127.0.0.1:{port}/"
    p.stop()
