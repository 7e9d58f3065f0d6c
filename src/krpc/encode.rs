//! Hand-written KRPC encoding. Keys are emitted in bencode's sorted order by construction:
//! top level `a e ip q r ro t v y`; arguments `id implied_port info_hash port target token`;
//! replies `id interval nodes num samples token values`.

use std::net::SocketAddrV4;

use super::{Body, Message, Method};
use crate::id::{InfoHash, NodeId, compact_peer_bytes};

/// Arguments of an outgoing query, borrowed so sending allocates nothing.
#[derive(Debug, Clone, Copy)]
pub enum QueryArgs<'a> {
    Ping,
    FindNode {
        target: &'a NodeId,
    },
    GetPeers {
        info_hash: &'a InfoHash,
    },
    AnnouncePeer {
        info_hash: &'a InfoHash,
        port: u16,
        implied_port: bool,
        token: &'a [u8],
    },
    SampleInfohashes {
        target: &'a NodeId,
    },
}

impl QueryArgs<'_> {
    fn method_name(&self) -> &'static [u8] {
        match self {
            QueryArgs::Ping => b"ping",
            QueryArgs::FindNode { .. } => b"find_node",
            QueryArgs::GetPeers { .. } => b"get_peers",
            QueryArgs::AnnouncePeer { .. } => b"announce_peer",
            QueryArgs::SampleInfohashes { .. } => b"sample_infohashes",
        }
    }
}

/// The `r` dictionary of an outgoing reply, borrowed from the node's scratch buffers.
#[derive(Debug, Clone, Copy)]
pub struct ResponseBody<'a> {
    pub id: &'a NodeId,
    /// Compact node info, already concatenated.
    pub nodes: Option<&'a [u8]>,
    pub token: Option<&'a [u8]>,
    /// Omitted when empty.
    pub values: &'a [SocketAddrV4],
    /// BEP 51 fields.
    pub samples: Option<&'a [u8]>,
    pub interval: Option<i64>,
    pub num: Option<i64>,
}

impl<'a> ResponseBody<'a> {
    /// A reply carrying only our id.
    pub fn id_only(id: &'a NodeId) -> Self {
        ResponseBody {
            id,
            nodes: None,
            token: None,
            values: &[],
            samples: None,
            interval: None,
            num: None,
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.push(b':');
    out.extend_from_slice(b);
}

fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    out.push(b'i');
    if v < 0 {
        out.push(b'-');
    }
    put_uint(out, v.unsigned_abs());
    out.push(b'e');
}

/// Writes `key` then a byte-string value.
fn kv_bytes(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    put_bytes(out, key);
    put_bytes(out, value);
}

fn kv_int(out: &mut Vec<u8>, key: &[u8], value: i64) {
    put_bytes(out, key);
    put_int(out, value);
}

/// Top-level trailer shared by every message: `[ro] t [v] y`.
fn trailer(out: &mut Vec<u8>, read_only: bool, tid: &[u8], version: Option<&[u8]>, y: &[u8]) {
    if read_only {
        kv_int(out, b"ro", 1);
    }
    kv_bytes(out, b"t", tid);
    if let Some(v) = version {
        kv_bytes(out, b"v", v);
    }
    kv_bytes(out, b"y", y);
    out.push(b'e');
}

/// Appends a query to `out`.
pub fn encode_query(
    out: &mut Vec<u8>,
    tid: &[u8],
    id: &NodeId,
    args: &QueryArgs<'_>,
    read_only: bool,
    version: Option<&[u8]>,
) {
    out.extend_from_slice(b"d1:ad");
    kv_bytes(out, b"id", &id.0);
    match args {
        QueryArgs::Ping => {}
        QueryArgs::FindNode { target } | QueryArgs::SampleInfohashes { target } => {
            kv_bytes(out, b"target", &target.0);
        }
        QueryArgs::GetPeers { info_hash } => kv_bytes(out, b"info_hash", &info_hash.0),
        QueryArgs::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => {
            if *implied_port {
                kv_int(out, b"implied_port", 1);
            }
            kv_bytes(out, b"info_hash", &info_hash.0);
            kv_int(out, b"port", i64::from(*port));
            kv_bytes(out, b"token", token);
        }
    }
    out.push(b'e');
    kv_bytes(out, b"q", args.method_name());
    trailer(out, read_only, tid, version, b"q");
}

/// Appends a reply to `out`. `ip` is the requester's address as we saw it (BEP 42).
pub fn encode_response(
    out: &mut Vec<u8>,
    tid: &[u8],
    body: &ResponseBody<'_>,
    ip: Option<SocketAddrV4>,
    version: Option<&[u8]>,
) {
    out.push(b'd');
    if let Some(ip) = ip {
        kv_bytes(out, b"ip", &compact_peer_bytes(ip));
    }
    out.extend_from_slice(b"1:rd");
    kv_bytes(out, b"id", &body.id.0);
    if let Some(interval) = body.interval {
        kv_int(out, b"interval", interval);
    }
    if let Some(nodes) = body.nodes {
        kv_bytes(out, b"nodes", nodes);
    }
    if let Some(num) = body.num {
        kv_int(out, b"num", num);
    }
    if let Some(samples) = body.samples {
        kv_bytes(out, b"samples", samples);
    }
    if let Some(token) = body.token {
        kv_bytes(out, b"token", token);
    }
    if !body.values.is_empty() {
        put_bytes(out, b"values");
        out.push(b'l');
        for v in body.values {
            put_bytes(out, &compact_peer_bytes(*v));
        }
        out.push(b'e');
    }
    out.push(b'e');
    trailer(out, false, tid, version, b"r");
}

/// Appends an error message to `out`.
pub fn encode_error(
    out: &mut Vec<u8>,
    tid: &[u8],
    code: i64,
    message: &str,
    ip: Option<SocketAddrV4>,
    version: Option<&[u8]>,
) {
    out.extend_from_slice(b"d1:eli");
    put_int_body(out, code);
    put_bytes(out, message.as_bytes());
    out.push(b'e');
    if let Some(ip) = ip {
        kv_bytes(out, b"ip", &compact_peer_bytes(ip));
    }
    trailer(out, false, tid, version, b"e");
}

/// An integer without its leading `i` (used right after `li`).
fn put_int_body(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    put_uint(out, v.unsigned_abs());
    out.push(b'e');
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
                Method::GetPeers { info_hash } => QueryArgs::GetPeers { info_hash },
                Method::AnnouncePeer {
                    info_hash,
                    port,
                    implied_port,
                    token,
                } => QueryArgs::AnnouncePeer {
                    info_hash,
                    port: *port,
                    implied_port: *implied_port,
                    token: token.as_slice(),
                },
                Method::SampleInfohashes { target } => QueryArgs::SampleInfohashes { target },
            };
            encode_query(out, m.tid.as_slice(), &q.id, &args, m.read_only, version);
        }
        Body::Response(r) => {
            let body = ResponseBody {
                id: &r.id,
                nodes: r.nodes.as_deref(),
                token: r.token.as_ref().map(|t| t.as_slice()),
                values: &r.values,
                samples: r.samples.as_deref(),
                interval: r.interval,
                num: r.num,
            };
            encode_response(out, m.tid.as_slice(), &body, m.ip, version);
        }
        Body::Error(e) => encode_error(out, m.tid.as_slice(), e.code, &e.message, m.ip, version),
    }
}
