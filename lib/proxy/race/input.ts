import type { TimerHandle } from '../../time.js';
import type { ServerResponse } from 'node:http';
import type { RedundantProxyError } from '../../errors.js';
import type { AdoptedAnswer, ResolvedSelect, Upstream, UpstreamResponse } from '../options.js';
import type { CapturedAnswer, CopyReport, RaceOutcome } from '../report.js';
import type { AdoptionStrategy, Decision } from './adoption.js';
import type { AnswerTail } from './tail.js';
import type { Copy, CopyRequest } from './copy.js';
import type { HedgeScheduler, HedgeTokens } from './hedging.js';

// What a race is given, and the part of a race that its helpers
// (race/ending.ts) may use: their own file, so that no helper imports the race.

type Headers = Record<string, string | string[] | undefined>;

export interface RaceInput extends CopyRequest {
  /** The client's response. */
  res: ServerResponse;
  /** Upstreams to use, in order: copy i goes to targets[i]. */
  targets: Upstream[];
  hedgeDelay: number;
  /** The hedge budget: asked before each hedged copy. */
  budget: HedgeTokens;
  accept: (response: UpstreamResponse) => boolean;
  /** How a read's answer is chosen. Updates ignore it: the committed copy's answer wins. */
  select: ResolvedSelect;
  /** Largest answer buffered for a quorum or a select function to compare. */
  maxAnswerSize: number;
  /**
   * Called when a copy wins, before its head goes to the client. May return
   * headers to add, or a promise of them: the head (and body) wait for it.
   */
  beforeHead?: (copy: CopyReport, headers: Headers) => Record<string, string | string[]> | Promise<Record<string, string | string[]>> | undefined;
  /**
   * Updates only: asked before answering a failure or a timeout, and before
   * adopting, at the timeout, an answer that did not commit (`adopting`: the
   * proxy must then make sure no copy still out can commit). Resolves an
   * error to answer with instead (the update committed but its answer was
   * lost, or a copy holds the commit and its outcome is not known), or
   * undefined to go on.
   */
  beforeFailure?: (adopting: boolean) => Promise<RedundantProxyError | undefined>;
  /**
   * Runs once the adopted answer's body is complete, before its last bytes
   * go to the client (idempotency: the key is completed before the client
   * can retry). The last chunk waits for it.
   */
  beforeEnd?: (captured: CapturedAnswer | null) => Promise<void>;
  /** Which attempt of an `Idempotency-Key` this race is (duplicate ids stay unique when a retry resumes a request id). @default 1 */
  attempt?: number;
  /** Bytes of the adopted answer's body to keep for `captured` (idempotency); 0 keeps nothing. */
  capture: number;
  /**
   * A copy given up at its per-try timeout is replaced by one to this
   * upstream when every planned copy is out: one not in `tried`, not
   * ejected or unhealthy (an update's: one that runs the worker); null when none.
   */
  spare?: (tried: readonly string[]) => Upstream | null;
  /** The `rewriteAnswer` option: the adopted answer's head changed before it goes out (race/hooks.ts). */
  rewriteAnswer?: (answer: AdoptedAnswer) => void | Promise<void>;
}

/** The race, as its helpers see it. */
export interface RaceCore {
  readonly input: RaceInput;
  readonly copies: readonly Copy[];
  readonly strategy: AdoptionStrategy<Copy>;
  readonly hedging: HedgeScheduler;
  readonly winner: Copy | null;
  readonly fallback: Copy | null;
  passedThrough: boolean;
  readonly finished: boolean;
  /** When the race started, on its clock. */
  readonly started: number;
  /** The losers' grace, while it runs. */
  lingerTimer: TimerHandle | null;
  /** What the race came to (meaningful once finished). */
  readonly outcome: RaceOutcome;
  /** A copy committed (answered `won` or `applied`). */
  readonly committed: boolean;
  /** The body is complete and `beforeEnd` runs. */
  ending: boolean;
  /** An update's store is being asked whether a copy committed (`beforeFailure`), and has not said yet. */
  consulting: boolean;
  /** The adopted answer kept, and its last chunk held back, for an Idempotency-Key; null without one. */
  readonly tail: AnswerTail | null;
  adopt(copy: Copy): void;
  /** Does what the adoption strategy decided. */
  decided(decision: Decision<Copy>): void;
  /** Stops a copy; one still processing after a commit is cancelled. */
  stopAndCancel(copy: Copy): void;
  lingerSettled(): void;
  finish(outcome: RaceOutcome): void;
}

/**
 * A step the race ran after waiting for the proxy (the adoption recorded,
 * the key completed, the store's word) threw: reported as an internal error,
 * never left as an unhandled rejection (which would end the process).
 */
export function guard(race: RaceCore, step: Promise<unknown>): void {
  step.catch((error: unknown) => race.input.observer.error(race.input.requestId, 'internal', error));
}
