-- GCRA (generic cell rate algorithm) for one key, atomically.
--
-- KEYS[1]  the limit's key; its value is the theoretical arrival time (TAT), in microseconds
--          of the Redis server's clock, so every process shares one clock.
-- ARGV[1]  emission interval: microseconds per cell at the steady rate.
-- ARGV[2]  burst: how many cells may be taken at once from a full bucket.
-- ARGV[3]  cost: cells this request takes (1 or more, at most the burst).
--
-- Returns { 1, 0 } when allowed (the cells are spent), or { 0, wait } when refused (nothing is
-- spent), wait being the microseconds until the same request would be allowed.
--
-- The key expires when the bucket is full again, so idle keys cost nothing.

if redis.replicate_commands then
  -- Redis < 5 replicates scripts verbatim unless asked; TIME then forbids writes.
  pcall(redis.replicate_commands)
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval * cost
local over = new_tat - now - interval * burst
if over > 0 then
  return { 0, over }
end

-- Lua formats large numbers with 14 significant digits ("1.7e+15"); write integers in full.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
  'PX', string.format('%.0f', math.ceil((new_tat - now) / 1000)))
return { 1, 0 }
