import { createRequire } from 'node:module';
import { InvalidOptionError } from '../errors.js';
import type { RaceReport } from './race.js';

// Prometheus metrics in a prom-client registry the user owns, so they are
// scraped with the gateway's own. prom-client is an optional peer dependency:
// it is loaded only when this option is used. Several proxies may share one
// registry: the metrics are registered once and told apart by `labels`.

/** The part of a prom-client `Registry` the proxy uses. */
export interface PrometheusRegistry {
  getSingleMetric(name: string): unknown;
  registerMetric(metric: never): void;
}

export interface PrometheusOptions {
  /** A prom-client `Registry`: `register` (the default one) or your own. */
  registry: PrometheusRegistry;
  /** @default 'redundant_proxy_' */
  prefix?: string;
  /**
   * Labels on every series of this proxy, to tell several proxies in one
   * registry apart. Every proxy sharing a registry and a prefix must use the
   * same label names.
   * @example { route: 'orders' }
   */
  labels?: Record<string, string>;
  /**
   * Buckets of the race duration histogram, in seconds.
   * @default [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
   */
  buckets?: number[];
}

const DEFAULT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

interface Labelled {
  inc(labels: Record<string, string>, value?: number): void;
}
interface Settable {
  set(labels: Record<string, string>, value: number): void;
}
interface Observable {
  observe(labels: Record<string, string>, value: number): void;
}
type MetricClass = new (config: { name: string; help: string; labelNames: string[]; registers: PrometheusRegistry[]; buckets?: number[] }) => unknown;
interface PromClient {
  Counter: MetricClass;
  Gauge: MetricClass;
  Histogram: MetricClass;
}

function loadPromClient(): PromClient {
  try {
    return createRequire(import.meta.url)('prom-client') as PromClient;
  } catch (err) {
    throw new InvalidOptionError('prometheus', 'needs the prom-client package: npm install prom-client', (err as Error).message);
  }
}

export function checkPrometheusOptions(o: unknown): PrometheusOptions | undefined {
  if (o === undefined) return undefined;
  if (typeof o !== 'object' || o === null) throw new InvalidOptionError('prometheus', 'must be { registry, prefix?, labels?, buckets? }', o);
  const known = ['registry', 'prefix', 'labels', 'buckets'];
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) throw new InvalidOptionError(`prometheus.${key}`, `is not an option (known: ${known.join(', ')})`, (o as Record<string, unknown>)[key]);
  }
  const { registry, prefix, labels, buckets } = o as PrometheusOptions;
  if (typeof registry !== 'object' || registry === null || typeof registry.getSingleMetric !== 'function' || typeof registry.registerMetric !== 'function') {
    throw new InvalidOptionError('prometheus.registry', 'must be a prom-client Registry', registry);
  }
  if (prefix !== undefined && (typeof prefix !== 'string' || (prefix !== '' && !NAME.test(prefix)))) {
    throw new InvalidOptionError('prometheus.prefix', 'must be a metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*)', prefix);
  }
  if (labels !== undefined) {
    if (typeof labels !== 'object' || labels === null) throw new InvalidOptionError('prometheus.labels', 'must be an object of label names to string values', labels);
    for (const [name, value] of Object.entries(labels)) {
      if (!LABEL.test(name) || name.startsWith('__') || name === 'outcome' || name === 'upstream' || typeof value !== 'string') {
        throw new InvalidOptionError(`prometheus.labels.${name}`, 'must be a label name (not outcome or upstream) with a string value', value);
      }
    }
  }
  if (buckets !== undefined && (!Array.isArray(buckets) || buckets.length === 0 || !buckets.every((b, i) => Number.isFinite(b) && b > 0 && (i === 0 || b > buckets[i - 1]!)))) {
    throw new InvalidOptionError('prometheus.buckets', 'must be increasing numbers of seconds > 0', buckets);
  }
  return o as PrometheusOptions;
}

export class PrometheusMetrics {
  readonly #labels: Record<string, string>;
  readonly #requests: Labelled;
  readonly #copies: Labelled;
  readonly #hedged: Labelled;
  readonly #duration: Observable;
  readonly #ejected: Settable;
  readonly #ejections: Labelled;

  constructor(options: PrometheusOptions, upstreamIds: readonly string[]) {
    const client = loadPromClient();
    const { registry } = options;
    const prefix = options.prefix ?? 'redundant_proxy_';
    this.#labels = { ...options.labels };
    const names = Object.keys(this.#labels);
    /** The metric already in the registry (another proxy's), or a new one. */
    const metric = <T>(Kind: MetricClass, name: string, help: string, extra: string[], buckets?: number[]): T => {
      const full = prefix + name;
      const existing = registry.getSingleMetric(full) as { labelNames?: string[] } | undefined;
      const labelNames = [...names, ...extra];
      if (existing) {
        const have = [...(existing.labelNames ?? [])].sort().join(',');
        if (have !== [...labelNames].sort().join(',')) {
          throw new InvalidOptionError('prometheus.labels', `must have the label names of the metric ${full} already in the registry (${have || 'none'})`, options.labels);
        }
        return existing as T;
      }
      return new Kind({ name: full, help, labelNames, registers: [registry], ...(buckets ? { buckets } : {}) }) as T;
    };
    this.#requests = metric(client.Counter, 'requests_total', 'Requests raced, by outcome.', ['outcome']);
    this.#copies = metric(client.Counter, 'copies_total', 'Copies of requests, by upstream and outcome (not-sent: held back by hedging).', ['upstream', 'outcome']);
    this.#hedged = metric(client.Counter, 'hedged_copies_total', 'Copies sent because a hedge delay ran out.', ['upstream']);
    this.#duration = metric(client.Histogram, 'race_duration_seconds', 'Time from the start of a race to its end, by outcome.', ['outcome'], options.buckets ?? DEFAULT_BUCKETS);
    this.#ejected = metric(client.Gauge, 'upstream_ejected', '1 while the upstream is ejected for failing (updated as requests come).', ['upstream']);
    this.#ejections = metric(client.Counter, 'upstream_ejections_total', 'Times the upstream was ejected for failing.', ['upstream']);
    for (const upstream of upstreamIds) {
      this.#ejected.set(this.#with({ upstream }), 0);
      this.#ejections.inc(this.#with({ upstream }), 0);
    }
  }

  #with(more: Record<string, string>): Record<string, string> {
    return Object.assign({}, this.#labels, more);
  }

  record(r: RaceReport): void {
    this.#requests.inc(this.#with({ outcome: r.outcome }));
    this.#duration.observe(this.#with({ outcome: r.outcome }), r.duration / 1000);
    for (const c of r.copies) {
      this.#copies.inc(this.#with({ upstream: c.upstream, outcome: c.outcome }));
      if (c.hedged) this.#hedged.inc(this.#with({ upstream: c.upstream }));
    }
  }

  ejected(upstream: string, now: boolean): void {
    this.#ejected.set(this.#with({ upstream }), now ? 1 : 0);
    if (now) this.#ejections.inc(this.#with({ upstream }));
  }
}
