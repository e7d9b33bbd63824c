//! Fuzz target `client_ip`: see `tollgate_fuzz::client_ip` for the boundary and its invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::client_ip(data));
