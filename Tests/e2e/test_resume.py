"""Resume and replay (docs/semantics.md, "Server to client" and "Replay").

Records come from independent producers (confluent-kafka, kcat); subscribers are Python
`websockets` clients that keep their own positions from the messages they received.
"""

import asyncio
import collections
import json
import random
import time

import pytest

from conftest import run
from e2e_helpers import Client, kcat_consume, kcat_produce, ws_connect
from nl_support import *  # noqa: F401,F403  (fixtures: dev_kafka, gateways)
from nl_support import kafka_records, metrics, produce_paced, report


def by_partition(msgs):
    got = collections.defaultdict(list)
    for m in msgs:
        got[m["partition"]].append(m["offset"])
    return got


def assert_exactly_once_in_order(got: dict, ends: dict, who: str):
    """got[p] must be exactly [start..end) in order for every partition."""
    for p, end in ends.items():
        g = got.get(p, [])
        if g != list(range(end)):
            dups = [o for o, c in collections.Counter(g).items() if c > 1]
            missing = sorted(set(range(end)) - set(g))
            raise AssertionError(f"{who}: partition {p}: {len(g)} offsets, want {end}; "
                                 f"duplicates {dups[:10]} missing {missing[:10]} "
                                 f"in order {g == sorted(g)}")


@pytest.mark.gateway(topics={"cut": 3})
def test_subscriber_cut_every_100ms_gets_20000_records_exactly_once_in_order(gateway, capsys):
    """Acceptance: a subscriber's TCP connection is cut (no Close) every ~100 ms while
    20,000 records stream through a 3-partition topic. It reconnects with the positions
    of the messages it processed and ends with each record exactly once, in offset order
    per partition."""
    topic = gateway.topic("cut")
    n, rate = 20_000, 5_000
    rng = random.Random(4)

    async def subscriber():
        pos = {0: 0, 1: 0, 2: 0}
        got = collections.defaultdict(list)
        connections, errors = 0, []
        t0 = time.monotonic()
        while sum(len(v) for v in got.values()) < n:
            assert time.monotonic() - t0 < 90, f"stalled at {sum(len(v) for v in got.values())}"
            ws = await ws_connect(gateway.url)
            connections += 1
            frm = {"offsets": {str(p): o for p, o in pos.items()}}
            await ws.send(json.dumps({"op": "subscribe", "id": "s", "channel": topic, "from": frm}))
            cut_at = time.monotonic() + rng.uniform(0.05, 0.15)
            try:
                while True:
                    left = cut_at - time.monotonic()
                    if left <= 0:
                        break
                    msg = json.loads(await asyncio.wait_for(ws.recv(), left))
                    if msg["op"] == "message":
                        p, o = msg["partition"], msg["offset"]
                        got[p].append(o)
                        pos[p] = o + 1
                    elif msg["op"] == "error":
                        errors.append(msg)
            except asyncio.TimeoutError:
                pass
            ws.transport.abort()  # a cut: no Close frame, the gateway sees a reset/EOF
        return got, connections, errors, time.monotonic() - t0

    async def go():
        prod = asyncio.ensure_future(asyncio.to_thread(produce_paced, gateway.bootstrap, topic, n, rate))
        got, connections, errors, elapsed = await subscriber()
        await prod
        return got, connections, errors, elapsed, prod.result()

    got, connections, errors, elapsed, produce_s = run(go(), 150)
    assert not errors, errors[:3]
    ends = {p: len(v) for p, v in got.items()}
    recs = kafka_records(gateway.bootstrap, topic, n)
    kafka_ends = collections.Counter(r[0] for r in recs)
    assert dict(kafka_ends) == ends, (kafka_ends, ends)
    assert_exactly_once_in_order(got, ends, "cut subscriber")
    m = metrics(gateway)
    report(capsys, f"cut every ~100 ms: {n} records over 3 partitions produced in {produce_s:.1f}s, "
                   f"received exactly once in order over {connections} connections in {elapsed:.1f}s "
                   f"(replayed {int(m.get('replay_messages_total', 0))} of them through the replay lane)")
    assert connections >= 20


# The mock broker answers an empty fetch only after fetch.wait.max.ms (no long-poll wake-up),
# so live latency is measured with a short wait.
FAST_FETCH = ["--set", "kafka.consumer.fetch.wait.max.ms=10"]


@pytest.mark.gateway(topics={"rr": 1}, args=["--set", "gateway.replay_rate=4000", *FAST_FETCH])
def test_replay_is_rate_bounded_and_does_not_delay_live_subscribers(gateway, capsys):
    """A client replaying 12,000 records from earliest gets them at no more than
    gateway.replay_rate (+ one burst of a tenth of a second); a live subscriber on the
    same partition keeps its latency meanwhile."""
    topic = gateway.topic("rr")
    history = 12_000
    kcat_produce(gateway.bootstrap, topic, [(f"h{i}", json.dumps({"h": i})) for i in range(history)])
    from confluent_kafka import Producer
    prod = Producer({"bootstrap.servers": gateway.bootstrap, "linger.ms": 0, "acks": "all"})

    def produce_one(i):
        prod.produce(topic, key=f"live{i}", value=json.dumps({"live": i}))
        prod.flush(10)

    async def live_latencies(live, count, base):
        lats = []
        for i in range(count):
            sent = time.monotonic()
            await asyncio.to_thread(produce_one, base + i)
            await live.wait_messages(base + i + 1, 10)
            lats.append(time.monotonic() - sent)
        return lats

    async def when_count(c, n):
        while len(c.messages) < n:
            await asyncio.sleep(0.005)
        return time.monotonic()

    async def go():
        live = await Client.connect(gateway.url, name="live")
        await live.subscribe(topic, "latest")
        lat_before = await live_latencies(live, 150, 0)
        replayer = await Client.connect(gateway.url, name="replayer")
        t0 = time.monotonic()
        await replayer.subscribe(topic, "earliest")
        done = asyncio.ensure_future(when_count(replayer, history))
        lat_during = await live_latencies(live, 300, 150)
        replay_s = await asyncio.wait_for(done, 60) - t0
        await replayer.wait_messages(history + 450, 30)
        await asyncio.sleep(0.3)
        await live.close()
        await replayer.close()
        return lat_before, lat_during, replay_s, replayer.messages, live.messages

    try:
        lat_before, lat_during, replay_s, rmsgs, lmsgs = run(go(), 120)
    finally:
        prod.flush(5)
        del prod  # no reconnect attempts to a stopped gateway's Kafka after the test
    offs = [m["offset"] for m in rmsgs]
    assert offs == list(range(history + 450)), "replayer: not exactly every record in order"
    assert [m["offset"] for m in lmsgs] == list(range(history, history + 450)), "live subscriber lost records"
    rate = history / replay_s
    p50 = lambda xs: sorted(xs)[len(xs) // 2] * 1000
    p99 = lambda xs: sorted(xs)[int(len(xs) * 0.99)] * 1000
    report(capsys, f"replay of {history} records at replay_rate=4000/s took {replay_s:.2f}s "
                   f"({rate:.0f} msg/s); live latency (produce->receive, {len(lat_during)} records) "
                   f"p50 {p50(lat_before):.1f} ms p99 {p99(lat_before):.1f} ms before, "
                   f"p50 {p50(lat_during):.1f} ms p99 {p99(lat_during):.1f} ms during the replay")
    # bounded: 4000/s plus one burst of 400 cannot deliver 12,000 in under ~2.9 s
    assert replay_s >= (history - 400) / 4000 * 0.95, f"replay too fast: {rate:.0f} msg/s"


@pytest.mark.gateway(topics={"rng": 1})
def test_positions_deleted_by_retention_get_offset_out_of_range_at_subscribe(gateway):
    """The embedded Kafka keeps at most 5 MiB per partition (like retention); a resume
    from a position that was deleted is refused with offset_out_of_range, never served
    from somewhere else."""
    topic = gateway.topic("rng")
    kcat_produce(gateway.bootstrap, topic, [(f"k{i}", f"{i:06d}" + "x" * 1994) for i in range(4000)])
    first = kcat_consume(gateway.bootstrap, topic)[0].offset
    assert first > 0, "the mock should have dropped the oldest records past 5 MiB"

    async def go():
        c = await Client.connect(gateway.url)
        bad = await c.call({"op": "subscribe", "channel": topic, "from": {"offsets": {"0": 0}}})
        good = await c.call({"op": "subscribe", "channel": topic, "from": {"offsets": {"0": first}}})
        await c.wait_messages(4000 - first, 30)
        await c.close()
        return bad, good, c.messages

    bad, good, msgs = run(go(), 60)
    assert bad["op"] == "error" and bad["code"] == "offset_out_of_range", bad
    assert good["op"] == "ok", good
    assert [m["offset"] for m in msgs] == list(range(first, 4000))


@pytest.mark.gateway(topics={"off": 2})
def test_replay_from_offsets_is_exact(gateway):
    """From given offsets per partition (the others from their end): exactly the rest.

    (From a timestamp is not checked here: librdkafka 2.0.2's mock cluster answers every
    timestamp lookup with "no offset", so the gateway starts at the end; test_subscribe
    covers that case. It is untested against a real broker.)"""
    topic = gateway.topic("off")
    kcat_produce(gateway.bootstrap, topic, [(f"a{i}", json.dumps({"a": i})) for i in range(1000)])
    recs = kafka_records(gateway.bootstrap, topic, 1000)
    ends = collections.Counter(r[0] for r in recs)

    async def go():
        c2 = await Client.connect(gateway.url)
        await c2.subscribe(topic, {"offsets": {"0": 10, "1": 20}})
        await c2.wait_messages(1000 - 30, 30)
        c3 = await Client.connect(gateway.url)
        await c3.subscribe(topic, {"offsets": {"1": 5}})
        await c3.wait_messages(ends[1] - 5, 30)
        await asyncio.sleep(0.3)
        await c2.close()
        await c3.close()
        return c2.messages, c3.messages

    m2, m3 = run(go(), 60)
    got = by_partition(m2)
    assert got[0] == list(range(10, ends[0])) and got[1] == list(range(20, ends[1]))
    assert by_partition(m3) == {1: list(range(5, ends[1]))}


def test_resend_with_same_id_is_answered_with_the_original_ack(gateways, dev_kafka, capsys):
    """A resend of the same publish (same channel, id and content) gets the original ack
    and creates no second record, whether the first is still in flight (slowed with 400 ms
    of broker RTT) or already acknowledged, and also from another connection. The id
    travels as the `streamotter-id` header."""
    topic = dev_kafka.topic(unique("dd"), 3)
    gw = gateways.start()

    async def go():
        a = await Client.connect(gw.url, name="a")
        b = await Client.connect(gw.url, name="b")
        req = {"op": "publish", "channel": topic, "key": "k", "data": {"v": 1}}
        first = await a.call(dict(req, id="order-1"))
        again = await b.call(dict(req, id="order-1"))  # after a reconnect: another connection
        other = await a.call(dict(req, id="order-1", data={"v": 2}))  # same id, other content
        dev_kafka.cmd("rtt -1 400")
        fa = a.expect_reply("order-2")
        await a.send(dict(req, id="order-2", data={"v": 3}))
        await asyncio.sleep(0.05)
        fb = b.expect_reply("order-2")
        await b.send(dict(req, id="order-2", data={"v": 3}))  # resend while in flight
        inflight = await asyncio.gather(fa, fb)
        dev_kafka.cmd("rtt -1 0")
        await a.close()
        await b.close()
        return first, again, other, inflight

    first, again, other, (ia, ib) = run(go(), 60)
    assert first["op"] == "ack" and again == first, (first, again)
    assert other["op"] == "ack", other
    assert (other["partition"], other["offset"]) != (first["partition"], first["offset"]), "same id, other content: a new record"
    assert ia["op"] == "ack" and ib == ia, (ia, ib)
    recs = kafka_records(gw.bootstrap, topic, 3)
    ids = collections.Counter(r[4].get("streamotter-id") for r in recs)
    assert len(recs) == 3 and ids == {"order-1": 2, "order-2": 1}, recs
    pos = {(r[0], r[1]): r for r in recs}
    assert json.loads(pos[(first["partition"], first["offset"])][3]) == {"v": 1}
    m = metrics(gw)
    assert m["publish_dedupe_hits_total"] == 2, m
    report(capsys, "resends answered from the dedupe window: 2 (one acknowledged, one in flight "
                   "with 400 ms broker RTT); Kafka holds one record per (id, content)")
