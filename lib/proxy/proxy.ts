import { randomBytes, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Pool, type Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../errors.js';
import { withTimeout } from '../timeout.js';
import { H, SESSION_ID } from '../wire/protocol.js';
import { Emitter, type Disposable } from '../events.js';
import { readBody, type ParsedBodyHints } from './body.js';
import { forwardRequestHeaders } from './headers.js';
import { AdaptiveDelay, HedgeBudget } from './hedge.js';
import { Metrics, type ProxyMetrics } from './metrics.js';
import { resolveOptions, type ProxyOptions, type Upstream } from './options.js';
import { Race, type CopyReport, type RaceReport } from './race.js';
import { sendError } from './respond.js';

export interface RaceStartEvent {
  requestId: string;
  method: string;
  path: string;
  update: boolean;
  /** Upstream ids in the order copies will be sent. */
  upstreams: string[];
}

export interface CopySentEvent {
  requestId: string;
  copy: CopyReport;
}

export interface ProxyErrorEvent {
  requestId: string | null;
  /**
   * Where it happened: `accept` (the option threw), `store` (bookkeeping
   * failed or was too slow; the answer went out anyway), `internal`.
   */
  source: 'accept' | 'store' | 'internal';
  error: unknown;
}

/** Events of `.on(name, listener)`. */
export interface ProxyEvents {
  /** A request passed its checks and its copies are about to leave. */
  'race:start': RaceStartEvent;
  /** One copy left for its upstream. */
  'copy:sent': CopySentEvent;
  /** A race ended: every copy's upstream, timing and outcome. */
  'race:end': RaceReport;
  /** Something failed that did not fail the request. Never thrown. */
  error: ProxyErrorEvent;
}

/** Koa middleware, Express middleware, and a bare `node:http` handler in one. */
export interface RedundantProxy {
  /** Koa: `app.use(proxy)`. The proxy answers; it does not call `next`. */
  (ctx: KoaLikeContext, next?: () => Promise<unknown>): Promise<void>;
  /** Express / Connect: `app.use(proxy)` or `app.get(path, proxy)`. */
  (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void): Promise<void>;
  /** `http.createServer(proxy.handler)`. */
  handler(req: IncomingMessage, res: ServerResponse): Promise<void>;
  on<K extends keyof ProxyEvents>(name: K, listener: (event: ProxyEvents[K]) => void): Disposable;
  metrics(): ProxyMetrics;
  /** Refuses new requests (503), waits for the ones in flight, then closes the upstream connection pools. */
  close(): Promise<void>;
}

/** The part of a Koa context the proxy uses. */
export interface KoaLikeContext {
  req: IncomingMessage;
  res: ServerResponse;
  respond?: boolean;
  /** koa-bodyparser keeps the raw body in `ctx.request.rawBody`. */
  request: object;
}

/**
 * Creates the racing proxy. Every option is checked here; a bad one throws an
 * `InvalidOptionError` naming it.
 *
 * @example
 * app.use(redundantProxy({ upstreams: ['http://127.0.0.1:3001', 'http://127.0.0.1:3002'] }));
 */
export function redundantProxy(options: ProxyOptions): RedundantProxy {
  const opts = resolveOptions(options);
  const events = new Emitter<ProxyEvents>();
  const metrics = new Metrics(opts.upstreams.map((u) => u.id));
  const adaptive = opts.hedgeDelay === 'adaptive' ? new AdaptiveDelay() : null;
  const budget = new HedgeBudget(opts.maxExtraLoad);
  const dispatchers = new Map<string, Dispatcher>();
  for (const u of opts.upstreams) {
    dispatchers.set(u.id, new Pool(u.origin, { connections: opts.connections, keepAliveTimeout: 10_000, pipelining: 1 }));
  }
  const inFlight = new Set<Promise<RaceReport>>();
  let closed = false;
  let warnedStore = false;
  let rotation = 0;

  const mayHedge = () => budget.take();
  const onAcceptThrew = (error: unknown) => events.emit('error', { requestId: null, source: 'accept', error });

  function plan(update: boolean): Upstream[] {
    const all = opts.upstreams;
    // Until exactly-once commits exist, an update must reach one upstream only.
    const n = update ? 1 : opts.copies;
    const start = rotation++ % all.length;
    if (n === all.length && start === 0) return all;
    const out: Upstream[] = [];
    for (let i = 0; i < n; i++) out.push(all[(start + i) % all.length]!);
    return out;
  }

  async function handle(req: IncomingMessage, res: ServerResponse, hints: ParsedBodyHints): Promise<void> {
    const requestId = randomUUID();
    if (closed) {
      sendError(res, new RedundantProxyError(codes.CLOSED, 'the proxy is closing', { status: 503 }), requestId);
      return;
    }
    let body: Buffer | null;
    try {
      body = await readBody(req, opts.maxBodySize, hints);
    } catch (err) {
      const e = err instanceof RedundantProxyError ? err : toInternal(err);
      // The rest of an oversized body is not read: close the connection after answering.
      sendError(res, e, requestId, e.code === codes.BODY_TOO_LARGE || e.code === codes.BODY_READ ? { connection: 'close' } : undefined);
      return;
    }
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const update = opts.isUpdate(req);
    const targets = plan(update);
    budget.deposit();
    const route = adaptive ? `${method} ${path.split('?', 1)[0]}` : '';
    const session = findSession(req);
    // claim 1 (e), read-your-writes: when the adopted copy changed the
    // session, record the adoption (promoting its candidate) before the
    // answer goes out, so the client's next request sees the new state.
    let recorded = false;
    const adoption = (duplicateId: string, upstreamId: string) => ({
      requestId,
      sessionId: session.id,
      update,
      duplicateIds: [duplicateId],
      upstreamIds: [upstreamId],
    });
    const beforeHead = (copy: CopyReport, headers: Record<string, string | string[] | undefined>) => {
      if (!session.id || headers[H.sessionChanged] !== '1') return undefined;
      recorded = true;
      const extra = session.isNew ? sessionHeaders(req, session.id) : {};
      return bookkeep(opts.store.recordAdoption(adoption(copy.duplicateId, copy.upstream)), requestId).then(() => extra);
    };
    const race = new Race({
      requestId,
      method,
      path,
      update,
      sessionId: session.id,
      sessionNew: session.isNew,
      headers: forwardRequestHeaders(req, requestId),
      body,
      targets,
      dispatchers,
      hedgeDelay: adaptive ? adaptive.delay(route) : (opts.hedgeDelay as number),
      mayHedge,
      timeout: opts.timeout,
      accept: opts.accept,
      secret: opts.secret,
      now: opts.now,
      wallClock: Date.now,
      res,
      onCopySent: events.has('copy:sent') ? (copy) => events.emit('copy:sent', { requestId, copy }) : undefined,
      onAcceptThrew,
      beforeHead: opts.session ? beforeHead : undefined,
    });
    if (events.has('race:start')) events.emit('race:start', { requestId, method, path, update, upstreams: targets.map((t) => t.id) });
    const done = race.start();
    inFlight.add(done);
    const report = await done;
    inFlight.delete(done);
    // claim 1 (e), off the critical path: which copy's answer was adopted.
    if (report.adopted && !recorded) void bookkeep(opts.store.recordAdoption(adoption(report.adopted, report.servedBy!)), requestId);
    metrics.record(report);
    if (adaptive) for (const c of report.copies) if (c.latency !== null) adaptive.record(route, c.latency);
    events.emit('race:end', report);
  }

  /** Runs a store operation with a bound; a failure becomes an `error` event, never a failed request. */
  function bookkeep(operation: Promise<unknown>, requestId: string): Promise<void> {
    return withTimeout(operation, opts.storeTimeout, 'recordAdoption').then(
      () => undefined,
      (error: unknown) => {
        if (events.has('error')) events.emit('error', { requestId, source: 'store', error });
        else if (!warnedStore) {
          warnedStore = true;
          console.warn("redundant-proxy: session store bookkeeping failed (further failures are silent without an 'error' listener):", error);
        }
      },
    );
  }

  function findSession(req: IncomingMessage): { id: string; isNew: boolean } {
    const cfg = opts.session;
    if (!cfg) return { id: '', isNew: false };
    let id: string | undefined;
    if (cfg.header) id = firstHeader(req.headers[cfg.header]);
    if (id === undefined && cfg.cookie) id = readCookie(req.headers.cookie, cfg.cookie);
    if (id !== undefined && SESSION_ID.test(id)) return { id, isNew: false };
    return { id: randomBytes(18).toString('base64url'), isNew: true };
  }

  function sessionHeaders(req: IncomingMessage, id: string): Record<string, string> {
    const cfg = opts.session;
    if (!cfg) return {};
    if (cfg.header) return { [cfg.header]: id };
    const secure = (req.socket as { encrypted?: boolean } | undefined)?.encrypted || firstHeader(req.headers['x-forwarded-proto']) === 'https';
    return { 'set-cookie': `${cfg.cookie}=${id}; Path=/; HttpOnly; SameSite=Lax${secure ? '; Secure' : ''}` };
  }

  function toInternal(err: unknown): RedundantProxyError {
    events.emit('error', { requestId: null, source: 'internal', error: err });
    return new RedundantProxyError(codes.INTERNAL, 'internal error in redundant-proxy', { status: 500, cause: err });
  }

  function safe(req: IncomingMessage, res: ServerResponse, hints: ParsedBodyHints): Promise<void> {
    return handle(req, res, hints).catch((err) => sendError(res, toInternal(err), null));
  }

  const proxy = function redundantProxyMiddleware(a: IncomingMessage | KoaLikeContext, b?: unknown): Promise<void> {
    if (b !== null && typeof b === 'object' && typeof (b as ServerResponse).writeHead === 'function') {
      // Express / Connect: (req, res, next). The proxy answers and never calls next.
      const req = a as IncomingMessage & ParsedBodyHints;
      return safe(req, b as ServerResponse, req);
    }
    const ctx = a as KoaLikeContext;
    if (!ctx || typeof ctx !== 'object' || !ctx.req || !ctx.res) {
      throw new TypeError('redundant-proxy: call the middleware as Koa (ctx, next), Express (req, res, next), or use .handler(req, res)');
    }
    // The proxy writes the response itself, streaming the winner's body.
    ctx.respond = false;
    return safe(ctx.req, ctx.res, (ctx.request ?? {}) as ParsedBodyHints);
  } as RedundantProxy;

  proxy.handler = (req, res) => safe(req, res, req as ParsedBodyHints);
  proxy.on = (name, listener) => events.on(name, listener);
  proxy.metrics = () => metrics.snapshot();
  proxy.close = async () => {
    if (closed) return;
    closed = true;
    await Promise.allSettled(inFlight);
    await Promise.all([...dispatchers.values()].map((d) => d.close()));
    if (opts.ownsStore) await opts.store.close();
    events.clear();
  };
  return proxy;
}

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
