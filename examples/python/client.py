#!/usr/bin/env python3
"""Connect a client to a gateway, subscribe to a channel, publish, print what comes back.

    make build && build/bin/streamotter serve --topic orders:3      # a gateway (embedded Kafka)
    pip install bindings/python
    STREAMOTTER_LIBRARY=$PWD/build/lib/libstreamotter.so.0 \
        python3 examples/python/client.py ws://127.0.0.1:8080/ orders "hello" "otters"

An installed package finds the library through STREAMOTTER_LIBRARY or, after
`make install`, the system's library path. Without pip install, run it from the source
tree with PYTHONPATH=bindings/python: the library is then found at build/lib.
"""

from __future__ import annotations

import argparse
import sys
import threading

import streamotter


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="gateway URL, e.g. ws://127.0.0.1:8080/")
    ap.add_argument("channel", nargs="?", default="orders")
    ap.add_argument("texts", nargs="*", default=["hello from Python"])
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    done = threading.Event()
    expected = len(args.texts)
    received = []

    def on_message(m: streamotter.Message) -> None:
        print(f"message  {m.channel}[{m.partition}]@{m.offset} key={m.key} data={m.data}")
        received.append(m)
        if len(received) >= expected:
            done.set()

    # A client with an engine of its own (mode "client"); callbacks run on its thread.
    with streamotter.connect(args.url, on_error=lambda code, msg: print(f"error    {code}: {msg}",
                                                                          file=sys.stderr)) as client:
        client.subscribe(args.channel, on_message).result(args.timeout)
        print(f"subscribed to {args.channel!r} on {args.url}")
        for text in args.texts:
            ack = client.publish(args.channel, {"text": text}).result(args.timeout)
            print(f"ack      {ack.channel}[{ack.partition}]@{ack.offset}")
        if not done.wait(args.timeout):
            print(f"only {len(received)} of {expected} messages came back", file=sys.stderr)
            return 1
        h = client.health()
        # The round trip is measured by heartbeats (ws.ping_interval_ms); a run this short
        # may end before the first one.
        rtt = f"{h.rtt_ms:.2f} ms" if h.rtt_ms > 0 else "no ping yet"
        print(f"health   state={h.state.name} score={h.score} rtt={rtt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
