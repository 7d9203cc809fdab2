import { LRUCache } from 'lru-cache';
import { InvalidOptionError } from '../errors.js';
import type {
  ClaimGrant,
  ClaimOptions,
  IdempotencyState,
  StoredAnswer,
  RecordAdoptionInput,
  RecordCopyInput,
  RequestRecord,
  SessionRecord,
  SessionStore,
} from './types.js';
import { checkMillis, closedError, detach, notHolder, sessionJson, superseded, type Waiter } from './common.js';
import { MAX_TIMER_MS, parseOptions } from '../schema.js';
import { REAL_TIME, schedulerOf, unref, type Scheduler, type TimerHandle } from '../time.js';
import { answerBytes, IdempotencyKeys, keyBytes, storeFull, type Held } from './memory/idempotency-keys.js';
import { OPTIONS, type IdempotencyUsage, type MemorySessionStoreOptions } from './memory/options.js';

export type { IdempotencyUsage, MemorySessionStoreOptions } from './memory/options.js';

/** A request as the store keeps it: the public record plus what only the store needs. */
interface Entry {
  record: RequestRecord;
  /** The adopted copy's candidate became the session's state; never promote twice. */
  promoted: boolean;
}

interface Candidate {
  sessionId: string;
  data: Record<string, unknown>;
}


/**
 * The session store of one process: requests, sessions and candidates in a
 * bounded, TTL'd LRU (lru-cache); idempotency keys kept for their whole TTL,
 * bounded in number and bytes, refused (never evicted) when full. Use it
 * when the proxy and the workers run in the same process (tests, the demo,
 * a single-machine setup); across processes use a shared store.
 *
 * @example
 * const store = new MemorySessionStore({ max: 50_000, ttl: 5 * 60_000 });
 */
export class MemorySessionStore implements SessionStore {
  readonly #now: () => number;
  readonly #requests: LRUCache<string, Entry>;
  readonly #sessions: LRUCache<string, SessionRecord>;
  /** Candidates of requests not adopted yet, by request id, then by duplicate id. */
  readonly #candidates: LRUCache<string, Map<string, Candidate>>;
  /** Copies waiting for a claim another copy holds, first come first served. */
  readonly #waiters = new Map<string, Waiter[]>();
  /** One lease timer per request that has waiters. */
  readonly #timers = new Map<string, TimerHandle>();
  /** The timers' scheduler: real, unless a test gave one (withScheduler() in lib/time.ts). */
  readonly #time: Scheduler;
  /** Idempotency keys, each kept until its own expiry by the injected clock, bounded in number and bytes. */
  readonly #idempotency: IdempotencyKeys;
  /** Fencing tokens: store-wide and only ever going up. */
  #fence = 0;
  #closed = false;

  constructor(options: MemorySessionStoreOptions = {}) {
    const given = typeof options === 'object' && options !== null ? schedulerOf(options) : undefined;
    const parsed = parseOptions(OPTIONS, options);
    const { max, ttl, maxIdempotencyKeys, maxIdempotencyBytes } = parsed;
    // A scheduler given without a clock brings its own clock.
    const now = given && options.now === undefined ? () => given.now() : parsed.now;
    this.#now = now;
    this.#time = given ?? REAL_TIME;

    // lru-cache treats a start time of 0 as "no TTL", so an injected clock
    // that starts at 0 would make the first records immortal; measure from
    // construction instead, offset by one. `ttlResolution: 0` reads the clock
    // on every check rather than caching it for a real millisecond, so a test
    // that moves its clock sees the effect at once.
    const origin = now();
    const perf = { now: () => now() - origin + 1 };
    const common = { max, ttl, ttlResolution: 0, perf };
    this.#requests = new LRUCache<string, Entry>(common);
    this.#sessions = new LRUCache<string, SessionRecord>({ ...common, updateAgeOnGet: true });
    this.#candidates = new LRUCache<string, Map<string, Candidate>>(common);
    this.#idempotency = new IdempotencyKeys(maxIdempotencyKeys, maxIdempotencyBytes);
  }

  /**
   * How many request records the store holds now (at most `max`; records past
   * their TTL count until they are next touched or pushed out).
   */
  get size(): number {
    return this.#requests.size;
  }

  /**
   * How many idempotency keys the store holds now and the bytes they count,
   * against `maxIdempotencyKeys` and `maxIdempotencyBytes`. Keys past their
   * TTL by the store's clock are dropped first, so this is what is live.
   */
  get idempotencyUsage(): IdempotencyUsage {
    this.#idempotency.sweep(this.#now());
    return { keys: this.#idempotency.size, bytes: this.#idempotency.bytes };
  }

  async recordCopy(input: RecordCopyInput): Promise<{ duplicate: boolean }> {
    this.#assertOpen();
    // Step "receive and record" (docs/design.md): the application server received this copy.
    const entry = this.#ensure(input.requestId, input.sessionId, input.update);
    if (entry.record.copies.some((c) => c.duplicateId === input.duplicateId)) return { duplicate: true };
    entry.record.copies.push({
      duplicateId: input.duplicateId,
      upstreamId: input.upstreamId,
      index: input.index,
      of: input.of,
      receivedAt: this.#now(),
    });
    this.#touch(input.requestId, entry);
    return { duplicate: false };
  }

  async saveCandidate(sessionId: string, requestId: string, duplicateId: string, data: Record<string, unknown>): Promise<void> {
    this.#assertOpen();
    const copy = jsonCopy(data);
    // A request without a session has no state to carry to the next request.
    if (sessionId === '') return;
    const entry = this.#requests.get(requestId);
    const adopted = entry?.record.adopted;
    if (entry && adopted) {
      // The proxy's adoption arrived first (the worker and the proxy race):
      // promote the adopted copy's candidate now, drop anyone else's.
      if (adopted.duplicateIds[0] === duplicateId && !entry.promoted) {
        this.#promote(sessionId, copy);
        entry.promoted = true;
      }
      return;
    }
    const byCopy = this.#candidates.get(requestId) ?? new Map<string, Candidate>();
    byCopy.set(duplicateId, { sessionId, data: copy });
    this.#candidates.set(requestId, byCopy);
  }

  async recordAdoption(input: RecordAdoptionInput): Promise<void> {
    this.#assertOpen();
    const entry = this.#ensure(input.requestId, input.sessionId, input.update);
    // Step "record the adoption": which copies produced the adopted answer. The first
    // adoption recorded stands; a repeat or a different one changes nothing.
    if (entry.record.adopted === null) {
      entry.record.adopted = {
        duplicateIds: [...input.duplicateIds],
        upstreamIds: [...input.upstreamIds],
        at: this.#now(),
      };
      this.#touch(input.requestId, entry);
    }
    const byCopy = this.#candidates.get(input.requestId);
    if (!byCopy) return;
    const winner = entry.record.adopted.duplicateIds[0];
    const candidate = winner === undefined ? undefined : byCopy.get(winner);
    if (candidate && !entry.promoted) {
      this.#promote(candidate.sessionId, candidate.data);
      entry.promoted = true;
    }
    // Only the adopted copy's session state may reach the client.
    this.#candidates.delete(input.requestId);
  }

  async recordCancelled(requestId: string, duplicateId: string): Promise<void> {
    this.#assertOpen();
    const entry = this.#ensure(requestId, '', true);
    if (entry.record.cancelled.includes(duplicateId)) return;
    entry.record.cancelled.push(duplicateId);
    this.#touch(requestId, entry);
  }

  async getRequest(requestId: string): Promise<RequestRecord | undefined> {
    this.#assertOpen();
    const entry = this.#requests.get(requestId);
    return entry && structuredClone(entry.record);
  }

  async getSession(sessionId: string): Promise<SessionRecord | undefined> {
    this.#assertOpen();
    const session = this.#sessions.get(sessionId);
    return session && structuredClone(session);
  }

  async claim(requestId: string, duplicateId: string, options: ClaimOptions): Promise<ClaimGrant> {
    this.#assertOpen();
    const { leaseMs, signal } = options;
    if (!Number.isFinite(leaseMs) || leaseMs <= 0) throw new InvalidOptionError('leaseMs', 'must be a number of milliseconds > 0', leaseMs);
    signal?.throwIfAborted();
    // An expired lease goes to the copy that has waited longest, not to
    // whoever happens to ask next.
    this.#settle(requestId);
    const entry = this.#ensure(requestId, '', true);
    const commit = entry.record.commit;
    if (commit.state === 'committed') throw superseded(requestId, commit.holder);
    if (commit.state === 'claimed' && this.#now() < commit.leaseUntil) {
      if (commit.holder === duplicateId) return { fence: commit.fence, leaseUntil: commit.leaseUntil };
      return this.#wait(requestId, duplicateId, leaseMs, signal);
    }
    return this.#grant(requestId, entry, duplicateId, leaseMs);
  }

  async confirm(requestId: string, duplicateId: string, fence: number): Promise<void> {
    this.#assertOpen();
    const entry = this.#requests.get(requestId);
    const commit = entry?.record.commit;
    // Confirming twice (a retried call) is harmless.
    if (commit?.state === 'committed' && commit.holder === duplicateId && commit.fence === fence) return;
    // A holder past its lease may still confirm as long as nobody took over:
    // the takeover, not the clock, is what makes it lose.
    if (!entry || commit?.state !== 'claimed' || commit.holder !== duplicateId || commit.fence !== fence) {
      // No record (never claimed, or evicted): who committed is not known.
      throw notHolder(requestId, duplicateId, fence, !entry ? undefined : commit?.state === 'committed' ? commit.holder : null);
    }
    entry.record.commit = { state: 'committed', holder: duplicateId, fence, committedAt: this.#now() };
    this.#touch(requestId, entry);
    this.#rejectWaiters(requestId, () => superseded(requestId, duplicateId));
  }

  async release(requestId: string, duplicateId: string, fence: number): Promise<void> {
    this.#assertOpen();
    const entry = this.#requests.get(requestId);
    const commit = entry?.record.commit;
    if (!entry || commit?.state !== 'claimed' || commit.holder !== duplicateId || commit.fence !== fence) return;
    entry.record.commit = { state: 'none' };
    this.#touch(requestId, entry);
    this.#settle(requestId);
  }

  async beginIdempotent(key: string, fingerprint: string, requestId: string, lockMs: number, ttlMs: number): Promise<IdempotencyState> {
    this.#assertOpen();
    checkMillis('lockMs', lockMs);
    checkMillis('ttlMs', ttlMs);
    const now = this.#now();
    const keys = this.#idempotency;
    keys.sweep(now);
    const entry = keys.get(key);
    if (!entry) {
      // Throws RP_ERR_STORE_FULL rather than forget a live key to make room.
      keys.add(key, fingerprint, requestId, now + lockMs, now + Math.max(ttlMs, lockMs));
      return { state: 'started', requestId, attempt: 1 };
    }
    if (entry.fingerprint !== fingerprint) return { state: 'mismatch' };
    if (entry.state === 'completed') return { state: 'completed', requestId: entry.requestId, answer: structuredClone(entry.answer!) };
    if (entry.state === 'in-flight' && now < entry.lockUntil) return { state: 'in-flight', requestId: entry.requestId };
    // The holder's lock ran out (its gateway died) or it ended without a
    // final answer ('pending'): this retry resumes the same request id, so a
    // copy of an earlier attempt that commits holds the same claim.
    entry.state = 'in-flight';
    entry.attempt += 1;
    entry.lockUntil = now + lockMs;
    // The key is never forgotten while an attempt holds it.
    if (entry.until < entry.lockUntil) keys.expireAt(entry, entry.lockUntil);
    return { state: 'started', requestId: entry.requestId, attempt: entry.attempt };
  }

  async completeIdempotent(key: string, requestId: string, answer: StoredAnswer | null, ttlMs: number, attempt: number): Promise<void> {
    this.#assertOpen();
    checkMillis('ttlMs', ttlMs);
    const now = this.#now();
    const keys = this.#idempotency;
    keys.sweep(now);
    const entry = keys.get(key);
    // Only the attempt that holds the key ends it: a late attempt whose lock
    // was taken over changes nothing.
    if (!entry || entry.state !== 'in-flight' || entry.requestId !== requestId || entry.attempt !== attempt) return;
    if (answer === null) {
      // No final answer: keep the key (and its request id) for the next retry to resume.
      entry.state = 'pending';
      keys.expireAt(entry, now + ttlMs);
      return;
    }
    // Throws RP_ERR_STORE_FULL before anything changes: the attempt still holds the key.
    keys.resize(entry, keyBytes(key, entry.fingerprint, entry.requestId) + answerBytes(answer));
    entry.state = 'completed';
    entry.answer = structuredClone(answer);
    keys.expireAt(entry, now + ttlMs);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const requestId of [...this.#waiters.keys()]) {
      this.#rejectWaiters(requestId, () => closedError());
    }
    for (const timer of this.#timers.values()) this.#time.clearTimeout(timer);
    this.#timers.clear();
    this.#requests.clear();
    this.#sessions.clear();
    this.#candidates.clear();
    this.#idempotency.clear();
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }

  #ensure(requestId: string, sessionId: string, update: boolean): Entry {
    let entry = this.#requests.get(requestId);
    if (!entry) {
      entry = {
        record: { requestId, sessionId, update, copies: [], adopted: null, cancelled: [], commit: { state: 'none' } },
        promoted: false,
      };
      this.#requests.set(requestId, entry);
    }
    return entry;
  }

  /** Entries are changed in place; setting one again restarts its TTL. */
  #touch(requestId: string, entry: Entry): void {
    // A claim outlives the record's TTL when its lease is longer: the record
    // stays until the lease has run out, or a copy could claim a request
    // whose holder is still committing.
    const commit = entry.record.commit;
    const lease = commit.state === 'claimed' ? commit.leaseUntil - this.#now() : 0;
    if (lease > this.#requests.ttl) this.#requests.set(requestId, entry, { ttl: Math.ceil(lease) });
    else this.#requests.set(requestId, entry);
  }

  #promote(sessionId: string, data: Record<string, unknown>): void {
    const previous = this.#sessions.get(sessionId);
    this.#sessions.set(sessionId, { sessionId, data, version: (previous?.version ?? 0) + 1, updatedAt: this.#now() });
  }

  #grant(requestId: string, entry: Entry, duplicateId: string, leaseMs: number): ClaimGrant {
    const fence = ++this.#fence;
    const leaseUntil = this.#now() + leaseMs;
    entry.record.commit = { state: 'claimed', holder: duplicateId, fence, leaseUntil };
    this.#touch(requestId, entry);
    return { fence, leaseUntil };
  }

  #wait(requestId: string, duplicateId: string, leaseMs: number, signal: AbortSignal | undefined): Promise<ClaimGrant> {
    return new Promise<ClaimGrant>((resolve, reject) => {
      const waiter: Waiter = { duplicateId, leaseMs, resolve, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          this.#removeWaiter(requestId, waiter);
          reject(signal.reason);
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      const list = this.#waiters.get(requestId);
      if (list) list.push(waiter);
      else this.#waiters.set(requestId, [waiter]);
      this.#schedule(requestId);
    });
  }

  /**
   * Hands the claim to the first waiter when nobody holds it (released,
   * lease expired by the store's clock, or the record was forgotten). A
   * committed request has no waiters: `confirm` turns them all away in the
   * step that commits, and a claim on a committed request never waits.
   */
  #settle(requestId: string): void {
    const list = this.#waiters.get(requestId);
    if (!list || list.length === 0) return;
    const entry = this.#ensure(requestId, '', true);
    const commit = entry.record.commit;
    if (commit.state !== 'claimed' || this.#now() >= commit.leaseUntil) {
      const next = list.shift() as Waiter;
      if (list.length === 0) this.#waiters.delete(requestId);
      detach(next);
      next.resolve(this.#grant(requestId, entry, next.duplicateId, next.leaseMs));
    }
    this.#schedule(requestId);
  }

  /**
   * Wakes the waiters of a request when the holder's lease should have run
   * out, on the store's scheduler. The lease is judged by the store's clock when the
   * timer fires, so an injected clock decides; while the lease still runs,
   * the timer is set again for what remains (at least 1 ms: no busy loop).
   */
  #schedule(requestId: string): void {
    const existing = this.#timers.get(requestId);
    if (existing) this.#time.clearTimeout(existing);
    this.#timers.delete(requestId);
    if (!this.#waiters.has(requestId)) return;
    const commit = this.#requests.get(requestId)?.record.commit;
    // At most a timer's longest delay (a longer one fires at once): a longer lease is checked again then.
    const delay = commit?.state === 'claimed' ? Math.min(MAX_TIMER_MS, Math.max(1, commit.leaseUntil - this.#now())) : 1;
    const timer = this.#time.setTimeout(() => {
      this.#timers.delete(requestId);
      this.#settle(requestId);
    }, delay);
    // Waiting copies must not keep a process alive that is otherwise done.
    unref(timer);
    this.#timers.set(requestId, timer);
  }

  #rejectWaiters(requestId: string, reason: () => unknown): void {
    const list = this.#waiters.get(requestId) ?? [];
    this.#waiters.delete(requestId);
    this.#schedule(requestId);
    for (const waiter of list) {
      detach(waiter);
      waiter.reject(reason());
    }
  }

  #removeWaiter(requestId: string, waiter: Waiter): void {
    const list = this.#waiters.get(requestId);
    if (!list) return;
    const at = list.indexOf(waiter);
    if (at !== -1) list.splice(at, 1);
    if (list.length === 0) {
      this.#waiters.delete(requestId);
      this.#schedule(requestId);
    }
  }
}

/**
 * Stores what a shared store would: the data as JSON sees it. A value JSON
 * cannot carry (a BigInt, a cycle) fails here, not later in another process.
 */
function jsonCopy(data: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(sessionJson(data)) as Record<string, unknown>;
}
