"""uWebSockets through socketify (the uWebSockets peer).

  /       echo: every message is sent back.
  /sub    subscribes the socket to topic "bench" on open.
  /pub    every message received is published to topic "bench" (uWS pub/sub: the frame is
          prepared once and written to every subscriber).

Backpressure is allowed to 16 MiB per socket (the gateway's default bound) so that a busy
moment drops nothing.

usage: python3 socketify_server.py PORT
"""
import sys

from socketify import App, OpCode

port = int(sys.argv[1])
app = App()
MAX_BP = 16 * 1024 * 1024


def echo_message(ws, message, opcode):
    ws.send(message, opcode)


def sub_open(ws):
    ws.subscribe("bench")


def pub_message(ws, message, opcode):
    app.publish("bench", message, opcode)


common = {"max_payload_length": 1 << 20, "idle_timeout": 120, "max_backpressure": MAX_BP,
          "compression": 0}
app.ws("/sub", dict(common, open=sub_open, message=lambda ws, m, o: None))
app.ws("/pub", dict(common, message=pub_message))
app.ws("/*", dict(common, message=echo_message))
app.listen(port, lambda config: print(f"listening: ws://127.0.0.1:{config.port}/", flush=True))
app.run()
