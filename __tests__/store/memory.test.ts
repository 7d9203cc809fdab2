import { getEventListeners } from 'node:events';
import { afterEach, describe, expect, it } from '@jest/globals';
import { codes, isRedundantProxyError, isSupersededError } from '../../lib/errors.js';
import { MemorySessionStore, type MemorySessionStoreOptions } from '../../lib/store/memory.js';
import { testSessionStore } from '../../lib/testing.js';
import { sleep } from '../helpers/upstream.js';

testSessionStore(() => new MemorySessionStore(), { name: 'MemorySessionStore' });

describe('MemorySessionStore', () => {
  const opened: MemorySessionStore[] = [];
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((s) => s.close()));
  });

  function open(options?: MemorySessionStoreOptions): MemorySessionStore {
    const store = new MemorySessionStore(options);
    opened.push(store);
    return store;
  }

  /** A clock the test moves by hand. */
  function fakeClock(start: number) {
    const clock = { t: start, now: () => clock.t };
    return clock;
  }

  function copy(requestId: string, duplicateId = 'a') {
    return { requestId, duplicateId, upstreamId: 'up', index: 1, of: 1, update: false, sessionId: 's' };
  }

  describe('options', () => {
    it.each([
      ['max', { max: 0 }],
      ['max', { max: -1 }],
      ['max', { max: 1.5 }],
      ['max', { max: '10' }],
      ['max', { max: Number.NaN }],
      ['ttl', { ttl: 0 }],
      ['ttl', { ttl: Infinity }],
      ['ttl', { ttl: '1s' }],
      ['now', { now: 123 }],
      ['maxAge', { maxAge: 5 }],
      ['options', null],
    ])('rejects a bad %s with an error that names it', (option, options) => {
      let error: unknown;
      try {
        new MemorySessionStore(options as MemorySessionStoreOptions);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(TypeError);
      expect(isRedundantProxyError(error)).toBe(true);
      expect(error).toMatchObject({ code: codes.INVALID_OPTION, option });
      expect((error as Error).message).toContain(`\`${option}\``);
    });

    it('accepts no options and every option', () => {
      expect(open().size).toBe(0);
      expect(open({ max: 1, ttl: 1, now: () => 5 }).size).toBe(0);
    });

    it('rejects a claim with a lease that is not a positive number of ms', async () => {
      const store = open();
      await expect(store.claim('r', 'a', { leaseMs: 0 })).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'leaseMs' });
    });
  });

  describe('time, from the injected clock', () => {
    it('stamps records with it', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ now: clock.now });
      await store.recordCopy(copy('r'));
      clock.t += 5;
      await store.saveCandidate('s', 'r', 'a', { x: 1 });
      await store.recordAdoption({ requestId: 'r', sessionId: 's', update: false, duplicateIds: ['a'], upstreamIds: ['up'] });
      clock.t += 5;
      const grant = await store.claim('r', 'a', { leaseMs: 100 });
      expect(grant.leaseUntil).toBe(1_000_110);
      const record = await store.getRequest('r');
      expect(record?.copies[0]?.receivedAt).toBe(1_000_000);
      expect(record?.adopted?.at).toBe(1_000_005);
      await expect(store.getSession('s')).resolves.toEqual({ sessionId: 's', data: { x: 1 }, version: 1, updatedAt: 1_000_005 });
    });

    it('expires a request record ttl ms after its last write, without sleeping', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ ttl: 1_000, now: clock.now });
      await store.recordCopy(copy('r'));
      clock.t += 600;
      await store.recordCopy(copy('r', 'b')); // a write restarts the TTL
      clock.t += 1_000;
      await expect(store.getRequest('r')).resolves.toMatchObject({ requestId: 'r' });
      clock.t += 1;
      await expect(store.getRequest('r')).resolves.toBeUndefined();
    });

    it('expires a session ttl ms after it was last read or promoted', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ ttl: 1_000, now: clock.now });
      await store.saveCandidate('s', 'r', 'a', { x: 1 });
      await store.recordAdoption({ requestId: 'r', sessionId: 's', update: false, duplicateIds: ['a'], upstreamIds: ['up'] });
      clock.t += 800;
      await expect(store.getSession('s')).resolves.toMatchObject({ version: 1 });
      clock.t += 1_000;
      await expect(store.getSession('s')).resolves.toMatchObject({ version: 1 });
      clock.t += 1_001;
      await expect(store.getSession('s')).resolves.toBeUndefined();
    });

    it('expires records although the clock starts at 0', async () => {
      const clock = fakeClock(0);
      const store = open({ ttl: 10, now: clock.now });
      await store.recordCopy(copy('r'));
      clock.t = 11;
      await expect(store.getRequest('r')).resolves.toBeUndefined();
    });

    it('judges leases by the injected clock: a frozen clock keeps the holder', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ now: clock.now });
      const first = await store.claim('r', 'a', { leaseMs: 10 });
      let settled = false;
      const waiter = store.claim('r', 'b', { leaseMs: 10 }).finally(() => {
        settled = true;
      });
      // Several real lease lengths pass, but not on the store's clock.
      await sleep(60);
      expect(settled).toBe(false);
      clock.t += 10;
      // The lease timer wakes the waiter within a real lease length.
      const grant = await waiter;
      expect(grant).toEqual({ fence: first.fence + 1, leaseUntil: 1_000_020 });
      await expect(store.getRequest('r')).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'b' } });
    });

    it('hands an expired lease to the longest waiter when anyone claims, then makes the newcomer wait', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ now: clock.now });
      const first = await store.claim('r', 'a', { leaseMs: 60_000 });
      const b = store.claim('r', 'b', { leaseMs: 60_000 });
      clock.t += 60_000;
      // No timer has fired (the real lease is a minute): the claim call re-checks.
      const c = store.claim('r', 'c', { leaseMs: 60_000 });
      await expect(b).resolves.toEqual({ fence: first.fence + 1, leaseUntil: 1_120_000 });
      await store.confirm('r', 'b', first.fence + 1);
      expect(isSupersededError(await c.catch((e: unknown) => e))).toBe(true);
    });
  });

  describe('bounds', () => {
    it('holds at most max request records over a long run', async () => {
      const store = open({ max: 1_000 });
      for (let n = 0; n < 100_000; n++) await store.recordCopy(copy(`r${n}`));
      expect(store.size).toBeLessThanOrEqual(1_000);
      await expect(store.getRequest('r0')).resolves.toBeUndefined();
      await expect(store.getRequest('r99999')).resolves.toMatchObject({ requestId: 'r99999' });
    });

    it('bounds sessions and candidates by max too', async () => {
      const store = open({ max: 100 });
      for (let n = 0; n < 1_000; n++) {
        await store.saveCandidate(`s${n}`, `r${n}`, 'a', { n });
        await store.recordAdoption({ requestId: `r${n}`, sessionId: `s${n}`, update: false, duplicateIds: ['a'], upstreamIds: ['up'] });
      }
      await expect(store.getSession('s0')).resolves.toBeUndefined();
      await expect(store.getSession('s999')).resolves.toMatchObject({ data: { n: 999 } });

      // Candidates of requests never adopted pile up only to max.
      await store.saveCandidate('early', 'r-early', 'a', { early: true });
      for (let n = 0; n < 1_000; n++) await store.saveCandidate('later', `r-never-${n}`, 'a', { n });
      // The early candidate was pushed out, so its adoption has nothing to promote.
      await store.recordAdoption({ requestId: 'r-early', sessionId: 'early', update: false, duplicateIds: ['a'], upstreamIds: ['up'] });
      await expect(store.getSession('early')).resolves.toBeUndefined();
    });
  });

  describe('isolation', () => {
    it('hands out records that cannot change the store, and stores data as JSON', async () => {
      const store = open();
      await store.recordCopy(copy('r'));
      const record = await store.getRequest('r');
      record!.copies[0]!.upstreamId = 'forged';
      record!.sessionId = 'forged';
      await expect(store.getRequest('r')).resolves.toMatchObject({ sessionId: 's', copies: [{ upstreamId: 'up' }] });

      const when = new Date(0);
      await store.saveCandidate('s', 'r', 'a', { when, gone: undefined });
      await store.recordAdoption({ requestId: 'r', sessionId: 's', update: false, duplicateIds: ['a'], upstreamIds: ['up'] });
      await expect(store.getSession('s')).resolves.toMatchObject({ data: { when: '1970-01-01T00:00:00.000Z' } });
      await expect(store.saveCandidate('s', 'r2', 'a', { big: 1n })).rejects.toBeInstanceOf(TypeError);
    });
  });

  describe('waiters', () => {
    it('removes its abort listener when a waiter is granted, turned away or aborted', async () => {
      const store = open();
      const first = await store.claim('r', 'a', { leaseMs: 60_000 });
      const granted = new AbortController();
      const superseded = new AbortController();
      const aborted = new AbortController();
      const b = store.claim('r', 'b', { leaseMs: 60_000, signal: granted.signal });
      const c = store.claim('r', 'c', { leaseMs: 60_000, signal: superseded.signal });
      const d = store.claim('r', 'd', { leaseMs: 60_000, signal: aborted.signal });
      expect(getEventListeners(granted.signal, 'abort')).toHaveLength(1);
      aborted.abort();
      await expect(d).rejects.toMatchObject({ name: 'AbortError' });
      await store.release('r', 'a', first.fence);
      const grant = await b;
      await store.confirm('r', 'b', grant.fence);
      expect(isSupersededError(await c.catch((e: unknown) => e))).toBe(true);
      for (const controller of [granted, superseded, aborted]) expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
    });

    it('rejects pending waiters with CLOSED on close', async () => {
      const store = open();
      await store.claim('r', 'a', { leaseMs: 60_000 });
      const waiter = store.claim('r', 'b', { leaseMs: 60_000 });
      await store.close();
      await expect(waiter).rejects.toMatchObject({ code: codes.CLOSED });
      await expect(store.saveCandidate('s', 'r', 'a', {})).rejects.toMatchObject({ code: codes.CLOSED });
    });
  });
});


describe('MemorySessionStore: a refused confirm says who committed', () => {
  it('names the committer, or null while nobody has committed', async () => {
    const store = new MemorySessionStore();
    try {
      const grant = await store.claim('r1', 'a', { leaseMs: 10_000 });
      await expect(store.confirm('r1', 'b', grant.fence)).rejects.toMatchObject({ code: codes.SUPERSEDED, committedBy: null });
      await store.confirm('r1', 'a', grant.fence);
      await expect(store.confirm('r1', 'b', grant.fence)).rejects.toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
      // No record at all: who committed is not known.
      const gone = (await store.confirm('never-claimed', 'b', 1).catch((err: unknown) => err)) as { code?: string; committedBy?: unknown };
      expect(gone.code).toBe(codes.SUPERSEDED);
      expect(gone.committedBy).toBeUndefined();
    } finally {
      await store.close();
    }
  });
});
