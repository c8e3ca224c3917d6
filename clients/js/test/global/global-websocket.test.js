// The client on Node's own global WebSocket (undici; Node 22+, or Node 20
// with --experimental-websocket, as test.sh runs this file), with no
// WebSocket option: connect, subscribe, publish, receive, and a reconnect
// after the server restarts.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WsgateClient } from '../../src/index.js';
import { Wsgate, eventually, record, whenOpen } from '../helpers.js';

test("on Node's global WebSocket: pub/sub and reconnect against wsgate", async (t) => {
  assert.equal(typeof globalThis.WebSocket, 'function', 'run with Node 22+ or --experimental-websocket');
  let server = await Wsgate.start();
  const sub = new WsgateClient(server.url, { baseDelayMs: 50, maxDelayMs: 200 });
  const pub = new WsgateClient(server.url, { baseDelayMs: 50, maxDelayMs: 200 });
  const got = [];
  const log = record(sub, ['subscribed', 'reconnecting']);
  try {
    await sub.subscribe('g', (m) => got.push(m.payload));
    await whenOpen(pub);
    pub.publish('g', { n: 1 });
    await eventually(() => got.length === 1, { what: 'the first message' });
    await server.kill();
    await eventually(() => log.some((e) => e.type === 'reconnecting'), { what: 'a reconnect attempt' });
    server = await Wsgate.start({ port: server.port });
    await eventually(() => log.filter((e) => e.type === 'subscribed').length >= 2 && pub.state === 'open', {
      what: 'the resubscription',
    });
    pub.publish('g', { n: 2 });
    await eventually(() => got.length === 2, { what: 'a message after the restart' });
    assert.deepEqual(got, [{ n: 1 }, { n: 2 }]);
  } finally {
    sub.close();
    pub.close();
    await server.stop();
  }
});
