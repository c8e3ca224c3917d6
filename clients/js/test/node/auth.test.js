// JWT authentication against a real wsgate (--jwt-secret): a URL function
// that puts a fresh token in every attempt, refresh, and a subscribe the
// token's `topics` claim refuses (403, attached to that subscribe).

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';
import { WsgateClient, WsgateServerError } from '../../src/index.js';
import { Wsgate, eventually, record } from '../helpers.js';

const SECRET = 'client-test-secret-0123456789abcdef';
const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
function jwt(claims) {
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 60, ...claims });
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

let server;
before(async () => {
  // No minimum interval between refreshes: the tests refresh back to back.
  server = await Wsgate.start({ args: ['--jwt-secret', SECRET, '--min-refresh-interval', '0s'] });
});
after(() => server.stop());

test('connects with a token from a URL function; refresh replaces it', async () => {
  let calls = 0;
  const c = new WsgateClient(
    async () => {
      calls++;
      return `${server.url}?token=${jwt({ topics: ['news.*'] })}`;
    },
    { WebSocket, baseDelayMs: 20, maxDelayMs: 20 },
  );
  try {
    await c.subscribe('news.a');
    const r = await c.refresh(jwt({ topics: ['news.*'] }));
    assert.ok(r.exp > Date.now() / 1000);
    await assert.rejects(c.refresh('not.a.token'), (e) => e instanceof WsgateServerError && e.code === 401);
    assert.equal(calls, 1);
  } finally {
    c.close();
  }
});

test('refused upgrades (401) are retried, and the URL function is asked again each time', async () => {
  let calls = 0;
  // No token on the first two attempts, a valid one from the third.
  const url = () => (++calls < 3 ? server.url : `${server.url}?token=${jwt({})}`);
  const c = new WsgateClient(url, { WebSocket, baseDelayMs: 20, maxDelayMs: 20 });
  const log = record(c, ['refused', 'reconnecting', 'open']);
  try {
    await eventually(() => c.state === 'open', { what: 'the third attempt to open' });
  } finally {
    c.close();
  }
  assert.equal(calls, 3);
  assert.deepEqual(log.filter((e) => e.type === 'refused').map((e) => e.status), [401, 401]);
  assert.deepEqual(log.filter((e) => e.type === 'reconnecting').map((e) => e.cause), ['backoff', 'backoff']);
});

test('a subscribe the token does not allow rejects with 403 and names the topic', async () => {
  const c = new WsgateClient(`${server.url}?token=${jwt({ topics: ['news.*'] })}`, { WebSocket });
  const errors = record(c, ['error']);
  try {
    const [ok, refused, ok2] = await Promise.allSettled([
      c.subscribe('news.x'),
      c.subscribe('secret'),
      c.subscribe('news.y'),
    ]);
    assert.equal(ok.status, 'fulfilled');
    assert.equal(ok2.status, 'fulfilled');
    assert.equal(refused.status, 'rejected');
    assert.equal(refused.reason.code, 403);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].topic, 'secret');
    assert.equal(c.position('secret'), null);
    // A refused subscribe nobody awaits is no unhandled rejection (Node
    // would end the test run); the error event is still emitted.
    c.subscribe('secret.too', () => {});
    await eventually(() => errors.length === 2, { what: 'the second refusal' });
    assert.equal(errors[1].topic, 'secret.too');
    errors.length = 1;
    // A publish the token does not allow is only an error event.
    c.publish('secret', 1);
    await eventually(() => errors.length === 2, { what: 'the publish error' });
    assert.equal(errors[1].code, 403);
    assert.equal(errors[1].topic, undefined);
  } finally {
    c.close();
  }
});

test('a refresh sooner than the minimum interval rejects with 429 instead of waiting forever', async () => {
  const strict = await Wsgate.start({ args: ['--jwt-secret', SECRET, '--min-refresh-interval', '60s'] });
  const c = new WsgateClient(`${strict.url}?token=${jwt({})}`, { WebSocket, baseDelayMs: 20, maxDelayMs: 20 });
  try {
    await eventually(() => c.state === 'open', { what: 'open' });
    assert.ok((await c.refresh(jwt({}))).exp > Date.now() / 1000);
    // Settles (either way) well before the connection would end; a reply
    // nobody attached would leave it pending until the token expires.
    const outcome = await Promise.race([
      c.refresh(jwt({})).then(
        () => 'resolved',
        (e) => e,
      ),
      new Promise((resolve) => setTimeout(() => resolve('still pending after 5 s'), 5000)),
    ]);
    assert.ok(outcome instanceof WsgateServerError && outcome.code === 429, String(outcome));
  } finally {
    c.close();
    await strict.stop();
  }
});
