// What happens to the copies that lose a race: drained or aborted, and how
// long one still out may take to answer. Over HTTP/1.1 the only way to tell
// an upstream to stop is to close the connection, so a loser that has already
// sent its head with a small body is drained instead (read to its end and
// dropped), which keeps its pooled connection warm; a large or unknown-length
// body is aborted.
//
// A loser that has not answered when the race is decided (a read's, or an
// update's once another copy committed) is given a short grace to answer,
// then aborted. Copies to equally fast replicas usually answer within it (an
// update's with `x-redundant-commit: lost`) and are drained, so their
// connections stay pooled; only a copy that is really slow (in the tail)
// costs its connection, and for an update its cancel hook. The grace is half
// the time the race took so far, within bounds.

import { codes, RedundantProxyError } from '../../errors.js';
import { COMMIT, H } from '../../wire/protocol.js';
import type { Copy } from './copy.js';
import type { RaceCore } from './input.js';

type Headers = Record<string, string | string[] | undefined>;

export class LoserPolicy {
  constructor(
    /** Largest body (by its Content-Length) drained rather than aborted. */
    readonly drainLimit = 64 * 1024,
    readonly graceMin = 2,
    readonly graceMax = 10,
  ) {}

  /** A loser that answered with these headers is drained (true) or aborted (false). */
  drains(headers: Headers): boolean {
    const cl = headers['content-length'];
    return typeof cl === 'string' && Number(cl) <= this.drainLimit;
  }

  /** How long the losers still out may take to answer, when the race was decided `elapsed` ms after it started. */
  grace(elapsed: number): number {
    return Math.min(this.graceMax, Math.max(this.graceMin, elapsed / 2));
  }

  /** A copy whose answer is not wanted: drained if small, else aborted. */
  drainOrAbort(copy: Copy): void {
    if (this.drains(copy.headers)) copy.to('draining');
    else copy.abort();
  }

  /** Stops a copy that lost, wherever it stands, and says so in its report. */
  stop(copy: Copy): void {
    switch (copy.state) {
      case 'sent':
      case 'lingering':
        copy.report.outcome = 'stopped';
        copy.abort();
        break;
      case 'collecting':
        copy.report.outcome = 'rejected';
        copy.chunks = [];
        this.drainOrAbort(copy);
        break;
      case 'buffering':
        // Answering, but another answer was chosen first.
        copy.chunks = [];
        if (this.drains(copy.headers)) {
          copy.report.outcome = 'drained';
          copy.to('draining');
        } else copy.abort();
        break;
      case 'holding':
      case 'streaming':
        copy.abort();
        break;
      default:
    }
  }

  /**
   * A loser answered within its grace: it stopped by itself. Drained
   * (keeping the connection) if small; an update's copy says it lost the commit.
   */
  answeredInGrace(copy: Copy, headers: Headers): void {
    if (copy.report.error === 'timeout') copy.report.error = null; // it did answer
    const lost = headers[H.commit] === COMMIT.lost;
    if (this.drains(headers)) {
      copy.to('draining');
      copy.report.outcome = lost ? 'lost' : 'drained';
    } else {
      this.stop(copy);
      if (lost) copy.report.outcome = 'lost';
    }
  }

  /** A loser answered after the race was decided, without a grace: drained if small, else stopped. */
  answeredLate(copy: Copy, headers: Headers): void {
    if (this.drains(headers)) {
      copy.report.outcome = 'drained';
      copy.to('draining');
    } else {
      copy.report.outcome = 'stopped';
      copy.abort();
    }
  }
}

/** The policy every race uses. */
export const LOSERS = new LoserPolicy();

/** Gives the losers still out a short grace to answer, then stops them (a loser after a commit is cancelled). */
export function lingerLosers(race: RaceCore): void {
  let any = false;
  for (const c of race.copies) {
    if (c.state !== 'sent' || c === race.winner) continue;
    // Not on the wire yet (queued, or waiting to retry): nothing to wait for.
    if (!c.mayHaveRun) {
      race.stopAndCancel(c);
      continue;
    }
    c.to('lingering');
    any = true;
  }
  if (!any) return;
  const { time } = race.input;
  race.lingerTimer = time.setTimeout(() => {
    race.lingerTimer = null;
    // Timers run before the event loop reads sockets: give answers already
    // waiting there one turn to arrive, rather than abort them (and their connection).
    time.setImmediate(() => {
      for (const c of race.copies) if (c.state === 'lingering') race.stopAndCancel(c);
      race.lingerSettled();
    });
  }, LOSERS.grace(time.now() - race.started));
}

/** Another copy answered `x-redundant-commit: won` after one committed: the store's arbitration failed. */
export function secondCommit(race: RaceCore, copy: Copy): void {
  const { requestId } = race.input;
  const first = race.winner?.upstream.id ?? 'unknown';
  const message = `request ${requestId}: upstream "${copy.upstream.id}" answered x-redundant-commit: won after upstream "${first}" had committed; the session store's commit arbitration failed (is every worker on the same store?)`;
  race.input.observer.secondCommit(requestId, new RedundantProxyError(codes.INTERNAL, message));
}
