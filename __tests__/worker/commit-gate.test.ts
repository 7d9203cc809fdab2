import type { ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from '@jest/globals';
import { AlreadyAppliedError, MemorySessionStore, type SessionStore } from '../../lib/index.js';
import { commitGate } from '../../lib/worker/commit.js';
import { sealId } from '../../lib/wire/protocol.js';

// The commit gate of one copy against a real MemorySessionStore on a virtual
// clock: the claim / confirm / release paths and what the copy's answer says.

function fakeRes(): ServerResponse & { headers: Record<string, string> } {
  const headers: Record<string, string> = {};
  return {
    headers,
    headersSent: false,
    setHeader(name: string, value: string) {
      headers[name] = value;
    },
  } as unknown as ServerResponse & { headers: Record<string, string> };
}

let clock = 1_000_000;
const now = () => clock;
const stores: SessionStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function setup(requestId = `r-${Math.random()}`) {
  const store = new MemorySessionStore({ now });
  stores.push(store);
  const late: Array<{ fence: number; reason: string }> = [];
  const gate = (duplicateId: string, signal = new AbortController().signal, leaseMs = 100) => {
    const res = fakeRes();
    const g = commitGate({ store, requestId, duplicateId, leaseMs, storeTimeout: 1000, signal, res, onLateConfirm: (fence, reason) => late.push({ fence, reason }) });
    return { g, res };
  };
  return { store, requestId, gate, late };
}

describe('commit gate', () => {
  it('a copy whose lease ran out and was taken over loses at its confirm when the other copy confirmed first', async () => {
    const { gate, late } = setup();
    const a = gate('r.1');
    const b = gate('r.2');
    const claimA = await a.g.claim();
    clock += 200; // past a's lease
    const claimB = await b.g.claim();
    expect(claimB.fence).toBeGreaterThan(claimA.fence);
    await claimB.confirm();
    await expect(claimA.confirm()).rejects.toMatchObject({ code: 'RP_ERR_SUPERSEDED' });
    expect(a.g.outcome).toBe('lost');
    expect(a.res.headers['x-redundant-commit']).toBe('lost');
    expect(b.g.outcome).toBe('won');
    expect(b.res.headers['x-redundant-commit']).toBe('won');
    expect(b.res.headers['x-redundant-fence']).toBe(String(claimB.fence));
    expect(late).toEqual([]);
  });

  it('a copy whose lease ran out but nobody confirmed since: its commit stands (lateConfirm lease-lost)', async () => {
    const { gate, late } = setup();
    const a = gate('r.1');
    const b = gate('r.2');
    const claimA = await a.g.claim();
    clock += 200;
    await b.g.claim(); // took over, not confirmed
    await claimA.confirm();
    expect(a.g.outcome).toBe('won');
    expect(late).toEqual([{ fence: claimA.fence, reason: 'lease-lost' }]);
  });

  it("a commit late past its lease, refused by the proxy's seal, still stands: a seal is nobody's commit", async () => {
    const { store, requestId, gate, late } = setup();
    const a = gate(`${requestId}.1`);
    const claimA = await a.g.claim();
    clock += 200;
    const seal = await store.claim(requestId, sealId(requestId), { leaseMs: 100 });
    await store.confirm(requestId, sealId(requestId), seal.fence);
    await claimA.confirm();
    expect(a.g.outcome).toBe('won');
    expect(late).toEqual([{ fence: claimA.fence, reason: 'lease-lost' }]);
  });

  it('commitOnce of a copy stopped while it waited for the claim never runs its function, and hands the claim on', async () => {
    const { store, requestId, gate } = setup();
    const a = gate('r.1');
    const stop = new AbortController();
    const b = gate('r.2', stop.signal);
    const claimA = await a.g.claim();
    let ran = false;
    const waiting = b.g.commitOnce(() => {
      ran = true;
    });
    stop.abort(new Error('stopped by the proxy'));
    await expect(waiting).rejects.toThrow('stopped by the proxy');
    await claimA.release();
    expect(ran).toBe(false);
    expect((await store.getRequest(requestId))!.commit.state).toBe('none');
  });

  it('a claim granted to a copy stopped meanwhile is released at once, and its function never runs', async () => {
    const store = new MemorySessionStore({ now });
    stores.push(store);
    const stop = new AbortController();
    // The grant arrives just as the proxy stops the copy.
    const racing = new Proxy(store, {
      get(target, name) {
        if (name === 'claim') {
          return async (...args: Parameters<SessionStore['claim']>) => {
            const grant = await target.claim(...args);
            stop.abort(new Error('stopped by the proxy'));
            return grant;
          };
        }
        const value = Reflect.get(target, name) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const g = commitGate({ store: racing, requestId: 'r', duplicateId: 'r.1', leaseMs: 100, storeTimeout: 1000, signal: stop.signal, res: fakeRes() });
    let ran = false;
    await expect(g.commitOnce(() => (ran = true))).rejects.toThrow('stopped by the proxy');
    expect(ran).toBe(false);
    expect((await store.getRequest('r'))!.commit.state).toBe('none');
  });

  it('commitOnce whose function finds the request already applied records it as committed and answers `applied`', async () => {
    const { store, requestId, gate } = setup();
    const a = gate('r.1');
    const b = gate('r.2');
    await expect(a.g.commitOnce(() => Promise.reject(new AlreadyAppliedError()))).rejects.toMatchObject({ code: 'RP_ERR_ALREADY_APPLIED' });
    expect(a.g.outcome).toBe('applied');
    expect(a.res.headers['x-redundant-commit']).toBe('applied');
    expect((await store.getRequest(requestId))!.commit).toMatchObject({ state: 'committed', holder: 'r.1' });
    // Nobody tries again.
    await expect(b.g.claim()).rejects.toMatchObject({ code: 'RP_ERR_SUPERSEDED' });
    expect(b.g.outcome).toBe('lost');
  });

  it('commitOnce whose function fails releases the claim: a waiting copy takes over', async () => {
    const { gate } = setup();
    const a = gate('r.1');
    const b = gate('r.2');
    await a.g.claim();
    const waiting = b.g.commitOnce(() => 'b committed');
    await expect(a.g.commitOnce(() => Promise.reject(new Error('disk full')))).rejects.toThrow('disk full');
    await expect(waiting).resolves.toBe('b committed');
    expect(b.g.outcome).toBe('won');
    expect(a.g.outcome).toBeUndefined();
  });
});
