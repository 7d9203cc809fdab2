import { isSupersededError } from '../errors.js';
import type { CommitArbiter, RequestLog } from '../store/types.js';
import { id, rejection, sleep, track, within, type Fixture, type Runner } from './harness.js';

// Conformance of the commit arbitration (step "first committed wins"): one
// holder at a time, leases, fences that only go up, waiters that take over.

/** What the commit arbitration's tests need: the role, and the request log's record where the commit state shows. */
export type CommitArbitration = CommitArbiter & Pick<RequestLog, 'getRequest'>;

/** Registers the tests of the commit arbitration role (`CommitArbiter`) on the fixture's store. */
export function commitArbitrationTests(fixture: Fixture<CommitArbitration>, { describe, it, expect, beforeEach }: Runner): void {
  let store!: CommitArbitration;
  beforeEach(() => {
    store = fixture.store;
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
}
