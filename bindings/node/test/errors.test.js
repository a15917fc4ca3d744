'use strict';
// Errors carry the library's numeric status (.code) and its name (.codeName, from
// sot_err_name), as one Error subclass per status code.
const test = require('node:test');
const assert = require('node:assert/strict');
const so = require('../lib/index.js');

const { Engine, errors, codes, StreamOtterError } = so;

function isSot(cls, code, pattern) {
  return (e) => {
    assert.ok(e instanceof cls, `${e && e.name} is not a ${cls.name}: ${e && e.message}`);
    assert.ok(e instanceof StreamOtterError);
    assert.equal(e.code, code);
    assert.equal(e.codeName, Object.keys(codes).find((k) => codes[k] === code));
    assert.equal(e.name, cls.name);
    if (pattern) assert.match(e.message, pattern);
    return true;
  };
}

test('the error classes come from the library table', () => {
  assert.equal(codes.SOT_OK, 0);
  const expected = {
    InvalidArgError: -1,
    ConfigError: -2,
    StateError: -3,
    KafkaError: -4,
    IoError: -5,
    NomemError: -6,
    InternalError: -7,
    NotFoundError: -8,
    InCallbackError: -9,
    BadHandleError: -10,
    RefusedError: -11,
  };
  for (const [name, code] of Object.entries(expected)) {
    assert.equal(typeof errors[name], 'function', name);
    const e = new errors[name](undefined, code);
    assert.equal(e.code, code);
    assert.match(e.codeName, /^SOT_ERR_/);
    assert.ok(e.message.length > 0, 'a message from sot_strerror');
  }
  assert.equal(new StreamOtterError('x', -999).codeName, 'SOT_ERR_UNKNOWN');
  assert.equal(so.version.split('.')[0], String(so.versionNumber >> 16));
});

test('configuration errors', () => {
  assert.throws(() => new Engine({ 'no.such.key': 'x' }), isSot(errors.ConfigError, -2, /no\.such\.key/));
  assert.throws(() => new Engine({ 'embedded.brokers': 'many' }), isSot(errors.ConfigError, -2, /embedded\.brokers/));
  assert.throws(() => new Engine({ callbacks: 'poll' }), isSot(errors.ConfigError, -2, /callbacks/));
});

test('state, argument and not-found errors', async (t) => {
  const gw = new Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'embedded.topics': 'er:1' });
  assert.equal(gw.port, null);
  assert.throws(() => gw.client('ws://127.0.0.1:1/'), isSot(errors.StateError, -3));
  gw.start();
  t.after(() => gw.stop());
  assert.throws(() => gw.start(), isSot(errors.StateError, -3));

  // A second engine on the same port: the listen fails with an I/O error.
  const busy = new Engine({ listen: `127.0.0.1:${gw.port}`, 'embedded.brokers': 1 });
  assert.throws(() => busy.start(), isSot(errors.IoError, -5));
  assert.throws(() => busy.start(), isSot(errors.StateError, -3), 'a failed engine is not started again');
  await busy.stop();

  assert.throws(() => gw.send(424242, 'x'), isSot(errors.NotFoundError, -8, /424242/));
  assert.throws(() => gw.closeConnection(1, 1005), isSot(errors.InvalidArgError, -1));
  assert.throws(() => gw.client('http://nope'), isSot(errors.ConfigError, -2, /url/i));
  assert.throws(() => gw.client('ws://127.0.0.1:1/', { 'reconnect.max_delay_ms': 'soon' }), isSot(errors.ConfigError, -2));

  const ce = new Engine({ mode: 'client' }).start();
  t.after(() => ce.stop());
  await assert.rejects(ce.publish('er', 'x'), isSot(errors.StateError, -3), 'publish on a client-mode engine');
  assert.throws(() => ce.consumer({}, () => {}), isSot(errors.ConfigError, -2), 'no Kafka on a client-mode engine');
  assert.throws(() => gw.consumer({ 'group.id': 'x' }, () => {}), isSot(errors.ConfigError, -2));
  assert.throws(() => gw.consumer({}), TypeError);

  const client = ce.client(`ws://127.0.0.1:${gw.port}/`);
  await assert.rejects(client.publish('er', '{bad', { raw: true }), isSot(errors.InvalidArgError, -1));
  await assert.rejects(client.subscribe('er', { from: { nonsense: true } }, () => {}), isSot(errors.InvalidArgError, -1));
  await assert.rejects(client.subscribe('er'), TypeError);
  assert.throws(() => client.send(undefined), TypeError);
  await assert.rejects(client.close(1005), isSot(errors.InvalidArgError, -1));
  await new Promise((r) => client.once('open', r));

  // Request errors answered by the gateway carry its word in .reason.
  await assert.rejects(
    client.subscribe('no-such-topic', () => {}),
    isSot(errors.RefusedError, -11, /no-such-topic/),
  );
  await client.subscribe('no-such-topic', () => {}).catch((e) => assert.equal(e.reason, 'unknown_channel'));

  // Connection errors: .reason "connect_failed", numeric code, and the circuit opening.
  const lonely = ce.client('ws://127.0.0.1:1/', {
    'reconnect.initial_delay_ms': 10,
    'reconnect.max_delay_ms': 20,
    'circuit.failure_threshold': 2,
    'circuit.cooldown_ms': 60000,
  });
  const errs = [];
  lonely.on('error', (e) => errs.push(e));
  const end = Date.now() + 5000;
  while (!errs.some((e) => e.reason === 'circuit_open') && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  assert.ok(errs.some((e) => e.reason === 'connect_failed' && e instanceof errors.IoError && e.code === -5));
  assert.ok(errs.some((e) => e.reason === 'circuit_open'));
  assert.equal(lonely.health().state, 'circuit_open');
  assert.ok(lonely.health().consecutiveFailures >= 2);
  await lonely.close();
  await client.close();
  // Requests on a closed client fail at once (StateError); requests still pending when a
  // client closes are answered by the library with RefusedError, reason "closed".
  await assert.rejects(client.publish('er', 1), (e) => e instanceof errors.StateError && e.reason === 'closed');
  const c3 = ce.client(`ws://127.0.0.1:${gw.port}/`);
  await new Promise((r) => c3.once('open', r));
  const settledP = Promise.allSettled(Array.from({ length: 200 }, (_, i) => c3.publish('er', i)));
  await c3.close();
  const settled = await settledP;
  const cut = settled.filter((r) => r.status === 'rejected');
  assert.ok(cut.every((r) => r.reason instanceof errors.RefusedError && r.reason.reason === 'closed'));
  t.diagnostic(`200 publishes then close(): ${settled.length - cut.length} acknowledged, ${cut.length} answered "closed"`);
});
