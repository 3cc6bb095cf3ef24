#![no_main]
//! See gateway::fuzz::handshake_request.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::fuzz::handshake_request(data));
