import type { IncomingMessage } from 'node:http';
import type { Dispatcher } from 'undici';
import type { Scheduler, TimerHandle } from '../../time.js';
import { RedundantProxyError } from '../../errors.js';
import { appendCopyHeaders } from '../../wire/protocol.js';
import { transition, type CopyState } from '../lifecycle.js';
import type { OutgoingCopy, RetryOptions, Upstream } from '../options.js';
import { LOCAL_REFUSAL, type CopyReport, type RaceObserver } from '../report.js';
import { rewriteCopy } from './hooks.js';
import type { RaceTrace } from '../tracing.js';

// One copy of a request, as undici's dispatch handler: the seam between the
// race and the wire. It turns undici's callbacks into the race's events
// according to where the copy stands (its lifecycle, lib/proxy/lifecycle.ts),
// and moves only through `to()`. What an event means for the race (adopt,
// hold, drain, stop) the race decides.

type Headers = Record<string, string | string[] | undefined>;

/** A copy's `error` when its per-try timeout gave it up (the `perTryTimeout` option). */
export const PER_TRY_TIMEOUT = 'per-try-timeout';

/** An unacceptable answer is kept (up to this size) to be passed through when no copy produced an acceptable one. */
export const FALLBACK_LIMIT = 1024 * 1024;

/** What every copy of a request shares. */
export interface CopyRequest {
  requestId: string;
  method: string;
  path: string;
  update: boolean;
  sessionId: string;
  sessionNew: boolean;
  /** Headers every copy shares (already cleaned), as a flat `[name, value, …]` list. */
  headers: string[];
  body: Buffer | null;
  dispatchers: Map<string, Dispatcher>;
  /** Bounds each copy's wait for its head and between its body's chunks, in ms. */
  timeout: number;
  secret: string | Buffer | undefined;
  /** The clock and timers of the race: its timeout, hedge delays, the losers' grace (lib/time.ts). */
  time: Scheduler;
  wallClock: () => number;
  /** Told what happens besides the report (one per proxy). */
  observer: RaceObserver;
  /** The update's scoped, hashed `Idempotency-Key`, sent to the workers (`x-redundant-idempotency`). */
  idempotencyKey?: string;
  /** SHA-256 of `body`, base64url, for the copies' signatures (only with a `secret`). */
  bodyHash?: string;
  /** Ms a copy may wait for its head before it is given up (the `perTryTimeout` option); 0 or absent: off. */
  perTryTimeout?: number;
  /** Retries of a copy whose connection failed before its request was sent (the `retry` option); absent: none. */
  retry?: Required<RetryOptions> | false;
  /** The `rewriteCopy` option: each copy's path and headers changed as it leaves. */
  rewriteCopy?: (copy: OutgoingCopy) => void;
  /** The client's request, shown to the hooks. */
  client?: IncomingMessage;
  /** The race's trace, when tracing is on: each copy's span and trace context (lib/proxy/tracing.ts). */
  trace?: RaceTrace | null;
}

/** The race, as its copies see it. */
export interface CopyHost {
  /** The copy's final head (not a 1xx), while it was sent or lingering. */
  head(copy: Copy, status: number, headers: Headers): void;
  /** A chunk of the adopted answer's body, going to the client. */
  stream(controller: Dispatcher.DispatchController, chunk: Buffer): void;
  /** A chunk of an answer read whole to be compared; the copy counted it. */
  reading(copy: Copy): void;
  /** The body of an answer being compared is complete. */
  answered(copy: Copy): void;
  /** The adopted answer's body is complete. */
  winnerEnded(): void;
  /** The body of an unacceptable answer is complete (it may be passed through). */
  rejectedEnded(copy: Copy): void;
  /** The copy failed before it was adopted (its connection, or its error answer was too large). */
  failed(copy: Copy, error: string): void;
  /** A loser given a grace failed within it. */
  lingerFailed(copy: Copy): void;
  /** A held answer broke before it went to the client. */
  heldBroken(copy: Copy, error: string): void;
  /** The adopted answer's body broke after its head went out. */
  winnerBroken(): void;
  /** The exchange with the upstream is over (for the count of copies in flight). */
  wireEnded(copy: Copy): void;
  /** A copy still waiting for its head at its per-try timeout. */
  tryTimedOut(copy: Copy): void;
}

export class Copy implements Dispatcher.DispatchHandler {
  #state: CopyState = 'idle';
  controller: Dispatcher.DispatchController | null = null;
  /** Set when the race wants this copy stopped before undici handed us a controller. */
  abortWanted = false;
  /** Dispatched and not ended yet. */
  live = false;
  startedAt = 0;
  chunks: Buffer[] = [];
  size = 0;
  headers: Headers = {};
  /** While holding: the body ended, or broke, before the head could be sent. */
  ended = false;
  broken = false;
  /** Under select: its answer was too large to buffer and compare. */
  tooLarge = false;
  /** Under select: when its head or the last chunk of its body came (clock ms). */
  lastDataAt = 0;
  /** undici started this dispatch of the copy on a connection: its request may have gone out. */
  #onWire = false;

  /** Its request may have reached the upstream (and an update's copy may have claimed, or committed). */
  get mayHaveRun(): boolean {
    return this.#onWire;
  }
  /** How the copy was dispatched, kept to dispatch it again after a connection failure. */
  #wire: { request: CopyRequest; options: Dispatcher.DispatchOptions; deadline: number } | null = null;
  /** The per-try timeout, and the wait before a retry. */
  #tryTimer: TimerHandle | null = null;
  #retryTimer: TimerHandle | null = null;

  constructor(
    readonly host: CopyHost,
    readonly upstream: Upstream,
    readonly report: CopyReport,
  ) {}

  /** Copy `index` (from 1) of a request, planned and not sent; its duplicate id stays unique across the attempts of an Idempotency-Key. */
  static planned(host: CopyHost, upstream: Upstream, index: number, requestId: string, attempt: number): Copy {
    const duplicateId = attempt > 1 ? `${requestId}.${attempt}-${index}` : `${requestId}.${index}`;
    return new Copy(host, upstream, { index, upstream: upstream.id, duplicateId, outcome: 'not-sent', sentAt: null, latency: null, status: null, error: null, hedged: false });
  }

  get state(): CopyState {
    return this.#state;
  }

  /** Moves the copy, through the table of legal moves (lib/proxy/lifecycle.ts). */
  to(next: CopyState): void {
    this.#state = transition(this.#state, next);
  }

  /**
   * Step "duplicate" and "send": the copy, with its own duplicate id and
   * signed headers, leaves for its upstream. Returns why undici refused it
   * at once, or the failure of the `rewriteCopy` hook (then it is done), or null.
   */
  send(request: CopyRequest, of: number, started: number, hedged: boolean): string | RedundantProxyError | null {
    let target = upstreamTarget(this.upstream.prefix, request.path);
    // Each copy gets its own list (its signed headers go on the end); the hook builds a new one itself.
    let headers = request.rewriteCopy === undefined ? request.headers.slice() : request.headers;
    if (request.rewriteCopy !== undefined) {
      // The gateway's hook, before signing: the signature covers the target it leaves.
      const rewritten = rewriteCopy(request, this, of, hedged, target, headers);
      if (rewritten instanceof RedundantProxyError) {
        this.report.error = 'rewriteCopy failed';
        this.to('done');
        return rewritten;
      }
      ({ target, headers } = rewritten);
    }
    request.trace?.copySent(this.report, this.upstream, of, hedged, headers);
    appendCopyHeaders(
      headers,
      {
        requestId: request.requestId,
        duplicateId: this.report.duplicateId,
        upstreamId: this.upstream.id,
        index: this.report.index,
        of,
        update: request.update,
        sessionId: request.sessionId,
        sessionNew: request.sessionNew,
        timestamp: request.wallClock(),
        idempotencyKey: request.idempotencyKey,
        method: request.method,
        target,
        bodyHash: request.bodyHash,
      },
      request.secret,
    );
    this.to('sent');
    this.startedAt = request.time.now();
    this.report.sentAt = this.startedAt - started;
    this.report.hedged = hedged;
    this.report.outcome = 'stopped';
    request.observer.copySent(request.requestId, this.report);
    const { method, body, timeout } = request;
    const options: Dispatcher.DispatchOptions = { path: target, method, headers, body, headersTimeout: timeout, bodyTimeout: timeout };
    this.#wire = { request, options, deadline: started + timeout };
    if (request.perTryTimeout) {
      // One per-try timeout for the copy, its retries included: it bounds
      // the wait for its head, however its connection was come by.
      this.#tryTimer = request.time.setTimeout(() => {
        this.#tryTimer = null;
        if (this.#state !== 'sent') return;
        this.#clearRetry();
        this.host.tryTimedOut(this);
      }, request.perTryTimeout);
    }
    return this.#dispatch();
  }

  /** Hands the copy to its upstream's pool; returns why undici refused it at once (then it is done), or null. */
  #dispatch(): string | null {
    const { request, options } = this.#wire!;
    try {
      this.live = true;
      this.#onWire = false;
      request.observer.copyStarted(this.upstream.id);
      request.dispatchers.get(this.upstream.id)!.dispatch(options, this);
      return null;
    } catch (err) {
      // undici refuses some requests synchronously (invalid header values):
      // the request's fault, not the upstream's (outlier ejection ignores it).
      this.wireDone();
      this.to('done');
      this.#clearTimers();
      return LOCAL_REFUSAL + errorName(err);
    }
  }

  /**
   * The `retry` option: the copy's connection failed before undici started
   * its request on it (refused, reset on accept, no address), so no byte of
   * it reached the upstream and no worker can have run it. It is sent again
   * to the same upstream (the race's other copies already cover the others;
   * its duplicate id and signature stay valid, since the upstream never saw
   * them) after a backoff that doubles, while the request's timeout leaves
   * room. True when a retry is scheduled.
   */
  #retryLater(): boolean {
    const wire = this.#wire;
    const retry = wire?.request.retry;
    if (!wire || !retry || this.#onWire) return false;
    const done = this.report.retries ?? 0;
    if (done >= retry.attempts) return false;
    const wait = Math.min(retry.maxBackoff, retry.backoff * 2 ** done);
    const { time } = wire.request;
    if (time.now() + wait >= wire.deadline) return false;
    this.report.retries = done + 1;
    this.#retryTimer = time.setTimeout(() => {
      this.#retryTimer = null;
      if (this.#state !== 'sent') return;
      const refused = this.#dispatch();
      if (refused !== null) this.host.failed(this, refused);
    }, wait);
    return true;
  }

  #clearRetry(): void {
    if (this.#retryTimer === null) return;
    this.#wire!.request.time.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }

  #clearTimers(): void {
    this.#clearRetry();
    if (this.#tryTimer === null) return;
    this.#wire!.request.time.clearTimeout(this.#tryTimer);
    this.#tryTimer = null;
  }

  /** Ends the copy's exchange: closes its connection (now, or as soon as undici hands over the controller). */
  abort(): void {
    this.to('done');
    this.#clearTimers();
    if (this.controller) this.controller.abort(new Error('stopped by redundant-proxy'));
    else this.abortWanted = true;
  }

  /**
   * Lets a paused answer's body flow again. Never at once: adoption runs
   * inside another copy's undici callback (its head arrived), that is inside
   * that connection's llhttp parser, and undici asserts that no parser is
   * running when one is resumed (`currentParser === null`). A microtask runs
   * after the socket's data handler has returned, outside every parser.
   */
  resume(): void {
    queueMicrotask(() => {
      if (this.#state === 'streaming' || this.#state === 'draining') this.controller?.resume();
    });
  }

  pause(): void {
    this.controller?.pause();
  }

  /** The exchange with the upstream is over (undici ends every dispatched request with one of its two last callbacks). */
  wireDone(): void {
    if (!this.live) return;
    this.live = false;
    this.host.wireEnded(this);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    this.#onWire = true;
    if (this.abortWanted) controller.abort(new Error('stopped by redundant-proxy'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, status: number, headers: Headers): void {
    // An interim answer (103 Early Hints, 102 Processing) is not an answer:
    // it is dropped, and the copy races on with its final one.
    if (status < 200) return;
    if (this.#state !== 'sent' && this.#state !== 'lingering') return;
    this.controller = controller;
    this.#clearTimers();
    this.headers = headers;
    this.host.head(this, status, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    switch (this.#state) {
      case 'streaming':
        this.host.stream(controller, chunk);
        break;
      case 'holding':
        this.chunks.push(chunk);
        break;
      case 'buffering':
        this.size += chunk.length;
        this.chunks.push(chunk);
        this.host.reading(this);
        break;
      case 'collecting':
        this.size += chunk.length;
        if (this.size > FALLBACK_LIMIT) {
          this.chunks = [];
          this.abort();
          this.host.failed(this, 'error response too large to pass through');
        } else this.chunks.push(chunk);
        break;
      default:
    }
  }

  onResponseEnd(): void {
    this.wireDone();
    const state = this.#state;
    if (state === 'holding') {
      this.ended = true;
      return;
    }
    if (state === 'buffering') {
      this.to('holding');
      this.ended = true;
      this.host.answered(this);
      return;
    }
    this.to('done');
    if (state === 'streaming') this.host.winnerEnded();
    else if (state === 'collecting') this.host.rejectedEnded(this);
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.wireDone();
    const state = this.#state;
    if (state === 'sent' && this.#retryLater()) return;
    this.#clearTimers();
    this.to('done');
    const error = errorName(err);
    switch (state) {
      case 'lingering':
        this.report.outcome = 'failed';
        this.report.error = error;
        this.host.lingerFailed(this);
        break;
      case 'holding':
        this.broken = true;
        this.host.heldBroken(this, error);
        break;
      case 'streaming':
        this.report.error = error; // its body broke after the head went out
        this.host.winnerBroken();
        break;
      case 'sent':
      case 'collecting':
      case 'buffering':
        this.chunks = [];
        this.host.failed(this, error);
        break;
      default:
    }
  }
}

/** The target a copy asks its upstream: its prefix, then the path (which may be only `?query`, or empty, under an Express mount). */
function upstreamTarget(prefix: string, path: string): string {
  const target = prefix + path;
  return target.startsWith('/') ? target : `/${target}`;
}

export function errorName(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e?.code ?? e?.message ?? String(err);
}
