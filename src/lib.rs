//! trackerless: a BitTorrent Mainline DHT (BEP 5) node, crawler and trackerless downloader.
//!
//! The DHT node is a sans-IO state machine ([`dht::node::Node`]) driven either by a tokio UDP driver
//! ([`dht::driver`]) or by the virtual-time simulator (`sim`), so the code that runs on the public
//! network is the same code the tests and benchmarks exercise at scale.
//!
//! The test harnesses (`sim`, `fuzzing`, `crawl::sim`) are compiled only with the
//! `testing` feature, which the crate's own tests, benches, tools and fuzz targets turn on, so a
//! library user does not carry them.
//!
//! Where to start: [`client::Client`] downloads and seeds magnets and `.torrent` files;
//! [`dht::driver::Dht`] runs a DHT node on its own; [`crawl`] collects infohashes.

// Every public item carries rustdoc, and stays so.
#![deny(missing_docs)]

pub mod bencode;

/// Our two-letter client code, in the DHT `v` tag and in the peer id (`-TK0001-`). Peers and
/// crawlers identify clients by it (libtorrent's `identify_client`, the tables on the
/// BitTorrent wiki), so it must be one no known client uses: "TL", used before, is Tribler's.
pub const CLIENT_CODE: [u8; 2] = *b"TK";
pub mod client;
pub mod crawl;
pub mod dht;
pub mod download;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod metadata;
#[cfg(feature = "testing")]
pub mod sim;
pub mod torrent;
pub mod util;
pub mod wire;
