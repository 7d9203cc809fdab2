import type { ServerResponse } from 'node:http';
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { AlreadyAppliedError, codes, MemorySessionStore, SupersededError, type SessionStore } from '../../lib/index.js';
import { commitGate, type CommitGateInput } from '../../lib/worker/commit.js';
import { sealId } from '../../lib/wire/protocol.js';

// More of the commit gate, each test aimed at one guard of lib/worker/commit.ts
// (found by mutation testing, bench/mutation/): what the gate does when the
// store fails or refuses, when the copy is stopped at each step, and that a
// settled claim never goes back to the store. A real MemorySessionStore on a
// virtual clock; a wrapper only where a store must fail or answer as another
// store would (one that does not say who committed, say).

interface FakeRes {
  headers: Record<string, string>;
  headersSent: boolean;
  setHeader(name: string, value: string): void;
}

function fakeRes(headersSent = false): FakeRes {
  const res: FakeRes = {
    headers: {},
    headersSent,
    setHeader(name, value) {
      if (res.headersSent) throw new Error('ERR_HTTP_HEADERS_SENT');
      res.headers[name] = value;
    },
  };
  return res;
}

let clock = 5_000_000;
const now = () => clock;
const stores: SessionStore[] = [];
afterEach(async () => {
  jest.useRealTimers();
  for (const s of stores.splice(0)) await s.close();
});

type Calls = Record<'claim' | 'confirm' | 'release' | 'getRequest', number>;

/**
 * A real memory store, wrapped: `overrides` replace some of its methods (they
 * get the real one as `inner`), and every call of the commit methods is counted.
 */
function storeWith(overrides: Partial<Record<keyof Calls, (inner: MemorySessionStore, ...args: never[]) => Promise<unknown>>> = {}) {
  const inner = new MemorySessionStore({ now });
  stores.push(inner);
  const calls: Calls = { claim: 0, confirm: 0, release: 0, getRequest: 0 };
  const store = new Proxy(inner, {
    get(target, name) {
      const override = overrides[name as keyof Calls];
      if (name in calls) {
        return (...args: never[]) => {
          calls[name as keyof Calls]++;
          return override ? override(target, ...args) : (Reflect.get(target, name) as (...a: never[]) => Promise<unknown>).apply(target, args);
        };
      }
      const value = Reflect.get(target, name) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as SessionStore;
  return { inner, store, calls };
}

function gateOn(store: SessionStore, options: Partial<CommitGateInput> & { duplicateId?: string } = {}) {
  const res = fakeRes();
  const late: Array<{ fence: number; reason: string }> = [];
  const g = commitGate({
    store,
    requestId: 'r',
    duplicateId: 'r.1',
    leaseMs: 100,
    storeTimeout: 1_000,
    signal: new AbortController().signal,
    res: res as unknown as ServerResponse,
    onLateConfirm: (fence, reason) => late.push({ fence, reason }),
    ...options,
  });
  return { g, res: (options.res as unknown as FakeRes | undefined) ?? res, late };
}

describe('commit gate: the claim', () => {
  it('fails closed when the store fails: 503 RP_ERR_STORE_UNAVAILABLE with the cause, no outcome, nothing written to the answer', async () => {
    const down = new Error('ECONNREFUSED');
    const { store } = storeWith({ claim: () => Promise.reject(down) });
    const { g, res } = gateOn(store);
    const err = (await g.claim().catch((e: unknown) => e)) as { code?: string; status?: number; cause?: unknown };
    expect(err).toMatchObject({ code: codes.STORE_UNAVAILABLE, status: 503 });
    expect(err.cause).toBe(down);
    expect(g.outcome).toBeUndefined();
    expect(g.fence).toBeUndefined();
    expect(res.headers).toEqual({});
  });

  it('a claim refused because another copy committed loses: `lost`, without a fence header', async () => {
    const { inner, store } = storeWith();
    const other = await inner.claim('r', 'r.2', { leaseMs: 100 });
    await inner.confirm('r', 'r.2', other.fence);
    const { g, res } = gateOn(store);
    const err = await g.claim().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: codes.SUPERSEDED, committedBy: 'r.2' });
    expect(g.outcome).toBe('lost');
    expect(res.headers).toEqual({ 'x-redundant-commit': 'lost' });
  });

  it('a copy stopped while it waits rejects with the stop reason itself, not as a store failure', async () => {
    const { inner, store } = storeWith();
    await inner.claim('r', 'r.2', { leaseMs: 100 });
    const stop = new AbortController();
    const { g } = gateOn(store, { signal: stop.signal });
    const waiting = g.claim();
    const reason = new Error('stopped by the proxy');
    stop.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect(g.outcome).toBeUndefined();
  });

  it('a claim granted to a copy stopped meanwhile: claim() rejects with the reason, keeps no fence, and the claim is free again', async () => {
    const stop = new AbortController();
    const reason = new Error('stopped by the proxy');
    const { inner, store, calls } = storeWith({
      claim: async (inner, ...args: never[]) => {
        const grant = await inner.claim(...(args as unknown as Parameters<SessionStore['claim']>));
        stop.abort(reason);
        return grant;
      },
    });
    const { g } = gateOn(store, { signal: stop.signal });
    await expect(g.claim()).rejects.toBe(reason);
    expect(g.fence).toBeUndefined();
    expect(calls.release).toBe(1);
    expect((await inner.getRequest('r'))!.commit.state).toBe('none');
    // Another copy gets it at once, without waiting for the lease.
    await expect(inner.claim('r', 'r.2', { leaseMs: 100 })).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('hands a claim granted to a stopped copy back even if that release fails: the stop reason is what the copy learns', async () => {
    const stop = new AbortController();
    const reason = new Error('stopped by the proxy');
    const { store } = storeWith({
      claim: async (inner, ...args: never[]) => {
        const grant = await inner.claim(...(args as unknown as Parameters<SessionStore['claim']>));
        stop.abort(reason);
        return grant;
      },
      release: () => Promise.reject(new Error('store went away')),
    });
    const { g } = gateOn(store, { signal: stop.signal });
    await expect(g.claim()).rejects.toBe(reason);
  });

  it('asks the store once however often claim() is called, and returns the same claim', async () => {
    const { store, calls } = storeWith();
    const { g } = gateOn(store);
    const [a, b] = await Promise.all([g.claim(), g.claim()]);
    expect(a).toBe(b);
    expect(await g.claim()).toBe(a);
    expect(calls.claim).toBe(1);
    expect(g.fence).toBe(a.fence);
  });
});

describe('commit gate: the confirm', () => {
  it('records the commit: `won` with the fence, the store says committed by this copy, no late confirm', async () => {
    const { inner, store, calls } = storeWith();
    const { g, res, late } = gateOn(store);
    const claim = await g.claim();
    await claim.confirm();
    expect(g.outcome).toBe('won');
    expect(res.headers).toEqual({ 'x-redundant-commit': 'won', 'x-redundant-fence': String(claim.fence) });
    expect((await inner.getRequest('r'))!.commit).toMatchObject({ state: 'committed', holder: 'r.1', fence: claim.fence });
    expect(late).toEqual([]);
    expect(calls.confirm).toBe(1);
    expect(calls.getRequest).toBe(0);
  });

  it('retries a confirm that failed for a store error, after 50 ms then 100 ms, and stops at the first that lands', async () => {
    jest.useFakeTimers({ now: clock });
    let failures = 2;
    const { store, calls } = storeWith({
      confirm: (inner, ...args: never[]) => (failures-- > 0 ? Promise.reject(new Error('EPIPE')) : inner.confirm(...(args as unknown as [string, string, number]))),
    });
    const { g, late } = gateOn(store);
    const claim = await g.claim();
    let done = false;
    const confirming = claim.confirm().then(() => (done = true));
    await jest.advanceTimersByTimeAsync(0);
    expect(calls.confirm).toBe(1);
    await jest.advanceTimersByTimeAsync(49);
    expect(calls.confirm).toBe(1);
    await jest.advanceTimersByTimeAsync(1);
    expect(calls.confirm).toBe(2);
    await jest.advanceTimersByTimeAsync(99);
    expect(calls.confirm).toBe(2);
    expect(done).toBe(false);
    await jest.advanceTimersByTimeAsync(1);
    await confirming;
    expect(calls.confirm).toBe(3);
    expect(g.outcome).toBe('won');
    expect(late).toEqual([]);
  });

  it('gives up after three failed confirms: the commit stands (`won`) and lateConfirm says the store was unavailable', async () => {
    jest.useFakeTimers({ now: clock });
    const down = new Error('EPIPE');
    const { store, calls } = storeWith({ confirm: () => Promise.reject(down) });
    const { g, res, late } = gateOn(store);
    const claim = await g.claim();
    const confirming = claim.confirm();
    await jest.advanceTimersByTimeAsync(1_000);
    await confirming;
    expect(calls.confirm).toBe(3);
    expect(late).toEqual([{ fence: claim.fence, reason: 'store-unavailable' }]);
    expect(g.outcome).toBe('won');
    expect(res.headers['x-redundant-commit']).toBe('won');
    // Still the claim of a copy that committed: nothing is handed on.
    expect(calls.release).toBe(0);
  });

  describe('refused, by a store that does not say who committed (committedBy undefined): the gate looks', () => {
    const refuse = () => Promise.reject(new SupersededError('refused'));

    it('another copy committed: this copy loses, `lost`, no fence header', async () => {
      const { inner, store, calls } = storeWith({ confirm: refuse });
      const { g, res, late } = gateOn(store);
      const claim = await g.claim();
      clock += 200;
      const other = await inner.claim('r', 'r.2', { leaseMs: 100 });
      await inner.confirm('r', 'r.2', other.fence);
      await expect(claim.confirm()).rejects.toMatchObject({ code: codes.SUPERSEDED });
      expect(calls.getRequest).toBe(1);
      expect(g.outcome).toBe('lost');
      expect(res.headers).toEqual({ 'x-redundant-commit': 'lost' });
      expect(late).toEqual([]);
    });

    it('another copy holds the claim but has not committed: this commit stands (lease-lost)', async () => {
      const { inner, store, calls } = storeWith({ confirm: refuse });
      const { g, late } = gateOn(store);
      const claim = await g.claim();
      clock += 200;
      await inner.claim('r', 'r.2', { leaseMs: 100 });
      await claim.confirm();
      expect(calls.getRequest).toBe(1);
      expect(calls.confirm).toBe(1);
      expect(g.outcome).toBe('won');
      expect(late).toEqual([{ fence: claim.fence, reason: 'lease-lost' }]);
    });

    it('the look fails too: this commit stands (lease-lost), it is the only one known', async () => {
      const { store } = storeWith({ confirm: refuse, getRequest: () => Promise.reject(new Error('down')) });
      const { g, late } = gateOn(store);
      const claim = await g.claim();
      await claim.confirm();
      expect(g.outcome).toBe('won');
      expect(late).toEqual([{ fence: claim.fence, reason: 'lease-lost' }]);
    });

    it("the proxy's seal committed: nobody's commit, this one stands", async () => {
      const { inner, store } = storeWith({ confirm: refuse });
      const { g, late } = gateOn(store);
      const claim = await g.claim();
      clock += 200;
      const seal = await inner.claim('r', sealId('r'), { leaseMs: 100 });
      await inner.confirm('r', sealId('r'), seal.fence);
      await claim.confirm();
      expect(g.outcome).toBe('won');
      expect(late).toEqual([{ fence: claim.fence, reason: 'lease-lost' }]);
    });
  });

  it('a refusal naming this very copy as the committer (its earlier confirm landed) is no loss', async () => {
    const { store, calls } = storeWith({ confirm: () => Promise.reject(new SupersededError('refused', { committedBy: 'r.1' })) });
    const { g, late } = gateOn(store);
    const claim = await g.claim();
    await claim.confirm();
    expect(calls.getRequest).toBe(0);
    expect(g.outcome).toBe('won');
    expect(late).toEqual([{ fence: claim.fence, reason: 'lease-lost' }]);
  });

  it('a refusal naming another copy loses without looking, and the loss is final', async () => {
    const { store, calls } = storeWith({ confirm: () => Promise.reject(new SupersededError('refused', { committedBy: 'r.2' })) });
    const { g, res } = gateOn(store);
    const claim = await g.claim();
    await expect(claim.confirm()).rejects.toMatchObject({ code: codes.SUPERSEDED });
    expect(calls.getRequest).toBe(0);
    expect(calls.confirm).toBe(1);
    expect(g.outcome).toBe('lost');
    expect(res.headers).toEqual({ 'x-redundant-commit': 'lost' });
  });
});

describe('commit gate: without an onLateConfirm hook', () => {
  it('a commit late past its lease still stands', async () => {
    const { inner, store } = storeWith();
    const { g } = gateOn(store, { onLateConfirm: undefined });
    const claim = await g.claim();
    clock += 200;
    await inner.claim('r', 'r.2', { leaseMs: 100 });
    await expect(claim.confirm()).resolves.toBeUndefined();
    expect(g.outcome).toBe('won');
  });

  it('a commit the store could not record still stands', async () => {
    jest.useFakeTimers({ now: clock });
    const { store } = storeWith({ confirm: () => Promise.reject(new Error('EPIPE')) });
    const { g } = gateOn(store, { onLateConfirm: undefined });
    const claim = await g.claim();
    const confirming = claim.confirm();
    await jest.advanceTimersByTimeAsync(1_000);
    await expect(confirming).resolves.toBeUndefined();
    expect(g.outcome).toBe('won');
  });
});

describe('commit gate: a settled claim never goes back to the store', () => {
  it('confirm twice: recorded once', async () => {
    const { store, calls } = storeWith();
    const { g } = gateOn(store);
    const claim = await g.claim();
    await claim.confirm();
    await claim.confirm();
    expect(calls.confirm).toBe(1);
    expect(g.outcome).toBe('won');
  });

  it('applied, then confirm: stays `applied`', async () => {
    const { store, calls } = storeWith();
    const { g, res } = gateOn(store);
    const claim = await g.claim();
    await claim.applied();
    await claim.confirm();
    expect(calls.confirm).toBe(1);
    expect(g.outcome).toBe('applied');
    expect(res.headers['x-redundant-commit']).toBe('applied');
  });

  it('release after the confirm asks nothing of the store', async () => {
    const { inner, store, calls } = storeWith();
    const { g } = gateOn(store);
    const claim = await g.claim();
    await claim.confirm();
    await claim.release();
    expect(calls.release).toBe(0);
    expect(g.outcome).toBe('won');
    expect((await inner.getRequest('r'))!.commit.state).toBe('committed');
  });

  it('release twice: released once', async () => {
    const { store, calls } = storeWith();
    const { g } = gateOn(store);
    const claim = await g.claim();
    await claim.release();
    await claim.release();
    expect(calls.release).toBe(1);
    expect(g.outcome).toBeUndefined();
  });
});

describe('commit gate: mark()', () => {
  it('writes nothing before an outcome, nor once the headers are sent', async () => {
    const { store } = storeWith();
    const { g } = gateOn(store);
    const early = fakeRes();
    g.mark(early as unknown as ServerResponse);
    expect(Object.keys(early.headers)).toEqual([]);
    const claim = await g.claim();
    await claim.confirm();
    const sent = fakeRes(true);
    expect(() => g.mark(sent as unknown as ServerResponse)).not.toThrow();
    expect(Object.keys(sent.headers)).toEqual([]);
    const fresh = fakeRes();
    g.mark(fresh as unknown as ServerResponse);
    expect(fresh.headers).toEqual({ 'x-redundant-commit': 'won', 'x-redundant-fence': String(claim.fence) });
  });
});

describe('commit gate: commitOnce', () => {
  it('runs the function with the fence, confirms after it, and returns its result', async () => {
    const { inner, store } = storeWith();
    const { g } = gateOn(store);
    let stateDuring: string | undefined;
    const result = await g.commitOnce(async (fence) => {
      stateDuring = (await inner.getRequest('r'))!.commit.state;
      return { fence };
    });
    expect(stateDuring).toBe('claimed');
    expect(result).toEqual({ fence: g.fence });
    expect((await inner.getRequest('r'))!.commit).toMatchObject({ state: 'committed', holder: 'r.1', fence: g.fence });
    expect(g.outcome).toBe('won');
  });

  it('a copy stopped after it claimed, before commitOnce: the function never runs and the claim is handed on', async () => {
    const { inner, store } = storeWith();
    const stop = new AbortController();
    const { g } = gateOn(store, { signal: stop.signal });
    await g.claim();
    const reason = new Error('stopped by the proxy');
    stop.abort(reason);
    let ran = false;
    await expect(g.commitOnce(() => (ran = true))).rejects.toBe(reason);
    expect(ran).toBe(false);
    expect((await inner.getRequest('r'))!.commit.state).toBe('none');
    expect(g.outcome).toBeUndefined();
  });

  it('a failed function whose release fails too: the function\'s error is what the copy learns', async () => {
    const { inner, store } = storeWith({ release: () => Promise.reject(new Error('store went away')) });
    const { g } = gateOn(store);
    const failure = new Error('disk full');
    await expect(g.commitOnce(() => Promise.reject(failure))).rejects.toBe(failure);
    expect(g.outcome).toBeUndefined();
    // Not released (the store failed): the lease runs out instead.
    expect((await inner.getRequest('r'))!.commit.state).toBe('claimed');
  });

  it('AlreadyAppliedError: recorded as committed by this copy, never released, rethrown as is', async () => {
    const { inner, store, calls } = storeWith();
    const { g, res } = gateOn(store);
    const applied = new AlreadyAppliedError();
    await expect(g.commitOnce(() => {
      throw applied;
    })).rejects.toBe(applied);
    expect(calls.release).toBe(0);
    expect(g.outcome).toBe('applied');
    expect(res.headers).toEqual({ 'x-redundant-commit': 'applied', 'x-redundant-fence': String(g.fence) });
    expect((await inner.getRequest('r'))!.commit).toMatchObject({ state: 'committed', holder: 'r.1' });
  });
});
