#!lua
-- Commits one round of one task's events, atomically, exactly once.
--
-- Instance records live as fields of record hashes, one per generation: the field is
-- the instance id, the value its record. A generation is a fixed window of
-- time; its hashes expire a record TTL after the window ends, so every record outlives
-- its TTL and no sweeper is needed. A record's current value is the one in the newest
-- generation that holds it; writes go to the current generation (or a newer one that
-- already holds the record, written by a replica whose clock is ahead).
--
-- The caller planned the round from the records it read (or, for records it did not
-- read, assumed absent). This script first checks every one of them is still what the
-- plan assumed; if any differs (another replica got there first, a retry of events
-- already applied, or this very script already ran once and its reply was lost), it
-- writes NOTHING and returns the 1-based positions of the records that differ, so the
-- caller re-reads and re-plans. Otherwise it writes the new records and appends the
-- increments to the journal, and returns {0, the journal's length}.
--
-- KEYS: n_gen record hash keys, newest generation first (the current one at position
--       `current`); then the task's journal; then the series index (if n_series > 0)
-- ARGV: n_gen, current, n_series, journal TTL ms, journal entry ('' = none),
--       per generation: expire-at ms of its record hash,
--       k, then k (instance id, expected ('' = absent), new value),
--       per series: series id, labels JSON
--
-- Cost matters here (it runs for every event): records are read with one HMGET per
-- record hash and written with one HSET per record hash, however many instances; the
-- increments, however many, are one RPUSH.
local n_gen = tonumber(ARGV[1])
local current_gen = tonumber(ARGV[2])
local n_series = tonumber(ARGV[3])
local journal_ttl = ARGV[4]
local entry = ARGV[5]
local journal = KEYS[n_gen + 1]
local gen_expire = {}
for g = 1, n_gen do
  gen_expire[g] = ARGV[5 + g]
end
local a = 6 + n_gen

-- Lua's unpack takes a few thousand values at most: long lists go in chunks.
local CHUNK = 2000
local function hmget(key, list)
  if #list <= CHUNK then
    return redis.call('HMGET', key, unpack(list))
  end
  local out = {}
  for i = 1, #list, CHUNK do
    local got = redis.call('HMGET', key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
    for j = 1, #got do
      out[i + j - 1] = got[j]
    end
  end
  return out
end
local function call_chunked(cmd, key, list)
  for i = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end

-- Phase 1: read and check every record; remember the generation each was found in.
local k = tonumber(ARGV[a])
local base = a + 1
a = base + 3 * k
local value = {}
local found = {}
local missing = {}
local missing_at = {}
for f = 1, k do
  missing[f] = ARGV[base + 3 * (f - 1)]
  missing_at[f] = f
end
for g = 1, n_gen do
  if #missing == 0 then
    break
  end
  local got = hmget(KEYS[g], missing)
  local still, still_at = {}, {}
  for m = 1, #missing do
    local f = missing_at[m]
    if got[m] then
      value[f] = got[m]
      found[f] = g
    else
      still[#still + 1] = missing[m]
      still_at[#still_at + 1] = f
    end
  end
  missing, missing_at = still, still_at
end
local changed = {}
for f = 1, k do
  if (value[f] or '') ~= ARGV[base + 3 * (f - 1) + 1] then
    changed[#changed + 1] = f
  end
end
if #changed > 0 then
  return changed
end

-- Phase 2: write each record to the current generation, or to the newer one holding it.
local writes = {}
local removes = {}
for f = 1, k do
  local id = ARGV[base + 3 * (f - 1)]
  local from = found[f]
  local to = current_gen
  if from and from < current_gen then
    to = from
  end
  writes[to] = writes[to] or {}
  local w = writes[to]
  w[#w + 1] = id
  w[#w + 1] = ARGV[base + 3 * (f - 1) + 2]
  if from and from ~= to then
    removes[from] = removes[from] or {}
    local r = removes[from]
    r[#r + 1] = id
  end
end
for g = 1, n_gen do
  if writes[g] then
    call_chunked('HSET', KEYS[g], writes[g])
    redis.call('PEXPIREAT', KEYS[g], gen_expire[g])
  end
  if removes[g] then
    call_chunked('HDEL', KEYS[g], removes[g])
  end
end

-- Increments: one entry appended to the task's journal (see store/journal.rs); a
-- flusher folds it into the buckets. A new journal gets an expiry (the longest
-- retention): one that is never folded cannot outlive the data it holds.
local journal_len = 0
if entry ~= '' then
  journal_len = redis.call('RPUSH', journal, entry)
  if journal_len == 1 then
    redis.call('PEXPIRE', journal, journal_ttl)
  end
end
-- Series index: add the series it does not have yet (two calls, however many series).
if n_series == 1 then
  redis.call('HSETNX', KEYS[n_gen + 2], ARGV[a], ARGV[a + 1])
elseif n_series > 1 then
  local key = KEYS[n_gen + 2]
  local ids = {}
  for i = 1, n_series do
    ids[i] = ARGV[a + 2 * (i - 1)]
  end
  local known = hmget(key, ids)
  local missing = {}
  for i = 1, n_series do
    if not known[i] then
      missing[#missing + 1] = ids[i]
      missing[#missing + 1] = ARGV[a + 2 * (i - 1) + 1]
    end
  end
  if #missing > 0 then
    call_chunked('HSET', key, missing)
  end
end
return { 0, journal_len }
