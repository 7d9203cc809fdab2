import { RedundantProxyError, SupersededError, codes } from '../errors.js';
import { number } from '../schema.js';
import type { ClaimGrant } from './types.js';

// What the memory store and the Redis store share.

/** A copy waiting for a claim another copy holds (both stores queue these per request). */
export interface Waiter {
  duplicateId: string;
  leaseMs: number;
  resolve: (grant: ClaimGrant) => void;
  reject: (reason: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** Stops listening to the waiter's abort signal. */
export function detach(waiter: Waiter): void {
  if (waiter.signal && waiter.onAbort) waiter.signal.removeEventListener('abort', waiter.onAbort);
}

/** Another copy of `requestId` (`holder`) committed first. */
export function superseded(requestId: string, holder: string): SupersededError {
  return new SupersededError(`request ${requestId}: copy ${holder} committed first`, { committedBy: holder });
}

/**
 * A confirm refused: `duplicateId` no longer holds the claim. Says who
 * committed instead (`committedBy`), or that nobody did (null).
 */
export function notHolder(requestId: string, duplicateId: string, fence: number, committedBy: string | null | undefined): SupersededError {
  const why = committedBy ? `copy ${committedBy} committed` : committedBy === null ? 'no copy has committed' : 'the request is not known';
  return new SupersededError(`request ${requestId}: copy ${duplicateId} no longer holds the claim (fence ${fence}); ${why}`, { committedBy });
}

export function closedError(): RedundantProxyError {
  return new RedundantProxyError(codes.CLOSED, 'the session store is closed', { status: 503 });
}

const MILLIS = number({ unit: 'milliseconds', above: 0 });

/**
 * A duration passed to a store method (`lockMs`, `ttlMs`): a finite number of
 * milliseconds above 0, or the call rejects naming it, in either store.
 */
export function checkMillis(name: string, value: number): void {
  MILLIS.resolve(value, name, {});
}

/** Session data as JSON carries it; a value JSON cannot carry (a BigInt, a cycle) fails here, in either store. */
export function sessionJson(data: Record<string, unknown>): string {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new TypeError('redundant-proxy: session data must be a plain object');
  }
  return JSON.stringify(data);
}
