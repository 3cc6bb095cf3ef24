#![no_main]
//! See gateway::fuzz::jwt.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::fuzz::jwt(data));
