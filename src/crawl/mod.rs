//! `dht-crawl`: an honest, rate-limited survey of the DHT's infohashes.
//!
//! The crawler is a normal DHT node (its own id, answering every query) that walks the
//! keyspace with BEP 51 `sample_infohashes`, records every infohash it learns (from samples,
//! and from the get_peers/announce_peer queries other nodes send it), and optionally fetches
//! each torrent's metadata.
//!
//! - [`walk`]: the sans-IO scheduler (which node next, when; politeness rules), one walk
//!   per address family and both under one rate limit ([`DualWalker`]);
//! - [`store`]: the sled store and its durability contract;
//! - [`pg`]: the PostgreSQL store (many crawlers, one database), same contract;
//! - [`backend`]: [`Store`], either of them, what the crawl and the export use;
//! - [`export`]: JSON lines and CSV;
//! - [`enrich`]: the bounded metadata worker pool;
//! - [`web`]: `dht-crawl serve`, the read-only search and status page and JSON API;
//! - [`run`](mod@run): the tokio crawler tying them to a [`crate::dht::driver::DhtHandle`];
//! - `sim` (feature `testing`): the same walk on the virtual-time simulators, the IPv4
//!   one and the dual-stack one (both families' walks, as [`run()`] drives them).

#![deny(missing_docs)]

pub mod backend;
pub mod enrich;
pub mod export;
pub mod pg;
pub mod run;
#[cfg(feature = "testing")]
pub mod sim;
pub mod store;
pub mod walk;
pub mod web;

pub use backend::Store;
pub use pg::PgStore;
pub use run::{CrawlConfig, CrawlError, CrawlReport, CrawlStatus, FamilyStatus, ScrapeConfig, run};
pub use store::{CrawlStore, Record, StoreConfig, SwarmEstimate, TorrentMeta};
pub use walk::{DualWalker, WalkConfig, WalkError, WalkQuery, WalkStats, Walker};
