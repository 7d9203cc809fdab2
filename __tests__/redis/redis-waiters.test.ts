import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { codes, isSupersededError } from '../../lib/errors.js';
import { RedisSessionStore, type RedisSessionStoreOptions } from '../../lib/store/redis.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { asCluster, gate, settled, within, type Gate } from '../helpers/gated-redis.js';

// The races of a Redis store's waiting claims, put in order by holding the
// store's Redis calls (its scripts, its subscriptions) and letting them go:
// on a single Redis the store's inbox (registered at the claim that is told
// to wait), on the Cluster path a channel per request; a release or a confirm
// published before the subscription came through, a waiter giving up in the
// middle of the queue or while a look is in flight, the store closed during a
// look, a message for a queue already gone. No pause decides an outcome; a
// bound only ends a test that would hang.

let server: RedisServer;
let admin: Redis;
const opened = closeAfterEach();
/** A poll this long never wakes a waiter within a test: only the store's other paths can. */
const slowPoll = { pollInterval: 10_000 };
const lease = { leaseMs: 30_000 };

beforeAll(async () => {
  server = await startRedisServer();
  admin = await connect();
  // Redis knows every claim script from now on, so a held EVALSHA is never followed by an EVAL.
  const store = new RedisSessionStore({ client: admin, prefix: `rp-test:${randomUUID()}:` });
  const id = randomUUID();
  const grant = await store.claim(id, 'w', { leaseMs: 1_000 });
  await store.release(id, 'w', grant.fence);
  await store.confirm(id, 'w', (await store.claim(id, 'w', { leaseMs: 1_000 })).fence);
  await store.close();
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

interface Setup {
  prefix: string;
  /** A store on a plain client of its own: the holder, in another process. */
  holder: RedisSessionStore;
  /** The store under test, on a gated client. */
  store: RedisSessionStore;
  gate: Gate;
  key(requestId: string): string;
  channel(requestId: string): string;
}

/**
 * Two stores on one prefix. With `warm`, the store under test has already
 * waited once, so its pub/sub connection is open: on a single Redis its
 * inbox listens, and a new wait registers at its first claim; on the Cluster
 * path the connection knows sharded pub/sub.
 */
async function setup(options: Partial<RedisSessionStoreOptions> = {}, warm = true, mode: 'inbox' | 'channel' = 'inbox'): Promise<Setup> {
  const prefix = `rp-test:${randomUUID()}:`;
  const plain = await connect();
  // Every store on one Redis takes the same path.
  const holder = new RedisSessionStore({ client: mode === 'inbox' ? plain : asCluster(plain), prefix });
  const client = await connect();
  const g = gate(client);
  const store = new RedisSessionStore({ client: mode === 'inbox' ? g.client : asCluster(g.client), prefix, ...slowPoll, ...options });
  opened.push({ close: () => plain.quit() }, holder, { close: () => client.quit() }, { close: () => g.sendAll() }, store);
  const key = (requestId: string) => `${prefix}{r:${requestId}}`;
  const channel = (requestId: string) => `${key(requestId)}:commit`;
  if (warm) {
    const subscription = mode === 'inbox' ? 'subscribe' : 'ssubscribe';
    const id = randomUUID();
    const first = await holder.claim(id, 'a', lease);
    g.hold(subscription);
    const waiting = store.claim(id, 'b', lease);
    await (await g.next(subscription)).send();
    g.pass(subscription);
    await holder.release(id, 'a', first.fence);
    await within(waiting, 'the warm-up claim');
  }
  return { prefix, holder, store, gate: g, key, channel };
}

const scripts = (g: Gate, from = 0) => g.log.slice(from).filter((c) => c.command === 'evalsha' || c.command === 'eval');

/**
 * Starts a claim that waits on a warm single-Redis store, and returns once
 * its first claim (which registers the store's inbox) has answered.
 */
async function registered<T>(s: Setup, claim: () => Promise<T>): Promise<{ claim: Promise<T> }> {
  s.gate.hold('evalsha');
  const started = claim();
  const first = await s.gate.next('evalsha');
  s.gate.pass('evalsha');
  await first.send();
  await settled();
  return { claim: started };
}

/** The store's inbox token, as registered in the request's record. */
async function waitersOf(s: Setup, requestId: string): Promise<string | null> {
  return admin.hget(s.key(requestId), 'waiters');
}

describe('RedisSessionStore waiters on a single Redis: one inbox per store', () => {
  it('a warm store registers its inbox at the first claim: no subscription, no second look, woken by the release', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const before = s.gate.log.length;
    const { claim: waiting } = await registered(s, () => s.store.claim(requestId, 'b', lease));
    const token = (await waitersOf(s, requestId))?.trim();
    expect(token).toMatch(/^[0-9a-f-]{36}$/);
    // One claim so far, and no pub/sub command at all.
    expect(s.gate.log.slice(before).map((c) => c.command)).toEqual(['evalsha']);
    expect(await admin.call('PUBSUB', 'NUMSUB', `${s.prefix}inbox:${token}`)).toEqual([`${s.prefix}inbox:${token}`, 1]);
    await s.holder.release(requestId, 'a', first.fence);
    const grant = await within(waiting, 'the claim woken by the inbox');
    expect(grant.fence).toBeGreaterThan(first.fence);
    // The release woke it: one more claim, which got it.
    expect(s.gate.log.slice(before).map((c) => c.command)).toEqual(['evalsha', 'evalsha']);
    // Registered until the commit (another copy of this process might still wait), cleared by it.
    expect((await waitersOf(s, requestId))?.trim()).toBe(token);
    await s.store.confirm(requestId, 'b', grant.fence);
    expect(await waitersOf(s, requestId)).toBeNull();
  });

  it('a confirm turns the waiters away by the inbox, naming the committer, without asking Redis again', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const b = (await registered(s, () => s.store.claim(requestId, 'b', lease).catch((err: unknown) => err))).claim;
    const c = (await registered(s, () => s.store.claim(requestId, 'c', lease).catch((err: unknown) => err))).claim;
    // Two copies of the request wait in this process: the inbox is registered once.
    expect((await waitersOf(s, requestId))?.trim().split(' ')).toHaveLength(1);
    const before = s.gate.log.length;
    await s.holder.confirm(requestId, 'a', first.fence);
    for (const outcome of await within(Promise.all([b, c]), 'the refusals')) {
      expect(isSupersededError(outcome)).toBe(true);
      expect(outcome).toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
    }
    expect(scripts(s.gate, before)).toEqual([]);
    expect(await waitersOf(s, requestId)).toBeNull();
  });

  it('every waiting store hears the outcome: the inboxes of three stores are registered, each woken once', async () => {
    const s = await setup();
    const others = await Promise.all([0, 1].map(async () => {
      const client = await connect();
      const store = new RedisSessionStore({ client, prefix: s.prefix, ...slowPoll });
      opened.push({ close: () => client.quit() }, store);
      return store;
    }));
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const b = (await registered(s, () => s.store.claim(requestId, 'b', lease).catch((err: unknown) => err))).claim;
    // The other stores' first wait subscribes their inboxes, then looks again (registering).
    const rest = others.map((o, n) => o.claim(requestId, `c${n}`, lease).catch((err: unknown) => err));
    for (let n = 0; n < 100 && ((await waitersOf(s, requestId)) ?? '').trim().split(' ').length < 3; n++) await settled();
    for (let n = 0; n < 200 && ((await waitersOf(s, requestId)) ?? '').trim().split(' ').length < 3; n++) await new Promise((r) => setTimeout(r, 5));
    expect(((await waitersOf(s, requestId)) ?? '').trim().split(' ')).toHaveLength(3);
    await s.holder.confirm(requestId, 'a', first.fence);
    for (const outcome of await within(Promise.all([b, ...rest]), 'the refusals')) expect(outcome).toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
  });

  it('a claim answered "wait" before the inbox listened is not registered; once it listens the store looks again and registers', async () => {
    const s = await setup({}, false);
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    s.gate.hold('subscribe');
    const waiting = s.store.claim(requestId, 'b', lease);
    const subscription = await s.gate.next('subscribe');
    // The first claim carried no token.
    expect(scripts(s.gate).map((c) => c.args.at(-1))).toEqual(['']);
    expect(await waitersOf(s, requestId)).toBeNull();
    s.gate.hold('evalsha');
    await subscription.send();
    const look = await s.gate.next('evalsha');
    s.gate.pass('evalsha');
    // CLAIM_BATCH: ttl, then requestId, duplicateId, leaseMs, inbox token.
    expect(look.argv.slice(1, 3)).toEqual([requestId, 'b']);
    expect(look.argv.at(-1)).toMatch(/^[0-9a-f-]{36}$/);
    await look.send();
    expect((await waitersOf(s, requestId))?.trim()).toBe(look.argv.at(-1));
    await s.holder.release(requestId, 'a', first.fence);
    await expect(within(waiting, 'the claim woken by the inbox')).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('a waiter whose inbox has not come through still looks again at the poll', async () => {
    const s = await setup({ pollInterval: 50 }, false);
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    s.gate.hold('subscribe');
    const waiting = s.store.claim(requestId, 'b', lease);
    await s.gate.next('subscribe'); // held until the test ends
    await s.holder.release(requestId, 'a', first.fence);
    await expect(within(waiting, 'the claim by the poll')).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('a failed inbox subscription leaves the waiters to the poll, and is asked for again at the next wait', async () => {
    const s = await setup({ pollInterval: 50 }, false);
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    s.gate.hold('subscribe');
    const waiting = s.store.claim(requestId, 'b', lease);
    const subscription = await s.gate.next('subscribe');
    // Redis refuses it (the client's connection is not in subscriber mode for a bad call): as if the subscription failed.
    await s.gate.duplicated!.disconnect();
    await subscription.send();
    await s.holder.release(requestId, 'a', first.fence);
    await expect(within(waiting, 'the claim by the poll')).resolves.toMatchObject({ fence: expect.any(Number) });
    // The next wait subscribes again.
    const other = randomUUID();
    await s.holder.claim(other, 'a', lease);
    const controller = new AbortController();
    const next = s.store.claim(other, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => err);
    await s.gate.next('subscribe');
    expect(s.gate.log.filter((c) => c.command === 'subscribe')).toHaveLength(2);
    controller.abort(new Error('done'));
    await next;
  });

  it('ignores what is not an outcome on its inbox, and a message for a request nobody here waits for', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const { claim: waiting } = await registered(s, () => s.store.claim(requestId, 'b', lease));
    const inbox = `${s.prefix}inbox:${(await waitersOf(s, requestId))!.trim()}`;
    const before = s.gate.log.length;
    const seen: string[] = [];
    const junk = ['not json', '{}', '[]', '[1, 2]', '["committed"]', `["committed", "${requestId}"]`, `["committed", "${requestId}", 7]`, `["released", "${randomUUID()}"]`, `["committed", "${randomUUID()}", "z"]`];
    const arrived = new Promise<void>((resolve) => {
      s.gate.duplicated!.on('message', (ch: string, message: string) => {
        if (ch === inbox) seen.push(message);
        if (seen.length === junk.length) resolve();
      });
    });
    for (const message of junk) await admin.publish(inbox, message);
    await within(arrived, 'the messages');
    await settled();
    expect(seen).toEqual(junk);
    // None of them asked Redis anything, nor ended the wait.
    expect(scripts(s.gate, before)).toEqual([]);
    let outcome: unknown = 'waiting';
    void waiting.then((g) => (outcome = g), (err: unknown) => (outcome = err));
    await settled();
    expect(outcome).toBe('waiting');
    await s.holder.release(requestId, 'a', first.fence);
    await expect(within(waiting, 'the claim woken by the inbox')).resolves.toMatchObject({ fence: expect.any(Number) });
  });
});

describe('RedisSessionStore waiters on a single Redis: the inbox and the claim\'s reply come on two connections', () => {
  /** A store whose script replies can be held after Redis ran the script, and whose pub/sub connection the test can listen to. */
  async function heldReplies(warm = true) {
    const prefix = `rp-test:${randomUUID()}:`;
    const plain = await connect();
    const holder = new RedisSessionStore({ client: plain, prefix });
    const client = await connect();
    let hold: Promise<void> | null = null;
    /** Only replies of calls naming this request are held, when set. */
    let only: string | null = null;
    let ran = 0;
    let subscriber: Redis | undefined;
    const wrapped = new Proxy(client, {
      get(target, name) {
        if (name === 'evalsha') {
          return async (...args: unknown[]) => {
            const reply = await (target.evalsha as (...a: unknown[]) => Promise<unknown>)(...args);
            ran++;
            if (hold && (only === null || args.includes(only))) await hold;
            return reply;
          };
        }
        if (name === 'duplicate') return (...a: unknown[]) => (subscriber = (target.duplicate as (...x: unknown[]) => Redis)(...a));
        const value = Reflect.get(target, name) as unknown;
        return typeof value === 'function' ? (value as (...x: unknown[]) => unknown).bind(target) : value;
      },
    });
    const store = new RedisSessionStore({ client: wrapped, prefix, ...slowPoll });
    opened.push({ close: () => plain.quit() }, holder, { close: () => client.quit() }, store);
    if (warm) {
      // The inbox listens.
      const id = randomUUID();
      const first = await holder.claim(id, 'a', lease);
      const waiting = store.claim(id, 'b', lease);
      for (let n = 0; n < 200 && !(await admin.hget(`${prefix}{r:${id}}`, 'waiters')); n++) await new Promise((r) => setTimeout(r, 5));
      await holder.release(id, 'a', first.fence);
      await within(waiting, 'the warm-up claim');
    }
    return {
      prefix, holder, store, subscriber: () => subscriber!,
      ran: () => ran,
      holdReplies(of: string | null = null) {
        let release!: () => void;
        only = of;
        hold = new Promise<void>((r) => (release = r));
        return () => {
          hold = null;
          release();
        };
      },
    };
  }

  it('a claim sent before the inbox listened and answered after the store\'s look-again sweep looks at once, not at the poll', async () => {
    const t = await heldReplies(false);
    const [late, early] = [randomUUID(), randomUUID()];
    const lateHold = await t.holder.claim(late, 'a', lease);
    const earlyHold = await t.holder.claim(early, 'a', lease);
    // The late request's claim goes out unregistered (the inbox does not listen yet); its reply is held.
    const letGo = t.holdReplies(late);
    const before = t.ran();
    const lateClaim = t.store.claim(late, 'c', lease).then((g) => g, (err: unknown) => err);
    for (let n = 0; n < 200 && t.ran() === before; n++) await new Promise((r) => setTimeout(r, 5));
    // Another request's wait makes the inbox listen; its look once listening registers it.
    const earlyClaim = t.store.claim(early, 'b', lease).then((g) => g, (err: unknown) => err);
    for (let n = 0; n < 400 && !(await admin.hget(`${t.prefix}{r:${early}}`, 'waiters')); n++) await new Promise((r) => setTimeout(r, 5));
    expect(await admin.hget(`${t.prefix}{r:${late}}`, 'waiters')).toBeNull();
    // The late request is committed while its claim is unregistered: nobody is told.
    await t.holder.confirm(late, 'a', lateHold.fence);
    letGo();
    await expect(within(lateClaim, 'the late claim, well before the 10 s poll')).resolves.toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
    await t.holder.release(early, 'a', earlyHold.fence);
    await expect(within(earlyClaim, 'the early claim')).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  for (const ending of ['confirm', 'release'] as const) {
    it(`an outcome (${ending}) heard before the reply that told the copy to wait is not left to the poll`, async () => {
      const t = await heldReplies();
      const requestId = randomUUID();
      const first = await t.holder.claim(requestId, 'a', lease);
      const letGo = t.holdReplies();
      const before = t.ran();
      const waiting = t.store.claim(requestId, 'b', lease).then((g) => g, (err: unknown) => err);
      // Redis ran the claim (the inbox is registered) but its reply is held.
      for (let n = 0; n < 200 && t.ran() === before; n++) await new Promise((r) => setTimeout(r, 5));
      expect(t.ran()).toBe(before + 1);
      const heard = new Promise<void>((resolve) => t.subscriber().once('message', () => resolve()));
      if (ending === 'confirm') await t.holder.confirm(requestId, 'a', first.fence);
      else await t.holder.release(requestId, 'a', first.fence);
      // The outcome reached the store's inbox, with no queue for it yet.
      await within(heard, 'the message');
      letGo();
      const outcome = await within(waiting, 'the waiter, well before the 10 s poll');
      if (ending === 'confirm') expect(outcome).toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
      else expect(outcome).toMatchObject({ fence: expect.any(Number) });
    });
  }
});

describe('RedisSessionStore waiters: an outcome published before the store listens (inbox on a single Redis, the request\'s channel on Cluster)', () => {
  const paths = [
    { path: 'inbox', warm: false, subscription: 'subscribe' },
    { path: 'channel', warm: true, subscription: 'ssubscribe' },
  ] as const;

  for (const { path, warm, subscription: command } of paths) {
    it(`${path}: a release published before the subscription came through is not missed: the store looks once subscribed`, async () => {
      const s = await setup({}, warm, path);
      const requestId = randomUUID();
      const first = await s.holder.claim(requestId, 'a', lease);
      s.gate.hold(command);
      const waiting = s.store.claim(requestId, 'b', lease);
      const subscription = await s.gate.next(command);
      // Published to nobody: the store is not listening yet.
      await s.holder.release(requestId, 'a', first.fence);
      await subscription.send();
      const grant = await within(waiting, 'the claim after the subscription');
      expect(grant.fence).toBeGreaterThan(first.fence);
      await expect(s.holder.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'b', fence: grant.fence } });
    });

    it(`${path}: a confirm published before the subscription came through: the look once subscribed turns the waiters away, naming the committer`, async () => {
      const s = await setup({}, warm, path);
      const requestId = randomUUID();
      const first = await s.holder.claim(requestId, 'a', lease);
      s.gate.hold(command);
      const waiters = ['b', 'c'].map((d) => s.store.claim(requestId, d, lease).catch((err: unknown) => err));
      const subscription = await s.gate.next(command);
      await s.holder.confirm(requestId, 'a', first.fence);
      await subscription.send();
      for (const outcome of await within(Promise.all(waiters), 'the refusals')) {
        expect(isSupersededError(outcome)).toBe(true);
        expect(outcome).toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
      }
    });
  }
});

describe('RedisSessionStore waiters giving up', () => {
  it('passes over a waiter that gave up in the middle of the queue: the claim goes to the one behind it', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const controller = new AbortController();
    const b = (await registered(s, () => s.store.claim(requestId, 'b', lease))).claim;
    // c and d are in the queue (their claims answered "wait") before c gives up.
    const c = (await registered(s, () => s.store.claim(requestId, 'c', { ...lease, signal: controller.signal }).catch((err: unknown) => err))).claim;
    const d = (await registered(s, () => s.store.claim(requestId, 'd', lease))).claim;
    controller.abort(new Error('gone'));
    await expect(c).resolves.toMatchObject({ message: 'gone' });
    await s.holder.release(requestId, 'a', first.fence);
    const granted = await within(b, 'the first in the queue');
    await s.store.release(requestId, 'b', granted.fence);
    const next = await within(d, 'the claim of the copy behind the one that gave up');
    await expect(s.holder.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'd', fence: next.fence } });
  });

  it('the last waiter giving up costs no command: the inbox stays, and the outcome published to it later is ignored', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const controller = new AbortController();
    let outcome: unknown;
    await registered(s, () => s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => (outcome = err)));
    const before = s.gate.log.length;
    controller.abort(new Error('gone'));
    await settled();
    expect(outcome).toMatchObject({ message: 'gone' });
    await s.holder.confirm(requestId, 'a', first.fence);
    await settled();
    expect(s.gate.log.slice(before)).toEqual([]);
  });

  it('a waiter giving up while another waits: the other is still woken by the inbox', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const controller = new AbortController();
    await registered(s, () => s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => err));
    const { claim: waiting } = await registered(s, () => s.store.claim(requestId, 'c', lease));
    controller.abort(new Error('gone'));
    await s.holder.release(requestId, 'a', first.fence);
    await expect(within(waiting, 'the claim woken by the inbox')).resolves.toMatchObject({ fence: expect.any(Number) });
    await expect(s.holder.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'c' } });
  });

  it('gives back a grant that a look in flight gets for a waiter that gave up meanwhile', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const controller = new AbortController();
    let outcome: unknown;
    await registered(s, () => s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => (outcome = err)));
    s.gate.hold('evalsha');
    await s.holder.release(requestId, 'a', first.fence);
    // The release's message makes the store look: CLAIM for 'b', held here.
    const look = await s.gate.next('evalsha');
    // CLAIM_BATCH: ttl, then requestId, duplicateId, leaseMs, inbox token.
    expect(look.argv.slice(1, 3)).toEqual([requestId, 'b']);
    controller.abort(new Error('gone'));
    await settled();
    expect(outcome).toMatchObject({ message: 'gone' });
    await look.send();
    const back = await s.gate.next('evalsha');
    // RELEASE: duplicateId, fence.
    expect(back.argv[0]).toBe('b');
    await back.send();
    await expect(s.holder.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'none' } });
  });

  it('a store closed while a waiter\'s look is in flight rejects the waiter, gives the grant back, and resolves only then', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    let outcome: unknown;
    await registered(s, () => s.store.claim(requestId, 'b', lease).catch((err: unknown) => (outcome = err)));
    s.gate.hold('evalsha');
    await s.holder.release(requestId, 'a', first.fence);
    const look = await s.gate.next('evalsha');
    // CLAIM_BATCH: ttl, then requestId, duplicateId, leaseMs, inbox token.
    expect(look.argv.slice(1, 3)).toEqual([requestId, 'b']);
    let closed = false;
    const closing = s.store.close().then(() => (closed = true));
    await new Promise((r) => setImmediate(r));
    expect(outcome).toMatchObject({ code: codes.CLOSED });
    await look.send();
    const back = await s.gate.next('evalsha');
    expect(back.argv[0]).toBe('b');
    expect(closed).toBe(false); // the grant is on its way back
    await back.send();
    await closing;
    await expect(s.holder.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'none' } });
  });
});

describe('RedisSessionStore waiters: what a look can answer', () => {
  it('an outcome heard while a look is in flight makes the queue look once more after it', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const { claim: waiting } = await registered(s, () => s.store.claim(requestId, 'b', lease));
    s.gate.hold('evalsha');
    const from = s.gate.log.length;
    // The test's own listener, after the store's: both releases reached the store.
    let messages = 0;
    const both = new Promise<void>((resolve) => {
      s.gate.duplicated!.on('message', () => {
        if (++messages === 2) resolve();
      });
    });
    // The release wakes the store: its look is held here ...
    await s.holder.release(requestId, 'a', first.fence);
    const look = await s.gate.next('evalsha');
    // ... while another copy takes the claim and gives it back (a second message during the look).
    const again = await s.holder.claim(requestId, 'x', lease);
    await s.holder.release(requestId, 'x', again.fence);
    await within(both, 'the two releases');
    await settled();
    // Only one look at a time: the second message did not send another.
    expect(scripts(s.gate, from)).toHaveLength(1);
    const held = await s.holder.claim(requestId, 'y', lease);
    await look.send(); // answered "wait": y holds it
    // The message heard during the look asks for one more look, at once, not at the poll.
    const next = await s.gate.next('evalsha');
    s.gate.pass('evalsha');
    await next.send();
    await s.holder.release(requestId, 'y', held.fence);
    await expect(within(waiting, 'the claim')).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('a waiter whose copy got the claim another way meanwhile resolves with that very grant (held)', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const waiting = (await registered(s, () => s.store.claim(requestId, 'b', lease))).claim;
    s.gate.hold('evalsha');
    await s.holder.release(requestId, 'a', first.fence);
    const look = await s.gate.next('evalsha');
    // The same copy, through another store (a retry in another process), gets the claim first.
    const grant = await s.holder.claim(requestId, 'b', lease);
    s.gate.pass('evalsha');
    await look.send();
    await expect(within(waiting, 'the waiter')).resolves.toEqual(grant);
  });

  it('a waiter that gave up during a look answered "held" gives nothing back: the claim is its copy\'s, got another way', async () => {
    const s = await setup();
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const controller = new AbortController();
    const waiting = (await registered(s, () => s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => err))).claim;
    s.gate.hold('evalsha');
    await s.holder.release(requestId, 'a', first.fence);
    const look = await s.gate.next('evalsha');
    const grant = await s.holder.claim(requestId, 'b', lease);
    controller.abort(new Error('gone'));
    await expect(waiting).resolves.toMatchObject({ message: 'gone' });
    const before = s.gate.log.length;
    await look.send();
    await settled();
    // No RELEASE: the claim is held by copy b through the other store.
    expect(scripts(s.gate, before)).toEqual([]);
    await expect(s.holder.getRequest(requestId)).resolves.toMatchObject({ commit: { state: 'claimed', holder: 'b', fence: grant.fence } });
  });
});

/**
 * On the Cluster path, a waited-for request has its own sharded channel:
 * starts a claim that waits, and returns once the store is subscribed for it
 * (its SSUBSCRIBE held, then sent) and the look it takes then (a fencing
 * token, then the claim) has answered.
 */
async function subscribed<T>(s: Setup, claim: () => Promise<T>): Promise<{ claim: Promise<T> }> {
  s.gate.hold('ssubscribe');
  const before = s.gate.log.length;
  const started = claim();
  const call = await s.gate.next('ssubscribe');
  expect(s.gate.log.slice(before).filter((c) => c.command === 'ssubscribe')).toHaveLength(1);
  s.gate.hold('evalsha');
  await call.send();
  s.gate.pass('ssubscribe');
  const token = await s.gate.next('evalsha');
  await token.send();
  const look = await s.gate.next('evalsha');
  s.gate.pass('evalsha');
  await look.send();
  await settled();
  return { claim: started };
}

function unsubscribes(g: Gate, channel: string, from = 0): number {
  return g.log.slice(from).filter((c) => c.command === 'sunsubscribe' && c.args[0] === channel).length;
}

describe('RedisSessionStore waiters on the Cluster path: a sharded channel per request', () => {
  it('subscribes the request\'s channel, looks once subscribed, and is woken by the release; no inbox is involved', async () => {
    const s = await setup({}, true, 'channel');
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const { claim: waiting } = await subscribed(s, () => s.store.claim(requestId, 'b', lease));
    expect(await waitersOf(s, requestId)).toBeNull();
    expect(s.gate.log.filter((c) => c.command === 'subscribe')).toEqual([]);
    const before = s.gate.log.length;
    await s.holder.release(requestId, 'a', first.fence);
    await expect(within(waiting, 'the claim woken by pub/sub')).resolves.toMatchObject({ fence: expect.any(Number) });
    // Its queue is done: it leaves the channel, once.
    await settled();
    expect(unsubscribes(s.gate, s.channel(requestId), before)).toBe(1);
  });

  it('a confirm turns the subscribed waiters away by the channel\'s message, naming the committer, without asking Redis again', async () => {
    const s = await setup({}, true, 'channel');
    const requestId = randomUUID();
    const first = await s.holder.claim(requestId, 'a', lease);
    const { claim: waiting } = await subscribed(s, () => s.store.claim(requestId, 'b', lease).catch((err: unknown) => err));
    const before = scripts(s.gate).length;
    await s.holder.confirm(requestId, 'a', first.fence);
    await expect(within(waiting, 'the refusal')).resolves.toMatchObject({ code: codes.SUPERSEDED, committedBy: 'a' });
    expect(scripts(s.gate).length).toBe(before);
  });

  it('the last waiter giving up leaves the channel at once, once', async () => {
    const s = await setup({}, true, 'channel');
    const requestId = randomUUID();
    await s.holder.claim(requestId, 'a', lease);
    const controller = new AbortController();
    let outcome: unknown;
    await subscribed(s, () => s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => (outcome = err)));
    const before = s.gate.log.length;
    controller.abort(new Error('gone'));
    // In the abort itself, not at the next look.
    expect(unsubscribes(s.gate, s.channel(requestId), before)).toBe(1);
    await settled();
    expect(outcome).toMatchObject({ message: 'gone' });
    expect(unsubscribes(s.gate, s.channel(requestId), before)).toBe(1);
  });

  it('a queue dropped before its subscription came through leaves the channel once it does, and only then', async () => {
    for (const warm of [false, true]) {
      const s = await setup({}, warm, 'channel');
      const requestId = randomUUID();
      await s.holder.claim(requestId, 'a', lease);
      s.gate.hold('ssubscribe');
      const controller = new AbortController();
      const waiting = s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => err);
      const subscription = await s.gate.next('ssubscribe');
      controller.abort(new Error('gone'));
      await expect(waiting).resolves.toMatchObject({ message: 'gone' });
      expect(unsubscribes(s.gate, s.channel(requestId))).toBe(0);
      await subscription.send();
      await settled();
      expect(unsubscribes(s.gate, s.channel(requestId))).toBe(1);
    }
  });

  it('a subscription that comes through after its queue was dropped leaves a newer queue of the channel subscribed', async () => {
    const s = await setup({}, true, 'channel');
    const requestId = randomUUID();
    const channel = s.channel(requestId);
    const first = await s.holder.claim(requestId, 'a', lease);
    s.gate.hold('ssubscribe');
    const controller = new AbortController();
    const quitter = s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => err);
    const old = await s.gate.next('ssubscribe');
    controller.abort(new Error('gone'));
    await expect(quitter).resolves.toMatchObject({ message: 'gone' });
    const dropped = s.gate.log.length;
    // Another copy waits: a new queue, subscribing again.
    const waiting = s.store.claim(requestId, 'c', lease);
    const renewed = await s.gate.next('ssubscribe');
    await old.send();
    await settled();
    expect(unsubscribes(s.gate, channel, dropped)).toBe(0);
    await renewed.send();
    await settled();
    expect(unsubscribes(s.gate, channel, dropped)).toBe(0);
    await s.holder.release(requestId, 'a', first.fence);
    await expect(within(waiting, 'the claim woken by pub/sub')).resolves.toMatchObject({ fence: expect.any(Number) });
  });

  it('ignores a message for a channel whose queue is gone (its unsubscribe still on the way)', async () => {
    const s = await setup({}, true, 'channel');
    const requestId = randomUUID();
    const channel = s.channel(requestId);
    await s.holder.claim(requestId, 'a', lease);
    const controller = new AbortController();
    await subscribed(s, () => s.store.claim(requestId, 'b', { ...lease, signal: controller.signal }).catch((err: unknown) => err));
    s.gate.hold('sunsubscribe', 'evalsha');
    const before = scripts(s.gate).length;
    controller.abort(new Error('gone'));
    const leaving = await s.gate.next('sunsubscribe');
    // The test's own listener, after the store's: both messages reached the store.
    const seen: string[] = [];
    const arrived = new Promise<void>((resolve) => {
      s.gate.duplicated!.on('smessage', (ch: string, message: string) => {
        if (ch === channel) seen.push(message);
        if (seen.length === 2) resolve();
      });
    });
    await admin.call('SPUBLISH', channel, 'released');
    await admin.call('SPUBLISH', channel, 'committed|z');
    await within(arrived, 'the messages');
    await settled();
    expect(seen).toEqual(['released', 'committed|z']);
    // Nothing was asked of Redis for them.
    expect(scripts(s.gate).length).toBe(before);
    await leaving.send();
  });
});
