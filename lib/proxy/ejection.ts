import type { Upstream } from './options.js';
import { LOCAL_REFUSAL, type CopyReport, type RaceReport } from './report.js';
import { PER_TRY_TIMEOUT } from './race/copy.js';

// Outlier ejection, as Envoy does it: an upstream whose copies keep failing
// stops receiving copies for a while, longer each time it is ejected again,
// then is probed back with ordinary copies. Racing makes the probe free for
// reads: its copy races the healthy ones. No timer runs: an ejection simply
// expires, checked when copies are planned.

export interface EjectionSettings {
  consecutiveFailures: number;
  baseEjectionTime: number;
  maxEjectionTime: number;
  maxEjectedPercent: number;
  /** Upstreams that must stay in whatever the percentage says: a quorum's k. */
  keep: number;
}

export interface UpstreamEjectedEvent {
  upstream: string;
  /** Failures in a row that led to it (1 for a probe that failed). */
  failures: number;
  /** Milliseconds it receives no copies. */
  duration: number;
  /** How many times it was ejected so far, this one included. */
  ejections: number;
}

export interface UpstreamRestoredEvent {
  upstream: string;
}

interface Health {
  /** Failures in a row. */
  failures: number;
  /** Until when it is ejected (clock ms), or 0. */
  until: number;
  /** Back from an ejection and not judged since: one failure ejects it again. */
  probation: boolean;
  /** When it came back (clock ms). */
  restoredAt: number;
  /** How long its last ejection lasted (ms). */
  lastDuration: number;
  /** Ejections in a row, each without a healthy spell between: makes the next one longer. */
  streak: number;
  ejections: number;
  /** The epoch of its last ejection or return: copies planned before it are not judged. */
  epoch: number;
}

/**
 * A copy failed when its connection did (refused, reset, malformed answer),
 * when its answer was a 5xx, or when it was still waiting for its answer at
 * the request's timeout. A slow copy stopped because another won is not
 * judged: hedging handles slowness.
 */
function verdict(copy: CopyReport): 'failure' | 'success' | null {
  // Refused by the proxy itself before anything reached the upstream (undici
  // would not send it): nothing the upstream did.
  if (copy.error?.startsWith(LOCAL_REFUSAL)) return null;
  if (copy.outcome === 'failed') return 'failure';
  // Still waiting for its answer (or the rest of one being compared) when the request timed out.
  if (copy.error === 'timeout') return 'failure';
  // A winner still streaming at the timeout: a long body, not judged.
  if (copy.error === 'body-timeout') return null;
  // A winner whose body broke after its head went out.
  if (copy.outcome === 'won' && copy.error !== null) return 'failure';
  if (copy.status === null) return null;
  return copy.status >= 500 ? 'failure' : 'success';
}

export class Ejector {
  readonly #health = new Map<string, Health>();
  #ejected = 0;
  /** Counts ejections and returns: a race remembers the epoch it was planned in. */
  #epoch = 0;

  constructor(
    readonly settings: EjectionSettings,
    upstreams: readonly Upstream[],
    readonly now: () => number,
    readonly onEjected: (e: UpstreamEjectedEvent) => void,
    readonly onRestored: (e: UpstreamRestoredEvent) => void,
  ) {
    for (const u of upstreams) this.#health.set(u.id, { failures: 0, until: 0, probation: false, restoredAt: 0, lastDuration: 0, streak: 0, ejections: 0, epoch: 0 });
  }

  /** The current epoch: pass it to `record()` with the race planned now. */
  get epoch(): number {
    return this.#epoch;
  }

  /** The upstreams that may receive copies now (all of them when none is ejected). */
  available(pool: Upstream[]): Upstream[] {
    if (this.#ejected === 0) return pool;
    const t = this.now();
    let out: Upstream[] | null = null;
    for (let i = 0; i < pool.length; i++) {
      const h = this.#health.get(pool[i]!.id)!;
      if (h.until !== 0 && h.until <= t) this.#restore(pool[i]!.id, h);
      if (h.until !== 0) out ??= pool.slice(0, i);
      else out?.push(pool[i]!);
    }
    return out ?? pool;
  }

  /** Judges every copy of a finished race, planned in `epoch`. */
  record(race: RaceReport, epoch: number): void {
    // A worker whose session store failed answers 503 with a mark: when the
    // store is down it is down for every replica, so that says nothing of
    // this one, unless another copy got an answer through.
    let through: boolean | undefined;
    for (const copy of race.copies) {
      // An update's copy may be waiting for a claim another copy holds (one
      // stuck in its commit): given up at the per-try timeout, it says
      // nothing of its own upstream.
      if (race.update && copy.error === PER_TRY_TIMEOUT) continue;
      let v = verdict(copy);
      if (v === 'failure' && copy.storeUnavailable) {
        through ??= race.copies.some((c) => c !== copy && !c.storeUnavailable && verdict(c) === 'success');
        if (!through) v = null;
      }
      if (v === null) continue;
      const h = this.#health.get(copy.upstream)!;
      // Planned before its last ejection or return: it says nothing of now.
      if (h.until !== 0 || h.epoch > epoch) continue;
      if (v === 'success') {
        h.failures = 0;
        h.probation = false;
        continue;
      }
      h.failures++;
      // Probation lasts until its first judged copy, or one base ejection time.
      if (h.probation && this.now() - h.restoredAt > this.settings.baseEjectionTime) h.probation = false;
      if (h.probation || h.failures >= this.settings.consecutiveFailures) this.#eject(copy.upstream, h);
    }
  }

  isEjected(id: string): boolean {
    const h = this.#health.get(id);
    return h !== undefined && h.until !== 0 && h.until > this.now();
  }

  ejections(id: string): number {
    return this.#health.get(id)?.ejections ?? 0;
  }

  #eject(id: string, h: Health): void {
    // Never eject more than the allowed share: copies need somewhere to go.
    const n = this.#health.size;
    const cap = Math.min(Math.floor((n * this.settings.maxEjectedPercent) / 100), n - this.settings.keep);
    if (this.#ejected >= cap) return;
    const now = this.now();
    // Healthy for longer than its last ejection lasted: start again from the base time.
    if (h.streak > 0 && !h.probation && now - h.restoredAt > h.lastDuration) h.streak = 0;
    const duration = Math.min(this.settings.maxEjectionTime, this.settings.baseEjectionTime * 2 ** h.streak);
    const failures = h.failures;
    h.until = now + duration;
    h.lastDuration = duration;
    h.streak++;
    h.ejections++;
    h.failures = 0;
    h.probation = false;
    h.epoch = ++this.#epoch;
    this.#ejected++;
    this.onEjected({ upstream: id, failures, duration, ejections: h.ejections });
  }

  #restore(id: string, h: Health): void {
    h.until = 0;
    h.probation = true;
    h.restoredAt = this.now();
    h.epoch = ++this.#epoch;
    this.#ejected--;
    this.onRestored({ upstream: id });
  }
}
