// The client in headless Chromium against a real wsgate: the page loads
// src/index.js as a plain ES module from a local HTTP server and uses the
// browser's own WebSocket. Connect, subscribe, publish, receive, ping,
// reconnect (with resubscription) after the server is killed and restarted,
// and the drain hint read from a 1001 close reason as Chromium reports it.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { WebSocketServer } from 'ws';
import { Wsgate, freePort } from '../helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** Only these are served: the module under test and the page. */
const FILES = {
  '/src/index.js': ['src/index.js', 'text/javascript'],
  '/': ['test/browser/index.html', 'text/html'],
};

let server, web, webUrl, context, page, profile;

before(async () => {
  server = await Wsgate.start();
  const port = await freePort();
  web = http.createServer((req, res) => {
    const f = FILES[new URL(req.url, 'http://x').pathname];
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': f[1], 'Cache-Control': 'no-store' });
    res.end(readFileSync(path.join(root, f[0])));
  });
  await new Promise((r) => web.listen(port, '127.0.0.1', r));
  webUrl = `http://127.0.0.1:${port}/`;
  profile = mkdtempSync(path.join(os.tmpdir(), 'wsgate-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => console.error('page error:', e));
  await page.goto(webUrl);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 10_000 });
});

after(async () => {
  await context?.close();
  await new Promise((r) => (web ? web.close(r) : r()));
  await server?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test('in Chromium: connect, subscribe, publish, receive, ping', async () => {
  const result = await page.evaluate(async (url) => {
    const { WsgateClient } = window.wsgate;
    const opts = { baseDelayMs: 50, maxDelayMs: 200, stableAfterMs: 100 };
    window.got = [];
    window.log = [];
    window.sub = new WsgateClient(url, opts);
    window.pub = new WsgateClient(url, opts);
    for (const t of ['open', 'close', 'reconnecting', 'subscribed']) {
      window.sub.on(t, (e) => window.log.push({ type: t, ...e }));
    }
    const subscribed = await window.sub.subscribe('b', (m) => window.got.push(m.payload));
    if (window.pub.state !== 'open') await new Promise((r) => window.pub.on('open', r));
    window.pub.publish('b', { n: 1, s: 'héllo' });
    const rtt = await window.sub.ping();
    return { subscribed, rtt, usesBrowserWebSocket: typeof WebSocket === 'function' };
  }, server.url);
  assert.equal(result.subscribed.topic, 'b');
  assert.equal(typeof result.rtt, 'number');
  assert.ok(result.usesBrowserWebSocket);
  await page.waitForFunction(() => window.got.length === 1, null, { timeout: 5000 });
  assert.deepEqual(await page.evaluate(() => window.got), [{ n: 1, s: 'héllo' }]);
});

test('in Chromium: reconnects and resubscribes after the server is killed and restarted', async () => {
  await page.evaluate(() => new Promise((r) => setTimeout(r, 150))); // past stableAfterMs
  await server.kill();
  await page.waitForFunction(() => window.log.filter((e) => e.type === 'reconnecting').length >= 2, null, {
    timeout: 5000,
  });
  assert.equal(await page.evaluate(() => window.pub.publish('b', 'lost')), false);
  server = await Wsgate.start({ port: server.port });
  await page.waitForFunction(
    () => window.log.filter((e) => e.type === 'subscribed').length >= 2 && window.pub.state === 'open',
    null,
    { timeout: 5000 },
  );
  await page.evaluate(() => window.pub.publish('b', { n: 2 }));
  await page.waitForFunction(() => window.got.length === 2, null, { timeout: 5000 });
  const { got, log } = await page.evaluate(() => ({ got: window.got, log: window.log }));
  assert.deepEqual(got, [{ n: 1, s: 'héllo' }, { n: 2 }]);
  const retries = log.filter((e) => e.type === 'reconnecting');
  assert.equal(retries[0].attempt, 1);
  for (const r of retries) {
    assert.equal(r.cause, 'backoff');
    assert.ok(r.delayMs < Math.min(200, 50 * 2 ** (r.attempt - 1)), JSON.stringify(r));
  }
  assert.equal(log.filter((e) => e.type === 'open').at(-1).reconnect, true);
  await page.evaluate(() => {
    window.sub.close();
    window.pub.close();
  });
});

test('in Chromium: the close hint in a 1001 reason sets the wait', async () => {
  // A tiny real WebSocket server that drains its first client with a hint.
  const port = await freePort();
  const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });
  await new Promise((r) => wss.once('listening', r));
  let n = 0;
  wss.on('connection', (sock) => {
    if (n++ === 0) sock.close(1001, JSON.stringify({ reconnect_in_ms: 300 }));
  });
  try {
    const log = await page.evaluate(async (url) => {
      const { WsgateClient } = window.wsgate;
      const c = new WsgateClient(url, { baseDelayMs: 10, maxDelayMs: 10, random: () => 0.5 });
      const log = [];
      for (const t of ['open', 'close', 'reconnecting']) c.on(t, (e) => log.push({ type: t, at: performance.now(), ...e }));
      await new Promise((resolve, reject) => {
        c.on('open', () => log.filter((e) => e.type === 'open').length === 2 && resolve());
        setTimeout(() => reject(new Error(JSON.stringify(log))), 5000);
      });
      c.close();
      return log;
    }, `ws://127.0.0.1:${port}/ws`);
    const close = log.find((e) => e.type === 'close');
    assert.equal(close.code, 1001);
    assert.equal(close.reason, '{"reconnect_in_ms":300}');
    const r = log.find((e) => e.type === 'reconnecting');
    assert.equal(r.cause, 'close-hint');
    assert.equal(r.delayMs, 315);
    const waited = log.filter((e) => e.type === 'open')[1].at - close.at;
    assert.ok(waited >= 313, `reconnected after ${waited} ms`);
  } finally {
    for (const s of wss.clients) s.terminate();
    await new Promise((r) => wss.close(r));
  }
});
