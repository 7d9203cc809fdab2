import type { Ejector } from './ejection.js';
import type { Upstream } from './options.js';

// Stage "plan" of the proxy's pipeline (lib/proxy/proxy.ts): which upstreams
// a request's copies go to, in order. Ejected upstreams get none, nor do
// upstreams that fail their active health checks (unless every one does); nor do
// upstreams at their `maxInFlight` (the circuit breaker, counted here from
// what the races say); an update goes only to upstreams that have shown they
// run the worker; the starting upstream rotates.

export class Planner {
  /** Upstreams that answered with `x-redundant-worker`: they may receive copies of updates. */
  readonly workers = new Set<string>();
  /** Copies in flight per upstream: the circuit breaker's count. */
  readonly #inFlight = new Map<string, number>();
  #rotation = 0;
  readonly #hasRoom = (u: Upstream): boolean => (this.#inFlight.get(u.id) ?? 0) < this.maxInFlight;

  constructor(
    readonly upstreams: Upstream[],
    /** Copies per request (the `copies` option). */
    readonly copies: number,
    readonly maxInFlight: number,
    readonly ejector: Ejector | null,
    /** Active health checks (the `healthCheck` option), or null. */
    readonly health: { isHealthy(id: string): boolean } | null = null,
    /** Upstreams that must stay in whatever their health: a quorum's k. */
    readonly keep = 1,
  ) {}

  /** A copy was handed to its upstream's pool. */
  copyStarted(id: string): void {
    this.#inFlight.set(id, (this.#inFlight.get(id) ?? 0) + 1);
  }

  /** A copy's exchange ended (answered whole, failed or stopped). */
  copyEnded(id: string): void {
    this.#inFlight.set(id, (this.#inFlight.get(id) ?? 1) - 1);
  }

  workerSeen(id: string): void {
    this.workers.add(id);
  }

  /** The upstreams a request's copies go to, in order; `busy` when the circuit breaker left none. */
  plan(update: boolean): Upstream[] | 'busy' {
    // Ejected upstreams receive no copies; a read then sends fewer.
    let pool = this.#healthy(this.ejector ? this.ejector.available(this.upstreams) : this.upstreams);
    // Nor do upstreams at their maxInFlight (the circuit breaker).
    if (pool.length > 0) {
      const open = pool.filter(this.#hasRoom);
      if (open.length === 0) return 'busy';
      if (open.length < pool.length) pool = open;
    }
    let n = Math.min(this.copies, pool.length);
    if (update) {
      // Safe by default: an update is copied only to upstreams that have shown
      // they run the worker (so its commit is arbitrated); until two have, it
      // goes to one upstream.
      const known = pool.filter((u) => this.workers.has(u.id));
      if (known.length >= 2) {
        pool = known;
        n = Math.min(n, known.length);
      } else n = 1;
    }
    if (pool.length === 0) return pool;
    const start = this.#rotation++ % pool.length;
    if (n === pool.length && start === 0) return pool;
    const out: Upstream[] = [];
    for (let i = 0; i < n; i++) out.push(pool[(start + i) % pool.length]!);
    return out;
  }

  /**
   * Upstreams that fail their health checks receive no copies, as ejected
   * ones do; and as ejection never ejects so many that copies have nowhere to
   * go, health is not looked at when fewer than `keep` upstreams pass (every
   * one failing: a check that fails everywhere says more about the check, or
   * the network, than about the replicas).
   */
  #healthy(pool: Upstream[]): Upstream[] {
    const { health } = this;
    if (!health) return pool;
    let out: Upstream[] | null = null;
    for (let i = 0; i < pool.length; i++) {
      if (!health.isHealthy(pool[i]!.id)) out ??= pool.slice(0, i);
      else out?.push(pool[i]!);
    }
    return out !== null && out.length >= this.keep ? out : pool;
  }

  /**
   * An upstream for a copy that replaces one given up at its per-try
   * timeout: not in `tried`, not ejected, healthy, with room under
   * `maxInFlight`; for an update, one that runs the worker. Null when none.
   */
  spare(tried: readonly string[], update: boolean): Upstream | null {
    // Safe by default: an update goes to more than one upstream only when each runs the worker.
    if (update && !tried.every((id) => this.workers.has(id))) return null;
    const pool = this.#healthy(this.ejector ? this.ejector.available(this.upstreams) : this.upstreams);
    const start = this.#rotation++ % Math.max(1, pool.length);
    for (let i = 0; i < pool.length; i++) {
      const u = pool[(start + i) % pool.length]!;
      if (tried.includes(u.id) || !this.#hasRoom(u) || (update && !this.workers.has(u.id))) continue;
      if (this.health && !this.health.isHealthy(u.id)) continue;
      return u;
    }
    return null;
  }
}
