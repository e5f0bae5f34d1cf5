-- Shared prelude of every breaker script. The caller sends the time, so all
-- instances and the tests use one clock: ARGV[1] is "now" in epoch ms.
-- KEYS[1] is the breaker's one hash. Its fields: state, gen, fails,
-- opened_until, changed_at; c<bucket> and f<bucket>, the calls and failures
-- of one time bucket; p:<probe id>, the lease end of a probe in epoch ms.
-- One key keeps EVALSHA short, which is most of a closed-state call's cost.
local key = KEYS[1]
local now = tonumber(ARGV[1])

local function int(n)
  return string.format('%d', n)
end

local function load()
  local v = redis.call('HMGET', key, 'state', 'gen', 'fails', 'opened_until')
  return v[1] or 'closed', tonumber(v[2] or '0'), tonumber(v[3] or '0'),
    tonumber(v[4] or '0')
end

-- Reply of every script, one string because a client parses it faster than
-- an array: "verdict state generation fails opened_until_ms previous retry_ms".
-- previous is '-' unless this script made a transition.
local function reply(verdict, st, gen, fails, until_ms, prev, retry_ms)
  if prev == nil or prev == '' then prev = '-' end
  return table.concat({verdict, st, int(gen), int(fails), int(until_ms), prev,
    int(retry_ms or 0)}, ' ')
end

-- Every transition bumps the generation and starts the new state with an
-- empty window and no probe leases.
local function transition(to, gen, fails, until_ms)
  gen = gen + 1
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', to, 'gen', int(gen), 'fails', int(fails),
    'opened_until', int(until_ms), 'changed_at', int(now))
  return gen
end
