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
      ['maxIdempotencyKeys', { maxIdempotencyKeys: 0 }],
      ['maxIdempotencyKeys', { maxIdempotencyKeys: 2.5 }],
      ['maxIdempotencyKeys', { maxIdempotencyKeys: '100' }],
      ['maxIdempotencyBytes', { maxIdempotencyBytes: -1 }],
      ['maxIdempotencyBytes', { maxIdempotencyBytes: Infinity }],
      ['maxIdempotencyBytes', { maxIdempotencyBytes: Number.NaN }],
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
      expect(open({ max: 1, ttl: 1, maxIdempotencyKeys: 1, maxIdempotencyBytes: 1, now: () => 5 }).size).toBe(0);
    });

    it('rejects an idempotency lock or TTL that is not a positive number of ms, naming it', async () => {
      const store = open();
      await expect(store.beginIdempotent('k', 'fp', 'r', 0, 1_000)).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'lockMs' });
      await expect(store.beginIdempotent('k', 'fp', 'r', 1_000, Number.NaN)).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'ttlMs' });
      await expect(store.completeIdempotent('k', 'r', null, Infinity, 1)).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'ttlMs' });
      expect(store.idempotencyUsage).toEqual({ keys: 0, bytes: 0 });
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

  describe('idempotency keys, by the injected clock', () => {
    const answer = { status: 201, headers: { 'content-type': 'text/plain' }, body: 'b2s=' };
    const LOCK = 1_000;
    const TTL = 60_000;

    function isStoreFull(error: unknown): boolean {
      return isRedundantProxyError(error) && error.code === codes.STORE_FULL && (error as { status?: number }).status === 503;
    }

    it('keeps a key its TTL, not its lock, and resumes it under the first request id when the lock runs out', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ now: clock.now });
      await expect(store.beginIdempotent('k', 'fp', 'r1', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 1 });
      clock.t += LOCK - 1;
      await expect(store.beginIdempotent('k', 'fp', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
      clock.t += 1;
      await expect(store.beginIdempotent('k', 'fp', 'r3', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
      await store.completeIdempotent('k', 'r1', null, TTL, 2);
      // Pending: kept TTL from the completion, then resumed.
      clock.t += TTL - 1;
      await expect(store.beginIdempotent('k', 'fp', 'r4', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 3 });
      await store.completeIdempotent('k', 'r1', answer, TTL, 3);
      clock.t += TTL - 1;
      await expect(store.beginIdempotent('k', 'fp', 'r5', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r1', answer });
      clock.t += 1;
      await expect(store.beginIdempotent('k', 'fp', 'r6', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r6', attempt: 1 });
    });

    it('keeps a key as long as an attempt holds it, even past its TTL', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ now: clock.now });
      // A lock longer than the TTL: the key lives until the lock ends.
      await store.beginIdempotent('a', 'fp', 'r1', 1_000, 100);
      clock.t += 999;
      await expect(store.beginIdempotent('a', 'fp', 'r2', 1_000, 100)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
      // A takeover near the end of the TTL holds the key for its whole lock.
      await store.beginIdempotent('b', 'fp', 'r1', 100, 1_000);
      clock.t += 900;
      await expect(store.beginIdempotent('b', 'fp', 'r3', 1_000, 1_000)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
      clock.t += 999;
      await expect(store.beginIdempotent('b', 'fp', 'r4', 1_000, 1_000)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
      clock.t += 1;
      await expect(store.beginIdempotent('b', 'fp', 'r5', 1_000, 1_000)).resolves.toEqual({ state: 'started', requestId: 'r5', attempt: 1 });
    });

    it('keeps keys for their TTL after more than `max` requests (no LRU)', async () => {
      const store = open({ max: 100 });
      for (let n = 0; n < 1_000; n++) {
        await store.recordCopy(copy(`r${n}`));
        await store.beginIdempotent(`k${n}`, 'fp', `r${n}`, LOCK, TTL);
        await store.completeIdempotent(`k${n}`, `r${n}`, { ...answer, status: 200 + (n % 100) }, TTL, 1);
      }
      for (const n of [0, 1, 500, 999]) {
        await expect(store.beginIdempotent(`k${n}`, 'fp', 'retry', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: `r${n}`, answer: { ...answer, status: 200 + (n % 100) } });
      }
      expect(store.idempotencyUsage.keys).toBe(1_000);
    });

    it('replays a retry after 10,000 other completed keys (the old LRU forgot it)', async () => {
      const store = open({ maxIdempotencyKeys: 20_000 });
      await store.beginIdempotent('first', 'fp', 'r-first', LOCK, TTL);
      await store.completeIdempotent('first', 'r-first', answer, TTL, 1);
      for (let n = 0; n < 10_001; n++) {
        await store.beginIdempotent(`k${n}`, 'fp', `r${n}`, LOCK, TTL);
        await store.completeIdempotent(`k${n}`, `r${n}`, answer, TTL, 1);
      }
      await expect(store.beginIdempotent('first', 'fp', 'r-retry', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r-first', answer });
    });

    it('refuses a new key over maxIdempotencyKeys with RP_ERR_STORE_FULL (503), and forgets none of the live ones', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ maxIdempotencyKeys: 3, now: clock.now });
      await store.beginIdempotent('completed', 'fp', 'r1', LOCK, TTL);
      await store.completeIdempotent('completed', 'r1', answer, TTL, 1);
      await store.beginIdempotent('pending', 'fp', 'r2', LOCK, TTL);
      await store.completeIdempotent('pending', 'r2', null, TTL, 1);
      await store.beginIdempotent('in-flight', 'fp', 'r3', LOCK, TTL);
      expect(store.idempotencyUsage.keys).toBe(3);

      const refused = await store.beginIdempotent('fourth', 'fp', 'r4', LOCK, TTL).catch((err: unknown) => err);
      expect(isStoreFull(refused)).toBe(true);
      expect((refused as Error).message).toContain('maxIdempotencyKeys');
      // The refusal kept nothing of the fourth key.
      expect(store.idempotencyUsage.keys).toBe(3);

      // The three keep working while the store is full.
      await expect(store.beginIdempotent('completed', 'fp', 'x', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r1', answer });
      await expect(store.beginIdempotent('pending', 'fp', 'x', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r2', attempt: 2 });
      await expect(store.beginIdempotent('in-flight', 'fp', 'x', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r3' });
      await store.completeIdempotent('in-flight', 'r3', answer, TTL, 1);
      await expect(store.beginIdempotent('in-flight', 'fp', 'x', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r3', answer });

      // Once their TTL has passed, a new key fits again.
      clock.t += TTL - 1;
      expect(isStoreFull(await store.beginIdempotent('fourth', 'fp', 'r4', LOCK, TTL).catch((err: unknown) => err))).toBe(true);
      clock.t += 1;
      await expect(store.beginIdempotent('fourth', 'fp', 'r4', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r4', attempt: 1 });
      expect(store.idempotencyUsage.keys).toBe(1);
    });

    it('counts bytes as documented: key, fingerprint and request id, 128 of overhead, the answer\'s body and headers JSON', async () => {
      const store = open();
      await store.beginIdempotent('key', 'fingerprint', 'request', LOCK, TTL);
      expect(store.idempotencyUsage).toEqual({ keys: 1, bytes: 3 + 11 + 7 + 128 });
      await store.completeIdempotent('key', 'request', { status: 200, headers: { a: 'b' }, body: 'x'.repeat(1_000) }, TTL, 1);
      expect(store.idempotencyUsage).toEqual({ keys: 1, bytes: 3 + 11 + 7 + 128 + 1_000 + '{"a":"b"}'.length });
    });

    it('refuses an answer over maxIdempotencyBytes, keeps the key held, and takes a smaller one', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ maxIdempotencyBytes: 2_000, now: clock.now });
      await store.beginIdempotent('k', 'fp', 'r1', LOCK, TTL);
      const before = store.idempotencyUsage;
      const big = { status: 200, headers: {}, body: 'x'.repeat(2_000) };
      const refused = await store.completeIdempotent('k', 'r1', big, TTL, 1).catch((err: unknown) => err);
      expect(isStoreFull(refused)).toBe(true);
      expect((refused as Error).message).toContain('maxIdempotencyBytes');
      expect(store.idempotencyUsage).toEqual(before);
      // Still held by attempt 1, not completed, not free.
      await expect(store.beginIdempotent('k', 'fp', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
      const small = { status: 502, headers: {}, body: '' };
      await store.completeIdempotent('k', 'r1', small, TTL, 1);
      await expect(store.beginIdempotent('k', 'fp', 'r3', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r1', answer: small });

      // A new key whose own strings go over the bound is refused too.
      const huge = await store.beginIdempotent('y'.repeat(2_000), 'fp', 'r4', LOCK, TTL).catch((err: unknown) => err);
      expect(isStoreFull(huge)).toBe(true);
      expect((huge as Error).message).toContain('maxIdempotencyBytes');
    });

    it('keeps at most maxIdempotencyBytes of answers: 1,000 keys with 1 MiB answers under 8 MiB keep 7', async () => {
      const store = open({ maxIdempotencyBytes: 8 * 1024 * 1024 });
      const body = 'x'.repeat(1024 * 1024);
      let kept = 0;
      let refused = 0;
      for (let n = 0; n < 1_000; n++) {
        await store.beginIdempotent(`k${n}`, 'fp', `r${n}`, LOCK, TTL);
        const outcome = await store.completeIdempotent(`k${n}`, `r${n}`, { status: 200, headers: {}, body }, TTL, 1).then(() => 'kept', (err: unknown) => err);
        if (outcome === 'kept') kept++;
        else if (isStoreFull(outcome)) refused++;
      }
      expect(kept).toBe(7);
      expect(refused).toBe(993);
      expect(store.idempotencyUsage.bytes).toBeLessThanOrEqual(8 * 1024 * 1024);
      await expect(store.beginIdempotent('k0', 'fp', 'retry', LOCK, TTL)).resolves.toMatchObject({ state: 'completed', requestId: 'r0' });
      await expect(store.beginIdempotent('k999', 'fp', 'retry', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r999' });
    });

    it('refuses a full store quickly: no scan of the keys per request', async () => {
      const clock = fakeClock(1_000_000);
      const store = open({ maxIdempotencyKeys: 100_000, now: clock.now });
      for (let n = 0; n < 100_000; n++) await store.beginIdempotent(`k${n}`, 'fp', `r${n}`, LOCK, TTL + n);
      const start = performance.now();
      let refusals = 0;
      for (let n = 0; n < 10_000; n++) {
        // The clock moves, but no key expires: each request must look, and find none.
        clock.t += 1;
        await store.beginIdempotent(`new${n}`, 'fp', `x${n}`, LOCK, TTL).catch((err: unknown) => {
          if (isStoreFull(err)) refusals++;
        });
      }
      // About 10 µs each; a look at each of 100,000 keys per refusal would take well over 10 s.
      expect(performance.now() - start).toBeLessThan(3_000);
      expect(refusals).toBe(10_000);
      // Then they all expire: the next new key sweeps them and fits.
      clock.t += TTL + 100_000;
      await expect(store.beginIdempotent('late', 'fp', 'r', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r', attempt: 1 });
      expect(store.idempotencyUsage.keys).toBe(1);
    });

    it('expires each key at its own time, however its expiry moved (a model check over generated steps)', async () => {
      // A seeded generator (no dependency): the same steps on every run.
      let seed = 12345;
      const random = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed % n;
      };
      const clock = fakeClock(0);
      const store = open({ now: clock.now });
      type Model = { fp: string; rid: string; attempt: number; state: 'in-flight' | 'pending' | 'completed'; lockUntil: number; until: number; bytes: number };
      const answerBytes = answer.body.length + JSON.stringify(answer.headers).length;
      const model = new Map<string, Model>();
      const live = (key: string) => {
        const m = model.get(key);
        return m && clock.t < m.until ? m : undefined;
      };
      for (let step = 0; step < 5_000; step++) {
        clock.t += random(30);
        const key = `k${random(60)}`;
        const fp = random(10) === 0 ? 'other' : 'fp';
        const lock = 1 + random(200);
        const ttl = 1 + random(400);
        if (random(2) === 0) {
          const got = await store.beginIdempotent(key, fp, `r${step}`, lock, ttl);
          const m = live(key);
          let expected;
          if (!m) {
            model.set(key, { fp, rid: `r${step}`, attempt: 1, state: 'in-flight', lockUntil: clock.t + lock, until: clock.t + Math.max(lock, ttl), bytes: key.length + fp.length + `r${step}`.length + 128 });
            expected = { state: 'started', requestId: `r${step}`, attempt: 1 };
          } else if (m.fp !== fp) expected = { state: 'mismatch' };
          else if (m.state === 'completed') expected = { state: 'completed', requestId: m.rid, answer };
          else if (m.state === 'in-flight' && clock.t < m.lockUntil) expected = { state: 'in-flight', requestId: m.rid };
          else {
            Object.assign(m, { state: 'in-flight', attempt: m.attempt + 1, lockUntil: clock.t + lock, until: Math.max(m.until, clock.t + lock) });
            expected = { state: 'started', requestId: m.rid, attempt: m.attempt };
          }
          expect([step, got]).toEqual([step, expected]);
        } else {
          const m = live(key);
          const attempt = m && random(4) !== 0 ? m.attempt : 1 + random(3);
          const withAnswer = random(2) === 0;
          await store.completeIdempotent(key, m?.rid ?? 'r', withAnswer ? answer : null, ttl, attempt);
          if (m && m.state === 'in-flight' && m.attempt === attempt) {
            Object.assign(m, { state: withAnswer ? 'completed' : 'pending', until: clock.t + ttl, bytes: m.bytes + (withAnswer ? answerBytes : 0) });
          }
        }
        const held = [...model.keys()].map(live).filter((m) => m !== undefined);
        expect([step, store.idempotencyUsage]).toEqual([step, { keys: held.length, bytes: held.reduce((sum, m) => sum + m.bytes, 0) }]);
      }
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
