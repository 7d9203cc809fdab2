import { randomUUID } from 'node:crypto';
// Types only: the main entry of the package must load without ioredis.
import type { Cluster, Redis } from 'ioredis';
import { InvalidOptionError, RedundantProxyError, codes, isRedundantProxyError } from '../errors.js';
import { withTimeout } from '../timeout.js';
import type {
  ClaimGrant,
  ClaimOptions,
  IdempotencyState,
  RecordAdoptionInput,
  RecordCopyInput,
  RequestRecord,
  SessionRecord,
  SessionStore,
  StoredAnswer,
} from './types.js';
import { checkMillis, closedError, detach, notHolder, sessionJson, superseded, type Waiter } from './common.js';
import { parseOptions } from '../schema.js';
import { schedulerOf } from '../time.js';
import { Batcher, GET_SESSIONS, RECORD_BATCH, RecordBatcher, recordHead, type BatchSettings } from './redis/batch.js';
import { RedisKeys } from './redis/keys.js';
import { PubSub } from './redis/pubsub.js';
import { OPTIONS, type RedisSessionStoreOptions } from './redis/options.js';
import { millis, pairs, readStored, toRequestRecord } from './redis/records.js';
import { ADOPT_CANDIDATE, BEGIN_IDEMPOTENT, CLAIM, CLAIM_BATCH, COMPLETE_IDEMPOTENT, CONFIRM, CONFIRM_BATCH, NEXT_FENCE, RELEASE, SAVE_CANDIDATE, type Script } from './redis/scripts.js';

export type { RedisSessionStoreOptions } from './redis/options.js';

// The session management server of the method on Redis or Redis Cluster:
// the store class. Its key layout is in redis/keys.ts, its Lua scripts (and
// how session promotion and fencing tokens work across slots) in
// redis/scripts.ts, the request log's batches in redis/batch.ts.

/** The parts of ioredis the store uses; `Redis` and `Cluster` both have them. */
type Client = Pick<Redis, 'evalsha' | 'eval' | 'hgetall'>;



type Attempt =
  | { kind: 'granted'; grant: ClaimGrant }
  /** The asker already holds the claim: its own grant, not a new one. */
  | { kind: 'held'; grant: ClaimGrant }
  | { kind: 'wait'; remaining: number }
  | { kind: 'superseded'; holder: string };


/** The copies of this process waiting for one request's claim. */
interface Queue {
  requestId: string;
  /** The request's channel: the queue's name, and on Cluster what it listens to. */
  channel: string;
  /** On Cluster: its subscription to the channel came through (its unsubscribe is then the drop's to send). */
  subscribed: boolean;
  waiters: Waiter[];
  timer: NodeJS.Timeout | undefined;
  /** An attempt is in flight; `again` asks for another one after it. */
  busy: boolean;
  again: boolean;
}


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
  readonly #pubsub: PubSub;
  readonly #cluster: boolean;
  readonly #keys: RedisKeys;
  readonly #ttl: number;
  readonly #sessionTtl: number;
  readonly #pollInterval: number;
  readonly #commandTimeout: number;
  /**
   * On a single Redis, where this store hears the outcome of the claims it
   * waits for: its own channel (`<prefix>inbox:<token>`), subscribed once.
   * A copy told to wait registers the token in the request's record, and the
   * confirm or release publishes there. Undefined on Cluster (a script may
   * publish in its own slot only): there each waited-for request has its own
   * sharded channel.
   */
  readonly #inbox: { token: string; channel: string; prefix: string } | undefined;
  /** The inbox subscription, once asked for. */
  #listening: Promise<void> | undefined;
  /** The inbox subscription came through: claims register the token from now on. */
  #listened = false;
  /** Requests whose outcome came to the inbox while no queue of theirs was here (the last 1,024). */
  readonly #heard = new Set<string>();
  /** Waiting claims, by the channel of their request. */
  readonly #queues = new Map<string, Queue>();
  /** The request log's writes, batched. */
  readonly #records: RecordBatcher;
  /** Session reads, batched the same way (each on a copy's critical path: sent at the end of the turn, not later). */
  readonly #sessionReads: Batcher<string[]>;
  /**
   * Claims and confirms on a single Redis, batched the same way (on the
   * commit's path: sent at the end of the turn). Undefined on Cluster, where
   * each is its own call (a claim there takes its token first).
   */
  readonly #claims: Batcher<unknown> | undefined;
  readonly #confirms: Batcher<unknown> | undefined;
  #closed = false;
  /** Commands sent and not settled (answered or failed: not merely timed out); at most #maxOutstanding. */
  #outstanding = 0;
  readonly #maxOutstanding: number;
  /** Claims on their way to Redis and grants being handed back; close() waits for them. */
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(options: RedisSessionStoreOptions) {
    const { client, prefix, ttl, sessionTtl, pollInterval, commandTimeout, batch } = parseOptions(OPTIONS, options);
    this.#client = client as unknown as Client;
    this.#cluster = (client as { isCluster?: boolean }).isCluster === true;
    // Waiters look again after a reconnect: messages published meanwhile are lost.
    this.#pubsub = new PubSub(client, this.#cluster, (channel, message) => this.#onMessage(channel, message), () => {
      // Before the inbox first listened, its subscription's answer makes the queues look.
      if (this.#inbox && !this.#listened) return;
      for (const q of this.#queues.values()) void this.#settle(q);
    });
    this.#keys = new RedisKeys(prefix);
    this.#ttl = ttl;
    this.#sessionTtl = sessionTtl;
    this.#pollInterval = pollInterval;
    this.#commandTimeout = commandTimeout;
    this.#maxOutstanding = (batch as BatchSettings).maxPending;
    // The records' maxDelay timers run on a test's scheduler when it gave one (withScheduler() in lib/time.ts).
    const time = typeof options === 'object' && options !== null ? schedulerOf(options) : undefined;
    this.#records = new RecordBatcher((keys, args) => this.#eval(RECORD_BATCH, keys, args), batch as BatchSettings, ttl, this.#cluster, time, (call) => this.#guard('writing the request log', call));
    const now = { ...(batch as BatchSettings), maxDelay: 0 };
    this.#sessionReads = new Batcher<string[]>((keys, args) => this.#eval(GET_SESSIONS, keys, args), now, sessionTtl, this.#cluster, undefined, (call) => this.#guard('getSession', call));
    if (!this.#cluster) {
      const token = randomUUID();
      const inboxes = this.#keys.inbox('');
      this.#inbox = { token, channel: this.#keys.inbox(token), prefix: inboxes };
      const fence = this.#keys.fence();
      this.#claims = new Batcher((keys, args) => this.#eval(CLAIM_BATCH, [fence, ...keys], args), now, ttl, false, undefined, (call) => this.#guard('claim', call));
      this.#confirms = new Batcher((keys, [shared, ...each]) => this.#eval(CONFIRM_BATCH, keys, [shared!, inboxes, ...each]), now, ttl, false, undefined, (call) => this.#guard('confirm', call));
    }
  }

  async recordCopy(input: RecordCopyInput): Promise<{ duplicate: boolean }> {
    this.#assertOpen();
    // Step "receive and record" (docs/design.md): the application server received this copy.
    const copy = JSON.stringify({ duplicateId: input.duplicateId, upstreamId: input.upstreamId, index: input.index, of: input.of });
    // An update's copy waits for its record before it may claim: it goes at
    // the end of the turn. A read's may wait for others (batch.maxDelay).
    const reply = await this.#records.add(
      {
        key: this.#keys.request(input.requestId),
        args: [recordHead('c', input.update, input.sessionId), input.requestId, input.duplicateId, copy],
      },
      !input.update,
    );
    return { duplicate: reply === 1 };
  }

  async saveCandidate(sessionId: string, requestId: string, duplicateId: string, data: Record<string, unknown>): Promise<void> {
    this.#assertOpen();
    const json = sessionJson(data);
    // A request without a session has no state to carry to the next request.
    if (sessionId === '') return;
    await this.#run('saveCandidate', SAVE_CANDIDATE, this.#keys.sessionKeys(sessionId, requestId), [
      sessionId, duplicateId, json, this.#ttl, this.#sessionTtl,
    ]);
  }

  async recordAdoption(input: RecordAdoptionInput): Promise<void> {
    this.#assertOpen();
    // Step "record the adoption": which copies produced the adopted answer; the first one
    // recorded stands. The session half promotes the winner's candidate.
    const adopted = JSON.stringify({ duplicateIds: input.duplicateIds, upstreamIds: input.upstreamIds });
    // Nothing to promote when the adopted copy changed nothing: one script less
    // per read, and nobody waits for the record (it may wait for others).
    const promote = input.sessionId !== '' && input.sessionChanged !== false;
    const writes: Promise<unknown>[] = [
      this.#records.add({ key: this.#keys.request(input.requestId), args: [recordHead('a', input.update, input.sessionId), input.requestId, adopted, ''] }, !promote),
    ];
    if (promote) {
      writes.push(this.#eval(ADOPT_CANDIDATE, this.#keys.sessionKeys(input.sessionId, input.requestId), [
        input.sessionId, input.duplicateIds[0] ?? '', this.#ttl, this.#sessionTtl,
      ]));
    }
    // Sent together: one round trip on one Redis, two nodes in parallel on Cluster.
    await this.#guard('recordAdoption', Promise.all(writes).then(() => undefined));
  }

  async recordCancelled(requestId: string, duplicateId: string): Promise<void> {
    this.#assertOpen();
    // Rare (an update's losers), and the proxy's `copy:cancelled` waits for it: not held back.
    await this.#records.add({ key: this.#keys.request(requestId), args: [recordHead('x', true, ''), requestId, duplicateId, ''] });
  }

  /** The request log's records that wait for `batch.maxDelay` go at the end of this turn (a worker is about to wait for one). */
  flushRecords(): void {
    this.#records.hurry();
  }

  async getRequest(requestId: string): Promise<RequestRecord | undefined> {
    this.#assertOpen();
    const hash = await this.#guard('getRequest', this.#send(() => this.#client.hgetall(this.#keys.request(requestId))));
    return hash.requestId === undefined ? undefined : readStored(`a request record (${requestId})`, () => toRequestRecord(hash));
  }

  async getSession(sessionId: string): Promise<SessionRecord | undefined> {
    this.#assertOpen();
    const hash = pairs(await this.#sessionReads.add({ key: this.#keys.session(sessionId), args: [] }));
    if (hash.data === undefined) return undefined;
    const data = readStored(`session data (${sessionId})`, () => {
      const parsed: unknown = JSON.parse(hash.data!);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new TypeError(`session data is ${Array.isArray(parsed) ? 'an array' : String(parsed)}, not an object`);
      return parsed as Record<string, unknown>;
    });
    return { sessionId, data, version: Number(hash.version), updatedAt: Number(hash.updatedAt) };
  }

  async claim(requestId: string, duplicateId: string, options: ClaimOptions): Promise<ClaimGrant> {
    this.#assertOpen();
    const { leaseMs, signal } = options;
    if (!Number.isFinite(leaseMs) || leaseMs <= 0) throw new InvalidOptionError('leaseMs', 'must be a number of milliseconds > 0', leaseMs);
    signal?.throwIfAborted();
    const lease = Math.ceil(leaseMs);
    // Whether this claim registers the inbox (decided as the attempt is queued, this turn).
    const registered = this.#listened;
    const attempt = await this.#track(this.#attempt(requestId, duplicateId, lease));
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
        return this.#wait(requestId, duplicateId, lease, signal, attempt.remaining, registered);
    }
  }

  async confirm(requestId: string, duplicateId: string, fence: number): Promise<void> {
    this.#assertOpen();
    // A holder past its lease may still confirm as long as nobody took over:
    // the takeover, not the clock, is what makes it lose. Confirming twice is harmless.
    const key = this.#keys.request(requestId);
    const result = this.#confirms
      ? await this.#confirms.add({ key, args: [duplicateId, String(fence)] })
      : await this.#run('confirm', CONFIRM, [key], [duplicateId, String(fence), this.#ttl, ...this.#wakeArgs(requestId)]);
    if (result === 1) return;
    // Refused: [0, state, holder] of the record as it is (both nil when it is gone).
    const [, state, holder] = result as [0, string | null, string | null];
    throw notHolder(requestId, duplicateId, fence, state === 'committed' ? String(holder) : state ? null : undefined);
  }

  async release(requestId: string, duplicateId: string, fence: number): Promise<void> {
    this.#assertOpen();
    await this.#run('release', RELEASE, [this.#keys.request(requestId)], [duplicateId, String(fence), this.#ttl, ...this.#wakeArgs(requestId)]);
  }

  async beginIdempotent(key: string, fingerprint: string, requestId: string, lockMs: number, ttlMs: number): Promise<IdempotencyState> {
    this.#assertOpen();
    checkMillis('lockMs', lockMs);
    checkMillis('ttlMs', ttlMs);
    const reply = await this.#run('beginIdempotent', BEGIN_IDEMPOTENT, [this.#keys.idempotency(key)], [fingerprint, requestId, millis(lockMs), millis(ttlMs)]);
    const [state, rid, third] = reply as [string, string?, (string | number)?];
    if (state === 'mismatch') return { state };
    if (state === 'started') return { state, requestId: rid!, attempt: Number(third) };
    if (state === 'completed') return { state, requestId: rid!, answer: readStored(`an idempotency key's answer (${key})`, () => JSON.parse(String(third)) as StoredAnswer) };
    return { state: 'in-flight', requestId: rid! };
  }

  async completeIdempotent(key: string, requestId: string, answer: StoredAnswer | null, ttlMs: number, attempt: number): Promise<void> {
    this.#assertOpen();
    checkMillis('ttlMs', ttlMs);
    await this.#run('completeIdempotent', COMPLETE_IDEMPOTENT, [this.#keys.idempotency(key)], [
      requestId, String(attempt), answer === null ? '0' : '1', answer === null ? '' : JSON.stringify(answer), millis(ttlMs),
    ]);
  }

  /**
   * Rejects the claims waiting in this process with `RP_ERR_CLOSED`, stops
   * its timers and closes its own pub/sub connection; resolves once what was
   * recorded before has been written and the claims on their way have come
   * back (a grant that comes back now is handed on at once: each bounded by
   * `commandTimeout`). The client you passed stays open: it is yours, close
   * it after this.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // What was recorded before close() still goes out (each write bounded by commandTimeout).
    const flushed = Promise.all([this.#records.flush(), this.#sessionReads.flush()]);
    // Claims and confirms asked for before close() still go out at the end of
    // this turn (their batches never wait longer); their callers wait for them.
    for (const queue of [...this.#queues.values()]) this.#rejectAll(queue, () => closedError());
    await Promise.all([flushed, this.#pubsub.close()]);
    // Claims on their way: a grant that comes back now is handed on at once,
    // while the client is still open (the caller closes it after this).
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** Counts `work` (a claim's try, a grant handed back) as on its way until it settles: close() waits for it. */
  #track<T>(work: Promise<T>): Promise<T> {
    this.#inFlight.add(work);
    const done = () => void this.#inFlight.delete(work);
    work.then(done, done);
    return work;
  }

  // --- commands -----------------------------------------------------------

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }

  #run(what: string, script: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    return this.#guard(what, this.#eval(script, keys, args));
  }

  /** EVALSHA, and EVAL (which caches the script again) when Redis does not know it, e.g. after a restart. */
  #eval(script: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    return this.#send(async () => {
      try {
        return await this.#client.evalsha(script.sha, keys.length, ...keys, ...args);
      } catch (err) {
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
        return this.#client.eval(script.lua, keys.length, ...keys, ...args);
      }
    });
  }

  /**
   * Sends a command, unless `batch.maxPending` of this store's commands are
   * on their way already: a command that timed out for its caller still
   * waits in the client's queue while Redis does not answer, and they must
   * not pile up in memory. Beyond that, refused at once.
   */
  #send<T>(command: () => Promise<T>): Promise<T> {
    if (this.#outstanding >= this.#maxOutstanding) {
      return Promise.reject(new RedundantProxyError(codes.STORE_UNAVAILABLE, `the session store (Redis) has ${this.#outstanding} commands on their way; this one is refused`, { status: 503 }));
    }
    this.#outstanding++;
    const sent = command();
    const settled = () => void this.#outstanding--;
    sent.then(settled, settled);
    return sent;
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

  /** How a confirm or release wakes the waiters: the request's channel on Cluster, the registered inboxes (their channels' prefix) on a single Redis. */
  #wakeArgs(requestId: string): [channel: string, inboxes: string] {
    return this.#inbox ? ['', this.#inbox.prefix] : [this.#keys.channel(requestId), ''];
  }

  /** One try at the claim: granted, already held, wait, or superseded. */
  async #attempt(requestId: string, duplicateId: string, leaseMs: number): Promise<Attempt> {
    const requestKey = this.#keys.request(requestId);
    // On Cluster a token taken before another copy's grant can arrive after
    // it; the script refuses it ('stale') and a fresh one, higher, is taken.
    for (let tries = 1; ; tries++) {
      let reply: unknown;
      if (this.#cluster) {
        const fence = await this.#run('claim', NEXT_FENCE, [this.#keys.fence()], []);
        reply = await this.#run('claim', CLAIM, [requestKey], [requestId, duplicateId, leaseMs, this.#ttl, String(fence), '']);
      } else {
        // Told to wait, the copy is registered for the outcome, if the inbox listens already.
        const inbox = this.#listened ? this.#inbox!.token : '';
        reply = await this.#claims!.add({ key: requestKey, args: [requestId, duplicateId, String(leaseMs), inbox] });
      }
      const [kind, a, b] = reply as [string, number | string, number];
      if (kind === 'granted' || kind === 'held') return { kind, grant: { fence: Number(a), leaseUntil: Number(b) } };
      if (kind === 'wait') return { kind, remaining: Number(a) };
      if (kind === 'superseded') return { kind, holder: String(a) };
      if (tries >= 5) throw new RedundantProxyError(codes.STORE_UNAVAILABLE, `request ${requestId}: no fresh fencing token after ${tries} tries`, { status: 503 });
    }
  }

  /** Returns a claim granted to a copy that stopped waiting (bounded by commandTimeout; close() waits for it). If this fails, the lease runs out. */
  #giveBack(requestId: string, duplicateId: string, fence: number): void {
    void this.#track(this.#run('release', RELEASE, [this.#keys.request(requestId)], [duplicateId, String(fence), this.#ttl, ...this.#wakeArgs(requestId)]).catch(() => undefined));
  }

  #wait(requestId: string, duplicateId: string, leaseMs: number, signal: AbortSignal | undefined, remaining: number, registered: boolean): Promise<ClaimGrant> {
    return new Promise<ClaimGrant>((resolve, reject) => {
      const channel = this.#keys.channel(requestId);
      let queue = this.#queues.get(channel);
      const fresh = queue === undefined;
      if (!queue) {
        queue = { requestId, channel, subscribed: false, waiters: [], timer: undefined, busy: false, again: false };
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
      // The first wait of a single Redis store subscribes its inbox; every
      // queue looks again once it listens (below), registering this time.
      if (this.#inbox) this.#listen();
      else if (fresh) {
        // Look again once subscribed: a release published between the first
        // attempt and the subscription would otherwise wait for the poll.
        this.#pubsub.subscribe(channel).then(
          () => {
            if (this.#queues.get(channel) === q) {
              q.subscribed = true;
              void this.#settle(q);
            }
            // Nobody waits any more: the drop left the unsubscribe to this.
            else if (!this.#queues.has(channel) && !this.#closed) this.#pubsub.unsubscribe(channel);
          },
          () => undefined, // the poll and the lease timer still wake the waiters
        );
      }
      // Look at once when an outcome of this request came to the inbox before its
      // queue existed (the inbox and the claim's reply come on two connections),
      // or when this claim went out unregistered and the inbox listens since.
      const heard = this.#inbox !== undefined && fresh && this.#heard.delete(requestId);
      if (heard || (this.#inbox && !registered && this.#listened)) void this.#settle(q);
      else if (!q.busy) this.#schedule(q, remaining);
    });
  }

  /**
   * Subscribes the inbox, once. When it comes through, every queue looks
   * again (registering its request this time): an outcome published before
   * would otherwise wait for the poll. Failed, the next wait asks again.
   */
  #listen(): void {
    if (this.#listening || this.#closed) return;
    this.#listening = this.#pubsub.listen(this.#inbox!.channel).then(
      () => {
        this.#listened = true;
        for (const q of this.#queues.values()) void this.#settle(q);
      },
      () => {
        this.#listening = undefined; // the poll and the lease timer still wake the waiters
      },
    );
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
      attempt = await this.#track(this.#attempt(q.requestId, head.duplicateId, head.leaseMs));
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
    // Before its subscription came through, that subscription's answer unsubscribes.
    if (q.subscribed && !this.#closed) this.#pubsub.unsubscribe(q.channel);
  }

  // --- pub/sub ------------------------------------------------------------

  #onMessage(channel: string, message: string): void {
    if (this.#closed) return;
    if (this.#inbox && channel === this.#inbox.channel) {
      const outcome = inboxOutcome(message);
      if (!outcome) return;
      const q = this.#queues.get(this.#keys.channel(outcome.requestId));
      if (!q) {
        // Maybe ahead of the reply that makes its queue: kept for #wait to see.
        this.#heard.add(outcome.requestId);
        if (this.#heard.size > 1024) this.#heard.delete(this.#heard.values().next().value!);
      } else if (outcome.holder !== undefined) this.#superseded(q, outcome.holder);
      else void this.#settle(q);
      return;
    }
    const q = this.#queues.get(channel);
    if (!q) return;
    if (message.startsWith('committed|')) this.#superseded(q, message.slice('committed|'.length));
    else void this.#settle(q);
  }

  /** Published by the confirm script after the commit: final, no need to ask Redis. */
  #superseded(q: Queue, holder: string): void {
    this.#rejectAll(q, () => superseded(q.requestId, holder));
  }
}

/**
 * A message on a store's inbox: '["committed", requestId, holder]' (holder
 * set) or '["released", requestId]'; anything else is not an outcome.
 */
function inboxOutcome(message: string): { requestId: string; holder?: string } | undefined {
  let said: unknown;
  try {
    said = JSON.parse(message);
  } catch {
    return undefined;
  }
  if (!Array.isArray(said) || typeof said[1] !== 'string') return undefined;
  if (said[0] === 'committed' && typeof said[2] === 'string') return { requestId: said[1], holder: said[2] };
  if (said[0] === 'released') return { requestId: said[1] };
  return undefined;
}
