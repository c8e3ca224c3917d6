// A Node `ws` client over wss:// trusting only the given test CA, against
// wsgate's pub/sub app: subscribes, publishes to itself through a second
// connection and uses the echo command. Prints "ok".
//
//     node tls-client.js wss://localhost:PORT/ws CA.pem
'use strict';
const assert = require('assert');
const fs = require('fs');
const WebSocket = require('ws');

const [url, caFile] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ca });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

function next(ws) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timeout')), 5000);
    ws.once('message', (data) => {
      clearTimeout(timer);
      resolve(JSON.parse(data.toString()));
    });
  });
}

(async () => {
  const sub = await open();
  const pub = await open();
  assert.ok(sub._socket.encrypted, 'not TLS');
  sub.send(JSON.stringify({ type: 'subscribe', topic: 'node' }));
  assert.strictEqual((await next(sub)).type, 'subscribed');
  for (let n = 0; n < 20; n++) {
    const payload = { n, pad: 'z'.repeat(n * 400) };
    const got = next(sub);
    pub.send(JSON.stringify({ type: 'publish', topic: 'node', payload }));
    const msg = await got;
    assert.strictEqual(msg.type, 'message');
    assert.deepStrictEqual(msg.payload, payload);
  }
  const echoed = next(pub);
  pub.send(JSON.stringify({ type: 'echo', payload: { hello: 'tls' } }));
  assert.deepStrictEqual((await echoed).payload, { hello: 'tls' });
  sub.close();
  pub.close();
  console.log('ok');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
