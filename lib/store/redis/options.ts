import type { Cluster, Redis } from 'ioredis';
import { field, MAX_TIMER_MS, number, object, string, type Schema } from '../../schema.js';
import type { BatchSettings } from './batch.js';

/** Ten years: the longest `ttl`. */
const MAX_TTL_MS = 10 * 365 * 24 * 60 * 60_000;

/** What a `RedisSessionStore` is created with. */
export interface RedisSessionStoreOptions {
  /**
   * The ioredis client: a `Redis` or a `Cluster`, created and owned by you;
   * the store never closes it. Create it so that commands fail fast while
   * Redis is down instead of queueing: `{ maxRetriesPerRequest: 1,
   * enableOfflineQueue: false }` (see `commandTimeout` for the backstop).
   * The store opens one extra connection of its own (a duplicate of this
   * client) for pub/sub, the first time a claim has to wait.
   * @example
   * const client = new Redis({ host: 'redis', maxRetriesPerRequest: 1, enableOfflineQueue: false });
   * client.on('error', (err) => log.warn(err)); // it reconnects by itself
   */
  client: Redis | Cluster;
  /**
   * Prepended to every key and channel name, so several stores (or apps) can
   * share one Redis. Must not contain `{` or `}`: the store puts its own hash
   * tags after it.
   * @default 'rp:'
   */
  prefix?: string;
  /**
   * Milliseconds a request record (copies, adoption, commit state, session
   * candidates) lives after its last write. Keep it above your longest race
   * and your longest lease: a forgotten request loses its commit state.
   * At most ten years (the request log's script keeps the second its record
   * expires in a number Lua must hold exactly).
   * @default 600000 (10 minutes)
   */
  ttl?: number;
  /**
   * Milliseconds a session's adopted state lives after it was last read or
   * promoted (a sliding expiry, as the memory store's).
   * @default 86400000 (24 hours)
   */
  sessionTtl?: number;
  /**
   * Milliseconds between re-checks of a claim another copy holds. Waiters are
   * woken by pub/sub the moment the holder confirms or releases, and by a
   * timer when its lease runs out; this poll only covers a lost message.
   * @default 250
   */
  pollInterval?: number;
  /**
   * Milliseconds the store waits for Redis to answer one command before it
   * rejects with `RP_ERR_STORE_UNAVAILABLE`, whatever the client does with
   * the command meanwhile (a client with the offline queue enabled would hold
   * it until Redis is back). A command that times out may still run later.
   * @default 2000
   */
  commandTimeout?: number;
  /**
   * How the request log's writes (a copy received, an adoption, a copy
   * stopped) are batched: the records made in one turn of the event loop go
   * to Redis in one script call (on Cluster one call per record, since a
   * script may touch one slot only). Records nobody waits for (a read's
   * copy, an adoption that promotes no session) may wait up to `maxDelay` ms
   * (at most 100; not on Cluster) for more; an update's copy, a copy stopped
   * and an adoption that promotes a session go at the end of the turn and
   * take the waiting ones along, and a worker about to wait for a read's
   * record has them go at the end of the turn (`flushRecords()`). `getRequest()` from
   * another process may trail by one batch. See docs/stores.md for when
   * `maxDelay` pays. `maxPending` bounds each batch's items and the store's
   * other commands on their way (until Redis answers them): beyond it a new
   * one fails at once with `RP_ERR_STORE_UNAVAILABLE`.
   * @default { maxRecords: 128, maxDelay: 0, maxPending: 10000 }
   */
  batch?: Partial<BatchSettings>;
}

/** How the options are checked (lib/schema.ts). */
export const OPTIONS: Schema<Required<RedisSessionStoreOptions>> = {
  client: field<Redis | Cluster>('must be an ioredis Redis or Cluster client', (c) => {
    const o = c as Record<string, unknown> | null;
    return typeof o === 'object' && o !== null && typeof o.evalsha === 'function' && typeof o.hgetall === 'function' && typeof o.duplicate === 'function';
  }),
  prefix: string('must be a string without `{` or `}`', (p) => !/[{}]/.test(p), 'rp:'),
  // The request log's script keeps the second a key expires in, times 2^20,
  // in one integer (lib/store/redis/batch.ts): a TTL past years would take
  // it beyond what a Lua number (a double) holds exactly.
  ttl: number({ integer: true, unit: 'milliseconds', min: 1, max: MAX_TTL_MS, default: 10 * 60_000 }),
  sessionTtl: number({ integer: true, unit: 'milliseconds', min: 1, default: 24 * 60 * 60_000 }),
  // A Node timer waits at most 2^31 - 1 ms.
  pollInterval: number({ integer: true, unit: 'milliseconds', min: 1, max: MAX_TIMER_MS, default: 250 }),
  commandTimeout: number({ integer: true, unit: 'milliseconds', min: 1, max: MAX_TIMER_MS, default: 2000 }),
  batch: object<BatchSettings>({
    maxRecords: number({ integer: true, min: 1, max: 10_000, default: 128 }),
    // Well below the workers' and the proxy's storeTimeout (1000 by default):
    // a held record's call is timed from when it was made.
    maxDelay: number({ integer: true, unit: 'milliseconds', min: 0, max: 100, default: 0 }),
    maxPending: number({ integer: true, min: 1, default: 10_000 }),
  }) as Schema<Required<RedisSessionStoreOptions>>['batch'],
};
