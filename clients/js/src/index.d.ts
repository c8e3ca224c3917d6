// Types of @wsgate/client (hand-written; index.js is checked against them).

/** Where a client is in a topic's stream: the offset of the last message it saw, in an epoch. */
export interface Position {
  offset: number;
  /** Changes when the server lost the topic's history; offsets of another epoch do not compare. */
  epoch: string;
}

/** A message published to a subscribed topic. */
export interface TopicMessage<P = unknown> {
  topic: string;
  /** The published JSON value. */
  payload: P;
  /** Present on topics with history. */
  offset?: number;
  epoch?: string;
}

/** The server confirmed a subscription (first subscribe or resubscribe after a reconnect). */
export interface SubscribedEvent {
  topic: string;
  /** Whether this subscribe asked to resume (`since` = the last position seen). */
  resumed: boolean;
  /**
   * Only on a resume: true when the server replays everything missed; false when
   * something may be lost (epoch changed, offset out of history, or no history on
   * the server) — a `recoveryFailed` event follows. Undefined on a first subscribe.
   */
  recovered: boolean | undefined;
  /** The topic's epoch and newest offset at the moment of subscribing (history topics). */
  epoch?: string;
  offset?: number;
}

/** A resume the server could not honour: the app should refetch the topic's state. */
export interface RecoveryFailedEvent {
  topic: string;
  /** The position the client asked to resume from. */
  since: Position;
  /** The server's current epoch and newest offset, when it has history for the topic. */
  epoch?: string;
  offset?: number;
  /** False when the server answered without a `recovered` field (it ignores `since`). */
  serverSupportsResume: boolean;
}

export type ReconnectCause = 'backoff' | 'close-hint' | 'retry-after';

export interface ReconnectingEvent {
  /** Consecutive failed or short-lived connections (drain hints do not count). */
  attempt: number;
  /** How long the client waits before the next attempt. */
  delayMs: number;
  /** What chose the delay: back-off with full jitter, the server's close hint, or Retry-After. */
  cause: ReconnectCause;
  /** The close code of the connection that ended (1006 when it never opened). */
  code: number;
}

export interface OpenEvent {
  /** False for the first connection, true for every reconnect. */
  reconnect: boolean;
}

export interface CloseEvent {
  code: number;
  reason: string;
  wasClean: boolean;
  /** False after `close()`; otherwise a `reconnecting` event follows. */
  willReconnect: boolean;
}

/** A refused upgrade, where the WebSocket implementation shows the HTTP answer (Node's `ws`). */
export interface RefusedEvent {
  status: number;
  retryAfterMs: number | null;
}

/** A server `error` reply (code 0: the server sent something that is not JSON). */
export interface ErrorEvent {
  code: number;
  message: string;
  /** The topic whose subscription was refused (and dropped), when the error answers a subscribe. */
  topic?: string;
}

export interface BroadcastEvent<P = unknown> {
  payload: P;
}

export interface BroadcastResultEvent<P = unknown> {
  payload: P;
  /** Connections the broadcast was written to, on every worker. */
  listenCount: number;
}

export interface ClientEvents {
  open: OpenEvent;
  close: CloseEvent;
  reconnecting: ReconnectingEvent;
  refused: RefusedEvent;
  subscribed: SubscribedEvent;
  recoveryFailed: RecoveryFailedEvent;
  message: TopicMessage;
  broadcast: BroadcastEvent;
  broadcastResult: BroadcastResultEvent;
  error: ErrorEvent;
}

/** The subset of the WebSocket constructor the client uses (browser, Node 22+, or the `ws` package). */
export interface WebSocketConstructor {
  new (url: string | URL, protocols?: string | string[]): any;
}

export interface ClientOptions {
  /** WebSocket implementation; defaults to `globalThis.WebSocket` (browsers, Node 22+). */
  WebSocket?: WebSocketConstructor;
  protocols?: string | string[];
  /** Connect in the constructor (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  /** First back-off cap in ms (default 500); the cap doubles per failed attempt. */
  baseDelayMs?: number;
  /** Largest back-off cap in ms (default 30000). */
  maxDelayMs?: number;
  /** A connection open this long resets the back-off (default 5000 ms). */
  stableAfterMs?: number;
  /** An attempt still connecting after this long is abandoned (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Extra random wait on top of a server hint, as a fraction of it (default 0.1). */
  hintJitter?: number;
  /** Server hints (close hint, Retry-After) are capped at this (default 300000 ms). */
  maxHintMs?: number;
  /** Topic length cap checked before sending (default 256, the server's default). */
  maxTopicBytes?: number;
  /** Source of randomness in [0, 1) for jitter (default Math.random). */
  random?: () => number;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'waiting' | 'closed';

export class WsgateClient {
  /**
   * @param url the gateway's WebSocket URL, or a function returning it (called
   *   before every attempt, e.g. to put a fresh token in `?token=`).
   * @throws TypeError for a malformed URL string, or when there is no WebSocket
   *   implementation (neither `options.WebSocket` nor a global one).
   */
  constructor(url: string | URL | (() => string | URL | Promise<string | URL>), options?: ClientOptions);
  readonly state: ClientState;
  readonly stats: { duplicates: number; reconnects: number };
  /** The last position seen on `topic`, or null. */
  position(topic: string): Position | null;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): void;
  connect(): void;
  /** Closes for good: no reconnect; pending requests reject with WsgateClosedError. */
  close(code?: number, reason?: string): void;
  /**
   * Subscribes (kept across reconnects, resumed from the last position seen).
   * Rejects with WsgateServerError when the server refuses (403, 429).
   */
  subscribe<P = unknown>(
    topic: string,
    listener?: ((message: TopicMessage<P>) => void) | null,
    options?: { since?: Position },
  ): Promise<SubscribedEvent>;
  unsubscribe<P = unknown>(topic: string, listener?: ((message: TopicMessage<P>) => void) | null): Promise<void>;
  /** Returns false (nothing sent, nothing queued) while not connected. */
  publish(topic: string, payload: unknown): boolean;
  /** Returns false (nothing sent, nothing queued) while not connected. */
  broadcast(payload: unknown): boolean;
  /** Resolves with the round-trip time in ms. */
  ping(): Promise<number>;
  /**
   * Replaces the connection's token. Rejects with WsgateServerError: 401
   * (refused token) or 429 (sooner than the server's minimum interval).
   */
  refresh(token: string): Promise<{ exp: number }>;
}

export class WsgateServerError extends Error {
  constructor(code: number, message: string);
  readonly code: number;
}

export class WsgateClosedError extends Error {
  constructor(message?: string);
}

/** The back-off cap of retry `attempt` (1-based): min(maxDelayMs, baseDelayMs * 2^(attempt-1)). */
export function backoffCap(attempt: number, baseDelayMs: number, maxDelayMs: number): number;
/** N from a close reason `{"reconnect_in_ms":N}`, or null. */
export function parseCloseHint(reason: string): number | null;
/** A Retry-After value (seconds or HTTP date) in ms, or null. */
export function parseRetryAfter(value: string | string[] | null | undefined, now?: number): number | null;
