import { codes, RedundantProxyError } from './errors.js';
import { REAL_TIME, type Scheduler } from './time.js';

/**
 * Rejects with `RP_ERR_STORE_UNAVAILABLE` if `promise` has not settled within
 * `ms` (on `time`'s timers). The timer is cleared either way, so nothing is
 * left pending.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string, time: Scheduler = REAL_TIME): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = time.setTimeout(() => reject(storeTooSlow(what, ms)), ms);
    promise.then(
      (value) => {
        time.clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        time.clearTimeout(timer);
        reject(err);
      },
    );
  });
}

function storeTooSlow(what: string, ms: number): RedundantProxyError {
  return new RedundantProxyError(codes.STORE_UNAVAILABLE, `the session store did not answer ${what} within ${ms} ms`, { status: 503 });
}

interface Tracked {
  readonly deadline: number;
  readonly what: string;
  readonly reject: (err: unknown) => void;
}

/**
 * Bounds many operations that share one timeout with a single timer, for
 * off-path bookkeeping where a timer per operation would cost more than the
 * operation: one still pending `ms` after it started is rejected with
 * `RP_ERR_STORE_UNAVAILABLE` at most `ms / 4` later. The timer runs while
 * operations are pending (it stops by itself once they are all settled) and
 * does not keep the process alive; `close()` stops it at once (for when
 * nothing is pending any more: what still is stays unbounded).
 */
export class TimeoutGroup {
  // Insertion order is deadline order: every operation gets the same `ms`.
  readonly #pending = new Set<Tracked>();
  #timer: NodeJS.Timeout | null = null;

  constructor(readonly ms: number) {}

  track<T>(promise: Promise<T>, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const entry: Tracked = { deadline: performance.now() + this.ms, what, reject };
      this.#pending.add(entry);
      if (!this.#timer) {
        this.#timer = setInterval(() => this.#sweep(), Math.max(5, this.ms / 4));
        this.#timer.unref();
      }
      promise.then(
        (value) => {
          this.#pending.delete(entry);
          resolve(value);
        },
        (err: unknown) => {
          this.#pending.delete(entry);
          reject(err);
        },
      );
    });
  }

  #sweep(): void {
    if (this.#pending.size === 0) return this.close();
    const now = performance.now();
    for (const entry of this.#pending) {
      if (entry.deadline > now) break;
      this.#pending.delete(entry);
      entry.reject(storeTooSlow(entry.what, this.ms));
    }
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}
