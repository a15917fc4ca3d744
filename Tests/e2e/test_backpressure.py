"""Idle peers and slow subscribers: bounded by configuration, without hurting others."""

import asyncio
import collections
import json
import time

import pytest

from conftest import run
from e2e_helpers import (Client, RawWS, http_exchange, kcat_consume, kcat_produce, messages_from_earliest,
                         recv_json_frame)
from test_subscribe import assert_exact_stream


@pytest.mark.gateway(args=["--set", "ws.ping_interval_ms=300"])
def test_silent_peer_is_pinged_then_closed_1001_but_ponging_peer_stays(gateway):
    topic = gateway.topic("t1")
    raw = RawWS(gateway.host, gateway.port)
    t0 = time.monotonic()
    pings = 0
    while True:
        fr = raw.recv_frame(10)
        assert fr is not None, "TCP closed without a Close frame"
        fin, op, payload = fr
        if op == 0x9:
            pings += 1
            continue
        assert op == 0x8, f"unexpected frame {fr}"
        break
    elapsed = time.monotonic() - t0
    code = int.from_bytes(payload[:2], "big")
    assert code == 1001, payload
    assert pings >= 1, "the server should ping a silent peer before giving up on it"
    assert 0.4 <= elapsed <= 6, f"closed after {elapsed:.2f}s; idle timeout is 2 x 300 ms"
    raw.expect_eof(5)
    raw.close()

    async def go():
        c = await Client.connect(gateway.url)  # websockets answers pings by itself
        await asyncio.sleep(2.0)
        ack = await c.call({"op": "publish", "channel": topic, "data": 1})
        await c.close()
        return ack

    assert run(go(), 30)["op"] == "ack"


@pytest.mark.gateway(topics={"big": 3, "t1": 1}, args=["--set", "ws.max_buffered_bytes=65536"])
def test_subscriber_that_does_not_read_is_closed_1008_others_unaffected(gateway, gateway_factory):
    topic, other = gateway.topic("big"), gateway.topic("t1")
    # 12 MB: far more than the kernel buffers (tcp_wmem max 4 MiB) plus the 64 KiB bound, and
    # spread over 3 partitions so that no partition passes the embedded Kafka's 5 MiB
    # per-partition log limit (past it the mock deletes old records like retention would).
    n, size = 6000, 2000
    stalled = RawWS(gateway.host, gateway.port, rcvbuf=4096)
    stalled.send_text({"op": "subscribe", "id": "s", "channel": topic})
    assert recv_json_frame(stalled)["op"] == "ok"

    async def go():
        # another client, on another channel, keeps working while the stalled one is cut off
        good = await Client.connect(gateway.url, name="good")
        await good.subscribe(other)
        produce = asyncio.ensure_future(asyncio.to_thread(
            kcat_produce, gateway.bootstrap, topic,
            [(f"k{i}", f"{i:06d}" + "x" * (size - 6)) for i in range(n)]))
        acks = []
        while not produce.done() or len(acks) < 20:
            acks.append(await good.call({"op": "publish", "channel": other, "data": len(acks)}))
        await produce
        await good.wait_messages(len(acks), 15)
        await good.close()
        return acks, good.messages

    acks, msgs = run(go(), 90)
    assert all(a["op"] == "ack" for a in acks)
    assert [m["data"] for m in msgs] == list(range(len(acks)))
    # the stalled reader now drains what reached it, then finds the slow_consumer error
    # (with the positions to resume from) and the 1008 Close
    got = collections.defaultdict(list)
    errors, code_reason = [], None
    while True:
        fr = stalled.recv_frame(15)
        assert fr is not None, f"TCP closed without a Close frame after {sum(map(len, got.values()))} messages"
        if fr[1] == 0x8:
            code_reason = (int.from_bytes(fr[2][:2], "big"), fr[2][2:])
            break
        m = json.loads(fr[2])
        if m["op"] == "message":
            got[m["partition"]].append(m["offset"])
        else:
            errors.append(m)
    assert code_reason[0] == 1008, code_reason
    received = sum(map(len, got.values()))
    assert received < n, "the stalled subscriber should have been cut off before getting everything"
    for p, offs in got.items():
        assert offs == list(range(len(offs))), f"partition {p}: not contiguous from 0"
    slow = [e for e in errors if e.get("code") == "slow_consumer"]
    assert slow, f"no slow_consumer error before the 1008 close: {errors}"
    positions = slow[0]["positions"][topic]
    # the positions name exactly what was not delivered: resuming from them gives the rest
    assert {int(p): o for p, o in positions.items()} == {p: len(got.get(p, [])) for p in range(3)}, \
        (positions, {p: len(v) for p, v in got.items()})

    # resume on another gateway in front of the same Kafka (default limits): any node will do
    other_gw = gateway_factory.start(topics={}, args=["--brokers", gateway.bootstrap])

    async def resume():
        c = await Client.connect(other_gw.url, name="resumed")
        await c.subscribe(topic, {"offsets": positions})
        await c.wait_messages(n - received, 60)
        await asyncio.sleep(0.5)
        await c.close()
        return c.messages

    recs = kcat_consume(gateway.bootstrap, topic, expect=n)
    rest = [r for r in recs if r.offset >= positions[str(r.partition)]]
    assert len(rest) == n - received
    assert_exact_stream(run(resume(), 90), rest, topic, "resumed")
    stalled.close()
    status, _, body, _ = http_exchange(gateway.host, gateway.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    line = next((ln for ln in body.decode().splitlines()
                 if "slow_consumer_closes_total" in ln and not ln.startswith("#")), None)
    assert line is not None and float(line.split()[-1]) >= 1, body.decode()[:2000]


@pytest.mark.gateway(topics={"hist": 4}, args=["--set", "ws.max_buffered_bytes=1048576"])
def test_backlog_larger_than_buffer_bound_replays_to_a_reader_that_keeps_up(gateway):
    """Subscribing from earliest to a topic whose history is larger than
    ws.max_buffered_bytes must not get a reader that keeps up closed: the gateway has to
    pace the Kafka side (pause the feed while the socket drains) rather than queue the
    whole backlog in one go and then call the reader slow."""
    topic = gateway.topic("hist")
    n, size = 4000, 2000  # 8 MB of history, 8 x the bound; 2 MB per partition
    kcat_produce(gateway.bootstrap, topic, [(f"k{i}", f"{i:06d}" + "x" * (size - 6)) for i in range(n)])
    recs = kcat_consume(gateway.bootstrap, topic, expect=n)
    assert len(recs) == n

    assert_exact_stream(run(messages_from_earliest(gateway.url, topic, n, 60), 90), recs, topic)
