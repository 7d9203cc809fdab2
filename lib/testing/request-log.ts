import type { RequestLog } from '../store/types.js';
import { adoption, copyInput, id, type Fixture, type Runner } from './harness.js';

// Conformance of the request log: who processed what (steps "receive and
// record" and "record the adoption").

/** Registers the tests of the request log role (`RequestLog`) on the fixture's store. */
export function requestLogTests(fixture: Fixture<RequestLog>, { describe, it, expect, beforeEach }: Runner): void {
  let store!: RequestLog;
  beforeEach(() => {
    store = fixture.store;
  });

  describe('reads', () => {
    it('resolves undefined for a request it has never seen', async () => {
      await expect(store.getRequest(id('request'))).resolves.toBeUndefined();
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
}
