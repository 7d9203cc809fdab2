import { createHash } from 'node:crypto';
import { RedundantProxyError, codes } from '../../errors.js';
import { REAL_TIME, type Scheduler, type TimerHandle, unref } from '../../time.js';

// The request log's writes on Redis, in batches. Every copy a worker receives
// and every adoption the proxy makes is one record in the request's hash;
// none of them is awaited on a read's critical path, and at a few thousand
// requests a second one script call each is what Redis spends most of its
// time on (the call, its reply and the system calls around them, more than
// the writes). So records made in the same turn of the event loop go to
// Redis together: one script call for the lot on a single Redis. Records
// nobody waits for (a read's copy, an adoption that promotes nothing) may
// also wait up to `maxDelay` ms for others; a record someone waits for (an
// update's copy, before its claim; an adoption that promotes a session,
// before the answer; a copy stopped, before the proxy's event) goes at the
// end of the turn, and takes every waiting record with it. On Cluster the
// keys of different requests live in different slots, which one script may
// not touch, so each record is its own call there (the same lean script,
// one record long), and nothing waits.
//
// A record's promise settles when its batch did: callers that wait (an
// update waits for its copy's record before it may claim) see it written; a
// reader in another process sees it at most one batch later (`maxDelay`,
// 0 = the end of the current turn). A failed batch fails each of its
// records with RP_ERR_STORE_UNAVAILABLE; the callers report it as they did
// one failed call. At most `maxPending` records are queued or on their way;
// beyond that a record fails at once instead of piling up while Redis is slow.

/** One record: its request key and its four arguments (see RECORD_BATCH). */
export interface BatchedRecord {
  key: string;
  args: [head: string, requestId: string, a: string, b: string];
}

/**
 * A record's first argument: its kind, the request's update flag and its
 * session id in one string (fewer arguments per record: Redis parses, and
 * the script makes, one string less each).
 */
export function recordHead(kind: 'c' | 'a' | 'x', update: boolean, sessionId: string): string {
  return `${kind}${update ? '1' : '0'}${sessionId}`;
}

/** One item of a batch: its key, and its own arguments after the batch's shared one. */
export interface BatchItem {
  key: string;
  args: readonly string[];
}

export interface BatchSettings {
  /** Records per script call at most; a full batch goes at once. */
  maxRecords: number;
  /**
   * Milliseconds a record nobody waits for may wait for others; 0 = until
   * the end of the current turn of the event loop. Records added without
   * `later` always go at the end of the turn.
   */
  maxDelay: number;
  /** Records queued or sent and not answered yet (by Redis: a timeout does not count), at most; beyond that a record fails at once. */
  maxPending: number;
}

/** Sends one script call: the keys and `[shared, ...each item's args]`. Resolves with one reply per item. */
export type SendBatch = (keys: string[], args: string[]) => Promise<unknown>;

/**
 * What the callers wait for of a call on its way: the call itself, bounded
 * (a timeout, an error of the store's own). The items of a call count as on
 * their way until the call itself settles, which may be later.
 */
export type GuardBatch = (call: Promise<unknown>) => Promise<unknown>;

interface Pending<R> {
  record: BatchItem;
  resolve: (reply: R) => void;
  reject: (err: unknown) => void;
}

/**
 * Items made in one turn of the event loop (or within `maxDelay`), sent as
 * one script call; each item's promise settles with its own reply. The
 * request log's records use it, and so do session reads (GET_SESSIONS).
 */
export class Batcher<R = unknown> {
  readonly #send: SendBatch;
  readonly #settings: BatchSettings;
  readonly #perRecord: boolean;
  readonly #ttl: string;
  readonly #time: Scheduler;
  readonly #guard: GuardBatch;
  #queue: Pending<R>[] = [];
  #timer: TimerHandle | undefined;
  /** A flush at the end of this turn is due. */
  #scheduled = false;
  readonly #inFlight = new Set<Promise<void>>();
  /** Records sent whose call has not settled yet (answered or failed: not merely timed out). */
  #sending = 0;

  /**
   * `shared`: the first argument of every call (a TTL). `perRecord`: one call
   * per item (Cluster: the keys of one call must share a slot). `guard`:
   * what callers wait for of a call (a timeout); its items stay counted
   * against `maxPending` until the call itself settles, so a Redis that does
   * not answer holds at most `maxPending` of them in the client's queue.
   */
  constructor(send: SendBatch, settings: BatchSettings, shared: number, perRecord: boolean, time: Scheduler = REAL_TIME, guard: GuardBatch = (call) => call) {
    this.#send = send;
    this.#settings = settings;
    this.#perRecord = perRecord;
    this.#ttl = String(shared);
    this.#time = time;
    this.#guard = guard;
  }

  /**
   * Queues an item; resolves with its reply (a copy's record: 1 when it was
   * recorded before) once its batch is done. `later`: nobody waits for it,
   * so it may wait up to `maxDelay` for others (or go sooner, with an item
   * that may not wait); otherwise it goes at the end of this turn.
   */
  add(record: BatchItem, later = false): Promise<R> {
    const waiting = this.#queue.length + this.#sending;
    if (waiting >= this.#settings.maxPending) {
      return Promise.reject(
        new RedundantProxyError(codes.STORE_UNAVAILABLE, `the session store (Redis) has ${waiting} calls waiting to be sent or answered; this one is refused`, { status: 503 }),
      );
    }
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ record, resolve, reject });
      if (this.#queue.length >= this.#settings.maxRecords) this.flush();
      // One call per item (Cluster) gains nothing by waiting for more.
      else this.#schedule(later && this.#settings.maxDelay > 0 && !this.#perRecord);
    });
  }

  /**
   * Someone now waits for a record that was let wait for `maxDelay`: what
   * waits goes at the end of this turn instead, with the turn's others.
   * Nothing to do when nothing waits on a timer.
   */
  hurry(): void {
    if (this.#timer !== undefined) this.#schedule(false);
  }

  /** Sends every queued record now. Resolves once every batch sent so far has settled. */
  flush(): Promise<void> {
    if (this.#timer !== undefined) this.#time.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#scheduled = false;
    while (this.#queue.length > 0) {
      const batch = this.#queue.splice(0, this.#perRecord ? 1 : this.#settings.maxRecords);
      const sent = this.#write(batch);
      this.#inFlight.add(sent);
      void sent.finally(() => this.#inFlight.delete(sent));
    }
    return Promise.all([...this.#inFlight]).then(() => undefined);
  }

  #schedule(later: boolean): void {
    if (this.#scheduled) return;
    if (later) {
      if (this.#timer !== undefined) return;
      this.#timer = this.#time.setTimeout(() => void this.flush(), this.#settings.maxDelay);
      unref(this.#timer);
      return;
    }
    this.#scheduled = true;
    this.#time.setImmediate(() => {
      if (this.#scheduled) void this.flush();
    });
  }

  async #write(batch: Pending<R>[]): Promise<void> {
    const keys: string[] = [];
    const args: string[] = [this.#ttl];
    for (const p of batch) {
      keys.push(p.record.key);
      args.push(...p.record.args);
    }
    let replies: unknown;
    this.#sending += batch.length;
    let call: Promise<unknown>;
    try {
      call = this.#send(keys, args);
    } catch (err) {
      call = Promise.reject(err);
    }
    const settled = () => void (this.#sending -= batch.length);
    call.then(settled, settled);
    try {
      replies = await this.#guard(call);
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    const list = replies as unknown[];
    for (const [i, p] of batch.entries()) {
      const reply = list[i];
      // This item alone failed in Redis (see EACH): the others stand.
      if (reply instanceof Error) p.reject(new RedundantProxyError(codes.STORE_UNAVAILABLE, `the session store (Redis) refused this item of a batch: ${reply.message}`, { status: 503, cause: reply }));
      else p.resolve(reply as R);
    }
  }
}

/**
 * Lua: `each(fn)` runs `fn(i)` for every key of a batch, each alone: an item
 * that fails (a key of another type under the prefix, say) is answered with
 * its own error reply, and the others are done and answered as usual (a
 * script is not rolled back: one failure must not fail, or half-do, the
 * rest). `fn`'s reply must be a number or a table.
 */
export const EACH = `
local function each(fn, from)
  local out = {}
  for i = from or 1, #KEYS do
    local ok, r = pcall(fn, i)
    if ok then out[#out + 1] = r else out[#out + 1] = { err = (type(r) == 'table' and r.err) or tostring(r) } end
  end
  return out
end
`;

// KEYS: one request key per record (several may be the same).
// ARGV: ttl, then four per record: head (kind, update '0' | '1' and the
// session id, in one string: see recordHead), requestId, a, b:
//   'c' a copy received: a = duplicateId, b = the copy's JSON. Reply 1 when that copy was recorded before.
//   'a' an adoption: a = the adoption's JSON (the first one recorded stands).
//   'x' a copy stopped: a = duplicateId.
// The request hash: requestId, sessionId, update set by the first record
// (a claim may have made the hash before, with requestId only: then the
// first record completes it); `c:<duplicateId>` = '<n>|<receivedAt>|<JSON>',
// `adopted` = '<at>|<JSON>', `x:<duplicateId>` = <n>, where <n> is the
// record's number, which orders it among all of them.
//
// What Redis spends here is mostly the calls a script makes, more than what
// they do, so each record makes as few as it can. Field `n` holds two
// numbers: the record count (the low 20 bits) and, above them, a second by
// the Redis clock before which the key cannot expire (a lower bound: the
// first record set the TTL that far; claims and confirms only lengthen it,
// nothing shortens it). A key lives at least ttl after each write: the
// first record gives it ttl + slack (slack = ttl / 8, between 2 s and 10 s;
// a lease may have set a longer TTL: kept); a later record that still finds
// ttl ahead of that second writes nothing more (one HINCRBY and one HSETNX
// each), one later than that gives the key ttl + slack again. So a request's
// record lives from ttl to ttl + slack after its last write. A key written by
// an earlier version (a plain count in `n`) has no second: every record
// touches it, as before. A plain count is below 2^40, a stamped one above
// (seconds since 1970 times 2^20). A request that gathers 2^19 records (a
// client replaying one request id without end) goes back to a plain count
// before it could carry into the second: from then on every record touches
// the key, and the numbering goes on. The second is taken 100 ms short of
// the TTL set (Redis counts a script's PEXPIRE from the script's start, and
// its clock may differ by a few ms from the TIME read here).
const LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Formatting a number as a float (Lua's tostring, a number passed to
-- redis.call) was a tenth of what a record cost Redis: the time is built from
-- TIME's own strings, the TTL formatted once a call, counts with %d.
local at = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local ttl = tonumber(ARGV[1])
local long = ttl + math.min(10000, math.max(2000, math.floor(ttl / 8)))
local longs = string.format('%.0f', long)
local stamp = math.floor((now + long - 100) / 1000) * 1048576
local gt = redis.REDIS_VERSION_NUM ~= nil
local function record(i)
  local key = KEYS[i]
  local o = 2 + (i - 1) * 4
  local head, a, b = ARGV[o], ARGV[o + 2], ARGV[o + 3]
  -- 99 'c', 97 'a', 120 'x'
  local kind = string.byte(head, 1)
  local field, value
  local v = redis.call('HINCRBY', key, 'n', '1')
  -- A stamped n is past 2^40 (a second since 1970 times 2^20); below, a plain count.
  local stamped = v > 1099511627776
  local n = v
  if stamped then n = v % 1048576 end
  if kind == 99 then
    field, value = 'c:' .. a, string.format('%d', n) .. '|' .. at .. '|' .. b
  elseif kind == 97 then
    field, value = 'adopted', at .. '|' .. a
  else
    field, value = 'x:' .. a, string.format('%d', n)
  end
  local reply = 0
  if v == 1 then
    -- The first record: the request's fields, its own, and the key's TTL.
    redis.call('HSET', key, 'n', string.format('%.0f', stamp + 1), 'requestId', ARGV[o + 1], 'sessionId', string.sub(head, 3), 'update', string.sub(head, 2, 2), field, value)
    if gt then
      if redis.call('PEXPIRE', key, longs, 'NX') == 0 then redis.call('PEXPIRE', key, longs, 'GT') end
    elseif redis.call('PTTL', key) < long then
      redis.call('PEXPIRE', key, longs)
    end
  else
    if redis.call('HSETNX', key, field, value) == 0 and kind == 99 then reply = 1 end
    if math.floor(v / 1048576) * 1000 - now < ttl then
      if gt then
        redis.call('PEXPIRE', key, longs, 'GT')
      elseif redis.call('PTTL', key) < ttl then
        redis.call('PEXPIRE', key, longs)
      end
    end
    -- Half way to a carry into the second: n becomes a plain count (every
    -- later record touches the key; the numbering goes on).
    if stamped and n >= 524288 then redis.call('HSET', key, 'n', n) end
  end
  return reply
end
` + EACH + `
return each(record)
`;

export const RECORD_BATCH = { lua: LUA, sha: createHash('sha1').update(LUA).digest('hex') };

/** The request log's batches: replies are numbers (a copy: 1 when recorded before). */
export const RecordBatcher = Batcher<number>;
export type RecordBatcher = Batcher<number>;

// KEYS: one session key per read. ARGV: sessionTtl. Each reply is the
// session's hash (empty when it is unknown); reading a session keeps it alive.
const SESSIONS_LUA = `
local function read(i)
  local h = redis.call('HGETALL', KEYS[i])
  if #h > 0 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
  return h
end
` + EACH + `
return each(read)
`;

export const GET_SESSIONS = { lua: SESSIONS_LUA, sha: createHash('sha1').update(SESSIONS_LUA).digest('hex') };
