//! Fixed rings of per-period counts: the building block of the in-process history.

use super::Period;

/// Counts of one period. 12 bytes; each count saturates at `u32::MAX` (4 294 967 295 a minute
/// or an hour is far beyond any one client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) admitted: u32,
    pub(super) rejected: u32,
    pub(super) tokens: u32,
}

impl Counts {
    pub(super) fn one(admitted: bool, tokens: u64) -> Self {
        Self {
            admitted: u32::from(admitted),
            rejected: u32::from(!admitted),
            tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
        }
    }

    fn add(&mut self, other: Counts) {
        self.admitted = self.admitted.saturating_add(other.admitted);
        self.rejected = self.rejected.saturating_add(other.rejected);
        self.tokens = self.tokens.saturating_add(other.tokens);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.admitted == 0 && self.rejected == 0 && self.tokens == 0
    }
}

/// The last `N` periods of `len` seconds each: slot `p % N` holds period `p` (the period index
/// is seconds since the epoch divided by `len`). Moving to a newer period clears the slots
/// skipped, so nothing older than `N` periods is ever read.
#[derive(Debug, Clone)]
pub(super) struct Ring<const N: usize> {
    newest: u32,
    slots: [Counts; N],
}

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self { newest: 0, slots: [Counts::default(); N] }
    }
}

impl<const N: usize> Ring<N> {
    /// Adds `counts` to `period`; a period `N` or more behind the newest is dropped.
    pub(super) fn add(&mut self, period: u32, counts: Counts) {
        if period > self.newest {
            let gap = (period - self.newest).min(N as u32);
            for p in period - gap + 1..=period {
                self.slots[p as usize % N] = Counts::default();
            }
            self.newest = period;
        } else if self.newest - period >= N as u32 {
            return;
        }
        self.slots[period as usize % N].add(counts);
    }

    /// The counts of `period`, when it is still held.
    pub(super) fn get(&self, period: u32) -> Counts {
        if period > self.newest || self.newest - period >= N as u32 {
            Counts::default()
        } else {
            self.slots[period as usize % N]
        }
    }

    /// The sum over the `N` periods ending with `now` (inclusive).
    pub(super) fn sum(&self, now: u32) -> Counts {
        let mut total = Counts::default();
        for p in now.saturating_sub(N as u32 - 1)..=now {
            total.add(self.get(p));
        }
        total
    }

    /// Adds this ring's periods ending with `now` into `into` (oldest first, `N` entries).
    pub(super) fn add_into(&self, now: u32, into: &mut [Counts; N]) {
        let first = now.saturating_sub(N as u32 - 1);
        for (i, p) in (first..=now).enumerate() {
            into[i].add(self.get(p));
        }
    }

    /// The non-empty periods ending with `now`, oldest first, as [`Period`]s of `len` seconds.
    pub(super) fn periods(&self, now: u32, len: u64) -> Vec<Period> {
        periods(
            &std::array::from_fn::<Counts, N, _>(|i| self.get(now.saturating_sub(N as u32 - 1) + i as u32)),
            now,
            len,
        )
    }
}

/// `slots` (the `N` periods ending with `now`, oldest first) as non-empty [`Period`]s.
pub(super) fn periods<const N: usize>(slots: &[Counts; N], now: u32, len: u64) -> Vec<Period> {
    let first = u64::from(now.saturating_sub(N as u32 - 1));
    slots
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_empty())
        .map(|(i, c)| Period {
            start: (first + i as u64) * len,
            admitted: u64::from(c.admitted),
            rejected: u64::from(c.rejected),
            tokens: u64::from(c.tokens),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_roll_and_old_ones_are_forgotten() {
        let mut ring = Ring::<3>::default();
        ring.add(100, Counts::one(true, 5));
        ring.add(100, Counts::one(false, 0));
        ring.add(101, Counts::one(true, 1));
        assert_eq!(ring.sum(101), Counts { admitted: 2, rejected: 1, tokens: 6 });
        // Period 104 clears 102..=104 (the skipped slots), and 101 is now too old to read.
        ring.add(104, Counts::one(true, 2));
        assert_eq!(ring.get(101), Counts::default());
        assert_eq!(ring.sum(104), Counts { admitted: 1, rejected: 0, tokens: 2 });
        // A late record for a period still in the window counts; one too old is dropped.
        ring.add(103, Counts::one(true, 1));
        ring.add(101, Counts::one(true, 1));
        assert_eq!(ring.sum(104), Counts { admitted: 2, rejected: 0, tokens: 3 });
        let p = ring.periods(104, 60);
        assert_eq!(p.iter().map(|p| p.start).collect::<Vec<_>>(), [103 * 60, 104 * 60]);
        // Read later, with nothing new recorded: only what is still within N periods.
        assert_eq!(ring.sum(106), Counts { admitted: 1, rejected: 0, tokens: 2 });
        assert_eq!(ring.sum(107), Counts::default());
    }

    #[test]
    fn counts_saturate() {
        let mut ring = Ring::<2>::default();
        ring.add(1, Counts::one(true, u64::MAX));
        ring.add(1, Counts::one(true, 7));
        assert_eq!(ring.get(1).tokens, u32::MAX);
    }
}
