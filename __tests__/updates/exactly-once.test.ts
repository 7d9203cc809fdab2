import type { IncomingMessage } from 'node:http';
import { afterAll, describe, expect, it } from '@jest/globals';
import { isSupersededError, MemorySessionStore, redundantProxy, type CancelInfo, type RaceReport, type RedundantHandle, type RedundantProxy, type SessionStore } from '../../lib/index.js';
import { createBank, type Bank } from '../helpers/bank.js';
import { testClient } from '../helpers/client.js';
import { mountGateway, type Gateway } from '../helpers/gateway.js';
import { eventually, startReplica, type Replica } from '../helpers/replica.js';
import { sleep, transferHandler, type TransferHooks } from '../helpers/transfer.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { mintSignedSessionId } from '../../lib/proxy/session.js';
import { faultyStore, restartableStore, slowStore } from '../helpers/slow-store.js';

const SECRET = 'exactly-once-secret-0123';
/** A session cookie the proxy would have handed out (signed with its secret): a client's own pick is not taken. */
const sessionCookie = () => `rp_session=${mintSignedSessionId(SECRET)}`;
const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

interface Fleet {
  bank: Bank;
  store: SessionStore;
  replicas: Replica[];
  proxy: RedundantProxy;
  gw: Gateway;
  reports: RaceReport[];
  cancels: CancelInfo[];
}

async function fleet(options: { hooks?: (id: string) => TransferHooks; lease?: number; store?: SessionStore; proxy?: Record<string, unknown> } = {}): Promise<Fleet> {
  const bank = await createBank();
  open.push(bank);
  const store = options.store ?? new MemorySessionStore({ max: 100_000 });
  open.push(store);
  const replicas: Replica[] = [];
  for (const [i, id] of ['a', 'b', 'c'].entries()) {
    const pool = bank.pool(8);
    const r = await startReplica(i % 2 ? 'express' : 'koa', { id, store, secret: SECRET, ...(options.lease ? { lease: options.lease } : {}) }, transferHandler(pool, options.hooks?.(id)));
    replicas.push(r);
    open.push(r);
  }
  const cancels: CancelInfo[] = [];
  const proxy = redundantProxy({
    upstreams: replicas.map((r) => ({ id: r.id, url: r.url })),
    store,
    secret: SECRET,
    timeout: 20_000,
    onCancel: (info) => void cancels.push(info),
    ...options.proxy,
  });
  const gw = await mountGateway('koa', proxy);
  open.push(gw, proxy);
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  // The proxy copies updates only to upstreams that have shown they run the worker.
  for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) {
    await client.send(`${gw.url}/health`);
  }
  expect(Object.values(proxy.metrics().upstreams).every((u) => u.worker)).toBe(true);
  return { bank, store, replicas, proxy, gw, reports, cancels };
}

const transfer = (gw: Gateway, t: { from: number; to: number; amount: number }, headers: Record<string, string> = {}) =>
  client.send(`${gw.url}/transfer`, { method: 'POST', body: JSON.stringify(t), headers: { 'content-type': 'application/json', ...headers } });

describe('exactly-once transfers on three replicas (PostgreSQL)', () => {
  it('200 concurrent transfers with random delays: the total never changes and each request id has exactly one ledger row', async () => {
    const f = await fleet({ hooks: () => ({ delay: () => Math.random() * 20 }) });
    const before = await f.bank.total();
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => {
        const from = 1 + (i % 10);
        const to = 1 + ((i * 7 + 3) % 10 === i % 10 ? (i + 1) % 10 : (i * 7 + 3) % 10);
        return transfer(f.gw, { from, to, amount: 1 + (i % 5) });
      }),
    );
    const ok = results.filter((r) => r.status === 200);
    expect(ok.length).toBe(200);
    expect(await f.bank.total()).toBe(before);
    expect(await f.bank.mismatches()).toEqual([]);
    const ledger = await f.bank.ledger();
    // Counted in the database: one row per answered request, no more.
    expect(ledger.length).toBe(200);
    expect(new Set(ledger.map((l) => l.request_id))).toEqual(new Set(ok.map((r) => r.headers['x-request-id'] as string)));
    // Each answer came from the copy that committed, and was copied to all three replicas.
    for (const r of ok) expect(r.headers['x-redundant-served-by']).toBe((r.json() as { by: string }).by);
    const updates = f.reports.filter((r) => r.update);
    expect(updates.every((r) => r.copies.length === 3 && r.committed)).toBe(true);
    // The copies that lost either answered `lost` or were stopped (and their cancel hook ran).
    const outcomes = updates.flatMap((r) => r.copies.filter((c) => c.outcome !== 'won').map((c) => c.outcome));
    expect(outcomes.every((o) => o === 'lost' || o === 'cancelled' || o === 'drained')).toBe(true);
  });

  it("the first claimant's commit throws: another copy commits, exactly once", async () => {
    let failed = 0;
    const f = await fleet({
      hooks: () => ({
        beforeCommit: () => {
          if (failed++ === 0) throw new Error('disk full');
        },
      }),
    });
    const before = await f.bank.total();
    const res = await transfer(f.gw, { from: 1, to: 2, amount: 5 });
    expect(res.status).toBe(200);
    expect(failed).toBe(2); // the failed attempt and the copy that took over
    expect(await f.bank.total()).toBe(before);
    expect(await f.bank.mismatches()).toEqual([]);
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(ledger[0]!.request_id).toBe(res.headers['x-request-id']);
    expect(ledger[0]!.upstream).toBe((res.json() as { by: string }).by);
  });

  it('the first claimant dies between claim and commit: another copy commits after its lease, exactly once', async () => {
    let died = 0;
    const f = await fleet({
      lease: 300,
      hooks: () => ({
        beforeCommit: async (_h, conn, req) => {
          if (died++ > 0) return;
          // A crash: the database connection and the HTTP connection vanish,
          // and nothing is confirmed or released. Only the lease frees the claim.
          conn.on('error', () => undefined);
          conn.release(true);
          req.socket.destroy();
          await new Promise<never>(() => undefined);
        },
      }),
    });
    const before = await f.bank.total();
    const t0 = Date.now();
    const res = await transfer(f.gw, { from: 3, to: 4, amount: 7 });
    expect(res.status).toBe(200);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(await f.bank.total()).toBe(before);
    expect(await f.bank.mismatches()).toEqual([]);
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('a copy stopped after another committed gets its cancel hook called and is recorded as cancelled', async () => {
    const f = await fleet({
      hooks: (id) => ({
        // a commits at once; b and c take long enough to be stopped while still processing.
        think: () => (id === 'a' ? 0 : 400),
      }),
    });
    const res = await transfer(f.gw, { from: 5, to: 6, amount: 1 });
    expect(res.status).toBe(200);
    const requestId = res.headers['x-request-id'] as string;
    await sleep(100);
    const mine = f.cancels.filter((c) => c.requestId === requestId);
    expect(mine.length).toBeGreaterThanOrEqual(1);
    for (const c of mine) expect(c.committedBy).toBe('a');
    const record = await f.store.getRequest(requestId);
    expect(record!.cancelled.sort()).toEqual(mine.map((c) => c.duplicateId).sort());
    expect(record!.commit).toMatchObject({ state: 'committed' });
    // The stopped copies rolled back once they learned they lost: one ledger row.
    await sleep(600);
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('copies that answer `lost` within the grace after the commit are drained, not cancelled: no connection is closed', async () => {
    const store = new MemorySessionStore();
    open.push(store);
    // No database here: a commits after 40 ms; b and c claim 1 ms after a's
    // commit and learn at once that they lost, well within the grace (half the
    // winner's latency, at most 10 ms).
    let committed: () => void = () => undefined;
    let aCommitted = new Promise<void>((r) => (committed = r));
    const handler = async (h: RedundantHandle, req: IncomingMessage) => {
      if (req.method === 'GET') return { body: { ok: true } };
      if (h.upstreamId === 'a') await sleep(40);
      else await aCommitted.then(() => sleep(1));
      try {
        await h.commitOnce(async () => undefined);
        if (h.upstreamId === 'a') committed();
      } catch (err) {
        if (isSupersededError(err)) return { status: 409, body: { lost: true } };
        throw err;
      }
      return { body: { ok: true, by: h.upstreamId } };
    };
    const replicas: Replica[] = [];
    for (const id of ['a', 'b', 'c']) {
      const r = await startReplica('koa', { id, store, secret: SECRET }, handler);
      open.push(r);
      replicas.push(r);
    }
    // A stopped copy closes its connection; a drained one keeps it.
    let connections = 0;
    let closed = 0;
    for (const r of replicas) {
      r.server.on('connection', (socket) => {
        connections++;
        socket.once('close', () => closed++);
      });
    }
    const cancels: CancelInfo[] = [];
    const proxy = redundantProxy({ upstreams: replicas.map((r) => ({ id: r.id, url: r.url })), store, secret: SECRET, onCancel: (info) => void cancels.push(info) });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));
    for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/health`);
    await eventually(() => reports.length > 0 && connections >= 3);
    for (let i = 0; i < 5; i++) {
      aCommitted = new Promise<void>((r) => (committed = r));
      const res = await client.send(`${gw.url}/order`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(200);
      expect(res.json()).toMatchObject({ by: 'a' });
    }
    await eventually(() => reports.filter((r) => r.update).length === 5);
    for (const r of reports.filter((x) => x.update)) {
      expect(r.copies.map((c) => [c.upstream, c.outcome]).sort()).toEqual([
        ['a', 'won'],
        ['b', 'lost'],
        ['c', 'lost'],
      ]);
    }
    expect(cancels).toEqual([]);
    // No upstream connection was closed.
    await sleep(20);
    expect(closed).toBe(0);
  });

  it('an onCancel hook that throws is an error event, not a failed request', async () => {
    const f = await fleet({
      hooks: (id) => ({ think: () => (id === 'b' ? 0 : 300) }),
      proxy: {
        onCancel: () => {
          throw new Error('compensation service down');
        },
      },
    });
    const errors: unknown[] = [];
    f.proxy.on('error', (e) => errors.push(e));
    const res = await transfer(f.gw, { from: 7, to: 8, amount: 2 });
    expect(res.status).toBe(200);
    await sleep(100);
    expect(errors.length).toBeGreaterThanOrEqual(1);
    expect(errors[0]).toMatchObject({ source: 'onCancel' });
  });
});

describe('faults', () => {
  it('a claimant paused past its lease has its late write refused by the fence', async () => {
    const bank = await createBank();
    open.push(bank);
    const store = new MemorySessionStore();
    open.push(store);
    let paused = 0;
    const refused: string[] = [];
    const replicas: Replica[] = [];
    for (const id of ['a', 'b']) {
      const handler = (await import('../helpers/transfer.js')).fencedTransferHandler(bank.pool(4), {
        afterClaim: async () => {
          // The first claimant stalls (a GC pause, a stopped process) well past its lease.
          if (paused++ === 0) await sleep(900);
        },
        refused: (h) => void refused.push(h.upstreamId),
      });
      const r = await startReplica('koa', { id, store, secret: SECRET, lease: 200 }, handler);
      replicas.push(r);
      open.push(r);
    }
    const proxy = redundantProxy({ upstreams: replicas.map((r) => ({ id: r.id, url: r.url })), store, secret: SECRET });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    while (!Object.values(proxy.metrics().upstreams).every((u) => u.worker)) await client.send(`${gw.url}/health`);
    const before = await bank.total();
    const res = await transfer(gw, { from: 1, to: 2, amount: 9 });
    expect(res.status).toBe(200);
    // Let the paused copy wake up and try its write.
    await sleep(1200);
    expect(refused).toHaveLength(1);
    expect(await bank.total()).toBe(before);
    expect(await bank.mismatches()).toEqual([]);
    const ledger = await bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(Number(ledger[0]!.fence)).toBe((res.json() as { fence: number }).fence);
    const rows = await bank.admin.query(`SELECT id, balance::int, fence::int FROM ${bank.schema}.accounts WHERE id IN (1, 2) ORDER BY id`);
    expect(rows.rows).toEqual([
      { id: 1, balance: 991, fence: Number(ledger[0]!.fence) },
      { id: 2, balance: 1009, fence: Number(ledger[0]!.fence) },
    ]);
  });

  it("the committed copy's connection dies before its answer: the client is told it was applied (RP_ERR_ANSWER_LOST)", async () => {
    let first = true;
    const f = await fleet({
      hooks: () => ({
        afterCommit: (_h, req) => {
          if (!first) return;
          first = false;
          req.socket.destroy();
        },
      }),
    });
    const res = await transfer(f.gw, { from: 9, to: 10, amount: 3 });
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST', requestId: res.headers['x-request-id'] });
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(ledger[0]!.request_id).toBe(res.headers['x-request-id']);
  });

  it('the store goes away mid-run: updates get 503 and nothing is applied twice', async () => {
    const inner = new MemorySessionStore({ max: 100_000 });
    let down = false;
    const store = new Proxy(inner, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver);
        if (typeof value !== 'function' || prop === 'close') return typeof value === 'function' ? value.bind(target) : value;
        return (...args: unknown[]) => (down ? Promise.reject(new Error('store unreachable')) : (value as (...a: unknown[]) => unknown).apply(target, args));
      },
    }) as SessionStore;
    const f = await fleet({ store, hooks: () => ({ delay: () => Math.random() * 30 }) });
    // The outage is reported as events; collect them instead of the console warning.
    const events: unknown[] = [];
    for (const r of f.replicas) r.worker.on('error', (e) => events.push(e));
    f.proxy.on('error', (e) => events.push(e));
    const before = await f.bank.total();
    const send = (i: number) => transfer(f.gw, { from: 1 + (i % 5), to: 6 + (i % 5), amount: 1 });
    // Up: every transfer commits.
    const up = await Promise.all(Array.from({ length: 20 }, (_, i) => send(i)));
    expect(up.every((r) => r.status === 200)).toBe(true);
    // Goes away while transfers are in flight: each either commits or is refused.
    const during = Promise.all(Array.from({ length: 20 }, (_, i) => send(i)));
    await sleep(15);
    down = true;
    const mid = await during;
    for (const r of mid) expect([200, 503]).toContain(r.status);
    // Down: every update is refused with 503, nothing runs uncoordinated.
    const refused = await Promise.all(Array.from({ length: 10 }, (_, i) => send(i)));
    for (const r of refused) {
      expect(r.status).toBe(503);
      expect(r.json()).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE' });
    }
    expect(await f.bank.total()).toBe(before);
    expect(await f.bank.mismatches()).toEqual([]);
    const ledger = await f.bank.ledger();
    // Every acknowledged transfer is in the ledger once; none of the refused ones is.
    const ids = new Set(ledger.map((l) => l.request_id));
    const acknowledged = [...up, ...mid].filter((r) => r.status === 200);
    for (const r of acknowledged) expect(ids.has(r.headers['x-request-id'] as string)).toBe(true);
    for (const r of refused) expect(ids.has(r.headers['x-request-id'] as string)).toBe(false);
    expect(ledger.length).toBeLessThanOrEqual(40);
    expect(events.length).toBeGreaterThan(0);
    down = false;
  });
});

describe('Idempotency-Key', () => {
  it('replays the committed answer to a retry with the same key, without a second commit', async () => {
    const f = await fleet();
    const headers = { 'idempotency-key': '"retry-key-1"', cookie: sessionCookie() };
    const first = await transfer(f.gw, { from: 1, to: 2, amount: 4 }, headers);
    expect(first.status).toBe(200);
    await sleep(50); // the answer is kept off the critical path
    const again = await transfer(f.gw, { from: 1, to: 2, amount: 4 }, headers);
    expect(again.status).toBe(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.json()).toEqual(first.json());
    expect(again.headers['x-request-id']).toBe(first.headers['x-request-id']);
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('a retry while the same key is in flight waits for the outcome and gets it replayed; 422 for the same key with another body', async () => {
    const f = await fleet({ hooks: () => ({ think: () => 300 }) });
    const headers = { 'idempotency-key': 'key-in-flight', cookie: sessionCookie() };
    const [a, b] = await Promise.all([
      transfer(f.gw, { from: 3, to: 4, amount: 1 }, headers),
      sleep(50).then(() => transfer(f.gw, { from: 3, to: 4, amount: 1 }, headers)),
    ]);
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(b.headers['idempotent-replayed']).toBe('true');
    expect(b.headers['x-request-id']).toBe(a.headers['x-request-id']);
    expect(b.text).toBe(a.text);
    const other = await transfer(f.gw, { from: 3, to: 4, amount: 2 }, headers);
    expect(other.status).toBe(422);
    expect(other.json()).toMatchObject({ code: 'RP_ERR_IDEMPOTENCY_MISMATCH' });
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('with idempotency.wait 0, a retry while the same key is in flight gets 409 with Retry-After at once', async () => {
    const f = await fleet({ hooks: () => ({ think: () => 300 }), proxy: { idempotency: { wait: 0 } } });
    const headers = { 'idempotency-key': 'key-in-flight-0', cookie: sessionCookie() };
    const [a, b] = await Promise.all([
      transfer(f.gw, { from: 3, to: 4, amount: 1 }, headers),
      sleep(50).then(() => transfer(f.gw, { from: 3, to: 4, amount: 1 }, headers)),
    ]);
    expect(a.status).toBe(200);
    expect(b.status).toBe(409);
    expect(b.json()).toMatchObject({ code: 'RP_ERR_IDEMPOTENCY_IN_FLIGHT' });
    expect(b.headers['retry-after']).toBe('1');
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it("the same key from another session is refused (422): never run again, never answered with another client's answer", async () => {
    const f = await fleet();
    const one = await transfer(f.gw, { from: 5, to: 6, amount: 1 }, { 'idempotency-key': 'shared-key', cookie: sessionCookie() });
    await sleep(50);
    const two = await transfer(f.gw, { from: 5, to: 6, amount: 1 }, { 'idempotency-key': 'shared-key', cookie: sessionCookie() });
    expect(one.status).toBe(200);
    expect(two.status).toBe(422);
    expect(two.json()).toMatchObject({ code: 'RP_ERR_IDEMPOTENCY_MISMATCH' });
    expect(two.text).not.toContain(String(one.headers['x-request-id']));
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('two clients that chose the same key value: the second is refused while the first’s key lives, and once it expired its update runs as its own (never “applied” from the first’s ledger row)', async () => {
    let skip = 0;
    const store = new MemorySessionStore({ max: 100_000, now: () => performance.now() + skip });
    const f = await fleet({ store });
    const alice = await transfer(f.gw, { from: 7, to: 8, amount: 1 }, { 'idempotency-key': 'order-42', authorization: 'Bearer alice' });
    expect(alice.status).toBe(200);
    const bob = () => transfer(f.gw, { from: 8, to: 7, amount: 5 }, { 'idempotency-key': 'order-42', authorization: 'Bearer bob' });
    const refused = await bob();
    expect(refused.status).toBe(422);
    expect(refused.text).not.toContain(String(alice.headers['x-request-id']));
    // A day later, the store has forgotten Alice's key (the ledger has not).
    skip = 25 * 60 * 60 * 1000;
    const later = await bob();
    expect([later.status, later.json().code]).toEqual([200, undefined]);
    expect(await f.bank.ledger()).toHaveLength(2);
    expect(await f.bank.mismatches()).toEqual([]);
  });

  it('a client without session or credentials whose retry is replayed gets no cookie: the session its first attempt was given is not handed to whoever guesses its key and body', async () => {
    // The update writes to the session (a guest's cart, say): the proxy hands the client a session cookie.
    const f = await fleet({ hooks: () => ({ afterCommit: (h) => void (h.session.data.owner = 'guest-9') }) });
    const first = await transfer(f.gw, { from: 9, to: 10, amount: 1 }, { 'idempotency-key': 'guessable-1' });
    expect(first.status).toBe(200);
    expect(String(first.headers['set-cookie'])).toMatch(/^rp_session=/);
    await sleep(50);
    const other = await transfer(f.gw, { from: 9, to: 10, amount: 1 }, { 'idempotency-key': 'guessable-1' });
    expect(other.status).toBe(200);
    expect(other.headers['idempotent-replayed']).toBe('true');
    expect(other.headers['set-cookie']).toBeUndefined();
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('a client that gave up mid-commit and retries with a refreshed token, or with a session it got meanwhile: refused, applied once; with its first credentials it learns the outcome', async () => {
    for (const [first, retry] of [
      [{ authorization: 'Bearer t1' }, { authorization: 'Bearer t2' }],
      [{}, { cookie: sessionCookie() }],
    ] as Array<[Record<string, string>, Record<string, string>]>) {
      const inCommit = signal();
      const f = await fleet({
        hooks: () => ({
          beforeCommit: () => {
            inCommit.reach();
            return sleep(200);
          },
        }),
      });
      const key = { 'idempotency-key': `refreshed-${Object.keys(retry)[0]}` };
      expect(await transferGivingUp(f.gw, { from: 1, to: 2, amount: 3 }, { ...key, ...first }, inCommit.reached)).toBe('gave-up');
      const other = await transfer(f.gw, { from: 1, to: 2, amount: 3 }, { ...key, ...retry });
      expect(other.status).toBe(422);
      expect(other.json()).toMatchObject({ code: 'RP_ERR_IDEMPOTENCY_MISMATCH' });
      const same = await transfer(f.gw, { from: 1, to: 2, amount: 3 }, { ...key, ...first });
      expect(same.status).toBe(200);
      expect(same.headers['idempotent-replayed']).toBe('true');
      const ledger = await f.bank.ledger();
      expect(ledger).toHaveLength(1);
      expect(same.headers['x-request-id']).toBe(ledger[0]!.request_id);
    }
  });

  it('refuses a malformed key with 400', async () => {
    const f = await fleet();
    const res = await transfer(f.gw, { from: 1, to: 2, amount: 1 }, { 'idempotency-key': 'x'.repeat(300) });
    expect(res.status).toBe(400);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_BAD_IDEMPOTENCY_KEY' });
    expect(await f.bank.ledger()).toHaveLength(0);
  });
});

/** A transfer whose client gives up (aborts the request) when `when` resolves, as a real client with a timeout does. */
async function transferGivingUp(gw: Gateway, t: { from: number; to: number; amount: number }, headers: Record<string, string>, when: Promise<unknown>): Promise<'gave-up' | number> {
  const { request } = await import('undici');
  const controller = new AbortController();
  void when.then(() => controller.abort());
  try {
    const res = await request(`${gw.url}/transfer`, {
      method: 'POST',
      body: JSON.stringify(t),
      headers: { 'content-type': 'application/json', ...headers },
      signal: controller.signal,
      dispatcher: client.agent,
    });
    await res.body.dump();
    return res.statusCode;
  } catch {
    return 'gave-up';
  }
}

/** A promise and the function that resolves it. */
function signal(): { reached: Promise<void>; reach: () => void } {
  let reach!: () => void;
  const reached = new Promise<void>((r) => (reach = r));
  return { reached, reach };
}

/** A replica that dies where it stands: its connections close, its database connection is gone, and it never answers. */
function die(conn: { on(e: 'error', l: () => void): unknown; release(err?: boolean | Error): void } | null, req: IncomingMessage): Promise<never> {
  conn?.on('error', () => undefined);
  conn?.release(true);
  req.socket.destroy();
  return new Promise<never>(() => undefined);
}

// Each test is a row of the table in docs/updates.md ("When someone gives up").
describe('the commit protocol when the client, the proxy or a replica gives up', () => {
  it('client waiting: a retry sent the moment the answer arrived gets the replay, never 409 (the key is completed before the last byte)', async () => {
    // A store that takes its time to complete a key, as one across the network does.
    const memory = new MemorySessionStore();
    open.push(memory);
    const f = await fleet({ store: slowStore(memory, { completeIdempotent: 30 }), proxy: { idempotency: { wait: 0 } } });
    for (let i = 0; i < 20; i++) {
      const headers = { 'idempotency-key': `immediate-${i}`, cookie: sessionCookie() };
      const first = await transfer(f.gw, { from: 1, to: 2, amount: 1 }, headers);
      const again = await transfer(f.gw, { from: 1, to: 2, amount: 1 }, headers);
      expect(first.status).toBe(200);
      expect(again.status).toBe(200);
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(again.text).toBe(first.text);
    }
    expect(await f.bank.ledger()).toHaveLength(20);
  });

  it('client gone mid-commit, then retrying: the race goes on without the client, and the retry gets the committed answer; applied once', async () => {
    const inCommit = signal();
    const f = await fleet({
      hooks: () => ({
        beforeCommit: () => {
          inCommit.reach();
          return sleep(400);
        },
      }),
    });
    const headers = { 'idempotency-key': 'gave-up-mid-commit', cookie: sessionCookie() };
    // The client gives up while a copy is inside its commit.
    expect(await transferGivingUp(f.gw, { from: 1, to: 2, amount: 3 }, headers, inCommit.reached)).toBe('gave-up');
    // The retry finds the key in flight, waits for the outcome, and gets the answer the first attempt kept.
    const retry = await transfer(f.gw, { from: 1, to: 2, amount: 3 }, headers);
    expect(retry.status).toBe(200);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(retry.headers['x-request-id']).toBe(ledger[0]!.request_id);
    expect(retry.json()).toMatchObject({ ok: true, requestId: ledger[0]!.request_id });
    const first = f.reports.find((r) => r.requestId === ledger[0]!.request_id)!;
    expect(first.outcome).toBe('client-closed');
    expect(first.committed).toBe(true);
    expect(await f.bank.mismatches()).toEqual([]);
  });

  it('client gone mid-commit and the retry comes after the wait: it resumes the same request id and learns the update was applied', async () => {
    const inCommit = signal();
    const f = await fleet({
      hooks: () => ({
        beforeCommit: () => {
          inCommit.reach();
          return sleep(600);
        },
      }),
      proxy: { idempotency: { wait: 0 } },
    });
    const headers = { 'idempotency-key': 'gave-up-no-wait', cookie: sessionCookie() };
    expect(await transferGivingUp(f.gw, { from: 1, to: 2, amount: 3 }, headers, inCommit.reached)).toBe('gave-up');
    const early = await transfer(f.gw, { from: 1, to: 2, amount: 3 }, headers);
    expect(early.status).toBe(409);
    expect(early.json()).toMatchObject({ code: 'RP_ERR_IDEMPOTENCY_IN_FLIGHT' });
    await eventually(async () => (await f.bank.ledger()).length === 1, 5000);
    await sleep(100);
    const retry = await transfer(f.gw, { from: 1, to: 2, amount: 3 }, headers);
    expect(retry.status).toBe(200);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('client gone before any copy claimed, then retrying: the race goes on, commits once, and the retry gets its answer', async () => {
    const thinking = signal();
    const f = await fleet({
      hooks: () => ({
        think: () => {
          thinking.reach();
          return 300;
        },
      }),
    });
    const headers = { 'idempotency-key': 'gave-up-early', cookie: sessionCookie() };
    expect(await transferGivingUp(f.gw, { from: 2, to: 3, amount: 4 }, headers, thinking.reached)).toBe('gave-up');
    const retry = await transfer(f.gw, { from: 2, to: 3, amount: 4 }, headers);
    expect(retry.status).toBe(200);
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(ledger[0]!.request_id).toBe(retry.headers['x-request-id']);
    await sleep(400);
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('the proxy times out while a copy holds the commit: 503 RP_ERR_OUTCOME_UNKNOWN, and a retry learns it was applied', async () => {
    // The claimant claims within the timeout (it thinks for nothing) and commits well after it.
    const f = await fleet({ hooks: () => ({ beforeCommit: () => sleep(1500) }), proxy: { timeout: 700 } });
    const headers = { 'idempotency-key': 'timed-out-mid-commit', cookie: sessionCookie() };
    const first = await transfer(f.gw, { from: 3, to: 4, amount: 5 }, headers);
    expect(first.status).toBe(503);
    expect(first.json()).toMatchObject({ code: 'RP_ERR_OUTCOME_UNKNOWN' });
    expect(first.headers['retry-after']).toBe('1');
    expect(f.reports.at(-1)!.outcome).toBe('outcome-unknown');
    // The claimant commits although the proxy gave up on it.
    await eventually(async () => (await f.bank.ledger()).length === 1, 5000);
    const retry = await transfer(f.gw, { from: 3, to: 4, amount: 5 }, headers);
    expect(retry.status).toBe(502);
    expect(retry.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    expect(retry.headers['x-request-id']).toBe(first.headers['x-request-id']);
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('the claimant dies after its write, before its confirm, client waiting: a copy takes over, finds it applied, and the client is told so (never a 500)', async () => {
    let died = 0;
    const f = await fleet({
      lease: 300,
      hooks: () => ({
        afterWrite: (_h, conn, req) => {
          if (died++ === 0) return die(conn, req);
        },
      }),
    });
    const headers = { 'idempotency-key': 'died-after-write', cookie: sessionCookie() };
    const res = await transfer(f.gw, { from: 4, to: 5, amount: 6 }, headers);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    const report = f.reports.find((r) => r.requestId === res.headers['x-request-id'])!;
    expect(report.outcome).toBe('answer-lost');
    expect(report.copies.map((c) => c.outcome)).toContain('applied');
    expect(await f.bank.ledger()).toHaveLength(1);
    expect(await f.bank.mismatches()).toEqual([]);
    const record = await f.store.getRequest(res.headers['x-request-id'] as string);
    expect(record!.commit.state).toBe('committed');
    const retry = await transfer(f.gw, { from: 4, to: 5, amount: 6 }, headers);
    expect(retry.status).toBe(502);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('the claimant dies after its write, client gone and retrying: the retry resumes, takes over after the lease, finds it applied', async () => {
    let died = 0;
    const wrote = signal();
    const f = await fleet({
      lease: 300,
      hooks: () => ({
        afterWrite: (_h, conn, req) => {
          if (died++ > 0) return;
          wrote.reach();
          return die(conn, req);
        },
      }),
    });
    const headers = { 'idempotency-key': 'died-and-gone', cookie: sessionCookie() };
    expect(await transferGivingUp(f.gw, { from: 5, to: 6, amount: 7 }, headers, wrote.reached)).toBe('gave-up');
    const retry = await transfer(f.gw, { from: 5, to: 6, amount: 7 }, headers);
    expect(retry.status).toBe(502);
    expect(retry.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    expect(await f.bank.ledger()).toHaveLength(1);
    expect(await f.bank.mismatches()).toEqual([]);
  });

  it('an update that no copy commits (every replica finds it invalid) is answered as soon as the slowest answers, not at the timeout', async () => {
    const f = await fleet({ hooks: (id) => ({ invalid: () => true, think: () => (id === 'c' ? 200 : 0) }) });
    const t0 = Date.now();
    const res = await transfer(f.gw, { from: 6, to: 7, amount: 1 });
    expect(res.status).toBe(400);
    expect(res.json()).toMatchObject({ invalid: true });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(await f.bank.ledger()).toHaveLength(0);
  });
});

// A store that fails while a key is taken or completed must not leave the key
// held with nothing running (retries would get 409 until its lock ran out).
describe('Idempotency-Key when the store fails around the race', () => {
  it('a take that timed out on a frozen store, and landed when it thawed, is released: the retry runs at once', async () => {
    const memory = new MemorySessionStore();
    open.push(memory);
    const faulty = faultyStore(memory);
    const f = await fleet({ store: faulty.store, proxy: { storeTimeout: 150, idempotency: { wait: 0 } } });
    const headers = { 'idempotency-key': 'frozen-take', cookie: sessionCookie() };
    faulty.freeze('beginIdempotent', 'completeIdempotent');
    const first = await transfer(f.gw, { from: 1, to: 2, amount: 1 }, headers);
    expect(first.status).toBe(503);
    expect(first.json()).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE' });
    faulty.up(); // the take lands now, then the release queued behind it
    await sleep(50);
    const retry = await transfer(f.gw, { from: 1, to: 2, amount: 1 }, headers);
    expect(retry.status).toBe(200);
    expect(await f.bank.ledger()).toHaveLength(1);
  });

  it('a completion refused by a store that is down is tried again: once the store is back, a retry gets the replay', async () => {
    const memory = new MemorySessionStore();
    open.push(memory);
    const faulty = faultyStore(memory);
    const f = await fleet({ store: faulty.store, proxy: { storeTimeout: 150, idempotency: { wait: 0 } } });
    const errors: unknown[] = [];
    f.proxy.on('error', (e) => errors.push(e));
    const headers = { 'idempotency-key': 'down-at-completion', cookie: sessionCookie() };
    faulty.down('completeIdempotent');
    const first = await transfer(f.gw, { from: 2, to: 3, amount: 1 }, headers);
    expect(first.status).toBe(200);
    expect(errors).toEqual([expect.objectContaining({ source: 'store' })]);
    faulty.up();
    await sleep(400);
    const retry = await transfer(f.gw, { from: 2, to: 3, amount: 1 }, headers);
    expect(retry.status).toBe(200);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.text).toBe(first.text);
    expect(await f.bank.ledger()).toHaveLength(1);
  });
});

describe('Idempotency-Key when the store restarts empty', () => {
  it('a retry after the store forgot the key runs as a new request, and the unique Idempotency-Key row says it was applied', async () => {
    const restartable = restartableStore(() => new MemorySessionStore());
    open.push(restartable);
    const f = await fleet({ store: restartable.store });
    const headers = { 'idempotency-key': 'before-the-restart', cookie: sessionCookie() };
    const first = await transfer(f.gw, { from: 1, to: 2, amount: 9 }, headers);
    expect(first.status).toBe(200);
    await restartable.restart(); // every key, claim and record is gone
    const retry = await transfer(f.gw, { from: 1, to: 2, amount: 9 }, headers);
    expect(retry.headers['x-request-id']).not.toBe(first.headers['x-request-id']);
    expect(retry.status).toBe(502);
    expect(retry.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(ledger[0]!.request_id).toBe(first.headers['x-request-id']);
    expect(await f.bank.mismatches()).toEqual([]);
  });
});
