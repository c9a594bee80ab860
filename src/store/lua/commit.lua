#!lua
-- Commits one round of one task's events, atomically, exactly once.
--
-- The caller planned the round from instance records it read earlier. This script first
-- checks every one of those records is still what was read; if any changed (another
-- replica consumed it, or this very script already ran once and redis-rs resent it after
-- a lost reply), it applies NOTHING and returns the 1-based positions of the changed
-- records so the caller can re-read and re-plan. Otherwise it writes the new records and
-- adds the increments, and returns an empty array.
--
-- KEYS: n_inst instance keys, then n_hash hash keys, then the series index (if n_series > 0)
-- ARGV: n_inst, n_hash, n_series,
--       per instance: expected ('' = absent), new value, ttl ms
--       per hash: expire-at ms, field count k, then k (field, delta) pairs
--       per series: series id, labels JSON
local n_inst = tonumber(ARGV[1])
local n_hash = tonumber(ARGV[2])
local n_series = tonumber(ARGV[3])

local changed = {}
local a = 4
for i = 1, n_inst do
  local current = redis.call('GET', KEYS[i])
  if current == false then current = '' end
  if current ~= ARGV[a] then
    changed[#changed + 1] = i
  end
  a = a + 3
end
if #changed > 0 then
  return changed
end

a = 4
for i = 1, n_inst do
  redis.call('SET', KEYS[i], ARGV[a + 1], 'PX', ARGV[a + 2])
  a = a + 3
end
for j = 1, n_hash do
  local key = KEYS[n_inst + j]
  local expire_at = ARGV[a]
  local k = tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, k do
    redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('PEXPIREAT', key, expire_at)
end
if n_series > 0 then
  local key = KEYS[n_inst + n_hash + 1]
  for _ = 1, n_series do
    redis.call('HSETNX', key, ARGV[a], ARGV[a + 1])
    a = a + 2
  end
end
return changed
