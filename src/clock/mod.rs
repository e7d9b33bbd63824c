//! Time, injected.
//!
//! Every limiter decision is pure arithmetic on a state, a cost and *now*. *Now* comes from a
//! [`Clock`]: [`SystemClock`] in production, [`ManualClock`] in tests, which clones share and a
//! test advances by hand, so no test ever sleeps.
//!
//! Time is one type, [`Nanos`]: nanoseconds since the Unix epoch for an instant, nanoseconds
//! for a span. It is monotonic (the system clock reads a monotonic counter and only anchors it
//! to wall time once), and it maps directly to the Unix epoch seconds that `X-RateLimit-Reset`
//! promises. Every part of the limiter that needs *now* (a store, the layer's log throttle, the
//! response cache) asks a `Clock`; nothing reads `SystemTime` or `Instant` itself.

mod nanos;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub use nanos::Nanos;

/// A source of the current time, since the Unix epoch.
///
/// Implementations must be monotonic: `now` never goes backwards.
///
/// ```
/// use tollgate::clock::{Clock, ManualClock, Nanos};
///
/// let clock = ManualClock::new(Nanos::from_secs(1_000));
/// assert_eq!(clock.now(), Nanos::new(1_000_000_000_000));
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time since the Unix epoch.
    fn now(&self) -> Nanos;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

/// The real clock: a monotonic counter anchored once to the system's wall clock.
///
/// Anchoring once means a wall-clock step (NTP, an operator) never makes buckets jump.
///
/// The counter is the CPU's invariant time-stamp counter, read through [`quanta`] and scaled to
/// nanoseconds: about 10 ns a read on the benchmark machine, against about 26 ns for
/// [`std::time::Instant`] (`clock_gettime`), which was the largest single cost of a check. Where
/// the CPU has no invariant counter, quanta falls back to the OS monotonic clock. The scale is calibrated once per
/// process, the first time a `SystemClock` is made (it takes up to 200 ms, usually far less).
///
/// ```
/// use tollgate::clock::{Clock, Nanos, SystemClock};
///
/// let clock = SystemClock::new();
/// let a = clock.now();
/// let b = clock.now();
/// assert!(b >= a);
/// assert!(a > Nanos::from_secs(1_600_000_000)); // after September 2020
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    counter: &'static quanta::Clock,
    start_raw: u64,
    start_unix: Nanos,
}

/// One calibrated counter for the process: calibration is the slow part of making a clock.
fn counter() -> &'static quanta::Clock {
    static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();
    COUNTER.get_or_init(quanta::Clock::new)
}

impl SystemClock {
    /// A clock anchored to the wall clock now.
    pub fn new() -> Self {
        let counter = counter();
        let start_raw = counter.raw();
        // The one reading of the wall clock: the anchor.
        let start_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(Nanos::ZERO, Nanos::from);
        Self { counter, start_raw, start_unix }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Nanos {
        // `delta_as_nanos` is 0 for a reading at or before the anchor, so `now` never goes
        // below `start_unix`, and it grows with the counter.
        let elapsed = self.counter.delta_as_nanos(self.start_raw, self.counter.raw());
        self.start_unix.saturating_add(Nanos::new(elapsed))
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use tollgate::clock::{Clock, ManualClock, Nanos};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Nanos::from_secs(10));
/// let shared = clock.clone();
/// clock.advance(Duration::from_millis(1_500)); // a `Duration` or `Nanos`
/// assert_eq!(shared.now(), Nanos::from_millis(11_500));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock frozen at `since_epoch` after the Unix epoch.
    pub fn new(since_epoch: impl Into<Nanos>) -> Self {
        let clock = Self::default();
        clock.set(since_epoch);
        clock
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: impl Into<Nanos>) {
        self.nanos.fetch_add(by.into().as_nanos(), Ordering::SeqCst);
    }

    /// Sets the clock to `since_epoch` after the Unix epoch. Setting it backwards breaks the
    /// monotonic promise of [`Clock`]; tests that do so test exactly that.
    pub fn set(&self, since_epoch: impl Into<Nanos>) {
        self.nanos.store(since_epoch.into().as_nanos(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Nanos {
        Nanos::new(self.nanos.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn system_clock_tracks_wall_time() {
        let clock = SystemClock::new();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let diff = clock.now().as_nanos().abs_diff(wall);
        assert!(diff < Nanos::SECOND.as_nanos(), "clock is {diff} ns away from wall time");
    }

    #[test]
    fn system_clock_keeps_pace_with_the_os_monotonic_clock() {
        let clock = SystemClock::new();
        let (a, start) = (clock.now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(200));
        let (b, elapsed) = (clock.now(), start.elapsed());
        let drift = (b - a).as_nanos().abs_diff(elapsed.as_nanos() as u64);
        // A calibration error of 1e-4 would be 20 µs here; allow for scheduling noise.
        assert!(drift < 2_000_000, "counter drifted {drift} ns from the OS clock in {elapsed:?}");
        let mut last = clock.now();
        for _ in 0..10_000 {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::new(Duration::from_secs(5));
        let b = a.clone();
        b.advance(Duration::from_secs(2));
        assert_eq!(a.now(), Nanos::from_secs(7));
        a.set(Duration::from_secs(1));
        assert_eq!(b.now(), Nanos::SECOND);
    }
}
