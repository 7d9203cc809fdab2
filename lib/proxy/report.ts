import type { RaceCore } from './race/input.js';
// What a race reports: each copy's fate and the race's outcome. The race
// writes it; metrics, Prometheus, ejection, adaptive hedging and the events
// read it. Its own file, so that none of them imports the race.

export type CopyOutcome =
  /** Its answer was adopted. */
  | 'won'
  /** Stopped before it answered (its connection was closed). */
  | 'stopped'
  /** Answered after another copy won; its body was read and discarded. */
  | 'drained'
  /** Transport error: connection refused or reset, malformed response. */
  | 'failed'
  /** Answered, but `accept()` refused the answer. */
  | 'rejected'
  /** Never sent: an earlier copy won before its hedge delay ran out. */
  | 'not-sent'
  /** An update's copy that lost the commit arbitration (`x-redundant-commit: lost`): never adopted. */
  | 'lost'
  /**
   * An update's copy that took the commit over and found it already applied
   * by an earlier copy (`x-redundant-commit: applied`): the client is told
   * the update was applied and its answer lost.
   */
  | 'applied'
  /** An update's copy still processing when another copy committed (and past its grace): aborted, and `onCancel` ran for it. */
  | 'cancelled'
  /** `select: { quorum }`: gave the same answer as the adopted copy (one of the quorum). */
  | 'agreed'
  /** `select` (a quorum or a function): answered acceptably, whole, but its answer was not chosen. */
  | 'outvoted';

export interface CopyReport {
  index: number;
  upstream: string;
  duplicateId: string;
  outcome: CopyOutcome;
  /** Milliseconds from the start of the race to sending this copy. */
  sentAt: number | null;
  /** Milliseconds from sending this copy to its response head. */
  latency: number | null;
  status: number | null;
  /**
   * The transport error's code or message, for `failed`; why an answer was
   * not usable, for some `rejected` (too large for `select`); for `won`, why
   * its body broke after the head went out (the race is `broken`);
   * `'timeout'` for a copy out for at least half the request's `timeout` and
   * still waiting for its answer (or, under `select`, for the rest of the
   * body to compare) when it ran out; `'body-timeout'` for a winner still
   * streaming its body then.
   */
  error: string | null;
  /** True when the copy was held back by hedging and then sent. */
  hedged: boolean;
  /** Times it was sent again after its connection failed before the request went out (the `retry` option); absent when never. */
  retries?: number;
  /** True when its worker answered `503` because its session store failed (`RP_ERR_STORE_UNAVAILABLE`); absent otherwise. */
  storeUnavailable?: boolean;
}

export type RaceOutcome =
  /** An acceptable answer was streamed whole to the client. */
  | 'won'
  /** No copy answered acceptably: the client got an upstream's error or a 502. */
  | 'failed'
  /** No acceptable answer within `timeout` (504), or the body was cut off at it. */
  | 'timeout'
  /** The client went away first. */
  | 'client-closed'
  /** The winner's body broke after its head was sent; the client connection was reset. */
  | 'broken'
  /** An update committed, but its answer never arrived: the client was told so (`RP_ERR_ANSWER_LOST`). */
  | 'answer-lost'
  /**
   * An update ended without an answer while a copy held its commit claim:
   * whether it is applied is not known yet (`RP_ERR_OUTCOME_UNKNOWN`; a
   * retry with the same `Idempotency-Key` learns it).
   */
  | 'outcome-unknown';

export interface RaceReport {
  requestId: string;
  method: string;
  path: string;
  update: boolean;
  outcome: RaceOutcome;
  /** Status sent to the client, or null when none was. */
  status: number | null;
  /** Id of the upstream whose answer was adopted (the winner's, or the error passed through). */
  servedBy: string | null;
  /** Duplicate id of the copy whose answer was adopted. */
  adopted: string | null;
  /** The adopted copy committed the update (`x-redundant-commit: won`). */
  committed: boolean;
  /** Milliseconds from the start of the race to its end. */
  duration: number;
  copies: CopyReport[];
}

const zeroOutcomes = (): Record<RaceOutcome, number> => ({ won: 0, failed: 0, timeout: 0, 'client-closed': 0, broken: 0, 'answer-lost': 0, 'outcome-unknown': 0 });
const zeroCopy = (): Record<CopyOutcome, number> => ({ won: 0, stopped: 0, drained: 0, failed: 0, rejected: 0, 'not-sent': 0, lost: 0, cancelled: 0, agreed: 0, outvoted: 0, applied: 0 });

/** Every race outcome and every copy outcome, for whoever must list them (the Prometheus series). */
export const RACE_OUTCOMES = Object.keys(zeroOutcomes()) as readonly RaceOutcome[];
export const COPY_OUTCOMES = Object.keys(zeroCopy()) as readonly CopyOutcome[];

/** How a copy's `error` starts when the copy was never sent because the request could not be (undici refused it): nothing the upstream did. */
export const LOCAL_REFUSAL = 'not sent: ';

/** The adopted answer, as sent to the client, when the race was asked to keep it (an Idempotency-Key's). */
export interface CapturedAnswer {
  status: number;
  headers: Record<string, string | string[]>;
  /** null when the body was larger than what was to be kept. */
  body: Buffer | null;
}

/**
 * Told, as a race runs, what is not in its report: the proxy's bookkeeping
 * (copies in flight, upstreams that run the worker or refuse), the update's
 * cancelled copies, and errors that do not fail the request. One per proxy,
 * shared by its races: the request's id comes with each call.
 */
export interface RaceObserver {
  /** One copy left for its upstream. */
  copySent(requestId: string, copy: CopyReport): void;
  /** A copy was handed to its upstream's connection pool; and its exchange ended (answered whole, failed or stopped). */
  copyStarted(upstreamId: string): void;
  copyEnded(upstreamId: string): void;
  /** An upstream answered with `x-redundant-worker`: it runs the worker. */
  workerSeen(upstreamId: string): void;
  /** A worker refused a copy (`x-redundant-refused: <code>`): its secret or id does not match the proxy's. */
  refused(upstreamId: string, code: string): void;
  /** A copy was stopped because another copy of the update committed. */
  cancelled(requestId: string, copy: CopyReport, committed: CopyReport): void;
  /** Something went wrong: `accept` threw, the select function failed, the store's arbitration did (none of them fails the request), or a hook failed (which does). */
  error(requestId: string | null, source: 'accept' | 'select' | 'hook' | 'internal', error: unknown): void;
  /** A second copy of an update answered that it committed: the store's arbitration failed (an `error`, source `internal`, and said loudly without a listener). */
  secondCommit(requestId: string, error: unknown): void;
}

/** An observer that is told nothing. */
export const UNOBSERVED: RaceObserver = {
  copySent() {},
  copyStarted() {},
  copyEnded() {},
  workerSeen() {},
  refused() {},
  cancelled() {},
  error() {},
  secondCommit() {},
};

/** What a finished race reports; `clientGone`: what its client was sent before it left, if it left. */
export function raceReport(race: RaceCore, clientGone: { status: number | null } | null, duration: number): RaceReport {
  const { input } = race;
  const adopted = race.winner ?? (race.passedThrough ? race.fallback : null);
  return {
    requestId: input.requestId,
    method: input.method,
    path: input.path,
    update: input.update,
    // Whatever the race came to after its client left, the client got none of it.
    outcome: clientGone ? 'client-closed' : race.outcome,
    status: clientGone ? clientGone.status : input.res.headersSent ? input.res.statusCode : null,
    servedBy: adopted?.upstream.id ?? null,
    adopted: adopted?.report.duplicateId ?? null,
    committed: race.committed,
    duration,
    copies: race.copies.map((c) => c.report),
  };
}
