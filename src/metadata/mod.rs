//! BEP 9 metadata exchange on top of [`crate::wire`]: fetching a torrent's info dict from
//! peers ([`fetch`]), with lie detection ([`assemble`]), and serving it to others ([`serve`]).
//!
//! A magnet link names a torrent only by its info hash; the info dict itself (names, sizes,
//! piece hashes) has to come from the peers the DHT finds. Those peers are strangers, so
//! nothing they send is trusted until the assembled dict hashes to the info hash, and a peer
//! whose blocks break that is identified and dropped rather than failing the whole fetch.

#![deny(missing_docs)]

pub mod assemble;
pub mod coordinator;
mod driver;
pub mod fetch;
pub mod peer_source;
pub mod serve;

pub use assemble::{Assembly, BlockError, Verdict};
pub use coordinator::{Action, Coordinator, CoordinatorConfig, PeerEvent};
pub use fetch::{
    FetchConfig, FetchError, FetchStats, Fetched, Misbehavior, PeerOutcome, PeerReport, PeerSource,
    fetch_metadata,
};
pub use serve::{
    MetadataAnswer, MetadataRegistry, MetadataServer, PeerHandoff, ServeConfig, ServeContext,
    ServeCounts, ServeStats, answer_metadata, serve_connection,
};
