import type { Upstream } from './options.js';
import type { CopyReport, RaceReport } from './race.js';

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
  /** Back from an ejection, its first copies not judged yet: one failure ejects it again. */
  probation: boolean;
  /** Ejections since it last passed a probation; makes the next one longer. */
  streak: number;
  ejections: number;
}

/**
 * A copy failed when its connection did (refused, reset, malformed answer),
 * when its answer was a 5xx, or when it was still out at the race's timeout.
 * A slow copy stopped because another won is not judged: hedging handles slowness.
 */
function verdict(copy: CopyReport, race: RaceReport): 'failure' | 'success' | null {
  if (copy.outcome === 'failed') return 'failure';
  if (copy.outcome === 'stopped' || copy.outcome === 'cancelled') return race.outcome === 'timeout' && copy.status === null ? 'failure' : null;
  if (copy.status === null) return null;
  return copy.status >= 500 ? 'failure' : 'success';
}

export class Ejector {
  readonly #health = new Map<string, Health>();
  #ejected = 0;

  constructor(
    readonly settings: EjectionSettings,
    upstreams: readonly Upstream[],
    readonly now: () => number,
    readonly onEjected: (e: UpstreamEjectedEvent) => void,
    readonly onRestored: (e: UpstreamRestoredEvent) => void,
  ) {
    for (const u of upstreams) this.#health.set(u.id, { failures: 0, until: 0, probation: false, streak: 0, ejections: 0 });
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

  /** Judges every copy of a finished race. */
  record(race: RaceReport): void {
    for (const copy of race.copies) {
      const v = verdict(copy, race);
      if (v === null) continue;
      const h = this.#health.get(copy.upstream)!;
      if (h.until !== 0) continue; // sent before its ejection: already judged
      if (v === 'success') {
        h.failures = 0;
        if (h.probation) {
          h.probation = false;
          h.streak = 0;
        }
        continue;
      }
      h.failures++;
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
    const duration = Math.min(this.settings.maxEjectionTime, this.settings.baseEjectionTime * 2 ** h.streak);
    const failures = h.failures;
    h.until = this.now() + duration;
    h.streak++;
    h.ejections++;
    h.failures = 0;
    h.probation = false;
    this.#ejected++;
    this.onEjected({ upstream: id, failures, duration, ejections: h.ejections });
  }

  #restore(id: string, h: Health): void {
    h.until = 0;
    h.probation = true;
    this.#ejected--;
    this.onRestored({ upstream: id });
  }
}
