import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import http, { type IncomingMessage } from 'node:http';
import express from 'express';
import Koa from 'koa';
import getRawBody from 'raw-body';
import { MemorySessionStore, redundantProxy, redundantWorker, type ProxyErrorEvent, type RedundantHandle, type RedundantProxy, type RedundantWorker } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { mountGateway, type Gateway } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { listen, sleep, startUpstream, type Seen, type TestUpstream } from '../helpers/upstream.js';

// A signed copy is bound to its request: method, target and body. A copy
// captured on its way to a replica (here: by a plain server standing in for
// replica "a") and replayed to the real replica "a" with another method,
// target or body must never reach the handler whole, nor commit.

const SECRET = 'bound-copies-secret-0123456789';
const client = testClient();
afterAll(() => client.close());

type Kind = 'koa' | 'express';

/** What the victim's handler saw of one request. */
interface Run {
  path: string;
  method: string;
  /** The body as the handler read it in full; undefined when reading it failed. */
  body?: string;
  readError?: unknown;
  commitError?: unknown;
}

interface Victim {
  url: string;
  worker: RedundantWorker;
  runs: Run[];
  /** Request ids committed through commitOnce. */
  commits: string[];
  refusals: Array<{ code: string; reason: string }>;
  /** Called by `/ignore` handlers just before they claim, and `/session` ones before they answer, without reading the body. */
  claiming: Array<() => void>;
  /** Duplicate ids whose session candidate the worker saved. */
  candidates: string[];
  /** Each runs (and is awaited) at the start of one recordCopy, in order. */
  recordHooks: Array<() => Promise<void>>;
  /** Errors that reached the application's own error handling past the worker. */
  leaked: unknown[];
  close(): Promise<void>;
}

/**
 * Replica "a" in Koa or Express, its routes under `/api`, mounted (Express: a
 * sub-app; Koa: as koa-mount does it), which rewrites req.url. Handlers:
 * - `/api/skip…`: answers without reading the body or committing;
 * - `/api/session…`: changes the session, answers, reads nothing, commits nothing;
 * - `/api/iter…`: reads the body with `for await`, then commits;
 * - `/api/ignore…`: never reads the body, commits at once;
 * - `/api/json…` (Express): `express.json()`, then commits;
 * - anything else: reads the raw body (Koa: raw-body; Express: `express.raw()`), then commits.
 * Reads commit too, to see whether a claim would be granted.
 * `awaitFirst` puts a middleware that waits before the worker runs, so the
 * body is already in the request stream when the worker sees it.
 */
async function startVictim(kind: Kind, awaitFirst = false): Promise<Victim> {
  const store = new MemorySessionStore();
  const candidates: string[] = [];
  const leaked: unknown[] = [];
  const save = store.saveCandidate.bind(store);
  store.saveCandidate = (sessionId, requestId, duplicateId, data) => {
    candidates.push(duplicateId);
    return save(sessionId, requestId, duplicateId, data);
  };
  const recordHooks: Array<() => Promise<void>> = [];
  const record = store.recordCopy.bind(store);
  store.recordCopy = async (input) => {
    await recordHooks.shift()?.();
    return record(input);
  };
  const worker = redundantWorker({ id: 'a', store, secret: SECRET });
  const runs: Run[] = [];
  const commits: string[] = [];
  const refusals: Victim['refusals'] = [];
  const claiming: Victim['claiming'] = [];
  worker.on('refused', (e) => refusals.push(e));

  async function commit(h: RedundantHandle, run: Run): Promise<void> {
    try {
      await h.commitOnce(() => {
        commits.push(h.requestId);
      });
    } catch (err) {
      run.commitError = err;
      throw err;
    }
  }
  async function iterate(req: IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString();
  }

  let listener: http.RequestListener;
  if (kind === 'koa') {
    const app = new Koa();
    app.silent = true;
    app.on('error', (err: unknown) => leaked.push(err));
    if (awaitFirst) app.use(async (_ctx, next) => {
      await sleep(50);
      await next();
    });
    // Mounted under /api as koa-mount does it: it rewrites ctx.path, and with it ctx.req.url.
    app.use(async (ctx, next) => {
      if (!ctx.path.startsWith('/api/')) return;
      ctx.path = ctx.path.slice('/api'.length);
      await next();
    });
    app.use(worker);
    app.use(async (ctx) => {
      const h = ctx.state.redundant as RedundantHandle;
      const run: Run = { path: ctx.originalUrl, method: ctx.method };
      runs.push(run);
      if (ctx.path.startsWith('/skip')) {
        ctx.body = { skipped: true };
        return;
      }
      if (ctx.path.startsWith('/session')) {
        h.session.data.visited = true;
        for (const f of claiming.splice(0)) f();
        ctx.body = { visited: true };
        return;
      }
      if (ctx.path.startsWith('/ignore')) {
        for (const f of claiming.splice(0)) f();
      } else {
        try {
          run.body = ctx.path.startsWith('/iter') ? await iterate(ctx.req) : (await getRawBody(ctx.req)).toString();
        } catch (err) {
          run.readError = err;
          throw err;
        }
      }
      await commit(h, run);
      ctx.body = { body: run.body ?? null };
    });
    const server = await listen(app.callback());
    return { url: server.url, worker, runs, commits, refusals, claiming, candidates, recordHooks, leaked, close: async () => (await server.close(), await store.close()) };
  }
  const api = express.Router();
  const handle = (read: (req: express.Request) => Promise<string | undefined>) => async (req: express.Request, res: express.Response, next: express.NextFunction) => {
    const h = (req as unknown as { redundant: RedundantHandle }).redundant;
    const run: Run = { path: req.originalUrl, method: req.method };
    runs.push(run);
    try {
      try {
        run.body = await read(req);
      } catch (err) {
        run.readError = err;
        throw err;
      }
      await commit(h, run);
      res.json({ body: run.body ?? null });
    } catch (err) {
      next(err);
    }
  };
  // A body parser that fails never calls the handler: record that it ran and failed.
  const parsed = (parser: express.RequestHandler): express.RequestHandler => (req, res, next) =>
    parser(req, res, (err?: unknown) => {
      if (err) runs.push({ path: req.originalUrl, method: req.method, readError: err });
      next(err);
    });
  api.use('/json', parsed(express.json()), handle(async (req) => JSON.stringify(req.body)));
  api.use('/iter', handle((req) => iterate(req)));
  api.use('/skip', (_req, res) => void res.json({ skipped: true }));
  api.use('/session', (req, res) => {
    (req as unknown as { redundant: RedundantHandle }).redundant.session.data.visited = true;
    for (const f of claiming.splice(0)) f();
    res.json({ visited: true });
  });
  api.use(
    '/ignore',
    handle(async () => {
      for (const f of claiming.splice(0)) f();
      return undefined;
    }),
  );
  api.use(parsed(express.raw({ type: () => true })), handle(async (req) => (Buffer.isBuffer(req.body) ? req.body.toString() : '')));
  const sub = express();
  // The worker inside a mounted sub-app: it sees req.url rewritten to `/…`, and must check `/api/…`.
  sub.use(worker);
  sub.use(api);
  sub.use(worker.errorHandler);
  const app = express();
  if (awaitFirst) app.use((_req, _res, next) => void sleep(50).then(() => next()));
  app.use('/api', sub);
  app.use((err: unknown, _req: express.Request, _res: express.Response, next: express.NextFunction) => {
    leaked.push(err);
    next(err);
  });
  const server = await listen(app);
  return { url: server.url, worker, runs, commits, refusals, claiming, candidates, recordHooks, leaked, close: async () => (await server.close(), await store.close()) };
}

/** A plain server standing in for replica "a": whatever the proxy sends it is captured. */
async function startCapture(): Promise<TestUpstream> {
  return startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'x-redundant-worker': '1' });
    res.end('{}');
  });
}

interface Reply {
  status?: number;
  json?: Record<string, unknown>;
  /** The connection failed (the worker destroys a copy whose body does not match). */
  error?: Error;
}

/** Sends one request with exactly these headers; `body` may come later: then it is sent once `later` resolves. */
function send(url: string, method: string, headers: http.OutgoingHttpHeaders, body: string, later?: Promise<unknown>): Promise<Reply> {
  return new Promise((resolve) => {
    const req = http.request(url, { method, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (error) => resolve({ status: res.statusCode, error }));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode, json: text ? (JSON.parse(text) as Record<string, unknown>) : undefined });
      });
    });
    req.on('error', (error) => resolve({ error }));
    if (later) {
      req.flushHeaders();
      void later.then(() => req.end(body));
    } else req.end(body);
  });
}

/** The headers of a captured copy, to replay (its `x-redundant-*` ones, and its content type). */
function replayable(seen: Seen): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(seen.headers)) if (k.startsWith('x-redundant-') || k === 'content-type') out[k] = v;
  return out;
}

describe.each(['koa', 'express'] as const)('copies bound to their request (%s worker)', (kind) => {
  let victim: Victim;
  let capture: TestUpstream;
  let captureStore: MemorySessionStore;
  let captureProxy: RedundantProxy;
  let captureGw: Gateway;
  let proxy: RedundantProxy;
  let gw: Gateway;
  let bigProxy: RedundantProxy;
  let bigGw: Gateway;

  beforeAll(async () => {
    victim = await startVictim(kind);
    capture = await startCapture();
    // Its own store: the captured requests must be unknown to the victim's store.
    captureStore = new MemorySessionStore();
    captureProxy = redundantProxy({ upstreams: [{ id: 'a', url: `${capture.url}/api` }], store: captureStore, secret: SECRET });
    captureGw = await mountGateway('node', captureProxy);
    proxy = redundantProxy({ upstreams: [{ id: 'a', url: `${victim.url}/api` }], store: new MemorySessionStore(), secret: SECRET });
    gw = await mountGateway('node', proxy);
    bigProxy = redundantProxy({ upstreams: [{ id: 'a', url: `${victim.url}/api` }], store: new MemorySessionStore(), secret: SECRET, maxBodySize: 8_000_000 });
    bigGw = await mountGateway('node', bigProxy);
  });
  afterAll(async () => {
    await bigGw.close();
    await bigProxy.close();
    await gw.close();
    await proxy.close();
    await captureGw.close();
    await captureProxy.close();
    await captureStore.close();
    await capture.close();
    await victim.close();
  });

  /** What the proxy sends replica "a" for this request, captured on its way. */
  async function capture1(method: string, path: string, body?: string): Promise<Seen> {
    const before = capture.seen.length;
    const res = await client.send(`${captureGw.url}${path}`, { method, body, headers: body === undefined ? {} : { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect(capture.seen.length).toBe(before + 1);
    const seen = capture.seen[before]!;
    expect(seen.url).toBe(`/api${path}`);
    return seen;
  }

  /** Replays a captured copy to the victim; expects the handler never to run. */
  async function refusedBeforeHandler(method: string, target: string, headers: http.OutgoingHttpHeaders, body: string) {
    const runs = victim.runs.length;
    const commits = victim.commits.length;
    const res = await send(`${victim.url}${target}`, method, headers, body);
    expect(res.status).toBe(401);
    expect(res.json).toMatchObject({ code: 'RP_ERR_BAD_SIGNATURE', message: expect.stringContaining('does not match its signature') });
    expect(victim.runs.length).toBe(runs);
    expect(victim.commits.length).toBe(commits);
  }

  it('a replayed copy commits when it is the request signed (the control of the tests below)', async () => {
    const seen = await capture1('POST', '/transfer?x=1', '{"to":"bob","amount":10}');
    const res = await send(`${victim.url}/api/transfer?x=1`, 'POST', replayable(seen), '{"to":"bob","amount":10}');
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ body: '{"to":"bob","amount":10}' });
    expect(victim.commits).toContain(seen.headers['x-redundant-request-id']);
    // The body's hash travels with the copy; the method and target do not.
    expect(seen.headers['x-redundant-body-sha256']).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(Object.keys(seen.headers).filter((k) => /method|target|path/.test(k))).toEqual([]);
  });

  it('refuses a captured copy replayed with another method', async () => {
    const seen = await capture1('GET', '/harmless-read');
    await refusedBeforeHandler('POST', '/api/harmless-read', replayable(seen), '');
    const seen2 = await capture1('PUT', '/transfer', '{"a":1}');
    await refusedBeforeHandler('POST', '/api/transfer', replayable(seen2), '{"a":1}');
    const seen3 = await capture1('POST', '/transfer', '{"a":1}');
    await refusedBeforeHandler('PATCH', '/api/transfer', replayable(seen3), '{"a":1}');
  });

  it('refuses a captured copy replayed to another path or with another query', async () => {
    const seen = await capture1('GET', '/harmless-read?id=1');
    await refusedBeforeHandler('GET', '/api/transfer?id=1', replayable(seen), '');
    const seen2 = await capture1('GET', '/harmless-read?id=1');
    await refusedBeforeHandler('GET', '/api/harmless-read?id=2', replayable(seen2), '');
    const seen3 = await capture1('GET', '/harmless-read?id=1');
    await refusedBeforeHandler('GET', '/api/harmless-read', replayable(seen3), '');
    // The upstream's path prefix is part of the target.
    const seen4 = await capture1('GET', '/harmless-read');
    await refusedBeforeHandler('GET', '/api/api/harmless-read', replayable(seen4), '');
  });

  it.each([
    ['the same length', '{"to":"eve","amount":99}'],
    ['another length', '{"to":"eve","amount":1000000}'],
  ])('a copy replayed with another body of %s never reaches the handler whole, and never commits', async (_what, forged) => {
    for (const route of ['/transfer', '/iter', ...(kind === 'express' ? ['/json'] : [])]) {
      const seen = await capture1('POST', route, '{"to":"bob","amount":10}');
      const runs = victim.runs.length;
      const refusals = victim.refusals.length;
      const leaked = victim.leaked.length;
      const res = await send(`${victim.url}/api${route}`, 'POST', replayable(seen), forged);
      // The worker destroys the request: the copy gets no answer at all.
      expect(res.error).toBeDefined();
      const run = await eventually(() => victim.runs[runs]);
      await eventually(() => run.readError);
      expect(run.body).toBeUndefined();
      expect(run.commitError).toBeUndefined();
      expect(victim.commits).not.toContain(seen.headers['x-redundant-request-id']);
      expect(victim.refusals.slice(refusals)).toEqual([{ code: 'RP_ERR_BAD_SIGNATURE', reason: 'its body does not match its signature' }]);
      // The handler's read error is the worker's to drop (the connection is gone), not the application's to log.
      // (Koa reports the error its connection was closed with: the refusal itself.)
      await sleep(20);
      for (const err of victim.leaked.slice(leaked)) expect(err).toMatchObject({ code: 'RP_ERR_BAD_SIGNATURE' });
      if (kind === 'express') expect(victim.leaked.slice(leaked)).toEqual([]);
      // Nor can the body hash it carries be swapped for the forged body's: it is signed.
      const seen2 = await capture1('POST', route, '{"to":"bob","amount":10}');
      const hash = createHash('sha256').update(forged).digest('base64url');
      await refusedBeforeHandler('POST', `/api${route}`, { ...replayable(seen2), 'x-redundant-body-sha256': hash }, forged);
    }
  });

  it('a copy whose forged body ends while the worker records it never reaches its handler', async () => {
    const seen = await capture1('POST', '/transfer', '{"to":"bob","amount":10}');
    let recording!: () => void;
    const started = new Promise<void>((r) => (recording = r));
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    victim.recordHooks.push(() => (recording(), released));
    const runs = victim.runs.length;
    const refusals = victim.refusals.length;
    const reply = send(`${victim.url}/api/transfer`, 'POST', replayable(seen), '{"to":"eve","amount":99}', started);
    await eventually(() => victim.refusals.length > refusals);
    release();
    expect((await reply).error).toBeDefined();
    await sleep(50);
    expect(victim.runs.length).toBe(runs);
    expect(victim.commits).not.toContain(seen.headers['x-redundant-request-id']);
  });

  it('a handler that never reads the body cannot commit with a forged body: its claim waits for the body, then is refused', async () => {
    const seen = await capture1('POST', '/ignore', '{"to":"bob","amount":10}');
    const claiming = new Promise<void>((r) => victim.claiming.push(r));
    const runs = victim.runs.length;
    // The headers go first; the body only once the handler is claiming.
    const res = await send(`${victim.url}/api/ignore`, 'POST', replayable(seen), '{"to":"eve","amount":99}', claiming.then(() => sleep(50)));
    expect(res.error).toBeDefined();
    const run = await eventually(() => victim.runs[runs]?.commitError as { code?: string } | undefined);
    expect(run).toMatchObject({ code: 'RP_ERR_BAD_SIGNATURE', status: 401 });
    expect(victim.commits).not.toContain(seen.headers['x-redundant-request-id']);
  });

  it('a claim is refused when the body does not arrive in full in time (5 s)', async () => {
    const body = '{"to":"bob","amount":10}';
    const seen = await capture1('POST', '/ignore', body);
    const claiming = new Promise<void>((r) => victim.claiming.push(r));
    const runs = victim.runs.length;
    const req = http.request(`${victim.url}/api/ignore`, { method: 'POST', headers: { ...replayable(seen), 'content-length': String(body.length) }, agent: false });
    req.on('error', () => undefined);
    req.write(body.slice(0, 10));
    await claiming;
    const started = Date.now();
    const err = await eventually(() => victim.runs[runs]?.commitError as { code?: string; message?: string } | undefined, 8000);
    expect(Date.now() - started).toBeGreaterThan(4000);
    expect(err).toMatchObject({ code: 'RP_ERR_BAD_SIGNATURE', status: 401, message: expect.stringContaining('did not arrive in full') });
    expect(victim.commits).not.toContain(seen.headers['x-redundant-request-id']);
    req.destroy();
  }, 15_000);

  it('a read that never reads its body saves its session change only once the body matched', async () => {
    const seen = await capture1('GET', '/session');
    expect(seen.headers['x-redundant-session']).toBeDefined();
    const ok = await send(`${victim.url}/api/session`, 'GET', replayable(seen), '');
    expect(ok.status).toBe(200);
    expect(victim.candidates).toContain(seen.headers['x-redundant-duplicate-id']);
    // The same read, its body forged: sent once the handler has answered.
    const seen2 = await capture1('GET', '/session');
    const answered = new Promise<void>((r) => victim.claiming.push(r));
    const refusals = victim.refusals.length;
    const forged = await send(`${victim.url}/api/session`, 'GET', replayable(seen2), 'forged', answered.then(() => sleep(50)));
    expect(forged.error).toBeDefined();
    expect(victim.refusals.length).toBe(refusals + 1);
    expect(victim.candidates).not.toContain(seen2.headers['x-redundant-duplicate-id']);
  });

  it('a handler that never reads the body commits once the signed body arrived', async () => {
    const seen = await capture1('POST', '/ignore', '{"to":"bob","amount":10}');
    const claiming = new Promise<void>((r) => victim.claiming.push(r));
    const res = await send(`${victim.url}/api/ignore`, 'POST', replayable(seen), '{"to":"bob","amount":10}', claiming.then(() => sleep(50)));
    expect(res.status).toBe(200);
    expect(victim.commits).toContain(seen.headers['x-redundant-request-id']);
  });

  it('a legitimate POST with a body goes through the proxy and commits', async () => {
    for (const route of ['/transfer?x=1', '/iter', ...(kind === 'express' ? ['/json'] : [])]) {
      const before = victim.commits.length;
      const res = await client.send(`${gw.url}${route}`, { method: 'POST', body: '{"to":"bob","amount":10}', headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(200);
      expect(res.json()).toEqual({ body: '{"to":"bob","amount":10}' });
      expect(victim.commits.length).toBe(before + 1);
    }
    // A body larger than the request stream's buffer, in many chunks.
    const big = JSON.stringify({ blob: 'x'.repeat(60_000) });
    const res = await client.send(`${gw.url}/transfer`, { method: 'POST', body: big, headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect((res.json().body as string).length).toBe(big.length);
  });

  it('a body the handler leaves unread is no refusal, and its connection stays usable', async () => {
    // node:http discards an unread body once the answer is done: the worker does not see it all.
    const refusals = victim.refusals.length;
    const big = JSON.stringify({ blob: 'x'.repeat(3_000_000) });
    for (let i = 0; i < 3; i++) {
      const res = await client.send(`${bigGw.url}/skip`, { method: 'POST', body: big, headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(200);
    }
    await sleep(100);
    expect(victim.refusals.slice(refusals)).toEqual([]);
  });

  it('bodyless requests go through the proxy, reads and updates alike', async () => {
    for (const method of ['GET', 'DELETE', 'POST']) {
      const before = victim.commits.length;
      const res = await client.send(`${gw.url}/item?id=7`, { method });
      expect(res.status).toBe(200);
      expect(res.json()).toEqual({ body: '' });
      expect(victim.commits.length).toBe(before + 1);
    }
    const res = await client.send(`${gw.url}/ignore`, { method: 'POST' });
    expect(res.status).toBe(200);
  });
});

describe.each(['koa', 'express'] as const)('a %s worker behind a middleware that waits: the body is already in the stream', (kind) => {
  let victim: Victim;
  let capture: TestUpstream;
  let captureProxy: RedundantProxy;
  let captureGw: Gateway;
  let proxy: RedundantProxy;
  let gw: Gateway;
  const stores: MemorySessionStore[] = [];

  beforeAll(async () => {
    victim = await startVictim(kind, true);
    capture = await startCapture();
    stores.push(new MemorySessionStore(), new MemorySessionStore());
    captureProxy = redundantProxy({ upstreams: [{ id: 'a', url: `${capture.url}/api` }], store: stores[0]!, secret: SECRET });
    captureGw = await mountGateway('node', captureProxy);
    proxy = redundantProxy({ upstreams: [{ id: 'a', url: `${victim.url}/api` }], store: stores[1]!, secret: SECRET, maxBodySize: 8_000_000 });
    gw = await mountGateway('node', proxy);
  });
  afterAll(async () => {
    await gw.close();
    await proxy.close();
    await captureGw.close();
    await captureProxy.close();
    await capture.close();
    await victim.close();
    for (const s of stores) await s.close();
  });

  it('serves and commits the signed body, bodyless requests too', async () => {
    const before = victim.commits.length;
    const res = await client.send(`${gw.url}/transfer`, { method: 'POST', body: '{"to":"bob","amount":10}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ body: '{"to":"bob","amount":10}' });
    const big = JSON.stringify({ blob: 'x'.repeat(3_000_000) });
    const iter = await client.send(`${gw.url}/iter`, { method: 'POST', body: big, headers: { 'content-type': 'application/json' } });
    expect(iter.status).toBe(200);
    expect(iter.json()).toEqual({ body: big });
    const get = await client.send(`${gw.url}/item`);
    expect(get.status).toBe(200);
    const ignoring = await client.send(`${gw.url}/ignore`, { method: 'POST', body: '{"to":"bob","amount":10}', headers: { 'content-type': 'application/json' } });
    expect(ignoring.status).toBe(200);
    expect(victim.commits.length).toBe(before + 4);
  });

  it('a body the handler leaves unread does not stall the connection', async () => {
    // Larger than what arrives while the middleware waits: the worker takes out part of it, and must see it drained.
    const big = JSON.stringify({ blob: 'x'.repeat(3_000_000) });
    for (let i = 0; i < 3; i++) {
      const res = await client.send(`${gw.url}/skip`, { method: 'POST', body: big, headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(200);
      expect(res.json()).toEqual({ skipped: true });
    }
  });

  it('refuses another body, never running the handler', async () => {
    for (const route of ['/transfer', '/ignore']) {
      const res0 = await client.send(`${captureGw.url}${route}`, { method: 'POST', body: '{"to":"bob","amount":10}', headers: { 'content-type': 'application/json' } });
      expect(res0.status).toBe(200);
      const seen = capture.seen[capture.seen.length - 1]!;
      const runs = victim.runs.length;
      const refusals = victim.refusals.length;
      const res = await send(`${victim.url}/api${route}`, 'POST', replayable(seen), '{"to":"eve","amount":99}');
      expect(res.error ?? res.status).not.toBe(200);
      await eventually(() => victim.refusals.length > refusals);
      await sleep(20);
      expect(victim.runs.length).toBe(runs);
      expect(victim.commits).not.toContain(seen.headers['x-redundant-request-id']);
    }
  });
});

describe('a worker mounted after a body parser', () => {
  it('refuses a signed copy whose body was read before it could check it, and serves bodyless ones', async () => {
    const store = new MemorySessionStore();
    const worker = redundantWorker({ id: 'a', store, secret: SECRET });
    const refusals: Array<{ code: string; reason: string }> = [];
    worker.on('refused', (e) => refusals.push(e));
    let ran = 0;
    const app = express();
    app.use(express.json());
    app.use(worker);
    app.use((_req, res) => {
      ran++;
      res.json({ ok: true });
    });
    app.use(worker.errorHandler);
    const server = await listen(app);
    const proxyStore = new MemorySessionStore();
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: server.url }], store: proxyStore, secret: SECRET });
    const said: ProxyErrorEvent[] = [];
    proxy.on('error', (e) => said.push(e));
    const gw = await mountGateway('node', proxy);
    try {
      const res = await client.send(`${gw.url}/transfer`, { method: 'POST', body: '{"to":"bob"}', headers: { 'content-type': 'application/json' } });
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(refusals).toEqual([{ code: 'RP_ERR_BODY_CONSUMED', reason: expect.stringContaining('read before the worker') }]);
      // The proxy names the cause, not a secret or an id.
      expect(said).toEqual([expect.objectContaining({ source: 'upstream', error: expect.objectContaining({ code: 'RP_ERR_BODY_CONSUMED', message: expect.stringMatching(/mounted after a body parser/) }) })]);
      expect((said[0]!.error as Error).message).not.toMatch(/secret/);
      expect(ran).toBe(0);
      const get = await client.send(`${gw.url}/item`);
      expect(get.status).toBe(200);
      expect(ran).toBe(1);
    } finally {
      await gw.close();
      await proxy.close();
      await proxyStore.close();
      await server.close();
      await store.close();
    }
  });
});
