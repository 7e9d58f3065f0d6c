//! Primitives the rest of the crate shares, each written once: a token bucket
//! ([`TokenBucket`]), retry pauses ([`Backoff`]), a crash-safe file write ([`atomic_write`]), the human-readable
//! size and rate formatters ([`fmt`]), opening a sled store ([`sled_open`]), the byte
//! handling every 160-bit id type shares ([`id160`]), and process-wide event counters
//! (`counters`).

// Every public item here is documented, and stays so: the rest of the crate gets the same
// lint module by module as each owner finishes its rustdoc (issue 11, part 5).
#![deny(missing_docs)]

mod atomic;
mod backoff;
pub(crate) mod counters;
pub mod fmt;
pub mod id160;
pub mod sled_open;
mod token_bucket;

pub use atomic::{atomic_write, atomic_write_async, atomic_write_private, atomic_write_with};
pub use backoff::Backoff;
pub use token_bucket::TokenBucket;

/// Resident memory of this process in bytes, from `/proc/self/statm` (0 where it is
/// missing): what operators graph to see a store or a queue grow.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
