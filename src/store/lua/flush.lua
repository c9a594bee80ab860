#!lua
-- Folds the oldest entries of a task's journal into its buckets (see store/journal.rs
-- and store/bucket.rs), atomically and exactly once.
--
-- The caller read the first n entries, read the buckets they touch, added the entries'
-- increments, and wrote each bucket's new value to a staged key of its own (`SET ...
-- PX`, before this script and outside it). Only folds of this journal write these
-- buckets, and every fold removes the journal's first entry (tokens are unique): so if
-- the journal still starts with the entry the caller read, nothing has changed the
-- buckets since it read them. Then this script renames each staged value over its
-- bucket, gives the bucket its expiry, removes those n entries and returns 1. If the
-- journal does not (another flusher folded first), it changes nothing, deletes the
-- staged values and returns 0; if a staged value is gone (it expired before this ran),
-- the same, and it returns -1.
--
-- Why staged: a script blocks Redis while it runs. Passing a fold's new values through
-- it (whole buckets, hundreds of kilobytes for a busy task) copied each into a Lua string
-- and back, and such a script held every commit behind it for 1-4 ms; a `RENAME` moves
-- a value without copying it.
--
-- KEYS: the journal, then per bucket: its key, the key its new value was staged in
-- ARGV: n (entries folded), token of the first entry, journal TTL ms,
--       per bucket: expire-at ms (fixed by the bucket)
local journal = KEYS[1]
local n = tonumber(ARGV[1])
local n_buckets = (#KEYS - 1) / 2

local staged = {}
for j = 1, n_buckets do
  staged[j] = KEYS[2 * j + 1]
end
-- `cmd` on every staged key, in chunks (Lua's unpack takes a few thousand values at
-- most); the sum of its replies.
local function on_staged(cmd)
  local total = 0
  for i = 1, n_buckets, 2000 do
    total = total + redis.call(cmd, unpack(staged, i, math.min(i + 1999, n_buckets)))
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
if on_staged('EXISTS') < n_buckets then
  on_staged('DEL')
  return -1
end

for j = 1, n_buckets do
  redis.call('RENAME', staged[j], KEYS[2 * j])
  redis.call('PEXPIREAT', KEYS[2 * j], ARGV[3 + j])
end

redis.call('LTRIM', journal, n, -1)
-- A journal that is never empty under steady load keeps its expiry ahead of its data.
if redis.call('EXISTS', journal) == 1 then
  redis.call('PEXPIRE', journal, ARGV[3])
end
return 1
