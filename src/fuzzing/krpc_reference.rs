//! The reference KRPC decoder the fuzzer and `tests/krpc_decoder_differential.rs` compare
//! `krpc::decode` against: the serde_bencode-based decoder that shipped before the
//! single-pass borrowing one (pre-scan with `bencode::validate`, lenient serde visitors,
//! typed validation), verbatim except for the fix of its short-`e`-list bug.
//!
//! It lives in the library (not in the test) so that the `krpc` fuzz target, which can only
//! link the library, checks the same differential property as the test: an independent
//! implementation of the same lenient rules, so a disagreement, errors and reasons included,
//! is a bug in one of them. It is slow and allocates; nothing but tests and fuzzing call it.

use std::fmt;
use std::net::SocketAddrV4;

use crate::bencode;
use crate::dht::id::{COMPACT_PEER_LEN, NodeId, compact_peer};
use crate::dht::krpc::{
    Body, DecodeError, ERR_GENERIC, ERR_METHOD_UNKNOWN, ERR_PROTOCOL, ErrorBody, MAX_DATAGRAM,
    Message, Method, Query, Response, Tid, Token, Version,
};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

const KRPC_MAX_DEPTH: usize = 8;

pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(DecodeError::NotKrpc("datagram too large"));
    }
    bencode::validate(buf, KRPC_MAX_DEPTH).map_err(DecodeError::Malformed)?;
    if buf.first() != Some(&b'd') {
        return Err(DecodeError::NotKrpc("top level is not a dictionary"));
    }
    let raw: RawMessage =
        serde_bencode::from_bytes(buf).map_err(|_| DecodeError::NotKrpc("undecodable"))?;
    raw.into_message()
}

/// Every dictionary key any KRPC message uses; other keys are skipped.
#[derive(Clone, Copy)]
enum Key {
    T,
    Y,
    Q,
    A,
    R,
    E,
    Ip,
    Ro,
    V,
    Id,
    Target,
    InfoHash,
    Port,
    ImpliedPort,
    Token,
    Nodes,
    Values,
    Samples,
    Interval,
    Num,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dictionary key")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key, E> {
                Ok(match v {
                    b"t" => Key::T,
                    b"y" => Key::Y,
                    b"q" => Key::Q,
                    b"a" => Key::A,
                    b"r" => Key::R,
                    b"e" => Key::E,
                    b"ip" => Key::Ip,
                    b"ro" => Key::Ro,
                    b"v" => Key::V,
                    b"id" => Key::Id,
                    b"target" => Key::Target,
                    b"info_hash" => Key::InfoHash,
                    b"port" => Key::Port,
                    b"implied_port" => Key::ImpliedPort,
                    b"token" => Key::Token,
                    b"nodes" => Key::Nodes,
                    b"values" => Key::Values,
                    b"samples" => Key::Samples,
                    b"interval" => Key::Interval,
                    b"num" => Key::Num,
                    _ => Key::Other,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                self.visit_bytes(v.as_bytes())
            }
        }
        // `deserialize_bytes` (not `identifier`) so non-UTF-8 keys are skipped, not fatal.
        d.deserialize_bytes(KeyVisitor)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the "wrong type reads as absent" visitor methods for a lenient type whose
/// `Default` is the absent value.
macro_rules! lenient_fallbacks {
    ($($skip:ident),*) => {
        $(lenient_fallbacks!(@one $skip);)*
    };
    (@one int) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@one bytes) => {
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@one seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq)?;
            Ok(Default::default())
        }
    };
    (@one map) => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map)?;
            Ok(Default::default())
        }
    };
}

/// A byte string, or `None` when the value had another type.
#[derive(Default)]
struct LBytes(Option<Vec<u8>>);

impl<'de> Deserialize<'de> for LBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<LBytes, E> {
                Ok(LBytes(Some(v.to_vec())))
            }
            lenient_fallbacks!(int, seq, map);
        }
        d.deserialize_any(V)
    }
}

/// An integer, or `None` when the value had another type.
#[derive(Default)]
struct LInt(Option<i64>);

impl<'de> Deserialize<'de> for LInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LInt, E> {
                Ok(LInt(Some(v)))
            }
            lenient_fallbacks!(bytes, seq, map);
        }
        d.deserialize_any(V)
    }
}

/// A list of compact peers (`values`); entries that are not 6-byte strings are skipped
/// (18-byte IPv6 peers belong to BEP 32, which this node does not speak).
#[derive(Default)]
struct LPeers(Vec<SocketAddrV4>);

impl<'de> Deserialize<'de> for LPeers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LPeers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of compact peers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LPeers, A::Error> {
                let mut out = Vec::new();
                while let Some(LBytes(b)) = seq.next_element::<LBytes>()? {
                    if let Some(addr) = b.as_deref().and_then(|b| {
                        (b.len() == COMPACT_PEER_LEN)
                            .then(|| compact_peer(b))
                            .flatten()
                    }) {
                        out.push(addr);
                    }
                }
                Ok(LPeers(out))
            }
            lenient_fallbacks!(int, bytes, map);
        }
        d.deserialize_any(V)
    }
}

/// `e = [code, message]`, tolerating a missing or mistyped element.
#[derive(Default)]
struct LError(Option<(Option<i64>, Option<Vec<u8>>)>);

impl<'de> Deserialize<'de> for LError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LError;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LError, A::Error> {
                // serde_bencode's SeqAccess is not fused: asking for another element after
                // the list has ended reads on into the enclosing dictionary. This is the bug
                // the serde path had in src/krpc/decode.rs; fixed here.
                let code = seq.next_element::<LInt>()?;
                let msg = match code {
                    Some(_) => seq.next_element::<LBytes>()?,
                    None => None,
                };
                if msg.is_some() {
                    skip_seq(seq)?;
                }
                Ok(LError(Some((
                    code.and_then(|c| c.0),
                    msg.and_then(|m| m.0),
                ))))
            }
            lenient_fallbacks!(int, bytes, map);
        }
        d.deserialize_any(V)
    }
}

/// The fields of an `a` or `r` dictionary (one bag serves both: their key sets overlap and
/// each message type reads only its own).
#[derive(Default)]
struct Bag {
    is_dict: bool,
    id: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
    info_hash: Option<Vec<u8>>,
    port: Option<i64>,
    implied_port: Option<i64>,
    token: Option<Vec<u8>>,
    nodes: Option<Vec<u8>>,
    values: Vec<SocketAddrV4>,
    samples: Option<Vec<u8>>,
    interval: Option<i64>,
    num: Option<i64>,
}

impl<'de> Deserialize<'de> for Bag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an argument dictionary")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bag, A::Error> {
                let mut bag = Bag {
                    is_dict: true,
                    ..Default::default()
                };
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Id => bag.id = map.next_value::<LBytes>()?.0,
                        Key::Target => bag.target = map.next_value::<LBytes>()?.0,
                        Key::InfoHash => bag.info_hash = map.next_value::<LBytes>()?.0,
                        Key::Port => bag.port = map.next_value::<LInt>()?.0,
                        Key::ImpliedPort => bag.implied_port = map.next_value::<LInt>()?.0,
                        Key::Token => bag.token = map.next_value::<LBytes>()?.0,
                        Key::Nodes => bag.nodes = map.next_value::<LBytes>()?.0,
                        Key::Values => bag.values = map.next_value::<LPeers>()?.0,
                        Key::Samples => bag.samples = map.next_value::<LBytes>()?.0,
                        Key::Interval => bag.interval = map.next_value::<LInt>()?.0,
                        Key::Num => bag.num = map.next_value::<LInt>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(bag)
            }
            lenient_fallbacks!(int, bytes, seq);
        }
        d.deserialize_any(V)
    }
}

/// The top-level dictionary, every field as sent.
#[derive(Default)]
struct RawMessage {
    t: Option<Vec<u8>>,
    y: Option<Vec<u8>>,
    q: Option<Vec<u8>>,
    a: Option<Bag>,
    r: Option<Bag>,
    e: Option<(Option<i64>, Option<Vec<u8>>)>,
    ip: Option<Vec<u8>>,
    ro: Option<i64>,
    v: Option<Vec<u8>>,
}

impl<'de> Deserialize<'de> for RawMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMessage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a KRPC dictionary")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMessage, A::Error> {
                let mut m = RawMessage::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::T => m.t = map.next_value::<LBytes>()?.0,
                        Key::Y => m.y = map.next_value::<LBytes>()?.0,
                        Key::Q => m.q = map.next_value::<LBytes>()?.0,
                        Key::A => m.a = Some(map.next_value::<Bag>()?),
                        Key::R => m.r = Some(map.next_value::<Bag>()?),
                        Key::E => m.e = map.next_value::<LError>()?.0,
                        Key::Ip => m.ip = map.next_value::<LBytes>()?.0,
                        Key::Ro => m.ro = map.next_value::<LInt>()?.0,
                        Key::V => m.v = map.next_value::<LBytes>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
            lenient_fallbacks!(int, bytes, seq);
        }
        d.deserialize_any(V)
    }
}

fn id20(b: &Option<Vec<u8>>) -> Option<NodeId> {
    b.as_deref().and_then(NodeId::from_slice)
}

impl RawMessage {
    fn into_message(self) -> Result<Message, DecodeError> {
        let tid = self
            .t
            .as_deref()
            .ok_or(DecodeError::NotKrpc("missing transaction id"))?;
        let tid = Tid::new(tid).ok_or(DecodeError::NotKrpc("transaction id too long"))?;
        let body = match self.y.as_deref() {
            Some(b"q") => Body::Query(query(tid, self.q.as_deref(), self.a)?),
            Some(b"r") => Body::Response(response(self.r)?),
            Some(b"e") => {
                let (code, msg) = self.e.ok_or(DecodeError::BadReply("missing error list"))?;
                Body::Error(ErrorBody {
                    code: code.unwrap_or(ERR_GENERIC),
                    message: String::from_utf8_lossy(msg.as_deref().unwrap_or(&[])).into_owned(),
                })
            }
            _ => return Err(DecodeError::NotKrpc("missing or unknown message type")),
        };
        Ok(Message {
            tid,
            body,
            ip: self.ip.as_deref().and_then(compact_peer),
            read_only: self.ro.is_some_and(|v| v != 0),
            version: self.v.as_deref().and_then(Version::new),
        })
    }
}

fn query(tid: Tid, q: Option<&[u8]>, a: Option<Bag>) -> Result<Query, DecodeError> {
    let bad = |reason| DecodeError::BadQuery {
        tid,
        code: ERR_PROTOCOL,
        reason,
    };
    let q = q.ok_or_else(|| bad("missing method name"))?;
    let a = a
        .filter(|a| a.is_dict)
        .ok_or_else(|| bad("missing argument dictionary"))?;
    let id = id20(&a.id).ok_or_else(|| bad("missing or invalid node id"))?;
    let method = match q {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode {
            target: id20(&a.target).ok_or_else(|| bad("missing or invalid target"))?,
        },
        b"get_peers" => Method::GetPeers {
            info_hash: id20(&a.info_hash).ok_or_else(|| bad("missing or invalid info_hash"))?,
        },
        b"announce_peer" => {
            let info_hash =
                id20(&a.info_hash).ok_or_else(|| bad("missing or invalid info_hash"))?;
            let token = a
                .token
                .as_deref()
                .and_then(Token::new)
                .ok_or_else(|| bad("missing or invalid token"))?;
            let implied_port = a.implied_port.is_some_and(|v| v != 0);
            let port = match a.port {
                Some(p @ 1..=65535) => p as u16,
                // With implied_port the port argument is ignored; accept a missing or odd one.
                _ if implied_port => 0,
                _ => return Err(bad("missing or invalid port")),
            };
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            }
        }
        b"sample_infohashes" => Method::SampleInfohashes {
            target: id20(&a.target).ok_or_else(|| bad("missing or invalid target"))?,
        },
        _ => match id20(&a.target).or_else(|| id20(&a.info_hash)) {
            Some(target) => Method::Unknown { target },
            None => {
                return Err(DecodeError::BadQuery {
                    tid,
                    code: ERR_METHOD_UNKNOWN,
                    reason: "method unknown",
                });
            }
        },
    };
    Ok(Query { id, method })
}

fn response(r: Option<Bag>) -> Result<Response, DecodeError> {
    let r = r
        .filter(|r| r.is_dict)
        .ok_or(DecodeError::BadReply("missing reply dictionary"))?;
    let id = id20(&r.id).ok_or(DecodeError::BadReply("missing or invalid node id"))?;
    Ok(Response {
        id,
        nodes: r.nodes,
        values: r.values,
        token: r.token.as_deref().and_then(Token::new),
        samples: r.samples,
        interval: r.interval,
        num: r.num,
    })
}
