// Compiled by `npm run typecheck` (tsc --noEmit): the published types must
// describe real usage. Never executed.
import { WsgateClient, WsgateServerError, type Position, type TopicMessage } from '../src/index.js';

const client = new WsgateClient(() => 'ws://127.0.0.1:8080/ws?token=t', { baseDelayMs: 100 });
const off: () => void = client.on('recoveryFailed', (e) => {
  const since: Position = e.since;
  const topic: string = e.topic;
  void since;
  void topic;
});
off();
client.on('reconnecting', (e) => {
  const cause: 'backoff' | 'close-hint' | 'retry-after' = e.cause;
  const ms: number = e.delayMs;
  void cause;
  void ms;
});
client.on('message', (m: TopicMessage) => void m.offset);
async function use(): Promise<void> {
  const sub = await client.subscribe<{ n: number }>('news', (m) => {
    const n: number = m.payload.n;
    void n;
  });
  const r: boolean | undefined = sub.recovered;
  void r;
  const sent: boolean = client.publish('news', { n: 1 });
  void sent;
  const rtt: number = await client.ping();
  void rtt;
  try {
    await client.refresh('token');
  } catch (e) {
    if (e instanceof WsgateServerError) void e.code;
  }
  // @ts-expect-error: unknown event names are rejected.
  client.on('nope', () => {});
  client.close();
}
void use;
