import { createHash, randomUUID } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AlreadyAppliedError, codes, isRedundantProxyError, isSupersededError, RedundantProxyError, SupersededError } from '../errors.js';
import { Emitter, type Disposable } from '../events.js';
import type { SessionStore } from '../store/types.js';
import { H, readCopyHeaders, type CopyClaims } from '../wire/protocol.js';
import { withTimeout } from '../timeout.js';
import { commitGate, type Claim, type CommitGate } from './commit.js';
import { resolveWorkerOptions, type WorkerOptions } from './options.js';

export type { WorkerOptions } from './options.js';

/** The per-request handle: `ctx.state.redundant` (Koa) or `req.redundant` (Express). */
export interface RedundantHandle {
  /** The original request's id, shared by every copy. */
  requestId: string;
  /** This copy's own id. */
  duplicateId: string;
  /** The upstream id the proxy sent this copy to. */
  upstreamId: string;
  /** 1-based index of this copy among `of` planned copies. */
  copy: { index: number; of: number };
  update: boolean;
  /** True when the request did not come through the proxy. */
  direct: boolean;
  /**
   * The update's `Idempotency-Key` as the proxy scoped and hashed it (43
   * characters of base64url), the same for every retry with that key; null
   * without one. Keep it in a unique column next to the request id: if the
   * session store ever forgets the key (a Redis restarted without
   * persistence), a retry runs under a new request id, and only this column
   * can tell that it was applied (throw `AlreadyAppliedError`).
   */
  idempotencyKey: string | null;
  /** Aborted when the proxy stops this copy or the connection closes. */
  signal: AbortSignal;
  /**
   * The session's adopted state. Change `data` (or replace it with another
   * plain object); what it holds when the handler finishes is saved as this
   * copy's candidate, and becomes the session's state if the proxy adopts
   * this copy's answer.
   */
  session: { id: string; data: Record<string, unknown> };
  /**
   * Asks the store for the right to commit this request. Resolves when this
   * copy holds it; while another copy holds it, waits. Rejects with
   * `SupersededError` when another copy committed: roll back and rethrow.
   * Rejects with a `503` error (`RP_ERR_STORE_UNAVAILABLE`) when the store is
   * unreachable: never commit then.
   */
  claim(): Promise<Claim>;
  /**
   * `claim()`, then `fn(fence)`, then `confirm()`; if `fn` throws, `release()`
   * and rethrow. If `fn` throws `AlreadyAppliedError` (the request's unique
   * row was already in the database: an earlier copy committed, then died
   * before confirming), the request is recorded as committed instead and the
   * copy answers `x-redundant-commit: applied`. A copy stopped by the proxy
   * while it waited for the claim never runs `fn`.
   */
  commitOnce<T>(fn: (fence: number) => T | Promise<T>): Promise<T>;
}

export interface WorkerErrorEvent {
  requestId: string;
  /** What failed: recording the copy, loading the session, saving the candidate. */
  operation: 'recordCopy' | 'getSession' | 'saveCandidate';
  error: unknown;
}

export interface WorkerEvents {
  /** A bookkeeping operation failed; the request was still served. */
  error: WorkerErrorEvent;
  /**
   * A copy was refused with 401 before the handler ran; or a signed copy's
   * body turned out not to be the one signed (or did not arrive in full
   * before a claim): nothing of it may commit.
   */
  refused: { code: string; reason: string };
  /**
   * A copy's commit stands although the store did not record it: its lease
   * had run out and another copy had taken the claim over (`lease-lost`), or
   * the store could not be reached (`store-unavailable`). Any other copy's
   * commit must then be refused by the database (a unique row per request
   * id), or the update is applied twice. Worth an alert: for `lease-lost`,
   * raise `lease` above your slowest commit.
   */
  lateConfirm: { requestId: string; duplicateId: string; fence: number; reason: 'lease-lost' | 'store-unavailable'; error: unknown };
}

export interface RedundantWorker {
  (ctx: KoaWorkerContext, next: () => Promise<unknown>): Promise<void>;
  (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void;
  on<K extends keyof WorkerEvents>(name: K, listener: (event: WorkerEvents[K]) => void): Disposable;
  /**
   * Express only: an error-handling middleware that answers this library's
   * errors (`SupersededError` → 409 `lost`, `AlreadyAppliedError` → 409
   * `applied`, store unavailable → 503) as JSON with their `code`, answers
   * 409 `lost` for any error of a copy that lost
   * the commit, and drops the error of a copy the proxy stopped (its `signal`'s
   * reason) without answering; other errors go on to your handlers. Mount it
   * after your routes: `app.use(worker.errorHandler)`. (Koa needs nothing:
   * the worker does the same itself.)
   */
  errorHandler: (err: unknown, req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;
}

/** The part of a Koa context the worker uses. */
export interface KoaWorkerContext {
  req: IncomingMessage;
  /** The request target as received, before a mounted sub-app rewrote `url`. */
  originalUrl?: string;
  res: ServerResponse;
  state: Record<string, unknown>;
  status: number;
  body: unknown;
  set(name: string, value: string): void;
}

interface Prepared {
  handle: RedundantHandle;
  gate: CommitGate;
  /** JSON of the session as loaded; undefined when candidates must not be saved. */
  sessionBefore: string | undefined;
  /** Whether the store had seen this copy before, or the error recording it. */
  recorded: Promise<boolean | Error>;
  /** A signed copy's body check; undefined without a secret or for a direct request. */
  body: BodyCheck | undefined;
}

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/**
 * Middleware for each application server: verifies the copy's signed
 * headers, records the copy (claim 1 (c)), and exposes the per-request handle.
 */
export function redundantWorker(options: WorkerOptions): RedundantWorker {
  const { id, store, secret, maxSkew, storeTimeout, lease, now } = resolveWorkerOptions(options);

  // Signed copies this process has accepted, for as long as their signature
  // is valid: a replay is refused at once, without a store round trip. (A
  // replay to another upstream fails the signature's upstream binding; one to
  // another process of this upstream is caught by the store's copy record.)
  const seen = secret === undefined ? null : new LRUCache<string, true>({ max: 100_000, ttl: 2 * maxSkew, perf: { now } });
  const events = new Emitter<WorkerEvents>();
  let warned = false;
  const report = (requestId: string, operation: WorkerErrorEvent['operation'], error: unknown) => {
    if (events.has('error')) events.emit('error', { requestId, operation, error });
    else if (!warned) {
      warned = true;
      console.warn(`redundant-proxy worker: ${operation} failed (further failures are silent without an 'error' listener):`, error);
    }
  };

  /** The commit gate of one copy; a confirm that lands late becomes a `lateConfirm` event. */
  function gateFor(requestId: string, duplicateId: string, signal: AbortSignal, res: ServerResponse, body?: BodyCheck): CommitGate {
    return commitGate({
      store,
      requestId,
      duplicateId,
      leaseMs: lease,
      storeTimeout,
      signal,
      res,
      // A signed copy claims only once its body arrived whole and matched the signature.
      mayClaim: body && (() => body.verified()),
      onLateConfirm: (fence, reason, error) => events.emit('lateConfirm', { requestId, duplicateId, fence, reason, error }),
    });
  }

  function refuse(code: (typeof codes)[keyof typeof codes], reason: string): RedundantProxyError {
    events.emit('refused', { code, reason });
    return new RedundantProxyError(code, `copy refused: ${reason}`, { status: 401 });
  }

  /**
   * Checks the copy, records it and loads the session. Rejects with a 401
   * error for a refused copy. `target` is the request target as received
   * (Express: `req.originalUrl`, as a mounted sub-app rewrites `req.url`).
   * Everything up to the body check's installation runs synchronously, in
   * the tick the request arrived in when the worker is the first middleware.
   */
  async function prepare(req: IncomingMessage, res: ServerResponse, target: string): Promise<Prepared> {
    const controller = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) controller.abort(new RedundantProxyError(codes.CLOSED, 'the copy was stopped or the connection closed'));
    });
    const read = readCopyHeaders(req.headers, { method: req.method ?? '', target }, secret, now(), maxSkew);
    if (!read.ok) {
      if (read.reason !== 'absent') {
        throw read.reason === 'stale'
          ? refuse(codes.STALE_COPY, 'its timestamp is outside the accepted skew')
          : refuse(
              codes.BAD_SIGNATURE,
              read.reason === 'unsigned'
                ? 'it is not signed'
                : read.reason === 'malformed'
                  ? 'its headers are malformed'
                  : 'it does not match its signature (its method, target or signed headers differ from what the proxy signed, or another key signed it)',
            );
      }
      const requestId = randomUUID();
      const gate = gateFor(requestId, requestId, controller.signal, res);
      const handle = makeHandle(
        { requestId, duplicateId: requestId, upstreamId: id, copy: { index: 1, of: 1 }, update: !READ_METHODS.has(req.method ?? 'GET'), direct: true, idempotencyKey: null, signal: controller.signal, session: { id: '', data: {} } },
        gate,
      );
      return { handle, gate, sessionBefore: undefined, recorded: Promise.resolve(false), body: undefined };
    }
    const c: CopyClaims = read.claims;
    if (secret !== undefined && c.upstreamId !== id) throw refuse(codes.WRONG_UPSTREAM, `it is addressed to upstream "${c.upstreamId}", this worker is "${id}"`);
    if (seen) {
      if (seen.has(c.duplicateId)) throw refuse(codes.REPLAYED_COPY, 'this copy was already received');
      seen.set(c.duplicateId, true);
    }
    // The body is signed by its hash: checked as it streams in (see checkBody).
    let body: BodyCheck | undefined;
    if (secret !== undefined) {
      const checked = checkBody(req, res, c.bodyHash!, controller.signal, (reason) => refuse(codes.BAD_SIGNATURE, reason));
      if (checked instanceof RedundantProxyError) throw checked;
      body = checked;
    }
    // claim 1 (c): this server received this copy. Resolves to whether the
    // copy was seen before, or to the store's error (handled at once, so a
    // failure is never an unhandled rejection while the session loads).
    const recorded: Promise<boolean | Error> = withTimeout(
      store.recordCopy({ requestId: c.requestId, duplicateId: c.duplicateId, upstreamId: c.upstreamId, index: c.index, of: c.of, update: c.update, sessionId: c.sessionId }),
      storeTimeout,
      'recordCopy',
    ).then(
      (r) => r.duplicate,
      (err: unknown) => {
        report(c.requestId, 'recordCopy', err);
        return err instanceof Error ? err : new Error(String(err));
      },
    );
    // The session loads while the copy is recorded: one round trip of latency, not two.
    const loading =
      c.sessionId && !c.sessionNew
        ? withTimeout(store.getSession(c.sessionId), storeTimeout, 'getSession').then(
            (s) => ({ ok: true as const, data: s ? s.data : {} }),
            (err: unknown) => ({ ok: false as const, err }),
          )
        : undefined;
    // Reads do not wait for the record (it is off the critical path); a
    // replay is still caught before its session candidate could be saved.
    // Updates wait: their commit arbitration needs the record first.
    if (c.update) {
      const duplicate = await recorded;
      if (duplicate instanceof Error) {
        // Fail closed: an update the store does not know of cannot be arbitrated.
        throw new RedundantProxyError(codes.STORE_UNAVAILABLE, 'the session store is unavailable; the update was not processed', { status: 503, cause: duplicate });
      }
      if (duplicate && secret !== undefined) throw refuse(codes.REPLAYED_COPY, 'this copy was already received');
    }
    const gate = gateFor(c.requestId, c.duplicateId, controller.signal, res, body);
    const handle = makeHandle(
      { requestId: c.requestId, duplicateId: c.duplicateId, upstreamId: c.upstreamId, copy: { index: c.index, of: c.of }, update: c.update, direct: false, idempotencyKey: c.idempotencyKey ?? null, signal: controller.signal, session: { id: c.sessionId, data: {} } },
      gate,
    );
    let sessionBefore: string | undefined;
    if (c.sessionId && c.sessionNew) sessionBefore = '{}';
    else if (loading) {
      const loaded = await loading;
      if (loaded.ok) {
        handle.session.data = loaded.data;
        sessionBefore = JSON.stringify(loaded.data);
      } else {
        // Without the adopted state, a candidate would overwrite it with a guess: serve, but save nothing.
        report(c.requestId, 'getSession', loaded.err);
      }
    }
    // The body may have ended, forged, while the copy was recorded: the handler must not run then.
    if (body?.failed) throw body.failed;
    return { handle, gate, sessionBefore, recorded, body };
  }

  /**
   * The session data to save as this copy's candidate: what the handler left
   * in it, when that differs from what was loaded; else undefined.
   */
  function sessionToSave(p: Prepared): Record<string, unknown> | undefined {
    const { handle, sessionBefore } = p;
    // A stopped copy's answer never reaches the proxy, so its candidate could never be adopted.
    if (sessionBefore === undefined || !handle.session.id || handle.signal.aborted) return undefined;
    let after: string;
    try {
      const data = handle.session.data;
      if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new TypeError('session.data must be a plain object');
      after = JSON.stringify(data);
    } catch (err) {
      report(handle.requestId, 'saveCandidate', err);
      return undefined;
    }
    return after === sessionBefore ? undefined : (JSON.parse(after) as Record<string, unknown>);
  }

  /**
   * Saves this copy's session candidate. Resolves true when it was saved (the
   * response then says so, and the proxy records the adoption before
   * answering: read-your-writes).
   */
  async function saveSession(p: Prepared, data: Record<string, unknown>): Promise<boolean> {
    const { handle } = p;
    // A replayed copy must not overwrite the real copy's candidate.
    if ((await p.recorded) === true) {
      events.emit('refused', { code: codes.REPLAYED_COPY, reason: 'a replayed read tried to save a session candidate' });
      return false;
    }
    try {
      await withTimeout(store.saveCandidate(handle.session.id, handle.requestId, handle.duplicateId, data), storeTimeout, 'saveCandidate');
      return true;
    } catch (err) {
      report(handle.requestId, 'saveCandidate', err);
      return false;
    }
  }

  const worker = function redundantWorkerMiddleware(a: IncomingMessage | KoaWorkerContext, b: unknown, c?: unknown): Promise<void> | void {
    if (b !== null && typeof b === 'object' && typeof (b as ServerResponse).writeHead === 'function') {
      return express(a as IncomingMessage & { redundant?: RedundantHandle }, b as ServerResponse, c as (err?: unknown) => void);
    }
    return koa(a as KoaWorkerContext, b as () => Promise<unknown>);
  } as RedundantWorker;

  /**
   * Holds the response's end until the session candidate is saved, so the
   * answer never outruns its state, and stamps the commit outcome on it
   * whichever handler (or error handler) ends the response.
   */
  function holdEnd(res: ServerResponse, p: Prepared): void {
    const end = res.end;
    res.end = function (this: ServerResponse, ...args: unknown[]) {
      res.end = end;
      p.gate.mark(res);
      finishSession(p).then((saved) => {
        p.gate.mark(res);
        if (saved && !res.headersSent) res.setHeader(H.sessionChanged, '1');
        (end as (...a: unknown[]) => void).apply(res, args);
      });
      return this;
    } as ServerResponse['end'];
  }

  /**
   * Saves the copy's session candidate, if it has one worth keeping. In an
   * update, a session change is arbitrated like a commit: a copy that did
   * not commit through `commitOnce` claims and confirms the request for its
   * session change, so exactly one copy's change wins and the proxy can adopt
   * that copy's answer at once (`x-redundant-commit: won`) instead of
   * waiting for every copy; the others answer `lost` and save nothing.
   */
  async function finishSession(p: Prepared): Promise<boolean> {
    // A copy that lost the commit has no session state worth keeping.
    if (p.gate.outcome === 'lost') return false;
    const data = sessionToSave(p);
    if (data === undefined) return false;
    // A session change counts only from a copy whose body is the signed one
    // (a read's too: it is saved without a claim).
    if (p.body) {
      try {
        await p.body.verified();
      } catch {
        return false;
      }
    }
    const { handle, gate } = p;
    if (handle.update && !handle.direct && gate.outcome === undefined) {
      try {
        const claim = await gate.claim();
        await claim.confirm();
      } catch (err) {
        // Lost (the gate marks it), stopped, or the store is down: without
        // the arbitration the change must not become the session's state.
        if (gate.outcome !== 'lost' && !handle.signal.aborted) report(handle.requestId, 'saveCandidate', err);
        return false;
      }
    }
    return saveSession(p, data);
  }

  async function koa(ctx: KoaWorkerContext, next: () => Promise<unknown>): Promise<void> {
    ctx.set(H.worker, '1');
    let p: Prepared;
    try {
      // Koa's ctx.req.url is rewritten by koa-mount; originalUrl is the target as received.
      p = await prepare(ctx.req, ctx.res, ctx.originalUrl ?? ctx.req.url ?? '');
    } catch (err) {
      if (!(err instanceof RedundantProxyError)) throw err;
      ctx.status = err.status;
      ctx.body = err.toJSON();
      // A refusal is not an answer: the proxy counts it as this upstream's failure.
      if (err.status === 401) ctx.set(H.refused, err.code);
      return;
    }
    ctx.state.redundant = p.handle;
    holdEnd(ctx.res, p);
    try {
      await next();
    } catch (err) {
      const answer = answerFor(err, p);
      if (answer === 'stopped') return;
      const lost = isSupersededError(answer);
      // Koa answers its other errors itself (the app's error handling).
      if (!answer || (!lost && answer.code !== codes.STORE_UNAVAILABLE && answer.code !== codes.ALREADY_APPLIED)) throw err;
      ctx.status = lost ? 409 : answer.status;
      ctx.body = answer.toJSON();
      if (lost) ctx.set(H.commit, 'lost');
      else if (answer.code === codes.ALREADY_APPLIED) ctx.set(H.commit, 'applied');
    }
  }

  /**
   * What a copy answers for an error its handler threw, in Koa and Express
   * alike: nothing when the proxy stopped the copy (nobody is listening);
   * `SupersededError` (409 `lost`, never adopted) when it lost the commit,
   * whatever it threw after learning it; this library's own error as it is;
   * undefined for any other error (the app's to answer).
   */
  function answerFor(err: unknown, p: Prepared | undefined): 'stopped' | RedundantProxyError | undefined {
    if (p?.handle.signal.aborted && err === p.handle.signal.reason) return 'stopped';
    // A body that failed its signature took its connection down with it: whatever the handler threw, nobody listens.
    if (p?.body?.failed) return 'stopped';
    if (isSupersededError(err)) return err;
    if (p?.gate.outcome === 'lost') return new SupersededError();
    // Found applied by an earlier copy: whatever the handler threw after that.
    if (p?.gate.outcome === 'applied') return isRedundantProxyError(err) && err.code === codes.ALREADY_APPLIED ? (err as RedundantProxyError) : new AlreadyAppliedError();
    // By brand, not instanceof: the error may come from another copy of this package.
    const e = err as RedundantProxyError;
    return isRedundantProxyError(err) && typeof e.status === 'number' && typeof e.toJSON === 'function' ? e : undefined;
  }

  /** Express: each request's copy state, for errorHandler. */
  const preparedFor = new WeakMap<IncomingMessage, Prepared>();

  function express(req: IncomingMessage & { redundant?: RedundantHandle; originalUrl?: string }, res: ServerResponse, next: (err?: unknown) => void): void {
    res.setHeader(H.worker, '1');
    // A sub-app rewrites req.url; originalUrl is the target as received.
    prepare(req, res, req.originalUrl ?? req.url ?? '').then(
      (p) => {
        req.redundant = p.handle;
        preparedFor.set(req, p);
        holdEnd(res, p);
        next();
      },
      (err) => {
        if (!(err instanceof RedundantProxyError)) return next(err);
        const body = JSON.stringify(err.toJSON());
        const headers: Record<string, string> = { 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(body)) };
        // A refusal is not an answer: the proxy counts it as this upstream's failure.
        if (err.status === 401) headers[H.refused] = err.code;
        res.writeHead(err.status, headers);
        res.end(body);
      },
    );
  }

  worker.on = (name, listener) => events.on(name, listener);
  worker.errorHandler = (err, req, res, next) => {
    if (res.headersSent) return next(err);
    const answer = answerFor(err, preparedFor.get(req));
    if (answer === 'stopped') {
      res.destroy();
      return;
    }
    if (!answer) return next(err);
    const lost = isSupersededError(answer);
    const body = JSON.stringify(answer.toJSON());
    const headers: Record<string, string> = { 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(body)) };
    if (lost) headers[H.commit] = 'lost';
    else if (answer.code === codes.ALREADY_APPLIED) headers[H.commit] = 'applied';
    res.writeHead(lost ? 409 : answer.status, headers);
    res.end(body);
  };
  return worker;
}

function makeHandle(fields: Omit<RedundantHandle, 'claim' | 'commitOnce'>, gate: CommitGate): RedundantHandle {
  return { ...fields, claim: () => gate.claim(), commitOnce: (fn) => gate.commitOnce(fn) };
}

/**
 * Milliseconds a claim (or a session change) waits for a signed copy's body
 * to arrive in full. The proxy sends the whole body at once, so a legitimate
 * copy's body is in well before this; the bound keeps a sender that stalls
 * its body from holding a handler (and its transaction) in `claim()`.
 */
const BODY_WAIT_MS = 5000;

/** The check of a signed copy's body against the hash in its signature. */
interface BodyCheck {
  /** The refusal, once the body ended and did not match (the request was destroyed with it). */
  readonly failed: RedundantProxyError | undefined;
  /**
   * Resolves once the whole body arrived and matched. Rejects with the
   * refusal when it did not match or did not arrive in full within
   * `BODY_WAIT_MS`, or with the signal's reason when the copy was stopped.
   */
  verified(): Promise<void>;
}

/**
 * Binds a signed copy to its body, which the worker cannot check before the
 * handler runs without buffering it. Instead, every chunk is hashed on its
 * way into the request stream: `IncomingMessage` is a Readable that the HTTP
 * parser feeds through `push(chunk)`, and `push(null)` at the end. The end is
 * only let through when the hash matches the signed one; otherwise the
 * request is destroyed with the refusal, so that a body parser (or a
 * `for await` over the request) fails and the handler never sees a complete
 * forged body. A handler may ignore the body: the commit gate waits for
 * `verified()` before any claim, so a forged body can never commit, whoever
 * reads it. Nothing is read on the application's behalf: a body the handler
 * leaves unread past the stream's buffer (16 KiB) never ends, and its claim
 * is refused after `BODY_WAIT_MS` (read the body before committing).
 *
 * Data that reached the stream before the worker ran (a middleware before it
 * awaited something) is taken out with `read()`, hashed and put back with
 * `unshift()`, unseen by anyone (and the rest drained if left unread, as
 * node:http does for an untouched request). Data already handed to someone
 * else (a body parser mounted before the worker) cannot be checked: the copy
 * is refused, and so is one whose buffered data is already flowing or decoded.
 *
 * Returns the check, or the refusal when the body cannot be checked.
 */
function checkBody(req: IncomingMessage, res: ServerResponse, expected: string, signal: AbortSignal, refuse: (reason: string) => RedundantProxyError): BodyCheck | RedundantProxyError {
  const buffered = req.readableLength;
  if (req.readableDidRead || (buffered > 0 && (req.readableFlowing === true || req.readableEncoding !== null))) {
    return refuse('its body was read before the worker could check it against the signature (mount the worker before any body parser)');
  }
  const hash = createHash('sha256');
  let failed: RedundantProxyError | undefined;
  /** Why claims are refused although the copy is no forgery: its body was discarded unchecked. */
  let unchecked: RedundantProxyError | undefined;
  let ended = false;
  const waiters = new Set<() => void>();
  const push = req.push;
  /** The body ended: true when it is the signed one; else the request is destroyed. */
  const end = (): boolean => {
    req.push = push;
    ended = true;
    if (hash.digest('base64url') !== expected) {
      // Once the answer is done, node:http discards a body nobody read: the
      // parser stops pushing it (IncomingMessage#_dumped, set by _dump(),
      // internal but stable since node 0.x). Then the hash lacks the rest,
      // and nobody saw it either: no forgery to report, no connection to
      // close; only a later claim is refused, as nothing was checked.
      if ((req as { _dumped?: boolean })._dumped === true) {
        unchecked = new RedundantProxyError(codes.BAD_SIGNATURE, 'copy refused: its body was discarded unread, so it was not checked against its signature', { status: 401 });
      } else {
        failed = refuse('its body does not match its signature');
        req.destroy(failed);
      }
    }
    for (const wake of waiters) wake();
    waiters.clear();
    return failed === undefined;
  };
  req.push = function (this: IncomingMessage, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null) return end() && push.call(this, null);
    if (typeof chunk === 'string') hash.update(chunk, encoding ?? 'utf8');
    else hash.update(chunk as Uint8Array);
    return push.call(this, chunk, encoding);
  };
  if (buffered > 0) {
    // Paused and unread: read() hands back all of it at once, and unshift() returns it unseen.
    const head = req.read() as Buffer;
    hash.update(head);
    if (req.complete && !end()) return failed!;
    req.unshift(head);
    // Having read, the request counts as consumed: node:http no longer drains
    // a body the handler left unread when the answer is done, and the next
    // request on the connection would wait behind it. Drain it as node would.
    if (!req.complete) {
      res.once('finish', () => {
        if (!req.readableEnded && req.readableFlowing !== true && req.listenerCount('data') === 0 && req.listenerCount('readable') === 0) req.resume();
      });
    }
  } else if (req.complete) {
    // The whole (empty) body was in before the worker ran.
    end();
    if (failed) return failed;
  }
  return {
    get failed() {
      return failed;
    },
    verified(): Promise<void> {
      if (ended) return failed || unchecked ? Promise.reject(failed ?? unchecked) : Promise.resolve();
      if (signal.aborted) return Promise.reject(signal.reason);
      return new Promise((resolve, reject) => {
        const settle = (err?: unknown) => {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          waiters.delete(wake);
          if (err === undefined) resolve();
          else reject(err);
        };
        const wake = () => settle(failed ?? unchecked);
        const onAbort = () => settle(signal.reason);
        const timer = setTimeout(() => settle(refuse(`its body did not arrive in full within ${BODY_WAIT_MS} ms, so it cannot be checked against its signature`)), BODY_WAIT_MS);
        waiters.add(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    },
  };
}
