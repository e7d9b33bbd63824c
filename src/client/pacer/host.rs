//! One host's queue and what the client knows of the host's limits. No I/O, no clock reads:
//! every method takes `now`, so the arithmetic is tested with made-up instants.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::Config;
use crate::client::{Quota, RateLimitSignal};

/// The furthest ahead a mirror may schedule (twice the longest wait a header can name).
const HORIZON: Duration = RateLimitSignal::MAX_WAIT.saturating_mul(2);

/// After a refusal that no published quota explains, requests go one at a time for this many
/// times the refusal's wait (counted from the refusal, extended by each new one).
const SERIAL_HOLDS: u32 = 2;

/// A request waiting for its turn; the queue is ordered by `id` (a retried request keeps the
/// id of its first attempt, so it goes before requests that arrived after it).
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) id: u64,
    waker: Option<Waker>,
}

/// When the head of the queue may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Turn {
    Now,
    /// Not before `until`. `certain` when the wait is known (a hold, a mirror); a wait for a
    /// probe's answer may end sooner.
    Wait {
        until: Instant,
        certain: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing known: the next release is a probe.
    Unknown,
    /// Release `seq` is a probe; the others wait for its answer until `until`.
    Probing { seq: u64, until: Instant },
    /// The mirrors (possibly none: the host publishes nothing) say when to go.
    Known,
}

/// A published rate (`w / q`) mirrored as GCRA: `tat` is the time at which the server's bucket
/// would be full, `tolerance` = (q − 1) × interval is how far ahead of now it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rate {
    tat: Instant,
    interval: Duration,
    tolerance: Duration,
}

impl Rate {
    /// From a quota with a known interval, seen at `now`, with `uncounted` releases sent after
    /// the answered request (the server had not seen them yet).
    fn mirror(quota: &Quota, now: Instant, uncounted: u64) -> Option<Self> {
        let interval = quota.interval()?;
        let burst = quota.get_limit()?;
        // `remaining` whole units now and the next one `reset` away (at most one interval: a
        // longer reset is a fixed window, whose wait the `Window` mirror keeps):
        // the bucket is full (q − r − 1) intervals plus that first wait from now.
        let first = quota.reset().min(interval);
        let units = i128::from(burst) - 1 - i128::from(quota.remaining()) + i128::from(uncounted);
        // interval < 2⁴⁷ ns (a day) and |units| < 2⁶⁶: the product fits an i128.
        let offset = units * interval.as_nanos() as i128 + first.as_nanos() as i128;
        let tat = if offset <= 0 { now } else { now + nanos(offset.unsigned_abs()) };
        let tolerance = nanos(u128::from(burst - 1) * interval.as_nanos());
        Some(Self { tat, interval, tolerance })
    }

    fn next(&self, now: Instant) -> Instant {
        self.tat.checked_sub(self.tolerance).map_or(now, |at| at.max(now))
    }

    fn release(&mut self, now: Instant) {
        self.tat = self.tat.max(now) + self.interval;
    }
}

/// What remains until the quota comes back: `permits` now (spread by `spacing` when few remain
/// and the rate is unknown), then nothing until `reset_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    permits: u64,
    next: Instant,
    spacing: Duration,
    reset_at: Instant,
}

impl Window {
    fn mirror(quota: &Quota, now: Instant, uncounted: u64, spread_below: u64) -> Self {
        let permits = quota.remaining().saturating_sub(uncounted);
        let spacing = if permits > 0 && permits < spread_below {
            quota.reset() / u32::try_from(permits + 1).unwrap_or(u32::MAX)
        } else {
            Duration::ZERO
        };
        Self { permits, next: now + spacing, spacing, reset_at: now + quota.reset() }
    }

    fn next(&self, now: Instant) -> Instant {
        if self.permits == 0 {
            self.reset_at
        } else {
            self.next.max(now)
        }
    }

    fn release(&mut self, now: Instant) {
        self.permits = self.permits.saturating_sub(1);
        self.next = now + self.spacing;
    }

    /// Spent, and past its reset: it says nothing about the new window.
    fn is_over(&self, now: Instant) -> bool {
        self.permits == 0 && now >= self.reset_at
    }
}

/// Spread the last few only when the quota publishes no rate.
fn spread_below(quota: &Quota, config: &Config) -> u64 {
    if quota.interval().is_some() {
        0
    } else {
        config.spread_below
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX)).min(HORIZON)
}

/// One host: its queue of waiters and the client's picture of its limits.
#[derive(Debug)]
pub(super) struct Host {
    pub(super) queue: VecDeque<Waiter>,
    in_flight: u64,
    /// Releases so far; the n-th release has sequence number n.
    released: u64,
    /// Sequence number of the newest release whose answer was applied.
    applied: u64,
    phase: Phase,
    /// A refusal's wait: nobody goes before this.
    hold_until: Option<Instant>,
    /// After a refusal that no published quota explains (a "secondary" limit, on concurrency
    /// or abuse): one request in flight at a time until then.
    serial_until: Option<Instant>,
    rates: Vec<Rate>,
    windows: Vec<Window>,
    pub(super) touched: Instant,
}

impl Host {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            in_flight: 0,
            released: 0,
            applied: 0,
            phase: Phase::Unknown,
            hold_until: None,
            serial_until: None,
            rates: Vec::new(),
            windows: Vec::new(),
            touched: now,
        }
    }

    /// No waiter and nothing in flight: the entry may be evicted.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight == 0
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Queues `id` in order.
    pub(super) fn enqueue(&mut self, id: u64) {
        let at = self.queue.partition_point(|w| w.id < id);
        self.queue.insert(at, Waiter { id, waker: None });
    }

    pub(super) fn is_head(&self, id: u64) -> bool {
        self.queue.front().is_some_and(|w| w.id == id)
    }

    /// Stores the waker of waiter `id`.
    pub(super) fn park(&mut self, id: u64, waker: &Waker) {
        let at = self.queue.partition_point(|w| w.id < id);
        if let Some(waiter) = self.queue.get_mut(at).filter(|w| w.id == id) {
            match &mut waiter.waker {
                Some(old) if old.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
        }
    }

    /// Takes `id` out of the queue (dropped, or past its deadline). Returns the waker of the new
    /// head when `id` was the head, to be woken once the lock is released.
    #[must_use]
    pub(super) fn remove(&mut self, id: u64) -> Option<Waker> {
        let at = self.queue.partition_point(|w| w.id < id);
        if self.queue.get(at).is_some_and(|w| w.id == id) {
            self.queue.remove(at);
            if at == 0 {
                return self.head_waker();
            }
        }
        None
    }

    /// The head's waker, to wake once the lock is released: its turn may have changed.
    #[must_use]
    pub(super) fn head_waker(&mut self) -> Option<Waker> {
        self.queue.front_mut().and_then(|w| w.waker.take())
    }

    /// Forgets what was known: the next release probes again.
    fn forget(&mut self) {
        self.phase = Phase::Unknown;
        self.windows.clear();
    }

    /// When the head may go, applying what the passing of time changes.
    pub(super) fn turn(&mut self, now: Instant) -> Turn {
        if let Some(until) = self.hold_until {
            if now < until {
                return Turn::Wait { until, certain: true };
            }
            self.hold_until = None;
            if self.rates.is_empty() {
                self.forget();
            }
        }
        let windows = self.windows.len();
        self.windows.retain(|w| !w.is_over(now));
        if self.windows.len() < windows && self.rates.is_empty() {
            self.forget();
        }
        match self.phase {
            Phase::Unknown => return Turn::Now,
            Phase::Probing { until, .. } if now < until => return Turn::Wait { until, certain: false },
            Phase::Probing { .. } => self.phase = Phase::Known,
            Phase::Known => {}
        }
        match self.serial_until {
            Some(until) if now < until && self.in_flight > 0 => return Turn::Wait { until, certain: false },
            Some(until) if now >= until => self.serial_until = None,
            _ => {}
        }
        let rates = self.rates.iter().map(|r| r.next(now));
        match rates.chain(self.windows.iter().map(|w| w.next(now))).max() {
            Some(until) if until > now => Turn::Wait { until, certain: true },
            _ => Turn::Now,
        }
    }

    /// The head goes (after `turn` said `Now`); returns the release's sequence number.
    pub(super) fn release(&mut self, now: Instant, config: &Config) -> u64 {
        self.released += 1;
        self.in_flight += 1;
        self.touched = now;
        let seq = self.released;
        if self.phase == Phase::Unknown {
            self.phase = Phase::Probing { seq, until: now + config.probe_timeout };
        }
        for rate in &mut self.rates {
            rate.release(now);
        }
        for window in &mut self.windows {
            window.release(now);
        }
        seq
    }

    /// The answer to release `seq`: what it says of the quotas, and the refusal's wait, if any.
    pub(super) fn answer(
        &mut self,
        seq: u64,
        now: Instant,
        quotas: &[Quota],
        hold: Option<Duration>,
        config: &Config,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.touched = now;
        if let Some(hold) = hold.filter(|h| !h.is_zero()) {
            let hold = hold.min(HORIZON);
            let until = now + hold;
            self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
            if !quotas.iter().any(Quota::is_exhausted) {
                // Refused with quota left (or none published): a limit on concurrency, such as
                // GitHub's secondary one, whose advice is to send one request at a time.
                let until = now + hold.saturating_mul(SERIAL_HOLDS);
                self.serial_until = Some(self.serial_until.map_or(until, |s| s.max(until)));
            }
        }
        // Every other request in flight may be one the server had not counted when it answered
        // this one: those sent after it, and, as connections reorder requests, some sent before.
        let uncounted = self.in_flight;
        if seq <= self.applied {
            // Older than an answer already applied: it may only tighten the pace (a server
            // that took the requests in another order than they were sent), never loosen it.
            if !quotas.is_empty() {
                self.tighten(quotas, now, uncounted, config);
            }
            return;
        }
        if quotas.is_empty() {
            if self.phase != Phase::Known {
                // The probe's answer publishes nothing: no pace to keep.
                self.applied = seq;
                self.phase = Phase::Known;
                self.windows.clear();
            }
            return;
        }
        self.applied = seq;
        self.rates = quotas.iter().filter_map(|q| Rate::mirror(q, now, uncounted)).collect();
        self.windows =
            quotas.iter().map(|q| Window::mirror(q, now, uncounted, spread_below(q, config))).collect();
        self.phase = Phase::Known;
    }

    /// Merges an older answer: fewer permits, later resets and fuller buckets win.
    fn tighten(&mut self, quotas: &[Quota], now: Instant, uncounted: u64, config: &Config) {
        let rates: Vec<Rate> = quotas.iter().filter_map(|q| Rate::mirror(q, now, uncounted)).collect();
        if rates.len() == self.rates.len() {
            for (current, older) in self.rates.iter_mut().zip(rates) {
                current.tat = current.tat.max(older.tat);
            }
        }
        if quotas.len() == self.windows.len() {
            for (current, quota) in self.windows.iter_mut().zip(quotas) {
                let older = Window::mirror(quota, now, uncounted, spread_below(quota, config));
                if older.permits < current.permits {
                    *current = Window { reset_at: current.reset_at.max(older.reset_at), ..older };
                }
            }
        }
    }

    /// Release `seq` ended without an answer (an error, or the caller gave up).
    pub(super) fn abandon(&mut self, seq: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if matches!(self.phase, Phase::Probing { seq: probe, .. } if probe == seq) {
            self.phase = Phase::Unknown;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config { max_hosts: 8, max_queue: 8, spread_below: 2, probe_timeout: Duration::from_secs(2) }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Releases the head as soon as it may go, starting at `now`; returns the release time.
    fn go(host: &mut Host, now: &mut Instant) -> u64 {
        if let Turn::Wait { until, .. } = host.turn(*now) {
            *now = until;
            assert_eq!(host.turn(*now), Turn::Now, "a wait ends at its instant");
        }
        host.release(*now, &config())
    }

    /// `RateLimit: "p";r=R;t=T` with `RateLimit-Policy: "p";q=5;w=3`: 5 per 3 s.
    fn five_per_three(remaining: u64, reset: Duration) -> Quota {
        Quota::new(remaining, reset).limit(5).window(secs(3))
    }

    #[test]
    fn first_contact_is_one_probe_then_the_answer_decides() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        assert_eq!(host.turn(t0), Turn::Now);
        let probe = host.release(t0, &config());
        // The others wait for the probe's answer, at most the probe timeout.
        assert_eq!(host.turn(t0), Turn::Wait { until: t0 + secs(2), certain: false });
        // The answer: 4 of 5 left, next unit in 1 s (600 ms rounded up).
        host.answer(probe, t0 + ms(20), &[five_per_three(4, secs(1))], None, &config());
        let mut now = t0 + ms(20);
        let mut at = Vec::new();
        for _ in 0..8 {
            go(&mut host, &mut now);
            at.push((now - t0).as_millis());
        }
        // Four at once (what remains); the fifth when the (rounded up) reset says, then one per
        // 600 ms: the server's tokens come at 600, 1200, 1800 and 2400 ms.
        assert_eq!(at, [20, 20, 20, 20, 1020, 1220, 1820, 2420]);
    }

    #[test]
    fn a_probe_that_publishes_nothing_opens_the_host() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[], None, &config());
        for _ in 0..10 {
            assert_eq!(host.turn(t0), Turn::Now);
            host.release(t0, &config());
        }
    }

    #[test]
    fn a_probe_timing_out_or_failing() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        assert_eq!(host.turn(t0 + secs(2)), Turn::Now, "the probe timed out: go");
        let mut host = Host::new(t0);
        let probe_two = host.release(t0, &config());
        host.abandon(probe_two);
        assert_eq!(host.turn(t0), Turn::Now, "the probe failed: the next one probes");
        host.release(t0, &config());
        assert!(matches!(host.turn(t0), Turn::Wait { certain: false, .. }));
        let _ = probe;
    }

    #[test]
    fn uncounted_releases_are_subtracted_and_stale_answers_ignored() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[Quota::new(3, secs(10))], None, &config());
        // Three releases go at once; the answer to the first says 2 left (it counted only itself).
        let seqs: Vec<u64> = (0..3)
            .map(|_| {
                assert_eq!(host.turn(t0), Turn::Now);
                host.release(t0, &config())
            })
            .collect();
        host.answer(seqs[0], t0, &[Quota::new(2, secs(10))], None, &config());
        // 2 − 2 still in flight = 0: wait for the reset.
        assert_eq!(host.turn(t0), Turn::Wait { until: t0 + secs(10), certain: true });
        // An older answer that would loosen the pace changes nothing.
        host.answer(probe, t0, &[Quota::new(50, secs(1))], None, &config());
        assert_eq!(host.turn(t0), Turn::Wait { until: t0 + secs(10), certain: true });
        // Past the reset of a window with no published rate: probe again.
        assert_eq!(host.turn(t0 + secs(10)), Turn::Now);
        host.release(t0 + secs(10), &config());
        assert!(matches!(host.turn(t0 + secs(10)), Turn::Wait { certain: false, .. }));
    }

    #[test]
    fn answers_in_another_order_than_the_releases_only_tighten() {
        // Three released at once; the server takes the third first.
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[Quota::new(6, secs(10))], None, &config());
        let seqs: Vec<u64> = (0..3).map(|_| host.release(t0, &config())).collect();
        // The third's answer: 5 left (it alone was counted); two others are still in flight.
        host.answer(seqs[2], t0, &[Quota::new(5, secs(10))], None, &config());
        let permits = |host: &Host| host.windows[0].permits;
        assert_eq!(permits(&host), 3);
        // The first's answer, older by sequence, says 4 left with one still in flight: tighter.
        host.answer(seqs[0], t0, &[Quota::new(4, secs(10))], None, &config());
        assert_eq!(permits(&host), 3);
        host.answer(seqs[1], t0, &[Quota::new(0, secs(10))], None, &config());
        assert_eq!(permits(&host), 0, "an older answer that tightens is taken");
        assert_eq!(host.turn(t0), Turn::Wait { until: t0 + secs(10), certain: true });
    }

    #[test]
    fn few_left_without_a_rate_are_spread() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[Quota::new(1, secs(6))], None, &config());
        assert_eq!(host.turn(t0), Turn::Wait { until: t0 + secs(3), certain: true });
        host.release(t0 + secs(3), &config());
        assert_eq!(host.turn(t0 + secs(3)), Turn::Wait { until: t0 + secs(6), certain: true });
    }

    #[test]
    fn a_fixed_window_with_a_policy_spends_what_remains_then_waits_for_the_window() {
        // express-rate-limit: 5 per 3 s fixed window, 4 left, the window ends in 3 s.
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[five_per_three(4, secs(3))], None, &config());
        let mut now = t0;
        let at: Vec<u128> = (0..6)
            .map(|_| {
                go(&mut host, &mut now);
                (now - t0).as_millis()
            })
            .collect();
        // Four now, then nothing before the window ends, then the rate's pace.
        assert_eq!(at, [0, 0, 0, 0, 3000, 3000]);
        // The new window's five, then the pace (answers from the server would stop it at the
        // window's end before then).
        let at: Vec<u128> = (0..4)
            .map(|_| {
                go(&mut host, &mut now);
                (now - t0).as_millis()
            })
            .collect();
        assert_eq!(at, [3000, 3000, 3000, 3600]);
    }

    #[test]
    fn a_hold_stops_everyone_and_then_probes_unless_a_rate_is_known() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[], Some(secs(5)), &config());
        assert_eq!(host.turn(t0 + secs(1)), Turn::Wait { until: t0 + secs(5), certain: true });
        // A later, shorter hold does not shorten it.
        let seq = host.release(t0, &config());
        host.answer(seq, t0 + secs(1), &[], Some(secs(1)), &config());
        assert_eq!(host.turn(t0 + secs(2)), Turn::Wait { until: t0 + secs(5), certain: true });
        assert_eq!(host.turn(t0 + secs(5)), Turn::Now);
        host.release(t0 + secs(5), &config());
        assert!(matches!(host.turn(t0 + secs(5)), Turn::Wait { certain: false, .. }), "probing");

        // With a published rate, the rate paces after the hold.
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[five_per_three(0, secs(1))], Some(secs(1)), &config());
        let mut now = t0;
        let at: Vec<u128> = (0..3)
            .map(|_| {
                go(&mut host, &mut now);
                (now - t0).as_millis()
            })
            .collect();
        // The server's tokens come at 600, 1200 and 1800 ms; the hold kept the first to 1 s.
        assert_eq!(at, [1000, 1200, 1800]);
    }

    #[test]
    fn a_refusal_no_quota_explains_makes_requests_go_one_at_a_time() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        // 403 + Retry-After: 2 and quota left: a secondary limit.
        host.answer(probe, t0, &[Quota::new(4000, secs(3000))], Some(secs(2)), &config());
        assert_eq!(host.turn(t0 + secs(2)), Turn::Now);
        let one = host.release(t0 + secs(2), &config());
        // One in flight: the next waits for its answer (at most until 4 s after the refusal).
        assert_eq!(host.turn(t0 + secs(2)), Turn::Wait { until: t0 + secs(4), certain: false });
        host.answer(one, t0 + secs(2), &[Quota::new(3999, secs(2998))], None, &config());
        assert_eq!(host.turn(t0 + secs(2)), Turn::Now);
        let two = host.release(t0 + secs(2), &config());
        // Past the serial period, concurrency is back.
        assert_eq!(host.turn(t0 + secs(4)), Turn::Now);
        host.abandon(two);

        // A refusal that an exhausted quota explains (a primary limit) does not serialize.
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        host.answer(probe, t0, &[Quota::new(0, secs(1))], Some(secs(1)), &config());
        assert_eq!(host.turn(t0 + secs(1)), Turn::Now);
        host.release(t0 + secs(1), &config());
        assert!(matches!(host.turn(t0 + secs(1)), Turn::Wait { certain: false, .. }), "only the probe");
    }

    #[test]
    fn the_queue_is_ordered_and_removal_wakes_the_next_head() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        for id in [5, 2, 9, 7] {
            host.enqueue(id);
        }
        let ids: Vec<u64> = host.queue.iter().map(|w| w.id).collect();
        assert_eq!(ids, [2, 5, 7, 9]);
        assert!(host.is_head(2));
        assert!(host.remove(5).is_none());
        assert!(host.remove(42).is_none());
        assert!(host.is_head(2));
        let _ = host.remove(2);
        assert!(host.is_head(7));
        assert!(!host.is_idle());
    }

    #[test]
    fn hostile_numbers_stay_within_the_horizon() {
        let t0 = Instant::now();
        let mut host = Host::new(t0);
        let probe = host.release(t0, &config());
        let quota =
            Quota::new(0, RateLimitSignal::MAX_WAIT).limit(u64::MAX).window(RateLimitSignal::MAX_WAIT);
        host.answer(probe, t0, &[quota], None, &config());
        match host.turn(t0) {
            Turn::Now => {}
            Turn::Wait { until, .. } => assert!(until <= t0 + HORIZON),
        }
        let quota = Quota::new(0, RateLimitSignal::MAX_WAIT).limit(1).window(RateLimitSignal::MAX_WAIT);
        let seq = host.release(t0, &config());
        host.answer(seq, t0, &[quota], Some(Duration::MAX), &config());
        let Turn::Wait { until, .. } = host.turn(t0) else { panic!("a day's wait") };
        assert!(until <= t0 + HORIZON);
    }
}
