"""What a user would write instead of the gateway: a WebSocket <-> Kafka bridge in Python
with `websockets` (asyncio server) and `confluent-kafka` (librdkafka underneath).

It speaks the publish and subscribe parts of streamotter.v1, so the same load generator
drives it:
  publish   -> producer.produce(...); {"op":"ack",...} once the delivery report arrives
  subscribe -> {"op":"ok"}; records of the topic (from "latest") are sent as "message"

The producer has the gateway's settings (acks=all, enable.idempotence=true, linger.ms=5,
murmur2_random). Delivery reports are served by a poll thread and handed to the event loop
with call_soon_threadsafe, the pattern of confluent-kafka's asyncio example; a consumer
thread does the same for subscriptions (one consumer for the process, fan-out in Python).

usage: python3 py_bridge.py PORT BOOTSTRAP_SERVERS
"""
import asyncio
import json
import sys
import threading

from confluent_kafka import Consumer, Producer, TopicPartition
from websockets.asyncio.server import broadcast, serve

PORT = int(sys.argv[1])
BOOTSTRAP = sys.argv[2]


def _ignore_closed(fut):
    # A client that went away while its acks were on the way: nothing to do.
    if not fut.cancelled():
        fut.exception()


class Bridge:
    def __init__(self, loop):
        self.loop = loop
        self.producer = Producer({
            "bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "partitioner": "murmur2_random",
        })
        self.subscribers = {}  # topic -> set of websockets
        self.consumer = None
        self.assign_queue = []
        self.running = True
        threading.Thread(target=self._poll_producer, daemon=True).start()

    def _poll_producer(self):
        while self.running:
            self.producer.poll(0.05)

    def publish(self, ws, req):
        rid, channel = req.get("id"), req["channel"]
        key = req.get("key")
        value = json.dumps(req.get("data"), separators=(",", ":")).encode()

        def delivered(err, msg):
            if err is not None:
                reply = {"op": "error", "id": rid, "code": "publish_failed", "message": str(err)}
            else:
                reply = {"op": "ack", "id": rid, "channel": channel,
                         "partition": msg.partition(), "offset": msg.offset()}
            self.loop.call_soon_threadsafe(self._send, ws, json.dumps(reply, separators=(",", ":")))

        try:
            self.producer.produce(channel, value=value, key=key, on_delivery=delivered)
        except BufferError:
            self._send(ws, json.dumps({"op": "error", "id": rid, "code": "overloaded", "message": "queue full"}, separators=(",", ":")))

    def _send(self, ws, text):
        asyncio.ensure_future(ws.send(text)).add_done_callback(_ignore_closed)

    def subscribe(self, ws, req):
        topic = req["channel"]
        if topic not in self.subscribers:
            self.subscribers[topic] = set()
            # Assignments are made by the consumer thread between two consume() calls:
            # assigning from another thread while it consumes blocks.
            self.assign_queue.append(topic)
            if self.consumer is None:
                self.consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "py-bridge",
                                          "enable.auto.commit": False, "auto.offset.reset": "latest",
                                          "fetch.wait.max.ms": 5})
                threading.Thread(target=self._consume, daemon=True).start()
        self.subscribers[topic].add(ws)
        self._send(ws, json.dumps({"op": "ok", "id": req.get("id")}, separators=(",", ":")))

    def _consume(self):
        while self.running:
            while self.assign_queue:
                topic = self.assign_queue.pop(0)
                md = self.consumer.list_topics(topic, timeout=10)
                parts = [TopicPartition(topic, p, -1) for p in md.topics[topic].partitions]  # -1: end
                self.consumer.incremental_assign(parts)
            for m in self.consumer.consume(500, 0.05):
                if m.error():
                    continue
                self.loop.call_soon_threadsafe(self._fanout, m.topic(), m.partition(), m.offset(),
                                               m.key(), m.value())

    def _fanout(self, topic, partition, offset, key, value):
        frame = ('{"op":"message","channel":%s,"partition":%d,"offset":%d,"key":%s,"data":%s}' % (
            json.dumps(topic), partition, offset,
            json.dumps(key.decode()) if key else "null", value.decode()))
        broadcast(self.subscribers.get(topic, ()), frame)


async def main():
    bridge = Bridge(asyncio.get_running_loop())

    async def handler(ws):
        try:
            async for text in ws:
                req = json.loads(text)
                op = req.get("op")
                if op == "publish":
                    bridge.publish(ws, req)
                elif op == "subscribe":
                    bridge.subscribe(ws, req)
                else:
                    await ws.send(json.dumps({"op": "error", "id": req.get("id"), "code": "unknown_op",
                                              "message": "unknown op"}))
        finally:
            for subs in bridge.subscribers.values():
                subs.discard(ws)

    async with serve(handler, "127.0.0.1", PORT, subprotocols=["streamotter.v1"],
                     max_size=1 << 20, ping_interval=None, compression=None):
        print(f"listening: ws://127.0.0.1:{PORT}/", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
