import { codes, RedundantProxyError } from './errors.js';

/**
 * Rejects with `RP_ERR_STORE_UNAVAILABLE` if `promise` has not settled within
 * `ms`. The timer is cleared either way, so nothing is left pending.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new RedundantProxyError(codes.STORE_UNAVAILABLE, `the session store did not answer ${what} within ${ms} ms`, { status: 503 })), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
