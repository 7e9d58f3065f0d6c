//! trackerless: a BitTorrent Mainline DHT (BEP 5) node, crawler and trackerless downloader.
//!
//! The DHT node is a sans-IO state machine ([`dht::node::Node`]) driven either by a tokio UDP driver
//! ([`dht::driver`]) or by the virtual-time simulator ([`sim`]), so the code that runs on the public
//! network is the same code the tests and benchmarks exercise at scale.

pub mod bencode;
pub mod cli;
pub mod crawl;
pub mod dht;
pub mod download;
pub mod fuzzing;
pub mod metadata;
pub mod probe;
pub mod sim;
pub mod torrent;
pub mod wire;
