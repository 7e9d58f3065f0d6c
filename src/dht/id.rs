//! 160-bit identifiers (node ids and infohashes), XOR distance and compact contact encoding.
//!
//! Node ids and infohashes live in the same keyspace (that is what makes the DHT work), but
//! they are different types: [`InfoHash`] (re-exported here from [`crate::torrent`]) crosses
//! into a [`NodeId`] lookup target only through [`InfoHash::to_node_id`], never silently.

use std::net::{Ipv4Addr, SocketAddrV4};

use rand::Rng;

/// Length of ids and infohashes in bytes.
pub const ID_LEN: usize = 20;
/// Length of a compact node info entry: id, IPv4 address, port.
pub const COMPACT_NODE_LEN: usize = 26;
/// Length of a compact peer info entry: IPv4 address, port.
pub const COMPACT_PEER_LEN: usize = 6;

/// A 160-bit node id (or DHT lookup target), compared as a big-endian unsigned integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; ID_LEN]);

/// Re-exported so `dht::id::InfoHash` keeps naming the torrent's info hash type.
pub use crate::torrent::InfoHash;

crate::util::id160::id160_common!(NodeId, "a node id");

impl NodeId {
    /// XOR distance to `other`; smaller is closer.
    pub fn distance(&self, other: &NodeId) -> NodeId {
        let mut d = [0u8; ID_LEN];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        NodeId(d)
    }

    /// Number of leading bits shared with `other` (160 when equal).
    pub fn common_prefix_len(&self, other: &NodeId) -> usize {
        for i in 0..ID_LEN {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        ID_LEN * 8
    }

    /// Value of bit `index` (0 = most significant).
    pub fn bit(&self, index: usize) -> bool {
        self.0[index / 8] & (0x80 >> (index % 8)) != 0
    }

    /// A random id that shares exactly the first `prefix_len` bits with `self` and differs in
    /// the next one, i.e. a random id in the bucket at depth `prefix_len` of a table owned by
    /// `self`. With `prefix_len == 160` it returns `self`.
    pub fn random_at_depth<R: Rng + ?Sized>(&self, prefix_len: usize, rng: &mut R) -> NodeId {
        if prefix_len >= ID_LEN * 8 {
            return *self;
        }
        let mut out = NodeId::random(rng);
        for i in 0..prefix_len {
            out.set_bit(i, self.bit(i));
        }
        out.set_bit(prefix_len, !self.bit(prefix_len));
        out
    }

    fn set_bit(&mut self, index: usize, value: bool) {
        let mask = 0x80 >> (index % 8);
        if value {
            self.0[index / 8] |= mask;
        } else {
            self.0[index / 8] &= !mask;
        }
    }
}

impl From<[u8; ID_LEN]> for NodeId {
    fn from(b: [u8; ID_LEN]) -> Self {
        NodeId(b)
    }
}

/// A DHT node's id and UDP address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Contact {
    /// The node's id.
    pub id: NodeId,
    /// The node's UDP address.
    pub addr: SocketAddrV4,
}

impl Contact {
    /// A contact for node `id` at `addr`.
    pub fn new(id: NodeId, addr: SocketAddrV4) -> Self {
        Contact { id, addr }
    }

    /// Appends the 26-byte compact node info.
    pub fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        write_compact_peer(self.addr, out);
    }

    /// Parses one 26-byte compact node info entry.
    pub fn from_compact(b: &[u8]) -> Option<Contact> {
        if b.len() != COMPACT_NODE_LEN {
            return None;
        }
        let id = NodeId::from_slice(&b[..ID_LEN])?;
        let addr = compact_peer(&b[ID_LEN..])?;
        Some(Contact { id, addr })
    }
}

/// Iterates the complete 26-byte entries of a compact `nodes` string (a ragged tail, which
/// only broken senders produce, is ignored rather than failing the whole reply).
pub fn compact_nodes(b: &[u8]) -> impl Iterator<Item = Contact> + '_ {
    b.chunks_exact(COMPACT_NODE_LEN)
        .filter_map(Contact::from_compact)
}

/// Appends the 6-byte compact peer info of an address.
pub fn write_compact_peer(addr: SocketAddrV4, out: &mut Vec<u8>) {
    out.extend_from_slice(&addr.ip().octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The 6-byte compact peer info of an address.
pub fn compact_peer_bytes(addr: SocketAddrV4) -> [u8; COMPACT_PEER_LEN] {
    let o = addr.ip().octets();
    let p = addr.port().to_be_bytes();
    [o[0], o[1], o[2], o[3], p[0], p[1]]
}

/// Parses 6-byte compact peer info.
pub fn compact_peer(b: &[u8]) -> Option<SocketAddrV4> {
    if b.len() != COMPACT_PEER_LEN {
        return None;
    }
    let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Some(SocketAddrV4::new(ip, u16::from_be_bytes([b[4], b[5]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_prefix() {
        let a = NodeId([0u8; 20]);
        let mut b = [0u8; 20];
        b[2] = 0b0001_0000;
        let b = NodeId(b);
        assert_eq!(a.common_prefix_len(&b), 19);
        assert_eq!(a.common_prefix_len(&a), 160);
        assert_eq!(a.distance(&b), b);
        assert!(a.distance(&b) < NodeId([0xff; 20]));
    }

    #[test]
    fn random_at_depth_lands_in_the_bucket() {
        let mut rng = rand::rng();
        let own = NodeId::random(&mut rng);
        for depth in [0, 1, 7, 8, 63, 159] {
            for _ in 0..20 {
                let r = own.random_at_depth(depth, &mut rng);
                assert_eq!(own.common_prefix_len(&r), depth);
            }
        }
        assert_eq!(own.random_at_depth(160, &mut rng), own);
    }

    #[test]
    fn compact_round_trip() {
        let c = Contact::new(NodeId([7; 20]), "127.1.2.3:6881".parse().unwrap());
        let mut v = Vec::new();
        c.write_compact(&mut v);
        assert_eq!(v.len(), 26);
        assert_eq!(Contact::from_compact(&v), Some(c));
        v.extend_from_slice(&[1, 2, 3]);
        assert_eq!(compact_nodes(&v).collect::<Vec<_>>(), vec![c]);
        assert_eq!(compact_peer(&compact_peer_bytes(c.addr)), Some(c.addr));
    }

    #[test]
    fn hex_parse() {
        let id: NodeId = "000102030405060708090a0b0c0d0e0f10111213".parse().unwrap();
        assert_eq!(id.0[19], 0x13);
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f10111213");
        assert!("xyz".parse::<NodeId>().is_err());
    }
}
