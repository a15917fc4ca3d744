"""Writes seed inputs for the libFuzzer targets (valid and nearly valid examples)."""
import base64, json, os, struct, sys

out = sys.argv[1]


def frame(op, payload, fin=True, key=b"\x01\x02\x03\x04"):
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    hdr = bytes([b0, 0x80 | n]) if n < 126 else (bytes([b0, 0x80 | 126]) + struct.pack("!H", n) if n < 65536
                                                  else bytes([b0, 0x80 | 127]) + struct.pack("!Q", n))
    return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


seeds = {
    "handshake": [
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef") + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt, streamotter.v1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
    ],
    "frames": [
        frame(1, b'{"op":"publish","channel":"c","data":1}'),
        frame(1, "h\u00e9".encode()[:2], fin=False) + frame(9, b"ping") + frame(0, "h\u00e9".encode()[2:]),
        frame(2, bytes(range(256)) * 2),
        frame(8, struct.pack("!H", 1000) + b"bye"),
        frame(10, b""),
    ],
    "protocol": [
        json.dumps({"op": "subscribe", "id": "s1", "channel": "orders", "from": {"offsets": {"0": 42, "1": 7}}}).encode(),
        json.dumps({"op": "subscribe", "channel": "orders", "from": {"timestamp": 1733220000000}}).encode(),
        json.dumps({"op": "unsubscribe", "id": "u1", "channel": "orders"}).encode(),
        b'{"op":"publish","id":"p1","channel":"orders","key":"k1","headers":{"h":"v"},"data":{"a":[1,2.5e3,true,null,"\\u00e9"]}}',
        b'{"op":"publish","channel":"a.b-c_d","data": [ 1 , { "x" : "y" } ] }',
    ],
}
for target, items in seeds.items():
    os.makedirs(os.path.join(out, target), exist_ok=True)
    for i, s in enumerate(items):
        # the frames and handshake harnesses take their split seed from the first byte
        data = (bytes([i * 37 % 256]) + s) if target != "protocol" else s
        with open(os.path.join(out, target, f"seed{i}"), "wb") as f:
            f.write(data)
