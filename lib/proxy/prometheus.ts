import { createRequire } from 'node:module';
import { InvalidOptionError } from '../errors.js';
import { custom, field, optional, parseOptions, refuse, string, type Schema } from '../schema.js';
import { COPY_OUTCOMES, RACE_OUTCOMES, type RaceReport } from './report.js';

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
/** Set by the proxy itself, or by prom-client (histogram buckets, summaries). */
const RESERVED = new Set(['outcome', 'upstream', 'le', 'quantile']);

interface Series {
  remove(labels: Record<string, string>): void;
}
interface Labelled extends Series {
  inc(labels: Record<string, string>, value?: number): void;
}
interface Settable extends Series {
  set(labels: Record<string, string>, value: number): void;
}
interface Observable extends Series {
  observe(labels: Record<string, string>, value: number): void;
}
type MetricClass = new (config: {
  name: string;
  help: string;
  labelNames: string[];
  registers: PrometheusRegistry[];
  buckets?: number[];
  collect?: () => void;
}) => unknown;
interface PromClient {
  Counter: MetricClass;
  Gauge: MetricClass;
  Histogram: MetricClass;
}

/** The metrics of one registry and prefix, shared by the proxies counting there. */
interface Shared {
  labelNames: string[];
  buckets: number[];
  requests: Labelled;
  copies: Labelled;
  hedged: Labelled;
  duration: Observable;
  ejected: Settable;
  ejections: Labelled;
  /** 1 while the upstream passes its active health checks (proxies with `healthCheck` only). */
  healthy: Settable;
  /** The metrics by name (without the prefix), to register them again after a `registry.clear()`. */
  byName: Map<string, unknown>;
  /**
   * Open proxies by label values (as JSON). Proxies with the same values add
   * into the same series (a reload: the new proxy opens before the old one
   * closes); the series leave the registry when the last of them closes.
   */
  claims: Map<string, { count: number; labels: Record<string, string>; upstreams: Map<string, number> }>;
  /** Each proxy fills its series of the ejected gauge when the registry is read. */
  fillers: Set<(gauge: Settable) => void>;
  /** Each proxy with health checks fills its series of the healthy gauge when the registry is read. */
  healthFillers: Set<(gauge: Settable) => void>;
}
const sharedByRegistry = new WeakMap<object, Map<string, Shared>>();
const NAMES = ['requests_total', 'copies_total', 'hedged_copies_total', 'race_duration_seconds', 'upstream_ejected', 'upstream_ejections_total', 'upstream_healthy'];

/**
 * Refuses a prefix under which something else registered one of our names
 * (`ours`: the metrics this library registered there before, by name).
 */
function assertFree(registry: PrometheusRegistry, prefix: string, ours: ReadonlyMap<string, unknown> | undefined): void {
  for (const name of NAMES) {
    const current = registry.getSingleMetric(prefix + name);
    if (current !== undefined && current !== ours?.get(name)) {
      throw new InvalidOptionError('prometheus.prefix', `would register ${prefix + name}, which something else registered in this registry`, prefix);
    }
  }
}

function loadPromClient(): PromClient {
  try {
    return createRequire(import.meta.url)('prom-client') as PromClient;
  } catch (err) {
    throw new InvalidOptionError('prometheus', 'needs the prom-client package: npm install prom-client', (err as Error).message);
  }
}

const SCHEMA: Schema<PrometheusOptions> = {
  registry: field<PrometheusRegistry>('must be a prom-client Registry', (r) => {
    const o = r as PrometheusRegistry | null;
    return typeof o === 'object' && o !== null && typeof o.getSingleMetric === 'function' && typeof o.registerMetric === 'function';
  }),
  prefix: optional(string('must be a metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*)', (p) => p === '' || NAME.test(p))),
  labels: optional(
    custom<Record<string, string>>('must be an object of label names to string values', (labels, name) => {
      if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) refuse(name, 'must be an object of label names to string values', labels);
      for (const [label, value] of Object.entries(labels)) {
        if (!LABEL.test(label) || label.startsWith('__') || RESERVED.has(label) || typeof value !== 'string') {
          refuse(`${name}.${label}`, `must be a label name (not ${[...RESERVED].join(', ')}) with a string value`, value);
        }
      }
      return labels as Record<string, string>;
    }),
  ),
  buckets: optional(
    field<number[]>('must be increasing numbers of seconds > 0', (b) => Array.isArray(b) && b.length > 0 && b.every((x, i) => Number.isFinite(x) && x > 0 && (i === 0 || x > b[i - 1]))),
  ),
};

export function checkPrometheusOptions(o: unknown): PrometheusOptions | undefined {
  if (o === undefined) return undefined;
  if (typeof o !== 'object' || o === null) throw new InvalidOptionError('prometheus', 'must be { registry, prefix?, labels?, buckets? }', o);
  return parseOptions(SCHEMA, o, 'prometheus');
}

/**
 * One proxy's counting in a registry. The hot path reuses prepared label
 * objects: nothing is allocated per request but what prom-client itself does.
 */
export class PrometheusMetrics {
  readonly #shared: Shared;
  readonly #claim: string;
  readonly #race = new Map<string, Record<string, string>>();
  readonly #copy = new Map<string, Map<string, Record<string, string>>>();
  readonly #upstream = new Map<string, Record<string, string>>();
  readonly #fill: (gauge: Settable) => void;
  readonly #fillHealth: ((gauge: Settable) => void) | null;
  readonly #raceLabels: (outcome: string) => Record<string, string>;
  readonly #copyLabels: (upstream: string, outcome: string) => Record<string, string>;
  #closed = false;

  constructor(options: PrometheusOptions, upstreamIds: readonly string[], isEjected: (id: string) => boolean, isHealthy: ((id: string) => boolean) | null = null) {
    const labels = { ...options.labels };
    const labelNames = Object.keys(labels).sort();
    const buckets = options.buckets ?? DEFAULT_BUCKETS;
    const shared = sharedFor(options, labelNames, buckets);
    this.#claim = JSON.stringify(labelNames.map((n) => [n, labels[n]]));
    let claim = shared.claims.get(this.#claim);
    if (!claim) shared.claims.set(this.#claim, (claim = { count: 0, labels, upstreams: new Map() }));
    claim.count++;
    for (const id of new Set(upstreamIds)) claim.upstreams.set(id, (claim.upstreams.get(id) ?? 0) + 1);
    this.#shared = shared;
    const withLabels = (more: Record<string, string>) => Object.assign({}, labels, more);
    for (const upstream of upstreamIds) {
      this.#upstream.set(upstream, withLabels({ upstream }));
      this.#copy.set(upstream, new Map());
      shared.ejections.inc(this.#upstream.get(upstream)!, 0);
    }
    this.#raceLabels = (outcome) => {
      let l = this.#race.get(outcome);
      if (!l) this.#race.set(outcome, (l = withLabels({ outcome })));
      return l;
    };
    this.#copyLabels = (upstream, outcome) => {
      const byOutcome = this.#copy.get(upstream)!;
      let l = byOutcome.get(outcome);
      if (!l) byOutcome.set(outcome, (l = withLabels({ upstream, outcome })));
      return l;
    };
    this.#fill = (gauge) => {
      for (const [id, l] of this.#upstream) gauge.set(l, isEjected(id) ? 1 : 0);
    };
    shared.fillers.add(this.#fill);
    this.#fillHealth = isHealthy
      ? (gauge) => {
          for (const [id, l] of this.#upstream) gauge.set(l, isHealthy(id) ? 1 : 0);
        }
      : null;
    if (this.#fillHealth) shared.healthFillers.add(this.#fillHealth);
  }

  record(r: RaceReport): void {
    if (this.#closed) return;
    const { requests, duration, copies, hedged } = this.#shared;
    const raceLabels = this.#raceLabels(r.outcome);
    requests.inc(raceLabels);
    duration.observe(raceLabels, r.duration / 1000);
    for (const c of r.copies) {
      copies.inc(this.#copyLabels(c.upstream, c.outcome));
      if (c.hedged) hedged.inc(this.#upstream.get(c.upstream)!);
    }
  }

  ejected(upstream: string): void {
    if (!this.#closed) this.#shared.ejections.inc(this.#upstream.get(upstream)!);
  }

  /**
   * The proxy closed. An upstream's series leave the registry when no open
   * proxy with these labels sends to it any more (a reload may drop one);
   * the race series when no open proxy has these labels.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const s = this.#shared;
    s.fillers.delete(this.#fill);
    if (this.#fillHealth) s.healthFillers.delete(this.#fillHealth);
    const claim = s.claims.get(this.#claim)!;
    const withLabels = (more: Record<string, string>) => Object.assign({}, claim.labels, more);
    for (const upstream of this.#upstream.keys()) {
      const left = claim.upstreams.get(upstream)! - 1;
      if (left > 0) {
        claim.upstreams.set(upstream, left);
        continue;
      }
      claim.upstreams.delete(upstream);
      for (const outcome of COPY_OUTCOMES) s.copies.remove(withLabels({ upstream, outcome }));
      s.hedged.remove(withLabels({ upstream }));
      s.ejected.remove(withLabels({ upstream }));
      s.ejections.remove(withLabels({ upstream }));
      s.healthy.remove(withLabels({ upstream }));
    }
    if (--claim.count > 0) return;
    s.claims.delete(this.#claim);
    for (const outcome of RACE_OUTCOMES) {
      s.requests.remove(withLabels({ outcome }));
      s.duration.remove(withLabels({ outcome }));
    }
  }
}

/** The registry's metrics for this prefix: created once, checked against what this proxy needs. */
function sharedFor(options: PrometheusOptions, labelNames: string[], buckets: number[]): Shared {
  const { registry } = options;
  const prefix = options.prefix ?? 'redundant_proxy_';
  let byPrefix = sharedByRegistry.get(registry);
  if (!byPrefix) sharedByRegistry.set(registry, (byPrefix = new Map()));
  const existing = byPrefix.get(prefix);
  if (existing) {
    if (existing.labelNames.join(',') !== labelNames.join(',')) {
      throw new InvalidOptionError('prometheus.labels', `must have the label names of the other proxies counting in this registry under ${prefix}* (${existing.labelNames.join(', ') || 'none'})`, options.labels);
    }
    if (existing.buckets.join(',') !== buckets.join(',')) {
      throw new InvalidOptionError('prometheus.buckets', `must be those of the other proxies counting in this registry under ${prefix}* (${existing.buckets.join(', ')})`, options.buckets);
    }
    // After `registry.clear()` (or removeSingleMetric) the metrics must be registered again.
    assertFree(registry, prefix, existing.byName);
    for (const [name, metric] of existing.byName) if (registry.getSingleMetric(prefix + name) === undefined) registry.registerMetric(metric as never);
    return existing;
  }
  // Checked before anything is registered: a refusal leaves the registry as it was.
  assertFree(registry, prefix, undefined);
  const client = loadPromClient();
  const byName = new Map<string, unknown>();
  const make = <T>(Kind: MetricClass, name: string, help: string, extra: string[], more: { buckets?: number[]; collect?: () => void } = {}): T => {
    const metric = new Kind({ name: prefix + name, help, labelNames: [...labelNames, ...extra], registers: [registry], ...more });
    byName.set(name, metric);
    return metric as T;
  };
  const fillers = new Set<(gauge: Settable) => void>();
  const healthFillers = new Set<(gauge: Settable) => void>();
  const shared: Shared = {
    labelNames,
    buckets,
    byName,
    claims: new Map(),
    fillers,
    healthFillers,
    requests: make(client.Counter, 'requests_total', 'Requests raced, by outcome.', ['outcome']),
    copies: make(client.Counter, 'copies_total', 'Copies of requests, by upstream and outcome (not-sent: held back by hedging).', ['upstream', 'outcome']),
    hedged: make(client.Counter, 'hedged_copies_total', 'Copies sent because a hedge delay ran out.', ['upstream']),
    duration: make(client.Histogram, 'race_duration_seconds', 'Time from the start of a race to its end, by outcome.', ['outcome'], { buckets }),
    ejected: make(client.Gauge, 'upstream_ejected', '1 while the upstream is ejected for failing.', ['upstream'], {
      collect(this: Settable) {
        for (const fill of fillers) fill(this);
      },
    }),
    ejections: make(client.Counter, 'upstream_ejections_total', 'Times the upstream was ejected for failing.', ['upstream']),
    healthy: make(client.Gauge, 'upstream_healthy', '1 while the upstream passes its active health checks, 0 while it fails them (proxies with healthCheck only).', ['upstream'], {
      collect(this: Settable) {
        for (const fill of healthFillers) fill(this);
      },
    }),
  };
  byPrefix.set(prefix, shared);
  return shared;
}
