//! Hand-written KRPC encoding. Keys are emitted in bencode's sorted order by construction:
//! top level `a e ip q r ro t v y`; arguments
//! `cas id implied_port info_hash k noseed port salt scrape seed seq sig target token v`;
//! replies `BFpe BFsd id interval k nodes nodes6 num samples seq sig token v values`
//! (uppercase sorts first); BEP 32's `want` sorts last among the arguments.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use super::{Body, Message, Method, MutablePut, Want};
use crate::bencode::{put_bytes, put_int_body};
use crate::dht::id::{InfoHash, NodeId, compact_peer_bytes};
use crate::dht::scrape::ScrapeFilter;

/// Arguments of an outgoing query, borrowed so sending allocates nothing.
#[derive(Debug, Clone, Copy)]
pub enum QueryArgs<'a> {
    /// BEP 5 `ping`: only our id.
    Ping,
    /// BEP 5 `find_node`.
    FindNode {
        /// The id whose closest nodes we want.
        target: &'a NodeId,
    },
    /// BEP 5 `get_peers`.
    GetPeers {
        /// The torrent whose peers we want.
        info_hash: &'a InfoHash,
        /// BEP 33.
        scrape: bool,
        /// BEP 33.
        noseed: bool,
    },
    /// BEP 5 `announce_peer`.
    AnnouncePeer {
        /// The torrent we announce.
        info_hash: &'a InfoHash,
        /// Our TCP port (sent even with `implied_port`).
        port: u16,
        /// BEP 5: tells the receiver to use our UDP source port instead of `port`.
        implied_port: bool,
        /// The token the receiver gave us in its `get_peers` reply.
        token: &'a [u8],
        /// BEP 33.
        seed: bool,
    },
    /// BEP 51 `sample_infohashes`.
    SampleInfohashes {
        /// The id whose closest nodes come with the samples.
        target: &'a NodeId,
    },
    /// BEP 44.
    Get {
        /// The item's target.
        target: &'a NodeId,
        /// Our current `seq`: the receiver sends a mutable value only if its own is greater.
        seq: Option<i64>,
    },
    /// BEP 44; `v` is already bencoded.
    Put {
        /// The token the receiver gave us in its `get` reply.
        token: &'a [u8],
        /// The bencoded value, written as is.
        v: &'a [u8],
        /// Key, salt, `seq`, signature and `cas` of a mutable item.
        mutable: Option<&'a MutablePut>,
    },
}

impl QueryArgs<'_> {
    /// The method name as an encoded byte string (the value of `q`).
    fn method_entry(&self) -> &'static [u8] {
        match self {
            QueryArgs::Ping => b"4:ping",
            QueryArgs::FindNode { .. } => b"9:find_node",
            QueryArgs::GetPeers { .. } => b"9:get_peers",
            QueryArgs::AnnouncePeer { .. } => b"13:announce_peer",
            QueryArgs::SampleInfohashes { .. } => b"17:sample_infohashes",
            QueryArgs::Get { .. } => b"3:get",
            QueryArgs::Put { .. } => b"3:put",
        }
    }
}

/// The `r` dictionary of an outgoing reply, borrowed from the node's scratch buffers.
#[derive(Debug, Clone, Copy)]
pub struct ResponseBody<'a> {
    /// Our node id.
    pub id: &'a NodeId,
    /// Compact node info, already concatenated.
    pub nodes: Option<&'a [u8]>,
    /// BEP 32 compact IPv6 node info (38-byte entries), already concatenated.
    pub nodes6: Option<&'a [u8]>,
    /// The token for a later `announce_peer` or `put` (`get_peers` and `get` replies).
    pub token: Option<&'a [u8]>,
    /// Omitted when empty (with `values6`).
    pub values: &'a [SocketAddrV4],
    /// BEP 32: IPv6 peers, 18-byte entries in the same `values` list.
    pub values6: &'a [SocketAddrV6],
    /// BEP 51 fields.
    pub samples: Option<&'a [u8]>,
    /// BEP 51: seconds before the asker should sample us again.
    pub interval: Option<i64>,
    /// BEP 51: number of infohashes we store.
    pub num: Option<i64>,
    /// BEP 44 `get` reply fields.
    pub bep44: Bep44Fields<'a>,
    /// BEP 33 `BFsd` and `BFpe` (seeds, downloaders).
    pub scrape: Option<(&'a ScrapeFilter, &'a ScrapeFilter)>,
}

/// The BEP 44 fields of a reply, each omitted when `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bep44Fields<'a> {
    /// Already bencoded.
    pub v: Option<&'a [u8]>,
    /// The mutable item's ed25519 public key.
    pub k: Option<&'a [u8; 32]>,
    /// The mutable item's sequence number.
    pub seq: Option<i64>,
    /// The mutable item's signature.
    pub sig: Option<&'a [u8; 64]>,
}

impl<'a> ResponseBody<'a> {
    /// A reply carrying only our id.
    pub fn id_only(id: &'a NodeId) -> Self {
        ResponseBody {
            id,
            nodes: None,
            nodes6: None,
            token: None,
            values: &[],
            values6: &[],
            samples: None,
            interval: None,
            num: None,
            bep44: Bep44Fields::default(),
            scrape: None,
        }
    }
}

// Every key, and every value of fixed size, is written as one constant: `kv_bytes`-style
// generic code ran the digit loop twice per field, about half of an encoded reply's cost.

/// `<key>20:<id>`, with `key_prefix` the already-encoded key and the `20:`.
fn put_id(out: &mut Vec<u8>, key_prefix: &[u8], id: &NodeId) {
    out.extend_from_slice(key_prefix);
    out.extend_from_slice(&id.0);
}

/// `9:info_hash20:<20 bytes>`.
fn put_ih(out: &mut Vec<u8>, ih: &InfoHash) {
    out.extend_from_slice(b"9:info_hash20:");
    out.extend_from_slice(ih.as_bytes());
}

/// `2:ip6:<compact address>`, or `2:ip18:<compact address>` for IPv6 (BEP 32).
fn put_ip(out: &mut Vec<u8>, ip: SocketAddr) {
    match ip {
        SocketAddr::V4(ip) => {
            out.extend_from_slice(b"2:ip6:");
            out.extend_from_slice(&compact_peer_bytes(ip));
        }
        SocketAddr::V6(ip) => {
            out.extend_from_slice(b"2:ip18:");
            put_peer6(out, ip);
        }
    }
}

/// The 18 bytes of a compact IPv6 peer, without a length prefix.
fn put_peer6(out: &mut Vec<u8>, a: SocketAddrV6) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Top-level trailer shared by every message: `[ro] t [v] y` and the closing `e`; `y_entry`
/// is the whole encoded `y` entry (e.g. `1:y1:r`).
fn trailer(out: &mut Vec<u8>, read_only: bool, tid: &[u8], version: Option<&[u8]>, y_entry: &[u8]) {
    if read_only {
        out.extend_from_slice(b"2:roi1e");
    }
    out.extend_from_slice(b"1:t");
    put_bytes(out, tid);
    if let Some(v) = version {
        out.extend_from_slice(b"1:v");
        put_bytes(out, v);
    }
    out.extend_from_slice(y_entry);
    out.push(b'e');
}

/// Appends a query to `out`, without a BEP 32 `want`.
pub fn encode_query(
    out: &mut Vec<u8>,
    tid: &[u8],
    id: &NodeId,
    args: &QueryArgs<'_>,
    read_only: bool,
    version: Option<&[u8]>,
) {
    encode_query_want(out, tid, id, args, Want::NONE, read_only, version);
}

/// Appends a query to `out` with a BEP 32 `want` (written only when it names a family, and
/// only for the queries whose replies carry nodes).
pub fn encode_query_want(
    out: &mut Vec<u8>,
    tid: &[u8],
    id: &NodeId,
    args: &QueryArgs<'_>,
    want: Want,
    read_only: bool,
    version: Option<&[u8]>,
) {
    out.extend_from_slice(b"d1:ad");
    // `cas` sorts before `id`.
    if let QueryArgs::Put {
        mutable: Some(MutablePut { cas: Some(cas), .. }),
        ..
    } = args
    {
        out.extend_from_slice(b"3:casi");
        put_int_body(out, *cas);
    }
    put_id(out, b"2:id20:", id);
    match args {
        QueryArgs::Ping => {}
        QueryArgs::FindNode { target } | QueryArgs::SampleInfohashes { target } => {
            put_id(out, b"6:target20:", target);
        }
        QueryArgs::GetPeers {
            info_hash,
            scrape,
            noseed,
        } => {
            put_ih(out, info_hash);
            if *noseed {
                out.extend_from_slice(b"6:noseedi1e");
            }
            if *scrape {
                out.extend_from_slice(b"6:scrapei1e");
            }
        }
        QueryArgs::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
            seed,
        } => {
            if *implied_port {
                out.extend_from_slice(b"12:implied_porti1e");
            }
            put_ih(out, info_hash);
            out.extend_from_slice(b"4:porti");
            put_int_body(out, i64::from(*port));
            if *seed {
                out.extend_from_slice(b"4:seedi1e");
            }
            out.extend_from_slice(b"5:token");
            put_bytes(out, token);
        }
        QueryArgs::Get { target, seq } => {
            if let Some(seq) = seq {
                out.extend_from_slice(b"3:seqi");
                put_int_body(out, *seq);
            }
            put_id(out, b"6:target20:", target);
        }
        QueryArgs::Put { token, v, mutable } => {
            if let Some(m) = mutable {
                out.extend_from_slice(b"1:k32:");
                out.extend_from_slice(&m.k);
                if !m.salt.is_empty() {
                    out.extend_from_slice(b"4:salt");
                    put_bytes(out, &m.salt);
                }
                out.extend_from_slice(b"3:seqi");
                put_int_body(out, m.seq);
                out.extend_from_slice(b"3:sig64:");
                out.extend_from_slice(&m.sig);
            }
            out.extend_from_slice(b"5:token");
            put_bytes(out, token);
            out.extend_from_slice(b"1:v");
            out.extend_from_slice(v);
        }
    }
    let carries_nodes = matches!(
        args,
        QueryArgs::FindNode { .. }
            | QueryArgs::GetPeers { .. }
            | QueryArgs::SampleInfohashes { .. }
            | QueryArgs::Get { .. }
    );
    if carries_nodes && want.is_given() {
        out.extend_from_slice(b"4:wantl");
        if want.n4 {
            out.extend_from_slice(b"2:n4");
        }
        if want.n6 {
            out.extend_from_slice(b"2:n6");
        }
        out.push(b'e');
    }
    out.extend_from_slice(b"e1:q");
    out.extend_from_slice(args.method_entry());
    trailer(out, read_only, tid, version, b"1:y1:q");
}

/// Appends a reply to `out`. `ip` is the requester's address as we saw it (BEP 42).
pub fn encode_response(
    out: &mut Vec<u8>,
    tid: &[u8],
    body: &ResponseBody<'_>,
    ip: Option<SocketAddr>,
    version: Option<&[u8]>,
) {
    out.push(b'd');
    if let Some(ip) = ip {
        put_ip(out, ip);
    }
    out.extend_from_slice(b"1:rd");
    if let Some((seeds, downloaders)) = body.scrape {
        out.extend_from_slice(b"4:BFpe256:");
        out.extend_from_slice(&downloaders.0);
        out.extend_from_slice(b"4:BFsd256:");
        out.extend_from_slice(&seeds.0);
    }
    put_id(out, b"2:id20:", body.id);
    if let Some(interval) = body.interval {
        out.extend_from_slice(b"8:intervali");
        put_int_body(out, interval);
    }
    if let Some(k) = body.bep44.k {
        out.extend_from_slice(b"1:k32:");
        out.extend_from_slice(k);
    }
    if let Some(nodes) = body.nodes {
        out.extend_from_slice(b"5:nodes");
        put_bytes(out, nodes);
    }
    if let Some(nodes6) = body.nodes6 {
        out.extend_from_slice(b"6:nodes6");
        put_bytes(out, nodes6);
    }
    if let Some(num) = body.num {
        out.extend_from_slice(b"3:numi");
        put_int_body(out, num);
    }
    if let Some(samples) = body.samples {
        out.extend_from_slice(b"7:samples");
        put_bytes(out, samples);
    }
    if let Some(seq) = body.bep44.seq {
        out.extend_from_slice(b"3:seqi");
        put_int_body(out, seq);
    }
    if let Some(sig) = body.bep44.sig {
        out.extend_from_slice(b"3:sig64:");
        out.extend_from_slice(sig);
    }
    if let Some(token) = body.token {
        out.extend_from_slice(b"5:token");
        put_bytes(out, token);
    }
    if let Some(v) = body.bep44.v {
        out.extend_from_slice(b"1:v");
        out.extend_from_slice(v);
    }
    if !body.values.is_empty() || !body.values6.is_empty() {
        out.extend_from_slice(b"6:valuesl");
        out.reserve(body.values.len() * 8 + body.values6.len() * 21 + 1);
        for v in body.values {
            let [a, b, c, d, p0, p1] = compact_peer_bytes(*v);
            out.extend_from_slice(&[b'6', b':', a, b, c, d, p0, p1]);
        }
        for v in body.values6 {
            out.extend_from_slice(b"18:");
            put_peer6(out, *v);
        }
        out.push(b'e');
    }
    out.push(b'e');
    trailer(out, false, tid, version, b"1:y1:r");
}

/// The value part of a BEP 44 `get` reply; `k`, `seq` and `sig` only for a mutable item.
#[derive(Debug, Clone, Copy)]
pub struct ItemReply<'a> {
    /// Already bencoded.
    pub v: &'a [u8],
    /// A mutable item's public key, sequence number and signature.
    pub mutable: Option<(&'a [u8; 32], i64, &'a [u8; 64])>,
}

/// Appends a BEP 44 `get` reply to `out`: `base` carries the id, the node lists and the
/// token; the item's fields are added when one is held.
pub fn encode_get_response(
    out: &mut Vec<u8>,
    tid: &[u8],
    base: ResponseBody<'_>,
    item: Option<ItemReply<'_>>,
    ip: Option<SocketAddr>,
    version: Option<&[u8]>,
) {
    let mutable = item.and_then(|i| i.mutable);
    let body = ResponseBody {
        bep44: Bep44Fields {
            v: item.map(|i| i.v),
            k: mutable.map(|m| m.0),
            seq: mutable.map(|m| m.1),
            sig: mutable.map(|m| m.2),
        },
        ..base
    };
    encode_response(out, tid, &body, ip, version);
}

/// Appends an error message to `out`.
pub fn encode_error(
    out: &mut Vec<u8>,
    tid: &[u8],
    code: i64,
    message: &str,
    ip: Option<SocketAddr>,
    version: Option<&[u8]>,
) {
    out.extend_from_slice(b"d1:eli");
    put_int_body(out, code);
    put_bytes(out, message.as_bytes());
    out.push(b'e');
    if let Some(ip) = ip {
        put_ip(out, ip);
    }
    trailer(out, false, tid, version, b"1:y1:e");
}

/// Appends any typed message (used by tools and tests; the node uses the borrowed forms).
pub fn encode_message(out: &mut Vec<u8>, m: &Message) {
    let version = m.version.as_ref().map(|v| v.as_slice());
    match &m.body {
        Body::Query(q) => {
            let args = match &q.method {
                Method::Ping => QueryArgs::Ping,
                Method::FindNode { target } | Method::Unknown { target } => {
                    QueryArgs::FindNode { target }
                }
                Method::GetPeers {
                    info_hash,
                    scrape,
                    noseed,
                } => QueryArgs::GetPeers {
                    info_hash,
                    scrape: *scrape,
                    noseed: *noseed,
                },
                Method::AnnouncePeer {
                    info_hash,
                    port,
                    implied_port,
                    token,
                    seed,
                } => QueryArgs::AnnouncePeer {
                    info_hash,
                    port: *port,
                    implied_port: *implied_port,
                    token: token.as_slice(),
                    seed: *seed,
                },
                Method::SampleInfohashes { target } => QueryArgs::SampleInfohashes { target },
                Method::Get { target, seq } => QueryArgs::Get { target, seq: *seq },
                Method::Put(p) => QueryArgs::Put {
                    token: p.token.as_slice(),
                    v: &p.v,
                    mutable: p.mutable.as_ref(),
                },
            };
            encode_query_want(
                out,
                m.tid.as_slice(),
                &q.id,
                &args,
                q.want,
                m.read_only,
                version,
            );
        }
        Body::Response(r) => {
            let body = ResponseBody {
                id: &r.id,
                nodes: r.nodes.as_deref(),
                nodes6: r.nodes6.as_deref(),
                token: r.token.as_ref().map(|t| t.as_slice()),
                values: &r.values,
                values6: &r.values6,
                samples: r.samples.as_deref(),
                interval: r.interval,
                num: r.num,
                bep44: Bep44Fields {
                    v: r.v.as_deref(),
                    k: r.k.as_deref(),
                    seq: r.seq,
                    sig: r.sig.as_deref(),
                },
                scrape: r.bf_seeds.as_deref().zip(r.bf_peers.as_deref()),
            };
            encode_response(out, m.tid.as_slice(), &body, m.ip, version);
        }
        Body::Error(e) => encode_error(out, m.tid.as_slice(), e.code, &e.message, m.ip, version),
    }
}
