//! 160-bit identifiers (node ids and infohashes), XOR distance and compact contact encoding
//! for both address families (BEP 5's 6/26-byte IPv4 forms, BEP 32's 18/38-byte IPv6 forms).
//!
//! Node ids and infohashes live in the same keyspace (that is what makes the DHT work), but
//! they are different types: [`InfoHash`] (re-exported here from [`crate::torrent`]) crosses
//! into a [`NodeId`] lookup target only through [`InfoHash::to_node_id`], never silently.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use rand::Rng;

use crate::dht::krpc::{Response, ResponseBody};

/// Length of ids and infohashes in bytes.
pub const ID_LEN: usize = 20;
/// Length of a compact node info entry: id, IPv4 address, port.
pub const COMPACT_NODE_LEN: usize = 26;
/// Length of a compact peer info entry: IPv4 address, port.
pub const COMPACT_PEER_LEN: usize = 6;
/// Length of a BEP 32 compact IPv6 node info entry (`nodes6`): id, IPv6 address, port.
pub const COMPACT_NODE6_LEN: usize = 38;
/// Length of a BEP 32 compact IPv6 peer (an 18-byte `values` entry): address, port.
pub const COMPACT_PEER6_LEN: usize = 18;

/// The DHT's two address families. BEP 32 runs them as two independent DHTs (one routing
/// table, node id and peer store each), joined only by `want`, which lets a query sent over
/// one family ask for contacts of the other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: 6-byte peers, 26-byte nodes, `nodes`, `n4`.
    V4,
    /// IPv6: 18-byte peers, 38-byte nodes, `nodes6`, `n6`.
    V6,
}

impl Family {
    /// The family of an address (an IPv4-mapped IPv6 address is IPv4).
    pub fn of(addr: SocketAddr) -> Family {
        match addr.ip().to_canonical() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `"ipv4"` or `"ipv6"`: the label of logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A UDP address of one family, as the sans-IO core holds it: `SocketAddrV4` for the IPv4
/// DHT, `SocketAddrV6` for the IPv6 one. The core is generic over it so that each family's
/// tables hold only their own addresses, unconvertible by construction, and the IPv4 path
/// keeps its 6-byte keys rather than paying for an enum on every packet.
pub trait NodeAddr:
    Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static + Into<SocketAddr>
{
    /// Which family this is.
    const FAMILY: Family;
    /// Bytes of a compact peer (6 or 18).
    const COMPACT_LEN: usize;
    /// Bytes of a compact node (26 or 38).
    const NODE_LEN: usize = ID_LEN + Self::COMPACT_LEN;
    /// The host part (`Ipv4Addr` or `Ipv6Addr`): the key of per-IP limits, tokens and votes.
    type Ip: Copy
        + Eq
        + Ord
        + Hash
        + fmt::Debug
        + fmt::Display
        + Send
        + Sync
        + 'static
        + Into<IpAddr>;

    /// Parses a compact peer of exactly [`Self::COMPACT_LEN`] bytes.
    fn from_compact(b: &[u8]) -> Option<Self>;
    /// Appends the compact peer form.
    fn write_compact(&self, out: &mut Vec<u8>);
    /// This family's form of `a`; `None` for the other family. An IPv4-mapped IPv6 address
    /// is IPv4.
    fn from_socket(a: SocketAddr) -> Option<Self>;
    /// The IP address.
    fn ip_addr(&self) -> IpAddr;
    /// The port.
    fn port_number(&self) -> u16;
    /// The same host on another port.
    fn with_port(&self, port: u16) -> Self;
    /// An address from its parts.
    fn from_parts(ip: Self::Ip, port: u16) -> Self;
    /// The host.
    fn host(&self) -> Self::Ip;
    /// The network a routing bucket admits one node from: the /24 for IPv4, the /64 for
    /// IPv6 (one site's allocation; libtorrent restricts the same prefixes), as an integer.
    fn subnet(&self) -> u64;
    /// `0.0.0.0:0` or `[::]:0`.
    fn unspecified() -> Self;
    /// This family's peers in a reply's `values` (`values` or `values6`).
    fn values_in(r: &Response) -> &[Self];
    /// Puts this family's peers in a reply body (`values` or `values6`).
    fn set_values<'a>(body: &mut ResponseBody<'a>, v: &'a [Self]);
    /// This family's raw compact nodes in a reply (`nodes` or `nodes6`).
    fn nodes_in(r: &Response) -> Option<&[u8]> {
        match Self::FAMILY {
            Family::V4 => r.nodes.as_deref(),
            Family::V6 => r.nodes6.as_deref(),
        }
    }
}

/// Puts compact nodes of `family` in a reply body (`nodes` or `nodes6`).
pub fn set_nodes<'a>(body: &mut ResponseBody<'a>, family: Family, nodes: &'a [u8]) {
    match family {
        Family::V4 => body.nodes = Some(nodes),
        Family::V6 => body.nodes6 = Some(nodes),
    }
}

impl NodeAddr for SocketAddrV4 {
    const FAMILY: Family = Family::V4;
    type Ip = Ipv4Addr;
    const COMPACT_LEN: usize = COMPACT_PEER_LEN;

    fn from_compact(b: &[u8]) -> Option<Self> {
        compact_peer(b)
    }
    fn write_compact(&self, out: &mut Vec<u8>) {
        write_compact_peer(*self, out);
    }
    fn from_socket(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(a) => a
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddrV4::new(ip, a.port())),
        }
    }
    fn ip_addr(&self) -> IpAddr {
        IpAddr::V4(*self.ip())
    }
    fn port_number(&self) -> u16 {
        self.port()
    }
    fn with_port(&self, port: u16) -> Self {
        SocketAddrV4::new(*self.ip(), port)
    }
    fn from_parts(ip: Ipv4Addr, port: u16) -> Self {
        SocketAddrV4::new(ip, port)
    }
    fn host(&self) -> Ipv4Addr {
        *self.ip()
    }
    fn subnet(&self) -> u64 {
        u64::from(u32::from(*self.ip()) >> 8)
    }
    fn unspecified() -> Self {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)
    }
    fn values_in(r: &Response) -> &[Self] {
        &r.values
    }
    fn set_values<'a>(body: &mut ResponseBody<'a>, v: &'a [Self]) {
        body.values = v;
    }
}

impl NodeAddr for SocketAddrV6 {
    const FAMILY: Family = Family::V6;
    type Ip = Ipv6Addr;
    const COMPACT_LEN: usize = COMPACT_PEER6_LEN;

    fn from_compact(b: &[u8]) -> Option<Self> {
        compact_peer6(b)
    }
    fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ip().octets());
        out.extend_from_slice(&self.port().to_be_bytes());
    }
    fn from_socket(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none() => {
                Some(SocketAddrV6::new(*a.ip(), a.port(), 0, 0))
            }
            _ => None,
        }
    }
    fn ip_addr(&self) -> IpAddr {
        IpAddr::V6(*self.ip())
    }
    fn port_number(&self) -> u16 {
        self.port()
    }
    fn with_port(&self, port: u16) -> Self {
        SocketAddrV6::new(*self.ip(), port, 0, 0)
    }
    fn from_parts(ip: Ipv6Addr, port: u16) -> Self {
        SocketAddrV6::new(ip, port, 0, 0)
    }
    fn host(&self) -> Ipv6Addr {
        *self.ip()
    }
    fn subnet(&self) -> u64 {
        (u128::from(*self.ip()) >> 64) as u64
    }
    fn unspecified() -> Self {
        SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0)
    }
    fn values_in(r: &Response) -> &[Self] {
        &r.values6
    }
    fn set_values<'a>(body: &mut ResponseBody<'a>, v: &'a [Self]) {
        body.values6 = v;
    }
}

/// Parses an 18-byte compact IPv6 peer (BEP 32).
pub fn compact_peer6(b: &[u8]) -> Option<SocketAddrV6> {
    let b: &[u8; COMPACT_PEER6_LEN] = b.try_into().ok()?;
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let port = u16::from_be_bytes([b[16], b[17]]);
    Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
}

/// Parses a compact address of either length (6 bytes IPv4, 18 bytes IPv6), as the
/// top-level `ip` key carries it (BEP 42, BEP 32).
pub fn compact_addr(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        COMPACT_PEER_LEN => compact_peer(b).map(SocketAddr::V4),
        COMPACT_PEER6_LEN => compact_peer6(b).map(SocketAddr::V6),
        _ => None,
    }
}

/// Appends the compact form of an address of either family.
pub fn write_compact_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => a.write_compact(out),
        SocketAddr::V6(a) => a.write_compact(out),
    }
}

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

/// A DHT node's id and UDP address (IPv4 unless said otherwise: [`Contact6`] is the IPv6
/// DHT's).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Contact<A: NodeAddr = SocketAddrV4> {
    /// The node's id.
    pub id: NodeId,
    /// The node's UDP address.
    pub addr: A,
}

/// A contact of the IPv6 DHT (BEP 32).
pub type Contact6 = Contact<SocketAddrV6>;

impl<A: NodeAddr> Contact<A> {
    /// A contact for node `id` at `addr`.
    pub fn new(id: NodeId, addr: A) -> Self {
        Contact { id, addr }
    }

    /// Appends the compact node info (26 bytes IPv4, 38 bytes IPv6).
    pub fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        self.addr.write_compact(out);
    }

    /// Parses one compact node info entry of exactly this family's length.
    pub fn from_compact(b: &[u8]) -> Option<Self> {
        if b.len() != A::NODE_LEN {
            return None;
        }
        let id = NodeId::from_slice(&b[..ID_LEN])?;
        let addr = A::from_compact(&b[ID_LEN..])?;
        Some(Contact { id, addr })
    }
}

/// Iterates the complete entries of a compact `nodes` (IPv4) or `nodes6` (IPv6) string; a
/// ragged tail, which only broken senders produce, is ignored rather than failing the whole
/// reply.
pub fn compact_nodes<A: NodeAddr>(b: &[u8]) -> impl Iterator<Item = Contact<A>> + '_ {
    b.chunks_exact(A::NODE_LEN)
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
