//! The Lua scripts of the staging and the claims, each on one hash slot: the flush's
//! consolidation of a schedule's pending entries, and the claim, settle, renew and replay-mark
//! scripts.

/// KEYS[1] = a schedule's staging hash, KEYS[2] = its pending events (one hash slot: see
/// `store::keys`); ARGV[1] = retention (s).
/// Folds the pending records (appended by ingest to KEYS[2], see `window::pending_record`; and,
/// from versions before December 2026, `e:{rev}` fields of the hash) into the staged state: the
/// highest revision becomes `rev`/`event`/`kind` (a lower one is dropped), a `c` among them sets
/// `born`, `staged_at` is the latest of those newer than the staged one (or replayed); a replay
/// among them marks the resulting revision (`replay`), and a newer revision without one clears
/// the mark. It counts the records that were not news: a revision already consolidated or seen
/// twice (duplicate), or below the consolidated one (stale). The pending records go, and the
/// hash is retained `RETENTION` from now.
/// Returns false when nothing is staged, else {rev, event, born or false, staged_at, duplicates,
/// stale}.
pub(super) const CONSOLIDATE_LUA: &str = r#"
local h = redis.call('HGETALL', KEYS[1])
local p = redis.call('GET', KEYS[2])
if #h == 0 and not p then return false end
local rev, event, kind, born, staged_at, replay = 0, false, false, false, 0, false
-- Each record: {rev, kind, replay, staged_at, source string, first byte, last byte}.
local recs, legacy = {}, {}
for i = 1, #h, 2 do
  local f = h[i]
  if f == 'rev' then rev = tonumber(h[i + 1])
  elseif f == 'event' then event = h[i + 1]
  elseif f == 'kind' then kind = h[i + 1]
  elseif f == 'born' then born = h[i + 1]
  elseif f == 'staged_at' then staged_at = tonumber(h[i + 1])
  elseif f == 'replay' then replay = h[i + 1]
  elseif string.sub(f, 1, 2) == 'e:' then
    local v = h[i + 1]
    local c = string.find(v, ':', 3, true)
    recs[#recs + 1] = {tonumber(string.sub(f, 3)), string.sub(v, 1, 1), string.sub(v, 2, 2) == '1',
      tonumber(string.sub(v, 3, c - 1)), v, c + 1, #v}
    legacy[#legacy + 1] = f
  end
end
if p then
  local pos = 1
  while pos <= #p do
    local r, k, rp, at, len, body = string.match(p, '^(%d+) (%a)([01]) (%d+) (%d+)\n()', pos)
    if not r then
      return redis.error_reply('ERR staging: the pending record of ' .. KEYS[2] .. ' at byte ' .. pos .. ' cannot be read')
    end
    len = tonumber(len)
    recs[#recs + 1] = {tonumber(r), k, rp == '1', tonumber(at), p, body, body + len - 1}
    pos = body + len
  end
end
local dup, stale = 0, 0
if #recs > 0 then
  local old, replayed, seen, best = rev, false, {}, false
  for _, x in ipairs(recs) do
    local r, k, rp, at = x[1], x[2], x[3], x[4]
    if k == 'c' then born = '1' end
    if rp then replayed = true
    elseif r < old then stale = stale + 1
    elseif r == old or seen[r] then dup = dup + 1
    end
    seen[r] = true
    if (r > old or rp) and at > staged_at then staged_at = at end
    if r > rev then rev = r; best = x; kind = k end
  end
  if best then event = string.sub(best[5], best[6], best[7]) end
  local had = replay
  if replayed then replay = tostring(rev) elseif rev > old then replay = false end
  if event then
    local set = {'rev', rev, 'event', event, 'kind', kind, 'staged_at', staged_at}
    if born then set[#set + 1] = 'born'; set[#set + 1] = born end
    if replay then set[#set + 1] = 'replay'; set[#set + 1] = replay end
    redis.call('HSET', KEYS[1], unpack(set))
  end
  if had and not replay then legacy[#legacy + 1] = 'replay' end
  for j = 1, #legacy, 1000 do
    redis.call('HDEL', KEYS[1], unpack(legacy, j, math.min(j + 999, #legacy)))
  end
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
if not event then return false end
return {rev, event, born, staged_at, dup, stale}
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
