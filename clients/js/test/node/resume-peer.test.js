// Resume logic against a real WebSocket peer (the `ws` package) that speaks
// the history/resume wire protocol with a script: the `since` sent on each
// resubscribe, dedupe by offset across the replay seam, a new epoch, and
// `recovered: false` (and a server that ignores `since`) surfaced to the app.
// The same behaviour against wsgate itself is in resume-wsgate.test.js.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { WsgateClient } from '../../src/index.js';
import { eventually, freePort, record } from '../helpers.js';

const msg = (topic, offset, epoch, payload) =>
  JSON.stringify({ type: 'message', topic, payload, offset, epoch });

test('resubscribes with since = last position, drops replayed duplicates, reports lost history', async () => {
  const port = await freePort();
  const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });
  await new Promise((r) => wss.once('listening', r));
  /** What each connection's subscribes asked for, per topic. */
  const asked = [];
  let conn = -1;
  wss.on('connection', (sock) => {
    const n = ++conn;
    const seen = {};
    asked.push(seen);
    sock.on('message', (data) => {
      const m = JSON.parse(String(data));
      if (m.type !== 'subscribe') return;
      seen[m.topic] = m.since ?? null;
      const send = (o) => sock.send(typeof o === 'string' ? o : JSON.stringify(o));
      if (m.topic === 'quiet') {
        // History topic with no traffic: the client must remember where live began.
        send({ type: 'subscribed', topic: 'quiet', epoch: 'q', offset: 10, ...(m.since ? { recovered: true } : {}) });
        return;
      }
      if (n === 0) {
        send({ type: 'subscribed', topic: 'h', epoch: 'e1', offset: 2 });
        for (const o of [3, 4, 5]) send(msg('h', o, 'e1', `p${o}`));
      } else if (n === 1) {
        send({ type: 'subscribed', topic: 'h', recovered: true, epoch: 'e1', offset: 7 });
        // At-least-once at the seam: 5 again, then the replay 6..7, then live 8.
        for (const o of [5, 6, 7, 7, 8]) send(msg('h', o, 'e1', `p${o}`));
      } else if (n === 2) {
        // History lost (e.g. the only holder restarted): a new epoch.
        send({ type: 'subscribed', topic: 'h', recovered: false, epoch: 'e2', offset: 0 });
        send(msg('h', 1, 'e2', 'q1'));
      } else if (n === 3) {
        // A server without history support ignores `since`.
        send({ type: 'subscribed', topic: 'h' });
      }
    });
  });
  // Each connection ends once the client confirmed what it was sent.
  const c = new WsgateClient(`ws://127.0.0.1:${port}/ws`, { WebSocket, baseDelayMs: 20, maxDelayMs: 20 });
  const got = [];
  const log = record(c, ['subscribed', 'recoveryFailed']);
  try {
    const first = await c.subscribe('h', (m) => got.push(`${m.epoch}:${m.offset}:${m.payload}`));
    assert.deepEqual(first, { topic: 'h', resumed: false, recovered: undefined, epoch: 'e1', offset: 2 });
    await c.subscribe('quiet');
    assert.deepEqual(c.position('quiet'), { offset: 10, epoch: 'q' });
    const dropAfter = async (n) => {
      await eventually(() => got.length >= n, { what: `${n} messages` });
      for (const s of wss.clients) s.terminate();
    };
    await dropAfter(3);
    await dropAfter(6);
    await dropAfter(7);
    await eventually(() => log.filter((e) => e.type === 'recoveryFailed').length === 2, {
      what: 'the second recoveryFailed',
    });
  } finally {
    c.close();
    for (const s of wss.clients) s.terminate();
    await new Promise((r) => wss.close(r));
  }
  assert.deepEqual(got, ['e1:3:p3', 'e1:4:p4', 'e1:5:p5', 'e1:6:p6', 'e1:7:p7', 'e1:8:p8', 'e2:1:q1']);
  assert.equal(c.stats.duplicates, 2);
  assert.deepEqual(
    asked.map((a) => a.h),
    [null, { offset: 5, epoch: 'e1' }, { offset: 8, epoch: 'e1' }, { offset: 1, epoch: 'e2' }],
  );
  // The quiet topic resumed from where live began, every time.
  assert.deepEqual(asked.slice(1).map((a) => a.quiet), Array(3).fill({ offset: 10, epoch: 'q' }));
  const failed = log.filter((e) => e.type === 'recoveryFailed');
  assert.deepEqual(
    failed.map(({ topic, since, epoch, offset, serverSupportsResume }) => ({ topic, since, epoch, offset, serverSupportsResume })),
    [
      { topic: 'h', since: { offset: 8, epoch: 'e1' }, epoch: 'e2', offset: 0, serverSupportsResume: true },
      { topic: 'h', since: { offset: 1, epoch: 'e2' }, epoch: undefined, offset: undefined, serverSupportsResume: false },
    ],
  );
  const resubs = log.filter((e) => e.type === 'subscribed' && e.topic === 'h').map((e) => e.recovered);
  assert.deepEqual(resubs, [undefined, true, false, false]);
});

test('an app-supplied since is sent on the first subscribe', async () => {
  const port = await freePort();
  const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });
  await new Promise((r) => wss.once('listening', r));
  let asked;
  wss.on('connection', (sock) =>
    sock.on('message', (data) => {
      const m = JSON.parse(String(data));
      asked = m.since;
      sock.send(JSON.stringify({ type: 'subscribed', topic: m.topic, recovered: true, epoch: 'e', offset: 44 }));
      sock.send(msg(m.topic, 42, 'e', 'dup'));
      sock.send(msg(m.topic, 43, 'e', 'new'));
    }),
  );
  const c = new WsgateClient(`ws://127.0.0.1:${port}/ws`, { WebSocket });
  const got = [];
  try {
    const ev = await c.subscribe('t', (m) => got.push(m.payload), { since: { offset: 42, epoch: 'e' } });
    assert.equal(ev.resumed, true);
    assert.equal(ev.recovered, true);
    await eventually(() => got.length === 1, { what: 'the replayed message' });
  } finally {
    c.close();
    await new Promise((r) => wss.close(r));
  }
  assert.deepEqual(asked, { offset: 42, epoch: 'e' });
  assert.deepEqual(got, ['new']);
  assert.deepEqual(c.position('t'), { offset: 43, epoch: 'e' });
});
