import type { Scheduler, TimerHandle } from '../../lib/time.js';

// A virtual clock and timer scheduler (lib/time.ts's Scheduler): time moves
// only when a test moves it, and timers run in order of their due time
// (ties in the order they were set), so a test that used to sleep through
// real milliseconds runs the same steps deterministically, at once.

interface Timer {
  at: number;
  seq: number;
  fn: () => void;
}

export class VirtualTime implements Scheduler {
  #now: number;
  #seq = 0;
  /** Sorted by (at, seq). */
  readonly #timers: Timer[] = [];

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  /** The clock as a function, for what takes one (`now` options). */
  readonly clock = (): number => this.#now;

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: Timer = { at: this.#now + Math.max(0, Number.isFinite(ms) ? ms : 0), seq: ++this.#seq, fn };
    let i = this.#timers.length;
    while (i > 0 && this.#timers[i - 1]!.at > timer.at) i--;
    this.#timers.splice(i, 0, timer);
    return timer;
  }

  clearTimeout(handle: TimerHandle): void {
    const i = this.#timers.indexOf(handle as Timer);
    if (i !== -1) this.#timers.splice(i, 1);
  }

  setImmediate(fn: () => void): void {
    this.setTimeout(fn, 0);
  }

  /** Timers set and not run yet. */
  get pending(): number {
    return this.#timers.length;
  }

  /** When the next timer is due, or null when none is set. */
  get nextAt(): number | null {
    return this.#timers[0]?.at ?? null;
  }

  /** Runs the next timer, moving the clock to its time. False when none is set. */
  step(): boolean {
    const timer = this.#timers.shift();
    if (!timer) return false;
    this.#now = Math.max(this.#now, timer.at);
    timer.fn();
    return true;
  }

  /** Moves the clock `ms` on, running every timer due on the way (synchronously). */
  advanceSync(ms: number): void {
    const target = this.#now + ms;
    while (this.#timers.length > 0 && this.#timers[0]!.at <= target) this.step();
    this.#now = target;
  }

  /**
   * Moves the clock `ms` on, running every timer due on the way, and letting
   * promises (and real I/O already waiting) run before each timer and at the end.
   */
  async advance(ms: number): Promise<void> {
    const target = this.#now + ms;
    for (;;) {
      await settle();
      if (this.#timers.length === 0 || this.#timers[0]!.at > target) break;
      this.step();
    }
    this.#now = target;
    await settle();
  }

  /**
   * Runs timers, in order, until `promise` settles; throws when nothing is
   * left to run and it still has not (it would hang), or past `limit` ms.
   */
  async run<T>(promise: Promise<T>, limit = 3_600_000): Promise<T> {
    let done = false;
    const watched = promise.finally(() => (done = true));
    const end = this.#now + limit;
    for (;;) {
      await settle();
      if (done) return watched;
      if (this.#timers.length === 0) throw new Error(`virtual time: nothing left to run at ${this.#now} ms, and the promise has not settled`);
      if (this.#timers[0]!.at > end) throw new Error(`virtual time: the promise has not settled within ${limit} ms`);
      this.step();
    }
  }
}

/** Lets promise callbacks, and real I/O callbacks already due, run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * A scheduler on `time` whose timers fire early the way Node's can: Node
 * counts whole milliseconds from a floored clock, so a timer of 5.9 ms may
 * fire after 5. For the code that must not act before its time.
 */
export function earlyTimers(time: VirtualTime): Scheduler {
  return {
    now: () => time.now(),
    setTimeout: (fn, ms) => time.setTimeout(fn, Math.floor(time.now()) + Math.max(1, Math.trunc(ms)) - time.now()),
    clearTimeout: (handle) => time.clearTimeout(handle),
    setImmediate: (fn) => time.setImmediate(fn),
  };
}
