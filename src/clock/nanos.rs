//! [`Nanos`]: the limiter's one time type.

use std::fmt;
use std::ops::{Add, AddAssign, Div, Mul, Rem, Sub};
use std::time::Duration;

const PER_SEC: u64 = 1_000_000_000;

/// A count of nanoseconds: an instant (since the Unix epoch, as a [`Clock`](super::Clock)
/// reads it) or a span (a wait, an emission interval, a time to full).
///
/// Every time the limiter handles is a `Nanos`: a clock reading, a state's timestamp, a wait in a
/// [`Decision`](crate::store::Decision), a [`Quota`](crate::algorithm::Quota)'s intervals. It
/// becomes whole seconds only where a header or a page shows it ([`as_secs`](Self::as_secs),
/// [`as_secs_ceil`](Self::as_secs_ceil)), and a [`Duration`] only where a timer or a user wants
/// one (`From` both ways; a `Duration` beyond 584 years saturates).
///
/// `u64` nanoseconds cover 584 years: instants up to the year 2554, and every span a quota can
/// have (at most 2⁶² ns, about 146 years). The arithmetic operators panic on overflow like
/// integers do (in debug builds); the `saturating_*` methods never do.
///
/// ```
/// use std::time::Duration;
/// use tollgate::clock::Nanos;
///
/// let wait = Nanos::from_millis(1_500);
/// assert_eq!(wait.as_secs(), 1);
/// assert_eq!(wait.as_secs_ceil(), 2);
/// assert_eq!(Duration::from(wait), Duration::from_millis(1_500));
/// assert_eq!(Nanos::from(Duration::MAX), Nanos::MAX);
/// assert_eq!(Nanos::from_secs(3) - Nanos::from_secs(1), 2 * Nanos::SECOND);
/// assert_eq!(Nanos::ZERO.saturating_sub(wait), Nanos::ZERO);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(u64);

impl Nanos {
    /// No time at all; also the Unix epoch as an instant.
    pub const ZERO: Self = Self(0);
    /// One second.
    pub const SECOND: Self = Self(PER_SEC);
    /// The longest representable time (about 584 years).
    pub const MAX: Self = Self(u64::MAX);

    /// `nanos` nanoseconds.
    pub const fn new(nanos: u64) -> Self {
        Self(nanos)
    }

    /// `micros` microseconds, saturating at [`MAX`](Self::MAX).
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros.saturating_mul(1_000))
    }

    /// `millis` milliseconds, saturating at [`MAX`](Self::MAX).
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1_000_000))
    }

    /// `secs` seconds, saturating at [`MAX`](Self::MAX).
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(PER_SEC))
    }

    /// The count of nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole microseconds, rounded up.
    pub const fn as_micros_ceil(self) -> u64 {
        self.0.div_ceil(1_000)
    }

    /// Whole seconds, rounded down (an instant's Unix epoch second).
    pub const fn as_secs(self) -> u64 {
        self.0 / PER_SEC
    }

    /// Whole seconds, rounded up (a wait that always suffices).
    pub const fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(PER_SEC)
    }

    /// Seconds as a float, for display and rates.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / PER_SEC as f64
    }

    /// `self + other`, or [`MAX`](Self::MAX) on overflow.
    pub const fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    /// `self − other`, or [`ZERO`](Self::ZERO) when `other` is later.
    pub const fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }

    /// `self × n`, or [`MAX`](Self::MAX) on overflow.
    pub const fn saturating_mul(self, n: u64) -> Self {
        Self(self.0.saturating_mul(n))
    }

    /// `self + other`, or `None` on overflow.
    pub const fn checked_add(self, other: Self) -> Option<Self> {
        match self.0.checked_add(other.0) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// `self × n`, or `None` on overflow.
    pub const fn checked_mul(self, n: u64) -> Option<Self> {
        match self.0.checked_mul(n) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// True for [`ZERO`](Self::ZERO).
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Duration::from(*self), f)
    }
}

impl From<Duration> for Nanos {
    /// Saturates at [`Nanos::MAX`] (584 years).
    fn from(duration: Duration) -> Self {
        Self(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Nanos> for Duration {
    fn from(nanos: Nanos) -> Self {
        Duration::from_nanos(nanos.0)
    }
}

impl Add for Nanos {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self(self.0 + other.0)
    }
}

impl AddAssign for Nanos {
    fn add_assign(&mut self, other: Self) {
        self.0 += other.0;
    }
}

impl Sub for Nanos {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        Self(self.0 - other.0)
    }
}

impl Mul<u64> for Nanos {
    type Output = Self;
    fn mul(self, n: u64) -> Self {
        Self(self.0 * n)
    }
}

impl Mul<Nanos> for u64 {
    type Output = Nanos;
    fn mul(self, nanos: Nanos) -> Nanos {
        Nanos(self * nanos.0)
    }
}

impl Div<u64> for Nanos {
    type Output = Self;
    fn div(self, n: u64) -> Self {
        Self(self.0 / n)
    }
}

/// How many whole `other`s fit in `self`.
impl Div for Nanos {
    type Output = u64;
    fn div(self, other: Self) -> u64 {
        self.0 / other.0
    }
}

impl Rem for Nanos {
    type Output = Self;
    fn rem(self, other: Self) -> Self {
        Self(self.0 % other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_the_documented_way() {
        assert_eq!(Nanos::new(0).as_secs_ceil(), 0);
        assert_eq!(Nanos::new(1).as_secs_ceil(), 1);
        assert_eq!(Nanos::SECOND.as_secs_ceil(), 1);
        assert_eq!(Nanos::new(PER_SEC + 1).as_secs_ceil(), 2);
        assert_eq!(Nanos::new(2 * PER_SEC - 1).as_secs(), 1);
        assert_eq!(Nanos::new(1_001).as_micros_ceil(), 2);
    }

    #[test]
    fn conversions_saturate() {
        assert_eq!(Nanos::from_secs(u64::MAX), Nanos::MAX);
        assert_eq!(Nanos::from(Duration::from_secs(u64::MAX)), Nanos::MAX);
        assert_eq!(Nanos::MAX.saturating_add(Nanos::SECOND), Nanos::MAX);
        assert_eq!(Nanos::MAX.checked_add(Nanos::new(1)), None);
        assert_eq!(Nanos::SECOND / Nanos::new(300_000_000), 3);
    }
}
