"""Reconnect acceptance: a gateway subprocess is killed (-9) and restarted on the same port
while a Python-binding client is subscribed; records keep being produced straight into
Kafka meanwhile. The client reconnects by itself, resubscribes from its positions and ends
with every record exactly once. With the gateway down for good the circuit opens."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import threading
import time

import pytest
from conftest import free_port, start_dev_kafka, start_gateway, wait_until

import streamotter as so

confluent_kafka = pytest.importorskip("confluent_kafka")


def produce_direct(bootstrap: str, topic: str, values: list[dict]) -> None:
    p = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in values:
        p.produce(topic, json.dumps(v).encode(), key=str(v["n"]).encode())
    assert p.flush(15) == 0


def produce_kcat(bootstrap: str, topic: str, values: list[dict]) -> None:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        produce_direct(bootstrap, topic, values)
        return
    data = "".join(json.dumps(v) + "\n" for v in values)
    subprocess.run([kcat, "-P", "-b", bootstrap, "-t", topic], input=data, text=True, check=True, timeout=30)


def test_gateway_killed_and_restarted_then_circuit_opens():
    kafka, bootstrap = start_dev_kafka(["t:3"])
    port = free_port()
    gw = start_gateway(port, bootstrap)
    received = []
    lock = threading.Lock()
    errors = []
    opens = []
    closes = []

    def on_msg(m: so.Message):
        with lock:
            received.append((m.partition, m.offset, m.value["n"]))

    try:
        with so.Engine({"mode": "client"}) as e:
            conf = {"reconnect.initial_delay_ms": 50, "reconnect.max_delay_ms": 500,
                    "circuit.failure_threshold": 3, "circuit.cooldown_ms": 400,
                    "client.ping_interval_ms": 200, "client.connect_timeout_ms": 1000}
            c = e.client(f"ws://127.0.0.1:{port}/", conf,
                         on_open=lambda p: opens.append(time.monotonic()),
                         on_close=lambda code, r: closes.append(code),
                         on_error=lambda code, msg: errors.append((code, msg)))
            c.subscribe("t", on_msg, start="earliest").result(15)

            def count():
                with lock:
                    return len(received)

            # 1. through the gateway: 40 publishes, 40 acks, 40 messages
            acks = [c.publish("t", {"n": n}, key=f"k{n}") for n in range(40)]
            assert all(isinstance(a.result(15), so.Ack) for a in acks)
            wait_until(lambda: count() >= 40, 15, what="40 messages")

            # 2. kill -9 the gateway; keep producing straight into Kafka (and through the
            #    client, whose publishes wait for the reconnect)
            gw.kill()
            wait_until(lambda: closes, 10, what="the client's on_close")
            produce_direct(bootstrap, "t", [{"n": n} for n in range(40, 80)])
            pending = [c.publish("t", {"n": n}, key=f"k{n}") for n in range(80, 85)]
            time.sleep(0.5)  # let the client fail a few times (its circuit opens: threshold 3)
            assert c.health().state != so.OPEN

            # 3. restart on the same port: the client comes back by itself
            gw = start_gateway(port, bootstrap)
            t_restart = time.monotonic()
            wait_until(lambda: len(opens) >= 2, 15, what="the reconnect")
            print(f"\nreconnected {opens[1] - t_restart:.3f} s after the gateway restarted")
            assert all(isinstance(a.result(15), so.Ack) for a in pending)  # resent, acknowledged
            produce_kcat(bootstrap, "t", [{"n": n} for n in range(85, 100)])
            wait_until(lambda: count() >= 100, 20, what="100 messages")
            time.sleep(0.5)  # nothing more may arrive (no duplicates)
            with lock:
                got = list(received)
            values = collections.Counter(n for _, _, n in got)
            assert sorted(values) == list(range(100)), f"missing {set(range(100)) - set(values)}"
            dupes = {n: k for n, k in values.items() if k > 1}
            assert not dupes, f"delivered more than once: {dupes}"
            assert len({(p, o) for p, o, _ in got}) == len(got) == 100
            # per partition, offsets increase without a gap
            by_p = collections.defaultdict(list)
            for p, o, _ in got:
                by_p[p].append(o)
            for p, offs in by_p.items():
                assert offs == list(range(offs[0], offs[0] + len(offs))), f"partition {p}: {offs}"
            h = c.health()
            assert h.state == so.OPEN and h.reconnects >= 1

            # 4. the gateway goes away for good: after 3 failures the circuit opens
            errors.clear()
            gw.kill()
            t_kill = time.monotonic()
            wait_until(lambda: any(code == "circuit_open" for code, _ in errors), 15, what="circuit_open")
            h = wait_until(lambda: (lambda h: h if h.state == so.CIRCUIT_OPEN else None)(c.health()), 5,
                           interval=0.002, what="state CIRCUIT_OPEN")
            print(f"circuit open {time.monotonic() - t_kill:.3f} s after the kill; health {h}")
            assert h.state == so.ClientState.CIRCUIT_OPEN and h.score == 0
            assert h.consecutive_failures >= 3
            assert [code for code, _ in errors].count("connect_failed") >= 3
            c.close()
    finally:
        gw.kill()
        kafka.stop()
