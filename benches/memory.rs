//! Bytes per tracked key at 1 000 000 keys: tollgate's `MemoryStore` against governor's keyed
//! limiter, counted by a global allocator (live heap bytes after inserting the keys, minus
//! before), and cross-checked with the process's resident set (RSS) growth.
//!
//! `cargo bench --bench memory` — prints the table. Keys are IPv4 addresses (no heap of their
//! own), one policy per key, every key checked once. governor keeps each key in its map
//! (`IpAddr`, 17 bytes); tollgate keeps only a 64-bit digest of it, so "beyond the key" is the
//! total minus 17 bytes for governor and the total for tollgate (its digest stands in for the key).

use nonzero_ext::nonzero;
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota as GQuota, RateLimiter};
use tollgate::algorithm::Quota;
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, MemoryStore};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: usize = 1_000_000;

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32))
}

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// (heap bytes, RSS bytes) that `fill` keeps alive, per key.
fn per_key<T>(fill: impl FnOnce() -> T) -> (f64, f64, T) {
    let (heap, resident) = (LIVE.load(Ordering::Relaxed), rss());
    let kept = fill();
    let heap = (LIVE.load(Ordering::Relaxed) - heap) as f64 / KEYS as f64;
    let resident = rss().saturating_sub(resident) as f64 / KEYS as f64;
    (heap, resident, kept)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // nothing for `cargo bench -- --list` to list
    }
    // A quota under which no key is idle during the run (so none is swept).
    let quota = Quota::per_hour(nonzero!(1u32)).allow_burst(nonzero!(10u32));
    let gquota = GQuota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(10).unwrap());
    let limits = Limits::builder().tier("anonymous", TierSpec::new(quota)).build().unwrap();
    let tier = limits.default_tier();
    let store = MemoryStore::new(); // made (and its clock calibrated) before counting

    // governor first: tollgate's run then cannot reuse pages governor freed.
    let (g_heap, g_rss, limiter) = per_key(|| {
        let limiter: DefaultKeyedRateLimiter<IpAddr> = RateLimiter::keyed(gquota);
        for i in 0..KEYS {
            let _ = limiter.check_key(&ip(i));
        }
        limiter
    });
    assert_eq!(limiter.len(), KEYS);
    let (t_heap, t_rss, ()) = per_key(|| {
        for i in 0..KEYS {
            store.decide(&Key::from_ip(ip(i)), tier, Charge::new(1));
        }
    });
    assert_eq!(store.len(), KEYS);
    let key = std::mem::size_of::<IpAddr>() as f64;

    println!();
    println!("## Memory per tracked key at {KEYS} keys (one policy, IPv4 keys)");
    println!();
    println!(
        "| store | heap bytes/key | beyond the key | RSS growth bytes/key | target ≤ 64 beyond the key |"
    );
    println!("| --- | ---: | ---: | ---: | --- |");
    let verdict = |b: f64| if b <= 64.0 { "met" } else { "NOT met" };
    println!("| tollgate MemoryStore | {t_heap:.1} | {t_heap:.1} | {t_rss:.1} | {} |", verdict(t_heap));
    println!("| governor keyed (DashMap) | {g_heap:.1} | {:.1} | {g_rss:.1} | (peer) |", g_heap - key);
    println!();
    println!("tollgate / governor heap per key: {:.2}", t_heap / g_heap);
    drop(limiter);
}
