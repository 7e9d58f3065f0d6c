//! .torrent files and bare info dicts: parse, write back, same info hash.
//! The body lives in `trackerless::fuzzing::metainfo` so the corpus replay test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackerless::fuzzing::metainfo(data));
