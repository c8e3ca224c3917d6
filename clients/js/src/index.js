// @ts-check
/**
 * @wsgate/client: a dependency-free client for the wsgate WebSocket gateway,
 * for browsers and Node (ESM).
 *
 * Owns the client side of wsgate's JSON protocol (subscribe, unsubscribe,
 * publish, broadcast, ping, refresh) and of its reconnect contract:
 * exponential back-off with full jitter, the server's drain hint (close 1001
 * with `{"reconnect_in_ms":N}`), `Retry-After` on a refused upgrade where the
 * WebSocket implementation exposes it, and automatic resubscription with
 * `since` = the last position seen per topic, deduplicated by offset, with
 * `recovered: false` surfaced as a `recoveryFailed` event.
 *
 * Types live in index.d.ts (hand-written; `tsc --checkJs` checks this file
 * against its JSDoc).
 */

/** @typedef {import('./index.js').ClientOptions} ClientOptions */
/** @typedef {import('./index.js').Position} Position */
/** @typedef {import('./index.js').SubscribedEvent} SubscribedEvent */
/** @typedef {import('./index.js').TopicMessage} TopicMessage */
/** @typedef {import('./index.js').ReconnectCause} ReconnectCause */

/** WebSocket readyState values (the same in every implementation). */
const OPEN = 1;

/** How long after an `error` event a `close` may still come before one is assumed. */
const ERROR_CLOSE_GRACE_MS = 250;

const DEFAULTS = Object.freeze({
  baseDelayMs: 500,
  maxDelayMs: 30_000,
  stableAfterMs: 5_000,
  connectTimeoutMs: 10_000,
  hintJitter: 0.1,
  maxHintMs: 300_000,
  maxTopicBytes: 256,
});

/** A server `error` reply (`{"type":"error","code":C,"message":M}`). */
export class WsgateServerError extends Error {
  /**
   * @param {number} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = 'WsgateServerError';
    this.code = code;
  }
}

/** A request that could not complete because the connection closed. */
export class WsgateClosedError extends Error {
  constructor(message = 'connection closed before the reply arrived') {
    super(message);
    this.name = 'WsgateClosedError';
  }
}

/**
 * The delay cap of reconnect attempt `attempt` (1 for the first retry):
 * `min(maxDelayMs, baseDelayMs * 2^(attempt-1))`. The delay itself is drawn
 * uniformly from [0, cap) ("full jitter"), so a crowd of clients that lost the
 * same server spreads out instead of returning in waves.
 * @param {number} attempt
 * @param {number} baseDelayMs
 * @param {number} maxDelayMs
 */
export function backoffCap(attempt, baseDelayMs, maxDelayMs) {
  // 2^30 already dwarfs any sane max; capping the exponent avoids Infinity.
  const exp = Math.min(Math.max(attempt - 1, 0), 30);
  return Math.min(maxDelayMs, baseDelayMs * 2 ** exp);
}

/**
 * Parses a close reason carrying the server's drain hint,
 * `{"reconnect_in_ms":N}`. Returns N, or null when the reason is not such a hint.
 * @param {string} reason
 * @returns {number | null}
 */
export function parseCloseHint(reason) {
  if (typeof reason !== 'string' || reason[0] !== '{') return null;
  try {
    const v = JSON.parse(reason);
    const n = v && v.reconnect_in_ms;
    return typeof n === 'number' && Number.isFinite(n) && n >= 0 ? n : null;
  } catch {
    return null;
  }
}

/**
 * Parses a `Retry-After` header value (delay-seconds or an HTTP date) into
 * milliseconds, or null when absent or unreadable.
 * @param {string | string[] | null | undefined} value
 * @param {number} [now]
 * @returns {number | null}
 */
export function parseRetryAfter(value, now = Date.now()) {
  if (Array.isArray(value)) value = value[0];
  if (typeof value !== 'string') return null;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** Rethrows a listener's exception outside the client's own control flow. */
function reportListenerError(/** @type {unknown} */ err) {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.reportError === 'function') g.reportError(err);
  else
    setTimeout(() => {
      throw err;
    }, 0);
}

/** UTF-8 length of a string (the server caps topics in bytes). */
function utf8Length(/** @type {string} */ s) {
  return new TextEncoder().encode(s).length;
}

/**
 * One subscribed topic: what the app asked for and where it is in the stream.
 * @typedef {{
 *   listeners: Set<(m: TopicMessage) => void>,
 *   position: Position | null,
 *   confirmed: SubscribedEvent | null,
 *   sentSince: Position | null,
 *   waiters: Array<{resolve: (e: SubscribedEvent) => void, reject: (e: Error) => void}>,
 * }} TopicState
 */

export class WsgateClient {
  /**
   * @param {string | URL | (() => string | URL | Promise<string | URL>)} url
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    const WS = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof WS !== 'function') {
      throw new TypeError(
        'no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package) on Node < 22',
      );
    }
    // A malformed URL string fails here, synchronously, rather than later
    // inside a reconnect loop.
    if (typeof url === 'string') new URL(url);
    /** @private */ this._WS = WS;
    /** @private */ this._url = url;
    /** @private */ this._protocols = options.protocols;
    /** @private */ this._random = options.random ?? Math.random;
    /** @private */ this._opts = {
      baseDelayMs: options.baseDelayMs ?? DEFAULTS.baseDelayMs,
      maxDelayMs: options.maxDelayMs ?? DEFAULTS.maxDelayMs,
      stableAfterMs: options.stableAfterMs ?? DEFAULTS.stableAfterMs,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
      hintJitter: options.hintJitter ?? DEFAULTS.hintJitter,
      maxHintMs: options.maxHintMs ?? DEFAULTS.maxHintMs,
      maxTopicBytes: options.maxTopicBytes ?? DEFAULTS.maxTopicBytes,
    };
    /** @private @type {Map<string, Set<Function>>} */ this._listeners = new Map();
    /** @private @type {Map<string, TopicState>} */ this._topics = new Map();
    /** @private @type {any} */ this._ws = null;
    /** @private @type {'idle' | 'connecting' | 'open' | 'waiting' | 'closed'} */
    this._state = 'idle';
    /** @private */ this._attempt = 0;
    /** @private */ this._connections = 0;
    /** @private @type {number | null} */ this._retryAfterMs = null;
    /** @private @type {any} */ this._timer = null;
    /** @private @type {any} */ this._connectTimer = null;
    /** @private @type {any} */ this._stableTimer = null;
    /** @private @type {Array<{resolve: (rtt: number) => void, reject: (e: Error) => void, at: number}>} */
    this._pings = [];
    /** @private @type {Array<{resolve: (r: {exp: number}) => void, reject: (e: Error) => void}>} */
    this._refreshes = [];
    /** @private @type {Map<string, Array<() => void>>} */ this._unsubs = new Map();
    /** Topics whose subscribe is sent but not yet answered, in send order. */
    /** @private @type {string[]} */ this._inflightSubs = [];
    /** @private */ this._stats = { duplicates: 0, reconnects: 0 };
    if (options.autoConnect !== false) this.connect();
  }

  /** `idle`, `connecting`, `open`, `waiting` (to reconnect) or `closed`. */
  get state() {
    return this._state;
  }

  /** Messages dropped as duplicates (offset already seen) and reconnects scheduled. */
  get stats() {
    return { ...this._stats };
  }

  /**
   * The last position seen on `topic` (offset and epoch of the newest
   * message, or where live delivery started), or null.
   * @param {string} topic
   * @returns {Position | null}
   */
  position(topic) {
    const p = this._topics.get(topic)?.position;
    return p ? { ...p } : null;
  }

  /**
   * @param {string} type
   * @param {Function} fn
   * @returns {() => void}
   */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /**
   * @param {string} type
   * @param {Function} fn
   */
  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  /**
   * @private
   * @param {string} type
   * @param {unknown} event
   */
  _emit(type, event) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(event);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  /** Starts connecting (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this._state !== 'idle') return;
    void this._open();
  }

  /**
   * Closes the connection for good: no reconnect; pending requests reject.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = '') {
    if (this._state === 'closed') return;
    this._state = 'closed';
    this._clearTimers();
    this._failPending(new WsgateClosedError('client closed'));
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    // The socket's own close event is ignored from here on (it is no longer
    // `this._ws`), so this is the app's one `close` for it.
    this._emit('close', { code, reason, wasClean: true, willReconnect: false });
  }

  /**
   * Subscribes to `topic` (kept across reconnects until `unsubscribe`).
   * Resolves with the server's first `subscribed` reply.
   * @param {string} topic
   * @param {((m: TopicMessage) => void) | null} [listener]
   * @param {{since?: Position}} [options]
   * @returns {Promise<SubscribedEvent>}
   */
  subscribe(topic, listener, options = {}) {
    this._checkTopic(topic);
    if (this._state === 'closed') return Promise.reject(new WsgateClosedError('client closed'));
    let t = this._topics.get(topic);
    const fresh = !t;
    if (!t) {
      t = {
        listeners: new Set(),
        position: options.since ? { ...options.since } : null,
        confirmed: null,
        sentSince: null,
        waiters: [],
      };
      this._topics.set(topic, t);
    }
    if (listener) t.listeners.add(listener);
    if (t.confirmed) return Promise.resolve(t.confirmed);
    const state = t;
    /** @type {Promise<SubscribedEvent>} */
    const p = new Promise((resolve, reject) => state.waiters.push({ resolve, reject }));
    // Subscribing without awaiting is common (`client.subscribe(t, handler)`):
    // a refusal must not then crash Node as an unhandled rejection. Whoever
    // awaits `p` still gets it, and every refusal is an `error` event too.
    p.catch(() => {});
    if (fresh && this._isOpen()) this._sendSubscribe(topic, t);
    return p;
  }

  /**
   * Leaves `topic` (or only removes `listener`, when given and others remain).
   * Resolves once the server confirmed, or at once when not connected.
   * @param {string} topic
   * @param {((m: TopicMessage) => void) | null} [listener]
   * @returns {Promise<void>}
   */
  unsubscribe(topic, listener) {
    const t = this._topics.get(topic);
    if (!t) return Promise.resolve();
    if (listener) {
      t.listeners.delete(listener);
      if (t.listeners.size > 0) return Promise.resolve();
    }
    this._topics.delete(topic);
    for (const w of t.waiters) w.reject(new WsgateClosedError('unsubscribed before the reply'));
    if (!this._isOpen()) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this._unsubs.get(topic) ?? [];
      list.push(resolve);
      this._unsubs.set(topic, list);
      this._send({ type: 'unsubscribe', topic });
    });
  }

  /**
   * Publishes `payload` (any JSON value) to `topic`. Returns false, sending
   * nothing, while not connected: publishes are not queued across reconnects.
   * @param {string} topic
   * @param {unknown} payload
   */
  publish(topic, payload) {
    this._checkTopic(topic);
    return this._sendIfOpen({ type: 'publish', topic, payload: checkPayload(payload) });
  }

  /**
   * Sends `payload` to every connection of the gateway (this one too).
   * Returns false, sending nothing, while not connected.
   * @param {unknown} payload
   */
  broadcast(payload) {
    return this._sendIfOpen({ type: 'broadcast', payload: checkPayload(payload) });
  }

  /**
   * Application-level ping; resolves with the round-trip time in ms.
   * @returns {Promise<number>}
   */
  ping() {
    if (!this._isOpen()) return Promise.reject(new WsgateClosedError('not connected'));
    return new Promise((resolve, reject) => {
      this._pings.push({ resolve, reject, at: Date.now() });
      this._send({ type: 'ping' });
    });
  }

  /**
   * Replaces the connection's token (JWT auth) before it expires.
   * Resolves with the new expiry; rejects with a WsgateServerError: 401
   * (refused token) or 429 (sooner than the server's minimum interval).
   * @param {string} token
   * @returns {Promise<{exp: number}>}
   */
  refresh(token) {
    if (!this._isOpen()) return Promise.reject(new WsgateClosedError('not connected'));
    return new Promise((resolve, reject) => {
      this._refreshes.push({ resolve, reject });
      this._send({ type: 'refresh', token });
    });
  }

  // --- connection lifecycle --------------------------------------------------

  /** @private */
  _isOpen() {
    return this._state === 'open' && this._ws !== null && this._ws.readyState === OPEN;
  }

  /** @private */
  async _open() {
    this._state = 'connecting';
    this._retryAfterMs = null;
    let url;
    try {
      url = typeof this._url === 'function' ? await this._url() : this._url;
    } catch (err) {
      if (this._state !== 'connecting') return;
      this._emit('error', { code: 0, message: `url provider failed: ${String(err)}` });
      this._scheduleReconnect(1006, '');
      return;
    }
    if (this._state !== 'connecting') return; // closed while the url was resolving
    /** @type {any} */
    let ws;
    try {
      ws = this._protocols === undefined ? new this._WS(url) : new this._WS(url, this._protocols);
    } catch (err) {
      // A URL the implementation refuses (bad scheme, malformed) will not get
      // better by retrying: stop, and say why.
      this._state = 'closed';
      this._clearTimers();
      this._failPending(new WsgateClosedError(`cannot connect: ${String(err)}`));
      this._emit('error', { code: 0, message: `cannot connect to ${String(url)}: ${String(err)}` });
      this._emit('close', { code: 1006, reason: '', wasClean: false, willReconnect: false });
      return;
    }
    this._ws = ws;
    // Node's `ws` package exposes the HTTP answer to a refused upgrade; browsers
    // (and undici) do not, and there a refusal is just a failed connection.
    if (typeof ws.on === 'function') {
      ws.on('unexpected-response', (/** @type {any} */ _req, /** @type {any} */ res) => {
        this._retryAfterMs = parseRetryAfter(res.headers && res.headers['retry-after']);
        this._emit('refused', { status: res.statusCode, retryAfterMs: this._retryAfterMs });
        if (typeof res.resume === 'function') res.resume();
        // With a listener, `ws` leaves aborting to us; this still ends in `close`.
        ws.terminate();
      });
    }
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && ws.readyState !== OPEN) ws.close();
    }, this._opts.connectTimeoutMs);
    ws.addEventListener('open', () => this._onOpen(ws));
    ws.addEventListener('message', (/** @type {any} */ ev) => this._onMessage(ws, ev.data));
    ws.addEventListener('close', (/** @type {any} */ ev) => this._onClose(ws, ev));
    // Errors normally end in `close`, which handles them. Some implementations
    // never fire it (Node 20's undici after a refused connection stays
    // CONNECTING forever), so an error not followed by `close` soon counts as
    // one. The listener also keeps Node from treating the error as unhandled.
    ws.addEventListener('error', () => {
      setTimeout(() => {
        if (this._ws !== ws) return;
        try {
          ws.close();
        } catch {
          // nothing left to close
        }
        this._onClose(ws, { code: 1006, reason: '', wasClean: false });
      }, ERROR_CLOSE_GRACE_MS);
    });
  }

  /**
   * @private
   * @param {any} ws
   */
  _onOpen(ws) {
    if (this._ws !== ws) return;
    clearTimeout(this._connectTimer);
    this._state = 'open';
    this._connections += 1;
    // The attempt count resets only once a connection proved stable, so a
    // server that accepts and drops at once still gets a growing back-off.
    this._stableTimer = setTimeout(() => {
      this._attempt = 0;
    }, this._opts.stableAfterMs);
    this._inflightSubs = [];
    for (const [topic, t] of this._topics) this._sendSubscribe(topic, t);
    this._emit('open', { reconnect: this._connections > 1 });
  }

  /**
   * @private
   * @param {any} ws
   * @param {{code: number, reason: string, wasClean: boolean}} ev
   */
  _onClose(ws, ev) {
    if (this._ws !== ws) return;
    this._ws = null;
    this._clearTimers();
    this._failPending(new WsgateClosedError());
    const code = ev.code ?? 1006;
    const reason = ev.reason ?? '';
    this._emit('close', { code, reason, wasClean: !!ev.wasClean, willReconnect: true });
    this._scheduleReconnect(code, reason);
  }

  /**
   * Picks the delay before the next connection attempt: the server's drain
   * hint, else its Retry-After, else exponential back-off with full jitter.
   * @private
   * @param {number} code
   * @param {string} reason
   */
  _scheduleReconnect(code, reason) {
    const o = this._opts;
    const hint = code === 1001 ? parseCloseHint(reason) : null;
    /** @type {ReconnectCause} */
    let cause;
    let delayMs;
    if (hint !== null) {
      // The server already spread its clients; our own jitter on top only
      // breaks ties between clients that got the same value.
      const base = Math.min(hint, o.maxHintMs);
      delayMs = base + this._random() * base * o.hintJitter;
      cause = 'close-hint';
    } else if (this._retryAfterMs !== null) {
      this._attempt += 1;
      const base = Math.min(this._retryAfterMs, o.maxHintMs);
      delayMs = base + this._random() * base * o.hintJitter;
      cause = 'retry-after';
    } else {
      this._attempt += 1;
      delayMs = this._random() * backoffCap(this._attempt, o.baseDelayMs, o.maxDelayMs);
      cause = 'backoff';
    }
    this._state = 'waiting';
    this._stats.reconnects += 1;
    this._emit('reconnecting', { attempt: this._attempt, delayMs, cause, code });
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this._state === 'waiting') void this._open();
    }, delayMs);
  }

  /** @private */
  _clearTimers() {
    clearTimeout(this._timer);
    clearTimeout(this._connectTimer);
    clearTimeout(this._stableTimer);
    this._timer = this._connectTimer = this._stableTimer = null;
  }

  /**
   * Rejects the requests that wait for a reply on the lost connection.
   * Subscriptions stay: they are renewed on the next connection.
   * @private
   * @param {Error} err
   */
  _failPending(err) {
    for (const p of this._pings.splice(0)) p.reject(err);
    for (const r of this._refreshes.splice(0)) r.reject(err);
    for (const list of this._unsubs.values()) for (const done of list) done();
    this._unsubs.clear();
    this._inflightSubs = [];
    for (const t of this._topics.values()) t.confirmed = null;
    if (this._state === 'closed') {
      for (const t of this._topics.values()) for (const w of t.waiters.splice(0)) w.reject(err);
    }
  }

  // --- sending ---------------------------------------------------------------

  /**
   * @private
   * @param {string} topic
   */
  _checkTopic(topic) {
    if (typeof topic !== 'string' || topic.length === 0) {
      throw new TypeError('topic must be a non-empty string');
    }
    if (utf8Length(topic) > this._opts.maxTopicBytes) {
      throw new RangeError(`topic is longer than ${this._opts.maxTopicBytes} bytes`);
    }
  }

  /**
   * @private
   * @param {string} topic
   * @param {TopicState} t
   */
  _sendSubscribe(topic, t) {
    t.sentSince = t.position ? { ...t.position } : null;
    this._inflightSubs.push(topic);
    this._send(
      t.sentSince ? { type: 'subscribe', topic, since: t.sentSince } : { type: 'subscribe', topic },
    );
  }

  /**
   * @private
   * @param {object} msg
   */
  _sendIfOpen(msg) {
    if (!this._isOpen()) return false;
    this._send(msg);
    return true;
  }

  /**
   * @private
   * @param {object} msg
   */
  _send(msg) {
    this._ws.send(JSON.stringify(msg));
  }

  // --- receiving -------------------------------------------------------------

  /**
   * @private
   * @param {any} ws
   * @param {unknown} data
   */
  _onMessage(ws, data) {
    if (this._ws !== ws) return;
    if (typeof data !== 'string') {
      // `ws` hands text frames over as Buffers unless told otherwise.
      data = typeof (/** @type {any} */ (data)?.toString) === 'function' ? String(data) : '';
    }
    /** @type {any} */
    let msg;
    try {
      msg = JSON.parse(/** @type {string} */ (data));
    } catch {
      this._emit('error', { code: 0, message: 'server sent a message that is not JSON' });
      return;
    }
    switch (msg && msg.type) {
      case 'message':
        return this._onTopicMessage(msg);
      case 'subscribed':
        return this._onSubscribed(msg);
      case 'unsubscribed': {
        const list = this._unsubs.get(msg.topic);
        const done = list?.shift();
        if (list && list.length === 0) this._unsubs.delete(msg.topic);
        if (done) done();
        return;
      }
      case 'broadcast':
        return this._emit('broadcast', { payload: msg.payload });
      case 'broadcastResult':
        return this._emit('broadcastResult', {
          payload: msg.payload,
          listenCount: msg.listenCount,
        });
      case 'pong': {
        const p = this._pings.shift();
        if (p) p.resolve(Date.now() - p.at);
        return;
      }
      case 'refreshed': {
        const r = this._refreshes.shift();
        if (r) r.resolve({ exp: msg.exp });
        return;
      }
      case 'error':
        return this._onServerError(msg);
      default:
        // Unknown types are ignored so that newer servers stay compatible.
        return;
    }
  }

  /**
   * @private
   * @param {any} msg
   */
  _onTopicMessage(msg) {
    const t = this._topics.get(msg.topic);
    if (!t) return; // unsubscribed while it was on its way
    const hasPos = typeof msg.offset === 'number' && msg.epoch !== undefined;
    if (hasPos) {
      const p = t.position;
      // Offsets grow by one per message within an epoch: one at or below the
      // last seen is a replay of something delivered already.
      if (p && p.epoch === msg.epoch && msg.offset <= p.offset) {
        this._stats.duplicates += 1;
        return;
      }
      t.position = { offset: msg.offset, epoch: msg.epoch };
    }
    /** @type {TopicMessage} */
    const m = hasPos
      ? { topic: msg.topic, payload: msg.payload, offset: msg.offset, epoch: msg.epoch }
      : { topic: msg.topic, payload: msg.payload };
    for (const fn of [...t.listeners]) {
      try {
        fn(m);
      } catch (err) {
        reportListenerError(err);
      }
    }
    this._emit('message', m);
  }

  /**
   * @private
   * @param {any} msg
   */
  _onSubscribed(msg) {
    const i = this._inflightSubs.indexOf(msg.topic);
    if (i >= 0) this._inflightSubs.splice(i, 1);
    const t = this._topics.get(msg.topic);
    if (!t) return;
    const since = t.sentSince;
    t.sentSince = null;
    const serverPos =
      typeof msg.offset === 'number' && msg.epoch !== undefined
        ? { offset: msg.offset, epoch: msg.epoch }
        : null;
    // Only the server's explicit `recovered: true` means nothing was missed:
    // a server (or topic) without history ignores `since`, which is a loss too.
    const recovered = since ? msg.recovered === true : undefined;
    if (recovered !== true && serverPos) {
      // Live delivery starts after the server's newest offset: remember it so
      // that a reconnect before the next message still resumes from here.
      t.position = serverPos;
    }
    /** @type {SubscribedEvent} */
    const ev = {
      topic: msg.topic,
      resumed: since !== null,
      recovered,
      epoch: msg.epoch,
      offset: msg.offset,
    };
    t.confirmed = ev;
    for (const w of t.waiters.splice(0)) w.resolve(ev);
    this._emit('subscribed', ev);
    if (since && recovered === false) {
      this._emit('recoveryFailed', {
        topic: msg.topic,
        since,
        epoch: msg.epoch,
        offset: msg.offset,
        serverSupportsResume: typeof msg.recovered === 'boolean',
      });
    }
  }

  /**
   * Attaches an error reply to the request it answers where that is
   * unambiguous (refresh: 401, or 429 "too many refreshes"; subscribe: 429,
   * or 403 naming the topic);
   * every error is also emitted as an `error` event.
   * @private
   * @param {any} msg
   */
  _onServerError(msg) {
    const code = Number(msg.code);
    const text = String(msg.message ?? '');
    const err = new WsgateServerError(code, text);
    /** @type {string | undefined} */
    let topic;
    if (code === 401 || (code === 429 && text.startsWith('too many refreshes'))) {
      // Refreshes are answered in order, so the oldest one waiting is it.
      this._refreshes.shift()?.reject(err);
    } else if (code === 429 && this._inflightSubs.length > 0) {
      topic = this._inflightSubs.shift();
    } else if (code === 403) {
      topic = this._inflightSubs.find((t) => text === `not allowed to subscribe to topic '${t}'`);
      if (topic !== undefined) this._inflightSubs.splice(this._inflightSubs.indexOf(topic), 1);
    }
    // A refused subscription (also a resubscription after a reconnect, e.g.
    // with a token that no longer allows the topic) is dropped, not retried.
    if (topic !== undefined) this._refuseSubscription(topic, err);
    this._emit('error', topic === undefined ? { code, message: text } : { code, message: text, topic });
  }

  /**
   * @private
   * @param {string} topic
   * @param {WsgateServerError} err
   */
  _refuseSubscription(topic, err) {
    const t = this._topics.get(topic);
    if (!t) return;
    this._topics.delete(topic);
    for (const w of t.waiters.splice(0)) w.reject(err);
  }
}

/**
 * @param {unknown} payload
 * @returns {unknown}
 */
function checkPayload(payload) {
  if (payload === undefined || typeof payload === 'function' || typeof payload === 'symbol') {
    throw new TypeError('payload must be a JSON value');
  }
  return payload;
}
