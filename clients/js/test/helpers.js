// Test helpers: real wsgate processes on free 127.0.0.1 ports, and small
// waiting utilities. No mocks: every test talks to a real server over a
// real socket.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../../..');
export const WSGATE_BIN = process.env.WSGATE_BIN ?? path.join(REPO, 'target/debug/wsgate');

/** Every process started here, stopped on exit even when a test throws. */
const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try {
      p.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once a TCP connect to `port` succeeds; rejects after `withinMs`. */
export async function waitForPort(port, withinMs = 10_000, isDead = () => null) {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    const dead = isDead();
    if (dead) throw new Error(dead);
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${withinMs} ms`);
    await sleep(20);
  }
}

/**
 * A running wsgate. `stop()` is SIGTERM (drain with 1001), up to `graceMs`,
 * then SIGKILL; `kill()` is SIGKILL at once (a crash).
 */
export class Wsgate {
  constructor(port, args) {
    this.port = port;
    this.url = `ws://127.0.0.1:${port}/ws`;
    this.stderr = '';
    if (!existsSync(WSGATE_BIN)) {
      throw new Error(`${WSGATE_BIN} is missing: run \`cargo build --bin wsgate\` first (test.sh does)`);
    }
    this.proc = spawn(
      WSGATE_BIN,
      [
        '--listen', `127.0.0.1:${port}`,
        '--admin-listen', 'off',
        '--workers', '1',
        '--drain-timeout', '2s',
        '--log-level', process.env.WSGATE_TEST_LOG ?? 'warn',
        ...args,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    running.add(this.proc);
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => {
        running.delete(this.proc);
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
    });
    this.proc.stderr.setEncoding('utf8');
    this.proc.stderr.on('data', (d) => {
      // Keep the tail only: it is for error messages.
      this.stderr = (this.stderr + d).slice(-4000);
      if (process.env.WSGATE_TEST_LOG) process.stderr.write(d);
    });
  }

  /** Starts wsgate on `port` (a free one when omitted) and waits until it accepts. */
  static async start({ port, args = [] } = {}) {
    const g = new Wsgate(port ?? (await freePort()), args);
    await waitForPort(g.port, 10_000, () =>
      g.exitStatus ? `wsgate exited (${JSON.stringify(g.exitStatus)}) before listening: ${g.stderr.trim()}` : null,
    );
    return g;
  }

  async stop(graceMs = 3000) {
    if (this.exitStatus) return this.exitStatus;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    const st = await this.exited;
    clearTimeout(t);
    return st;
  }

  async kill() {
    if (this.exitStatus) return this.exitStatus;
    this.proc.kill('SIGKILL');
    return this.exited;
  }
}

/**
 * Resolves with the first `type` event of `client` that satisfies `pred`;
 * rejects after `withinMs` with `what` in the message.
 */
export function nextEvent(client, type, { pred = () => true, withinMs = 5000, what = type } = {}) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${withinMs} ms waiting for ${what}`));
    }, withinMs);
    const off = client.on(type, (e) => {
      if (!pred(e)) return;
      clearTimeout(t);
      off();
      resolve(e);
    });
  });
}

/** Polls `cond` until true; rejects after `withinMs` naming `what`. */
export async function eventually(cond, { withinMs = 5000, what = 'condition' } = {}) {
  const deadline = Date.now() + withinMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${withinMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Records a client's events in order, with the time they arrived. */
export function record(client, types) {
  const log = [];
  for (const type of types) client.on(type, (e) => log.push({ type, at: performance.now(), ...e }));
  return log;
}

/** Resolves when `client` is open (at once if it already is). */
export function whenOpen(client, withinMs = 5000) {
  if (client.state === 'open') return Promise.resolve();
  return nextEvent(client, 'open', { withinMs }).then(() => undefined);
}
