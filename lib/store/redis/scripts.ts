import { createHash } from 'node:crypto';
import { EACH } from './batch.js';

// The Redis store's Lua scripts: every write is one atomic script on the keys
// of one slot (see keys.ts).
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
//
// Waking waiters. On a single Redis a claim told to wait adds its store's
// inbox token to the record's 'waiters'; a confirm publishes the outcome to
// each inbox there and clears them, a release publishes and keeps them (the
// next holder's process may still have copies waiting that did not ask
// again). On Cluster the scripts publish on the request's own sharded
// channel instead (a script may publish in its own slot only). The claims and
// confirms of one turn go in one call on a single Redis (CLAIM_BATCH,
// CONFIRM_BATCH), each decided as CLAIM or CONFIRM would, in order.


/** A script and its SHA-1 (sent by EVALSHA). */
export interface Script {
  lua: string;
  sha: string;
}


const PRELUDE = `
-- The Redis clock: milliseconds, and microseconds (for fencing tokens), read
-- once a call (a script runs as one instant; a batch's claims take their
-- tokens from the counter, above this floor).
local clock_ms, clock_us
local function clock()
  if not clock_ms then
    local t = redis.call('TIME')
    local s, us = tonumber(t[1]), tonumber(t[2])
    clock_ms, clock_us = s * 1000 + math.floor(us / 1000), s * 1000000 + us
  end
  return clock_ms, clock_us
end
local function now_ms()
  local ms = clock()
  return ms
end
local function num(n) return string.format('%.0f', n) end
-- Sharded pub/sub where the server has it (Redis 7+), classic otherwise.
local function notify(channel, message)
  local r = redis.pcall('SPUBLISH', channel, message)
  if type(r) == 'table' and r.err then redis.call('PUBLISH', channel, message) end
end
-- The next token: above the last one, and never below the clock (µs).
local function next_fence(key, floor)
  local f = redis.call('INCR', key)
  if f < floor then
    redis.call('SET', key, num(floor))
    f = floor
  end
  return f
end
-- A request key lives at least ttl after each write, and never less than a
-- lease granted on it asked for. A key this script just created has no TTL
-- yet; on Redis 7+ one PEXPIRE ... GT keeps a longer one, before that PTTL says.
local function touch(key, ttl, fresh)
  if fresh then
    redis.call('PEXPIRE', key, ttl)
  elseif redis.REDIS_VERSION_NUM then
    redis.call('PEXPIRE', key, ttl, 'GT')
  elseif redis.call('PTTL', key) < tonumber(ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end
-- The store processes waiting for a request's outcome on a single Redis:
-- each registered its inbox (a token) in the record's 'waiters' field, and
-- hears the confirm or release there. ARGV of the inbox channels' prefix.
local function wake(waiters, prefix, message)
  if not waiters or prefix == '' then return end
  for token in string.gmatch(waiters, '%S+') do redis.call('PUBLISH', prefix .. token, message) end
end
local function promote(key, sid, data, ttl)
  redis.call('HSET', key, 'sessionId', sid, 'data', data, 'updatedAt', num(now_ms()))
  redis.call('HINCRBY', key, 'version', '1')
  redis.call('PEXPIRE', key, ttl)
end
`;

function script(body: string): Script {
  const lua = PRELUDE + body;
  return { lua, sha: createHash('sha1').update(lua).digest('hex') };
}



// KEYS: session, adoption marker, candidates. ARGV: sessionId, adopted copy, ttl, sessionTtl.
export const ADOPT_CANDIDATE = script(`
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
export const SAVE_CANDIDATE = script(`
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

// KEYS: fence counter. The Cluster path: a token first, then CLAIM with it.
export const NEXT_FENCE = script(`
local _, us = clock()
return next_fence(KEYS[1], us)
`);

// One claim, in CLAIM and CLAIM_BATCH: the request's key, the fence counter
// (nil when the token is given), requestId, duplicateId, leaseMs, ttl, the
// token ('' = take one here), the asker's inbox token ('' = none: it does not
// wait on an inbox). A copy told to wait registers its inbox in 'waiters'.
const CLAIM_ONE = `
local function claim(key, fence_key, rid, dup, lease, ttl, given, inbox)
  local h = redis.call('HMGET', key, 'state', 'holder', 'fence', 'leaseUntil', 'lastFence', 'requestId', 'waiters')
  local fresh = not h[6]
  if fresh then redis.call('HSET', key, 'requestId', rid, 'sessionId', '', 'update', '1', 'state', 'none') end
  if h[1] == 'committed' then return {'superseded', h[2]} end
  local now, us = clock()
  if h[1] == 'claimed' then
    local leaseUntil = tonumber(h[4])
    if now < leaseUntil then
      if h[2] == dup then return {'held', tonumber(h[3]), leaseUntil} end
      if inbox ~= '' then
        local waiters = h[7] or ''
        if not string.find(waiters .. ' ', ' ' .. inbox .. ' ', 1, true) then
          redis.call('HSET', key, 'waiters', waiters .. ' ' .. inbox)
        end
      end
      return {'wait', leaseUntil - now}
    end
  end
  local fence
  if given == '' then
    fence = next_fence(fence_key, us)
  else
    fence = tonumber(given)
    if h[5] and fence <= tonumber(h[5]) then return {'stale'} end
  end
  local leaseUntil = now + tonumber(lease)
  local f = num(fence)
  redis.call('HSET', key, 'state', 'claimed', 'holder', dup, 'fence', f, 'leaseUntil', num(leaseUntil), 'lastFence', f)
  -- The commit state must outlive the lease (the longer of the two strings
  -- as given: a number passed to redis.call is formatted as a float).
  if tonumber(lease) > tonumber(ttl) then touch(key, lease, fresh) else touch(key, ttl, fresh) end
  return {'granted', fence, leaseUntil}
end
`;

// KEYS: request[, fence counter]. ARGV: requestId, duplicateId, leaseMs, ttl,
// fence ('' = take one here), inbox token. The Cluster path (a token given).
export const CLAIM = script(CLAIM_ONE + `
return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
`);

// The claims one store makes in a turn of the event loop, on a single Redis,
// each as CLAIM would take it (in order, a token taken here for each grant).
// KEYS: fence counter, then one request key per claim. ARGV: ttl, then four
// per claim: requestId, duplicateId, leaseMs, inbox token. One reply each.
export const CLAIM_BATCH = script(CLAIM_ONE + EACH + `
return each(function(i)
  local o = 2 + (i - 2) * 4
  return claim(KEYS[i], KEYS[1], ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[1], '', ARGV[o + 3])
end, 2)
`);

// One confirm, in CONFIRM and CONFIRM_BATCH: the request's key, duplicateId,
// fence, ttl, its channel ('' = none), the inbox channels' prefix ('' =
// none). 1 = committed (now or before); {0, state, holder} = not the holder.
// The waiters hear '["committed", requestId, holder]'.
const CONFIRM_ONE = `
local function confirm(key, dup, fence, ttl, channel, prefix)
  local h = redis.call('HMGET', key, 'state', 'holder', 'fence', 'requestId', 'waiters')
  if h[2] ~= dup or tonumber(h[3]) ~= tonumber(fence) then return {0, h[1], h[2]} end
  if h[1] == 'committed' then return 1 end
  if h[1] ~= 'claimed' then return {0, h[1], h[2]} end
  redis.call('HSET', key, 'state', 'committed', 'committedAt', num(now_ms()))
  redis.call('HDEL', key, 'leaseUntil', 'waiters')
  touch(key, ttl, false)
  if channel ~= '' then notify(channel, 'committed|' .. dup) end
  wake(h[5], prefix, cjson.encode({'committed', h[4], dup}))
  return 1
end
`;

// KEYS: request. ARGV: duplicateId, fence, ttl, channel, inbox prefix.
export const CONFIRM = script(CONFIRM_ONE + `
return confirm(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
`);

// The confirms one store makes in a turn of the event loop, on a single
// Redis. KEYS: one request key per confirm. ARGV: ttl, the inbox prefix, then
// two per confirm: duplicateId, fence. One reply each.
export const CONFIRM_BATCH = script(CONFIRM_ONE + EACH + `
return each(function(i)
  local o = 3 + (i - 1) * 2
  return confirm(KEYS[i], ARGV[o], ARGV[o + 1], ARGV[1], '', ARGV[2])
end)
`);

// KEYS: request. ARGV: duplicateId, fence, ttl, channel ('' = none), inbox
// prefix ('' = none). Compare-and-delete: only the holder releases. The
// waiters hear '["released", requestId]' and look again; they stay registered
// until the commit.
export const RELEASE = script(`
local key = KEYS[1]
local h = redis.call('HMGET', key, 'state', 'holder', 'fence', 'requestId', 'waiters')
if h[1] ~= 'claimed' or h[2] ~= ARGV[1] or tonumber(h[3]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', key, 'state', 'none')
-- The waiters stay registered: the one that gets the claim next may leave
-- others of its process waiting, who have not asked again.
redis.call('HDEL', key, 'holder', 'fence', 'leaseUntil')
touch(key, ARGV[3], false)
if ARGV[4] ~= '' then notify(ARGV[4], 'released') end
wake(h[5], ARGV[5], cjson.encode({'released', h[4]}))
return 1
`);

// Idempotency keys. Fields: state ('in-flight' | 'pending' | 'completed'),
// fp, rid (the first attempt's request id), attempt, lockUntil (while
// in-flight, by the Redis clock), answer (JSON, once completed). The key
// expires ttlMs after it was created or completed, never sooner than its
// lock ends: a key is not forgotten because an attempt died.

// KEYS: idempotency key. ARGV: fingerprint, requestId, lockMs, ttlMs.
// Replies {'started', rid, attempt} | {'in-flight', rid} | {'mismatch'} | {'completed', rid, answer}.
export const BEGIN_IDEMPOTENT = script(`
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
export const COMPLETE_IDEMPOTENT = script(`
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

