//! Fuzz target `api_key`: see `tollgate_fuzz::api_key` for the boundary and its invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::api_key(data));
