import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { codes } from '../../lib/errors.js';
import { RedisSessionStore } from '../../lib/store/redis.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { closeAfterEach } from '../helpers/cleanup.js';

// What the Redis store's scripts leave in Redis that no answer shows (the
// TTL of a request record after a confirm or a release, the fields a claim
// leaves behind), and the guards of CONFIRM on their own.

let server: RedisServer;
let admin: Redis;
const opened = closeAfterEach();

beforeAll(async () => {
  server = await startRedisServer();
  admin = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
  await admin.connect();
});

afterAll(async () => {
  await admin.quit();
  await server.stop();
});

async function open(ttl: number): Promise<{ store: RedisSessionStore; prefix: string }> {
  const client = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
  await client.connect();
  const prefix = `rp-test:${randomUUID()}:`;
  const store = new RedisSessionStore({ client, prefix, ttl });
  opened.push({ close: () => client.quit() }, store);
  return { store, prefix };
}

describe('RedisSessionStore scripts: the request record\'s TTL', () => {
  it.each(['confirm', 'release'] as const)('a %s that comes late in the record\'s TTL gives it the whole ttl again', async (what) => {
    const { store, prefix } = await open(60_000);
    const requestId = randomUUID();
    const key = `${prefix}{r:${requestId}}`;
    const grant = await store.claim(requestId, 'a', { leaseMs: 1_000 });
    // As if most of the ttl had gone by since the claim.
    await admin.pexpire(key, 500);
    await store[what](requestId, 'a', grant.fence);
    const pttl = await admin.pttl(key);
    expect(pttl).toBeGreaterThan(50_000);
    expect(pttl).toBeLessThanOrEqual(60_000);
  });
});

describe('RedisSessionStore scripts: what a claim leaves in the record', () => {
  it('a release leaves no holder, fence or lease behind; a confirm no lease', async () => {
    const { store, prefix } = await open(60_000);
    const released = randomUUID();
    const grant = await store.claim(released, 'a', { leaseMs: 30_000 });
    await store.release(released, 'a', grant.fence);
    const afterRelease = await admin.hgetall(`${prefix}{r:${released}}`);
    expect(afterRelease).toMatchObject({ state: 'none' });
    for (const field of ['holder', 'fence', 'leaseUntil']) expect(afterRelease).not.toHaveProperty(field);
    const committed = randomUUID();
    const second = await store.claim(committed, 'b', { leaseMs: 30_000 });
    await store.confirm(committed, 'b', second.fence);
    const afterConfirm = await admin.hgetall(`${prefix}{r:${committed}}`);
    expect(afterConfirm).toMatchObject({ state: 'committed', holder: 'b', fence: String(second.fence) });
    expect(afterConfirm).not.toHaveProperty('leaseUntil');
  });

  it('a confirm is refused unless the record is claimed, even when it still names the copy and its fence', async () => {
    const { store, prefix } = await open(60_000);
    const requestId = randomUUID();
    const grant = await store.claim(requestId, 'a', { leaseMs: 30_000 });
    // The claim's state gone (as a release that left its holder behind would), its holder and fence kept.
    await admin.hset(`${prefix}{r:${requestId}}`, 'state', 'none');
    await expect(store.confirm(requestId, 'a', grant.fence)).rejects.toMatchObject({ code: codes.SUPERSEDED, committedBy: null });
    await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'none' } });
  });
});
