"""Process lifecycle: signals, shutdown close codes, `streamotter dev-kafka`."""

import asyncio
import signal
import socket

from conftest import run
from e2e_helpers import Client, RawWS, kcat_consume, kcat_metadata, kcat_produce, recv_json_frame


def test_sigterm_closes_clients_with_1001_and_exits_0(gateway_factory):
    gw = gateway_factory.start(topics={"t1": 1})
    topic = gw.topic("t1")
    raw = RawWS(gw.host, gw.port)
    raw.send_text({"op": "subscribe", "id": "s", "channel": topic})
    assert recv_json_frame(raw)["op"] == "ok"

    async def go():
        clients = [await Client.connect(gw.url, name=f"c{i}") for i in range(3)]
        await clients[0].subscribe(topic)
        ack = await clients[1].call({"op": "publish", "channel": topic, "key": "k", "data": 1})
        assert ack["op"] == "ack", ack
        await clients[0].wait_messages(1, 15)
        gw.proc.signal(signal.SIGTERM)
        for c in clients:
            await c.wait_for(lambda: c.closed, 15, "close after SIGTERM")
        return clients

    clients = run(go(), 40)
    for c in clients:
        assert c.close_rcvd is not None, f"{c.name}: no Close frame from the server ({c.close_error!r})"
        assert c.close_rcvd.code == 1001, f"{c.name}: close {c.close_rcvd}"
    # the raw client sees the Close 1001 frame bytes (after the message it was sent), then EOF
    code, _ = raw.recv_close(10, skip_data=True)
    assert code == 1001
    raw.expect_eof(5)
    raw.close()
    rc = gw.proc.wait(20)
    assert rc == 0, f"exit code {rc} after SIGTERM\n{gw.diagnostics()}"
    gw.stopped_rc = rc
    try:
        socket.create_connection((gw.host, gw.port), timeout=2).close()
        raise AssertionError("port still accepting after exit")
    except ConnectionRefusedError:
        pass


def test_sigint_exits_0(gateway_factory):
    gw = gateway_factory.start(topics={})

    async def go():
        c = await Client.connect(gw.url)
        gw.proc.signal(signal.SIGINT)
        await c.wait_for(lambda: c.closed, 15, "close after SIGINT")
        return c

    c = run(go(), 30)
    assert c.close_rcvd is not None and c.close_rcvd.code == 1001, c.close_rcvd
    rc = gw.proc.wait(20)
    gw.stopped_rc = rc
    assert rc == 0, f"exit code {rc} after SIGINT\n{gw.diagnostics()}"


def test_dev_kafka_serves_metadata_and_records(gateway_factory, kcat_bin):
    dk = gateway_factory.start(command="dev-kafka", topics={"t": 2}, unique_topics=False)
    assert dk.url is None
    md = kcat_metadata(dk.bootstrap)
    assert len(md["brokers"]) == 3, md["brokers"]
    topics = {t["topic"]: t for t in md["topics"]}
    assert "t" in topics, list(topics)
    assert not topics["t"].get("error"), topics["t"]
    assert sorted(p["partition"] for p in topics["t"]["partitions"]) == [0, 1], topics["t"]

    kcat_produce(dk.bootstrap, "t", [(f"k{i}", f"v{i}") for i in range(20)])
    recs = kcat_consume(dk.bootstrap, "t", expect=20)
    assert sorted(r.value for r in recs) == sorted(f"v{i}".encode() for i in range(20))
    assert {r.partition for r in recs} <= {0, 1}

    rc = dk.stop()
    assert rc == 0, f"dev-kafka exit code {rc}\n{dk.diagnostics()}"


def test_dev_kafka_brokers_option(gateway_factory, kcat_bin):
    dk = gateway_factory.start(command="dev-kafka", topics={"one": 1}, args=["--brokers", "1"])
    md = kcat_metadata(dk.bootstrap)
    assert len(md["brokers"]) == 1, md["brokers"]
    assert dk.bootstrap.count(",") == 0, dk.bootstrap
    assert dk.stop() == 0
