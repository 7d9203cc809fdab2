import type { ClaimGrant } from './types.js';

/** A copy waiting for a claim another copy holds (both stores queue these per request). */
export interface Waiter {
  duplicateId: string;
  leaseMs: number;
  resolve: (grant: ClaimGrant) => void;
  reject: (reason: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}
