"""Independent peers for the end-to-end suite: kcat, websockets, raw sockets, murmur2."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import connect as ws_connect_raw
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "streamotter.v1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

KCAT = shutil.which("kcat") or shutil.which("kafkacat") or "kcat"


# =========================================================================== kcat


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def _b(x) -> bytes | None:
    if x is None:
        return None
    return x if isinstance(x, bytes) else str(x).encode()


def kcat_run(bootstrap: str, args: list, *, input: bytes | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [KCAT, "-b", bootstrap,
           "-X", "socket.timeout.ms=10000",
           "-X", "topic.metadata.refresh.interval.ms=1000",
           "-X", "reconnect.backoff.max.ms=1000"] + args
    try:
        return subprocess.run(cmd, input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"kcat timed out after {timeout}s: {' '.join(map(str, cmd))}\n"
                             f"stderr: {(e.stderr or b'')[-2000:]!r}") from None


def kcat_produce(bootstrap: str, topic: str, records, *, partition: int | None = None,
                 headers: dict | None = None, extra: list | None = None,
                 timeout: float = 60) -> None:
    """Produce (key, value) pairs with `kcat -P -K <TAB>`; key None -> no key.

    Values must not contain a newline, keys no tab (kcat's line and key delimiters).
    """
    lines = []
    for key, value in records:
        k, v = _b(key), _b(value)
        assert b"\n" not in v and (k is None or (b"\t" not in k and b"\n" not in k)), (k, v)
        lines.append(v if k is None else k + b"\t" + v)
    args = ["-P", "-t", topic, "-K", "\t", "-X", "acks=all"]
    if partition is not None:
        args += ["-p", str(partition)]
    for hk, hv in (headers or {}).items():
        args += ["-H", _b(hk) + b"=" + _b(hv)]
    args += list(extra or [])
    cp = kcat_run(bootstrap, args, input=b"\n".join(lines) + b"\n", timeout=timeout)
    assert cp.returncode == 0 and b"Delivery failed" not in cp.stderr, (
        f"kcat -P failed rc={cp.returncode}: {cp.stderr[-2000:]!r}")


def _parse_records(out: bytes) -> list[Record]:
    # format: "%p %o %T %K %S %k%s\n" with %K/%S the key/value lengths (-1 = null)
    recs, i, n = [], 0, len(out)
    while i < n:
        fields = []
        for _ in range(5):
            j = out.index(b" ", i)
            fields.append(int(out[i:j]))
            i = j + 1
        p, o, ts, kl, vl = fields
        key = None if kl < 0 else out[i:i + kl]
        i += max(kl, 0)
        val = None if vl < 0 else out[i:i + vl]
        i += max(vl, 0)
        assert out[i:i + 1] == b"\n", f"kcat output misparsed at {i}: {out[i - 40:i + 40]!r}"
        i += 1
        recs.append(Record(p, o, ts, key, val))
    return recs


def kcat_consume(bootstrap: str, topic: str, *, expect: int | None = None,
                 timeout: float = 30, extra: list[str] | None = None) -> list[Record]:
    """All records of `topic` from the beginning (`kcat -C -e -o beginning`).

    With `expect`, re-reads until at least that many records are visible or the
    deadline passes (then returns what it saw; the caller asserts).
    """
    deadline = time.monotonic() + timeout
    while True:
        cp = kcat_run(bootstrap, ["-C", "-t", topic, "-e", "-q", "-o", "beginning",
                                  "-f", "%p %o %T %K %S %k%s\n"] + (extra or []),
                      timeout=max(5.0, deadline - time.monotonic()))
        assert cp.returncode == 0, f"kcat -C failed rc={cp.returncode}: {cp.stderr[-2000:]!r}"
        recs = _parse_records(cp.stdout)
        if expect is None or len(recs) >= expect or time.monotonic() >= deadline:
            return recs
        time.sleep(0.1)


def kcat_metadata(bootstrap: str, topic: str | None = None, timeout: float = 30) -> dict:
    args = ["-L", "-J"] + (["-t", topic] if topic else [])
    cp = kcat_run(bootstrap, args, timeout=timeout)
    assert cp.returncode == 0, f"kcat -L failed rc={cp.returncode}: {cp.stderr[-2000:]!r}"
    return json.loads(cp.stdout)


# =========================================================================== murmur2


def murmur2(data: bytes) -> int:
    """Kafka's org.apache.kafka.common.utils.Utils.murmur2 (signed 32-bit result)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = data[4 * i] | (data[4 * i + 1] << 8) | (data[4 * i + 2] << 16) | (data[4 * i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    rem = length % 4
    if rem == 3:
        h ^= data[tail + 2] << 16
    if rem >= 2:
        h ^= data[tail + 1] << 8
    if rem >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    """Java DefaultPartitioner / BuiltInPartitioner for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# =========================================================================== websockets


async def ws_connect(url: str, *, subprotocols=(SUBPROTOCOL,), compression=None, **kw):
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", 16 * 1024 * 1024)
    return await ws_connect_raw(url, subprotocols=list(subprotocols) if subprotocols else None,
                                compression=compression, **kw)


class Client:
    """A streamotter.v1 client over `websockets`: replies routed by id, messages collected."""

    def __init__(self, ws, name: str = "client"):
        self.ws = ws
        self.name = name
        self.messages: list[dict] = []
        self.unsolicited: list[dict] = []  # replies without a pending id (errors without id...)
        self.pending: dict[str, asyncio.Future] = {}
        self.closed = False
        self.close_rcvd = None  # websockets.frames.Close received from the server, if any
        self.close_error: Exception | None = None
        self._changed = asyncio.Event()
        self._n = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, name: str = "client", **kw) -> "Client":
        ws = await ws_connect(url, **kw)
        return cls(ws, name)

    def next_id(self, prefix: str = "r") -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    async def _read(self):
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), f"{self.name}: binary frame from server: {raw[:80]!r}"
                msg = json.loads(raw)
                op = msg.get("op")
                if op == "message":
                    self.messages.append(msg)
                else:
                    fut = self.pending.pop(msg.get("id"), None) if isinstance(msg.get("id"), str) else None
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    else:
                        self.unsolicited.append(msg)
                self._changed.set()
        except ConnectionClosed as e:
            self.close_error = e
        except Exception as e:  # a bug in the reader or a bad frame: surface it
            self.close_error = e
        finally:
            self.closed = True
            self.close_rcvd = self.ws.protocol.close_rcvd
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(
                        f"{self.name}: connection closed: rcvd={self.close_rcvd} err={self.close_error!r}"))
            self.pending.clear()
            self._changed.set()

    async def send(self, obj) -> None:
        await self.ws.send(obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":")))

    def expect_reply(self, rid: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        return fut

    async def call(self, obj: dict, timeout: float = 15) -> dict:
        """Send a request with an id and wait for the reply carrying that id."""
        obj = dict(obj)
        obj.setdefault("id", self.next_id(obj.get("op", "r")[0]))
        fut = self.expect_reply(obj["id"])
        await self.send(obj)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: no reply to {obj} within {timeout}s "
                                 f"(unsolicited so far: {self.unsolicited[-5:]})") from None

    async def subscribe(self, channel: str, frm="latest", timeout: float = 15) -> dict:
        req = {"op": "subscribe", "channel": channel}
        if frm is not None:
            req["from"] = frm
        reply = await self.call(req, timeout)
        assert reply.get("op") == "ok", f"{self.name}: subscribe {req} -> {reply}"
        return reply

    async def wait_for(self, predicate, timeout: float, what="condition"):
        """Wait until predicate() is truthy; `what` (a string or a function giving one)
        describes the wait in the failure message."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if callable(what):
                describe = what
            else:
                describe = (lambda w=what: w)
            v = predicate()
            if v:
                return v
            if self.closed:
                raise AssertionError(f"{self.name}: connection closed (rcvd={self.close_rcvd}, "
                                     f"err={self.close_error!r}) while waiting for {describe()}")
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {describe()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def wait_messages(self, n: int, timeout: float = 30) -> list[dict]:
        await self.wait_for(lambda: len(self.messages) >= n, timeout,
                            lambda: f"{n} messages (have {len(self.messages)})")
        return self.messages

    async def close(self):
        try:
            await self.ws.close()
        finally:
            try:
                await asyncio.wait_for(self._reader, 5)
            except Exception:
                pass


async def messages_from_earliest(url: str, topic: str, n: int, timeout: float = 30) -> list[dict]:
    """The first n message frames of a subscription to `topic` from its earliest record."""
    c = await Client.connect(url)
    await c.subscribe(topic, "earliest")
    await c.wait_messages(n, timeout)
    await c.close()
    return c.messages


def message_value(msg: dict):
    """(kind, value) of a delivered message: kind in data/text/base64."""
    kinds = [k for k in ("data", "text", "base64") if k in msg]
    assert len(kinds) == 1, f"message must carry exactly one of data/text/base64: {msg}"
    return kinds[0], msg[kinds[0]]


def message_value_bytes(msg: dict) -> bytes:
    """The Kafka record value a message stands for (data re-encoded compactly)."""
    kind, v = message_value(msg)
    if kind == "text":
        return v.encode()
    if kind == "base64":
        return base64.b64decode(v)
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


# =========================================================================== raw sockets


def http_exchange(host: str, port: int, request: bytes, timeout: float = 5,
                  ignore_send_errors: bool = False) -> tuple[int | None, dict, bytes, bytes]:
    """Send raw bytes, read the response until EOF. Returns (status, headers, body, raw)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            if not ignore_send_errors:
                raise
        raw = recv_until_eof(s, timeout)
    return parse_http_response(raw) + (raw,)


def recv_until_eof(s: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"connection not closed by server within {timeout}s; "
                                 f"got {b''.join(chunks)[:300]!r}")
        s.settimeout(left)
        try:
            c = s.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            continue
        if not c:
            break
        chunks.append(c)
    return b"".join(chunks)


def parse_http_response(raw: bytes) -> tuple[int | None, dict, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, raw
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    assert parts[0].startswith(b"HTTP/1."), f"not an HTTP response: {raw[:200]!r}"
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
    return status, headers, body


def mask_payload(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True,
                 rsv: int = 0, length: int | None = None, mask_key: bytes | None = None) -> bytes:
    """A client frame. `length` overrides the declared payload length (for lying headers)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = bytes([b0, mbit | n])
    elif n < 65536:
        hdr = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        hdr = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = mask_key or os.urandom(4)
        return hdr + key + mask_payload(payload, key)
    return hdr + payload


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class RawWS:
    """A hand-made WebSocket client on a plain socket, for sending what libraries won't."""

    def __init__(self, host: str, port: int, *, path: str = "/", subprotocol: str | None = SUBPROTOCOL,
                 timeout: float = 10, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        key = base64.b64encode(os.urandom(16))
        req = (b"GET " + path.encode() + b" HTTP/1.1\r\n"
               b"Host: " + f"{host}:{port}".encode() + b"\r\n"
               b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + key + b"\r\n"
               b"Sec-WebSocket-Version: 13\r\n")
        if subprotocol:
            req += b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n"
        self.sock.sendall(req + b"\r\n")
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            c = self.sock.recv(65536)
            if not c:
                raise AssertionError(f"server closed during handshake: {self.buf!r}")
            self.buf += c
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, headers, _ = parse_http_response(head + b"\r\n\r\n")
        assert status == 101, f"handshake failed: {head!r}"
        want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        assert headers.get("sec-websocket-accept") == want, f"bad accept: {head!r}"
        if subprotocol:
            assert headers.get("sec-websocket-protocol") == subprotocol, head
        self.sock.settimeout(timeout)

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kw):
        self.sock.sendall(encode_frame(opcode, payload, **kw))

    def send_text(self, obj) -> None:
        data = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
        self.send_frame(0x1, data.encode() if isinstance(data, str) else data)

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete frame before deadline (buffered {self.buf[:64]!r})")
            self.sock.settimeout(left)
            try:
                c = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return False
            if not c:
                return False
            self.buf += c
        return True

    def recv_frame(self, timeout: float = 10):
        """(fin, opcode, payload) of the next server frame, or None at EOF."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            assert not self.buf, f"EOF inside a frame header: {self.buf!r}"
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames must not be masked"
        assert b0 & 0x70 == 0, f"RSV bits set on a server frame: {b0:#x}"
        n, hl = b1 & 0x7F, 2
        if n == 126:
            assert self._fill(4, deadline), "EOF in frame header"
            n, hl = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            assert self._fill(10, deadline), "EOF in frame header"
            n, hl = struct.unpack("!Q", self.buf[2:10])[0], 10
        assert self._fill(hl + n, deadline), f"EOF inside a frame body ({len(self.buf)}/{hl + n})"
        payload = self.buf[hl:hl + n]
        self.buf = self.buf[hl + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_close(self, timeout: float = 10, skip_data: bool = True) -> tuple[int | None, bytes]:
        """Read frames until a Close frame; return (code, reason). Fails on EOF before it."""
        deadline = time.monotonic() + timeout
        while True:
            fr = self.recv_frame(max(0.01, deadline - time.monotonic()))
            assert fr is not None, "TCP closed before a Close frame was received"
            fin, op, payload = fr
            if op == 0x8:
                if len(payload) == 0:
                    return None, b""
                assert len(payload) >= 2, f"close payload of length 1: {payload!r}"
                return struct.unpack("!H", payload[:2])[0], payload[2:]
            assert skip_data, f"expected a Close frame, got opcode {op} {payload[:100]!r}"

    def expect_eof(self, timeout: float = 5, reply_code: int | None = 1000) -> None:
        """After the server's Close frame: answer it with a Close (as RFC 6455 5.5.1 asks of
        an endpoint; the server may already be gone, so send errors are ignored), then the
        server must close TCP (EOF or reset) within timeout."""
        if reply_code is not None:
            try:
                self.sock.sendall(encode_frame(0x8, close_payload(reply_code)))
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("server did not close the TCP connection after its Close frame")
            self.sock.settimeout(left)
            try:
                c = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return
            if not c:
                return
            self.buf += c

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def recv_json_frame(raw: RawWS, timeout: float = 10) -> dict:
    fr = raw.recv_frame(timeout)
    assert fr is not None, "EOF while waiting for a text frame"
    fin, op, payload = fr
    assert op == 0x1 and fin, f"expected a whole text frame, got op={op} fin={fin} {payload[:100]!r}"
    return json.loads(payload)
