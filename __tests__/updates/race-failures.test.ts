import type { IncomingMessage } from 'node:http';
import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type RaceReport, type RedundantHandle, type RedundantProxy, type SessionStore } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { mountGateway, type Gateway } from '../helpers/gateway.js';
import { eventually, startReplica } from '../helpers/replica.js';
import { deadPort } from '../helpers/upstream.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { sealId } from '../../lib/wire/protocol.js';

// What the proxy tells the client of an update whose race ends without an
// answer to adopt, from the store's commit record: a copy committed (its
// answer was lost: 502 naming the upstream), a copy holds the claim (503
// naming it), nobody claimed (the race's own failure). In-process replicas on
// one MemorySessionStore, no database: the slow end-to-end story is in
// exactly-once.test.ts.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

type Handler = (handle: RedundantHandle, req: IncomingMessage) => Promise<{ status?: number; body: unknown }>;

interface Fleet {
  store: SessionStore;
  proxy: RedundantProxy;
  gw: Gateway;
  reports: RaceReport[];
}

/** Replicas by id, each with its own handler for updates (reads answer 200), behind one proxy. */
async function fleet(handlers: Record<string, Handler>, proxyOptions: Record<string, unknown> = {}, store: SessionStore = new MemorySessionStore()): Promise<Fleet> {
  open.push(store);
  const upstreams = [];
  for (const [id, handler] of Object.entries(handlers)) {
    const r = await startReplica('koa', { id, store }, (handle, req) => (req.method === 'GET' ? { body: { ok: true } } : handler(handle, req)));
    open.push(r);
    upstreams.push({ id, url: r.url });
  }
  const proxy = redundantProxy({ upstreams, store, timeout: 5_000, ...proxyOptions });
  const gw = await mountGateway('koa', proxy);
  open.push(gw, proxy);
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  // Updates are copied only to upstreams that have shown they run the worker.
  for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/health`);
  expect(Object.values(proxy.metrics().upstreams).every((u) => u.worker)).toBe(true);
  return { store, proxy, gw, reports };
}

const update = (gw: Gateway, headers: Record<string, string> = {}) => client.send(`${gw.url}/pay`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json', ...headers } });

function signal(): { promise: Promise<void>; fire(): void } {
  let fire!: () => void;
  const promise = new Promise<void>((resolve) => (fire = resolve));
  return { promise, fire };
}

/**
 * A MemorySessionStore that lets a test act between the proxy's read of the
 * commit record (when its race ends without an answer) and its seal: the
 * read of the watched request waits for `claimed`, and `sealing` fires when
 * the proxy asks for its seal. With `forgets`, that read answers nothing.
 */
function decisionStore(forgets = false) {
  const inner = new MemorySessionStore();
  const looked = signal(); // the proxy read the commit record
  const claimed = signal(); // a copy claimed, after that read
  const sealing = signal(); // the proxy asks for its seal
  let watched: string | undefined;
  const store = new Proxy(inner, {
    get(target, name) {
      if (name === 'getRequest') {
        return async (requestId: string) => {
          const record = await target.getRequest(requestId);
          if (requestId === watched) {
            watched = undefined;
            looked.fire();
            await claimed.promise;
            // A store that forgot the request (past its TTL, say): the proxy still seals, and hears who committed from the refusal.
            if (forgets) return undefined;
          }
          return record;
        };
      }
      if (name === 'claim') {
        return (requestId: string, duplicateId: string, options: Parameters<SessionStore['claim']>[2]) => {
          const granting = target.claim(requestId, duplicateId, options);
          if (duplicateId === sealId(requestId)) sealing.fire();
          return granting;
        };
      }
      const value = Reflect.get(target, name) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as SessionStore;
  return { inner, store, looked, claimed, sealing, watch: (requestId: string) => void (watched = requestId) };
}

describe('an update whose race ends without an answer to adopt', () => {
  it('a copy committed and its connection died, the other lost: 502 RP_ERR_ANSWER_LOST naming the upstream that committed', async () => {
    const committed = signal();
    const f = await fleet({
      a: async (handle) => {
        // Asks only once b committed: refused, `lost` (never adopted).
        await committed.promise;
        await handle.commitOnce(async () => undefined);
        return { body: 'never sent' };
      },
      b: async (handle, req) => {
        await handle.commitOnce(async () => undefined);
        committed.fire();
        req.socket.destroy();
        return { body: 'never sent' };
      },
    });
    const res = await update(f.gw);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST', requestId: res.headers['x-request-id'] });
    expect(res.json().message).toContain('upstream "b"');
    expect(f.reports.at(-1)!.outcome).toBe('answer-lost');
  });

  it('the proxy times out while a copy holds the claim: 503 RP_ERR_OUTCOME_UNKNOWN naming the upstream that holds it', async () => {
    const claimed = signal();
    const finish = signal();
    const f = await fleet({
      a: async (handle) => {
        await handle.commitOnce(async () => {
          claimed.fire();
          await finish.promise;
        });
        return { body: 'too late' };
      },
      b: async (handle) => {
        await claimed.promise;
        // Waits for a's claim, past the proxy's timeout.
        await handle.commitOnce(async () => undefined);
        return { body: 'never adopted' };
      },
    }, { timeout: 300 });
    const res = await update(f.gw);
    finish.fire();
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_OUTCOME_UNKNOWN' });
    expect(res.json().message).toContain('upstream "a"');
    expect(f.reports.at(-1)!.outcome).toBe('outcome-unknown');
  });
});

describe('an update whose race ends without an answer to adopt, nobody having claimed', () => {
  it('every copy failed: the race\'s own failure, not an outcome of the commit', async () => {
    const f = await fleet({
      a: async () => ({ status: 500, body: { broken: 'a' } }),
      b: async () => ({ status: 500, body: { broken: 'b' } }),
    });
    const res = await update(f.gw);
    // One of the copies' own answers, passed through.
    expect(res.status).toBe(500);
    expect([{ broken: 'a' }, { broken: 'b' }]).toContainEqual(res.json());
    expect(f.reports.at(-1)!.outcome).toBe('failed');
  });

  it('at the timeout, the answer of a copy that did not claim is adopted once the request is sealed', async () => {
    const finish = signal();
    const f = await fleet({
      a: async () => ({ status: 400, body: { invalid: 'a' } }),
      b: async () => {
        await finish.promise;
        return { status: 400, body: { invalid: 'b' } };
      },
    }, { timeout: 300 });
    const res = await update(f.gw);
    finish.fire();
    expect(res.status).toBe(400);
    expect(res.json()).toEqual({ invalid: 'a' });
    // Sealed: the proxy's own claim, confirmed, so that no copy still out can commit.
    const requestId = String(res.headers['x-request-id']);
    await expect(f.store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'committed', holder: sealId(requestId) } });
  });

  it.each([
    ['naming the upstream that committed', false, 'b'],
    ['naming no upstream when the store answered nothing for the request', true, 'unknown'],
  ])('a copy commits while the proxy seals the request at the timeout: 502 RP_ERR_ANSWER_LOST %s, the held answer not adopted', async (_, forgets, label) => {
    const { inner, store, looked, claimed, sealing, watch } = decisionStore(forgets);
    let committer: string | undefined;
    const f = await fleet({
      a: async (handle) => {
        watch(handle.requestId);
        return { status: 400, body: { invalid: 'a' } };
      },
      b: async (handle) => {
        committer = handle.duplicateId;
        await looked.promise;
        await handle.commitOnce(async () => {
          claimed.fire();
          await sealing.promise;
        });
        return { status: 201, body: 'too late' };
      },
    }, { timeout: 300 }, store);
    const res = await update(f.gw);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    expect(res.json().message).toContain(`upstream "${label}"`);
    const requestId = String(res.headers['x-request-id']);
    await expect(inner.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'committed', holder: committer } });
  });

  it('a copy that holds the claim past the seal\'s bound: 503 RP_ERR_OUTCOME_UNKNOWN naming nobody, the held answer not adopted', async () => {
    const { store, looked, claimed, watch } = decisionStore();
    const finish = signal();
    const f = await fleet({
      a: async (handle) => {
        watch(handle.requestId);
        return { status: 400, body: { invalid: 'a' } };
      },
      b: async (handle) => {
        // Claims once the proxy read the record (nobody had claimed), and keeps the claim until the test ends.
        await looked.promise;
        await handle.commitOnce(async () => {
          claimed.fire();
          await finish.promise;
        });
        return { status: 201, body: 'too late' };
      },
    }, { timeout: 300, storeTimeout: 200 }, store);
    const res = await update(f.gw);
    finish.fire();
    expect(res.status).toBe(503);
    expect(res.headers['retry-after']).toBe('1');
    expect(res.json()).toMatchObject({ code: 'RP_ERR_OUTCOME_UNKNOWN' });
    expect(res.json().message).not.toContain('upstream "');
    expect(f.reports.at(-1)!.outcome).toBe('outcome-unknown');
  });

  it('a retry of an update the proxy sealed, its answer not kept: told at once 409 RP_ERR_NOT_APPLIED, never that it was applied (the seal is not a copy\'s commit), never an upstream failure', async () => {
    const finish = signal();
    const calls = { a: 0, b: 0 };
    const big = { invalid: 'x'.repeat(200) };
    const f = await fleet({
      // First attempt: a refuses at once, b answers only after the timeout; neither claims.
      // Second attempt (the retry resumes the request id): both try to commit, and are refused.
      a: async (handle) => {
        if (calls.a++ === 0) return { status: 400, body: big };
        await handle.commitOnce(async () => undefined);
        return { status: 201, body: 'applied' };
      },
      b: async (handle) => {
        if (calls.b++ === 0) {
          await finish.promise;
          return { status: 400, body: big };
        }
        await handle.commitOnce(async () => undefined);
        return { status: 201, body: 'applied' };
      },
    }, { timeout: 300, idempotency: { maxAnswerSize: 10 } });
    const headers = { 'idempotency-key': 'k-sealed' };
    const first = await update(f.gw, headers);
    finish.fire();
    // Adopted at the timeout once sealed; too large to keep, so the key is left for the retry.
    expect(first.status).toBe(400);
    const requestId = String(first.headers['x-request-id']);
    await expect(f.store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'committed', holder: sealId(requestId) } });
    // The retry resumes the sealed request: nothing was applied, and nothing can be under it. It is told so, at
    // once, without copies (every one would lose to the seal), and so is the next.
    for (let i = 0; i < 2; i++) {
      const retry = await update(f.gw, headers);
      expect(retry.headers['x-request-id']).toBe(requestId);
      expect(retry.status).toBe(409);
      expect(retry.json()).toMatchObject({ code: 'RP_ERR_NOT_APPLIED', requestId });
      expect(retry.json().message).toContain('new Idempotency-Key');
    }
    expect(calls).toEqual({ a: 1, b: 1 });
    // A new key runs it.
    const fresh = await update(f.gw, { 'idempotency-key': 'k-sealed-2' });
    expect(fresh.status).toBe(201);
  });

  it('no copy reached a worker (the only upstream is down): the race\'s own failure, although the store has no record of the request', async () => {
    const store = new MemorySessionStore();
    open.push(store);
    const proxy = redundantProxy({ upstreams: [{ id: 'gone', url: `http://127.0.0.1:${await deadPort()}` }], store, timeout: 2_000 });
    const gw = await mountGateway('koa', proxy);
    open.push(gw, proxy);
    const ended = new Promise<RaceReport>((resolve) => proxy.on('race:end', resolve));
    const res = await update(gw);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
    expect((await ended).adopted).toBeFalsy();
    // No adoption is recorded for a race that adopted nothing (the memory store writes as it is called).
    await expect(store.getRequest(String(res.headers['x-request-id']))).resolves.toBeUndefined();
  });
});

describe('Idempotency-Key, as the proxy uses it', () => {
  it('holds a key for the race\'s timeout plus four store calls: a gateway that dies leaves it to a retry after that', async () => {
    const inner = new MemorySessionStore();
    const locks: number[] = [];
    const store = new Proxy(inner, {
      get(target, name) {
        if (name === 'beginIdempotent') {
          return (...args: Parameters<SessionStore['beginIdempotent']>) => {
            locks.push(args[3]);
            return target.beginIdempotent(...args);
          };
        }
        const value = Reflect.get(target, name) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    }) as SessionStore;
    const f = await fleet({ a: async () => ({ status: 201, body: { ok: true } }) }, { timeout: 700, storeTimeout: 50 }, store);
    const res = await update(f.gw, { 'idempotency-key': 'k-lock' });
    expect(res.status).toBe(201);
    expect(locks).toEqual([700 + 4 * 50]);
  });

  it('a retry answered from the key (a replay, or 422 for another body) starts no race', async () => {
    let updates = 0;
    const f = await fleet({ a: async () => ({ status: 201, body: { n: ++updates } }) });
    let races = 0;
    f.proxy.on('race:start', () => void races++);
    const first = await update(f.gw, { 'idempotency-key': 'k-replay' });
    expect(first.status).toBe(201);
    expect(races).toBe(1);
    const again = await update(f.gw, { 'idempotency-key': 'k-replay' });
    expect(again.status).toBe(201);
    expect(again.headers['idempotent-replayed']).toBe('true');
    const other = await client.send(`${f.gw.url}/pay`, { method: 'POST', body: '{"other":1}', headers: { 'content-type': 'application/json', 'idempotency-key': 'k-replay' } });
    expect(other.status).toBe(422);
    // A race starts in the same step as the key is looked at, before its answer can reach the client.
    expect(races).toBe(1);
    expect(updates).toBe(1);
  });

  it('a retry that resumes a key runs under the first request id, with copy ids of its own (attempt 2)', async () => {
    const seen: Array<{ requestId: string; duplicateId: string; key: string | null }> = [];
    const f = await fleet({
      a: async (handle) => {
        seen.push({ requestId: handle.requestId, duplicateId: handle.duplicateId, key: handle.idempotencyKey });
        // The first attempt fails without committing: the key is left for a retry to resume.
        return seen.length === 1 ? { status: 500, body: { broken: true } } : { status: 201, body: { ok: true } };
      },
    });
    const first = await update(f.gw, { 'idempotency-key': 'k-resume' });
    expect(first.status).toBe(500);
    const again = await update(f.gw, { 'idempotency-key': 'k-resume' });
    expect(again.status).toBe(201);
    expect(seen).toHaveLength(2);
    expect(seen[1]!.requestId).toBe(seen[0]!.requestId);
    expect(seen[1]!.duplicateId).not.toBe(seen[0]!.duplicateId);
    expect(seen[1]!.duplicateId.startsWith(`${seen[0]!.requestId}.2-`)).toBe(true);
    expect(seen[1]!.key).toBe(seen[0]!.key);
    // The adoption that counts is the one of the attempt that ended the key (the first recorded stands).
    const adopted = await eventually(async () => (await f.store.getRequest(seen[0]!.requestId))?.adopted);
    expect(adopted.duplicateIds).toEqual([seen[1]!.duplicateId]);
  });

  it('applies only to updates: a read with a key runs every time, never replayed', async () => {
    const f = await fleet({ a: async () => ({ body: { ok: true } }) });
    const first = await client.send(`${f.gw.url}/read`, { headers: { 'idempotency-key': 'k-read' } });
    const again = await client.send(`${f.gw.url}/read`, { headers: { 'idempotency-key': 'k-read' } });
    expect([first.status, again.status]).toEqual([200, 200]);
    expect(again.headers['idempotent-replayed']).toBeUndefined();
    expect(again.headers['x-request-id']).not.toBe(first.headers['x-request-id']);
  });

  it('with idempotency off, an update with a key simply runs, every time', async () => {
    const f = await fleet({ a: async () => ({ status: 201, body: { ok: true } }) }, { idempotency: false });
    const first = await update(f.gw, { 'idempotency-key': 'k-off' });
    const again = await update(f.gw, { 'idempotency-key': 'k-off' });
    expect([first.status, again.status]).toEqual([201, 201]);
    expect(again.headers['idempotent-replayed']).toBeUndefined();
    expect(again.headers['x-request-id']).not.toBe(first.headers['x-request-id']);
  });
});
