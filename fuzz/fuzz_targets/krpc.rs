//! KRPC datagrams: bencode pre-scan, typed decode, differential check against the serde reference decoder, re-encode round trip.
//! The body lives in `trackerless::fuzzing::krpc` so the corpus replay test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackerless::fuzzing::krpc(data));
