-- Read metrics hashes (metrics.lua's) for api.metrics, a point at a time. A point is one hash,
-- or the sum of several (the part of its oldest hour a window of hours covers, from the
-- minutes). Each point comes back as one string, "field\0amount\0field\0amount...", which the
-- reader splits in one call instead of parsing two replies a field (most of a long window's
-- time in redis-py).
-- KEYS[4 ..] = the hashes, point after point; ARGV[3 ..] = how many hashes each point sums.
local out, k = {}, 4
for p = 3, #ARGV do
  local n = tonumber(ARGV[p])
  if n == 1 then
    out[#out + 1] = table.concat(redis.call('HGETALL', KEYS[k]), '\0')
  else
    local sums, order = {}, {}
    for i = k, k + n - 1 do
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
    local summed = {}
    for _, name in ipairs(order) do
      summed[#summed + 1] = name
      summed[#summed + 1] = string.format('%.17g', sums[name])
    end
    out[#out + 1] = table.concat(summed, '\0')
  end
  k = k + n
end
return out
