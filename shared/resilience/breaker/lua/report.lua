-- Record the outcome of a call. An outcome from an older generation changes
-- nothing. ARGV:
--   1 now_ms
--   2 ok: 1 success, 0 failure
--   3 the permit's generation
--   4 probe id ('' for a normal call)
--   5 settings, space-separated: failure_threshold window_ms window_buckets
--     minimum_calls failure_rate_threshold reset_timeout_ms
--   6 earlier successes of the same generation that the caller deferred
local ok = ARGV[2] == '1'
local permit_gen = tonumber(ARGV[3])
local probe_id = ARGV[4]
local settings = {}
for value in string.gmatch(ARGV[5], '%S+') do
  settings[#settings + 1] = tonumber(value)
end
local threshold, window_ms, buckets = settings[1], settings[2], settings[3]
local min_calls, rate, reset_ms = settings[4], settings[5], settings[6]
local deferred = tonumber(ARGV[6] or '0')

local st, gen, fails, until_ms = load()
if probe_id ~= '' then redis.call('HDEL', key, 'p:' .. probe_id) end
if permit_gen ~= gen then
  return reply('stale', st, gen, fails, until_ms, '', 0)
end

if st == 'half_open' then
  if probe_id == '' then
    return reply('ignored', st, gen, fails, until_ms, '', 0)
  end
  if ok then
    gen = transition('closed', gen, 0, 0)
    return reply('closed', 'closed', gen, 0, 0, 'half_open', 0)
  end
  local reopen_until = now + reset_ms
  gen = transition('open', gen, fails + 1, reopen_until)
  return reply('opened', 'open', gen, fails + 1, reopen_until, 'half_open', reset_ms)
end
if st ~= 'closed' then
  return reply('ignored', st, gen, fails, until_ms, '', math.max(0, until_ms - now))
end

-- Closed: count the call in its time bucket, then drop buckets that left the
-- window (only when a new bucket starts, so most calls skip the scan).
local bucket_ms = math.max(1, math.floor(window_ms / buckets))
local bucket = math.floor(now / bucket_ms)
local calls_in_bucket = redis.call('HINCRBY', key, 'c' .. bucket, 1 + deferred)
if not ok then redis.call('HINCRBY', key, 'f' .. bucket, 1) end
if calls_in_bucket == 1 + deferred then
  local oldest = bucket - buckets + 1
  for _, field in ipairs(redis.call('HKEYS', key)) do
    local kind, number = string.match(field, '^([cf])(%d+)$')
    if kind and tonumber(number) < oldest then
      redis.call('HDEL', key, field)
    end
  end
end

-- Deferred successes came before this outcome, so they end a failure streak.
if ok or deferred > 0 then
  if fails > 0 then redis.call('HSET', key, 'fails', 0) end
  fails = 0
end
if ok then
  return reply('ok', st, gen, 0, 0, '', 0)
end

fails = redis.call('HINCRBY', key, 'fails', 1)
local trip = threshold > 0 and fails >= threshold
if not trip and rate > 0 then
  local calls, failed = 0, 0
  for b = bucket - buckets + 1, bucket do
    local counts = redis.call('HMGET', key, 'c' .. b, 'f' .. b)
    calls = calls + tonumber(counts[1] or '0')
    failed = failed + tonumber(counts[2] or '0')
  end
  trip = calls >= min_calls and calls > 0 and failed >= rate * calls
end
if trip then
  local open_until = now + reset_ms
  gen = transition('open', gen, fails, open_until)
  return reply('opened', 'open', gen, fails, open_until, 'closed', reset_ms)
end
return reply('ok', st, gen, fails, 0, '', 0)
