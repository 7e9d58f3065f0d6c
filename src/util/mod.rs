//! Primitives the rest of the crate shares, each written once: a token bucket
//! ([`TokenBucket`]), a crash-safe file write ([`atomic_write`]) and the human-readable
//! size and rate formatters ([`fmt`]).

// Every public item here is documented, and stays so: the rest of the crate gets the same
// lint module by module as each owner finishes its rustdoc (issue 11, part 5).
#![deny(missing_docs)]

mod atomic;
pub mod fmt;
mod token_bucket;

pub use atomic::{atomic_write, atomic_write_async, atomic_write_with};
pub use token_bucket::TokenBucket;
