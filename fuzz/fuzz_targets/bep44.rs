//! See `trackerless::fuzzing::bep44` for what this target drives and the properties it checks.
//! The body lives in the library so the corpus replay test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackerless::fuzzing::bep44::bep44(data));
