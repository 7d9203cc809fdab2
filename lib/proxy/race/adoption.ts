import { createHash } from 'node:crypto';
import { codes } from '../../errors.js';
import { COMMIT, H } from '../../wire/protocol.js';
import type { ResolvedSelect, SelectAnswer } from '../options.js';

// Step "choose" (docs/design.md): which answer the race adopts. One small
// interface, four strategies: the first acceptable answer (a read's
// default), a quorum of k alike, a select function, and for an update the
// arbitration "first committed wins". The race tells a strategy what each
// copy answered and asks it what to do; a strategy never touches a socket,
// a timer or the client, so each is tested alone (pure logic).

type Headers = Record<string, string | string[] | undefined>;

/** What the race should do with a copy's final head. */
export type HeadVerdict =
  /** Adopt this answer now. */
  | 'adopt'
  /** Acceptable, but an update's answer that did not commit: keep it, paused, until `decide()` adopts one. */
  | 'hold'
  /** Acceptable: read its body whole, then pass it to `answer()` to be compared. */
  | 'read'
  /** Not acceptable: never adopted (its answer may still be passed through if nothing acceptable comes). */
  | 'reject'
  /** An update's copy that lost the commit arbitration: never adopted, not even passed through. */
  | 'lost'
  /** An update's copy that found the update applied by an earlier copy whose answer is gone. */
  | 'applied';

/** What the strategy decided among the answers in hand. */
export type Decision<C> =
  | { adopt: C }
  /** No answer will do: the client gets a 502 with this code. `error`: the select function's fault, to report. */
  | { fail: typeof codes.NO_QUORUM | typeof codes.NO_SELECTION; message: string; error?: unknown };

/** Asked by a strategy whether an answer is acceptable (the `accept` option): asked only when the strategy needs to know. */
export interface Judge<C> {
  acceptable(copy: C, status: number, headers: Headers): boolean;
}

export interface AdoptionStrategy<C> {
  /** Copies to send at once when hedged: a quorum's k, else 1. */
  readonly burst: number;
  /** A quorum's k (hedges are held back while k copies may still agree), else 0. */
  readonly quorum: number;
  /** An update: a copy's answer said it committed (`x-redundant-commit: won` or `applied`). */
  readonly committed: boolean;
  /** Answers held (updates: acceptable, not committed), in arrival order. */
  readonly held: readonly C[];
  /** Answers read whole to compare (a quorum or a select function), in arrival order. */
  readonly answers: readonly C[];
  /** Judges a copy's final head. */
  head(copy: C, status: number, headers: Headers, judge: Judge<C>): HeadVerdict;
  /** A copy told to `read` has its whole body: its answer, as a select function is shown it. */
  answer(copy: C, answer: SelectAnswer): void;
  /** A held copy broke before it was adopted. True when it was held. */
  drop(copy: C): boolean;
  /**
   * Asked as copies settle, once an answer is in: adopt one, fail, or wait
   * (null). `pending`: copies that may still answer (out, or not sent yet);
   * `outstanding`: copies sent and not settled.
   */
  decide(pending: number, outstanding: number): Decision<C> | null;
  /** At the timeout, before it fails the race: a select function's last say, with what it has. */
  lastSay(): Decision<C> | null;
  /** Whether `other`, not chosen, gave the same answer as `chosen` (one of a quorum). */
  agreed(other: C, chosen: C): boolean;
  /** The largest number of answers in hand that agree (a quorum's). */
  agreeing(): number;
}

const NONE: readonly never[] = [];

/** A read's default: the first acceptable answer wins; nothing is held or compared. Stateless: one for every race. */
class FirstAcceptable implements AdoptionStrategy<unknown> {
  readonly burst = 1;
  readonly quorum = 0;
  readonly committed = false;
  readonly held = NONE;
  readonly answers = NONE;

  head(copy: unknown, status: number, headers: Headers, judge: Judge<unknown>): HeadVerdict {
    return judge.acceptable(copy, status, headers) ? 'adopt' : 'reject';
  }

  answer(): void {}

  drop(): boolean {
    return false;
  }

  decide(): null {
    return null;
  }

  lastSay(): null {
    return null;
  }

  agreed(): boolean {
    return false;
  }

  agreeing(): number {
    return 0;
  }
}

export const FIRST_ACCEPTABLE: AdoptionStrategy<never> = new FirstAcceptable();

/**
 * Step "first committed wins", as the proxy sees it: the committed copy's
 * answer wins at once, whatever its status; a copy that lost the arbitration
 * is never adopted; an acceptable answer that did not commit (a validation
 * error, say) is held until every copy sent has answered without a commit,
 * then the first such answer is adopted.
 */
export class UpdateArbitration<C> implements AdoptionStrategy<C> {
  readonly burst = 1;
  readonly quorum = 0;
  committed = false;
  readonly held: C[] = [];
  readonly answers = NONE;

  /** @param copies how many copies the update has: one alone is adopted at once, never held. */
  constructor(readonly copies: number) {}

  head(copy: C, status: number, headers: Headers, judge: Judge<C>): HeadVerdict {
    const commit = headers[H.commit];
    if (commit === COMMIT.lost) return 'lost';
    if (commit === COMMIT.won || commit === COMMIT.applied) {
      this.committed = true;
      return commit === COMMIT.won ? 'adopt' : 'applied';
    }
    if (!judge.acceptable(copy, status, headers)) return 'reject';
    if (this.copies <= 1) return 'adopt';
    this.held.push(copy);
    return 'hold';
  }

  answer(): void {}

  drop(copy: C): boolean {
    const i = this.held.indexOf(copy);
    if (i === -1) return false;
    this.held.splice(i, 1);
    return true;
  }

  decide(_pending: number, outstanding: number): Decision<C> | null {
    // Every copy sent answered, and none committed.
    const first = this.held[0];
    return outstanding <= 0 && first !== undefined ? { adopt: first } : null;
  }

  lastSay(): null {
    return null;
  }

  agreed(): boolean {
    return false;
  }

  agreeing(): number {
    return 0;
  }
}

/** Shared by the strategies that read answers whole and compare them. */
abstract class Comparing<C> implements AdoptionStrategy<C> {
  readonly burst: number = 1;
  readonly quorum: number = 0;
  readonly committed = false;
  readonly held = NONE;
  readonly answers: C[] = [];

  head(copy: C, status: number, headers: Headers, judge: Judge<C>): HeadVerdict {
    return judge.acceptable(copy, status, headers) ? 'read' : 'reject';
  }

  abstract answer(copy: C, answer: SelectAnswer): void;

  drop(): boolean {
    return false;
  }

  abstract decide(pending: number, outstanding: number): Decision<C> | null;

  lastSay(): Decision<C> | null {
    return null;
  }

  agreed(_other: C, _chosen: C): boolean {
    return false;
  }

  agreeing(): number {
    return 0;
  }
}

/** `select: { quorum: k }`: the first answer that k copies gave alike (same status, same body). */
export class Quorum<C> extends Comparing<C> {
  override readonly burst: number;
  override readonly quorum: number;
  /** Answers by status and body digest. */
  readonly #groups = new Map<string, C[]>();
  readonly #groupOf = new Map<C, C[]>();

  constructor(k: number) {
    super();
    this.quorum = k;
    // Hedged, the k copies a quorum needs leave at once.
    this.burst = k;
  }

  answer(copy: C, answer: SelectAnswer): void {
    this.answers.push(copy);
    const key = `${answer.status} ${createHash('sha256').update(answer.body).digest('base64')}`;
    let group = this.#groups.get(key);
    if (!group) this.#groups.set(key, (group = []));
    group.push(copy);
    this.#groupOf.set(copy, group);
  }

  decide(pending: number, _outstanding?: number): Decision<C> | null {
    if (this.answers.length === 0) return null;
    let largest = 0;
    for (const group of this.#groups.values()) {
      if (group.length >= this.quorum) return { adopt: group[0]! };
      largest = Math.max(largest, group.length);
    }
    // k copies may still agree: wait for them.
    if (largest + pending >= this.quorum) return null;
    return {
      fail: codes.NO_QUORUM,
      message: `no ${this.quorum} copies gave the same answer: ${this.answers.length} acceptable answers of ${this.#groups.size} different kinds, most alike ${largest}`,
    };
  }

  override agreed(other: C, chosen: C): boolean {
    const group = this.#groupOf.get(other);
    return group !== undefined && group === this.#groupOf.get(chosen);
  }

  override agreeing(): number {
    let largest = 0;
    for (const group of this.#groups.values()) largest = Math.max(largest, group.length);
    return largest;
  }
}

type Choose = Extract<ResolvedSelect, { kind: 'custom' }>['choose'];

/** `select: (answers, state) => answer`: the user's function chooses among the complete answers, as they come. */
export class SelectFunction<C> extends Comparing<C> {
  readonly #shown: SelectAnswer[] = [];

  constructor(
    readonly choose: Choose,
    readonly copies: number,
  ) {
    super();
  }

  answer(copy: C, answer: SelectAnswer): void {
    this.answers.push(copy);
    this.#shown.push(answer);
  }

  /** What the function is shown for each answer, in arrival order. */
  get shown(): readonly SelectAnswer[] {
    return this.#shown;
  }

  decide(pending: number, _outstanding?: number): Decision<C> | null {
    if (this.answers.length === 0) return null;
    return this.#ask(pending, false);
  }

  override lastSay(): Decision<C> | null {
    if (this.answers.length === 0) return null;
    return this.#ask(0, true);
  }

  #ask(pending: number, final: boolean): Decision<C> | null {
    let picked: SelectAnswer | null | undefined;
    try {
      picked = this.choose(this.#shown.slice(), { pending, copies: this.copies });
    } catch (error) {
      return { fail: codes.NO_SELECTION, message: 'the select function threw', error };
    }
    if (picked === undefined || picked === null) {
      // More may come; at the timeout, the timeout answers.
      if (pending > 0 || final) return null;
      return { fail: codes.NO_SELECTION, message: `the select function chose none of the ${this.answers.length} acceptable answers` };
    }
    const i = this.#shown.indexOf(picked);
    if (i === -1) {
      return {
        fail: codes.NO_SELECTION,
        message: 'the select function returned something that is not one of its answers',
        error: new TypeError('redundant-proxy: select returned a value that is not one of the answers it was given'),
      };
    }
    return { adopt: this.answers[i]! };
  }
}

/** The strategy of one race. */
export function adoptionFor<C>(update: boolean, select: ResolvedSelect, copies: number): AdoptionStrategy<C> {
  // Updates ignore select: the committed copy's answer wins.
  if (update) return new UpdateArbitration<C>(copies);
  if (select.kind === 'quorum') return new Quorum<C>(select.quorum);
  if (select.kind === 'custom') return new SelectFunction<C>(select.choose, copies);
  return FIRST_ACCEPTABLE;
}
