-- tollgate: the limiting algorithms, shared by check.lua and settle.lua (each script is this
-- file followed by its own part).
--
-- The same arithmetic as src/algorithm/{gcra,sliding_window,sliding_log}.rs, in microseconds
-- instead of nanoseconds: Lua numbers are doubles, exact below 2^53 (about 285 years of
-- microseconds). Time is Redis' own (TIME), so instances with skewed clocks still share one
-- limit; Redis >= 5 replicates a script's effects, not the script, so reading the clock here is
-- allowed.
--
-- State, per policy key (a missing key, or one written by another algorithm, is a full bucket):
-- * GCRA: "<tat>" or "<tat> <slid>": the theoretical arrival time, and the last instant a
--   refund slid the bucket (see settle.lua). Expires when the bucket is full again.
-- * sliding window: "<window-index> <previous-count> <current-count>". Expires when nothing it
--   counts is inside the last window any more.
-- * sliding log: a sorted set, one member per token admitted inside the window, scored by the
--   instant it was admitted (or will be released, when held); members are "<instant>:<n>"
--   with n = 0, 1, 2... among the members of one instant. Expires when its newest member
--   leaves the window.

local floor = math.floor
local max = math.max
local min = math.min

local ADMIT, DENY, NEVER = 0, 1, 2
-- Furthest a settled cost may push a TAT ahead of now (2^62 ns, as the memory store).
local MAX_AHEAD = 4611686018427387

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

local function ttl_ms(micros)
  return max(math.ceil(micros / 1000), 1)
end

-- True when a state written at `at` (microseconds) belongs to an earlier life of policy `p`:
-- one a reload removed (at `p.gone`) before a later one added it back. Such a state is
-- forgotten, so the policy starts full.
local function before_gone(p, at)
  return (p.gone or 0) > 0 and at < p.gone
end

-- GCRA --------------------------------------------------------------------------------------

-- Requests a sliding-window state ({index, prev, cur} in windows of w) counts at `t`: the
-- current count and the previous window's requests still inside the last w.
local function counted(index, prev, cur, w, t)
  local tag = idiv(t, w)
  local e = t - tag * w
  if index == tag - 1 then
    prev, cur = cur, 0
  elseif index ~= tag then
    return 0
  end
  local still = 0
  if prev > 0 then
    still = prev - 1 - idiv(prev * e, w)
  end
  return cur + still
end

-- A GCRA state: "g <tat> <slid> <emission> <written at>"; the older "<tat>" and "<tat> <slid>"
-- are read as written under the caller's rule. Written under another rate, the tokens owed
-- carry over (the time owed, scaled to this rate, as of when this rule took over or the state
-- was written, whichever is later); a sliding window's count is charged now. Use is never
-- forgotten: more than this burst leaves nothing until it refills below it.
local function gcra_load(p, raw)
  p.tat, p.slid = 0, 0
  if not raw then
    return
  end
  local kind = string.sub(raw, 1, 1)
  if kind == 'g' then
    local tat, slid, e, at = string.match(raw, '^g (%d+) (%d+) (%d+) (%d+)$')
    tat, e, at = tonumber(tat), tonumber(e), tonumber(at)
    if not tat or before_gone(p, at) then
      return
    end
    p.slid = tonumber(slid)
    if e == p.emission then
      p.tat = tat
    else
      local from = min(max(at, p.changed or 0), now)
      if tat > from then
        p.tat = from + math.ceil((tat - from) / e * p.emission)
      end
    end
  elseif kind == 'w' then
    local index, prev, cur, w, at = string.match(raw, '^w (%d+) (%d+) (%d+) (%d+) ?(%d*)$')
    if index and not before_gone(p, tonumber(at) or (tonumber(index) + 1) * tonumber(w)) then
      local used = counted(tonumber(index), tonumber(prev), tonumber(cur), tonumber(w), now)
      if used > 0 then
        p.tat = now + used * p.emission
      end
    end
  else
    local tat, slid = string.match(raw, '^(%d+) ?(%d*)$')
    p.tat = tonumber(tat) or 0
    p.slid = tonumber(slid) or 0
  end
end

-- Whole tokens at `tat` seen from `horizon`, and the wait for one more (0 when full).
local function gcra_standing(p, tat, horizon)
  local t = p.emission
  if tat > horizon then
    return 0, tat - horizon + t
  end
  local room = horizon - tat
  local tokens = idiv(room, t)
  if tokens >= p.burst then
    return tokens, 0
  end
  return tokens, t - (room - tokens * t)
end

-- Decides cost `c` at `at` (>= now; now unless another policy makes the request wait),
-- reporting the standing at now. `max_wait`: how far ahead of `at` it may be reserved.
local function gcra_check(p, c, at, max_wait)
  local tat, t = p.tat, p.emission
  local tau = t * p.burst
  local base = max(tat, now)
  local horizon = now + tau
  if c > p.burst then
    local available, next = gcra_standing(p, base, horizon)
    return NEVER, nil, available, base - now, 0, next, 0
  end
  local new_tat = max(tat, at) + c * t
  local wait = max(new_tat - tau - now, at - now)
  if new_tat <= at + tau or (new_tat - tau - at) <= max_wait then
    local remaining, next = gcra_standing(p, new_tat, horizon)
    return ADMIT, new_tat, remaining, new_tat - now, 0, next, max(wait, 0)
  end
  local available, next = gcra_standing(p, base, horizon)
  return DENY, nil, available, base - now, max(new_tat - tau - now, 1), next, 0
end

local function gcra_fraction(p)
  local tau = p.emission * p.burst
  return tau - min(max(p.tat - now, 0), tau), tau
end

local function gcra_store(p, key, tat)
  -- Full again at the TAT; the last slide is kept while the key lives.
  -- With the rule it was written under, so that a reload converts it here, lazily.
  local value = string.format('g %.0f %.0f %.0f %.0f', tat, p.slid, p.emission, now)
  redis.call('SET', key, value, 'PX', ttl_ms(tat - now))
end

-- Sliding window -----------------------------------------------------------------------------
-- The counter of src/algorithm/sliding_window.rs: the previous window's requests count as
-- evenly spread from its start, so `prev - 1 - floor(prev * e / w)` of them are still inside
-- the last w; a request fits when that, the current count and its cost are at most the burst.

-- A sliding-window state: "w <index> <prev> <cur> <window length> <written at>" (without the
-- last, as earlier versions wrote it, it counts as written when its window ended); the older
-- "<index> <prev> <cur>" is read as written under the caller's window. Written under another
-- window or algorithm, what it counts now is counted in the current window.
local function window_load(p, raw)
  local w = p.emission * p.burst
  local tag = idiv(now, w)
  local win = { prev = 0, cur = 0, elapsed = now - tag * w, tag = tag, w = w }
  p.win = win
  if not raw then
    return
  end
  local index, prev, cur, length, at
  local kind = string.sub(raw, 1, 1)
  if kind == 'w' then
    index, prev, cur, length, at = string.match(raw, '^w (%d+) (%d+) (%d+) (%d+) ?(%d*)$')
    length, at = tonumber(length), tonumber(at)
  elseif kind == 'g' then
    local tat, e, at = string.match(raw, '^g (%d+) %d+ (%d+) (%d+)$')
    if tat and not before_gone(p, tonumber(at)) then
      win.cur = math.ceil(max(tonumber(tat) - now, 0) / tonumber(e))
    end
    return
  else
    index, prev, cur = string.match(raw, '^(%d+) (%d+) (%d+)$')
    length = w
  end
  index, prev, cur = tonumber(index), tonumber(prev), tonumber(cur)
  -- Written when it says, or at the latest when its window ended.
  if not index or before_gone(p, at or (index + 1) * length) then
    return
  end
  if length ~= w then
    win.cur = counted(index, prev, cur, length, now)
  elseif index >= tag then
    win.prev, win.cur = prev, cur
  elseif index == tag - 1 then
    win.prev = cur
  end
end

local function still_in(win, prev, e)
  if prev == 0 then
    return 0
  end
  return prev - 1 - idiv(prev * e, win.w)
end

-- The smallest offset into a window at which at most `room` of `prev` are still in.
local function offset_for(win, prev, room)
  local k = prev - 1 - room
  if k <= 0 then
    return 0
  end
  return idiv(k * win.w + prev - 1, prev)
end

local function window_used(win)
  return win.cur + still_in(win, win.prev, win.elapsed)
end

local function window_reset(win, cur)
  if cur > 0 then
    return (win.w - win.elapsed) + offset_for(win, cur, 0)
  end
  return max(offset_for(win, win.prev, 0) - win.elapsed, 0)
end

-- Microseconds until `c` fits, for a cost that does not fit now (and is at most the limit).
local function window_wait(win, limit, c)
  if win.cur + c <= limit then
    -- Later in this window, once enough of the previous one has slid out.
    return max(offset_for(win, win.prev, limit - win.cur - c) - win.elapsed, 0)
  end
  -- In the next window, where the current count becomes the previous one.
  return (win.w - win.elapsed) + offset_for(win, win.cur, limit - c)
end

-- Microseconds until one more whole token than `available` is there (0 when nothing is used).
local function window_next(win, limit, available)
  if available >= limit then
    return 0
  end
  return window_wait(win, limit, available + 1)
end

-- The counter cannot reserve ahead: it decides at now only (`at` > now refuses).
local function window_check(p, c, at)
  local win, limit = p.win, p.burst
  local available = max(limit - window_used(win), 0)
  if c > limit then
    return NEVER, nil, available, window_reset(win, win.cur), 0, window_next(win, limit, available), 0
  end
  if c <= available and at <= now then
    local cur = win.cur + c
    local remaining = available - c
    local after = { prev = win.prev, cur = cur, elapsed = win.elapsed, tag = win.tag, w = win.w }
    return ADMIT, cur, remaining, window_reset(win, cur), 0, window_next(after, limit, remaining), 0
  end
  local retry = max(at - now, 1)
  if c > available then
    retry = max(window_wait(win, limit, c), 1)
  end
  return DENY, nil, available, window_reset(win, win.cur), retry, window_next(win, limit, available), 0
end

local function window_fraction(p)
  return max(p.burst - window_used(p.win), 0), p.burst
end

-- The most a count holds: 2^bits(burst) - 1, as the memory store's packed state (a debt
-- from a settled cost above that is forgiven alike on both stores).
local function window_most(p)
  local m = 1
  while m <= p.burst do
    m = m * 2
  end
  return m - 1
end

local function window_store(p, key, cur)
  local win = p.win
  local value = string.format('w %.0f %d %d %.0f %.0f', win.tag, win.prev, cur, win.w, now)
  redis.call('SET', key, value, 'PX', ttl_ms(window_reset(win, cur)))
end

-- Sliding log --------------------------------------------------------------------------------
-- The exact window of src/algorithm/sliding_log.rs over a sorted set: a request fits at `at`
-- when the tokens inside (at - w, at], plus its own, are at most the burst. Held requests are
-- entered at their release instant, never before the newest member, so members stay in order.

local function log_load(p, key)
  p.key = key
  p.w = p.emission * p.burst
  -- Members at or before now - w have left the window. A key another algorithm wrote (a
  -- reload changed the policy's algorithm) is dropped: a full quota.
  -- Entries of an earlier life of the policy (see before_gone) are dropped too.
  local older = max(now - p.w, (p.gone or 0) - 1)
  if not pcall(redis.call, 'ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', older)) then
    redis.call('DEL', key)
  end
  p.total = redis.call('ZCARD', key)
  -- The newest entry's instant, and the back of the queue (never before now).
  p.last = nil
  p.newest = now
  if p.total > 0 then
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    p.last = tonumber(last[2])
    p.newest = max(p.last, now)
  end
end

-- The instant of the k-th oldest token (k from 1).
local function log_nth(p, k)
  local entry = redis.call('ZRANGE', p.key, k - 1, k - 1, 'WITHSCORES')
  return tonumber(entry[2])
end

-- The earliest instant from which `c` fits: once the oldest `total + c - burst` tokens left.
local function log_earliest(p, c)
  local excess = p.total + c - p.burst
  if excess <= 0 then
    return p.newest
  end
  return max(p.newest, log_nth(p, excess) + p.w)
end

-- Whole tokens available now, the wait for more (0 when all are), and the wait until all are.
local function log_standing(p)
  local available = max(p.burst - p.total, 0)
  if available >= p.burst then
    return available, 0, 0
  end
  local next = log_nth(p, p.total - p.burst + available + 1) + p.w - now
  return available, next, p.last + p.w - now
end

-- Enters `n` tokens at `at`.
local function log_add(p, at, n)
  if n <= 0 then
    return
  end
  local score = string.format('%.0f', at)
  local first = redis.call('ZCOUNT', p.key, score, score)
  local args = {}
  for i = 0, n - 1 do
    args[#args + 1] = score
    args[#args + 1] = string.format('%s:%010d', score, first + i)
    if #args >= 2000 or i == n - 1 then
      redis.call('ZADD', p.key, unpack(args))
      args = {}
    end
  end
  p.total = p.total + n
  p.newest = max(p.newest, at)
  p.last = max(p.last or at, at)
  redis.call('PEXPIRE', p.key, ttl_ms(p.last + p.w - now))
end

local function log_check(p, c, at, max_wait)
  if c > p.burst then
    local available, next, reset = log_standing(p)
    return NEVER, nil, available, reset, 0, next, 0
  end
  local fits = max(log_earliest(p, c), at)
  local wait = fits - now
  if wait > 0 and fits - at > max_wait then
    local available, next, reset = log_standing(p)
    return DENY, nil, available, reset, wait, next, 0
  end
  return ADMIT, fits, nil, nil, 0, nil, wait
end

local function log_fraction(p)
  return max(p.burst - p.total, 0), p.burst
end

-- Dispatch -----------------------------------------------------------------------------------

-- A string key, or nothing when the key holds another type (a sliding log's set, before a
-- reload changed the algorithm): SET overwrites it.
local function get(key)
  local ok, raw = pcall(redis.call, 'GET', key)
  if ok and raw then
    return raw
  end
  return nil
end

local function load(p, key)
  if p.algorithm == 0 then
    gcra_load(p, get(key))
  elseif p.algorithm == 1 then
    window_load(p, get(key))
  else
    log_load(p, key)
  end
end

local function fraction_of(p)
  if p.algorithm == 0 then
    return gcra_fraction(p)
  elseif p.algorithm == 1 then
    return window_fraction(p)
  end
  return log_fraction(p)
end

-- verdict, new state, remaining, reset_after, retry_after, next_after, wait. A sliding log's
-- admission leaves its standing to be read once it is charged (log_standing).
local function check(p, c, at, max_wait)
  if p.algorithm == 0 then
    return gcra_check(p, c, at, max_wait)
  elseif p.algorithm == 1 then
    return window_check(p, c, at)
  end
  return log_check(p, c, at, max_wait)
end

-- The standing now, charging nothing.
local function standing(p)
  if p.algorithm == 2 then
    local available, next, reset = log_standing(p)
    return available, reset, next
  end
  local _, _, remaining, reset_after, _, next_after = check(p, 0, now, 0)
  return remaining, reset_after, next_after
end
