"""Custom authentication of upgrades and audit events through the binding."""

from __future__ import annotations

import threading

import pytest
from conftest import Counter, wait_until

import streamotter as so


class Boom(Exception):
    pass


def test_auth_allow_deny_later_and_audit():
    requests = []
    audit = Counter()

    def on_auth(req: so.AuthRequest):
        requests.append(req)
        token = req.header("authorization")
        if token == "Bearer good":
            return True
        if token == "Bearer later":
            # answered later, from another thread
            threading.Timer(0.05, req.allow, kwargs={"subject": "otter", "roles": ["reader", "writer"]}).start()
            return None
        if token == "Bearer boom":
            raise Boom("auth callback failed")
        req.deny(401, "no token")

    gw = so.Engine({"listen": "127.0.0.1:0", "embedded.brokers": 1, "embedded.topics": "a:1"},
                   on_auth=on_auth, on_audit=audit.add, on_callback_error=lambda e: None)
    url = f"ws://127.0.0.1:{gw.port}/secure"
    with gw, so.Engine({"mode": "client"}) as ce:
        def connect(token):
            opened, errors = threading.Event(), []
            conf = {"reconnect.enabled": "false"}
            if token:
                conf["client.header.Authorization"] = f"Bearer {token}"
            c = ce.client(url, conf, on_open=lambda p: opened.set(),
                          on_error=lambda code, msg: errors.append((code, msg)))
            return c, opened, errors

        c1, opened1, _ = connect("good")
        assert opened1.wait(10)
        c2, opened2, _ = connect("later")
        assert opened2.wait(10)
        c3, opened3, errors3 = connect(None)
        wait_until(lambda: errors3, 10)
        assert not opened3.is_set() and errors3[0][0] == "handshake_failed" and "401" in errors3[0][1]
        c4, opened4, errors4 = connect("boom")
        wait_until(lambda: errors4, 10)
        assert "500" in errors4[0][1] and not opened4.is_set()
        with pytest.raises(Boom):  # stored, raised again by the next call on the gateway
            gw.port

        req = requests[0]
        assert req.path == "/secure" and req.peer_address.startswith("127.0.0.1") and req.tls_subject is None
        with pytest.raises(so.NotFoundError):
            req.allow()  # answered already
        with pytest.raises(so.NotFoundError):
            gw.auth_deny(123456)

        # the audit trail: successes with the identity given, refusals, opens
        wait_until(lambda: sum(1 for e in audit.items if e.get("event") == "connection_open") >= 2, 10)
        events = [e.get("event") for e in audit.items]
        assert "auth_success" in events and ("auth_failure" in events or "denied" in events)
        later = [e for e in audit.items if e.get("event") == "auth_success" and e.get("sub") == "otter"]
        assert later, audit.items
        assert "Bearer" not in repr(audit.items)  # no token in the audit trail
        for c in (c1, c2, c3, c4):
            c.close()


def test_auth_callback_must_be_set_before_start():
    with so.Engine({"mode": "client"}) as e:
        with pytest.raises(so.StateError):
            e.set_auth_callback(lambda r: True)
        with pytest.raises(so.StateError):
            e.set_audit_callback(print)


def test_key_provider_encrypts_in_kafka_and_decrypts_for_subscribers(tmp_path):
    """The engine asks the Python key provider for keys: Kafka holds ciphertext under the
    key id header, subscribers read plaintext."""
    import threading
    calls = []
    key = bytes(range(32))

    def provider(key_id, channel):
        calls.append((key_id, channel))
        if key_id in (None, "py1"):
            return ("py1", key)
        return None

    with so.Engine({"listen": "127.0.0.1:0", "embedded.brokers": "1",
                             "embedded.topics": "pyvault:1", "encryption.channels": "pyvault"},
                   key_provider=provider) as eng:
        got = []
        done = threading.Event()
        with eng.client(f"ws://127.0.0.1:{eng.port}/") as c:
            def on_msg(m):
                got.append(m)
                if len(got) == 3:
                    done.set()
            c.subscribe("pyvault", on_msg).result(10)
            for i in range(3):
                c.publish("pyvault", {"secret": "hush", "n": i}).result(10)
            assert done.wait(10)
        assert all(m.value["secret"] == "hush" for m in got)
        raw = []
        rdone = threading.Event()

        def on_rec(r):
            raw.append(r)
            if len(raw) == 3:
                rdone.set()
        cons = eng.consumer({}, on_rec)
        try:
            cons.assign("pyvault", 0)
            assert rdone.wait(10)
        finally:
            cons.close()
        for r in raw:
            assert b"hush" not in r.value
            assert dict(r.headers).get("streamotter-key-id") in (b"py1", "py1")
    assert (None, "pyvault") in calls and ("py1", None) in calls
