import { field, number, type Schema } from '../../schema.js';

export interface MemorySessionStoreOptions {
  /**
   * Most requests the store remembers; the least recently used is forgotten
   * first. Sessions and saved candidates are capped at the same number each.
   * Idempotency keys are not: see `maxIdempotencyKeys`.
   * A forgotten request also loses its commit state, so keep `max` above
   * (requests per second × seconds of your longest race).
   * @default 10000
   */
  max?: number;
  /**
   * Milliseconds a request record lives after it was last written, and a
   * session after it was last read or promoted.
   * @default 600000 (10 minutes)
   */
  ttl?: number;
  /**
   * Most `Idempotency-Key`s held at once. A key is kept for its whole TTL
   * and never pushed out for a newer one (a retry must find it); when this
   * many keys are live, `beginIdempotent` refuses a *new* key with
   * `RP_ERR_STORE_FULL` (503) until some expire. Retries and completions of
   * keys already held keep working.
   * @default 100000
   */
  maxIdempotencyKeys?: number;
  /**
   * Most bytes the idempotency keys may take, answers included (each key
   * counts its key, fingerprint and request id lengths, 128 bytes of
   * overhead, and its answer's body length plus its headers' JSON length).
   * A new key that would go over is refused like one over
   * `maxIdempotencyKeys`; an answer that would go over makes
   * `completeIdempotent` reject with `RP_ERR_STORE_FULL`, and the key stays
   * held by its attempt, which may complete it with a smaller answer.
   * @default 67108864 (64 MiB)
   */
  maxIdempotencyBytes?: number;
  /**
   * The clock, in milliseconds since the epoch. It stamps records, judges
   * TTLs, commit leases and idempotency locks. Inject one to test expiry
   * without sleeping.
   * @default Date.now
   */
  now?: () => number;
}

/** How much of its idempotency bounds a `MemorySessionStore` uses (`idempotencyUsage`). */
export interface IdempotencyUsage {
  /** Keys held now, each within its TTL. At most `maxIdempotencyKeys`. */
  keys: number;
  /** Bytes they count, as `maxIdempotencyBytes` counts them. */
  bytes: number;
}

/** How the options are checked (lib/schema.ts). */
export const OPTIONS: Schema<Required<MemorySessionStoreOptions>> = {
  max: number({ integer: true, min: 1, default: 10_000 }),
  ttl: number({ integer: true, unit: 'milliseconds', min: 1, default: 10 * 60_000 }),
  maxIdempotencyKeys: number({ integer: true, min: 1, default: 100_000 }),
  maxIdempotencyBytes: number({ integer: true, unit: 'bytes', min: 1, default: 64 * 1024 * 1024 }),
  now: field<() => number>('must be a function returning milliseconds', (v) => typeof v === 'function', { default: () => Date.now }),
};
