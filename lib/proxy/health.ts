import type { Scheduler, TimerHandle } from '../time.js';
import { REAL_TIME, unref } from '../time.js';

// Active health checks: each upstream is asked a path on a fixed interval,
// whatever the traffic, and judged by thresholds in a row (Envoy's
// `health_checks`). Passive ejection only learns from copies that were sent;
// a health check also finds an upstream that came back while no copy went to
// it, and one that broke while it was idle. Upstreams start healthy (a
// gateway must serve from its first request); one probe at a time each.

export interface HealthCheckSettings {
  /** Path (and query) asked of each upstream, after its URL's own path prefix. */
  path: string;
  /** Milliseconds between the end of one probe and the start of the next. */
  interval: number;
  /** A probe that has not answered within this many ms failed. */
  timeout: number;
  /** Failed probes in a row that make an upstream unhealthy. */
  unhealthyThreshold: number;
  /** Passed probes in a row that make an unhealthy upstream healthy again. */
  healthyThreshold: number;
  /** Which statuses pass. Default: 200–399. */
  expect: (status: number) => boolean;
}

/** Asks `path` of upstream `id`; resolves with the answer's status (its body read and dropped). */
export type Probe = (id: string, path: string, signal: AbortSignal) => Promise<number>;

export interface HealthChange {
  upstreamId: string;
  healthy: boolean;
  /** The probes in a row that decided it. */
  inARow: number;
  /** The last probe's status, when it got one. */
  status?: number;
  /** Why the last probe failed, when it failed without a status or with an unexpected one. */
  error?: string;
}

interface State {
  healthy: boolean;
  passes: number;
  failures: number;
  timer: TimerHandle | null;
  probing: AbortController | null;
  lastStatus?: number;
  lastError?: string;
}

export class HealthChecker {
  readonly #settings: HealthCheckSettings;
  readonly #probe: Probe;
  readonly #time: Scheduler;
  readonly #onChange: (change: HealthChange) => void;
  readonly #states = new Map<string, State>();
  #closed = false;

  constructor(ids: readonly string[], settings: HealthCheckSettings, probe: Probe, onChange: (change: HealthChange) => void, time: Scheduler = REAL_TIME) {
    this.#settings = settings;
    this.#probe = probe;
    this.#time = time;
    this.#onChange = onChange;
    for (const id of ids) this.#states.set(id, { healthy: true, passes: 0, failures: 0, timer: null, probing: null });
  }

  /** Starts probing every upstream now. */
  start(): void {
    for (const id of this.#states.keys()) this.#run(id);
  }

  /** Whether `id` passes its health checks (true for an id it does not check). */
  isHealthy(id: string): boolean {
    return this.#states.get(id)?.healthy ?? true;
  }

  /** What the checks know of each upstream, for metrics. */
  snapshot(): Record<string, { healthy: boolean; passesInARow: number; failuresInARow: number; lastStatus?: number; lastError?: string }> {
    const out: ReturnType<HealthChecker['snapshot']> = {};
    for (const [id, s] of this.#states) out[id] = { healthy: s.healthy, passesInARow: s.passes, failuresInARow: s.failures, lastStatus: s.lastStatus, lastError: s.lastError };
    return out;
  }

  /** Stops every timer and probe in flight. */
  close(): void {
    this.#closed = true;
    for (const s of this.#states.values()) {
      if (s.timer !== null) this.#time.clearTimeout(s.timer);
      s.timer = null;
      s.probing?.abort();
    }
  }

  #run(id: string): void {
    const s = this.#states.get(id)!;
    s.timer = null;
    if (this.#closed || s.probing) return;
    const controller = new AbortController();
    s.probing = controller;
    const timer = this.#time.setTimeout(() => controller.abort(new Error(`no answer within ${this.#settings.timeout} ms`)), this.#settings.timeout);
    unref(timer);
    this.#probe(id, this.#settings.path, controller.signal).then(
      (status) => {
        if (controller.signal.aborted) return this.#judge(id, s, false, undefined, String((controller.signal.reason as Error)?.message ?? 'aborted'));
        const ok = this.#settings.expect(status);
        this.#judge(id, s, ok, status, ok ? undefined : `status ${status}`);
      },
      (err: unknown) => {
        const why = controller.signal.aborted ? (controller.signal.reason as Error) : err;
        this.#judge(id, s, false, undefined, String((why as Error)?.message ?? why));
      },
    ).finally(() => {
      this.#time.clearTimeout(timer);
      s.probing = null;
      if (this.#closed) return;
      s.timer = this.#time.setTimeout(() => this.#run(id), this.#settings.interval);
      unref(s.timer);
    });
  }

  #judge(id: string, s: State, ok: boolean, status: number | undefined, error: string | undefined): void {
    if (this.#closed) return;
    s.lastStatus = status;
    s.lastError = error;
    if (ok) {
      s.passes++;
      s.failures = 0;
      if (!s.healthy && s.passes >= this.#settings.healthyThreshold) {
        s.healthy = true;
        this.#onChange({ upstreamId: id, healthy: true, inARow: s.passes, status });
      }
    } else {
      s.failures++;
      s.passes = 0;
      if (s.healthy && s.failures >= this.#settings.unhealthyThreshold) {
        s.healthy = false;
        this.#onChange({ upstreamId: id, healthy: false, inARow: s.failures, status, error });
      }
    }
  }
}

/** Statuses that pass by default: 2xx and 3xx. */
export const passesByDefault = (status: number): boolean => status >= 200 && status < 400;
