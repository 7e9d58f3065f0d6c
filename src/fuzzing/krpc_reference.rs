//! An independent reference KRPC decoder, for differential testing of `krpc::decode`.
//!
//! Written from the protocol texts, not from `krpc/decode.rs`: bencoding as BEP 3 defines
//! it, the message format of BEP 5 (`t`, `y`, `q`/`a`, `r`, `e`, the four queries and their
//! arguments, error codes 201-204), BEP 42's top-level `ip`, BEP 32's IPv6 forms (`want`,
//! `nodes6`, 18-byte `values` and `ip`), BEP 43's `ro` and BEP 51's
//! `sample_infohashes` (`samples`, `interval`, `num`), BEP 33's scrape fields (`scrape`,
//! `noseed`, `seed`, `BFsd`, `BFpe`). It shares no code with the real
//! decoder: its own iterative grammar check, then `serde_bencode`'s generic
//! [`Value`] tree, then field rules read off that tree. Only
//! the output types (`Message` and friends) are the crate's, so results compare field by
//! field. So when the two disagree — on acceptance, on how a datagram is refused, or on any
//! decoded field — one of them misreads the protocol. It is slow and allocates; only tests
//! and the `krpc` fuzz target call it.
//!
//! What is compared is the *verdict*, what a node does with the datagram ([`Verdict`]):
//! decode it into these fields, answer it with this error code and transaction id, or drop
//! it (and which of the three drop counters it lands in). Error reason strings and the
//! offsets inside structural errors are diagnostics, not behaviour, and are not compared.
//!
//! Where the BEPs leave a choice, the rules below say which one this project makes; the
//! real decoder must make the same one (tests/krpc_decoder_differential.rs lists them):
//! * Bencode leniency: dictionary keys in any order (BEP 3 wants them sorted), a repeated
//!   key keeps its last value, integers with leading zeros or `-0` (BEP 3 calls them invalid;
//!   they carry an unambiguous value) are read; nesting deeper than [`MAX_DEPTH`] containers,
//!   anything after the top-level value, and integers outside i64 are malformed.
//! * Field leniency: unknown keys are ignored (BEP 5 extensions add keys), a known key with
//!   the wrong type reads as absent, `ro` and `implied_port` are true for any non-zero
//!   integer (BEP 43 and BEP 5 send 1), `values` entries that are neither 6-byte (IPv4) nor
//!   18-byte (IPv6, BEP 32) strings are skipped, `want` entries other than the strings `n4`
//!   and `n6` are ignored (BEP 32 asks for that, so families can be added), a top-level
//!   `ip` of another length than 6 or 18 reads as absent, an `e` list may be short (code 201 and an
//!   empty message fill in), an unknown method whose arguments carry a 20-byte `target` (or
//!   else `info_hash`) is answered as `find_node` (libtorrent does the same).
//! * Length policy (BEP 5 sets none): transaction ids, tokens and the `v` tag longer than
//!   the crate stores are refused ([`Rules::of_this_build`] reads the limits off the crate's
//!   types, so they follow a change of the limits; the project's target is 64 bytes for tids
//!   and tokens).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use serde_bencode::value::Value;

use crate::dht::id::{InfoHash, NodeId};
use crate::dht::krpc::{
    Body, DecodeError, ErrorBody, Message, Method, MutablePut, PutArgs, Query, Response, Tid,
    Token, Version, Want,
};
use crate::dht::scrape::ScrapeFilter;

/// The largest datagram read at all (a UDP payload cannot be larger; BEP 5 messages are
/// well under 1.5 KB).
pub const MAX_DATAGRAM: usize = 65_536;

/// Containers (dictionaries and lists) nested inside each other, the message's own
/// dictionary included. KRPC needs three (message, `r`, `values`); eight leaves room for
/// extensions and keeps hostile nesting cheap.
pub const MAX_DEPTH: usize = 8;

/// BEP 5: node ids and info hashes are 160-bit values.
const ID_BYTES: usize = 20;
/// BEP 5: "Compact IP-address/port info": 4 bytes of IPv4 address, 2 of port, big-endian.
const COMPACT_PEER_BYTES: usize = 6;

/// BEP 5 error codes.
const GENERIC_ERROR: i64 = 201;
const PROTOCOL_ERROR: i64 = 203;
const METHOD_UNKNOWN: i64 = 204;
/// BEP 44 error codes and limits.
const VALUE_TOO_BIG: i64 = 205;
const SALT_TOO_BIG: i64 = 207;
const MAX_VALUE: usize = 1000;
const MAX_SALT: usize = 64;

/// The policy knobs, and two deliberately wrong rules that only the test of the
/// differential test turns on (it checks that each makes the comparison fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Longest transaction id kept.
    pub max_tid: usize,
    /// Longest announce token kept.
    pub max_token: usize,
    /// Longest `v` tag kept.
    pub max_version: usize,
    /// WRONG on purpose when set: 19-byte node ids and info hashes accepted (zero-padded).
    pub planted_accept_19_byte_ids: bool,
    /// WRONG on purpose when set: BEP 43's `ro` ignored.
    pub planted_ignore_ro: bool,
}

impl Rules {
    /// The rules this build's decoder is meant to follow, with the length limits read off
    /// the crate's inline byte-string types (policy, not protocol).
    pub fn of_this_build() -> Rules {
        static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
        fn capacity(fits: impl Fn(&[u8]) -> bool) -> usize {
            (0..=255)
                .take_while(|&n| fits(&vec![0; n]))
                .last()
                .unwrap_or(0)
        }
        *RULES.get_or_init(|| Rules {
            max_tid: capacity(|b| Tid::new(b).is_some()),
            max_token: capacity(|b| Token::new(b).is_some()),
            max_version: capacity(|b| Version::new(b).is_some()),
            planted_accept_19_byte_ids: false,
            planted_ignore_ro: false,
        })
    }
}

/// Why a datagram is dropped without an answer; each is counted separately by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not well-formed bencode within the limits.
    Malformed,
    /// Well-formed, but not a KRPC message (no usable `t` or `y`, not a dictionary, too big).
    NotKrpc,
    /// A response or error we cannot use.
    BadReply,
}

/// What a node does with one datagram. (A test oracle compared value by value: the size of
/// the message variant, with its 64-byte tid, costs nothing here.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Verdict {
    /// Decoded into this message.
    Message(Message),
    /// A query answered with a KRPC error: this code, echoing this transaction id.
    Answer {
        /// The query's transaction id, echoed in the error.
        tid: Vec<u8>,
        /// The KRPC error code (BEP 5: 201-204; BEP 44: 205-207).
        code: i64,
    },
    /// Dropped.
    Drop(Drop),
}

impl Verdict {
    /// The verdict of the real decoder's result (reason strings and offsets dropped).
    ///
    /// A BEP 44 `v` is compared by value: the real decoder keeps its bytes as sent, this
    /// reference re-encodes the parsed tree, so the real one's is canonicalized here the same
    /// way (they differ only for non-canonical input: unsorted or repeated keys, leading
    /// zeros). Not compared: a put whose non-canonical `v` is over 1000 bytes as sent but
    /// not re-encoded, or the reverse (205 from one side only).
    pub fn of(result: Result<Message, DecodeError>) -> Verdict {
        let canonical = |v: &mut Vec<u8>| {
            if let Ok(tree) = serde_bencode::from_bytes::<Value>(v)
                && let Ok(c) = serde_bencode::to_bytes(&tree)
            {
                *v = c;
            }
        };
        match result {
            Ok(mut m) => {
                match &mut m.body {
                    Body::Response(r) => {
                        if let Some(v) = &mut r.v {
                            canonical(v);
                        }
                    }
                    Body::Query(Query {
                        method: Method::Put(p),
                        ..
                    }) => canonical(&mut p.v),
                    _ => {}
                }
                Verdict::Message(m)
            }
            Err(DecodeError::Malformed(_)) => Verdict::Drop(Drop::Malformed),
            Err(DecodeError::NotKrpc(_)) => Verdict::Drop(Drop::NotKrpc),
            Err(DecodeError::BadReply(_)) => Verdict::Drop(Drop::BadReply),
            Err(DecodeError::BadQuery { tid, code, .. }) => Verdict::Answer {
                tid: tid.as_slice().to_vec(),
                code,
            },
        }
    }
}

/// Decodes one datagram under `rules`.
pub fn decode(buf: &[u8], rules: &Rules) -> Verdict {
    if buf.len() > MAX_DATAGRAM {
        return Verdict::Drop(Drop::NotKrpc);
    }
    if !well_formed(buf) {
        return Verdict::Drop(Drop::Malformed);
    }
    // The grammar check above bounds the nesting, so serde_bencode's recursion is safe.
    let Ok(Value::Dict(top)) = serde_bencode::from_bytes::<Value>(buf) else {
        // Well-formed (checked above) but not a dictionary.
        return Verdict::Drop(Drop::NotKrpc);
    };
    message(&top, rules)
}

/// BEP 3's grammar, iteratively: exactly one value, nothing after it, nesting at most
/// [`MAX_DEPTH`], dictionary keys are strings and each has a value, integers are `-`?digits
/// that fit an i64 (see the module docs for the accepted non-canonical forms).
fn well_formed(buf: &[u8]) -> bool {
    /// What an open container expects next.
    #[derive(Clone, Copy, PartialEq)]
    enum Open {
        List,
        DictKey,
        DictValue,
    }
    let mut open: Vec<Open> = Vec::new();
    let mut at = 0;
    loop {
        let Some(&c) = buf.get(at) else {
            return false;
        };
        let top = open.last().copied();
        if c == b'e' && top.is_some() {
            if top == Some(Open::DictValue) {
                return false; // a key without a value
            }
            open.pop();
            at += 1;
        } else if top == Some(Open::DictKey) && !c.is_ascii_digit() {
            return false;
        } else {
            match c {
                b'i' => {
                    let Some(len) = buf[at + 1..].iter().position(|&b| b == b'e') else {
                        return false;
                    };
                    let body = &buf[at + 1..at + 1 + len];
                    let digits = body.strip_prefix(b"-").unwrap_or(body);
                    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                        return false;
                    }
                    // Fits an i64 (the sign included).
                    if std::str::from_utf8(body)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .is_none()
                    {
                        return false;
                    }
                    at += len + 2;
                }
                b'0'..=b'9' => {
                    let Some(colon) = buf[at..].iter().position(|&b| b == b':') else {
                        return false;
                    };
                    let prefix = &buf[at..at + colon];
                    if !prefix.iter().all(u8::is_ascii_digit) {
                        return false;
                    }
                    let Some(len) = std::str::from_utf8(prefix)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        return false;
                    };
                    let start = at + colon + 1;
                    match start.checked_add(len) {
                        Some(end) if end <= buf.len() => at = end,
                        _ => return false,
                    }
                }
                b'l' | b'd' => {
                    if open.len() == MAX_DEPTH {
                        return false;
                    }
                    // When it closes, it completes an item of the enclosing container.
                    open.push(if c == b'l' { Open::List } else { Open::DictKey });
                    at += 1;
                    continue;
                }
                _ => return false,
            }
        }
        // A scalar or a closed container completed one item of the enclosing container.
        match open.last_mut() {
            None => return at == buf.len(),
            Some(slot @ Open::DictKey) => *slot = Open::DictValue,
            Some(slot @ Open::DictValue) => *slot = Open::DictKey,
            Some(Open::List) => {}
        }
    }
}

type Dict = HashMap<Vec<u8>, Value>;

fn bytes<'a>(d: &'a Dict, key: &str) -> Option<&'a [u8]> {
    match d.get(key.as_bytes()) {
        Some(Value::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn int(d: &Dict, key: &str) -> Option<i64> {
    match d.get(key.as_bytes()) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn dict<'a>(d: &'a Dict, key: &str) -> Option<&'a Dict> {
    match d.get(key.as_bytes()) {
        Some(Value::Dict(inner)) => Some(inner),
        _ => None,
    }
}

/// A 20-byte id under `key`.
fn id(d: &Dict, key: &str, rules: &Rules) -> Option<NodeId> {
    let b = bytes(d, key)?;
    if rules.planted_accept_19_byte_ids && b.len() == ID_BYTES - 1 {
        let mut padded = [0u8; ID_BYTES];
        padded[..b.len()].copy_from_slice(b);
        return Some(NodeId(padded));
    }
    <[u8; ID_BYTES]>::try_from(b).ok().map(NodeId)
}

fn peer(b: &[u8]) -> Option<SocketAddrV4> {
    let [a, b, c, d, hi, lo] = <[u8; COMPACT_PEER_BYTES]>::try_from(b).ok()?;
    Some(SocketAddrV4::new(
        Ipv4Addr::new(a, b, c, d),
        u16::from_be_bytes([hi, lo]),
    ))
}

/// BEP 32: 16 bytes of IPv6 address, 2 of port, big-endian.
fn peer6(b: &[u8]) -> Option<SocketAddrV6> {
    if b.len() != 18 {
        return None;
    }
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&b[..16]);
    Some(SocketAddrV6::new(
        Ipv6Addr::from(octets),
        u16::from_be_bytes([b[16], b[17]]),
        0,
        0,
    ))
}

/// The top-level `ip`: BEP 42's 6-byte form or BEP 32's 18-byte one.
fn either_peer(b: &[u8]) -> Option<SocketAddr> {
    peer(b)
        .map(SocketAddr::V4)
        .or_else(|| peer6(b).map(SocketAddr::V6))
}

/// BEP 32 `want`: a list; the byte strings `n4` and `n6` in it count.
fn want(a: &Dict) -> Want {
    let mut w = Want::default();
    if let Some(Value::List(items)) = a.get(&b"want"[..]) {
        for item in items {
            if let Value::Bytes(b) = item {
                w.n4 |= b.as_slice() == b"n4";
                w.n6 |= b.as_slice() == b"n6";
            }
        }
    }
    w
}

fn message(top: &Dict, rules: &Rules) -> Verdict {
    let Some(t) = bytes(top, "t").filter(|t| t.len() <= rules.max_tid) else {
        return Verdict::Drop(Drop::NotKrpc);
    };
    let body = match bytes(top, "y") {
        Some(b"q") => match query(top, rules) {
            Ok(q) => Body::Query(q),
            Err(code) => {
                return Verdict::Answer {
                    tid: t.to_vec(),
                    code,
                };
            }
        },
        Some(b"r") => match response(top, rules) {
            Some(r) => Body::Response(r),
            None => return Verdict::Drop(Drop::BadReply),
        },
        Some(b"e") => match top.get(&b"e"[..]) {
            Some(Value::List(items)) => Body::Error(ErrorBody {
                code: match items.first() {
                    Some(Value::Int(code)) => *code,
                    _ => GENERIC_ERROR,
                },
                message: match items.get(1) {
                    Some(Value::Bytes(text)) => String::from_utf8_lossy(text).into_owned(),
                    _ => String::new(),
                },
            }),
            _ => return Verdict::Drop(Drop::BadReply),
        },
        _ => return Verdict::Drop(Drop::NotKrpc),
    };
    Verdict::Message(Message {
        tid: Tid::new(t).expect("within max_tid"),
        body,
        ip: bytes(top, "ip").and_then(either_peer),
        read_only: !rules.planted_ignore_ro && int(top, "ro").is_some_and(|ro| ro != 0),
        version: bytes(top, "v")
            .filter(|v| v.len() <= rules.max_version)
            .and_then(Version::new),
    })
}

/// A query, or the error code to answer it with.
fn query(top: &Dict, rules: &Rules) -> Result<Query, i64> {
    let method = bytes(top, "q").ok_or(PROTOCOL_ERROR)?;
    const KNOWN: [&[u8]; 5] = [
        b"ping",
        b"find_node",
        b"get_peers",
        b"announce_peer",
        b"sample_infohashes",
    ];
    // BEP 5: a method we do not know is "204 Method Unknown", whatever its arguments lack.
    let unknown = !KNOWN.contains(&method);
    let a = dict(top, "a").ok_or(if unknown {
        METHOD_UNKNOWN
    } else {
        PROTOCOL_ERROR
    })?;
    let sender = id(a, "id", rules).ok_or(if unknown {
        METHOD_UNKNOWN
    } else {
        PROTOCOL_ERROR
    })?;
    let need = |key| id(a, key, rules).ok_or(PROTOCOL_ERROR);
    let method = match method {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode {
            target: need("target")?,
        },
        // BEP 33 flags: "scrape" and "noseed" are integers, set when 1 (any non-zero
        // counts, as for `implied_port`).
        b"get_peers" => Method::GetPeers {
            info_hash: InfoHash::from_node_id(need("info_hash")?),
            scrape: int(a, "scrape").is_some_and(|v| v != 0),
            noseed: int(a, "noseed").is_some_and(|v| v != 0),
        },
        b"announce_peer" => {
            let info_hash = InfoHash::from_node_id(need("info_hash")?);
            let token = bytes(a, "token")
                .filter(|t| t.len() <= rules.max_token)
                .and_then(Token::new)
                .ok_or(PROTOCOL_ERROR)?;
            let implied_port = int(a, "implied_port").is_some_and(|v| v != 0);
            let port = match int(a, "port").and_then(|p| u16::try_from(p).ok()) {
                Some(p) if p != 0 => p,
                // BEP 5: with implied_port the port argument "should be ignored".
                _ if implied_port => 0,
                _ => return Err(PROTOCOL_ERROR),
            };
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                seed: int(a, "seed").is_some_and(|v| v != 0),
            }
        }
        b"sample_infohashes" => Method::SampleInfohashes {
            target: need("target")?,
        },
        b"get" => Method::Get {
            target: need("target")?,
            seq: int(a, "seq"),
        },
        b"put" => Method::Put(Box::new(put(a, rules)?)),
        _ => Method::Unknown {
            target: id(a, "target", rules)
                .or_else(|| id(a, "info_hash", rules))
                .ok_or(METHOD_UNKNOWN)?,
        },
    };
    Ok(Query {
        id: sender,
        method,
        want: want(a),
    })
}

/// BEP 44 `put`. The value is re-encoded from the parsed tree, so this agrees with the real
/// decoder (which keeps `v`'s bytes as sent) only for canonically encoded values: sorted
/// keys, no leading zeros. Token first, then `v` (205 when over 1000 bytes), then, for a
/// mutable put (`k` or `sig` present), `salt` (207 over 64 bytes), a 32-byte `k`, a 64-byte
/// `sig` and an integer `seq`.
fn put(a: &Dict, rules: &Rules) -> Result<PutArgs, i64> {
    let token = bytes(a, "token")
        .filter(|t| t.len() <= rules.max_token)
        .and_then(Token::new)
        .ok_or(PROTOCOL_ERROR)?;
    let v = a.get(&b"v"[..]).ok_or(PROTOCOL_ERROR)?;
    let v = serde_bencode::to_bytes(v).map_err(|_| PROTOCOL_ERROR)?;
    if v.len() > MAX_VALUE {
        return Err(VALUE_TOO_BIG);
    }
    let mutable = if bytes(a, "k").is_some() || bytes(a, "sig").is_some() {
        let salt = bytes(a, "salt").unwrap_or(&[]);
        if salt.len() > MAX_SALT {
            return Err(SALT_TOO_BIG);
        }
        Some(MutablePut {
            k: bytes(a, "k")
                .and_then(|k| k.try_into().ok())
                .ok_or(PROTOCOL_ERROR)?,
            salt: salt.to_vec(),
            sig: bytes(a, "sig")
                .and_then(|k| k.try_into().ok())
                .ok_or(PROTOCOL_ERROR)?,
            seq: int(a, "seq").ok_or(PROTOCOL_ERROR)?,
            cas: int(a, "cas"),
        })
    } else {
        None
    };
    Ok(PutArgs { token, v, mutable })
}

/// The byte strings of a `values` list (none when it is not a list).
fn values(r: &Dict) -> impl Iterator<Item = &[u8]> {
    let items = match r.get(&b"values"[..]) {
        Some(Value::List(items)) => items.as_slice(),
        _ => &[],
    };
    items.iter().filter_map(|v| match v {
        Value::Bytes(b) => Some(b.as_slice()),
        _ => None,
    })
}

fn response(top: &Dict, rules: &Rules) -> Option<Response> {
    let r = dict(top, "r")?;
    Some(Response {
        id: id(r, "id", rules)?,
        nodes: bytes(r, "nodes").map(<[u8]>::to_vec),
        nodes6: bytes(r, "nodes6").map(<[u8]>::to_vec),
        values: values(r).filter_map(peer).collect(),
        values6: values(r).filter_map(peer6).collect(),
        token: bytes(r, "token")
            .filter(|t| t.len() <= rules.max_token)
            .and_then(Token::new),
        samples: bytes(r, "samples").map(<[u8]>::to_vec),
        interval: int(r, "interval"),
        num: int(r, "num"),
        // BEP 44; `v` re-encoded from the tree (see `put` for when that matches).
        v: r.get(&b"v"[..])
            .and_then(|v| serde_bencode::to_bytes(v).ok()),
        k: bytes(r, "k").and_then(|k| k.try_into().ok()).map(Box::new),
        seq: int(r, "seq"),
        sig: bytes(r, "sig")
            .and_then(|s| s.try_into().ok())
            .map(Box::new),
        // BEP 33: two 256-byte bloom filters; any other length is not a filter.
        bf_seeds: bytes(r, "BFsd")
            .and_then(ScrapeFilter::from_slice)
            .map(Box::new),
        bf_peers: bytes(r, "BFpe")
            .and_then(ScrapeFilter::from_slice)
            .map(Box::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::of_this_build()
    }

    /// BEP 5's own examples decode to what the BEP says they mean.
    #[test]
    fn bep5_examples() {
        let Verdict::Message(m) = decode(
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            &rules(),
        ) else {
            panic!("ping")
        };
        assert_eq!(m.tid.as_slice(), b"aa");
        assert_eq!(
            m.body,
            Body::Query(Query {
                id: NodeId(*b"abcdefghij0123456789"),
                method: Method::Ping,
                want: Default::default(),
            })
        );
        let Verdict::Message(m) = decode(
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
            &rules(),
        ) else {
            panic!("error")
        };
        assert_eq!(
            m.body,
            Body::Error(ErrorBody {
                code: 201,
                message: "A Generic Error Ocurred".into()
            })
        );
        let Verdict::Message(m) = decode(b"d1:rd2:id20:mnopqrstuvwxyz1234565:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re", &rules()) else {
            panic!("get_peers reply")
        };
        let Body::Response(r) = m.body else { panic!() };
        assert_eq!(r.token.unwrap().as_slice(), b"aoeusnth");
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.values[0], "97.120.106.101:11893".parse().unwrap());
    }

    /// The grammar: the cases BEP 3 spells out, and the limits.
    #[test]
    fn grammar() {
        for ok in [
            &b"i3e"[..],
            b"i-3e",
            b"i0e",
            b"4:spam",
            b"0:",
            b"l4:spam4:eggse",
            b"d3:cow3:moo4:spam4:eggse",
            b"d4:spaml1:a1:bee",
            b"le",
            b"de",
            b"lllllllleeeeeeee",
            b"d1:xd1:ai4eee",
            b"d1:xlde1:ae1:yi0ee",
            b"i9223372036854775807e",
            b"i-9223372036854775808e",
        ] {
            assert!(well_formed(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"i3",
            b"ie",
            b"i-e",
            b"i+3e",
            b"i3.0e",
            b"i9223372036854775808e",
            b"5:spam",
            b"4spam",
            b"-1:a",
            b"l",
            b"d3:cowe",
            b"di1e3:mooe",
            b"d1:ae",
            b"i1ei2e",
            b"llllllllleeeeeeeee",
            b"d1:xdi3ei4eee",
            b"d1:xd1:aee",
            b"e",
            b"x",
        ] {
            assert!(!well_formed(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Refusals: what is answered with which code, and what is dropped where.
    #[test]
    fn refusals() {
        let r = rules();
        assert_eq!(
            decode(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe", &r),
            Verdict::Answer {
                tid: b"aa".to_vec(),
                code: 203
            }
        );
        assert_eq!(
            decode(
                b"d1:ad2:id20:abcdefghij0123456789e1:q7:unknown1:t2:aa1:y1:qe",
                &r
            ),
            Verdict::Answer {
                tid: b"aa".to_vec(),
                code: 204
            }
        );
        assert_eq!(
            decode(b"d1:ad2:xxi1ee1:q7:unknown1:t2:aa1:y1:qe", &r),
            Verdict::Answer {
                tid: b"aa".to_vec(),
                code: 204
            },
            "unknown method without an id"
        );
        assert_eq!(
            decode(b"d1:t2:aa1:y1:re", &r),
            Verdict::Drop(Drop::BadReply)
        );
        assert_eq!(decode(b"d1:y1:qe", &r), Verdict::Drop(Drop::NotKrpc));
        assert_eq!(decode(b"li1ee", &r), Verdict::Drop(Drop::NotKrpc));
        assert_eq!(decode(b"d1:t2:aa", &r), Verdict::Drop(Drop::Malformed));
    }
}
