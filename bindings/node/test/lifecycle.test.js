'use strict';
// Process lifetime: nothing keeps Node alive after stop; an unref'd engine or
// process.exit() with engines running exits cleanly; handles dropped without stop are
// collected without a crash (destroy racing garbage collection); worker threads.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const v8 = require('node:v8');
const vm = require('node:vm');
const { spawn } = require('node:child_process');
const { Worker } = require('node:worker_threads');
const so = require('../lib/index.js');

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');
const INDEX = path.join(__dirname, '..', 'lib', 'index.js');

/** Runs `node script.js`; resolves {code, signal, stdout, stderr, exitedAt}. */
function runScript(source, { timeoutMs = 30000 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sot-node-'));
  const file = path.join(dir, 'script.js');
  fs.writeFileSync(file, source);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      const exitedAt = Date.now();
      clearTimeout(timer);
      child.on('close', () => {
        fs.rmSync(dir, { recursive: true, force: true });
        resolve({ code, signal, stdout, stderr, exitedAt });
      });
    });
  });
}

test('after stop() the process exits by itself, with code 0, within a few seconds', async (t) => {
  const r = await runScript(`
    const so = require(${JSON.stringify(INDEX)});
    (async () => {
      const gw = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'embedded.topics': 'ex:1' }).start();
      const ce = new so.Engine({ mode: 'client' }).start();
      const client = ce.client('ws://127.0.0.1:' + gw.port + '/');
      let got;
      const back = new Promise((r) => (got = r));
      await client.subscribe('ex', (m) => got(m));
      const t0 = process.hrtime.bigint();
      const ack = await client.publish('ex', { hello: 'node' });
      const m = await back;
      console.log('ROUNDTRIP', JSON.stringify(m.data), ack.offset === m.offset, Number(process.hrtime.bigint() - t0) / 1e6);
      await client.close();
      await ce.stop();
      await gw.stop();
      console.log('STOPPED', Date.now());
    })();
  `);
  const stopped = Number(/STOPPED (\d+)/.exec(r.stdout)?.[1]);
  t.diagnostic(r.stdout.trim().split('\n').join(' | '));
  assert.equal(r.signal, null, `killed: ${r.stderr}`);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /ROUNDTRIP \{"hello":"node"\} true/);
  assert.ok(stopped > 0);
  const lingered = r.exitedAt - stopped;
  t.diagnostic(`exited ${lingered} ms after stop() resolved`);
  assert.ok(lingered < 3000, `the process lingered ${lingered} ms after stop`);
});

test('a running engine keeps the process alive (like a listening server) until stopped', async () => {
  const r = await runScript(
    `const so = require(${JSON.stringify(INDEX)});
     new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1 }).start();
     console.log('RUNNING');`,
    { timeoutMs: 1500 },
  );
  assert.match(r.stdout, /RUNNING/);
  assert.equal(r.signal, 'SIGKILL', 'still running when killed');
});

test("an unref()'d engine does not keep the process alive; exit destroys it cleanly", async () => {
  const r = await runScript(`
    const so = require(${JSON.stringify(INDEX)});
    const gw = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1 }).start().unref();
    const ce = new so.Engine({ mode: 'client' }).start();
    const c = ce.client('ws://127.0.0.1:' + gw.port + '/');
    c.once('open', () => { ce.unref(); console.log('OPEN'); });
  `);
  assert.equal(r.signal, null, r.stderr);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /OPEN/);
});

test('process.exit() while engines run and events flow exits cleanly', async () => {
  const r = await runScript(`
    const so = require(${JSON.stringify(INDEX)});
    const gw = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'gateway.protocol': 'none' }).start();
    const ce = new so.Engine({ mode: 'client' }).start();
    let n = 0;
    gw.on('message', () => { if (++n === 5000) { console.log('EXITING'); process.exit(0); } });
    const c = ce.client('ws://127.0.0.1:' + gw.port + '/', { 'client.subprotocols': '' });
    c.once('open', () => { for (let i = 0; i < 50000; i++) c.send('x' + i); });
  `);
  assert.equal(r.signal, null, r.stderr);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /EXITING/);
});

test('handles dropped without stop are collected without a crash (destroy racing GC)', async (t) => {
  // Never started.
  for (let i = 0; i < 200; i++) new so.Engine({ listen: '127.0.0.1:0' });
  gc();
  // Started, stopped without awaiting, dropped; clients left open and dropped.
  const gw = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'gateway.protocol': 'none' }).start();
  t.after(() => gw.stop());
  const stops = [];
  for (let i = 0; i < 10; i++) {
    const ce = new so.Engine({ mode: 'client' }).start();
    for (let j = 0; j < 5; j++) ce.client(`ws://127.0.0.1:${gw.port}/`, { 'client.subprotocols': '' });
    if (i % 2) stops.push(ce.stop());
    else {
      ce.stop(); // not awaited, not kept
    }
    gc();
  }
  await Promise.all(stops);
  // Consumers dropped without close; a client closed twice; stop twice.
  const g2 = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'embedded.topics': 'gc:1' }).start();
  for (let i = 0; i < 5; i++) g2.consumer({}, () => {}).assign('gc', 0, 'beginning');
  const c = g2.client(`ws://127.0.0.1:${g2.port}/`);
  await new Promise((r) => c.once('open', r));
  const p1 = c.close();
  assert.equal(c.close(), p1);
  await p1;
  const s1 = g2.stop();
  assert.equal(g2.stop(), s1);
  await s1;
  assert.equal(g2.state, 'stopped');
  assert.throws(() => g2.client('ws://127.0.0.1:1/'), so.errors.StateError);
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
  // The gateway still works after all of that.
  const ce = new so.Engine({ mode: 'client' }).start();
  const c2 = ce.client(`ws://127.0.0.1:${gw.port}/`, { 'client.subprotocols': '' });
  await new Promise((r) => c2.once('open', r));
  await ce.stop();
});

test('engines in worker threads', async () => {
  const src = `
    const { parentPort } = require('node:worker_threads');
    const so = require(${JSON.stringify(INDEX)});
    (async () => {
      const gw = new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1, 'gateway.protocol': 'none' }).start();
      let n = 0;
      const done = new Promise((r) => gw.on('message', () => { if (++n === 1000) r(); }));
      const c = gw.client('ws://127.0.0.1:' + gw.port + '/', { 'client.subprotocols': '' });
      await new Promise((r) => c.once('open', r));
      for (let i = 0; i < 1000; i++) c.send('w' + i);
      await done;
      await gw.stop();
      parentPort.postMessage(n);
    })();`;
  const results = await Promise.all(
    [0, 1].map(
      () =>
        new Promise((resolve, reject) => {
          const w = new Worker(src, { eval: true });
          let got = null;
          w.on('message', (m) => (got = m));
          w.on('error', reject);
          w.on('exit', (code) => resolve({ code, got }));
        }),
    ),
  );
  for (const r of results) assert.deepEqual(r, { code: 0, got: 1000 });
  // A worker terminated while its engine runs (the environment's cleanup destroys it).
  const w = new Worker(
    `const so = require(${JSON.stringify(INDEX)});
     new so.Engine({ listen: '127.0.0.1:0', 'embedded.brokers': 1 }).start();
     require('node:worker_threads').parentPort.postMessage('up');`,
    { eval: true },
  );
  await new Promise((r) => w.once('message', r));
  assert.equal(await w.terminate(), 1);
});
