"""Process lifecycle: signals, shutdown close codes, `streamotter dev-kafka`."""

import asyncio
import json
import signal
import socket
import subprocess

from conftest import run, unique
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


def test_serve_with_external_brokers_and_sigterm_acks_inflight_publishes(gateway_factory):
    """`serve --brokers` against a separate Kafka (here `streamotter dev-kafka`), so Kafka
    outlives the gateway: after SIGTERM, every record in Kafka was acked to the client and
    every ack names a record that is in Kafka."""
    dk = gateway_factory.start(command="dev-kafka", topics={"orders": 3})
    topic = dk.topic("orders")
    gw = gateway_factory.start(topics={}, args=["--brokers", dk.bootstrap])
    assert any(line == f"kafka: bootstrap.servers={dk.bootstrap}" for line in gw.proc.stdout_lines), \
        gw.proc.stdout_lines
    n = 2000

    async def go():
        c = await Client.connect(gw.url)
        replies = {f"p{i}": c.expect_reply(f"p{i}") for i in range(n)}

        async def sender():
            for i in range(n):
                try:
                    await c.send({"op": "publish", "id": f"p{i}", "channel": topic,
                                  "key": f"k{i % 7}", "data": {"i": i}})
                except Exception:
                    return i  # closed by the shutdown
                if i == 300:
                    await asyncio.wait_for(replies["p0"], 15)  # the gateway is at work:
                    gw.proc.signal(signal.SIGTERM)             # stop it mid-stream
                if i % 20 == 0:
                    await asyncio.sleep(0.001)
            return n

        task = asyncio.ensure_future(sender())
        await c.wait_for(lambda: c.closed, 30, "close after SIGTERM")
        await task
        done = {k: f.result() for k, f in replies.items() if f.done() and not f.exception()}
        return done, c

    done, c = run(go(), 60)
    assert c.close_rcvd is not None and c.close_rcvd.code == 1001, c.close_rcvd
    rc = gw.proc.wait(20)
    gw.stopped_rc = rc
    assert rc == 0, f"exit code {rc}\n{gw.diagnostics()}"
    acks = {k: r for k, r in done.items() if r["op"] == "ack"}
    print(f"[e2e] shutdown: {len(acks)} acked, {len(done) - len(acks)} refused, {n - len(done)} unanswered")
    others = {r.get("code") for r in done.values() if r["op"] != "ack"}
    assert others <= {"shutting_down"}, others
    assert acks, "no publish was acked before shutdown"
    recs = kcat_consume(dk.bootstrap, topic, expect=len(acks))
    in_kafka = {(r.partition, r.offset): json.loads(r.value)["i"] for r in recs}
    acked = {(a["partition"], a["offset"]): int(k[1:]) for k, a in acks.items()}
    assert acked.items() <= in_kafka.items(), "an acked publish is not in Kafka where its ack said"
    unacked = sorted(set(in_kafka) - set(acked))
    assert not unacked, (f"{len(unacked)} records reached Kafka but their publisher got no ack "
                         f"before the 1001 close (in-flight publishes must be acked on shutdown)")


def test_config_file(gateway_factory, tmp_path):
    topic = unique("cfg")
    cfg = tmp_path / "streamotter.conf"
    cfg.write_text(f"""# a comment
listen = 127.0.0.1:0
embedded.brokers = 1
embedded.topics = {topic}:2
ws.max_frame_size = 4096
""")
    gw = gateway_factory.start(topics={}, args=["--config", str(cfg)])
    md = kcat_metadata(gw.bootstrap, topic)
    assert len(md["brokers"]) == 1
    assert len(next(t for t in md["topics"] if t["topic"] == topic)["partitions"]) == 2

    async def go():
        c = await Client.connect(gw.url)
        ack = await c.call({"op": "publish", "channel": topic, "data": "x" * 100})
        await c.send({"op": "publish", "channel": topic, "data": "x" * 5000})  # > 4096
        await c.wait_for(lambda: c.closed, 10, "close 1009")
        return ack, c

    ack, c = run(go(), 30)
    assert ack["op"] == "ack"
    assert c.close_rcvd is not None and c.close_rcvd.code == 1009, c.close_rcvd


def test_bad_arguments_exit_nonzero_with_a_message(streamotter_bin):
    for args in (["serve", "--set", "no.such.key=1"], ["serve", "--listen", "nonsense"],
                 ["serve", "--topic", "t:zero"], ["no-such-command"]):
        cp = subprocess.run([streamotter_bin] + args, capture_output=True, timeout=20)
        assert cp.returncode != 0, (args, cp)
        assert cp.stderr.strip(), (args, "no message on stderr")
