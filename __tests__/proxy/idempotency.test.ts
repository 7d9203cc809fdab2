import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { codes, MemorySessionStore, RedundantProxyError, type SessionStore } from '../../lib/index.js';
import { Idempotency, type BeginContext, type IdempotencyConfig, type KeyedAttempt } from '../../lib/proxy/idempotency.js';
import type { CapturedAnswer, RaceReport } from '../../lib/proxy/race.js';
import { sealId } from '../../lib/wire/protocol.js';

// The proxy's Idempotency-Key handling, one piece at a time, on a real
// MemorySessionStore: how a key is read and scoped, what a request is
// fingerprinted by, the wait for an attempt in flight (on jest's virtual
// clock: Date.now and the timers), the replay, and what each way of ending an
// attempt keeps for the next retry. The end-to-end story (real replicas,
// PostgreSQL) is in __tests__/updates/exactly-once.test.ts.

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** A response that records what was written; `destroy()` is a client that left. */
function fakeRes() {
  const res = {
    answer: undefined as Answer | undefined,
    headersSent: false,
    destroyed: false,
    writeHead(status: number, headers: Record<string, string>) {
      res.answer = { status, headers, body: '' };
      res.headersSent = true;
      return res;
    },
    end(body?: string | Buffer) {
      res.answer!.body = body === undefined ? '' : body.toString();
      return res;
    },
    destroy() {
      res.destroyed = true;
      return res;
    },
  };
  return res;
}
type FakeRes = ReturnType<typeof fakeRes>;

function req(headers: Record<string, string | string[]> = {}): IncomingMessage {
  return { headers } as unknown as IncomingMessage;
}

const stores: SessionStore[] = [];
const idempotencies: Idempotency[] = [];
afterEach(async () => {
  jest.useRealTimers();
  for (const i of idempotencies.splice(0)) i.close();
  for (const s of stores.splice(0)) await s.close();
});

/** A memory store whose beginIdempotent / completeIdempotent / getRequest calls are counted, and may be replaced. */
function storeWith(overrides: Partial<Pick<SessionStore, 'beginIdempotent' | 'completeIdempotent' | 'getRequest'>> = {}) {
  const inner = new MemorySessionStore();
  stores.push(inner);
  const calls = { beginIdempotent: 0, completeIdempotent: 0, getRequest: 0 };
  const store = new Proxy(inner, {
    get(target, name) {
      if (name in calls) {
        return (...args: unknown[]) => {
          calls[name as keyof typeof calls]++;
          const override = overrides[name as keyof typeof overrides] as ((...a: unknown[]) => Promise<unknown>) | undefined;
          return override ? override(...args) : (Reflect.get(target, name) as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        };
      }
      const value = Reflect.get(target, name) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as SessionStore;
  return { inner, store, calls };
}

function setup(config: Partial<IdempotencyConfig> = {}, store?: SessionStore) {
  const s = store ?? storeWith().store;
  const storeErrors: unknown[] = [];
  const idem = new Idempotency({
    store: s,
    storeTimeout: 1_000,
    lockMs: 10_000,
    scope: undefined,
    ttl: 60_000,
    maxAnswerSize: 100,
    wait: 1_000,
    onStoreError: (_requestId, error) => storeErrors.push(error),
    ...config,
  });
  idempotencies.push(idem);
  let n = 0;
  /** Begins a request with this key header (and optional other headers / context). */
  const begin = async (key: string | string[] | undefined, ctx: Partial<BeginContext> = {}, headers: Record<string, string> = {}) => {
    const res = fakeRes();
    const h: Record<string, string | string[]> = { ...headers };
    if (key !== undefined) h['idempotency-key'] = key;
    const result = await idem.begin(req(h), res as unknown as ServerResponse, {
      requestId: `req-${++n}`,
      method: 'POST',
      path: '/pay',
      body: Buffer.from('{"amount":1}'),
      sessionId: null,
      ...ctx,
    });
    return { result, res };
  };
  return { idem, begin, storeErrors, store: s };
}

function captured(status: number, body: string | null, headers: Record<string, string> = { 'content-type': 'text/plain' }): CapturedAnswer {
  return { status, headers, body: body === null ? null : Buffer.from(body) };
}

function report(outcome: RaceReport['outcome'], committed = false): RaceReport {
  return { requestId: 'x', method: 'POST', path: '/pay', update: true, outcome, status: null, servedBy: null, adopted: null, committed, duration: 1, copies: [] };
}

function json(res: FakeRes): Record<string, unknown> {
  return JSON.parse(res.answer!.body) as Record<string, unknown>;
}

function started(result: KeyedAttempt | 'answered' | null): KeyedAttempt {
  expect(result).toMatchObject({ requestId: expect.any(String), attempt: expect.any(Number), done: false });
  return result as KeyedAttempt;
}

describe('Idempotency.begin: the key', () => {
  it('takes no key when the request has none', async () => {
    const { begin } = setup();
    const { result, res } = await begin(undefined);
    expect(result).toBeNull();
    expect(res.answer).toBeUndefined();
  });

  it('reads a bare token and the same key as a quoted string alike', async () => {
    const { begin } = setup({ wait: 0 });
    expect(started((await begin('abc')).result)).toMatchObject({ requestId: 'req-1', attempt: 1 });
    // The same key, still in flight.
    const { res } = await begin('"abc"');
    expect(res.answer!.status).toBe(409);
    expect(json(res)).toMatchObject({ code: codes.IDEMPOTENCY_IN_FLIGHT, requestId: 'req-1' });
  });

  it.each([
    ['a single double quote is a key of one character', '"', true],
    ['255 visible characters', 'k'.repeat(255), true],
    ['256 characters', 'k'.repeat(256), false],
    ['empty quotes', '""', false],
    ['an empty value', '', false],
    ['a space inside', 'a b', false],
    ['a control character', 'a\u0001', false],
    ['a character past ASCII', 'cl\u00e9', false],
  ])('%s: %s', async (_what, key, ok) => {
    const { begin } = setup();
    const { result, res } = await begin(key);
    if (ok) {
      started(result);
      expect(res.answer).toBeUndefined();
    } else {
      expect(result).toBe('answered');
      expect(res.answer!.status).toBe(400);
      expect(json(res)).toMatchObject({ code: codes.BAD_IDEMPOTENCY_KEY, requestId: 'req-1' });
    }
  });

  it('takes a quote at only one end as part of a bare token', async () => {
    const { begin } = setup({ wait: 0 });
    const a = started((await begin('abc"')).result);
    const b = started((await begin('bc')).result);
    const c = started((await begin('"abc')).result);
    const d = started((await begin('ab')).result);
    expect(new Set([a.key, b.key, c.key, d.key]).size).toBe(4);
  });

  it('uses the first of several key headers', async () => {
    const { begin } = setup({ wait: 0 });
    started((await begin(['one', 'two'])).result);
    // 'one' is in flight now; 'two' is free.
    expect((await begin('one')).res.answer!.status).toBe(409);
    started((await begin('two')).result);
  });
});

describe('Idempotency.begin: the scope', () => {
  it('without a scope function: one key whoever sends it; another session or Authorization is part of the request, so it is refused (422), never run again', async () => {
    const { begin, idem } = setup({ wait: 0 });
    const alice = started((await begin('k', { sessionId: 's1' })).result);
    // The same client retrying: in flight.
    expect((await begin('k', { sessionId: 's1' })).res.answer!.status).toBe(409);
    // The same key from another session, other credentials, or none: a different request.
    for (const [ctx, headers] of [[{ sessionId: 's2' }, {}], [{}, { authorization: 'Bearer alice' }], [{}, {}]] as const) {
      const { result, res } = await begin('k', ctx, headers);
      expect(result).toBe('answered');
      expect(res.answer!.status).toBe(422);
      expect(JSON.parse(String(res.answer!.body))).toMatchObject({ code: 'RP_ERR_IDEMPOTENCY_MISMATCH', message: expect.stringContaining('or by another client') });
    }
    // Completed: replayed to the same client only.
    await idem.completeWon(alice, captured(201, 'made'), true);
    expect((await begin('k', { sessionId: 's1' })).res.answer!.status).toBe(201);
    expect((await begin('k', { sessionId: 's2' })).res.answer!.status).toBe(422);
    // The store's key does not depend on who sent it (so a retry whose
    // credentials changed is refused, not run again); the handlers' key
    // (a unique column) does, so that two clients never collide there.
    const { begin: again } = setup({ wait: 0 });
    const viaAuth = started((await again('k', {}, { authorization: 'Bearer t1' })).result);
    expect(viaAuth.key).toBe(alice.key);
    expect(viaAuth.appKey).not.toBe(alice.appKey);
    const { begin: third } = setup({ wait: 0 });
    expect(started((await third('k', { sessionId: 's1' })).result).appKey).toBe(alice.appKey);
  });

  it('an app that signs clients in with its own cookie: the Cookie header tells them apart; neither gets the other’s answer', async () => {
    const { begin, idem } = setup({ wait: 0 });
    const alice = started((await begin('order-42', {}, { cookie: 'sid=alice' })).result);
    await idem.completeWon(alice, captured(200, 'alice: card 4242'), true);
    const bob = await begin('order-42', {}, { cookie: 'sid=bob' });
    expect(bob.res.answer!.status).toBe(422);
    expect(bob.res.answer!.body).not.toContain('4242');
    expect(json(bob.res)).toMatchObject({ code: codes.IDEMPOTENCY_MISMATCH });
    const replay = await begin('order-42', {}, { cookie: 'sid=alice' });
    expect([replay.res.answer!.status, replay.res.answer!.body]).toEqual([200, 'alice: card 4242']);
    // Cookie and Authorization together are one sender.
    const { begin: b2 } = setup({ wait: 0 });
    const both = started((await b2('k2', {}, { cookie: 'sid=alice', authorization: 'Bearer a' })).result);
    expect((await b2('k2', {}, { cookie: 'sid=alice' })).res.answer!.status).toBe(422);
    expect((await b2('k2', {}, { authorization: 'Bearer a' })).res.answer!.status).toBe(422);
    expect(both.appKey).not.toBe(alice.appKey);
  });

  it('a replay to a client the proxy cannot tell apart (no session, no credentials) carries no cookies; one to its known sender does', async () => {
    const { begin, idem } = setup({ wait: 0 });
    const first = started((await begin('guest-1')).result);
    await idem.completeWon(first, captured(201, 'ordered', { 'content-type': 'text/plain', 'set-cookie': 'rp_session=S; HttpOnly' } as Record<string, string>), true);
    const replay = await begin('guest-1');
    expect(replay.res.answer!.status).toBe(201);
    expect(replay.res.answer!.body).toBe('ordered');
    expect(replay.res.answer!.headers).toMatchObject({ 'content-type': 'text/plain', 'idempotent-replayed': 'true' });
    expect(Object.keys(replay.res.answer!.headers).map((n) => n.toLowerCase())).not.toContain('set-cookie');

    const { begin: known, idem: idem2 } = setup({ wait: 0 });
    const mine = started((await known('mine-1', { sessionId: 's1' })).result);
    await idem2.completeWon(mine, captured(201, 'ordered', { 'content-type': 'text/plain', 'set-cookie': 'pref=1' }), true);
    expect((await known('mine-1', { sessionId: 's1' })).res.answer!.headers['set-cookie']).toBe('pref=1');
  });

  it('by the scope function when there is one; undefined from it skips idempotency', async () => {
    const seen: IncomingMessage[] = [];
    const { begin } = setup({
      wait: 0,
      scope: (r) => {
        seen.push(r);
        return r.headers['x-tenant'] as string | undefined;
      },
    });
    const t1 = started((await begin('k', { sessionId: 's1' }, { 'x-tenant': 't1' })).result);
    // Another session of the same tenant: the same key, in flight.
    expect((await begin('k', { sessionId: 's2' }, { 'x-tenant': 't1' })).res.answer!.status).toBe(409);
    const t2 = started((await begin('k', { sessionId: 's1' }, { 'x-tenant': 't2' })).result);
    expect(t1.key).not.toBe(t2.key);
    const none = await begin('k');
    expect(none.result).toBeNull();
    expect(none.res.answer).toBeUndefined();
    expect(seen).toHaveLength(4);
  });
});

describe('Idempotency.begin: what the store says', () => {
  it('a different method, path or body under the same key is a 422 mismatch; the same request is not', async () => {
    const { begin, idem } = setup({ wait: 0 });
    const first = started((await begin('k')).result);
    await idem.completeWon(first, captured(201, 'made'), true);
    for (const ctx of [{ method: 'PUT' }, { path: '/pay2' }, { body: Buffer.from('{"amount":2}') }, { body: null }]) {
      const { result, res } = await begin('k', ctx);
      expect(result).toBe('answered');
      expect(res.answer!.status).toBe(422);
      expect(json(res)).toMatchObject({ code: codes.IDEMPOTENCY_MISMATCH });
    }
    expect((await begin('k')).res.answer!.status).toBe(201);
  });

  it('a null body and an empty body are the same request', async () => {
    const { begin, idem } = setup({ wait: 0 });
    const first = started((await begin('k', { body: null })).result);
    await idem.completeWon(first, captured(200, 'ok'), true);
    expect((await begin('k', { body: Buffer.alloc(0) })).res.answer!.status).toBe(200);
  });

  it('replays a completed answer: its status, headers and body, with content-length and idempotent-replayed', async () => {
    const { begin, idem } = setup();
    const first = started((await begin('k')).result);
    await idem.completeWon(first, captured(201, 'made it', { 'content-type': 'text/plain', 'x-request-id': 'req-1' }), true);
    const { result, res } = await begin('k');
    expect(result).toBe('answered');
    expect(res.answer).toEqual({
      status: 201,
      headers: { 'content-type': 'text/plain', 'x-request-id': 'req-1', 'content-length': '7', 'idempotent-replayed': 'true' },
      body: 'made it',
    });
  });

  it('resumes a key that ended without a final answer under the first request id, as attempt 2', async () => {
    const { begin, idem } = setup();
    const first = started((await begin('k')).result);
    await idem.completeAfter(first, report('client-closed'));
    expect(first.done).toBe(true);
    const again = started((await begin('k')).result);
    expect(again).toMatchObject({ key: first.key, requestId: 'req-1', attempt: 2, done: false });
  });

  it('takes a state without request id or attempt (a store of an earlier version) as the caller\'s, attempt 1', async () => {
    const { store } = storeWith({ beginIdempotent: async () => ({ state: 'started' }) as never });
    const { begin } = setup({}, store);
    expect((await begin('k')).result).toMatchObject({ requestId: 'req-1', attempt: 1 });
  });

  it('refuses with 503 RP_ERR_STORE_UNAVAILABLE and Retry-After when the store fails: nothing is run', async () => {
    const { store } = storeWith({ beginIdempotent: () => Promise.reject(new Error('ECONNREFUSED')) });
    const { begin } = setup({}, store);
    const { result, res } = await begin('k');
    expect(result).toBe('answered');
    expect(res.answer!.status).toBe(503);
    expect(res.answer!.headers['retry-after']).toBe('1');
    expect(json(res)).toMatchObject({ code: codes.STORE_UNAVAILABLE, requestId: 'req-1' });
  });

  it('a take that timed out but landed is released, so that the key is not held with nothing running', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const { inner, store, calls } = storeWith({
      beginIdempotent: async (...args: Parameters<SessionStore['beginIdempotent']>) => {
        await inner.beginIdempotent(...args);
        return new Promise(() => undefined);
      },
    });
    const { begin } = setup({ storeTimeout: 300 }, store);
    const pending = begin('k');
    await jest.advanceTimersByTimeAsync(300);
    expect(json((await pending).res)).toMatchObject({ code: codes.STORE_UNAVAILABLE });
    expect(calls.completeIdempotent).toBe(1);
    // Released under the first request id: a retry resumes it.
    const direct = setup({ wait: 0 }, inner);
    expect((await direct.begin('k')).result).toMatchObject({ requestId: 'req-1', attempt: 2 });
  });

  it('a release of a timed-out take that fails is tried again, until the lock would have run out', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    let failures = 1;
    const { inner, store, calls } = storeWith({
      beginIdempotent: () => new Promise(() => undefined),
      completeIdempotent: (...args: Parameters<SessionStore['completeIdempotent']>) => (failures-- > 0 ? Promise.reject(new Error('ECONNRESET')) : inner.completeIdempotent(...args)),
    });
    const { begin } = setup({ storeTimeout: 300, lockMs: 10_000 }, store);
    const pending = begin('k');
    await jest.advanceTimersByTimeAsync(300);
    await pending;
    expect(calls.completeIdempotent).toBe(1);
    await jest.advanceTimersByTimeAsync(100);
    expect(calls.completeIdempotent).toBe(2);
  });

  it('refuses with 503 RP_ERR_STORE_FULL when the store is full, and releases nothing', async () => {
    const full = new RedundantProxyError(codes.STORE_FULL, 'full', { status: 503 });
    const { store, calls } = storeWith({ beginIdempotent: () => Promise.reject(full) });
    const { begin } = setup({}, store);
    const { res } = await begin('k');
    expect(calls.completeIdempotent).toBe(0);
    expect(res.answer!.status).toBe(503);
    expect(res.answer!.headers['retry-after']).toBe('1');
    expect(json(res)).toMatchObject({ code: codes.STORE_FULL });
  });

  it('bounds a store that hangs by the store timeout', async () => {
    jest.useFakeTimers();
    const { store } = storeWith({ beginIdempotent: () => new Promise(() => undefined) });
    const { begin } = setup({ storeTimeout: 300 }, store);
    let done = false;
    const pending = begin('k').then((r) => {
      done = true;
      return r;
    });
    await jest.advanceTimersByTimeAsync(299);
    expect(done).toBe(false);
    await jest.advanceTimersByTimeAsync(1);
    const { res } = await pending;
    expect(json(res)).toMatchObject({ code: codes.STORE_UNAVAILABLE });
  });
});

describe('Idempotency.begin: a retry while the key is in flight (virtual clock)', () => {
  it('polls after 5, 10, 20, 40, 80, then every 100 ms, and replays the outcome as soon as it sees it', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const { store, calls } = storeWith();
    const { begin, idem } = setup({ wait: 1_000 }, store);
    const first = started((await begin('k')).result);
    calls.beginIdempotent = 0;
    let answered: { res: FakeRes } | undefined;
    const retry = begin('k').then((r) => (answered = r));
    const expected: Array<[number, number]> = [[0, 1], [5, 2], [15, 3], [35, 4], [75, 5], [155, 6], [255, 7], [355, 8]];
    let t = 0;
    for (const [at, count] of expected) {
      if (at > t) {
        await jest.advanceTimersByTimeAsync(at - t - 1);
        expect(calls.beginIdempotent).toBe(count - 1);
        await jest.advanceTimersByTimeAsync(1);
        t = at;
      } else await jest.advanceTimersByTimeAsync(0);
      expect(calls.beginIdempotent).toBe(count);
    }
    await idem.completeWon(first, captured(200, 'done'), true);
    expect(answered).toBeUndefined();
    await jest.advanceTimersByTimeAsync(100);
    await retry;
    expect(calls.beginIdempotent).toBe(9);
    expect(answered!.res.answer).toMatchObject({ status: 200, body: 'done' });
  });

  it('after the wait, 409 RP_ERR_IDEMPOTENCY_IN_FLIGHT with Retry-After, naming the running request, exactly at the deadline', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const { store, calls } = storeWith();
    const { begin } = setup({ wait: 1_000 }, store);
    started((await begin('k')).result);
    let answered: { res: FakeRes } | undefined;
    void begin('k').then((r) => (answered = r));
    await jest.advanceTimersByTimeAsync(999);
    expect(answered).toBeUndefined();
    await jest.advanceTimersByTimeAsync(1);
    expect(answered!.res.answer!.status).toBe(409);
    expect(answered!.res.answer!.headers['retry-after']).toBe('1');
    expect(answered!.res.answer!.headers['x-request-id']).toBe('req-1');
    expect(json(answered!.res)).toMatchObject({ code: codes.IDEMPOTENCY_IN_FLIGHT, requestId: 'req-1' });
    // The first attempt's begin, then the looks: the last one exactly at the deadline.
    expect(calls.beginIdempotent).toBe(1 + [0, 5, 15, 35, 75, 155, 255, 355, 455, 555, 655, 755, 855, 955, 1000].length);
  });

  it('with wait 0, answers 409 at once, after one look', async () => {
    const { store, calls } = storeWith();
    const { begin } = setup({ wait: 0 }, store);
    started((await begin('k')).result);
    calls.beginIdempotent = 0;
    const { res } = await begin('k');
    expect(res.answer!.status).toBe(409);
    expect(calls.beginIdempotent).toBe(1);
  });

  it('stops looking when the client leaves while it waits, and writes nothing', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const { store, calls } = storeWith();
    const { idem } = setup({ wait: 1_000 }, store);
    const ctx = { method: 'POST', path: '/pay', body: null, sessionId: null };
    await idem.begin(req({ 'idempotency-key': 'k' }), fakeRes() as unknown as ServerResponse, { requestId: 'req-1', ...ctx });
    calls.beginIdempotent = 0;
    const res = fakeRes();
    let result: unknown;
    void idem.begin(req({ 'idempotency-key': 'k' }), res as unknown as ServerResponse, { requestId: 'req-2', ...ctx }).then((r) => (result = r));
    await jest.advanceTimersByTimeAsync(30);
    const looks = calls.beginIdempotent;
    res.destroy();
    await jest.advanceTimersByTimeAsync(20);
    expect(result).toBe('answered');
    expect(calls.beginIdempotent).toBe(looks);
    expect(res.answer).toBeUndefined();
  });

  it('a client that left before the first look gets nothing written and no wait', async () => {
    const { store, calls } = storeWith();
    const { idem } = setup({ wait: 1_000 }, store);
    const ctx = { method: 'POST', path: '/pay', body: null, sessionId: null };
    await idem.begin(req({ 'idempotency-key': 'k' }), fakeRes() as unknown as ServerResponse, { requestId: 'req-1', ...ctx });
    calls.beginIdempotent = 0;
    const res = fakeRes();
    res.destroyed = true;
    await expect(idem.begin(req({ 'idempotency-key': 'k' }), res as unknown as ServerResponse, { requestId: 'req-2', ...ctx })).resolves.toBe('answered');
    expect(calls.beginIdempotent).toBe(1);
    expect(res.answer).toBeUndefined();
  });
});

describe('Idempotency.completeWon: what a won race keeps', () => {
  async function keptFor(cap: CapturedAnswer | null, committed: boolean, config: Partial<IdempotencyConfig> = {}) {
    const { begin, idem } = setup({ wait: 0, ...config });
    const attempt = started((await begin('k')).result);
    await idem.completeWon(attempt, cap, committed);
    expect(attempt.done).toBe(true);
    const { result, res } = await begin('k');
    return { result, res, attempt };
  }

  it('a committed answer, whatever its status, up to maxAnswerSize bytes', async () => {
    const { res } = await keptFor(captured(500, 'x'.repeat(100)), true);
    expect(res.answer).toMatchObject({ status: 500, body: 'x'.repeat(100) });
  });

  it('an empty committed answer', async () => {
    const { res } = await keptFor(captured(204, ''), true);
    expect(res.answer).toMatchObject({ status: 204, body: '' });
  });

  it('an answer below 500 that committed nothing', async () => {
    const { res } = await keptFor(captured(499, 'invalid'), false);
    expect(res.answer).toMatchObject({ status: 499, body: 'invalid' });
  });

  it('not an answer of 500 or more that committed nothing: the next retry runs again, under the same request id', async () => {
    const { result, attempt } = await keptFor(captured(500, 'oops'), false);
    expect(result).toMatchObject({ requestId: attempt.requestId, attempt: 2 });
  });

  it('a committed answer over maxAnswerSize (or not captured) as 502 RP_ERR_ANSWER_LOST', async () => {
    for (const cap of [captured(200, 'x'.repeat(101)), captured(200, null), null]) {
      const { res } = await keptFor(cap, true);
      expect(res.answer!.status).toBe(502);
      expect(json(res)).toMatchObject({ code: codes.ANSWER_LOST, requestId: 'req-1' });
      expect(res.answer!.headers['x-request-id']).toBe('req-1');
      expect(res.answer!.headers['content-type']).toBe('application/json; charset=utf-8');
    }
  });

  it('an answer over maxAnswerSize that committed nothing is not kept: the next retry runs again', async () => {
    const { result } = await keptFor(captured(200, 'x'.repeat(101)), false);
    expect(result).toMatchObject({ requestId: 'req-1', attempt: 2 });
  });

  it('on a full store, keeps "applied, answer lost" for a committed answer, or releases the key for one that committed nothing', async () => {
    const full = new RedundantProxyError(codes.STORE_FULL, 'full', { status: 503 });
    for (const committed of [true, false]) {
      const answers: unknown[] = [];
      const { inner, store } = storeWith({
        completeIdempotent: (...args: Parameters<SessionStore['completeIdempotent']>) => {
          answers.push(args[2]);
          // Refuses the first answer (too large for what is left), takes the next.
          return answers.length === 1 ? Promise.reject(full) : inner.completeIdempotent(...args);
        },
      });
      const { begin, idem, storeErrors } = setup({ wait: 0 }, store);
      const attempt = started((await begin('k')).result);
      await idem.completeWon(attempt, captured(200, 'y'.repeat(60)), committed);
      expect(attempt.done).toBe(true);
      expect(storeErrors).toEqual([]);
      expect(answers).toHaveLength(2);
      expect(answers[0]).toMatchObject({ status: 200 });
      const { result, res } = await begin('k');
      if (committed) expect(json(res)).toMatchObject({ code: codes.ANSWER_LOST });
      else expect(result).toMatchObject({ requestId: 'req-1', attempt: 2 });
    }
  });

  it('a completion that fails otherwise than "full" is not tried again at once with "applied, answer lost": the next try keeps the real answer', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    // Ours, but not STORE_FULL; and an error not of this library that carries the code (a foreign adapter's): neither says the store is full.
    const failures = [
      new RedundantProxyError(codes.STORE_UNAVAILABLE, 'down', { status: 503 }),
      Object.assign(new Error('full, says an adapter'), { code: codes.STORE_FULL }),
    ];
    for (const failure of failures) {
      const answers: unknown[] = [];
      const { inner, store } = storeWith({
        completeIdempotent: (...args: Parameters<SessionStore['completeIdempotent']>) => {
          answers.push(args[2]);
          return answers.length === 1 ? Promise.reject(failure) : inner.completeIdempotent(...args);
        },
      });
      const { begin, idem, storeErrors } = setup({ wait: 0 }, store);
      const attempt = started((await begin('k')).result);
      await idem.completeWon(attempt, captured(201, 'created'), true);
      expect(answers).toHaveLength(1);
      expect(storeErrors).toEqual([failure]);
      expect(attempt.done).toBe(false);
      await jest.advanceTimersByTimeAsync(100);
      expect(answers).toHaveLength(2);
      expect(answers[1]).toMatchObject({ status: 201 });
      expect(attempt.done).toBe(true);
      const { res } = await begin('k');
      expect(res.answer).toMatchObject({ status: 201, body: 'created' });
    }
  });

  it('a completion the store refuses is reported once, the answer does not wait, and it is tried again after 100, 200, 400 ms until it lands', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    let failures = 3;
    const down = new Error('ECONNRESET');
    const { inner, store, calls } = storeWith({
      completeIdempotent: (...args: Parameters<SessionStore['completeIdempotent']>) => (failures-- > 0 ? Promise.reject(down) : inner.completeIdempotent(...args)),
    });
    const { begin, idem, storeErrors } = setup({ wait: 0 }, store);
    const attempt = started((await begin('k')).result);
    await idem.completeWon(attempt, captured(200, 'ok'), true);
    expect(attempt.done).toBe(false);
    expect(storeErrors).toEqual([down]);
    for (const [at, count] of [[99, 1], [100, 2], [299, 2], [300, 3], [699, 3], [700, 4]] as const) {
      await jest.advanceTimersByTimeAsync(at - (Date.now() - 1_000_000));
      expect([at, calls.completeIdempotent]).toEqual([at, count]);
    }
    expect(attempt.done).toBe(true);
    expect(storeErrors).toEqual([down]);
    expect((await begin('k')).res.answer).toMatchObject({ status: 200, body: 'ok' });
  });

  it('keeps trying, the pause doubling up to 2 s, only until the attempt\'s lock would have run out', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const { store, calls } = storeWith({ completeIdempotent: () => Promise.reject(new Error('ECONNRESET')) });
    const { begin, idem } = setup({ wait: 0, lockMs: 10_000 }, store);
    const attempt = started((await begin('k')).result);
    await idem.completeWon(attempt, captured(200, 'ok'), true);
    // Tries at 0, 100, 300, 700, 1500, 3100, 5100, 7100, 9100; the next would be past the lock (10 s).
    const tries = [0, 100, 300, 700, 1_500, 3_100, 5_100, 7_100, 9_100];
    for (const [n, at] of tries.entries()) {
      await jest.advanceTimersByTimeAsync(at - (Date.now() - 1_000_000));
      expect([at, calls.completeIdempotent]).toEqual([at, n + 1]);
    }
    await jest.advanceTimersByTimeAsync(60_000);
    expect(calls.completeIdempotent).toBe(tries.length);
    expect(attempt.done).toBe(false);
  });

  it('close() gives the tries up', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const { store, calls } = storeWith({ completeIdempotent: () => Promise.reject(new Error('ECONNRESET')) });
    const { begin, idem } = setup({ wait: 0 }, store);
    const attempt = started((await begin('k')).result);
    await idem.completeWon(attempt, captured(200, 'ok'), true);
    await jest.advanceTimersByTimeAsync(100);
    expect(calls.completeIdempotent).toBe(2);
    idem.close();
    await jest.advanceTimersByTimeAsync(60_000);
    expect(calls.completeIdempotent).toBe(2);
  });

  it('close() while a try is in flight: its failure schedules no other', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    let fail: (err: unknown) => void = () => undefined;
    let n = 0;
    const { store, calls } = storeWith({
      completeIdempotent: () => (++n === 1 ? Promise.reject(new Error('ECONNRESET')) : new Promise((_, reject) => (fail = reject))),
    });
    const { begin, idem } = setup({ wait: 0 }, store);
    const attempt = started((await begin('k')).result);
    await idem.completeWon(attempt, captured(200, 'ok'), true);
    await jest.advanceTimersByTimeAsync(100);
    expect(calls.completeIdempotent).toBe(2);
    idem.close();
    fail(new Error('ECONNRESET'));
    await jest.advanceTimersByTimeAsync(60_000);
    expect(calls.completeIdempotent).toBe(2);
  });

  it('a full store that refuses the small answer too: reported, not done', async () => {
    const full = new RedundantProxyError(codes.STORE_FULL, 'full', { status: 503 });
    const { store, calls } = storeWith({ completeIdempotent: () => Promise.reject(full) });
    const { begin, idem, storeErrors } = setup({ wait: 0 }, store);
    const attempt = started((await begin('k')).result);
    await idem.completeWon(attempt, captured(200, 'ok'), true);
    expect(calls.completeIdempotent).toBe(2);
    expect(storeErrors).toEqual([full]);
    expect(attempt.done).toBe(false);
  });

  it('a full store refusing "no answer" is not asked for a smaller one', async () => {
    const full = new RedundantProxyError(codes.STORE_FULL, 'full', { status: 503 });
    const { store, calls } = storeWith({ completeIdempotent: () => Promise.reject(full) });
    const { begin, idem, storeErrors } = setup({ wait: 0 }, store);
    const attempt = started((await begin('k')).result);
    await idem.completeWon(attempt, captured(500, 'oops'), false);
    expect(calls.completeIdempotent).toBe(1);
    expect(storeErrors).toEqual([full]);
  });
});

describe('Idempotency.completeAfter: a race that did not complete its key', () => {
  async function after(rep: RaceReport, prepare?: (store: MemorySessionStore, requestId: string) => Promise<void>, overrides: Parameters<typeof storeWith>[0] = {}) {
    const { inner, store, calls } = storeWith(overrides);
    const { begin, idem, storeErrors } = setup({ wait: 0 }, store);
    const attempt = started((await begin('k')).result);
    await prepare?.(inner, attempt.requestId);
    calls.getRequest = 0;
    await idem.completeAfter(attempt, rep);
    const next = await begin('k');
    return { attempt, next, calls, storeErrors };
  }

  it('does nothing after a won race (its key was completed before its last byte) or once done', async () => {
    const won = await after(report('won', true));
    expect(won.next.res.answer!.status).toBe(409);
    expect(won.calls.getRequest).toBe(0);

    const { begin, idem } = setup({ wait: 0 });
    const attempt = started((await begin('k')).result);
    attempt.done = true;
    await idem.completeAfter(attempt, report('failed', true));
    expect((await begin('k')).res.answer!.status).toBe(409);
  });

  it('keeps "applied, answer lost" when the adopted copy committed, or the answer was lost, without asking the store', async () => {
    for (const rep of [report('broken', true), report('answer-lost')]) {
      const { next, calls } = await after(rep);
      expect(next.res.answer!.status).toBe(502);
      expect(json(next.res)).toMatchObject({ code: codes.ANSWER_LOST, requestId: 'req-1' });
      expect(calls.getRequest).toBe(0);
    }
  });

  it('outcome unknown: releases the key without asking, so a retry resumes the request id and learns it', async () => {
    const { next, calls } = await after(report('outcome-unknown'));
    expect(calls.getRequest).toBe(0);
    expect(next.result).toMatchObject({ requestId: 'req-1', attempt: 2 });
  });

  it('otherwise asks the store: a copy committed → "applied, answer lost"', async () => {
    const { next, calls } = await after(report('client-closed'), async (store, rid) => {
      const grant = await store.claim(rid, `${rid}.1`, { leaseMs: 1_000 });
      await store.confirm(rid, `${rid}.1`, grant.fence);
    });
    expect(calls.getRequest).toBe(1);
    expect(json(next.res)).toMatchObject({ code: codes.ANSWER_LOST });
  });

  it('a copy holds the claim, or nothing was claimed, or the proxy sealed it: releases the key for a retry', async () => {
    const cases: Array<(store: MemorySessionStore, rid: string) => Promise<void>> = [
      async (store, rid) => void (await store.claim(rid, `${rid}.1`, { leaseMs: 1_000 })),
      async () => undefined,
      async (store, rid) => {
        const grant = await store.claim(rid, sealId(rid), { leaseMs: 1_000 });
        await store.confirm(rid, sealId(rid), grant.fence);
      },
    ];
    for (const prepare of cases) {
      const { next, calls } = await after(report('timeout'), prepare);
      expect(calls.getRequest).toBe(1);
      expect(next.result).toMatchObject({ requestId: 'req-1', attempt: 2 });
    }
  });

  it('the store cannot say: reported once, and asked again after 100 ms', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const down = new Error('ECONNRESET');
    let failures = 1;
    const { inner, store, calls } = storeWith({ getRequest: (id: string) => (failures-- > 0 ? Promise.reject(down) : inner.getRequest(id)) });
    const { begin, idem, storeErrors } = setup({ wait: 0 }, store);
    const attempt = started((await begin('k')).result);
    let done = false;
    const completing = idem.completeAfter(attempt, report('failed')).then(() => (done = true));
    await jest.advanceTimersByTimeAsync(99);
    expect(done).toBe(false);
    expect(storeErrors).toEqual([down]);
    expect((await begin('k')).res.answer!.status).toBe(409);
    await jest.advanceTimersByTimeAsync(1);
    await completing;
    expect(calls.getRequest).toBe(2);
    expect(attempt.done).toBe(true);
    expect((await begin('k')).result).toMatchObject({ requestId: 'req-1', attempt: 2 });
  });

  it('the store never says: the key stays held, and the tries end when the lock would have', async () => {
    jest.useFakeTimers({ now: 1_000_000 });
    const { store, calls } = storeWith({ getRequest: () => Promise.reject(new Error('ECONNRESET')) });
    const { begin, idem, storeErrors } = setup({ wait: 0, lockMs: 300 }, store);
    const attempt = started((await begin('k')).result);
    let done = false;
    const completing = idem.completeAfter(attempt, report('failed')).then(() => (done = true));
    await jest.advanceTimersByTimeAsync(299);
    expect(done).toBe(false);
    await jest.advanceTimersByTimeAsync(1);
    await completing;
    // Tried at 0, 100 and 300; the next (700) would be past the lock. Reported once.
    expect(calls.getRequest).toBe(3);
    expect(storeErrors).toHaveLength(1);
    expect(attempt.done).toBe(false);
  });
});

describe('Idempotency.sealedBefore: a retry resuming a request an earlier attempt sealed', () => {
  it('asks the store nothing for a new key; for a resumed one, true only when its request is sealed, and then releases the key again', async () => {
    const { inner, store, calls } = storeWith();
    const { begin, idem } = setup({ wait: 0 }, store);
    const first = started((await begin('k')).result);
    calls.getRequest = 0;
    await expect(idem.sealedBefore(first)).resolves.toBe(false);
    expect(calls.getRequest).toBe(0);
    // The first attempt ends without a final answer: a retry resumes its request id.
    await idem.completeAfter(first, report('timeout'));
    const resumed = started((await begin('k')).result);
    expect(resumed).toMatchObject({ requestId: first.requestId, attempt: 2 });
    await expect(idem.sealedBefore(resumed)).resolves.toBe(false); // not sealed: the race runs
    // Sealed (by the proxy, as when it adopted an answer that committed nothing).
    await idem.completeAfter(resumed, report('timeout'));
    const rid = first.requestId;
    const grant = await inner.claim(rid, sealId(rid), { leaseMs: 1_000 });
    await inner.confirm(rid, sealId(rid), grant.fence);
    const third = started((await begin('k')).result);
    await expect(idem.sealedBefore(third)).resolves.toBe(true);
    expect(third.done).toBe(true);
    // Released again: the next retry finds the same.
    const fourth = started((await begin('k')).result);
    expect(fourth).toMatchObject({ requestId: rid, attempt: 4 });
    await expect(idem.sealedBefore(fourth)).resolves.toBe(true);
  });
});
