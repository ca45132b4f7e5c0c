-- Announces a replica in the fleet's sorted set (score: when the
-- announcement lapses, on Redis's clock), drops lapsed ones and returns the
-- fleet's size.
-- KEYS: 1 the set. ARGV: 1 the replica's id, 2 the lapse in ms.
-- Reply: {size}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {redis.call('ZCARD', KEYS[1])}
