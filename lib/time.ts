// Time, injected. Everything that measures time (race durations, latencies,
// ejection periods) reads a clock, and everything that waits (the request's
// timeout, hedge delays, the losers' grace, store bounds) asks a scheduler,
// so that tests can run them on a virtual clock, deterministically, without
// sleeping. The real one is the default; nothing public takes another.

/** A timer, as the scheduler that set it returns it: only that scheduler may clear it. */
export type TimerHandle = object | number;

/** Reads the time, in milliseconds from an arbitrary origin (monotonic). */
export interface Clock {
  now(): number;
}

/** Runs callbacks later, on the same time line as its clock. */
export interface Scheduler extends Clock {
  /** Runs `fn` once `ms` milliseconds have passed. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  /**
   * Runs `fn` after the callbacks due now, and (on the real scheduler) after
   * the I/O already waiting to be read: what `setImmediate` does.
   */
  setImmediate(fn: () => void): void;
}

/** The real scheduler with the given clock (`performance.now` unless told). */
export function realScheduler(now: () => number = () => performance.now()): Scheduler {
  return {
    now,
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
    setImmediate: (fn) => void setImmediate(fn),
  };
}

/** The real scheduler on `performance.now`. */
export const REAL_TIME: Scheduler = realScheduler();

/**
 * Marks a timer as not keeping the process alive, when it is a real one (a
 * virtual timer has nothing to let go of).
 */
export function unref(handle: TimerHandle): void {
  (handle as { unref?: () => void }).unref?.();
}

/**
 * A proxy's scheduler, given under this symbol in its options: not a public
 * option (a symbol is not an option name), only a seam for tests and tools
 * that drive the proxy on virtual time. Its clock then replaces `now`.
 */
export const SCHEDULER: unique symbol = Symbol.for('redundant-proxy.scheduler');

/** `options` with the scheduler a proxy should run on. */
export function withScheduler<T extends object>(options: T, scheduler: Scheduler): T {
  return Object.assign({}, options, { [SCHEDULER]: scheduler });
}

/** The scheduler given to a proxy with `withScheduler()`, if any. */
export function schedulerOf(options: object): Scheduler | undefined {
  return (options as { [SCHEDULER]?: Scheduler })[SCHEDULER];
}
