-- Joins the fleet's flight for one token (all keys share the token's slot).
-- KEYS: 1 remembered answer, 2 remembered refusal, 3 lease, 4 flight result.
-- ARGV: 1 a new flight id, 2 the lease in ms (the most any replica writes),
--       3 '1' if the caller reads remembered answers, 4 '1' if it reads
--       remembered refusals, 5 the flight it followed ('' if none).
-- Replies: {1, value} an answer; {2, value} a refusal; {3, value} the
-- followed flight's result; {4, flight, ms left} another flight to follow
-- (a lease longer than any replica writes, or without a TTL, is cut back to
-- the lease); {5} the caller leads, its flight id now the lease's value.
if ARGV[3] == '1' then
  local answer = redis.call('GET', KEYS[1])
  if answer then return {1, answer} end
end
if ARGV[4] == '1' then
  local refusal = redis.call('GET', KEYS[2])
  if refusal then return {2, refusal} end
end
if ARGV[5] ~= '' then
  local result = redis.call('GET', KEYS[4])
  if result and string.sub(result, 1, #ARGV[5] + 1) == ARGV[5] .. ':' then
    return {3, result}
  end
end
local lease_ms = tonumber(ARGV[2])
local flight = redis.call('GET', KEYS[3])
if flight then
  local left = redis.call('PTTL', KEYS[3])
  if left < 0 or left > lease_ms then
    redis.call('PEXPIRE', KEYS[3], lease_ms)
    left = lease_ms
  end
  return {4, flight, left}
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', lease_ms)
return {5}
