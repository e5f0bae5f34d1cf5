-- Read the stored state without changing it.
local st, gen, fails, until_ms = load()
return reply('snapshot', st, gen, fails, until_ms, '', math.max(0, until_ms - now))
