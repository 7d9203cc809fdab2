import type { SessionState } from '../store/types.js';
import { adoption, id, type Fixture, type Runner } from './harness.js';

// Conformance of the session state: candidates of the racing copies, and
// the adopted copy's promoted to the session's state, once.

/** Registers the tests of the session state role (`SessionState`) on the fixture's store. */
export function sessionStateTests(fixture: Fixture<SessionState>, { describe, it, expect, beforeEach }: Runner): void {
  let store!: SessionState;
  beforeEach(() => {
    store = fixture.store;
  });

  describe('reads', () => {
    it('resolves undefined for a session it has never seen', async () => {
      await expect(store.getSession(id('session'))).resolves.toBeUndefined();
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
}
