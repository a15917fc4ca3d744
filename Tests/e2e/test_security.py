"""Security of the real `streamotter serve` binary (issue 5), against independent peers.

- JWT at the upgrade: keys made by `openssl genpkey` (RSA 2048, EC P-256, Ed25519) and an
  HMAC secret, served to the gateway as a JWKS file, a PEM file and a secret file; tokens
  signed with `cryptography`, forgeries assembled by hand. Raw-socket handshakes read the
  HTTP status: every forgery must get 401 and never 101.
- Credential expiry: `token_expiring` error frame, Close 4001 before `exp`, refresh with
  `{"op":"auth"}`.
- OAuth2 introspection against a `http.server` endpoint run by the test (Basic client
  authentication checked, requests counted for the cache).
- Roles per channel from a permissions file; denials are `forbidden` errors on an open
  connection; audit JSON lines, without any token text.
- TLS: certificates from `openssl req`/`openssl x509`; Python `ssl` + `websockets` and
  `openssl s_client` as clients; TLS 1.0/1.1 and plain TCP refused; mTLS; certificate
  reload; SNI; the engine's own wss client (through the Python binding) refusing a
  certificate for another host name.
- Message encryption: `kcat` sees only AES-256-GCM ciphertext (decrypted independently with
  `cryptography` from the documented format), subscribers see plaintext, tampered records
  are reported with `decrypt_failed` and never delivered, key rotation by file reload.
- Limits: origin check, connection limits, header limits, handshake deadline, rates,
  subscriptions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import REPO, GatewayFactory, run, wait_until
from e2e_helpers import Client, ws_connect
from security_helpers import (
    OPENSSL,
    IntrospectionServer,
    auth_header,
    b64u,
    b64u_json,
    claims,
    client_ctx,
    common_name,
    kcat_consume_headers,
    make_jwt,
    make_keys,
    parse_head,
    peer_certificate,
    self_signed,
    sets,
    sign,
    signed_by,
    start_gateway,
    upgrade,
    upgrade_request,
    wait_file_lines,
)
from security_helpers import run as run_cmd

pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")

ISSUER = "https://issuer.streamotter.test"
AUDIENCE = "streamotter-e2e"


# =========================================================================== fixtures


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("jwt-keys"))


@pytest.fixture(scope="module")
def module_gateways(gateway_exec):
    """A factory for gateways shared by the tests of this module (started once)."""
    f = GatewayFactory(gateway_exec)
    try:
        yield f
    finally:
        f.finish()


@pytest.fixture(scope="module")
def jwt_gw(module_gateways, keys, tmp_path_factory):
    """auth.mode=jwt with every key type, issuer and audience checked, no leeway."""
    audit = tmp_path_factory.mktemp("jwt-audit") / "audit.jsonl"
    gw = start_gateway(module_gateways, keys.gateway_args({
        "auth.jwt.issuer": ISSUER,
        "auth.jwt.audience": AUDIENCE,
        "auth.jwt.leeway_s": 0,
        "audit.file": audit,
    }))
    gw.audit = audit
    return gw


def good_claims(sub="alice", ttl=300, **extra):
    return claims(sub, ttl, iss=ISSUER, aud=AUDIENCE, **extra)


def status_of(gw, **kw):
    return upgrade(gw.host, gw.port, **kw)


# =========================================================================== JWT


def forged_tokens(keys) -> dict[str, tuple[str, str]]:
    """name -> (token, the refusal reason the gateway names)."""
    c = good_claims()
    valid = make_jwt("RS256", keys.rsa_key, c, kid="rsa1")
    h, p, s = valid.split(".")
    sig_len = len(base64.urlsafe_b64decode(s + "=="))

    def hs_with(secret: bytes, kid):
        hdr = {"alg": "HS256", "typ": "JWT"}
        if kid:
            hdr["kid"] = kid
        si = (b64u_json(hdr) + "." + b64u_json(c)).encode()
        return si.decode() + "." + b64u(sign("HS256", secret, si))

    tampered = dict(c, sub="admin", roles=["admin"])
    now = int(time.time())
    return {
        "alg_none": (b64u_json({"alg": "none", "typ": "JWT"}) + "." + b64u_json(c) + ".",
                     "algorithm_not_allowed"),
        "alg_none_with_kid_and_signature": (
            b64u_json({"alg": "none", "kid": "rsa1"}) + "." + b64u_json(c) + "." + s,
            "algorithm_not_allowed"),
        "alg_None_capitalised": (b64u_json({"alg": "None"}) + "." + b64u_json(c) + ".",
                                 "algorithm_not_allowed"),
        "empty_signature": (f"{h}.{p}.", "bad_signature"),
        "garbage_signature": (f"{h}.{p}.{b64u(os.urandom(sig_len))}", "bad_signature"),
        "rs256_public_pem_as_hs256_secret_kid_rsa1": (hs_with(keys.rsa_pub_pem, "rsa1"),
                                                      "algorithm_not_allowed"),
        "rs256_public_pem_as_hs256_secret_no_kid": (hs_with(keys.rsa_pub_pem, None),
                                                    "bad_signature"),
        "unknown_kid": (make_jwt("RS256", keys.other_rsa_key, c, kid="rogue-1"), "unknown_key"),
        "known_kid_wrong_key": (make_jwt("RS256", keys.other_rsa_key, c, kid="rsa1"),
                                "bad_signature"),
        "ec_key_claimed_as_rs256": (make_jwt("RS256", keys.rsa_key, c, kid="ec1"),
                                    "algorithm_not_allowed"),
        "expired": (make_jwt("RS256", keys.rsa_key, dict(c, iat=now - 600, exp=now - 60), kid="rsa1"),
                    "expired"),
        "nbf_in_future": (make_jwt("ES256", keys.ec_key, dict(c, nbf=now + 600), kid="ec1"),
                          "not_yet_valid"),
        "missing_exp": (make_jwt("RS256", keys.rsa_key, {k: v for k, v in c.items() if k != "exp"},
                                 kid="rsa1"), "missing_expiry"),
        "wrong_iss": (make_jwt("RS256", keys.rsa_key, dict(c, iss="https://evil.example"), kid="rsa1"),
                      "issuer_mismatch"),
        "wrong_aud": (make_jwt("EdDSA", keys.ed_key, dict(c, aud="someone-else"), kid="ed1"),
                      "audience_mismatch"),
        "tampered_payload": (f"{h}.{b64u_json(tampered)}.{s}", "bad_signature"),
        "tampered_header_kid": (f"{b64u_json({'alg': 'RS256', 'kid': 'ec1'})}.{p}.{s}",
                                "algorithm_not_allowed"),
        "crit_header": (make_jwt("RS256", keys.rsa_key, c, kid="rsa1", header={"crit": ["exp"]}),
                        "malformed"),
        "kid_not_a_string": (make_jwt("RS256", keys.rsa_key, c, header={"kid": 7}), "malformed"),
        "exp_not_a_number": (make_jwt("RS256", keys.rsa_key, dict(c, exp=str(now + 300)), kid="rsa1"),
                             "invalid_claim"),
        "two_parts": (f"{h}.{p}", "malformed"),
        "tampered_hs256_payload": (
            ".".join([make_jwt("HS256", keys.hmac_secret, c, kid="hs1").split(".")[0],
                      b64u_json(tampered),
                      make_jwt("HS256", keys.hmac_secret, c, kid="hs1").split(".")[2]]),
            "bad_signature"),
    }


def test_jwt_every_forgery_gets_401_at_the_handshake(jwt_gw, keys):
    forged = forged_tokens(keys)
    problems = []
    for name, (token, reason) in forged.items():
        for how, kw in (("header", {"headers": auth_header(token)}),
                        ("protocol", {"protocols": f"streamotter.v1, bearer.{token}"})):
            r = status_of(jwt_gw, **kw)
            if r.status != 401:
                problems.append(f"{name} via {how}: status {r.status} (want 401): {r.raw[:200]!r}")
                continue
            if r.headers.get("www-authenticate", "").split(" ")[0] != "Bearer":
                problems.append(f"{name}: 401 without WWW-Authenticate: Bearer: {r.raw[:300]!r}")
            if "upgrade" in r.headers or "sec-websocket-accept" in r.headers:
                problems.append(f"{name}: upgrade headers on a refusal: {r.raw[:300]!r}")
            if reason.encode() not in r.body:
                problems.append(f"{name} via {how}: body does not name {reason!r}: {r.body!r}")
            if token.split(".")[1].encode() in r.raw:
                problems.append(f"{name}: the refusal echoes the token: {r.raw[:300]!r}")
    # No token at all.
    r = status_of(jwt_gw)
    if r.status != 401:
        problems.append(f"no token: status {r.status}")
    r = status_of(jwt_gw, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    if r.status != 401:
        problems.append(f"Basic credentials: status {r.status}")
    assert not problems, "\n".join(problems)

    # Each refusal is an audit line with its reason; no token text in the file.
    def have_all(lines):
        reasons = [x.get("reason") for x in lines if x.get("event") == "auth_failure"]
        return all(reason in reasons for _, reason in forged.values())
    wait_file_lines(jwt_gw.audit, have_all, what="an auth_failure line per forgery reason")
    text = jwt_gw.audit.read_text()
    for token, _ in forged.values():
        for part in token.split("."):
            if len(part) > 8:
                assert part not in text, f"token text in the audit file: {part[:40]}"


@pytest.mark.parametrize("alg,kid", [("RS256", "rsa1"), ("PS256", "rsa1"), ("RS512", "rsa1"),
                                     ("ES256", "ec1"), ("EdDSA", "ed1"), ("HS256", "hs1")])
def test_jwt_valid_token_gets_101(jwt_gw, keys, alg, kid):
    key = {"rsa1": keys.rsa_key, "ec1": keys.ec_key, "ed1": keys.ed_key, "hs1": keys.hmac_secret}[kid]
    token = make_jwt(alg, key, good_claims(), kid=kid)
    r = status_of(jwt_gw, headers=auth_header(token))
    assert r.status == 101, r.raw[:400]
    # The same token as a subprotocol entry, next to streamotter.v1: the response selects
    # streamotter.v1 and never echoes the token.
    r = status_of(jwt_gw, protocols=f"streamotter.v1, bearer.{token}")
    assert r.status == 101, r.raw[:400]
    assert r.headers.get("sec-websocket-protocol") == "streamotter.v1", r.raw[:400]
    assert token.split(".")[1].encode() not in r.raw


def test_jwt_token_sources_and_round_trip(jwt_gw, keys, gateway_factory):
    token = make_jwt("ES256", keys.ec_key, good_claims("bob"), kid="ec1")
    # Query tokens are off by default (URLs end up in logs).
    r = status_of(jwt_gw, path=f"/?access_token={token}")
    assert r.status == 401, r.raw[:300]

    # A working session through `websockets`, token in the Authorization header.
    async def session():
        c = await Client.connect(jwt_gw.url, additional_headers=auth_header(token))
        t = jwt_gw.topic("t1")
        await c.subscribe(t)
        ack = await c.call({"op": "publish", "channel": t, "data": {"n": 1}})
        assert ack["op"] == "ack", ack
        msgs = await c.wait_messages(1, 10)
        assert msgs[0]["data"] == {"n": 1}
        await c.close()
    run(session(), 30)

    # A gateway that takes the token only from the query, under another parameter name.
    gw = start_gateway(gateway_factory, keys.gateway_args({
        "auth.token_sources": "query", "auth.query_parameter": "tok"}))
    assert status_of(gw, path=f"/v1?tok={token}").status == 101
    assert status_of(gw, path=f"/v1?access_token={token}").status == 401
    assert status_of(gw, headers=auth_header(token)).status == 401, "header source is off"
    assert status_of(gw, protocols=f"streamotter.v1, bearer.{token}").status == 401
    # header,protocol,query: all three; the default leeway (30 s) for exp and nbf.
    gw2 = start_gateway(gateway_factory, keys.gateway_args({
        "auth.token_sources": "header,protocol,query"}))
    assert status_of(gw2, path=f"/?access_token={token}").status == 101
    assert status_of(gw2, headers=auth_header(token)).status == 101
    now = int(time.time())
    for exp_nbf, want in (({"exp": now - 10}, 101), ({"exp": now - 45}, 401),
                          ({"nbf": now + 10}, 101), ({"nbf": now + 45}, 401)):
        t = make_jwt("HS256", keys.hmac_secret, dict(claims("bob"), **exp_nbf), kid="hs1")
        assert status_of(gw2, headers=auth_header(t)).status == want, (exp_nbf, want)
    # The gateway's own log output never carries the token (query tokens included).
    for g in (gw, gw2):
        text = "\n".join(g.proc.stdout_lines + list(g.proc.stderr_tail))
        assert token.split(".")[1] not in text and token.split(".")[2] not in text


def test_jwt_algorithm_allow_list(keys, gateway_factory):
    """auth.jwt.algorithms limits what each key verifies: the RSA key of the JWKS takes
    RS256 only, so PS256 and RS512 tokens signed by that very key are refused."""
    gw = start_gateway(gateway_factory, sets({
        "auth.mode": "jwt", "auth.jwt.jwks_file": keys.jwks_file,
        "auth.jwt.hmac_secret_file": keys.hmac_file, "auth.jwt.hmac_kid": "hs1",
        "auth.jwt.algorithms": "RS256,ES256,HS256"}))
    for alg, key, kid, want in (("RS256", keys.rsa_key, "rsa1", 101), ("PS256", keys.rsa_key, "rsa1", 401),
                                ("RS512", keys.rsa_key, "rsa1", 401), ("ES256", keys.ec_key, "ec1", 101),
                                ("HS256", keys.hmac_secret, "hs1", 101), ("RS256", keys.rsa_key, None, 101)):
        r = status_of(gw, headers=auth_header(make_jwt(alg, key, claims(), kid=kid)))
        assert r.status == want, (alg, kid, r.raw[:300])
        if want == 401:
            assert b"algorithm_not_allowed" in r.body, r.body


def test_jwt_algorithm_allow_list_with_pem_key(keys, gateway_factory):
    gw = start_gateway(gateway_factory, keys.gateway_args({"auth.jwt.algorithms": "RS256,ES256,EdDSA,HS256"}))
    assert status_of(gw, headers=auth_header(make_jwt("EdDSA", keys.ed_key, claims(), kid="ed1"))).status == 101


def test_jwt_jwks_reload(keys, gateway_factory, tmp_path):
    """JWKS rotation without a restart (auth.jwt.reload_interval_ms): a new kid is
    accepted once the file names it, a removed one refused."""
    jwks = tmp_path / "jwks.json"
    orig = json.loads(keys.jwks_file.read_text())
    jwks.write_text(json.dumps(orig))
    gw = start_gateway(gateway_factory, sets({"auth.mode": "jwt", "auth.jwt.jwks_file": jwks,
                                              "auth.jwt.reload_interval_ms": 100}))
    old = make_jwt("RS256", keys.rsa_key, claims(), kid="rsa1")
    new = make_jwt("RS256", keys.other_rsa_key, claims(), kid="rsa2")
    assert status_of(gw, headers=auth_header(old)).status == 101
    r = status_of(gw, headers=auth_header(new))
    assert r.status == 401 and b"unknown_key" in r.body, r.raw[:300]
    n = keys.other_rsa_key.public_key().public_numbers()
    rsa2 = {"kty": "RSA", "kid": "rsa2", "alg": "RS256", "n": b64u(n.n.to_bytes(256, "big")),
            "e": b64u(n.e.to_bytes(3, "big"))}

    def replace(doc):
        tmp = jwks.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, jwks)
    replace({"keys": orig["keys"] + [rsa2]})
    wait_until(lambda: status_of(gw, headers=auth_header(new)).status == 101, 5, 0.05, "rsa2 accepted")
    replace({"keys": [rsa2]})
    wait_until(lambda: status_of(gw, headers=auth_header(old)).status == 401, 5, 0.05, "rsa1 refused")
    assert status_of(gw, headers=auth_header(new)).status == 101
    # A broken file keeps the current keys.
    jwks.write_text("{not json")
    time.sleep(0.5)  # several reload periods: nothing to poll for (nothing may change)
    assert status_of(gw, headers=auth_header(new)).status == 101


def test_jwt_expiry_close_4001_and_refresh(jwt_gw, keys):
    """exp = now + 4 s (leeway 0): token_expiring at once (it is inside the 30 s warning
    window), Close 4001 one second before exp. A client that refreshes in time stays."""
    exp = int(time.time()) + 5
    if exp - time.time() < 4.2:
        exp += 1
    short = lambda sub: make_jwt("RS256", keys.rsa_key, dict(good_claims(sub), exp=exp), kid="rsa1")  # noqa: E731

    async def expiring():
        c = await Client.connect(jwt_gw.url, "expiring", additional_headers=auth_header(short("erin")))
        w = await c.wait_for(lambda: [m for m in c.unsolicited if m.get("code") == "token_expiring"], 3,
                             "a token_expiring error frame")
        assert w[0]["op"] == "error" and w[0]["expires_at"] == exp * 1000, w
        while not c.closed:
            await asyncio.sleep(0.02)
            assert time.time() < exp + 2, "not closed after exp"
        closed_at = time.time()
        assert c.close_rcvd is not None and c.close_rcvd.code == 4001, c.close_rcvd
        assert closed_at < exp, f"closed {closed_at - exp:.2f}s after exp"
        return closed_at

    async def refreshing():
        c = await Client.connect(jwt_gw.url, "refreshing", additional_headers=auth_header(short("frank")))
        await c.wait_for(lambda: [m for m in c.unsolicited if m.get("code") == "token_expiring"], 3,
                         "a token_expiring error frame")
        # Refused refreshes: a forged token, another subject's token.
        bad = await c.call({"op": "auth", "token": short("frank")[:-6] + "AAAAAA"})
        assert bad["op"] == "error" and bad["code"] == "unauthorized", bad
        other = make_jwt("RS256", keys.rsa_key, good_claims("mallory", ttl=600), kid="rsa1")
        bad = await c.call({"op": "auth", "token": other})
        assert bad["op"] == "error" and bad["code"] == "unauthorized", bad
        fresh = make_jwt("EdDSA", keys.ed_key, good_claims("frank", ttl=600), kid="ed1")
        ok = await c.call({"op": "auth", "token": fresh})
        assert ok["op"] == "ok", ok
        while time.time() < exp + 1.0:
            await asyncio.sleep(0.05)
            assert not c.closed, f"refreshed connection closed: {c.close_rcvd}"
        reply = await c.call({"op": "subscribe", "channel": jwt_gw.topic("t1")})
        assert reply["op"] == "ok", reply
        await c.close()

    async def both():
        await asyncio.gather(expiring(), refreshing())
    run(both(), 30)

    lines = wait_file_lines(jwt_gw.audit, lambda ls: any(
        x["event"] == "token_expired" and x.get("sub") == "erin" for x in ls)
        and any(x["event"] == "token_refreshed" and x.get("sub") == "frank" for x in ls),
        what="token_expired (erin) and token_refreshed (frank)")
    exp_line = [x for x in lines if x["event"] == "token_expired" and x.get("sub") == "erin"][0]
    assert exp_line.get("close_code") == 4001, exp_line


def test_jwt_expiry_enforced_with_pings_disabled(keys, gateway_factory):
    gw = start_gateway(gateway_factory, keys.gateway_args({
        "auth.jwt.leeway_s": 0, "ws.ping_interval_ms": 0, "ws.idle_timeout_ms": 0}))
    exp = int(time.time()) + 3
    token = make_jwt("RS256", keys.rsa_key, claims("gina", exp=exp), kid="rsa1")

    async def go():
        c = await Client.connect(gw.url, additional_headers=auth_header(token))
        while not c.closed and time.time() < exp + 1.5:
            await asyncio.sleep(0.05)
        closed = c.closed
        if not closed:
            rep = await c.call({"op": "subscribe", "channel": gw.topic("t1")})
            await c.close()
            assert rep["op"] == "error", f"open past exp, and subscribe answered {rep}"
        assert c.close_rcvd is not None and c.close_rcvd.code == 4001, c.close_rcvd
    run(go(), 20)


def hs256_raw(keys, payload: bytes, header: bytes = b'{"alg":"HS256","kid":"hs1"}') -> str:
    """A correctly signed HS256 token over JSON text taken as is (numbers Python's json
    cannot write, repeated member names)."""
    si = (b64u(header) + "." + b64u(payload)).encode()
    return si.decode() + "." + b64u(sign("HS256", keys.hmac_secret, si))


def test_jwt_unusable_times_and_repeated_names_refused_and_gateway_survives(keys, gateway_factory, tmp_path):
    """Correctly signed tokens whose exp/nbf/iat is no NumericDate the gateway can use
    (exp = 1e16 s made the gateway trap converting it to Int64 milliseconds, at the upgrade
    and on {"op":"auth"}), or with a member name twice (other parsers take the last one),
    get 401 / `unauthorized`; the gateway keeps serving its clients and new ones."""
    audit = tmp_path / "audit.jsonl"
    gw = start_gateway(gateway_factory, keys.gateway_args({"audit.file": audit}))
    now = int(time.time())
    exp = now + 600
    bad = {
        "exp 1e16": (b'{"sub":"alice","exp":10000000000000000}', "invalid_claim"),
        "exp 9.3e15": (b'{"sub":"alice","exp":9.3e15}', "invalid_claim"),
        "exp 1e308": (b'{"sub":"alice","exp":1e308}', "invalid_claim"),
        "exp 1e400": (b'{"sub":"alice","exp":1e400}', "invalid_claim"),
        "exp after 9999": (b'{"sub":"alice","exp":253402300800}', "invalid_claim"),
        "nbf 1e16": (b'{"sub":"alice","exp":%d,"nbf":1e16}' % exp, "invalid_claim"),
        "iat -1": (b'{"sub":"alice","exp":%d,"iat":-1}' % exp, "invalid_claim"),
        "sub twice": (b'{"sub":"alice","sub":"bob","exp":%d}' % exp, "duplicate_member"),
        "exp twice": (b'{"sub":"alice","exp":%d,"exp":1}' % exp, "duplicate_member"),
        "nested roles twice": (b'{"sub":"alice","exp":%d,"realm":{"roles":["a"],"roles":["b"]}}' % exp,
                               "duplicate_member"),
    }
    tokens = {name: (hs256_raw(keys, payload), reason) for name, (payload, reason) in bad.items()}
    tokens["kid twice in the header"] = (
        hs256_raw(keys, b'{"sub":"alice","exp":%d}' % exp, b'{"alg":"HS256","kid":"hs1","kid":"rsa1"}'),
        "duplicate_member")
    good = make_jwt("HS256", keys.hmac_secret, claims("alice", ttl=600), kid="hs1")

    async def refresh_while_connected():
        # An authenticated client offers each token as a refresh: refused, and the
        # connection (and the gateway) keep working.
        c = await Client.connect(gw.url, "refreshing", additional_headers=auth_header(good))
        for name, (token, reason) in tokens.items():
            reply = await c.call({"op": "auth", "token": token})
            assert reply["op"] == "error" and reply["code"] == "unauthorized", (name, reply)
            assert reason in reply.get("message", ""), (name, reply)
        await c.subscribe(gw.topic("t1"))
        await c.close()
    run(refresh_while_connected(), 30)

    problems = []
    for name, (token, reason) in tokens.items():
        for how, kw in (("header", {"headers": auth_header(token)}),
                        ("protocol", {"protocols": f"streamotter.v1, bearer.{token}"})):
            r = status_of(gw, **kw)
            if r.status != 401 or reason.encode() not in r.body:
                problems.append(f"{name} via {how}: {r.status} {r.raw[:300]!r} (want 401 naming {reason})")
    assert not problems, "\n".join(problems)
    assert gw.proc.proc.poll() is None, "the gateway died"

    # Another client is served: upgrade, subscribe, publish, receive.
    async def another():
        c = await Client.connect(gw.url, "after", additional_headers=auth_header(good))
        t = gw.topic("t1")
        await c.subscribe(t)
        ack = await c.call({"op": "publish", "channel": t, "data": {"n": 1}})
        assert ack["op"] == "ack", ack
        assert (await c.wait_messages(1, 10))[0]["data"] == {"n": 1}
        await c.close()
    run(another(), 30)
    wait_file_lines(audit, lambda ls: {"invalid_claim", "duplicate_member"} <= {
        x.get("reason") for x in ls if x.get("event") == "auth_failure"},
        what="auth_failure lines for invalid_claim and duplicate_member")


def test_misconfigurations_refuse_to_start(gateway_exec, keys, tmp_path):
    """Unsafe or broken security settings stop `serve` at once with a message naming the
    setting, instead of starting with a weaker configuration."""
    short = tmp_path / "short.secret"
    short.write_bytes(os.urandom(16))
    pem_secret = tmp_path / "pem.secret"
    pem_secret.write_bytes(keys.rsa_pub_pem)
    small_rsa = tmp_path / "rsa1024.pem"
    run_cmd([OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", small_rsa])
    small_pub = tmp_path / "rsa1024.pub.pem"
    run_cmd([OPENSSL, "pkey", "-in", small_rsa, "-pubout", "-out", small_pub])
    short_key = tmp_path / "short.keys"
    short_key.write_text(f"k1 {base64.b64encode(os.urandom(16)).decode()} active\n")
    no_active = tmp_path / "noactive.keys"
    no_active.write_text(key_line("k1", os.urandom(32), False))
    bad_perm = tmp_path / "bad.perms"
    bad_perm.write_text("role x: delete on *\n")
    bad_pattern = tmp_path / "badpattern.perms"
    bad_pattern.write_text("role x: subscribe on ord*rs\n")
    cases = [
        ({"auth.mode": "jwt"}, "auth.mode=jwt needs keys"),
        ({"auth.mode": "jwt", "auth.jwt.hmac_secret_file": short}, "at least 32 bytes"),
        ({"auth.mode": "jwt", "auth.jwt.hmac_secret_file": pem_secret}, "looks like a public key"),
        ({"auth.mode": "jwt", "auth.jwt.pem_file": small_pub}, "auth.jwt"),
        ({"auth.mode": "jwt", "auth.jwt.hmac_secret_file": keys.hmac_file, "auth.jwt.algorithms": "none"},
         "auth.jwt.algorithms"),
        ({"auth.mode": "basic"}, "auth.mode"),
        ({"auth.token_sources": "cookie"}, "auth.token_sources"),
        ({"auth.mode": "introspection"}, "auth.introspection.url"),
        ({"tls.cert_file": tmp_path / "missing.crt", "tls.key_file": tmp_path / "missing.key"}, "tls"),
        ({"tls.min_version": "1.1"}, "tls.min_version"),
        ({"tls.client_auth": "maybe"}, "tls.client_auth"),
        ({"encryption.key_file": short_key}, "encryption.key_file"),
        ({"encryption.key_file": no_active}, "active"),
        ({"auth.permissions_file": bad_perm}, "unknown permission"),
        ({"auth.permissions_file": bad_pattern}, "auth.permissions_file"),
    ]
    problems = []
    for kv, needle in cases:
        p = subprocess.Popen([gateway_exec, "serve", "--listen", "127.0.0.1:0"] + sets(kv),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            problems.append(f"{kv}: started (killed after 10 s)")
            continue
        text = (out + err).decode("utf-8", "replace")
        if p.returncode == 0 or needle not in text or "listening:" in text:
            problems.append(f"{kv}: rc={p.returncode}, want a refusal naming {needle!r}: {text[-300:]}")
    assert not problems, "\n".join(problems)


# =========================================================================== introspection


@pytest.fixture
def introspection(tmp_path):
    srv = IntrospectionServer().start()
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(srv.client_secret + "\n")
    srv.secret_file = secret_file
    try:
        yield srv
    finally:
        srv.stop()


def test_introspection_active_inactive_and_cache(introspection, gateway_factory, tmp_path):
    srv = introspection
    now = int(time.time())
    active = "opaque-active-" + os.urandom(12).hex()
    expired = "opaque-expired-" + os.urandom(12).hex()
    inactive = "opaque-inactive-" + os.urandom(12).hex()
    srv.tokens[active] = {"active": True, "sub": "carol", "exp": now + 300, "roles": ["reader"],
                          "client_id": "spa"}
    srv.tokens[expired] = {"active": True, "sub": "carol", "exp": now - 10}
    perms = tmp_path / "perms"
    perms.write_text("role reader: subscribe on orders\n")
    audit = tmp_path / "audit.jsonl"
    gw = start_gateway(gateway_factory, sets({
        "auth.mode": "introspection",
        "auth.introspection.url": srv.url,
        "auth.introspection.client_id": srv.client_id,
        "auth.introspection.client_secret_file": srv.secret_file,
        "auth.introspection.timeout_ms": 2000,
        "auth.permissions_file": perms,
        "audit.file": audit,
    }), topics={"orders": 1}, unique_topics=False)

    assert status_of(gw, headers=auth_header(active)).status == 101
    assert srv.count(active) == 1
    req = srv.requests[0]
    assert req["hint"] == "access_token" and req["content_type"] == "application/x-www-form-urlencoded", req
    assert srv.bad_auth == 0, "the gateway's Basic client authentication was refused"
    # Second and third connections with the same token: answered from the cache.
    assert status_of(gw, protocols=f"streamotter.v1, bearer.{active}").status == 101
    assert status_of(gw, headers=auth_header(active)).status == 101
    assert srv.count(active) == 1, f"introspection requests for one token: {srv.count(active)}"

    r = status_of(gw, headers=auth_header(inactive))
    assert r.status == 401, r.raw[:300]
    r = status_of(gw, headers=auth_header(expired))
    assert r.status == 401, f"active:true with exp in the past must be refused: {r.raw[:300]!r}"
    assert status_of(gw).status == 401, "no token"

    # Roles from the introspection answer: carol is a reader of orders.
    async def roles():
        c = await Client.connect(gw.url, additional_headers=auth_header(active))
        assert (await c.call({"op": "subscribe", "channel": "orders"}))["op"] == "ok"
        r = await c.call({"op": "publish", "channel": "orders", "data": 1})
        assert r["op"] == "error" and r["code"] == "forbidden", r
        await c.close()
    run(roles(), 20)

    lines = wait_file_lines(audit, lambda ls: any(x["event"] == "auth_success" and x.get("method") == "introspection"
                                                  and x.get("sub") == "carol" for x in ls)
                            and any(x["event"] == "auth_failure" and x.get("method") == "introspection"
                                    for x in ls))
    text = audit.read_text()
    for t in (active, inactive, expired, srv.client_secret):
        assert t not in text, "a token or the client secret is in the audit file"
    assert lines


def test_introspection_endpoint_refusing_the_client_is_503(introspection, gateway_factory, tmp_path):
    """Wrong client secret: the endpoint answers 401 to the gateway, which cannot tell
    whether the token is good and refuses the upgrade (503), never upgrades."""
    srv = introspection
    token = "opaque-" + os.urandom(8).hex()
    srv.tokens[token] = {"active": True, "sub": "dan", "exp": int(time.time()) + 300}
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret\n")
    gw = start_gateway(gateway_factory, sets({
        "auth.mode": "introspection", "auth.introspection.url": srv.url,
        "auth.introspection.client_id": srv.client_id,
        "auth.introspection.client_secret_file": wrong}))
    r = status_of(gw, headers=auth_header(token))
    assert r.status == 503, r.raw[:300]
    assert srv.bad_auth >= 1


def test_introspection_of_junk_tokens_does_not_stall_authenticated_clients(introspection, gateway_factory):
    srv = introspection
    srv.delay_unknown = 3.0
    good = "opaque-good-" + os.urandom(8).hex()
    srv.tokens[good] = {"active": True, "sub": "ivy", "exp": int(time.time()) + 300}
    gw = start_gateway(gateway_factory, sets({
        "auth.mode": "introspection", "auth.introspection.url": srv.url,
        "auth.introspection.client_id": srv.client_id,
        "auth.introspection.client_secret_file": srv.secret_file,
        "auth.introspection.timeout_ms": 2500}))

    async def go():
        c = await Client.connect(gw.url, additional_headers=auth_header(good))
        attackers = [asyncio.to_thread(upgrade, gw.host, gw.port, headers=auth_header(f"junk-{i}"), timeout=20)
                     for i in range(8)]
        tasks = [asyncio.ensure_future(a) for a in attackers]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await c.subscribe(gw.topic("t1"))
        elapsed = time.monotonic() - t0
        for r in await asyncio.gather(*tasks):
            assert r.status in (401, 503), r.raw[:200]
        await c.close()
        assert elapsed < 1.0, f"an authenticated subscribe took {elapsed:.2f}s behind junk introspections"
    run(go(), 60)


# =========================================================================== roles and audit


PERMISSIONS = """\
# test policy
role admin: all on *
role user: subscribe, publish on user.{sub}.inbox
role reader: subscribe on orders
"""


def test_roles_allow_deny_replay_and_audit(keys, gateway_factory, tmp_path, kcat_bin):
    perms = tmp_path / "permissions.txt"
    perms.write_text(PERMISSIONS)
    audit = tmp_path / "audit.jsonl"
    gw = start_gateway(gateway_factory, keys.gateway_args({
        "auth.permissions_file": perms,
        "auth.roles_claim": "realm.roles",
        "audit.file": audit,
    }), topics={"orders": 1, "user.alice.inbox": 1, "user.bob.inbox": 1}, unique_topics=False)

    def tok(sub, roles, alg="RS256"):
        k = {"RS256": (keys.rsa_key, "rsa1"), "HS256": (keys.hmac_secret, "hs1")}[alg]
        return make_jwt(alg, k[0], claims(sub, realm={"roles": roles}), kid=k[1])

    admin, alice, rita = tok("root", ["admin"]), tok("alice", ["user"], "HS256"), tok("rita", ["reader"])
    # Roles under the top-level "roles" claim are not where auth.roles_claim points.
    misplaced = make_jwt("RS256", keys.rsa_key, claims("mia", roles=["admin"]), kid="rsa1")
    dotted = tok("alice.evil", ["user"])
    forged = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    used_tokens = [admin, alice, rita, misplaced, forged, dotted]

    async def go():
        a = await Client.connect(gw.url, "admin", additional_headers=auth_header(admin))
        u = await Client.connect(gw.url, "alice", additional_headers=auth_header(alice))
        r = await Client.connect(gw.url, "rita",
                                 subprotocols=("streamotter.v1", f"bearer.{rita}"))
        m = await Client.connect(gw.url, "mia", additional_headers=auth_header(misplaced))
        dot = await Client.connect(gw.url, "dotted", additional_headers=auth_header(dotted))

        async def expect(c, req, op, code=None):
            rep = await c.call(req)
            assert rep["op"] == op and (code is None or rep.get("code") == code), f"{c.name} {req} -> {rep}"
            return rep

        # admin: everything, including replay.
        await expect(a, {"op": "publish", "channel": "orders", "data": {"o": 1}}, "ack")
        await expect(a, {"op": "publish", "channel": "user.alice.inbox", "data": "hi alice"}, "ack")
        await expect(a, {"op": "subscribe", "channel": "orders", "from": "earliest"}, "ok")
        await a.wait_messages(1, 10)
        # alice: her own inbox, subscribe and publish, no replay; nobody else's.
        await expect(u, {"op": "subscribe", "channel": "user.alice.inbox"}, "ok")
        await expect(u, {"op": "publish", "channel": "user.alice.inbox", "data": "note to self"}, "ack")
        await expect(u, {"op": "publish", "channel": "user.bob.inbox", "data": "spoof"}, "error", "forbidden")
        await expect(u, {"op": "subscribe", "channel": "user.bob.inbox"}, "error", "forbidden")
        await expect(u, {"op": "subscribe", "channel": "orders"}, "error", "forbidden")
        await expect(u, {"op": "unsubscribe", "channel": "user.alice.inbox"}, "ok")
        await expect(u, {"op": "subscribe", "channel": "user.alice.inbox", "from": "earliest"}, "error", "forbidden")
        await expect(u, {"op": "subscribe", "channel": "user.alice.inbox",
                         "from": {"offsets": {"0": 0}}}, "error", "forbidden")
        # still open after the denials
        await expect(u, {"op": "subscribe", "channel": "user.alice.inbox"}, "ok")
        assert not u.closed
        # rita: subscribe orders live only.
        await expect(r, {"op": "subscribe", "channel": "orders", "from": "earliest"}, "error", "forbidden")
        await expect(r, {"op": "subscribe", "channel": "orders"}, "ok")
        await expect(r, {"op": "publish", "channel": "orders", "data": {"o": "rita"}}, "error", "forbidden")
        # A subject that is not a plain id never binds {sub} (no reaching into sub-trees).
        await expect(dot, {"op": "publish", "channel": "user.alice.evil.inbox", "data": 0}, "error", "forbidden")
        await expect(dot, {"op": "subscribe", "channel": "user.alice.evil.inbox"}, "error", "forbidden")
        # mia: no roles at the configured claim path.
        await expect(m, {"op": "subscribe", "channel": "orders"}, "error", "forbidden")
        await expect(m, {"op": "publish", "channel": "orders", "data": 0}, "error", "forbidden")
        # A live record reaches rita and the admin.
        await expect(a, {"op": "publish", "channel": "orders", "data": {"o": 2}}, "ack")
        got = await r.wait_messages(1, 10)
        assert got[0]["data"] == {"o": 2}
        for c in (a, u, r, m, dot):
            assert not c.closed, f"{c.name} closed: {c.close_rcvd}"
            await c.close()

    r = status_of(gw, headers=auth_header(forged))
    assert r.status == 401
    run(go(), 60)

    # Kafka: the denied publishes wrote nothing.
    assert kcat_consume_headers(kcat_bin, gw.bootstrap, "user.bob.inbox", expect=0, timeout=3) == []
    orders = kcat_consume_headers(kcat_bin, gw.bootstrap, "orders", expect=2)
    assert [json.loads(x.value) for x in orders] == [{"o": 1}, {"o": 2}]

    def complete(ls):
        ev = lambda e, **kw: [x for x in ls if x["event"] == e and all(x.get(k) == v for k, v in kw.items())]  # noqa: E731
        return (len(ev("auth_success", method="jwt")) >= 4
                and ev("auth_failure", reason="bad_signature")
                and ev("denied", sub="alice", channel="user.bob.inbox", op="publish")
                and ev("denied", sub="alice", channel="user.alice.inbox", op="replay")
                and ev("denied", sub="rita", channel="orders", op="publish")
                and ev("connection_open", sub="rita")
                and len(ev("connection_close")) >= 4)
    lines = wait_file_lines(audit, complete, what="the audit events of the session")
    for x in lines:
        assert x["ts"].endswith("Z") and "event" in x, x
        if x["event"] in ("connection_open", "connection_close", "denied", "auth_success", "auth_failure"):
            assert x.get("peer", "").startswith("127.0.0.1"), x
    opened = [x for x in lines if x["event"] == "connection_open" and x.get("sub") == "root"][0]
    assert opened.get("roles") == ["admin"] and opened.get("method") == "jwt", opened
    closed = [x for x in lines if x["event"] == "connection_close" and x.get("sub") == "alice"]
    assert closed and closed[0].get("close_code") == 1000, closed
    text = audit.read_text()
    for t in used_tokens:
        for part in t.split("."):
            assert part not in text, f"token text in the audit file: {part[:30]}..."
    assert "eyJ" not in text
    assert base64.b64encode(keys.hmac_secret).decode() not in text
    assert os.stat(audit).st_mode & 0o077 == 0, "audit file readable by group/others"


# =========================================================================== TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ns = type("PKI", (), {})()
    ns.dir = d
    ns.server = self_signed(d, "server", "gw-1")                      # SAN localhost, 127.0.0.1
    ns.server2 = self_signed(d, "server2", "gw-2")                    # for the reload
    ns.ca = self_signed(d, "ca", "StreamOtter Test CA", san="DNS:ca.invalid")
    ns.client = signed_by(d, ns.ca, "client", "client-1", client=True)
    ns.rogue = self_signed(d, "rogue", "client-rogue", san="DNS:rogue.invalid")
    ns.good_host = signed_by(d, ns.ca, "good-host", "gw-good", san="DNS:localhost,IP:127.0.0.1")
    ns.wrong_host = signed_by(d, ns.ca, "wrong-host", "gw-wrong", san="DNS:wrong.example")
    ns.sni = self_signed(d, "sni", "gw-sni", san="DNS:other.example")
    return ns


def tls_args(cert, extra=None):
    kv = {"tls.cert_file": cert.cert, "tls.key_file": cert.key}
    kv.update(extra or {})
    return sets(kv)


def s_client(port, *opts, servername="localhost", cafile=None, cert=None, timeout=15):
    cmd = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername, *opts]
    if cafile:
        cmd += ["-CAfile", cafile, "-verify_return_error"]
    if cert:
        cmd += ["-cert", cert.cert, "-key", cert.key]
    cp = subprocess.run([str(c) for c in cmd], input=b"", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        timeout=timeout)
    return cp.returncode, (cp.stdout + cp.stderr).decode("utf-8", "replace")


def test_tls_handshakes_versions_and_plain_tcp(pki, gateway_factory):
    gw = start_gateway(gateway_factory, tls_args(pki.server))
    assert gw.url.startswith("wss://"), gw.url

    # Python ssl + websockets: verified (IP SAN 127.0.0.1 and DNS localhost), round trip.
    async def session():
        ctx = client_ctx(pki.server.cert)
        c = await Client.connect(gw.url, ssl=ctx)
        t = gw.topic("t1")
        await c.subscribe(t)
        assert (await c.call({"op": "publish", "channel": t, "data": {"tls": True}}))["op"] == "ack"
        assert (await c.wait_messages(1, 10))[0]["data"] == {"tls": True}
        await c.close()
        c = await Client.connect(f"wss://localhost:{gw.port}/", ssl=ctx)
        await c.close()
    run(session(), 30)
    with socket.create_connection((gw.host, gw.port), timeout=5) as s:
        with client_ctx(pki.server.cert).wrap_socket(s, server_hostname="localhost") as t:
            assert t.version() in ("TLSv1.2", "TLSv1.3")
            t.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while True:
                c = t.recv(4096)
                if not c:
                    break
                data += c
            assert data.startswith(b"HTTP/1.1 200"), data[:200]

    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        rc, out = s_client(gw.port, flag, "-brief", cafile=pki.server.cert)
        assert rc == 0 and f"Protocol version: {name}" in out and "Verification: OK" in out, out
    # TLS 1.1 and 1.0: the client is allowed to offer them (SECLEVEL=0), the server refuses.
    for flag in ("-tls1_1", "-tls1"):
        rc, out = s_client(gw.port, flag, "-brief", "-cipher", "DEFAULT@SECLEVEL=0")
        assert rc != 0 and "Protocol version" not in out, out
        assert "no protocols available" not in out, f"the client did not even try: {out}"
        assert "alert protocol version" in out or "unsupported protocol" in out or "wrong version" in out, out
    for maximum in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        ctx = client_ctx(verify=False, minimum=ssl.TLSVersion.TLSv1, maximum=maximum)
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
        with socket.create_connection((gw.host, gw.port), timeout=5) as s:
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                ctx.wrap_socket(s, server_hostname="localhost")

    # Plain TCP on the TLS port: no HTTP answer, the connection is closed.
    t0 = time.monotonic()
    with socket.create_connection((gw.host, gw.port), timeout=5) as s:
        s.sendall(upgrade_request(gw.host, gw.port))
        got = b""
        while time.monotonic() - t0 < 5:
            try:
                c = s.recv(4096)
            except ConnectionResetError:
                break
            if not c:
                break
            got += c
        else:
            pytest.fail(f"plain-TCP client not closed within 5 s (got {got[:100]!r})")
    assert b"HTTP/" not in got, got[:200]
    assert time.monotonic() - t0 < 5
    # The gateway still serves TLS clients afterwards.
    assert upgrade(gw.host, gw.port, tls=client_ctx(pki.server.cert)).status == 101


def test_tls_min_version_13_and_sni(pki, gateway_factory):
    gw = start_gateway(gateway_factory, tls_args(pki.server, {
        "tls.min_version": "1.3", "tls.sni.other.example": f"{pki.sni.cert},{pki.sni.key}"}))
    rc, out = s_client(gw.port, "-tls1_2", "-brief")
    assert rc != 0 and "Protocol version" not in out, out
    rc, out = s_client(gw.port, "-tls1_3", "-brief", cafile=pki.server.cert)
    assert rc == 0 and "Protocol version: TLSv1.3" in out, out
    assert common_name(peer_certificate(gw.host, gw.port, "other.example")) == "gw-sni"
    assert common_name(peer_certificate(gw.host, gw.port, "localhost")) == "gw-1"
    rc, out = s_client(gw.port, "-brief", servername="other.example", cafile=pki.sni.cert)
    assert rc == 0 and "Verification: OK" in out, out


def test_mtls_required(pki, gateway_factory, tmp_path):
    audit = tmp_path / "audit.jsonl"
    gw = start_gateway(gateway_factory, tls_args(pki.server, {
        "tls.ca_file": pki.ca.cert, "tls.client_auth": "require", "audit.file": audit}))

    def attempt(cert):
        ctx = client_ctx(pki.server.cert, cert=cert)
        try:
            return upgrade(gw.host, gw.port, tls=ctx, timeout=5).status
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            return e

    for cert in (None, pki.rogue):
        res = attempt(cert)
        assert isinstance(res, Exception) or res is None, f"client cert {cert}: got HTTP {res}"
    # (No s_client check here: in TLS 1.3 the server verifies the client certificate after
    # the client has finished its side of the handshake, so s_client may print "CONNECTION
    # ESTABLISHED" before it reads the refusal; the upgrades above are what must fail.)
    assert attempt(pki.client) == 101

    async def session():
        c = await Client.connect(gw.url, ssl=client_ctx(pki.server.cert, cert=pki.client))
        t = gw.topic("t1")
        await c.subscribe(t)
        assert (await c.call({"op": "publish", "channel": t, "data": "mtls"}))["op"] == "ack"
        await c.wait_messages(1, 10)
        await c.close()
    run(session(), 30)
    # The client certificate's subject is the connection's identity (method mtls).
    lines = wait_file_lines(audit, lambda ls: [x for x in ls if x["event"] == "connection_open"
                                               and x.get("method") == "mtls"])
    opened = [x for x in lines if x["event"] == "connection_open" and x.get("method") == "mtls"][0]
    assert "client-1" in opened.get("sub", ""), opened

    # tls.client_auth=request: a certificate is asked for, not required.
    audit2 = tmp_path / "audit2.jsonl"
    gw2 = start_gateway(gateway_factory, tls_args(pki.server, {
        "tls.ca_file": pki.ca.cert, "tls.client_auth": "request", "audit.file": audit2}))
    assert upgrade(gw2.host, gw2.port, tls=client_ctx(pki.server.cert)).status == 101
    assert upgrade(gw2.host, gw2.port, tls=client_ctx(pki.server.cert, cert=pki.client)).status == 101
    res = None
    try:
        res = upgrade(gw2.host, gw2.port, tls=client_ctx(pki.server.cert, cert=pki.rogue), timeout=5).status
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    assert res != 101, "a certificate from an unknown CA must not be accepted"
    lines = wait_file_lines(audit2, lambda ls: len([x for x in ls if x["event"] == "connection_open"]) >= 2)
    methods = sorted(x.get("method") for x in lines if x["event"] == "connection_open")
    assert methods == ["anonymous", "mtls"], lines


def test_tls_certificate_reload_without_restart(pki, gateway_factory, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    gw = start_gateway(gateway_factory, sets({"tls.cert_file": cert, "tls.key_file": key,
                                              "tls.reload_interval_ms": 200}))
    first = peer_certificate(gw.host, gw.port)
    assert common_name(first) == "gw-1"
    new = pki.server2.load()
    assert new.serial_number != first.serial_number

    async def go():
        ctx = client_ctx(verify=False)
        old_conn = await Client.connect(gw.url, "old", ssl=ctx)
        # Replace both files (each atomically).
        for src, dst in ((pki.server2.cert, cert), (pki.server2.key, key)):
            tmp = dst.with_suffix(".tmp")
            shutil.copy(src, tmp)
            os.replace(tmp, dst)
        t0 = time.monotonic()
        while True:
            c = await asyncio.to_thread(peer_certificate, gw.host, gw.port)
            if c.serial_number == new.serial_number:
                break
            assert time.monotonic() - t0 < 5, "new certificate not served within 5 s"
            await asyncio.sleep(0.05)
        assert common_name(c) == "gw-2"
        # The connection made before the reload is untouched.
        rep = await old_conn.call({"op": "subscribe", "channel": gw.topic("t1")})
        assert rep["op"] == "ok", rep
        await old_conn.close()
    run(go(), 30)
    rc, out = s_client(gw.port, "-showcerts", cafile=pki.server2.cert)
    assert rc == 0 and "CN = gw-2" in out, out
    assert gw.proc.alive()


def _binding():
    lib = REPO / "build/lib/libstreamotter.so.0"
    if "STREAMOTTER_LIBRARY" not in os.environ and lib.is_file():
        os.environ["STREAMOTTER_LIBRARY"] = str(lib)
    sys.path.insert(0, str(REPO / "bindings" / "python"))
    try:
        import streamotter  # noqa: F401
    except Exception as e:  # not built, or the binding is not there
        pytest.skip(f"Python binding not importable: {e!r}")
    finally:
        sys.path.remove(str(REPO / "bindings" / "python"))
    return streamotter


def test_engine_wss_client_verifies_the_host_name(pki, gateway_factory):
    """The engine's own wss client (sot_client through the Python binding), trusting the
    test CA: a certificate naming this host is accepted, one naming another host refused."""
    so = _binding()
    good = start_gateway(gateway_factory, tls_args(pki.good_host))
    wrong = start_gateway(gateway_factory, tls_args(pki.wrong_host))

    def try_connect(engine, port, conf):
        events = []
        done = threading.Event()
        c = so.Client(engine, f"wss://127.0.0.1:{port}/", conf,
                      on_open=lambda proto: (events.append(("open", proto)), done.set()),
                      on_error=lambda code, msg: (events.append(("error", code, msg)), done.set()))
        done.wait(10)
        c.close()
        return events

    with so.Engine({"mode": "client"}) as engine:
        conf = {"client.tls.ca_file": str(pki.ca.cert), "reconnect.initial_delay_ms": "5000"}
        ev = try_connect(engine, good.port, conf)
        assert ev and ev[0][0] == "open", ev
        ev = try_connect(engine, wrong.port, conf)
        assert ev and ev[0][0] == "error" and not any(e[0] == "open" for e in ev), ev
        # Trust store without the CA: refused as well.
        ev = try_connect(engine, good.port, {"client.tls.ca_file": str(pki.server.cert)})
        assert ev and ev[0][0] == "error", ev


# =========================================================================== encryption


def key_line(kid: str, key: bytes, active: bool) -> str:
    return f"{kid} {base64.b64encode(key).decode()}{' active' if active else ''}\n"


def aad(kid: str, channel: str) -> bytes:
    return b"\x01" + kid.encode() + b"\x00" + channel.encode()


def produce_file(kcat, bootstrap, topic, value: bytes, headers: dict, d: Path):
    """One record whose value is the whole file (binary-safe), with headers."""
    f = d / f"rec-{os.urandom(4).hex()}"
    f.write_bytes(value)
    cmd = [kcat, "-b", bootstrap, "-P", "-t", topic, "-X", "acks=all"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}={v}"]
    run_cmd(cmd + [f])


def test_encryption_kafka_holds_ciphertext_and_tampering_is_refused(gateway_factory, tmp_path, kcat_bin):
    k1 = os.urandom(32)
    keyfile = tmp_path / "keys"
    keyfile.write_text("# test keys\n" + key_line("k1", k1, True))
    gw = start_gateway(gateway_factory, sets({
        "encryption.key_file": keyfile, "encryption.channels": "secret.*"}),
        topics={"secret.orders": 1, "public": 1}, unique_topics=False)
    marker = "PLAINTEXT-MARKER-" + os.urandom(4).hex()
    doc = {"card": marker, "qty": 2}
    plain = json.dumps(doc, separators=(",", ":")).encode()

    async def go():
        sub = await Client.connect(gw.url, "sub")
        await sub.subscribe("secret.orders")
        pub = await Client.connect(gw.url, "pub")
        ack = await pub.call({"op": "publish", "id": "e1", "channel": "secret.orders", "data": doc,
                              "headers": {"trace": "t-1"}})
        assert ack["op"] == "ack", ack
        # A client cannot choose the key id header: the gateway sets it.
        ack_k = await pub.call({"op": "publish", "channel": "secret.orders", "data": {"k": 1},
                                "headers": {"streamotter-key-id": "k9"}})
        assert ack_k["op"] == "ack", ack_k
        ack2 = await pub.call({"op": "publish", "channel": "public", "data": doc})
        assert ack2["op"] == "ack", ack2
        msgs = await sub.wait_messages(2, 10)
        m = msgs[0]
        assert m["data"] == doc and m["offset"] == ack["offset"], m
        assert m.get("headers", {}).get("trace") == "t-1", m
        assert "streamotter-key-id" not in m.get("headers", {}), m
        assert msgs[1]["data"] == {"k": 1}, msgs[1]

        # Kafka holds ciphertext: version byte, 12-byte nonce, ciphertext, 16-byte tag.
        recs = kcat_consume_headers(kcat_bin, gw.bootstrap, "secret.orders", expect=2)
        assert len(recs) == 2
        v = recs[0].value
        assert marker.encode() not in v and b"card" not in v, v
        assert recs[0].headers.get("streamotter-key-id") == "k1", recs[0].headers
        assert v[0] == 1 and len(v) == len(plain) + 29, (v[:1], len(v), len(plain))
        # ...which the documented format decrypts with the key (AAD binds key id and channel).
        assert AESGCM(k1).decrypt(v[1:13], v[13:], aad("k1", "secret.orders")) == plain
        with pytest.raises(Exception):
            AESGCM(k1).decrypt(v[1:13], v[13:], aad("k1", "secret.other"))
        # The client's own streamotter-key-id header was replaced by the real one.
        assert [v for k, v in recs[1].header_pairs if k == "streamotter-key-id"] == ["k1"], recs[1]
        v1 = recs[1].value
        assert AESGCM(k1).decrypt(v1[1:13], v1[13:], aad("k1", "secret.orders")) == b'{"k":1}'
        # A channel outside encryption.channels is stored as it is.
        pub_recs = kcat_consume_headers(kcat_bin, gw.bootstrap, "public", expect=1)
        assert pub_recs[0].value == plain and "streamotter-key-id" not in pub_recs[0].headers

        # Tampered records produced with kcat: a flipped ciphertext byte, a flipped tag
        # byte, a flipped nonce byte, an unknown key id, another key id (AAD mismatch),
        # plaintext without a key id. None is delivered.
        bad = []
        for i in (13 + 3, len(v) - 1, 5):
            t = bytearray(v)
            t[i] ^= 0x01
            bad.append((bytes(t), {"streamotter-key-id": "k1"}))
        bad.append((v, {"streamotter-key-id": "k9"}))
        bad.append((plain, {}))
        for value, headers in bad:
            produce_file(kcat_bin, gw.bootstrap, "secret.orders", value, headers, tmp_path)
        nbad = len(bad)

        def failures(c):
            return [x for x in c.unsolicited if x.get("code") == "decrypt_failed"]
        errs = await sub.wait_for(lambda: failures(sub) if len(failures(sub)) >= nbad else None, 15,
                                  lambda: f"{nbad} decrypt_failed errors (have {sub.unsolicited})")
        assert sorted(e["offset"] for e in errs) == list(range(2, 2 + nbad)), errs
        assert all(e["op"] == "error" and e["channel"] == "secret.orders" and "id" not in e for e in errs), errs
        # A good record after them is delivered: nothing tampered was.
        ack = await pub.call({"op": "publish", "channel": "secret.orders", "data": {"after": 1}})
        msgs = await sub.wait_messages(3, 10)
        assert [x["offset"] for x in msgs] == [0, 1, ack["offset"]] and msgs[2]["data"] == {"after": 1}, msgs
        assert not sub.closed
        # A late subscriber replaying from the start (the replay lane, behind the live
        # feed) gets the same: plaintext for the good records, errors for the others.
        late = await Client.connect(gw.url, "late")
        await late.subscribe("secret.orders", frm="earliest")
        got = await late.wait_messages(3, 10)
        assert [(x["offset"], x["data"]) for x in got] == [(0, doc), (1, {"k": 1}), (ack["offset"], {"after": 1})], got
        await late.wait_for(lambda: len(failures(late)) >= nbad, 10, "decrypt_failed errors on replay")
        for c in (sub, pub, late):
            await c.close()
    run(go(), 60)


def test_encryption_key_rotation(gateway_factory, tmp_path, kcat_bin):
    k1, k2 = os.urandom(32), os.urandom(32)
    keyfile = tmp_path / "keys"
    keyfile.write_text(key_line("k1", k1, True))
    gw = start_gateway(gateway_factory, sets({
        "encryption.key_file": keyfile, "encryption.channels": "secret.*",
        "encryption.reload_interval_ms": 100}), topics={"secret.x": 1}, unique_topics=False)

    async def go():
        pub = await Client.connect(gw.url, "pub")
        assert (await pub.call({"op": "publish", "channel": "secret.x", "data": {"n": 0}}))["op"] == "ack"
        tmp = keyfile.with_suffix(".tmp")
        tmp.write_text(key_line("k1", k1, False) + key_line("k2", k2, True))
        os.replace(tmp, keyfile)
        # Publish until a record carries k2 (the reload runs every 100 ms).
        n, t0 = 0, time.monotonic()
        while True:
            n += 1
            ack = await pub.call({"op": "publish", "channel": "secret.x", "data": {"n": n}})
            assert ack["op"] == "ack" and ack["offset"] == n, ack
            recs = await asyncio.to_thread(kcat_consume_headers, kcat_bin, gw.bootstrap, "secret.x",
                                           expect=n + 1)
            if recs[-1].headers.get("streamotter-key-id") == "k2":
                break
            assert time.monotonic() - t0 < 10, "no record encrypted with k2 after the key file changed"
            await asyncio.sleep(0.1)
        assert recs[0].headers["streamotter-key-id"] == "k1"
        last = recs[-1].value
        assert AESGCM(k2).decrypt(last[1:13], last[13:], aad("k2", "secret.x")) == \
            json.dumps({"n": n}, separators=(",", ":")).encode()
        # A new subscriber from the start reads both generations in plaintext.
        sub = await Client.connect(gw.url, "sub")
        await sub.subscribe("secret.x", frm="earliest")
        msgs = await sub.wait_messages(n + 1, 15)
        assert [m["data"] for m in msgs] == [{"n": i} for i in range(n + 1)], msgs
        assert not [x for x in sub.unsolicited if x.get("code") == "decrypt_failed"]
        for c in (sub, pub):
            await c.close()
    run(go(), 60)


# =========================================================================== limits


def test_origin_check(gateway_factory):
    gw = gateway_factory.start()
    same = f"http://{gw.host}:{gw.port}"
    assert status_of(gw, headers={"Origin": "https://evil.example"}).status == 403
    assert status_of(gw, headers={"Origin": "null"}).status == 403
    assert status_of(gw, headers={"Origin": f"http://{gw.host}:{gw.port + 1}"}).status == 403
    assert status_of(gw, headers={"Origin": same}).status == 101
    assert status_of(gw).status == 101, "no Origin (not a browser): allowed"

    gw2 = gateway_factory.start(args=sets({
        "security.allowed_origins": "https://app.example, https://admin.example"}))
    assert status_of(gw2, headers={"Origin": "https://app.example"}).status == 101
    assert status_of(gw2, headers={"Origin": "https://admin.example"}).status == 101
    assert status_of(gw2, headers={"Origin": "https://evil.example"}).status == 403
    assert status_of(gw2, headers={"Origin": "https://app.example.evil.example"}).status == 403
    assert status_of(gw2, headers={"Origin": f"http://{gw2.host}:{gw2.port}"}).status == 403, \
        "with an allow-list, same-host is not implied"

    async def browser_like():
        c = await Client.connect(gw2.url, origin="https://app.example")
        await c.close()
    run(browser_like(), 20)


def test_connection_limits(gateway_factory):
    gw = gateway_factory.start(args=sets({"limits.max_connections_per_address": 3}))
    gw2 = gateway_factory.start(args=sets({"limits.max_connections": 2}))

    async def go():
        held = [await ws_connect(gw.url) for _ in range(3)]
        r = await asyncio.to_thread(status_of, gw)
        assert r.status == 429, r.raw[:300]
        await held[0].close()
        # A slot frees up once the gateway has seen the close.
        t0 = time.monotonic()
        while (await asyncio.to_thread(status_of, gw)).status != 101:
            assert time.monotonic() - t0 < 5, "no slot after closing a connection"
            await asyncio.sleep(0.05)
        for w in held[1:]:
            await w.close()

        held = [await ws_connect(gw2.url) for _ in range(2)]
        r = await asyncio.to_thread(status_of, gw2)
        assert r.status == 503, r.raw[:300]
        for w in held:
            await w.close()
    run(go(), 30)


def test_a_burst_over_the_per_address_limit_refuses_only_the_excess(gateway_factory):
    """11 upgrades at once from one address with a limit of 10: ten get 101 and one 429
    (the limit counts admitted WebSockets; it once counted every TCP connection, so each
    of the 11 saw 11 and all were refused: a reconnect storm behind a NAT admitted nobody).
    TCP connections not yet admitted beyond twice the limit are closed at once."""
    gw = gateway_factory.start(args=sets({"limits.max_connections_per_address": 10}))
    socks = [socket.create_connection((gw.host, gw.port), timeout=10) for _ in range(11)]
    try:
        for s in socks:  # every request is in before any is answered
            s.sendall(upgrade_request(gw.host, gw.port))
        statuses = []
        for s in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            statuses.append(parse_head(head).status)
        assert sorted(statuses) == [101] * 10 + [429], statuses
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)  # the gateway sees those closes
    # Silent connections: twice the limit is held (until the handshake deadline), the
    # next one is closed at once without an answer.
    silent = [socket.create_connection((gw.host, gw.port), timeout=10) for _ in range(20)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection((gw.host, gw.port), timeout=10)
        extra.settimeout(5)
        try:
            assert extra.recv(100) == b"", "a connection over the per-address limit is closed"
        except ConnectionResetError:
            pass
        finally:
            extra.close()
    finally:
        for s in silent:
            s.close()
    # Once they are gone, upgrades are admitted again.
    t0 = time.monotonic()
    while status_of(gw).status != 101:
        assert time.monotonic() - t0 < 5, "no slot after the silent connections closed"
        time.sleep(0.05)


def test_sockets_stay_within_the_descriptor_limit_and_kafka_keeps_working(gateway_factory, tmp_path):
    """With 300 file descriptors (soft and hard) the gateway holds at most 300 - 256 = 44
    sockets: further upgrades get 503 (at accept, a 503 response) instead of taking the
    descriptors Kafka needs. An adversarial run once filled the table: connections were
    dropped without an answer, /healthz went silent and publishes were not acknowledged
    for 10 s. Here a connected client's publishes keep their acks."""
    wrapper = tmp_path / "streamotter-300fds"
    wrapper.write_text(f"#!/bin/sh\nexec prlimit --nofile=300:300 {gateway_factory.binary} \"$@\"\n")
    wrapper.chmod(0o755)
    real = gateway_factory.binary
    gateway_factory.binary = str(wrapper)
    try:
        gw = gateway_factory.start()
    finally:
        gateway_factory.binary = real
    topic = gw.topic("t1")

    async def go():
        c = await Client.connect(gw.url)
        r = await c.call({"op": "publish", "channel": topic, "data": {"n": 0}})
        assert r["op"] == "ack", r
        held, statuses = [], []
        for _ in range(60):
            s = socket.create_connection((gw.host, gw.port), timeout=10)
            s.sendall(upgrade_request(gw.host, gw.port))
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    break
                head += chunk
            st = parse_head(head).status
            statuses.append(st)
            if st == 101:
                held.append(s)
            else:
                s.close()
        # 43 besides the client: the budget is 44 sockets.
        assert statuses == [101] * 43 + [503] * 17, statuses
        for n in range(1, 6):
            r = await c.call({"op": "publish", "channel": topic, "data": {"n": n}}, timeout=10)
            assert r["op"] == "ack", r
        for s in held[:10]:
            s.close()
        await asyncio.sleep(0.5)
        assert (await asyncio.to_thread(status_of, gw)).status == 101
        for s in held[10:]:
            s.close()
        await c.close()
    run(go(), 90)


def test_header_limits(gateway_factory):
    gw = gateway_factory.start(args=sets({"ws.max_header_bytes": 1024, "ws.max_headers": 8}))
    r = status_of(gw, headers={"X-Big": "a" * 2000})
    assert r.status == 431, r.raw[:200]
    r = status_of(gw, headers=[(f"X-H{i}", "v") for i in range(20)])
    assert r.status == 431, r.raw[:200]
    assert status_of(gw, headers={"X-Small": "a" * 100}).status == 101


def test_abusive_handshakes_refused_quickly_while_others_are_served(gateway_factory):
    """Defaults (8 KiB head, 64 headers): 2,000 junk headers and a 32,000-space
    subprotocol header get 431 quickly; a client with an open session is served meanwhile."""
    gw = gateway_factory.start()

    async def go():
        c = await Client.connect(gw.url)
        t = gw.topic("t1")
        await c.subscribe(t)
        junk = upgrade_request(gw.host, gw.port, headers=[(f"X-Junk-{i}", "j") for i in range(2000)])
        spaces = upgrade_request(gw.host, gw.port, protocols=" " * 32000)
        for req in (junk, spaces):
            t0 = time.monotonic()
            r = await asyncio.to_thread(upgrade, gw.host, gw.port, raw_request=req)
            assert r.status == 431, r.raw[:200]
            assert time.monotonic() - t0 < 2
            ack = await c.call({"op": "publish", "channel": t, "data": 1}, timeout=5)
            assert ack["op"] == "ack"
        await c.wait_messages(2, 10)
        await c.close()
    run(go(), 30)


def test_slow_handshake_is_closed(gateway_factory):
    gw = gateway_factory.start(args=sets({"ws.handshake_timeout_ms": 500}))

    def slow(drip: bool):
        s = socket.create_connection((gw.host, gw.port), timeout=5)
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        got = b""
        s.settimeout(0.1)
        while time.monotonic() - t0 < 4:
            if drip:
                try:
                    s.sendall(b"X-Drip: 1\r\n")
                except OSError:
                    pass
            try:
                c = s.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not c:
                break
            got += c
        elapsed = time.monotonic() - t0
        s.close()
        return elapsed, got

    for drip in (False, True):
        elapsed, got = slow(drip)
        assert 0.4 <= elapsed < 2.0, f"drip={drip}: closed after {elapsed:.2f}s"
        r = parse_head(got)
        assert r.status in (408, None), got[:200]
        if not drip:
            assert r.status == 408, got[:200]


def test_message_rate_limit(gateway_factory):
    gw = gateway_factory.start(args=sets({"limits.messages_per_second": 5}))

    async def go():
        c = await Client.connect(gw.url)
        futs = []
        for i in range(20):
            rid = f"u{i}"
            futs.append(c.expect_reply(rid))
            await c.send({"op": "unsubscribe", "id": rid, "channel": "nothing"})
        replies = await asyncio.wait_for(asyncio.gather(*futs), 10)
        codes = [r.get("code") for r in replies]
        assert codes.count("rate_limited") >= 10 and codes.count("not_subscribed") >= 5, codes
        assert codes[:5] == ["not_subscribed"] * 5, codes
        assert not c.closed
        await asyncio.sleep(1.1)
        rep = await c.call({"op": "subscribe", "channel": gw.topic("t1")})
        assert rep["op"] == "ok", rep
        await c.close()
    run(go(), 30)


def test_byte_rate_limit(gateway_factory):
    gw = gateway_factory.start(args=sets({"limits.bytes_per_second": 1000}))

    async def go():
        c = await Client.connect(gw.url)
        pad = "x" * 600
        r1 = await c.call({"op": "unsubscribe", "channel": "nothing", "pad": pad})
        r2 = await c.call({"op": "unsubscribe", "channel": "nothing", "pad": pad})
        assert r1.get("code") in ("not_subscribed", "bad_request"), r1
        assert r2.get("code") == "rate_limited", r2
        assert not c.closed
        await c.close()
    run(go(), 30)


def test_max_subscriptions(gateway_factory):
    gw = gateway_factory.start(topics={"a": 1, "b": 1, "c": 1},
                               args=sets({"limits.max_subscriptions": 2}))

    async def go():
        c = await Client.connect(gw.url)
        await c.subscribe(gw.topic("a"))
        await c.subscribe(gw.topic("b"))
        r = await c.call({"op": "subscribe", "channel": gw.topic("c")})
        assert r["op"] == "error" and r["code"] == "too_many_subscriptions", r
        assert (await c.call({"op": "unsubscribe", "channel": gw.topic("a")}))["op"] == "ok"
        await c.subscribe(gw.topic("c"))
        await c.close()
    run(go(), 30)


# =========================================================================== Kafka-side security


def test_kafka_side_tls_and_sasl_settings_reach_librdkafka(gateway_factory, pki):
    """kafka.* properties go to librdkafka unchanged: with security.protocol=SSL the
    gateway's Kafka clients open TLS (a ClientHello arrives at the 'broker' port), and
    values librdkafka refuses stop the start naming the property."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    lsock.settimeout(15)
    port = lsock.getsockname()[1]
    password = "not-logged-" + os.urandom(6).hex()
    try:
        gw = start_gateway(gateway_factory, sets({
            "kafka.bootstrap.servers": f"127.0.0.1:{port}",
            "kafka.security.protocol": "SASL_SSL",
            "kafka.sasl.mechanisms": "SCRAM-SHA-512",
            "kafka.sasl.username": "gateway",
            "kafka.sasl.password": password,
            "kafka.ssl.ca.location": pki.ca.cert,
            "shutdown.timeout_ms": 1000,
        }), topics={})
        conn, _ = lsock.accept()
        conn.settimeout(10)
        hello = b""
        while len(hello) < 6:
            c = conn.recv(4096)
            if not c:
                break
            hello += c
        conn.close()
        assert hello[:1] == b"\x16" and hello[1:2] == b"\x03" and hello[5:6] == b"\x01", \
            f"not a TLS ClientHello: {hello[:16]!r}"
        assert gw.bootstrap == f"127.0.0.1:{port}"
        logs = "\n".join(gw.proc.stdout_lines + list(gw.proc.stderr_tail))
        assert password not in logs, "the SASL password is in the gateway's output"
    finally:
        lsock.close()
    for kv, needle in (({"kafka.security.protocol": "bogus"}, "security.protocol"),
                       ({"kafka.security.protocol": "SASL_PLAINTEXT", "kafka.sasl.mechanisms": "NOPE"},
                        "SASL mechanism")):
        cp = subprocess.run([gateway_factory.binary, "serve", "--listen", "127.0.0.1:0"] + sets(kv),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
        text = (cp.stdout + cp.stderr).decode("utf-8", "replace")
        assert cp.returncode != 0 and needle in text, text[-400:]
