"""RFC 6455 on the wire: hand-made bytes from raw sockets, the server's frames parsed here."""

import json
import os
import socket
import struct
import time

import pytest

from conftest import run
from e2e_helpers import (Client, RawWS, close_payload, encode_frame, http_exchange,
                         recv_json_frame, recv_until_eof)

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def gateway_still_serves(gw):
    """/healthz answers and a fresh websockets client gets a publish acked."""
    status, _, _, raw = http_exchange(gw.host, gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200, raw

    async def go():
        c = await Client.connect(gw.url)
        ack = await c.call({"op": "publish", "channel": gw.topic("t1"), "data": {"ok": True}})
        await c.close()
        return ack

    ack = run(go(), 30)
    assert ack["op"] == "ack", ack


def expect_close(raw: RawWS, code: int, timeout: float = 10):
    got, reason = raw.recv_close(timeout, skip_data=False)
    assert got == code, f"close code {got} (reason {reason!r}), want {code}"
    reason.decode("utf-8")  # the reason must be valid UTF-8
    raw.expect_eof(5)


# ------------------------------------------------------------------ before the handshake


def test_garbage_before_handshake_gets_400(gateway):
    junk = bytes.fromhex("160301020001000001fc0303") + os.urandom(64).replace(b"\r", b"") + b"\r\n\r\n"
    with socket.create_connection((gateway.host, gateway.port), timeout=5) as s:
        s.sendall(junk)
        raw = recv_until_eof(s, 5)
    assert raw == b"" or raw.startswith(b"HTTP/1.1 400"), raw[:200]
    gateway_still_serves(gateway)


def test_garbage_then_eof_is_closed(gateway):
    with socket.create_connection((gateway.host, gateway.port), timeout=5) as s:
        s.sendall(bytes(range(256)) * 4)
        s.shutdown(socket.SHUT_WR)
        raw = recv_until_eof(s, 5)
    assert raw == b"" or raw.startswith(b"HTTP/1.1 4"), raw[:200]
    gateway_still_serves(gateway)


@pytest.mark.gateway(args=["--set", "ws.handshake_timeout_ms=500"])
def test_half_handshake_is_closed_after_handshake_timeout(gateway):
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        t0 = time.monotonic()
        raw = recv_until_eof(s, 8)
        waited = time.monotonic() - t0
    assert 0.3 <= waited <= 5, f"closed after {waited:.2f}s, want ~0.5s"
    assert raw == b"" or raw.startswith(b"HTTP/1.1 408") or raw.startswith(b"HTTP/1.1 400"), raw[:200]
    gateway_still_serves(gateway)


@pytest.mark.gateway(args=["--set", "ws.handshake_timeout_ms=500"])
def test_handshake_timeout_does_not_touch_open_websockets(gateway):
    topic = gateway.topic("t1")

    async def go():
        import asyncio
        c = await Client.connect(gateway.url)
        await asyncio.sleep(1.5)  # three handshake timeouts
        ack = await c.call({"op": "publish", "channel": topic, "data": 1})
        await c.close()
        return ack

    assert run(go(), 30)["op"] == "ack"


# ------------------------------------------------------------------ clients that vanish


def test_client_vanishes_mid_frame_header(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_raw(bytes([0x81, 0xFE, 0x01]))  # text, masked, 16-bit length: 1 of 2 length bytes
    raw.close()
    gateway_still_serves(gateway)


def test_client_vanishes_mid_payload(gateway):
    raw = RawWS(gateway.host, gateway.port)
    frame = encode_frame(OP_TEXT, json.dumps({"op": "publish", "channel": gateway.topic("t1"),
                                              "data": "x" * 500}).encode())
    raw.send_raw(frame[: len(frame) // 2])
    raw.close()
    gateway_still_serves(gateway)


def test_client_vanishes_with_reset_while_subscribed(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_text({"op": "subscribe", "id": "s", "channel": gateway.topic("t1")})
    assert recv_json_frame(raw)["op"] == "ok"
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # RST
    gateway_still_serves(gateway)  # publishes to the channel the dead socket was on


# ------------------------------------------------------------------ protocol violations


def test_unmasked_client_frame_closes_1002(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_frame(OP_TEXT, b'{"op":"subscribe","channel":"x"}', mask=False)
    expect_close(raw, 1002)
    raw.close()
    gateway_still_serves(gateway)


def test_invalid_utf8_text_closes_1007(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_frame(OP_TEXT, b'{"op":"publish","data":"\xc3\x28"}')
    expect_close(raw, 1007)
    raw.close()


def test_invalid_utf8_split_across_fragments_closes_1007(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_frame(OP_TEXT, b'{"a":"\xe2\x82', fin=False)   # valid so far (partial sequence)
    raw.send_frame(OP_CONT, b'\x28"}', fin=True)             # bad continuation byte
    expect_close(raw, 1007)
    raw.close()


def test_oversized_frame_header_closes_1009_without_body(gateway):
    raw = RawWS(gateway.host, gateway.port)
    # declares 1 MiB + 1 bytes (max is 1 MiB) and sends no payload: the header alone must do
    raw.send_raw(encode_frame(OP_TEXT, b"", length=(1 << 20) + 1))
    expect_close(raw, 1009)
    raw.close()


@pytest.mark.gateway(args=["--set", "ws.max_frame_size=1000", "--set", "ws.max_message_size=1500"])
def test_configured_limits_1009(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_frame(OP_TEXT, b'"' + b"a" * 998 + b'"')  # exactly 1000: allowed
    assert recv_json_frame(raw)["code"] == "bad_request"
    raw.send_frame(OP_TEXT, b'"' + b"a" * 999, fin=False)  # 1000 + 1000 > 1500: message too big
    raw.send_frame(OP_CONT, b"a" * 999 + b'"', fin=True)
    expect_close(raw, 1009)
    raw.close()


def test_64bit_length_with_top_bit_closes_1002(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_raw(bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + os.urandom(4))
    expect_close(raw, 1002)
    raw.close()
    gateway_still_serves(gateway)


@pytest.mark.parametrize("name,frame", [
    ("rsv1_without_extension", encode_frame(OP_TEXT, b"{}", rsv=4)),
    ("unknown_opcode", encode_frame(0x3, b"")),
    ("fragmented_ping", encode_frame(OP_PING, b"p", fin=False)),
    ("control_payload_126", encode_frame(OP_PING, b"p" * 126)),
    ("continuation_without_start", encode_frame(OP_CONT, b"x")),
    ("close_code_1005_on_wire", encode_frame(OP_CLOSE, close_payload(1005))),
    ("close_body_one_byte", encode_frame(OP_CLOSE, b"\x03")),
])
def test_protocol_violations_close_1002(gateway, name, frame):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_raw(frame)
    expect_close(raw, 1002)
    raw.close()


# ------------------------------------------------------------------ control frames


def test_close_handshake_echoes_1000(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_frame(OP_CLOSE, close_payload(1000, b"bye"))
    code, _ = raw.recv_close(10, skip_data=False)
    assert code == 1000
    raw.expect_eof(5, reply_code=None)  # we started the close: nothing more to send
    raw.close()


def test_close_with_application_code_is_echoed(gateway):
    raw = RawWS(gateway.host, gateway.port)
    raw.send_frame(OP_CLOSE, close_payload(4321, b"app"))
    code, _ = raw.recv_close(10, skip_data=False)
    assert code in (4321, 1000), code  # RFC 6455 5.5.1: echo the status code received (typically)
    raw.expect_eof(5, reply_code=None)
    raw.close()


def test_ping_gets_pong_with_same_payload(gateway):
    raw = RawWS(gateway.host, gateway.port)
    for payload in (b"", b"otter-ping-123", bytes(range(125))):
        raw.send_frame(OP_PING, payload)
        fin, op, got = raw.recv_frame(10)
        assert (fin, op, got) == (True, OP_PONG, payload)
    raw.send_frame(OP_PONG, b"unsolicited")  # must be ignored
    raw.send_frame(OP_CLOSE, close_payload(1000))
    assert raw.recv_close(10, skip_data=False)[0] == 1000
    raw.close()


def test_fragmented_message_with_interleaved_ping(gateway):
    raw = RawWS(gateway.host, gateway.port)
    msg = json.dumps({"op": "publish", "id": "frag", "channel": gateway.topic("t1"),
                      "data": {"s": "\u00e9" * 50}}, ensure_ascii=False).encode("utf-8")
    cut1 = 10
    cut2 = msg.index(b"\xc3\xa9") + 1  # the second cut splits a 2-byte UTF-8 sequence
    raw.send_frame(OP_TEXT, msg[:cut1], fin=False)
    raw.send_frame(OP_PING, b"mid")
    raw.send_frame(OP_CONT, msg[cut1:cut2], fin=False)
    raw.send_frame(OP_CONT, msg[cut2:], fin=True)
    frames = [raw.recv_frame(10), raw.recv_frame(10)]
    ops = sorted(f[1] for f in frames)
    assert ops == [OP_TEXT, OP_PONG], frames
    pong = next(f for f in frames if f[1] == OP_PONG)
    assert pong[2] == b"mid"
    reply = json.loads(next(f for f in frames if f[1] == OP_TEXT)[2])
    assert reply["op"] == "ack" and reply["id"] == "frag", reply
    raw.close()


def inbound_gauge(gw) -> int:
    status, _, body, raw = http_exchange(gw.host, gw.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200, raw
    for ln in body.decode().splitlines():
        if ln.startswith("streamotter_inbound_buffered_bytes "):
            return int(ln.split()[1])
    raise AssertionError("no streamotter_inbound_buffered_bytes in /metrics")


@pytest.mark.gateway(args=["--set", "ws.max_inbound_buffered_bytes=2097152"])
def test_incomplete_messages_are_bounded_across_connections(gateway):
    """Each connection may hold up to ws.max_message_size of a message not yet complete;
    all of them together at most ws.max_inbound_buffered_bytes (here 2 MiB). Three
    connections that each stop 100 KB short of a 900 KB frame: the third takes the total
    over and is closed with 1013; the others keep their bytes and finish their messages,
    and the gateway serves everyone else."""
    payload = json.dumps({"op": "publish", "channel": gateway.topic("t1"), "id": "big",
                          "data": "x" * 900_000}).encode()
    frame = encode_frame(OP_TEXT, payload)
    cut = len(frame) - 100_000
    raws = [RawWS(gateway.host, gateway.port) for _ in range(3)]
    for r in raws[:2]:
        r.send_raw(frame[:cut])
    deadline = time.monotonic() + 5
    while inbound_gauge(gateway) < 2 * (cut - 14) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inbound_gauge(gateway) >= 2 * (cut - 14)
    raws[2].send_raw(frame[:cut])
    expect_close(raws[2], 1013)
    gateway_still_serves(gateway)
    # The first two finish their publishes: nothing of theirs was dropped.
    for r in raws[:2]:
        r.send_raw(frame[cut:])
        reply = recv_json_frame(r, 30)
        assert reply["op"] == "ack" and reply["id"] == "big", reply
    assert inbound_gauge(gateway) == 0
    for r in raws[:2]:
        r.send_frame(OP_CLOSE, close_payload(1000))
