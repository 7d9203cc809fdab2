import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../errors.js';
import { appendCopyHeaders, H } from '../wire/protocol.js';
import { forwardResponseHeaders } from './headers.js';
import type { Upstream, UpstreamResponse } from './options.js';
import { sendError } from './respond.js';

// The race: send copies of one request (claim 1 (a)-(b)), adopt the first
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

export type CopyOutcome =
  /** Its answer was adopted. */
  | 'won'
  /** Stopped before it answered (its connection was closed). */
  | 'stopped'
  /** Answered after another copy won; its body was read and discarded. */
  | 'drained'
  /** Transport error: connection refused or reset, malformed response. */
  | 'failed'
  /** Answered, but `accept()` refused the answer. */
  | 'rejected'
  /** Never sent: an earlier copy won before its hedge delay ran out. */
  | 'not-sent'
  /** An update's copy that lost the commit arbitration (`x-redundant-commit: lost`): never adopted. */
  | 'lost'
  /** An update's copy still processing when another copy committed (and past its grace): aborted, and `onCancel` ran for it. */
  | 'cancelled';

export interface CopyReport {
  index: number;
  upstream: string;
  duplicateId: string;
  outcome: CopyOutcome;
  /** Milliseconds from the start of the race to sending this copy. */
  sentAt: number | null;
  /** Milliseconds from sending this copy to its response head. */
  latency: number | null;
  status: number | null;
  /** The transport error's code or message, for `failed`. */
  error: string | null;
  /** True when the copy was held back by hedging and then sent. */
  hedged: boolean;
}

export type RaceOutcome =
  /** An acceptable answer was streamed whole to the client. */
  | 'won'
  /** No copy answered acceptably: the client got an upstream's error or a 502. */
  | 'failed'
  /** No acceptable answer within `timeout` (504), or the body was cut off at it. */
  | 'timeout'
  /** The client went away first. */
  | 'client-closed'
  /** The winner's body broke after its head was sent; the client connection was reset. */
  | 'broken'
  /** An update committed, but its answer never arrived: the client was told so (`RP_ERR_ANSWER_LOST`). */
  | 'answer-lost';

export interface RaceReport {
  requestId: string;
  method: string;
  path: string;
  update: boolean;
  outcome: RaceOutcome;
  /** Status sent to the client, or null when none was. */
  status: number | null;
  /** Id of the upstream whose answer was adopted (the winner's, or the error passed through). */
  servedBy: string | null;
  /** Duplicate id of the copy whose answer was adopted. */
  adopted: string | null;
  /** The adopted copy committed the update (`x-redundant-commit: won`). */
  committed: boolean;
  /** Milliseconds from the start of the race to its end. */
  duration: number;
  copies: CopyReport[];
}

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
  secret: string | Buffer | undefined;
  now: () => number;
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
  /** A copy was stopped because another copy of the update committed. */
  onCancelled?: (copy: CopyReport, committed: CopyReport) => void;
  /**
   * Updates only: asked before answering a failure or a timeout. Resolves an
   * error to answer with instead (the update committed but its answer was
   * lost), or undefined.
   */
  beforeFailure?: () => Promise<RedundantProxyError | undefined>;
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

// 'holding': answered, its body paused and buffered: either an update's
// answer held until every copy has answered or one committed, or the winner
// whose head waits until its adoption is recorded.
// 'lingering': lost the race before answering; given a short grace to answer (then drained) before it is aborted.
type CopyState = 'idle' | 'sent' | 'lingering' | 'holding' | 'streaming' | 'collecting' | 'draining' | 'done';

class Copy implements Dispatcher.DispatchHandler {
  state: CopyState = 'idle';
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

  constructor(
    readonly race: Race,
    readonly upstream: Upstream,
    index: number,
  ) {
    this.report = {
      index,
      upstream: upstream.id,
      duplicateId: `${race.input.requestId}.${index}`,
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
        if (this.drainable()) this.state = 'draining';
        else this.abort();
        break;
      case 'holding':
      case 'streaming':
        this.abort();
        break;
      default:
    }
  }

  abort(): void {
    this.state = 'done';
    if (this.controller) this.controller.abort(new Error('stopped by redundant-proxy'));
    else this.abortWanted = true;
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
    if (this.state !== 'sent' && this.state !== 'lingering') return;
    this.controller = controller;
    this.headers = headers;
    this.report.status = status;
    this.report.latency = this.race.input.now() - this.startedAt;
    if (headers[H.worker] === '1') this.race.input.onWorkerSeen?.(this.upstream.id);
    // Another copy committed already: the store's arbitration failed.
    if (this.race.committed && headers[H.commit] === 'won') this.race.secondCommit(this);
    if (this.state === 'lingering') {
      // Answered within its grace: it stopped by itself. Drain it (keeping
      // the connection) if small. An update's copy says it lost the commit.
      const lost = headers[H.commit] === 'lost';
      if (this.drainable()) {
        this.state = 'draining';
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
        if (!res.write(chunk)) {
          controller.pause();
          res.once('drain', () => controller.resume());
        }
        break;
      }
      case 'holding':
        this.chunks.push(chunk);
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

  onResponseEnd(): void {
    if (this.state === 'holding') {
      this.ended = true;
      return;
    }
    const state = this.state;
    this.state = 'done';
    if (state === 'streaming') this.race.onWinnerEnd();
    else if (state === 'collecting') this.race.onRejected(this);
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    const state = this.state;
    this.state = 'done';
    if (state === 'lingering') {
      this.report.outcome = 'failed';
      this.report.error = errorName(err);
      this.race.lingerFailed(this);
    } else if (state === 'holding') {
      this.broken = true;
      this.race.onHeldBroken(this, errorName(err));
    } else if (state === 'streaming') this.race.onWinnerBroken(err);
    else if (state === 'sent' || state === 'collecting') {
      this.chunks = [];
      this.race.onFailed(this, errorName(err));
    }
  }
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
  captured: CapturedAnswer | null = null;
  #captureSize = 0;
  fallback: Copy | null = null;
  /** The fallback's answer went to the client. */
  passedThrough = false;
  next = 0;
  settled = 0;
  finished = false;
  outcome: RaceOutcome = 'failed';
  hedgeTimer: NodeJS.Timeout | null = null;
  timeoutTimer: NodeJS.Timeout | null = null;
  lingerTimer: NodeJS.Timeout | null = null;
  #finishedAt = 0;
  #resolved = false;
  readonly done: Promise<RaceReport>;
  #resolve!: (r: RaceReport) => void;

  constructor(readonly input: RaceInput) {
    this.started = input.now();
    this.copies = input.targets.map((u, i) => new Copy(this, u, i + 1));
    this.done = new Promise((resolve) => (this.#resolve = resolve));
  }

  start(): Promise<RaceReport> {
    const { res, timeout } = this.input;
    this.timeoutTimer = setTimeout(() => this.onTimeout(), timeout);
    res.once('close', this.#onClientClose);
    this.send(false);
    if (this.input.hedgeDelay === 0) while (!this.finished && this.next < this.copies.length) this.send(false);
    else this.armHedge();
    return this.done;
  }

  // The client went away: stop every copy (the winner too, mid-body).
  #onClientClose = (): void => this.finish('client-closed');

  armHedge(): void {
    const delay = this.input.hedgeDelay;
    // An adaptive delay is Infinity until the route has latencies to go by.
    if (this.next >= this.copies.length || !Number.isFinite(delay)) return;
    const armedAt = this.input.now();
    const fire = (checkedAt: number): void => {
      this.hedgeTimer = null;
      if (this.winner || this.finished) return;
      // Node's timers count whole milliseconds of a floored clock: one can
      // fire up to a millisecond early. A hedge never leaves before its
      // delay: wait out the rest (while the clock moves: an injected clock
      // that stands still must not hold the hedge forever).
      const elapsed = this.input.now() - armedAt;
      if (delay - elapsed > 0.05 && elapsed > checkedAt) {
        this.hedgeTimer = setTimeout(() => fire(elapsed), delay - elapsed);
        return;
      }
      if (this.input.mayHedge()) {
        this.send(true);
        this.armHedge();
      }
    };
    this.hedgeTimer = setTimeout(() => fire(-1), delay);
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
      },
      input.secret,
    );
    copy.state = 'sent';
    copy.startedAt = input.now();
    copy.report.sentAt = copy.startedAt - this.started;
    copy.report.hedged = hedged;
    copy.report.outcome = 'stopped';
    input.onCopySent?.(copy.report);
    try {
      input.dispatchers.get(copy.upstream.id)!.dispatch(
        {
          path: copy.upstream.prefix + input.path,
          method: input.method,
          headers,
          body: input.body,
          headersTimeout: input.timeout,
          bodyTimeout: input.timeout,
        },
        copy,
      );
    } catch (err) {
      // undici refuses some requests synchronously (invalid header values).
      copy.state = 'done';
      this.onFailed(copy, errorName(err));
    }
  }

  onHead(copy: Copy, status: number, headers: Record<string, string | string[] | undefined>): void {
    if (this.winner || this.finished) {
      // Lost the race: answered after another copy won.
      copy.report.outcome = 'drained';
      if (copy.drainable()) copy.state = 'draining';
      else {
        copy.report.outcome = 'stopped';
        copy.abort();
      }
      return;
    }
    if (this.input.update) {
      const commit = headers[H.commit];
      if (commit === 'lost') {
        // Lost the arbitration: never adopted, not even as a fallback.
        copy.report.outcome = 'lost';
        if (copy.drainable()) copy.state = 'draining';
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
    }
    let ok = false;
    try {
      ok = this.input.accept({ status, headers, upstream: copy.upstream.id });
    } catch (err) {
      this.input.onAcceptThrew?.(err);
    }
    if (ok && this.input.update && this.copies.length > 1) {
      // An answer that did not commit (a validation error, say) waits until
      // every copy has answered or one has committed.
      copy.state = 'holding';
      copy.controller?.pause();
      this.held.push(copy);
      this.settle();
    } else if (ok) this.adopt(copy);
    else {
      copy.report.outcome = 'rejected';
      if (!this.fallback) {
        copy.state = 'collecting';
        return; // counted as settled once its body is in
      }
      if (copy.drainable()) copy.state = 'draining';
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
        copy.state = 'holding';
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

  writeHead(copy: Copy, extra: Record<string, string | string[]> | undefined): void {
    const { res } = this.input;
    if (res.destroyed) return;
    const status = copy.report.status!;
    const out = forwardResponseHeaders(copy.headers);
    if (extra) {
      for (const name in extra) {
        const prior = out[name];
        // Set-Cookie and other list headers: add to the upstream's values.
        out[name] = prior === undefined ? extra[name]! : ([] as string[]).concat(prior, extra[name]!);
      }
    }
    out['x-request-id'] = this.input.requestId;
    out[H.servedBy] = copy.upstream.id;
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
      if (c.state !== 'sent') continue;
      c.state = 'lingering';
      any = true;
    }
    if (!any) return;
    const grace = Math.min(LINGER_MAX_MS, Math.max(LINGER_MIN_MS, (this.input.now() - this.started) / 2));
    this.lingerTimer = setTimeout(() => {
      this.lingerTimer = null;
      // Timers run before the event loop reads sockets: give answers already
      // waiting there one turn to arrive, rather than abort them (and their connection).
      setImmediate(() => {
        for (const c of this.copies) if (c.state === 'lingering') this.stopCopy(c);
        this.lingerSettled();
      });
    }, grace);
  }

  /**
   * Stops a copy. claim 1, the patent's last step: once one copy committed,
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
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
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
    for (const chunk of copy.chunks) {
      this.keep(chunk);
      res.write(chunk);
    }
    copy.chunks = [];
    if (copy.ended) {
      copy.state = 'done';
      this.onWinnerEnd();
      return;
    }
    copy.state = 'streaming';
    copy.controller?.resume();
  }

  onWinnerEnd(): void {
    if (this.captured && this.#kept) this.captured.body = Buffer.concat(this.#kept, this.#captureSize);
    this.input.res.end();
    this.finish('won');
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

  settle(): void {
    this.settled++;
    if (this.winner || this.finished || this.settled < this.next) return;
    // Every copy answered and none committed: adopt the first held answer.
    const first = this.held[0];
    if (first) {
      this.adopt(first);
      return;
    }
    // Every copy sent so far failed. Fail over to the next upstream now: this
    // replaces a failed copy rather than adding load, so no budget applies.
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
      this.consultStore(() => this.answerFailureNow());
      return;
    }
    this.answerFailureNow();
  }

  /**
   * An update ends without an answer: ask the store first. If a copy
   * committed and its answer was lost on the way, the client must hear that
   * the update was applied, not that it failed.
   */
  consultStore(otherwise: () => void): void {
    const ask = this.input.beforeFailure!;
    this.input.beforeFailure = undefined; // once
    this.clearHedge();
    for (const copy of this.copies) if (!this.held.includes(copy)) this.stopCopy(copy);
    this.lingerSettled();
    ask().then(
      (err) => {
        if (this.finished) return;
        if (!err) return otherwise();
        sendError(this.input.res, err, this.input.requestId);
        this.finish('answer-lost');
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
      out[H.servedBy] = fallback.upstream.id;
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
      new RedundantProxyError(codes.UPSTREAMS_FAILED, `no upstream answered (${this.copies.filter((c) => c.report.sentAt !== null).length} copies failed)`, { status: 502 }),
      requestId,
    );
    this.finish('failed');
  }

  onTimeout(): void {
    this.timeoutTimer = null;
    if (this.finished) return;
    const { res, requestId } = this.input;
    const timedOut = () => {
      if (res.headersSent) res.destroy();
      else sendError(res, new RedundantProxyError(codes.TIMEOUT, `no acceptable answer within ${this.input.timeout} ms`, { status: 504 }), requestId);
      this.finish('timeout');
    };
    if (this.input.beforeFailure && !res.headersSent) {
      // The copies still out never committed: an answer that did not commit
      // may now be adopted.
      this.consultStore(() => (this.held[0] ? this.adopt(this.held[0]) : timedOut()));
    } else timedOut();
  }

  clearHedge(): void {
    if (this.hedgeTimer) {
      clearTimeout(this.hedgeTimer);
      this.hedgeTimer = null;
    }
  }

  finish(outcome: RaceOutcome): void {
    if (this.finished) return;
    this.finished = true;
    this.outcome = outcome;
    this.clearHedge();
    if (this.timeoutTimer) clearTimeout(this.timeoutTimer);
    this.timeoutTimer = null;
    this.input.res.off('close', this.#onClientClose);
    this.#finishedAt = this.input.now();
    // Lingering losers keep their grace after a won race; otherwise everything stops now.
    for (const copy of this.copies) if (outcome !== 'won' || copy.state !== 'lingering') this.stopCopy(copy);
    this.lingerSettled();
  }

  /** Reports the race once it is finished and no loser lingers. */
  resolve(): void {
    if (this.#resolved) return;
    this.#resolved = true;
    const { input, outcome } = this;
    const adopted = this.winner ?? (this.passedThrough ? this.fallback : null);
    this.#resolve({
      requestId: input.requestId,
      method: input.method,
      path: input.path,
      update: input.update,
      outcome,
      status: input.res.headersSent ? input.res.statusCode : null,
      servedBy: adopted?.upstream.id ?? null,
      adopted: adopted?.report.duplicateId ?? null,
      committed: this.committed,
      duration: this.#finishedAt - this.started,
      copies: this.copies.map((c) => c.report),
    });
  }
}
