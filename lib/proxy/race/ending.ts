import { codes, RedundantProxyError } from '../../errors.js';
import { sendError } from '../respond.js';
import { answerNoUsable, passThrough } from './answer.js';
import type { Copy } from './copy.js';
import { guard, type RaceCore } from './input.js';

// How a race ends without an adopted answer: every copy failed (an
// upstream's own error answer passes through, else a 502), or the timeout
// came (504, a select function's last say, or for an update the answer held
// back once the store says nothing can commit any more). An update asks the
// store first: the client must hear that an update was applied if it was.

/** Every copy failed or was unusable. */
export function answerFailure(race: RaceCore): void {
  if (race.input.beforeFailure) return consultStore(race, false, () => answerFailureNow(race));
  answerFailureNow(race);
}

function answerFailureNow(race: RaceCore): void {
  const { res, requestId } = race.input;
  const { fallback } = race;
  if (fallback && !res.headersSent && !res.destroyed) {
    passThrough(res, fallback, requestId, race.input.method);
    race.passedThrough = true;
  } else answerNoUsable(res, race.copies, requestId, race.input.maxAnswerSize);
  race.finish('failed');
}

/**
 * An update ends without an answer: ask the store first. If a copy
 * committed and its answer was lost on the way, the client must hear that
 * the update was applied, not that it failed.
 */
function consultStore(race: RaceCore, adopting: boolean, otherwise: () => void, keep?: Copy): void {
  const { input } = race;
  const ask = input.beforeFailure!;
  input.beforeFailure = undefined; // once
  race.consulting = true;
  race.hedging.stop();
  const { held } = race.strategy;
  for (const copy of race.copies) if (!held.includes(copy) && copy !== keep) race.stopAndCancel(copy);
  race.lingerSettled();
  guard(race, ask(adopting).then(
    (err) => {
      race.consulting = false;
      if (race.finished) return;
      if (!err) return otherwise();
      const unknown = err.code === codes.OUTCOME_UNKNOWN;
      sendError(input.res, err, input.requestId, unknown ? { 'retry-after': '1' } : undefined);
      race.finish(unknown ? 'outcome-unknown' : 'answer-lost');
    },
    () => {
      race.consulting = false;
      if (!race.finished) otherwise();
    },
  ));
}

/**
 * An update that gave a copy up at its per-try timeout (`perTryTimeout`)
 * adopts `copy`, an answer that did not commit, only once sealed: the copy
 * given up may have claimed before its stop reached its worker. Every other
 * copy still out is stopped, as at the timeout.
 */
export function sealThenAdopt(race: RaceCore, copy: Copy): void {
  consultStore(
    race,
    true,
    () => {
      const usable = copy.state === 'holding' && !copy.broken ? copy : race.strategy.held[0];
      if (usable) race.adopt(usable);
      else answerFailureNow(race);
    },
    copy,
  );
}

/** The request's timeout. */
export function timedOut(race: RaceCore): void {
  // Decided already: the adopted body is complete and only waits for `beforeEnd`.
  if (race.finished || race.ending) return;
  const { res, requestId, timeout } = race.input;
  // Copies still waiting for their answer, or for the rest of an answer
  // being compared, ran out of time: say so (outlier ejection counts them
  // as failures; copies stopped earlier, and a winner still streaming, not).
  // A copy sent late in the request (a hedge) says little: only one out
  // for half the timeout or more is marked.
  const now = race.input.time.now();
  for (const copy of race.copies) {
    if ((copy.state === 'sent' || copy.state === 'buffering') && now - copy.startedAt >= timeout / 2) copy.report.error = 'timeout';
    // A winner still streaming: a long body (a download, a stream), not a failure.
    else if (copy.state === 'streaming') copy.report.error = 'body-timeout';
  }
  // The store was asked whether a copy of this update committed and has not
  // said yet: nobody knows whether it was applied, and the client must not
  // take a plain timeout for "nothing happened".
  if (race.consulting) {
    const err = new RedundantProxyError(
      codes.OUTCOME_UNKNOWN,
      `no answer within ${timeout} ms while the session store was asked whether this update was applied: it may or may not be; retry with the same Idempotency-Key to learn which`,
      { status: 503 },
    );
    if (res.headersSent) res.destroy();
    else sendError(res, err, requestId, { 'retry-after': '1' });
    race.finish('outcome-unknown');
    return;
  }
  // A select function waiting for more answers gets its last say.
  if (!race.winner && !res.headersSent) {
    const decision = race.strategy.lastSay();
    if (decision) return race.decided(decision);
  }
  const answerTimeout = () => {
    if (res.headersSent) res.destroy();
    else sendError(res, new RedundantProxyError(codes.TIMEOUT, `no acceptable answer within ${timeout} ms`, { status: 504 }), requestId);
    race.finish('timeout');
  };
  if (race.input.beforeFailure && !res.headersSent) {
    // The copies still out never committed: an answer that did not commit may now be adopted.
    const { held } = race.strategy;
    consultStore(race, held.length > 0, () => (held[0] ? race.adopt(held[0]) : answerTimeout()));
  } else answerTimeout();
}
