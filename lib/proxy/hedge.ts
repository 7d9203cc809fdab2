// Adaptive hedge delay and the hedge budget.
//
// The delay follows a quantile of each route's recent latency, as Finagle's
// backup requests do. With a budget of `maxExtraLoad` extra copies per
// request, a first copy still unanswered when a share 1 - maxExtraLoad / 2 of
// first copies had answered is hedged (the p95 for the default 0.1): in a
// steady state the hedges spend about half the budget, and the other half
// takes bursts and the third copies of requests whose hedge was slow too.
//
// What is learned is the latency of first copies only, the ones the delay is
// about. A first copy stopped before it answered (a hedge beat it) counts as
// at least as slow as it was out, which is past the delay it raced with.
// Hedged copies are left out: those that lost to a first copy answering just
// after them were stopped unanswered after a fraction of the delay, so only
// their fast answers would be seen, and the delay would drift down.
//
// The budget is a token bucket like gRPC's retry throttling: every request
// deposits `maxExtraLoad` tokens, every hedged copy withdraws one. When every
// upstream is slow at once, hedges drain the bucket and hedging stops instead
// of multiplying the load on an already struggling fleet.

const WINDOW = 256;
const MIN_SAMPLES = 16;
const MAX_ROUTES = 512;
const RECOMPUTE_EVERY = 16;

class Window {
  readonly samples = new Float64Array(WINDOW);
  count = 0;
  cached = Infinity;

  constructor(readonly quantile: number) {}

  add(ms: number): void {
    this.samples[this.count % WINDOW] = ms;
    this.count++;
    if (this.count >= MIN_SAMPLES && (this.count < WINDOW || this.count % RECOMPUTE_EVERY === 0)) {
      this.cached = percentile(this.samples.subarray(0, Math.min(this.count, WINDOW)), this.quantile);
    }
  }

  /** The quantile of the window, or Infinity while it is too small to tell. */
  get delay(): number {
    return this.count >= MIN_SAMPLES ? this.cached : Infinity;
  }
}

/** The latency quantile to hedge at for a budget of `maxExtraLoad` extra copies per request: 1 - maxExtraLoad / 2, within [0.5, 0.999]. */
export function hedgeQuantile(maxExtraLoad: number): number {
  return Math.min(0.999, Math.max(0.5, 1 - maxExtraLoad / 2));
}

/** What the adaptive delay learns from a finished race. */
export interface RaceLatencies {
  /** Milliseconds from the start of the race to its end. */
  duration: number;
  copies: ReadonlyArray<{ index: number; sentAt: number | null; latency: number | null; outcome: string }>;
}

export function percentile(values: ArrayLike<number>, p: number): number {
  const n = values.length;
  if (n === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(n - 1, Math.ceil(p * n) - 1)]!;
}

export class AdaptiveDelay {
  readonly #routes = new Map<string, Window>();
  readonly #all: Window;

  /** @param quantile the latency quantile to hedge at (see hedgeQuantile). */
  constructor(readonly quantile = 0.95) {
    this.#all = new Window(quantile);
  }

  /** The delay before hedging a request of `route`: the route's quantile, else the proxy-wide one. */
  delay(route: string): number {
    const own = this.#routes.get(route)?.delay ?? Infinity;
    return Number.isFinite(own) ? own : this.#all.delay;
  }

  record(route: string, ms: number): void {
    let w = this.#routes.get(route);
    if (!w) {
      if (this.#routes.size >= MAX_ROUTES) this.#routes.delete(this.#routes.keys().next().value!);
      this.#routes.set(route, (w = new Window(this.quantile)));
    }
    w.add(ms);
    this.#all.add(ms);
  }

  /**
   * Learns from a race that used `delay`: its first copy's latency, or, when
   * the first copy was stopped unanswered past `delay`, how long it was out
   * (a lower bound of its latency, in the tail).
   */
  learn(route: string, race: RaceLatencies, delay: number): void {
    const first = race.copies[0];
    if (!first || first.index !== 1 || first.sentAt === null) return;
    if (first.latency !== null) this.record(route, first.latency);
    else if (first.outcome === 'stopped' || first.outcome === 'cancelled') {
      const outFor = race.duration - first.sentAt;
      if (outFor >= delay) this.record(route, outFor);
    }
  }
}

export class HedgeBudget {
  #tokens: number;
  readonly #cap: number;

  constructor(readonly ratio: number) {
    // A burst as large as the budget earns over a hundred requests.
    this.#cap = Math.max(1, ratio * 100);
    this.#tokens = this.#cap;
  }

  /** Called once per request. */
  deposit(): void {
    if (this.ratio !== Infinity) this.#tokens = Math.min(this.#cap, this.#tokens + this.ratio);
  }

  /** True, and one token spent, when a hedge is allowed. */
  take(): boolean {
    if (this.ratio === Infinity) return true;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}
