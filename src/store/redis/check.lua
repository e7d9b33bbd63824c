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
-- ARGV[3 + 4i - 3 .. 3 + 4i]  policy i: algorithm (0 = GCRA, 1 = sliding window),
--          emission interval (microseconds per token), burst, and when the policy took this
--          rule (microseconds since the epoch; 0 = as built), for states written under another
--
-- State, with the rule it was written under, so that a reload (another rate, burst, window or
-- algorithm) carries each client's tokens used over lazily, here, key by key:
--   GCRA            "g <tat> <emission> <written at>"   (tat: theoretical arrival time, µs)
--   sliding window  "w <window index> <previous count> <current count> <window length>"
-- Older forms without the rule ("<tat>", "<index> <previous> <current>") are read as written
-- under the caller's rule. A missing key is a full bucket. Only an admitted request writes,
-- under the caller's rule; each written key expires when its bucket is full again.
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

-- Stored states ------------------------------------------------------------------------------

-- The form of a stored state ('g', 'w', or 'G' / 'W' for the older forms) and its numbers.
local function parse(raw)
  if not raw then
    return nil, nil
  end
  local f = {}
  for n in string.gmatch(raw, '%d+') do
    f[#f + 1] = tonumber(n)
  end
  local kind = string.sub(raw, 1, 1)
  if (kind == 'g' and #f == 3) or (kind == 'w' and #f == 4) then
    return kind, f
  elseif #f == 1 then
    return 'G', f
  elseif #f == 3 then
    return 'W', f
  end
  return nil, nil
end

-- Requests a sliding-window state {index, previous, current, window} counts at `t`.
local function window_used(f, t)
  local index, prev, cur, w = f[1], f[2], f[3], f[4]
  local tag = idiv(t, w)
  local elapsed = t - tag * w
  if index == tag then
    return prev * (w - elapsed) / w + cur
  elseif index == tag - 1 then
    return cur * (w - elapsed) / w
  end
  return 0
end

-- GCRA --------------------------------------------------------------------------------------

-- The TAT of policy p from a stored state: the tokens used carry over from the rule it was
-- written under, as of when p's rule took over (or when it was written, if later). Use is
-- never forgotten: more than p's burst leaves nothing until it refills below it.
local function gcra_load(p, kind, f)
  if kind == 'G' then
    return f[1]
  elseif kind == 'g' then
    local tat, e, at = f[1], f[2], f[3]
    local from = min(max(at, p.changed), now)
    if tat <= from then
      return 0
    end
    if e == p.emission then
      return tat
    end
    return from + math.ceil((tat - from) / e * p.emission)
  elseif kind == 'w' then
    local used = math.ceil(window_used(f, now))
    if used <= 0 then
      return 0
    end
    return now + used * p.emission
  end
  return 0
end

-- Whole tokens at `tat`, and the wait for the next one (0 when full).
local function gcra_standing(p, tat, horizon)
  local t = p.emission
  if tat > horizon then
    -- More used than this burst holds (a reload lowered it): nothing left until it refills.
    return 0, tat - horizon + t
  end
  local room = horizon - tat
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

local function gcra_store(key, p, tat)
  -- Full again at the new TAT.
  local ttl = max(math.ceil((tat - now) / 1000), 1)
  redis.call('SET', key, string.format('g %.0f %.0f %.0f', tat, p.emission, now), 'PX', ttl)
end

-- Sliding window -----------------------------------------------------------------------------

local function window_load(p, kind, f)
  local w = p.emission * p.burst
  local tag = idiv(now, w)
  local win = { prev = 0, cur = 0, elapsed = now - tag * w, tag = tag, w = w }
  if kind == 'W' or (kind == 'w' and f[4] == w) then
    local index, prev, cur = f[1], f[2], f[3]
    if index == tag then
      win.prev, win.cur = prev, cur
    elseif index == tag - 1 then
      win.prev = cur
    end
  elseif kind == 'w' or kind == 'g' then
    -- Written under another window or algorithm: the requests it counts now are counted in
    -- this window.
    local used
    if kind == 'w' then
      used = window_used(f, now)
    else
      used = max(f[1] - now, 0) / f[2]
    end
    win.cur = min(math.ceil(used), 1048575)
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
  redis.call('SET', key, string.format('w %.0f %d %d %.0f', win.tag, win.prev, cur, win.w), 'PX', ttl)
end

-- The decision ---------------------------------------------------------------------------

local policies = {}
local fraction = 1
local max_cost = nil
for i = 1, #KEYS do
  local p = {
    algorithm = tonumber(ARGV[3 + 4 * i - 3]),
    emission = tonumber(ARGV[3 + 4 * i - 2]),
    burst = tonumber(ARGV[3 + 4 * i - 1]),
    changed = tonumber(ARGV[3 + 4 * i]),
  }
  local kind, f = parse(redis.call('GET', KEYS[i]))
  local num, den
  if p.algorithm == 0 then
    p.state = gcra_load(p, kind, f)
    num, den = gcra_fraction(p, p.state)
  else
    p.state = window_load(p, kind, f)
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
        gcra_store(KEYS[i], p, verdicts[i][2])
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
