-- Open the breaker until ARGV[2] (epoch ms), or extend an opening in force.
-- An opening is never shortened.
local target = tonumber(ARGV[2])
local st, gen, fails, until_ms = load()

if st == 'open' then
  if target > until_ms then
    redis.call('HSET', key, 'opened_until', int(target))
    return reply('extended', st, gen, fails, target, '', target - now)
  end
  return reply('unchanged', st, gen, fails, until_ms, '', math.max(0, until_ms - now))
end
if target <= now then
  return reply('unchanged', st, gen, fails, until_ms, '', 0)
end
gen = transition('open', gen, fails, target)
return reply('opened', 'open', gen, fails, target, st, target - now)
