import type { Upstream } from '../options.js';
import type { Scheduler, TimerHandle } from '../../time.js';

// Step "send" (docs/design.md): what leaves when. With no delay every copy
// leaves at once; hedged, the first (a quorum's k) leave at once and each
// further copy only when the delay has passed without a decision, while the
// hedge budget allows (lib/proxy/hedge.ts), and while the copies already out
// may still decide (a quorum whose k answers are still arriving holds it
// back). A copy that replaces a failed one leaves at once, outside the budget:
// it adds no load. An adaptive delay is Infinity until its route has
// latencies to go by: nothing is hedged until then.

/** The race, as the scheduler sees it. */
export interface HedgeHost {
  /** Copies planned and not sent yet. */
  unsent(): number;
  /** Sends the next planned copy; `hedged`: it left because of the delay. */
  sendNext(hedged: boolean): void;
  /** The race is finished: nothing more leaves, not even the burst. */
  isFinished(): boolean;
  /** The race is decided (an answer adopted) or finished: no hedge leaves. */
  isDecided(): boolean;
  /** Enough copies are still bringing answers in (a byte within the last `window` ms) that a hedge would only add load. */
  holdsHedges(window: number): boolean;
  /** An upstream the race has not tried that may take one more copy (per-try timeout), or null. */
  spareUpstream(): Upstream | null;
  /** Plans one more copy, to `upstream`. */
  planCopy(upstream: Upstream): void;
}

/** The hedge budget (lib/proxy/hedge.ts HedgeBudget): one token per hedge. */
export interface HedgeTokens {
  take(): boolean;
}

export class HedgeScheduler {
  #timer: TimerHandle | null = null;
  #armedAt = 0;
  /** Elapsed time at the last early firing, or -1. */
  #checkedAt = -1;
  #fire: (() => void) | null = null;

  constructor(
    readonly host: HedgeHost,
    readonly time: Scheduler,
    /** Ms before each hedge; 0 sends every copy at once. */
    readonly delay: number,
    readonly budget: HedgeTokens,
    /** Copies that leave at once when hedged. */
    readonly burst: number,
  ) {}

  /** Sends the first copies, and arms the hedge. */
  start(): void {
    const { host } = this;
    const first = this.delay === 0 ? host.unsent() : Math.min(this.burst, host.unsent());
    const keep = host.unsent() - first;
    do host.sendNext(false);
    while (!host.isFinished() && host.unsent() > keep);
    if (this.delay !== 0) this.arm();
  }

  /** Every copy sent so far failed: the next leaves now, and the delay starts again. */
  replaceFailed(): void {
    this.stop();
    this.host.sendNext(false);
    this.arm();
  }

  /**
   * A copy given up at its per-try timeout is replaced, within the budget:
   * by the next planned copy, or by one to a spare upstream. The hedge armed
   * for the copy just sent waits its delay again for the next one.
   */
  replaceGivenUp(): void {
    let spare: Upstream | null = null;
    if (this.host.unsent() === 0) {
      spare = this.host.spareUpstream();
      if (!spare) return;
    }
    if (!this.budget.take()) return;
    if (spare) this.host.planCopy(spare);
    this.host.sendNext(false);
    if (this.armed) this.arm();
  }

  /** No more hedges (the race is decided or over). */
  stop(): void {
    if (this.#timer === null) return;
    this.time.clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** A hedge is armed. */
  get armed(): boolean {
    return this.#timer !== null;
  }

  arm(): void {
    this.stop();
    // A copy sent just now may have finished the race (a hook failed, undici refused it): no timer after that.
    if (this.host.isDecided() || this.host.unsent() === 0 || !Number.isFinite(this.delay)) return;
    this.#armedAt = this.time.now();
    this.#checkedAt = -1;
    this.#timer = this.time.setTimeout((this.#fire ??= () => this.#onTimer()), this.delay);
  }

  #onTimer(): void {
    this.#timer = null;
    const { host } = this;
    if (host.isDecided()) return;
    // Node's timers count whole milliseconds of a floored clock: one can
    // fire up to a millisecond early. A hedge never leaves before its
    // delay: wait out the rest (while the clock moves: an injected clock
    // that stands still must not hold the hedge forever).
    const elapsed = this.time.now() - this.#armedAt;
    if (this.delay - elapsed > 0.05 && elapsed > this.#checkedAt) {
      this.#checkedAt = elapsed;
      this.#timer = this.time.setTimeout(this.#fire!, this.delay - elapsed);
      return;
    }
    // A quorum's copies are still bringing their bodies in: look again a delay later.
    if (host.holdsHedges(this.delay)) return this.arm();
    if (this.budget.take()) {
      host.sendNext(true);
      this.arm();
    }
  }
}
