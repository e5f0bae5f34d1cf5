-- Close the breaker and clear its counters (an operator's reset).
local st, gen = load()
gen = transition('closed', gen, 0, 0)
return reply('reset', 'closed', gen, 0, 0, st, 0)
