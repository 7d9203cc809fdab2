import type { IdempotencyStore } from '../store/types.js';
import { id, sleep, type Fixture, type Runner } from './harness.js';

// Conformance of the idempotency keys: each bound to its first attempt's
// request id for its TTL, resumed, replayed, never forgotten inside it.

/** Registers the tests of the idempotency role (`IdempotencyStore`) on the fixture's store. */
export function idempotencyTests(fixture: Fixture<IdempotencyStore>, { describe, it, expect, beforeEach }: Runner): void {
  let store!: IdempotencyStore;
  beforeEach(() => {
    store = fixture.store;
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
}
