"""Delivery on acknowledgement (`gateway.deliver_on_ack`, on by default).

A record published through the gateway reaches the gateway's live subscribers when Kafka
acknowledges it, ahead of the consumer's next fetch. These tests check, against kcat's
view of the topic, that this changes nothing a subscriber can see: the same records at the
same offsets with the same key, value and timestamp, in offset order with no gap and no
duplicate, also when another producer (kcat) writes to the same partition meanwhile.
"""

import asyncio
import json
import re
import threading
import urllib.request

import pytest

from conftest import run
from e2e_helpers import Client, kcat_consume, kcat_produce
from test_subscribe import assert_exact_stream


def metric(gateway, name: str) -> int:
    text = urllib.request.urlopen(f"http://{gateway.host}:{gateway.port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^streamotter_{name} (\d+)$", text, re.M)
    assert m, f"metric {name} missing from /metrics"
    return int(m.group(1))


async def publish_all(pub: Client, topic: str, n: int, window: int = 50) -> list[dict]:
    """n publishes with ids, at most `window` unacknowledged; returns the acks."""
    acks: list[dict] = []
    sem = asyncio.Semaphore(window)

    async def one(i):
        async with sem:
            acks.append(await pub.call({"op": "publish", "id": f"g{i}", "channel": topic, "key": f"k{i % 7}",
                                        "headers": {"n": str(i)}, "data": {"i": i, "src": "gateway"}}, 30))
    await asyncio.gather(*(one(i) for i in range(n)))
    return acks


def mixed_run(gateway, n_gateway: int, n_kcat: int, subscribers: int = 3):
    """Subscribers at latest; the gateway and kcat write to one partition at once."""
    topic = gateway.topic("mix")

    async def go():
        subs = [await Client.connect(gateway.url, f"sub{i}") for i in range(subscribers)]
        for s in subs:
            await s.subscribe(topic, "latest")
        pub = await Client.connect(gateway.url, "pub")
        kcat = threading.Thread(target=kcat_produce, args=(gateway.bootstrap, topic, [
            (f"x{i}", json.dumps({"i": i, "src": "kcat"}, separators=(",", ":"))) for i in range(n_kcat)]))
        kcat.start()
        acks = await publish_all(pub, topic, n_gateway)
        await asyncio.get_running_loop().run_in_executor(None, kcat.join)
        assert all(a["op"] == "ack" for a in acks), [a for a in acks if a["op"] != "ack"][:3]
        for s in subs:
            await s.wait_messages(n_gateway + n_kcat, 60)
        await asyncio.sleep(0.5)  # nothing more may come
        out = [list(s.messages) for s in subs]
        for c in subs + [pub]:
            await c.close()
        return acks, out

    acks, streams = run(go())
    records = kcat_consume(gateway.bootstrap, topic, expect=n_gateway + n_kcat)
    assert len(records) == n_gateway + n_kcat
    for i, msgs in enumerate(streams):
        assert_exact_stream(msgs, records, topic, f"sub{i}")
    by_offset = {r.offset: r for r in records}
    for a in acks:
        assert json.loads(by_offset[a["offset"]].value)["src"] == "gateway", a
    return streams


@pytest.mark.gateway(topics={"mix": 1})
def test_on_ack_and_fetched_records_interleave_exactly(gateway):
    streams = mixed_run(gateway, n_gateway=1500, n_kcat=1500)
    on_ack = metric(gateway, "deliveries_on_ack_total")
    total = metric(gateway, "deliveries_total")
    assert total == sum(len(s) for s in streams)
    # The gateway's own records went out on acknowledgement (kcat's came by fetch).
    assert on_ack > 0, "no delivery on acknowledgement"
    assert on_ack <= 3 * 1500


@pytest.mark.gateway(topics={"mix": 1}, args=["--set", "gateway.deliver_on_ack=false"])
def test_deliver_on_ack_off_uses_fetches_only(gateway):
    mixed_run(gateway, n_gateway=500, n_kcat=500, subscribers=2)
    assert metric(gateway, "deliveries_on_ack_total") == 0
    assert metric(gateway, "deliveries_total") == 2000


@pytest.mark.gateway(topics={"t": 1})
def test_on_ack_frame_is_the_fetched_frame(gateway):
    """A subscriber that was live and one that reads from earliest later get the same bytes,
    timestamp included (the embedded broker's produce responses carry a placeholder
    LogAppendTime that must not leak)."""
    topic = gateway.topic("t")

    async def go():
        live = await Client.connect(gateway.url, "live")
        await live.subscribe(topic, "latest")
        pub = await Client.connect(gateway.url, "pub")
        for i in range(20):
            r = await pub.call({"op": "publish", "id": f"p{i}", "channel": topic, "key": "k", "data": {"i": i}})
            assert r["op"] == "ack", r
        await live.wait_messages(20, 20)
        late = await Client.connect(gateway.url, "late")
        await late.subscribe(topic, "earliest")
        await late.wait_messages(20, 20)
        out = list(live.messages), list(late.messages)
        for c in (live, pub, late):
            await c.close()
        return out

    live, late = run(go())
    assert live == late
    assert metric(gateway, "deliveries_on_ack_total") >= 1
    records = kcat_consume(gateway.bootstrap, topic, expect=20)
    assert_exact_stream(live, records, topic, "live")
