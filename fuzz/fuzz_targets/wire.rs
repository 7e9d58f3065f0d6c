//! Peer-wire byte streams: frame decoder whole vs chunked, frame round trip, handshake, extended payloads.
//! The body lives in `trackerless::fuzzing::wire` so the corpus replay test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackerless::fuzzing::wire(data));
