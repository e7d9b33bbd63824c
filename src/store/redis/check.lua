-- tollgate: check and charge every policy of a client's tier, atomically, in one round trip.
--
-- The same arithmetic as src/algorithm/{gcra,sliding_window}.rs, in microseconds instead of
-- nanoseconds: Lua numbers are doubles, exact below 2^53 (about 285 years of microseconds).
-- Time is Redis' own (TIME), so instances with skewed clocks still share one limit; Redis >= 5
-- replicates a script's effects, not the script, so reading the clock here is allowed.
--
-- KEYS[i]  the state of policy i for one client. Every key carries the same {hash tag}, so a
--          client's policies live in one Cluster slot.
-- ARGV[1]  cost;  ARGV[2] reduced_below (a fraction);  ARGV[3] reduced_cost
-- ARGV[3 + 3i - 2 .. 3 + 3i]  policy i: algorithm (0 = GCRA, 1 = sliding window),
--          emission interval (microseconds per token), burst
--
-- State: GCRA keeps the theoretical arrival time (microseconds since the epoch); the sliding
-- window keeps "window-index previous-count current-count". A missing key (or one written by
-- the other algorithm) is a full bucket. Each written key expires when its bucket is full again.
--
-- Returns integers: outcome (0 admitted, 1 rejected, 2 exceeds), now (seconds, microseconds),
-- tokens charged, then per policy: remaining, reset_after, retry_after, next_after
-- (microseconds until one more whole token; 0 when full), and the fraction of the burst left
-- before the charge as numerator and denominator.

local floor = math.floor
local max = math.max
local min = math.min

local ADMIT, DENY, NEVER = 0, 1, 2

-- a // b for non-negative integers below 2^53, immune to the rounding of a / b.
local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local cost = tonumber(ARGV[1])
local reduced_below = tonumber(ARGV[2])
local reduced_cost = tonumber(ARGV[3])

-- GCRA --------------------------------------------------------------------------------------

local function gcra_load(raw)
  return tonumber(raw) or 0
end

-- Whole tokens at `tat`, and the wait for the next one (0 when full).
local function gcra_standing(p, tat, horizon)
  local t = p.emission
  local room = max(horizon - tat, 0)
  local tokens = idiv(room, t)
  if tokens >= p.burst then
    return tokens, 0
  end
  return tokens, t - (room - tokens * t)
end

local function gcra_check(p, tat, c)
  local t = p.emission
  local tau = t * p.burst
  local base = max(tat, now)
  local horizon = now + tau
  if c > p.burst then
    local available, next = gcra_standing(p, base, horizon)
    return NEVER, nil, available, base - now, 0, next
  end
  local new_tat = base + c * t
  if new_tat <= horizon then
    local remaining, next = gcra_standing(p, new_tat, horizon)
    return ADMIT, new_tat, remaining, new_tat - now, 0, next
  end
  local available, next = gcra_standing(p, base, horizon)
  return DENY, nil, available, base - now, max(new_tat - horizon, 1), next
end

local function gcra_fraction(p, tat)
  local tau = p.emission * p.burst
  return tau - min(max(tat - now, 0), tau), tau
end

local function gcra_store(key, tat)
  -- Full again at the new TAT.
  local ttl = max(math.ceil((tat - now) / 1000), 1)
  redis.call('SET', key, string.format('%.0f', tat), 'PX', ttl)
end

-- Sliding window -----------------------------------------------------------------------------

local function window_load(p, raw)
  local w = p.emission * p.burst
  local tag = idiv(now, w)
  local win = { prev = 0, cur = 0, elapsed = now - tag * w, tag = tag, w = w }
  if raw then
    local index, prev, cur = string.match(raw, '^(%d+) (%d+) (%d+)$')
    index = tonumber(index)
    if index == tag then
      win.prev, win.cur = tonumber(prev), tonumber(cur)
    elseif index == tag - 1 then
      win.prev = tonumber(cur)
    end
  end
  return win
end

local function window_reset(win, cur)
  if cur > 0 then
    return (win.w - win.elapsed) + win.w
  elseif win.prev > 0 then
    return win.w - win.elapsed
  end
  return 0
end

-- Microseconds until `c` fits, for a cost that does not fit now (and is at most the limit).
local function window_wait(win, limit, c)
  local w = win.w
  if win.cur + c <= limit then
    -- Later in this window, once enough of the previous one has slid out.
    local keep = idiv((limit - win.cur - c) * w, win.prev)
    return max((w - keep) - win.elapsed, 0)
  end
  -- In the next window, where the current count becomes the weighted previous one.
  local keep = min(idiv((limit - c) * w, win.cur), w)
  return (w - win.elapsed) + (w - keep)
end

-- Microseconds until one more whole token than `available` is there (0 when empty).
local function window_next(win, limit, available)
  if available >= limit then
    return 0
  end
  return window_wait(win, limit, available + 1)
end

local function window_check(p, win, c)
  local w, limit = win.w, p.burst
  local capacity = limit * w
  local estimate = win.prev * (w - win.elapsed) + win.cur * w
  local available = idiv(max(capacity - estimate, 0), w)
  if c > limit then
    return NEVER, nil, available, window_reset(win, win.cur), 0, window_next(win, limit, available)
  end
  local needed = estimate + c * w
  if needed <= capacity then
    local cur = win.cur + c
    local remaining = idiv(capacity - needed, w)
    local after = { prev = win.prev, cur = cur, elapsed = win.elapsed, tag = win.tag, w = w }
    return ADMIT, cur, remaining, window_reset(win, cur), 0, window_next(after, limit, remaining)
  end
  local retry = window_wait(win, limit, c)
  return DENY, nil, available, window_reset(win, win.cur), max(retry, 1), window_next(win, limit, available)
end

local function window_fraction(p, win)
  local capacity = p.burst * win.w
  local estimate = win.prev * (win.w - win.elapsed) + win.cur * win.w
  return max(capacity - estimate, 0), capacity
end

local function window_store(key, win, cur)
  local ttl = max(math.ceil(window_reset(win, cur) / 1000), 1)
  redis.call('SET', key, string.format('%.0f %d %d', win.tag, win.prev, cur), 'PX', ttl)
end

-- The decision ---------------------------------------------------------------------------

local policies = {}
local fraction = 1
local max_cost = nil
for i = 1, #KEYS do
  local p = {
    algorithm = tonumber(ARGV[3 + 3 * i - 2]),
    emission = tonumber(ARGV[3 + 3 * i - 1]),
    burst = tonumber(ARGV[3 + 3 * i]),
  }
  local raw = redis.call('GET', KEYS[i])
  local num, den
  if p.algorithm == 0 then
    p.state = gcra_load(raw)
    num, den = gcra_fraction(p, p.state)
  else
    p.state = window_load(p, raw)
    num, den = window_fraction(p, p.state)
  end
  p.num, p.den = num, den
  fraction = min(fraction, num / den)
  if max_cost == nil or p.burst < max_cost then
    max_cost = p.burst
  end
  policies[i] = p
end

local c = cost
if fraction < reduced_below then
  c = reduced_cost
end

local function check(p, cost_here)
  if p.algorithm == 0 then
    return gcra_check(p, p.state, cost_here)
  end
  return window_check(p, p.state, cost_here)
end

local outcome = 0
local charged = 0
local results = {}
if c == 0 or c > max_cost then
  -- Charges nothing: the standing (cost 0), or a cost no policy of the tier can ever hold;
  -- either way every policy reports its standing as it is.
  if c > 0 then
    outcome = 2
  end
  for i, p in ipairs(policies) do
    local _, _, remaining, reset_after, _, next_after = check(p, 0)
    results[i] = { remaining, reset_after, 0, next_after }
  end
else
  local verdicts = {}
  for i, p in ipairs(policies) do
    local verdict, new_state, remaining, reset_after, retry_after, next_after = check(p, c)
    verdicts[i] = { verdict, new_state }
    results[i] = { remaining, reset_after, retry_after, next_after }
    if verdict ~= ADMIT then
      outcome = 1
    end
  end
  if outcome == 1 then
    -- Refused, so nothing is charged: a policy that would have admitted reports its standing
    -- as it is, not as it would have been after the charge.
    for i, p in ipairs(policies) do
      if verdicts[i][1] == ADMIT then
        local _, _, remaining, reset_after, _, next_after = check(p, 0)
        results[i] = { remaining, reset_after, 0, next_after }
      end
    end
  end
  if outcome == 0 then
    -- Every policy admits: charge them all.
    charged = c
    for i, p in ipairs(policies) do
      if p.algorithm == 0 then
        gcra_store(KEYS[i], verdicts[i][2])
      else
        window_store(KEYS[i], p.state, verdicts[i][2])
      end
    end
  end
end

local reply = { outcome, tonumber(time[1]), tonumber(time[2]), charged }
for i, p in ipairs(policies) do
  local r = results[i]
  if outcome ~= 1 then
    r[3] = 0
  end
  reply[#reply + 1] = r[1]
  reply[#reply + 1] = r[2]
  reply[#reply + 1] = r[3]
  reply[#reply + 1] = r[4]
  reply[#reply + 1] = p.num
  reply[#reply + 1] = p.den
end
return reply
