import { once } from 'node:events';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Emitter } from '../../lib/events.js';
import { detectFramework, isServerResponse } from '../../lib/framework.js';
import { writeJsonAnswer } from '../../lib/json-error.js';
import { MemorySessionStore, redundantProxy, redundantWorker } from '../../lib/index.js';
import { reportError, warnOnce } from '../../lib/warn.js';

// The helpers that the proxy and the worker share: which framework called a
// middleware, the JSON error answer, and the warning said once.

describe('detectFramework', () => {
  const res = { writeHead() {} };

  it('takes a second argument with writeHead for Express / node:http, with its next when there is one', () => {
    const next = () => undefined;
    expect(detectFramework({}, res, next)).toMatchObject({ kind: 'node', res, next });
    expect(detectFramework({}, res, undefined)).toMatchObject({ kind: 'node', next: undefined });
    expect(isServerResponse(res)).toBe(true);
    expect(isServerResponse(() => undefined)).toBe(false);
  });

  it('takes a context with req and res for Koa, with its next', () => {
    const ctx = { req: {}, res: {} };
    const next = async () => undefined;
    expect(detectFramework(ctx, next, undefined)).toEqual({ kind: 'koa', ctx, next });
  });

  it('refuses anything else with a TypeError that says how to call it', () => {
    expect(() => detectFramework(undefined, undefined, undefined, ', or use .handler(req, res)')).toThrow(
      new TypeError('redundant-proxy: call the middleware as Koa (ctx, next), Express (req, res, next), or use .handler(req, res)'),
    );
    expect(() => detectFramework({ req: {} }, () => undefined, undefined)).toThrow(TypeError);
  });

  it('is what the worker uses: a wrong call is a TypeError, not a crash inside', async () => {
    const store = new MemorySessionStore();
    const worker = redundantWorker({ id: 'a', store });
    expect(() => (worker as unknown as (a: unknown, b: unknown) => unknown)(null, null)).toThrow(/call the middleware as Koa/);
    await store.close();
  });
});

describe('writeJsonAnswer', () => {
  let server: Server;
  let url: string;
  beforeAll(async () => {
    server = createServer((req, res) => {
      const answer = () => writeJsonAnswer(res, { status: 409, body: { code: 'RP_ERR_SUPERSEDED', message: 'lost' }, headers: { 'x-redundant-commit': 'lost' } });
      if (req.url !== '/late') return answer();
      res.writeHead(200, { 'content-type': 'text/plain' });
      // Once the head and the first bytes are out.
      res.write('partial ', answer);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.close();
    await once(server, 'close');
  });

  /** The answer as the client saw it; `complete` is false when the connection broke before its end. */
  function get(path: string): Promise<{ status: number; headers: Record<string, unknown>; body: string; complete: boolean }> {
    return new Promise((resolve, reject) => {
      const req = request(`${url}${path}`, (res) => {
        let body = '';
        const done = () => resolve({ status: res.statusCode!, headers: res.headers, body, complete: res.complete });
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', done);
        res.on('error', done);
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('answers with the status, a JSON body with its code, its length and the extra headers', async () => {
    const res = await get('/');
    expect(res.complete).toBe(true);
    expect(res.status).toBe(409);
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(res.headers['content-length']).toBe(String(Buffer.byteLength(res.body)));
    expect(res.headers['x-redundant-commit']).toBe('lost');
    expect(JSON.parse(res.body)).toEqual({ code: 'RP_ERR_SUPERSEDED', message: 'lost' });
  });

  it('breaks a response whose head already left, instead of appending JSON to it', async () => {
    const res = await get('/late');
    expect(res.status).toBe(200);
    expect(res.complete).toBe(false);
    expect(res.body).toBe('partial ');
  });
});

describe('warnOnce and reportError', () => {
  afterEach(() => {
    jest.restoreAllMocks();
  });

  it('says the first warning and nothing after', () => {
    const said: unknown[][] = [];
    const warn = warnOnce((...args) => said.push(args));
    warn('first', 1);
    warn('second', 2);
    expect(said).toEqual([['first', 1]]);
  });

  it('warns on the console, looked up when it speaks (so a spy set later sees it)', () => {
    const warn = warnOnce();
    const spy = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    warn('hello', 'detail');
    warn('again');
    expect(spy.mock.calls).toEqual([['hello', 'detail']]);
  });

  it('reports to error listeners when there are any, else warns once that further failures are silent', () => {
    const events = new Emitter<{ error: { requestId: string; error: unknown } }>(['error']);
    const said: unknown[][] = [];
    const report = reportError(events, (e) => `thing ${e.requestId} failed`, (...args) => said.push(args));
    const boom = new Error('boom');
    report({ requestId: 'r1', error: boom });
    report({ requestId: 'r2', error: boom });
    expect(said).toEqual([["thing r1 failed (further failures are silent without an 'error' listener):", boom]]);
    const heard: string[] = [];
    const listening = events.on('error', (e) => heard.push(e.requestId));
    report({ requestId: 'r3', error: boom });
    expect(heard).toEqual(['r3']);
    expect(said).toHaveLength(1);
    listening.dispose();
  });

  it('refuses a listener for an event there is not (a misspelt name would never fire), on the proxy and the worker too', () => {
    const events = new Emitter<{ tick: number }>(['tick']);
    expect(() => events.on('tock' as 'tick', () => undefined)).toThrow(new TypeError('redundant-proxy: there is no event "tock"; the events are tick'));
    const proxy = redundantProxy({ upstreams: ['http://127.0.0.1:1'] });
    try {
      expect(() => proxy.on('race:ed' as 'race:end', () => undefined)).toThrow(/there is no event "race:ed"; the events are race:start, copy:sent, race:end/);
      expect(() => proxy.on('race:end', () => undefined)).not.toThrow();
    } finally {
      void proxy.close();
    }
    const store = new MemorySessionStore();
    try {
      const worker = redundantWorker({ id: 'a', store });
      expect(() => worker.on('late-confirm' as 'lateConfirm', () => undefined)).toThrow(/there is no event "late-confirm"; the events are error, refused, lateConfirm/);
    } finally {
      void store.close();
    }
  });

  it('is what the emitter uses for a listener that throws: said once per emitter', () => {
    const spy = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    const events = new Emitter<{ tick: number }>(['tick']);
    events.on('tick', () => {
      throw new Error('listener broke');
    });
    events.emit('tick', 1);
    events.emit('tick', 2);
    expect(spy).toHaveBeenCalledTimes(1);
    expect(String(spy.mock.calls[0]![0])).toMatch(/a listener of "tick" threw \(reported once\)/);
  });
});
