import type { Ejector } from './ejection.js';
import { percentile } from './hedge.js';
import { COPY_OUTCOMES, RACE_OUTCOMES, type CopyOutcome, type RaceOutcome, type RaceReport } from './report.js';

const LATENCY_WINDOW = 2048;

export interface UpstreamMetrics {
  /** It answered with `x-redundant-worker`: it runs the worker, and may receive copies of updates. */
  worker: boolean;
  sent: number;
  won: number;
  /** won / sent */
  winRate: number;
  outcomes: Record<CopyOutcome, number>;
  /** It receives no copies now: it failed too often in a row (the `ejection` option). */
  ejected: boolean;
  /** Times it was ejected. */
  ejections: number;
  /** It passes its active health checks (the `healthCheck` option); absent without them. */
  healthy?: boolean;
}

/** The WebSocket (and other `Upgrade`) tunnels of `proxy.upgrade`. */
export interface UpgradeMetrics {
  /** Upgrades an upstream switched protocols for. */
  upgraded: number;
  /** Upgrades an upstream answered without switching. */
  refused: number;
  /** Upgrades with no upstream, or whose upstream failed or did not answer. */
  failed: number;
  /** Tunnels open now. */
  open: number;
}

export interface ProxyMetrics {
  requests: number;
  outcomes: Record<RaceOutcome, number>;
  copiesSent: number;
  /** Copies sent because of a hedge delay, per request. */
  hedgeRate: number;
  /** Copies sent whose answer was not adopted, per request. */
  wastedWork: number;
  /** Race durations over the last 2048 requests, in ms. */
  latency: { p50: number; p95: number; p99: number };
  upstreams: Record<string, UpstreamMetrics>;
  upgrades: UpgradeMetrics;
}

const zeroOutcomes = (): Record<RaceOutcome, number> => Object.fromEntries(RACE_OUTCOMES.map((o) => [o, 0])) as Record<RaceOutcome, number>;
const zeroCopy = (): Record<CopyOutcome, number> => Object.fromEntries(COPY_OUTCOMES.map((o) => [o, 0])) as Record<CopyOutcome, number>;

export class Metrics {
  /** Counted by the proxy's upgrade entry. */
  readonly upgrades: UpgradeMetrics = { upgraded: 0, refused: 0, failed: 0, open: 0 };
  #requests = 0;
  #copies = 0;
  #hedged = 0;
  #wasted = 0;
  readonly #outcomes = zeroOutcomes();
  readonly #latency = new Float64Array(LATENCY_WINDOW);
  readonly #upstreams = new Map<string, { sent: number; outcomes: Record<CopyOutcome, number> }>();

  constructor(upstreamIds: string[]) {
    for (const id of upstreamIds) this.#upstreams.set(id, { sent: 0, outcomes: zeroCopy() });
  }

  record(r: RaceReport): void {
    this.#latency[this.#requests % LATENCY_WINDOW] = r.duration;
    this.#requests++;
    this.#outcomes[r.outcome]++;
    for (const c of r.copies) {
      const u = this.#upstreams.get(c.upstream)!;
      u.outcomes[c.outcome]++;
      if (c.sentAt === null) continue;
      u.sent++;
      this.#copies++;
      if (c.hedged) this.#hedged++;
      if (c.outcome !== 'won') this.#wasted++;
    }
  }

  snapshot(workers: ReadonlySet<string>, ejector: Ejector | null, health: { isHealthy(id: string): boolean } | null = null): ProxyMetrics {
    const n = this.#requests;
    const window = this.#latency.subarray(0, Math.min(n, LATENCY_WINDOW));
    const upstreams: Record<string, UpstreamMetrics> = {};
    for (const [id, u] of this.#upstreams) {
      upstreams[id] = { worker: workers.has(id), sent: u.sent, won: u.outcomes.won, winRate: u.sent ? u.outcomes.won / u.sent : 0, outcomes: { ...u.outcomes }, ejected: ejector?.isEjected(id) ?? false, ejections: ejector?.ejections(id) ?? 0 };
      if (health) upstreams[id]!.healthy = health.isHealthy(id);
    }
    return {
      requests: n,
      outcomes: { ...this.#outcomes },
      copiesSent: this.#copies,
      hedgeRate: n ? this.#hedged / n : 0,
      wastedWork: n ? this.#wasted / n : 0,
      latency: n
        ? { p50: percentile(window, 0.5), p95: percentile(window, 0.95), p99: percentile(window, 0.99) }
        : { p50: 0, p95: 0, p99: 0 },
      upstreams,
      upgrades: { ...this.upgrades },
    };
  }
}
