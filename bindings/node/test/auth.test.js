'use strict';
// Custom authentication of upgrades answered by an (async) JavaScript handler, and audit
// events, through sot_engine_set_auth_callback / sot_auth_allow / sot_auth_deny /
// sot_engine_set_audit_callback.
const test = require('node:test');
const assert = require('node:assert/strict');
const { Engine, CallbackError, errors } = require('../lib/index.js');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond, what, ms = 10000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

test('an async auth handler allows with an identity, denies with a status; audit events', async (t) => {
  const gw = new Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'embedded.topics': 'au:1' });
  const requests = [];
  gw.setAuthHandler(async (req) => {
    requests.push(req);
    await sleep(5); // answered later, from the JavaScript thread
    switch (req.headers.authorization) {
      case 'Bearer good':
        return { allow: true, subject: 'alice', roles: ['reader', 'writer'] };
      case 'Bearer short':
        return { allow: true, subject: 'bob', expiresAt: new Date(Date.now() + 300) };
      case 'Bearer throw':
        throw new Error('handler bug');
      case 'Bearer odd':
        return 'yes please';
      default:
        return { allow: false, status: 403, reason: 'bad token' };
    }
  });
  const audit = [];
  gw.on('audit', (e) => audit.push(e));
  const reported = [];
  gw.on('error', (e) => reported.push(e));
  gw.start();
  t.after(() => gw.stop());
  assert.throws(() => gw.setAuthHandler(() => true), errors.StateError);

  const url = `ws://127.0.0.1:${gw.port}/a?x=1`;
  const ok = gw.client(url, { 'client.header.Authorization': 'Bearer good' });
  await new Promise((r) => ok.once('open', r));
  assert.equal(requests[0].path, '/a?x=1');
  assert.equal(requests[0].peerAddress, '127.0.0.1');
  assert.equal(requests[0].tlsSubject, null);
  assert.equal(typeof requests[0].id, 'number');
  assert.ok(Array.isArray(requests[0].rawHeaders));
  assert.ok((await ok.publish('au', { from: 'alice' })).offset >= 0);

  const refused = async (token) => {
    const c = gw.client(url, { 'client.header.Authorization': token, 'reconnect.enabled': 'false' });
    const err = await new Promise((r) => c.once('error', r));
    await c.close();
    return err;
  };
  const e403 = await refused('Bearer nope');
  assert.equal(e403.reason, 'handshake_failed');
  assert.match(e403.message, /403/);
  const e500 = await refused('Bearer throw');
  assert.match(e500.message, /500/);
  const eOdd = await refused('Bearer odd');
  assert.match(eOdd.message, /500/);
  assert.equal(reported.length, 2);
  assert.ok(reported.every((e) => e instanceof CallbackError && e.event === 'auth'));
  assert.equal(reported[0].cause.message, 'handler bug');
  assert.ok(reported[1].cause instanceof TypeError);

  // An expiring credential: the connection is closed with 4001 when it runs out.
  const short = gw.client(url, { 'client.header.Authorization': 'Bearer short', 'reconnect.enabled': 'false' });
  const closed = new Promise((r) => short.once('close', (code, reason) => r({ code, reason })));
  await new Promise((r) => short.once('open', r));
  const c = await closed;
  assert.equal(c.code, 4001);
  await short.close();

  await waitFor(() => audit.some((e) => e.event === 'token_expired'), 'the token_expired audit event');
  const kinds = audit.map((e) => e.event);
  for (const k of ['auth_success', 'connection_open', 'auth_failure', 'token_expired']) assert.ok(kinds.includes(k), k);
  const open = audit.find((e) => e.event === 'connection_open' && e.sub === 'alice');
  assert.deepEqual(open.roles, ['reader', 'writer']);
  assert.equal(open.method, 'custom');
  assert.ok(audit.some((e) => e.event === 'auth_failure' && e.status === 403 && e.reason === 'bad token'));
  await ok.close();
});
