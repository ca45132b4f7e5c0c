-- Ends a flight in one step: its result stored for its followers, the
-- outcome remembered if it is to be, the answer kept for --stale-if-error
-- (or, after a definitive refusal, the kept answer replaced by a mark that
-- lives as long as it would have), the lease released if still the
-- flight's, and the result published on the flight's channel.
-- KEYS: 1 the flight's result, 2 lease, 3 where the outcome is remembered,
--       4 the kept answer, 5 the mark of a replaced one.
-- ARGV: 1 the flight id ('' without a flight), 2 the sealed result ('' to
--       share none), 3 its ms, 4 the sealed outcome to remember (or ''),
--       5 its ms, 6 the channel, 7 PUBLISH or SPUBLISH, 8 the sealed kept
--       answer (or ''), 9 its ms, 10 '1' if the outcome replaces the kept
--       answer.
-- Reply: {1} if published (or nothing to publish), {0} if the notice failed
-- (the result is stored all the same: followers find it when they look).
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[9])
  redis.call('DEL', KEYS[5])
elseif ARGV[10] == '1' then
  local left = redis.call('PTTL', KEYS[4])
  if left > 0 then
    redis.call('DEL', KEYS[4])
    redis.call('SET', KEYS[5], '1', 'PX', left)
  end
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if ARGV[1] == '' or ARGV[2] == '' then return {1} end
local published = redis.pcall(ARGV[7], ARGV[6], ARGV[1] .. ':' .. ARGV[2])
if type(published) == 'table' and published.err then return {0} end
return {1}
