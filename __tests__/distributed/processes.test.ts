import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { RedisSessionStore } from '../../lib/redis.js';
import { createBank, type Bank } from '../helpers/bank.js';
import { testClient } from '../helpers/client.js';
import { forkFixture, type Child } from '../helpers/processes.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { closeAfterEach } from '../helpers/cleanup.js';

// The gateway and three replicas as separate processes sharing one Redis, the
// replicas moving money in PostgreSQL. Commits are counted in the database.

const SECRET = 'distributed-secret-0123456789';
const LEASE = 400;
const client = testClient();
let redis: RedisServer;

beforeAll(async () => {
  redis = await startRedisServer();
});
afterAll(async () => {
  await client.close();
  await redis.stop();
});

interface Fleet {
  bank: Bank;
  prefix: string;
  replicas: Child[];
  gateway: Child;
}
const open = closeAfterEach();

async function fleet(accounts = 10): Promise<Fleet> {
  const bank = await createBank(accounts);
  open.push(bank);
  const prefix = `rp-dist-${randomBytes(4).toString('hex')}:`;
  const replicas: Child[] = [];
  for (const id of ['a', 'b', 'c']) {
    const r = await forkFixture('replica', { ID: id, REDIS_PORT: String(redis.port), SECRET, PG_SCHEMA: bank.schema, LEASE: String(LEASE), PREFIX: prefix });
    replicas.push(r);
    open.push(r);
  }
  const gateway = await forkFixture('gateway', {
    UPSTREAMS: JSON.stringify(replicas.map((r, i) => ({ id: ['a', 'b', 'c'][i], url: r.url }))),
    REDIS_PORT: String(redis.port),
    SECRET,
    PREFIX: prefix,
  });
  open.push(gateway);
  // Until the gateway has seen every replica answer as a worker, it sends updates to one.
  for (let i = 0; i < 100; i++) {
    const m = (await client.send(`${gateway.url}/__metrics`)).json() as { upstreams: Record<string, { worker: boolean }> };
    if (Object.values(m.upstreams).every((u) => u.worker)) break;
    await client.send(`${gateway.url}/warm`);
  }
  return { bank, prefix, replicas, gateway };
}

const transfer = (gw: Child, t: { from: number; to: number; amount: number }) =>
  client.send(`${gw.url}/transfer`, { method: 'POST', body: JSON.stringify(t), headers: { 'content-type': 'application/json' } });

describe('gateway and three replicas in separate processes, sharing Redis', () => {
  it('commits 60 concurrent transfers exactly once each (counted in PostgreSQL)', async () => {
    // The replicas guard rows with a fence column, which refuses any writer
    // older than a row's last one: concurrent transfers use rows of their own.
    const f = await fleet(120);
    const before = await f.bank.total();
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => transfer(f.gateway, { from: 2 * i + 1, to: 2 * i + 2, amount: 1 + (i % 3) }).catch((err) => { throw new Error(`${err}; gateway alive=${f.gateway.alive} stderr=${f.gateway.stderr()} replicas=${f.replicas.map((r) => r.alive + r.stderr()).join('|')}`); })));
    const failures = results.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.text}`);
    // Copies stopped mid-request (a client abort while reading the body) and a
    // late copy refused by the ledger's unique key are expected; nothing else is.
    const expected = /^Error: aborted|ledger_pkey/;
    const errors = f.replicas.flatMap((r) => r.messages.filter((m) => m.type === 'error' && !expected.test(String(m.message))).map((m) => m.message));
    expect({ failures, errors }).toEqual({ failures: [], errors: [] });
    expect(await f.bank.total()).toBe(before);
    // Each account moved exactly its one transfer's amount: a transfer applied twice would show here.
    expect(await f.bank.mismatches()).toEqual([]);
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(60);
    expect(new Set(ledger.map((l) => l.request_id))).toEqual(new Set(results.map((r) => r.headers['x-request-id'] as string)));
  });

  it('keeps a session collision-free: twenty visits count 1..20 with only adopted markers', async () => {
    const f = await fleet();
    let cookie = '';
    const markers: string[] = [];
    for (let i = 1; i <= 20; i++) {
      const res = await client.send(`${f.gateway.url}/session`, { headers: cookie ? { cookie } : {} });
      expect(res.status).toBe(200);
      if (!cookie) cookie = String(res.headers['set-cookie']).split(';')[0]!;
      const body = res.json() as { count: number; marker: string };
      expect(body.count).toBe(i);
      markers.push(body.marker);
    }
    const conn = new Redis({ port: redis.port, host: '127.0.0.1' });
    conn.on('error', () => undefined);
    open.push({ close: async () => void conn.disconnect() });
    const store = new RedisSessionStore({ client: conn, prefix: f.prefix });
    open.push(store);
    const session = await store.getSession(cookie.split('=')[1]!);
    expect(session!.data).toEqual({ count: 20, markers });
  });

  it('a replica killed (SIGKILL) between claim and commit: another commits after the lease, exactly once', async () => {
    const f = await fleet();
    const before = await f.bank.total();
    for (const r of f.replicas) r.send({ type: 'hold-next-claim' });
    const pending = transfer(f.gateway, { from: 1, to: 2, amount: 11 });
    const claimed = await Promise.race(f.replicas.map((r) => r.waitFor((m) => m.type === 'claimed').then((m) => ({ r, m }))));
    for (const r of f.replicas) if (r !== claimed.r) r.send({ type: 'disarm' });
    claimed.r.signal('SIGKILL');
    const res = await pending;
    expect(res.status).toBe(200);
    expect((res.json() as { fence: number }).fence).toBeGreaterThan(claimed.m.fence as number);
    expect(claimed.r.alive).toBe(false);
    expect(await f.bank.total()).toBe(before);
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(ledger[0]!.request_id).toBe(res.headers['x-request-id']);
    expect(await f.bank.mismatches()).toEqual([]);
  });

  it('a replica paused past its lease (SIGSTOP, then SIGCONT) has its late write refused by the fence', async () => {
    const f = await fleet();
    const before = await f.bank.total();
    for (const r of f.replicas) r.send({ type: 'hold-next-claim' });
    const pending = transfer(f.gateway, { from: 3, to: 4, amount: 13 });
    const claimed = await Promise.race(f.replicas.map((r) => r.waitFor((m) => m.type === 'claimed').then((m) => ({ r, m }))));
    for (const r of f.replicas) if (r !== claimed.r) r.send({ type: 'disarm' });
    claimed.r.signal('SIGSTOP');
    const res = await pending; // another replica took over after the lease and committed
    expect(res.status).toBe(200);
    claimed.r.signal('SIGCONT');
    const fenced = await claimed.r.waitFor((m) => m.type === 'fenced' && m.requestId === claimed.m.requestId, 10_000);
    expect(fenced.fence).toBe(claimed.m.fence);
    expect(await f.bank.total()).toBe(before);
    const ledger = await f.bank.ledger();
    expect(ledger).toHaveLength(1);
    expect(Number(ledger[0]!.fence)).toBe((res.json() as { fence: number }).fence);
    expect(Number(ledger[0]!.fence)).toBeGreaterThan(claimed.m.fence as number);
    expect(await f.bank.mismatches()).toEqual([]);
  });

  it('Redis killed and restarted mid-run: no double commit, no lost acknowledged update, service resumes by itself', async () => {
    const f = await fleet();
    const before = await f.bank.total();
    const acknowledged: string[] = [];
    const statuses: Array<{ sent: number; at: number; status: number; update: boolean }> = [];
    const t0 = Date.now();
    let stop = false;
    const loop = async (n: number) => {
      for (let i = 0; !stop && i < 400; i++) {
        const update = i % 2 === 0;
        const sent = Date.now() - t0;
        const res = update ? await transfer(f.gateway, { from: 1 + (n % 5), to: 6 + (n % 5), amount: 1 }) : await client.send(`${f.gateway.url}/read`);
        statuses.push({ sent, at: Date.now() - t0, status: res.status, update });
        if (update && res.status === 200) acknowledged.push(res.headers['x-request-id'] as string);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    const loops = Promise.all([0, 1, 2, 3].map(loop));
    await new Promise((r) => setTimeout(r, 1000));
    await redis.kill();
    const killedAt = Date.now() - t0;
    await new Promise((r) => setTimeout(r, 800));
    await redis.start();
    const restartedAt = Date.now() - t0;
    await new Promise((r) => setTimeout(r, 2500));
    stop = true;
    await loops;
    // Reads kept being served while Redis was down.
    // (Requests both sent and answered while it was down.)
    const whileDown = (s: { sent: number; at: number }) => s.sent > killedAt + 100 && s.at < restartedAt;
    const readsWhileDown = statuses.filter((s) => !s.update && whileDown(s));
    expect(readsWhileDown.length).toBeGreaterThan(0);
    expect(readsWhileDown.map((s) => s.status)).toEqual(readsWhileDown.map(() => 200));
    // Updates were refused (503), not applied uncoordinated, while it was down.
    const updatesWhileDown = statuses.filter((s) => s.update && whileDown(s));
    expect(updatesWhileDown.length).toBeGreaterThan(0);
    expect(updatesWhileDown.map((s) => s.status)).toEqual(updatesWhileDown.map(() => 503));
    // Service resumed by itself: the last second is all successes.
    const last = statuses.filter((s) => s.at > restartedAt + 1500);
    expect(last.length).toBeGreaterThan(0);
    expect(last.every((s) => s.status === 200)).toBe(true);
    // Counted in PostgreSQL: the money is all there, and every acknowledged update is in the ledger exactly once.
    expect(await f.bank.total()).toBe(before);
    const ledger = await f.bank.ledger();
    const ids = new Set(ledger.map((l) => l.request_id));
    for (const id of acknowledged) expect(ids.has(id)).toBe(true);
    expect(await f.bank.mismatches()).toEqual([]);
    expect(ledger.length).toBeLessThanOrEqual(statuses.filter((s) => s.update).length);
    // No process crashed.
    expect([f.gateway, ...f.replicas].every((c) => c.alive)).toBe(true);
  });
});
