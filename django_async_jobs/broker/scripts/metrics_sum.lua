-- Sum minute hashes (metrics.lua's) into one, for a window of hours: the part of its oldest hour
-- it covers comes back as one hash's fields, not up to 59 hashes to send and parse in Python.
-- KEYS[4 ..] = the minute hashes. Returns field, amount, field, amount, ... (amounts as text).
local sums, order = {}, {}
for i = 4, #KEYS do
  local flat = redis.call('HGETALL', KEYS[i])
  for j = 1, #flat, 2 do
    local amount = tonumber(flat[j + 1])
    if amount then
      local name = flat[j]
      if sums[name] == nil then
        order[#order + 1] = name
        sums[name] = amount
      else
        sums[name] = sums[name] + amount
      end
    end
  end
end
local out = {}
for _, name in ipairs(order) do
  out[#out + 1] = name
  out[#out + 1] = string.format('%.17g', sums[name])
end
return out
