import { afterAll, describe, expect, it } from '@jest/globals';
import { codes, isRedundantProxyError, MemorySessionStore, redundantProxy, redundantWorker, type InvalidOptionError, type ProxyOptions, type WorkerOptions } from '../../lib/index.js';
import { RedisSessionStore, type RedisSessionStoreOptions } from '../../lib/redis.js';
import { boolean, func, number, object, objectOrFalse, oneOf, optional, parseOptions, refine, secret, string, type Schema } from '../../lib/schema.js';

// The one option checker that the proxy, the worker and both stores use.

/** The error `fn` throws; fails when it throws none. */
function refusal(fn: () => unknown): InvalidOptionError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TypeError);
    expect(isRedundantProxyError(err)).toBe(true);
    expect(err).toMatchObject({ code: codes.INVALID_OPTION });
    return err as InvalidOptionError;
  }
  throw new Error('expected the options to be refused');
}

interface Sample {
  size: number;
  mode: 'fast' | 'safe';
  hook: () => string;
  name: string | undefined;
  limit: number;
  inner: { depth: number; strict: boolean };
  extra: { on: boolean } | false;
  key: string | Buffer | undefined;
}

const hook = () => 'default hook';
const SAMPLE: Schema<Sample> = {
  size: number({ integer: true, unit: 'bytes', min: 0, default: 64 }),
  mode: oneOf(['fast', 'safe'], 'fast'),
  hook: func(hook),
  name: optional(string('must be a short name', (s) => s.length <= 8)),
  limit: number({ integer: true, min: 1, max: { label: 'size', value: (r) => r.size as number }, default: (r) => r.size as number }),
  inner: object({ depth: number({ integer: true, min: 1, max: 5, default: 1 }), strict: boolean(false) }),
  extra: objectOrFalse({ on: boolean(true) }),
  key: secret(),
};

describe('parseOptions', () => {
  it('fills every default, computed ones from the options before them, and never calls a default function', () => {
    expect(parseOptions(SAMPLE, {})).toEqual({ size: 64, mode: 'fast', hook, name: undefined, limit: 64, inner: { depth: 1, strict: false }, extra: { on: true }, key: undefined });
    expect(parseOptions(SAMPLE, { size: 10, extra: false }).limit).toBe(10);
    expect(parseOptions(SAMPLE, { extra: false }).extra).toBe(false);
    expect(parseOptions(SAMPLE, {}).hook()).toBe('default hook');
  });

  it('refuses a non-object, naming it `options`', () => {
    for (const bad of [null, 5, 'x', [1]]) {
      const err = refusal(() => parseOptions(SAMPLE, bad));
      expect(err.option).toBe('options');
      expect(err.message).toMatch(/`options` must be an object/);
    }
  });

  it('refuses an unknown key, naming it and listing the known ones', () => {
    const err = refusal(() => parseOptions(SAMPLE, { sise: 5 }));
    expect(err.option).toBe('sise');
    expect(err.message).toContain('`sise` is not an option (known: size, mode, hook, name, limit, inner, extra, key); got 5');
  });

  it('refuses a value of the wrong type, saying what it must be and what it got', () => {
    expect(refusal(() => parseOptions(SAMPLE, { size: '64' })).message).toBe('redundant-proxy: option `size` must be an integer number of bytes >= 0; got "64"');
    expect(refusal(() => parseOptions(SAMPLE, { hook: 'x' })).message).toMatch(/`hook` must be a function; got "x"/);
    expect(refusal(() => parseOptions(SAMPLE, { mode: 'slow' })).message).toMatch(/`mode` must be 'fast' or 'safe'; got "slow"/);
    expect(refusal(() => parseOptions(SAMPLE, { name: 'much too long' })).option).toBe('name');
    expect(refusal(() => parseOptions(SAMPLE, { size: Number.NaN })).option).toBe('size');
    expect(refusal(() => parseOptions(SAMPLE, { size: 1.5 })).option).toBe('size');
  });

  it('refuses a value out of range, with bounds that are other options shown with their value', () => {
    expect(refusal(() => parseOptions(SAMPLE, { size: -1 })).message).toMatch(/`size` must be an integer number of bytes >= 0; got -1/);
    expect(refusal(() => parseOptions(SAMPLE, { size: 10, limit: 11 })).message).toMatch(/`limit` must be an integer from 1 to size \(10\); got 11/);
    expect(refusal(() => parseOptions(SAMPLE, { limit: 0 })).option).toBe('limit');
    expect(parseOptions(SAMPLE, { size: 10, limit: 10 }).limit).toBe(10);
    expect(parseOptions(SAMPLE, { size: 0, limit: undefined }).limit).toBe(0);
  });

  it('checks nested options against their own schema, by their dotted name', () => {
    expect(parseOptions(SAMPLE, { inner: { depth: 5 } }).inner).toEqual({ depth: 5, strict: false });
    expect(refusal(() => parseOptions(SAMPLE, { inner: { depth: 6 } })).message).toMatch(/`inner.depth` must be an integer from 1 to 5; got 6/);
    expect(refusal(() => parseOptions(SAMPLE, { inner: { deep: 1 } })).message).toMatch(/`inner.deep` is not an option \(known: depth, strict\)/);
    expect(refusal(() => parseOptions(SAMPLE, { inner: 3 })).message).toMatch(/`inner` must be \{ depth\?, strict\? \}; got 3/);
    expect(refusal(() => parseOptions(SAMPLE, { extra: true })).message).toMatch(/`extra` must be \{ on\? \} or false; got true/);
    expect(refusal(() => parseOptions(SAMPLE, { extra: { on: 1 } })).option).toBe('extra.on');
  });

  it('never shows a secret: only its kind and length', () => {
    const key = 'hunter2-short';
    const err = refusal(() => parseOptions(SAMPLE, { key }));
    expect(err.message).toBe('redundant-proxy: option `key` must be a string or Buffer of at least 16 characters/bytes; got a string of 13 characters (not shown)');
    const buffer = Buffer.from('0123456789');
    expect(refusal(() => parseOptions(SAMPLE, { key: buffer })).message).toMatch(/got a Buffer of 10 bytes \(not shown\)/);
    expect(parseOptions(SAMPLE, { key: 'a-long-enough-secret' }).key).toBe('a-long-enough-secret');
  });

  it('runs a check across options once the value itself is accepted', () => {
    const schema = { a: boolean(false), b: refine(oneOf(['x', 'y'], 'x'), 'needs a: true', (v, r) => v !== 'y' || r.a === true) };
    expect(parseOptions(schema, { a: true, b: 'y' })).toEqual({ a: true, b: 'y' });
    expect(refusal(() => parseOptions(schema, { b: 'y' })).message).toMatch(/`b` needs a: true; got "y"/);
  });

  it('refuses a value that is required and absent', () => {
    expect(refusal(() => parseOptions({ id: string('must be an id', () => true) }, {})).message).toMatch(/`id` must be an id; got undefined/);
  });
});

describe('every public factory checks its options through it', () => {
  const store = new MemorySessionStore();
  afterAll(() => store.close());

  it('redundantProxy, redundantWorker, MemorySessionStore and RedisSessionStore refuse an unknown key, listing the known ones', () => {
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], copys: 1 } as ProxyOptions)).message).toMatch(/`copys` is not an option \(known: upstreams, tls, http2, store, copies, hedge,/);
    expect(refusal(() => redundantWorker({ id: 'a', store, leese: 5 } as WorkerOptions)).message).toMatch(/`leese` is not an option \(known: id, store, secret, maxSkew, storeTimeout, lease, now\)/);
    expect(refusal(() => new MemorySessionStore({ maxAge: 5 } as never)).message).toMatch(/`maxAge` is not an option \(known: max, ttl, maxIdempotencyKeys, maxIdempotencyBytes, now\)/);
    expect(refusal(() => new RedisSessionStore({ client: undefined } as unknown as RedisSessionStoreOptions)).option).toBe('client');
  });

  it('RedisSessionStore refuses a ttl past ten years (its request log keeps the expiry second in a number Lua holds exactly) and a batch.maxDelay past 100 ms', () => {
    // Refused before the client is touched: a look-alike suffices.
    const client = { evalsha() {}, hgetall() {}, duplicate() {} } as unknown as RedisSessionStoreOptions['client'];
    const tenYears = 10 * 365 * 24 * 60 * 60_000;
    const err = refusal(() => new RedisSessionStore({ client, ttl: tenYears + 1 }));
    expect(err.option).toBe('ttl');
    expect(err.message).toMatch(/from 1 to 315360000000/);
    expect(refusal(() => new RedisSessionStore({ client, ttl: Number.MAX_SAFE_INTEGER })).option).toBe('ttl');
    expect(refusal(() => new RedisSessionStore({ client, batch: { maxDelay: 101 } })).option).toBe('batch.maxDelay');
  });

  it('redundantWorker names each bad option', () => {
    for (const [option, bad] of [
      ['options', null],
      ['id', { store }],
      ['id', { id: 'has space', store }],
      ['store', { id: 'a', store: {} }],
      ['secret', { id: 'a', store, secret: 'short' }],
      ['maxSkew', { id: 'a', store, maxSkew: 0 }],
      ['storeTimeout', { id: 'a', store, storeTimeout: Infinity }],
      ['lease', { id: 'a', store, lease: -1 }],
      ['now', { id: 'a', store, now: 5 }],
    ] as const) {
      expect(refusal(() => redundantWorker(bad as unknown as WorkerOptions)).option).toBe(option);
    }
    expect(typeof redundantWorker({ id: 'a', store, secret: 'a-long-enough-secret', maxSkew: 1, storeTimeout: 1, lease: 1, now: () => 0 })).toBe('function');
  });

  it('redundantProxy checks nested options by their dotted names, and bounds against other options', () => {
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], idempotency: { ttl: 0 } })).option).toBe('idempotency.ttl');
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], idempotency: { wait: -1 } })).option).toBe('idempotency.wait');
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], idempotency: { scope: 'x' as never } })).option).toBe('idempotency.scope');
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], idempotency: { tll: 1 } as never })).message).toMatch(/known: scope, ttl, maxAnswerSize, wait/);
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], session: { sameSite: 'None' } })).message).toMatch(/`session.sameSite` 'None' needs secure: true/);
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], session: { header: 'x-redundant-session' } })).option).toBe('session.header');
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], session: { maxAge: 1.5 } })).option).toBe('session.maxAge');
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], session: 'on' as never })).option).toBe('session');
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], maxBodySize: 100, maxBufferedBytes: 99 })).message).toMatch(/`maxBufferedBytes` must be an integer number of bytes >= maxBodySize \(100\)/);
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], connections: 4, maxInFlight: 5 })).message).toMatch(/from 1 to connections \(4\)/);
    expect(refusal(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], bodyTimeout: 2 ** 31 })).option).toBe('bodyTimeout');
  });

  it('every delay that becomes a timer stops at 2^31 - 1 ms (Node fires a longer one at once: every request would time out, a hedge timer would spin)', () => {
    const up = { upstreams: ['http://127.0.0.1:1'] };
    const timers: Array<[string, ProxyOptions]> = [
      ['timeout', { ...up, timeout: 2 ** 31 }],
      ['storeTimeout', { ...up, storeTimeout: 2 ** 31 }],
      ['cancelTimeout', { ...up, cancelTimeout: 2 ** 31 }],
      ['hedge.delay', { ...up, hedge: { delay: 2 ** 31 } }],
      ['idempotency.wait', { ...up, idempotency: { wait: 2 ** 31 } }],
    ];
    for (const [name, options] of timers) {
      const err = refusal(() => redundantProxy(options));
      expect([name, err.option, err.message]).toEqual([name, name, expect.stringMatching(/2147483647/)]);
    }
    // The longest is taken.
    for (const [, options] of timers) {
      const longest = JSON.parse(JSON.stringify(options).replace('2147483648', '2147483647')) as ProxyOptions;
      void redundantProxy(longest).close();
    }
    expect(refusal(() => redundantWorker({ id: 'a', store: new MemorySessionStore(), storeTimeout: 2 ** 31 })).option).toBe('storeTimeout');
  });
});
