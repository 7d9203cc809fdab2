import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import { Redis, type RedisOptions } from 'ioredis';
import { codes, isRedundantProxyError } from '../../lib/errors.js';
import { RedisSessionStore, type RedisSessionStoreOptions } from '../../lib/store/redis.js';
import type { SessionStore } from '../../lib/store/types.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { sleep } from '../helpers/upstream.js';

// Redis killed (SIGKILL, as a crash) and started again on the same port,
// empty: while it is down every operation rejects promptly with
// RP_ERR_STORE_UNAVAILABLE, nothing hangs, no rejection goes unhandled; once
// it is back, the same store objects work again. Jest 30 fails the test
// during which a rejection goes unhandled, so these tests passing also shows
// that the store leaves none.

let server: RedisServer;
const opened: RedisSessionStore[] = [];
const clients: Redis[] = [];

beforeAll(async () => {
  server = await startRedisServer();
});

beforeEach(async () => {
  if (!server.running) await server.start();
});

afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
  for (const client of clients.splice(0)) client.disconnect();
  // Let late rejections (commands failed by the outage) surface within the test.
  await sleep(50);
});

afterAll(async () => {
  await server.stop();
});

/** The client options the docs recommend: fail commands at once while Redis is down. */
const failFast: RedisOptions = { maxRetriesPerRequest: 1, enableOfflineQueue: false };

async function connect(options: RedisOptions = failFast): Promise<Redis> {
  // A short `disconnectTimeout` (an ioredis option missing from its types):
  // disconnecting while Redis is down otherwise keeps a 2 s timer alive.
  const client = new Redis({ host: server.host, port: server.port, lazyConnect: true, disconnectTimeout: 100, ...options } as RedisOptions);
  // It reconnects by itself; failures reach the store's callers as rejections.
  client.on('error', () => undefined);
  await client.connect();
  clients.push(client);
  return client;
}

async function open(prefix: string, options: Partial<RedisSessionStoreOptions> = {}, clientOptions?: RedisOptions): Promise<RedisSessionStore> {
  const store = new RedisSessionStore({ client: await connect(clientOptions), prefix, ...options });
  opened.push(store);
  return store;
}

/** Every operation of the interface, once, on fresh ids. */
function everyOperation(store: SessionStore): Array<[string, () => Promise<unknown>]> {
  const requestId = randomUUID();
  const answer = { status: 200, headers: {}, body: '' };
  return [
    ['recordCopy', () => store.recordCopy({ requestId, duplicateId: 'a', upstreamId: 'up', index: 1, of: 1, update: true, sessionId: 's' })],
    ['saveCandidate', () => store.saveCandidate('s', requestId, 'a', { n: 1 })],
    ['recordAdoption', () => store.recordAdoption({ requestId, sessionId: 's', update: true, duplicateIds: ['a'], upstreamIds: ['up'] })],
    ['recordCancelled', () => store.recordCancelled(requestId, 'b')],
    ['getRequest', () => store.getRequest(requestId)],
    ['getSession', () => store.getSession('s')],
    ['claim', () => store.claim(requestId, 'a', { leaseMs: 1000 })],
    ['confirm', () => store.confirm(requestId, 'a', 1)],
    ['release', () => store.release(requestId, 'a', 1)],
    ['beginIdempotent', () => store.beginIdempotent(requestId, 'fp', requestId, 1000, 1000)],
    ['completeIdempotent', () => store.completeIdempotent(requestId, requestId, answer, 1000, 1)],
  ];
}

/** Runs every operation at once; each must reject with STORE_UNAVAILABLE within `limitMs`. */
async function expectPromptFailures(store: SessionStore, limitMs: number): Promise<void> {
  const outcomes = await Promise.all(everyOperation(store).map(async ([name, operation]) => {
    const start = performance.now();
    const error = await operation().then(() => new Error(`${name} resolved while Redis was down`), (err: unknown) => err);
    return { name, code: isRedundantProxyError(error) ? error.code : String(error), fast: performance.now() - start < limitMs };
  }));
  for (const outcome of outcomes) expect(outcome).toEqual({ name: outcome.name, code: codes.STORE_UNAVAILABLE, fast: true });
}

/** Resolves once `fn` succeeds; Redis clients reconnect with a backoff. */
async function eventually<T>(fn: () => Promise<T>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}


describe('RedisSessionStore when Redis goes down and comes back', () => {
  it('rejects every operation at once with fail-fast client options, and works again after a restart', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open(prefix, { pollInterval: 100 });
    const waiterStore = await open(prefix, { pollInterval: 100 });
    // A store whose subscriber connection exists before the outage, and that
    // only pub/sub can wake in time afterwards (its poll is far too slow).
    const listener = await open(prefix, { pollInterval: 10_000 });
    const held = randomUUID();
    const before = await store.claim(held, 'a', { leaseMs: 30_000 });
    const waiting = waiterStore.claim(held, 'b', { leaseMs: 30_000 }).then(() => 'granted', (err: unknown) => err);
    const listening = listener.claim(held, 'c', { leaseMs: 30_000 }).then(() => 'granted', (err: unknown) => err);
    await sleep(100);

    await server.kill();
    const down = performance.now();
    // A waiting claim fails closed at its next look: no arbitration without the store.
    const outcome = await waiting;
    expect(performance.now() - down).toBeLessThan(1000);
    expect(isRedundantProxyError(outcome) && outcome.code).toBe(codes.STORE_UNAVAILABLE);
    await expectPromptFailures(store, 500);

    await server.start();
    // Redis came back empty. The listener's waiter looks again as soon as its
    // connection is back: it neither hangs nor waits for its 10 s poll.
    const back = performance.now();
    const after = await listening;
    expect(performance.now() - back).toBeLessThan(5000);
    expect(after === 'granted' || (isRedundantProxyError(after) && after.code === codes.STORE_UNAVAILABLE)).toBe(true);

    // The same store objects work again: scripts are loaded anew (NOSCRIPT),
    // fences stay above those granted before the restart.
    const requestId = randomUUID();
    await eventually(() => store.recordCopy({ requestId, duplicateId: 'a', upstreamId: 'up', index: 1, of: 2, update: true, sessionId: '' }));
    await expect(store.getRequest(requestId)).resolves.toMatchObject({ copies: [{ duplicateId: 'a' }] });
    const grant = await store.claim(requestId, 'a', { leaseMs: 30_000 });
    expect(grant.fence).toBeGreaterThan(before.fence);
    // The listener's pub/sub connection reconnected and subscribes again.
    await eventually(() => listener.getRequest(requestId));
    const next = listener.claim(requestId, 'c', { leaseMs: 30_000 });
    await sleep(100);
    const start = performance.now();
    await store.release(requestId, 'a', grant.fence);
    await expect(next).resolves.toMatchObject({ fence: expect.any(Number) });
    expect(performance.now() - start).toBeLessThan(500);
  });

  it('rejects within commandTimeout with a client that queues commands while Redis is down', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    // ioredis' defaults: the offline queue holds commands until Redis is back.
    const store = await open(prefix, { commandTimeout: 300 }, {});
    await store.recordCopy({ requestId: randomUUID(), duplicateId: 'a', upstreamId: 'up', index: 1, of: 1, update: false, sessionId: '' });
    await server.kill();
    await expectPromptFailures(store, 800);
    await server.start();
    const requestId = randomUUID();
    await eventually(() => store.recordCopy({ requestId, duplicateId: 'a', upstreamId: 'up', index: 1, of: 1, update: false, sessionId: '' }));
    await expect(store.getRequest(requestId)).resolves.toMatchObject({ requestId });
  });

  it('closes cleanly while Redis is down, rejecting its waiters', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open(prefix);
    const store = await open(prefix, { pollInterval: 10_000 });
    const requestId = randomUUID();
    await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    const waiting = store.claim(requestId, 'b', { leaseMs: 30_000 }).catch((err: unknown) => err);
    await sleep(100);
    await server.kill();
    const start = performance.now();
    await store.close();
    expect(performance.now() - start).toBeLessThan(1500);
    const error = await waiting;
    expect(isRedundantProxyError(error) && error.code).toBe(codes.CLOSED);
  });
});
