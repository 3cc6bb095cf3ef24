#![no_main]
//! See gateway::fuzz::kafka_record.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::fuzz::kafka_record(data));
