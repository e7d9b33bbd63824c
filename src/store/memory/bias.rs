//! A reader-writer lock biased towards readers: BRAVO (Dice & Kogan, "BRAVO: Biased Locking
//! for Reader-Writer Locks", USENIX ATC 2019), with an asymmetric memory barrier.
//!
//! A shard of the memory store is read by every request and written only when a key is new
//! (or a sweep, a reload). A `std::sync::RwLock` taken for reading costs two locked
//! instructions (the acquire and the release of the reader count) on a cache line that every
//! core writes, which was most of [`MemoryStore::decide`](super::MemoryStore::decide)'s time.
//! This lock lets a reader in with plain loads and stores:
//!
//! # The protocol
//! * A process-wide table of reader slots, one cache line each. A thread claims a slot on its
//!   first read (a compare-and-swap, once per thread) and frees it when it exits; a thread that
//!   finds none free (more than [`SLOTS`] threads reading at once) uses the slow path.
//!   A slot holds [`FREE`], [`IDLE`] (claimed, not reading), or the address of the lock its
//!   thread is reading.
//! * Each lock has a flag `rbias` next to an inner `std::sync::RwLock<()>`.
//! * **Fast read**: if `rbias` is set, the reader writes the lock's address into its slot,
//!   passes a *light* barrier, and loads `rbias` again. Still set: it reads the data, then
//!   writes [`IDLE`] back into its slot (a release store). Cleared meanwhile: it puts its slot
//!   back to [`IDLE`] and takes the slow path.
//! * **Slow read**: the inner lock, for reading, as before. While holding it, a reader that
//!   finds `rbias` clear and the writers' inhibition window over sets `rbias` again (one slow
//!   read in [`CHECK_EVERY`] looks at the time).
//! * **Write**: the inner lock, for writing (no slow reader, no other writer). If `rbias` is
//!   set, the writer *revokes* it: clears it, passes a *heavy* barrier, then waits until no
//!   slot holds this lock's address. It then owns the data. Readers do not get the bias back
//!   for nine times as long as the revocation took (BRAVO's policy: a writer spends at most
//!   about a tenth of its time revoking), and for twice as long as last time when the bias
//!   did not outlive eight of those windows, up to [`MAX_WINDOW`]: under a flood of new keys
//!   (each an insertion) a shard soon stays unbiased, its readers taking the inner lock as
//!   they did before this lock existed, and membarrier's interruptions of the other cores
//!   stop; once the writes stop, the bias comes back within that window.
//!
//! # Why it is sound
//! The light and heavy barriers together order a fast reader's store of its slot before its
//! second load of `rbias`, and the writer's store of `rbias = false` before its loads of the
//! slots: **either the writer sees the reader's slot, or the reader sees `rbias` cleared** (the
//! store-buffering litmus test, forbidden by two full barriers). So:
//! * a reader that passed the second load with `rbias` set had published its slot before the
//!   writer scanned, and the writer waits for it to write [`IDLE`]; that store is a release and
//!   the writer's load an acquire, so everything the reader read happened before the writer's
//!   first change;
//! * a reader that saw `rbias` cleared touches nothing and goes to the inner lock.
//!
//! And a reader that finds `rbias` set sees every change made before it was set: `rbias` is
//! set (release) by a slow reader holding the inner lock, after the last writer released it,
//! and loaded (acquire) by the fast reader.
//!
//! The barriers: on Linux, the heavy barrier is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
//! which makes every thread of the process that is running pass a full memory barrier (one not
//! running passed one when it was switched out), and the light barrier is only a compiler
//! fence: the reader's fast path has no locked instruction at all. Where membarrier is not
//! available (registration refused, or not Linux), both are `fence(SeqCst)`: still correct
//! (Dekker's protocol), one full fence on the reader instead of two locked instructions.
//! The kind is chosen once per lock, when it is made, so the two sides always agree. The
//! environment variable `TOLLGATE_NO_MEMBARRIER` (read once per process) makes every lock use
//! fences, to measure the fallback or rule the asymmetric barrier out.
//!
//! A thread reading a second lock while it holds a fast read of a first (its slot is busy)
//! reads the second through the slow path. Lock addresses in slots are only compared, never
//! followed, and a lock lives until no guard of it is left.
//!
//! As with `std::sync::RwLock`, a thread must not read a lock again while it holds a read of
//! it: the second read takes the slow path, and a writer waiting for the first one (the
//! thread's own slot) would block it for good. The memory store never nests reads of a shard:
//! each decision drops its guard before it writes or reads again. A guard cannot leave its
//! thread (it is not `Send`): a fast read is its thread's slot.

// The only unsafe code of the crate: the data is shared through an `UnsafeCell`, reached by
// readers the inner lock does not see (the protocol above proves the exclusion).
#![allow(unsafe_code)]

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

/// How many threads can read through the fast path at once; others use the slow path.
pub(super) const SLOTS: usize = 1024;

/// A slot no thread holds.
const FREE: usize = 0;
/// A slot held by a thread that is reading no lock.
const IDLE: usize = 1;

/// How much longer than a revocation took readers stay off the bias afterwards (BRAVO's N).
const INHIBIT: u64 = 9;

/// The longest readers stay off the bias after a revocation, in nanoseconds.
pub(super) const MAX_WINDOW: u64 = 50_000_000;

/// A slow reader looks at the time once in this many slow reads.
pub(super) const CHECK_EVERY: u32 = 16;

/// One reader slot, alone on its cache line pair (no false sharing between readers).
#[repr(align(128))]
struct Slot(AtomicUsize);

static TABLE: [Slot; SLOTS] = [const { Slot(AtomicUsize::new(FREE)) }; SLOTS];

/// One past the highest slot ever claimed: writers scan no further.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

/// The slot of a thread that found none free (or claims none: its locals are being
/// destroyed). Never [`IDLE`], so its reads take the slow path.
static NO_SLOT: AtomicUsize = AtomicUsize::new(FREE);

thread_local! {
    /// This thread's slot, once claimed. No destructor, so reading it is one load.
    static SLOT: Cell<Option<&'static AtomicUsize>> = const { Cell::new(None) };
    /// Frees the slot when the thread ends; touched only when claiming.
    static OWNER: Owner = const { Owner(Cell::new(None)) };
}

/// This thread's slot, claimed on first use.
#[inline]
fn my_slot() -> &'static AtomicUsize {
    SLOT.with(|mine| match mine.get() {
        Some(slot) => slot,
        None => claim(mine),
    })
}

#[cold]
fn claim(mine: &Cell<Option<&'static AtomicUsize>>) -> &'static AtomicUsize {
    // The destructor that frees the slot is registered first: no slot without it.
    let slot = match OWNER.try_with(|_| ()) {
        Ok(()) => TABLE
            .iter()
            .position(|slot| {
                slot.0.compare_exchange(FREE, IDLE, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            })
            .map_or(&NO_SLOT, |index| {
                CLAIMED.fetch_max(index + 1, Ordering::SeqCst);
                let slot = &TABLE[index].0;
                OWNER.with(|owner| owner.0.set(Some(slot)));
                slot
            }),
        Err(_) => &NO_SLOT,
    };
    mine.set(Some(slot));
    slot
}

/// Frees its thread's slot when the thread ends.
struct Owner(Cell<Option<&'static AtomicUsize>>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            // Later reads of this thread (other locals' destructors) take the slow path.
            SLOT.with(|mine| mine.set(Some(&NO_SLOT)));
            // A slot still busy (a guard outliving the thread's locals) stays claimed for good.
            let _ = slot.compare_exchange(IDLE, FREE, Ordering::Release, Ordering::Relaxed);
        }
    }
}

/// The barriers a lock's readers and writers pass (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Barrier {
    /// Readers: a compiler fence; writers: `membarrier`.
    Asymmetric,
    /// Both: `fence(SeqCst)`.
    Fences,
}

impl Barrier {
    /// The asymmetric barrier when the OS provides it (registered once per process), else
    /// fences.
    pub(super) fn detect() -> Self {
        static DETECTED: OnceLock<Barrier> = OnceLock::new();
        *DETECTED.get_or_init(|| if membarrier::register() { Self::Asymmetric } else { Self::Fences })
    }

    /// The reader's side.
    #[inline(always)]
    fn light(self) {
        match self {
            Self::Asymmetric => compiler_fence(Ordering::SeqCst),
            Self::Fences => fence(Ordering::SeqCst),
        }
    }

    /// The writer's side.
    fn heavy(self) {
        match self {
            Self::Asymmetric => membarrier::barrier(),
            Self::Fences => fence(Ordering::SeqCst),
        }
    }
}

#[cfg(target_os = "linux")]
mod membarrier {
    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};

    pub(super) fn register() -> bool {
        if std::env::var_os("TOLLGATE_NO_MEMBARRIER").is_some() {
            return false;
        }
        membarrier_query().contains_command(MembarrierCommand::PrivateExpedited)
            && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
    }

    pub(super) fn barrier() {
        // Registered before any lock used it; the call cannot fail then. Should it ever, the
        // protocol would be unsound: stop rather than read torn data.
        membarrier(MembarrierCommand::PrivateExpedited).expect("membarrier after registration");
    }
}

#[cfg(not(target_os = "linux"))]
mod membarrier {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn barrier() {
        unreachable!("no asymmetric barrier without membarrier")
    }
}

/// Nanoseconds since the first call: the clock of the inhibition windows.
fn elapsed() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A reader-writer lock whose readers, while it is biased, take no lock (see the module docs).
/// Poisoning is ignored, as the store did with its `RwLock`s.
pub(super) struct BiasedRwLock<T> {
    /// Readers may take the fast path.
    rbias: AtomicBool,
    barrier: Barrier,
    /// Readers may set `rbias` again from this instant ([`elapsed`]) on.
    inhibit_until: AtomicU64,
    /// The last window readers were kept off the bias (written by writers).
    window: AtomicU64,
    /// When a reader last set `rbias` (written by slow readers, read by writers: the inner
    /// lock orders them).
    biased_at: AtomicU64,
    /// Slow reads, counted loosely (a racy increment: only a pace for looking at the time).
    slow_reads: AtomicU32,
    inner: RwLock<()>,
    data: UnsafeCell<T>,
}

// SAFETY: the data is reached as `&T` by readers of several threads at once (T: Sync) and as
// `&mut T` by one writer at a time, which may then drop or move it (T: Send): the bounds of
// `std::sync::RwLock`. Exclusion between the two is the protocol of the module docs.
unsafe impl<T: Send + Sync> Sync for BiasedRwLock<T> {}

impl<T> BiasedRwLock<T> {
    /// A lock around `data`, biased from the start, passing the barriers of `barrier`.
    pub(super) fn new(data: T, barrier: Barrier) -> Self {
        Self {
            rbias: AtomicBool::new(true),
            barrier,
            inhibit_until: AtomicU64::new(0),
            window: AtomicU64::new(0),
            biased_at: AtomicU64::new(0),
            slow_reads: AtomicU32::new(0),
            inner: RwLock::new(()),
            data: UnsafeCell::new(data),
        }
    }

    #[inline]
    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Shared access: without a locked instruction while the lock is biased.
    #[inline]
    pub(super) fn read(&self) -> ReadGuard<'_, T> {
        if self.rbias.load(Ordering::Relaxed) {
            let slot = my_slot();
            // Not idle: this thread already reads another lock the fast way (or has no slot).
            if slot.load(Ordering::Relaxed) == IDLE {
                slot.store(self.address(), Ordering::Relaxed);
                self.barrier.light();
                if self.rbias.load(Ordering::Acquire) {
                    return ReadGuard { lock: self, held: Held::Fast(slot) };
                }
                slot.store(IDLE, Ordering::Relaxed);
            }
        }
        self.read_slow()
    }

    #[cold]
    fn read_slow(&self) -> ReadGuard<'_, T> {
        let guard = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if !self.rbias.load(Ordering::Relaxed) {
            let count = self.slow_reads.load(Ordering::Relaxed).wrapping_add(1);
            self.slow_reads.store(count, Ordering::Relaxed);
            if count % CHECK_EVERY == 0 {
                let now = elapsed();
                if now >= self.inhibit_until.load(Ordering::Relaxed) {
                    // No writer holds the lock: readers may skip it again (they see its
                    // changes through this release).
                    self.biased_at.store(now, Ordering::Relaxed);
                    self.rbias.store(true, Ordering::Release);
                }
            }
        }
        ReadGuard { lock: self, held: Held::Slow(guard) }
    }

    /// Exclusive access: the inner lock, then the bias revoked (waiting for fast readers).
    pub(super) fn write(&self) -> WriteGuard<'_, T> {
        let guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if self.rbias.load(Ordering::Relaxed) {
            self.revoke();
        }
        WriteGuard { lock: self, _held: guard }
    }

    #[cold]
    fn revoke(&self) {
        let start = elapsed();
        self.rbias.store(false, Ordering::Relaxed);
        self.barrier.heavy();
        let address = self.address();
        for slot in &TABLE[..CLAIMED.load(Ordering::Acquire)] {
            let mut spins = 0u32;
            while slot.0.load(Ordering::Acquire) == address {
                if spins < 64 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
        let now = elapsed();
        let base = (now - start) * INHIBIT;
        let last = self.window.load(Ordering::Relaxed);
        let lived = start.saturating_sub(self.biased_at.load(Ordering::Relaxed));
        // Revoked again soon after the bias came back: writes are frequent here, back off.
        let window = if lived < last.saturating_mul(8) { (2 * last).max(base) } else { base }.min(MAX_WINDOW);
        self.window.store(window, Ordering::Relaxed);
        self.inhibit_until.store(now + window, Ordering::Relaxed);
    }

    /// Whether readers take the fast path now (tests).
    #[cfg(test)]
    pub(super) fn is_biased(&self) -> bool {
        self.rbias.load(Ordering::Relaxed)
    }

    /// Which barriers this lock passes (tests).
    #[cfg(test)]
    pub(super) fn barrier(&self) -> Barrier {
        self.barrier
    }
}

enum Held<'a> {
    Fast(&'static AtomicUsize),
    Slow(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
}

/// Shared access to a [`BiasedRwLock`]'s data.
pub(super) struct ReadGuard<'a, T> {
    lock: &'a BiasedRwLock<T>,
    held: Held<'a>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: no writer holds the data while this guard lives: a slow reader holds the
        // inner lock for reading; a fast reader's slot names the lock, which a writer waits
        // out after clearing the bias (module docs).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Held::Fast(slot) = self.held {
            // Release: the reads made under this guard happen before a writer that waited for
            // this store.
            slot.store(IDLE, Ordering::Release);
        }
    }
}

/// Exclusive access to a [`BiasedRwLock`]'s data.
pub(super) struct WriteGuard<'a, T> {
    lock: &'a BiasedRwLock<T>,
    _held: RwLockWriteGuard<'a, ()>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds the inner lock for writing and the bias is revoked: no
        // other reader or writer (module docs).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    const BOTH: [Barrier; 2] = [Barrier::Asymmetric, Barrier::Fences];

    /// The barriers to test: fences always; membarrier where the OS has it.
    fn barriers() -> Vec<Barrier> {
        BOTH.into_iter().filter(|&b| b == Barrier::Fences || Barrier::detect() == b).collect()
    }

    /// Writers change two plain numbers one after the other (a torn pair is visible to a reader
    /// that overlaps a writer); readers, most of them on the fast path, never see them apart.
    #[test]
    fn readers_never_overlap_a_writer() {
        for barrier in barriers() {
            let lock = Arc::new(BiasedRwLock::new((0u64, 0u64), barrier));
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let (lock, stop) = (lock.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let (mut reads, mut fast) = (0u64, 0u64);
                        while !stop.load(Ordering::Relaxed) {
                            let data = lock.read();
                            fast += u64::from(matches!(data.held, Held::Fast(_)));
                            let first = data.0;
                            std::hint::spin_loop();
                            assert_eq!(first, data.1, "a reader saw a writer's half-done change");
                            reads += 1;
                        }
                        (reads, fast)
                    })
                })
                .collect();
            for _ in 0..2_000 {
                let mut data = lock.write();
                data.0 += 1;
                for _ in 0..50 {
                    std::hint::spin_loop();
                }
                data.1 += 1;
                drop(data);
                for _ in 0..200 {
                    std::hint::spin_loop();
                }
            }
            stop.store(true, Ordering::Relaxed);
            let (reads, fast) =
                readers.into_iter().map(|t| t.join().unwrap()).fold((0, 0), |(r, f), (a, b)| (r + a, f + b));
            assert_eq!(*lock.read(), (2_000, 2_000));
            assert!(reads > 0, "{barrier:?}");
            eprintln!("{barrier:?}: {reads} reads, {fast} on the fast path");
        }
    }

    /// A write revokes the bias; readers get it back once the window is over, and see the
    /// write through the fast path. Writes that keep coming soon after the bias is back
    /// double the window each time, up to its cap; a write long after starts afresh.
    #[test]
    fn a_write_revokes_the_bias_for_a_while() {
        for barrier in barriers() {
            let lock = BiasedRwLock::new(0u32, barrier);
            assert_eq!(lock.barrier(), barrier);
            assert!(lock.is_biased());
            assert!(matches!(lock.read().held, Held::Fast(_)));
            *lock.write() = 7;
            assert!(!lock.is_biased());
            // The window is nine revocations long: wait it out (tens of microseconds).
            let until = lock.inhibit_until.load(Ordering::Relaxed);
            while elapsed() < until {
                std::hint::spin_loop();
            }
            for _ in 0..CHECK_EVERY {
                assert!(
                    matches!(lock.read().held, Held::Slow(_)),
                    "the reads that restore the bias are slow"
                );
            }
            assert!(lock.is_biased());
            let data = lock.read();
            assert!(matches!(data.held, Held::Fast(_)));
            assert_eq!(*data, 7);
        }
    }

    /// Waits out `lock`'s window, then reads until the bias is back.
    fn rebias<T>(lock: &BiasedRwLock<T>) {
        let until = lock.inhibit_until.load(Ordering::Relaxed);
        while elapsed() < until {
            std::hint::spin_loop();
        }
        for _ in 0..CHECK_EVERY {
            drop(lock.read());
        }
        assert!(lock.is_biased());
    }

    /// Writes that keep revoking the bias soon after it came back double the window each time
    /// up to its cap; a revocation after a bias that outlived its window starts afresh.
    #[test]
    fn frequent_writes_back_off_up_to_the_cap() {
        let lock = BiasedRwLock::new(0u32, Barrier::detect());
        *lock.write() += 1;
        let mut writes = 1;
        let mut last = lock.window.load(Ordering::Relaxed);
        assert!(last > 0 && last < MAX_WINDOW);
        for _ in 0..40 {
            rebias(&lock);
            // As if this write came right after the bias came back (however slow this machine).
            lock.biased_at.store(u64::MAX, Ordering::Relaxed);
            *lock.write() += 1;
            writes += 1;
            let window = lock.window.load(Ordering::Relaxed);
            assert!(window >= (2 * last).min(MAX_WINDOW) && window <= MAX_WINDOW, "{last} then {window}");
            last = window;
            if window == MAX_WINDOW {
                break;
            }
        }
        assert_eq!(last, MAX_WINDOW);
        rebias(&lock);
        // As if the last window had been 10 ms and the bias had come back when the process
        // started (the windows above add up to over 100 ms): it outlived eight windows, so the
        // next window is BRAVO's (nine revocations), not twice 10 ms.
        let last = MAX_WINDOW / 5;
        lock.window.store(last, Ordering::Relaxed);
        lock.biased_at.store(0, Ordering::Relaxed);
        assert!(elapsed() > 8 * last);
        *lock.write() += 1;
        assert_ne!(lock.window.load(Ordering::Relaxed), 2 * last);
        assert_eq!(*lock.read(), writes + 1);
    }

    /// A thread reading two locks at once reads the second through the inner lock (its slot
    /// is taken), and a write to the first still waits for the first read only.
    #[test]
    fn a_second_read_on_one_thread_takes_the_slow_path() {
        let (a, b) = (BiasedRwLock::new(1, Barrier::Fences), BiasedRwLock::new(2, Barrier::Fences));
        let first = a.read();
        let second = b.read();
        assert!(matches!(first.held, Held::Fast(_)));
        assert!(matches!(second.held, Held::Slow(_)));
        assert_eq!(*first + *second, 3);
        drop(second);
        *b.write() += 1; // nobody reads b: no wait although this thread reads a
        drop(first);
        assert_eq!(*a.read() + *b.read(), 4);
    }

    /// A thread's slot is freed when the thread ends: threads coming and going never run out.
    #[test]
    fn slots_are_freed_when_threads_end() {
        let lock = Arc::new(BiasedRwLock::new(0u8, Barrier::Fences));
        for _ in 0..2 * SLOTS {
            let lock = lock.clone();
            let fast = std::thread::spawn(move || matches!(lock.read().held, Held::Fast(_)));
            assert!(fast.join().unwrap(), "a slot was free");
        }
        assert!(CLAIMED.load(Ordering::Relaxed) < SLOTS);
    }
}
