import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import { codes, InvalidOptionError, RedundantProxyError, type ErrorCode } from '../errors.js';
import type { RecordAdoptionInput } from '../store/types.js';
import { Emitter, type Disposable } from '../events.js';
import { detectFramework } from '../framework.js';
import { realScheduler, REAL_TIME, schedulerOf } from '../time.js';
import { FLAG_OFF, FLAG_ON, H } from '../wire/protocol.js';
import { ClientSessions, requestTarget, type ClientSession } from './admit.js';
import { BodyBudget, decodedByParser, readBody, type BodyShare, type ParsedBodyHints } from './body.js';
import { Bookkeeping } from './bookkeeping.js';
import { Ejector } from './ejection.js';
import { dropHeader, forwardRequestHeaders } from './headers.js';
import { startHealthChecks } from './health-checks.js';
import { AdaptiveDelay, HedgeBudget, hedgeQuantile } from './hedge.js';
import { Idempotency, type KeyedAttempt } from './idempotency.js';
import { Metrics, type ProxyMetrics } from './metrics.js';
import { publish, reportObservers, type RacePlan } from './observers.js';
import { resolveOptions, type ProxyOptions, type ResolvedOptions, type Upstream } from './options.js';
import { Planner } from './planner.js';
import { PrometheusMetrics } from './prometheus.js';
import { PROXY_EVENTS, type ProxyErrorEvent, type ProxyEvents } from './proxy-events.js';
import { warnOnce } from '../warn.js';
import { Race, type CopyReport, type RaceObserver, type RaceReport } from './race.js';
import { sendError } from './respond.js';
import { Upgrades } from './upgrades.js';
import { upstreamPool } from './tls.js';
import { RaceTrace } from './tracing.js';

export type { CopyCancelledEvent, CopySentEvent, ProxyErrorEvent, ProxyEvents, RaceStartEvent, UpgradeEvent, UpgradeEndEvent, UpstreamHealthEvent } from './proxy-events.js';
export { requestTarget } from './admit.js';

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
  /**
   * The `upgrade` event's listener of the node:http server under Koa,
   * Express or `proxy.handler`: a WebSocket (or any `Upgrade`) goes to one
   * upstream, chosen as a read's first copy would be, and the two sockets
   * are piped together. Nothing is raced. `server.on('upgrade', proxy.upgrade)`.
   */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /**
   * Listens to the `upgrade` event of `server` with `proxy.upgrade`; dispose
   * to stop. `mountPath`: the path the proxy is mounted under in Express or
   * koa-mount (`app.use('/api', proxy)`): only upgrades under it are the
   * proxy's, taken off as the mount takes it off a request's path (others are
   * left to the server's other `upgrade` listeners).
   */
  attach(server: Server, options?: { mountPath?: string }): Disposable;
  /**
   * Refuses new requests and upgrades (503), waits for the requests in
   * flight, ends the upgraded tunnels (after `tunnelGrace`), then closes the
   * upstream connection pools.
   */
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

/** One request on its way through the stages; each stage fills in its part. */
interface Passage extends RacePlan {
  requestId: string;
  method: string;
  /** The target every copy asks (after its upstream's prefix). */
  path: string;
  body: Buffer | null;
  update: boolean;
  session: ClientSession;
  targets: Upstream[];
  /** The update's Idempotency-Key, taken. */
  keyed: KeyedAttempt | null;
  /** The adoption was recorded before the answer's head went out (read-your-writes). */
  recorded: boolean;
  /** False when the adopted copy saved no session change, or its session was minted here and got no cookie: nothing to promote. */
  sessionChanged: boolean | undefined;
}

/**
 * Creates the racing proxy. Every option is checked here; a bad one throws an
 * `InvalidOptionError` naming it.
 *
 * A request goes through five stages (docs/design.md): admit (its id, body,
 * target and session), plan (which upstreams get copies), idempotency (an
 * update's key: replay, wait, or take it), race (lib/proxy/race.ts), record
 * (the adoption, the key's answer, and the report to its observers).
 *
 * @example
 * app.use(redundantProxy({ upstreams: ['http://127.0.0.1:3001', 'http://127.0.0.1:3002'] }));
 */
export function redundantProxy(options: ProxyOptions): RedundantProxy {
  const opts = resolveOptions(options);
  // The clock and timers of every race, hedge, ejection and bound (lib/time.ts).
  const time = schedulerOf(options) ?? (options.now ? realScheduler(opts.now) : REAL_TIME);
  const events = new Emitter<ProxyEvents>(PROXY_EVENTS);
  const metrics = new Metrics(opts.upstreams.map((u) => u.id));
  const adaptive = opts.hedgeDelay === 'adaptive' ? new AdaptiveDelay(hedgeQuantile(opts.maxExtraLoad)) : null;
  const budget = new HedgeBudget(opts.maxExtraLoad);
  const ejector = opts.ejection
    ? new Ejector(
        { ...opts.ejection, keep: opts.select.kind === 'quorum' ? opts.select.quorum : 0 },
        opts.upstreams,
        () => time.now(),
        (e) => {
          prom?.ejected(e.upstream);
          events.emit('upstream:ejected', e);
        },
        (e) => events.emit('upstream:restored', e),
      )
    : null;
  const prom = opts.prometheus
    ? new PrometheusMetrics(
        opts.prometheus,
        opts.upstreams.map((u) => u.id),
        (id) => ejector?.isEjected(id) ?? false,
        opts.healthCheck ? (id) => health?.isHealthy(id) ?? true : null,
      )
    : null;
  const dispatchers = new Map<string, Dispatcher>();
  for (const u of opts.upstreams) {
    dispatchers.set(u.id, upstreamPool(u, opts.connections));
  }
  // Active health checks, through the upstreams' own pools (so a probe finds what a copy would).
  const health = opts.healthCheck ? startHealthChecks(opts, dispatchers, time, events) : null;
  const bodyBudget = new BodyBudget(opts.maxBufferedBytes);
  const inFlight = new Set<Promise<RaceReport>>();
  const planner = new Planner(opts.upstreams, opts.copies, opts.maxInFlight, ejector, health, opts.select.kind === 'quorum' ? opts.select.quorum : 1);
  const books = new Bookkeeping(opts, time, events);
  const sessions = new ClientSessions(opts, time, (requestId, error) => books.reportStoreError(requestId, error));
  const observers = reportObservers({ metrics, prometheus: prom, ejector, adaptive, events });
  /** Upstreams whose refusals were reported: said once, until the upstream answers again. */
  const refusing = new Set<string>();
  const idempotency = opts.idempotency
    ? new Idempotency({
        store: opts.store,
        storeTimeout: opts.storeTimeout,
        // Held while the race runs (at most `timeout`) and its key is decided
        // and completed (store calls of at most `storeTimeout` each); a
        // gateway that dies leaves the key to the next retry after this.
        lockMs: opts.timeout + 4 * opts.storeTimeout,
        scope: opts.idempotency.scope,
        ttl: opts.idempotency.ttl,
        maxAnswerSize: opts.idempotency.maxAnswerSize,
        wait: opts.idempotency.wait,
        onStoreError: (requestId, error) => books.reportStoreError(requestId, error),
      })
    : null;
  /** Said once: workers answer a proxy whose store is its own default. */
  let ownStoreSaid = false;
  /** What every race tells the proxy besides its report. */
  const observer: RaceObserver = {
    copySent: (requestId, copy) => {
      if (events.has('copy:sent')) events.emit('copy:sent', { requestId, copy });
    },
    copyStarted: (id) => planner.copyStarted(id),
    copyEnded: (id) => planner.copyEnded(id),
    workerSeen: (id) => {
      planner.workerSeen(id);
      // The default store lives inside this proxy: no worker can share it.
      if (opts.ownsStore && !ownStoreSaid) {
        ownStoreSaid = true;
        console.warn(`redundant-proxy: upstream "${id}" runs redundantWorker, but this proxy was given no \`store\`: it records into an in-memory store of its own that no worker shares, so the workers' session changes are never promoted (every request sees the session as it was) and Idempotency-Keys live in this process only. Give the proxy and every worker the same store (a RedisSessionStore across processes).`);
      }
    },
    refused: (id, code) => {
      if (refusing.has(id)) return;
      refusing.add(id);
      const why =
        code === codes.BODY_CONSUMED
          ? 'its redundantWorker is mounted after a body parser, which read each copy\'s body before the worker could check it against its signature: mount the worker before any body parser'
          : "its redundantWorker's secret or id does not match this proxy's (or, once its handler ran, a signed body did not arrive in full before a claim: read the body before committing); the worker's 'refused' event says which";
      const error = new RedundantProxyError(isErrorCode(code) ? code : codes.BAD_SIGNATURE, `upstream "${id}" refuses this proxy's copies (${code}): ${why}; its copies count as failures (it will be ejected) until that is fixed`, { status: 502 });
      if (events.has('error')) events.emit('error', { requestId: null, source: 'upstream', error });
      else console.warn(`redundant-proxy: ${error.message}`);
    },
    cancelled: (requestId, copy, committed) => books.cancelled(requestId, copy, committed),
    error: (requestId, source, error) => reportUnheard(requestId, source, error),
    secondCommit: (requestId, error) => {
      if (events.has('error')) events.emit('error', { requestId, source: 'internal', error });
      // An update applied twice: said every time, listener or not.
      else console.error(`redundant-proxy: ${(error as Error).message}`);
    },
  };
  // Without an 'error' listener, each source's first failure is said on the
  // console (once: a hook that always throws must not flood the log).
  const unheard = new Map<ProxyErrorEvent['source'], (message: string, detail?: unknown) => void>();
  function reportUnheard(requestId: string | null, source: ProxyErrorEvent['source'], error: unknown): void {
    if (events.has('error')) return events.emit('error', { requestId, source, error });
    const warn = unheard.get(source) ?? warnOnce();
    unheard.set(source, warn);
    warn(`redundant-proxy: ${source === 'internal' ? 'an internal error' : `the ${source} failed`}${requestId ? ` (request ${requestId})` : ''}; further ${source} failures are silent without an 'error' listener:`, error);
  }
  let closed = false;

  /** Stage "admit": a request id (never the client's), the body (bounded), the target checked, the client's session. */
  async function admit(req: IncomingMessage, res: ServerResponse, hints: ParsedBodyHints, share: BodyShare, requestId: string): Promise<Passage | null> {
    if (closed) {
      sendError(res, new RedundantProxyError(codes.CLOSED, 'the proxy is closing', { status: 503 }), requestId);
      return null;
    }
    if (isWebSocketUpgrade(req)) {
      // Sent on as a plain GET it would get a plain answer: the client would never learn why.
      sendError(res, new RedundantProxyError(codes.UPGRADE_NOT_ATTACHED, "a WebSocket upgrade reached the proxy as a plain request: hand the server's upgrades to it with proxy.attach(server)", { status: 501 }), requestId, { connection: 'close' });
      return null;
    }
    let body: Buffer | null;
    try {
      body = await readBody(req, opts.maxBodySize, hints, { share, totalMs: opts.bodyTimeout, idleMs: opts.bodyIdleTimeout });
    } catch (err) {
      const e = err instanceof RedundantProxyError ? err : toInternal(err);
      // The rest of the body is not read: close the connection after answering.
      const unread = e.code === codes.BODY_TOO_LARGE || e.code === codes.BODY_READ || e.code === codes.BODY_TIMEOUT || e.code === codes.OVERLOADED || e.code === codes.TRANSFER_CODING;
      sendError(res, e, requestId, unread ? { connection: 'close', ...(e.code === codes.OVERLOADED ? { 'retry-after': '1' } : {}) } : undefined);
      return null;
    }
    const path = requestTarget(req);
    if (typeof path !== 'string') {
      // `*` (OPTIONS * asks about the server, not a resource), garbage, or a
      // path that climbs out of where it points: no upstream is asked it,
      // and none is blamed for it.
      sendError(res, new RedundantProxyError(codes.BAD_TARGET, path.reason, { status: 400 }), requestId);
      return null;
    }
    let update: boolean;
    try {
      update = opts.isUpdate(req);
    } catch (err) {
      // The gateway's function, not this library: a hook that failed, said as one.
      const error = new RedundantProxyError(codes.HOOK_FAILED, `the gateway's isUpdate threw: ${err instanceof Error ? err.message : String(err)}`, { status: 500, cause: err });
      reportUnheard(requestId, 'hook', error);
      sendError(res, new RedundantProxyError(codes.HOOK_FAILED, "the gateway's isUpdate hook failed", { status: 500 }), requestId);
      return null;
    }
    const session = await sessions.find(req);
    return { requestId, method: req.method ?? 'GET', path, body, update, session, targets: [], keyed: null, recorded: false, sessionChanged: undefined, epoch: 0, route: '', hedgeDelay: 0, trace: null };
  }

  /** Stage "plan": the upstreams the copies go to; false when none may take one (answered). */
  function plan(res: ServerResponse, p: Passage): boolean {
    const targets = planner.plan(p.update);
    // Judged later against this: a copy planned before an upstream's ejection or return says nothing of it now.
    p.epoch = ejector?.epoch ?? 0;
    if (targets === 'busy') {
      sendError(res, new RedundantProxyError(codes.UPSTREAM_BUSY, `every upstream has ${opts.maxInFlight} copies in flight (maxInFlight); retry later`, { status: 503 }), p.requestId, { 'retry-after': '1' });
      return false;
    }
    if (targets.length === 0) {
      // Only with ejection.maxEjectedPercent at 100: every upstream is ejected.
      sendError(res, new RedundantProxyError(codes.NO_UPSTREAM, 'every upstream is ejected for failing; none may receive the request now', { status: 503 }), p.requestId);
      return false;
    }
    p.targets = targets;
    return true;
  }

  /** Stage "idempotency": an update's key is replayed, waited for, or taken; false when the client was answered. */
  async function takeKey(req: IncomingMessage, res: ServerResponse, p: Passage): Promise<boolean> {
    if (!p.update || !idempotency) return true;
    const { requestId, method, path, body, session } = p;
    const begun = await idempotency.begin(req, res, { requestId, method, path, body, sessionId: session.isNew ? null : session.id || null });
    if (begun === 'answered') return false;
    if (begun && (await idempotency.sealedBefore(begun))) {
      sendError(
        res,
        new RedundantProxyError(codes.NOT_APPLIED, 'this update was not applied: an earlier attempt under this Idempotency-Key ended without applying it, and its answer could not be kept for replay; it can no longer be applied under this key: send it again with a new Idempotency-Key', { status: 409 }),
        begun.requestId,
      );
      return false;
    }
    // A retry that resumes an earlier attempt runs under its request id.
    if (begun) p.requestId = begun.requestId;
    p.keyed = begun;
    return true;
  }

  /** Stage "race": the copies race (lib/proxy/race.ts) and one answer goes to the client. */
  function race(req: IncomingMessage, res: ServerResponse, p: Passage): Promise<RaceReport> {
    const { requestId, method, path, update, session, keyed } = p;
    budget.deposit();
    p.route = adaptive ? `${method} ${path.split('?', 1)[0]}` : '';
    p.hedgeDelay = adaptive ? adaptive.delay(p.route) : (opts.hedgeDelay as number);
    const headers = forwardRequestHeaders(req, requestId, opts.trustForwarded);
    // A body parser before the proxy kept the body decompressed: the copies carry it so, without its coding.
    if (decodedByParser(req, p.body)) dropHeader(headers, 'content-encoding');
    p.trace = RaceTrace.start(req, { requestId, method, path, update, planned: p.targets.length }, headers);
    const running: Race = new Race({
      requestId,
      method,
      path,
      update,
      sessionId: session.id,
      sessionNew: session.isNew,
      headers,
      trace: p.trace,
      body: p.body,
      targets: p.targets,
      dispatchers,
      hedgeDelay: p.hedgeDelay,
      budget,
      timeout: opts.timeout,
      perTryTimeout: opts.perTryTimeout,
      retry: opts.retry,
      spare: opts.perTryTimeout ? (tried) => planner.spare(tried, update) : undefined,
      accept: opts.accept,
      select: opts.select,
      maxAnswerSize: opts.maxBodySize,
      secret: opts.secret,
      time,
      wallClock: Date.now,
      res,
      observer,
      client: req,
      rewriteCopy: opts.rewriteCopy,
      rewriteAnswer: opts.rewriteAnswer,
      beforeHead: opts.session ? (copy, headers) => recordBeforeHead(req, p, copy, headers) : undefined,
      beforeFailure: update ? (adopting) => books.decideUpdate(requestId, adopting) : undefined,
      capture: keyed && opts.idempotency ? opts.idempotency.maxAnswerSize : 0,
      beforeEnd: keyed ? (captured): Promise<void> => idempotency!.completeWon(keyed, captured, running.committed) : undefined,
      attempt: keyed?.attempt ?? 1,
      idempotencyKey: keyed?.appKey,
      // The signature binds each copy to its body: hashed once, only when signing.
      bodyHash: opts.secret === undefined ? undefined : createHash('sha256').update(p.body ?? EMPTY).digest('base64url'),
    });
    if (events.has('race:start')) events.emit('race:start', { requestId, method, path, update, upstreams: p.targets.map((t) => t.id) });
    return running.start();
  }

  /**
   * Step "record the adoption", read-your-writes: when the adopted copy
   * changed the session, the adoption (promoting its candidate) is recorded
   * before the answer goes out, so the client's next request sees the new state.
   */
  function recordBeforeHead(req: IncomingMessage, p: Passage, copy: CopyReport, headers: Record<string, string | string[] | undefined>) {
    const { session } = p;
    const said = headers[H.sessionChanged];
    if (said !== FLAG_ON) {
      // `0`: nothing saved. Unsaid (a streamed head) on a session minted for
      // this request: the client gets no cookie, so nobody can come back to it.
      if (said === FLAG_OFF || session.isNew) p.sessionChanged = false;
      return undefined;
    }
    if (!session.id) return undefined;
    p.recorded = true;
    const extra = session.isNew ? sessions.headers(req, session.id) : {};
    return books.bookkeep(opts.store.recordAdoption(adoptionOf(p, copy.duplicateId, copy.upstream)), p.requestId, true).then(() => extra);
  }

  /** Stage "record": the adoption (off the answer's path), the key's answer, and the report to its observers. */
  function record(p: Passage, report: RaceReport): void {
    // A keyed update left for a retry to resume records none: the adoption
    // that counts is the one of the attempt that ends it.
    if (report.adopted && !p.recorded && (!p.keyed || report.outcome === 'won')) {
      void books.bookkeep(opts.store.recordAdoption(adoptionOf(p, report.adopted, report.servedBy!)), p.requestId, false);
    }
    // Reports its own store errors, and keeps trying while the store fails.
    if (p.keyed) books.track(idempotency!.completeAfter(p.keyed, report));
    if (refusing.size > 0) {
      for (const c of report.copies) if (c.status !== null && !c.error?.startsWith('refused:')) refusing.delete(c.upstream);
    }
    publish(observers, report, p);
  }

  async function handle(req: IncomingMessage, res: ServerResponse, hints: ParsedBodyHints, requestId: string): Promise<void> {
    // The request's body stays buffered until its race ends: so does its share of the budget.
    const share = bodyBudget.share();
    try {
      const p = await admit(req, res, hints, share, requestId);
      if (!p || !plan(res, p) || !(await takeKey(req, res, p))) return;
      const done = race(req, res, p);
      inFlight.add(done);
      const report = await done;
      inFlight.delete(done);
      record(p, report);
    } finally {
      share.release();
    }
  }

  function toInternal(err: unknown, requestId: string | null = null): RedundantProxyError {
    reportUnheard(requestId, 'internal', err);
    return new RedundantProxyError(codes.INTERNAL, 'internal error in redundant-proxy', { status: 500, cause: err });
  }

  function safe(req: IncomingMessage, res: ServerResponse, hints: ParsedBodyHints): Promise<void> {
    // The request's id, minted here so that even an internal error's answer carries it.
    const requestId = randomUUID();
    return handle(req, res, hints, requestId).catch((err) => sendError(res, toInternal(err, requestId), requestId));
  }

  const proxy = function redundantProxyMiddleware(a: IncomingMessage | KoaLikeContext, b?: unknown): Promise<void> {
    const call = detectFramework<KoaLikeContext>(a, b, undefined, ', or use .handler(req, res)');
    // Express / Connect: (req, res, next). The proxy answers and never calls next.
    if (call.kind === 'node') return safe(call.req, call.res, call.req as ParsedBodyHints);
    const { ctx } = call;
    // The proxy writes the response itself, streaming the winner's body.
    ctx.respond = false;
    return safe(ctx.req, ctx.res, (ctx.request ?? {}) as ParsedBodyHints);
  } as RedundantProxy;

  const upgrades = new Upgrades({ opts, planner, metrics, events, time, isClosed: () => closed, toInternal });

  proxy.handler = (req, res) => safe(req, res, req as ParsedBodyHints);
  proxy.upgrade = upgrades.handle;
  proxy.attach = (server, options = {}) => {
    const listener = mounted(upgrades, options.mountPath, server);
    server.on('upgrade', listener);
    return { dispose: () => void server.off('upgrade', listener) };
  };
  proxy.on = (name, listener) => events.on(name, listener);
  proxy.metrics = () => metrics.snapshot(planner.workers, ejector, health);
  proxy.close = async () => {
    if (closed) return;
    closed = true;
    health?.close();
    await Promise.all([Promise.allSettled(inFlight), upgrades.end()]);
    // Completions that the store refuses now are left to their keys' locks.
    idempotency?.close();
    await books.close();
    prom?.close();
    await Promise.all([...dispatchers.values()].map((d) => d.close()));
    if (opts.ownsStore) await opts.store.close();
    events.clear();
  };
  return proxy;
}

/**
 * The upgrade listener for a proxy mounted under `mountPath`: an upgrade
 * under it goes on with the mount path taken off its target, as Express
 * takes it off a request's (`/api/ws` → `/ws`, `/api?x` → `/?x`); one
 * elsewhere is not the proxy's.
 */
function mounted(upgrades: Upgrades, mountPath: string | undefined, server: Server): RedundantProxy['upgrade'] {
  if (mountPath === undefined || mountPath === '/') return upgrades.handle;
  if (typeof mountPath !== 'string' || !/^\/[\x21-\x7e]*[^/]$/.test(mountPath) || /[?#]/.test(mountPath)) {
    throw new InvalidOptionError('mountPath', 'must be a path starting with / and not ending with / (no ? or #)', mountPath);
  }
  // Express matches a mount path whatever its case.
  const prefix = mountPath.toLowerCase();
  return (req, socket, head) => {
    const url = req.url ?? '';
    const rest = url.slice(mountPath.length);
    if (!url.toLowerCase().startsWith(prefix) || (rest !== '' && rest[0] !== '/' && rest[0] !== '?')) {
      // Another listener's, if the server has one; else nobody's, and said so.
      if (server.listenerCount('upgrade') <= 1) upgrades.notMounted(req, socket, mountPath);
      return;
    }
    // The request itself stays as it came: the server's other listeners see it so.
    upgrades.handleAt(req, socket, head, { url: rest === '' || rest[0] === '?' ? `/${rest}` : rest, originalUrl: url });
  };
}

/** A WebSocket handshake (`Upgrade: websocket` named in `Connection`), which only `proxy.upgrade` can pass through. */
function isWebSocketUpgrade(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade;
  if (typeof upgrade !== 'string' || !/\bwebsocket\b/i.test(upgrade)) return false;
  const connection = req.headers.connection;
  return typeof connection === 'string' && /\bupgrade\b/i.test(connection);
}

/** What the store is told of an adoption: which copy's answer was adopted for which original request id. */
function adoptionOf(p: Passage, duplicateId: string, upstreamId: string): RecordAdoptionInput {
  const adoption: RecordAdoptionInput = { requestId: p.requestId, sessionId: p.session.id, update: p.update, duplicateIds: [duplicateId], upstreamIds: [upstreamId] };
  if (p.sessionChanged === false) adoption.sessionChanged = false;
  return adoption;
}

const EMPTY = Buffer.alloc(0);
const CODES = new Set<string>(Object.values(codes));

function isErrorCode(code: string): code is ErrorCode {
  return CODES.has(code);
}
