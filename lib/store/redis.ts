import { createHash } from 'node:crypto';
// Types only: the main entry of the package must load without ioredis.
import type { Cluster, Redis, RedisOptions } from 'ioredis';
import { InvalidOptionError, RedundantProxyError, codes, isRedundantProxyError } from '../errors.js';
import { withTimeout } from '../timeout.js';
import type {
  ClaimGrant,
  ClaimOptions,
  CommitRecord,
  CopyRecord,
  IdempotencyState,
  RecordAdoptionInput,
  RecordCopyInput,
  RequestRecord,
  SessionRecord,
  SessionStore,
  StoredAnswer,
} from './types.js';
import { checkMillis, closedError, detach, notHolder, sessionJson, superseded, type Waiter } from './common.js';
import { field, MAX_TIMER_MS, number, object, parseOptions, string, type Schema } from '../schema.js';
import { RECORD_BATCH, RecordBatcher, type BatchSettings } from './redis-batch.js';

// The session management server of the method on Redis or Redis Cluster.
//
// Key layout. Every key of one request carries the hash tag `{r:<requestId>}`,
// every key of one session `{s:<sessionId>}`, so each script below touches
// keys of a single slot and runs unchanged on Redis Cluster:
//
//   <prefix>{r:<requestId>}                  hash: the request record — copies,
//                                            adoption, cancellations, commit state
//   <prefix>{r:<requestId>}:commit           pub/sub channel: 'committed|<holder>', 'released'
//   <prefix>{s:<sessionId>}                  hash: the session's adopted state
//   <prefix>{s:<sessionId>}:adopt:<reqId>    hash: which copy of that request was
//                                            adopted (w) and whether it was promoted (p)
//   <prefix>{s:<sessionId>}:cand:<reqId>     hash: candidates of that request, by copy id
//   <prefix>{i:<idempotency key>}            hash: an Idempotency-Key's state, kept its TTL
//   <prefix>fence                            string: the fencing token counter (no TTL)
//
// Session promotion. A request and its session live in different slots, and a
// promotion must see the adoption and the candidate in one atomic step. So the
// candidates are kept under the *session's* tag, next to a per-request record
// of which copy was adopted: saveCandidate and the session half of
// recordAdoption are each one script on the session's slot, and the promotion
// (version + 1) happens inside whichever of them completes the pair, guarded
// by the `p` flag so it happens once however often either arrives.
// recordAdoption also writes the adoption into the request record (the request's
// slot); both halves are first-wins and are sent together (one round trip).
// They agree as long as one request is adopted by one caller, which is how the
// proxy works; two *different* adoptions of one request racing each other
// could settle differently in the two slots.
//
// Fencing tokens. A token is max(counter + 1, the Redis clock in µs) from the
// `fence` key, so it keeps going up even when Redis restarts empty (a
// database holding fence 1767225600123456 still accepts the next writer).
// On a single Redis the claim script takes the token inside the same script
// (one round trip, and tokens are granted in increasing order). On Cluster
// the counter lives in another slot, so the store takes a token first and
// passes it into the claim script (two round trips); a token taken for a
// claim that is not granted is wasted, and two claims of *different* requests
// may be granted in the opposite order of their tokens. Within a request the
// script refuses a token not above the last one it granted, and the store
// takes a new one, so a takeover always has a higher fence.
//
// Clock. Timestamps and leases are judged by the Redis server's clock (TIME
// inside the scripts), one clock for every process sharing the store.

/** What a `RedisSessionStore` is created with. */
export interface RedisSessionStoreOptions {
  /**
   * The ioredis client: a `Redis` or a `Cluster`, created and owned by you;
   * the store never closes it. Create it so that commands fail fast while
   * Redis is down instead of queueing: `{ maxRetriesPerRequest: 1,
   * enableOfflineQueue: false }` (see `commandTimeout` for the backstop).
   * The store opens one extra connection of its own (a duplicate of this
   * client) for pub/sub, the first time a claim has to wait.
   * @example
   * const client = new Redis({ host: 'redis', maxRetriesPerRequest: 1, enableOfflineQueue: false });
   * client.on('error', (err) => log.warn(err)); // it reconnects by itself
   */
  client: Redis | Cluster;
  /**
   * Prepended to every key and channel name, so several stores (or apps) can
   * share one Redis. Must not contain `{` or `}`: the store puts its own hash
   * tags after it.
   * @default 'rp:'
   */
  prefix?: string;
  /**
   * Milliseconds a request record (copies, adoption, commit state, session
   * candidates) lives after its last write. Keep it above your longest race
   * and your longest lease: a forgotten request loses its commit state.
   * @default 600000 (10 minutes)
   */
  ttl?: number;
  /**
   * Milliseconds a session's adopted state lives after it was last read or
   * promoted (a sliding expiry, as the memory store's).
   * @default 86400000 (24 hours)
   */
  sessionTtl?: number;
  /**
   * Milliseconds between re-checks of a claim another copy holds. Waiters are
   * woken by pub/sub the moment the holder confirms or releases, and by a
   * timer when its lease runs out; this poll only covers a lost message.
   * @default 250
   */
  pollInterval?: number;
  /**
   * Milliseconds the store waits for Redis to answer one command before it
   * rejects with `RP_ERR_STORE_UNAVAILABLE`, whatever the client does with
   * the command meanwhile (a client with the offline queue enabled would hold
   * it until Redis is back). A command that times out may still run later.
   * @default 2000
   */
  commandTimeout?: number;
  /**
   * How the request log's writes (a copy received, an adoption, a copy
   * stopped) are batched: the records made in one turn of the event loop, or
   * within `maxDelay` ms, go to Redis in one script call (on Cluster one
   * call per record, since a script may touch one slot only). Nobody waits
   * for them on a read's critical path; `getRequest()` from another process
   * may trail by one batch.
   * @default { maxRecords: 128, maxDelay: 0, maxPending: 10000 }
   */
  batch?: Partial<BatchSettings>;
}

/** The parts of ioredis the store uses; `Redis` and `Cluster` both have them. */
type Client = Pick<Redis, 'evalsha' | 'eval' | 'hgetall'>;

/** The store's own pub/sub connection (a `Redis` or `Cluster` duplicate). */
interface Subscriber {
  status: string;
  on(event: string, listener: (...args: never[]) => void): unknown;
  once(event: string, listener: () => void): unknown;
  subscribe(channel: string): Promise<unknown>;
  unsubscribe(channel: string): Promise<unknown>;
  ssubscribe(channel: string): Promise<unknown>;
  sunsubscribe(channel: string): Promise<unknown>;
  disconnect(): void;
}

interface Script {
  lua: string;
  sha: string;
}

type Attempt =
  | { kind: 'granted'; grant: ClaimGrant }
  /** The asker already holds the claim: its own grant, not a new one. */
  | { kind: 'held'; grant: ClaimGrant }
  | { kind: 'wait'; remaining: number }
  | { kind: 'superseded'; holder: string };


/** The copies of this process waiting for one request's claim. */
interface Queue {
  requestId: string;
  channel: string;
  waiters: Waiter[];
  timer: NodeJS.Timeout | undefined;
  /** An attempt is in flight; `again` asks for another one after it. */
  busy: boolean;
  again: boolean;
}

const OPTIONS: Schema<Required<RedisSessionStoreOptions>> = {
  client: field<Redis | Cluster>('must be an ioredis Redis or Cluster client', (c) => {
    const o = c as Record<string, unknown> | null;
    return typeof o === 'object' && o !== null && typeof o.evalsha === 'function' && typeof o.hgetall === 'function' && typeof o.duplicate === 'function';
  }),
  prefix: string('must be a string without `{` or `}`', (p) => !/[{}]/.test(p), 'rp:'),
  ttl: number({ integer: true, unit: 'milliseconds', min: 1, default: 10 * 60_000 }),
  sessionTtl: number({ integer: true, unit: 'milliseconds', min: 1, default: 24 * 60 * 60_000 }),
  // A Node timer waits at most 2^31 - 1 ms.
  pollInterval: number({ integer: true, unit: 'milliseconds', min: 1, max: MAX_TIMER_MS, default: 250 }),
  commandTimeout: number({ integer: true, unit: 'milliseconds', min: 1, max: MAX_TIMER_MS, default: 2000 }),
  batch: object<BatchSettings>({
    maxRecords: number({ integer: true, min: 1, max: 10_000, default: 128 }),
    maxDelay: number({ integer: true, unit: 'milliseconds', min: 0, max: 1000, default: 0 }),
    maxPending: number({ integer: true, min: 1, default: 10_000 }),
  }) as Schema<Required<RedisSessionStoreOptions>>['batch'],
};

/**
 * The session store on Redis (or Redis Cluster), through ioredis, for a
 * gateway and replicas that run as separate processes or machines. It passes
 * the same conformance suite as `MemorySessionStore` and behaves like it;
 * every write is one atomic Lua script.
 *
 * @example
 * import { Redis } from 'ioredis';
 * import { RedisSessionStore } from 'redundant-proxy/redis';
 *
 * const client = new Redis({ host: 'redis', maxRetriesPerRequest: 1, enableOfflineQueue: false });
 * client.on('error', () => {}); // it reconnects by itself; failures reach the callers
 * const store = new RedisSessionStore({ client, prefix: 'shop:' });
 */
export class RedisSessionStore implements SessionStore {
  /** The caller's client, typed for the commands both Redis and Cluster share. */
  readonly #client: Client;
  readonly #source: Redis | Cluster;
  readonly #cluster: boolean;
  readonly #prefix: string;
  readonly #ttl: number;
  readonly #sessionTtl: number;
  readonly #pollInterval: number;
  readonly #commandTimeout: number;
  /** Waiting claims, by the channel of their request. */
  readonly #queues = new Map<string, Queue>();
  /** The request log's writes, batched. */
  readonly #records: RecordBatcher;
  #subscriber: Subscriber | undefined;
  /** Sharded pub/sub (Redis 7+) or classic; found out at the first subscription. */
  #sharded: boolean | undefined;
  #closed = false;

  constructor(options: RedisSessionStoreOptions) {
    const { client, prefix, ttl, sessionTtl, pollInterval, commandTimeout, batch } = parseOptions(OPTIONS, options);
    this.#source = client;
    this.#client = client as unknown as Client;
    this.#cluster = (client as { isCluster?: boolean }).isCluster === true;
    this.#prefix = prefix;
    this.#ttl = ttl;
    this.#sessionTtl = sessionTtl;
    this.#pollInterval = pollInterval;
    this.#commandTimeout = commandTimeout;
    this.#records = new RecordBatcher((keys, args) => this.#guard('writing the request log', this.#eval(RECORD_BATCH, keys, args)), batch as BatchSettings, ttl, this.#cluster);
  }

  async recordCopy(input: RecordCopyInput): Promise<{ duplicate: boolean }> {
    this.#assertOpen();
    // Step "receive and record" (docs/design.md): the application server received this copy.
    const copy = JSON.stringify({ duplicateId: input.duplicateId, upstreamId: input.upstreamId, index: input.index, of: input.of });
    const reply = await this.#records.add({
      key: this.#requestKey(input.requestId),
      args: ['c', input.requestId, input.sessionId, input.update ? '1' : '0', input.duplicateId, copy],
    });
    return { duplicate: reply === 1 };
  }

  async saveCandidate(sessionId: string, requestId: string, duplicateId: string, data: Record<string, unknown>): Promise<void> {
    this.#assertOpen();
    const json = sessionJson(data);
    // A request without a session has no state to carry to the next request.
    if (sessionId === '') return;
    await this.#run('saveCandidate', SAVE_CANDIDATE, this.#sessionKeys(sessionId, requestId), [
      sessionId, duplicateId, json, this.#ttl, this.#sessionTtl,
    ]);
  }

  async recordAdoption(input: RecordAdoptionInput): Promise<void> {
    this.#assertOpen();
    // Step "record the adoption": which copies produced the adopted answer; the first one
    // recorded stands. The session half promotes the winner's candidate.
    const adopted = JSON.stringify({ duplicateIds: input.duplicateIds, upstreamIds: input.upstreamIds });
    const writes: Promise<unknown>[] = [
      this.#records.add({ key: this.#requestKey(input.requestId), args: ['a', input.requestId, input.sessionId, input.update ? '1' : '0', adopted, ''] }),
    ];
    // Nothing to promote when the adopted copy changed nothing: one script less per read.
    if (input.sessionId !== '' && input.sessionChanged !== false) {
      writes.push(this.#eval(ADOPT_CANDIDATE, this.#sessionKeys(input.sessionId, input.requestId), [
        input.sessionId, input.duplicateIds[0] ?? '', this.#ttl, this.#sessionTtl,
      ]));
    }
    // Sent together: one round trip on one Redis, two nodes in parallel on Cluster.
    await this.#guard('recordAdoption', Promise.all(writes).then(() => undefined));
  }

  async recordCancelled(requestId: string, duplicateId: string): Promise<void> {
    this.#assertOpen();
    await this.#records.add({ key: this.#requestKey(requestId), args: ['x', requestId, '', '1', duplicateId, ''] });
  }

  async getRequest(requestId: string): Promise<RequestRecord | undefined> {
    this.#assertOpen();
    const hash = await this.#guard('getRequest', this.#client.hgetall(this.#requestKey(requestId)));
    return hash.requestId === undefined ? undefined : toRequestRecord(hash);
  }

  async getSession(sessionId: string): Promise<SessionRecord | undefined> {
    this.#assertOpen();
    const reply = await this.#run('getSession', GET_SESSION, [this.#sessionKey(sessionId)], [this.#sessionTtl]);
    const hash = pairs(reply);
    if (hash.data === undefined) return undefined;
    return { sessionId, data: JSON.parse(hash.data) as Record<string, unknown>, version: Number(hash.version), updatedAt: Number(hash.updatedAt) };
  }

  async claim(requestId: string, duplicateId: string, options: ClaimOptions): Promise<ClaimGrant> {
    this.#assertOpen();
    const { leaseMs, signal } = options;
    if (!Number.isFinite(leaseMs) || leaseMs <= 0) throw new InvalidOptionError('leaseMs', 'must be a number of milliseconds > 0', leaseMs);
    signal?.throwIfAborted();
    const lease = Math.ceil(leaseMs);
    const attempt = await this.#attempt(requestId, duplicateId, lease);
    // The caller may have given up, or the store closed, while Redis answered.
    if (this.#closed || signal?.aborted) {
      if (attempt.kind === 'granted') this.#giveBack(requestId, duplicateId, attempt.grant.fence);
      throw this.#closed ? closedError() : signal!.reason;
    }
    switch (attempt.kind) {
      case 'granted':
      case 'held':
        return attempt.grant;
      case 'superseded':
        throw superseded(requestId, attempt.holder);
      case 'wait':
        return this.#wait(requestId, duplicateId, lease, signal, attempt.remaining);
    }
  }

  async confirm(requestId: string, duplicateId: string, fence: number): Promise<void> {
    this.#assertOpen();
    // A holder past its lease may still confirm as long as nobody took over:
    // the takeover, not the clock, is what makes it lose. Confirming twice is harmless.
    const result = await this.#run('confirm', CONFIRM, [this.#requestKey(requestId)], [duplicateId, String(fence), this.#ttl, this.#channel(requestId)]);
    if (result === 1) return;
    // Refused: [0, state, holder] of the record as it is (both nil when it is gone).
    const [, state, holder] = result as [0, string | null, string | null];
    throw notHolder(requestId, duplicateId, fence, state === 'committed' ? String(holder) : state ? null : undefined);
  }

  async release(requestId: string, duplicateId: string, fence: number): Promise<void> {
    this.#assertOpen();
    await this.#run('release', RELEASE, [this.#requestKey(requestId)], [duplicateId, String(fence), this.#ttl, this.#channel(requestId)]);
  }

  async beginIdempotent(key: string, fingerprint: string, requestId: string, lockMs: number, ttlMs: number): Promise<IdempotencyState> {
    this.#assertOpen();
    checkMillis('lockMs', lockMs);
    checkMillis('ttlMs', ttlMs);
    const reply = await this.#run('beginIdempotent', BEGIN_IDEMPOTENT, [this.#idempotencyKey(key)], [fingerprint, requestId, millis(lockMs), millis(ttlMs)]);
    const [state, rid, third] = reply as [string, string?, (string | number)?];
    if (state === 'mismatch') return { state };
    if (state === 'started') return { state, requestId: rid!, attempt: Number(third) };
    if (state === 'completed') return { state, requestId: rid!, answer: JSON.parse(String(third)) as StoredAnswer };
    return { state: 'in-flight', requestId: rid! };
  }

  async completeIdempotent(key: string, requestId: string, answer: StoredAnswer | null, ttlMs: number, attempt: number): Promise<void> {
    this.#assertOpen();
    checkMillis('ttlMs', ttlMs);
    await this.#run('completeIdempotent', COMPLETE_IDEMPOTENT, [this.#idempotencyKey(key)], [
      requestId, String(attempt), answer === null ? '0' : '1', answer === null ? '' : JSON.stringify(answer), millis(ttlMs),
    ]);
  }

  /**
   * Rejects the claims waiting in this process with `RP_ERR_CLOSED`, stops
   * its timers and closes its own pub/sub connection. The client you passed
   * stays open: it is yours.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // What was recorded before close() still goes out (each write bounded by commandTimeout).
    const flushed = this.#records.flush();
    for (const queue of [...this.#queues.values()]) this.#rejectAll(queue, () => closedError());
    await Promise.all([flushed, this.#closeSubscriber()]);
  }

  async #closeSubscriber(): Promise<void> {
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    if (!subscriber) return;
    // Between reconnects (Redis down) there is no socket to wait for: ioredis
    // just cancels the next attempt and reports no end.
    if (!['connecting', 'connect', 'ready'].includes(subscriber.status)) {
      subscriber.disconnect();
      return;
    }
    await new Promise<void>((resolve) => {
      // Do not wait for a report of the end forever.
      const timer = setTimeout(resolve, 1000);
      timer.unref();
      subscriber.once('end', () => {
        clearTimeout(timer);
        resolve();
      });
      subscriber.disconnect();
    });
  }

  // --- keys ---------------------------------------------------------------

  #requestKey(requestId: string): string {
    return `${this.#prefix}{r:${tag(requestId)}}`;
  }

  #channel(requestId: string): string {
    return `${this.#requestKey(requestId)}:commit`;
  }

  #sessionKey(sessionId: string): string {
    return `${this.#prefix}{s:${tag(sessionId)}}`;
  }

  /** The session, the request's adoption marker under the session's tag, and its candidates. */
  #sessionKeys(sessionId: string, requestId: string): string[] {
    const session = this.#sessionKey(sessionId);
    return [session, `${session}:adopt:${requestId}`, `${session}:cand:${requestId}`];
  }

  #idempotencyKey(key: string): string {
    return `${this.#prefix}{i:${tag(key)}}`;
  }

  #fenceKey(): string {
    return `${this.#prefix}fence`;
  }

  // --- commands -----------------------------------------------------------

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }

  #run(what: string, script: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    return this.#guard(what, this.#eval(script, keys, args));
  }

  /** EVALSHA, and EVAL (which caches the script again) when Redis does not know it, e.g. after a restart. */
  async #eval(script: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    try {
      return await this.#client.evalsha(script.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      return this.#client.eval(script.lua, keys.length, ...keys, ...args);
    }
  }

  /**
   * Bounds a command by `commandTimeout` and turns a Redis failure into
   * `RP_ERR_STORE_UNAVAILABLE` (503), keeping the original as its `cause`.
   */
  async #guard<T>(what: string, command: Promise<T>): Promise<T> {
    try {
      return await withTimeout(command, this.#commandTimeout, what);
    } catch (err) {
      if (isRedundantProxyError(err)) throw err;
      throw new RedundantProxyError(codes.STORE_UNAVAILABLE, `the session store (Redis) failed ${what}: ${err instanceof Error ? err.message : String(err)}`, { status: 503, cause: err });
    }
  }

  // --- commit arbitration -------------------------------------------------

  /** One try at the claim: granted, already held, wait, or superseded. */
  async #attempt(requestId: string, duplicateId: string, leaseMs: number): Promise<Attempt> {
    const requestKey = this.#requestKey(requestId);
    // On Cluster a token taken before another copy's grant can arrive after
    // it; the script refuses it ('stale') and a fresh one, higher, is taken.
    for (let tries = 1; ; tries++) {
      let reply: unknown;
      if (this.#cluster) {
        const fence = await this.#run('claim', NEXT_FENCE, [this.#fenceKey()], []);
        reply = await this.#run('claim', CLAIM, [requestKey], [requestId, duplicateId, leaseMs, this.#ttl, String(fence)]);
      } else {
        reply = await this.#run('claim', CLAIM, [requestKey, this.#fenceKey()], [requestId, duplicateId, leaseMs, this.#ttl, '']);
      }
      const [kind, a, b] = reply as [string, number | string, number];
      if (kind === 'granted' || kind === 'held') return { kind, grant: { fence: Number(a), leaseUntil: Number(b) } };
      if (kind === 'wait') return { kind, remaining: Number(a) };
      if (kind === 'superseded') return { kind, holder: String(a) };
      if (tries >= 5) throw new RedundantProxyError(codes.STORE_UNAVAILABLE, `request ${requestId}: no fresh fencing token after ${tries} tries`, { status: 503 });
    }
  }

  /** Returns a claim granted to a copy that stopped waiting. If this fails, the lease runs out. */
  #giveBack(requestId: string, duplicateId: string, fence: number): void {
    this.#eval(RELEASE, [this.#requestKey(requestId)], [duplicateId, String(fence), this.#ttl, this.#channel(requestId)]).catch(() => undefined);
  }

  #wait(requestId: string, duplicateId: string, leaseMs: number, signal: AbortSignal | undefined, remaining: number): Promise<ClaimGrant> {
    return new Promise<ClaimGrant>((resolve, reject) => {
      const channel = this.#channel(requestId);
      let queue = this.#queues.get(channel);
      const fresh = queue === undefined;
      if (!queue) {
        queue = { requestId, channel, waiters: [], timer: undefined, busy: false, again: false };
        this.#queues.set(channel, queue);
      }
      const q = queue;
      const waiter: Waiter = { duplicateId, leaseMs, resolve, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const at = q.waiters.indexOf(waiter);
          if (at !== -1) q.waiters.splice(at, 1);
          if (q.waiters.length === 0 && !q.busy) this.#drop(q);
          reject(signal.reason);
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      q.waiters.push(waiter);
      if (fresh) {
        // Look again once subscribed: a release published between the first
        // attempt and the subscription would otherwise wait for the poll.
        this.#subscribe(channel).then(
          () => {
            if (this.#queues.get(channel) === q) void this.#settle(q);
            // Nobody waits any more, and the drop may have come before the
            // first subscription told sharded from classic pub/sub.
            else if (!this.#queues.has(channel) && !this.#closed) this.#unsubscribe(channel);
          },
          () => undefined, // the poll and the lease timer still wake the waiters
        );
      }
      if (!q.busy) this.#schedule(q, remaining);
    });
  }

  /**
   * Tries the claim for the longest-waiting copy of this process. Exactly
   * one copy anywhere gets it: the script decides, whoever asks first.
   */
  async #settle(q: Queue): Promise<void> {
    if (q.busy) {
      q.again = true;
      return;
    }
    const head = q.waiters[0];
    if (!head) {
      this.#drop(q);
      return;
    }
    q.busy = true;
    clearTimeout(q.timer);
    q.timer = undefined;
    let attempt: Attempt;
    try {
      attempt = await this.#attempt(q.requestId, head.duplicateId, head.leaseMs);
    } catch (err) {
      // Without the store there is no arbitration: the waiters fail (closed), as claim() would.
      if (!this.#closed) this.#rejectAll(q, () => err);
      return;
    } finally {
      q.busy = false;
    }
    if (this.#closed) {
      if (attempt.kind === 'granted') this.#giveBack(q.requestId, head.duplicateId, attempt.grant.fence);
      return;
    }
    let next = this.#pollInterval;
    switch (attempt.kind) {
      case 'granted':
      case 'held': {
        const at = q.waiters.indexOf(head);
        if (at === -1) {
          // It was aborted meanwhile: hand the claim back (the release wakes the others).
          if (attempt.kind === 'granted') this.#giveBack(q.requestId, head.duplicateId, attempt.grant.fence);
        } else {
          q.waiters.splice(at, 1);
          detach(head);
          head.resolve(attempt.grant);
        }
        next = head.leaseMs;
        break;
      }
      case 'superseded': {
        const { holder } = attempt;
        this.#rejectAll(q, () => superseded(q.requestId, holder));
        return;
      }
      case 'wait':
        next = attempt.remaining;
        break;
    }
    if (q.waiters.length === 0) {
      this.#drop(q);
      return;
    }
    if (q.again) {
      q.again = false;
      void this.#settle(q);
      return;
    }
    this.#schedule(q, next);
  }

  /**
   * The next look, in real time: when the holder's lease runs out by Redis's
   * clock (`remaining`), or after `pollInterval` in case a message was lost,
   * whichever comes first. At least 1 ms: no busy loop.
   */
  #schedule(q: Queue, remaining: number): void {
    clearTimeout(q.timer);
    const delay = Math.max(1, Math.min(this.#pollInterval, remaining + 1));
    q.timer = setTimeout(() => {
      q.timer = undefined;
      void this.#settle(q);
    }, delay);
    // Waiting copies must not keep a process alive that is otherwise done.
    q.timer.unref();
  }

  #rejectAll(q: Queue, reason: () => unknown): void {
    const waiters = q.waiters.splice(0);
    this.#drop(q);
    for (const waiter of waiters) {
      detach(waiter);
      waiter.reject(reason());
    }
  }

  #drop(q: Queue): void {
    clearTimeout(q.timer);
    q.timer = undefined;
    if (this.#queues.get(q.channel) !== q) return;
    this.#queues.delete(q.channel);
    if (!this.#closed) this.#unsubscribe(q.channel);
  }

  // --- pub/sub ------------------------------------------------------------

  /**
   * The store's own connection for pub/sub (a connection in subscriber mode
   * can run nothing else), opened at the first wait. It queues commands while
   * Redis is down and resubscribes by itself when it reconnects (ioredis'
   * `autoResubscribe`); after a reconnect every waiter looks again, since
   * messages published meanwhile are lost.
   */
  #openSubscriber(): Subscriber {
    // Whatever the caller's client does while Redis is down, this connection
    // keeps its subscriptions queued and retries them: no caller waits on it.
    const source = this.#source;
    const subscriber = (this.#cluster
      // Sharded pub/sub on Cluster needs a subscriber per shard (ioredis >= 5.6).
      ? (source as Cluster).duplicate([], { enableOfflineQueue: true, lazyConnect: false, shardedSubscribers: true })
      // `disconnectTimeout` (in ioredis' defaults, not in its types): closing
      // while Redis is down keeps a timer of that length on the dead socket.
      : (source as Redis).duplicate({ enableOfflineQueue: true, lazyConnect: false, autoResubscribe: true, maxRetriesPerRequest: null, disconnectTimeout: 100 } as RedisOptions)) as unknown as Subscriber;
    // Errors reach the callers through their commands; an 'error' event
    // without a listener would crash the process.
    subscriber.on('error', () => undefined);
    const onMessage = (channel: string, message: string) => this.#onMessage(channel, message);
    subscriber.on('message', onMessage);
    subscriber.on('smessage', onMessage);
    const recheck = () => {
      for (const q of this.#queues.values()) void this.#settle(q);
    };
    subscriber.on('ready', recheck);
    subscriber.on('subscribersReady', recheck);
    return subscriber;
  }

  async #subscribe(channel: string): Promise<void> {
    const subscriber = (this.#subscriber ??= this.#openSubscriber());
    if (this.#sharded !== false) {
      try {
        await subscriber.ssubscribe(channel);
        this.#sharded = true;
        return;
      } catch (err) {
        // Redis before 7 has no sharded pub/sub; the scripts publish classically there too.
        if (this.#sharded === true || !/unknown command/i.test(String(err))) throw err;
        this.#sharded = false;
      }
    }
    await subscriber.subscribe(channel);
  }

  #unsubscribe(channel: string): void {
    const subscriber = this.#subscriber;
    if (!subscriber || this.#sharded === undefined) return;
    (this.#sharded ? subscriber.sunsubscribe(channel) : subscriber.unsubscribe(channel)).catch(() => undefined);
  }

  #onMessage(channel: string, message: string): void {
    const q = this.#queues.get(channel);
    if (!q || this.#closed) return;
    if (message.startsWith('committed|')) {
      // Published by the confirm script after the commit: final, no need to ask Redis.
      const holder = message.slice('committed|'.length);
      this.#rejectAll(q, () => superseded(q.requestId, holder));
      return;
    }
    void this.#settle(q);
  }
}

// --- scripts ----------------------------------------------------------------

const PRELUDE = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(n) return string.format('%.0f', n) end
local function ensure(key, rid, sid, upd)
  if redis.call('HEXISTS', key, 'requestId') == 0 then
    redis.call('HSET', key, 'requestId', rid, 'sessionId', sid, 'update', upd, 'state', 'none')
  end
end
-- Sharded pub/sub where the server has it (Redis 7+), classic otherwise.
local function notify(channel, message)
  local r = redis.pcall('SPUBLISH', channel, message)
  if type(r) == 'table' and r.err then redis.call('PUBLISH', channel, message) end
end
local function next_fence(key)
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local f = redis.call('INCR', key)
  if f < floor then
    redis.call('SET', key, num(floor))
    f = floor
  end
  return f
end
-- A request key lives at least ttl after each write, and never less than a
-- lease granted on it asked for.
local function touch(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
local function promote(key, sid, data, ttl)
  redis.call('HSET', key, 'sessionId', sid, 'data', data, 'updatedAt', num(now_ms()))
  redis.call('HINCRBY', key, 'version', 1)
  redis.call('PEXPIRE', key, ttl)
end
`;

function script(body: string): Script {
  const lua = PRELUDE + body;
  return { lua, sha: createHash('sha1').update(lua).digest('hex') };
}



// KEYS: session, adoption marker, candidates. ARGV: sessionId, adopted copy, ttl, sessionTtl.
const ADOPT_CANDIDATE = script(`
redis.call('HSETNX', KEYS[2], 'w', ARGV[2])
local winner = redis.call('HGET', KEYS[2], 'w')
if redis.call('HEXISTS', KEYS[2], 'p') == 0 then
  local data = redis.call('HGET', KEYS[3], winner)
  if data then
    promote(KEYS[1], ARGV[1], data, ARGV[4])
    redis.call('HSET', KEYS[2], 'p', '1')
  end
end
-- Only the adopted copy's session state may reach the client.
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 0
`);

// KEYS: session, adoption marker, candidates. ARGV: sessionId, copy, data JSON, ttl, sessionTtl.
const SAVE_CANDIDATE = script(`
local winner = redis.call('HGET', KEYS[2], 'w')
if winner then
  -- The adoption arrived first: promote if this is the adopted copy, else drop it.
  if winner == ARGV[2] and redis.call('HEXISTS', KEYS[2], 'p') == 0 then
    promote(KEYS[1], ARGV[1], ARGV[3], ARGV[5])
    redis.call('HSET', KEYS[2], 'p', '1')
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
  return 0
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return 0
`);

// KEYS: session. ARGV: sessionTtl. Reading a session keeps it alive.
const GET_SESSION = script(`
local h = redis.call('HGETALL', KEYS[1])
if #h > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return h
`);


// KEYS: fence counter. The Cluster path: a token first, then CLAIM with it.
const NEXT_FENCE = script(`
return next_fence(KEYS[1])
`);

// KEYS: request[, fence counter]. ARGV: requestId, duplicateId, leaseMs, ttl, fence ('' = take one here).
const CLAIM = script(`
local key = KEYS[1]
ensure(key, ARGV[1], '', '1')
local now = now_ms()
local h = redis.call('HMGET', key, 'state', 'holder', 'fence', 'leaseUntil', 'lastFence')
if h[1] == 'committed' then return {'superseded', h[2]} end
if h[1] == 'claimed' then
  local leaseUntil = tonumber(h[4])
  if now < leaseUntil then
    if h[2] == ARGV[2] then return {'held', tonumber(h[3]), leaseUntil} end
    return {'wait', leaseUntil - now}
  end
end
local fence
if ARGV[5] == '' then
  fence = next_fence(KEYS[2])
else
  fence = tonumber(ARGV[5])
  if h[5] and fence <= tonumber(h[5]) then return {'stale'} end
end
local leaseUntil = now + tonumber(ARGV[3])
redis.call('HSET', key, 'state', 'claimed', 'holder', ARGV[2], 'fence', num(fence), 'leaseUntil', num(leaseUntil), 'lastFence', num(fence))
-- The commit state must outlive the lease.
touch(key, math.max(tonumber(ARGV[4]), tonumber(ARGV[3])))
return {'granted', fence, leaseUntil}
`);

// KEYS: request. ARGV: duplicateId, fence, ttl, channel. 1 = committed (now or before), 0 = not the holder.
const CONFIRM = script(`
local key = KEYS[1]
local h = redis.call('HMGET', key, 'state', 'holder', 'fence')
if h[2] ~= ARGV[1] or tonumber(h[3]) ~= tonumber(ARGV[2]) then return {0, h[1], h[2]} end
if h[1] == 'committed' then return 1 end
if h[1] ~= 'claimed' then return {0, h[1], h[2]} end
redis.call('HSET', key, 'state', 'committed', 'committedAt', num(now_ms()))
redis.call('HDEL', key, 'leaseUntil')
touch(key, ARGV[3])
notify(ARGV[4], 'committed|' .. ARGV[1])
return 1
`);

// KEYS: request. ARGV: duplicateId, fence, ttl, channel. Compare-and-delete: only the holder releases.
const RELEASE = script(`
local key = KEYS[1]
local h = redis.call('HMGET', key, 'state', 'holder', 'fence')
if h[1] ~= 'claimed' or h[2] ~= ARGV[1] or tonumber(h[3]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', key, 'state', 'none')
redis.call('HDEL', key, 'holder', 'fence', 'leaseUntil')
touch(key, ARGV[3])
notify(ARGV[4], 'released')
return 1
`);

// Idempotency keys. Fields: state ('in-flight' | 'pending' | 'completed'),
// fp, rid (the first attempt's request id), attempt, lockUntil (while
// in-flight, by the Redis clock), answer (JSON, once completed). The key
// expires ttlMs after it was created or completed, never sooner than its
// lock ends: a key is not forgotten because an attempt died.

// KEYS: idempotency key. ARGV: fingerprint, requestId, lockMs, ttlMs.
// Replies {'started', rid, attempt} | {'in-flight', rid} | {'mismatch'} | {'completed', rid, answer}.
const BEGIN_IDEMPOTENT = script(`
local key = KEYS[1]
local now = now_ms()
local lock = tonumber(ARGV[3])
local h = redis.call('HMGET', key, 'state', 'fp', 'rid', 'answer', 'attempt', 'lockUntil')
if h[1] then
  if h[2] ~= ARGV[1] then return {'mismatch'} end
  if h[1] == 'completed' then return {'completed', h[3], h[4]} end
  -- A key written before attempts existed has no lockUntil: its PEXPIRE was its lock.
  if h[1] == 'in-flight' and (not h[6] or now < tonumber(h[6])) then return {'in-flight', h[3]} end
  -- The lock ran out, or the last attempt ended without a final answer
  -- ('pending'): resume the same request id, as the next attempt.
  local attempt = (tonumber(h[5]) or 1) + 1
  redis.call('HSET', key, 'state', 'in-flight', 'attempt', attempt, 'lockUntil', num(now + lock))
  if redis.call('PTTL', key) < lock then redis.call('PEXPIRE', key, lock) end
  return {'started', h[3], attempt}
end
redis.call('HSET', key, 'state', 'in-flight', 'fp', ARGV[1], 'rid', ARGV[2], 'attempt', 1, 'lockUntil', num(now + lock))
redis.call('PEXPIRE', key, math.max(tonumber(ARGV[4]), lock))
return {'started', ARGV[2], 1}
`);

// KEYS: idempotency key. ARGV: requestId, attempt, has answer ('1'/'0'), answer JSON, ttlMs.
// Only the attempt that holds the key ends it; 1 = ended, 0 = not the holder.
const COMPLETE_IDEMPOTENT = script(`
local key = KEYS[1]
local h = redis.call('HMGET', key, 'state', 'rid', 'attempt')
if h[1] ~= 'in-flight' or h[2] ~= ARGV[1] or tonumber(h[3]) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '0' then
  redis.call('HSET', key, 'state', 'pending')
else
  redis.call('HSET', key, 'state', 'completed', 'answer', ARGV[4])
end
redis.call('HDEL', key, 'lockUntil')
redis.call('PEXPIRE', key, ARGV[5])
return 1
`);

// --- helpers ----------------------------------------------------------------

/**
 * An id as it goes inside a hash tag: `{` and `}` would end the tag early
 * (splitting one request's keys over slots), so they are escaped, and `%`
 * with them to keep the mapping one-to-one.
 */
function tag(id: string): string {
  return id.replace(/[%{}]/g, (c) => encodeURIComponent(c));
}

/** Whole milliseconds, at least 1, for PEXPIRE. */
function millis(ms: number): number {
  return Number.isFinite(ms) ? Math.max(1, Math.ceil(ms)) : 1;
}

/** A flat [field, value, …] reply as an object. */
function pairs(reply: unknown): Record<string, string> {
  const list = reply as string[];
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < list.length; i += 2) out[list[i]!] = list[i + 1]!;
  return out;
}

/** Splits 'a|b|rest' into ['a', 'b', 'rest'] (the rest may contain '|'). */
function split3(value: string): [string, string, string] {
  const first = value.indexOf('|');
  const second = value.indexOf('|', first + 1);
  return [value.slice(0, first), value.slice(first + 1, second), value.slice(second + 1)];
}

function toRequestRecord(hash: Record<string, string>): RequestRecord {
  const copies: Array<{ n: number; copy: CopyRecord }> = [];
  const cancelled: Array<{ n: number; duplicateId: string }> = [];
  for (const [field, value] of Object.entries(hash)) {
    if (field.startsWith('c:')) {
      const [n, receivedAt, json] = split3(value);
      const copy = JSON.parse(json) as Omit<CopyRecord, 'receivedAt'>;
      copies.push({ n: Number(n), copy: { ...copy, receivedAt: Number(receivedAt) } });
    } else if (field.startsWith('x:')) {
      cancelled.push({ n: Number(value), duplicateId: field.slice(2) });
    }
  }
  let adopted: RequestRecord['adopted'] = null;
  if (hash.adopted !== undefined) {
    const at = hash.adopted.indexOf('|');
    const { duplicateIds, upstreamIds } = JSON.parse(hash.adopted.slice(at + 1)) as { duplicateIds: string[]; upstreamIds: string[] };
    adopted = { duplicateIds, upstreamIds, at: Number(hash.adopted.slice(0, at)) };
  }
  let commit: CommitRecord = { state: 'none' };
  if (hash.state === 'claimed') {
    commit = { state: 'claimed', holder: hash.holder!, fence: Number(hash.fence), leaseUntil: Number(hash.leaseUntil) };
  } else if (hash.state === 'committed') {
    commit = { state: 'committed', holder: hash.holder!, fence: Number(hash.fence), committedAt: Number(hash.committedAt) };
  }
  return {
    requestId: hash.requestId!,
    sessionId: hash.sessionId ?? '',
    update: hash.update === '1',
    copies: copies.sort((a, b) => a.n - b.n).map((c) => c.copy),
    adopted,
    cancelled: cancelled.sort((a, b) => a.n - b.n).map((c) => c.duplicateId),
    commit,
  };
}

