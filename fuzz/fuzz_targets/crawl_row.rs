//! See `trackerless::fuzzing::crawl_row` for what this target drives and the properties it checks.
//! The body lives in the library so the corpus replay test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackerless::fuzzing::crawl_row::crawl_row(data));
