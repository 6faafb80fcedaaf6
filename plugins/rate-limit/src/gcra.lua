-- GCRA for all the limits of one request, atomically (a script runs alone on the server).
--
-- KEYS[i]       the bucket of limit i; its value is the theoretical arrival time (TAT) in
--               microseconds of Redis server time.
-- ARGV[2i - 1]  the emission interval T of limit i in microseconds (may be fractional).
-- ARGV[2i]      the burst B of limit i (>= 1).
--
-- The request is admitted when every limit conforms: max(TAT, now) + T - B*T <= now. Only then is
-- every TAT advanced by T, so a refused request costs nothing. Each key expires when its bucket
-- is full again (TAT - now), the moment it becomes indistinguishable from an absent key.
--
-- Reply: { admitted (1/0), retry-after (us), then per limit: remaining, next unit in (us) }.

-- Redis < 5 replicates scripts verbatim and refuses writes after TIME unless told otherwise.
if redis.replicate_commands then
  redis.replicate_commands()
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local n = #KEYS
local tats = {}
local wait = 0

for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then
    tat = now
  end
  tats[i] = tat
  local conforms_in = tat + interval - burst * interval - now
  if conforms_in > wait then
    wait = conforms_in
  end
end

local admitted = 0
if wait <= 0 then
  admitted = 1
end
local reply = { admitted, math.ceil(wait) }

for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tats[i]
  if admitted == 1 then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000))
  end
  -- Credit: how far the bucket is from empty, in time; every whole T is one request.
  local credit = now + burst * interval - tat
  if credit < 0 then
    credit = 0
  end
  -- The epsilon absorbs float error when credit is a whole number of intervals.
  local remaining = math.floor(credit / interval + 1e-9)
  if remaining > burst then
    remaining = burst
  end
  local next_unit = 0
  if remaining < burst then
    next_unit = math.ceil((remaining + 1) * interval - credit)
  end
  reply[#reply + 1] = remaining
  reply[#reply + 1] = next_unit
end

return reply
