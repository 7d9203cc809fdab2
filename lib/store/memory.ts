import { LRUCache } from 'lru-cache';
import { InvalidOptionError, RedundantProxyError, codes } from '../errors.js';
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
import { checkKnownOptions, checkMillis, closedError, detach, notHolder, sessionJson, superseded, type Waiter } from './common.js';

export interface MemorySessionStoreOptions {
  /**
   * Most requests the store remembers; the least recently used is forgotten
   * first. Sessions and saved candidates are capped at the same number each.
   * Idempotency keys are not: see `maxIdempotencyKeys`.
   * A forgotten request also loses its commit state, so keep `max` above
   * (requests per second × seconds of your longest race).
   * @default 10000
   */
  max?: number;
  /**
   * Milliseconds a request record lives after it was last written, and a
   * session after it was last read or promoted.
   * @default 600000 (10 minutes)
   */
  ttl?: number;
  /**
   * Most `Idempotency-Key`s held at once. A key is kept for its whole TTL
   * and never pushed out for a newer one (a retry must find it); when this
   * many keys are live, `beginIdempotent` refuses a *new* key with
   * `RP_ERR_STORE_FULL` (503) until some expire. Retries and completions of
   * keys already held keep working.
   * @default 100000
   */
  maxIdempotencyKeys?: number;
  /**
   * Most bytes the idempotency keys may take, answers included (each key
   * counts its key, fingerprint and request id lengths, 128 bytes of
   * overhead, and its answer's body length plus its headers' JSON length).
   * A new key that would go over is refused like one over
   * `maxIdempotencyKeys`; an answer that would go over makes
   * `completeIdempotent` reject with `RP_ERR_STORE_FULL`, and the key stays
   * held by its attempt, which may complete it with a smaller answer.
   * @default 67108864 (64 MiB)
   */
  maxIdempotencyBytes?: number;
  /**
   * The clock, in milliseconds since the epoch. It stamps records, judges
   * TTLs, commit leases and idempotency locks. Inject one to test expiry
   * without sleeping.
   * @default Date.now
   */
  now?: () => number;
}

/** How much of its idempotency bounds a `MemorySessionStore` uses (`idempotencyUsage`). */
export interface IdempotencyUsage {
  /** Keys held now, each within its TTL. At most `maxIdempotencyKeys`. */
  keys: number;
  /** Bytes they count, as `maxIdempotencyBytes` counts them. */
  bytes: number;
}

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

const KNOWN = new Set(['max', 'ttl', 'maxIdempotencyKeys', 'maxIdempotencyBytes', 'now']);

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
  readonly #timers = new Map<string, NodeJS.Timeout>();
  /** Idempotency keys, each kept until its own expiry by the injected clock, bounded in number and bytes. */
  readonly #idempotency: IdempotencyKeys;
  /** Fencing tokens: store-wide and only ever going up. */
  #fence = 0;
  #closed = false;

  constructor(options: MemorySessionStoreOptions = {}) {
    if (typeof options !== 'object' || options === null) throw new InvalidOptionError('options', 'must be an object', options);
    checkKnownOptions(options, KNOWN);
    const { max = 10_000, ttl = 10 * 60_000, maxIdempotencyKeys = 100_000, maxIdempotencyBytes = 64 * 1024 * 1024, now = Date.now } = options;
    if (!Number.isSafeInteger(max) || max < 1) throw new InvalidOptionError('max', 'must be an integer >= 1', max);
    if (!Number.isSafeInteger(ttl) || ttl < 1) throw new InvalidOptionError('ttl', 'must be an integer number of milliseconds >= 1', ttl);
    if (!Number.isSafeInteger(maxIdempotencyKeys) || maxIdempotencyKeys < 1) {
      throw new InvalidOptionError('maxIdempotencyKeys', 'must be an integer >= 1', maxIdempotencyKeys);
    }
    if (!Number.isSafeInteger(maxIdempotencyBytes) || maxIdempotencyBytes < 1) {
      throw new InvalidOptionError('maxIdempotencyBytes', 'must be an integer number of bytes >= 1', maxIdempotencyBytes);
    }
    if (typeof now !== 'function') throw new InvalidOptionError('now', 'must be a function returning milliseconds', now);
    this.#now = now;

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
    for (const timer of this.#timers.values()) clearTimeout(timer);
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
    this.#requests.set(requestId, entry);
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
   * out, in real time. The lease is judged by the store's clock when the
   * timer fires, so an injected clock decides; while the lease still runs,
   * the timer is set again for what remains (at least 1 ms: no busy loop).
   */
  #schedule(requestId: string): void {
    const existing = this.#timers.get(requestId);
    if (existing) clearTimeout(existing);
    this.#timers.delete(requestId);
    if (!this.#waiters.has(requestId)) return;
    const commit = this.#requests.get(requestId)?.record.commit;
    const delay = commit?.state === 'claimed' ? Math.max(1, commit.leaseUntil - this.#now()) : 1;
    const timer = setTimeout(() => {
      this.#timers.delete(requestId);
      this.#settle(requestId);
    }, delay);
    // Waiting copies must not keep a process alive that is otherwise done.
    timer.unref();
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

// --- idempotency keys -------------------------------------------------------

/** An idempotency key as the memory store holds it. */
interface Held {
  key: string;
  /** 'pending': completed without a final answer; the next begin resumes it. */
  state: 'in-flight' | 'pending' | 'completed';
  fingerprint: string;
  /** The first attempt's request id; every later attempt runs under it. */
  requestId: string;
  attempt: number;
  /** While 'in-flight': the attempt holds the key until then. */
  lockUntil: number;
  answer: StoredAnswer | undefined;
  /** Forgotten at this time by the store's clock, not before. */
  until: number;
  /** What it counts against `maxIdempotencyBytes`. */
  bytes: number;
  /** Its index in the expiry heap. */
  at: number;
}

/** Counted for each key besides its strings: the entry object, the map slot, the heap slot. */
const ENTRY_OVERHEAD = 128;

/** What a key counts against `maxIdempotencyBytes` before it holds an answer. */
function keyBytes(key: string, fingerprint: string, requestId: string): number {
  return key.length + fingerprint.length + requestId.length + ENTRY_OVERHEAD;
}

function answerBytes(answer: StoredAnswer): number {
  return answer.body.length + (JSON.stringify(answer.headers) ?? '').length;
}

function storeFull(message: string): RedundantProxyError {
  return new RedundantProxyError(codes.STORE_FULL, `the session store is full: ${message}`, { status: 503 });
}

/**
 * The idempotency keys of a memory store: a map, plus a binary min-heap of
 * the same entries by expiry (each entry knows its index, so a changed
 * expiry moves in O(log n)). Expired keys are swept from the top of the heap
 * before each operation, each once, so a full store answers a refusal in
 * O(log n) amortised, never by scanning. A live key is never evicted: over
 * a bound, a new key or a larger answer is refused instead (`storeFull`).
 */
class IdempotencyKeys {
  readonly #byKey = new Map<string, Held>();
  readonly #heap: Held[] = [];
  readonly #maxKeys: number;
  readonly #maxBytes: number;
  #bytes = 0;

  constructor(maxKeys: number, maxBytes: number) {
    this.#maxKeys = maxKeys;
    this.#maxBytes = maxBytes;
  }

  get size(): number {
    return this.#byKey.size;
  }

  get bytes(): number {
    return this.#bytes;
  }

  get(key: string): Held | undefined {
    return this.#byKey.get(key);
  }

  /** Drops every key whose expiry is `now` or earlier. */
  sweep(now: number): void {
    const heap = this.#heap;
    while (heap.length > 0 && heap[0]!.until <= now) {
      const gone = heap[0]!;
      const last = heap.pop()!;
      if (last !== gone) {
        heap[0] = last;
        this.#down(0);
      }
      this.#byKey.delete(gone.key);
      this.#bytes -= gone.bytes;
    }
  }

  /** Holds a new key, in flight until `lockUntil`, kept until `until`; or throws `RP_ERR_STORE_FULL` (sweep first). */
  add(key: string, fingerprint: string, requestId: string, lockUntil: number, until: number): void {
    const bytes = keyBytes(key, fingerprint, requestId);
    if (this.#byKey.size >= this.#maxKeys) {
      throw storeFull(`it holds ${this.#byKey.size} idempotency keys, all within their TTL (maxIdempotencyKeys ${this.#maxKeys}); no new key until one expires`);
    }
    if (this.#bytes + bytes > this.#maxBytes) {
      throw storeFull(`a new idempotency key would take its keys to ${this.#bytes + bytes} bytes, over maxIdempotencyBytes (${this.#maxBytes}); no new key until some expire`);
    }
    // Every field written here, in one shape: a spread is several times slower.
    const held: Held = { key, state: 'in-flight', fingerprint, requestId, attempt: 1, lockUntil, answer: undefined, until, bytes, at: this.#heap.length };
    this.#byKey.set(key, held);
    this.#heap.push(held);
    this.#bytes += bytes;
    this.#up(held.at);
  }

  /** Gives a held key a new size, or throws `RP_ERR_STORE_FULL` and leaves it as it was. */
  resize(held: Held, bytes: number): void {
    const total = this.#bytes - held.bytes + bytes;
    if (total > this.#maxBytes) {
      throw storeFull(`an answer of ${bytes - keyBytes(held.key, held.fingerprint, held.requestId)} bytes would take the idempotency keys to ${total} bytes, over maxIdempotencyBytes (${this.#maxBytes}); the key stays held, complete it with a smaller answer`);
    }
    this.#bytes = total;
    held.bytes = bytes;
  }

  /** Moves a held key's expiry, earlier or later. */
  expireAt(held: Held, until: number): void {
    const earlier = until < held.until;
    held.until = until;
    if (earlier) this.#up(held.at);
    else this.#down(held.at);
  }

  clear(): void {
    this.#byKey.clear();
    this.#heap.length = 0;
    this.#bytes = 0;
  }

  #up(at: number): void {
    const heap = this.#heap;
    const item = heap[at]!;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (heap[parent]!.until <= item.until) break;
      heap[at] = heap[parent]!;
      heap[at]!.at = at;
      at = parent;
    }
    heap[at] = item;
    item.at = at;
  }

  #down(at: number): void {
    const heap = this.#heap;
    const item = heap[at]!;
    const n = heap.length;
    for (;;) {
      let child = 2 * at + 1;
      if (child >= n) break;
      if (child + 1 < n && heap[child + 1]!.until < heap[child]!.until) child += 1;
      if (heap[child]!.until >= item.until) break;
      heap[at] = heap[child]!;
      heap[at]!.at = at;
      at = child;
    }
    heap[at] = item;
    item.at = at;
  }
}
