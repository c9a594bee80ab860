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
--       n_open, c, a, then a (instance id, new value) of records the plan assumed absent,
--          the first c of them known (by the caller's filters of the sealed
--          generations, store/sealed.rs) to be in none of the generations after the
--          first n_open, so checked only in those n_open,
--       b, then b (instance id, expected value, new value) of records it read,
--       per series: series id, labels JSON
-- A record's position (in the reply) counts the absent ones first, then the read ones.
--
-- Cost matters here (it runs for every event): records are read with one HMGET per
-- record hash that exists (two when a round has both kinds of record) and written with
-- one HSET per record hash, however many instances; the increments, however many, are
-- one RPUSH. After two hours of traffic a task has two older, sealed generations of up
-- to millions of records each; the records assumed absent that the caller's filters
-- rule out (the c) are not looked up there: those lookups, misses in large hashes, took
-- a third of Redis' time per event. The records assumed absent, the common case, take a
-- path of their own that builds one table (their ids) and hands their (id, value) pairs
-- from ARGV to HSET as they are. The loops keep their own counts (`#` walks a table in
-- Lua 5.1) and reuse tables in place.
local n_gen = tonumber(ARGV[1])
local current_gen = tonumber(ARGV[2])
local n_series = tonumber(ARGV[3])
local journal_ttl = ARGV[4]
local entry = ARGV[5]
local journal = KEYS[n_gen + 1]
-- ARGV[5 + g]: the expire-at of generation g's record hash.
local a = 6 + n_gen

-- Lua's unpack takes a few thousand values at most: long lists go in chunks.
local CHUNK = 2000
-- From how many ids still to look up a generation's hash is checked for existence first.
local SKIP_CHECK_FROM = 8
-- HMGET of list[first .. first + n - 1]: their values, at 1 .. n.
local function hmget(key, list, first, n)
  if n <= CHUNK then
    return redis.call('HMGET', key, unpack(list, first, first + n - 1))
  end
  local out = {}
  for i = 1, n, CHUNK do
    local got = redis.call('HMGET', key, unpack(list, first + i - 1, first + math.min(i + CHUNK - 1, n) - 1))
    for j = 1, #got do
      out[i + j - 1] = got[j]
    end
  end
  return out
end
-- `cmd key list[first..last]`, in chunks (`first` and the chunk size keep pairs whole).
local function call_chunked(cmd, key, list, first, last)
  for i = first, last, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, last)))
  end
end
-- Appends the values to generation g's list in `lists`, counting them in `counts`.
local function append(lists, counts, g, a, b)
  local list = lists[g]
  if not list then
    list = {}
    lists[g] = list
    counts[g] = 0
  end
  local n = counts[g] + 1
  list[n] = a
  if b then
    n = n + 1
    list[n] = b
  end
  counts[g] = n
end

local n_open = tonumber(ARGV[a])
local n_cleared = tonumber(ARGV[a + 1])
local n_absent = tonumber(ARGV[a + 2])
local first_absent = a + 3
local first_read = first_absent + 2 * n_absent
local n_read = tonumber(ARGV[first_read])
a = first_read + 1 + 3 * n_read
local changed = {}
local n_changed = 0

-- Phase 1a: a record the plan assumed absent (most: every start and completed event on a
-- first attempt) must be in no generation (the first n_cleared of them: in none of the
-- first n_open; the caller's filters rule out the others). Their (id, new value) pairs
-- are contiguous in ARGV, so their writes need no table of their own below.
if n_absent > 0 then
  local ids = {}
  for f = 1, n_absent do
    ids[f] = ARGV[first_absent + 2 * (f - 1)]
  end
  local hit = nil
  for g = 1, n_gen do
    local first, n = 1, n_absent
    if g > n_open then
      first, n = n_cleared + 1, n_absent - n_cleared
    end
    -- A generation whose hash does not exist holds no record: skip its HMGET. Every id
    -- handed to a command is copied into a Redis string first, so an HMGET of n ids
    -- costs about n of those copies even on a missing key (the generation ahead almost
    -- never exists; on a task quiet for a while, older ones neither). One EXISTS is
    -- cheaper than that only for more than a few ids.
    if n > 0 and (n < SKIP_CHECK_FROM or redis.call('EXISTS', KEYS[g]) == 1) then
      local got = hmget(KEYS[g], ids, first, n)
      for f = 1, n do
        if got[f] then
          hit = hit or {}
          hit[first + f - 1] = true
        end
      end
    end
  end
  if hit then
    for f = 1, n_absent do
      if hit[f] then
        n_changed = n_changed + 1
        changed[n_changed] = f
      end
    end
  end
end

-- Phase 1b: a record the plan read must still have the value it read ('' = absent), in
-- the newest generation holding it; remember which one. `ids`/`at` hold the records not
-- found yet, compacted in place after each hash.
local found = {}
if n_read > 0 then
  local ids, at = {}, {}
  for r = 1, n_read do
    ids[r] = ARGV[first_read - 2 + 3 * r]
    at[r] = r
  end
  local value = {}
  local n = n_read
  for g = 1, n_gen do
    if n == 0 then
      break
    end
    if n < SKIP_CHECK_FROM or redis.call('EXISTS', KEYS[g]) == 1 then
      local got = hmget(KEYS[g], ids, 1, n)
      local m = 0
      for i = 1, n do
        local v = got[i]
        if v then
          local r = at[i]
          value[r] = v
          found[r] = g
        else
          m = m + 1
          ids[m] = ids[i]
          at[m] = at[i]
        end
      end
      n = m
    end
  end
  for r = 1, n_read do
    if (value[r] or '') ~= ARGV[first_read - 1 + 3 * r] then
      n_changed = n_changed + 1
      changed[n_changed] = n_absent + r
    end
  end
end
if n_changed > 0 then
  return changed
end

-- Phase 2: write each record to the current generation, or to the newer one holding it
-- (and remove it from an older one holding it). A record assumed absent was found
-- nowhere, so it goes to the current generation.
local written = {}
if n_absent > 0 then
  call_chunked('HSET', KEYS[current_gen], ARGV, first_absent, first_absent + 2 * n_absent - 1)
  written[current_gen] = true
end
if n_read > 0 then
  local writes = {}
  local n_writes = {}
  local removes = {}
  local n_removes = {}
  for r = 1, n_read do
    local p = first_read - 2 + 3 * r
    local from = found[r]
    local to = current_gen
    if from and from < current_gen then
      to = from
    end
    append(writes, n_writes, to, ARGV[p], ARGV[p + 2])
    if from and from ~= to then
      append(removes, n_removes, from, ARGV[p])
    end
  end
  for g = 1, n_gen do
    if writes[g] then
      call_chunked('HSET', KEYS[g], writes[g], 1, n_writes[g])
      written[g] = true
    end
    if removes[g] then
      call_chunked('HDEL', KEYS[g], removes[g], 1, n_removes[g])
    end
  end
end
for g = 1, n_gen do
  if written[g] then
    redis.call('PEXPIREAT', KEYS[g], ARGV[5 + g])
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
  local known = hmget(key, ids, 1, n_series)
  local missing = {}
  local n_missing = 0
  for i = 1, n_series do
    if not known[i] then
      missing[n_missing + 1] = ids[i]
      missing[n_missing + 2] = ARGV[a + 2 * (i - 1) + 1]
      n_missing = n_missing + 2
    end
  end
  if n_missing > 0 then
    call_chunked('HSET', key, missing, 1, n_missing)
  end
end
return { 0, journal_len }
