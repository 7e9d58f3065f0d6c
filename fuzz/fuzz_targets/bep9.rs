//! BEP 9 ut_metadata messages and BEP 10 extension handshakes: decode and round trip.
//! The body lives in `trackerless::fuzzing::bep9` so the corpus replay test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackerless::fuzzing::bep9(data));
