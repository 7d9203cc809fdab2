import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll } from '@jest/globals';
import { Redis } from 'ioredis';
import { RedisSessionStore } from '../../lib/store/redis.js';
import { testSessionStore } from '../../lib/testing.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';

// The conformance suite of every SessionStore, on a real redis-server of the
// test's own; each test gets its own client and key prefix.

let server: RedisServer;
const clients = new Map<RedisSessionStore, Redis>();

beforeAll(async () => {
  server = await startRedisServer();
});

afterAll(async () => {
  await server.stop();
});

testSessionStore(
  async () => {
    const client = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
    await client.connect();
    const store = new RedisSessionStore({ client, prefix: `rp-test:${randomUUID()}:` });
    clients.set(store, client);
    return store;
  },
  {
    name: 'RedisSessionStore',
    destroy: async (store) => {
      const client = clients.get(store as RedisSessionStore);
      clients.delete(store as RedisSessionStore);
      await client?.quit();
    },
  },
);
