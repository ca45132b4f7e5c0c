-- The upstream rate limiter (src/gcra.rs's algorithm) on Redis's clock, in
-- one hash per region, shared by replicas whatever limit each applies.
-- KEYS: 1 the hash. ARGV: 1 'take', 'throttle' or 'spent', 2 the wait bound
-- (µs) of a take, or the number of turns a replica's own limiter gave
-- (spent; it refuses nothing, and runs up at most one turn of debt past the
-- longest wait), 3 the limit (per second), 4 the burst, 5 the decrease factor, 6 the
-- floor rate, 7 the spacing of decreases (µs), 8 the recovery time (µs),
-- 9 the longest wait any caller is given (µs).
-- Replies: {1, wait µs, rate ×1000} a turn; {0, retry-after µs, rate ×1000}
-- a refusal; {2, 0, rate ×1000} a throttle; {3, 0, rate ×1000} turns spent.
-- State read from the hash is clamped to what a replica could have written
-- by now on this clock (a clock step, a failover to a primary whose clock is
-- behind, a hand-written hash): a decrease in the future is not believed, a rate
-- stays between the floor and the limit, and a theoretical arrival time
-- further ahead than any caller could have reserved starts afresh.
-- Times are kept as integers in '%.0f' and rates in '%.17g' (Lua 5.1's
-- tostring keeps 14 digits, and microseconds since the epoch take 16).
-- Before Redis 5, a script that reads TIME must ask for its effects to be
-- replicated (later versions always do).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[2])
local limit, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local decrease, floor = tonumber(ARGV[5]), tonumber(ARGV[6])
local spacing, recovery = tonumber(ARGV[7]), tonumber(ARGV[8])
local horizon = tonumber(ARGV[9])
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'at')
local tat, rate, at = tonumber(state[1]) or 0, tonumber(state[2]), tonumber(state[3])
local tolerance = 1000000 / limit * (burst - 1)
-- What is clamped is written back, as the in-process limiter keeps it.
if tat ~= tat or tat > now + horizon + tolerance + 1000000 / floor then
  tat = 0
  redis.call('HSET', KEYS[1], 'tat', '0')
end
if not rate or rate ~= rate or not at or not (at <= now) then
  if state[2] or state[3] then redis.call('HDEL', KEYS[1], 'rate', 'at') end
  rate, at = nil, nil
end
local current = limit
if rate then
  -- Only the floor is written back: a rate above this replica's own limit
  -- may be another replica's (a rolling change of the limit shares the
  -- hash), and this replica caps it at its own limit as it reads it.
  local clamped = math.max(floor, rate)
  if clamped ~= rate then
    rate = clamped
    redis.call('HSET', KEYS[1], 'rate', string.format('%.17g', rate))
  end
  current = math.min(limit, rate + limit * (now - at) / recovery)
end
local function keep()
  local left = math.max(0, tat - now) / 1000
  redis.call('PEXPIRE', KEYS[1], math.ceil(left + recovery / 1000 + 1000))
end
if ARGV[1] == 'throttle' then
  if not (at and now - at < spacing) then
    current = math.max(floor, current * decrease)
    redis.call('HSET', KEYS[1], 'rate', string.format('%.17g', current),
      'at', string.format('%.0f', now))
    keep()
  end
  return {2, 0, math.floor(current * 1000)}
end
local interval = 1000000 / current
if ARGV[1] == 'spent' then
  local most = now + tolerance + horizon + interval
  local spent = math.min(math.max(tat, now) + tonumber(ARGV[2]) * interval, most)
  if spent > tat then
    tat = spent
    redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
    keep()
  end
  return {3, 0, math.floor(current * 1000)}
end
tat = math.max(tat, now)
local wait = math.max(0, tat - tolerance - now)
if wait > max_wait then
  return {0, math.ceil(wait), math.floor(current * 1000)}
end
tat = tat + interval
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
keep()
return {1, math.ceil(wait), math.floor(current * 1000)}
