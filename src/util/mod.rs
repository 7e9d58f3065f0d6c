//! Primitives the rest of the crate shares, each written once: a token bucket
//! ([`TokenBucket`]), a crash-safe file write ([`atomic_write`]) and the human-readable
//! size and rate formatters ([`fmt`]).

mod atomic;
pub mod fmt;
mod token_bucket;

pub use atomic::{atomic_write, atomic_write_async, atomic_write_with};
pub use token_bucket::TokenBucket;
