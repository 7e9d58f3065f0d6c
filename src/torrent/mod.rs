//! What a torrent is: metainfo files (`.torrent`, BEP 3 info dicts) and magnet links.

#![deny(missing_docs)]

pub mod hybrid;
pub mod magnet;
pub mod metainfo;
pub mod peer_id;

pub use peer_id::PeerId;
