"""Publishing through the gateway, checked from the Kafka side with kcat and confluent-kafka."""

import asyncio
import collections
import json
import time

import pytest

from conftest import run
from e2e_helpers import Client, java_partition, kcat_consume, kcat_run, murmur2


def kcat_headers(bootstrap: str, topic: str) -> dict[tuple[int, int], str]:
    cp = kcat_run(bootstrap, ["-C", "-t", topic, "-e", "-q", "-o", "beginning",
                              "-f", "%p %o %h\n"])
    assert cp.returncode == 0, cp.stderr
    out = {}
    for line in cp.stdout.decode().splitlines():
        p, o, h = (line.split(" ", 2) + [""])[:3]
        out[(int(p), int(o))] = h
    return out


def test_publish_ack_then_kafka_has_record(gateway):
    topic = gateway.topic("t3")
    # Sent with insignificant whitespace: the record value must be the compact JSON text.
    text = ('{"op":"publish","id":"p1","channel":"%s","key":"order-17",'
            '"headers":{"h":"v","trace":"abc"},'
            '"data": { "b" : [1, 2, {"c":"d"}], "a":"x y", "u":"\u00e9\u6f22", "n":null } }' % topic)

    async def go():
        c = await Client.connect(gateway.url)
        assert c.ws.subprotocol == "streamotter.v1"
        fut = c.expect_reply("p1")
        await c.send(text)
        ack = await asyncio.wait_for(fut, 15)
        await c.close()
        return ack

    ack = run(go(), 30)
    assert ack["op"] == "ack", ack
    assert ack["id"] == "p1" and ack["channel"] == topic, ack
    assert isinstance(ack["partition"], int) and isinstance(ack["offset"], int), ack
    assert ack["partition"] == java_partition(b"order-17", 3), ack
    assert ack["offset"] == 0, ack

    # The ack came after Kafka acknowledged, so the record is readable right now (no retry).
    recs = kcat_consume(gateway.bootstrap, topic)
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r.partition, r.offset) == (ack["partition"], ack["offset"])
    assert r.key == b"order-17"
    assert r.value == '{"b":[1,2,{"c":"d"}],"a":"x y","u":"\u00e9\u6f22","n":null}'.encode(), r.value
    assert r.timestamp > 0
    hdrs = kcat_headers(gateway.bootstrap, topic)
    # the publish id travels as the streamotter-id header, after the client's headers
    assert hdrs[(r.partition, r.offset)] == "h=v,trace=abc,streamotter-id=p1", hdrs


def test_publish_data_forms_and_no_key(gateway):
    topic = gateway.topic("t1")
    forms = [None, 42, -1.5e3, "s \"q\"", [1, [2, {}]], True, {}]

    async def go():
        c = await Client.connect(gateway.url)
        acks = []
        for d in forms:
            acks.append(await c.call({"op": "publish", "channel": topic, "data": d}))
        # a publish without id is acked too (without id)
        await c.send({"op": "publish", "channel": topic, "data": "no-id"})
        await c.wait_for(lambda: c.unsolicited, 15, "ack of publish without id")
        await c.close()
        return acks, c.unsolicited

    acks, unsolicited = run(go(), 30)
    assert all(a["op"] == "ack" for a in acks), acks
    assert [a["offset"] for a in acks] == list(range(len(forms))), acks
    assert unsolicited[0]["op"] == "ack" and "id" not in unsolicited[0], unsolicited
    recs = kcat_consume(gateway.bootstrap, topic, expect=len(forms) + 1)
    assert [r.key for r in recs] == [None] * (len(forms) + 1)
    assert [json.loads(r.value) for r in recs] == forms + ["no-id"]
    assert recs[1].value == b"42" and recs[4].value == b"[1,[2,{}]]"


def test_concurrent_publishers_10x1000(gateway, capsys):
    topic = gateway.topic("t3")
    clients_n, per_client = 10, 1000

    async def publisher(ci: int):
        c = await Client.connect(gateway.url, name=f"pub{ci}")
        futs = []
        for seq in range(per_client):
            rid = f"c{ci}-{seq}"
            futs.append(c.expect_reply(rid))
            await c.send({"op": "publish", "id": rid, "channel": topic, "key": f"client-{ci}",
                          "data": {"client": ci, "seq": seq}})
        acks = await asyncio.wait_for(asyncio.gather(*futs), 60)
        await c.close()
        return acks

    async def go():
        return await asyncio.gather(*(publisher(i) for i in range(clients_n)))

    t0 = time.monotonic()
    all_acks = run(go(), 90)
    elapsed = time.monotonic() - t0
    total = clients_n * per_client
    with capsys.disabled():
        print(f"\n[e2e] {total} publishes from {clients_n} websockets clients acked in "
              f"{elapsed:.2f}s ({total / elapsed:,.0f} msg/s)")

    bad = [a for acks in all_acks for a in acks if a.get("op") != "ack"]
    assert not bad, f"{len(bad)} publishes not acked, e.g. {bad[:3]}"
    ack_pos = {}
    for ci, acks in enumerate(all_acks):
        parts = {a["partition"] for a in acks}
        assert parts == {java_partition(f"client-{ci}".encode(), 3)}, (ci, parts)
        offs = [a["offset"] for a in acks]
        assert offs == sorted(offs) and len(set(offs)) == len(offs), f"client {ci}: acks out of order"
        for seq, a in enumerate(acks):
            ack_pos[(ci, seq)] = (a["partition"], a["offset"])

    recs = kcat_consume(gateway.bootstrap, topic, expect=total, timeout=60)
    assert len(recs) == total, f"kcat sees {len(recs)} records, want {total}"
    seen = collections.Counter()
    per_key = collections.defaultdict(list)
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        d = json.loads(r.value)
        assert r.key == f"client-{d['client']}".encode(), r
        seen[(d["client"], d["seq"])] += 1
        per_key[r.key].append(d["seq"])
        assert ack_pos[(d["client"], d["seq"])] == (r.partition, r.offset), r
    dup = [k for k, n in seen.items() if n != 1]
    assert not dup and len(seen) == total, f"duplicates: {dup[:5]}"
    for key, seqs in per_key.items():
        assert seqs == list(range(per_client)), f"{key}: publish order broken"


def test_murmur2_matches_kafka_vectors():
    # Vectors from Kafka's UtilsTest.testMurmur2
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             bytes([ord("a"), ord("b"), ord("c")]): 479470107}
    for k, want in cases.items():
        assert murmur2(k) == want, k


@pytest.mark.gateway(topics={"m3": 3})
def test_keyed_publish_lands_on_java_murmur2_partition(gateway):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    topic = gateway.topic("m3")
    keys = [f"user-{i}" for i in range(40)] + ["21", "foobar", "\u00e9t\u00e9", "a" * 300]

    async def go():
        c = await Client.connect(gateway.url)
        acks = {}
        for k in keys:
            acks[k] = await c.call({"op": "publish", "channel": topic, "key": k, "data": {"k": k}})
        await c.close()
        return acks

    acks = run(go(), 60)
    want = {k: java_partition(k.encode(), 3) for k in keys}
    assert len(set(want.values())) == 3, "keys should cover all partitions"
    got = {k: a.get("partition") for k, a in acks.items()}
    assert got == want, {k: (got[k], want[k]) for k in keys if got[k] != want[k]}

    # Peer 1: librdkafka's own murmur2_random partitioner (via confluent-kafka) agrees.
    parts = {}
    p = confluent_kafka.Producer({"bootstrap.servers": gateway.bootstrap,
                                  "partitioner": "murmur2_random"})
    for k in keys:
        p.produce(topic, key=k.encode(), value=b"peer",
                  on_delivery=lambda err, m: parts.__setitem__(m.key().decode(), (err, m.partition())))
    assert p.flush(30) == 0
    assert {k: v[1] for k, v in parts.items()} == want
    assert all(v[0] is None for v in parts.values())

    # Peer 2: a confluent-kafka consumer reads each gateway record in its expected partition.
    cons = confluent_kafka.Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": "e2e-m2",
                                     "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        cons.assign([confluent_kafka.TopicPartition(topic, i, confluent_kafka.OFFSET_BEGINNING)
                     for i in range(3)])
        found, eof = {}, set()
        deadline = time.monotonic() + 30
        while len(eof) < 3 and time.monotonic() < deadline:
            m = cons.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise AssertionError(m.error())
            if m.value() != b"peer":
                found[m.key().decode()] = m.partition()
    finally:
        cons.close()
    assert found == want


def test_large_message_roundtrip_and_over_limit_close(gateway):
    """A ~900 KB publish (under the 1 MiB default limits) is acked and delivered whole
    (server frames with 64-bit lengths); a 1.1 MB one closes the connection with 1009."""
    topic = gateway.topic("t1")
    big = {"blob": "".join(chr(0x61 + i % 26) for i in range(900_000)), "u": "\u00e9" * 1000}

    async def go():
        sub = await Client.connect(gateway.url, name="sub")
        await sub.subscribe(topic)
        pub = await Client.connect(gateway.url, name="pub")
        ack = await pub.call({"op": "publish", "channel": topic, "key": "big", "data": big}, 30)
        await sub.wait_messages(1, 30)
        await pub.send({"op": "publish", "channel": topic, "data": "x" * 1_100_000})
        await pub.wait_for(lambda: pub.closed, 15, "close 1009")
        await sub.close()
        return ack, sub.messages[0], pub

    ack, msg, pub = run(go(), 60)
    assert ack["op"] == "ack", ack
    assert msg["data"] == big and msg["key"] == "big"
    assert pub.close_rcvd is not None and pub.close_rcvd.code == 1009, pub.close_rcvd
    recs = kcat_consume(gateway.bootstrap, topic, expect=1)
    assert len(recs) == 1 and json.loads(recs[0].value) == big


def test_one_connection_many_channels(gateway):
    a, b = gateway.topic("t1"), gateway.topic("t3")

    async def go():
        c = await Client.connect(gateway.url)
        await c.subscribe(a)
        await c.subscribe(b)
        for i in range(30):
            await c.call({"op": "publish", "channel": a if i % 2 else b, "key": f"k{i}", "data": i})
        await c.wait_messages(30, 20)
        await c.close()
        return c.messages

    msgs = run(go(), 40)
    assert sorted(m["data"] for m in msgs if m["channel"] == a) == list(range(1, 30, 2))
    assert sorted(m["data"] for m in msgs if m["channel"] == b) == list(range(0, 30, 2))


def test_publish_retry_with_same_id_is_written_once(gateway):
    topic = gateway.topic("t3")
    req = {"op": "publish", "id": "order-42", "channel": topic, "key": "c1",
           "headers": {"h": "v", "streamotter-id": "forged"}, "data": {"n": 1}}

    async def go():
        c = await Client.connect(gateway.url)
        first = await c.call(req)
        await c.close()
        c2 = await Client.connect(gateway.url)  # the retry comes after a reconnect
        again = await c2.call(req)
        changed = await c2.call(dict(req, data={"n": 2}))  # same id, other content: new record
        await c2.close()
        return first, again, changed

    first, again, changed = run(go(), 30)
    assert first["op"] == "ack" and again == first, (first, again)
    assert changed["op"] == "ack" and changed["offset"] != first["offset"], changed
    recs = kcat_consume(gateway.bootstrap, topic, expect=2)
    assert sorted(json.loads(r.value)["n"] for r in recs) == [1, 2], recs
    hdrs = kcat_headers(gateway.bootstrap, topic)
    assert hdrs[(first["partition"], first["offset"])] == "h=v,streamotter-id=order-42", hdrs
