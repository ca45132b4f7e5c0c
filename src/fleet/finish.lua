-- Ends a flight in one step: its result stored for its followers, the
-- outcome remembered if it is to be, the answer kept for --stale-if-error,
-- the lease released if still the flight's, and the result published on
-- the flight's channel. A definitive refusal (a revocation) instead deletes
-- the fleet's copies of the answer (cached and kept), marks the token until
-- its exp so that no copy is written again, and tells every replica on the
-- fleet-wide channel to forget its own.
-- KEYS: 1 the flight's result, 2 lease, 3 where the outcome is remembered,
--       4 the kept answer, 5 the token's revocation mark, 6 the fleet
--       cache's answer.
-- ARGV: 1 the flight id ('' without a flight), 2 the sealed result ('' to
--       share none), 3 its ms, 4 the sealed outcome to remember (or ''),
--       5 its ms, 6 the channel, 7 PUBLISH or SPUBLISH, 8 the sealed kept
--       answer (or ''), 9 its ms, 10 '1' if the outcome is a revocation,
--       11 the mark's ms, 12 the fleet-wide channel, 13 the token's tag.
-- Reply: {1} if published (or nothing to publish), {0} if the notice failed
-- (the result is stored all the same: followers find it when they look).
local revoked = ARGV[10] == '1'
if revoked then
  redis.call('DEL', KEYS[6], KEYS[4])
  -- A mark only ever grows: a second revocation never shortens it.
  local ms = tonumber(ARGV[11])
  if redis.call('PTTL', KEYS[5]) < ms then
    redis.call('SET', KEYS[5], '1', 'PX', ms)
  end
end
local marked = revoked or redis.call('EXISTS', KEYS[5]) == 1
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
-- No answer of a revoked token is cached or kept again (an answer Cognito
-- gave before the revocation may land after it).
if ARGV[4] ~= '' and not (marked and KEYS[3] == KEYS[6]) then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
end
if ARGV[8] ~= '' and not marked then
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[9])
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
local told = true
if revoked then
  local heard = redis.pcall('PUBLISH', ARGV[12], ARGV[13])
  told = not (type(heard) == 'table' and heard.err)
end
if ARGV[1] == '' or ARGV[2] == '' then
  if told then return {1} end
  return {0}
end
local published = redis.pcall(ARGV[7], ARGV[6], ARGV[1] .. ':' .. ARGV[2])
if type(published) == 'table' and published.err then return {0} end
if not told then return {0} end
return {1}
