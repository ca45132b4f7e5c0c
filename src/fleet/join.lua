-- Joins the fleet's flight for one token (all keys share the token's slot).
-- KEYS: 1 remembered answer, 2 remembered refusal, 3 lease, 4 the result of
--       the flight the caller followed (any name in the slot if none), 5 the
--       token's revocation mark (a definitive refusal: no remembered answer
--       is served, and each replica forgets its own copies).
-- ARGV: 1 a new flight id, 2 the caller's lease in ms, 3 '1' if the caller
--       reads remembered answers, 4 '1' if it reads remembered refusals,
--       5 '1' if it followed a flight, 6 '1' if it may lead one.
-- Replies: {1, value} an answer; {2, value} a refusal; {3, value} the
-- followed flight's result; {4, flight, ms left, replaced} another flight to
-- follow (a lease longer than the caller's own, or without a TTL, is not one
-- this replica could have written: it is cut back to the caller's lease);
-- {5, replaced} the caller leads, its flight id now the lease's value; {6}
-- no flight, and the caller may not lead (nothing taken); {5} also when
-- the lease already holds the caller's own new id (the join was retried).
-- `replaced` is 1 if the token was revoked (each replica forgets its own
-- copies).
local replaced = redis.call('EXISTS', KEYS[5])
if ARGV[3] == '1' and replaced == 0 then
  local answer = redis.call('GET', KEYS[1])
  if answer then return {1, answer} end
end
if ARGV[4] == '1' then
  local refusal = redis.call('GET', KEYS[2])
  if refusal then return {2, refusal} end
end
if ARGV[5] == '1' then
  local result = redis.call('GET', KEYS[4])
  if result then return {3, result} end
end
local lease_ms = tonumber(ARGV[2])
local flight = redis.call('GET', KEYS[3])
-- A join sent again (a retry after a lost reply) that already took the
-- lease leads its own flight, never follows it.
if flight == ARGV[1] then return {5, replaced} end
if flight then
  local left = redis.call('PTTL', KEYS[3])
  if left < 0 or left > lease_ms then
    redis.call('PEXPIRE', KEYS[3], lease_ms)
    left = lease_ms
  end
  return {4, flight, left, replaced}
end
if ARGV[6] ~= '1' then return {6} end
redis.call('SET', KEYS[3], ARGV[1], 'PX', lease_ms)
return {5, replaced}
