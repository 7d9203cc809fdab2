import type { ServerResponse } from 'node:http';
import { codes, isAlreadyAppliedError, isSupersededError, RedundantProxyError } from '../errors.js';
import type { SessionStore } from '../store/types.js';
import { COMMIT, H, sealId, type CommitState } from '../wire/protocol.js';
import { withTimeout } from '../timeout.js';

// The commit arbitration on the worker side: first committed wins, exactly
// once. Several replicas run the same update; before one commits, it claims
// the request id in the store. Exactly one copy holds the claim at a time;
// the others wait, and learn either that the holder confirmed (they lose:
// SupersededError, roll back) or that it released or vanished (they take
// over). The fencing token that comes with the claim lets the database refuse
// a writer whose lease ran out while it was paused.

/** The right to commit one request, held by one copy. */
export interface Claim {
  /** Fencing token: greater than every token granted before. Write it with the update. */
  readonly fence: number;
  /**
   * The database commit succeeded: the other copies now lose. If this copy's
   * lease ran out meanwhile and another copy holds the claim but has not
   * confirmed, this commit still stands (it came first; the unique row per
   * request id makes the other copy's commit fail) and `onLateConfirm` is
   * told; the same when the store cannot be reached to record it. Rejects
   * with `SupersededError` only when another copy confirmed first.
   */
  confirm(): Promise<void>;
  /**
   * This request's commit is already in the database (its unique row
   * exists): an earlier copy committed and then died, or lost its lease,
   * before it confirmed, and this copy took the claim over. Records the
   * request as committed, like `confirm()`, and the copy answers
   * `x-redundant-commit: applied`: the proxy tells the client the update was
   * applied and its answer lost, never runs it again. Roll back (nothing of
   * this copy's may be written) and throw `AlreadyAppliedError`.
   */
  applied(): Promise<void>;
  /** The commit failed: give the claim to a waiting copy. */
  release(): Promise<void>;
}

export interface CommitGate {
  claim(): Promise<Claim>;
  commitOnce<T>(fn: (fence: number) => T | Promise<T>): Promise<T>;
  /** 'won' once confirmed, 'applied' once found already applied, 'lost' once superseded, else undefined. */
  readonly outcome: CommitOutcome | undefined;
  readonly fence: number | undefined;
  /** Writes the outcome headers, if the response can still take them. */
  mark(res: ServerResponse): void;
}

/** What a copy's commit came to, as its answer says in `x-redundant-commit`. */
export type CommitOutcome = CommitState;

export interface CommitGateInput {
  store: SessionStore;
  requestId: string;
  duplicateId: string;
  leaseMs: number;
  /** Bound of each confirm, and of the look-up after a refused one: a store that hangs is a store that is down. */
  storeTimeout: number;
  signal: AbortSignal;
  res: ServerResponse;
  /**
   * Called before the first claim; the claim waits for it, and is refused
   * with its error if it rejects (every later claim too). The worker uses it
   * to hold a signed copy's claim until its body has arrived and matched
   * the signature.
   */
  mayClaim?: () => Promise<void>;
  /** The commit stands although the store did not record it as this copy's (see `Claim.confirm`). */
  onLateConfirm?: (fence: number, reason: 'lease-lost' | 'store-unavailable', error: unknown) => void;
  /** A claim the store could not decide (it failed or did not answer): the copy answers 503, and this says why. */
  onStoreError?: (operation: 'claim', error: unknown) => void;
  /** Told each step of the arbitration, with the fence once granted (the copy's span events, lib/worker/tracing.ts). */
  onStep?: (step: CommitStep, fence: number | undefined) => void;
}

/** A step of one copy's commit arbitration: asked, granted, confirmed, found applied, released, lost. */
export type CommitStep = 'claim' | 'claimed' | 'confirmed' | 'applied' | 'released' | 'lost';

// A confirm that fails for a store error is retried: the commit is already in
// the database, and a confirm that never lands lets the lease run out and
// another copy take over (which the fence then has to stop).
const CONFIRM_ATTEMPTS = 3;
const CONFIRM_BACKOFF_MS = 50;

export function commitGate(input: CommitGateInput): CommitGate {
  const { store, requestId, duplicateId, leaseMs, storeTimeout, signal, res } = input;
  let outcome: CommitOutcome | undefined;
  let fence: number | undefined;
  let pending: Promise<Claim> | undefined;

  const mark = (r: ServerResponse) => {
    if (outcome === undefined || r.headersSent) return;
    r.setHeader(H.commit, outcome);
    if (outcome !== COMMIT.lost && fence !== undefined) r.setHeader(H.fence, String(fence));
  };

  const lose = (err: unknown): never => {
    outcome = COMMIT.lost;
    input.onStep?.('lost', fence);
    mark(res);
    throw err;
  };

  async function acquire(): Promise<Claim> {
    let grant;
    input.onStep?.('claim', undefined);
    try {
      grant = await store.claim(requestId, duplicateId, { leaseMs, signal });
    } catch (err) {
      if (isSupersededError(err)) lose(err);
      if (signal.aborted) throw signal.reason;
      // Fail closed: without the store there is no arbitration, so no commit.
      input.onStoreError?.('claim', err);
      throw new RedundantProxyError(codes.STORE_UNAVAILABLE, 'the session store is unavailable: the update cannot be arbitrated, nothing was committed', { status: 503, cause: err });
    }
    // A copy stopped while its claim was granted (the proxy gave up on it, or
    // the client left) must not commit: it hands the claim on at once.
    if (signal.aborted) {
      await store.release(requestId, duplicateId, grant.fence).catch(() => undefined);
      throw signal.reason;
    }
    fence = grant.fence;
    const token = grant.fence;
    input.onStep?.('claimed', token);
    let settled = false;
    /** Records the commit in the store; `as` is what the answer will say. */
    async function settle(as: typeof COMMIT.won | typeof COMMIT.applied): Promise<void> {
      if (settled) return;
      for (let attempt = 1; ; attempt++) {
        try {
          await withTimeout(store.confirm(requestId, duplicateId, token), storeTimeout, 'confirm');
          break;
        } catch (err) {
          if (isSupersededError(err)) {
            // Our commit is in the database already. It loses only to a copy
            // that confirmed before us; otherwise it is the first commit.
            // The refusal says who committed when the store knows; else ask.
            let committedBy = err.committedBy;
            if (committedBy === undefined) {
              const record = await withTimeout(store.getRequest(requestId), storeTimeout, 'getRequest').catch(() => undefined);
              committedBy = record?.commit?.state === 'committed' ? record.commit.holder : null;
            }
            // A seal is the proxy closing a request that nobody had
            // committed: this commit, late past its lease, is still the only one.
            if (committedBy !== null && committedBy !== duplicateId && committedBy !== sealId(requestId)) lose(err);
            input.onLateConfirm?.(token, 'lease-lost', err);
            break;
          }
          if (attempt >= CONFIRM_ATTEMPTS) {
            // The commit is in the database: answering a failure would invite a
            // retry of an applied update. It stands; waiting copies cannot
            // claim while the store is down, and after it their commit fails
            // on the unique row.
            input.onLateConfirm?.(token, 'store-unavailable', err);
            break;
          }
          await new Promise((r) => setTimeout(r, CONFIRM_BACKOFF_MS * attempt));
        }
      }
      settled = true;
      outcome = as;
      input.onStep?.(as === COMMIT.won ? 'confirmed' : 'applied', token);
      mark(res);
    }
    return {
      fence: token,
      confirm: () => settle(COMMIT.won),
      applied: () => settle(COMMIT.applied),
      async release() {
        if (settled) return;
        settled = true;
        input.onStep?.('released', token);
        await store.release(requestId, duplicateId, token);
      },
    };
  }

  return {
    claim() {
      // One claim per copy: asking twice returns the same claim (or the same refusal).
      pending ??= input.mayClaim ? input.mayClaim().then(acquire) : acquire();
      return pending;
    },
    async commitOnce<T>(fn: (fence: number) => T | Promise<T>): Promise<T> {
      const claim = await this.claim();
      let result: T;
      try {
        // Stopped while the claim was being granted: commit nothing.
        if (signal.aborted) throw signal.reason;
        result = await fn(claim.fence);
      } catch (err) {
        // The request's commit was already in the database: record it, so
        // no copy tries again, and answer `applied`.
        if (isAlreadyAppliedError(err)) {
          await claim.applied();
          throw err;
        }
        // The commit failed: another copy may take over. A release that fails
        // is not worse than a crash: the lease runs out.
        await claim.release().catch(() => undefined);
        throw err;
      }
      await claim.confirm();
      return result;
    },
    get outcome() {
      return outcome;
    },
    get fence() {
      return fence;
    },
    mark,
  };
}
