import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { codes, isRedundantProxyError } from '../../lib/errors.js';
import { MemorySessionStore, type MemorySessionStoreOptions } from '../../lib/store/memory.js';

// More of the MemorySessionStore, each test aimed at a guard that mutation
// testing (bench/mutation/) found no test for: the claim at the exact end of
// a lease, a release after the confirm, waiters whose record was forgotten
// or who gave up in the middle of the queue, the lease timer (no busy loop),
// and the byte bounds of the idempotency keys at their exact limits. The
// store's clock is injected; jest's fake timers only show that nothing
// waits on a timer.

const opened: MemorySessionStore[] = [];
afterEach(async () => {
  jest.useRealTimers();
  await Promise.all(opened.splice(0).map((s) => s.close()));
});

function open(options: MemorySessionStoreOptions = {}) {
  const clock = { t: 1_000_000 };
  const store = new MemorySessionStore({ now: () => clock.t, ...options });
  opened.push(store);
  return { store, clock };
}

/** Settles what is due now without letting any timer fire (fake timers are on). */
async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

describe('MemorySessionStore claims, by the injected clock', () => {
  it('records a claim on a request it has never seen as an update without a session', async () => {
    const { store } = open();
    await store.claim('r', 'a', { leaseMs: 100 });
    await expect(store.getRequest('r')).resolves.toMatchObject({ requestId: 'r', sessionId: '', update: true, commit: { state: 'claimed', holder: 'a' } });
  });

  it('a holder asking again once its lease has run out (at its exact end) gets a new grant, not its old one', async () => {
    const { store, clock } = open();
    const first = await store.claim('r', 'a', { leaseMs: 100 });
    clock.t += 99;
    await expect(store.claim('r', 'a', { leaseMs: 100 })).resolves.toEqual(first);
    clock.t += 1;
    const second = await store.claim('r', 'a', { leaseMs: 100 });
    expect(second.fence).toBeGreaterThan(first.fence);
    expect(second.leaseUntil).toBe(clock.t + 100);
  });

  it('another copy asking at the exact end of the lease is granted at once, without waiting for a timer', async () => {
    jest.useFakeTimers();
    const { store, clock } = open();
    const first = await store.claim('r', 'a', { leaseMs: 100 });
    clock.t += 100;
    let grant: unknown;
    void store.claim('r', 'b', { leaseMs: 100 }).then((g) => (grant = g));
    await flush();
    expect(grant).toMatchObject({ fence: first.fence + 1, leaseUntil: clock.t + 100 });
  });

  it('refuses a confirm with an older fence of the same copy once its newer claim committed', async () => {
    const { store, clock } = open();
    const old = await store.claim('r', 'a', { leaseMs: 100 });
    clock.t += 100;
    const renewed = await store.claim('r', 'a', { leaseMs: 100 });
    await store.confirm('r', 'a', renewed.fence);
    await expect(store.confirm('r', 'a', old.fence)).rejects.toMatchObject({ code: codes.SUPERSEDED });
    // Confirming the commit again with its own fence is harmless.
    await expect(store.confirm('r', 'a', renewed.fence)).resolves.toBeUndefined();
  });

  it('a release by the holder after its confirm changes nothing: the request stays committed', async () => {
    const { store } = open();
    const grant = await store.claim('r', 'a', { leaseMs: 100 });
    await store.confirm('r', 'a', grant.fence);
    await store.release('r', 'a', grant.fence);
    await expect(store.getRequest('r')).resolves.toMatchObject({ commit: { state: 'committed', holder: 'a', fence: grant.fence } });
    await expect(store.claim('r', 'b', { leaseMs: 100 })).rejects.toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
  });

  it('a waiter whose request record was forgotten (pushed out of `max`) gets the claim, on a record made anew', async () => {
    const { store } = open({ max: 1 });
    await store.claim('r', 'a', { leaseMs: 60_000 });
    const waiting = store.claim('r', 'b', { leaseMs: 60_000 });
    // Another request pushes r's record out: its claim is forgotten with it.
    await store.recordCopy({ requestId: 'other', duplicateId: 'x', upstreamId: 'u', index: 1, of: 1, update: false, sessionId: 's' });
    await expect(store.getRequest('r')).resolves.toBeUndefined();
    // The next look at r's claim hands it to the copy that has waited longest.
    const late = store.claim('r', 'c', { leaseMs: 60_000 });
    await expect(waiting).resolves.toMatchObject({ fence: expect.any(Number) });
    await expect(store.getRequest('r')).resolves.toMatchObject({ sessionId: '', update: true, commit: { state: 'claimed', holder: 'b' } });
    void late.catch(() => undefined);
  });

  it('a waiter that gives up in the middle of the queue is skipped: the claim goes past it at once', async () => {
    const { store } = open();
    const first = await store.claim('r', 'a', { leaseMs: 60_000 });
    const quits = new AbortController();
    const b = store.claim('r', 'b', { leaseMs: 60_000 });
    const c = store.claim('r', 'c', { leaseMs: 60_000, signal: quits.signal }).catch((err: unknown) => err);
    const d = store.claim('r', 'd', { leaseMs: 60_000 });
    quits.abort(new Error('gone'));
    await expect(c).resolves.toMatchObject({ message: 'gone' });
    await store.release('r', 'a', first.fence);
    const grantB = await b;
    await store.release('r', 'b', grantB.fence);
    await expect(d).resolves.toMatchObject({ fence: expect.any(Number) });
    await expect(store.getRequest('r')).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'd' } });
  });

  it('sleeps until the lease would end while copies wait: no timer fires before it (no busy loop)', async () => {
    jest.useFakeTimers();
    const { store, clock } = open();
    await store.claim('r', 'a', { leaseMs: 60_000 });
    let grant: unknown;
    void store.claim('r', 'b', { leaseMs: 60_000 }).then((g) => (grant = g));
    await flush();
    const timers = jest.spyOn(globalThis, 'setTimeout');
    await jest.advanceTimersByTimeAsync(59_999);
    expect(timers).not.toHaveBeenCalled();
    expect(grant).toBeUndefined();
    // The store's clock says the lease is over when the timer fires: b takes over.
    clock.t += 60_000;
    await jest.advanceTimersByTimeAsync(1);
    expect(grant).toMatchObject({ fence: expect.any(Number) });
    timers.mockRestore();
  });
});

describe('MemorySessionStore idempotency bounds, at their exact limits', () => {
  const LOCK = 1_000;
  const TTL = 60_000;
  // 'k' + 'fp' + 'r1' + 128 of overhead.
  const KEY_BYTES = 1 + 2 + 2 + 128;

  function isStoreFull(error: unknown): boolean {
    return isRedundantProxyError(error) && error.code === codes.STORE_FULL;
  }

  it('takes a new key that fills maxIdempotencyBytes exactly, and refuses one a byte over', async () => {
    const { store } = open({ maxIdempotencyBytes: KEY_BYTES });
    await expect(store.beginIdempotent('k', 'fp', 'r1', LOCK, TTL)).resolves.toMatchObject({ state: 'started' });
    expect(store.idempotencyUsage).toEqual({ keys: 1, bytes: KEY_BYTES });
    const tight = open({ maxIdempotencyBytes: KEY_BYTES - 1 }).store;
    expect(isStoreFull(await tight.beginIdempotent('k', 'fp', 'r1', LOCK, TTL).catch((e: unknown) => e))).toBe(true);
  });

  it('takes an answer that fills maxIdempotencyBytes exactly, and refuses one a byte over', async () => {
    const answer = { status: 200, headers: {}, body: 'x'.repeat(10) };
    const exact = KEY_BYTES + 10 + '{}'.length;
    const { store } = open({ maxIdempotencyBytes: exact });
    await store.beginIdempotent('k', 'fp', 'r1', LOCK, TTL);
    await store.completeIdempotent('k', 'r1', answer, TTL, 1);
    expect(store.idempotencyUsage).toEqual({ keys: 1, bytes: exact });
    const tight = open({ maxIdempotencyBytes: exact - 1 }).store;
    await tight.beginIdempotent('k', 'fp', 'r1', LOCK, TTL);
    expect(isStoreFull(await tight.completeIdempotent('k', 'r1', answer, TTL, 1).catch((e: unknown) => e))).toBe(true);
  });

  it('counts an answer without headers (from a caller in plain JavaScript) by its body alone', async () => {
    const { store } = open();
    await store.beginIdempotent('k', 'fp', 'r1', LOCK, TTL);
    await store.completeIdempotent('k', 'r1', { status: 200, body: 'abc' } as never, TTL, 1);
    expect(store.idempotencyUsage).toEqual({ keys: 1, bytes: KEY_BYTES + 3 });
  });

  it('forgets every key when it closes', async () => {
    const { store } = open();
    await store.beginIdempotent('k', 'fp', 'r1', LOCK, TTL);
    await store.close();
    expect(store.idempotencyUsage).toEqual({ keys: 0, bytes: 0 });
  });
});
