import { RedundantProxyError, codes } from '../../errors.js';
import type { StoredAnswer } from '../types.js';

// The memory store's idempotency keys: each kept until its own expiry by the
// store's clock, bounded in number and bytes, refused (never evicted) when full.

/** An idempotency key as the memory store holds it. */
export interface Held {
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
export function keyBytes(key: string, fingerprint: string, requestId: string): number {
  return key.length + fingerprint.length + requestId.length + ENTRY_OVERHEAD;
}

export function answerBytes(answer: StoredAnswer): number {
  return answer.body.length + (JSON.stringify(answer.headers) ?? '').length;
}

export function storeFull(message: string): RedundantProxyError {
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
export class IdempotencyKeys {
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
