import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../errors.js';
import { H, writeCopyHeaders } from '../wire/protocol.js';
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
  | 'not-sent';

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
  | 'broken';

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
  /** Headers every copy shares (already cleaned). */
  headers: Record<string, string | string[]>;
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
}

// 'holding': adopted, its head held back until the adoption is recorded.
type CopyState = 'idle' | 'sent' | 'holding' | 'streaming' | 'collecting' | 'draining' | 'done';

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
    if (this.state !== 'sent') return;
    this.controller = controller;
    this.headers = headers;
    this.report.status = status;
    this.report.latency = this.race.input.now() - this.startedAt;
    this.race.onHead(this, status, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    switch (this.state) {
      case 'streaming': {
        const res = this.race.input.res;
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
    if (state === 'holding') this.broken = true;
    else if (state === 'streaming') this.race.onWinnerBroken(err);
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
  fallback: Copy | null = null;
  /** The fallback's answer went to the client. */
  passedThrough = false;
  next = 0;
  settled = 0;
  finished = false;
  outcome: RaceOutcome = 'failed';
  hedgeTimer: NodeJS.Timeout | null = null;
  timeoutTimer: NodeJS.Timeout | null = null;
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
    if (this.next >= this.copies.length) return;
    this.hedgeTimer = setTimeout(() => {
      this.hedgeTimer = null;
      if (this.winner || this.finished) return;
      if (this.input.mayHedge()) {
        this.send(true);
        this.armHedge();
      }
    }, this.input.hedgeDelay);
  }

  send(hedged: boolean): void {
    const copy = this.copies[this.next++]!;
    const { input } = this;
    const headers = { ...input.headers };
    writeCopyHeaders(
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
    let ok = false;
    try {
      ok = this.input.accept({ status, headers, upstream: copy.upstream.id });
    } catch (err) {
      this.input.onAcceptThrew?.(err);
    }
    if (ok) this.adopt(copy, status, headers);
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

  adopt(copy: Copy, status: number, headers: Record<string, string | string[] | undefined>): void {
    this.winner = copy;
    copy.report.outcome = 'won';
    this.clearHedge();
    for (const other of this.copies) if (other !== copy) other.stop();
    this.fallback = null;
    const extra = this.input.beforeHead?.(copy.report, headers);
    if (extra instanceof Promise) {
      copy.state = 'holding';
      copy.controller?.pause();
      extra.then(
        (more) => this.release(copy, status, headers, more),
        () => this.release(copy, status, headers, undefined),
      );
      return;
    }
    copy.state = 'streaming';
    this.writeHead(copy, status, headers, extra);
  }

  writeHead(copy: Copy, status: number, headers: Record<string, string | string[] | undefined>, extra: Record<string, string | string[]> | undefined): void {
    const { res } = this.input;
    if (res.destroyed) return;
    const out = forwardResponseHeaders(headers);
    if (extra) {
      for (const name in extra) {
        const prior = out[name];
        // Set-Cookie and other list headers: add to the upstream's values.
        out[name] = prior === undefined ? extra[name]! : ([] as string[]).concat(prior, extra[name]!);
      }
    }
    out['x-request-id'] = this.input.requestId;
    out[H.servedBy] = copy.upstream.id;
    res.writeHead(status, out);
  }

  /** The held winner may go: send its head and whatever body arrived meanwhile. */
  release(copy: Copy, status: number, headers: Record<string, string | string[] | undefined>, extra: Record<string, string | string[]> | undefined): void {
    if (this.finished) return; // timed out or the client left while holding
    if (copy.broken) {
      copy.chunks = [];
      sendError(this.input.res, new RedundantProxyError(codes.UPSTREAMS_FAILED, 'the adopted answer broke before it could be sent', { status: 502 }), this.input.requestId);
      this.finish('failed');
      return;
    }
    this.writeHead(copy, status, headers, extra);
    const { res } = this.input;
    for (const chunk of copy.chunks) res.write(chunk);
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
    this.input.res.end();
    this.finish('won');
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
    if (res.headersSent) {
      res.destroy();
    } else {
      sendError(res, new RedundantProxyError(codes.TIMEOUT, `no acceptable answer within ${this.input.timeout} ms`, { status: 504 }), requestId);
    }
    this.finish('timeout');
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
    for (const copy of this.copies) copy.stop();
    const { input } = this;
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
      duration: input.now() - this.started,
      copies: this.copies.map((c) => c.report),
    });
  }
}
