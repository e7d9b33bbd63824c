-- tollgate: settle a request whose cost turned out to differ from its charge, for every
-- policy of its tier, atomically (follows algorithms.lua). One round trip, made only when the
-- cost changed.
--
-- KEYS[i]  the state of policy i for one client (as check.lua).
-- ARGV[1]  charged;  ARGV[2] actual;  ARGV[3] charged_at (microseconds since the epoch, Redis'
--          clock: the decision's now)
-- ARGV[3 + 4i - 3 .. 3 + 4i]  policy i: algorithm, emission, burst, receipt
--
-- As src/algorithm: a refund comes out of the request's own charge (a token bucket: the part
-- of its tokens still ahead of now, unless an earlier refund slid the bucket since the charge;
-- a counter: the window it was counted in, while that still counts; a log: its own entries);
-- an extra charge is taken now, at the back, and may leave the client in debt.
--
-- Returns what check.lua returns for an admitted request of cost `actual` (wait 0, receipts
-- 0): the standing after the settlement.

local charged = tonumber(ARGV[1])
local actual = tonumber(ARGV[2])
local charged_at = tonumber(ARGV[3])

local reply = { 0, tonumber(time[1]), tonumber(time[2]), actual, 0 }
for i = 1, #KEYS do
  local p = {
    algorithm = tonumber(ARGV[3 + 4 * i - 3]),
    emission = tonumber(ARGV[3 + 4 * i - 2]),
    burst = tonumber(ARGV[3 + 4 * i - 1]),
  }
  local receipt = tonumber(ARGV[3 + 4 * i])
  load(p, KEYS[i])
  if p.algorithm == 0 then
    local t = p.emission
    local tat = p.tat
    if actual < charged then
      if p.slid < charged_at then
        local back = min((charged - actual) * t, max(receipt - now, 0))
        if back > 0 then
          if tat ~= receipt then
            -- Requests charged after this one slid back: older receipts no longer say where
            -- their slots end.
            p.slid = now
          end
          tat = max(tat - back, 0)
        end
      end
    else
      tat = min(max(tat, now) + (actual - charged) * t, now + MAX_AHEAD)
    end
    if tat > now then
      gcra_store(p, KEYS[i], tat)
    else
      redis.call('DEL', KEYS[i])
    end
    p.tat = tat
  elseif p.algorithm == 1 then
    local win = p.win
    local prev, cur = win.prev, win.cur
    if actual < charged then
      if receipt == win.tag then
        cur = max(cur - (charged - actual), 0)
      elseif receipt == win.tag - 1 then
        prev = max(prev - (charged - actual), 0)
      end
    else
      cur = min(cur + (actual - charged), window_most(p))
    end
    win.prev, win.cur = prev, cur
    if prev > 0 or cur > 0 then
      window_store(p, KEYS[i], cur)
    else
      -- Nothing counted any more (a whole refund): an empty window is no state at all.
      redis.call('DEL', KEYS[i])
    end
  else
    if actual < charged then
      -- Its own tokens are the members of its instant; the last ones are removed.
      local score = string.format('%.0f', receipt)
      local mine = redis.call('ZRANGEBYSCORE', p.key, score, score)
      local back = min(charged - actual, #mine)
      for k = #mine - back + 1, #mine do
        redis.call('ZREM', p.key, mine[k])
      end
    else
      log_add(p, p.newest, min(actual - charged, p.burst))
    end
    log_load(p, KEYS[i])
  end
  local num, den = fraction_of(p)
  local remaining, reset_after, next_after = standing(p)
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset_after
  reply[#reply + 1] = 0
  reply[#reply + 1] = next_after
  reply[#reply + 1] = num
  reply[#reply + 1] = den
  reply[#reply + 1] = 0
end
return reply
