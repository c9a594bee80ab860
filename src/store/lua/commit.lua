#!lua
-- Commits one round of one task's events, atomically, exactly once.
--
-- The caller planned the round from the instance records it read (or, for records it
-- did not read, assumed absent). This script checks every one of them is still what the
-- plan assumed; if any differs (another replica got there first, a retry of events
-- already applied, or this very script already ran once and its reply was lost), it
-- applies NOTHING and returns the 1-based positions of the records that differ, so the
-- caller re-reads and re-plans. Otherwise it writes the new records and adds the
-- increments, and returns an empty array.
--
-- KEYS: n_inst instance keys, then n_hash hash keys, then the series index (if n_series > 0)
-- ARGV: n_inst, n_hash, n_series,
--       per instance: expected ('' = absent), new value, ttl ms
--       per hash: expire-at ms, field count k, then k (field, delta) pairs
--       per series: series id, labels JSON
--
-- Cost matters here (it runs for every event): a record expected absent is claimed with
-- one SET NX; increments to one hash are one HMGET and one HSET, however many fields.
local n_inst = tonumber(ARGV[1])
local n_hash = tonumber(ARGV[2])
local n_series = tonumber(ARGV[3])

local changed = {}
local claimed = {}
local a = 4
for i = 1, n_inst do
  local expected = ARGV[a]
  if expected == '' then
    if redis.call('SET', KEYS[i], ARGV[a + 1], 'NX', 'PX', ARGV[a + 2]) then
      claimed[#claimed + 1] = KEYS[i]
    else
      changed[#changed + 1] = i
    end
  else
    local current = redis.call('GET', KEYS[i])
    if current ~= expected then
      changed[#changed + 1] = i
    end
  end
  a = a + 3
end
if #changed > 0 then
  -- Undo the claims: nobody can have seen them, the script is atomic.
  for j = 1, #claimed do
    redis.call('DEL', claimed[j])
  end
  return changed
end

a = 4
for i = 1, n_inst do
  if ARGV[a] ~= '' then
    redis.call('SET', KEYS[i], ARGV[a + 1], 'PX', ARGV[a + 2])
  end
  a = a + 3
end

-- Increments: read the current values of all fields of a hash at once, add, write back.
local CHUNK = 2000
for j = 1, n_hash do
  local key = KEYS[n_inst + j]
  local expire_at = ARGV[a]
  local k = tonumber(ARGV[a + 1])
  a = a + 2
  local done = 0
  while done < k do
    local m = math.min(CHUNK, k - done)
    local fields = {}
    for f = 1, m do
      fields[f] = ARGV[a + 2 * (f - 1)]
    end
    local current = redis.call('HMGET', key, unpack(fields))
    local pairs = {}
    for f = 1, m do
      local value = (tonumber(current[f]) or 0) + tonumber(ARGV[a + 2 * (f - 1) + 1])
      pairs[2 * f - 1] = fields[f]
      pairs[2 * f] = value
    end
    redis.call('HSET', key, unpack(pairs))
    a = a + 2 * m
    done = done + m
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
