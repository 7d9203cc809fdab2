import { afterAll, describe, expect, it, jest } from '@jest/globals';
import type { IncomingMessage } from 'node:http';
import { MemorySessionStore, redundantProxy, type RaceReport, type RedundantHandle, type SessionStore } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually, startReplica } from '../helpers/replica.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { sleep } from '../helpers/upstream.js';
import { mintSignedSessionId } from '../../lib/proxy/session.js';

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

type Mode = 'throws' | 'hangs';

/** A store whose every operation throws or never settles (timers it starts are cleared on close). */
function brokenStore(mode: Mode): SessionStore {
  const inner = new MemorySessionStore();
  const pending = new Set<() => void>();
  const fail = () =>
    mode === 'throws'
      ? Promise.reject(new Error('store is down'))
      : new Promise<never>((_, reject) => {
          pending.add(() => reject(new Error('closed')));
        });
  return {
    recordCopy: fail,
    saveCandidate: fail,
    recordAdoption: fail,
    recordCancelled: fail,
    getRequest: fail,
    getSession: fail,
    claim: fail,
    confirm: fail,
    release: fail,
    close: async () => {
      for (const p of pending) p();
      await inner.close();
    },
  } as unknown as SessionStore;
}

describe.each(['throws', 'hangs'] as Mode[])('a store that %s', (mode) => {
  it('does not fail reads or slow them beyond the store timeout, and reports events', async () => {
    const store = brokenStore(mode);
    open.push(store);
    const workerErrors: unknown[] = [];
    const replicas = [];
    for (const id of ['a', 'b']) {
      const r = await startReplica('koa', { id, store, storeTimeout: 150 }, (h) => {
        h.session.data.visited = true; // tries to save a candidate, too
        return { body: { id } };
      });
      r.worker.on('error', (e) => workerErrors.push(e));
      replicas.push(r);
      open.push(r);
    }
    const proxy = redundantProxy({ upstreams: replicas.map((r) => ({ id: r.id, url: r.url })), store, storeTimeout: 150 });
    const proxyErrors: unknown[] = [];
    proxy.on('error', (e) => proxyErrors.push(e));
    const gw = await mountGateway('express', proxy);
    open.push(gw, proxy);
    for (let i = 0; i < 5; i++) {
      const t0 = Date.now();
      // An existing session id makes the workers try to load it, too.
      const res = await client.send(`${gw.url}/r`, { headers: { cookie: 'rp_session=existing-session-id-0001' } });
      expect(res.status).toBe(200);
      // Load (150) + save (150) at most, plus slack for a loaded machine.
      expect(Date.now() - t0).toBeLessThan(150 * 2 + 1500);
    }
    await new Promise((r) => setTimeout(r, 400));
    expect(workerErrors.length).toBeGreaterThan(0);
    expect(proxyErrors.length).toBeGreaterThan(0);
    expect(proxyErrors[0]).toMatchObject({ source: 'store' });
  });

  it('refuses an update with 503 instead of processing it uncoordinated', async () => {
    const store = brokenStore(mode);
    open.push(store);
    let ran = 0;
    const r = await startReplica('express', { id: 'a', store, storeTimeout: 150 }, () => {
      ran++;
      return { body: {} };
    });
    const failures: unknown[] = [];
    r.worker.on('error', (e) => failures.push(e));
    open.push(r);
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: r.url }], store });
    proxy.on('error', () => undefined); // the store's failures; asserted in the test above
    const gw = await mountGateway('koa', proxy);
    open.push(gw, proxy);
    const res = await client.send(`${gw.url}/pay`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE' });
    expect(ran).toBe(0);
    expect(failures).toHaveLength(1);
  });
});

describe('a claim the store cannot decide', () => {
  /** A working store but for its claims, which fail. */
  class ClaimsDown extends MemorySessionStore {
    override claim(): Promise<never> {
      return Promise.reject(new Error('store is down'));
    }
  }

  it('answers 503 and reports it as an error event of the worker (operation claim)', async () => {
    const store = new ClaimsDown();
    open.push(store);
    let committed = 0;
    const r = await startReplica('express', { id: 'a', store }, async (h) => {
      await h.commitOnce(async () => void committed++);
      return { body: {} };
    });
    const failures: Array<{ operation: string; error: unknown; requestId: string }> = [];
    r.worker.on('error', (e) => failures.push(e as { operation: string; error: unknown; requestId: string }));
    open.push(r);
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: r.url }], store });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const res = await client.send(`${gw.url}/pay`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE' });
    expect(committed).toBe(0);
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatchObject({ operation: 'claim', requestId: res.headers['x-request-id'] });
    // The worker's answer, passed through, says which request it is, as the proxy's own errors do.
    expect(res.json()).toMatchObject({ requestId: res.headers['x-request-id'] });
    expect((failures[0]!.error as Error).message).toBe('store is down');
  });

  it('does not eject the replicas when the store is down for all of them: their 503 says it was the store', async () => {
    const store = new ClaimsDown();
    open.push(store);
    const replicas = [];
    for (const id of ['a', 'b']) {
      const r = await startReplica('koa', { id, store }, async (h, req) => {
        if (req.method === 'POST') await h.commitOnce(async () => undefined);
        return { body: {} };
      });
      r.worker.on('error', () => undefined);
      open.push(r);
      replicas.push(r);
    }
    const proxy = redundantProxy({ upstreams: replicas.map((r) => ({ id: r.id, url: r.url })), store, ejection: { consecutiveFailures: 1, maxEjectedPercent: 100 } });
    const ejected: string[] = [];
    proxy.on('upstream:ejected', (e) => ejected.push(e.upstream));
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    // Reads first, until the proxy knows both run the worker (updates go to every copy then).
    for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/health`);
    for (let i = 0; i < 3; i++) {
      const res = await client.send(`${gw.url}/pay`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(503);
      expect(res.json()).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE' });
    }
    await eventually(() => reports.filter((r) => r.copies.some((c) => c.storeUnavailable)).length === 3 || undefined);
    const updates = reports.filter((r) => r.copies.some((c) => c.storeUnavailable));
    for (const r of updates) expect(r.copies.map((c) => [c.status, c.storeUnavailable])).toEqual([[503, true], [503, true]]);
    expect(ejected).toEqual([]);
  });
});

describe('a session the store cannot load', () => {
  // With a secret the proxy takes a signed session id back without asking the
  // store: the session is known, and only the worker's load fails.
  const SECRET = 'store-failures-secret-0123456789';
  const cookie = `rp_session=${mintSignedSessionId(SECRET)}`;
  /** A working store but for getSession, which rejects (garbled data, a store error). */
  class SessionsUnreadable extends MemorySessionStore {
    override getSession(): Promise<never> {
      return Promise.reject(new SyntaxError('Unexpected token g in JSON'));
    }
  }

  it('fails an update closed with 503 before its handler runs: nothing is decided from an empty session', async () => {
    const store = new SessionsUnreadable();
    open.push(store);
    let ran = 0;
    let committed = 0;
    const r = await startReplica('koa', { id: 'a', store, secret: SECRET }, async (h) => {
      ran++;
      await h.commitOnce(async () => void committed++);
      return { body: { n: ((h.session.data.n as number) ?? 0) + 1 } };
    });
    const failures: Array<{ operation?: string }> = [];
    r.worker.on('error', (e) => failures.push(e as { operation?: string }));
    open.push(r);
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: r.url }], store, secret: SECRET });
    proxy.on('error', () => undefined);
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const res = await client.send(`${gw.url}/pay`, { method: 'POST', body: '{}', headers: { cookie, 'content-type': 'application/json' } });
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE', requestId: res.headers['x-request-id'] });
    expect(ran).toBe(0);
    expect(committed).toBe(0);
    expect(failures.some((f) => f.operation === 'getSession')).toBe(true);
  });

  it('serves a read with an empty session', async () => {
    const store = new SessionsUnreadable();
    open.push(store);
    const r = await startReplica('koa', { id: 'a', store, secret: SECRET }, (h) => ({ body: { keys: Object.keys(h.session.data) } }));
    r.worker.on('error', () => undefined);
    open.push(r);
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: r.url }], store, secret: SECRET });
    proxy.on('error', () => undefined);
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const res = await client.send(`${gw.url}/r`, { headers: { cookie } });
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ keys: [] });
  });
});

describe('a confirm that cannot be recorded in time (the commit is in the database already)', () => {
  const pay = (url: string) => client.send(`${url}/pay`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });

  it('past the lease, taken over by a copy that has not committed: the commit stands and a lateConfirm event says why', async () => {
    const store = new MemorySessionStore();
    open.push(store);
    // a claims first and commits slowly, past its 20 ms lease; b takes the
    // claim over at the lease's end but is slower still.
    const handler = async (h: RedundantHandle, req: IncomingMessage) => {
      if (req.method === 'GET') return { body: { ok: true } };
      if (h.upstreamId === 'b') await sleep(5);
      await h.commitOnce(() => sleep(h.upstreamId === 'a' ? 80 : 400));
      return { body: { by: h.upstreamId } };
    };
    const replicas = [];
    for (const id of ['a', 'b']) {
      const r = await startReplica('koa', { id, store, lease: 20 }, handler);
      open.push(r);
      replicas.push(r);
    }
    const late: Array<{ reason: string; duplicateId: string }> = [];
    replicas[0]!.worker.on('lateConfirm', (e) => late.push(e));
    const proxy = redundantProxy({ upstreams: replicas.map((r) => ({ id: r.id, url: r.url })), store });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/health`);
    const res = await pay(gw.url);
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ by: 'a' });
    expect(late).toHaveLength(1);
    expect(late[0]).toMatchObject({ reason: 'lease-lost' });
  });

  it('while the store refuses every confirm: the commit stands and a lateConfirm event says the store was unavailable', async () => {
    class DownAtConfirm extends MemorySessionStore {
      override async confirm(): Promise<void> {
        throw new Error('store is down');
      }
    }
    const store = new DownAtConfirm();
    open.push(store);
    const replica = await startReplica('express', { id: 'a', store }, async (h) => {
      await h.commitOnce(async () => undefined);
      return { body: { ok: true } };
    });
    open.push(replica);
    const late: Array<{ reason: string }> = [];
    replica.worker.on('lateConfirm', (e) => late.push(e));
    const res = await pay(replica.url);
    expect(res.status).toBe(200);
    expect(late).toHaveLength(1);
    expect(late[0]).toMatchObject({ reason: 'store-unavailable' });
  });
  it('while every confirm hangs: each is cut at the store timeout, and the commit stands as a late confirm', async () => {
    const pending: Array<() => void> = [];
    class HangsAtConfirm extends MemorySessionStore {
      override confirm(): Promise<void> {
        return new Promise<void>((resolve) => pending.push(resolve));
      }
      override async close(): Promise<void> {
        for (const resolve of pending.splice(0)) resolve();
        await super.close();
      }
    }
    const store = new HangsAtConfirm();
    open.push(store);
    const replica = await startReplica('koa', { id: 'a', store, storeTimeout: 50 }, async (h) => {
      await h.commitOnce(async () => undefined);
      return { body: { ok: true } };
    });
    open.push(replica);
    const late: Array<{ reason: string }> = [];
    replica.worker.on('lateConfirm', (e) => late.push(e));
    const t0 = Date.now();
    const res = await pay(replica.url);
    expect(res.status).toBe(200);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(late).toHaveLength(1);
    expect(late[0]).toMatchObject({ reason: 'store-unavailable' });
  });
});

describe('workers that do not share one store (a misconfiguration)', () => {
  it('each copy commits: the proxy says every second commit it sees on the console when nobody listens for errors', async () => {
    const spy = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      let commits = 0;
      const perRequest = new Map<string, { n: number; both: Promise<void>; open: () => void }>();
      const replicas = [];
      for (const id of ['a', 'b']) {
        const store = new MemorySessionStore(); // each its own: nothing arbitrates between them
        open.push(store);
        const r = await startReplica('koa', { id, store }, async (h, req) => {
          if (req.method !== 'POST') return { body: { by: id } };
          await h.commitOnce(async () => void commits++);
          // Both copies commit before either answers, and answer in the same
          // turn (else the loser may be stopped before its head arrives).
          let barrier = perRequest.get(h.requestId);
          if (!barrier) {
            let open!: () => void;
            barrier = { n: 0, both: new Promise<void>((r) => (open = r)), open };
            perRequest.set(h.requestId, barrier);
          }
          if (++barrier.n === 2) barrier.open();
          await barrier.both;
          return { body: { by: id } };
        });
        open.push(r);
        replicas.push(r);
      }
      const store = new MemorySessionStore();
      open.push(store);
      const proxy = redundantProxy({ upstreams: replicas.map((r) => ({ id: r.id, url: r.url })), store });
      const reports: RaceReport[] = [];
      proxy.on('race:end', (r) => reports.push(r));
      const gw = await mountGateway('node', proxy);
      open.push(gw, proxy);
      for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/health`);
      const updates = 10;
      for (let i = 0; i < updates; i++) {
        const res = await client.send(`${gw.url}/pay`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
        expect(res.status).toBe(200);
      }
      await eventually(() => commits === 2 * updates || undefined);
      await eventually(() => reports.filter((r) => r.method === 'POST').length === updates || undefined);
      // The proxy sees a second commit when the other copy's head arrives (not when it stopped it first).
      const seen = reports.filter((r) => r.method === 'POST' && r.copies.every((c) => c.status === 200)).length;
      expect(seen).toBeGreaterThan(1);
      expect(spy.mock.calls).toHaveLength(seen);
      for (const call of spy.mock.calls) expect(String(call[0])).toMatch(/answered x-redundant-commit: won after upstream "[ab]" had committed; the session store's commit arbitration failed/);
    } finally {
      spy.mockRestore();
    }
  });
});

describe('a proxy given no store in front of workers (a misconfiguration)', () => {
  it('says once on the console that its in-memory store is its own and no worker shares it', async () => {
    const spy = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      const store = new MemorySessionStore();
      open.push(store);
      const r = await startReplica('koa', { id: 'a', store }, () => ({ body: {} }));
      open.push(r);
      const proxy = redundantProxy({ upstreams: [{ id: 'a', url: r.url }] });
      const gw = await mountGateway('node', proxy);
      open.push(gw, proxy);
      for (let i = 0; i < 3; i++) expect((await client.send(`${gw.url}/r`)).status).toBe(200);
      const said = spy.mock.calls.map((c) => String(c[0])).filter((m) => m.includes('was given no `store`'));
      expect(said).toHaveLength(1);
      expect(said[0]).toContain('upstream "a" runs redundantWorker');
      // Given the workers' store: nothing to say.
      spy.mockClear();
      const shared = redundantProxy({ upstreams: [{ id: 'a', url: r.url }], store });
      const gw2 = await mountGateway('node', shared);
      open.push(gw2, shared);
      for (let i = 0; i < 3; i++) expect((await client.send(`${gw2.url}/r`)).status).toBe(200);
      expect(spy.mock.calls.map((c) => String(c[0])).filter((m) => m.includes('was given no `store`'))).toEqual([]);
    } finally {
      spy.mockRestore();
    }
  });
});
