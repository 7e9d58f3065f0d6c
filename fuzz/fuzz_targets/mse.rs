//! MSE/PE encryption handshake, either role, fed arbitrary peer bytes.
//! The body lives in `trackerless::fuzzing::mse` so the corpus replay test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackerless::fuzzing::mse(data));
