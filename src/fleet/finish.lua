-- Ends a flight in one step: its result stored for its followers, the
-- outcome remembered if it is to be, the answer kept (or Cognito's refusal
-- in its place) for --stale-if-error, the lease released if still the
-- flight's, and the result published on the flight's channel.
-- KEYS: 1 the flight's result, 2 lease, 3 where the outcome is remembered,
--       4 the kept answer.
-- ARGV: 1 the flight id ('' without a flight), 2 the sealed result ('' to
--       share none), 3 its ms, 4 the sealed outcome to remember (or ''),
--       5 its ms, 6 the channel, 7 PUBLISH or SPUBLISH, 8 the sealed kept
--       answer or refusal (or ''), 9 its ms.
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
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if ARGV[1] == '' or ARGV[2] == '' then return {1} end
local published = redis.pcall(ARGV[7], ARGV[6], ARGV[1] .. ':' .. ARGV[2])
if type(published) == 'table' and published.err then return {0} end
return {1}
