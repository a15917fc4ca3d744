'use strict';
// A gateway engine (embedded Kafka) and a client engine: 1,000 publishes, 1,000 acks and
// 1,000 messages back through a subscription; server events; engine-side publish; a Kafka
// consumer with assign/seek/seekTime/commit and a group subscription.
const test = require('node:test');
const assert = require('node:assert/strict');
const { Engine, errors } = require('../lib/index.js');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond, what, ms = 15000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

test('gateway + client: 1,000 publishes, 1,000 acks, 1,000 messages back', async (t) => {
  const gw = new Engine({
    listen: '127.0.0.1:0',
    mode: 'gateway',
    'embedded.brokers': 1,
    'embedded.topics': 'nt:3',
    // The embedded Kafka (librdkafka's mock cluster) answers a long-polling Fetch only
    // when fetch.wait.max.ms (500 by default) runs out, even when records arrived: every
    // message would reach subscribers ~500 ms after its ack. Real brokers answer at once.
    'kafka.consumer.fetch.wait.max.ms': 5,
  }).start();
  const ce = new Engine({ mode: 'client' }).start();
  t.after(() => Promise.all([ce.stop(), gw.stop()]));
  assert.ok(gw.port > 0);
  assert.match(gw.bootstrapServers, /^127\.0\.0\.1:\d+/);

  const connects = [];
  const closes = [];
  let serverMessages = 0;
  gw.on('connect', (id, path, headers) => connects.push({ id, path, headers }));
  gw.on('message', (id, data, isText) => {
    if (isText && typeof data === 'string') serverMessages++;
  });
  gw.on('close', (id, code, reason) => closes.push({ id, code, reason }));

  const client = ce.client(`ws://127.0.0.1:${gw.port}/nt?from=node`, {
    'client.ping_interval_ms': 100,
    'client.header.X-Test': 'yes',
  });
  const opened = new Promise((r) => client.once('open', r));
  const clientCloses = [];
  client.on('close', (code, reason) => clientCloses.push({ code, reason }));
  assert.equal(await opened, 'streamotter.v1');
  assert.equal(client.isOpen, true);

  // The idempotent producer's start-up (its producer id) is paid by the first publish.
  const w0 = Date.now();
  await gw.publish('nt', { warmup: true });
  t.diagnostic(`first publish after start (producer start-up): ${Date.now() - w0} ms`);

  const messages = [];
  const sub = await client.subscribe('nt', { from: 'latest' }, (m) => messages.push(m));
  assert.equal(sub.channel, 'nt');
  assert.equal(connects.length, 1);
  assert.equal(connects[0].path, '/nt?from=node');
  assert.equal(connects[0].headers['x-test'], 'yes');
  assert.match(connects[0].headers['sec-websocket-protocol'], /streamotter\.v1/);

  // The subscription's first records take the fan-out consumer's start-up (~1 s on the
  // embedded Kafka): one warm-up message through the whole path before timing.
  const w1 = Date.now();
  await client.publish('nt', { n: -1 });
  await waitFor(() => messages.length === 1, 'the warm-up message');
  t.diagnostic(`first message through a new subscription: ${Date.now() - w1} ms`);
  messages.length = 0;

  const N = 1000;
  const t0 = process.hrtime.bigint();
  const acks = await Promise.all(
    Array.from({ length: N }, (_, i) => client.publish('nt', { n: i }, { key: `k${i % 7}` })),
  );
  await waitFor(() => messages.length >= N, '1,000 messages');
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.diagnostic(`1,000 publishes -> 1,000 acks and 1,000 messages back in ${ms.toFixed(0)} ms`);

  assert.equal(acks.length, N);
  assert.equal(messages.length, N);
  // Every ack names the record that came back, every n exactly once, offsets in order.
  const byPos = new Map(acks.map((a, i) => [`${a.partition}:${a.offset}`, i]));
  const seen = new Set();
  const last = new Map();
  for (const m of messages) {
    assert.equal(m.channel, 'nt');
    assert.equal(byPos.get(`${m.partition}:${m.offset}`), m.data.n);
    assert.equal(m.key, `k${m.data.n % 7}`);
    assert.equal(m.json, JSON.stringify({ n: m.data.n }));
    assert.equal(JSON.parse(m.frame).op, 'message');
    assert.ok(m.timestamp > 0);
    assert.ok(!seen.has(m.data.n));
    seen.add(m.data.n);
    assert.ok(m.offset > (last.has(m.partition) ? last.get(m.partition) : -1));
    last.set(m.partition, m.offset);
  }
  assert.equal(seen.size, N);
  // streamotter.v1 requests reach the host's 'message' listener too.
  await waitFor(() => serverMessages >= N + 1, 'server messages');

  // Engine-side publish reaches the subscriber and resolves with Kafka's answer.
  const d = await gw.publish('nt', { from: 'engine' }, { key: 'ek', headers: { trace: 'abc' } });
  assert.equal(d.topic, 'nt');
  assert.ok(d.partition >= 0 && d.partition < 3 && d.offset >= 0);
  await waitFor(() => messages.length === N + 1, 'engine-published message');
  assert.deepEqual(messages[N].data, { from: 'engine' });
  assert.equal(messages[N].key, 'ek');

  await waitFor(() => client.health().rttMs > 0, 'a ping round trip');
  const h = client.health();
  assert.equal(h.state, 'open');
  assert.ok(h.score > 0 && h.score <= 100);
  t.diagnostic(`client health ${JSON.stringify(h)}`);

  // Raw server -> client messages through engine.send, seen by the client's 'message'.
  const raw = [];
  client.on('message', (data, isText) => raw.push({ data, isText }));
  assert.equal(gw.send(connects[0].id, 'hello text'), true);
  assert.equal(gw.send(connects[0].id, Buffer.from([1, 2, 3])), true);
  await waitFor(() => raw.length >= 2, 'raw messages');
  assert.deepEqual(raw[0], { data: 'hello text', isText: true });
  assert.ok(Buffer.isBuffer(raw[1].data));
  assert.deepEqual([...raw[1].data], [1, 2, 3]);
  assert.equal(raw[1].isText, false);

  // Warm round trip: publish, await the ack and the message coming back, one at a time.
  const rtts = [];
  for (let i = 0; i < 200; i++) {
    const want = messages.length + 1;
    const s = process.hrtime.bigint();
    await client.publish('nt', { rtt: i });
    await waitFor(() => messages.length >= want, 'round trip');
    rtts.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  rtts.sort((x, y) => x - y);
  t.diagnostic(
    `publish -> ack -> message back, 200 sequential: median ${rtts[100].toFixed(2)} ms, ` +
      `p99 ${rtts[197].toFixed(2)} ms, max ${rtts[199].toFixed(2)} ms`,
  );

  // Unsubscribe: no more messages for that handler.
  await client.unsubscribe('nt');
  const before = messages.length;
  await gw.publish('nt', { after: 'unsubscribe' });
  await sleep(200);
  assert.equal(messages.length, before);

  // Server-side close with a code: both sides see it, 'open' and 'close' pair up.
  gw.closeConnection(connects[0].id, 4000, 'go away');
  await waitFor(() => closes.length === 1 && clientCloses.length === 1, 'closes');
  assert.equal(closes[0].id, connects[0].id);
  assert.equal(clientCloses[0].code, 4000);
  assert.equal(clientCloses[0].reason, 'go away');
  // ... and the client reconnects by itself.
  await waitFor(() => connects.length === 2, 'reconnect');
  await client.close(1000, 'bye');
  assert.equal(client.health().state, 'closed');
  await waitFor(() => closes.length === 2, 'server close after client close');
  assert.equal(closes[1].code, 1000);
  assert.equal(closes[1].reason, 'bye');
  assert.equal(clientCloses.length, 2, "'open' and 'close' pair up");
  await assert.rejects(client.publish('nt', 1), (e) => e instanceof errors.StreamOtterError && e.reason === 'closed');
});

test('consumer: assign, seek, seekTime, commit, group subscribe, close', async (t) => {
  const gw = new Engine({
    listen: '127.0.0.1:0',
    'embedded.brokers': 1,
    'embedded.topics': 'ck:3',
  }).start();
  t.after(() => gw.stop());
  const N = 300;
  await Promise.all(
    Array.from({ length: N }, (_, i) =>
      gw.publish('ck', `v${i}`, { key: Buffer.from(`k${i}`), headers: [['h', 'x'], ['bin', Buffer.from([0, 255])]] }),
    ),
  );

  const recs = [];
  const k = gw.consumer({}, (r) => recs.push(r));
  for (let p = 0; p < 3; p++) k.assign('ck', p, 'beginning');
  await waitFor(() => recs.length >= N, 'records');
  assert.equal(recs.length, N);
  const r0 = recs[0];
  assert.equal(r0.topic, 'ck');
  assert.ok(Buffer.isBuffer(r0.key) && Buffer.isBuffer(r0.value));
  assert.equal(r0.key.toString().slice(1), r0.value.toString().slice(1));
  assert.deepEqual(r0.headers.map((h) => h.name), ['h', 'bin']);
  assert.deepEqual([...r0.headers[1].value], [0, 255]);
  assert.equal(new Set(recs.map((r) => r.value.toString())).size, N);

  // Replay partition 0 from offset 0.
  const p0 = recs.filter((r) => r.partition === 0).length;
  await k.seek('ck', 0, 0);
  await waitFor(() => recs.length === N + p0, 'replayed records');
  assert.ok(recs.slice(N).every((r) => r.partition === 0));

  // Seek to a time after every record: nothing old is replayed, new records arrive.
  // (The embedded Kafka, librdkafka's mock cluster, does not look offsets up by time and
  // answers -1, which the engine turns into the logical end; that end is resolved after
  // seekTime returns, so the first record produced right after it may be counted as
  // "before the end". Hence: publish until one arrives.)
  await k.seekTime('ck', new Date(Date.now() + 60000));
  for (let i = 0; i < 20 && recs.length === N + p0; i++) {
    await gw.publish('ck', `after-seek-time-${i}`, { partition: 1 });
    await sleep(100);
  }
  assert.ok(recs.length > N + p0, 'a record produced after seekTime arrives');
  assert.ok(recs.slice(N + p0).every((r) => r.value.toString().startsWith('after-seek-time-')));

  // Blocking-call errors carry codes (nothing is assigned for this topic).
  await assert.rejects(k.seekTime('unassigned', Date.now()), (e) => e instanceof errors.StateError && e.code === -3);

  // Group consumption and commit.
  const g = [];
  const kg = gw.consumer({ 'kafka.group.id': 'node-group', 'kafka.auto.offset.reset': 'earliest' }, (r) => g.push(r));
  kg.subscribe('ck');
  await waitFor(() => g.length >= N, 'group records', 20000);
  await kg.commit();

  const tc = Date.now();
  await k.close();
  t.diagnostic(`consumer close took ${Date.now() - tc} ms`);
  assert.throws(() => k.assign('ck', 0, 0), errors.StateError);
  await assert.rejects(k.commit(), errors.StateError);
  const after = recs.length;
  await sleep(50);
  assert.equal(recs.length, after, 'no record after close()');
  // kg is closed by gw.stop().
});
