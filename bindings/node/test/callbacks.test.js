'use strict';
// Callbacks from the engine's loop thread into JavaScript: 100,000 in one run without a
// crash or a lost message, memory that stays bounded, and exceptions thrown by user code
// that are reported while the engine keeps running.
const test = require('node:test');
const assert = require('node:assert/strict');
const v8 = require('node:v8');
const vm = require('node:vm');
const { Engine, CallbackError } = require('../lib/index.js');

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond, what, ms = 20000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}
const mb = (n) => (n / 1048576).toFixed(1);

test('100,000 server callbacks and 100,000 client callbacks per run, nothing lost, memory bounded', async (t) => {
  // gateway.protocol=none: every WebSocket message goes to the host only.
  const gw = new Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'gateway.protocol': 'none' }).start();
  const ce = new Engine({ mode: 'client' }).start();
  t.after(() => Promise.all([ce.stop(), gw.stop()]));

  let conn = 0;
  gw.on('connect', (id) => (conn = id));
  const client = ce.client(`ws://127.0.0.1:${gw.port}/`, { 'client.subprotocols': '' });
  await new Promise((r) => client.once('open', r));
  await waitFor(() => conn > 0, 'connect');

  const N = 100000;
  const rounds = 3;
  const samples = [];
  for (let round = 0; round < rounds; round++) {
    let serverGot = 0;
    let serverBad = 0;
    const onServer = (id, data, isText) => {
      if (id !== conn || !isText || data !== `m${serverGot}`) serverBad++;
      serverGot++;
    };
    let clientGot = 0;
    let clientBad = 0;
    const onClient = (data, isText) => {
      if (isText || !Buffer.isBuffer(data) || data.readUInt32LE(0) !== clientGot) clientBad++;
      clientGot++;
    };
    gw.on('message', onServer);
    client.on('message', onClient);

    const t0 = process.hrtime.bigint();
    // Client -> gateway: 100,000 'message' events on the engine.
    for (let i = 0; i < N; i++) client.send(`m${i}`);
    await waitFor(() => serverGot >= N, `${N} server messages`);
    const t1 = process.hrtime.bigint();
    // Gateway -> client: 100,000 binary 'message' events on the client.
    const b = Buffer.alloc(8);
    for (let i = 0; i < N; i++) {
      b.writeUInt32LE(i, 0);
      gw.send(conn, b);
    }
    await waitFor(() => clientGot >= N, `${N} client messages`);
    const t2 = process.hrtime.bigint();
    gw.off('message', onServer);
    client.off('message', onClient);

    assert.equal(serverGot, N);
    assert.equal(serverBad, 0, 'server messages arrive complete and in order');
    assert.equal(clientGot, N);
    assert.equal(clientBad, 0, 'client messages arrive complete and in order');
    gc();
    const m = process.memoryUsage();
    samples.push(m);
    t.diagnostic(
      `round ${round + 1}: ${N} server callbacks in ${(Number(t1 - t0) / 1e6).toFixed(0)} ms, ` +
        `${N} client callbacks in ${(Number(t2 - t1) / 1e6).toFixed(0)} ms; after GC rss ${mb(m.rss)} MB, ` +
        `heapUsed ${mb(m.heapUsed)} MB, external ${mb(m.external)} MB`,
    );
  }
  const gs = gw.stats();
  const cs = ce.stats();
  assert.equal(gs.dropped, 0);
  assert.equal(cs.dropped, 0);
  assert.ok(gs.posted >= rounds * N && cs.posted >= rounds * N);
  // Bounded: later rounds do not keep what earlier rounds allocated.
  const first = samples[0];
  const last = samples[samples.length - 1];
  assert.ok(last.heapUsed - first.heapUsed < 8 * 1048576, `heap grew ${mb(last.heapUsed - first.heapUsed)} MB`);
  assert.ok(last.rss - first.rss < 64 * 1048576, `rss grew ${mb(last.rss - first.rss)} MB`);
});

test('Kafka path: 50,000 delivery callbacks + 50,000 subscription messages', async (t) => {
  const gw = new Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'embedded.topics': 'cb:3' }).start();
  const ce = new Engine({ mode: 'client' }).start();
  t.after(() => Promise.all([ce.stop(), gw.stop()]));
  const client = ce.client(`ws://127.0.0.1:${gw.port}/`);
  const N = 50000;
  const seen = new Uint8Array(N);
  let got = 0;
  let dup = 0;
  const last = [-1, -1, -1];
  let disorder = 0;
  await client.subscribe('cb', (m) => {
    if (seen[m.data.i]) dup++;
    seen[m.data.i] = 1;
    if (m.offset <= last[m.partition]) disorder++;
    last[m.partition] = m.offset;
    got++;
  });
  const t0 = process.hrtime.bigint();
  const acks = [];
  for (let i = 0; i < N; i++) acks.push(gw.publish('cb', { i }, { key: `k${i % 13}` }));
  const results = await Promise.all(acks);
  const t1 = process.hrtime.bigint();
  await waitFor(() => got >= N, `${N} subscription messages`);
  const t2 = process.hrtime.bigint();
  t.diagnostic(
    `${N} engine publishes acknowledged in ${(Number(t1 - t0) / 1e6).toFixed(0)} ms, ` +
      `all ${N} messages back after ${(Number(t2 - t0) / 1e6).toFixed(0)} ms`,
  );
  assert.equal(results.length, N);
  assert.ok(results.every((r) => r.topic === 'cb' && r.offset >= 0));
  assert.equal(got, N);
  assert.equal(dup, 0);
  assert.equal(disorder, 0);
  assert.equal(seen.reduce((a, b) => a + b, 0), N);
});

test('an exception in a user callback is reported and the engine keeps running', async (t) => {
  const gw = new Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'embedded.topics': 'ex:1' }).start();
  const ce = new Engine({ mode: 'client' }).start();
  t.after(() => Promise.all([ce.stop(), gw.stop()]));

  // 1. With an 'error' listener on the engine: CallbackError events.
  const reported = [];
  gw.on('error', (e) => reported.push(e));
  let secondListenerRan = 0;
  gw.on('connect', () => {
    throw new Error('boom in connect');
  });
  gw.on('connect', () => secondListenerRan++);
  const client = ce.client(`ws://127.0.0.1:${gw.port}/`);
  await new Promise((r) => client.once('open', r));
  await waitFor(() => reported.length === 1, 'the connect exception');
  assert.ok(reported[0] instanceof CallbackError);
  assert.equal(reported[0].source, 'engine');
  assert.equal(reported[0].event, 'connect');
  assert.equal(reported[0].cause.message, 'boom in connect');
  assert.equal(secondListenerRan, 1, 'the other listeners still run');

  // 2. A subscription callback that throws on every other message: every message is
  //    still delivered, every exception is reported.
  const clientErrors = [];
  ce.on('error', (e) => clientErrors.push(e));
  let calls = 0;
  await client.subscribe('ex', (m) => {
    calls++;
    if (m.data % 2 === 0) throw new TypeError(`even ${m.data}`);
  });
  await Promise.all(Array.from({ length: 100 }, (_, i) => client.publish('ex', i)));
  await waitFor(() => calls === 100, '100 messages');
  assert.equal(clientErrors.length, 50);
  assert.ok(clientErrors.every((e) => e.source === 'subscription' && e.cause instanceof TypeError));

  // 3. Without an 'error' listener: a process warning (no crash, no unhandled error).
  ce.removeAllListeners('error');
  const warnings = [];
  const onWarning = (w) => warnings.push(w);
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  client.on('message', () => {
    throw new Error('boom in raw message');
  });
  await client.publish('ex', 'more');
  await waitFor(() => warnings.some((w) => w.name === 'CallbackError'), 'a process warning');
  const w = warnings.find((x) => x.name === 'CallbackError');
  assert.equal(w.source, 'client');
  assert.equal(w.event, 'message');
  client.removeAllListeners('message');

  // 4. An 'error' listener that throws itself ends up as a warning too.
  gw.removeAllListeners('error');
  gw.on('error', () => {
    throw new Error('the error listener fails');
  });
  const c2 = ce.client(`ws://127.0.0.1:${gw.port}/`);
  await new Promise((r) => c2.once('open', r));
  await waitFor(() => warnings.some((x) => x.cause && x.cause.message === 'the error listener fails'), 'warning');

  // The engines still work end to end.
  const ack = await client.publish('ex', 'still alive');
  assert.ok(ack.offset >= 100);
  await c2.close();
});
