// Surviving mutants reviewed as equivalent: no test can kill them because
// the program behaves the same with them (or differs only in a way nothing
// can observe deterministically, said so in `reason`). summary.mjs leaves
// them out of the "equivalents excluded" score; the raw score counts them.
//
// A review matches a surviving mutant by file, a piece of the source line it
// sits on (`code`), the mutator and, when given, the replacement (spaces
// collapsed) and, for the Lua scripts, the script, so that it still holds
// when other lines of the file move.

/** @type {Array<{ file: string; script?: string; code: string; mutator: string; replacement?: string; reason: string }>} */
export const EQUIVALENT = [
  // --- lib/worker/commit.ts
  { file: 'lib/worker/commit.ts', code: "outcome !== 'lost' && fence !== undefined", mutator: 'ConditionalExpression', replacement: 'true', reason: 'an outcome other than lost is only set after a grant, which sets the fence first' },
  { file: 'lib/worker/commit.ts', code: 'committedBy = record?.commit?.state', mutator: 'OptionalChaining', reason: 'a request record always has `commit`' },

  // --- lib/store/memory.ts
  { file: 'lib/store/memory.ts', code: "if (commit.state === 'claimed' && this.#now() < commit.leaseUntil)", mutator: 'ConditionalExpression', replacement: 'true', reason: 'leaseUntil exists only on a claimed record: `now < undefined` is false for any other' },
  { file: 'lib/store/memory.ts', code: "if (!entry || commit?.state !== 'claimed' || commit.holder !== duplicateId || commit.fence !== fence) {", mutator: 'LogicalOperator', reason: 'the holder and fence checks that follow refuse everything the state check refuses (a committed record confirmed again by its own holder and fence returned just before)' },
  { file: 'lib/store/memory.ts', code: "if (!entry || commit?.state !== 'claimed' || commit.holder !== duplicateId || commit.fence !== fence) {", mutator: 'ConditionalExpression', replacement: 'false', reason: 'as above: the holder and fence checks refuse what the state check would' },
  { file: 'lib/store/memory.ts', code: "commit?.state !== 'claimed'", mutator: 'OptionalChaining', reason: 'a record always has `commit` (and `!entry` is checked first)' },
  { file: 'lib/store/memory.ts', code: "!entry ? undefined : commit?.state === 'committed'", mutator: 'OptionalChaining', reason: 'a record always has `commit`' },
  { file: 'lib/store/memory.ts', code: 'if (entry.until < entry.lockUntil) keys.expireAt', mutator: 'EqualityOperator', replacement: 'entry.until <= entry.lockUntil', reason: "moving a key's expiry to the value it already has" },
  { file: 'lib/store/memory.ts', code: "entry.state = 'pending'", mutator: 'StringLiteral', replacement: '""', reason: "only 'in-flight' and 'completed' are ever compared; any other state is pending" },
  { file: 'lib/store/memory.ts', code: 'if (!list || list.length === 0) return;', mutator: 'ConditionalExpression', replacement: 'false', reason: 'an emptied waiter list left in the map behaves as no list: #settle finds no head to grant (every user checks its head)' },
  { file: 'lib/store/memory.ts', code: 'if (list.length === 0) this.#waiters.delete(requestId);', mutator: 'ConditionalExpression', replacement: 'false', reason: 'an emptied waiter list left in the map behaves as no list; at most a timer fires once for nothing' },
  { file: 'lib/store/memory.ts', code: 'if (existing) clearTimeout(existing);', mutator: 'ConditionalExpression', reason: 'clearTimeout(undefined) does nothing, and clearing a timer is all the line does' },
  { file: 'lib/store/memory.ts', code: 'if (!this.#waiters.has(requestId)) return;', mutator: 'ConditionalExpression', replacement: 'false', reason: 'a lease timer set with nobody waiting fires once and finds no list: nothing is granted' },
  { file: 'lib/store/memory.ts', code: 'const commit = this.#requests.get(requestId)?.record.commit;', mutator: 'OptionalChaining', reason: '#schedule runs for requests whose record exists (a waiter was just added to it, or it was just written)' },
  { file: 'lib/store/memory.ts', code: "const delay = commit?.state === 'claimed' ? Math.max(1, commit.leaseUntil - this.#now()) : 1;", mutator: 'ConditionalExpression', replacement: 'true', reason: 'for a record that is not claimed, leaseUntil is undefined, NaN ms is taken as 1 ms by setTimeout: the same 1 ms' },
  { file: 'lib/store/memory.ts', code: "const delay = commit?.state === 'claimed' ? Math.max(1, commit.leaseUntil - this.#now()) : 1;", mutator: 'OptionalChaining', reason: 'the record exists here (see the line above), so `commit` does' },
  { file: 'lib/store/memory.ts', code: '    if (!list) return;', mutator: 'ConditionalExpression', replacement: 'false', reason: "a waiter's abort listener only fires while it is in a list (it is removed on every way out)" },
  { file: 'lib/store/memory.ts', code: 'if (at !== -1) list.splice(at, 1);', mutator: 'ConditionalExpression', replacement: 'true', reason: 'as above: the aborted waiter is always in its list, so `at` is never -1' },
  { file: 'lib/store/memory.ts', code: '    if (list.length === 0) {', mutator: 'ConditionalExpression', replacement: 'false', reason: 'an emptied waiter list left in the map behaves as no list; the lease timer then fires once for nothing' },
  { file: 'lib/store/memory.ts', code: '    if (list.length === 0) {', mutator: 'BlockStatement', reason: 'as above' },
  { file: 'lib/store/memory.ts', code: 'const earlier = until < held.until;', mutator: 'EqualityOperator', reason: 'ties between equal expiries in the expiry heap: sweep drops every key with until <= now, whatever their order' },
  { file: 'lib/store/memory.ts', code: 'if (heap[parent]!.until <= item.until) break;', mutator: 'EqualityOperator', reason: 'ties in the expiry heap (as above)' },
  { file: 'lib/store/memory.ts', code: 'heap[child + 1]!.until < heap[child]!.until', mutator: 'EqualityOperator', reason: 'ties in the expiry heap (as above)' },
  { file: 'lib/store/memory.ts', code: 'if (heap[child]!.until >= item.until) break;', mutator: 'EqualityOperator', reason: 'ties in the expiry heap (as above)' },
  // --- lib/store/redis.ts (TypeScript)
  { file: 'lib/store/redis.ts', code: "answer === null ? '0' : '1', answer === null ? '' : JSON.stringify(answer)", mutator: 'ConditionalExpression', reason: "the answer argument of COMPLETE_IDEMPOTENT: the script ignores it when the flag is '0', and '' instead of '1' is still not '0'" },
  { file: 'lib/store/redis.ts', code: "NEXT_FENCE, [this.#keys.fence()], []", mutator: 'ArrayDeclaration', reason: 'NEXT_FENCE takes no arguments' },
  { file: 'lib/store/redis.ts', code: "return this.#inbox ? ['', this.#keys.inbox('')] : [this.#keys.channel(requestId), ''];", mutator: 'StringLiteral', replacement: '"Stryker was here!"', reason: "the wake-up argument of the other kind of store: a single Redis store's release also publishing on a channel nobody subscribes to (single-Redis stores listen on their inboxes), or a Cluster store's release given an inbox prefix while no inbox is ever registered on Cluster" },
  { file: 'lib/store/redis.ts', code: "answer === null ? '0' : '1', answer === null ? '' : JSON.stringify(answer)", mutator: 'StringLiteral', reason: "the answer argument when there is none: COMPLETE_IDEMPOTENT ignores it when the flag is '0'" },
  { file: 'lib/store/redis.ts', code: '} catch {', mutator: 'BlockStatement', reason: 'a message that is not JSON: without the early return `said` stays undefined and the shape check just after returns' },
  { file: 'lib/store/redis.ts', code: 'else if (fresh) {', mutator: 'ConditionalExpression', replacement: 'true', reason: 'as for `fresh` above: on the Cluster path a second subscription of the same channel, and one look more' },
  { file: 'lib/store/redis.ts', code: 'const delay = Math.max(1, Math.min(this.#pollInterval, remaining + 1));', mutator: 'ArithmeticOperator', reason: "a look 2 ms earlier at the holder's lease end: answered `wait` with the 1 or 2 ms left, the next look comes at once after it (at least 1 ms): the same outcome, one look more" },
  { file: 'lib/store/redis.ts', code: 'const fresh = queue === undefined;', mutator: 'ConditionalExpression', replacement: 'true', reason: "on the Cluster path, a second waiter of a queue subscribing its channel again: one subscription per connection either way, and its answer makes the queue look once more, with the same outcome (on a single Redis `fresh` is not used)" },
  { file: 'lib/store/redis.ts', code: 'if (at !== -1) q.waiters.splice(at, 1);', mutator: 'ConditionalExpression', replacement: 'true', reason: "a waiter's abort listener only fires while it is in its queue (detach removes it on every way out), so `at` is never -1" },
  { file: 'lib/store/redis.ts', code: "signal.addEventListener('abort', waiter.onAbort, { once: true });", mutator: 'ObjectLiteral', reason: 'the listener is removed by detach on every way out, and an AbortSignal fires once' },
  { file: 'lib/store/redis.ts', code: "signal.addEventListener('abort', waiter.onAbort, { once: true });", mutator: 'BooleanLiteral', reason: 'as above' },
  { file: 'lib/store/redis.ts', code: 'if (!q.busy) this.#schedule(q, remaining);', mutator: 'ConditionalExpression', replacement: 'true', reason: 'a timer set while a look is in flight is cleared when the look ends (#schedule, #drop), or, if it fires first, asks for one more look right after: the same outcome, one look more' },
  { file: 'lib/store/redis.ts', code: '    if (q.busy) {', mutator: 'BlockStatement', reason: 'a second look for the same head while one is in flight gets `held` (or `wait`) from the script and changes nothing; the first look ends as before' },
  { file: 'lib/store/redis.ts', code: '    if (!head) {', mutator: 'BlockStatement', reason: 'unreachable, so no test reaches it: #settle runs for a queue in the map that is not busy, and such a queue has waiters (the last one leaving drops it); were it reached, the attempt without a head would fail inside the try and drop the queue just the same' },
  { file: 'lib/store/redis.ts', code: 'if (!this.#closed) this.#rejectAll(q, () => err);', mutator: 'ConditionalExpression', replacement: 'true', reason: 'once closed, the waiters were already rejected and the queue dropped: rejecting an empty queue again does nothing' },
  { file: 'lib/store/redis.ts', code: '    if (this.#closed) {', mutator: 'ConditionalExpression', replacement: 'false', reason: "once closed, close() has emptied the queue: a grant for its former head goes to the branch for a waiter that left, which gives it back too; `wait` and `superseded` drop a queue already dropped" },
  { file: 'lib/store/redis.ts', code: '    if (this.#closed) {', mutator: 'BlockStatement', reason: 'as above' },
  { file: 'lib/store/redis.ts', code: 'if (this.#queues.get(q.channel) !== q) return;', mutator: 'ConditionalExpression', replacement: 'false', reason: 'a queue is dropped twice only once it left the map for good (its request committed, or the store closed): no newer queue of its channel can exist then, so deleting nothing and unsubscribing again change nothing' },
  { file: 'lib/store/redis.ts', code: 'if (!this.#closed) this.#unsubscribe(q.channel);', mutator: 'ConditionalExpression', replacement: 'true', reason: 'after close the subscriber is gone (#unsubscribe returns at once without one)' },
  // --- lib/proxy/idempotency.ts
  { file: 'lib/proxy/idempotency.ts', code: "(auth ? `auth:${sha256(auth)}` : 'anonymous')", mutator: 'StringLiteral', replacement: '""', reason: 'the anonymous scope only has to differ from every session id and every `auth:` scope, and the proxy never passes an empty session id' },

  // --- lib/proxy/proxy.ts
  { file: 'lib/proxy/proxy.ts', code: 'const id = record?.copies.find((c) => c.duplicateId === holder)?.upstreamId;', mutator: 'OptionalChaining', replacement: 'record?.copies.find(c => c.duplicateId === holder).upstreamId', reason: 'the holder of a commit is always among the copies of its record: a worker records its copy before it may claim (the seal, which records none, is left out before)' },
  { file: 'lib/proxy/proxy.ts', code: 'capture: keyed && opts.idempotency ? opts.idempotency.maxAnswerSize : 0,', mutator: 'LogicalOperator', reason: 'an update without a key would keep its answer in memory for nothing: only a keyed race reads it (beforeEnd)' },
  { file: 'lib/proxy/proxy.ts', code: 'capture: keyed && opts.idempotency ? opts.idempotency.maxAnswerSize : 0,', mutator: 'ConditionalExpression', replacement: 'true', reason: 'as above; with idempotency off, `false.maxAnswerSize` is undefined, which captures nothing' },
  { file: 'lib/proxy/proxy.ts', code: '    } finally {', mutator: 'BlockStatement', reason: "the seal's bound, left running, aborts a signal nobody listens to any more once the seal is over" },
  { file: 'lib/proxy/proxy.ts', code: "if (report.adopted && !recorded && (!keyed || report.outcome === 'won')) void bookkeep(", mutator: 'BooleanLiteral', replacement: 'true', reason: 'an off-path adoption write bounded by its own timer instead of the shared one: the same bound (storeTimeout), the same error event' },
  { file: 'lib/proxy/proxy.ts', code: 'if (isSupersededError(err) && err.committedBy && err.committedBy !== seal) return answerLost', mutator: 'LogicalOperator', replacement: 'isSupersededError(err) || err.committedBy', reason: "only a SupersededError carries `committedBy` (the seal's claim refused, or its confirm): the brand check adds nothing the field does not say" },

  // --- lib/store/redis.ts, the request log (in scope since the records may be held back)
  { file: 'lib/store/redis.ts', code: "args: [recordHead('a', input.update, input.sessionId), input.requestId, adopted, ''] }", mutator: 'StringLiteral', reason: "an adoption record's fourth argument is not read by the script (kind 'a' uses the third)" },
  { file: 'lib/store/redis.ts', code: "input.sessionId, input.duplicateIds[0] ?? '', this.#ttl, this.#sessionTtl,", mutator: 'StringLiteral', reason: 'an adoption always names at least one copy: the fallback is never taken' },
  { file: 'lib/store/redis.ts', code: "args: [recordHead('x', true, ''), requestId, duplicateId, ''] }", mutator: 'StringLiteral', reason: "a cancellation's update flag and session id count only when it is the first record of its hash, which it never is (the proxy stops a copy only after another committed, and a copy commits only after its own record was written: an update fails closed without it); its fourth argument is not read; and the script takes every kind but 'c' and 'a' as a cancellation" },
  { file: 'lib/store/redis.ts', code: "args: [recordHead('x', true, ''), requestId, duplicateId, ''] }", mutator: 'BooleanLiteral', reason: 'as above: the update flag of a record that is never the first of its hash' },
  // --- lib/store/redis.ts, waking waiters (the inbox)
  { file: 'lib/store/redis.ts', code: "return this.#inbox ? ['', this.#inbox.prefix] : [this.#keys.channel(requestId), ''];", mutator: 'StringLiteral', reason: "the Cluster branch's empty inbox prefix made non-empty: Cluster registers no inbox in a record, so the script finds no waiters to publish to (the single-Redis branch's empty channel is pinned by a test counting SPUBLISH)" },
  { file: 'lib/store/redis.ts', code: 'const heard = this.#inbox !== undefined && fresh && this.#heard.delete(requestId);', mutator: 'ConditionalExpression', replacement: 'true', reason: "as `fresh` → true: differs only for a second waiter of this process on a queue that already exists, when the request's outcome came to the inbox before: it looks at once (one claim) and finds the same outcome" },
  { file: 'lib/store/redis.ts', code: 'const heard = this.#inbox !== undefined && fresh && this.#heard.delete(requestId);', mutator: 'LogicalOperator', replacement: 'this.#inbox !== undefined || fresh', reason: 'as above: on a single Redis it looks at once for a second waiter whose outcome was heard before (one claim, the same outcome); on Cluster nothing is ever heard' },
  { file: 'lib/store/redis.ts', code: 'if (!head) {', mutator: 'ConditionalExpression', replacement: 'false', reason: "a queue whose last waiter left is dropped where it left (#wait's abort listener, #rejectAll), or, when a look was on its way, by #settle after it (q.waiters.length === 0): #settle never starts on an empty one" },
  { file: 'lib/store/redis.ts', code: '    if (this.#closed) return;', mutator: 'ConditionalExpression', replacement: 'false', reason: 'close() rejected every waiter and dropped every queue first: a message after it finds no queue (#onMessage)' },

  // --- lib/store/redis/batch.ts, the Batcher
  { file: 'lib/store/redis/batch.ts', code: 'if (this.#timer !== undefined) this.#time.clearTimeout(this.#timer);', mutator: 'ConditionalExpression', replacement: 'true', reason: 'clearTimeout(undefined) does nothing' },

  // --- lib/proxy/idempotency.ts, a resumed request that was sealed
  { file: 'lib/proxy/idempotency.ts', code: 'await this.#complete(attempt, null, false);', mutator: 'BooleanLiteral', replacement: 'true', reason: '`committed` only picks the smaller answer kept when the store is full, and there is no answer to keep here (null)' },
  // --- lib/proxy/idempotency.ts, the sender in the fingerprint
  { file: 'lib/proxy/idempotency.ts', code: "let sender = '';", mutator: 'StringLiteral', reason: "the sender's value when a scope function names the key's namespace: one constant for every request, so every attempt's fingerprint is the same either way" },

  // --- Lua scripts of lib/store/redis/scripts.ts
  { file: 'lib/store/redis/scripts.ts', script: 'PRELUDE next_fence', code: 'if f < floor then', mutator: 'Lua boundary', reason: 'at equality the same value is set again' },
  { file: 'lib/store/redis/scripts.ts', script: 'BEGIN_IDEMPOTENT', code: "if redis.call('PTTL', key) < lock then", mutator: 'Lua boundary', reason: 'at equality the same TTL is set again' },
  { file: 'lib/store/redis/scripts.ts', script: 'CLAIM_ONE', code: 'fence <= tonumber(h[5])', mutator: 'Lua boundary', reason: "a token equal to the request's last granted one cannot come: the counter is INCRed, and raised to the clock in µs only upwards" },
  { file: 'lib/store/redis/scripts.ts', script: 'RELEASE', code: 'return 1', mutator: 'Lua delete', reason: "the TypeScript ignores RELEASE's reply" },
  { file: 'lib/store/redis/scripts.ts', script: 'CLAIM_ONE', code: 'if tonumber(lease) > tonumber(ttl) then touch(key, lease, fresh) else touch(key, ttl, fresh) end', mutator: 'Lua boundary', reason: 'at equality lease and ttl are the same number of ms: the same TTL either way' },
  // touch(): the branch for Redis before 7 (no PEXPIRE ... GT) never runs on the Redis 7 the tests start.
  { file: 'lib/store/redis/scripts.ts', script: 'PRELUDE touch', code: 'elseif redis.REDIS_VERSION_NUM then', mutator: 'Lua delete', reason: 'deleted, the GT PEXPIRE joins the fresh branch (a second, no-op PEXPIRE) and a key that is not fresh takes the PTTL path, which sets the same expiry' },
  { file: 'lib/store/redis/scripts.ts', script: 'PRELUDE touch', code: "elseif redis.call('PTTL', key) < tonumber(ttl) then", mutator: 'Lua delete', reason: 'the branch for Redis before 7: not run on Redis 7 (deleted, its PEXPIRE joins the Redis 7 branch: a second PEXPIRE to the same ttl after the GT one, which only lengthens or keeps)' },
  { file: 'lib/store/redis/scripts.ts', script: 'PRELUDE touch', code: "elseif redis.call('PTTL', key) < tonumber(ttl) then", mutator: 'Lua invert', reason: 'the branch for Redis before 7: not run on Redis 7' },
  { file: 'lib/store/redis/scripts.ts', script: 'PRELUDE touch', code: "elseif redis.call('PTTL', key) < tonumber(ttl) then", mutator: 'Lua boundary', reason: 'the branch for Redis before 7: not run on Redis 7' },
  { file: 'lib/store/redis/scripts.ts', script: 'PRELUDE touch', code: "redis.call('PEXPIRE', key, ttl)", mutator: 'Lua delete', replacement: "-- (deleted) redis.call('PEXPIRE', key, ttl)", reason: 'the PEXPIRE of the branch for Redis before 7 (the fresh branch\'s PEXPIRE is the line before, and is killed): not run on Redis 7' },
  { file: 'lib/store/redis/scripts.ts', script: 'COMPLETE_IDEMPOTENT', code: 'return 1', mutator: 'Lua delete', reason: "the TypeScript ignores COMPLETE_IDEMPOTENT's reply" },

  // --- Lua scripts of lib/store/redis/batch.ts (the request log's records, session reads)
  { file: 'lib/store/redis/batch.ts', script: 'LUA', code: 'local stamped = v > 1099511627776', mutator: 'Lua boundary', reason: 'v is never 2^40 exactly: a plain count stays far below it, a stamped one (a second since 1970 times 2^20) far above' },
  { file: 'lib/store/redis/batch.ts', script: 'LUA', code: "elseif redis.call('PTTL', key) < long then", mutator: 'Lua boundary', reason: 'at equality the same TTL is set again' },
  { file: 'lib/store/redis/batch.ts', script: 'LUA', code: 'if math.floor(v / 1048576) * 1000 - now < ttl then', mutator: 'Lua boundary', reason: 'at exactly ttl ms before the noted second, not touching leaves the key exactly ttl: both keep it at least ttl (a clock boundary no test can hit at will)' },
  { file: 'lib/store/redis/batch.ts', script: 'EACH', code: "if ok then out[#out + 1] = r else out[#out + 1] = { err = (type(r) == 'table' and r.err) or tostring(r) } end", mutator: 'Lua invert', reason: "Redis 7.0 raises a redis.call error inside pcall as a string (checked: type(r) is 'string'), so tostring(r) gives the message either way; the table form is for Redis versions that raise an error table" },
  { file: 'lib/store/redis/batch.ts', script: 'EACH', code: "if ok then out[#out + 1] = r else out[#out + 1] = { err = (type(r) == 'table' and r.err) or tostring(r) } end", mutator: 'Lua logic', reason: "as the line's invert: on Redis 7.0 r is a string, r.err is nil (the string library has no err), and tostring(r) is the message" },
  { file: 'lib/store/redis/batch.ts', script: 'LUA', code: "elseif redis.call('PTTL', key) < ttl then", mutator: 'Lua boundary', reason: 'Redis before 7: at a TTL of exactly ttl ms, setting it to ttl + slack or leaving it both keep the key at least ttl (a clock boundary no test can hit at will)' },
];
