"""Support for the "nothing lost" suites (test_resume, test_faults, test_flow_control).

- `dev_kafka` fixture: `streamotter dev-kafka` as its own process, with its fault-injection
  control channel on stdin (`broker-down 1`, `rtt -1 50`, `leader T 0 2`, ...).
- `gateways` fixture: `streamotter serve --brokers <dev-kafka>` processes, several of which
  may share one Kafka (resume on another gateway, kill -9).
- Kafka-side checks with confluent-kafka (headers included) and a raw, cheap WebSocket
  reader for high message rates.

Import the fixtures into a test module with `from nl_support import *`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import REPO, RE_BOOTSTRAP, RE_LISTENING, STARTUP_TIMEOUT, GatewayFactory, Proc, unique

__all__ = [
    "DevKafka", "dev_kafka", "gateways", "report", "kafka_records", "rss_kb", "metrics",
    "Stopwatch", "produce_paced", "unique",
]


def report(capsys, text: str) -> None:
    """Print a figure line to the terminal even under pytest's capture."""
    with capsys.disabled():
        print(f"\n[nothing-lost] {text}", flush=True)


class ControlledProc(Proc):
    """A Proc whose stdin is a pipe (dev-kafka reads fault-injection commands there)."""

    def __init__(self, args: list[str], name: str):
        super().__init__(args, name, stdin=subprocess.PIPE)


class DevKafka:
    """`streamotter dev-kafka` with its control channel."""

    def __init__(self, binary: str, brokers: int = 3, topics: dict[str, int] | None = None):
        argv = [binary, "dev-kafka", "--brokers", str(brokers)]
        for name, n in (topics or {}).items():
            argv += ["--topic", f"{name}:{n}"]
        self.proc = ControlledProc(argv, "streamotter dev-kafka")
        self.bootstrap = self.proc.wait_line(RE_BOOTSTRAP, STARTUP_TIMEOUT).group(1)
        self._lock = threading.Lock()
        self._seen = 0

    def cmd(self, line: str, timeout: float = 10) -> str:
        """Send one control command; return its reply line (`ok ...`); fail on `error`."""
        with self._lock:
            with self.proc._cond:
                start = len(self.proc.stdout_lines)
            self.proc.proc.stdin.write((line + "\n").encode())
            self.proc.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            with self.proc._cond:
                while True:
                    for ln in self.proc.stdout_lines[start:]:
                        if ln.startswith("ok ") or ln.startswith("error "):
                            assert ln.startswith("ok "), f"dev-kafka: {line!r} -> {ln}"
                            return ln
                    left = deadline - time.monotonic()
                    assert left > 0, f"dev-kafka did not answer {line!r}\n{self.proc.diagnostics()}"
                    self.proc._cond.wait(min(left, 0.2))

    def topic(self, name: str, partitions: int) -> str:
        self.cmd(f"topic {name} {partitions}")
        return name

    def stop(self):
        try:
            self.proc.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.stop()
        assert rc == 0, f"dev-kafka exited with {rc}\n{self.proc.diagnostics()}"


@pytest.fixture
def dev_kafka(streamotter_bin):
    dk = DevKafka(streamotter_bin)
    try:
        yield dk
    finally:
        dk.stop()


class Gateways:
    """Gateways on one shared dev-kafka: `start(*args)` returns a conftest Gateway."""

    def __init__(self, binary: str, dev: DevKafka):
        self.factory = GatewayFactory(binary)
        self.dev = dev

    def start(self, *args: str):
        return self.factory.start(topics={}, args=["--brokers", self.dev.bootstrap, *args])


@pytest.fixture
def gateways(streamotter_bin, dev_kafka):
    g = Gateways(streamotter_bin, dev_kafka)
    try:
        yield g
    finally:
        g.factory.finish()


# --------------------------------------------------------------------------- Kafka side


def kafka_records(bootstrap: str, topic: str, expect: int, timeout: float = 60):
    """Every record of `topic` read with confluent-kafka: list of (partition, offset, key,
    value, headers dict). Reads until `expect` records or the end of every partition after
    the deadline."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("nl-check"),
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out, eof = [], set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                if len(out) >= expect and len(eof) == len(parts):
                    break
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    eof.add(m.partition())
                    if len(out) >= expect and len(eof) == len(parts):
                        break
                    continue
                raise AssertionError(f"consumer error: {m.error()}")
            eof.discard(m.partition())
            hdrs = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
            out.append((m.partition(), m.offset(), m.key(), m.value(), hdrs))
        return out
    finally:
        c.close()


def check_acked_in_kafka(acks: dict, recs: list) -> tuple[list, int]:
    """Checks acknowledged publishes against what Kafka holds. `acks` maps an id to its
    `ack` frame, `recs` is kafka_records() output. Every acked id must be in Kafka at the
    partition and offset its ack names. Returns (problems, mock_copies): the ids breaking
    that, and the number of extra copies that the mock cluster alone writes.

    librdkafka's mock cluster checks producer sequence numbers for transactional
    producers only: when a broker goes away after appending a batch but before its
    response went out, the idempotent producer's retry (same producer id and sequence)
    is appended again, and the ack names the retry's offsets. Apache Kafka answers that
    retry with the first append's offsets instead. Such a copy is told apart exactly: same
    partition, lower offset, same key and value; any other copy is a problem."""
    by_id = collections.defaultdict(list)
    for p, o, k, v, h in recs:
        by_id[h.get("streamotter-id")].append((p, o, k, v))
    problems, mock_copies = [], 0
    for i, a in acks.items():
        copies = by_id.get(i, [])
        acked = [c for c in copies if (c[0], c[1]) == (a["partition"], a["offset"])]
        if len(acked) != 1:
            problems.append((i, (a["partition"], a["offset"]), [c[:2] for c in copies]))
            continue
        _, o, k, v = acked[0]
        extra = [c for c in copies if c is not acked[0]]
        if all(c[0] == a["partition"] and c[1] < o and (c[2], c[3]) == (k, v) for c in extra):
            mock_copies += len(extra)
        else:
            problems.append((i, (a["partition"], a["offset"]), [c[:2] for c in copies]))
    return problems, mock_copies


def produce_paced(bootstrap: str, topic: str, n: int, rate: float, value=None, key=None,
                  extra_conf: dict | None = None) -> float:
    """Produce `n` records at about `rate` per second with confluent-kafka (a peer, not our
    code). value(i) / key(i) build each record; the default value carries the send time.
    Returns the seconds it took."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all",
                  "enable.idempotence": True, **(extra_conf or {})})
    failures = []

    def dr(err, msg):
        if err is not None:
            failures.append(err)

    t0 = time.monotonic()
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0.002:
            p.poll(0)
            time.sleep(delay)
        v = value(i) if value else json.dumps({"i": i, "t": time.time()}, separators=(",", ":"))
        k = key(i) if key else f"k{i}"
        while True:
            try:
                p.produce(topic, value=v, key=k, on_delivery=dr)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0, "producer could not flush"
    assert not failures, failures[:5]
    return time.monotonic() - t0


# --------------------------------------------------------------------------- gateway side


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metrics(gw) -> dict[str, float]:
    from e2e_helpers import http_exchange

    status, _, body, _ = http_exchange(gw.host, gw.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    out = {}
    for ln in body.decode().splitlines():
        if ln and not ln.startswith("#"):
            k, _, v = ln.rpartition(" ")
            out[k.removeprefix("streamotter_")] = float(v)
    return out


class Stopwatch:
    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


# --------------------------------------------------------------------------- raw readers

__all__ += ["RawReader", "stalled_subscriber"]

_RE_POS = re.compile(rb'"partition":(\d+),"offset":(\d+)')
_RE_T = re.compile(rb'"t":([0-9.e+-]+)')


class RawReader:
    """A cheap asyncio WebSocket subscriber for high rates: hand-made handshake and frame
    parsing, and only (partition, offset, send time) taken from each message with a regex
    (the gateway writes those fields in a fixed order). Answers pings."""

    def __init__(self, name: str = "reader"):
        self.name = name
        self.positions: dict[int, list[int]] = collections.defaultdict(list)
        self.latencies: list[float] = []
        self.received_at: list[float] = []  # time.time() of each latency sample
        self.others: list[dict] = []
        self.count = 0
        self.closed = None
        self.paused = asyncio.Event()
        self.paused.set()

    async def connect(self, host: str, port: int, channel: str, frm="latest"):
        import base64
        self.reader, self.writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16))
        self.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Protocol: streamotter.v1\r\n\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.send_text(json.dumps({"op": "subscribe", "id": "s", "channel": channel, "from": frm}))
        while True:
            op, payload = await self._frame()
            if op == 1:
                msg = json.loads(payload)
                assert msg["op"] == "ok", msg
                self.ok = msg
                break
        self.task = asyncio.ensure_future(self._run())

    def send_text(self, text: str):
        from e2e_helpers import encode_frame
        self.writer.write(encode_frame(0x1, text.encode()))

    async def _frame(self):
        h = await self.reader.readexactly(2)
        n = h[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return h[0] & 0x0F, await self.reader.readexactly(n)

    async def _run(self):
        from e2e_helpers import encode_frame
        try:
            while True:
                await self.paused.wait()
                op, payload = await self._frame()
                if op == 1:
                    m = _RE_POS.search(payload, 0, 200)
                    if m and payload.startswith(b'{"op":"message"'):
                        now = time.time()
                        self.positions[int(m.group(1))].append(int(m.group(2)))
                        self.count += 1
                        t = _RE_T.search(payload)
                        if t:
                            self.latencies.append(now - float(t.group(1)))
                            self.received_at.append(now)
                    else:
                        self.others.append(json.loads(payload))
                elif op == 9:
                    self.writer.write(encode_frame(0xA, payload))
                elif op == 8:
                    self.closed = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = self.closed or "eof"

    async def close(self):
        from e2e_helpers import encode_frame
        try:
            self.writer.write(encode_frame(0x8, (1000).to_bytes(2, "big")))
            await asyncio.wait_for(self.task, 5)
        except Exception:
            self.task.cancel()
        self.writer.close()


def stalled_subscriber(host: str, port: int, channel: str, rcvbuf: int = 4096):
    """A subscriber that reads its `ok` and then never reads again (tiny receive buffer)."""
    from e2e_helpers import RawWS, recv_json_frame
    s = RawWS(host, port, rcvbuf=rcvbuf)
    s.send_text({"op": "subscribe", "id": "s", "channel": channel})
    assert recv_json_frame(s)["op"] == "ok"
    return s


__all__ += ["produce_paced_process"]

_PRODUCER = r'''
import json, sys, time
from confluent_kafka import Producer
bootstrap, topic, n, rate, size, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all", "enable.idempotence": True})
p.list_topics(topic, timeout=10)  # connected before pacing starts: no start-up burst
bad = []
for i in range(warm):  # untimed records ({"w":..}) that open the connections to every leader
    p.produce(topic, value=json.dumps({"w": i}), key=f"w{i}")
p.flush(30)
pad = "x" * size
t0 = time.monotonic()
for i in range(n):
    delay = t0 + i / rate - time.monotonic()
    if delay > 0.002:
        p.poll(0)
        time.sleep(delay)
    v = json.dumps({"t": time.time(), "i": i, "pad": pad}, separators=(",", ":"))
    while True:
        try:
            p.produce(topic, value=v, key=f"k{i}", on_delivery=lambda e, m: e and bad.append(e))
            break
        except BufferError:
            p.poll(0.05)
assert p.flush(60) == 0 and not bad, bad[:3]
print(time.monotonic() - t0)
'''


def produce_paced_process(bootstrap: str, topic: str, n: int, rate: float, size: int = 100,
                          warm: int = 0) -> float:
    """produce_paced in a separate Python process (no GIL shared with the test's readers):
    first `warm` untimed records, then `n` records {"t": send time, "i": i, "pad": size
    bytes} at `rate`/s. Returns the seconds the timed part took."""
    import sys
    cp = subprocess.run([sys.executable, "-c", _PRODUCER, bootstrap, topic, str(n), str(rate), str(size), str(warm)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=n / rate + 60)
    assert cp.returncode == 0, cp.stderr.decode()[-2000:]
    return float(cp.stdout.split()[-1])
