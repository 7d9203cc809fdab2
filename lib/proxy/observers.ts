import type { Emitter } from '../events.js';
import type { Ejector } from './ejection.js';
import type { AdaptiveDelay } from './hedge.js';
import type { Metrics } from './metrics.js';
import type { PrometheusMetrics } from './prometheus.js';
import type { ProxyEvents } from './proxy-events.js';
import type { RaceReport } from './report.js';
import type { RaceTrace } from './tracing.js';

// Stage "record" hands each finished race's report to whoever learns from it:
// proxy.metrics(), Prometheus, outlier ejection, the adaptive hedge delay, the
// race's spans and the `race:end` event. Each subscribes once, when the proxy
// is made; the proxy only publishes.

/** What a race's observers are told besides its report: how it was planned. */
export interface RacePlan {
  /** The ejector's epoch when the copies were planned: what happened since is not judged by them. */
  epoch: number;
  /** The route whose latencies the adaptive hedge delay learns (`METHOD /path`), or ''. */
  route: string;
  /** The hedge delay the race ran with. */
  hedgeDelay: number;
  /** The race's spans, when tracing is on (lib/proxy/tracing.ts): they end with its report. */
  trace: RaceTrace | null;
}

export interface ReportObserver {
  raceEnded(report: RaceReport, plan: RacePlan): void;
}

/** The observers of a proxy's races, in the order they are told. */
export function reportObservers(parts: {
  metrics: Metrics;
  prometheus: PrometheusMetrics | null;
  ejector: Ejector | null;
  adaptive: AdaptiveDelay | null;
  events: Emitter<ProxyEvents>;
}): ReportObserver[] {
  const { metrics, prometheus, ejector, adaptive, events } = parts;
  const observers: ReportObserver[] = [{ raceEnded: (report) => metrics.record(report) }];
  if (prometheus) observers.push({ raceEnded: (report) => prometheus.record(report) });
  if (ejector) observers.push({ raceEnded: (report, plan) => ejector.record(report, plan.epoch) });
  if (adaptive) observers.push({ raceEnded: (report, plan) => adaptive.learn(plan.route, report, plan.hedgeDelay) });
  observers.push({ raceEnded: (report, plan) => plan.trace?.end(report) });
  observers.push({ raceEnded: (report) => events.emit('race:end', report) });
  return observers;
}

/** Tells every observer. */
export function publish(observers: readonly ReportObserver[], report: RaceReport, plan: RacePlan): void {
  for (const observer of observers) observer.raceEnded(report, plan);
}
