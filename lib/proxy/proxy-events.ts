import type { UpstreamEjectedEvent, UpstreamRestoredEvent } from './ejection.js';
import type { CopyReport, RaceReport } from './report.js';

// The events of `proxy.on(name, listener)`.

export interface RaceStartEvent {
  requestId: string;
  method: string;
  path: string;
  update: boolean;
  /** Upstream ids in the order copies will be sent. */
  upstreams: string[];
}

export interface CopySentEvent {
  requestId: string;
  copy: CopyReport;
}

export interface ProxyErrorEvent {
  requestId: string | null;
  /**
   * Where it happened: `accept` (the option threw), `select` (the select
   * function threw or returned something it was not given; the client got
   * `502` `RP_ERR_NO_SELECTION`), `store` (bookkeeping failed or was too
   * slow; the answer went out anyway), `onCancel` (the hook threw or ran past
   * `cancelTimeout`), `upstream` (a replica's worker refuses the proxy's
   * copies: its secret or id does not match; said once per upstream until it
   * answers again), `hook` (`rewriteCopy` or `rewriteAnswer` threw, rejected
   * or gave back what cannot be sent; the client got `500`
   * `RP_ERR_HOOK_FAILED`, or `502` `RP_ERR_ANSWER_LOST` for an update that
   * committed), `internal`.
   */
  source: 'accept' | 'select' | 'store' | 'onCancel' | 'upstream' | 'hook' | 'internal';
  error: unknown;
}

export interface CopyCancelledEvent {
  requestId: string;
  duplicateId: string;
  upstream: string;
  committedBy: string;
}

/** An upstream's active health checks changed their verdict (the `healthCheck` option). */
export interface UpstreamHealthEvent {
  upstream: string;
  /** The probes in a row that decided it. */
  inARow: number;
  /** The last probe's status, when it got one. */
  status?: number;
  /** Why the last probe failed, when it did. */
  error?: string;
}

/** A WebSocket (or other `Upgrade`) handed to `proxy.upgrade`, once it is known how it went. */
export interface UpgradeEvent {
  requestId: string;
  /** The request target; null when it was refused before it was read (closing, or not a path). */
  path: string | null;
  /** The upstream's id; null when none was asked (the proxy is closing, every upstream ejected or busy). */
  upstream: string | null;
  /**
   * `upgraded`: the upstream switched protocols and the tunnel is open;
   * `refused`: the upstream answered without switching (its answer went to
   * the client); `failed`: no upstream, or it could not be reached or did
   * not answer in time (the client got a JSON error).
   */
  outcome: 'upgraded' | 'refused' | 'failed';
  /** What the client got: 101, the upstream's status, or the error's. */
  status: number;
  /** Why it failed. */
  error?: unknown;
}

/** An upgraded tunnel ended (either side closed it, or `close()` did). */
export interface UpgradeEndEvent {
  requestId: string;
  upstream: string;
  /** Milliseconds from the upgrade request to the tunnel's end. */
  duration: number;
}

/** Events of `.on(name, listener)`. */
export interface ProxyEvents {
  /** A request passed its checks and its copies are about to leave. */
  'race:start': RaceStartEvent;
  /** One copy left for its upstream. */
  'copy:sent': CopySentEvent;
  /** A race ended: every copy's upstream, timing and outcome. */
  'race:end': RaceReport;
  /** An update's copy was stopped because another copy committed; `onCancel` ran and the store recorded it. */
  'copy:cancelled': CopyCancelledEvent;
  /** An upstream failed too often in a row (the `ejection` option): it receives no copies for `duration` ms. */
  'upstream:ejected': UpstreamEjectedEvent;
  /** An ejected upstream's time is over: it receives copies again, on probation. */
  'upstream:restored': UpstreamRestoredEvent;
  /** An upstream failed `healthCheck.unhealthyThreshold` probes in a row: it receives no copies until it passes again. */
  'upstream:unhealthy': UpstreamHealthEvent;
  /** An unhealthy upstream passed `healthCheck.healthyThreshold` probes in a row: it receives copies again. */
  'upstream:healthy': UpstreamHealthEvent;
  /** A WebSocket (or other `Upgrade`) was tunnelled to an upstream, refused by it, or failed. */
  upgrade: UpgradeEvent;
  /** An upgraded tunnel ended. */
  'upgrade:end': UpgradeEndEvent;
  /** Something failed that did not fail the request. Never thrown. */
  error: ProxyErrorEvent;
}

/** The names of {@link ProxyEvents}. */
export const PROXY_EVENTS = [
  'race:start',
  'copy:sent',
  'race:end',
  'copy:cancelled',
  'upstream:ejected',
  'upstream:restored',
  'upstream:unhealthy',
  'upstream:healthy',
  'upgrade',
  'upgrade:end',
  'error',
] as const satisfies readonly (keyof ProxyEvents)[];
// Every event listed: a name added to ProxyEvents and not here fails this line.
const _every: Exclude<keyof ProxyEvents, (typeof PROXY_EVENTS)[number]> extends never ? true : never = true;
void _every;
