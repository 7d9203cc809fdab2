import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../errors.js';
import type { TimerHandle } from '../time.js';
import { COMMIT, FLAG_ON, H } from '../wire/protocol.js';
import { detachedResponse, sendError } from './respond.js';
import { raceReport, type CapturedAnswer, type RaceOutcome, type RaceReport } from './report.js';
import type { Upstream } from './options.js';
import { adoptionFor, type AdoptionStrategy, type Decision, type HeadVerdict, type Judge } from './race/adoption.js';
import { isBodyless, release, stream, winnerEnded } from './race/answer.js';
import { otherCoding } from './headers.js';
import { AnswerTail } from './race/tail.js';
import { Copy, PER_TRY_TIMEOUT, type CopyHost } from './race/copy.js';
import { answerFailure, sealThenAdopt, timedOut } from './race/ending.js';
import { HedgeScheduler, type HedgeHost } from './race/hedging.js';
import { hookFailed } from './race/hooks.js';
import { guard, type RaceCore, type RaceInput } from './race/input.js';
import { lingerLosers, LOSERS, secondCommit } from './race/losers.js';

export type { CapturedAnswer, CopyOutcome, CopyReport, RaceObserver, RaceOutcome, RaceReport } from './report.js';
export type { RaceInput } from './race/input.js';

// One request's race: steps "duplicate", "send" and "choose" (docs/design.md).
// The race keeps only the copies' lifecycle (lib/proxy/lifecycle.ts): it
// sends them when its hedge scheduler says (race/hedging.ts), asks its
// adoption strategy what to do with each answer (race/adoption.ts), treats
// the losers as the loser policy says (race/losers.ts), writes the chosen
// answer to the client (race/answer.ts), and reports (report.ts).

type Headers = Record<string, string | string[] | undefined>;

export class Race implements CopyHost, HedgeHost, Judge<Copy>, RaceCore {
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
  consulting = false;
  outcome: RaceOutcome = 'failed';
  timeoutTimer: TimerHandle | null = null;
  lingerTimer: TimerHandle | null = null;
  /** The adopted answer kept, and its last chunk held back, for an Idempotency-Key; null without one. */
  readonly tail: AnswerTail | null;
  /** Set when the client left a race that goes on without it: what it was sent. */
  #clientGone: { status: number | null } | null = null;
  #finishedAt = 0;
  /** An update gave a copy up at its per-try timeout, or a copy broke after its request went out: it may have claimed, or committed, unseen. */
  #gaveUp = false;
  /** Such an update seals itself before adopting an answer that did not commit: decisions wait for the seal. */
  #sealing = false;
  #resolved = false;
  #resolve!: (r: RaceReport) => void;

  constructor(readonly input: RaceInput) {
    this.started = input.time.now();
    this.copies = input.targets.map((u, i) => Copy.planned(this, u, i + 1, input.requestId, input.attempt ?? 1));
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
    this.timeoutTimer = this.input.time.setTimeout(() => {
      this.timeoutTimer = null;
      timedOut(this);
    }, this.input.timeout);
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

  /** Step "duplicate": the next copy leaves for its upstream (race/copy.ts `send()`). */
  sendNext(hedged: boolean): void {
    const copy = this.copies[this.next++]!;
    const refused = copy.send(this.input, this.copies.length, this.started, hedged);
    if (refused === null) return;
    if (typeof refused === 'string') this.failed(copy, refused);
    // The gateway's rewriteCopy hook failed: the request fails with it (race/hooks.ts).
    else hookFailed(this, 'rewriteCopy', refused);
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
    if (status === 503 && headers[H.storeUnavailable] === FLAG_ON) copy.report.storeUnavailable = true;
    copy.report.latency = input.time.now() - copy.startedAt;
    if (headers[H.worker] === '1') input.observer.workerSeen(copy.upstream.id);
    // Another copy committed already: the store's arbitration failed.
    if (this.committed && headers[H.commit] === COMMIT.won) secondCommit(this, copy);
    if (copy.state === 'lingering') {
      LOSERS.answeredInGrace(copy, headers);
      return this.lingerSettled();
    }
    // Lost the race: answered after another copy won.
    if (this.winner || this.finished) return LOSERS.answeredLate(copy, headers);
    const refused = headers[H.refused];
    if (typeof refused === 'string') {
      // The worker refused the copy before its handler ran (a wrong or
      // rotated secret, a wrong upstream id): a failure of that upstream,
      // never an answer to adopt, or one misconfigured replica would answer
      // every request with its instant 401.
      LOSERS.drainOrAbort(copy);
      input.observer.refused(copy.upstream.id, refused);
      this.failed(copy, `refused: ${refused}`);
      return;
    }
    const coding = otherCoding(headers['transfer-encoding']);
    if (coding !== undefined) {
      // undici took the chunked framing off and left the rest coded: passed
      // on as plain bytes, it would be another body (RFC 9112 §6.1).
      copy.abort();
      this.failed(copy, `unsupported transfer coding: ${coding}`);
      return;
    }
    this.#apply(copy, this.strategy.head(copy, status, headers, this), status, headers);
  }

  /** Does what the strategy said with a copy's head. */
  #apply(copy: Copy, verdict: HeadVerdict, status: number, headers: Headers): void {
    switch (verdict) {
      case 'adopt':
        return this.#adoptOrSeal(copy);
      case 'lost':
        // Lost the arbitration: never adopted, not even as a fallback.
        copy.report.outcome = 'lost';
        LOSERS.drainOrAbort(copy);
        return this.settle();
      case 'applied':
        // A copy that took the claim over found the request already applied
        // by an earlier copy, whose answer is gone: the client hears that it
        // was applied, and no copy runs it again.
        copy.report.outcome = 'applied';
        LOSERS.drainOrAbort(copy);
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
        if (!this.fallback && isBodyless(this.input.method, status)) {
          // Whole with its head (a 304 may state the length of a body it does
          // not carry: undici would then fail the copy for a short body).
          LOSERS.drainOrAbort(copy);
          return this.rejectedEnded(copy);
        }
        if (!this.fallback) {
          copy.to('collecting');
          return; // counted as settled once its body is in
        }
        LOSERS.drainOrAbort(copy);
        return this.settle();
    }
  }

  stream(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    stream(this, controller, chunk);
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
    // An update's copy that broke after its request went out may have
    // claimed, or committed, without saying so: as for a copy given up, the
    // request is sealed before an answer that did not commit is adopted.
    if (this.input.update && copy.mayHaveRun) this.#gaveUp = true;
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

  /**
   * The `perTryTimeout` option: a copy still waiting for its head is given
   * up (stopped, which closes its connection; reported failed, so outlier
   * ejection counts it) and, within the hedge budget, replaced by the next
   * planned copy or one to an upstream this race has not tried.
   */
  tryTimedOut(copy: Copy): void {
    if (this.isDecided() || this.#sealing || copy.state !== 'sent') return;
    LOSERS.stop(copy);
    this.hedging.replaceGivenUp();
    this.failed(copy, PER_TRY_TIMEOUT);
  }

  spareUpstream(): Upstream | null {
    return this.input.spare?.(this.copies.map((c) => c.upstream.id)) ?? null;
  }

  planCopy(upstream: Upstream): void {
    this.copies.push(Copy.planned(this, upstream, this.copies.length + 1, this.input.requestId, this.input.attempt ?? 1));
  }

  /**
   * Adopts an answer, unless it did not commit and this update gave a copy
   * up: that copy may hold the claim (or have committed) although it was
   * stopped, so the request is sealed first, as at the timeout
   * (race/ending.ts): the seal makes sure no copy commits after the client
   * was told it did not, or finds the commit and says so.
   */
  #adoptOrSeal(copy: Copy): void {
    if (!this.#gaveUp || this.committed || !this.input.beforeFailure) return this.adopt(copy);
    if (this.#sealing) return;
    this.#sealing = true;
    if (copy.state === 'sent') {
      copy.to('holding');
      copy.pause();
    }
    sealThenAdopt(this, copy);
  }

  wireEnded(copy: Copy): void {
    this.input.observer.copyEnded(copy.upstream.id);
    this.input.trace?.copyEnded(copy.report.index);
  }

  // ---- choosing (step "choose") ----

  /** A copy settled (answered, failed, or was judged): decide, send the next, or fail. */
  settle(): void {
    this.settled++;
    if (this.winner || this.finished || this.#sealing) return;
    const decision = this.strategy.decide(this.copies.length - this.settled, this.next - this.settled);
    if (decision) return this.decided(decision);
    if (this.settled < this.next) return;
    // Every copy sent so far failed (or, under select, answered without a
    // decision). Send the next one now: this replaces a failed copy rather
    // than adding load, so no budget applies.
    if (this.next < this.copies.length) return this.hedging.replaceFailed();
    answerFailure(this);
  }

  decided(decision: Decision<Copy>): void {
    const chosen = 'adopt' in decision ? decision.adopt : null;
    // Under select: the answers not chosen are done; those alike the chosen one `agreed`, the others `outvoted`.
    for (const other of this.strategy.answers) {
      if (other === chosen) continue;
      other.report.outcome = chosen !== null && this.strategy.agreed(other, chosen) ? 'agreed' : 'outvoted';
      other.to('done');
      other.chunks = [];
    }
    if (chosen) return this.input.update ? this.#adoptOrSeal(chosen) : this.adopt(chosen);
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
      // A copy still out gets a short grace (lingerLosers); anything else
      // stops now, and an answer held is held no more (the timeout must not
      // adopt it after it was stopped).
      if (other !== copy && other.state !== 'sent') {
        LOSERS.stop(other);
        this.strategy.drop(other);
      }
    }
    this.fallback = null;
    lingerLosers(this);
    const extra = this.input.beforeHead?.(copy.report, copy.headers);
    if (extra instanceof Promise) {
      if (copy.state !== 'holding') {
        copy.to('holding');
        copy.pause();
      }
      guard(
        this,
        extra.then(
          (more) => release(this, copy, more),
          () => release(this, copy, undefined),
        ),
      );
      return;
    }
    release(this, copy, extra);
  }

  winnerEnded(): void {
    winnerEnded(this);
  }

  // ---- losers (race/losers.ts) ----

  /**
   * Stops a copy. Step "first committed wins": once one copy committed,
   * every other copy still processing the update (a lingering loser) is
   * stopped, and its cancel hook runs.
   */
  stopAndCancel(copy: Copy): void {
    const lingering = copy.state === 'lingering';
    LOSERS.stop(copy);
    if (lingering) this.#cancelAfterCommit(copy);
  }

  /** After a commit, a loser stopped or broken while still processing: its work is cancelled (onCancel runs). */
  #cancelAfterCommit(copy: Copy): void {
    // A copy that never reached its upstream (queued, or waiting to retry) has no work to cancel.
    if (!this.committed || !this.winner || !copy.mayHaveRun) return;
    copy.report.outcome = 'cancelled';
    this.input.observer.cancelled(this.input.requestId, copy.report, this.winner.report);
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
    LOSERS.drainOrAbort(copy);
    this.settle();
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
    for (const copy of this.copies) if (outcome !== 'won' || copy.state !== 'lingering') this.stopAndCancel(copy);
    this.lingerSettled();
  }

  /** Reports the race once it is finished and no loser lingers. */
  #report(): void {
    if (this.#resolved) return;
    this.#resolved = true;
    this.#resolve(raceReport(this, this.#clientGone, this.#finishedAt - this.started));
  }
}
