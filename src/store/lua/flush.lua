#!lua
-- Folds the oldest entries of a task's journal into its buckets (see store/journal.rs
-- and store/bucket.rs), atomically and exactly once.
--
-- The caller read the first n entries, read the buckets they touch, added the entries'
-- increments and passes each bucket's new value. Only folds of this journal write these
-- buckets, and every fold removes the journal's first entry (tokens are unique): so if
-- the journal still starts with the entry the caller read, nothing has changed the
-- buckets since it read them. If it does not (another flusher folded first), this script
-- changes nothing and returns 0. Otherwise it writes the buckets, removes those n
-- entries, and returns 1.
--
-- KEYS: the journal, then one key per bucket
-- ARGV: n (entries folded), token of the first entry, journal TTL ms,
--       per bucket: expire-at ms (fixed by the bucket), new value
local journal = KEYS[1]
local n = tonumber(ARGV[1])

local head = redis.call('LINDEX', journal, 0)
if not head then
  return 0
end
local newline = string.find(head, '\n', 1, true)
local head_is = newline and string.sub(head, 1, newline - 1) or head
if head_is ~= ARGV[2] or redis.call('LLEN', journal) < n then
  return 0
end

for j = 2, #KEYS do
  local a = 4 + 2 * (j - 2)
  redis.call('SET', KEYS[j], ARGV[a + 1], 'PXAT', ARGV[a])
end

redis.call('LTRIM', journal, n, -1)
-- A journal that is never empty under steady load keeps its expiry ahead of its data.
if redis.call('EXISTS', journal) == 1 then
  redis.call('PEXPIRE', journal, ARGV[3])
end
return 1
