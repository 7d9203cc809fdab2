// A copy's lifecycle: its states, and every transition the race may make
// between them, written down in one table. The race moves a copy only
// through `transition()`; under test (jest) an illegal move throws, so a
// change to the race that invents a transition fails the suite; in
// production it is allowed (a request must not fail for it) but never
// silently different from what the table says.

/** Where a copy stands. */
export type CopyState =
  /** Planned, not sent yet (held back by hedging, or never sent). */
  | 'idle'
  /** Sent; no answer yet. */
  | 'sent'
  /** Lost the race before answering; given a short grace to answer (then drained) before it is aborted. */
  | 'lingering'
  /**
   * Answered, its body paused and buffered: an update's answer held until
   * every copy has answered or one committed, the winner whose head waits
   * for its adoption to be recorded, or (ended) a compared answer until chosen.
   */
  | 'holding'
  /** The adopted answer, its body going to the client. */
  | 'streaming'
  /** An unacceptable answer kept (bounded) to be passed through if nothing acceptable comes. */
  | 'collecting'
  /** An acceptable answer to a read under a quorum or a select function, read whole to be compared. */
  | 'buffering'
  /** Its answer is not wanted: read to its end and dropped, which keeps the connection. */
  | 'draining'
  /** Finished: ended, failed, or aborted. */
  | 'done';

const LEGAL: Record<CopyState, readonly CopyState[]> = {
  idle: ['sent', 'done'],
  sent: ['lingering', 'holding', 'streaming', 'collecting', 'buffering', 'draining', 'done'],
  lingering: ['draining', 'done'],
  holding: ['streaming', 'draining', 'done'],
  streaming: ['done'],
  collecting: ['draining', 'done'],
  buffering: ['holding', 'draining', 'done'],
  draining: ['done'],
  // Stopping a copy that is already done is a no-op, not a move.
  done: ['done'],
};

const strict = process.env.JEST_WORKER_ID !== undefined || process.env.REDUNDANT_PROXY_STRICT === '1';

/** Whether `from` → `to` is a move the race may make. */
export function isLegalTransition(from: CopyState, to: CopyState): boolean {
  return LEGAL[from].includes(to);
}

/** Checks a move: throws under test when the table does not allow it. Returns `to`. */
export function transition(from: CopyState, to: CopyState): CopyState {
  if (strict && !isLegalTransition(from, to)) throw new Error(`redundant-proxy: illegal copy transition ${from} → ${to}`);
  return to;
}
