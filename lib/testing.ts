import { randomUUID } from 'node:crypto';
import type * as JestGlobals from '@jest/globals';
import { codes, isRedundantProxyError, isSupersededError } from './errors.js';
import type { RecordCopyInput, SessionStore } from './store/types.js';

// The conformance suite of `SessionStore`: what `MemorySessionStore` does,
// written so that any store can be held to it. It only uses the interface,
// real time (a store in another process has no injectable clock) and fresh
// random ids in every test (a persistent store keeps data between runs).

export interface TestSessionStoreOptions {
  /**
   * Shown in the name of the `describe` block.
   * @default 'SessionStore'
   */
  name?: string;
  /**
   * Runs after each test, after the suite has closed the store: release what
   * the store does not own itself, such as a Redis client you created.
   * @default nothing
   */
  destroy?: (store: SessionStore) => Promise<void>;
}

/**
 * Registers jest tests (with the runner's global `describe`/`it`) that check a
 * `SessionStore` implementation. Call it at the top level of a test file.
 * `createStore` runs before each test and must return a fresh, open store;
 * the suite closes it after each test (so `close()` must tolerate a second
 * call).
 *
 * @example
 * import { testSessionStore } from 'redundant-proxy/testing';
 * testSessionStore(() => new MyStore(), { name: 'MyStore' });
 */
export function testSessionStore(
  createStore: () => SessionStore | Promise<SessionStore>,
  options: TestSessionStoreOptions = {},
): void {
  const { name = 'SessionStore', destroy } = options;
  const { describe, it, expect, beforeEach, afterEach } = runnerGlobals();

  describe(`${name} conformance`, () => {
    let store: SessionStore;

    beforeEach(async () => {
      store = await createStore();
    });

    afterEach(async () => {
      await store.close();
      await destroy?.(store);
    });

    describe('reads', () => {
      it('resolves undefined for a request or session it has never seen', async () => {
        await expect(store.getRequest(id('request'))).resolves.toBeUndefined();
        await expect(store.getSession(id('session'))).resolves.toBeUndefined();
      });
    });

    describe('recordCopy (step: receive and record)', () => {
      it('creates the request record from the first copy, as plain JSON data', async () => {
        const input = copyInput({ index: 1, of: 2, update: true });
        const before = Date.now();
        await expect(store.recordCopy(input)).resolves.toEqual({ duplicate: false });
        const record = await store.getRequest(input.requestId);
        expect(record).toEqual({
          requestId: input.requestId,
          sessionId: input.sessionId,
          update: true,
          copies: [{ duplicateId: input.duplicateId, upstreamId: input.upstreamId, index: 1, of: 2, receivedAt: expect.any(Number) }],
          adopted: null,
          cancelled: [],
          commit: { state: 'none' },
        });
        expect(record?.copies[0]?.receivedAt).toBeGreaterThanOrEqual(before - 60_000);
        expect(JSON.parse(JSON.stringify(record))).toEqual(record);
      });

      it('keeps copies in arrival order', async () => {
        const first = copyInput({ index: 1, of: 3 });
        const requestId = first.requestId;
        await store.recordCopy(first);
        await store.recordCopy(copyInput({ requestId, duplicateId: 'c', upstreamId: 'up-c', index: 3, of: 3 }));
        await store.recordCopy(copyInput({ requestId, duplicateId: 'b', upstreamId: 'up-b', index: 2, of: 3 }));
        const record = await store.getRequest(requestId);
        expect(record?.copies.map((c) => c.duplicateId)).toEqual([first.duplicateId, 'c', 'b']);
        expect(record?.copies.map((c) => c.upstreamId)).toEqual([first.upstreamId, 'up-c', 'up-b']);
      });

      it('reports a replayed copy as a duplicate and changes nothing', async () => {
        const input = copyInput();
        await store.recordCopy(input);
        const before = await store.getRequest(input.requestId);
        await expect(store.recordCopy({ ...input, upstreamId: 'elsewhere', index: 2, sessionId: id('other') })).resolves.toEqual({ duplicate: true });
        await expect(store.getRequest(input.requestId)).resolves.toEqual(before);
      });

      it('returns copies of its records: changing one does not change the store', async () => {
        const input = copyInput();
        await store.recordCopy(input);
        const record = await store.getRequest(input.requestId);
        if (!record) throw new Error('record missing');
        record.copies.push({ ...record.copies[0]!, duplicateId: 'forged' });
        record.cancelled.push('forged');
        record.commit = { state: 'committed', holder: 'forged', fence: 1, committedAt: 1 };
        const again = await store.getRequest(input.requestId);
        expect(again?.copies).toHaveLength(1);
        expect(again?.cancelled).toEqual([]);
        expect(again?.commit).toEqual({ state: 'none' });
      });
    });

    describe('recordAdoption (step: record the adoption)', () => {
      it('records which copies and upstreams produced the adopted answer', async () => {
        const input = copyInput();
        await store.recordCopy(input);
        await store.recordAdoption(adoption(input.requestId, input.sessionId, [input.duplicateId], [input.upstreamId]));
        const record = await store.getRequest(input.requestId);
        expect(record?.adopted).toEqual({ duplicateIds: [input.duplicateId], upstreamIds: [input.upstreamId], at: expect.any(Number) });
        expect(JSON.parse(JSON.stringify(record))).toEqual(record);
      });

      it('creates the record of a request it has never seen', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        await store.recordAdoption({ requestId, sessionId, update: true, duplicateIds: ['a'], upstreamIds: ['up-a'] });
        await expect(store.getRequest(requestId)).resolves.toEqual({
          requestId,
          sessionId,
          update: true,
          copies: [],
          adopted: { duplicateIds: ['a'], upstreamIds: ['up-a'], at: expect.any(Number) },
          cancelled: [],
          commit: { state: 'none' },
        });
      });

      it('is harmless twice, and the first adoption wins over a different one', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        await store.recordAdoption(adoption(requestId, sessionId, ['a'], ['up-a']));
        const first = await store.getRequest(requestId);
        await store.recordAdoption(adoption(requestId, sessionId, ['a'], ['up-a']));
        await store.recordAdoption(adoption(requestId, sessionId, ['b'], ['up-b']));
        await expect(store.getRequest(requestId)).resolves.toEqual(first);
      });
    });

    describe('session candidates', () => {
      it('promotes the adopted copy\'s candidate saved before the adoption, and no other', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        await store.saveCandidate(sessionId, requestId, 'a', { cart: ['from a'] });
        await store.saveCandidate(sessionId, requestId, 'b', { cart: ['from b'] });
        await expect(store.getSession(sessionId)).resolves.toBeUndefined();
        await store.recordAdoption(adoption(requestId, sessionId, ['b'], ['up-b']));
        const session = await store.getSession(sessionId);
        expect(session).toEqual({ sessionId, data: { cart: ['from b'] }, version: 1, updatedAt: expect.any(Number) });
        expect(JSON.parse(JSON.stringify(session))).toEqual(session);
      });

      it('promotes the adopted copy\'s candidate saved after the adoption, and discards late losers', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        await store.recordAdoption(adoption(requestId, sessionId, ['a'], ['up-a']));
        await store.saveCandidate(sessionId, requestId, 'b', { who: 'b' });
        await expect(store.getSession(sessionId)).resolves.toBeUndefined();
        await store.saveCandidate(sessionId, requestId, 'a', { who: 'a' });
        await expect(store.getSession(sessionId)).resolves.toMatchObject({ data: { who: 'a' }, version: 1 });
        await store.saveCandidate(sessionId, requestId, 'c', { who: 'c' });
        await expect(store.getSession(sessionId)).resolves.toMatchObject({ data: { who: 'a' }, version: 1 });
      });

      it('discards the losers\' candidates saved before the adoption', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        await store.saveCandidate(sessionId, requestId, 'loser', { who: 'loser' });
        // The adopted copy left no candidate: the session stays as it was.
        await store.recordAdoption(adoption(requestId, sessionId, ['winner'], ['up-w']));
        await expect(store.getSession(sessionId)).resolves.toBeUndefined();
        await store.recordAdoption(adoption(requestId, sessionId, ['loser'], ['up-l']));
        await expect(store.getSession(sessionId)).resolves.toBeUndefined();
      });

      it('promotes only the first of several adopted copies (a quorum)', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        await store.saveCandidate(sessionId, requestId, 'a', { who: 'a' });
        await store.saveCandidate(sessionId, requestId, 'b', { who: 'b' });
        await store.recordAdoption(adoption(requestId, sessionId, ['b', 'a'], ['up-b', 'up-a']));
        await expect(store.getSession(sessionId)).resolves.toMatchObject({ data: { who: 'b' }, version: 1 });
      });

      it('promotes once, however often the adoption or the candidate arrives', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        await store.saveCandidate(sessionId, requestId, 'a', { n: 1 });
        await store.recordAdoption(adoption(requestId, sessionId, ['a'], ['up-a']));
        await store.recordAdoption(adoption(requestId, sessionId, ['a'], ['up-a']));
        await store.saveCandidate(sessionId, requestId, 'a', { n: 2 });
        await expect(store.getSession(sessionId)).resolves.toMatchObject({ data: { n: 1 }, version: 1 });
      });

      it('counts versions up across the requests of a session, each replacing the data', async () => {
        const sessionId = id('session');
        for (let n = 1; n <= 3; n++) {
          const requestId = id('request');
          await store.saveCandidate(sessionId, requestId, `copy-${n}`, n === 1 ? { first: true } : { n });
          await store.recordAdoption(adoption(requestId, sessionId, [`copy-${n}`], ['up']));
          await expect(store.getSession(sessionId)).resolves.toEqual({ sessionId, data: n === 1 ? { first: true } : { n }, version: n, updatedAt: expect.any(Number) });
        }
      });

      it('keeps its own copy of saved data and returns copies of sessions', async () => {
        const requestId = id('request');
        const sessionId = id('session');
        const data = { nested: { value: 1 } };
        await store.saveCandidate(sessionId, requestId, 'a', data);
        data.nested.value = 2;
        await store.recordAdoption(adoption(requestId, sessionId, ['a'], ['up-a']));
        const session = await store.getSession(sessionId);
        expect(session?.data).toEqual({ nested: { value: 1 } });
        (session!.data.nested as { value: number }).value = 3;
        session!.version = 99;
        await expect(store.getSession(sessionId)).resolves.toMatchObject({ data: { nested: { value: 1 } }, version: 1 });
      });

      it('saves nothing for a request without a session (\'\')', async () => {
        const requestId = id('request');
        await store.saveCandidate('', requestId, 'a', { leak: true });
        await store.recordAdoption(adoption(requestId, '', ['a'], ['up-a']));
        await expect(store.getSession('')).resolves.toBeUndefined();
      });
    });

    describe('recordCancelled', () => {
      it('adds each stopped copy once', async () => {
        const input = copyInput();
        await store.recordCopy(input);
        await store.recordCancelled(input.requestId, 'b');
        await store.recordCancelled(input.requestId, 'c');
        await store.recordCancelled(input.requestId, 'b');
        await expect(store.getRequest(input.requestId)).resolves.toMatchObject({ cancelled: ['b', 'c'] });
      });
    });

    describe('claim / confirm / release', () => {
      it('grants a free claim with a fence and a lease, and records it', async () => {
        const requestId = id('request');
        const before = Date.now();
        const grant = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        expect(Number.isFinite(grant.fence)).toBe(true);
        expect(grant.leaseUntil).toBeGreaterThanOrEqual(before + 10_000 - 60_000);
        await expect(store.getRequest(requestId)).resolves.toMatchObject({
          commit: { state: 'claimed', holder: 'a', fence: grant.fence, leaseUntil: grant.leaseUntil },
        });
        await store.confirm(requestId, 'a', grant.fence);
        const record = await store.getRequest(requestId);
        expect(record?.commit).toEqual({ state: 'committed', holder: 'a', fence: grant.fence, committedAt: expect.any(Number) });
        expect(JSON.parse(JSON.stringify(record))).toEqual(record);
      });

      it('gives the holder its own grant back when it asks again', async () => {
        const requestId = id('request');
        const grant = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        await expect(store.claim(requestId, 'a', { leaseMs: 10_000 })).resolves.toEqual(grant);
        await store.release(requestId, 'a', grant.fence);
      });

      it('grants exactly one of 10 concurrent claimers; its confirm supersedes all others', async () => {
        const requestId = id('request');
        const claims = Array.from({ length: 10 }, (_, n) => track(store.claim(requestId, `copy-${n}`, { leaseMs: 10_000 })));
        await within(Promise.race(claims.map((c) => c.settled)), 5_000, 'a first grant');
        await sleep(50);
        const granted = claims.filter((c) => c.status === 'fulfilled');
        expect(granted).toHaveLength(1);
        expect(claims.filter((c) => c.status === 'rejected')).toHaveLength(0);
        const winner = granted[0]!;
        const holder = `copy-${claims.indexOf(winner)}`;
        await store.confirm(requestId, holder, winner.value!.fence);
        await within(Promise.all(claims.map((c) => c.settled)), 5_000, 'the waiters to be turned away');
        for (const claim of claims) {
          if (claim === winner) continue;
          expect(claim.status).toBe('rejected');
          expect(isSupersededError(claim.reason)).toBe(true);
        }
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'committed', holder, fence: winner.value!.fence } });
      });

      it('turns every claim away at once after a commit, the committer\'s too', async () => {
        const requestId = id('request');
        const grant = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        await store.confirm(requestId, 'a', grant.fence);
        expect(isSupersededError(await rejection(store.claim(requestId, 'b', { leaseMs: 10_000 })))).toBe(true);
        expect(isSupersededError(await rejection(store.claim(requestId, 'a', { leaseMs: 10_000 })))).toBe(true);
      });

      it('hands a released claim to exactly one waiter, with a higher fence', async () => {
        const requestId = id('request');
        const first = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        const b = track(store.claim(requestId, 'b', { leaseMs: 10_000 }));
        const c = track(store.claim(requestId, 'c', { leaseMs: 10_000 }));
        await sleep(20);
        expect([b.status, c.status]).toEqual(['pending', 'pending']);
        await store.release(requestId, 'a', first.fence);
        await within(Promise.race([b.settled, c.settled]), 5_000, 'a waiter to take over');
        await sleep(50);
        const taken = [b, c].filter((w) => w.status === 'fulfilled');
        expect(taken).toHaveLength(1);
        const next = taken[0]!;
        const other = next === b ? c : b;
        expect(other.status).toBe('pending');
        expect(next.value!.fence).toBeGreaterThan(first.fence);
        const holder = next === b ? 'b' : 'c';
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder, fence: next.value!.fence } });
        // The old holder's fence is worth nothing now.
        expect(isSupersededError(await rejection(store.confirm(requestId, 'a', first.fence)))).toBe(true);
        await store.confirm(requestId, holder, next.value!.fence);
        await within(other.settled, 5_000, 'the last waiter to be turned away');
        expect(isSupersededError(other.reason)).toBe(true);
      });

      it('lets a waiter take over when the holder\'s lease runs out', async () => {
        const requestId = id('request');
        const first = await store.claim(requestId, 'crashed', { leaseMs: 100 });
        const waiter = track(store.claim(requestId, 'b', { leaseMs: 10_000 }));
        await sleep(20);
        expect(waiter.status).toBe('pending');
        await within(waiter.settled, 5_000, 'the lease to run out');
        expect(waiter.status).toBe('fulfilled');
        expect(waiter.value!.fence).toBeGreaterThan(first.fence);
        expect(isSupersededError(await rejection(store.confirm(requestId, 'crashed', first.fence)))).toBe(true);
        await store.confirm(requestId, 'b', waiter.value!.fence);
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'committed', holder: 'b' } });
      });

      it('lets a holder past its lease confirm while nobody took over', async () => {
        const requestId = id('request');
        const grant = await store.claim(requestId, 'slow', { leaseMs: 20 });
        await sleep(60);
        await store.confirm(requestId, 'slow', grant.fence);
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'committed', holder: 'slow', fence: grant.fence } });
      });

      it('lets anyone claim a request whose lease ran out with nobody waiting', async () => {
        const requestId = id('request');
        const first = await store.claim(requestId, 'a', { leaseMs: 20 });
        await sleep(60);
        const second = await within(store.claim(requestId, 'b', { leaseMs: 10_000 }), 5_000, 'the expired claim');
        expect(second.fence).toBeGreaterThan(first.fence);
        await store.release(requestId, 'b', second.fence);
      });

      it('hands out fences that only go up, across requests', async () => {
        const fences: number[] = [];
        for (let n = 0; n < 5; n++) {
          const requestId = id('request');
          const grant = await store.claim(requestId, 'a', { leaseMs: 10_000 });
          fences.push(grant.fence);
          if (n % 2 === 0) await store.confirm(requestId, 'a', grant.fence);
          else await store.release(requestId, 'a', grant.fence);
        }
        const again = await store.claim(id('request'), 'a', { leaseMs: 10_000 });
        fences.push(again.fence);
        for (let n = 1; n < fences.length; n++) expect(fences[n]).toBeGreaterThan(fences[n - 1]!);
      });

      it('stops waiting when the signal aborts, with its reason, and leaves the queue', async () => {
        const requestId = id('request');
        const first = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        const controller = new AbortController();
        const waiter = track(store.claim(requestId, 'b', { leaseMs: 10_000, signal: controller.signal }));
        await sleep(20);
        expect(waiter.status).toBe('pending');
        const reason = new Error('client went away');
        controller.abort(reason);
        await within(waiter.settled, 5_000, 'the abort');
        expect(waiter.reason).toBe(reason);
        // The aborted copy does not take the released claim.
        await store.release(requestId, 'a', first.fence);
        await sleep(20);
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'none' } });
      });

      it('rejects at once with an already aborted signal, claiming nothing', async () => {
        const requestId = id('request');
        const reason = new Error('already gone');
        await expect(store.claim(requestId, 'a', { leaseMs: 10_000, signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
        const record = await store.getRequest(requestId);
        expect(record === undefined || record.commit.state === 'none').toBe(true);
      });

      it('refuses a confirm from anyone but the holder with its fence', async () => {
        const requestId = id('request');
        expect(isSupersededError(await rejection(store.confirm(requestId, 'a', 1)))).toBe(true);
        const grant = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        expect(isSupersededError(await rejection(store.confirm(requestId, 'b', grant.fence)))).toBe(true);
        expect(isSupersededError(await rejection(store.confirm(requestId, 'a', grant.fence + 1)))).toBe(true);
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'a', fence: grant.fence } });
        await store.confirm(requestId, 'a', grant.fence);
        // A retried confirm by the committer is harmless.
        await expect(store.confirm(requestId, 'a', grant.fence)).resolves.toBeUndefined();
      });

      it('a refused confirm says who committed, or that nobody did, if it says anything (`committedBy`)', async () => {
        const requestId = id('request');
        const grant = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        // Nobody has committed yet: null, or undefined for a store that does not say.
        const early = (await rejection(store.confirm(requestId, 'b', grant.fence))) as { committedBy?: unknown };
        expect(isSupersededError(early)).toBe(true);
        expect([null, undefined]).toContain(early.committedBy);
        await store.confirm(requestId, 'a', grant.fence);
        const late = (await rejection(store.confirm(requestId, 'b', grant.fence))) as { committedBy?: unknown };
        expect(isSupersededError(late)).toBe(true);
        expect(['a', undefined]).toContain(late.committedBy);
      });

      it('ignores a release from anyone but the holder with its fence', async () => {
        const requestId = id('request');
        await expect(store.release(requestId, 'a', 1)).resolves.toBeUndefined();
        const grant = await store.claim(requestId, 'a', { leaseMs: 10_000 });
        await store.release(requestId, 'b', grant.fence);
        await store.release(requestId, 'a', grant.fence + 1);
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'a', fence: grant.fence } });
        await store.release(requestId, 'a', grant.fence);
        await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'none' } });
      });
    });

    describe('idempotency keys', () => {
      const answer = { status: 201, headers: { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'] }, body: Buffer.from('{"id":7}').toString('base64') };
      const LOCK = 10_000;
      const TTL = 60_000;

      it('starts a new key under the caller\'s request id, attempt 1, and reports it in flight to a retry', async () => {
        const key = id('key');
        await expect(store.beginIdempotent(key, 'fp1', 'r1', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 1 });
        await expect(store.beginIdempotent(key, 'fp1', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
      });

      it('reports a mismatch for another fingerprint, whether the key is in flight, completed or pending', async () => {
        const inFlight = id('key');
        await store.beginIdempotent(inFlight, 'fp1', 'r1', LOCK, TTL);
        await expect(store.beginIdempotent(inFlight, 'fp2', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'mismatch' });

        const completed = id('key');
        await store.beginIdempotent(completed, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(completed, 'r1', answer, TTL, 1);
        await expect(store.beginIdempotent(completed, 'fp2', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'mismatch' });

        const pending = id('key');
        await store.beginIdempotent(pending, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(pending, 'r1', null, TTL, 1);
        await expect(store.beginIdempotent(pending, 'fp2', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'mismatch' });
        // The mismatch took nothing over: the same request still resumes it.
        await expect(store.beginIdempotent(pending, 'fp1', 'r3', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
      });

      it('replays the completed answer exactly, under the first request id, as a copy', async () => {
        const key = id('key');
        const mine = structuredClone(answer);
        await store.beginIdempotent(key, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(key, 'r1', mine, TTL, 1);
        mine.headers['content-type'] = 'changed';
        const again = await store.beginIdempotent(key, 'fp1', 'r2', LOCK, TTL);
        expect(again).toEqual({ state: 'completed', requestId: 'r1', answer });
        expect(JSON.parse(JSON.stringify(again))).toEqual(again);
        (again as { answer: { status: number } }).answer.status = 599;
        await expect(store.beginIdempotent(key, 'fp1', 'r3', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r1', answer });
      });

      it('completes a key once: a second completion, with or without an answer, changes nothing', async () => {
        const key = id('key');
        await store.beginIdempotent(key, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(key, 'r1', answer, TTL, 1);
        await store.completeIdempotent(key, 'r1', { ...answer, status: 500 }, TTL, 1);
        await store.completeIdempotent(key, 'r1', null, TTL, 1);
        await expect(store.beginIdempotent(key, 'fp1', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r1', answer });

        // A pending key is not in flight either: only the attempt that resumes it completes it.
        const pending = id('key');
        await store.beginIdempotent(pending, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(pending, 'r1', null, TTL, 1);
        await store.completeIdempotent(pending, 'r1', answer, TTL, 1);
        await expect(store.beginIdempotent(pending, 'fp1', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
      });

      it('keeps a key completed without an answer: the next retry resumes the same request id, attempt 2', async () => {
        const key = id('key');
        await store.beginIdempotent(key, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(key, 'r1', null, TTL, 1);
        await expect(store.beginIdempotent(key, 'fp1', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
        // The resumed attempt holds the key like the first did.
        await expect(store.beginIdempotent(key, 'fp1', 'r3', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
        await store.completeIdempotent(key, 'r1', answer, TTL, 2);
        await expect(store.beginIdempotent(key, 'fp1', 'r4', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r1', answer });
      });

      it('ignores a completion from a request id that does not hold the key', async () => {
        const key = id('key');
        await store.beginIdempotent(key, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(key, 'r9', answer, TTL, 1);
        await store.completeIdempotent(key, 'r9', null, TTL, 1);
        await expect(store.beginIdempotent(key, 'fp1', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
      });

      it('keeps a key whose lock ran out: not forgotten, still refuses another fingerprint', async () => {
        const key = id('key');
        await store.beginIdempotent(key, 'fp1', 'r1', 50, TTL);
        await sleep(120);
        await expect(store.beginIdempotent(key, 'fp2', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'mismatch' });
      });

      it('resumes a key whose lock ran out under its first request id, attempt 2; the stale attempt\'s completion is a no-op', async () => {
        const key = id('key');
        await store.beginIdempotent(key, 'fp1', 'r1', 50, TTL);
        await sleep(120);
        await expect(store.beginIdempotent(key, 'fp1', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
        // Attempt 1 came back too late: with an answer or without, it changes nothing.
        await store.completeIdempotent(key, 'r1', answer, TTL, 1);
        await expect(store.beginIdempotent(key, 'fp1', 'r3', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
        await store.completeIdempotent(key, 'r1', null, TTL, 1);
        await expect(store.beginIdempotent(key, 'fp1', 'r4', LOCK, TTL)).resolves.toEqual({ state: 'in-flight', requestId: 'r1' });
        // Attempt 2, which holds it, ends it.
        const late = { ...answer, status: 200 };
        await store.completeIdempotent(key, 'r1', late, TTL, 2);
        await expect(store.beginIdempotent(key, 'fp1', 'r5', LOCK, TTL)).resolves.toEqual({ state: 'completed', requestId: 'r1', answer: late });
      });

      it('lets exactly one of 10 concurrent retries take over a key whose lock ran out', async () => {
        const key = id('key');
        await store.beginIdempotent(key, 'fp', 'r0', 50, TTL);
        await sleep(120);
        const results = await Promise.all(Array.from({ length: 10 }, (_, i) => store.beginIdempotent(key, 'fp', `r${i + 1}`, LOCK, TTL)));
        expect(results.filter((r) => r.state === 'started')).toEqual([{ state: 'started', requestId: 'r0', attempt: 2 }]);
        expect(results.filter((r) => r.state === 'in-flight')).toHaveLength(9);
      });

      it('forgets a key once its TTL has passed, whatever its state, and then starts it anew', async () => {
        const completed = id('key');
        await store.beginIdempotent(completed, 'fp1', 'r1', LOCK, TTL);
        // The completion's TTL counts from the completion.
        await store.completeIdempotent(completed, 'r1', answer, 100, 1);
        const pending = id('key');
        await store.beginIdempotent(pending, 'fp1', 'r1', LOCK, TTL);
        await store.completeIdempotent(pending, 'r1', null, 100, 1);
        const inFlight = id('key');
        await store.beginIdempotent(inFlight, 'fp1', 'r1', 50, 100);
        await expect(store.beginIdempotent(completed, 'fp1', 'r2', LOCK, TTL)).resolves.toMatchObject({ state: 'completed' });
        await sleep(250);
        for (const key of [completed, pending, inFlight]) {
          await expect(store.beginIdempotent(key, 'fp2', 'r2', LOCK, TTL)).resolves.toEqual({ state: 'started', requestId: 'r2', attempt: 1 });
        }
      });

      it('lets exactly one of 10 concurrent requests start a new key', async () => {
        const key = id('key');
        const results = await Promise.all(Array.from({ length: 10 }, (_, i) => store.beginIdempotent(key, 'fp', `r${i}`, LOCK, TTL)));
        const started = results.filter((r) => r.state === 'started');
        expect(started).toHaveLength(1);
        const owner = (started[0] as { requestId: string }).requestId;
        expect(started[0]).toEqual({ state: 'started', requestId: owner, attempt: 1 });
        expect(results.filter((r) => r.state === 'in-flight')).toEqual(Array.from({ length: 9 }, () => ({ state: 'in-flight', requestId: owner })));
      });
    });

    describe('close', () => {
      it('rejects waiting claims and every later call with a CLOSED error', async () => {
        const requestId = id('request');
        await store.claim(requestId, 'a', { leaseMs: 10_000 });
        const waiter = track(store.claim(requestId, 'b', { leaseMs: 10_000 }));
        await sleep(20);
        await store.close();
        await within(waiter.settled, 5_000, 'the waiter to be rejected');
        expect(isClosed(waiter.reason)).toBe(true);
        expect(isClosed(await rejection(store.recordCopy(copyInput())))).toBe(true);
        expect(isClosed(await rejection(store.getRequest(requestId)))).toBe(true);
        expect(isClosed(await rejection(store.claim(id('request'), 'a', { leaseMs: 10_000 })))).toBe(true);
        // Closing again is harmless (the suite closes every store after each test).
        await expect(store.close()).resolves.toBeUndefined();
      });
    });
  });
}

type Runner = Pick<typeof JestGlobals, 'describe' | 'it' | 'expect' | 'beforeEach' | 'afterEach'>;

// The runner's own globals, not an import of '@jest/globals': that import
// only resolves inside jest's ESM runtime, while globals work in jest's ESM
// and CommonJS modes alike (and in any runner with jest-compatible globals).
function runnerGlobals(): Runner {
  const g = globalThis as unknown as Partial<Runner>;
  for (const fn of ['describe', 'it', 'expect', 'beforeEach', 'afterEach'] as const) {
    if (typeof g[fn] !== 'function') {
      throw new Error(`redundant-proxy/testing: testSessionStore() registers tests: call it from a jest test file (no global \`${fn}\` here)`);
    }
  }
  return g as Runner;
}

interface Tracked<T> {
  status: 'pending' | 'fulfilled' | 'rejected';
  value: T | undefined;
  reason: unknown;
  /** Resolves (never rejects) once the promise settled. */
  settled: Promise<void>;
}

/** Follows a promise without awaiting it, and handles its rejection at once. */
function track<T>(promise: Promise<T>): Tracked<T> {
  const tracked: Tracked<T> = { status: 'pending', value: undefined, reason: undefined, settled: Promise.resolve() };
  tracked.settled = promise.then(
    (value) => {
      tracked.status = 'fulfilled';
      tracked.value = value;
    },
    (reason: unknown) => {
      tracked.status = 'rejected';
      tracked.reason = reason;
    },
  );
  return tracked;
}

/** The reason a promise rejects with; fails when it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (reason) {
    return reason;
  }
  throw new Error('expected the call to reject, but it resolved');
}

/** Fails with a clear message rather than the test's timeout; clears its timer either way. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function id(kind: string): string {
  return `rp-test-${kind}-${randomUUID()}`;
}

function isClosed(error: unknown): boolean {
  return isRedundantProxyError(error) && error.code === codes.CLOSED;
}

function copyInput(overrides: Partial<RecordCopyInput> = {}): RecordCopyInput {
  return {
    requestId: id('request'),
    duplicateId: id('copy'),
    upstreamId: 'up-a',
    index: 1,
    of: 1,
    update: false,
    sessionId: id('session'),
    ...overrides,
  };
}

function adoption(requestId: string, sessionId: string, duplicateIds: string[], upstreamIds: string[]) {
  return { requestId, sessionId, update: false, duplicateIds, upstreamIds };
}

