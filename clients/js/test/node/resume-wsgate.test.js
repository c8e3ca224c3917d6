// Resume against wsgate itself (topic history, `since`, `recovered`, the
// drain hint): needs a wsgate with history support (`--history-size`,
// `--drain-spread`). Against a build without it these tests fail at once
// with a message saying what the server lacks, rather than timing out.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { WsgateClient, parseCloseHint } from '../../src/index.js';
import { Wsgate, eventually, nextEvent, record, sleep, whenOpen } from '../helpers.js';

/** Starts wsgate with server features these tests need, or says which are missing. */
async function startWith(args, feature, port) {
  try {
    return await Wsgate.start({ port, args });
  } catch (e) {
    if (/exited/.test(e.message)) {
      throw new Error(
        `this wsgate build does not support ${feature} (${args.join(' ')} refused at start-up): ` +
          `these tests need a server with history, resume and drain-hint support. Server said: ${e.message}`,
      );
    }
    throw e;
  }
}

/** Fails clearly when a subscribe reply or message carries no history position. */
function requirePosition(what, e) {
  if (typeof e.offset !== 'number' || e.epoch === undefined) {
    throw new Error(
      `wsgate sent ${what} without offset/epoch (${JSON.stringify(e)}): the server does not keep topic history`,
    );
  }
}

/**
 * Cuts a client's connection as a network failure would (no close
 * handshake). Reaches into the client's socket: only a test may.
 */
function dropConnection(client) {
  assert.equal(client.state, 'open', 'dropConnection needs an open connection');
  client._ws.terminate();
}

const client = (url, opts = {}) => new WsgateClient(url, { WebSocket, baseDelayMs: 50, maxDelayMs: 200, ...opts });

test('resume across dropped connections under concurrent publishing: no gap, no duplicate', async () => {
  const server = await startWith(['--history-size', '10000'], 'topic history (--history-size)');
  const sub = client(server.url);
  const pub = client(server.url);
  const got = [];
  const subs = record(sub, ['subscribed', 'recoveryFailed']);
  const subscribedCount = () => subs.filter((e) => e.type === 'subscribed').length;
  let seq = 0;
  let stop = false;
  let publishing;
  try {
    await sub.subscribe('h', (m) => got.push(m));
    await whenOpen(pub);
    pub.publish('h', { seq: seq++ });
    await eventually(() => got.length === 1, { what: 'the first message' });
    requirePosition('a message of a history topic', got[0]);
    // About one message a millisecond, from a second connection, all along.
    publishing = (async () => {
      while (!stop) {
        pub.publish('h', { seq: seq++ });
        await sleep(1);
      }
    })();
    for (let round = 1; round <= 2; round++) {
      const n = got.length;
      await eventually(() => got.length >= n + 50, { what: `50 more messages before drop ${round}` });
      const before = subscribedCount();
      dropConnection(sub);
      await eventually(() => subscribedCount() > before, { what: `the resubscription after drop ${round}` });
      const last = subs.filter((e) => e.type === 'subscribed').at(-1);
      assert.equal(last.resumed, true);
      assert.equal(last.recovered, true, `resume ${round} not recovered: ${JSON.stringify(last)} (does wsgate honour since?)`);
    }
    const n = got.length;
    await eventually(() => got.length >= n + 50, { what: '50 live messages after the last resume' });
    stop = true;
    await publishing;
    const total = seq;
    await eventually(() => got.length >= total, { withinMs: 10_000, what: `all ${total} messages (got ${got.length})` });
    await sleep(100); // anything doubled would arrive now
    assert.deepEqual(subs.filter((e) => e.type === 'recoveryFailed'), []);
    assert.deepEqual(
      got.map((m) => m.payload.seq),
      Array.from({ length: total }, (_, i) => i),
    );
    for (let i = 1; i < got.length; i++) {
      assert.equal(got[i].epoch, got[0].epoch);
      assert.equal(got[i].offset, got[i - 1].offset + 1, `offset gap at ${i}`);
    }
  } finally {
    stop = true;
    await publishing;
    sub.close();
    pub.close();
    await server.stop();
  }
});

test('a restarted server (history lost, new epoch) answers recovered:false and the app hears of it', async () => {
  let server = await startWith(['--history-size', '100'], 'topic history (--history-size)');
  const sub = client(server.url);
  let pub = client(server.url);
  const got = [];
  try {
    await sub.subscribe('h', (m) => got.push(m));
    await whenOpen(pub);
    for (let i = 0; i < 3; i++) pub.publish('h', i);
    await eventually(() => got.length === 3, { what: '3 messages' });
    requirePosition('a message of a history topic', got[2]);
    const last = sub.position('h');
    pub.close();
    const failed = nextEvent(sub, 'recoveryFailed', { withinMs: 8000, what: 'recoveryFailed after the restart' });
    const subscribed = record(sub, ['subscribed']);
    await server.kill();
    server = await startWith(['--history-size', '100'], 'topic history (--history-size)', server.port);
    const e = await failed;
    assert.equal(e.topic, 'h');
    assert.deepEqual(e.since, last);
    assert.equal(e.serverSupportsResume, true, 'wsgate answered a resume without a recovered field');
    assert.notEqual(e.epoch, last.epoch, 'a restarted single node must start a new epoch');
    assert.equal(subscribed.at(-1).recovered, false);
    // Live delivery continues in the new epoch.
    pub = client(server.url);
    await whenOpen(pub);
    pub.publish('h', 'new');
    await eventually(() => got.length === 4, { what: 'a message in the new epoch' });
    assert.equal(got[3].payload, 'new');
    assert.equal(got[3].epoch, e.epoch);
  } finally {
    sub.close();
    pub.close();
    await server.stop();
  }
});

test('an offset that fell out of history answers recovered:false', async () => {
  const server = await startWith(['--history-size', '3'], 'topic history (--history-size)');
  // A fixed 400 ms reconnect delay leaves time to publish while away.
  const sub = client(server.url, { baseDelayMs: 400, maxDelayMs: 400, random: () => 0.999 });
  const pub = client(server.url);
  const got = [];
  try {
    await sub.subscribe('h', (m) => got.push(m));
    await whenOpen(pub);
    pub.publish('h', 'seen');
    await eventually(() => got.length === 1, { what: 'the first message' });
    requirePosition('a message of a history topic', got[0]);
    const failed = nextEvent(sub, 'recoveryFailed', { withinMs: 5000, what: 'recoveryFailed after eviction' });
    const closed = nextEvent(sub, 'close');
    dropConnection(sub);
    await closed;
    for (let i = 0; i < 10; i++) pub.publish('h', `missed ${i}`);
    const e = await failed;
    assert.deepEqual(e.since, { offset: got[0].offset, epoch: got[0].epoch });
    assert.equal(e.serverSupportsResume, true);
    pub.publish('h', 'live');
    await eventually(() => got.at(-1)?.payload === 'live', { what: 'live delivery after the failed resume' });
    // Nothing of the lost stretch was replayed.
    assert.deepEqual(got.map((m) => m.payload), ['seen', 'live']);
  } finally {
    sub.close();
    pub.close();
    await server.stop();
  }
});

test("wsgate's drain close carries a reconnect hint the client follows", async () => {
  const server = await startWith(['--drain-spread', '1s'], 'spread drains (--drain-spread)');
  const sub = client(server.url, { hintJitter: 0.1 });
  try {
    await whenOpen(sub);
    const log = record(sub, ['close', 'reconnecting']);
    await server.stop();
    await eventually(() => log.some((e) => e.type === 'reconnecting'), { what: 'the reconnect after the drain' });
    const close = log.find((e) => e.type === 'close');
    assert.equal(close.code, 1001);
    const hint = parseCloseHint(close.reason);
    assert.notEqual(hint, null, `the 1001 close reason ${JSON.stringify(close.reason)} carries no {"reconnect_in_ms":N}`);
    const r = log.find((e) => e.type === 'reconnecting');
    assert.equal(r.cause, 'close-hint');
    assert.ok(r.delayMs >= hint && r.delayMs <= hint * 1.1 + 1, `delay ${r.delayMs} for hint ${hint}`);
  } finally {
    sub.close();
    await server.stop();
  }
});
