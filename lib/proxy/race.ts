import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../errors.js';
import type { Scheduler, TimerHandle } from '../time.js';
import { appendCopyHeaders, H } from '../wire/protocol.js';
import type { CopyState } from './lifecycle.js';
import type { ResolvedSelect, Upstream, UpstreamResponse } from './options.js';
import { detachedResponse, sendError } from './respond.js';
import { LOCAL_REFUSAL, type RaceObserver, type RaceOutcome, type RaceReport } from './report.js';
import { adoptionFor, type AdoptionStrategy, type Decision, type HeadVerdict, type Judge } from './race/adoption.js';
import { AnswerTail, answerNoUsable, isBodyless, passThrough, writeHead, type CapturedAnswer } from './race/answer.js';
import { Copy, errorName, type CopyHost } from './race/copy.js';
import { HedgeScheduler, type HedgeHost, type HedgeTokens } from './race/hedging.js';
import { LOSERS } from './race/losers.js';

export type { CopyOutcome, CopyReport, RaceObserver, RaceOutcome, RaceReport } from './report.js';
export type { CapturedAnswer } from './race/answer.js';

// One request's race: steps "duplicate", "send" and "choose" (docs/design.md).
// The race keeps only the copies' lifecycle (lib/proxy/lifecycle.ts): it
// sends them when its hedge scheduler says (race/hedging.ts), asks its
// adoption strategy what to do with each answer (race/adoption.ts), treats
// the losers as the loser policy says (race/losers.ts), writes the chosen
// answer to the client (race/answer.ts), and reports (report.ts).

type Headers = Record<string, string | string[] | undefined>;
type Extra = Record<string, string | string[]> | undefined;

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
  /** The hedge budget: asked before each hedged copy. */
  budget: HedgeTokens;
  timeout: number;
  accept: (response: UpstreamResponse) => boolean;
  /** How a read's answer is chosen. Updates ignore it: the committed copy's answer wins. */
  select: ResolvedSelect;
  /** Largest answer buffered for a quorum or a select function to compare. */
  maxAnswerSize: number;
  secret: string | Buffer | undefined;
  /** The clock and timers of the race: its timeout, hedge delays, the losers' grace (lib/time.ts). */
  time: Scheduler;
  wallClock: () => number;
  res: ServerResponse;
  /** Told what happens besides the report (one per proxy). */
  observer: RaceObserver;
  /**
   * Called when a copy wins, before its head goes to the client. May return
   * headers to add, or a promise of them: the head (and body) wait for it.
   */
  beforeHead?: (copy: Copy['report'], headers: Headers) => Extra | Promise<Record<string, string | string[]>>;
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

/** The target a copy asks its upstream: its prefix, then the path (which may be only `?query`, or empty, under an Express mount). */
function upstreamTarget(prefix: string, path: string): string {
  const target = prefix + path;
  return target.startsWith('/') ? target : `/${target}`;
}

export class Race implements CopyHost, HedgeHost, Judge<Copy> {
  readonly copies: Copy[];
  readonly started: number;
  readonly strategy: AdoptionStrategy<Copy>;
  readonly hedging: HedgeScheduler;
  readonly done: Promise<RaceReport>;
  readonly maxAnswerSize: number;
  winner: Copy | null = null;
  /** An unacceptable answer kept to pass through if nothing acceptable comes. */
  fallback: Copy | null = null;
  /** The fallback's answer went to the client. */
  passedThrough = false;
  next = 0;
  settled = 0;
  finished = false;
  /** The body is complete and `beforeEnd` runs: the race is decided, only its last bytes wait. */
  ending = false;
  outcome: RaceOutcome = 'failed';
  timeoutTimer: TimerHandle | null = null;
  lingerTimer: TimerHandle | null = null;
  /** The adopted answer kept, and its last chunk held back, for an Idempotency-Key; null without one. */
  readonly tail: AnswerTail | null;
  /** Set when the client left a race that goes on without it: what it was sent. */
  #clientGone: { status: number | null } | null = null;
  #finishedAt = 0;
  #resolved = false;
  #resolve!: (r: RaceReport) => void;

  constructor(readonly input: RaceInput) {
    this.started = input.time.now();
    const { requestId, attempt = 1 } = input;
    this.copies = input.targets.map(
      (u, i) =>
        new Copy(this, u, {
          index: i + 1,
          upstream: u.id,
          duplicateId: attempt > 1 ? `${requestId}.${attempt}-${i + 1}` : `${requestId}.${i + 1}`,
          outcome: 'not-sent',
          sentAt: null,
          latency: null,
          status: null,
          error: null,
          hedged: false,
        }),
    );
    this.strategy = adoptionFor<Copy>(input.update, input.select, this.copies.length);
    this.hedging = new HedgeScheduler(this, input.time, input.hedgeDelay, input.budget, this.strategy.burst);
    this.maxAnswerSize = input.maxAnswerSize;
    this.tail = input.capture > 0 || input.beforeEnd ? new AnswerTail(input.capture, input.beforeEnd !== undefined) : null;
    this.done = new Promise((resolve) => (this.#resolve = resolve));
  }

  get committed(): boolean {
    return this.strategy.committed;
  }

  /** The adopted answer as kept for an Idempotency-Key. */
  get captured(): CapturedAnswer | null {
    return this.tail?.captured ?? null;
  }

  start(): Promise<RaceReport> {
    this.timeoutTimer = this.input.time.setTimeout(() => this.onTimeout(), this.input.timeout);
    this.input.res.once('close', this.#onClientClose);
    this.hedging.start();
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

  // ---- the hedge scheduler's view (race/hedging.ts) ----

  unsent(): number {
    return this.copies.length - this.next;
  }

  isFinished(): boolean {
    return this.finished;
  }

  isDecided(): boolean {
    return this.winner !== null || this.finished;
  }

  /**
   * Under a quorum: k copies may still agree (the largest group of answers
   * alike, plus the bodies still arriving: a byte within the last `window`
   * ms), so a hedge would only add load. If they disagree, the next copy
   * leaves at once when they are all in; a body that stalls stops counting.
   * (A select function may want any number of answers: its hedges are not
   * held back.)
   */
  holdsHedges(window: number): boolean {
    const need = this.strategy.quorum;
    if (need === 0) return false;
    const since = this.input.time.now() - window;
    let answering = this.strategy.agreeing();
    for (const c of this.copies) if (c.state === 'buffering' && c.lastDataAt >= since) answering++;
    return answering >= need;
  }

  /** Step "duplicate": the next copy, with its own duplicate id and signed headers, leaves for its upstream. */
  sendNext(hedged: boolean): void {
    const copy = this.copies[this.next++]!;
    const { input } = this;
    const target = upstreamTarget(copy.upstream.prefix, input.path);
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
        target,
        bodyHash: input.bodyHash,
      },
      input.secret,
    );
    copy.to('sent');
    copy.startedAt = input.time.now();
    copy.report.sentAt = copy.startedAt - this.started;
    copy.report.hedged = hedged;
    copy.report.outcome = 'stopped';
    input.observer.copySent(input.requestId, copy.report);
    try {
      copy.live = true;
      input.observer.copyStarted(copy.upstream.id);
      input.dispatchers.get(copy.upstream.id)!.dispatch({ path: target, method: input.method, headers, body: input.body, headersTimeout: input.timeout, bodyTimeout: input.timeout }, copy);
    } catch (err) {
      // undici refuses some requests synchronously (invalid header values):
      // the request's fault, not the upstream's (outlier ejection ignores it).
      copy.wireDone();
      copy.to('done');
      this.failed(copy, LOCAL_REFUSAL + errorName(err));
    }
  }

  // ---- the copies' events (race/copy.ts) ----

  acceptable(copy: Copy, status: number, headers: Headers): boolean {
    try {
      return this.input.accept({ status, headers, upstream: copy.upstream.id });
    } catch (err) {
      this.input.observer.error(null, 'accept', err);
      return false;
    }
  }

  head(copy: Copy, status: number, headers: Headers): void {
    const { input } = this;
    copy.report.status = status;
    copy.report.latency = input.time.now() - copy.startedAt;
    if (headers[H.worker] === '1') input.observer.workerSeen(copy.upstream.id);
    // Another copy committed already: the store's arbitration failed.
    if (this.committed && headers[H.commit] === 'won') this.#secondCommit(copy);
    if (copy.state === 'lingering') {
      if (copy.report.error === 'timeout') copy.report.error = null; // it did answer
      // Answered within its grace: it stopped by itself. Drain it (keeping
      // the connection) if small. An update's copy says it lost the commit.
      const lost = headers[H.commit] === 'lost';
      if (LOSERS.drains(headers)) {
        copy.to('draining');
        copy.report.outcome = lost ? 'lost' : 'drained';
      } else {
        this.stop(copy);
        if (lost) copy.report.outcome = 'lost';
      }
      this.lingerSettled();
      return;
    }
    if (this.winner || this.finished) {
      // Lost the race: answered after another copy won.
      copy.report.outcome = 'drained';
      if (LOSERS.drains(headers)) copy.to('draining');
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
      this.#drainOrAbort(copy);
      input.observer.refused(copy.upstream.id, refused);
      this.failed(copy, `refused: ${refused}`);
      return;
    }
    this.#apply(copy, this.strategy.head(copy, status, headers, this), status, headers);
  }

  /** Does what the strategy said with a copy's head. */
  #apply(copy: Copy, verdict: HeadVerdict, status: number, headers: Headers): void {
    switch (verdict) {
      case 'adopt':
        return this.adopt(copy);
      case 'lost':
        // Lost the arbitration: never adopted, not even as a fallback.
        copy.report.outcome = 'lost';
        this.#drainOrAbort(copy);
        return this.settle();
      case 'applied':
        // A copy that took the claim over found the request already applied
        // by an earlier copy, whose answer is gone: the client hears that it
        // was applied, and no copy runs it again.
        copy.report.outcome = 'applied';
        this.#drainOrAbort(copy);
        sendError(this.input.res, new RedundantProxyError(codes.ANSWER_LOST, `the update was applied by an earlier copy (found by upstream "${copy.upstream.label}"), but its answer was lost; do not retry it blindly`, { status: 502 }), this.input.requestId);
        return this.finish('answer-lost');
      case 'hold':
        // An answer that did not commit (a validation error, say) waits until
        // every copy has answered or one has committed.
        copy.to('holding');
        copy.pause();
        return this.settle();
      case 'read': {
        copy.to('buffering'); // counted as settled once its body is in
        copy.lastDataAt = this.input.time.now();
        const length = headers['content-length'];
        if (!isBodyless(this.input.method, status) && typeof length === 'string' && Number(length) > this.maxAnswerSize) this.#tooLarge(copy);
        return;
      }
      case 'reject':
        copy.report.outcome = 'rejected';
        if (!this.fallback) {
          copy.to('collecting');
          return; // counted as settled once its body is in
        }
        this.#drainOrAbort(copy);
        return this.settle();
    }
  }

  stream(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    const { res } = this.input;
    const out = this.tail ? this.tail.pass(chunk) : chunk;
    if (out && !res.write(out)) {
      controller.pause();
      res.once('drain', () => controller.resume());
    }
  }

  reading(copy: Copy): void {
    copy.lastDataAt = this.input.time.now();
    if (copy.size > this.maxAnswerSize) this.#tooLarge(copy);
  }

  /** Under select: an acceptable answer is in, whole. */
  answered(copy: Copy): void {
    const body = Buffer.concat(copy.chunks, copy.size);
    copy.chunks = [body];
    copy.report.outcome = 'outvoted'; // until it is chosen, or agrees with the chosen one
    this.strategy.answer(copy, { upstream: copy.upstream.id, index: copy.report.index, status: copy.report.status!, headers: copy.headers, body });
    this.settle();
  }

  rejectedEnded(copy: Copy): void {
    this.fallback ??= copy;
    this.settle();
  }

  failed(copy: Copy, error: string): void {
    if (copy.report.outcome !== 'rejected') copy.report.outcome = 'failed';
    copy.report.error = error;
    this.settle();
  }

  /** A lingering loser's connection broke: after a commit its work is in an unknown state, so it is cancelled. */
  lingerFailed(copy: Copy): void {
    this.#cancelAfterCommit(copy);
    this.lingerSettled();
  }

  /** A held answer broke before it was adopted (or while its head waited). */
  heldBroken(copy: Copy, error: string): void {
    copy.chunks = [];
    if (this.winner === copy) return; // release() answers for it
    if (!this.strategy.drop(copy)) return;
    copy.report.outcome = 'failed';
    copy.report.error = error;
    // It was counted as settled when it was held.
    this.settled--;
    this.settle();
  }

  winnerBroken(): void {
    // The head is out; ending cleanly would pass a truncated body off as whole.
    this.input.res.destroy();
    this.finish('broken');
  }

  wireEnded(copy: Copy): void {
    this.input.observer.copyEnded(copy.upstream.id);
  }

  // ---- choosing (step "choose") ----

  /** A copy settled (answered, failed, or was judged): decide, send the next, or fail. */
  settle(): void {
    this.settled++;
    if (this.winner || this.finished) return;
    const decision = this.strategy.decide(this.copies.length - this.settled, this.next - this.settled);
    if (decision) return this.#decided(decision);
    if (this.settled < this.next) return;
    // Every copy sent so far failed (or, under select, answered without a
    // decision). Send the next one now: this replaces a failed copy rather
    // than adding load, so no budget applies.
    if (this.next < this.copies.length) return this.hedging.replaceFailed();
    this.#answerFailure();
  }

  #decided(decision: Decision<Copy>): void {
    const chosen = 'adopt' in decision ? decision.adopt : null;
    // Under select: the answers not chosen are done; those alike the chosen one `agreed`, the others `outvoted`.
    for (const other of this.strategy.answers) {
      if (other === chosen) continue;
      other.report.outcome = chosen !== null && this.strategy.agreed(other, chosen) ? 'agreed' : 'outvoted';
      other.to('done');
      other.chunks = [];
    }
    if (chosen) return this.adopt(chosen);
    if ('fail' in decision) {
      if (decision.error !== undefined) this.input.observer.error(this.input.requestId, 'select', decision.error);
      sendError(this.input.res, new RedundantProxyError(decision.fail, decision.message, { status: 502 }), this.input.requestId);
      this.finish('failed');
    }
  }

  adopt(copy: Copy): void {
    this.winner = copy;
    copy.report.outcome = 'won';
    this.strategy.drop(copy);
    this.hedging.stop();
    for (const other of this.copies) {
      // A copy still out gets a short grace (lingerLosers); anything else stops now.
      if (other !== copy && other.state !== 'sent') this.stop(other);
    }
    this.fallback = null;
    this.#lingerLosers();
    const extra = this.input.beforeHead?.(copy.report, copy.headers);
    if (extra instanceof Promise) {
      if (copy.state !== 'holding') {
        copy.to('holding');
        copy.pause();
      }
      extra.then(
        (more) => this.#release(copy, more),
        () => this.#release(copy, undefined),
      );
      return;
    }
    this.#release(copy, extra);
  }

  /** The winner may go: send its head and whatever body arrived while it was held. */
  #release(copy: Copy, extra: Extra): void {
    if (this.finished) return; // timed out or the client left while holding
    const { res, requestId } = this.input;
    if (copy.broken) {
      copy.chunks = [];
      sendError(res, new RedundantProxyError(codes.UPSTREAMS_FAILED, 'the adopted answer broke before it could be sent', { status: 502 }), requestId);
      return this.finish('failed');
    }
    const out = writeHead(res, copy, requestId, extra);
    if (out) this.tail?.head(copy.report.status!, out);
    if (isBodyless(this.input.method, copy.report.status)) {
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
      return this.#winnerEnded();
    }
    for (const chunk of copy.chunks) {
      const piece = this.tail ? this.tail.pass(chunk) : chunk;
      if (piece) res.write(piece);
    }
    copy.chunks = [];
    if (copy.ended) {
      copy.to('done');
      return this.#winnerEnded();
    }
    copy.to('streaming');
    copy.resume();
  }

  winnerEnded(): void {
    this.#winnerEnded();
  }

  #winnerEnded(): void {
    const captured = this.tail?.complete() ?? null;
    const end = () => {
      if (this.finished) return; // the client left meanwhile
      const { res } = this.input;
      const last = this.tail?.takeLast();
      if (last) res.write(last);
      res.end();
      this.finish('won');
    };
    if (!this.input.beforeEnd) return end();
    this.ending = true;
    this.input.beforeEnd(captured).then(end, end);
  }

  // ---- losers (race/losers.ts) ----

  /** Stops a copy: aborts it, or lets a small answer drain to keep its connection. */
  stop(copy: Copy): void {
    switch (copy.state as CopyState) {
      case 'sent':
      case 'lingering':
        copy.report.outcome = 'stopped';
        copy.abort();
        break;
      case 'collecting':
        copy.report.outcome = 'rejected';
        copy.chunks = [];
        this.#drainOrAbort(copy);
        break;
      case 'buffering':
        // Answering, but another answer was chosen first.
        copy.chunks = [];
        if (LOSERS.drains(copy.headers)) {
          copy.report.outcome = 'drained';
          copy.to('draining');
        } else copy.abort();
        break;
      case 'holding':
      case 'streaming':
        copy.abort();
        break;
      default:
    }
  }

  #drainOrAbort(copy: Copy): void {
    if (LOSERS.drains(copy.headers)) copy.to('draining');
    else copy.abort();
  }

  /**
   * Stops a copy. Step "first committed wins": once one copy committed,
   * every other copy still processing the update (a lingering loser) is
   * stopped, and its cancel hook runs.
   */
  #stopAndCancel(copy: Copy): void {
    const lingering = copy.state === 'lingering';
    this.stop(copy);
    if (lingering) this.#cancelAfterCommit(copy);
  }

  /** After a commit, a loser stopped or broken while still processing: its work is cancelled (onCancel runs). */
  #cancelAfterCommit(copy: Copy): void {
    if (!this.committed || !this.winner) return;
    copy.report.outcome = 'cancelled';
    this.input.observer.cancelled(this.input.requestId, copy.report, this.winner.report);
  }

  /** Another copy answered `x-redundant-commit: won` after one committed: the store's arbitration failed. */
  #secondCommit(copy: Copy): void {
    const { requestId } = this.input;
    const first = this.winner?.upstream.id ?? 'unknown';
    const message = `request ${requestId}: upstream "${copy.upstream.id}" answered x-redundant-commit: won after upstream "${first}" had committed; the session store's commit arbitration failed (is every worker on the same store?)`;
    this.input.observer.error(requestId, 'internal', new RedundantProxyError(codes.INTERNAL, message));
  }

  /** Gives the losers still out a short grace to answer, then aborts them. */
  #lingerLosers(): void {
    let any = false;
    for (const c of this.copies) {
      if (c.state !== 'sent' || c === this.winner) continue;
      c.to('lingering');
      any = true;
    }
    if (!any) return;
    const { time } = this.input;
    this.lingerTimer = time.setTimeout(() => {
      this.lingerTimer = null;
      // Timers run before the event loop reads sockets: give answers already
      // waiting there one turn to arrive, rather than abort them (and their connection).
      time.setImmediate(() => {
        for (const c of this.copies) if (c.state === 'lingering') this.#stopAndCancel(c);
        this.lingerSettled();
      });
    }, LOSERS.grace(time.now() - this.started));
  }

  /** A lingering loser answered, failed or was aborted: the report may be final now. */
  lingerSettled(): void {
    for (const c of this.copies) if (c.state === 'lingering') return;
    if (this.lingerTimer) this.input.time.clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    if (this.finished) this.#report();
  }

  /**
   * Under select: an answer too large to buffer and compare. The upstream
   * answered, so it is `rejected` (not `failed`: it is not failing).
   */
  #tooLarge(copy: Copy): void {
    copy.tooLarge = true;
    copy.chunks = [];
    copy.report.outcome = 'rejected';
    copy.report.error = `answer larger than maxBodySize (${this.maxAnswerSize} bytes): select cannot compare it`;
    this.#drainOrAbort(copy);
    this.settle();
  }

  // ---- ending without an answer ----

  #answerFailure(): void {
    if (this.input.beforeFailure) return this.#consultStore(false, () => this.#answerFailureNow());
    this.#answerFailureNow();
  }

  /**
   * An update ends without an answer: ask the store first. If a copy
   * committed and its answer was lost on the way, the client must hear that
   * the update was applied, not that it failed.
   */
  #consultStore(adopting: boolean, otherwise: () => void): void {
    const ask = this.input.beforeFailure!;
    this.input.beforeFailure = undefined; // once
    this.hedging.stop();
    const { held } = this.strategy;
    for (const copy of this.copies) if (!held.includes(copy)) this.#stopAndCancel(copy);
    this.lingerSettled();
    ask(adopting).then(
      (err) => {
        if (this.finished) return;
        if (!err) return otherwise();
        const unknown = err.code === codes.OUTCOME_UNKNOWN;
        sendError(this.input.res, err, this.input.requestId, unknown ? { 'retry-after': '1' } : undefined);
        this.finish(unknown ? 'outcome-unknown' : 'answer-lost');
      },
      () => !this.finished && otherwise(),
    );
  }

  #answerFailureNow(): void {
    const { res, requestId } = this.input;
    const fallback = this.fallback;
    if (fallback && !res.headersSent && !res.destroyed) {
      passThrough(res, fallback, requestId);
      this.passedThrough = true;
    } else answerNoUsable(res, this.copies, requestId, this.maxAnswerSize);
    this.finish('failed');
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
    if (!this.winner && !res.headersSent) {
      const decision = this.strategy.lastSay();
      if (decision) return this.#decided(decision);
    }
    const timedOut = () => {
      if (res.headersSent) res.destroy();
      else sendError(res, new RedundantProxyError(codes.TIMEOUT, `no acceptable answer within ${timeout} ms`, { status: 504 }), requestId);
      this.finish('timeout');
    };
    if (this.input.beforeFailure && !res.headersSent) {
      // The copies still out never committed: an answer that did not commit may now be adopted.
      const { held } = this.strategy;
      this.#consultStore(held.length > 0, () => (held[0] ? this.adopt(held[0]) : timedOut()));
    } else timedOut();
  }

  finish(outcome: RaceOutcome): void {
    if (this.finished) return;
    this.finished = true;
    this.outcome = outcome;
    this.hedging.stop();
    if (this.timeoutTimer) this.input.time.clearTimeout(this.timeoutTimer);
    this.timeoutTimer = null;
    this.input.res.off('close', this.#onClientClose);
    this.#finishedAt = this.input.time.now();
    // Lingering losers keep their grace after a won race; otherwise everything stops now.
    for (const copy of this.copies) if (outcome !== 'won' || copy.state !== 'lingering') this.#stopAndCancel(copy);
    this.lingerSettled();
  }

  /** Reports the race once it is finished and no loser lingers. */
  #report(): void {
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
