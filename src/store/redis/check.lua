-- tollgate: check and charge every policy of a client's tier, atomically, in one round trip
-- (follows algorithms.lua).
--
-- KEYS[i]  the state of policy i for one client. Every key carries the same {hash tag}, so a
--          client's policies live in one Cluster slot.
-- ARGV[1]  cost;  ARGV[2] reduced_below (a fraction);  ARGV[3] reduced_cost;
-- ARGV[4]  max_wait: how long the request may be held for its tokens (microseconds; 0: never)
-- ARGV[4 + 4i - 3 .. 4 + 4i]  policy i: algorithm (0 = GCRA, 1 = sliding window,
--          2 = sliding log), emission interval (microseconds per token), burst, and when the
--          policy took this rule (microseconds since the epoch; 0 = as built): a state written
--          under another rule is converted as of then (see algorithms.lua)
-- ARGV[5 + 4n] = 'gone', then ARGV[5 + 4n + i]  (optional, n = #KEYS) when a reload removed
--          policy i and a later one added it back: when it was removed (microseconds since
--          the epoch; 0 = never). A state written before then is forgotten: the policy starts
--          full. Absent when no policy was ever removed.
--
-- All policies are charged or none, at one instant: now, or (a held request) the instant its
-- tokens exist in every policy, at most max_wait ahead.
--
-- Returns integers: outcome (0 admitted, 1 rejected, 2 exceeds), now (seconds, microseconds),
-- tokens charged, the wait before release (microseconds), then per policy: remaining,
-- reset_after, retry_after, next_after (microseconds until one more whole token; 0 when full),
-- the fraction of the burst left before the charge as numerator and denominator, and the
-- receipt (what settle.lua needs: the new TAT, the window index, or the log instant).

local cost = tonumber(ARGV[1])
local reduced_below = tonumber(ARGV[2])
local reduced_cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])

local gone = {}
if ARGV[5 + 4 * #KEYS] == 'gone' then
  for i = 1, #KEYS do
    gone[i] = tonumber(ARGV[5 + 4 * #KEYS + i])
  end
end

local policies = {}
local fraction = 1
local max_cost = nil
for i = 1, #KEYS do
  local p = {
    algorithm = tonumber(ARGV[4 + 4 * i - 3]),
    emission = tonumber(ARGV[4 + 4 * i - 2]),
    burst = tonumber(ARGV[4 + 4 * i - 1]),
    changed = tonumber(ARGV[4 + 4 * i]),
    gone = gone[i] or 0,
  }
  load(p, KEYS[i])
  p.num, p.den = fraction_of(p)
  fraction = min(fraction, p.num / p.den)
  if max_cost == nil or p.burst < max_cost then
    max_cost = p.burst
  end
  policies[i] = p
end

local c = cost
if fraction < reduced_below then
  c = reduced_cost
end

local outcome = 0
local charged = 0
local wait = 0
local results = {}

local function report_standing(i, p)
  local remaining, reset_after, next_after = standing(p)
  results[i] = { remaining, reset_after, 0, next_after, 0 }
end

if c == 0 or c > max_cost then
  -- Charges nothing: the standing (cost 0), or a cost no policy of the tier can ever hold;
  -- either way every policy reports its standing as it is.
  if c > 0 then
    outcome = 2
  end
  for i, p in ipairs(policies) do
    report_standing(i, p)
  end
else
  -- Each policy's own earliest instant; all are charged at the latest of them.
  local verdicts = {}
  local at = now
  for i, p in ipairs(policies) do
    local verdict, state, remaining, reset_after, retry_after, next_after, w = check(p, c, now, max_wait)
    verdicts[i] = { verdict, state }
    results[i] = { remaining, reset_after, retry_after, next_after, 0 }
    if verdict ~= ADMIT then
      outcome = 1
    else
      at = max(at, now + w)
    end
  end
  if outcome == 0 and #policies > 1 and at > now then
    -- Held: charge every policy as if the request arrived at `at`.
    for i, p in ipairs(policies) do
      local verdict, state, remaining, reset_after, retry_after, next_after = check(p, c, at, 0)
      verdicts[i] = { verdict, state }
      results[i] = { remaining, reset_after, retry_after, next_after, 0 }
      if verdict ~= ADMIT then
        outcome = 1
      end
    end
  end
  if outcome == 1 then
    -- Refused, so nothing is charged: a policy that would have admitted reports its standing
    -- as it is, not as it would have been after the charge.
    for i, p in ipairs(policies) do
      if verdicts[i][1] == ADMIT then
        report_standing(i, p)
      end
    end
  else
    -- Every policy admits: charge them all.
    charged = c
    wait = at - now
    for i, p in ipairs(policies) do
      local state = verdicts[i][2]
      if p.algorithm == 0 then
        gcra_store(p, KEYS[i], state)
        results[i][5] = state
      elseif p.algorithm == 1 then
        window_store(p, KEYS[i], state)
        results[i][5] = p.win.tag
      else
        log_add(p, state, c)
        local remaining, next, reset = log_standing(p)
        results[i] = { remaining, reset, 0, next, state }
      end
    end
  end
end

local reply = { outcome, tonumber(time[1]), tonumber(time[2]), charged, wait }
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
  reply[#reply + 1] = r[5]
end
return reply
