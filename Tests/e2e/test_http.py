"""HTTP on the gateway's port, spoken with raw sockets."""

import asyncio
import base64
import json
import os

import pytest

from conftest import run
from e2e_helpers import Client, http_exchange


def get(gw, target: str, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return (method + b" " + target.encode() + b" HTTP/1.1\r\nHost: " +
            f"{gw.host}:{gw.port}".encode() + b"\r\n" + extra + b"\r\n")


def upgrade_headers(version: bytes = b"13", protocols: bytes | None = b"streamotter.v1") -> bytes:
    h = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
         b"Sec-WebSocket-Version: " + version + b"\r\n")
    if protocols is not None:
        h += b"Sec-WebSocket-Protocol: " + protocols + b"\r\n"
    return h


def test_healthz(gateway):
    status, headers, body, raw = http_exchange(gateway.host, gateway.port, get(gateway, "/healthz"))
    assert status == 200, raw
    doc = json.loads(body)
    assert doc["status"] == "ok", doc
    if "content-length" in headers:
        assert int(headers["content-length"]) == len(body), raw


def test_healthz_http10(gateway):
    req = b"GET /healthz HTTP/1.0\r\n\r\n"
    status, _, body, raw = http_exchange(gateway.host, gateway.port, req)
    assert status == 200, raw
    assert json.loads(body)["status"] == "ok"


def test_metrics(gateway):
    status, headers, body, raw = http_exchange(gateway.host, gateway.port, get(gateway, "/metrics"))
    assert status == 200, raw
    assert headers.get("content-type", "").startswith("text/plain"), raw[:300]
    text = body.decode()
    # Prometheus text: every non-comment line is "name[{labels}] value"
    samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert samples, f"no samples in /metrics: {text[:500]!r}"
    for ln in samples:
        rest = ln[ln.rindex("}") + 1:] if "}" in ln else ln.split(None, 1)[1]
        float(rest.split()[0])  # value parses as a float (+Inf/NaN included)


def test_unknown_path_404(gateway):
    status, _, _, raw = http_exchange(gateway.host, gateway.port, get(gateway, "/no/such/thing"))
    assert status == 404, raw


def test_non_upgrade_get_root_is_4xx(gateway):
    status, _, _, raw = http_exchange(gateway.host, gateway.port, get(gateway, "/"))
    assert status is not None and 400 <= status < 500, raw


def test_wrong_method_405(gateway):
    req = get(gateway, "/healthz", extra=b"Content-Length: 0\r\n", method=b"POST")
    status, _, _, raw = http_exchange(gateway.host, gateway.port, req)
    assert status == 405, raw


def test_wrong_websocket_version_426(gateway):
    status, headers, _, raw = http_exchange(
        gateway.host, gateway.port, get(gateway, "/", upgrade_headers(version=b"8")))
    assert status == 426, raw
    assert headers.get("sec-websocket-version") == "13", raw


def test_unsupported_subprotocol_400(gateway):
    status, headers, _, raw = http_exchange(
        gateway.host, gateway.port, get(gateway, "/", upgrade_headers(protocols=b"mqtt, chat")))
    assert status == 400, raw
    assert "sec-websocket-accept" not in headers, raw


def test_bad_websocket_key_400(gateway):
    h = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
         b"Sec-WebSocket-Version: 13\r\n")
    status, _, _, raw = http_exchange(gateway.host, gateway.port, get(gateway, "/", h))
    assert status == 400, raw


def test_oversized_headers_431(gateway):
    # 40 KiB of header fields: over any sane head limit (the parser's default is 8 KiB).
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
    status, _, _, raw = http_exchange(gateway.host, gateway.port, get(gateway, "/healthz", big),
                                      ignore_send_errors=True)
    assert status == 431, raw[:300]


def test_malformed_request_400(gateway):
    status, _, _, raw = http_exchange(gateway.host, gateway.port,
                                      b"GET /healthz HTTP/1.1\r\nthis line has no colon\r\n\r\n")
    assert status == 400, raw


def test_upgrade_without_subprotocol_and_on_other_path(gateway):
    """No subprotocol offered: accepted (none selected); any path upgrades."""
    topic = gateway.topic("t1")

    async def go():
        c = await Client.connect(gateway.url + "v1", subprotocols=None)
        assert c.ws.subprotocol is None
        ack = await c.call({"op": "publish", "channel": topic, "data": {"x": 1}})
        assert ack["op"] == "ack", ack
        await c.close()

    run(go(), 30)


def test_permessage_deflate_offer_is_safe(gateway):
    """A client offering permessage-deflate (the default of most libraries) works whether
    or not the server accepts the extension."""
    topic = gateway.topic("t1")

    async def go():
        c = await Client.connect(gateway.url, compression="deflate")
        await c.subscribe(topic, "latest")
        payload = {"text": "otter " * 200}
        ack = await c.call({"op": "publish", "channel": topic, "key": "k", "data": payload})
        assert ack["op"] == "ack", ack
        msgs = await c.wait_messages(1, 20)
        assert msgs[0]["data"] == payload
        await c.close()

    run(go(), 30)


def test_metrics_and_healthz_cover_every_engine(gateway_factory):
    """With --engines 2 the kernel hands each HTTP request to one engine; each answers for
    the whole process (its own figures plus the others' snapshots, at most 500 ms old)."""
    gw = gateway_factory.start(topics={"m": 3}, args=["--engines", "2"])
    topic = gw.topic("m")
    conns, per_conn = 16, 5

    async def go():
        clients = [await Client.connect(gw.url, f"c{i}") for i in range(conns)]
        for c in clients:
            for j in range(per_conn):
                r = await c.call({"op": "publish", "id": f"{c.name}-{j}", "channel": topic, "data": {"j": j}})
                assert r["op"] == "ack", r
        await asyncio.sleep(1.2)  # two snapshot periods
        seen = []
        for _ in range(12):  # fresh TCP connections: both engines get some of them
            status, _, body, raw = http_exchange(gw.host, gw.port, get(gw, "/metrics"))
            assert status == 200, raw
            vals = {}
            for ln in body.decode().splitlines():
                if ln.startswith("streamotter_"):
                    name, v = ln.split()
                    vals[name] = int(v)
            status, _, hbody, raw = http_exchange(gw.host, gw.port, get(gw, "/healthz"))
            assert status == 200, raw
            seen.append((vals["streamotter_connections_open"], vals["streamotter_publish_acks_total"],
                         vals["streamotter_publishes_total"], json.loads(hbody)["connections"]))
        for c in clients:
            await c.close()
        return seen

    seen = run(go())
    assert all(s == (conns, conns * per_conn, conns * per_conn, conns) for s in seen), seen


@pytest.mark.parametrize("engines", [1, 2])
def test_engines_on_the_embedded_kafka_report_it_and_fetch_without_the_long_wait(gateway_factory, engines):
    """One engine, or --engines 2 sharing one embedded broker: each engine must treat the
    embedded Kafka as embedded: /healthz says so, and records written by another producer
    (kcat, confluent-kafka) arrive without the 500 ms that the mock broker holds a fetch
    under librdkafka's default fetch.wait.max.ms (it holds an empty fetch for the whole
    wait even when records arrive). A fresh-clone trial found both wrong with N > 1, and
    the first fix lost the short wait for a single engine."""
    import statistics
    import time
    import websockets
    from nl_support import produce_paced

    gw = gateway_factory.start(topics={"e": 3}, args=["--engines", str(engines)])
    topic = gw.topic("e")
    for _ in range(8):  # fresh TCP connections: both engines answer some of them
        status, _, body, raw = http_exchange(gw.host, gw.port, get(gw, "/healthz"))
        assert status == 200, raw
        assert json.loads(body)["kafka"] == "embedded", body

    n = 30

    async def go():
        subs = []
        for i in range(6):  # connections spread over both engines by the kernel
            ws = await websockets.connect(gw.url, subprotocols=["streamotter.v1"])
            await ws.send(json.dumps({"op": "subscribe", "id": "s", "channel": topic, "from": "latest"}))
            ok = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert ok["op"] == "ok", ok
            subs.append(ws)
        await asyncio.sleep(0.5)
        producer = asyncio.get_running_loop().run_in_executor(None, produce_paced, gw.bootstrap, topic, n, 20)
        lat = []

        async def read(ws):
            got = 0
            while got < n:
                m = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if m["op"] == "message":
                    lat.append(time.time() - m["data"]["t"])
                    got += 1

        await asyncio.gather(*(read(ws) for ws in subs))
        await producer
        for ws in subs:
            await ws.close()
        return lat

    lat = run(go(), 60)
    assert len(lat) == 6 * n
    # With the mock's 500 ms hold the median is about 250 ms; with the embedded wait (5 ms)
    # it is a few ms. 100 ms leaves a loaded machine room without hiding the long wait.
    assert statistics.median(lat) < 0.1, f"median delivery {statistics.median(lat) * 1000:.0f} ms"
