//! The 68-byte BitTorrent handshake (BEP 3) and our peer id.

use std::fmt;

use crate::torrent::{InfoHash, PeerId};

/// The protocol string every handshake starts with, after its one-byte length.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Length of a handshake on the wire: 1 + 19 + 8 + 20 + 20.
pub const HANDSHAKE_LEN: usize = 68;

/// Reserved-byte index and mask of the DHT bit (BEP 5): a peer setting it may send `port`.
pub const RESERVED_DHT: (usize, u8) = (7, 0x01);
/// Reserved-byte index and mask of the fast extension (BEP 6). We never set it: a peer that
/// sees it may send have-all/reject/allowed-fast messages we do not implement.
pub const RESERVED_FAST: (usize, u8) = (7, 0x04);
/// Reserved-byte index and mask of the extension protocol (BEP 10), needed for ut_metadata.
pub const RESERVED_EXTENSIONS: (usize, u8) = (5, 0x10);

/// A peer's (or our own) handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Capability bits; see the `RESERVED_*` constants.
    pub reserved: [u8; 8],
    /// The torrent the connection is about. Its own type, so a constructor call with the
    /// info hash and the peer id swapped (both 20 bytes) does not compile.
    pub info_hash: InfoHash,
    /// The sender's peer id.
    pub peer_id: PeerId,
}

/// Why 68 bytes are not a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Fewer than 68 bytes.
    Truncated(usize),
    /// The first 20 bytes are not `\x13BitTorrent protocol` (e.g. an encrypted (MSE)
    /// connection, or not BitTorrent at all).
    BadProtocol,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Truncated(n) => {
                write!(f, "handshake truncated: {n} of {HANDSHAKE_LEN} bytes")
            }
            HandshakeError::BadProtocol => {
                write!(
                    f,
                    "handshake does not start with \"\\x13BitTorrent protocol\""
                )
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

impl Handshake {
    /// Our handshake: DHT, extension-protocol and fast (BEP 6) bits set. Connections that
    /// never trade pieces (metadata-only ones) clear the fast bit with
    /// [`Handshake::without_fast`], so they are not bound by its rules.
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        let mut reserved = [0u8; 8];
        reserved[RESERVED_DHT.0] |= RESERVED_DHT.1;
        reserved[RESERVED_EXTENSIONS.0] |= RESERVED_EXTENSIONS.1;
        reserved[RESERVED_FAST.0] |= RESERVED_FAST.1;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// The same handshake without the fast bit: for a connection that only moves metadata,
    /// where BEP 6's "every request gets a piece or a reject" and its opening
    /// have-all/have-none would be promises about pieces we never trade.
    pub fn without_fast(mut self) -> Self {
        self.reserved[RESERVED_FAST.0] &= !RESERVED_FAST.1;
        self
    }

    /// Whether the sender runs a DHT node (and may send a `port` message).
    pub fn supports_dht(&self) -> bool {
        self.reserved[RESERVED_DHT.0] & RESERVED_DHT.1 != 0
    }

    /// Whether the sender speaks BEP 10, so an extension handshake may be sent.
    pub fn supports_extensions(&self) -> bool {
        self.reserved[RESERVED_EXTENSIONS.0] & RESERVED_EXTENSIONS.1 != 0
    }

    /// Whether the sender claims the fast extension (BEP 6). Fast messages are only valid
    /// when both handshakes set it.
    pub fn supports_fast(&self) -> bool {
        self.reserved[RESERVED_FAST.0] & RESERVED_FAST.1 != 0
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(self.info_hash.as_bytes());
        out[48..68].copy_from_slice(self.peer_id.as_bytes());
        out
    }

    /// Parses the first 68 bytes of `buf`; anything after is the peer's first messages and is
    /// not looked at.
    pub fn decode(buf: &[u8]) -> Result<Self, HandshakeError> {
        if buf.len() < HANDSHAKE_LEN {
            // Check what we have of the prefix first, so garbage is reported as such.
            let n = buf.len().min(20);
            if buf[..n] != prefix()[..n] {
                return Err(HandshakeError::BadProtocol);
            }
            return Err(HandshakeError::Truncated(buf.len()));
        }
        if buf[..20] != prefix() {
            return Err(HandshakeError::BadProtocol);
        }
        let mut hs = Handshake {
            reserved: [0; 8],
            info_hash: InfoHash([0; 20]),
            peer_id: PeerId([0; 20]),
        };
        hs.reserved.copy_from_slice(&buf[20..28]);
        hs.info_hash.0.copy_from_slice(&buf[28..48]);
        hs.peer_id.0.copy_from_slice(&buf[48..68]);
        Ok(hs)
    }
}

/// `\x13BitTorrent protocol`.
fn prefix() -> [u8; 20] {
    let mut p = [0u8; 20];
    p[0] = PROTOCOL.len() as u8;
    p[1..].copy_from_slice(PROTOCOL);
    p
}

impl fmt::Debug for Handshake {
    /// Hex, because the raw byte arrays are unreadable in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("reserved", &hex::encode(self.reserved))
            .field("info_hash", &self.info_hash.to_hex())
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real handshake from the packet capture in the design notes (`design-notes-seed.txt`,
    /// phase 4, "Peer sends greeting to client (frame 41)"): BitTorrent 3.x, no reserved bits.
    const CAPTURED: &str = concat!(
        "13426974546f7272656e742070726f746f636f6c", // 0x13 "BitTorrent protocol"
        "0000000000000000",                         // reserved
        "2d044fc0db1a617539be4d72c2a545a0fd4803e2", // info hash
        "0000000000000000000000007c2ee11def27a366", // peer id
    );

    #[test]
    fn decodes_captured_handshake() {
        let captured = hex::decode(CAPTURED).unwrap();
        let hs = Handshake::decode(&captured).unwrap();
        assert_eq!(hs.reserved, [0; 8]);
        assert!(!hs.supports_dht() && !hs.supports_extensions() && !hs.supports_fast());
        // The capture's notes give the info hash URL-encoded.
        assert_eq!(
            hs.info_hash.to_hex(),
            "2d044fc0db1a617539be4d72c2a545a0fd4803e2"
        );
        assert_eq!(
            hex::encode(hs.peer_id.0),
            "0000000000000000000000007c2ee11def27a366"
        );
        assert_eq!(hs.encode()[..], captured[..]);
    }

    #[test]
    fn our_handshake_sets_dht_extension_and_fast_bits_only() {
        let hs = Handshake::new(InfoHash([1; 20]), PeerId::generate());
        assert_eq!(hs.reserved, [0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        assert!(hs.supports_dht() && hs.supports_extensions() && hs.supports_fast());
        let wire = hs.encode();
        assert_eq!(&wire[..20], b"\x13BitTorrent protocol");
        assert_eq!(Handshake::decode(&wire), Ok(hs));
        let plain = hs.without_fast();
        assert_eq!(plain.reserved, [0, 0, 0, 0, 0, 0x10, 0, 0x01]);
        assert!(plain.supports_dht() && plain.supports_extensions() && !plain.supports_fast());
    }

    #[test]
    fn rejects_bad_handshakes() {
        let captured = hex::decode(CAPTURED).unwrap();
        let mut bad = captured.clone();
        bad[5] = b'X';
        assert_eq!(Handshake::decode(&bad), Err(HandshakeError::BadProtocol));
        assert_eq!(
            Handshake::decode(&captured[..67]),
            Err(HandshakeError::Truncated(67))
        );
        assert_eq!(Handshake::decode(&[]), Err(HandshakeError::Truncated(0)));
        assert_eq!(
            Handshake::decode(b"GET / HTTP/1.1"),
            Err(HandshakeError::BadProtocol)
        );
    }

    #[test]
    fn peer_ids_are_prefixed_and_random() {
        let a = PeerId::generate();
        let b = PeerId::generate();
        assert_eq!(&a.0[..8], b"-TK0001-");
        assert_eq!(&b.0[..8], b"-TK0001-");
        // 96 random bits: equal ids mean the generator is broken.
        assert_ne!(a, b);
    }
}
