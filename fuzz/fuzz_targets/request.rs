//! Fuzz target `request`: see `tollgate_fuzz::request` for the boundary and its invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::request(data));
