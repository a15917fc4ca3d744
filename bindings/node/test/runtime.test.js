'use strict';
// Which libuv and OpenSSL the engine runs on inside Node (Node exports its own copies),
// checked three ways, plus a stress run of many engines and clients inside Node.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync, spawnSync } = require('node:child_process');
const so = require('../lib/index.js');

const ADDON = [path.join(__dirname, '..', 'build', 'streamotter.node'), path.join(__dirname, '..', 'build', 'Release', 'streamotter.node')].find((p) => fs.existsSync(p));
const INDEX = path.join(__dirname, '..', 'lib', 'index.js');

function debianVersion(pkg) {
  try {
    return execFileSync('dpkg-query', ['-W', '-f', '${Version}', pkg], { encoding: 'utf8' }).split('-')[0];
  } catch {
    return null;
  }
}

test('sot_runtime_info() inside Node: Debian libuv 1.44 and OpenSSL, not Node\'s', (t) => {
  const info = so.runtimeInfo;
  t.diagnostic(`sot_runtime_info() in Node: ${info}`);
  t.diagnostic(`process.versions: uv ${process.versions.uv}, openssl ${process.versions.openssl}, node ${process.versions.node}, napi ${process.versions.napi}`);
  t.diagnostic(`library ${so.libraryPath} ${so.version}, RTLD_DEEPBIND: ${so.deepbind}`);
  const uv = /libuv (\d+\.\d+\.\d+)/.exec(info)[1];
  const ssl = /OpenSSL (\d+\.\d+\.\d+)/.exec(info)[1];
  assert.equal(so.deepbind, true);
  assert.match(uv, /^1\.44\./, 'the engine runs on the libuv it was built against (Debian 12: 1.44.x)');
  assert.notEqual(uv, process.versions.uv, "the engine does not run on Node's libuv");
  const debUv = debianVersion('libuv1');
  if (debUv) assert.equal(uv, debUv);
  const debSsl = debianVersion('libssl3');
  if (debSsl) assert.equal(ssl, debSsl, "the engine's OpenSSL is Debian's libssl3");
  if (ssl !== process.versions.openssl.replace(/\+.*/, '')) t.diagnostic(`OpenSSL: engine ${ssl}, Node ${process.versions.openssl}`);
  assert.match(info, /librdkafka 2\./);
});

test("the dynamic linker binds every uv_*/SSL_*/EVP_* reference of the engine to Debian's libraries", (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sot-ld-'));
  const script = `const so = require(${JSON.stringify(INDEX)});
    const e = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1 }).start();
    e.stop().then(() => console.log('done'));`;
  const r = spawnSync(process.execPath, ['-e', script], {
    env: { ...process.env, LD_DEBUG: 'bindings', LD_DEBUG_OUTPUT: path.join(dir, 'ld') },
    encoding: 'utf8',
    timeout: 30000,
  });
  assert.equal(r.status, 0, r.stderr);
  const text = fs.readdirSync(dir).map((f) => fs.readFileSync(path.join(dir, f), 'utf8')).join('\n');
  fs.rmSync(dir, { recursive: true, force: true });
  const ours = /(libstreamotter|libuv|librdkafka|libssl|libcrypto)\.so/;
  const wanted = /^(uv_|SSL_|EVP_|OpenSSL_|CRYPTO_|OPENSSL_)/;
  const re = /binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `([^']+)'/g;
  const counts = {};
  let toNode = [];
  for (const m of text.matchAll(re)) {
    const [, from, to, sym] = m;
    if (!ours.test(from) || !wanted.test(sym)) continue;
    const key = `${path.basename(from)} -> ${path.basename(to)}`;
    counts[key] = (counts[key] || 0) + 1;
    if (!ours.test(to)) toNode.push(`${path.basename(from)}:${sym} -> ${to}`);
  }
  t.diagnostic(`bindings: ${JSON.stringify(counts)}`);
  assert.ok(Object.keys(counts).some((k) => k.startsWith('libstreamotter.so.0 -> libuv.so.1')));
  assert.ok(Object.keys(counts).some((k) => k.startsWith('librdkafka.so.1 -> libssl.so.3')));
  assert.deepEqual(toNode, [], 'no uv_/SSL_/EVP_ reference of the engine binds to the node executable');
});

test("control: without RTLD_DEEPBIND the engine would bind to Node's libuv and OpenSSL", (t) => {
  const r = spawnSync(process.execPath, ['-p', `require(${JSON.stringify(INDEX)}).runtimeInfo`], {
    env: { ...process.env, STREAMOTTER_NO_DEEPBIND: '1' },
    encoding: 'utf8',
    timeout: 30000,
  });
  assert.equal(r.status, 0, r.stderr);
  t.diagnostic(`without RTLD_DEEPBIND: ${r.stdout.trim()}`);
  assert.ok(r.stdout.includes(`libuv ${process.versions.uv}`), r.stdout);
});

test('the addon does not link libstreamotter (it dlopen()s it)', () => {
  assert.ok(ADDON, 'the addon is built');
  const needed = execFileSync('readelf', ['-d', ADDON], { encoding: 'utf8' });
  assert.doesNotMatch(needed, /libstreamotter/);
  assert.doesNotMatch(needed, /libuv|libssl/);
});

test('stress inside Node: many engines and clients created and destroyed, lots of messages', async (t) => {
  const ROUNDS = 12;
  const CLIENTS = 8;
  const MSGS = 1000;
  const t0 = Date.now();
  let total = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const gw = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'gateway.protocol': 'none' }).start();
    const ce = new so.Engine({ mode: 'client' }).start();
    const perConn = new Map();
    gw.on('message', (id, data) => {
      perConn.set(id, (perConn.get(id) || 0) + 1);
      gw.send(id, data); // echo
    });
    const clients = [];
    for (let i = 0; i < CLIENTS; i++) {
      const c = ce.client(`ws://127.0.0.1:${gw.port}/`, { 'client.subprotocols': '' });
      c.echoes = 0;
      c.on('message', () => c.echoes++);
      clients.push(c);
    }
    await Promise.all(clients.map((c) => new Promise((r) => c.once('open', r))));
    for (const c of clients) for (let m = 0; m < MSGS; m++) c.send(`r${round}c${m}`);
    const end = Date.now() + 20000;
    while (clients.some((c) => c.echoes < MSGS) && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    for (const c of clients) assert.equal(c.echoes, MSGS);
    assert.equal([...perConn.values()].reduce((a, b) => a + b, 0), CLIENTS * MSGS);
    total += 2 * CLIENTS * MSGS;
    // Alternate the ways things end: clients closed one by one, or left to the engine.
    if (round % 2 === 0) await Promise.all(clients.map((c) => c.close()));
    await Promise.all([ce.stop(), gw.stop()]);
    assert.ok(clients.every((c) => c.health().state === 'closed'));
  }
  t.diagnostic(`${ROUNDS} rounds x (2 engines, ${CLIENTS} clients, ${2 * CLIENTS * MSGS} callbacks): ${total} callbacks in ${Date.now() - t0} ms`);
});
