//! Fuzz target `config`: see `tollgate_fuzz::config` for the boundary and its invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::config(data));
