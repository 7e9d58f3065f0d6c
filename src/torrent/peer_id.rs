//! The 20-byte peer id of BEP 3 / BEP 20.
//!
//! A type of its own, not a bare `[u8; 20]`: the handshake carries an info hash and a peer id
//! side by side, and with two arrays of the same type a swapped argument compiles silently.

use std::fmt;

use rand::Rng;

/// Client prefix of our peer ids, Azureus style (`-XXnnnn-`), so peers and crawlers can tell
/// which software they are talking to.
pub const PEER_ID_PREFIX: &[u8; 8] = &[
    b'-',
    crate::CLIENT_CODE[0],
    crate::CLIENT_CODE[1],
    b'0',
    b'0',
    b'0',
    b'1',
    b'-',
];

/// A peer id: who a peer-wire connection is with (BEP 3), conventionally
/// `-<client><version>-` and random bytes (BEP 20, Azureus style).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// A fresh one of ours: [`PEER_ID_PREFIX`] and 12 random bytes. Random per process (or
    /// per torrent, at the caller's choice) so two of our instances never collide and a peer
    /// cannot link our sessions by id.
    pub fn generate() -> PeerId {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(PEER_ID_PREFIX);
        rand::rng().fill_bytes(&mut id[8..]);
        PeerId(id)
    }

    /// The raw bytes, as sent in the handshake.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

/// Printable bytes as they are (`-TK0001-` prefixes are what readers look for), others as
/// `\xNN`.
impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId(\"{}\")", self.0.escape_ascii())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_name_the_client_and_differ() {
        let a = PeerId::generate();
        let b = PeerId::generate();
        assert_eq!(&a.as_bytes()[..8], b"-TK0001-");
        assert_ne!(a, b);
        assert_eq!(
            format!("{:?}", PeerId(*b"-TK0001-\x00bcdefghijkl")),
            "PeerId(\"-TK0001-\\x00bcdefghijkl\")"
        );
    }
}
