import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type SessionStore } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { startReplica } from '../helpers/replica.js';
import { closeAfterEach } from '../helpers/cleanup.js';

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
