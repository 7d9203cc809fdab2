import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { RedisSessionStore } from '../../lib/store/redis.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { closeAfterEach } from '../helpers/cleanup.js';

// What the Redis store's scripts leave in Redis that no answer shows: the
// TTL of a request record after a confirm or a release.

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
