import { field, func, MAX_TIMER_MS, number, parseOptions, secret, string, type Schema } from '../schema.js';
import type { SessionStore } from '../store/types.js';

export interface WorkerOptions {
  /**
   * This replica's upstream id, exactly as the proxy names it (the `id` of
   * its `upstreams` entry, or the URL's `host:port`). Signed copies addressed
   * to another id are refused.
   */
  id: string;
  /** The store the proxy uses too: shared memory in one process, Redis across machines. */
  store: SessionStore;
  /** The proxy's HMAC key. With it, unsigned, forged, tampered, stale and replayed copies get `401`. */
  secret?: string | Buffer;
  /**
   * Milliseconds a signed copy stays valid after the proxy sent it (clock skew
   * between gateway and replica included).
   * @default 30000
   */
  maxSkew?: number;
  /**
   * Milliseconds to wait for the store when loading a session, saving a
   * candidate or confirming a commit before giving up on it (the request is
   * still served; a confirm that never lands stands, as a `lateConfirm`).
   * @default 1000
   */
  storeTimeout?: number;
  /**
   * Milliseconds a commit claim holds without a confirm or release before
   * another copy may take over (the holder is presumed dead). Longer than
   * your slowest commit; the fencing token covers a holder paused past it.
   * @default 10000
   */
  lease?: number;
  /** Wall clock in ms, for tests. @default Date.now */
  now?: () => number;
}

/** The worker's options, checked, with their defaults. */
export type ResolvedWorkerOptions = Required<Omit<WorkerOptions, 'secret'>> & { secret: string | Buffer | undefined };

const millis = (d: number) => number({ unit: 'milliseconds', above: 0, default: d });

const WORKER: Schema<ResolvedWorkerOptions> = {
  id: string('must be 1-64 characters of letters, digits and ._:-', (s) => /^[A-Za-z0-9._:-]{1,64}$/.test(s)),
  store: field<SessionStore>('must implement SessionStore', (s) => typeof s === 'object' && s !== null && typeof (s as SessionStore).recordCopy === 'function'),
  secret: secret(),
  maxSkew: millis(30_000),
  // A timer's delay: above 2^31 - 1 ms Node fires it at once.
  storeTimeout: number({ unit: 'milliseconds', above: 0, max: MAX_TIMER_MS, default: 1000 }),
  lease: millis(10_000),
  now: func<() => number>(Date.now),
};

/** Checks `redundantWorker()`'s options at construction; a bad or unknown one throws an `InvalidOptionError` naming it. */
export function resolveWorkerOptions(options: WorkerOptions): ResolvedWorkerOptions {
  return parseOptions(WORKER, options);
}
