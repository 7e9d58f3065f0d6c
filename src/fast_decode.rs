//! PROTOTYPE (benchmark branch): a KRPC decoder that reads the pre-validated datagram in place
//! instead of going through serde_bencode.
//!
//! Why: profiling `dht-node` under load (BENCHMARKS.md, section (b)) shows `krpc::decode`
//! taking ~78 % of the node's user-space instructions per served query, almost all of it
//! inside serde_bencode, which reads one byte at a time through `io::Read` and allocates a
//! `Vec` for every integer, length prefix and byte string. [`crate::bencode::validate`] has
//! already proven the structure, so a second walk over the same bytes can borrow every field
//! and allocate only what the typed [`Message`] keeps (`nodes`, `samples`, `values`).
//!
//! The contract is *identical results* to [`crate::krpc::decode`] for every input — the same
//! `Ok` message and the same error, reason strings included — so that swapping it in changes
//! nothing but speed; `tests/fast_decode.rs` checks this on the real-world corpus and on
//! hundreds of thousands of mutated datagrams. The lenient rules are the serde visitors' own:
//! unknown keys are skipped, a known key with the wrong type reads as absent, a repeated key
//! keeps its last value.
//!
//! To adopt it, `src/krpc/decode.rs` would replace `serde_bencode::from_bytes::<RawMessage>`
//! with [`scan_raw`]-style borrowing (its `RawMessage`/`Bag` with `&[u8]` fields) and keep its
//! typed validation (`into_message`, `query`, `response`), which this file mirrors.

use std::net::SocketAddrV4;

use crate::bencode;
use crate::id::{COMPACT_PEER_LEN, NodeId, compact_peer};
use crate::krpc::{
    Body, DecodeError, ERR_GENERIC, ERR_METHOD_UNKNOWN, ERR_PROTOCOL, ErrorBody, MAX_DATAGRAM,
    Message, Method, Query, Response, Tid, Token, Version,
};

/// Same depth limit as `krpc::decode`.
const KRPC_MAX_DEPTH: usize = 8;

/// Decodes one datagram; same results as [`crate::krpc::decode`].
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(DecodeError::NotKrpc("datagram too large"));
    }
    bencode::validate(buf, KRPC_MAX_DEPTH).map_err(DecodeError::Malformed)?;
    if buf.first() != Some(&b'd') {
        return Err(DecodeError::NotKrpc("top level is not a dictionary"));
    }
    let raw = scan_raw(buf).ok_or(DecodeError::NotKrpc("undecodable"))?;
    raw.into_message()
}

/// A cursor over input that [`bencode::validate`] accepted. Every step is still bounds
/// checked (returning `None`), so a bug here can only produce an error, never a panic.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Consumes the `e` that ends a list or dict; false when the container goes on.
    fn at_end(&mut self) -> bool {
        if self.peek() == Some(b'e') {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Reads `<len>:<bytes>`.
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let mut len: usize = 0;
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'0'..=b'9' => len = len.checked_mul(10)?.checked_add(usize::from(b - b'0'))?,
                b':' => break,
                _ => return None,
            }
        }
        let end = self.pos.checked_add(len)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// Reads `i<digits>e`.
    fn int(&mut self) -> Option<i64> {
        let body = self.pos.checked_add(1)?;
        let len = self.buf.get(body..)?.iter().position(|&b| b == b'e')?;
        let v = bencode::parse_int(&self.buf[body..body + len])?;
        self.pos = body + len + 1;
        Some(v)
    }

    /// Skips one value of any type.
    fn skip(&mut self) -> Option<()> {
        self.pos = bencode::scan_value(self.buf, self.pos, 64).ok()?;
        Some(())
    }

    /// A byte string, or `None` (skipping the value) when it has another type.
    fn lenient_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        if self.peek()?.is_ascii_digit() {
            self.bytes().map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    /// An integer, or `None` (skipping the value) when it has another type.
    fn lenient_int(&mut self) -> Option<Option<i64>> {
        if self.peek()? == b'i' {
            self.int().map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    /// `values`: the 6-byte strings of a list as IPv4 peers; anything else is skipped.
    fn lenient_peers(&mut self) -> Option<Vec<SocketAddrV4>> {
        let mut out = Vec::new();
        if self.peek()? != b'l' {
            self.skip()?;
            return Some(out);
        }
        self.pos += 1;
        while !self.at_end() {
            if let Some(b) = self.lenient_bytes()?
                && b.len() == COMPACT_PEER_LEN
                && let Some(addr) = compact_peer(b)
            {
                out.push(addr);
            }
        }
        Some(out)
    }

    /// `e = [code, message, ...]`, each element lenient; `None` when `e` is not a list.
    #[allow(clippy::type_complexity)]
    fn lenient_error(&mut self) -> Option<Option<(Option<i64>, Option<&'a [u8]>)>> {
        if self.peek()? != b'l' {
            self.skip()?;
            return Some(None);
        }
        self.pos += 1;
        let mut code = None;
        let mut msg = None;
        if !self.at_end() {
            code = self.lenient_int()?;
            if !self.at_end() {
                msg = self.lenient_bytes()?;
                while !self.at_end() {
                    self.skip()?;
                }
            }
        }
        Some(Some((code, msg)))
    }

    /// The `a`/`r` dictionary; a value of another type gives an empty, non-dict bag.
    fn bag(&mut self) -> Option<Bag<'a>> {
        let mut bag = Bag::default();
        if self.peek()? != b'd' {
            self.skip()?;
            return Some(bag);
        }
        self.pos += 1;
        bag.is_dict = true;
        while !self.at_end() {
            let key = self.bytes()?;
            match key {
                b"id" => bag.id = self.lenient_bytes()?,
                b"target" => bag.target = self.lenient_bytes()?,
                b"info_hash" => bag.info_hash = self.lenient_bytes()?,
                b"port" => bag.port = self.lenient_int()?,
                b"implied_port" => bag.implied_port = self.lenient_int()?,
                b"token" => bag.token = self.lenient_bytes()?,
                b"nodes" => bag.nodes = self.lenient_bytes()?,
                b"values" => bag.values = self.lenient_peers()?,
                b"samples" => bag.samples = self.lenient_bytes()?,
                b"interval" => bag.interval = self.lenient_int()?,
                b"num" => bag.num = self.lenient_int()?,
                _ => self.skip()?,
            }
        }
        Some(bag)
    }
}

/// The fields of an `a` or `r` dictionary, borrowed from the datagram.
#[derive(Default)]
struct Bag<'a> {
    is_dict: bool,
    id: Option<&'a [u8]>,
    target: Option<&'a [u8]>,
    info_hash: Option<&'a [u8]>,
    port: Option<i64>,
    implied_port: Option<i64>,
    token: Option<&'a [u8]>,
    nodes: Option<&'a [u8]>,
    values: Vec<SocketAddrV4>,
    samples: Option<&'a [u8]>,
    interval: Option<i64>,
    num: Option<i64>,
}

/// The top-level dictionary, borrowed from the datagram.
#[derive(Default)]
struct RawMessage<'a> {
    t: Option<&'a [u8]>,
    y: Option<&'a [u8]>,
    q: Option<&'a [u8]>,
    a: Option<Bag<'a>>,
    r: Option<Bag<'a>>,
    #[allow(clippy::type_complexity)]
    e: Option<(Option<i64>, Option<&'a [u8]>)>,
    ip: Option<&'a [u8]>,
    ro: Option<i64>,
    v: Option<&'a [u8]>,
}

/// Reads the top-level dictionary of a validated datagram that starts with `d`.
fn scan_raw(buf: &[u8]) -> Option<RawMessage<'_>> {
    let mut c = Cursor { buf, pos: 1 };
    let mut m = RawMessage::default();
    while !c.at_end() {
        let key = c.bytes()?;
        match key {
            b"t" => m.t = c.lenient_bytes()?,
            b"y" => m.y = c.lenient_bytes()?,
            b"q" => m.q = c.lenient_bytes()?,
            b"a" => m.a = Some(c.bag()?),
            b"r" => m.r = Some(c.bag()?),
            b"e" => m.e = c.lenient_error()?,
            b"ip" => m.ip = c.lenient_bytes()?,
            b"ro" => m.ro = c.lenient_int()?,
            b"v" => m.v = c.lenient_bytes()?,
            _ => c.skip()?,
        }
    }
    Some(m)
}

fn id20(b: Option<&[u8]>) -> Option<NodeId> {
    b.and_then(NodeId::from_slice)
}

// The typed validation below mirrors `krpc::decode`'s `into_message`, `query` and `response`.

impl RawMessage<'_> {
    fn into_message(self) -> Result<Message, DecodeError> {
        let tid = self
            .t
            .ok_or(DecodeError::NotKrpc("missing transaction id"))?;
        let tid = Tid::new(tid).ok_or(DecodeError::NotKrpc("transaction id too long"))?;
        let body = match self.y {
            Some(b"q") => Body::Query(query(tid, self.q, self.a)?),
            Some(b"r") => Body::Response(response(self.r)?),
            Some(b"e") => {
                let (code, msg) = self.e.ok_or(DecodeError::BadReply("missing error list"))?;
                Body::Error(ErrorBody {
                    code: code.unwrap_or(ERR_GENERIC),
                    message: String::from_utf8_lossy(msg.unwrap_or(&[])).into_owned(),
                })
            }
            _ => return Err(DecodeError::NotKrpc("missing or unknown message type")),
        };
        Ok(Message {
            tid,
            body,
            ip: self.ip.and_then(compact_peer),
            read_only: self.ro.is_some_and(|v| v != 0),
            version: self.v.and_then(Version::new),
        })
    }
}

fn query(tid: Tid, q: Option<&[u8]>, a: Option<Bag<'_>>) -> Result<Query, DecodeError> {
    let bad = |reason| DecodeError::BadQuery {
        tid,
        code: ERR_PROTOCOL,
        reason,
    };
    let q = q.ok_or_else(|| bad("missing method name"))?;
    let a = a
        .filter(|a| a.is_dict)
        .ok_or_else(|| bad("missing argument dictionary"))?;
    let id = id20(a.id).ok_or_else(|| bad("missing or invalid node id"))?;
    let method = match q {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode {
            target: id20(a.target).ok_or_else(|| bad("missing or invalid target"))?,
        },
        b"get_peers" => Method::GetPeers {
            info_hash: id20(a.info_hash).ok_or_else(|| bad("missing or invalid info_hash"))?,
        },
        b"announce_peer" => {
            let info_hash = id20(a.info_hash).ok_or_else(|| bad("missing or invalid info_hash"))?;
            let token = a
                .token
                .and_then(Token::new)
                .ok_or_else(|| bad("missing or invalid token"))?;
            let implied_port = a.implied_port.is_some_and(|v| v != 0);
            let port = match a.port {
                Some(p @ 1..=65535) => p as u16,
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
            target: id20(a.target).ok_or_else(|| bad("missing or invalid target"))?,
        },
        _ => match id20(a.target).or_else(|| id20(a.info_hash)) {
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

fn response(r: Option<Bag<'_>>) -> Result<Response, DecodeError> {
    let r = r
        .filter(|r| r.is_dict)
        .ok_or(DecodeError::BadReply("missing reply dictionary"))?;
    let id = id20(r.id).ok_or(DecodeError::BadReply("missing or invalid node id"))?;
    Ok(Response {
        id,
        nodes: r.nodes.map(<[u8]>::to_vec),
        values: r.values,
        token: r.token.and_then(Token::new),
        samples: r.samples.map(<[u8]>::to_vec),
        interval: r.interval,
        num: r.num,
    })
}
