#![no_main]
//! See gateway::fuzz::client_frames.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::fuzz::client_frames(data));
