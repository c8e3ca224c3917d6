// The JSON protocol against a real wsgate: connect, subscribe, publish and
// receive, broadcast, ping, unsubscribe, and server errors attached to the
// request they answer.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';
import { WsgateClient, WsgateServerError } from '../../src/index.js';
import { Wsgate, nextEvent, whenOpen } from '../helpers.js';

let server;
const clients = [];
const client = (opts = {}) => {
  const c = new WsgateClient(server.url, { WebSocket, baseDelayMs: 50, ...opts });
  clients.push(c);
  return c;
};

before(async () => {
  server = await Wsgate.start({ args: ['--max-subscriptions', '2'] });
});
after(async () => {
  for (const c of clients) c.close();
  await server.stop();
});

test('connects, subscribes, and receives what another client publishes, in order', async () => {
  const sub = client();
  const pub = client();
  assert.equal(sub.state, 'connecting');
  const opened = await nextEvent(sub, 'open');
  assert.deepEqual(opened, { reconnect: false });
  assert.equal(sub.state, 'open');

  const got = [];
  const ev = await sub.subscribe('news', (m) => got.push(m));
  assert.equal(ev.topic, 'news');
  assert.equal(ev.resumed, false);
  assert.equal(ev.recovered, undefined);

  await whenOpen(pub);
  for (let i = 0; i < 20; i++) assert.equal(pub.publish('news', { i, s: 'é"\n' }), true);
  const all = [];
  sub.on('message', (m) => all.push(m));
  const deadline = Date.now() + 5000;
  while (got.length < 20 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(
    got.map((m) => m.payload),
    Array.from({ length: 20 }, (_, i) => ({ i, s: 'é"\n' })),
  );
  assert.equal(got[0].topic, 'news');
  // The topic listener and the client-wide `message` event see the same messages.
  assert.equal(all.length, got.length);
});

test('subscribing before the connection opens sends the subscribe on open', async () => {
  const sub = client();
  const ready = sub.subscribe('early');
  const pub = client();
  await ready;
  await whenOpen(pub);
  const got = nextEvent(sub, 'message');
  pub.publish('early', 'x');
  assert.deepEqual(await got, { topic: 'early', payload: 'x' });
});

test('broadcast reaches every connection and reports the listener count', async () => {
  const a = client();
  const b = client();
  await Promise.all([whenOpen(a), whenOpen(b)]);
  const atB = nextEvent(b, 'broadcast', { pred: (e) => e.payload?.hello === 'all' });
  const result = nextEvent(a, 'broadcastResult', { pred: (e) => e.payload?.hello === 'all' });
  assert.equal(a.broadcast({ hello: 'all' }), true);
  assert.deepEqual(await atB, { payload: { hello: 'all' } });
  const r = await result;
  // Every client of this file that is still open got it (a and b at least).
  assert.ok(r.listenCount >= 2, `listenCount ${r.listenCount}`);
});

test('ping resolves with a round-trip time', async () => {
  const c = client();
  await whenOpen(c);
  const rtts = await Promise.all([c.ping(), c.ping(), c.ping()]);
  for (const rtt of rtts) assert.ok(rtt >= 0 && rtt < 5000, `rtt ${rtt}`);
});

test('unsubscribe stops delivery', async () => {
  const sub = client();
  const pub = client();
  const got = [];
  await sub.subscribe('gone', (m) => got.push(m.payload));
  await whenOpen(pub);
  await sub.unsubscribe('gone');
  await sub.subscribe('fence', (m) => got.push(m.payload));
  // One publisher on one worker: 'fence' arrives after anything 'gone' would have.
  pub.publish('gone', 'must not arrive');
  pub.publish('fence', 'fence');
  await nextEvent(sub, 'message', { pred: (m) => m.topic === 'fence' });
  assert.deepEqual(got, ['fence']);
});

test('a refused subscribe rejects with the server error; the connection stays', async () => {
  const c = client();
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await c.subscribe('one');
  await c.subscribe('two');
  await assert.rejects(c.subscribe('three'), (e) => e instanceof WsgateServerError && e.code === 429);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 429);
  assert.equal(errors[0].topic, 'three');
  assert.equal(c.position('three'), null);
  // Still usable.
  assert.equal(typeof (await c.ping()), 'number');
  // refresh without JWT auth on the server: 401, attached to the refresh.
  await assert.rejects(c.refresh('x'), (e) => e instanceof WsgateServerError && e.code === 401);
});

test('publish and requests while not connected fail fast instead of queueing', async () => {
  const c = new WsgateClient(server.url, { WebSocket, autoConnect: false });
  assert.equal(c.state, 'idle');
  assert.equal(c.publish('t', 1), false);
  await assert.rejects(c.ping(), /not connected/);
  assert.throws(() => c.publish('', 1), TypeError);
  assert.throws(() => c.publish('x'.repeat(257), 1), RangeError);
  assert.throws(() => c.publish('t', undefined), TypeError);
  c.close();
  assert.equal(c.state, 'closed');
  await assert.rejects(c.subscribe('t'), /client closed/);
});

test('a malformed URL throws at once; one the WebSocket refuses ends the client with a reason', async () => {
  assert.throws(() => new WsgateClient('not a url', { WebSocket }), TypeError);
  const c = new WsgateClient('ftp://127.0.0.1/ws', { WebSocket, autoConnect: false });
  const errors = [];
  const closes = [];
  c.on('error', (e) => errors.push(e));
  c.on('close', (e) => closes.push(e));
  c.connect();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(c.state, 'closed');
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /cannot connect to ftp:/);
  assert.deepEqual(closes, [{ code: 1006, reason: '', wasClean: false, willReconnect: false }]);
  await assert.rejects(c.subscribe('t'), /client closed/);
});
