//! Instructions per operation, counted by valgrind's callgrind: repeatable where wall time is
//! not (these machines vary ±30% between runs).
//!
//! `cargo bench --bench instructions` — runs this same binary under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*measured*` once per variant
//! and per count N ∈ {N1, N2}, and prints (I(N2) − I(N1)) / (N2 − N1): the set-up, the warm-up
//! and any fixed cost inside the measured loop cancel out. Needs valgrind on the PATH.
//!
//! Variants: `MemoryStore::decide` against governor's `check_key` (one hot key and 10 000 keys;
//! admitted and rejected), and one in-process request through a bare axum router, through
//! tollgate's layer (each header mode, and with the demo's `MetricsObserver` on a Prometheus
//! recorder), through tower_governor's, and through a no-op layer (see `common/apps.rs`).
//!
//! Run one variant by hand: `<bench binary> --variant layer/tollgate 1000` (no valgrind).

mod common;

use nonzero_ext::nonzero;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::process::Command;

use common::apps;
use governor::{DefaultKeyedRateLimiter, Quota as GQuota, RateLimiter};
use tollgate::algorithm::Quota;
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, MemoryStore};

const N1: u64 = 20_000;
const N2: u64 = 120_000;

const VARIANTS: &[&str] = &[
    "decide/tollgate hot admitted",
    "decide/governor hot admitted",
    "decide/tollgate hot rejected",
    "decide/governor hot rejected",
    "decide/tollgate 10k admitted",
    "decide/governor 10k admitted",
    "layer/bare",
    "layer/tollgate",
    "layer/tower_governor",
    "layer/tollgate+metrics",
    "layer/tollgate headers=legacy",
    "layer/tollgate headers=ietf",
    "layer/tollgate headers=none",
    "layer/noop",
];

/// The loop callgrind counts (and only it): `op` run `n` times.
#[inline(never)]
fn measured(n: u64, op: &mut dyn FnMut(u64)) {
    for i in 0..n {
        op(i);
    }
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32))
}

fn run_decide(peer: &str, keys: usize, admitted: bool, n: u64) {
    let (quota, gquota) = if admitted {
        (
            Quota::per_second(nonzero!(1_000_000_000u32)),
            GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
                .allow_burst(NonZeroU32::new(1_000_000_000).unwrap()),
        )
    } else {
        (
            Quota::per_hour(nonzero!(1u32)),
            GQuota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(1).unwrap()),
        )
    };
    if peer == "tollgate" {
        let limits = Limits::builder().tier("anonymous", TierSpec::new(quota)).build().unwrap();
        let tier = limits.default_tier();
        let store = MemoryStore::new();
        let set: Vec<Key> = (0..keys).map(|i| Key::from_ip(ip(i))).collect();
        for key in set.iter().cycle().take(2 * keys) {
            black_box(store.decide(key, tier, Charge::new(1)));
        }
        measured(n, &mut |i| {
            black_box(store.decide(&set[i as usize % keys], tier, Charge::new(1)));
        });
    } else {
        let limiter: DefaultKeyedRateLimiter<IpAddr> = RateLimiter::keyed(gquota);
        let set: Vec<IpAddr> = (0..keys).map(ip).collect();
        for key in set.iter().cycle().take(2 * keys) {
            let _ = black_box(limiter.check_key(key));
        }
        measured(n, &mut |i| {
            let _ = black_box(limiter.check_key(&set[i as usize % keys]));
        });
    }
}

fn run_layer(variant: &str, n: u64) {
    let mut app = match variant {
        "bare" => apps::bare(),
        "tollgate" => apps::tollgate(),
        "tower_governor" => apps::tower_governor(),
        "tollgate+metrics" => apps::tollgate_metrics(),
        "noop" => apps::noop(),
        other if other.starts_with("tollgate headers=") => {
            apps::tollgate_with(&apps::with_headers(&other["tollgate headers=".len()..]))
        }
        other => panic!("unknown variant {other}"),
    };
    for _ in 0..1_000 {
        assert_eq!(apps::serve(&mut app, apps::request()).status(), 200);
    }
    measured(n, &mut |_| {
        black_box(apps::serve(&mut app, black_box(apps::request())));
    });
}

fn run(variant: &str, n: u64) {
    let (kind, name) = variant.split_once('/').expect("kind/name");
    match kind {
        "decide" => {
            let mut words = name.split(' ');
            let peer = words.next().unwrap();
            let keys = if words.next() == Some("hot") { 1 } else { 10_000 };
            run_decide(peer, keys, words.next() == Some("admitted"), n);
        }
        "layer" => run_layer(name, n),
        _ => panic!("unknown variant {variant}"),
    }
}

/// Instructions callgrind collected in `measured` for `variant` run `n` times.
fn count(variant: &str, n: u64) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--collect-atstart=no", "--toggle-collect=*measured*"])
        .arg("--callgrind-out-file=/dev/null")
        .arg(exe)
        .args(["--variant", variant, &n.to_string()])
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{variant}: valgrind failed:\n{stderr}");
        return None;
    }
    let line = stderr.lines().find(|l| l.contains("Collected :"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--variant") {
        let n = args.get(at + 2).and_then(|n| n.parse().ok()).unwrap_or(N1);
        run(&args[at + 1], n);
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind is not installed: no instruction counts (apt-get install -y valgrind)");
        return;
    }
    // A filter after `--`, as for the other benches: only variants containing it.
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned().unwrap_or_default();
    let mut results = Vec::new();
    for &variant in VARIANTS.iter().filter(|v| v.contains(filter.as_str())) {
        let per_op = match (count(variant, N1), count(variant, N2)) {
            (Some(a), Some(b)) => Some((b as f64 - a as f64) / (N2 - N1) as f64),
            _ => None,
        };
        eprintln!("{variant}: {per_op:?}");
        results.push((variant, per_op));
    }
    let get = |name: &str| results.iter().find(|(v, _)| *v == name).and_then(|(_, n)| *n);
    println!();
    println!("## Instructions per operation (callgrind, (I({N2}) − I({N1})) / {})", N2 - N1);
    println!();
    println!("| variant | instructions/op | ratio to peer |");
    println!("| --- | ---: | ---: |");
    for (variant, per_op) in &results {
        let peer = match *variant {
            v if v.starts_with("decide/tollgate") => get(&v.replace("tollgate", "governor")),
            v if v.starts_with("layer/tollgate") => get("layer/tower_governor"),
            _ => None,
        };
        match (per_op, peer) {
            (Some(n), Some(p)) => println!("| {variant} | {n:.0} | {:.2} |", n / p),
            (Some(n), None) => println!("| {variant} | {n:.0} | |"),
            (None, _) => println!("| {variant} | (failed) | |"),
        }
    }
    if let (Some(bare), Some(ours), Some(peer)) =
        (get("layer/bare"), get("layer/tollgate"), get("layer/tower_governor"))
    {
        println!();
        println!(
            "Per request, tollgate's layer adds {:.0} instructions ({:+.1}% of the bare {bare:.0}); \
             tower_governor's adds {:.0} ({:+.1}%).",
            ours - bare,
            100.0 * (ours - bare) / bare,
            peer - bare,
            100.0 * (peer - bare) / bare
        );
    }
}
