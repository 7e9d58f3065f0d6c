//! The Mainline DHT (BEP 5): the sans-IO core ([`node::Node`] with its routing table, lookups,
//! transactions and peer store), the KRPC codec, the tokio UDP [`driver`], persistence, and the
//! bootstrap [`router`] mode.

#![deny(missing_docs)]

pub mod allow;
pub mod bep42;
pub mod bootstrap;
pub mod driver;
pub mod dual;
pub mod gate;
pub mod id;
pub mod item_keys;
pub mod item_search;
pub mod items;
pub mod krpc;
pub mod limits;
pub mod lookup;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod peer_feed;
pub mod peer_store;
pub mod persist;
pub mod router;
pub mod routing;
pub mod rpc;
pub mod scrape;
pub mod udp;
