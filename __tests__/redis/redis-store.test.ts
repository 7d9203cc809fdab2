import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { getEventListeners } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { codes, isRedundantProxyError, isSupersededError } from '../../lib/errors.js';
import { RedisSessionStore, type RedisSessionStoreOptions } from '../../lib/store/redis.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { sleep } from '../helpers/upstream.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { asCluster } from '../helpers/gated-redis.js';

// What only the Redis store has: options, key layout (TTLs, hash tags), and
// waiters woken across connections by pub/sub.

let server: RedisServer;
let admin: Redis;
const opened = closeAfterEach();

beforeAll(async () => {
  server = await startRedisServer();
  admin = await connect();
});

afterAll(async () => {
  await admin.quit();
  await server.stop();
});

async function connect(): Promise<Redis> {
  const client = new Redis({ host: server.host, port: server.port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
  await client.connect();
  return client;
}

/** A store on a client of its own (as another process would have), with a shared or fresh prefix. */
async function open(options: Partial<RedisSessionStoreOptions> = {}): Promise<RedisSessionStore> {
  const client = await connect();
  const store = new RedisSessionStore({ client, prefix: `rp-test:${randomUUID()}:`, ...options });
  // Closed in reverse: the store, then its client.
  opened.push({ close: () => client.quit() }, store);
  return store;
}

function copy(requestId: string, duplicateId: string, sessionId = 's') {
  return { requestId, duplicateId, upstreamId: `up-${duplicateId}`, index: 1, of: 2, update: true, sessionId };
}

async function keysUnder(prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  return keys.sort();
}

/** The part of a key Redis Cluster hashes: the first non-empty `{…}`, else the whole key. */
function hashTag(key: string): string {
  const open = key.indexOf('{');
  if (open === -1) return key;
  const close = key.indexOf('}', open + 1);
  if (close === -1 || close === open + 1) return key;
  return key.slice(open + 1, close);
}

function elapsed(start: number): number {
  return performance.now() - start;
}


describe('RedisSessionStore options', () => {
  it.each([
    ['client', { client: undefined }],
    ['client', { client: {} }],
    ['prefix', { prefix: 'a{b}:' }],
    ['prefix', { prefix: 5 }],
    ['ttl', { ttl: 0 }],
    ['ttl', { ttl: 1.5 }],
    ['sessionTtl', { sessionTtl: -1 }],
    ['pollInterval', { pollInterval: Infinity }],
    ['pollInterval', { pollInterval: 2 ** 31 }],
    ['commandTimeout', { commandTimeout: '1s' }],
    ['max', { max: 10 }],
  ])('rejects a bad %s with an error that names it', (option, overrides) => {
    let error: unknown;
    try {
      new RedisSessionStore({ client: admin, ...(overrides as object) } as RedisSessionStoreOptions);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(TypeError);
    expect(isRedundantProxyError(error)).toBe(true);
    expect(error).toMatchObject({ code: codes.INVALID_OPTION, option });
    expect((error as Error).message).toContain(`\`${option}\``);
  });

  it('accepts only a client, and every option', async () => {
    const a = new RedisSessionStore({ client: admin });
    const b = new RedisSessionStore({ client: admin, prefix: '', ttl: 1, sessionTtl: 1, pollInterval: 1, commandTimeout: 1 });
    await a.close();
    await b.close();
  });

  it('never closes the caller\'s client, only its own pub/sub connection', async () => {
    const client = await connect();
    opened.push({ close: () => client.quit() });
    const name = `rp-test-${randomUUID()}`;
    await client.client('SETNAME', name);
    const store = new RedisSessionStore({ client, prefix: `rp-test:${randomUUID()}:` });
    const requestId = randomUUID();
    await store.claim(requestId, 'a', { leaseMs: 10_000 });
    const waiting = store.claim(requestId, 'b', { leaseMs: 10_000 }).catch((err: unknown) => err);
    await sleep(50);
    const before = (await admin.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string;
    expect(before.split('\n').filter(Boolean).length).toBeGreaterThanOrEqual(1);
    await store.close();
    const refused = await waiting;
    expect(isRedundantProxyError(refused)).toBe(true);
    expect(refused).toMatchObject({ code: codes.CLOSED });
    await expect(client.ping()).resolves.toBe('PONG');
    // The store's duplicate connection is gone; the caller's is still there.
    const after = (await admin.call('CLIENT', 'LIST')) as string;
    expect(after).toContain(`name=${name}`);
    expect(((await admin.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string).split('\n').filter(Boolean)).toHaveLength(0);
  });
});

describe('RedisSessionStore keys', () => {
  it('gives every key a TTL (request ttl, session sessionTtl), except the fence counter', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix, ttl: 60_000, sessionTtl: 3_600_000 });
    const requestId = randomUUID();
    const sessionId = randomUUID();
    await store.recordCopy(copy(requestId, 'a', sessionId));
    await store.recordCopy(copy(requestId, 'b', sessionId));
    await store.saveCandidate(sessionId, requestId, 'a', { cart: [1] });
    await store.saveCandidate(sessionId, requestId, 'b', { cart: [2] });
    const grant = await store.claim(requestId, 'a', { leaseMs: 5_000 });
    await store.confirm(requestId, 'a', grant.fence);
    await store.recordCancelled(requestId, 'b');
    await store.recordAdoption({ requestId, sessionId, update: true, duplicateIds: ['a'], upstreamIds: ['up-a'] });
    // A candidate saved for a request not adopted yet.
    const pending = randomUUID();
    await store.saveCandidate(sessionId, pending, 'x', { n: 1 });
    // An idempotency key lives its ttl (not its lock), and again ttl from its completion.
    await store.beginIdempotent('key-1', 'fp', requestId, 5_000, 30_000);
    await store.beginIdempotent('key-2', 'fp', requestId, 5_000, 30_000);
    await store.completeIdempotent('key-2', requestId, { status: 200, headers: {}, body: '' }, 90_000, 1);
    await expect(store.getSession(sessionId)).resolves.toMatchObject({ data: { cart: [1] }, version: 1 });

    const keys = await keysUnder(prefix);
    const ttls = Object.fromEntries(await Promise.all(keys.map(async (k) => [k.slice(prefix.length), await admin.pttl(k)] as const)));
    expect(Object.keys(ttls).sort()).toEqual([
      'fence',
      `{i:key-1}`,
      `{i:key-2}`,
      `{r:${requestId}}`,
      `{s:${sessionId}}`,
      `{s:${sessionId}}:adopt:${requestId}`,
      `{s:${sessionId}}:cand:${pending}`,
    ].sort());
    // The fence counter must outlive every record: tokens only go up.
    expect(ttls.fence).toBe(-1);
    const within = (key: string, max: number) => {
      expect(ttls[key]).toBeGreaterThan(max - 10_000);
      expect(ttls[key]).toBeLessThanOrEqual(max);
    };
    // A request record's first write gives it the ttl and a slack (see RECORD_BATCH): 60 s + 7.5 s.
    within(`{r:${requestId}}`, 67_500);
    within(`{s:${sessionId}}:adopt:${requestId}`, 60_000);
    within(`{s:${sessionId}}:cand:${pending}`, 60_000);
    within(`{s:${sessionId}}`, 3_600_000);
    within('{i:key-1}', 30_000);
    within('{i:key-2}', 90_000);
  });

  it('keeps the commit state at least as long as the lease', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix, ttl: 1_000 });
    const requestId = randomUUID();
    await store.claim(requestId, 'a', { leaseMs: 30_000 });
    expect(await admin.pttl(`${prefix}{r:${requestId}}`)).toBeGreaterThan(20_000);
    // A later write does not cut it short.
    await store.recordCopy(copy(requestId, 'b'));
    await store.recordCancelled(requestId, 'c');
    expect(await admin.pttl(`${prefix}{r:${requestId}}`)).toBeGreaterThan(20_000);
  });

  it('slides a session\'s expiry when it is read', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix, sessionTtl: 60_000 });
    const requestId = randomUUID();
    await store.saveCandidate('s1', requestId, 'a', { n: 1 });
    await store.recordAdoption({ requestId, sessionId: 's1', update: false, duplicateIds: ['a'], upstreamIds: ['up'] });
    await admin.pexpire(`${prefix}{s:s1}`, 5_000);
    await store.getSession('s1');
    expect(await admin.pttl(`${prefix}{s:s1}`)).toBeGreaterThan(50_000);
  });

  it('puts all keys and the channel of one request under one hash tag, whatever the ids contain', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    for (const [requestId, sessionId] of [[randomUUID(), randomUUID()], ['}{weird}%7D{', '{s}'], ['', '}']]) {
      await store.recordCopy(copy(requestId!, 'a', sessionId));
      await store.saveCandidate(sessionId!, requestId!, 'a', { ok: true });
      await store.saveCandidate(sessionId!, requestId!, 'b', { ok: false });
      await store.recordAdoption({ requestId: requestId!, sessionId: sessionId!, update: true, duplicateIds: ['b'], upstreamIds: ['up-b'] });
      await expect(store.getRequest(requestId!)).resolves.toMatchObject({ requestId, sessionId, copies: [{ duplicateId: 'a' }] });
      await expect(store.getSession(sessionId!)).resolves.toMatchObject({ sessionId, data: { ok: false } });
    }
    const keys = (await keysUnder(prefix)).filter((k) => k !== `${prefix}fence`);
    // Every key has a non-empty tag: request keys 'r:…', session keys 's:…'.
    const tags = new Map<string, string[]>();
    for (const key of keys) {
      const t = hashTag(key);
      expect(t).not.toBe(key);
      tags.set(t, [...(tags.get(t) ?? []), key]);
    }
    expect([...tags.keys()].filter((t) => t.startsWith('r:'))).toHaveLength(3);
    expect([...tags.keys()].filter((t) => t.startsWith('s:'))).toHaveLength(3);
    // The session side of a request (adoption marker) shares the session's tag.
    for (const [t, group] of tags) {
      if (t.startsWith('s:')) expect(group.some((k) => k.includes(':adopt:'))).toBe(true);
    }
  });
});

describe('RedisSessionStore: what it cannot read back', () => {
  it('fails a read of garbled data with RP_ERR_STORE_UNAVAILABLE (503), the parse error as its cause', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const cases: Array<[string, string]> = [['garbled', '{garbled'], ['null', 'null'], ['array', '[1]'], ['number', '5']];
    for (const [sessionId, data] of cases) {
      await admin.hset(`${prefix}{s:${sessionId}}`, 'sessionId', sessionId, 'data', data, 'version', '1', 'updatedAt', '1');
      const err = await store.getSession(sessionId).then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE', status: 503 });
      expect((err as Error).message).toContain(sessionId);
      expect((err as { cause?: unknown }).cause).toBeInstanceOf(Error);
    }
    await admin.hset(`${prefix}{s:fine}`, 'sessionId', 'fine', 'data', '{"n":1}', 'version', '1', 'updatedAt', '1');
    await expect(store.getSession('fine')).resolves.toMatchObject({ data: { n: 1 } });
    // A request record whose copy is garbled.
    await admin.hset(`${prefix}{r:broken}`, 'requestId', 'broken', 'c:x', '1|2|{nope');
    await expect(store.getRequest('broken')).rejects.toMatchObject({ code: 'RP_ERR_STORE_UNAVAILABLE', status: 503 });
  });
});

describe('RedisSessionStore idempotency keys', () => {
  const answer = { status: 201, headers: { 'content-type': 'text/plain' }, body: 'b2s=' };

  async function fields(key: string): Promise<Record<string, string>> {
    return admin.hgetall(key);
  }

  /** The Redis server's clock in ms, the one the scripts judge locks by. */
  async function redisNow(): Promise<number> {
    const [seconds, micros] = await admin.time();
    return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
  }

  it('keeps a new key ttlMs, not lockMs, with its lock judged by the Redis clock', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const before = await redisNow();
    await expect(store.beginIdempotent('k', 'fp', 'r1', 1_000, 60_000)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 1 });
    const after = await redisNow();
    expect(await admin.pttl(`${prefix}{i:k}`)).toBeGreaterThan(50_000);
    const h = await fields(`${prefix}{i:k}`);
    expect(h).toEqual({ state: 'in-flight', fp: 'fp', rid: 'r1', attempt: '1', lockUntil: expect.any(String) });
    expect(Number(h.lockUntil)).toBeGreaterThanOrEqual(before + 1_000);
    expect(Number(h.lockUntil)).toBeLessThanOrEqual(after + 1_000);
    // A lock longer than the TTL: the key lives until the lock ends.
    await store.beginIdempotent('long', 'fp', 'r1', 60_000, 1_000);
    expect(await admin.pttl(`${prefix}{i:long}`)).toBeGreaterThan(50_000);
  });

  it('takes over a key whose lockUntil has passed, under its rid with attempt + 1, never shortening its TTL', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const key = `${prefix}{i:k}`;
    await store.beginIdempotent('k', 'fp', 'r1', 60_000, 60_000);
    // Nothing but the lockUntil field says the lock ran out.
    await admin.hset(key, 'lockUntil', String((await redisNow()) - 1));
    await expect(store.beginIdempotent('k', 'fp', 'r2', 1_000, 1_000)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
    expect(await fields(key)).toMatchObject({ state: 'in-flight', rid: 'r1', attempt: '2' });
    expect(await admin.pttl(key)).toBeGreaterThan(50_000);
    // Near the end of its TTL, a takeover keeps the key until its lock ends.
    await admin.hset(key, 'lockUntil', '0');
    await admin.pexpire(key, 500);
    await store.beginIdempotent('k', 'fp', 'r3', 30_000, 1_000);
    expect(await admin.pttl(key)).toBeGreaterThan(20_000);
  });

  it('numbers each takeover one more than the last: 2, then 3', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const key = `${prefix}{i:k}`;
    await store.beginIdempotent('k', 'fp', 'r1', 60_000, 60_000);
    await admin.hset(key, 'lockUntil', '0');
    await expect(store.beginIdempotent('k', 'fp', 'r2', 60_000, 60_000)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
    await admin.hset(key, 'lockUntil', '0');
    await expect(store.beginIdempotent('k', 'fp', 'r3', 60_000, 60_000)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 3 });
  });

  it('completes only the attempt that holds the key (rid and attempt)', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const key = `${prefix}{i:k}`;
    await store.beginIdempotent('k', 'fp', 'r1', 60_000, 60_000);
    await admin.hset(key, 'lockUntil', '0');
    await store.beginIdempotent('k', 'fp', 'r2', 60_000, 60_000);
    const held = await fields(key);
    await store.completeIdempotent('k', 'r1', answer, 60_000, 1);
    await store.completeIdempotent('k', 'r1', null, 60_000, 1);
    await store.completeIdempotent('k', 'r2', answer, 60_000, 2);
    expect(await fields(key)).toEqual(held);
    await store.completeIdempotent('k', 'r1', answer, 90_000, 2);
    expect(await fields(key)).toEqual({ state: 'completed', fp: 'fp', rid: 'r1', attempt: '2', answer: JSON.stringify(answer) });
    expect(await admin.pttl(key)).toBeGreaterThan(80_000);
  });

  it('keeps a key completed without an answer as pending, ttlMs from then, and resumes it', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const key = `${prefix}{i:k}`;
    await store.beginIdempotent('k', 'fp', 'r1', 60_000, 60_000);
    await admin.pexpire(key, 5_000);
    await store.completeIdempotent('k', 'r1', null, 60_000, 1);
    expect(await fields(key)).toEqual({ state: 'pending', fp: 'fp', rid: 'r1', attempt: '1' });
    expect(await admin.pttl(key)).toBeGreaterThan(50_000);
    await expect(store.beginIdempotent('k', 'fp', 'r2', 60_000, 60_000)).resolves.toEqual({ state: 'started', requestId: 'r1', attempt: 2 });
    expect(await fields(key)).toMatchObject({ state: 'in-flight', rid: 'r1', attempt: '2' });
  });

  it('treats a key left by an earlier version (no lockUntil, no attempt) as in flight until it expires', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const key = `${prefix}{i:k}`;
    await admin.hset(key, 'state', 'in-flight', 'fp', 'fp', 'rid', 'r-old');
    await admin.pexpire(key, 60_000);
    await expect(store.beginIdempotent('k', 'fp', 'r2', 1_000, 1_000)).resolves.toEqual({ state: 'in-flight', requestId: 'r-old' });
    await store.completeIdempotent('k', 'r-old', answer, 60_000, 1);
    expect(await fields(key)).toEqual({ state: 'in-flight', fp: 'fp', rid: 'r-old' });
  });

  it('rejects a lock or TTL that is not a positive number of ms, naming it, without a round trip', async () => {
    const store = await open();
    await expect(store.beginIdempotent('k', 'fp', 'r', -1, 1_000)).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'lockMs' });
    await expect(store.beginIdempotent('k', 'fp', 'r', 1_000, Infinity)).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'ttlMs' });
    await expect(store.completeIdempotent('k', 'r', null, 0, 1)).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'ttlMs' });
  });
});

describe('RedisSessionStore waiters across connections', () => {
  // A poll this long cannot be what wakes the waiter: only pub/sub can.
  const slowPoll = { pollInterval: 10_000 };

  it('wakes a waiter on another connection by pub/sub when the holder releases', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix, ...slowPoll });
    const other = await open({ prefix, ...slowPoll });
    const requestId = randomUUID();
    const first = await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    const controller = new AbortController();
    const waiting = other.claim(requestId, 'b', { leaseMs: 30_000, signal: controller.signal });
    await sleep(100);
    // The waiting store's inbox is registered in the request's record, and it listens there.
    const token = (await admin.hget(`${prefix}{r:${requestId}}`, 'waiters'))?.trim();
    expect(await admin.call('PUBSUB', 'NUMSUB', `${prefix}inbox:${token}`)).toEqual([`${prefix}inbox:${token}`, 1]);
    // No channel of the request's own.
    expect(await admin.call('PUBSUB', 'SHARDNUMSUB', `${prefix}{r:${requestId}}:commit`)).toEqual([`${prefix}{r:${requestId}}:commit`, 0]);
    const start = performance.now();
    await holder.release(requestId, 'a', first.fence);
    const grant = await waiting;
    expect(elapsed(start)).toBeLessThan(500);
    expect(grant.fence).toBeGreaterThan(first.fence);
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });

  it('turns waiters on another connection away by pub/sub when the holder confirms', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix, ...slowPoll });
    const other = await open({ prefix, ...slowPoll });
    const requestId = randomUUID();
    const grant = await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    const waiters = ['b', 'c'].map((d) => other.claim(requestId, d, { leaseMs: 30_000 }).then(() => 'granted', (err: unknown) => err));
    await sleep(100);
    const start = performance.now();
    await holder.confirm(requestId, 'a', grant.fence);
    const outcomes = await Promise.all(waiters);
    expect(elapsed(start)).toBeLessThan(500);
    for (const outcome of outcomes) expect(isSupersededError(outcome)).toBe(true);
  });

  it('hands a released claim to exactly one waiter among several processes', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const stores = [await open({ prefix }), await open({ prefix }), await open({ prefix })];
    const requestId = randomUUID();
    const first = await stores[0]!.claim(requestId, 'a', { leaseMs: 30_000 });
    const outcomes: Array<string> = [];
    const waiters = stores.flatMap((store, s) => [1, 2].map((n) => {
      const id = `w${s}-${n}`;
      return store.claim(requestId, id, { leaseMs: 30_000 }).then(
        (grant) => { outcomes.push(`granted ${id}`); return { id, grant }; },
        (err: unknown) => { outcomes.push(isSupersededError(err) ? 'superseded' : String(err)); return undefined; },
      );
    }));
    await sleep(100);
    await stores[0]!.release(requestId, 'a', first.fence);
    await sleep(300);
    expect(outcomes.filter((o) => o.startsWith('granted'))).toHaveLength(1);
    const winner = outcomes[0]!.slice('granted '.length);
    const record = await stores[1]!.getRequest(requestId);
    expect(record?.commit).toMatchObject({ state: 'claimed', holder: winner });
    const fence = (record!.commit as { fence: number }).fence;
    await stores[2]!.confirm(requestId, winner, fence);
    await Promise.all(waiters);
    expect(outcomes.filter((o) => o === 'superseded')).toHaveLength(5);
  });

  it('resubscribes by itself when its pub/sub connection drops', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix, ...slowPoll });
    const other = await open({ prefix, ...slowPoll });
    const requestId = randomUUID();
    const first = await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    const waiting = other.claim(requestId, 'b', { leaseMs: 30_000 });
    await sleep(100);
    const inbox = `${prefix}inbox:${(await admin.hget(`${prefix}{r:${requestId}}`, 'waiters'))?.trim()}`;
    await admin.client('KILL', 'TYPE', 'pubsub');
    for (let n = 0; n < 100 && ((await admin.call('PUBSUB', 'NUMSUB', inbox)) as [string, number])[1] === 0; n++) await sleep(20);
    expect(await admin.call('PUBSUB', 'NUMSUB', inbox)).toEqual([inbox, 1]);
    const start = performance.now();
    await holder.release(requestId, 'a', first.fence);
    await expect(waiting).resolves.toMatchObject({ fence: expect.any(Number) });
    expect(elapsed(start)).toBeLessThan(500);
  });

  it('falls back to the poll when a message is lost', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix });
    const other = await open({ prefix, pollInterval: 100 });
    const requestId = randomUUID();
    await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    const waiting = other.claim(requestId, 'b', { leaseMs: 30_000 });
    await sleep(50);
    // The holder's claim vanishes without a message (as if it was lost).
    await admin.hset(`${prefix}{r:${requestId}}`, 'state', 'none');
    const start = performance.now();
    await expect(waiting).resolves.toMatchObject({ fence: expect.any(Number) });
    expect(elapsed(start)).toBeLessThan(400);
  });

  it('hands the claim past a waiter that gave up to the next one', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix });
    const other = await open({ prefix });
    const requestId = randomUUID();
    const first = await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    const controller = new AbortController();
    const quitter = other.claim(requestId, 'b', { leaseMs: 30_000, signal: controller.signal }).catch((err: unknown) => err);
    const stayer = other.claim(requestId, 'c', { leaseMs: 30_000 });
    await sleep(50);
    controller.abort(new Error('gone'));
    await holder.release(requestId, 'a', first.fence);
    await expect(quitter).resolves.toMatchObject({ message: 'gone' });
    await expect(stayer).resolves.toMatchObject({ fence: expect.any(Number) });
    await expect(other.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'c' } });
  });
});

describe('RedisSessionStore claims given up while Redis answers', () => {
  it('gives back a claim granted to a caller that aborted meanwhile', async () => {
    const store = await open();
    const requestId = randomUUID();
    const controller = new AbortController();
    const claiming = store.claim(requestId, 'a', { leaseMs: 30_000, signal: controller.signal });
    controller.abort(new Error('client went away'));
    await expect(claiming).rejects.toThrow('client went away');
    // The release is sent without waiting for it: look until it landed.
    for (let n = 0; n < 50 && (await store.getRequest(requestId))?.commit.state !== 'none'; n++) await sleep(10);
    await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'none' } });
    await expect(store.claim(requestId, 'b', { leaseMs: 1_000 })).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('rejects a claim in flight when the store closes, and gives the grant back', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const other = await open({ prefix });
    const requestId = randomUUID();
    const claiming = store.claim(requestId, 'a', { leaseMs: 30_000 });
    await store.close();
    const error = await claiming.catch((err: unknown) => err);
    expect(isRedundantProxyError(error) && error.code).toBe(codes.CLOSED);
    for (let n = 0; n < 50 && (await other.getRequest(requestId))?.commit.state !== 'none'; n++) await sleep(10);
    await expect(other.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'none' } });
  });
});

describe('RedisSessionStore fences', () => {
  it('takes fences above the Redis clock in µs, so they go up even if the counter is lost', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const store = await open({ prefix });
    const before = Date.now() * 1000;
    const a = await store.claim(randomUUID(), 'a', { leaseMs: 1000 });
    expect(a.fence).toBeGreaterThanOrEqual(before - 60_000_000);
    expect(Number.isSafeInteger(a.fence)).toBe(true);
    await admin.del(`${prefix}fence`);
    const b = await store.claim(randomUUID(), 'a', { leaseMs: 1000 });
    expect(b.fence).toBeGreaterThan(a.fence);
  });

  it('gives concurrent claims from several connections distinct fences', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const stores = [await open({ prefix }), await open({ prefix })];
    const grants = await Promise.all(Array.from({ length: 40 }, (_, n) => stores[n % 2]!.claim(randomUUID(), 'a', { leaseMs: 1000 })));
    const fences = grants.map((g) => g.fence);
    expect(new Set(fences).size).toBe(fences.length);
  });
});

describe('the redundant-proxy/redis entry', () => {
  it('uses ioredis only as types, and the main entry never loads the Redis store', async () => {
    // The built output (npm test builds before jest): type imports are erased there, a runtime one is not.
    for (const file of ['../../dist/redis.js', '../../dist/store/redis.js', '../../dist/index.js']) {
      const source = await readFile(new URL(file, import.meta.url), 'utf8');
      // Code lines only: the JSDoc shows `import { Redis } from 'ioredis'` as an example.
      const code = source.split('\n').filter((line) => !/^\s*(\*|\/\/|\/\*)/.test(line));
      expect(code.filter((line) => /(from|import)\s*\(?\s*['"]ioredis['"]/.test(line))).toEqual([]);
    }
    expect(await readFile(new URL('../../dist/index.js', import.meta.url), 'utf8')).not.toMatch(/store\/redis/);
  });
});

describe('RedisSessionStore: a refused confirm says who committed', () => {
  it('names the committer, or null while nobody has committed, or nothing once the record is gone', async () => {
    const store = await open({ ttl: 60_000 });
    const grant = await store.claim('r1', 'a', { leaseMs: 10_000 });
    await expect(store.confirm('r1', 'b', grant.fence)).rejects.toMatchObject({ code: codes.SUPERSEDED, committedBy: null });
    await store.confirm('r1', 'a', grant.fence);
    await expect(store.confirm('r1', 'b', grant.fence)).rejects.toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
    const gone = await store.confirm('never-claimed', 'b', 1).catch((err: unknown) => err);
    expect(gone).toMatchObject({ code: codes.SUPERSEDED });
    expect((gone as { committedBy?: unknown }).committedBy).toBeUndefined();
  });
});

// Aimed at guards that mutation testing (bench/mutation/) found no test for.
describe('RedisSessionStore claims: what each guard is for', () => {
  /** How many scripts Redis ran since the last call (EVALSHA and EVAL). */
  async function scriptCalls(): Promise<number> {
    const info = await admin.info('commandstats');
    let calls = 0;
    for (const m of info.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) calls += Number(m[1]);
    await admin.config('RESETSTAT');
    return calls;
  }

  it('rejects a lease that is not a positive number of ms, naming it, without a round trip', async () => {
    const store = await open();
    await scriptCalls();
    for (const leaseMs of [0, -1, Number.NaN, Infinity]) {
      await expect(store.claim(randomUUID(), 'a', { leaseMs })).rejects.toMatchObject({ code: codes.INVALID_OPTION, option: 'leaseMs' });
    }
    expect(await scriptCalls()).toBe(0);
  });

  it('refuses a claim on a committed request at once, naming the committer, in one script call and with no pub/sub connection', async () => {
    const client = await connect();
    let duplicates = 0;
    const counting = new Proxy(client, {
      get(target, name) {
        if (name === 'duplicate') {
          return (...a: unknown[]) => {
            duplicates++;
            return (target.duplicate as (...x: unknown[]) => unknown).apply(target, a);
          };
        }
        const value = Reflect.get(target, name) as unknown;
        return typeof value === 'function' ? (value as (...x: unknown[]) => unknown).bind(target) : value;
      },
    });
    const store = new RedisSessionStore({ client: counting, prefix: `rp-test:${randomUUID()}:` });
    opened.push({ close: () => client.quit() }, store);
    const requestId = randomUUID();
    const grant = await store.claim(requestId, 'a', { leaseMs: 30_000 });
    await store.confirm(requestId, 'a', grant.fence);
    await scriptCalls();
    await expect(store.claim(requestId, 'b', { leaseMs: 30_000 })).rejects.toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
    expect(await scriptCalls()).toBe(1);
    expect(duplicates).toBe(0);
  });

  it('refuses a confirm with an older fence of the same copy once its newer claim committed, and keeps the commit through a release', async () => {
    const store = await open();
    const requestId = randomUUID();
    const old = await store.claim(requestId, 'a', { leaseMs: 50 });
    await sleep(80);
    const renewed = await store.claim(requestId, 'a', { leaseMs: 30_000 });
    expect(renewed.fence).toBeGreaterThan(old.fence);
    await store.confirm(requestId, 'a', renewed.fence);
    await expect(store.confirm(requestId, 'a', old.fence)).rejects.toMatchObject({ code: codes.SUPERSEDED });
    await expect(store.confirm(requestId, 'a', renewed.fence)).resolves.toBeUndefined();
    await store.release(requestId, 'a', renewed.fence);
    await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'committed', holder: 'a', fence: renewed.fence } });
  });

  it('takes a claim on a single Redis in one script call (the fence is taken inside it)', async () => {
    const store = await open();
    await store.claim(randomUUID(), 'warm-up', { leaseMs: 1_000 }); // Redis knows the script from now on
    await scriptCalls();
    await store.claim(randomUUID(), 'a', { leaseMs: 30_000 });
    expect(await scriptCalls()).toBe(1);
  });

  it('a holder asking again with a signal that aborts meanwhile keeps its claim: nothing is given back', async () => {
    const store = await open();
    const requestId = randomUUID();
    const grant = await store.claim(requestId, 'a', { leaseMs: 30_000 });
    const controller = new AbortController();
    const again = store.claim(requestId, 'a', { leaseMs: 30_000, signal: controller.signal });
    controller.abort(new Error('gone'));
    await expect(again).rejects.toThrow('gone');
    await sleep(50);
    await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'a', fence: grant.fence } });
  });

  it('a copy that would have to wait, aborted while Redis answers, rejects with its reason', async () => {
    const store = await open();
    const requestId = randomUUID();
    await store.claim(requestId, 'a', { leaseMs: 30_000 });
    const controller = new AbortController();
    const waiting = store.claim(requestId, 'b', { leaseMs: 30_000, signal: controller.signal });
    controller.abort(new Error('gone'));
    await expect(waiting).rejects.toThrow('gone');
    await expect(store.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'a' } });
  });

  it('a waiting claim looks again only every pollInterval (or at the lease end), never in a busy loop', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix });
    const other = await open({ prefix, pollInterval: 200 });
    const requestId = randomUUID();
    const first = await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    await scriptCalls();
    const waiting = other.claim(requestId, 'b', { leaseMs: 30_000 });
    await sleep(700);
    // The claim, the look once subscribed, and one every 200 ms: about 5, never hundreds.
    expect(await scriptCalls()).toBeLessThanOrEqual(8);
    await holder.release(requestId, 'a', first.fence);
    await expect(waiting).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('turns a waiter away on the confirm\'s message alone, naming the committer, without asking Redis again', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix });
    const other = await open({ prefix, pollInterval: 10_000 });
    const requestId = randomUUID();
    // Redis knows the confirm script from now on.
    const warmUp = randomUUID();
    await holder.confirm(warmUp, 'w', (await holder.claim(warmUp, 'w', { leaseMs: 30_000 })).fence);
    const first = await holder.claim(requestId, 'a', { leaseMs: 30_000 });
    const waiting = other.claim(requestId, 'b', { leaseMs: 30_000 }).catch((err: unknown) => err);
    const channel = `${prefix}{r:${requestId}}:commit`;
    for (let n = 0; n < 100 && ((await admin.call('PUBSUB', 'SHARDNUMSUB', channel)) as [string, number])[1] === 0; n++) await sleep(20);
    await sleep(100); // the look it takes once subscribed is done
    await scriptCalls();
    await holder.confirm(requestId, 'a', first.fence);
    await expect(waiting).resolves.toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
    // The confirm, and nothing else.
    expect(await scriptCalls()).toBe(1);
  });

  it('looks again when the lease ends, not only at the next poll', async () => {
    const prefix = `rp-test:${randomUUID()}:`;
    const holder = await open({ prefix });
    const other = await open({ prefix, pollInterval: 10_000 });
    const requestId = randomUUID();
    await holder.claim(requestId, 'a', { leaseMs: 300 });
    const start = performance.now();
    await expect(other.claim(requestId, 'b', { leaseMs: 30_000 })).resolves.toMatchObject({ fence: expect.any(Number) });
    expect(elapsed(start)).toBeLessThan(2_000);
  });

  it('on Cluster, a fence not above the request\'s last one is refused and a fresh one taken; five refusals fail the claim as the store unavailable', async () => {
    // A single Redis behind a client that says it is a Cluster: the store takes the Cluster path (a fence first, then the claim with it).
    const client = await connect();
    const prefix = `rp-test:${randomUUID()}:`;
    const store = new RedisSessionStore({ client: asCluster(client), prefix });
    opened.push({ close: () => client.quit() }, store);
    const requestId = randomUUID();
    // The request's last granted fence lies far ahead of any token the counter gives now.
    await admin.hset(`${prefix}{r:${requestId}}`, 'requestId', requestId, 'state', 'none', 'lastFence', '9000000000000000');
    await store.claim(randomUUID(), 'warm-up', { leaseMs: 1_000 }); // Redis knows both scripts from now on
    await scriptCalls();
    await expect(store.claim(requestId, 'a', { leaseMs: 1_000 })).rejects.toMatchObject({ code: codes.STORE_UNAVAILABLE });
    // Five tries, each a token and a claim.
    expect(await scriptCalls()).toBe(10);
    // Once the tokens are past it, a claim is granted with a higher fence.
    await admin.hset(`${prefix}{r:${requestId}}`, 'lastFence', '1');
    await expect(store.claim(requestId, 'a', { leaseMs: 1_000 })).resolves.toMatchObject({ fence: expect.any(Number) });
  });
});
