import './augment.js';
export { redundantProxy } from './proxy/proxy.js';
export type { RedundantProxy, ProxyEvents, RaceStartEvent, CopySentEvent, CopyCancelledEvent, ProxyErrorEvent, KoaLikeContext, UpgradeEvent, UpgradeEndEvent, UpstreamHealthEvent } from './proxy/proxy.js';
export type { ProxyOptions, UpstreamSpec, UpstreamTlsOptions, UpstreamResponse, HedgeOptions, SessionOptions, CancelInfo, IdempotencyOptions, SelectOption, SelectFunction, SelectAnswer, SelectState, EjectionOptions, RetryOptions, HealthCheckOptions, OutgoingCopy, AdoptedAnswer, CopyInfo } from './proxy/options.js';
export type { UpstreamEjectedEvent, UpstreamRestoredEvent } from './proxy/ejection.js';
export type { PrometheusOptions, PrometheusRegistry } from './proxy/prometheus.js';
export { redundantWorker } from './worker/worker.js';
export type { RedundantWorker, WorkerOptions, RedundantHandle, WorkerEvents, WorkerErrorEvent, KoaWorkerContext } from './worker/worker.js';
export type { Claim } from './worker/commit.js';
export { MemorySessionStore } from './store/memory.js';
export type { MemorySessionStoreOptions } from './store/memory.js';
export type { RaceReport, CopyReport, RaceOutcome, CopyOutcome } from './proxy/race.js';
export type { ProxyMetrics, UpstreamMetrics, UpgradeMetrics } from './proxy/metrics.js';
export type { Disposable } from './events.js';
export {
  RedundantProxyError,
  InvalidOptionError,
  SupersededError,
  AlreadyAppliedError,
  isRedundantProxyError,
  isSupersededError,
  isAlreadyAppliedError,
  codes,
} from './errors.js';
export type { ErrorCode } from './errors.js';
export type {
  SessionStore,
  RequestLog,
  SessionState,
  CommitArbiter,
  IdempotencyStore,
  Closable,
  RequestRecord,
  CopyRecord,
  CommitRecord,
  SessionRecord,
  RecordCopyInput,
  RecordAdoptionInput,
  ClaimOptions,
  ClaimGrant,
  StoredAnswer,
  IdempotencyState,
} from './store/types.js';
