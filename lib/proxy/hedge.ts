// Adaptive hedge delay and the hedge budget.
//
// The delay follows a high percentile of each route's recent latency, as
// Finagle's backup requests do: a copy that has not answered by the time 95%
// of its peers had is likely in the tail, so a second copy is worth its cost.
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

  add(ms: number): void {
    this.samples[this.count % WINDOW] = ms;
    this.count++;
    if (this.count >= MIN_SAMPLES && (this.count < WINDOW || this.count % RECOMPUTE_EVERY === 0)) {
      this.cached = percentile(this.samples.subarray(0, Math.min(this.count, WINDOW)), 0.95);
    }
  }

  /** p95 of the window, or Infinity while it is too small to tell. */
  get p95(): number {
    return this.count >= MIN_SAMPLES ? this.cached : Infinity;
  }
}

export function percentile(values: ArrayLike<number>, p: number): number {
  const n = values.length;
  if (n === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(n - 1, Math.ceil(p * n) - 1)]!;
}

export class AdaptiveDelay {
  readonly #routes = new Map<string, Window>();
  readonly #all = new Window();

  /** The delay before hedging a request of `route`: the route's p95, else the proxy-wide one. */
  delay(route: string): number {
    const own = this.#routes.get(route)?.p95 ?? Infinity;
    return Number.isFinite(own) ? own : this.#all.p95;
  }

  record(route: string, ms: number): void {
    let w = this.#routes.get(route);
    if (!w) {
      if (this.#routes.size >= MAX_ROUTES) this.#routes.delete(this.#routes.keys().next().value!);
      this.#routes.set(route, (w = new Window()));
    }
    w.add(ms);
    this.#all.add(ms);
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
