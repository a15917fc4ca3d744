"""Backpressure and limits (docs/semantics.md, "Backpressure"): slow subscribers under the
`close` and `pause` policies, inbound backpressure on a full producer queue, heartbeats
against a slow sender. The gateway is the real binary; peers are raw sockets, `websockets`
and confluent-kafka."""

import asyncio
import collections
import json
import threading
import time

import pytest

from conftest import run
from e2e_helpers import Client, RawWS, encode_frame, recv_json_frame, ws_connect
from nl_support import *  # noqa: F401,F403  (fixtures: dev_kafka, gateways)
from nl_support import (RawReader, kafka_records, metrics, produce_paced, produce_paced_process,
                        report, rss_kb, stalled_subscriber, unique)

FAST_FETCH = ["--set", "kafka.consumer.fetch.wait.max.ms=10"]
BOUND = 256 * 1024
# Room for the bursts a reader that keeps up sees on a shared 2-core machine (a 200 ms
# stall upstream is 1000 messages at once); twice this is the hard per-connection cap.
HOT_BOUND = 1024 * 1024


def padded(size: int):
    pad = "x" * size
    return lambda i: json.dumps({"t": time.time(), "i": i, "pad": pad}, separators=(",", ":"))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000 if xs else float("nan")


@pytest.mark.parametrize("policy", ["pause", "close"])
def test_100_stalled_subscribers_do_not_grow_memory_or_slow_10_normal_ones(gateway_factory, policy, capsys):
    """Acceptance: 10 normal subscribers receive 5,000 msg/s; then 100 subscribers that
    stop reading join. Gateway RSS stays under its bound (baseline + 100 x 2 x
    ws.max_buffered_bytes + 32 MiB of slack), the normal ones lose nothing, and their
    latency is reported against the unloaded run (the 2x target is a printed figure, not
    an assertion: timing on a shared 2-core machine)."""
    gw = gateway_factory.start(topics={"hot": 3}, args=[
        "--set", f"ws.max_buffered_bytes={HOT_BOUND}", "--set", f"ws.slow_consumer={policy}", *FAST_FETCH])
    topic = gw.topic("hot")
    rate, unloaded_s, loaded_s, size = 5000, 3.0, 5.0, 400

    async def go():
        normal = [RawReader(f"n{i}") for i in range(10)]
        for r in normal:
            await r.connect(gw.host, gw.port, topic)
        # warm-up: the feed's first fetch takes a moment; what accumulates meanwhile would
        # arrive as one burst, which is not the steady state measured here
        warm = 200
        await asyncio.to_thread(produce_paced_process, gw.bootstrap, topic, warm, 400, size)
        while min(r.count for r in normal) < warm:
            await asyncio.sleep(0.05)
        for r in normal:
            r.latencies.clear()
        n1 = int(rate * unloaded_s)
        await asyncio.to_thread(produce_paced_process, gw.bootstrap, topic, n1, rate, size, 30)
        n1 += warm + 30
        deadline = time.monotonic() + 30
        while min(r.count for r in normal) < n1 and time.monotonic() < deadline and not any(r.closed for r in normal):
            await asyncio.sleep(0.05)
        assert min(r.count for r in normal) == n1, ([r.count for r in normal], [r.closed for r in normal])
        base_rss = rss_kb(gw.proc.pid)
        unloaded = [list(r.latencies) for r in normal]
        for r in normal:
            r.latencies.clear()
            r.received_at.clear()
        loaded_at = time.time()
        stalled = await asyncio.to_thread(lambda: [stalled_subscriber(gw.host, gw.port, topic) for _ in range(100)])
        rss = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                rss.append(rss_kb(gw.proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        n2 = int(rate * loaded_s)
        produce_s = await asyncio.to_thread(produce_paced_process, gw.bootstrap, topic, n2, rate, size, 30)
        n2 += 30
        deadline = time.monotonic() + 30
        while min(r.count for r in normal) < n1 + n2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        sampler.join()
        loaded = [list(r.latencies) for r in normal]
        # after the first 1.5 s the stalled ones have been judged (grace 1 s): steady state
        steady = [[x for x, at in zip(r.latencies, r.received_at) if at > loaded_at + 1.5] for r in normal]
        m = metrics(gw)
        for r in normal:
            await r.close()
        for s in stalled:
            s.close()
        return normal, base_rss, rss, unloaded, loaded, steady, m, n1 + n2, produce_s

    normal, base_rss, rss, unloaded, loaded, steady, m, total, produce_s = run(go(), 120)
    for r in normal:
        assert r.closed in (None, 1000), f"{r.name} closed: {r.closed}"
        assert r.count == total, f"{r.name}: {r.count} of {total}"
        for p, offs in r.positions.items():
            assert offs == list(range(offs[0], offs[0] + len(offs))), f"{r.name}: gap or duplicate on {p}"
    bound_kb = base_rss + 100 * 2 * HOT_BOUND // 1024 + 32 * 1024
    u = [x for l in unloaded for x in l]
    lo = [x for l in loaded for x in l]
    st = [x for l in steady for x in l]
    ratio50, ratio99 = pct(st, .5) / pct(u, .5), pct(st, .99) / pct(u, .99)
    acted = m["slow_consumer_pauses_total"] if policy == "pause" else m["slow_consumer_closes_total"]
    report(capsys, f"[{policy}] 10 normal at {rate} msg/s ({size} B values) + 100 stalled: RSS "
                   f"{base_rss // 1024} MiB before, max {max(rss) // 1024} MiB with the stalled ones "
                   f"(bound {bound_kb // 1024} MiB); {int(acted)} stalled subscribers "
                   f"{'paused' if policy == 'pause' else 'closed'}; normal ones: {total} each, none lost; "
                   f"latency unloaded -> loaded (steady, after the first 1.5 s): "
                   f"p50 {pct(u, .5):.1f} -> {pct(st, .5):.1f} ms ({ratio50:.2f}x), "
                   f"p99 {pct(u, .99):.1f} -> {pct(st, .99):.1f} ms ({ratio99:.2f}x); whole loaded phase "
                   f"p50 {pct(lo, .5):.1f} p99 {pct(lo, .99):.1f} ms; "
                   f"resumes {int(m['slow_consumer_resumes_total'])}, replay parks {int(m['replay_parks_total'])}, "
                   f"replayed {int(m['replay_messages_total'])}")
    assert max(rss) < bound_kb, f"RSS {max(rss)} KiB over the bound {bound_kb} KiB"
    assert acted >= 90, f"the stalled subscribers should have hit the bound: {m}"
    # No latency assertion: on a shared machine others' load moves these figures; the
    # 2x target is judged from the printed report.


@pytest.mark.gateway(topics={"pz": 3}, args=["--set", f"ws.max_buffered_bytes={BOUND}", "--set", "ws.slow_consumer=pause"])
def test_pause_policy_resumes_a_slow_reader_from_its_positions(gateway, capsys):
    """ws.slow_consumer=pause: a reader that stops reading while 20,000 records (10 MB)
    stream is paused, not closed; when it reads again it gets every record exactly once
    in order, the rest replayed from where it was paused."""
    topic = gateway.topic("pz")
    n = 20_000

    async def go():
        r = RawReader("slow")
        await r.connect(gateway.host, gateway.port, topic)
        r.paused.clear()  # stop reading
        await asyncio.to_thread(produce_paced, gateway.bootstrap, topic, n, 10_000, padded(480))
        await asyncio.sleep(0.5)
        m1 = metrics(gateway)
        r.paused.set()
        t0 = time.monotonic()
        while r.count < n and time.monotonic() - t0 < 60 and r.closed is None:
            await asyncio.sleep(0.05)
        m2 = metrics(gateway)
        await r.close()
        return r, m1, m2, time.monotonic() - t0

    r, m1, m2, drain_s = run(go(), 120)
    assert r.closed in (None, 1000), f"closed with {r.closed}"
    assert r.count == n, f"{r.count} of {n}"
    for p, offs in r.positions.items():
        assert offs == list(range(len(offs))), f"partition {p}: not exactly once in order"
    assert m1["slow_consumer_pauses_total"] >= 1 and m2["slow_consumer_resumes_total"] >= 1, (m1, m2)
    report(capsys, f"pause policy: reader stopped during 20,000 records; paused "
                   f"{int(m2['slow_consumer_pauses_total'])}x, resumed {int(m2['slow_consumer_resumes_total'])}x, "
                   f"received all {n} exactly once in {drain_s:.1f}s after reading again "
                   f"({int(m2['replay_messages_total'])} through the replay lane)")


@pytest.mark.gateway(topics={"cz": 3}, args=["--set", "ws.max_buffered_bytes=65536"])
def test_close_policy_sends_resume_positions_before_1008(gateway, capsys):
    """ws.slow_consumer=close (default): a subscriber over its bound gets an error frame
    `slow_consumer` with the next offset of every partition, then Close 1008; the
    positions continue exactly after the last message it received, and resuming from
    them gives the rest exactly once."""
    topic = gateway.topic("cz")
    n = 12_000
    stalled = stalled_subscriber(gateway.host, gateway.port, topic)
    produce_paced(gateway.bootstrap, topic, n, 20_000, padded(1000))
    got = collections.defaultdict(list)
    positions, code = None, None
    while True:
        fr = stalled.recv_frame(15)
        assert fr is not None, "EOF without Close"
        if fr[1] == 0x8:
            code = int.from_bytes(fr[2][:2], "big")
            break
        msg = json.loads(fr[2])
        if msg["op"] == "message":
            assert positions is None, "a message after the positions frame"
            got[msg["partition"]].append(msg["offset"])
        elif msg["op"] == "error":
            assert msg["code"] == "slow_consumer", msg
            positions = msg["positions"][topic]
    stalled.close()
    assert code == 1008
    assert positions is not None, "no slow_consumer frame with positions before the Close"
    for p in range(3):
        offs = got.get(p, [])
        assert offs == list(range(len(offs)))
        assert positions[str(p)] == len(offs), (p, positions, len(offs))

    async def resume():
        c = await Client.connect(gateway.url)
        await c.subscribe(topic, {"offsets": positions})
        await c.wait_messages(n - sum(len(v) for v in got.values()), 30)
        await asyncio.sleep(0.3)
        await c.close()
        return c.messages

    for m in run(resume(), 60):
        got[m["partition"]].append(m["offset"])
    assert sum(len(v) for v in got.values()) == n
    for p, offs in got.items():
        assert offs == list(range(len(offs))), f"partition {p}: not exactly once after resuming"
    report(capsys, f"close policy: cut off after {sum(int(v) for v in positions.values())} of {n} "
                   f"records with positions {positions}; resumed from them to all {n} exactly once")


def collect_answers(ws, answers: dict, n: int) -> asyncio.Future:
    """Reads `ws` into answers (request id -> reply) until it holds n; a running task."""
    async def read():
        async for raw in ws:
            msg = json.loads(raw)
            answers[msg["id"]] = msg
            if len(answers) == n:
                return

    return asyncio.ensure_future(read())


def test_full_producer_queue_holds_publishes_with_tcp_backpressure(gateways, dev_kafka, capsys):
    """kafka.producer.queue.buffering.max.messages=200 and 50 ms of broker RTT: the
    producer queue fills. The gateway holds the publish that did not fit, stops reading
    from that socket (the clients' sends stall: TCP backpressure) and retries as delivery
    reports free room: 2 clients x 3,000 publishes of 2 KB are all acked, none fails, none
    is lost or doubled. A subscriber on another connection keeps receiving meanwhile."""
    topic = dev_kafka.topic(unique("qf"), 6)
    gw = gateways.start("--set", "kafka.producer.queue.buffering.max.messages=200",
                        "--set", "kafka.consumer.fetch.wait.max.ms=10")
    dev_kafka.cmd("rtt -1 50")
    per, clients = 3000, 2

    async def one(k):
        ws = await ws_connect(gw.url)
        answers = {}
        blocked = 0.0
        reader = collect_answers(ws, answers, per)
        for i in range(per):
            t = time.monotonic()
            await ws.send(json.dumps({"op": "publish", "id": f"c{k}-{i}", "channel": topic,
                                      "key": f"{k}-{i}", "data": {"c": k, "i": i, "pad": "y" * 2000}}))
            blocked = max(blocked, time.monotonic() - t)
        await asyncio.wait_for(reader, 90)
        await ws.close()
        return answers, blocked

    async def go():
        sub = await Client.connect(gw.url, name="sub")
        await sub.subscribe(topic)
        t0 = time.monotonic()
        held_seen = 0
        tasks = [asyncio.ensure_future(one(k)) for k in range(clients)]
        while not all(t.done() for t in tasks):
            held_seen = max(held_seen, metrics(gw)["publishes_held"])
            await asyncio.sleep(0.1)
        res = [t.result() for t in tasks]
        elapsed = time.monotonic() - t0
        await sub.wait_messages(per * clients, 30)
        await sub.close()
        return res, elapsed, held_seen, sub.messages

    try:
        res, elapsed, held_seen, sub_msgs = run(go(), 150)
    finally:
        dev_kafka.cmd("rtt -1 0")
    answers = {k: v for a, _ in res for k, v in a.items()}
    assert len(answers) == per * clients
    bad = [v for v in answers.values() if v["op"] != "ack"]
    assert not bad, f"{len(bad)} publishes not acked: {bad[:3]}"
    recs = kafka_records(gw.bootstrap, topic, per * clients)
    ids = collections.Counter(h.get("streamotter-id") for *_, h in recs)
    assert len(recs) == per * clients and max(ids.values()) == 1
    # order kept through the holds: per client and partition, offsets follow publish order
    for k in range(clients):
        for p in {r[0] for r in recs}:
            seq = [json.loads(r[3])["i"] for r in sorted(recs, key=lambda r: r[1])
                   if r[0] == p and json.loads(r[3])["c"] == k]
            assert seq == sorted(seq), f"client {k} partition {p}: publish order not kept"
    m = metrics(gw)
    assert m["publishes_held_total"] > 0, "the queue never filled: the test proves nothing"
    assert m["publish_failures_total"] == 0
    report(capsys, f"producer queue of 200 with 50 ms RTT: {per * clients} publishes from {clients} "
                   f"clients in {elapsed:.1f}s, {int(m['publishes_held_total'])} held for queue room "
                   f"(up to {int(held_seen)} at once), longest client send stall "
                   f"{max(b for _, b in res) * 1000:.0f} ms (TCP backpressure); all acked, each once in "
                   f"Kafka; a subscriber received all {len(sub_msgs)} meanwhile")


def test_a_flooding_client_keeps_its_share_and_others_are_answered(gateways, dev_kafka, capsys):
    """limits.max_publishes_in_flight=200 and 200 ms of broker RTT: a client that sends
    4,000 publishes at once has at most its share (plus the requests of one read) handed
    to Kafka unanswered; the gateway stops reading from it meanwhile (TCP backpressure).
    Another client's publish is answered within a few round trips instead of behind the
    flood, and every flooded publish is acknowledged once. (An adversarial run: five
    flooders put another client's acks more than 3 s behind.)"""
    topic = dev_kafka.topic(unique("fl"), 3)
    gw = gateways.start("--set", "limits.max_publishes_in_flight=200")
    n = 4000
    dev_kafka.cmd("rtt -1 200")

    async def go():
        flood = await ws_connect(gw.url)
        answers = {}
        reader = collect_answers(flood, answers, n)
        frames = [json.dumps({"op": "publish", "id": f"f{i}", "channel": topic, "data": {"i": i, "pad": "z" * 200}})
                  for i in range(n)]
        sender = asyncio.ensure_future(asyncio.gather(*(flood.send(f) for f in frames)))
        peak = 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            peak = max(peak, metrics(gw)["publishes_in_flight"])
            await asyncio.sleep(0.05)
        other = await Client.connect(gw.url, name="other")
        t0 = time.monotonic()
        r = await other.call({"op": "publish", "channel": topic, "data": {"other": True}}, timeout=30)
        other_ack = time.monotonic() - t0
        assert r["op"] == "ack", r
        await other.close()
        await sender
        await asyncio.wait_for(reader, 120)
        await flood.close()
        return answers, peak, other_ack

    try:
        answers, peak, other_ack = run(go(), 180)
    finally:
        dev_kafka.cmd("rtt -1 0")
    assert len(answers) == n and all(a["op"] == "ack" for a in answers.values())
    recs = kafka_records(gw.bootstrap, topic, n + 1)
    ids = collections.Counter(h.get("streamotter-id") for *_, h in recs)
    assert len(recs) == n + 1 and max(v for k, v in ids.items() if k) == 1
    # 200 in flight, plus what one 64 KiB read of ~260-byte requests carries.
    assert peak <= 200 + 300, f"{peak} publishes of one connection in flight"
    report(capsys, f"a client flooding {n} publishes with limits.max_publishes_in_flight=200 and 200 ms "
                   f"broker RTT: at most {int(peak)} in flight; another client's publish acked in "
                   f"{other_ack * 1000:.0f} ms; all {n} acked, each once in Kafka")


@pytest.mark.gateway(topics={"hb": 1}, args=["--set", "ws.ping_interval_ms=500"])
def test_a_slow_large_message_is_not_cut_off_as_dead(gateway):
    """Any received byte counts as life: a 200 KB publish trickled over 3 s (3 x the idle
    timeout of 2 x 500 ms) by a client that never answers pings is received and acked."""
    topic = gateway.topic("hb")
    body = json.dumps({"op": "publish", "id": "big", "channel": topic, "data": "z" * 200_000}).encode()
    frame = encode_frame(0x1, body)  # masked in Python: slow, so before connecting
    chunks = [frame[i:i + len(frame) // 60 + 1] for i in range(0, len(frame), len(frame) // 60 + 1)]
    raw = RawWS(gateway.host, gateway.port)
    for c in chunks:
        raw.send_raw(c)
        time.sleep(0.05)
    while True:
        fr = raw.recv_frame(10)
        assert fr is not None, "closed while sending slowly"
        if fr[1] == 0x9:
            continue
        assert fr[1] == 0x1, f"unexpected frame {fr[:2]} {fr[2][:80]!r}"
        msg = json.loads(fr[2])
        break
    assert msg["op"] == "ack" and msg["id"] == "big", msg
    # and once it stops sending altogether, it is dropped after two intervals
    t0 = time.monotonic()
    code, _ = raw.recv_close(10)
    assert code == 1001 and time.monotonic() - t0 < 5
    raw.close()


def test_idle_clock_stops_while_the_gateway_holds_a_connections_input(gateways, dev_kafka):
    """With a tiny producer queue and 1 s of broker RTT, a publishing connection is held
    (not read) for several seconds, far beyond ws.idle_timeout_ms (2 x 300 ms): its
    silence is the gateway's doing, so it is not closed, and every publish is acked."""
    topic = dev_kafka.topic(unique("idle"), 1)
    gw = gateways.start("--set", "ws.ping_interval_ms=300",
                        "--set", "kafka.producer.queue.buffering.max.messages=4")
    dev_kafka.cmd("rtt -1 1000")

    async def go():
        c = await Client.connect(gw.url)
        t0 = time.monotonic()
        futs = []
        for i in range(16):
            futs.append(c.expect_reply(f"h{i}"))
            await c.send({"op": "publish", "id": f"h{i}", "channel": topic, "data": i})
        answers = await asyncio.wait_for(asyncio.gather(*futs), 60)
        elapsed = time.monotonic() - t0
        await c.close()
        return answers, elapsed, metrics(gw)

    try:
        answers, elapsed, m = run(go(), 90)
    finally:
        dev_kafka.cmd("rtt -1 0")
    assert all(a["op"] == "ack" for a in answers), answers
    assert m["publishes_held_total"] > 0
    assert elapsed > 1.2, f"the queue should have held the connection for a while ({elapsed:.1f}s)"
