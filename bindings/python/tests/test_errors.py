"""Error codes and messages through the binding."""

from __future__ import annotations

import pytest
from conftest import Counter, unique, wait_until

import streamotter as so


def test_bad_conf_key_names_the_key():
    with so.Conf() as c:
        with pytest.raises(so.ConfigError) as ei:
            c.set("no.such.key", "1")
        assert ei.value.code == -2 and ei.value.name == "SOT_ERR_CONFIG"
        assert "no.such.key" in ei.value.message
        with pytest.raises(so.ConfigError, match="ws.max_frame_size"):
            c.set("ws.max_frame_size", "tiny")
        with pytest.raises(so.ConfigError, match="reconnect.max_delay_ms"):
            c.set("reconnect.max_delay_ms", "nope")
        c.set("listen", "127.0.0.1:0").set("embedded.brokers", 1)
        assert c.get("listen") == "127.0.0.1:0"
        assert c["embedded.brokers"] == "1"
        assert c.get("mode") is None and "mode" not in c
    # A plain dict goes through the same validation.
    with pytest.raises(so.ConfigError, match="bogus_key"):
        so.Engine({"bogus_key": "1"})
    with pytest.raises(so.ConfigError, match="callbacks"):
        so.Engine({"callbacks": "sometimes"})
    # A Conf object works wherever a dict does, and can be reused.
    with so.Conf({"mode": "client"}) as cf:
        for _ in range(2):
            with so.Engine(cf) as e:
                with pytest.raises(so.StateError):
                    e.publish("x", b"1")  # mode=client: not a gateway
    # A closed Conf refuses politely.
    c = so.Conf({"mode": "client"})
    c.close()
    c.close()
    with pytest.raises(so.StateError):
        c.set("mode", "client")


def test_start_twice_is_a_state_error():
    with so.Engine({"mode": "client"}, start=False) as e:
        with pytest.raises(so.StateError):
            _ = e.port  # not started
        e.start()
        with pytest.raises(so.StateError) as ei:
            e.start()
        assert ei.value.code == -3 and "already" in ei.value.message
        # engine-side publish needs a running gateway
        with pytest.raises(so.StateError):
            e.publish("misc", b"x")
        # fd/poll in thread mode
        with pytest.raises(so.StateError):
            e.fileno()
        with pytest.raises(so.StateError):
            e.poll()
    # after close, every call refuses with StateError (no crash, no use of a freed handle)
    with pytest.raises(so.StateError):
        e.start()
    with pytest.raises(so.StateError):
        e.send(1, "x")
    e.close()  # idempotent


def test_listen_address_in_use_is_an_io_error(gateway):
    with pytest.raises(so.IoError) as ei:
        so.Engine({"mode": "echo", "listen": f"127.0.0.1:{gateway.port}"})
    assert ei.value.code == -5 and ei.value.message


def test_stop_then_stop_again_and_server_callbacks_after_start():
    e = so.Engine({"mode": "client"})
    with pytest.raises(so.StateError):
        e.set_server_callbacks(on_connect=lambda *a: None)
    e.stop()
    e.stop()  # no-op
    e.close()


def test_not_found_for_a_closed_connection(gateway):
    conns = Counter()
    closes = Counter()
    gw = so.Engine({"listen": "127.0.0.1:0", "embedded.brokers": 1, "embedded.topics": "t:1"},
                   on_connect=lambda c, path, h: conns.add(c), on_close=lambda c, code, r: closes.add((c, code)))
    with gw, so.Engine({"mode": "client"}) as ce:
        got = Counter()
        cl = ce.client(f"ws://127.0.0.1:{gw.port}/", on_message=got.add)
        assert conns.wait(1, 10) == 1
        conn = conns.items[0]
        gw.send(conn, '{"op":"hello"}')  # reaches the client's raw on_message
        wait_until(lambda: any("hello" in m for m in got.items if isinstance(m, str)), 5)
        gw.send(conn, b"\x00\x01")
        wait_until(lambda: b"\x00\x01" in got.items, 5)
        with pytest.raises(so.InvalidArgError):
            gw.close_connection(conn, 1005)  # may not be sent
        gw.close_connection(conn, 4001, "go away")
        assert closes.wait(1, 10) == 1
        assert closes.items[0][0] == conn
        with pytest.raises(so.NotFoundError) as ei:
            gw.send(conn, "anyone there?")
        assert ei.value.code == -8 and str(conn) in ei.value.message
        with pytest.raises(so.NotFoundError):
            gw.close_connection(conn)
        with pytest.raises(so.NotFoundError):
            gw.send(999_999, "x")
        cl.close()


def test_client_argument_errors(gw_url, client_engine):
    with pytest.raises(so.ConfigError, match="url"):
        client_engine.client("http://nope/")
    with pytest.raises(so.ConfigError, match="client.ping_interval_ms"):
        client_engine.client(gw_url, {"client.ping_interval_ms": "-5"})
    with client_engine.client(gw_url) as c:
        with pytest.raises(so.InvalidArgError):
            c.publish("misc", "{not json", encoded=True)
        with pytest.raises(ValueError):
            c.subscribe("misc", print, start="yesterday")
        with pytest.raises(so.StateError):
            c.start()  # started by the constructor
        with pytest.raises(TypeError):
            c.send(12345)
        # a gateway answer that is an error: RequestError with the protocol's word
        with pytest.raises(so.RequestError) as ei:
            c.subscribe(unique("no-such-topic"), print).result(15)
        assert ei.value.reason == "unknown_channel"
        c.subscribe("misc", print).result(10)
        with pytest.raises(so.RequestError) as ei:
            c.subscribe("misc", print).result(10)
        assert ei.value.reason == "already_subscribed"
    with pytest.raises(so.StateError):
        c.publish("misc", 1)
    with pytest.raises(so.StateError):
        c.health()


def test_consumer_errors(gateway, client_engine):
    with pytest.raises(TypeError):
        gateway.consumer()
    with pytest.raises(so.ConfigError, match="kafka"):
        gateway.consumer({"listen": "127.0.0.1:0"}, on_record=print)
    with gateway.consumer(on_record=print) as c:
        with pytest.raises(so.StateError):
            c.seek_time("cons", 0)  # nothing of 'cons' is assigned
    with pytest.raises(so.StateError):
        c.assign("cons", 0)
    # a client-mode engine has no Kafka
    with pytest.raises(so.ConfigError, match="bootstrap"):
        client_engine.consumer(on_record=print)
