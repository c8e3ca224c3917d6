// A Node `ws` client with perMessageDeflate: true against wsgate's pub/sub
// app: checks the extension was negotiated, publishes to itself through a
// second connection and uses the echo command, with payloads large enough
// (over ws's 1 KiB threshold) to be compressed both ways. Prints "ok".
//
//     node deflate-client.js ws://127.0.0.1:PORT/ws
'use strict';
const assert = require('assert');
const WebSocket = require('ws');

const url = process.argv[2];
const payload = { items: Array.from({ length: 60 }, (_, i) => ({ sym: `ABC${i}`, bid: 100 + i, ask: 101 + i })) };

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: true });
    ws.once('upgrade', (res) => {
      const ext = res.headers['sec-websocket-extensions'] || '';
      assert.ok(ext.startsWith('permessage-deflate'), `no deflate in ${ext}`);
    });
    ws.once('open', () => {
      assert.ok(ws.extensions.includes('permessage-deflate'), ws.extensions);
      resolve(ws);
    });
    ws.once('error', reject);
  });
}

function next(ws) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message within 5 s')), 5000);
    ws.once('message', (data) => { clearTimeout(t); resolve(JSON.parse(data.toString())); });
  });
}

(async () => {
  const sub = await open();
  const pub = await open();
  sub.send(JSON.stringify({ type: 'subscribe', topic: 'node' }));
  assert.strictEqual((await next(sub)).type, 'subscribed');
  for (let n = 0; n < 5; n++) {
    const body = { ...payload, n };
    const got = next(sub);
    pub.send(JSON.stringify({ type: 'publish', topic: 'node', payload: body }));
    const msg = await got;
    assert.strictEqual(msg.type, 'message');
    assert.deepStrictEqual(msg.payload, body);
  }
  const echoed = next(pub);
  pub.send(JSON.stringify({ type: 'echo', payload }));
  assert.deepStrictEqual((await echoed).payload, payload);
  sub.close();
  pub.close();
  console.log('ok');
})().catch((e) => { console.error(e); process.exit(1); });
