//! The BitTorrent peer wire: handshake (BEP 3), messages (BEP 3, BEP 5 `port`, BEP 6 fast),
//! the extension protocol (BEP 10) and metadata exchange (BEP 9 `ut_metadata`).
//!
//! Layered so the parsing can be tested and fuzzed without sockets:
//! - [`handshake`], [`message`], [`ext`], [`ut_metadata`] are pure codecs; [`FrameDecoder`] is a
//!   sans-IO decoder fed with arbitrary byte chunks.
//! - [`conn`] puts them on tokio streams: [`connect`] (the allow-list gate every outgoing
//!   peer connection passes), the two handshake directions, and [`PeerConn`], which splits
//!   into a [`PeerReader`] and a [`PeerWriter`] for concurrent reader and writer tasks.
//!
//! Peer input never panics: a malformed frame is a [`FrameError`] that ends the connection,
//! while malformed extension payloads are errors the caller may simply ignore.

#![deny(missing_docs)]

mod benc;
pub mod conn;
pub mod enc_policy;
pub mod ext;
pub mod fast;
pub mod handshake;
pub mod message;
pub mod mse;
pub mod mse_io;
pub mod negotiate;
pub mod pex;
pub mod transport;
pub mod ut_metadata;

#[cfg(test)]
mod conn_tests;

pub use conn::{
    PeerConn, PeerReader, PeerWriter, Phase, WireConfig, WireError, check_peer_allowed, connect,
    connect_from, handshake_incoming, handshake_outgoing, refused_connects,
};
pub use enc_policy::EncryptionPolicy;
pub use ext::{
    EXT_HANDSHAKE_ID, ExtError, ExtHandshake, OUR_UT_METADATA_ID, OUR_UT_PEX_ID, UT_METADATA,
};
pub use handshake::{HANDSHAKE_LEN, Handshake, HandshakeError};
pub use message::{BLOCK_SIZE, DEFAULT_MAX_FRAME, FrameDecoder, FrameError, Message};
pub use negotiate::{CryptoCounts, accept_incoming, crypto_counts, open_outgoing};
pub use transport::{
    PeerReadHalf, PeerStream, PeerWriteHalf, StreamCrypto, TransportCounts, TransportKind,
    Transports, connect_peer, note_accepted, transport_counts,
};
pub use ut_metadata::{
    MAX_METADATA_SIZE, METADATA_BLOCK, MetadataError, MetadataMsg, metadata_block_len,
    num_metadata_pieces, valid_metadata_size,
};
