#!lua
-- Folds the oldest entries of a task's journal into its buckets (see store/journal.rs
-- and store/bucket.rs), atomically and exactly once.
--
-- Each bucket is two keys: its base, written whole (sorted `name value` lines), and its
-- tail, lines appended since (store/bucket.rs); a reader adds the two. The caller read
-- the first n entries and summed them per bucket. Per bucket it then either read base
-- and tail, added the sums and staged the whole new value (`SET ... PX`, before this
-- script and outside it: mode `w`), or passes only the sums, as lines each after a
-- '\n', without reading the bucket (modes `a` and `b`). Only folds of this journal write
-- these buckets, and every fold removes the journal's first entry (tokens are unique):
-- so if the journal still starts with the entry the caller read, nothing has changed the
-- buckets since it read them. Then this script puts each value in place (`w`: renamed
-- over the base, the tail deleted; `a`, `b`: appended to the tail, or set as the base
-- when the bucket does not exist yet), removes those n entries and returns 1 and then,
-- per bucket, the length of its base (-1: not looked at; mode `b` asks for it) and of
-- its tail: the caller writes a bucket whole once its tail is long. If the journal does
-- not start so (another flusher folded first), it changes nothing, deletes the staged
-- values and returns 0; if a staged value is gone (it expired before this ran), the
-- same, and it returns -1.
--
-- Why staged: a script blocks Redis while it runs. Passing a fold's whole buckets
-- through it (hundreds of kilobytes for a busy task) copied each into a Lua string and
-- back, and such a script held every commit behind it for 1-4 ms; a `RENAME` moves a
-- value without copying it. What is appended is only what the fold adds.
--
-- A bucket gets its expiry when it is written whole or created, its tail when the tail
-- is created (both fixed by the bucket: the same value each time).
--
-- KEYS: the journal, per bucket its base and its tail, then the staged keys of the
--       buckets in mode `w`, in their order
-- ARGV: n (entries folded), token of the first entry, journal TTL ms, number of buckets,
--       per bucket: expire-at ms, mode (`w`, `a` or `b`), lines to append (`a`, `b`)
local journal = KEYS[1]
local n = tonumber(ARGV[1])
local n_buckets = tonumber(ARGV[4])

local staged = {}
for j = 2 * n_buckets + 2, #KEYS do
  staged[#staged + 1] = KEYS[j]
end
local n_staged = #staged
-- `cmd` on every staged key, in chunks (Lua's unpack takes a few thousand values at
-- most); the sum of its replies.
local function on_staged(cmd)
  local total = 0
  for i = 1, n_staged, 2000 do
    total = total + redis.call(cmd, unpack(staged, i, math.min(i + 1999, n_staged)))
  end
  return total
end

local head = redis.call('LINDEX', journal, 0)
local fresh = false
if head then
  local newline = string.find(head, '\n', 1, true)
  local head_is = newline and string.sub(head, 1, newline - 1) or head
  fresh = head_is == ARGV[2] and redis.call('LLEN', journal) >= n
end
if not fresh then
  on_staged('DEL')
  return 0
end
-- Every staged value must be there before any is renamed: a rename of a missing key
-- fails, and a script is not rolled back.
if on_staged('EXISTS') < n_staged then
  on_staged('DEL')
  return -1
end

local lengths = { 1 }
local w = 0
for j = 1, n_buckets do
  local base, tail = KEYS[2 * j], KEYS[2 * j + 1]
  local expire_at, mode, lines = ARGV[2 + 3 * j], ARGV[3 + 3 * j], ARGV[4 + 3 * j]
  local base_len, tail_len = -1, 0
  if mode == 'w' then
    w = w + 1
    redis.call('RENAME', staged[w], base)
    redis.call('PEXPIREAT', base, expire_at)
    redis.call('DEL', tail)
  elseif redis.call('EXISTS', base, tail) == 0 then
    local text = string.sub(lines, 2)
    redis.call('SET', base, text, 'PXAT', expire_at)
    base_len = #text
  else
    tail_len = redis.call('APPEND', tail, lines)
    if tail_len == #lines then
      redis.call('PEXPIREAT', tail, expire_at)
    end
    if mode == 'b' then
      base_len = redis.call('STRLEN', base)
    end
  end
  lengths[2 * j] = base_len
  lengths[2 * j + 1] = tail_len
end

redis.call('LTRIM', journal, n, -1)
-- A journal that is never empty under steady load keeps its expiry ahead of its data.
if redis.call('EXISTS', journal) == 1 then
  redis.call('PEXPIRE', journal, ARGV[3])
end
return lengths
