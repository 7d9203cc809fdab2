import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type RaceReport, type SessionStore } from '../../lib/index.js';
import { slowStore } from '../helpers/slow-store.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually, startReplica, type Replica } from '../helpers/replica.js';
import { sleep } from '../helpers/upstream.js';
import { closeAfterEach } from '../helpers/cleanup.js';

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

const SECRET = 'test-secret-0123456789';

describe.each(['koa', 'express'] as const)('three %s workers behind the proxy', (kind) => {
  async function fleet(handler: Parameters<typeof startReplica>[2], wrap: (store: SessionStore) => SessionStore = (s) => s) {
    const memory = new MemorySessionStore();
    open.push(memory);
    const store = wrap(memory);
    const replicas: Replica[] = [];
    for (const id of ['a', 'b', 'c']) {
      const r = await startReplica(kind, { id, store, secret: SECRET }, handler);
      replicas.push(r);
      open.push(r);
    }
    const proxy = redundantProxy({ upstreams: replicas.map((r) => ({ id: r.id, url: r.url })), store, secret: SECRET });
    const gw = await mountGateway('koa', proxy);
    open.push(gw, proxy);
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));
    return { store, replicas, proxy, gw, reports };
  }

  it('records every copy and the adoption in the store, with the right ids', async () => {
    const seenHandles: Array<{ requestId: string; duplicateId: string; upstreamId: string; copy: { index: number; of: number }; direct: boolean }> = [];
    // No race of the clock: b answers once every copy has reached its
    // handler (so each was recorded), a and c only once the client has b's
    // answer. b wins on any machine, however busy.
    let allArrived!: () => void;
    const arrived = new Promise<void>((r) => (allArrived = r));
    let clientAnswered!: () => void;
    const answered = new Promise<void>((r) => (clientAnswered = r));
    const { store, gw } = await fleet(async (h) => {
      seenHandles.push({ requestId: h.requestId, duplicateId: h.duplicateId, upstreamId: h.upstreamId, copy: h.copy, direct: h.direct });
      if (seenHandles.length === 3) allArrived();
      await (h.upstreamId === 'b' ? arrived : answered);
      return { body: { by: h.upstreamId } };
    });
    const res = await client.send(`${gw.url}/thing`);
    clientAnswered();
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ by: 'b' });
    const requestId = res.headers['x-request-id'] as string;
    const record = await eventually(async () => {
      const r = await store.getRequest(requestId);
      return r && r.adopted && r.copies.length === 3 ? r : undefined;
    });
    expect(record.requestId).toBe(requestId);
    expect(record.update).toBe(false);
    expect(record.copies.map((c) => c.upstreamId).sort()).toEqual(['a', 'b', 'c']);
    expect(record.copies.map((c) => c.duplicateId).sort()).toEqual([`${requestId}.1`, `${requestId}.2`, `${requestId}.3`]);
    for (const c of record.copies) expect(c.of).toBe(3);
    const bCopy = record.copies.find((c) => c.upstreamId === 'b')!;
    expect(record.adopted).toMatchObject({ duplicateIds: [bCopy.duplicateId], upstreamIds: ['b'] });
    // Handles saw the same ids as the store.
    expect(seenHandles).toHaveLength(3);
    for (const h of seenHandles) {
      expect(h.requestId).toBe(requestId);
      expect(h.direct).toBe(false);
      expect(h.copy.of).toBe(3);
    }
  });

  it('a session visited twenty times by racing replicas counts 1..20 and holds only adopted markers', async () => {
    let turn = 0;
    const { store, gw, reports } = await fleet(async (h) => {
      // A different replica tends to win each time; every replica writes its own marker.
      const delay = ((turn + h.upstreamId.charCodeAt(0)) % 3) * 15 + Math.random() * 5;
      await sleep(delay);
      const data = h.session.data as { count?: number; markers?: string[] };
      const count = (data.count ?? 0) + 1;
      const marker = `${h.upstreamId}:${count}:${h.duplicateId}`;
      h.session.data = { count, markers: [...(data.markers ?? []), marker] };
      return { body: { count, marker } };
    });
    let cookie = '';
    const adoptedMarkers: string[] = [];
    const counts: number[] = [];
    for (let i = 0; i < 20; i++) {
      turn = i;
      const res = await client.send(`${gw.url}/visit`, { headers: cookie ? { cookie } : {} });
      expect(res.status).toBe(200);
      const setCookie = res.headers['set-cookie'];
      if (i === 0) {
        expect(setCookie).toBeDefined();
        cookie = String(setCookie).split(';')[0]!;
        expect(String(setCookie)).toMatch(/HttpOnly/);
      } else {
        expect(setCookie).toBeUndefined();
      }
      const body = res.json() as { count: number; marker: string };
      counts.push(body.count);
      adoptedMarkers.push(body.marker);
    }
    expect(counts).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    const sessionId = cookie.split('=')[1]!;
    const session = await store.getSession(sessionId);
    expect(session!.data).toEqual({ count: 20, markers: adoptedMarkers });
    expect(session!.version).toBe(20);
    // The race really spread the wins: more than one replica was adopted.
    expect(new Set(reports.map((r) => r.servedBy)).size).toBeGreaterThan(1);
  });

  it('read-your-writes: the next request sees the session change even when the store takes its time to record the adoption', async () => {
    // Without the adoption recorded before the answer, the next request would
    // load the session before the promotion landed.
    const { gw } = await fleet(
      (h) => {
        const data = h.session.data as { count?: number };
        const count = (data.count ?? 0) + 1;
        h.session.data = { count };
        return { body: { count } };
      },
      (s) => slowStore(s, { recordAdoption: 60 }),
    );
    let cookie = '';
    for (let i = 1; i <= 3; i++) {
      const res = await client.send(`${gw.url}/count`, { headers: cookie ? { cookie } : {} });
      expect(res.json()).toEqual({ count: i });
      if (!cookie) cookie = String(res.headers['set-cookie']).split(';')[0]!;
    }
  });

  it('a session-only update is answered by the first copy to arbitrate its change, not the slowest, and exactly one change is kept', async () => {
    let slowSeen = 0;
    const { gw, store, reports, proxy } = await fleet(async (h) => {
      if (!h.update) return { body: { ok: true } };
      if (h.upstreamId === 'c') {
        slowSeen++;
        await sleep(1500);
      } else await sleep(h.upstreamId === 'a' ? 5 : 30);
      const data = h.session.data as { items?: string[] };
      h.session.data = { items: [...(data.items ?? []), `${h.upstreamId}:${h.duplicateId}`] };
      return { status: 201, body: { by: h.upstreamId } };
    });
    for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/warm`);
    const t0 = Date.now();
    const res = await client.send(`${gw.url}/cart`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    const elapsed = Date.now() - t0;
    expect(res.status).toBe(201);
    expect(slowSeen).toBe(1);
    expect(elapsed).toBeLessThan(1000);
    const cookie = String(res.headers['set-cookie']).split(';')[0]!;
    const report = await eventually(() => reports.find((r) => r.requestId === res.headers['x-request-id']));
    expect(report.committed).toBe(true);
    const session = await store.getSession(cookie.split('=')[1]!);
    const items = (session!.data as { items: string[] }).items;
    expect(items).toHaveLength(1);
    expect(items[0]).toMatch(new RegExp(`^${(res.json() as { by: string }).by}:`));
    const record = await store.getRequest(res.headers['x-request-id'] as string);
    expect(record!.commit).toMatchObject({ state: 'committed' });
  });

  it('mints no cookie when the adopted copy did not touch the session', async () => {
    const { gw } = await fleet(() => ({ body: { plain: true } }));
    const res = await client.send(`${gw.url}/plain`);
    expect(res.status).toBe(200);
    expect(res.headers['set-cookie']).toBeUndefined();
  });

  it('every worker response says the worker runs, and direct requests are served and marked', async () => {
    const { replicas } = await fleet((h) => ({ body: { direct: h.direct, requestId: h.requestId } }));
    const res = await client.send(`${replicas[0]!.url}/direct`);
    expect(res.status).toBe(200);
    expect(res.headers['x-redundant-worker']).toBe('1');
    expect(res.json()).toMatchObject({ direct: true });
  });
});

describe('session id from a header', () => {
  it('reads the id from the header and returns a minted one in the same header', async () => {
    const store = new MemorySessionStore();
    open.push(store);
    const r = await startReplica('koa', { id: 'a', store }, (h) => {
      const n = ((h.session.data.n as number | undefined) ?? 0) + 1;
      h.session.data.n = n;
      return { body: { n } };
    });
    open.push(r);
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: r.url }], store, session: { header: 'x-session-id' } });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const first = await client.send(`${gw.url}/`);
    const sid = first.headers['x-session-id'] as string;
    expect(sid).toMatch(/^[A-Za-z0-9_-]{16,}$/);
    expect(first.headers['set-cookie']).toBeUndefined();
    const second = await client.send(`${gw.url}/`, { headers: { 'x-session-id': sid } });
    expect(second.json()).toEqual({ n: 2 });
    expect(second.headers['x-session-id']).toBeUndefined();
  });
});
