"""streamotter.v1 request errors: stable codes, the id echoed, the connection kept open."""

import asyncio

import pytest

from conftest import run
from e2e_helpers import Client, kcat_produce

CASES = [
    # (name, raw frame text, expected code, id in reply)
    ("invalid_json", '{"op":"publish",', "bad_request", None),
    ("not_an_object", '[1,2,3]', "bad_request", None),
    ("trailing_garbage", '{"op":"subscribe","channel":"x"} x', "bad_request", None),
    ("missing_channel", '{"op":"subscribe","id":"e2"}', "bad_request", "e2"),
    ("channel_not_string", '{"op":"subscribe","id":"e3","channel":5}', "bad_request", "e3"),
    ("publish_without_data", '{"op":"publish","id":"e4","channel":"%(t)s"}', "bad_request", "e4"),
    ("headers_not_strings", '{"op":"publish","id":"e5","channel":"%(t)s","headers":{"h":1},"data":1}',
     "bad_request", "e5"),
    ("key_not_string", '{"op":"publish","id":"e6","channel":"%(t)s","key":7,"data":1}', "bad_request", "e6"),
    ("unknown_op", '{"op":"frobnicate","id":"e7","channel":"%(t)s"}', "unknown_op", "e7"),
    ("missing_op", '{"id":"e8","channel":"%(t)s"}', "unknown_op", "e8"),
    ("bad_channel_chars", '{"op":"subscribe","id":"e9","channel":"no/slashes here"}', "invalid_channel", "e9"),
    ("empty_channel", '{"op":"publish","id":"e10","channel":"","data":1}', "invalid_channel", "e10"),
    ("channel_too_long", '{"op":"subscribe","id":"e11","channel":"%s"}' % ("a" * 250), "invalid_channel", "e11"),
    ("bad_from_word", '{"op":"subscribe","id":"e12","channel":"%(t)s","from":"yesterday"}', "invalid_from", "e12"),
    ("bad_from_negative_offset", '{"op":"subscribe","id":"e13","channel":"%(t)s","from":{"offsets":{"0":-5}}}',
     "invalid_from", "e13"),
    ("bad_from_partition_name", '{"op":"subscribe","id":"e14","channel":"%(t)s","from":{"offsets":{"zero":1}}}',
     "invalid_from", "e14"),
    ("bad_from_timestamp", '{"op":"subscribe","id":"e15","channel":"%(t)s","from":{"timestamp":"noon"}}',
     "invalid_from", "e15"),
    ("unknown_topic", '{"op":"subscribe","id":"e16","channel":"no-such-topic-%(u)s"}', "unknown_channel", "e16"),
    ("unsubscribe_not_subscribed", '{"op":"unsubscribe","id":"e17","channel":"%(t)s"}', "not_subscribed", "e17"),
]


def test_protocol_errors_keep_connection_open(gateway):
    topic = gateway.topic("t1")
    subst = {"t": topic, "u": topic.rsplit("-", 1)[1]}

    async def go():
        c = await Client.connect(gateway.url)
        results = []
        for name, text, code, rid in CASES:
            frame = text % subst if "%(" in text else text
            n_before = len(c.unsolicited)
            if rid:
                fut = c.expect_reply(rid)
                await c.send(frame)
                reply = await asyncio.wait_for(fut, 15)
            else:
                await c.send(frame)
                await c.wait_for(lambda: len(c.unsolicited) > n_before, 15, f"error reply to {name}")
                reply = c.unsolicited[-1]
            results.append((name, code, rid, reply))
        # after all that, the same connection still subscribes, publishes and receives
        ok = await c.subscribe(topic, "latest")
        ack = await c.call({"op": "publish", "channel": topic, "key": "k", "data": {"still": "open"}})
        await c.wait_messages(1, 15)
        # and a double subscribe is rejected, unsubscribe works once, then not_subscribed
        again = await c.call({"op": "subscribe", "channel": topic})
        unsub = await c.call({"op": "unsubscribe", "channel": topic})
        unsub2 = await c.call({"op": "unsubscribe", "channel": topic})
        await c.close()
        return results, ok, ack, c.messages, again, unsub, unsub2, c

    results, ok, ack, msgs, again, unsub, unsub2, c = run(go(), 90)
    wrong = []
    for name, code, rid, reply in results:
        if reply.get("op") != "error" or reply.get("code") != code or reply.get("id") != rid \
                or not isinstance(reply.get("message"), str):
            wrong.append((name, f"want code={code} id={rid}", reply))
    assert not wrong, "\n".join(map(str, wrong))
    assert ack["op"] == "ack", ack
    assert msgs[0]["data"] == {"still": "open"}
    assert again["op"] == "error" and again["code"] == "already_subscribed", again
    assert unsub["op"] == "ok", unsub
    assert unsub2["op"] == "error" and unsub2["code"] == "not_subscribed", unsub2
    assert c.close_rcvd is not None and c.close_rcvd.code == 1000, c.close_rcvd


def test_binary_frame_is_unsupported_but_connection_stays(gateway):
    topic = gateway.topic("t1")

    async def go():
        c = await Client.connect(gateway.url)
        await c.ws.send(b"\x00\x01binary")
        await c.wait_for(lambda: c.unsolicited, 15, "reply to a binary frame")
        ack = await c.call({"op": "publish", "channel": topic, "data": 1})
        await c.close()
        return c.unsolicited[0], ack

    err, ack = run(go(), 30)
    assert err["op"] == "error" and err["code"] == "unsupported", err
    assert ack["op"] == "ack", ack


def test_unsubscribe_stops_delivery(gateway):
    topic = gateway.topic("t1")

    async def go():
        c = await Client.connect(gateway.url)
        await c.subscribe(topic)
        await asyncio.to_thread(kcat_produce, gateway.bootstrap, topic, [("a", "1")])
        await c.wait_messages(1, 15)
        r = await c.call({"op": "unsubscribe", "channel": topic})
        assert r["op"] == "ok", r
        await asyncio.to_thread(kcat_produce, gateway.bootstrap, topic, [("b", "2")])
        # a second connection proves the record went out, then the first must still have 1
        c2 = await Client.connect(gateway.url)
        await c2.subscribe(topic, "earliest")
        await c2.wait_messages(2, 15)
        await asyncio.sleep(0.5)
        await c2.close()
        await c.close()
        return c.messages

    msgs = run(go(), 30)
    assert [m["data"] for m in msgs] == [1]
