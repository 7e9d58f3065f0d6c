//! What a torrent is: metainfo files (`.torrent`, BEP 3 info dicts) and magnet links.

#![deny(missing_docs)]

pub mod hybrid;
pub mod info_hash;
pub mod magnet;
pub mod metainfo;
pub mod peer_id;

pub use info_hash::InfoHash;
pub use peer_id::PeerId;
