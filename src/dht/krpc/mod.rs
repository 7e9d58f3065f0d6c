//! KRPC messages (BEP 5, plus BEP 32 `want`/`nodes6`/IPv6 `values`, BEP 43 `ro`, BEP 42-style
//! top-level `ip` of either family and BEP 51 `sample_infohashes`): typed values, a tolerant
//! decoder and a hand-written encoder.
//!
//! Decoding is one borrowing pass over the datagram that validates its structure (size,
//! depth, lengths, nothing trailing) while it extracts the fields, and it is *lenient*:
//! unknown keys are skipped and a known key with the wrong type reads as absent, so that the
//! typed layer can decide between answering, answering with error 203, or dropping (see
//! `decode.rs` for why it is not built on serde_bencode). Encoding is written by hand because
//! serde_bencode's encoder buffers and sorts keys at run time (~7-10x slower than emitting our
//! few fixed shapes with their keys already in order); the tests check the bytes against
//! serde_bencode's canonical output.

mod decode;
mod encode;

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

pub use decode::{DecodeError, decode};
pub use encode::{
    Bep44Fields, ItemReply, QueryArgs, ResponseBody, encode_error, encode_get_response,
    encode_message, encode_query, encode_query_want, encode_response,
};

use crate::dht::id::{
    Contact, Contact6, Family, ID_LEN, InfoHash, NodeAddr, NodeId, compact_nodes,
};
use crate::dht::scrape::ScrapeFilter;

/// Largest datagram we accept or produce. Real KRPC messages stay under ~1.5 KB; anything
/// near the UDP maximum is hostile or broken.
pub const MAX_DATAGRAM: usize = 64 * 1024;

/// Generic error (BEP 5).
pub const ERR_GENERIC: i64 = 201;
/// Server error (BEP 5).
pub const ERR_SERVER: i64 = 202;
/// Protocol error: malformed packet, invalid arguments or bad token (BEP 5).
pub const ERR_PROTOCOL: i64 = 203;
/// Method unknown (BEP 5).
pub const ERR_METHOD_UNKNOWN: i64 = 204;
/// BEP 44: `v` larger than [`MAX_ITEM_VALUE`] bytes bencoded.
pub const ERR_VALUE_TOO_BIG: i64 = 205;
/// BEP 44: the mutable item's signature does not verify.
pub const ERR_BAD_SIGNATURE: i64 = 206;
/// BEP 44: `salt` longer than [`MAX_ITEM_SALT`] bytes.
pub const ERR_SALT_TOO_BIG: i64 = 207;
/// BEP 44: `cas` does not match the stored sequence number.
pub const ERR_CAS_MISMATCH: i64 = 301;
/// BEP 44: the put's sequence number is less than the stored one.
pub const ERR_SEQ_TOO_OLD: i64 = 302;

/// BEP 44: largest bencoded `v` a node must accept (and the most we store).
pub const MAX_ITEM_VALUE: usize = 1000;
/// BEP 44: longest `salt`.
pub const MAX_ITEM_SALT: usize = 64;

/// A short byte string stored inline, for transaction ids, tokens and version tags: they are
/// copied into long-lived tables (transactions, lookup candidates), so avoiding a heap
/// allocation per copy matters more than the few wasted bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShortBytes<const N: usize> {
    len: u8,
    buf: [u8; N],
}

impl<const N: usize> ShortBytes<N> {
    /// `None` when `b` is longer than `N`.
    pub fn new(b: &[u8]) -> Option<Self> {
        if b.len() > N || b.len() > u8::MAX as usize {
            return None;
        }
        let mut buf = [0u8; N];
        buf[..b.len()].copy_from_slice(b);
        Some(ShortBytes {
            len: b.len() as u8,
            buf,
        })
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Number of bytes held (at most `N`).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> fmt::Debug for ShortBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.as_slice()))
    }
}

/// Transaction id. Seen on the live DHT: 2, 4 and 8 bytes. BEP 5 sets no limit, so any
/// sane length is answered; 64 bytes bounds what one query can make us store and echo.
pub type Tid = ShortBytes<64>;
/// Announce token. Seen on the live DHT: 2 to 20 bytes; BEP 5 sets no limit, 64 bounds it.
pub type Token = ShortBytes<64>;
/// Client version tag (`v`), conventionally 4 bytes.
pub type Version = ShortBytes<8>;

/// One KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Transaction id `t`: set by the querier, echoed in the reply or error.
    pub tid: Tid,
    /// The `y`-selected part: query, response or error.
    pub body: Body,
    /// Top-level `ip`: in a reply, the replier's view of our address (BEP 42): 6 bytes for
    /// IPv4, 18 for IPv6 (BEP 32); another length reads as absent.
    pub ip: Option<SocketAddr>,
    /// BEP 43: the sender is read-only and must not be added to routing tables.
    pub read_only: bool,
    /// Top-level `v`: the sender's client version tag, if it sent one (too long: absent).
    pub version: Option<Version>,
}

/// The three KRPC message kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `y` = `q`: a query with its `q` method and `a` arguments.
    Query(Query),
    /// `y` = `r`: a reply, with its `r` dictionary.
    Response(Response),
    /// `y` = `e`: an error reply, with its `e` list.
    Error(ErrorBody),
}

/// A query: the sender's id and the method with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The querier's node id (`a.id`).
    pub id: NodeId,
    /// The method (`q`) and its arguments.
    pub method: Method,
    /// BEP 32 `want`: which families' nodes the querier asks for (empty when absent).
    pub want: Want,
}

/// BEP 32 `want`: a list of `n4` and `n6` naming the node lists a querier wants in the
/// reply (`nodes`, `nodes6`). Absent, the reply carries the nodes of the family the query
/// came over. Unknown entries are ignored, as BEP 32 asks, so new families can be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Want {
    /// `n4`: IPv4 nodes wanted (`nodes`).
    pub n4: bool,
    /// `n6`: IPv6 nodes wanted (`nodes6`).
    pub n6: bool,
}

impl Want {
    /// No `want` key.
    pub const NONE: Want = Want {
        n4: false,
        n6: false,
    };
    /// `want = [n4, n6]`: both families.
    pub const BOTH: Want = Want { n4: true, n6: true };

    /// Whether the query carried a `want` naming a family we know.
    pub fn is_given(self) -> bool {
        self.n4 || self.n6
    }

    /// Only `family`.
    pub fn only(family: Family) -> Want {
        Want {
            n4: family == Family::V4,
            n6: family == Family::V6,
        }
    }

    /// What to answer a query that arrived over `transport`: the families it named or,
    /// without a `want`, the transport's own.
    pub fn resolve(self, transport: Family) -> Want {
        if self.is_given() {
            self
        } else {
            Want::only(transport)
        }
    }

    /// Whether nodes of `family` are wanted (after [`Want::resolve`]).
    pub fn wants(self, family: Family) -> bool {
        match family {
            Family::V4 => self.n4,
            Family::V6 => self.n6,
        }
    }
}

/// The queries we understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// BEP 5 `ping`: answered with our id.
    Ping,
    /// BEP 5 `find_node`: answered with the closest nodes to `target` we know.
    FindNode {
        /// The id whose closest nodes are wanted.
        target: NodeId,
    },
    /// BEP 5 `get_peers`: answered with peers for the infohash if we have any, closer nodes
    /// otherwise, and a token for a later `announce_peer`.
    GetPeers {
        /// The torrent whose peers are wanted.
        info_hash: InfoHash,
        /// BEP 33: reply with the `BFsd`/`BFpe` bloom filters instead of `values`.
        scrape: bool,
        /// BEP 33: the asker is a seed; leave seeds out of `values`.
        noseed: bool,
    },
    /// BEP 5 `announce_peer`: the querier has the torrent and can be reached on `port`.
    AnnouncePeer {
        /// The torrent announced.
        info_hash: InfoHash,
        /// The announced TCP port; 0 when `implied_port` is set and `port` was missing or
        /// out of range.
        port: u16,
        /// BEP 5: when set, use the UDP source port instead of `port`.
        implied_port: bool,
        /// The token a `get_peers` reply gave the querier (BEP 5: proves it owns its IP).
        token: Token,
        /// BEP 33: the announcer has the whole torrent.
        seed: bool,
    },
    /// BEP 51.
    SampleInfohashes {
        /// The id whose closest nodes come with the samples.
        target: NodeId,
    },
    /// BEP 44 `get`: `seq` asks for the value only when ours is newer.
    Get {
        /// The item's target: SHA-1 of the value (immutable) or of key and salt (mutable).
        target: NodeId,
        /// The querier's current `seq`: a mutable value is sent only if ours is greater.
        seq: Option<i64>,
    },
    /// BEP 44 `put` (boxed: it carries the value, and the other queries should stay small).
    Put(Box<PutArgs>),
    /// A method we do not know but whose arguments carry a `target` or `info_hash`: answered
    /// like `find_node` for forward compatibility (libtorrent does the same), e.g. uTorrent's
    /// `vote`.
    Unknown {
        /// The query's `target`, or its `info_hash` when it has no `target`.
        target: NodeId,
    },
}

impl Method {
    /// The `q` string of this method (for `Unknown`, `find_node` is what we would send).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ping => "ping",
            Method::FindNode { .. } | Method::Unknown { .. } => "find_node",
            Method::GetPeers { .. } => "get_peers",
            Method::AnnouncePeer { .. } => "announce_peer",
            Method::SampleInfohashes { .. } => "sample_infohashes",
            Method::Get { .. } => "get",
            Method::Put(_) => "put",
        }
    }
}

/// The arguments of a BEP 44 `put`, as sent (the signature is checked by the item store, after
/// the token, so a forged put costs us a hash rather than an ed25519 verification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutArgs {
    /// The token the receiving node gave the putter in a `get` reply (BEP 44).
    pub token: Token,
    /// The bencoded value exactly as it appeared in the query (at most [`MAX_ITEM_VALUE`]
    /// bytes): the immutable target and the signature are computed over these bytes.
    pub v: Vec<u8>,
    /// Present for a mutable item (the query carried `k` or `sig`).
    pub mutable: Option<MutablePut>,
}

/// The mutable-item fields of a `put`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutablePut {
    /// ed25519 public key.
    pub k: [u8; 32],
    /// Empty when absent (BEP 44 treats an empty salt as none).
    pub salt: Vec<u8>,
    /// Sequence number: a stored item is replaced only by a higher one.
    pub seq: i64,
    /// ed25519 signature over salt, `seq` and `v` (see [`crate::dht::items::signable`]).
    pub sig: [u8; 64],
    /// Compare-and-swap: store only if the stored item's `seq` is exactly this (else 301).
    pub cas: Option<i64>,
}

/// A response. Its meaning depends on the query it answers (matched by transaction id), so
/// every optional field is kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The responder's node id.
    pub id: NodeId,
    /// Raw compact node info; see [`Response::nodes`].
    pub nodes: Option<Vec<u8>>,
    /// BEP 32: raw compact IPv6 node info (38-byte entries); see [`Response::nodes6`].
    pub nodes6: Option<Vec<u8>>,
    /// `get_peers` reply: the 6-byte (IPv4) peers in `values`.
    pub values: Vec<SocketAddrV4>,
    /// `get_peers` reply: the 18-byte (IPv6, BEP 32) peers in `values`; entries of any other
    /// length are skipped.
    pub values6: Vec<SocketAddrV6>,
    /// `get_peers` or BEP 44 `get` reply: the token for a later announce or put (too long:
    /// absent).
    pub token: Option<Token>,
    /// BEP 51: concatenated 20-byte infohashes; see [`Response::samples`].
    pub samples: Option<Vec<u8>>,
    /// BEP 51: seconds before this node wants to be sampled again.
    pub interval: Option<i64>,
    /// BEP 51: number of infohashes the node stores.
    pub num: Option<i64>,
    /// BEP 44 `get` reply: the value, bencoded, exactly as sent.
    pub v: Option<Vec<u8>>,
    /// BEP 44: the mutable item's public key (a wrong length reads as absent).
    /// Boxed, like `sig`: most replies have neither, and every message would carry the bytes.
    pub k: Option<Box<[u8; 32]>>,
    /// BEP 44: the mutable item's sequence number.
    pub seq: Option<i64>,
    /// BEP 44: the mutable item's signature (a wrong length reads as absent).
    pub sig: Option<Box<[u8; 64]>>,
    /// BEP 33 `BFsd`: seeds' bloom filter (a wrong length reads as absent). Boxed: 256 bytes
    /// that almost no reply carries.
    pub bf_seeds: Option<Box<ScrapeFilter>>,
    /// BEP 33 `BFpe`: downloaders' bloom filter.
    pub bf_peers: Option<Box<ScrapeFilter>>,
}

impl Response {
    /// A response carrying only the responder's id (ping, announce_peer).
    pub fn with_id(id: NodeId) -> Self {
        Response {
            id,
            ..Default::default()
        }
    }

    /// The contacts in `nodes` (complete 26-byte entries only).
    pub fn nodes(&self) -> impl Iterator<Item = Contact> + '_ {
        compact_nodes(self.nodes.as_deref().unwrap_or(&[]))
    }

    /// The contacts in `nodes6` (complete 38-byte entries only).
    pub fn nodes6(&self) -> impl Iterator<Item = Contact6> + '_ {
        compact_nodes(self.nodes6.as_deref().unwrap_or(&[]))
    }

    /// The contacts of family `A`: `nodes` for IPv4, `nodes6` for IPv6.
    pub fn nodes_of<A: NodeAddr>(&self) -> impl Iterator<Item = Contact<A>> + '_ {
        let raw = match A::FAMILY {
            Family::V4 => self.nodes.as_deref(),
            Family::V6 => self.nodes6.as_deref(),
        };
        compact_nodes(raw.unwrap_or(&[]))
    }

    /// Whether `nodes` and `nodes6` each hold a whole number of entries.
    pub fn nodes_well_formed(&self) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|n| n.len() % SocketAddrV4::NODE_LEN == 0)
            && self
                .nodes6
                .as_ref()
                .is_none_or(|n| n.len() % SocketAddrV6::NODE_LEN == 0)
    }

    /// The peers of family `A` in `values` (6-byte entries for IPv4, 18-byte for IPv6).
    pub fn values_of<A: NodeAddr>(&self) -> impl Iterator<Item = A> + '_ {
        let v4 = self.values.iter().map(|&a| SocketAddr::V4(a));
        let v6 = self.values6.iter().map(|&a| SocketAddr::V6(a));
        v4.chain(v6).filter_map(A::from_socket)
    }

    /// The BEP 51 samples, sliced into 20-byte infohashes (a ragged tail is ignored).
    pub fn samples(&self) -> impl Iterator<Item = InfoHash> + '_ {
        self.samples
            .as_deref()
            .unwrap_or(&[])
            .chunks_exact(ID_LEN)
            .filter_map(InfoHash::from_slice)
    }
}

/// An error message: `e = [code, message]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error code (BEP 5: 201 to 204; BEP 44: 205 to 207, 301, 302).
    pub code: i64,
    /// The human-readable message.
    pub message: String,
}
