import { randomUUID } from 'node:crypto';
import type * as JestGlobals from '@jest/globals';
import { codes, isRedundantProxyError } from '../errors.js';
import type { Closable, RecordCopyInput, SessionStore } from '../store/types.js';

// What the conformance suite's parts share: the runner, a fresh store per
// test, and small helpers for promises, time and ids. It only uses the
// store's interface, real time (a store in another process has no injectable
// clock) and fresh random ids in every test (a persistent store keeps data
// between runs).

export interface TestSessionStoreOptions<S = SessionStore> {
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
  destroy?: (store: S) => Promise<void>;
}

/** The store of the test that runs now. */
export interface Fixture<S> {
  readonly store: S;
}

/**
 * Registers a `describe` block whose tests each get a fresh store from
 * `createStore`, closed after the test (then `destroy` runs), and calls
 * `body` to register the tests inside it.
 */
export function withStore<S extends Closable>(
  title: string,
  createStore: () => S | Promise<S>,
  destroy: ((store: S) => Promise<void>) | undefined,
  body: (fixture: Fixture<S>, runner: Runner) => void,
): void {
  const runner = runnerGlobals();
  runner.describe(title, () => {
    let store: S | undefined;
    runner.beforeEach(async () => {
      store = await createStore();
    });
    runner.afterEach(async () => {
      const s = store!;
      store = undefined;
      await s.close();
      await destroy?.(s);
    });
    body(
      {
        get store() {
          if (store === undefined) throw new Error('redundant-proxy/testing: the store is only there while a test runs');
          return store;
        },
      },
      runner,
    );
  });
}

export type Runner = Pick<typeof JestGlobals, 'describe' | 'it' | 'expect' | 'beforeEach' | 'afterEach'>;

// The runner's own globals, not an import of '@jest/globals': that import
// only resolves inside jest's ESM runtime, while globals work in jest's ESM
// and CommonJS modes alike (and in any runner with jest-compatible globals).
export function runnerGlobals(): Runner {
  const g = globalThis as unknown as Partial<Runner>;
  for (const fn of ['describe', 'it', 'expect', 'beforeEach', 'afterEach'] as const) {
    if (typeof g[fn] !== 'function') {
      throw new Error(`redundant-proxy/testing: the conformance suite registers tests: call testSessionStore() or conformance.*() from a jest test file (no global \`${fn}\` here)`);
    }
  }
  return g as Runner;
}

export interface Tracked<T> {
  status: 'pending' | 'fulfilled' | 'rejected';
  value: T | undefined;
  reason: unknown;
  /** Resolves (never rejects) once the promise settled. */
  settled: Promise<void>;
}

/** Follows a promise without awaiting it, and handles its rejection at once. */
export function track<T>(promise: Promise<T>): Tracked<T> {
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
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (reason) {
    return reason;
  }
  throw new Error('expected the call to reject, but it resolved');
}

/** Fails with a clear message rather than the test's timeout; clears its timer either way. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
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

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function id(kind: string): string {
  return `rp-test-${kind}-${randomUUID()}`;
}

export function isClosed(error: unknown): boolean {
  return isRedundantProxyError(error) && error.code === codes.CLOSED;
}

export function copyInput(overrides: Partial<RecordCopyInput> = {}): RecordCopyInput {
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

export function adoption(requestId: string, sessionId: string, duplicateIds: string[], upstreamIds: string[]) {
  return { requestId, sessionId, update: false, duplicateIds, upstreamIds };
}

