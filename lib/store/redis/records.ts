import { RedundantProxyError, codes } from '../../errors.js';
import type { CommitRecord, CopyRecord, RequestRecord } from '../types.js';

// Replies of the Redis store's scripts and hashes, read back.

/**
 * Reads what the store wrote earlier; what cannot be read (data written by
 * something else under the store's prefix, a value cut short) fails the call
 * as the store being unavailable would, with the parse error as its cause.
 */
export function readStored<T>(what: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    throw new RedundantProxyError(codes.STORE_UNAVAILABLE, `the session store (Redis) holds ${what} that cannot be read`, { status: 503, cause: err });
  }
}

/** Whole milliseconds, at least 1, for PEXPIRE. */
export function millis(ms: number): number {
  return Number.isFinite(ms) ? Math.max(1, Math.ceil(ms)) : 1;
}

/** A flat [field, value, …] reply as an object. */
export function pairs(reply: unknown): Record<string, string> {
  const list = reply as string[];
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < list.length; i += 2) out[list[i]!] = list[i + 1]!;
  return out;
}

/** Splits 'a|b|rest' into ['a', 'b', 'rest'] (the rest may contain '|'). */
function split3(value: string): [string, string, string] {
  const first = value.indexOf('|');
  const second = value.indexOf('|', first + 1);
  return [value.slice(0, first), value.slice(first + 1, second), value.slice(second + 1)];
}

export function toRequestRecord(hash: Record<string, string>): RequestRecord {
  const copies: Array<{ n: number; copy: CopyRecord }> = [];
  const cancelled: Array<{ n: number; duplicateId: string }> = [];
  for (const [field, value] of Object.entries(hash)) {
    if (field.startsWith('c:')) {
      const [n, receivedAt, json] = split3(value);
      const copy = JSON.parse(json) as Omit<CopyRecord, 'receivedAt'>;
      copies.push({ n: Number(n), copy: { ...copy, receivedAt: Number(receivedAt) } });
    } else if (field.startsWith('x:')) {
      cancelled.push({ n: Number(value), duplicateId: field.slice(2) });
    }
  }
  let adopted: RequestRecord['adopted'] = null;
  if (hash.adopted !== undefined) {
    const at = hash.adopted.indexOf('|');
    const { duplicateIds, upstreamIds } = JSON.parse(hash.adopted.slice(at + 1)) as { duplicateIds: string[]; upstreamIds: string[] };
    adopted = { duplicateIds, upstreamIds, at: Number(hash.adopted.slice(0, at)) };
  }
  let commit: CommitRecord = { state: 'none' };
  if (hash.state === 'claimed') {
    commit = { state: 'claimed', holder: hash.holder!, fence: Number(hash.fence), leaseUntil: Number(hash.leaseUntil) };
  } else if (hash.state === 'committed') {
    commit = { state: 'committed', holder: hash.holder!, fence: Number(hash.fence), committedAt: Number(hash.committedAt) };
  }
  return {
    requestId: hash.requestId!,
    sessionId: hash.sessionId ?? '',
    update: hash.update === '1',
    copies: copies.sort((a, b) => a.n - b.n).map((c) => c.copy),
    adopted,
    cancelled: cancelled.sort((a, b) => a.n - b.n).map((c) => c.duplicateId),
    commit,
  };
}

