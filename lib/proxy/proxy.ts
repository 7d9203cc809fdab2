import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Pool, type Dispatcher } from 'undici';
import { codes, isSupersededError, RedundantProxyError, type ErrorCode } from '../errors.js';
import { TimeoutGroup, withTimeout } from '../timeout.js';
import { realScheduler, REAL_TIME, schedulerOf, type TimerHandle } from '../time.js';
import { H, mintSessionId, sealId, SESSION_ID } from '../wire/protocol.js';
import { Emitter, type Disposable } from '../events.js';
import { BodyBudget, readBody, type BodyShare, type ParsedBodyHints } from './body.js';
import { forwardRequestHeaders } from './headers.js';
import { Ejector, type UpstreamEjectedEvent, type UpstreamRestoredEvent } from './ejection.js';
import { AdaptiveDelay, HedgeBudget, hedgeQuantile } from './hedge.js';
import { Metrics, type ProxyMetrics } from './metrics.js';
import { PrometheusMetrics } from './prometheus.js';
import { resolveOptions, type CancelInfo, type ProxyOptions, type Upstream } from './options.js';
import { Idempotency, type KeyedAttempt } from './idempotency.js';
import { isSignedSessionId, mintSignedSessionId } from './session.js';
import { Race, type CopyReport, type RaceObserver, type RaceReport } from './race.js';
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
   * Where it happened: `accept` (the option threw), `select` (the select
   * function threw or returned something it was not given; the client got
   * `502` `RP_ERR_NO_SELECTION`), `store` (bookkeeping failed or was too
   * slow; the answer went out anyway), `onCancel` (the hook threw or ran past
   * `cancelTimeout`), `upstream` (a replica's worker refuses the proxy's
   * copies: its secret or id does not match; said once per upstream until it
   * answers again), `internal`.
   */
  source: 'accept' | 'select' | 'store' | 'onCancel' | 'upstream' | 'internal';
  error: unknown;
}

export interface CopyCancelledEvent {
  requestId: string;
  duplicateId: string;
  upstream: string;
  committedBy: string;
}

/** Events of `.on(name, listener)`. */
export interface ProxyEvents {
  /** A request passed its checks and its copies are about to leave. */
  'race:start': RaceStartEvent;
  /** One copy left for its upstream. */
  'copy:sent': CopySentEvent;
  /** A race ended: every copy's upstream, timing and outcome. */
  'race:end': RaceReport;
  /** An update's copy was stopped because another copy committed; `onCancel` ran and the store recorded it. */
  'copy:cancelled': CopyCancelledEvent;
  /** An upstream failed too often in a row (the `ejection` option): it receives no copies for `duration` ms. */
  'upstream:ejected': UpstreamEjectedEvent;
  /** An ejected upstream's time is over: it receives copies again, on probation. */
  'upstream:restored': UpstreamRestoredEvent;
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
  // The clock and timers of every race, hedge, ejection and bound (lib/time.ts).
  const time = schedulerOf(options) ?? (options.now ? realScheduler(opts.now) : REAL_TIME);
  const now = () => time.now();
  const events = new Emitter<ProxyEvents>();
  const metrics = new Metrics(opts.upstreams.map((u) => u.id));
  const adaptive = opts.hedgeDelay === 'adaptive' ? new AdaptiveDelay(hedgeQuantile(opts.maxExtraLoad)) : null;
  const budget = new HedgeBudget(opts.maxExtraLoad);
  const ejector = opts.ejection
    ? new Ejector(
        { ...opts.ejection, keep: opts.select.kind === 'quorum' ? opts.select.quorum : 0 },
        opts.upstreams,
        now,
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
      )
    : null;
  const dispatchers = new Map<string, Dispatcher>();
  for (const u of opts.upstreams) {
    dispatchers.set(u.id, new Pool(u.origin, { connections: opts.connections, keepAliveTimeout: 10_000, pipelining: 1 }));
  }
  const bodyBudget = new BodyBudget(opts.maxBufferedBytes);
  const inFlight = new Set<Promise<RaceReport>>();
  /** Cancel hooks and their bookkeeping, awaited by close(). */
  const background = new Set<Promise<void>>();
  /** Upstreams that answered with `x-redundant-worker`: they may receive copies of updates. */
  const workers = new Set<string>();
  const onWorkerSeen = (id: string) => void workers.add(id);
  /** Upstreams whose refusals were reported: said once, until the upstream answers again. */
  const refusing = new Set<string>();
  const onRefused = (id: string, code: string) => {
    if (refusing.has(id)) return;
    refusing.add(id);
    const error = new RedundantProxyError(
      isErrorCode(code) ? code : codes.BAD_SIGNATURE,
      `upstream "${id}" refuses this proxy's copies (${code}): its redundantWorker's secret or id does not match this proxy's; its copies count as failures (it will be ejected) until that is fixed`,
      { status: 502 },
    );
    if (events.has('error')) events.emit('error', { requestId: null, source: 'upstream', error });
    else console.warn(`redundant-proxy: ${error.message}`);
  };
  /** Bounds the off-path bookkeeping writes (one timer for all of them). */
  const offPath = new TimeoutGroup(opts.storeTimeout);
  let closed = false;
  let warnedStore = false;
  let rotation = 0;

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
        onStoreError: (requestId, error) => reportStoreError(requestId, error),
      })
    : null;

  /** Copies in flight per upstream: the circuit breaker's count. */
  const inFlightCopies = new Map<string, number>();
  /** What every race tells the proxy besides its report. */
  const observer: RaceObserver = {
    copySent: (requestId, copy) => {
      if (events.has('copy:sent')) events.emit('copy:sent', { requestId, copy });
    },
    copyStarted: (id) => void inFlightCopies.set(id, (inFlightCopies.get(id) ?? 0) + 1),
    copyEnded: (id) => void inFlightCopies.set(id, (inFlightCopies.get(id) ?? 1) - 1),
    workerSeen: onWorkerSeen,
    refused: onRefused,
    cancelled,
    error: (requestId, source, error) => events.emit('error', { requestId, source, error }),
  };
  const hasRoom = (u: Upstream) => (inFlightCopies.get(u.id) ?? 0) < opts.maxInFlight;

  /** The upstreams a request's copies go to, in order; `busy` when the circuit breaker left none. */
  function plan(update: boolean): Upstream[] | 'busy' {
    // Ejected upstreams receive no copies; a read then sends fewer.
    let pool = ejector ? ejector.available(opts.upstreams) : opts.upstreams;
    // Nor do upstreams at their maxInFlight (the circuit breaker).
    if (pool.length > 0) {
      const open = pool.filter(hasRoom);
      if (open.length === 0) return 'busy';
      if (open.length < pool.length) pool = open;
    }
    let n = Math.min(opts.copies, pool.length);
    if (update) {
      // Safe by default: an update is copied only to upstreams that have shown
      // they run the worker (so its commit is arbitrated); until two have, it
      // goes to one upstream.
      const known = pool.filter((u) => workers.has(u.id));
      if (known.length >= 2) {
        pool = known;
        n = Math.min(n, known.length);
      } else n = 1;
    }
    if (pool.length === 0) return pool;
    const start = rotation++ % pool.length;
    if (n === pool.length && start === 0) return pool;
    const out: Upstream[] = [];
    for (let i = 0; i < n; i++) out.push(pool[(start + i) % pool.length]!);
    return out;
  }

  function cancelled(requestId: string, copy: CopyReport, committed: CopyReport): void {
    const work = (async () => {
      const controller = new AbortController();
      const info: CancelInfo = { requestId, duplicateId: copy.duplicateId, upstream: copy.upstream, committedBy: committed.upstream, signal: controller.signal };
      if (opts.onCancel) {
        const hook = opts.onCancel;
        let timer: TimerHandle | undefined;
        try {
          await Promise.race([
            Promise.resolve().then(() => hook(info)),
            new Promise<never>((_, reject) => {
              timer = time.setTimeout(() => {
                const err = new RedundantProxyError(codes.TIMEOUT, `onCancel did not finish within ${opts.cancelTimeout} ms`);
                controller.abort(err);
                reject(err);
              }, opts.cancelTimeout);
            }),
          ]);
        } catch (error) {
          events.emit('error', { requestId, source: 'onCancel', error });
        } finally {
          if (timer !== undefined) time.clearTimeout(timer);
        }
      }
      await bookkeep(opts.store.recordCancelled(requestId, copy.duplicateId), requestId, false);
      events.emit('copy:cancelled', { requestId, duplicateId: copy.duplicateId, upstream: copy.upstream, committedBy: committed.upstream });
    })();
    background.add(work);
    void work.finally(() => background.delete(work));
  }

  /**
   * Updates: asked before the race answers a failure or a timeout, or adopts
   * at the timeout an answer that did not commit. The store's commit record
   * decides what the client may be told: a copy committed (its answer was
   * lost), a copy holds the claim now (the outcome is not known yet), or
   * nobody claimed. Before adopting an answer that did not commit while
   * copies are still out, the proxy seals the request (claims and confirms
   * it under its own id), so that no copy still out can commit after the
   * client was told nothing was.
   */
  async function decideUpdate(requestId: string, adopting: boolean): Promise<RedundantProxyError | undefined> {
    const record = await withTimeout(opts.store.getRequest(requestId), opts.storeTimeout, 'getRequest', time);
    const commit = record?.commit;
    // Clients are told an upstream's label, never an id derived from its address.
    const upstreamOf = (holder: string) => {
      const id = record?.copies.find((c) => c.duplicateId === holder)?.upstreamId;
      return opts.upstreams.find((u) => u.id === id)?.label ?? 'unknown';
    };
    if (commit?.state === 'committed' && commit.holder !== sealId(requestId)) return answerLost(upstreamOf(commit.holder));
    if (commit?.state === 'claimed') return outcomeUnknown(upstreamOf(commit.holder));
    if (!adopting) return undefined;
    const seal = sealId(requestId);
    const controller = new AbortController();
    const timer = time.setTimeout(() => controller.abort(new RedundantProxyError(codes.TIMEOUT, 'sealing took too long')), opts.storeTimeout);
    try {
      const grant = await opts.store.claim(requestId, seal, { leaseMs: opts.storeTimeout * 2, signal: controller.signal });
      await withTimeout(opts.store.confirm(requestId, seal, grant.fence), opts.storeTimeout, 'confirm', time);
      return undefined;
    } catch (err) {
      if (isSupersededError(err) && err.committedBy && err.committedBy !== seal) return answerLost(upstreamOf(err.committedBy));
      // A copy claimed meanwhile (the seal had to wait), or the store failed.
      return outcomeUnknown(null);
    } finally {
      time.clearTimeout(timer);
    }
  }

  const answerLost = (upstream: string) =>
    new RedundantProxyError(codes.ANSWER_LOST, `the update was applied by upstream "${upstream}", but its answer was lost; do not retry it blindly`, { status: 502 });
  const outcomeUnknown = (upstream: string | null) =>
    new RedundantProxyError(
      codes.OUTCOME_UNKNOWN,
      `${upstream ? `upstream "${upstream}" holds this update's commit` : "this update's commit is being decided"} and no answer came: it may or may not be applied; retry with the same Idempotency-Key to learn which`,
      { status: 503 },
    );

  async function handle(req: IncomingMessage, res: ServerResponse, hints: ParsedBodyHints): Promise<void> {
    // The request's body stays buffered until its race ends: so does its share of the budget.
    const share = bodyBudget.share();
    try {
      await handleRequest(req, res, hints, share);
    } finally {
      share.release();
    }
  }

  async function handleRequest(req: IncomingMessage, res: ServerResponse, hints: ParsedBodyHints, share: BodyShare): Promise<void> {
    let requestId: string = randomUUID();
    if (closed) {
      sendError(res, new RedundantProxyError(codes.CLOSED, 'the proxy is closing', { status: 503 }), requestId);
      return;
    }
    let body: Buffer | null;
    try {
      body = await readBody(req, opts.maxBodySize, hints, { share, totalMs: opts.bodyTimeout, idleMs: opts.bodyIdleTimeout });
    } catch (err) {
      const e = err instanceof RedundantProxyError ? err : toInternal(err);
      // The rest of the body is not read: close the connection after answering.
      const unread = e.code === codes.BODY_TOO_LARGE || e.code === codes.BODY_READ || e.code === codes.BODY_TIMEOUT || e.code === codes.OVERLOADED;
      sendError(res, e, requestId, unread ? { connection: 'close', ...(e.code === codes.OVERLOADED ? { 'retry-after': '1' } : {}) } : undefined);
      return;
    }
    const method = req.method ?? 'GET';
    const path = requestTarget(req);
    if (typeof path !== 'string') {
      // `*` (OPTIONS * asks about the server, not a resource), garbage, or a
      // path that climbs out of where it points: no upstream is asked it,
      // and none is blamed for it.
      sendError(res, new RedundantProxyError(codes.BAD_TARGET, path.reason, { status: 400 }), requestId);
      return;
    }
    const update = opts.isUpdate(req);
    const session = await findSession(req);
    const targets = plan(update);
    // Judged later against this: a copy planned before an upstream's ejection or return says nothing of it now.
    const epoch = ejector?.epoch ?? 0;
    if (targets === 'busy') {
      sendError(res, new RedundantProxyError(codes.UPSTREAM_BUSY, `every upstream has ${opts.maxInFlight} copies in flight (maxInFlight); retry later`, { status: 503 }), requestId, { 'retry-after': '1' });
      return;
    }
    if (targets.length === 0) {
      // Only with ejection.maxEjectedPercent at 100: every upstream is ejected.
      sendError(res, new RedundantProxyError(codes.NO_UPSTREAM, 'every upstream is ejected for failing; none may receive the request now', { status: 503 }), requestId);
      return;
    }
    let keyed: KeyedAttempt | null = null;
    if (update && idempotency) {
      const begun = await idempotency.begin(req, res, { requestId, method, path, body, sessionId: session.isNew ? null : session.id || null });
      if (begun === 'answered') return;
      keyed = begun;
    }
    // A retry that resumes an earlier attempt runs under its request id.
    if (keyed) requestId = keyed.requestId;
    budget.deposit();
    const route = adaptive ? `${method} ${path.split('?', 1)[0]}` : '';
    const hedgeDelay = adaptive ? adaptive.delay(route) : (opts.hedgeDelay as number);
    // Step "record the adoption", read-your-writes: when the adopted copy changed the
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
      return bookkeep(opts.store.recordAdoption(adoption(copy.duplicateId, copy.upstream)), requestId, true).then(() => extra);
    };
    const race: Race = new Race({
      requestId,
      method,
      path,
      update,
      sessionId: session.id,
      sessionNew: session.isNew,
      headers: forwardRequestHeaders(req, requestId, opts.trustForwarded),
      body,
      targets,
      dispatchers,
      hedgeDelay,
      budget,
      timeout: opts.timeout,
      accept: opts.accept,
      select: opts.select,
      maxAnswerSize: opts.maxBodySize,
      secret: opts.secret,
      time,
      wallClock: Date.now,
      res,
      observer,
      beforeHead: opts.session ? beforeHead : undefined,
      beforeFailure: update ? (adopting) => decideUpdate(requestId, adopting) : undefined,
      capture: keyed && opts.idempotency ? opts.idempotency.maxAnswerSize : 0,
      beforeEnd: keyed ? (captured): Promise<void> => idempotency!.completeWon(keyed, captured, race.committed) : undefined,
      attempt: keyed?.attempt ?? 1,
      idempotencyKey: keyed?.key,
      // The signature binds each copy to its body: hashed once, only when signing.
      bodyHash: opts.secret === undefined ? undefined : createHash('sha256').update(body ?? EMPTY).digest('base64url'),
    });
    if (events.has('race:start')) events.emit('race:start', { requestId, method, path, update, upstreams: targets.map((t) => t.id) });
    const done = race.start();
    inFlight.add(done);
    const report = await done;
    inFlight.delete(done);
    // Step "record the adoption", off the critical path: which copy's answer was adopted.
    // A keyed update left for a retry to resume records none: the adoption
    // that counts is the one of the attempt that ends it.
    if (report.adopted && !recorded && (!keyed || report.outcome === 'won')) void bookkeep(opts.store.recordAdoption(adoption(report.adopted, report.servedBy!)), requestId, false);
    if (keyed) {
      // Reports its own store errors, and keeps trying while the store fails.
      const completing = idempotency!.completeAfter(keyed, report);
      background.add(completing);
      void completing.finally(() => background.delete(completing));
    }
    if (refusing.size > 0) {
      for (const c of report.copies) if (c.status !== null && !c.error?.startsWith('refused:')) refusing.delete(c.upstream);
    }
    metrics.record(report);
    prom?.record(report);
    ejector?.record(report, epoch);
    adaptive?.learn(route, report, hedgeDelay);
    events.emit('race:end', report);
  }

  /**
   * Runs a store operation with a bound; a failure becomes an `error` event,
   * never a failed request. `critical`: an answer waits for it, so its bound
   * is exact; otherwise it is off the answer's path and shares one timer.
   */
  function bookkeep(operation: Promise<unknown>, requestId: string, critical: boolean): Promise<void> {
    const bounded = critical ? withTimeout(operation, opts.storeTimeout, 'a bookkeeping write', time) : offPath.track(operation, 'a bookkeeping write');
    const work = bounded.then(
      () => undefined,
      (error: unknown) => reportStoreError(requestId, error),
    );
    // close() waits for it (at most storeTimeout), so its outcome is still reported.
    background.add(work);
    void work.then(() => background.delete(work));
    return work;
  }

  function reportStoreError(requestId: string | null, error: unknown): void {
    if (events.has('error')) events.emit('error', { requestId, source: 'store', error });
    else if (!warnedStore) {
      warnedStore = true;
      console.warn("redundant-proxy: session store bookkeeping failed (further failures are silent without an 'error' listener):", error);
    }
  }

  /**
   * The client's session, when it brought one the proxy handed out: signed
   * with the secret, or (without a secret) known to the store. Any other id
   * (one the client or an attacker picked) is replaced by a fresh one, so a
   * session is never fixed from outside.
   */
  async function findSession(req: IncomingMessage): Promise<{ id: string; isNew: boolean }> {
    const cfg = opts.session;
    if (!cfg) return { id: '', isNew: false };
    let id: string | undefined;
    if (cfg.header) id = firstHeader(req.headers[cfg.header]);
    if (id === undefined && cfg.cookie) id = readCookie(req.headers.cookie, cfg.cookie);
    if (id !== undefined && SESSION_ID.test(id)) {
      if (opts.secret !== undefined) {
        if (isSignedSessionId(id, opts.secret)) return { id, isNew: false };
      } else {
        const known = await withTimeout(opts.store.getSession(id), opts.storeTimeout, 'getSession', time).catch((error: unknown) => {
          reportStoreError(null, error);
          return undefined;
        });
        if (known) return { id, isNew: false };
      }
    }
    // Not derived from the request id: that one is logged everywhere, a session id must not be.
    return { id: opts.secret !== undefined ? mintSignedSessionId(opts.secret) : mintSessionId(), isNew: true };
  }

  function sessionHeaders(req: IncomingMessage, id: string): Record<string, string> {
    const cfg = opts.session;
    if (!cfg) return {};
    if (cfg.header) return { [cfg.header]: id };
    const tls = (req.socket as { encrypted?: boolean } | undefined)?.encrypted || (opts.trustForwarded && firstHeader(req.headers['x-forwarded-proto']) === 'https');
    const secure = cfg.secure === 'auto' ? tls : cfg.secure;
    let cookie = `${cfg.cookie}=${id}; Path=${cfg.path}; HttpOnly; SameSite=${cfg.sameSite}`;
    if (cfg.domain) cookie += `; Domain=${cfg.domain}`;
    if (cfg.maxAge !== undefined) cookie += `; Max-Age=${cfg.maxAge}`;
    if (secure) cookie += '; Secure';
    return { 'set-cookie': cookie };
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
  proxy.metrics = () => metrics.snapshot(workers, ejector);
  proxy.close = async () => {
    if (closed) return;
    closed = true;
    await Promise.allSettled(inFlight);
    // Completions that the store refuses now are left to their keys' locks.
    idempotency?.close();
    await Promise.allSettled(background);
    offPath.close();
    prom?.close();
    await Promise.all([...dispatchers.values()].map((d) => d.close()));
    if (opts.ownsStore) await opts.store.close();
    events.clear();
  };
  return proxy;
}

const EMPTY = Buffer.alloc(0);
const CODES = new Set<string>(Object.values(codes));

function isErrorCode(code: string): code is ErrorCode {
  return CODES.has(code);
}

/**
 * The request target in origin-form (`/path?query`), what every copy asks
 * its upstream (after the upstream's path prefix):
 * - an absolute-form target (`GET http://host/x`, which a client may send to
 *   any server) is reduced to its path and query, never sent on with its host;
 * - anything else that is not a path (`*`) is refused;
 * - a dot-segment (`.`, `..`, also percent-encoded) is refused: an upstream
 *   that normalises paths would serve `/api/../secret` from outside `/api`;
 * - mounted under a path in Express (`app.use('/svc', proxy)`), `/svc?x=1`
 *   reaches Express as `/?x=1`: the slash it inserted is not the client's,
 *   so the query follows the upstream's prefix directly (`/prefix?x=1`).
 *   The result then starts with `?` or is empty, and the race puts the
 *   prefix (or a single `/`) in front.
 */
export function requestTarget(req: IncomingMessage): string | { reason: string } {
  const raw = req.url ?? '/';
  let target: string;
  if (raw.startsWith('/')) target = raw;
  else if (/^https?:\/\//i.test(raw)) {
    try {
      const url = new URL(raw);
      target = url.pathname + url.search;
    } catch {
      return { reason: 'the request target is not a valid URL' };
    }
  } else return { reason: 'the request target must be a path (origin-form) or an absolute URL' };
  const q = target.indexOf('?');
  const pathname = q === -1 ? target : target.slice(0, q);
  for (const segment of pathname.split('/')) {
    const s = segment.replace(/%2e/gi, '.');
    if (s === '.' || s === '..') return { reason: 'the request path may not contain dot-segments (`.` or `..`)' };
  }
  const original = (req as { originalUrl?: string }).originalUrl;
  if (pathname === '/' && typeof original === 'string' && original !== raw) {
    const oq = original.indexOf('?');
    const originalPath = oq === -1 ? original : original.slice(0, oq);
    if (!originalPath.endsWith('/')) return target.slice(1);
  }
  return target;
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
