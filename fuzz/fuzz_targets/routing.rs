#![no_main]
// See gateway_core::fuzzing::routing for what is fed in and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_core::fuzzing::routing(data));
