"""A server that breaks streamotter.v1 must never crash the host of a client.

A fake gateway (Python `websockets`) answers the client's first connection with a frame
whose numbers are out of range (a partition beyond int32, an offset of 2^63-1, a negative
partition, an `ok` whose offsets map is malformed, an `ack` without a usable partition...).
The client runs in a child process, so that a trap shows up as a failed test instead of
killing pytest. Expected: the child survives, on_error reports "protocol_error", the
connection is closed with 1002, the client reconnects by itself and then receives the good
answer of the second connection (a message, the subscribe's ok, or the resent publish's
ack). Frames the client does not act on (not JSON, an unknown op, a message for a channel
it is not subscribed to, an ack for an id it never sent) stay harmless and close nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

import streamotter as so

websockets = pytest.importorskip("websockets")

BINDING_DIR = str(Path(so.__file__).resolve().parent.parent)

CHILD = r"""
import json, sys, threading
import streamotter as so

url, mode = sys.argv[1], sys.argv[2]

lock = threading.Lock()

def out(*event):  # from the engine's thread and the main thread: one whole line at a time
    with lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

got_message = threading.Event()

def on_msg(m):
    out("message", m.partition, m.offset, m.timestamp, m.value)
    got_message.set()

conf = {"reconnect.initial_delay_ms": 20, "reconnect.max_delay_ms": 200, "client.ping_interval_ms": 0}
with so.Engine({"mode": "client"}) as e:
    c = e.client(url, conf, on_error=lambda code, msg: out("error", code, msg),
                 on_close=lambda code, reason: out("close", code, reason))
    if mode == "publish":
        a = c.publish("orders", {"n": 1}).result(15)
        out("ack", a.partition, a.offset)
    else:
        c.subscribe("orders", on_msg).result(15)
        out("subscribed")
        assert got_message.wait(15), "no message"
    out("reconnects", c.health().reconnects)
    c.close()
out("survived")
"""

BIG_PARTITION = 2**40
INT64_MAX = 2**63 - 1


def message(partition=0, offset=0, n=2, **extra) -> str:
    f = {"op": "message", "channel": "orders", "partition": partition, "offset": offset}
    f.update(extra)
    f["data"] = {"n": n}
    return json.dumps(f)


def drop(frame: str, key: str) -> str:
    f = json.loads(frame)
    del f[key]
    return json.dumps(f)


def ok(id_, offsets='{"0":0}') -> str:
    return '{"op":"ok","id":%s,"channel":"orders","offsets":%s}' % (json.dumps(id_), offsets)


def ack(id_, partition="1", offset="7") -> str:
    return '{"op":"ack","id":%s,"channel":"orders","partition":%s,"offset":%s}' % (json.dumps(id_), partition, offset)


# (test id, what the first connection gets wrong, the bad frame (built from the request id))
CASES = [
    ("message-partition-2pow40", "message", lambda id_: message(partition=BIG_PARTITION, n=1)),
    ("message-partition-negative", "message", lambda id_: message(partition=-1, n=1)),
    ("message-offset-int64-max", "message", lambda id_: message(offset=INT64_MAX, n=1)),
    ("message-offset-negative", "message", lambda id_: message(offset=-3, n=1)),
    ("message-offset-beyond-int64", "message", lambda id_: message(offset=2**64, n=1)),
    ("message-offset-fraction", "message", lambda id_: message(offset=1.5, n=1)),
    ("message-offset-missing", "message", lambda id_: drop(message(n=1), "offset")),
    ("message-partition-string", "message", lambda id_: message(partition="0", n=1)),
    ("message-timestamp-beyond-int64", "message", lambda id_: message(n=1, timestamp=2**63)),
    ("ok-offsets-partition-2pow32", "ok", lambda id_: ok(id_, '{"4294967296":0}')),
    ("ok-offsets-partition-negative", "ok", lambda id_: ok(id_, '{"-1":0}')),
    ("ok-offsets-offset-negative", "ok", lambda id_: ok(id_, '{"0":-1}')),
    ("ok-offsets-offset-beyond-int64", "ok", lambda id_: ok(id_, '{"0":9223372036854775808}')),
    ("ok-offsets-not-an-object", "ok", lambda id_: ok(id_, "[0]")),
    ("ack-partition-2pow40", "ack", lambda id_: ack(id_, partition=str(BIG_PARTITION))),
    ("ack-partition-negative", "ack", lambda id_: ack(id_, partition="-1")),
    ("ack-offset-beyond-int64", "ack", lambda id_: ack(id_, offset="9223372036854775808")),
    ("ack-partition-missing", "ack", lambda id_: drop(ack(id_), "partition")),
]


async def run_case(kind: str, bad, tolerated: list[str] = ()):
    """Runs the fake server and the child client; returns (child events, server log)."""
    conns: list[dict] = []

    async def handler(ws):
        conn = {"n": len(conns) + 1, "requests": [], "close_code": None}
        conns.append(conn)
        first = conn["n"] == 1
        try:
            async for raw in ws:
                req = json.loads(raw)
                conn["requests"].append(req)
                if req.get("op") == "subscribe":
                    if first and kind == "ok":
                        await ws.send(bad(req["id"]))
                        continue
                    await ws.send(ok(req["id"]))
                    if first and kind == "message":
                        await ws.send(bad(req["id"]))
                        continue
                    if first and kind == "tolerated":
                        for f in tolerated:
                            await ws.send(f)
                    await ws.send(message(partition=0, offset=0, n=2, timestamp=1733220000000))
                elif req.get("op") == "publish":
                    await ws.send(bad(req["id"]) if first and kind == "ack" else ack(req["id"]))
        except websockets.ConnectionClosed:
            pass
        conn["close_code"] = ws.close_code

    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=["streamotter.v1"]) as server:
        port = server.sockets[0].getsockname()[1]
        env = dict(os.environ, PYTHONPATH=BINDING_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
        mode = "publish" if kind == "ack" else "subscribe"
        p = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, f"ws://127.0.0.1:{port}/", mode,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                 env=env)
        try:
            stdout, stderr = await asyncio.wait_for(p.communicate(), 40)
        except asyncio.TimeoutError:
            p.kill()
            stdout, stderr = await p.communicate()
        text = stdout.decode(errors="replace")
        assert p.returncode == 0, (f"the client's process died (exit status {p.returncode})\n"
                                   f"stdout:\n{text}\nstderr:\n{stderr.decode(errors='replace')[-3000:]}")
        events = [json.loads(line) for line in text.splitlines() if line.startswith("[")]
        return events, conns


@pytest.mark.parametrize("kind,bad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_out_of_range_numbers_are_a_protocol_violation(kind, bad):
    events, conns = asyncio.run(run_case(kind, bad))
    assert events[-1] == ["survived"]
    errors = [e for e in events if e[0] == "error"]
    assert errors and errors[0][1] == "protocol_error", events
    closes = [e for e in events if e[0] == "close"]
    assert closes and closes[0][1] == 1002, events
    assert conns[0]["close_code"] == 1002, conns  # the server got our Close 1002
    assert len(conns) >= 2, "the client reconnected"
    reconnects = next(e[1] for e in events if e[0] == "reconnects")
    assert reconnects >= 1
    if kind == "ack":
        # The publish stayed pending, was resent with the same id, and its good ack came.
        assert [e for e in events if e[0] == "ack"] == [["ack", 1, 7]], events
        ids = [r["id"] for c in conns[:2] for r in c["requests"] if r.get("op") == "publish"]
        assert len(ids) == 2 and ids[0] == ids[1], conns
    else:
        # The bad message was never delivered; the good one of the second connection was.
        assert [e for e in events if e[0] == "message"] == [["message", 0, 0, 1733220000000, {"n": 2}]], events


def test_frames_the_client_does_not_act_on_are_harmless():
    tolerated = [
        "not json at all",
        json.dumps({"op": "surprise", "partition": 1e300}),
        # a channel it is not subscribed to, an id it never sent: nothing is taken from them
        json.dumps({"op": "message", "channel": "other", "partition": BIG_PARTITION, "offset": INT64_MAX, "data": 1}),
        ack("nope", partition=str(BIG_PARTITION), offset="-5"),
        '{"op":"ok","id":"nope","offsets":{"-7":-7}}',
    ]
    events, conns = asyncio.run(run_case("tolerated", None, tolerated))
    assert events[-1] == ["survived"]
    assert [e for e in events if e[0] == "error"] == [], events
    assert [e for e in events if e[0] == "message"] == [["message", 0, 0, 1733220000000, {"n": 2}]], events
    assert len(conns) == 1 and next(e[1] for e in events if e[0] == "reconnects") == 0


CHILD_IDLE = r"""
import json, sys, time
import streamotter as so

conf = {"reconnect.initial_delay_ms": 20, "reconnect.max_delay_ms": 200, "client.ping_interval_ms": 0,
        "circuit.failure_threshold": 5, "circuit.cooldown_ms": 5000}
with so.Engine({"mode": "client"}) as e:
    c = e.client(sys.argv[1], conf)
    c.subscribe("orders", lambda m: None)
    time.sleep(2.0)
    h = c.health()
    print(json.dumps([h.state.name, h.consecutive_failures, h.reconnects]), flush=True)
    c.close()
"""


def test_a_server_that_always_breaks_the_protocol_meets_the_backoff():
    """Every connection gets a bad frame right after the subscribe's ok. Each violation
    counts as a failure (opening had reset the count), so the reconnects back off and the
    circuit breaker opens after 5: a handful of connections in 2 s, where resetting on
    every open reconnected every 0-20 ms (about a hundred)."""
    conns = []

    async def handler(ws):
        conns.append(1)
        try:
            async for raw in ws:
                req = json.loads(raw)
                if req.get("op") == "subscribe":
                    await ws.send(ok(req["id"]))
                    await ws.send(message(partition=BIG_PARTITION, n=1))
        except websockets.ConnectionClosed:
            pass

    async def go():
        async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=["streamotter.v1"]) as server:
            port = server.sockets[0].getsockname()[1]
            env = dict(os.environ, PYTHONPATH=BINDING_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
            p = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD_IDLE, f"ws://127.0.0.1:{port}/",
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                     env=env)
            stdout, stderr = await asyncio.wait_for(p.communicate(), 30)
            assert p.returncode == 0, stderr.decode(errors="replace")[-2000:]
            return json.loads(stdout.decode().strip().splitlines()[-1])

    state, failures, reconnects = asyncio.run(go())
    assert state == "CIRCUIT_OPEN" and failures >= 5, (state, failures, reconnects)
    assert len(conns) <= 8, f"{len(conns)} connections in 2 s"
