// Reconnecting: after a real wsgate restart (resubscribing on its own), the
// back-off schedule (exponential, full jitter, capped), the server's drain
// hint in a 1001 close reason, and Retry-After on a refused upgrade.

import assert from 'node:assert/strict';
import http from 'node:http';
import { test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { WsgateClient, backoffCap, parseCloseHint, parseRetryAfter } from '../../src/index.js';
import { Wsgate, eventually, freePort, nextEvent, record, whenOpen } from '../helpers.js';

/** A tiny real WebSocket server (the `ws` package) scripted per connection. */
async function scriptedServer(onConnection) {
  const port = await freePort();
  const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });
  await new Promise((r) => wss.once('listening', r));
  let n = 0;
  wss.on('connection', (sock) => onConnection(sock, n++));
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    connections: () => n,
    close: () =>
      new Promise((r) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => r());
      }),
  };
}

test('back-off caps double from baseDelayMs up to maxDelayMs', () => {
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((a) => backoffCap(a, 50, 400)),
    [50, 100, 200, 400, 400, 400],
  );
  assert.equal(backoffCap(10_000, 500, 30_000), 30_000);
  assert.equal(parseCloseHint('{"reconnect_in_ms":1234}'), 1234);
  assert.equal(parseCloseHint('{"reconnect_in_ms":-1}'), null);
  assert.equal(parseCloseHint('going away'), null);
  assert.equal(parseCloseHint('{"reconnect_in_ms":'), null);
  assert.equal(parseRetryAfter('3'), 3000);
  assert.equal(parseRetryAfter(['2']), 2000);
  assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')), 10_000);
  assert.equal(parseRetryAfter('soon'), null);
  assert.equal(parseRetryAfter(undefined), null);
});

test('reconnects after the server is killed and restarted on the same port, and resubscribes', async () => {
  let server = await Wsgate.start();
  const sub = new WsgateClient(server.url, { WebSocket, baseDelayMs: 50, maxDelayMs: 200, stableAfterMs: 100 });
  const pub = new WsgateClient(server.url, { WebSocket, baseDelayMs: 50, maxDelayMs: 200 });
  try {
    const got = [];
    await sub.subscribe('news', (m) => got.push(m.payload));
    await whenOpen(pub);
    pub.publish('news', 'before');
    await eventually(() => got.length === 1, { what: 'the first message' });
    await new Promise((r) => setTimeout(r, 150)); // past stableAfterMs: back-off starts over

    const log = record(sub, ['close', 'reconnecting', 'open', 'subscribed']);
    await server.kill();
    await eventually(() => log.some((e) => e.type === 'reconnecting'), { what: 'a reconnect' });
    const firstRetry = log.find((e) => e.type === 'reconnecting');
    assert.equal(firstRetry.attempt, 1, 'a stable connection resets the back-off');
    assert.equal(firstRetry.cause, 'backoff');
    assert.ok(firstRetry.delayMs >= 0 && firstRetry.delayMs < 50, `first delay ${firstRetry.delayMs}`);
    // Let a few attempts fail against the closed port.
    await eventually(() => log.filter((e) => e.type === 'reconnecting').length >= 3, { what: 'failed attempts' });
    assert.equal(sub.publish('news', 'while down'), false);

    server = await Wsgate.start({ port: server.port });
    await eventually(() => log.some((e) => e.type === 'subscribed'), { what: 'the resubscription' });
    await whenOpen(pub);
    assert.deepEqual(log.find((e) => e.type === 'open'), { type: 'open', at: log.find((e) => e.type === 'open').at, reconnect: true });
    assert.equal(log.find((e) => e.type === 'close').willReconnect, true);
    pub.publish('news', 'after');
    await eventually(() => got.length === 2, { what: 'a message after the restart' });
    assert.deepEqual(got, ['before', 'after']);
  } finally {
    sub.close();
    pub.close();
    await server.stop();
  }
});

test('a drained server (SIGTERM, close 1001) is followed to its successor', async () => {
  let server = await Wsgate.start();
  const sub = new WsgateClient(server.url, { WebSocket, baseDelayMs: 50, maxDelayMs: 200 });
  try {
    await sub.subscribe('t');
    const log = record(sub, ['close', 'subscribed']);
    await server.stop();
    server = await Wsgate.start({ port: server.port });
    await eventually(() => log.some((e) => e.type === 'subscribed'), {
      what: 'the resubscription after the drain',
    });
    assert.equal(log[0].type, 'close');
    assert.equal(log[0].code, 1001);
  } finally {
    sub.close();
    await server.stop();
  }
});

test('back-off delays follow the capped doubling exactly at the top of the jitter range', async () => {
  const port = await freePort(); // nothing listens: every attempt fails at once
  const c = new WsgateClient(`ws://127.0.0.1:${port}/ws`, {
    WebSocket,
    baseDelayMs: 40,
    maxDelayMs: 160,
    random: () => 0.999999,
  });
  const log = record(c, ['reconnecting']);
  try {
    await eventually(() => log.length >= 6, { what: '6 reconnect attempts', withinMs: 5000 });
    c.close();
    const delays = log.slice(0, 6).map((e) => Math.round(e.delayMs));
    assert.deepEqual(delays, [40, 80, 160, 160, 160, 160]);
    assert.deepEqual(log.slice(0, 6).map((e) => e.attempt), [1, 2, 3, 4, 5, 6]);
    // The client really waited: the gap between two attempts is at least the
    // delay chosen (refusal of a closed local port takes a few ms at most).
    for (let i = 1; i < 6; i++) {
      const gap = log[i].at - log[i - 1].at;
      assert.ok(gap >= log[i - 1].delayMs - 2, `gap ${gap} < delay ${log[i - 1].delayMs}`);
      assert.ok(gap < log[i - 1].delayMs + 400, `gap ${gap} far above delay ${log[i - 1].delayMs}`);
    }
  } finally {
    c.close();
  }
});

test('with real randomness every delay lies in [0, cap) and they are not all equal', async () => {
  const port = await freePort();
  const c = new WsgateClient(`ws://127.0.0.1:${port}/ws`, { WebSocket, baseDelayMs: 10, maxDelayMs: 40 });
  const log = record(c, ['reconnecting']);
  try {
    await eventually(() => log.length >= 12, { what: '12 reconnect attempts', withinMs: 5000 });
  } finally {
    c.close();
  }
  for (const e of log) {
    const cap = backoffCap(e.attempt, 10, 40);
    assert.ok(e.delayMs >= 0 && e.delayMs < cap, `attempt ${e.attempt}: ${e.delayMs} not in [0, ${cap})`);
  }
  assert.ok(new Set(log.map((e) => e.delayMs)).size > 6, 'delays are jittered');
});

test('a server that accepts and drops at once does not reset the back-off', async () => {
  const srv = await scriptedServer((sock) => sock.close(1011, 'broken'));
  const c = new WsgateClient(srv.url, { WebSocket, baseDelayMs: 20, maxDelayMs: 1000, stableAfterMs: 1000 });
  const log = record(c, ['reconnecting', 'open']);
  try {
    await eventually(() => log.filter((e) => e.type === 'reconnecting').length >= 4, { what: '4 attempts' });
  } finally {
    c.close();
    await srv.close();
  }
  const attempts = log.filter((e) => e.type === 'reconnecting').map((e) => e.attempt);
  assert.deepEqual(attempts.slice(0, 4), [1, 2, 3, 4]);
  assert.ok(log.filter((e) => e.type === 'open').length >= 4, 'it did open each time');
});

test("the server's close hint (1001 with {\"reconnect_in_ms\":N}) sets the wait", async () => {
  const srv = await scriptedServer((sock, n) => {
    if (n === 0) sock.close(1001, JSON.stringify({ reconnect_in_ms: 300 }));
  });
  const c = new WsgateClient(srv.url, { WebSocket, baseDelayMs: 10, maxDelayMs: 10, hintJitter: 0.1, random: () => 0.5 });
  const log = record(c, ['close', 'reconnecting', 'open']);
  try {
    await eventually(() => log.filter((e) => e.type === 'open').length === 2, { what: 'the second connection' });
  } finally {
    c.close();
    await srv.close();
  }
  const close = log.find((e) => e.type === 'close');
  assert.equal(close.code, 1001);
  const r = log.find((e) => e.type === 'reconnecting');
  assert.equal(r.cause, 'close-hint');
  assert.equal(r.delayMs, 315); // 300 + 0.5 * 300 * 0.1
  const reopened = log.filter((e) => e.type === 'open')[1];
  const waited = reopened.at - close.at;
  assert.ok(waited >= 313, `reconnected after ${waited} ms, before the hinted 315`);
  assert.ok(waited < 1500, `reconnected after ${waited} ms`);
});

test('a 1001 without a hint, or a hint with another code, falls back to back-off', async () => {
  const srv = await scriptedServer((sock, n) => {
    if (n === 0) sock.close(1001, 'going away');
    if (n === 1) sock.close(1000, JSON.stringify({ reconnect_in_ms: 60_000 }));
  });
  const c = new WsgateClient(srv.url, { WebSocket, baseDelayMs: 20, maxDelayMs: 40 });
  const log = record(c, ['reconnecting', 'open']);
  try {
    await eventually(() => log.filter((e) => e.type === 'open').length === 3, { what: 'the third connection' });
  } finally {
    c.close();
    await srv.close();
  }
  const r = log.filter((e) => e.type === 'reconnecting');
  assert.deepEqual(r.map((e) => e.cause), ['backoff', 'backoff']);
  for (const e of r) assert.ok(e.delayMs < 40);
});

test('Retry-After on a 503 from a real wsgate at --max-connections sets the wait', async () => {
  const server = await Wsgate.start({ args: ['--max-connections', '1'] });
  const holder = new WsgateClient(server.url, { WebSocket });
  let c;
  try {
    await whenOpen(holder);
    c = new WsgateClient(server.url, { WebSocket, baseDelayMs: 10, maxDelayMs: 10, random: () => 0 });
    const log = record(c, ['refused', 'reconnecting', 'open']);
    const refused = await nextEvent(c, 'refused');
    assert.equal(refused.status, 503);
    assert.equal(refused.retryAfterMs, 1000); // wsgate sends Retry-After: 1
    const r = await nextEvent(c, 'reconnecting');
    assert.equal(r.cause, 'retry-after');
    assert.equal(r.delayMs, 1000);
    holder.close();
    await whenOpen(c, 5000);
    const opened = log.find((e) => e.type === 'open');
    const refusedAt = log.find((e) => e.type === 'refused').at;
    assert.ok(opened.at - refusedAt >= 995, `reopened ${opened.at - refusedAt} ms after the 503`);
  } finally {
    holder.close();
    c?.close();
    await server.stop();
  }
});

test('Retry-After as an HTTP date from a plain HTTP 503', async () => {
  const port = await freePort();
  let hits = 0;
  const srv = http.createServer((req, res) => {
    hits++;
    res.writeHead(503, { 'Retry-After': new Date(Date.now() + 2000).toUTCString(), 'Content-Length': 0 });
    res.end();
  });
  await new Promise((r) => srv.listen(port, '127.0.0.1', r));
  const c = new WsgateClient(`ws://127.0.0.1:${port}/ws`, { WebSocket, baseDelayMs: 10, hintJitter: 0 });
  try {
    const r = await nextEvent(c, 'reconnecting');
    assert.equal(r.cause, 'retry-after');
    // HTTP dates have one-second resolution: 1 to 2 s from now.
    assert.ok(r.delayMs > 900 && r.delayMs <= 2000, `delay ${r.delayMs}`);
    assert.equal(hits, 1);
  } finally {
    c.close();
    srv.closeAllConnections?.();
    await new Promise((r) => srv.close(r));
  }
});
