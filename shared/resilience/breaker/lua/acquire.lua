-- Decide whether a call may start. ARGV: now_ms, half_open_max_calls,
-- probe_lease_ms, probe_id. Verdicts: allow (closed), probe (a half-open
-- lease was granted), reject (retry_ms is the wait before
-- trying again).
local max_probes = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local probe_id = ARGV[4]

local st, gen, fails, until_ms = load()
local prev = ''

if st == 'open' then
  if now < until_ms then
    return reply('reject', st, gen, fails, until_ms, '', until_ms - now)
  end
  gen = transition('half_open', gen, fails, 0)
  prev, st = 'open', 'half_open'
end

if st == 'half_open' then
  -- Leases whose holder never reported free their slot when they end.
  local fields = redis.call('HGETALL', key)
  local active, earliest = 0, nil
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'p:' then
      local lease_end = tonumber(fields[i + 1])
      if lease_end <= now then
        redis.call('HDEL', key, fields[i])
      else
        active = active + 1
        if earliest == nil or lease_end < earliest then earliest = lease_end end
      end
    end
  end
  if active < max_probes then
    redis.call('HSET', key, 'p:' .. probe_id, int(now + lease_ms))
    return reply('probe', st, gen, fails, 0, prev, 0)
  end
  return reply('reject', st, gen, fails, 0, prev, earliest - now)
end

return reply('allow', st, gen, fails, 0, '', 0)
