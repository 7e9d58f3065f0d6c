//! KRPC messages (BEP 5, plus BEP 43 `ro`, BEP 42-style top-level `ip` and BEP 51
//! `sample_infohashes`): typed values, a tolerant decoder and a hand-written encoder.
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
use std::net::SocketAddrV4;

pub use decode::{DecodeError, decode};
pub use encode::{
    Bep44Fields, ItemReply, QueryArgs, ResponseBody, encode_error, encode_get_response,
    encode_message, encode_query, encode_response,
};

use crate::dht::id::{COMPACT_NODE_LEN, Contact, ID_LEN, InfoHash, NodeId, compact_nodes};
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

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

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
    pub tid: Tid,
    pub body: Body,
    /// Top-level `ip`: in a reply, the replier's view of our address (BEP 42).
    pub ip: Option<SocketAddrV4>,
    /// BEP 43: the sender is read-only and must not be added to routing tables.
    pub read_only: bool,
    pub version: Option<Version>,
}

/// The three KRPC message kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Query(Query),
    Response(Response),
    Error(ErrorBody),
}

/// A query: the sender's id and the method with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: NodeId,
    pub method: Method,
}

/// The queries we understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Ping,
    FindNode {
        target: NodeId,
    },
    GetPeers {
        info_hash: InfoHash,
        /// BEP 33: reply with the `BFsd`/`BFpe` bloom filters instead of `values`.
        scrape: bool,
        /// BEP 33: the asker is a seed; leave seeds out of `values`.
        noseed: bool,
    },
    AnnouncePeer {
        info_hash: InfoHash,
        port: u16,
        /// BEP 5: when set, use the UDP source port instead of `port`.
        implied_port: bool,
        token: Token,
        /// BEP 33: the announcer has the whole torrent.
        seed: bool,
    },
    /// BEP 51.
    SampleInfohashes {
        target: NodeId,
    },
    /// BEP 44 `get`: `seq` asks for the value only when ours is newer.
    Get {
        target: NodeId,
        seq: Option<i64>,
    },
    /// BEP 44 `put` (boxed: it carries the value, and the other queries should stay small).
    Put(Box<PutArgs>),
    /// A method we do not know but whose arguments carry a `target` or `info_hash`: answered
    /// like `find_node` for forward compatibility (libtorrent does the same), e.g. uTorrent's
    /// `vote`.
    Unknown {
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
    pub seq: i64,
    pub sig: [u8; 64],
    pub cas: Option<i64>,
}

/// A response. Its meaning depends on the query it answers (matched by transaction id), so
/// every optional field is kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub id: NodeId,
    /// Raw compact node info; see [`Response::nodes`].
    pub nodes: Option<Vec<u8>>,
    pub values: Vec<SocketAddrV4>,
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

    /// Whether `nodes` holds a whole number of entries.
    pub fn nodes_well_formed(&self) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|n| n.len() % COMPACT_NODE_LEN == 0)
    }

    /// The BEP 51 samples, sliced into 20-byte infohashes (a ragged tail is ignored).
    pub fn samples(&self) -> impl Iterator<Item = InfoHash> + '_ {
        self.samples
            .as_deref()
            .unwrap_or(&[])
            .chunks_exact(ID_LEN)
            .filter_map(NodeId::from_slice)
    }
}

/// An error message: `e = [code, message]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: i64,
    pub message: String,
}
