//! The 20-byte info hash of BEP 3: the SHA-1 of a torrent's bencoded info dict, which names the
//! torrent everywhere (DHT, handshake, magnet links, crawl stores).
//!
//! A type of its own, not a bare `[u8; 20]` nor the DHT's [`NodeId`]: the handshake carries an
//! info hash and a peer id side by side, and the DHT has node ids and info hashes in the same
//! messages; with one type for all of them a swapped argument compiles silently. Info hashes
//! and node ids do share one 160-bit keyspace (BEP 5 looks a torrent up by XOR distance to its
//! info hash), so there is a crossing, but only an explicit one: [`InfoHash::to_node_id`] and
//! [`InfoHash::from_node_id`]. There are deliberately no `From` impls between the two.

use sha1::{Digest, Sha1};

use crate::dht::id::NodeId;

/// Length of an info hash in bytes (SHA-1).
pub const INFO_HASH_LEN: usize = 20;

/// A v1 info hash (BEP 3), ordered as a big-endian unsigned integer like [`NodeId`], so sorted
/// stores and key ranges keep the order they had when info hashes were node ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; INFO_HASH_LEN]);

crate::util::id160::id160_common!(InfoHash, "an info hash");

impl InfoHash {
    /// The info hash of a bencoded info dict: SHA-1 over its exact bytes. Callers must pass
    /// the dict as received or stored, never a re-encoding, or the hash names another torrent.
    pub fn of_info(info_dict: &[u8]) -> Self {
        InfoHash(Sha1::digest(info_dict).into())
    }

    /// The same 160 bits as a DHT lookup target. This is the one explicit crossing from the
    /// torrent keyspace's type into the DHT's: BEP 5 finds the nodes responsible for a torrent
    /// by XOR distance between their node ids and its info hash.
    pub fn to_node_id(self) -> NodeId {
        NodeId(self.0)
    }

    /// The inverse of [`InfoHash::to_node_id`]: a 160-bit DHT key read back as an info hash
    /// (a lookup's target, a BEP 51 sample handled as a node id). Explicit on purpose, like
    /// its inverse.
    pub fn from_node_id(id: NodeId) -> Self {
        InfoHash(id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f10111213";

    fn counting() -> InfoHash {
        let mut b = [0u8; 20];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        InfoHash(b)
    }

    #[test]
    fn hex_round_trip() {
        let ih = counting();
        assert_eq!(ih.to_hex(), HEX);
        assert_eq!(InfoHash::from_hex(HEX), Some(ih));
        assert_eq!(InfoHash::from_hex(&HEX.to_uppercase()), Some(ih));
        assert_eq!(HEX.parse::<InfoHash>(), Ok(ih));
        assert_eq!(InfoHash::from_hex(&HEX[..38]), None);
        assert_eq!(InfoHash::from_hex(&format!("{HEX}00")), None);
        assert_eq!(InfoHash::from_hex(&HEX.replace('0', "g")), None);
        assert!("xyz".parse::<InfoHash>().is_err());
        let mut rng = rand::rng();
        let r = InfoHash::random(&mut rng);
        assert_eq!(InfoHash::from_hex(&r.to_hex()), Some(r));
    }

    #[test]
    fn display_and_debug() {
        let ih = counting();
        assert_eq!(ih.to_string(), HEX);
        assert_eq!(format!("{ih:?}"), format!("InfoHash({HEX})"));
        assert_eq!(InfoHash([0xab; 20]).to_string(), "ab".repeat(20));
    }

    #[test]
    fn of_info_is_the_sha1_of_the_dict() {
        // SHA-1 of the empty string and of "abc" (FIPS 180 test vectors).
        assert_eq!(
            InfoHash::of_info(b"").to_hex(),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            InfoHash::of_info(b"abc").to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn from_slice_wants_exactly_20_bytes() {
        let ih = counting();
        assert_eq!(InfoHash::from_slice(ih.as_bytes()), Some(ih));
        assert_eq!(InfoHash::from_slice(&[1; 19]), None);
        assert_eq!(InfoHash::from_slice(&[1; 21]), None);
        assert_eq!(InfoHash::from_slice(&[]), None);
    }

    #[test]
    fn node_id_crossing_round_trips() {
        let ih = counting();
        let id = ih.to_node_id();
        assert_eq!(id.as_bytes(), ih.as_bytes());
        assert_eq!(InfoHash::from_node_id(id), ih);
        let id = NodeId([0x5a; 20]);
        assert_eq!(InfoHash::from_node_id(id).to_node_id(), id);
    }

    #[test]
    fn orders_like_node_ids() {
        let a = InfoHash([0; 20]);
        let mut b = [0; 20];
        b[19] = 1;
        let b = InfoHash(b);
        let c = InfoHash([0xff; 20]);
        assert!(a < b && b < c);
        assert_eq!(a.to_node_id() < b.to_node_id(), a < b);
    }
}
