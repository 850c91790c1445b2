//! The Lua scripts of the staging and the claims, each on one hash slot: the flush's
//! consolidation of a schedule's pending entries, and the claim, settle, renew and replay-mark
//! scripts.

/// KEYS[1] = a schedule's staging hash; ARGV[1] = retention (s).
/// Folds the pending entries (`e:{rev}`) into the staged state: the highest revision becomes
/// `rev`/`event`/`kind` (a lower one is dropped), a `c` among them sets `born`, `staged_at` is
/// the latest of those newer than the staged one (or replayed); a replay among them marks the
/// resulting revision (`replay`), and a newer revision without one clears the mark. The pending
/// entries go, and the key is retained `RETENTION` from now. One key, so one hash slot.
/// Returns false when nothing is staged, else {rev, event, born or false, staged_at}.
pub(super) const CONSOLIDATE_LUA: &str = r#"
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local rev, event, kind, born, staged_at, replay = 0, false, false, false, 0, false
local pending = {}
for i = 1, #h, 2 do
  local f = h[i]
  if f == 'rev' then rev = tonumber(h[i + 1])
  elseif f == 'event' then event = h[i + 1]
  elseif f == 'kind' then kind = h[i + 1]
  elseif f == 'born' then born = h[i + 1]
  elseif f == 'staged_at' then staged_at = tonumber(h[i + 1])
  elseif f == 'replay' then replay = h[i + 1]
  elseif string.sub(f, 1, 2) == 'e:' then pending[#pending + 1] = i
  end
end
if #pending > 0 then
  local old, replayed, names = rev, false, {}
  for _, i in ipairs(pending) do
    local f, v = h[i], h[i + 1]
    names[#names + 1] = f
    local r = tonumber(string.sub(f, 3))
    local k = string.sub(v, 1, 1)
    local rp = string.sub(v, 2, 2) == '1'
    local c = string.find(v, ':', 3, true)
    local at = tonumber(string.sub(v, 3, c - 1))
    if k == 'c' then born = '1' end
    if rp then replayed = true end
    if (r > old or rp) and at > staged_at then staged_at = at end
    if r > rev then rev = r; event = string.sub(v, c + 1); kind = k end
  end
  local had = replay
  if replayed then replay = tostring(rev) elseif rev > old then replay = false end
  if event then
    local set = {'rev', rev, 'event', event, 'kind', kind, 'staged_at', staged_at}
    if born then set[#set + 1] = 'born'; set[#set + 1] = born end
    if replay then set[#set + 1] = 'replay'; set[#set + 1] = replay end
    redis.call('HSET', KEYS[1], unpack(set))
  end
  if had and not replay then names[#names + 1] = 'replay' end
  for j = 1, #names, 1000 do
    redis.call('HDEL', KEYS[1], unpack(names, j, math.min(j + 999, #names)))
  end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
if not event then return false end
return {rev, event, born, staged_at}
"#;

/// KEYS: due, inflight, owner. ARGV: now, lease, limit, token.
/// Takes expired claims first (their worker died), then due members not held by a live claim.
pub(super) const CLAIM_LUA: &str = r#"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local out = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, m in ipairs(expired) do table.insert(out, m) end
if #out < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit * 2)
  for _, m in ipairs(due) do
    if #out >= limit then break end
    local held = redis.call('ZSCORE', KEYS[2], m)
    if not held then
      redis.call('ZREM', KEYS[1], m)
      table.insert(out, m)
    end
  end
end
local exp = now + tonumber(ARGV[2])
for _, m in ipairs(out) do
  redis.call('ZADD', KEYS[2], exp, m)
  redis.call('HSET', KEYS[3], m, ARGV[4])
end
return out
"#;

/// KEYS: inflight, owner, due. ARGV: token, mode (done|retry_at), retry score (ms), members...
/// Only members this token still owns are touched.
pub(super) const SETTLE_LUA: &str = r#"
local n = 0
for i = 4, #ARGV do
  local m = ARGV[i]
  if redis.call('HGET', KEYS[2], m) == ARGV[1] then
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[2], m)
    if ARGV[2] == 'retry_at' then
      redis.call('ZADD', KEYS[3], 'LT', ARGV[3], m)
    end
    n = n + 1
  end
end
return n
"#;

/// KEYS: inflight, owner. ARGV: token, new expiry (ms), members... Extends this token's claims.
pub(super) const RENEW_LUA: &str = r#"
local n = 0
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// KEYS[1] = a schedule's staging hash; ARGV[1] = the replayed revision just applied.
pub(super) const CLEAR_REPLAY_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'replay') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'replay')
end
return 0
"#;
