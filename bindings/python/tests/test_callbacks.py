"""Exceptions raised by user callbacks: reported, raised again by the next call (or by
close()), and the engine keeps running."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from conftest import Counter, unique, wait_until

import streamotter as so


class Boom(Exception):
    pass


def test_exception_in_thread_mode_callback_is_reported_and_raised_again(gw_url, caplog):
    caplog.set_level(logging.ERROR, logger="streamotter")
    run = unique("exc")
    got = Counter()
    engine_threads = set()

    def on_msg(m):
        engine_threads.add(threading.get_ident())
        got.add(m.value["n"])
        if m.value["n"] == 3:
            raise Boom("raised by on_msg for n=3")

    with so.Engine({"mode": "client"}) as e:
        c = e.client(gw_url)
        c.subscribe("exc", on_msg).result(10)
        for i in range(5):
            c.publish("exc", {"run": run, "n": i})
        assert got.wait(5, 10) == 5
        # reported through logging, with the traceback
        recs = [r for r in caplog.records if r.name == "streamotter" and r.exc_info]
        assert recs and recs[0].exc_info[0] is Boom
        # raised again by the next API call, exactly once
        with pytest.raises(Boom, match="n=3") as ei:
            c.publish("exc", {"run": run, "n": 5})
        assert any("callback" in n for n in getattr(ei.value, "__notes__", ["callback"]))
        # ...and the engine kept running: more messages, acks, callbacks
        ack = c.publish("exc", {"run": run, "n": 6}).result(10)
        assert ack.channel == "exc"
        assert got.wait(6, 10) == 6 and 6 in got.items and 5 not in got.items
        assert c.health().state == so.OPEN
        c.close()


def test_exception_raised_again_by_close_and_hook(gw_url):
    seen = []

    def hook(exc):
        seen.append(exc)
        return None  # reported, not handled: still raised again

    e = so.Engine({"mode": "client"}, on_callback_error=hook)
    opened = threading.Event()

    def on_open(proto):
        opened.set()
        raise Boom("in on_open")

    c = e.client(gw_url, on_open=on_open)
    assert opened.wait(10)
    wait_until(lambda: seen, 5)
    assert isinstance(seen[0], Boom)
    with pytest.raises(Boom):
        e.close()  # the close happened, then the stored exception
    assert e.closed and c.closed
    e.close()  # nothing pending any more


def test_hook_returning_true_handles_the_exception(gw_url):
    handled = []
    with so.Engine({"mode": "client"}, on_callback_error=lambda exc: handled.append(exc) or True) as e:
        c = e.client(gw_url)
        c.subscribe("exc", lambda m: 1 / 0).result(10)
        c.publish("exc", {"x": unique()}).result(10)
        wait_until(lambda: handled, 5)
        assert isinstance(handled[0], ZeroDivisionError)
        c.publish("exc", {"x": unique()}).result(10)  # not raised again
        c.close()


def test_publish_callback_exception_does_not_lose_the_ack(gw_url):
    with so.Engine({"mode": "client"}, on_callback_error=lambda exc: None) as e:
        c = e.client(gw_url)

        def cb(err, ack):
            raise Boom("in the publish callback")

        fut = c.publish("exc", {"x": unique()}, callback=cb)
        assert fut.result(10).channel == "exc"  # the future still resolves
        with pytest.raises(Boom):
            c.health()
        c.close()


def test_base_exceptions_do_not_kill_the_engine_thread(gw_url):
    """KeyboardInterrupt or SystemExit raised on the engine thread is stored like any
    other exception (it must not unwind through C)."""
    with so.Engine({"mode": "client"}, on_callback_error=lambda exc: None) as e:
        c = e.client(gw_url)
        n = Counter()

        def on_msg(m):
            n.add()
            if n.n == 1:
                raise KeyboardInterrupt
            if n.n == 2:
                raise SystemExit(3)

        c.subscribe("exc", on_msg).result(10)
        for _ in range(3):
            c.publish("exc", {"x": unique()})
        assert n.wait(3, 10) == 3
        with pytest.raises(KeyboardInterrupt):
            c.publish("exc", 1)
        c.publish("exc", 1).result(10)  # the second one was counted as dropped, not queued
        assert e._st.dropped_errors == 1
        c.close()


def test_server_callback_exception(caplog):
    caplog.set_level(logging.ERROR, logger="streamotter")
    msgs = Counter()

    def on_message(conn, data):
        msgs.add(data)
        if data == "bad":
            raise Boom("server on_message")

    gw = so.Engine({"listen": "127.0.0.1:0", "embedded.brokers": 1, "gateway.protocol": "none"},
                   on_message=on_message)
    with so.Engine({"mode": "client"}) as ce:
        opened = threading.Event()
        c = ce.client(f"ws://127.0.0.1:{gw.port}/", {"client.subprotocols": ""}, on_open=lambda p: opened.set())
        assert opened.wait(10)
        c.send("ok1")
        c.send("bad")
        c.send("ok2")
        assert msgs.wait(3, 10) == 3  # the gateway kept running after the exception
        assert msgs.items == ["ok1", "bad", "ok2"]
        c.close()
    with pytest.raises(Boom):
        gw.close()


def test_exception_in_asyncio_poll_mode(gateway, gw_url):
    async def main():
        errors = []
        async with so.Engine({"mode": "client", "callbacks": "poll"}) as e:
            async with e.client(gw_url) as c:
                got = []

                def on_msg(m):
                    got.append(m)
                    if len(got) == 1:
                        raise Boom("first message")

                await c.subscribe_async("exc", on_msg)
                run = unique()
                await c.publish_async("exc", {"run": run, "n": 0})
                while not got:
                    await asyncio.sleep(0.01)
                with pytest.raises(Boom):
                    c.publish_async("exc", {"run": run, "n": 1})
                await c.publish_async("exc", {"run": run, "n": 2})
                while len(got) < 2:
                    await asyncio.sleep(0.01)
                assert got[1].value == {"run": run, "n": 2}
                # raised by an async iterator as well: before its next item. (The
                # gateway engine publishes here: a call on the client's engine would
                # raise the exception itself.)
                raised = asyncio.Event()

                def raiser(m):
                    raised.set()
                    raise Boom("second")

                await c.subscribe_async("misc", raiser)
                it = c.messages("ser")
                task = asyncio.ensure_future(it.__anext__())
                await asyncio.sleep(0.3)  # the iterator's subscription is confirmed
                await gateway.publish_async("misc", b'{"x":1}')
                await asyncio.wait_for(raised.wait(), 10)
                await gateway.publish_async("ser", b'{"n":3}')
                try:
                    await asyncio.wait_for(task, 10)
                except Boom as exc:
                    errors.append(exc)
                await it.aclose()
        return errors

    errors = asyncio.run(main())
    assert len(errors) == 1 and "second" in str(errors[0])
