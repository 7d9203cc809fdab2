import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../errors.js';
import type { Scheduler, TimerHandle } from '../time.js';
import { appendCopyHeaders, H } from '../wire/protocol.js';
import { forwardResponseHeaders } from './headers.js';
import type { ResolvedSelect, SelectAnswer, Upstream, UpstreamResponse } from './options.js';
import { detachedResponse, sendError } from './respond.js';
import { transition, type CopyState } from './lifecycle.js';
import { LOCAL_REFUSAL, type CopyOutcome, type CopyReport, type RaceOutcome, type RaceReport } from './report.js';

export type { CopyOutcome, CopyReport, RaceOutcome, RaceReport } from './report.js';

// The race: steps "duplicate" and "send" (docs/design.md), then "choose": adopt the first
// acceptable answer and stream it to the client, stop every other copy.
//
// Stopping a copy that has not answered yet means aborting it: over HTTP/1.1
// the only way to tell an upstream to stop is to close the connection. A copy
// that has already sent its head with a small body is drained instead, which
// keeps its pooled connection warm; a large or unknown-length body is aborted.
const DRAIN_LIMIT = 64 * 1024;
// An upstream's own error response is kept (up to this size) so that it can
// be passed through when no copy produced an acceptable answer.
const FALLBACK_LIMIT = 1024 * 1024;
// A loser that has not answered when the winner does (a read's, or an
// update's once another copy committed) is given a short grace to answer,
// then aborted. Copies to equally fast replicas usually answer within it (an
// update's with `x-redundant-commit: lost`) and are drained, so their
// connections stay pooled; only a copy that is really slow (in the tail)
// costs its connection, and for an update its cancel hook. The grace is half
// the winner's latency, within these bounds.
const LINGER_MIN_MS = 2;
const LINGER_MAX_MS = 10;

export interface RaceInput {
  requestId: string;
  method: string;
  path: string;
  update: boolean;
  sessionId: string;
  sessionNew: boolean;
  /** Headers every copy shares (already cleaned), as a flat `[name, value, …]` list. */
  headers: string[];
  body: Buffer | null;
  /** Upstreams to use, in order: copy i goes to targets[i]. */
  targets: Upstream[];
  dispatchers: Map<string, Dispatcher>;
  hedgeDelay: number;
  /** Asked before each hedged copy: false when the hedge budget is spent. */
  mayHedge: () => boolean;
  timeout: number;
  accept: (response: UpstreamResponse) => boolean;
  /** How a read's answer is chosen. Updates ignore it: the committed copy's answer wins. */
  select: ResolvedSelect;
  /** Largest answer buffered for a quorum or a select function to compare. */
  maxAnswerSize: number;
  /** The select function threw, or returned something it was not given. */
  onSelectThrew?: (requestId: string, err: unknown) => void;
  secret: string | Buffer | undefined;
  /** The clock and timers of the race: its timeout, hedge delays, the losers' grace (lib/time.ts). */
  time: Scheduler;
  wallClock: () => number;
  res: ServerResponse;
  onCopySent?: (copy: CopyReport) => void;
  /**
   * Called when a copy wins, before its head goes to the client. May return
   * headers to add, or a promise of them: the head (and body) wait for it.
   */
  beforeHead?: (copy: CopyReport, headers: Record<string, string | string[] | undefined>) => Record<string, string | string[]> | Promise<Record<string, string | string[]>> | undefined;
  onAcceptThrew?: (err: unknown) => void;
  /** Something went wrong that does not fail the request (it becomes an `error` event). */
  onError?: (requestId: string, err: unknown) => void;
  /** An upstream answered with `x-redundant-worker`: it runs the worker. */
  onWorkerSeen?: (upstreamId: string) => void;
  /** A copy was handed to its upstream's connection pool, and its exchange ended (answered whole, failed or stopped): the circuit breaker's count. */
  onCopyStart?: (upstreamId: string) => void;
  onCopyEnd?: (upstreamId: string) => void;
  /** A worker refused a copy (`x-redundant-refused: <code>`): its secret or id does not match the proxy's. */
  onRefused?: (upstreamId: string, code: string) => void;
  /** A copy was stopped because another copy of the update committed. */
  onCancelled?: (copy: CopyReport, committed: CopyReport) => void;
  /**
   * Updates only: asked before answering a failure or a timeout, and before
   * adopting, at the timeout, an answer that did not commit (`adopting`: the
   * proxy must then make sure no copy still out can commit). Resolves an
   * error to answer with instead (the update committed but its answer was
   * lost, or a copy holds the commit and its outcome is not known), or
   * undefined to go on.
   */
  beforeFailure?: (adopting: boolean) => Promise<RedundantProxyError | undefined>;
  /**
   * Runs once the adopted answer's body is complete, before its last bytes
   * go to the client (idempotency: the key is completed before the client
   * can retry). The last chunk waits for it.
   */
  beforeEnd?: (captured: CapturedAnswer | null) => Promise<void>;
  /** The update's scoped, hashed `Idempotency-Key`, sent to the workers (`x-redundant-idempotency`). */
  idempotencyKey?: string;
  /** SHA-256 of `body`, base64url, for the copies' signatures (only with a `secret`). */
  bodyHash?: string;
  /** Which attempt of an `Idempotency-Key` this race is (duplicate ids stay unique when a retry resumes a request id). @default 1 */
  attempt?: number;
  /** Bytes of the adopted answer's body to keep for `captured` (idempotency); 0 keeps nothing. */
  capture: number;
}

/** The adopted answer, as sent to the client, when `capture` asked for it. */
export interface CapturedAnswer {
  status: number;
  headers: Record<string, string | string[]>;
  /** null when the body was larger than `capture`. */
  body: Buffer | null;
}


class Copy implements Dispatcher.DispatchHandler {
  #state: CopyState = 'idle';

  get state(): CopyState {
    return this.#state;
  }

  /** Moves the copy, through the table of legal moves (lib/proxy/lifecycle.ts). */
  to(next: CopyState): void {
    this.#state = transition(this.#state, next);
  }

  controller: Dispatcher.DispatchController | null = null;
  /** Set when the race wants this copy stopped before undici handed us a controller. */
  abortWanted = false;
  startedAt = 0;
  readonly report: CopyReport;
  chunks: Buffer[] = [];
  size = 0;
  headers: Record<string, string | string[] | undefined> = {};
  /** While holding: the body ended, or broke, before the head could be sent. */
  ended = false;
  broken = false;
  /** Under select: the complete answer, as the select function is shown it. */
  answer: SelectAnswer | null = null;
  /** Under a quorum: the answers this one agrees with (itself included). */
  group: Copy[] | null = null;
  /** Under select: its answer was too large to buffer and compare. */
  tooLarge = false;
  /** Under select: when its head or the last chunk of its body came (clock ms). */
  lastDataAt = 0;

  constructor(
    readonly race: Race,
    readonly upstream: Upstream,
    index: number,
  ) {
    this.report = {
      index,
      upstream: upstream.id,
      duplicateId: (race.input.attempt ?? 1) > 1 ? `${race.input.requestId}.${race.input.attempt}-${index}` : `${race.input.requestId}.${index}`,
      outcome: 'not-sent',
      sentAt: null,
      latency: null,
      status: null,
      error: null,
      hedged: false,
    };
  }

  /** Stops the copy: aborts it, or lets a small answer drain to keep its connection. */
  stop(): void {
    switch (this.state) {
      case 'sent':
      case 'lingering':
        this.report.outcome = 'stopped';
        this.abort();
        break;
      case 'collecting':
        this.report.outcome = 'rejected';
        this.chunks = [];
        if (this.drainable()) this.to('draining');
        else this.abort();
        break;
      case 'buffering':
        // Answering, but another answer was chosen first.
        this.chunks = [];
        if (this.drainable()) {
          this.report.outcome = 'drained';
          this.to('draining');
        } else this.abort();
        break;
      case 'holding':
      case 'streaming':
        this.abort();
        break;
      default:
    }
  }

  abort(): void {
    this.to('done');
    if (this.controller) this.controller.abort(new Error('stopped by redundant-proxy'));
    else this.abortWanted = true;
  }

  /**
   * Lets a held answer's body flow again. Never at once: adoption runs inside
   * another copy's undici callback (its head arrived), that is inside that
   * connection's llhttp parser, and undici asserts that no parser is running
   * when one is resumed (`currentParser === null`). A microtask runs after the
   * socket's data handler has returned, outside every parser.
   */
  resume(): void {
    queueMicrotask(() => {
      if (this.state === 'streaming' || this.state === 'draining') this.controller?.resume();
    });
  }

  drainable(): boolean {
    const cl = this.headers['content-length'];
    return typeof cl === 'string' && Number(cl) <= DRAIN_LIMIT;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.abortWanted) controller.abort(new Error('stopped by redundant-proxy'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, status: number, headers: Record<string, string | string[] | undefined>): void {
    // An interim answer (103 Early Hints, 102 Processing) is not an answer:
    // it is dropped, and the copy races on with its final one.
    if (status < 200) return;
    if (this.state !== 'sent' && this.state !== 'lingering') return;
    this.controller = controller;
    this.headers = headers;
    this.report.status = status;
    this.report.latency = this.race.input.time.now() - this.startedAt;
    if (headers[H.worker] === '1') this.race.input.onWorkerSeen?.(this.upstream.id);
    // Another copy committed already: the store's arbitration failed.
    if (this.race.committed && headers[H.commit] === 'won') this.race.secondCommit(this);
    if (this.state === 'lingering') {
      if (this.report.error === 'timeout') this.report.error = null; // it did answer
      // Answered within its grace: it stopped by itself. Drain it (keeping
      // the connection) if small. An update's copy says it lost the commit.
      const lost = headers[H.commit] === 'lost';
      if (this.drainable()) {
        this.to('draining');
        this.report.outcome = lost ? 'lost' : 'drained';
      } else {
        this.stop();
        if (lost) this.report.outcome = 'lost';
      }
      this.race.lingerSettled();
      return;
    }
    this.race.onHead(this, status, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    switch (this.state) {
      case 'streaming': {
        const res = this.race.input.res;
        this.race.keep(chunk);
        const out = this.race.holdLast(chunk);
        if (out && !res.write(out)) {
          controller.pause();
          res.once('drain', () => controller.resume());
        }
        break;
      }
      case 'holding':
        this.chunks.push(chunk);
        break;
      case 'buffering':
        this.lastDataAt = this.race.input.time.now();
        this.size += chunk.length;
        if (this.size > this.race.input.maxAnswerSize) this.race.tooLarge(this);
        else this.chunks.push(chunk);
        break;
      case 'collecting':
        this.size += chunk.length;
        if (this.size > FALLBACK_LIMIT) {
          this.chunks = [];
          this.abort();
          this.race.onFailed(this, 'error response too large to pass through');
        } else this.chunks.push(chunk);
        break;
      default:
    }
  }

  /** The exchange with the upstream is over (undici ends every dispatched request with one of these two). */
  wireDone(): void {
    if (!this.live) return;
    this.live = false;
    this.race.input.onCopyEnd?.(this.upstream.id);
  }

  /** Dispatched and not ended yet. */
  live = false;

  onResponseEnd(): void {
    this.wireDone();
    if (this.state === 'holding') {
      this.ended = true;
      return;
    }
    if (this.state === 'buffering') {
      this.to('holding');
      this.ended = true;
      this.race.onAnswer(this);
      return;
    }
    const state = this.state;
    this.to('done');
    if (state === 'streaming') this.race.onWinnerEnd();
    else if (state === 'collecting') this.race.onRejected(this);
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.wireDone();
    const state = this.state;
    this.to('done');
    if (state === 'lingering') {
      this.report.outcome = 'failed';
      this.report.error = errorName(err);
      this.race.lingerFailed(this);
    } else if (state === 'holding') {
      this.broken = true;
      this.race.onHeldBroken(this, errorName(err));
    } else if (state === 'streaming') {
      this.report.error = errorName(err); // its body broke after the head went out
      this.race.onWinnerBroken(err);
    }
    else if (state === 'sent' || state === 'collecting' || state === 'buffering') {
      this.chunks = [];
      this.race.onFailed(this, errorName(err));
    }
  }
}

/** The target a copy asks its upstream: its prefix, then the path (which may be only `?query`, or empty, under an Express mount). */
function upstreamTarget(prefix: string, path: string): string {
  const target = prefix + path;
  return target.startsWith('/') ? target : `/${target}`;
}

function errorName(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e?.code ?? e?.message ?? String(err);
}

export class Race {
  readonly copies: Copy[];
  readonly started: number;
  winner: Copy | null = null;
  /** Updates: acceptable answers of copies that did not commit, waiting for the others. */
  held: Copy[] = [];
  committed = false;
  /** A read under a quorum or a select function: answers are read whole and compared. */
  readonly selecting: boolean;
  /** Under select: the complete acceptable answers, in arrival order. */
  answers: Copy[] = [];
  /** Under a quorum: answers by status and body digest. */
  groups = new Map<string, Copy[]>();
  captured: CapturedAnswer | null = null;
  #captureSize = 0;
  fallback: Copy | null = null;
  /** The fallback's answer went to the client. */
  passedThrough = false;
  next = 0;
  settled = 0;
  finished = false;
  outcome: RaceOutcome = 'failed';
  hedgeTimer: TimerHandle | null = null;
  timeoutTimer: TimerHandle | null = null;
  lingerTimer: TimerHandle | null = null;
  #finishedAt = 0;
  #resolved = false;
  readonly done: Promise<RaceReport>;
  #resolve!: (r: RaceReport) => void;

  constructor(readonly input: RaceInput) {
    this.started = input.time.now();
    this.copies = input.targets.map((u, i) => new Copy(this, u, i + 1));
    this.selecting = !input.update && input.select.kind !== 'first';
    this.done = new Promise((resolve) => (this.#resolve = resolve));
  }

  start(): Promise<RaceReport> {
    const { res, timeout } = this.input;
    this.timeoutTimer = this.input.time.setTimeout(() => this.onTimeout(), timeout);
    res.once('close', this.#onClientClose);
    const { hedgeDelay, select } = this.input;
    // Hedged, one copy leaves at first; a quorum of k needs k answers, so k do.
    const burst = hedgeDelay === 0 ? this.copies.length : this.selecting && select.kind === 'quorum' ? select.quorum : 1;
    do this.send(false);
    while (!this.finished && this.next < Math.min(burst, this.copies.length));
    if (hedgeDelay !== 0) this.armHedge();
    return this.done;
  }

  // The client went away: stop every copy (the winner too, mid-body). An
  // update whose answer is kept for an Idempotency-Key (`beforeEnd`) goes on
  // without its client instead, writing to nowhere: its retry then gets the
  // committed answer, not only the word that it was applied.
  #onClientClose = (): void => {
    if (this.finished) return;
    if (!this.input.beforeEnd) return this.finish('client-closed');
    this.#clientGone = { status: this.input.res.headersSent ? this.input.res.statusCode : null };
    this.input.res = detachedResponse();
    // A winner paused until the client's socket drained would wait forever.
    for (const copy of this.copies) if (copy.state === 'streaming') copy.resume();
  };

  /** Set when the client left a race that goes on without it: what it was sent. */
  #clientGone: { status: number | null } | null = null;

  armHedge(): void {
    const delay = this.input.hedgeDelay;
    // An adaptive delay is Infinity until the route has latencies to go by.
    if (this.next >= this.copies.length || !Number.isFinite(delay)) return;
    const armedAt = this.input.time.now();
    const fire = (checkedAt: number): void => {
      this.hedgeTimer = null;
      if (this.winner || this.finished) return;
      // Node's timers count whole milliseconds of a floored clock: one can
      // fire up to a millisecond early. A hedge never leaves before its
      // delay: wait out the rest (while the clock moves: an injected clock
      // that stands still must not hold the hedge forever).
      const elapsed = this.input.time.now() - armedAt;
      if (delay - elapsed > 0.05 && elapsed > checkedAt) {
        this.hedgeTimer = this.input.time.setTimeout(() => fire(elapsed), delay - elapsed);
        return;
      }
      // A quorum's copies are still bringing their bodies in: look again a delay later.
      if (this.enoughAnswering(delay)) {
        this.armHedge();
        return;
      }
      if (this.input.mayHedge()) {
        this.send(true);
        this.armHedge();
      }
    };
    this.hedgeTimer = this.input.time.setTimeout(() => fire(-1), delay);
  }

  /**
   * Under a quorum: k copies may still agree (the largest group of answers
   * alike, plus the bodies still arriving: a byte within the last `window`
   * ms), so a hedge would only add load. If they disagree, the next copy
   * leaves at once when they are all in; a body that stalls stops counting.
   * (A select function may want any number of answers: its hedges are not
   * held back.)
   */
  enoughAnswering(window: number): boolean {
    const { select } = this.input;
    if (!this.selecting || select.kind !== 'quorum') return false;
    const since = this.input.time.now() - window;
    // Answers already in count only as far as they agree with each other.
    let answering = 0;
    for (const group of this.groups.values()) answering = Math.max(answering, group.length);
    for (const c of this.copies) if (c.state === 'buffering' && c.lastDataAt >= since) answering++;
    return answering >= select.quorum;
  }

  send(hedged: boolean): void {
    const copy = this.copies[this.next++]!;
    const { input } = this;
    const headers = input.headers.slice();
    appendCopyHeaders(
      headers,
      {
        requestId: input.requestId,
        duplicateId: copy.report.duplicateId,
        upstreamId: copy.upstream.id,
        index: copy.report.index,
        of: this.copies.length,
        update: input.update,
        sessionId: input.sessionId,
        sessionNew: input.sessionNew,
        timestamp: input.wallClock(),
        idempotencyKey: input.idempotencyKey,
        method: input.method,
        target: upstreamTarget(copy.upstream.prefix, input.path),
        bodyHash: input.bodyHash,
      },
      input.secret,
    );
    copy.to('sent');
    copy.startedAt = input.time.now();
    copy.report.sentAt = copy.startedAt - this.started;
    copy.report.hedged = hedged;
    copy.report.outcome = 'stopped';
    input.onCopySent?.(copy.report);
    try {
      copy.live = true;
      input.onCopyStart?.(copy.upstream.id);
      input.dispatchers.get(copy.upstream.id)!.dispatch(
        {
          path: upstreamTarget(copy.upstream.prefix, input.path),
          method: input.method,
          headers,
          body: input.body,
          headersTimeout: input.timeout,
          bodyTimeout: input.timeout,
        },
        copy,
      );
    } catch (err) {
      // undici refuses some requests synchronously (invalid header values):
      // the request's fault, not the upstream's (outlier ejection ignores it).
      copy.wireDone();
      copy.to('done');
      this.onFailed(copy, LOCAL_REFUSAL + errorName(err));
    }
  }

  onHead(copy: Copy, status: number, headers: Record<string, string | string[] | undefined>): void {
    if (this.winner || this.finished) {
      // Lost the race: answered after another copy won.
      copy.report.outcome = 'drained';
      if (copy.drainable()) copy.to('draining');
      else {
        copy.report.outcome = 'stopped';
        copy.abort();
      }
      return;
    }
    const refused = headers[H.refused];
    if (typeof refused === 'string') {
      // The worker refused the copy before its handler ran (a wrong or
      // rotated secret, a wrong upstream id): a failure of that upstream,
      // never an answer to adopt, or one misconfigured replica would answer
      // every request with its instant 401.
      if (copy.drainable()) copy.to('draining');
      else copy.abort();
      this.input.onRefused?.(copy.upstream.id, refused);
      this.onFailed(copy, `refused: ${refused}`);
      return;
    }
    if (this.input.update) {
      const commit = headers[H.commit];
      if (commit === 'lost') {
        // Lost the arbitration: never adopted, not even as a fallback.
        copy.report.outcome = 'lost';
        if (copy.drainable()) copy.to('draining');
        else copy.abort();
        this.settle();
        return;
      }
      if (commit === 'won') {
        // The committed copy's answer wins at once, whatever its status.
        this.committed = true;
        this.adopt(copy);
        return;
      }
      if (commit === 'applied') {
        // A copy that took the claim over found the request already applied
        // by an earlier copy, whose answer is gone: the client hears that it
        // was applied, and no copy runs it again.
        this.committed = true;
        copy.report.outcome = 'applied';
        if (copy.drainable()) copy.to('draining');
        else copy.abort();
        sendError(this.input.res, new RedundantProxyError(codes.ANSWER_LOST, `the update was applied by an earlier copy (found by upstream "${copy.upstream.label}"), but its answer was lost; do not retry it blindly`, { status: 502 }), this.input.requestId);
        this.finish('answer-lost');
        return;
      }
    }
    let ok = false;
    try {
      ok = this.input.accept({ status, headers, upstream: copy.upstream.id });
    } catch (err) {
      this.input.onAcceptThrew?.(err);
    }
    if (ok && this.selecting) {
      copy.to('buffering'); // counted as settled once its body is in
      copy.lastDataAt = this.input.time.now();
      // A HEAD, 204 or 304 answer has no body, whatever its Content-Length says.
      const bodyless = this.input.method === 'HEAD' || status === 204 || status === 304;
      const length = headers['content-length'];
      if (!bodyless && typeof length === 'string' && Number(length) > this.input.maxAnswerSize) this.tooLarge(copy);
      return;
    }
    if (ok && this.input.update && this.copies.length > 1) {
      // An answer that did not commit (a validation error, say) waits until
      // every copy has answered or one has committed.
      copy.to('holding');
      copy.controller?.pause();
      this.held.push(copy);
      this.settle();
    } else if (ok) this.adopt(copy);
    else {
      copy.report.outcome = 'rejected';
      if (!this.fallback) {
        copy.to('collecting');
        return; // counted as settled once its body is in
      }
      if (copy.drainable()) copy.to('draining');
      else copy.abort();
      this.settle();
    }
  }

  adopt(copy: Copy): void {
    this.winner = copy;
    copy.report.outcome = 'won';
    this.held = this.held.filter((c) => c !== copy);
    this.clearHedge();
    for (const other of this.copies) {
      // A copy still out gets a short grace (lingerLosers); anything else stops now.
      if (other !== copy && other.state !== 'sent') other.stop();
    }
    this.fallback = null;
    this.lingerLosers();
    const extra = this.input.beforeHead?.(copy.report, copy.headers);
    if (extra instanceof Promise) {
      if (copy.state !== 'holding') {
        copy.to('holding');
        copy.controller?.pause();
      }
      extra.then(
        (more) => this.release(copy, more),
        () => this.release(copy, undefined),
      );
      return;
    }
    this.release(copy, extra);
  }

  /** A HEAD answer, a 204 or a 304: a head and no body. */
  bodyless(copy: Copy): boolean {
    const status = copy.report.status;
    return this.input.method === 'HEAD' || status === 204 || status === 304;
  }

  writeHead(copy: Copy, extra: Record<string, string | string[]> | undefined): void {
    const { res } = this.input;
    if (res.destroyed) return;
    const status = copy.report.status!;
    const out = forwardResponseHeaders(copy.headers);
    if (status === 204 || status === 304) {
      // No body follows: a length would only mislead the client's parser.
      delete out['content-length'];
      delete out['transfer-encoding'];
    }
    if (extra) {
      for (const name in extra) {
        const prior = out[name];
        // Set-Cookie and other list headers: add to the upstream's values.
        out[name] = prior === undefined ? extra[name]! : ([] as string[]).concat(prior, extra[name]!);
      }
    }
    out['x-request-id'] = this.input.requestId;
    out[H.servedBy] = copy.upstream.label;
    if (this.input.capture > 0) this.captured = { status, headers: { ...out }, body: null };
    res.writeHead(status, out);
  }

  /** Keeps the adopted answer's body, up to `capture` bytes, for idempotent replays. */
  keep(chunk: Buffer): void {
    if (!this.captured) return;
    this.#captureSize += chunk.length;
    if (this.#captureSize > this.input.capture) {
      this.#kept = null;
      return;
    }
    this.#kept?.push(chunk);
  }

  #kept: Buffer[] | null = [];

  /** Gives the read's losers still out a short grace to answer, then aborts them. */
  lingerLosers(): void {
    let any = false;
    for (const c of this.copies) {
      if (c.state !== 'sent' || c === this.winner) continue;
      c.to('lingering');
      any = true;
    }
    if (!any) return;
    const grace = Math.min(LINGER_MAX_MS, Math.max(LINGER_MIN_MS, (this.input.time.now() - this.started) / 2));
    this.lingerTimer = this.input.time.setTimeout(() => {
      this.lingerTimer = null;
      // Timers run before the event loop reads sockets: give answers already
      // waiting there one turn to arrive, rather than abort them (and their connection).
      this.input.time.setImmediate(() => {
        for (const c of this.copies) if (c.state === 'lingering') this.stopCopy(c);
        this.lingerSettled();
      });
    }, grace);
  }

  /**
   * Stops a copy. Step "first committed wins": once one copy committed,
   * every other copy still processing the update (a lingering loser) is
   * stopped, and its cancel hook runs.
   */
  stopCopy(copy: Copy): void {
    const lingering = copy.state === 'lingering';
    copy.stop();
    if (lingering) this.cancelAfterCommit(copy);
  }

  /** After a commit, a loser stopped or broken while still processing: its work is cancelled (onCancel runs). */
  cancelAfterCommit(copy: Copy): void {
    if (!this.committed || !this.winner) return;
    copy.report.outcome = 'cancelled';
    this.input.onCancelled?.(copy.report, this.winner.report);
  }

  /** A lingering loser's connection broke: after a commit its work is in an unknown state, so it is cancelled. */
  lingerFailed(copy: Copy): void {
    this.cancelAfterCommit(copy);
    this.lingerSettled();
  }

  /** Another copy answered `x-redundant-commit: won` after one committed: the store's arbitration failed. */
  secondCommit(copy: Copy): void {
    const first = this.winner?.upstream.id ?? 'unknown';
    this.input.onError?.(
      this.input.requestId,
      new RedundantProxyError(
        codes.INTERNAL,
        `request ${this.input.requestId}: upstream "${copy.upstream.id}" answered x-redundant-commit: won after upstream "${first}" had committed; the session store's commit arbitration failed (is every worker on the same store?)`,
      ),
    );
  }

  /** A lingering loser answered, failed or was aborted: the report may be final now. */
  lingerSettled(): void {
    if (this.copies.some((c) => c.state === 'lingering')) return;
    if (this.lingerTimer) this.input.time.clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    if (this.finished) this.resolve();
  }

  /** The winner may go: send its head and whatever body arrived while it was held. */
  release(copy: Copy, extra: Record<string, string | string[]> | undefined): void {
    if (this.finished) return; // timed out or the client left while holding
    if (copy.broken) {
      copy.chunks = [];
      sendError(this.input.res, new RedundantProxyError(codes.UPSTREAMS_FAILED, 'the adopted answer broke before it could be sent', { status: 502 }), this.input.requestId);
      this.finish('failed');
      return;
    }
    this.writeHead(copy, extra);
    const { res } = this.input;
    if (this.bodyless(copy)) {
      // Nothing follows the head, whatever its framing headers say: a 304
      // may state the length of the body it does not carry (undici then
      // reports a length mismatch on the connection, which is no concern of
      // the client's). The answer is complete now.
      copy.chunks = [];
      if (copy.ended) copy.to('done');
      else {
        copy.to('draining');
        copy.resume();
      }
      this.onWinnerEnd();
      return;
    }
    for (const chunk of copy.chunks) {
      this.keep(chunk);
      const out = this.holdLast(chunk);
      if (out) res.write(out);
    }
    copy.chunks = [];
    if (copy.ended) {
      copy.to('done');
      this.onWinnerEnd();
      return;
    }
    copy.to('streaming');
    copy.resume();
  }

  /**
   * With `beforeEnd`, the last chunk of the adopted body is held back until
   * it ran: with it the client has the whole answer (a Content-Length body
   * is complete at its last byte, before `end()`). Returns what to write now.
   */
  holdLast(chunk: Buffer): Buffer | null {
    if (!this.input.beforeEnd) return chunk;
    const previous = this.#last;
    this.#last = chunk;
    return previous;
  }

  #last: Buffer | null = null;
  /** The body is complete and `beforeEnd` runs: the race is decided, only its last bytes wait. */
  ending = false;

  onWinnerEnd(): void {
    if (this.captured && this.#kept) this.captured.body = Buffer.concat(this.#kept, this.#captureSize);
    const end = () => {
      if (this.finished) return; // the client left meanwhile
      const { res } = this.input;
      if (this.#last) res.write(this.#last);
      this.#last = null;
      res.end();
      this.finish('won');
    };
    if (!this.input.beforeEnd) return end();
    this.ending = true;
    this.input.beforeEnd(this.captured).then(end, end);
  }

  /** A held answer broke before it was adopted (or while its head waited). */
  onHeldBroken(copy: Copy, error: string): void {
    copy.chunks = [];
    if (this.winner === copy) return; // release() answers for it
    if (!this.held.includes(copy)) return;
    this.held = this.held.filter((c) => c !== copy);
    copy.report.outcome = 'failed';
    copy.report.error = error;
    // It was counted as settled when it was held.
    this.settled--;
    this.settle();
  }

  onWinnerBroken(_err: Error): void {
    // The head is out; ending cleanly would pass a truncated body off as whole.
    this.input.res.destroy();
    this.finish('broken');
  }

  onRejected(copy: Copy): void {
    this.fallback ??= copy;
    this.settle();
  }

  onFailed(copy: Copy, error: string): void {
    if (copy.report.outcome !== 'rejected') copy.report.outcome = 'failed';
    copy.report.error = error;
    this.settle();
  }

  /**
   * Under select: an answer too large to buffer and compare. The upstream
   * answered, so it is `rejected` (not `failed`: it is not failing).
   */
  tooLarge(copy: Copy): void {
    copy.tooLarge = true;
    copy.chunks = [];
    copy.report.outcome = 'rejected';
    copy.report.error = `answer larger than maxBodySize (${this.input.maxAnswerSize} bytes): select cannot compare it`;
    if (copy.drainable()) copy.to('draining');
    else copy.abort();
    this.settle();
  }

  /** Under select: an acceptable answer is in, whole. */
  onAnswer(copy: Copy): void {
    const body = Buffer.concat(copy.chunks, copy.size);
    copy.chunks = [body];
    copy.answer = { upstream: copy.upstream.id, index: copy.report.index, status: copy.report.status!, headers: copy.headers, body };
    copy.report.outcome = 'outvoted'; // until it is chosen, or agrees with the chosen one
    this.answers.push(copy);
    if (this.input.select.kind === 'quorum') {
      const key = `${copy.report.status} ${createHash('sha256').update(body).digest('base64')}`;
      let group = this.groups.get(key);
      if (!group) this.groups.set(key, (group = []));
      group.push(copy);
      copy.group = group;
    }
    this.settle();
  }

  /**
   * Under select: a quorum or the select function chooses among the complete
   * answers, as each copy answers or fails. True when that decided the race
   * (an answer adopted, or none can be any more).
   */
  choose(final = false): boolean {
    const { select } = this.input;
    const pending = final ? 0 : this.copies.length - this.settled;
    let chosen: Copy | undefined;
    if (select.kind === 'quorum') {
      let largest = 0;
      for (const group of this.groups.values()) {
        if (group.length >= select.quorum) {
          chosen = group[0];
          break;
        }
        largest = Math.max(largest, group.length);
      }
      if (!chosen) {
        if (largest + pending >= select.quorum) return false;
        this.failSelection(
          codes.NO_QUORUM,
          `no ${select.quorum} copies gave the same answer: ${this.answers.length} acceptable answers of ${this.groups.size} different kinds, most alike ${largest}`,
        );
        return true;
      }
    } else if (select.kind === 'custom') {
      let picked: SelectAnswer | null | undefined;
      try {
        picked = select.choose(
          this.answers.map((c) => c.answer!),
          { pending, copies: this.copies.length },
        );
      } catch (err) {
        this.input.onSelectThrew?.(this.input.requestId, err);
        this.failSelection(codes.NO_SELECTION, 'the select function threw');
        return true;
      }
      if (picked === undefined || picked === null) {
        if (pending > 0 || final) return false; // more may come; at the timeout, the timeout answers
        this.failSelection(codes.NO_SELECTION, `the select function chose none of the ${this.answers.length} acceptable answers`);
        return true;
      }
      chosen = this.answers.find((c) => c.answer === picked);
      if (!chosen) {
        this.input.onSelectThrew?.(this.input.requestId, new TypeError('redundant-proxy: select returned a value that is not one of the answers it was given'));
        this.failSelection(codes.NO_SELECTION, 'the select function returned something that is not one of its answers');
        return true;
      }
    } else return false;
    this.dropAnswers(chosen);
    this.adopt(chosen);
    return true;
  }

  /** Under select: the answers not chosen are done; those alike the chosen one `agreed`, the others `outvoted`. */
  dropAnswers(chosen: Copy | null): void {
    for (const other of this.answers) {
      if (other === chosen) continue;
      other.report.outcome = other.group !== null && other.group === chosen?.group ? 'agreed' : 'outvoted';
      other.to('done');
      other.chunks = [];
    }
  }

  /** Under select: acceptable answers came, but none was chosen. */
  failSelection(code: typeof codes.NO_QUORUM | typeof codes.NO_SELECTION, message: string): void {
    this.dropAnswers(null);
    sendError(this.input.res, new RedundantProxyError(code, message, { status: 502 }), this.input.requestId);
    this.finish('failed');
  }

  settle(): void {
    this.settled++;
    if (this.winner || this.finished) return;
    if (this.answers.length > 0 && this.choose()) return;
    if (this.settled < this.next) return;
    // Every copy answered and none committed: adopt the first held answer.
    const first = this.held[0];
    if (first) {
      this.adopt(first);
      return;
    }
    // Every copy sent so far failed (or, under select, answered without a
    // decision). Send the next one now: this replaces a failed copy rather
    // than adding load, so no budget applies.
    if (this.next < this.copies.length) {
      this.clearHedge();
      this.send(false);
      this.armHedge();
      return;
    }
    this.answerFailure();
  }

  answerFailure(): void {
    if (this.input.beforeFailure) {
      this.consultStore(false, () => this.answerFailureNow());
      return;
    }
    this.answerFailureNow();
  }

  /**
   * An update ends without an answer: ask the store first. If a copy
   * committed and its answer was lost on the way, the client must hear that
   * the update was applied, not that it failed.
   */
  consultStore(adopting: boolean, otherwise: () => void): void {
    const ask = this.input.beforeFailure!;
    this.input.beforeFailure = undefined; // once
    this.clearHedge();
    for (const copy of this.copies) if (!this.held.includes(copy)) this.stopCopy(copy);
    this.lingerSettled();
    ask(adopting).then(
      (err) => {
        if (this.finished) return;
        if (!err) return otherwise();
        sendError(this.input.res, err, this.input.requestId, err.code === codes.OUTCOME_UNKNOWN ? { 'retry-after': '1' } : undefined);
        this.finish(err.code === codes.OUTCOME_UNKNOWN ? 'outcome-unknown' : 'answer-lost');
      },
      () => !this.finished && otherwise(),
    );
  }

  answerFailureNow(): void {
    const { res, requestId } = this.input;
    const fallback = this.fallback;
    if (fallback && !res.headersSent && !res.destroyed) {
      const out = forwardResponseHeaders(fallback.headers);
      out['x-request-id'] = requestId;
      out[H.servedBy] = fallback.upstream.label;
      const body = Buffer.concat(fallback.chunks, fallback.size);
      out['content-length'] = String(body.length);
      res.writeHead(fallback.report.status!, out);
      res.end(body);
      fallback.chunks = [];
      this.passedThrough = true;
      this.finish('failed');
      return;
    }
    sendError(
      res,
      new RedundantProxyError(codes.UPSTREAMS_FAILED, this.failureMessage(), { status: 502 }),
      requestId,
    );
    this.finish('failed');
  }

  failureMessage(): string {
    let failed = 0;
    let tooLarge = 0;
    for (const c of this.copies) {
      if (c.report.sentAt === null) continue;
      if (c.tooLarge) tooLarge++;
      else failed++;
    }
    if (tooLarge === 0) return `no upstream answered (${failed} copies failed)`;
    return `no usable answer: ${tooLarge} too large for select to compare (maxBodySize ${this.input.maxAnswerSize} bytes), ${failed} failed`;
  }

  onTimeout(): void {
    this.timeoutTimer = null;
    // Decided already: the adopted body is complete and only waits for `beforeEnd`.
    if (this.finished || this.ending) return;
    const { res, requestId, timeout } = this.input;
    // Copies still waiting for their answer, or for the rest of an answer
    // being compared, ran out of time: say so (outlier ejection counts them
    // as failures; copies stopped earlier, and a winner still streaming, not).
    // A copy sent late in the request (a hedge) says little: only one out
    // for half the timeout or more is marked.
    const now = this.input.time.now();
    for (const copy of this.copies) {
      if ((copy.state === 'sent' || copy.state === 'buffering') && now - copy.startedAt >= timeout / 2) copy.report.error = 'timeout';
      // A winner still streaming: a long body (a download, a stream), not a failure.
      else if (copy.state === 'streaming') copy.report.error = 'body-timeout';
    }
    // A select function waiting for more answers gets its last say.
    if (this.selecting && !this.winner && this.input.select.kind === 'custom' && this.answers.length > 0 && !res.headersSent && this.choose(true)) return;
    const timedOut = () => {
      if (res.headersSent) res.destroy();
      else sendError(res, new RedundantProxyError(codes.TIMEOUT, `no acceptable answer within ${timeout} ms`, { status: 504 }), requestId);
      this.finish('timeout');
    };
    if (this.input.beforeFailure && !res.headersSent) {
      // The copies still out never committed: an answer that did not commit
      // may now be adopted.
      this.consultStore(this.held.length > 0, () => (this.held[0] ? this.adopt(this.held[0]) : timedOut()));
    } else timedOut();
  }

  clearHedge(): void {
    if (this.hedgeTimer) {
      this.input.time.clearTimeout(this.hedgeTimer);
      this.hedgeTimer = null;
    }
  }

  finish(outcome: RaceOutcome): void {
    if (this.finished) return;
    this.finished = true;
    this.outcome = outcome;
    this.clearHedge();
    if (this.timeoutTimer) this.input.time.clearTimeout(this.timeoutTimer);
    this.timeoutTimer = null;
    this.input.res.off('close', this.#onClientClose);
    this.#finishedAt = this.input.time.now();
    // Lingering losers keep their grace after a won race; otherwise everything stops now.
    for (const copy of this.copies) if (outcome !== 'won' || copy.state !== 'lingering') this.stopCopy(copy);
    this.lingerSettled();
  }

  /** Reports the race once it is finished and no loser lingers. */
  resolve(): void {
    if (this.#resolved) return;
    this.#resolved = true;
    const { input } = this;
    const adopted = this.winner ?? (this.passedThrough ? this.fallback : null);
    const gone = this.#clientGone;
    this.#resolve({
      requestId: input.requestId,
      method: input.method,
      path: input.path,
      update: input.update,
      // Whatever the race came to after its client left, the client got none of it.
      outcome: gone ? 'client-closed' : this.outcome,
      status: gone ? gone.status : input.res.headersSent ? input.res.statusCode : null,
      servedBy: adopted?.upstream.id ?? null,
      adopted: adopted?.report.duplicateId ?? null,
      committed: this.committed,
      duration: this.#finishedAt - this.started,
      copies: this.copies.map((c) => c.report),
    });
  }
}
