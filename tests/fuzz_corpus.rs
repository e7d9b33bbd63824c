//! The fuzz corpus on stable (issue 11): every input committed under `fuzz/corpus/<target>/`
//! (what the fuzzers kept, minimised) and `fuzz/regressions/<target>/` (every crash found, as
//! the fuzzer saved it) goes through the same check its fuzz target runs, so what fuzzing found
//! stays fixed in every `cargo test`, without nightly.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod harness;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no committed input for {target}");
}

#[test]
fn client_ip() {
    replay("client_ip", harness::client_ip);
}

#[test]
fn api_key() {
    replay("api_key", harness::api_key);
}

#[test]
fn config() {
    replay("config", harness::config);
}

#[test]
fn client_headers() {
    replay("client_headers", harness::client_headers);
}

/// The request corpus reaches the cached band's check (a replay compared byte for byte with
/// the handler's answer), and `seed-vary-differs` is one that fails it when the cache ignores
/// `Vary` (found by fuzzing a cache with that fault planted).
#[test]
fn request() {
    use std::sync::atomic::Ordering;
    let before = harness::REPLAYS_CHECKED.load(Ordering::Relaxed);
    replay("request", harness::request);
    assert!(harness::REPLAYS_CHECKED.load(Ordering::Relaxed) > before, "no cached replay was checked");
}
