#!lua
-- Folds the oldest entries of a task's journal into its bucket hashes (see
-- store/journal.rs), atomically and exactly once.
--
-- The caller read the first n entries, summed their increments and passes the sums. If
-- the journal's first entry is no longer the one it read (another flusher folded it
-- first), this script changes nothing and returns 0. Otherwise it adds the sums, removes
-- those n entries, and returns 1.
--
-- KEYS: the journal, then n_hash hash keys
-- ARGV: n (entries folded), token of the first entry, journal TTL ms, n_hash,
--       per hash: expire-at ms, field count k, then k (field, delta) pairs
local journal = KEYS[1]
local n = tonumber(ARGV[1])
local head_token = ARGV[2]
local journal_ttl = ARGV[3]
local n_hash = tonumber(ARGV[4])

local head = redis.call('LINDEX', journal, 0)
if not head then
  return 0
end
local newline = string.find(head, '\n', 1, true)
local head_is = newline and string.sub(head, 1, newline - 1) or head
if head_is ~= head_token or redis.call('LLEN', journal) < n then
  return 0
end

-- Increments: read the current values of all fields of a hash at once, add, write back
-- (one HINCRBY for a single field). A bucket hash gets its expiry when this script
-- creates it; the expiry is fixed by the bucket, so one that existed has it already.
local CHUNK = 2000
local a = 5
for j = 1, n_hash do
  local key = KEYS[1 + j]
  local expire_at = ARGV[a]
  local k = tonumber(ARGV[a + 1])
  a = a + 2
  local done = 0
  local existed = false
  if k == 1 then
    local value = redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
    existed = value ~= tonumber(ARGV[a + 1])
    a = a + 2
    done = 1
  end
  while done < k do
    local m = math.min(CHUNK, k - done)
    local fields = {}
    for f = 1, m do
      fields[f] = ARGV[a + 2 * (f - 1)]
    end
    local current = redis.call('HMGET', key, unpack(fields))
    local pairs = {}
    for f = 1, m do
      local old = current[f]
      if old then
        existed = true
      end
      pairs[2 * f - 1] = fields[f]
      pairs[2 * f] = (tonumber(old) or 0) + tonumber(ARGV[a + 2 * (f - 1) + 1])
    end
    redis.call('HSET', key, unpack(pairs))
    a = a + 2 * m
    done = done + m
  end
  if not existed then
    redis.call('PEXPIREAT', key, expire_at)
  end
end

redis.call('LTRIM', journal, n, -1)
-- A journal that is never empty under steady load keeps its expiry ahead of its data.
if redis.call('EXISTS', journal) == 1 then
  redis.call('PEXPIRE', journal, journal_ttl)
end
return 1
