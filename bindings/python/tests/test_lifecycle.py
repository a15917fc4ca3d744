"""Ownership and lifetimes: destroy racing with garbage collection, close from inside
callbacks, objects outliving their engine, interpreter exit with engines running."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest
from conftest import REPO, Counter, unique, wait_until

import streamotter as so
from streamotter import _core


def test_dropped_references_are_collected_without_crash(gw_url):
    base = len(_core._entries)
    refs = []
    for i in range(12):
        mode = "poll" if i % 3 == 2 else "thread"
        e = so.Engine({"mode": "client", "callbacks": mode})
        got = []
        c = e.client(gw_url, on_open=lambda p: None, on_close=lambda code, r: None,
                     on_error=lambda code, m: None)
        c.subscribe("gc", got.append)
        futs = [c.publish("gc", {"i": i, "j": j}) for j in range(20)]  # in flight
        refs.append((weakref.ref(e), weakref.ref(c)))
        if i % 2:
            del c  # the client first, then the engine
            gc.collect()
            del e
        else:
            del e  # the engine first: still referenced by the client, so nothing happens
            gc.collect()
            del c
        gc.collect()
        # every publish of a collected client is answered: its ack or "closed"
        for f in futs:
            assert f.done()
            if f.exception(0) is not None:
                assert isinstance(f.exception(), so.RequestError)
                assert f.exception().reason == "closed"
        del futs
    gc.collect()
    assert all(r() is None for pair in refs for r in pair)
    assert len(_core._entries) == base


def test_gc_on_other_threads_while_callbacks_run(gw_url):
    """A thread runs gc.collect() in a loop while the engine thread delivers callbacks
    and clients caught in reference cycles are collected (their __del__ runs on
    whichever thread collects, the engine thread included)."""
    stop = threading.Event()
    collections = [0]

    def collector():
        while not stop.is_set():
            gc.collect()
            collections[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=collector)
    t.start()
    try:
        with so.Engine({"mode": "client"}) as e:
            keeper = e.client(gw_url)
            n = Counter()

            run = unique("k")

            def on_msg(m):
                v = m.value
                if isinstance(v, dict) and v.get("run") == run:
                    n.add()
                    if n.n % 10 == 0:
                        gc.collect()  # GC on the engine thread, inside a callback

            keeper.subscribe("gc", on_msg).result(10)
            for i in range(40):
                c = e.client(gw_url)
                cycle = {"client": c}
                cycle["self"] = cycle  # only the cyclic GC frees it
                c.subscribe("gc", lambda m: None)
                c.publish("gc", {"i": i})
                del c, cycle
                keeper.publish("gc", {"run": run, "k": i})
            # (the publishes of the collected clients may be cut short by their close)
            assert n.wait(40, 20) == 40
            keeper.close()
    finally:
        stop.set()
        t.join()
    assert collections[0] > 0


def test_engine_closed_under_its_clients_and_consumers(gateway, gw_url):
    e = so.Engine({"mode": "client"})
    c = e.client(gw_url)
    c.subscribe("gc", lambda m: None).result(10)
    pending = [c.publish("gc", {"n": i}) for i in range(50)]
    cons = gateway.consumer(on_record=lambda r: None)
    cons.assign("gc", 0)
    e.close()
    for f in pending:  # every publish answered: its ack, or "closed"
        try:
            assert f.result(10).channel == "gc"
        except so.RequestError as exc:
            assert exc.reason == "closed"
    assert c.closed
    with pytest.raises(so.StateError):
        c.publish("gc", 1)
    c.close()  # idempotent, no use of the freed handle
    del c
    gc.collect()
    cons.close()
    with pytest.raises(so.StateError):
        cons.commit()


@pytest.mark.parametrize("mode", ["thread", "poll"])
def test_close_from_inside_callbacks(gateway, gw_url, mode):
    e = so.Engine({"mode": "client", "callbacks": mode})
    done = threading.Event()
    holder = {}

    def on_msg(m):
        holder["client"].close()  # the client closes itself from its own callback
        done.set()

    c = e.client(gw_url)
    holder["client"] = c
    e.wait(c.subscribe("gc", on_msg), 10)
    gateway.publish("gc", b'{"close":"client"}').result(10)
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        if mode == "poll":
            e.poll(0.05)
        else:
            done.wait(0.05)
    assert done.is_set() and c.closed

    # the engine closes itself from a callback: stop and free happen after it returns
    closed = threading.Event()
    c2 = e.client(gw_url)

    def close_engine(m):
        e.close()
        closed.set()

    e.wait(c2.subscribe("gc", close_engine), 10)
    gateway.publish("gc", b'{"close":"engine"}').result(10)
    deadline = time.monotonic() + 10
    while not closed.is_set() and time.monotonic() < deadline:
        if mode == "poll":
            try:
                e.poll(0.05)
            except so.StateError:
                break
        else:
            closed.wait(0.05)
    assert closed.is_set()
    wait_until(lambda: e.closed and c2.closed, 10)

    # a consumer closing itself from its record callback (deferred in thread mode)
    recs = Counter()
    holder = {}

    def on_record(r):
        recs.add(r)
        holder["c"].close()

    eng = so.Engine({"mode": "gateway", "listen": "127.0.0.1:0", "embedded.brokers": 1,
                     "embedded.topics": "k:1", "callbacks": mode})
    with eng:
        eng.wait(eng.publish("k", b"a"), 10)
        eng.wait(eng.publish("k", b"b"), 10)
        cons = eng.consumer(on_record=on_record)
        holder["c"] = cons
        cons.assign("k", 0)
        deadline = time.monotonic() + 10
        while recs.n == 0 and time.monotonic() < deadline:
            if mode == "poll":
                eng.poll(0.05)
            else:
                time.sleep(0.02)
        time.sleep(0.3)
        if mode == "poll":
            eng.poll(0.05)
        assert recs.n == 1 and cons.closed  # no record after close


def test_stop_in_callback_is_refused(gw_url):
    errs = []
    with so.Engine({"mode": "client"}) as e:
        got = threading.Event()

        def on_open(p):
            try:
                e.stop()
            except so.InCallbackError as exc:
                errs.append(exc)
            got.set()

        c = e.client(gw_url, on_open=on_open)
        assert got.wait(10)
        assert errs and errs[0].code == -9
        c.close()


def test_asyncio_engine_closed_from_another_thread(gw_url):
    async def main():
        e = so.Engine({"mode": "client", "callbacks": "poll"})
        e.attach()
        c = e.client(gw_url)
        await c.subscribe_async("gc", lambda m: None)
        t = threading.Thread(target=e.close)
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.01)
        assert e.closed and c.closed

    asyncio.run(main())


def test_interpreter_exit_with_engines_running(tmp_path, gw_url):
    """Engines left running (callbacks in flight) at exit: atexit destroys them before
    the interpreter finalises; the process exits 0."""
    script = tmp_path / "exit.py"
    script.write_text(textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(REPO / 'bindings' / 'python')!r})
        import streamotter as so
        e = so.Engine({{"mode": "client"}})
        c = e.client({gw_url!r})
        got = threading.Event()
        c.subscribe("gc", lambda m: got.set()).result(10)
        for i in range(200):
            c.publish("gc", {{"exit": i}})
        got.wait(10)
        print("bye")
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "bye" in r.stdout and "Traceback" not in r.stderr
