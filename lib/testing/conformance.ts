import type { Closable, IdempotencyStore, RequestLog, SessionState, SessionStore } from '../store/types.js';
import { commitArbitrationTests, type CommitArbitration } from './commit-arbitration.js';
import { copyInput, id, isClosed, rejection, sleep, track, within, withStore, type Fixture, type Runner, type TestSessionStoreOptions } from './harness.js';
import { idempotencyTests } from './idempotency.js';
import { requestLogTests } from './request-log.js';
import { sessionStateTests } from './session-state.js';

// The conformance suite of `SessionStore`: what `MemorySessionStore` does,
// written so that any store can be held to it, whole or one role at a time.

/**
 * Registers jest tests (with the runner's global `describe`/`it`) that check a
 * `SessionStore` implementation in each of its four roles, then its
 * `close()`. Call it at the top level of a test file. `createStore` runs
 * before each test and must return a fresh, open store; the suite closes it
 * after each test (so `close()` must tolerate a second call).
 *
 * @example
 * import { testSessionStore } from 'redundant-proxy/testing';
 * testSessionStore(() => new MyStore(), { name: 'MyStore' });
 */
export function testSessionStore(createStore: () => SessionStore | Promise<SessionStore>, options: TestSessionStoreOptions = {}): void {
  const { name = 'SessionStore', destroy } = options;
  withStore(`${name} conformance`, createStore, destroy, (fixture, runner) => {
    runner.describe('request log', () => requestLogTests(fixture, runner));
    runner.describe('session state', () => sessionStateTests(fixture, runner));
    runner.describe('commit arbitration', () => commitArbitrationTests(fixture, runner));
    runner.describe('idempotency', () => idempotencyTests(fixture, runner));
    closeTests(fixture, runner);
  });
}

type Create<S> = () => (S & Closable) | Promise<S & Closable>;

/**
 * The conformance suite one role at a time, for a store that plays only
 * some roles or to run one role's tests alone. Each registers a `describe`
 * block named `<name> conformance: <role>`; `all` is `testSessionStore`.
 *
 * @example
 * import { conformance } from 'redundant-proxy/testing';
 * conformance.commitArbitration(() => new MyArbiter(), { name: 'MyArbiter' });
 */
export const conformance = {
  /** `RequestLog`: recordCopy, recordAdoption, recordCancelled, getRequest. */
  requestLog<S extends RequestLog>(createStore: Create<S>, options: TestSessionStoreOptions<S & Closable> = {}): void {
    withStore(title(options, 'request log'), createStore, options.destroy, requestLogTests);
  },
  /** `SessionState`: saveCandidate, recordAdoption (the promotion), getSession. */
  sessionState<S extends SessionState>(createStore: Create<S>, options: TestSessionStoreOptions<S & Closable> = {}): void {
    withStore(title(options, 'session state'), createStore, options.destroy, sessionStateTests);
  },
  /** `CommitArbiter`: claim, confirm, release; with `getRequest`, where the commit state shows. */
  commitArbitration<S extends CommitArbitration>(createStore: Create<S>, options: TestSessionStoreOptions<S & Closable> = {}): void {
    withStore(title(options, 'commit arbitration'), createStore, options.destroy, commitArbitrationTests);
  },
  /** `IdempotencyStore`: beginIdempotent, completeIdempotent. */
  idempotency<S extends IdempotencyStore>(createStore: Create<S>, options: TestSessionStoreOptions<S & Closable> = {}): void {
    withStore(title(options, 'idempotency'), createStore, options.destroy, idempotencyTests);
  },
  /** Every role, then `close()`: the same as `testSessionStore`. */
  all: testSessionStore,
};

function title(options: { name?: string }, role: string): string {
  return `${options.name ?? 'SessionStore'} conformance: ${role}`;
}

/** `close()` of the whole store: every role stops. */
function closeTests(fixture: Fixture<SessionStore>, { describe, it, expect, beforeEach }: Runner): void {
  let store!: SessionStore;
  beforeEach(() => {
    store = fixture.store;
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
}
