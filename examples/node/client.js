#!/usr/bin/env node
// Connects a client to a gateway, subscribes to a channel, publishes a few messages and
// prints what comes back.
//
//   node examples/node/client.js ws://127.0.0.1:8080/ orders
//
// Needs the addon (make node-addon) and a running gateway (make run, or
// `build/bin/streamotter serve --topic orders:3`).
'use strict';

const path = require('node:path');
const { Engine } = require(path.join(__dirname, '..', '..', 'bindings', 'node'));

async function main() {
  const url = process.argv[2] || 'ws://127.0.0.1:8080/';
  const channel = process.argv[3] || 'orders';

  // An engine in client mode: a loop for WebSocket clients, no gateway, no Kafka.
  const engine = new Engine({ mode: 'client' }).start();
  try {
    const client = engine.client(url, { 'reconnect.max_delay_ms': 1000 });
    client.on('error', (err) => console.error(`client: ${err.reason}: ${err.message}`));

    let received = 0;
    let allBack;
    const done = new Promise((resolve) => (allBack = resolve));
    await withTimeout(
      client.subscribe(channel, { from: 'latest' }, (m) => {
        console.log(`message ${m.channel}/${m.partition}@${m.offset}: ${m.json ?? '(not JSON)'}`);
        if (++received === 3) allBack();
      }),
      5000,
      'no subscription after 5 s',
    );

    for (let n = 0; n < 3; n++) {
      const ack = await client.publish(channel, { greeting: 'hello from Node', n }, { key: 'node-example' });
      console.log(`ack partition ${ack.partition} offset ${ack.offset}`);
    }
    await withTimeout(done, 5000, `only ${received} of 3 messages came back`);
    await client.close();
  } finally {
    await engine.stop();
  }
}

function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

main().catch((err) => {
  console.error(err.message);
  process.exitCode = 1;
});
