//! trackerless: a BitTorrent Mainline DHT (BEP 5) node, crawler and trackerless downloader.
//!
//! The DHT node is a sans-IO state machine ([`node::Node`]) driven either by a tokio UDP driver
//! ([`net`]) or by the virtual-time simulator ([`sim`]), so the code that runs on the public
//! network is the same code the tests and benchmarks exercise at scale.

pub mod allow;
pub mod bencode;
pub mod bep42;
pub mod bootstrap;
pub mod cli;
pub mod crawl;
pub mod download;
pub mod fuzzing;
pub mod id;
pub mod krpc;
pub mod limits;
pub mod lookup;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod metrics;
pub mod net;
pub mod node;
pub mod outbox;
pub mod persist;
pub mod probe;
pub mod router;
pub mod routing;
pub mod rpc;
pub mod sim;
pub mod storage;
pub mod wire;
