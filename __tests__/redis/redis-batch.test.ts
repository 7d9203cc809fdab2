import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { codes, isRedundantProxyError, isSupersededError } from '../../lib/errors.js';
import { RECORD_BATCH, RecordBatcher, type BatchedRecord } from '../../lib/store/redis/batch.js';
import { SAVE_CANDIDATE } from '../../lib/store/redis/scripts.js';
import { RedisSessionStore, type RedisSessionStoreOptions } from '../../lib/store/redis.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { gate } from '../helpers/gated-redis.js';
import { eventually } from '../helpers/replica.js';
import { sleep } from '../helpers/upstream.js';
import { VirtualTime } from '../helpers/virtual-time.js';
import { withScheduler, type Scheduler } from '../../lib/time.js';
import { redundantProxy, type SessionStore } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { startReplica } from '../helpers/replica.js';

// The request log's writes go to Redis in batches: one script call for the
// records of one turn of the event loop, bounded, flushed on close; each
// record's promise settles with its batch.

let server: RedisServer;
let admin: Redis;
const opened = closeAfterEach();

beforeAll(async () => {
  server = await startRedisServer();
  admin = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
  await admin.connect();
});

const http = testClient();

afterAll(async () => {
  await http.close();
  await admin.quit();
  await server.stop();
});

/** How many times Redis ran `command` (inside scripts too), from INFO commandstats. */
async function ran(command: string): Promise<number> {
  const m = new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(await admin.info('commandstats'));
  return m ? Number(m[1]) : 0;
}

/** A client whose script calls are counted, and can be held until the test lets them go. */
async function countedClient() {
  const client = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
  await client.connect();
  const calls: Array<{ keys: number }> = [];
  /** The script of each call, in order. */
  const shas: string[] = [];
  let gate: Promise<void> | null = null;
  const evalsha = client.evalsha.bind(client) as (...a: unknown[]) => Promise<unknown>;
  (client as unknown as { evalsha: unknown }).evalsha = async (...args: unknown[]) => {
    calls.push({ keys: Number(args[1]) });
    shas.push(String(args[0]));
    if (gate) await gate;
    return evalsha(...args);
  };
  return {
    client,
    calls,
    shas,
    hold() {
      let release!: () => void;
      gate = new Promise<void>((r) => (release = r));
      return () => {
        gate = null;
        release();
      };
    },
  };
}

async function open(options: Partial<RedisSessionStoreOptions> = {}) {
  const counted = await countedClient();
  const store = new RedisSessionStore({ client: counted.client, prefix: `rp-batch:${randomUUID()}:`, ...options });
  opened.push({ close: () => counted.client.quit() }, store);
  return { store, ...counted };
}

const copy = (requestId: string, duplicateId: string, index = 1) => ({ requestId, duplicateId, upstreamId: `up-${duplicateId}`, index, of: 3, update: false, sessionId: 's1' });

/** Real turns of the event loop, but timers that never fire: a record held for maxDelay stays held until something sends it. */
const HELD: Scheduler = { now: () => performance.now(), setTimeout: () => ({}), clearTimeout: () => undefined, setImmediate: (fn) => void setImmediate(fn) };

/** A few turns of the event loop: a batch due at the end of a turn has gone by then. */
async function turns() {
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
}

describe('RedisSessionStore: the request log in batches', () => {
  it('writes the records of one turn of the event loop in one script call, each with its own reply', async () => {
    const { store, calls } = await open();
    const rid = randomUUID();
    const replies = await Promise.all([
      store.recordCopy(copy(rid, 'a', 1)),
      store.recordCopy(copy(rid, 'b', 2)),
      store.recordCopy(copy(rid, 'a', 1)), // the same copy again, in the same batch
      store.recordAdoption({ requestId: rid, sessionId: '', update: false, duplicateIds: ['b'], upstreamIds: ['up-b'] }),
      store.recordCancelled(rid, 'a'),
    ]);
    expect(calls).toEqual([{ keys: 5 }]);
    expect(replies.slice(0, 3)).toEqual([{ duplicate: false }, { duplicate: false }, { duplicate: true }]);
    const record = await store.getRequest(rid);
    expect(record).toMatchObject({ requestId: rid, sessionId: 's1', update: false, adopted: { duplicateIds: ['b'], upstreamIds: ['up-b'] }, cancelled: ['a'] });
    expect(record!.copies.map((c) => c.duplicateId)).toEqual(['a', 'b']);
  });

  it("writes each record's time in whole milliseconds by the Redis clock, and its number", async () => {
    const prefix = `rp-batch-time:${randomUUID()}:`;
    const { store } = await open({ prefix });
    const rid = randomUUID();
    const before = Date.now();
    await store.recordCopy(copy(rid, 'a'));
    await store.recordCopy(copy(rid, 'b'));
    await store.recordAdoption({ requestId: rid, sessionId: '', update: false, duplicateIds: ['b'], upstreamIds: ['up-b'] });
    await store.recordCancelled(rid, 'a');
    const after = Date.now();
    const hash = await admin.hgetall(`${prefix}{r:${rid}}`);
    // Redis and this process share the clock: the times fall between.
    const [n1, at1] = hash['c:a']!.split('|');
    const [n2, at2] = hash['c:b']!.split('|');
    expect([n1, n2, hash['x:a']]).toEqual(['1', '2', '4']);
    for (const at of [at1!, at2!, hash.adopted!.split('|')[0]!]) {
      expect(at).toMatch(/^\d{13}$/);
      expect(Number(at)).toBeGreaterThanOrEqual(before - 5);
      expect(Number(at)).toBeLessThanOrEqual(after + 5);
    }
  });

  it('builds the time from TIME as seconds and zero-padded milliseconds', async () => {
    // The script's own line, run on the TIME replies that need the padding.
    const line = /^local at = .*$/m.exec(RECORD_BATCH.lua)![0];
    const at = (sec: string, usec: string) => admin.eval(`local t = {ARGV[1], ARGV[2]}\n${line}\nreturn at`, 0, sec, usec);
    await expect(at('1764640000', '0')).resolves.toBe('1764640000000');
    await expect(at('1764640000', '5000')).resolves.toBe('1764640000005');
    await expect(at('1764640000', '999')).resolves.toBe('1764640000000');
    await expect(at('1764640000', '42999')).resolves.toBe('1764640000042');
    await expect(at('1764640000', '999999')).resolves.toBe('1764640000999');
  });

  it('keeps the request\'s session id and update flag as the first record gave them, whatever the id holds', async () => {
    const { store } = await open();
    for (const [sessionId, update] of [['sé|{x}\n 1', true], ['', false], ['0', true]] as const) {
      const rid = randomUUID();
      await store.recordCopy({ ...copy(rid, 'a'), sessionId, update });
      await store.recordAdoption({ requestId: rid, sessionId: 'other', update: !update, duplicateIds: ['a'], upstreamIds: ['up-a'] });
      await expect(store.getRequest(rid)).resolves.toMatchObject({ requestId: rid, sessionId, update });
    }
  });

  it('sends a full batch at once, and splits a turn into batches of maxRecords', async () => {
    const { store, calls } = await open({ batch: { maxRecords: 4 } });
    await Promise.all(Array.from({ length: 10 }, (_, i) => store.recordCopy(copy(`r-${i}`, 'a'))));
    expect(calls.map((c) => c.keys)).toEqual([4, 4, 2]);
    for (let i = 0; i < 10; i++) expect((await store.getRequest(`r-${i}`))!.copies).toHaveLength(1);
  });

  it('gives every record its own key and the TTL, and keeps a longer TTL a lease set', async () => {
    const ttl = 60_000;
    const prefix = `rp-batch-ttl:${randomUUID()}:`;
    const { store: other } = await open({ ttl, prefix });
    await other.recordCopy(copy('fresh', 'a'));
    const fresh = await admin.pttl(`${prefix}{r:fresh}`);
    expect(fresh).toBeGreaterThan(ttl);
    expect(fresh).toBeLessThanOrEqual(ttl + slackOf(ttl));
    // A lease longer than the ttl keeps the record that long: a later record must not shorten it.
    await other.claim('leased', 'a', { leaseMs: 10 * ttl });
    await other.recordCopy({ ...copy('leased', 'b'), update: true });
    expect(await admin.pttl(`${prefix}{r:leased}`)).toBeGreaterThan(5 * ttl);
  });

  it('fails every record of a batch Redis did not write with RP_ERR_STORE_UNAVAILABLE, and writes the next batch', async () => {
    const { store, client } = await open();
    const real = client.evalsha.bind(client);
    let fail = true;
    (client as unknown as { evalsha: unknown }).evalsha = (...args: unknown[]) =>
      fail ? Promise.reject(new Error('connection lost')) : (real as (...a: unknown[]) => Promise<unknown>)(...args);
    const results = await Promise.allSettled([store.recordCopy(copy('x1', 'a')), store.recordAdoption({ requestId: 'x1', sessionId: '', update: false, duplicateIds: ['a'], upstreamIds: ['up-a'] })]);
    for (const r of results) {
      expect(r.status).toBe('rejected');
      const err = (r as PromiseRejectedResult).reason;
      expect(isRedundantProxyError(err) && err.code).toBe(codes.STORE_UNAVAILABLE);
      expect(String(err.message)).toMatch(/connection lost/);
    }
    fail = false;
    await expect(store.recordCopy(copy('x2', 'a'))).resolves.toEqual({ duplicate: false });
  });

  it('refuses a record at once when maxPending records are queued or on their way', async () => {
    const { store, hold, calls } = await open({ batch: { maxPending: 3 } });
    const release = hold();
    const first = [store.recordCopy(copy('p1', 'a')), store.recordCopy(copy('p2', 'a')), store.recordCopy(copy('p3', 'a'))];
    while (calls.length === 0) await new Promise((r) => setImmediate(r));
    // Three on their way: a fourth is refused without waiting.
    const err = await store.recordCopy(copy('p4', 'a')).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isRedundantProxyError(err) && err.code).toBe(codes.STORE_UNAVAILABLE);
    expect(String((err as Error).message)).toMatch(/3 calls waiting/);
    release();
    await Promise.all(first);
    await expect(store.recordCopy(copy('p5', 'a'))).resolves.toEqual({ duplicate: false });
  });

  it("skips the session's side of an adoption whose copy changed nothing, and keeps it otherwise", async () => {
    const { store, calls } = await open();
    await store.saveCandidate('s9', 'r9', 'a', { cart: 1 });
    calls.length = 0;
    await store.recordAdoption({ requestId: 'r9', sessionId: 's9', update: false, duplicateIds: ['a'], upstreamIds: ['up-a'], sessionChanged: false });
    expect(calls).toEqual([{ keys: 1 }]); // the request log's batch only
    expect(await store.getSession('s9')).toBeUndefined();
    calls.length = 0;
    await store.recordAdoption({ requestId: 'r10', sessionId: 's9', update: false, duplicateIds: ['a'], upstreamIds: ['up-a'] });
    expect(calls).toHaveLength(2);
  });

  it('reads the sessions asked for in one turn with one script call, each with its own answer', async () => {
    const { store, calls } = await open();
    await store.saveCandidate('sa', 'ra', 'a', { n: 1 });
    await store.recordAdoption({ requestId: 'ra', sessionId: 'sa', update: false, duplicateIds: ['a'], upstreamIds: ['up-a'] });
    await store.saveCandidate('sb', 'rb', 'a', { n: 2 });
    await store.recordAdoption({ requestId: 'rb', sessionId: 'sb', update: false, duplicateIds: ['a'], upstreamIds: ['up-a'] });
    calls.length = 0;
    const [a, b, none] = await Promise.all([store.getSession('sa'), store.getSession('sb'), store.getSession('nobody')]);
    expect(calls).toEqual([{ keys: 3 }]);
    expect(a).toMatchObject({ sessionId: 'sa', data: { n: 1 }, version: 1 });
    expect(b).toMatchObject({ sessionId: 'sb', data: { n: 2 }, version: 1 });
    expect(none).toBeUndefined();
    // A session nobody has is only read: no expiry is set on nothing.
    const before = await ran('pexpire');
    await expect(store.getSession('nobody')).resolves.toBeUndefined();
    expect(await ran('pexpire')).toBe(before);
  });

  it('lets records nobody waits for wait maxDelay for others; a record someone waits for goes at the end of the turn and takes them along', async () => {
    const { store, calls } = await open(withScheduler({ batch: { maxDelay: 100 } }, HELD));
    const rid = randomUUID();
    const held: Promise<unknown>[] = [
      store.recordCopy(copy(rid, 'read')), // a read's copy
      store.recordAdoption({ requestId: rid, sessionId: 's1', update: false, duplicateIds: ['read'], upstreamIds: ['up-read'], sessionChanged: false }), // promotes nothing
    ];
    await turns();
    expect(calls).toEqual([]);
    // An update's copy: its claim waits for it.
    const update = store.recordCopy({ ...copy(randomUUID(), 'upd'), update: true });
    await turns();
    expect(calls).toEqual([{ keys: 3 }]);
    await expect(update).resolves.toEqual({ duplicate: false });
    await Promise.all(held);
    expect(await store.getRequest(rid)).toMatchObject({ copies: [{ duplicateId: 'read' }], adopted: { duplicateIds: ['read'] } });
    // A copy stopped: the proxy's copy:cancelled event waits for it.
    const cancelled = store.recordCancelled(rid, 'read');
    await turns();
    expect(calls).toEqual([{ keys: 3 }, { keys: 1 }]);
    await cancelled;
    // An adoption that promotes a session: the answer waits for it.
    const promoting = store.recordAdoption({ requestId: randomUUID(), sessionId: 's2', update: false, duplicateIds: ['a'], upstreamIds: ['up-a'], sessionChanged: true });
    await turns();
    // The record (one key), and the promotion's own script (three keys).
    expect(calls.slice(2).map((c) => c.keys).sort()).toEqual([1, 3]);
    await promoting;
  });

  it('with maxDelay 0 sends a record that could wait at the end of the turn, on no timer', async () => {
    // Held timers: a record put on a timer would never go.
    const { store, calls } = await open(withScheduler({}, HELD));
    const recorded = store.recordCopy(copy(randomUUID(), 'read'));
    await turns();
    expect(calls).toEqual([{ keys: 1 }]);
    await expect(recorded).resolves.toEqual({ duplicate: false });
  });

  it('writes what was recorded before close() before it resolves', async () => {
    const prefix = `rp-batch-close:${randomUUID()}:`;
    const { store } = await open(withScheduler({ prefix, batch: { maxDelay: 100 } }, HELD));
    const recorded = store.recordCopy(copy('closing', 'a'));
    await store.close();
    await expect(recorded).resolves.toEqual({ duplicate: false });
    expect(await admin.hexists(`${prefix}{r:closing}`, 'c:a')).toBe(1);
  });
});

describe('RedisSessionStore: close() and the batch on its way', () => {
  it('resolves only once the batch already sent is answered', async () => {
    const prefix = `rp-batch-closing:${randomUUID()}:`;
    const { store, hold } = await open({ prefix });
    const release = hold();
    const recorded = store.recordCopy(copy('on-its-way', 'a'));
    await turns(); // sent, and held before Redis
    let closed = false;
    const closing = store.close().then(() => (closed = true));
    await turns();
    expect(closed).toBe(false);
    release();
    await closing;
    expect(await admin.hexists(`${prefix}{r:on-its-way}`, 'c:a')).toBe(1);
    await expect(recorded).resolves.toEqual({ duplicate: false });
  });

  it('waits for a claim on its way and hands back the grant that comes after it: the next copy gets the claim at once', async () => {
    const prefix = `rp-batch-closing-claim:${randomUUID()}:`;
    // A client whose script replies are held back (Redis has run them).
    const client = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
    await client.connect();
    let gate: Promise<void> | null = null;
    // EVALSHA, and EVAL (a script Redis does not know yet goes by EVAL).
    for (const name of ['evalsha', 'eval'] as const) {
      const real = client[name].bind(client) as (...a: unknown[]) => Promise<unknown>;
      (client as unknown as Record<string, unknown>)[name] = async (...args: unknown[]) => {
        const reply = await real(...args);
        if (gate) await gate;
        return reply;
      };
    }
    const store = new RedisSessionStore({ client, prefix });
    let letGo!: () => void;
    gate = new Promise<void>((r) => (letGo = r));
    // Whatever fails below, nothing stays held and the client is closed.
    opened.push({ close: async () => (letGo(), client.status === 'end' ? undefined : void (await client.quit())) }, store);
    const claim = store.claim('late-grant', 'b', { leaseMs: 60_000 }).then(
      () => 'granted',
      (e: unknown) => (e as { code?: string }).code,
    );
    // Redis grants it; the reply is held.
    await eventually(async () => (await admin.hget(`${prefix}{r:late-grant}`, 'holder')) === 'b' || undefined);
    let closed = false;
    const closing = store.close().then(() => (closed = true));
    await turns();
    expect(closed).toBe(false); // the claim is still on its way
    gate = null;
    letGo();
    await closing;
    await expect(claim).resolves.toBe('RP_ERR_CLOSED');
    await client.quit(); // as the docs say: the client after the store
    // Handed back before close() resolved: another store gets the claim now, not after the 60 s lease.
    const { store: next } = await open({ prefix });
    const grant = await Promise.race([next.claim('late-grant', 'c', { leaseMs: 1000 }), sleep(2000).then(() => 'still waiting')]);
    expect(grant).toMatchObject({ fence: expect.any(Number) });
  });
});

describe('a read that changes its session while the request log is held back (batch.maxDelay)', () => {
  it('has the worker send the held records before it waits for its copy record, and saves the session', async () => {
    // Held timers: the copy's record goes only when something sends it.
    const { store: real, shas } = await open(withScheduler({ batch: { maxDelay: 100 } }, HELD));
    const calls: string[] = [];
    // The same store, its calls logged in order.
    const store = new Proxy(real, {
      get(target, name, receiver) {
        const value = Reflect.get(target, name, receiver) as unknown;
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          calls.push(String(name));
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    }) as SessionStore;
    // The default storeTimeout: without the flush the record would time out and the candidate go unchecked.
    const replica = await startReplica('koa', { id: 'a', store }, (h) => {
      h.session.data.visits = 1;
      return { body: { ok: true } };
    });
    const workerErrors: unknown[] = [];
    replica.worker.on('error', (e) => workerErrors.push(e));
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: replica.url }], store });
    const gw = await mountGateway('koa', proxy);
    opened.push(replica, gw, proxy);
    const res = await http.send(`${gw.url}/visit`);
    expect(res.status).toBe(200);
    const flushed = calls.indexOf('flushRecords');
    expect(flushed).toBeGreaterThan(calls.indexOf('recordCopy'));
    expect(flushed).toBeLessThan(calls.indexOf('saveCandidate'));
    // The copy's record reached Redis before the candidate did.
    expect(shas.indexOf(RECORD_BATCH.sha)).toBeGreaterThanOrEqual(0);
    expect(shas.indexOf(RECORD_BATCH.sha)).toBeLessThan(shas.indexOf(SAVE_CANDIDATE.sha));
    expect(workerErrors).toEqual([]);
    const sessionId = String(res.headers['set-cookie']).split(';')[0]!.split('=')[1]!;
    await expect(real.getSession(sessionId)).resolves.toMatchObject({ data: { visits: 1 } });
  });

  it('flushRecords() sends the held records at the end of the turn, with the turn\'s others', async () => {
    const { store, calls } = await open(withScheduler({ batch: { maxDelay: 100 } }, HELD));
    const recorded = [store.recordCopy(copy(randomUUID(), 'a'))];
    await turns();
    expect(calls).toEqual([]);
    store.flushRecords();
    recorded.push(store.recordCopy(copy(randomUUID(), 'b')));
    await turns();
    expect(calls).toEqual([{ keys: 2 }]);
    await expect(Promise.all(recorded)).resolves.toEqual([{ duplicate: false }, { duplicate: false }]);
  });

  it('flushRecords() with maxDelay 0 changes nothing: the turn\'s records still go in one call', async () => {
    const { store, calls } = await open();
    const recorded = [store.recordCopy(copy(randomUUID(), 'a'))];
    store.flushRecords();
    recorded.push(store.recordCopy(copy(randomUUID(), 'b')));
    await Promise.all(recorded);
    expect(calls).toEqual([{ keys: 2 }]);
  });

  it('a store whose flushRecords() rejects: the worker reports it and answers', async () => {
    const { store: real } = await open();
    const store = Object.assign(Object.create(Object.getPrototypeOf(real) as object) as SessionStore, {});
    // The real store's methods, bound, and a flushRecords that fails later.
    for (const name of ['recordCopy', 'recordAdoption', 'recordCancelled', 'getRequest', 'saveCandidate', 'getSession', 'claim', 'confirm', 'release', 'close'] as const) {
      (store as unknown as Record<string, unknown>)[name] = (real[name] as (...a: unknown[]) => unknown).bind(real);
    }
    (store as { flushRecords: () => Promise<void> }).flushRecords = async () => {
      throw new Error('flush failed');
    };
    const replica = await startReplica('koa', { id: 'a', store }, (h) => {
      h.session.data.visits = 1;
      return { body: { ok: true } };
    });
    const workerErrors: Array<{ operation?: string }> = [];
    replica.worker.on('error', (e) => workerErrors.push(e as { operation?: string }));
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: replica.url }], store });
    const gw = await mountGateway('koa', proxy);
    opened.push(replica, gw, proxy);
    const res = await http.send(`${gw.url}/visit`);
    expect(res.status).toBe(200);
    expect(workerErrors).toEqual([expect.objectContaining({ operation: 'recordCopy' })]);
  });
});

describe('RedisSessionStore: claims and confirms in batches (single Redis)', () => {
  const lease = { leaseMs: 30_000 };

  it('sends the claims of one turn in one script call, each with its own answer, fences in order', async () => {
    const prefix = `rp-batch-claims:${randomUUID()}:`;
    const { store: other } = await open({ prefix });
    const { store, calls } = await open({ prefix, pollInterval: 10_000 });
    const held = await other.claim('held', 'x', lease);
    await other.confirm('done', 'x', (await other.claim('done', 'x', lease)).fence);
    calls.length = 0;
    const outcomes = [
      store.claim('free-1', 'a', lease),
      store.claim('done', 'a', lease),
      store.claim('free-2', 'a', lease),
      store.claim('held', 'a', lease),
    ].map((p) => p.then((grant) => ({ grant }), (err: unknown) => ({ err })));
    // The fence counter and four requests, in one call.
    while (calls.length === 0) await new Promise((r) => setImmediate(r));
    expect(calls).toEqual([{ keys: 5 }]);
    const [free1, done, free2] = await Promise.all(outcomes.slice(0, 3));
    expect(free1).toMatchObject({ grant: { fence: expect.any(Number) } });
    expect(free2).toMatchObject({ grant: { fence: expect.any(Number) } });
    expect((free2 as { grant: { fence: number } }).grant.fence).toBeGreaterThan((free1 as { grant: { fence: number } }).grant.fence);
    expect(isSupersededError((done as { err: unknown }).err)).toBe(true);
    expect(done).toMatchObject({ err: { committedBy: 'x' } });
    // The fourth waits for the holder, and hears the commit.
    await other.confirm('held', 'x', held.fence);
    expect(await outcomes[3]).toMatchObject({ err: { code: codes.SUPERSEDED, committedBy: 'x' } });
    await expect(store.getRequest('free-1')).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'a' } });
  });

  it('a waiter woken while it looks looks once more, then waits again: no loop of looks', async () => {
    const prefix = `rp-batch-again:${randomUUID()}:`;
    const { store: holder } = await open({ prefix });
    const { store, calls, hold } = await open({ prefix, pollInterval: 10_000, commandTimeout: 10_000 });
    const held = await holder.claim('again', 'x', lease);
    const waiting = store.claim('again', 'a', lease).then(
      () => 'granted',
      (err: unknown) => err,
    );
    // The store's inbox, once it listens (its first wait subscribes it).
    let inbox: string | undefined;
    for (let i = 0; i < 200 && !inbox; i++) {
      inbox = ((await admin.pubsub('CHANNELS', `${prefix}inbox:*`)) as string[])[0];
      if (!inbox) await new Promise((r) => setTimeout(r, 5));
    }
    expect(inbox).toBeDefined();
    const roundTrips = async (n: number) => {
      for (let i = 0; i < n; i++) await admin.ping();
    };
    await roundTrips(5);
    const before = calls.length;
    // A release the holder never made (as a lost message's replay would say): the waiter looks, held before Redis...
    const release = hold();
    await admin.publish(inbox!, JSON.stringify(['released', 'again']));
    for (let i = 0; i < 200 && calls.length === before; i++) await new Promise((r) => setTimeout(r, 5));
    expect(calls.length).toBe(before + 1);
    // ...and is told again while that look is on its way: one more look after it.
    await admin.publish(inbox!, JSON.stringify(['released', 'again']));
    await roundTrips(5);
    release();
    await roundTrips(20);
    expect(calls.length).toBe(before + 2);
    await holder.confirm('again', 'x', held.fence);
    expect(await waiting).toMatchObject({ code: codes.SUPERSEDED, committedBy: 'x' });
    // With the inbox listening, a copy told to wait claims once and looks no more until it is told.
    const next = await holder.claim('again-2', 'x', lease);
    const start = calls.length;
    const second = store.claim('again-2', 'a', lease).then(
      () => 'granted',
      (err: unknown) => err,
    );
    await roundTrips(20);
    expect(calls.length).toBe(start + 1);
    // And the release wakes it through the inbox alone: nothing on the request's own channel.
    const published = await ran('spublish');
    await holder.release('again-2', 'x', next.fence);
    expect(await second).toBe('granted');
    expect(await ran('spublish')).toBe(published);
  });

  it('sends the confirms of one turn in one script call, each with its own answer', async () => {
    const { store, calls } = await open();
    const one = await store.claim('c-1', 'a', lease);
    const two = await store.claim('c-2', 'a', lease);
    calls.length = 0;
    const results = await Promise.allSettled([
      store.confirm('c-1', 'a', one.fence),
      store.confirm('c-2', 'a', two.fence + 1), // not its fence
      store.confirm('c-2', 'b', two.fence), // not the holder
    ]);
    expect(calls).toEqual([{ keys: 3 }]);
    expect(results[0]).toEqual({ status: 'fulfilled', value: undefined });
    for (const r of results.slice(1)) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: codes.SUPERSEDED, committedBy: null });
    }
    await expect(store.getRequest('c-1')).resolves.toMatchObject({ commit: { state: 'committed', holder: 'a', fence: one.fence } });
    await expect(store.getRequest('c-2')).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'a', fence: two.fence } });
  });

  it('fails every claim and confirm of a batch Redis did not run with RP_ERR_STORE_UNAVAILABLE (503): nothing is granted or committed', async () => {
    const { store, client } = await open();
    const granted = await store.claim('f-0', 'a', lease);
    const real = client.evalsha.bind(client);
    let fail = true;
    (client as unknown as { evalsha: unknown }).evalsha = (...args: unknown[]) =>
      fail ? Promise.reject(new Error('connection lost')) : (real as (...a: unknown[]) => Promise<unknown>)(...args);
    const results = await Promise.allSettled([store.claim('f-1', 'a', lease), store.claim('f-2', 'a', lease), store.confirm('f-0', 'a', granted.fence)]);
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: codes.STORE_UNAVAILABLE, status: 503 });
    }
    fail = false;
    await expect(store.getRequest('f-1')).resolves.toBeUndefined();
    await expect(store.getRequest('f-0')).resolves.toMatchObject({ commit: { state: 'claimed' } });
    await expect(store.claim('f-1', 'a', lease)).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('refuses a claim at once when maxPending claims are queued or on their way: updates fail closed while Redis is slow', async () => {
    const { store, hold, calls } = await open({ batch: { maxPending: 2 } });
    const release = hold();
    const first = [store.claim('m-1', 'a', lease), store.claim('m-2', 'a', lease)];
    while (calls.length === 0) await new Promise((r) => setImmediate(r));
    const err = await store.claim('m-3', 'a', lease).then(() => null, (e: unknown) => e);
    expect(err).toMatchObject({ code: codes.STORE_UNAVAILABLE, status: 503 });
    release();
    await expect(Promise.all(first)).resolves.toHaveLength(2);
    await expect(store.getRequest('m-3')).resolves.toBeUndefined();
  });

  it('a confirm asked for just before close() still reaches Redis', async () => {
    const prefix = `rp-batch-close:${randomUUID()}:`;
    const { store } = await open({ prefix });
    const grant = await store.claim('closing', 'a', lease);
    const confirmed = store.confirm('closing', 'a', grant.fence);
    await store.close();
    await expect(confirmed).resolves.toBeUndefined();
    expect(await admin.hget(`${prefix}{r:closing}`, 'state')).toBe('committed');
  });
});

describe('RecordBatcher', () => {
  const record = (n: number): BatchedRecord => ({ key: `k${n}`, args: ['c0', `r${n}`, 'a', '{}'] });
  /** A batcher on virtual time, maxDelay 5, that keeps the keys of each call it sends. */
  const onVirtualTime = (maxRecords: number) => {
    const time = new VirtualTime();
    const sent: string[][] = [];
    const batcher = new RecordBatcher(async (keys) => (sent.push(keys), keys.map(() => 0)), { maxRecords, maxDelay: 5, maxPending: 100 }, 1000, false, time);
    return { time, sent, batcher };
  };

  it('waits maxDelay ms for more records, then sends them together', async () => {
    const { time, sent, batcher } = onVirtualTime(100);
    const done = [batcher.add(record(1), true)];
    await time.advance(4);
    done.push(batcher.add(record(2), true));
    await time.advance(0);
    expect(sent).toEqual([]);
    await time.advance(1);
    expect(sent).toEqual([['k1', 'k2']]);
    await expect(Promise.all(done)).resolves.toEqual([0, 0]);
  });

  it('sends a record someone waits for at the end of the turn, with the records that were waiting for maxDelay', async () => {
    const { time, sent, batcher } = onVirtualTime(100);
    const done = [batcher.add(record(1), true)];
    await time.advance(2);
    expect(sent).toEqual([]);
    done.push(batcher.add(record(2)));
    await time.advance(0);
    expect(sent).toEqual([['k1', 'k2']]);
    // The timer the first one set is gone: nothing more is sent.
    await time.advance(10);
    expect(sent).toEqual([['k1', 'k2']]);
    await expect(Promise.all(done)).resolves.toEqual([0, 0]);
    // Once more, the other way round: a waiting record after the end-of-turn one goes with it.
    const more = [batcher.add(record(3)), batcher.add(record(4), true)];
    await time.advance(0);
    expect(sent).toEqual([['k1', 'k2'], ['k3', 'k4']]);
    await expect(Promise.all(more)).resolves.toEqual([0, 0]);
  });

  it('sends a full batch at once, even of records that could wait', async () => {
    const { time, sent, batcher } = onVirtualTime(2);
    const done = [batcher.add(record(1), true), batcher.add(record(2), true)];
    expect(sent).toEqual([['k1', 'k2']]);
    await expect(Promise.all(done)).resolves.toEqual([0, 0]);
  });

  it('gives a record that could wait its own maxDelay after a batch went: no earlier timer sends it', async () => {
    const { time, sent, batcher } = onVirtualTime(100);
    const done = [batcher.add(record(1), true)]; // its timer: at 5
    await time.advance(1);
    done.push(batcher.add(record(4), true)); // the same timer: no second one
    await time.advance(1);
    done.push(batcher.add(record(2))); // goes at the end of the turn, with the first two
    await time.advance(1);
    expect(sent).toEqual([['k1', 'k4', 'k2']]);
    done.push(batcher.add(record(3), true)); // at 3: its own timer, at 8
    await time.advance(4); // 7: no timer from before sends it
    expect(sent).toEqual([['k1', 'k4', 'k2']]);
    await time.advance(1);
    expect(sent).toEqual([['k1', 'k4', 'k2'], ['k3']]);
    await expect(Promise.all(done)).resolves.toEqual([0, 0, 0, 0]);
  });

  it('a turn whose batch went full sends nothing more at its end: a record that could wait still waits', async () => {
    const { time, sent, batcher } = onVirtualTime(2);
    const done = [batcher.add(record(1)), batcher.add(record(2))]; // full: gone at once
    done.push(batcher.add(record(3), true));
    await time.advance(0); // the end of the turn the first one asked for
    expect(sent).toEqual([['k1', 'k2']]);
    await time.advance(5);
    expect(sent).toEqual([['k1', 'k2'], ['k3']]);
    await expect(Promise.all(done)).resolves.toEqual([0, 0, 0]);
  });

  it('sends one call per record when told (Redis Cluster: one slot per script)', async () => {
    const time = new VirtualTime();
    const sent: string[][] = [];
    const batcher = new RecordBatcher(async (keys, args) => (sent.push([...keys, args[0]!]), keys.map(() => 1)), { maxRecords: 100, maxDelay: 5, maxPending: 100 }, 1234, true, time);
    // Not even a record nobody waits for waits for maxDelay then: there is nothing to gain.
    const first = batcher.add(record(1), true);
    await time.advance(0);
    expect(sent).toEqual([['k1', '1234']]);
    const done = Promise.all([first, batcher.add(record(2))]);
    await time.advance(0);
    expect(sent).toEqual([['k1', '1234'], ['k2', '1234']]);
    await expect(done).resolves.toEqual([1, 1]);
  });

  it('passes the ttl and four arguments per record, in order', async () => {
    let got: string[] = [];
    const batcher = new RecordBatcher(async (keys, args) => ((got = args), keys.map(() => 0)), { maxRecords: 2, maxDelay: 0, maxPending: 100 }, 77, false);
    await Promise.all([batcher.add(record(1)), batcher.add(record(2))]);
    expect(got).toEqual(['77', 'c0', 'r1', 'a', '{}', 'c0', 'r2', 'a', '{}']);
  });
});

/** The TTL a request record's first write gives beyond ttl (see RECORD_BATCH). */
function slackOf(ttl: number): number {
  return Math.min(10_000, Math.max(2_000, Math.floor(ttl / 8)));
}

// The script's TTL rules, run directly against Redis on both of its paths:
// Redis 7+ (PEXPIRE ... NX / GT) and before (PTTL, then PEXPIRE).
describe.each([
  ['Redis 7+', RECORD_BATCH.lua],
  ['Redis 6 (PTTL)', RECORD_BATCH.lua.replace('redis.REDIS_VERSION_NUM ~= nil', 'false')],
])('the request log\'s TTL, %s', (_name, lua) => {
  const ttl = 60_000;
  const long = ttl + slackOf(ttl);
  const key = () => `rp-batch-lua:${randomUUID()}:{r:x}`;
  const record = (k: string, dup: string) => admin.eval(lua, 1, k, String(ttl), 'c0s1', 'x', dup, '{}') as Promise<number[]>;
  const seconds = async () => Number((await admin.time())[0]);
  const numberOf = async (k: string, dup: string) => Number((await admin.hget(k, `c:${dup}`))!.split('|')[0]);

  it('gives a new record ttl and the slack', async () => {
    const k = key();
    await record(k, 'a');
    expect(await admin.pttl(k)).toBeGreaterThan(long - 2_000);
    expect(await admin.pttl(k)).toBeLessThanOrEqual(long);
  });

  it('raises a shorter TTL a claim gave the key before the first record', async () => {
    const k = key();
    await admin.hset(k, 'requestId', 'x', 'state', 'none');
    await admin.pexpire(k, ttl);
    await record(k, 'a');
    expect(await admin.pttl(k)).toBeGreaterThan(ttl + 1_000);
  });

  it('keeps a longer TTL a lease gave the key, on the first record and later ones', async () => {
    const k = key();
    await admin.hset(k, 'requestId', 'x', 'state', 'claimed');
    await admin.pexpire(k, 10 * ttl);
    await record(k, 'a');
    await admin.hset(k, 'n', String((await seconds()) * 2 ** 20 + 1));
    await record(k, 'b');
    expect(await admin.pttl(k)).toBeGreaterThan(9 * ttl);
  });

  it('leaves the TTL alone when the key is known to outlive ttl, and numbers the records in order', async () => {
    const k = key();
    await record(k, 'a');
    // Only this script sets the TTL of a request key from here: a shorter one
    // set behind its back stays, which shows the second record did not write it.
    await admin.pexpire(k, 30_000);
    await record(k, 'b');
    expect(await admin.pttl(k)).toBeLessThanOrEqual(30_000);
    expect([await numberOf(k, 'a'), await numberOf(k, 'b')]).toEqual([1, 2]);
    // n still carries the second (a plain count would make every later record touch).
    expect(Number(await admin.hget(k, 'n'))).toBeGreaterThan(2 ** 40);
  });

  it('gives a record written late (less than ttl left) ttl and the slack again', async () => {
    const k = key();
    // As if the first record was written long ago: its second is nearly here.
    await admin.hset(k, 'requestId', 'x', 'n', String(((await seconds()) + 1) * 2 ** 20 + 5));
    await admin.pexpire(k, 1_500);
    await record(k, 'f');
    expect(await admin.pttl(k)).toBeGreaterThan(long - 2_000);
    expect(await numberOf(k, 'f')).toBe(6);
  });

  it('goes back to a plain count half way to a carry into the second: the numbering goes on, every later record touches', async () => {
    const k = key();
    // 2^19 - 1 records already, the second far ahead: this record would not touch.
    const far = (await seconds()) + 10 * 60;
    await admin.hset(k, 'requestId', 'x', 'n', String(far * 2 ** 20 + 2 ** 19 - 1));
    await admin.pexpire(k, 30_000);
    await record(k, 'a');
    expect(await admin.hget(k, 'n')).toBe(String(2 ** 19));
    expect(await numberOf(k, 'a')).toBe(2 ** 19);
    expect(await admin.pttl(k)).toBeLessThanOrEqual(30_000);
    await record(k, 'b');
    expect(await numberOf(k, 'b')).toBe(2 ** 19 + 1);
    expect(await admin.pttl(k)).toBeGreaterThan(long - 2_000);
    // A plain count goes on past 2^20 (it is no stamp's low bits).
    await admin.hset(k, 'n', String(2 ** 20 - 1));
    await record(k, 'c');
    expect(await numberOf(k, 'c')).toBe(2 ** 20);
  });

  it(`reads a key's TTL (PTTL) only on the path for Redis before 7`, async () => {
    const k = key();
    const before = await ran('pttl');
    await record(k, 'a');
    await admin.hset(k, 'n', String((await seconds()) * 2 ** 20 + 1)); // a later record finds less than ttl ahead: it touches
    await record(k, 'b');
    const pttls = (await ran('pttl')) - before;
    if (lua === RECORD_BATCH.lua) expect(pttls).toBe(0);
    else expect(pttls).toBe(2);
  });

  it('touches every record of a key an earlier version wrote (a plain count in n)', async () => {
    const k = key();
    await admin.hset(k, 'requestId', 'x', 'n', '3');
    await admin.pexpire(k, 1_500);
    await record(k, 'd');
    expect(await admin.pttl(k)).toBeGreaterThan(long - 2_000);
    expect(await numberOf(k, 'd')).toBe(4);
  });
});

describe('RedisSessionStore: a Redis that does not answer holds at most batch.maxPending of its calls', () => {
  /** A store whose scripts are held before Redis (a Redis that does not answer), answering in 50 ms at most. */
  async function unanswered(maxPending: number) {
    const raw = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
    await raw.connect();
    const g = gate(raw);
    const store = new RedisSessionStore({ client: g.client, prefix: `rp-batch-pending:${randomUUID()}:`, commandTimeout: 50, batch: { maxPending } });
    opened.push(store, { close: async () => (await g.sendAll(), void (await raw.quit())) });
    g.hold('evalsha', 'eval');
    /** Redis answers what it holds, and everything after. */
    const answer = async () => {
      await g.sendAll();
      g.pass('evalsha', 'eval');
    };
    return { store, log: g.log, answer };
  }

  it('counts a call as on its way until Redis answers it, not until its caller timed out: beyond maxPending, refused at once', async () => {
    const { store, log, answer } = await unanswered(4);
    const code = (p: Promise<unknown>) => p.then(() => 'ok', (e: unknown) => `${(e as { code?: string }).code}: ${(e as Error).message}`);
    // Commands of their own (no batch): four reach the client; each times out for its caller, and stays on its way.
    const saves = await Promise.all(Array.from({ length: 4 }, (_, i) => code(store.saveCandidate('s1', `r-${i}`, 'd', { n: i }))));
    expect(saves.every((s) => s.startsWith('RP_ERR_STORE_UNAVAILABLE') && s.includes('did not answer saveCandidate within 50 ms'))).toBe(true);
    const sent = log.length;
    expect(sent).toBe(4);
    // A fifth is refused at once: nothing more piles up in the client's queue.
    expect(await code(store.saveCandidate('s1', 'r-5', 'd', {}))).toMatch(/^RP_ERR_STORE_UNAVAILABLE: .*4 commands on their way/);
    // A batch of records too: the store's four commands are its limit as well.
    expect(await code(store.recordCopy(copy(randomUUID(), 'a')))).toMatch(/^RP_ERR_STORE_UNAVAILABLE: .*commands on their way/);
    expect(log.length).toBe(sent);
    // Redis answers them: room again.
    await answer();
    await eventually(async () => (await code(store.saveCandidate('s1', 'r-6', 'd', {}))) === 'ok' || undefined);
  });

  it("a batch's records stay counted until their call settles: the records beyond maxPending are refused at once", async () => {
    const { store, log, answer } = await unanswered(3);
    const code = (p: Promise<unknown>) => p.then(() => 'ok', (e: unknown) => String((e as { code?: string }).code));
    // Three records of one turn: one call, held; each times out for its caller.
    expect(await Promise.all([0, 1, 2].map(() => code(store.recordCopy(copy(randomUUID(), 'a')))))).toEqual(Array(3).fill('RP_ERR_STORE_UNAVAILABLE'));
    expect(log).toHaveLength(1);
    // Their call has not settled: a fourth record is refused at once, and no second call goes out.
    expect(await code(store.recordCopy(copy(randomUUID(), 'a')))).toBe('RP_ERR_STORE_UNAVAILABLE');
    expect(log).toHaveLength(1);
    await answer();
    await eventually(async () => (await code(store.recordCopy(copy(randomUUID(), 'a')))) === 'ok' || undefined);
  });
});

describe('RedisSessionStore: one item of a batch that Redis refuses', () => {
  it('fails that item alone (503, the Redis error as cause); the others of the same call are done and answered', async () => {
    const prefix = `rp-batch-wrongtype:${randomUUID()}:`;
    const { store, calls } = await open({ prefix });
    // Keys of another type under the store's prefix (written by something else).
    await admin.set(`${prefix}{r:bad}`, 'x');
    await admin.set(`${prefix}{s:bad}`, 'x');
    await admin.hset(`${prefix}{s:good}`, 'sessionId', 'good', 'data', '{"n":1}', 'version', '1', 'updatedAt', '1');
    const settle = (p: Promise<unknown>) => p.then((v) => ({ ok: v }), (e: unknown) => ({ code: (e as { code?: string }).code, cause: String((e as { cause?: Error }).cause?.message) }));
    // Records: one call.
    const records = await Promise.all([settle(store.recordCopy(copy('good', 'a'))), settle(store.recordCopy(copy('bad', 'a'))), settle(store.recordCopy(copy('good', 'b')))]);
    expect(calls).toHaveLength(1);
    expect(records[0]).toEqual({ ok: { duplicate: false } });
    expect(records[1]).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE', cause: expect.stringContaining('WRONGTYPE') });
    expect(records[2]).toEqual({ ok: { duplicate: false } });
    expect((await store.getRequest('good'))!.copies.map((c) => c.duplicateId)).toEqual(['a', 'b']);
    // Session reads: one call.
    const reads = await Promise.all([settle(store.getSession('good')), settle(store.getSession('bad'))]);
    expect(reads[0]).toMatchObject({ ok: { data: { n: 1 } } });
    expect(reads[1]).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE', cause: expect.stringContaining('WRONGTYPE') });
    // Claims: one call; the good one is granted and answered as granted (not left held by nobody).
    const claims = await Promise.all([settle(store.claim('good-claim', 'a', { leaseMs: 60_000 })), settle(store.claim('bad', 'a', { leaseMs: 60_000 }))]);
    expect(claims[0]).toMatchObject({ ok: { fence: expect.any(Number) } });
    expect(claims[1]).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE', cause: expect.stringContaining('WRONGTYPE') });
    const fence = (claims[0] as { ok: { fence: number } }).ok.fence;
    // Confirms: one call.
    const confirms = await Promise.all([settle(store.confirm('good-claim', 'a', fence)), settle(store.confirm('bad', 'a', 1))]);
    expect(confirms[0]).toEqual({ ok: undefined });
    expect(confirms[1]).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE', cause: expect.stringContaining('WRONGTYPE') });
    await expect(store.getRequest('good-claim')).resolves.toMatchObject({ commit: { state: 'committed', holder: 'a' } });
  });
});
