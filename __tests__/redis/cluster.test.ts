import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Cluster } from 'ioredis';
import { codes, isSupersededError } from '../../lib/errors.js';
import { RedisSessionStore, type RedisSessionStoreOptions } from '../../lib/store/redis.js';
import { testSessionStore } from '../../lib/testing.js';
import { startRedisCluster, type RedisClusterServers } from '../helpers/redis-server.js';
import { sleep } from '../helpers/upstream.js';

// The same store on a real Redis Cluster of three masters: every script must
// touch keys of one slot only (Redis refuses the others with CROSSSLOT), the
// fence comes from another slot, and waiters are woken by sharded pub/sub
// through the shard that owns the request's slot.

let servers: RedisClusterServers;
let shared: Cluster;
const extra: Cluster[] = [];
const opened: RedisSessionStore[] = [];

async function connect(): Promise<Cluster> {
  const cluster = new Cluster(servers.nodes, { lazyConnect: true, enableOfflineQueue: false, redisOptions: { maxRetriesPerRequest: 1 } });
  cluster.on('error', () => undefined);
  await cluster.connect();
  return cluster;
}

beforeAll(async () => {
  servers = await startRedisCluster(3);
  shared = await connect();
}, 60_000);

afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
  await Promise.all(extra.splice(0).map((c) => c.quit()));
});

afterAll(async () => {
  await shared?.quit();
  await servers?.stop();
});

testSessionStore(() => new RedisSessionStore({ client: shared, prefix: `rp-test:${randomUUID()}:` }), { name: 'RedisSessionStore on Redis Cluster' });

async function open(options: Partial<RedisSessionStoreOptions> = {}, own = false): Promise<RedisSessionStore> {
  let client = shared;
  if (own) {
    client = await connect();
    extra.push(client);
  }
  const store = new RedisSessionStore({ client, prefix: `rp-test:${randomUUID()}:`, ...options });
  opened.push(store);
  return store;
}

async function keysUnder(prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for (const node of shared.nodes('master')) {
    let cursor = '0';
    do {
      const [next, batch] = await node.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
  }
  return keys;
}

const slot = (key: string) => shared.cluster('KEYSLOT', key) as Promise<number>;


describe('RedisSessionStore on Redis Cluster', () => {
  it('keeps each request\'s keys and channel in one slot, and each session\'s in another', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const requests = Array.from({ length: 6 }, () => randomUUID());
    const sessionId = randomUUID();
    for (const requestId of requests) {
      await store.recordCopy({ requestId, duplicateId: 'a', upstreamId: 'up', index: 1, of: 1, update: true, sessionId });
      await store.saveCandidate(sessionId, requestId, 'a', { last: requestId });
      const grant = await store.claim(requestId, 'a', { leaseMs: 5_000 });
      await store.confirm(requestId, 'a', grant.fence);
      await store.recordAdoption({ requestId, sessionId, update: true, duplicateIds: ['a'], upstreamIds: ['up'] });
    }
    await expect(store.getSession(sessionId)).resolves.toMatchObject({ data: { last: requests.at(-1) }, version: requests.length });
    const keys = await keysUnder(prefix);
    const sessionSlot = await slot(`${prefix}{s:${sessionId}}`);
    const requestSlots = new Set<number>();
    for (const requestId of requests) {
      const own = keys.filter((k) => k.includes(`{r:${requestId}}`));
      expect(own).toHaveLength(1);
      const s = await slot(own[0]!);
      expect(await slot(`${prefix}{r:${requestId}}:commit`)).toBe(s);
      requestSlots.add(s);
    }
    // Six requests land on several slots: a single-slot layout would not be tested.
    expect(requestSlots.size).toBeGreaterThan(1);
    for (const key of keys.filter((k) => k.includes(`{s:${sessionId}}`))) expect(await slot(key)).toBe(sessionSlot);
  });

  it('wakes a waiter on another Cluster connection by pub/sub when the holder releases or confirms', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix, pollInterval: 10_000 });
    const other = await open({ prefix, pollInterval: 10_000 }, true);
    for (const ending of ['release', 'confirm'] as const) {
      for (let n = 0; n < 3; n++) {
        const requestId = randomUUID();
        const first = await holder.claim(requestId, 'a', { leaseMs: 30_000 });
        const waiting = other.claim(requestId, 'b', { leaseMs: 30_000 }).then((g) => g, (err: unknown) => err);
        await sleep(150);
        // Subscribed on the shard that owns the request's slot.
        const channel = `${prefix}{r:${requestId}}:commit`;
        const counts = await Promise.all(shared.nodes('master').map((node) => node.call('PUBSUB', 'SHARDNUMSUB', channel) as Promise<[string, number]>));
        expect(counts.map((c) => c[1]).sort()).toEqual([0, 0, 1]);
        const start = performance.now();
        if (ending === 'release') await holder.release(requestId, 'a', first.fence);
        else await holder.confirm(requestId, 'a', first.fence);
        const outcome = await waiting;
        expect(performance.now() - start).toBeLessThan(300);
        if (ending === 'release') expect(outcome).toMatchObject({ fence: expect.any(Number) });
        else expect(isSupersededError(outcome)).toBe(true);
        if (ending === 'release') expect((outcome as { fence: number }).fence).toBeGreaterThan(first.fence);
      }
    }
  });

  it('hands out fences that go up across requests on different nodes', async () => {
    const store = await open();
    const fences: number[] = [];
    for (let n = 0; n < 10; n++) fences.push((await store.claim(randomUUID(), 'a', { leaseMs: 5_000 })).fence);
    for (let n = 1; n < fences.length; n++) expect(fences[n]).toBeGreaterThan(fences[n - 1]!);
  });

  it('answers 503 RP_ERR_STORE_UNAVAILABLE when no fresh fencing token comes after five tries (a record whose last token is out of reach)', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    // A token far past the counter and the clock in µs: every token taken for it is stale.
    await shared.hset(`${prefix}{r:stale}`, 'requestId', 'stale', 'state', 'none', 'lastFence', '9000000000000000');
    await expect(store.claim('stale', 'a', { leaseMs: 5_000 })).rejects.toMatchObject({ code: codes.STORE_UNAVAILABLE, status: 503 });
  });
});
