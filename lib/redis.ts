// The `redundant-proxy/redis` entry: the Redis session store. ioredis is an
// optional peer dependency, used here only as types, so the main entry never
// needs it installed.
export { RedisSessionStore } from './store/redis.js';
export type { RedisSessionStoreOptions } from './store/redis.js';
