//! Fuzz target `client_headers`: see `tollgate_fuzz::client_headers` for the boundary and its invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::client_headers(data));
