//! Tolerant single-pass KRPC decoding.
//!
//! One left-to-right walk over the datagram both proves its structure and extracts the
//! fields. Why not a pre-scan plus a generic bencode decoder: profiling the node under load
//! (BENCHMARKS.md, section (b)) showed decoding through serde_bencode at ~78 % of the node's
//! user-space instructions per served query (it reads one byte at a time through `io::Read`
//! and allocates a `Vec` for every integer, length prefix and byte string), and the separate
//! structural pre-scan at half of what was left once that was gone.
//!
//! The walk enforces exactly what [`bencode::validate`] enforces (integer and length syntax,
//! dictionary keys are strings, every key has a value, nesting depth, nothing after the
//! top-level dictionary) and reports the same [`ScanError`] at the same offset: it reads
//! scalars with the same [`bencode`] helpers and skips values it does not need with
//! [`bencode::scan_value`], which is iterative. The fixed KRPC shapes it descends into itself
//! (message → `a`/`r` dict → `values` list, message → `e` list) are three levels deep at most,
//! so the decoder never recurses on input-controlled nesting, and the depth limit is checked
//! before descending. Every read is bounds-checked and reports an error instead of panicking.
//! Fields are borrowed from the datagram; only what the returned [`Message`] owns (`nodes`,
//! `samples`, `values`, the error text) is allocated.
//!
//! Leniency, so that the typed layer can choose between answering, answering with error 203
//! or dropping: unknown keys (including non-UTF-8 ones) are skipped, keys may come in any
//! order, a known key whose value has the wrong type reads as absent, and a repeated key keeps
//! its last value. `tests/krpc_decoder_differential.rs` checks all of this against a
//! reference decoder built on serde_bencode.

use std::fmt;
use std::net::{SocketAddrV4, SocketAddrV6};

use super::{
    Body, ERR_GENERIC, ERR_METHOD_UNKNOWN, ERR_PROTOCOL, ERR_SALT_TOO_BIG, ERR_VALUE_TOO_BIG,
    ErrorBody, MAX_DATAGRAM, MAX_ITEM_SALT, MAX_ITEM_VALUE, Message, Method, MutablePut, PutArgs,
    Query, Response, Tid, Token, Version, Want,
};
use crate::bencode::{self, ScanError};
use crate::dht::id::{InfoHash, NodeId, compact_addr, compact_peer, compact_peer6};
use crate::dht::scrape::ScrapeFilter;

/// KRPC never nests deeper than message → dict → list; 8 leaves room for extensions.
const KRPC_MAX_DEPTH: usize = 8;

// The decoder opens the containers it reads itself (top level, `a`/`r`, `values`/`e`) without
// consulting the limit; that is only right while the limit admits them.
const _: () = assert!(KRPC_MAX_DEPTH >= 3);

/// Why a datagram did not decode into a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not one well-formed bencoded dict within the size and depth limits: drop and count.
    Malformed(ScanError),
    /// Well-formed, but without a usable `t`/`y`: nothing to answer, drop and count.
    NotKrpc(&'static str),
    /// A query we parsed far enough to answer with an error (203 or 204; a BEP 44 put also
    /// 205 or 207).
    BadQuery {
        /// The query's transaction id, to echo in the error.
        tid: Tid,
        /// The KRPC error code to answer with.
        code: i64,
        /// The error message text to answer with.
        reason: &'static str,
    },
    /// A response or error with unusable fields: replies are never answered, drop and count.
    BadReply(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(e) => write!(f, "malformed bencode: {e}"),
            DecodeError::NotKrpc(why) => write!(f, "not a KRPC message: {why}"),
            DecodeError::BadQuery { code, reason, .. } => write!(f, "bad query ({code}): {reason}"),
            DecodeError::BadReply(why) => write!(f, "bad reply: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one datagram.
///
/// Errors come in this order: oversize, then any structural problem anywhere in the buffer
/// (`Malformed`), then a top level that is not a dictionary, then the typed checks.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(DecodeError::NotKrpc("datagram too large"));
    }
    if buf.first() != Some(&b'd') {
        // Nothing to extract; only tell malformed input from a well-formed non-dictionary.
        bencode::validate(buf, KRPC_MAX_DEPTH).map_err(DecodeError::Malformed)?;
        return Err(DecodeError::NotKrpc("top level is not a dictionary"));
    }
    read_message(buf)
        .map_err(DecodeError::Malformed)?
        .into_message()
}

/// A position in the datagram. Depths count the containers open around the value being read
/// (the top-level dictionary's values are at depth 1).
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Result<u8, ScanError> {
        self.buf.get(self.pos).copied().ok_or(ScanError::Truncated)
    }

    /// In a dictionary: the next key, or `None` after consuming the closing `e`.
    fn key(&mut self) -> Result<Option<&'a [u8]>, ScanError> {
        match self.peek()? {
            b'e' => {
                self.pos += 1;
                Ok(None)
            }
            b'0'..=b'9' => self.string().map(Some),
            _ => Err(ScanError::BadKey(self.pos)),
        }
    }

    /// In a list: whether another element follows; consumes the closing `e` when not.
    fn element(&mut self) -> Result<bool, ScanError> {
        if self.peek()? == b'e' {
            self.pos += 1;
            Ok(false)
        } else {
            Ok(true)
        }
    }

    /// `<len>:<bytes>` at the cursor (which holds a digit).
    fn string(&mut self) -> Result<&'a [u8], ScanError> {
        let range = bencode::scan_string(self.buf, self.pos)?;
        self.pos = range.end;
        self.buf.get(range).ok_or(ScanError::Truncated)
    }

    /// Skips one value of any type nested `depth` containers deep, enforcing the depth limit
    /// for whatever it contains.
    fn skip(&mut self, depth: usize) -> Result<(), ScanError> {
        let room = KRPC_MAX_DEPTH.saturating_sub(depth);
        self.pos = bencode::scan_value(self.buf, self.pos, room)?;
        Ok(())
    }

    /// A byte string, or `None` (the value skipped) when it has another type.
    fn bytes_or_absent(&mut self, depth: usize) -> Result<Option<&'a [u8]>, ScanError> {
        if self.peek()?.is_ascii_digit() {
            self.string().map(Some)
        } else {
            self.skip(depth).map(|()| None)
        }
    }

    /// An integer, or `None` (the value skipped) when it has another type.
    fn int_or_absent(&mut self, depth: usize) -> Result<Option<i64>, ScanError> {
        if self.peek()? == b'i' {
            let (value, end) = bencode::read_int(self.buf, self.pos)?;
            self.pos = end;
            Ok(Some(value))
        } else {
            self.skip(depth).map(|()| None)
        }
    }

    /// `values`, at depth 2: the 6-byte strings of a list as IPv4 peers and the 18-byte ones
    /// as IPv6 peers (BEP 32). Other entries are skipped; a non-list reads as no peers.
    #[allow(clippy::type_complexity)]
    fn peers(&mut self) -> Result<(Vec<SocketAddrV4>, Vec<SocketAddrV6>), ScanError> {
        let mut out = Vec::new();
        let mut out6 = Vec::new();
        if self.peek()? != b'l' {
            self.skip(2)?;
            return Ok((out, out6));
        }
        self.pos += 1;
        while self.element()? {
            let Some(b) = self.bytes_or_absent(3)? else {
                continue;
            };
            // compact_peer takes exactly 6 bytes, compact_peer6 exactly 18.
            if let Some(addr) = compact_peer(b) {
                if out.is_empty() {
                    // One allocation instead of a doubling series: every entry takes 8 bytes
                    // (`6:` + 6), so the rest of the datagram bounds the count.
                    out.reserve((self.buf.len() - self.pos.min(self.buf.len())) / 8 + 1);
                }
                out.push(addr);
            } else if let Some(addr) = compact_peer6(b) {
                if out6.is_empty() {
                    out6.reserve((self.buf.len() - self.pos.min(self.buf.len())) / 21 + 1);
                }
                out6.push(addr);
            }
        }
        Ok((out, out6))
    }

    /// BEP 32 `want`, at depth 2: a list of strings, of which `n4` and `n6` are known; a
    /// non-list, other entries and other types are ignored.
    fn want(&mut self) -> Result<Want, ScanError> {
        let mut want = Want::NONE;
        if self.peek()? != b'l' {
            self.skip(2)?;
            return Ok(want);
        }
        self.pos += 1;
        while self.element()? {
            match self.bytes_or_absent(3)? {
                Some(b"n4") => want.n4 = true,
                Some(b"n6") => want.n6 = true,
                _ => {}
            }
        }
        Ok(want)
    }

    /// `e = [code, message, ...]`, at depth 1; each element lenient, extra elements ignored,
    /// missing ones absent. `None` when `e` is not a list.
    fn error_list(&mut self) -> Result<Option<RawError<'a>>, ScanError> {
        if self.peek()? != b'l' {
            self.skip(1)?;
            return Ok(None);
        }
        self.pos += 1;
        let mut e = RawError::default();
        if self.element()? {
            e.code = self.int_or_absent(2)?;
            if self.element()? {
                e.message = self.bytes_or_absent(2)?;
                while self.element()? {
                    self.skip(2)?;
                }
            }
        }
        Ok(Some(e))
    }

    /// The `a`/`r` dictionary, at depth 1; a value of another type gives an empty bag that
    /// says it was not a dictionary.
    fn bag(&mut self) -> Result<Bag<'a>, ScanError> {
        let mut bag = Bag::default();
        if self.peek()? != b'd' {
            self.skip(1)?;
            return Ok(bag);
        }
        self.pos += 1;
        bag.is_dict = true;
        while let Some(key) = self.key()? {
            match key {
                b"id" => bag.id = self.bytes_or_absent(2)?,
                b"target" => bag.target = self.bytes_or_absent(2)?,
                b"info_hash" => bag.info_hash = self.bytes_or_absent(2)?,
                b"port" => bag.port = self.int_or_absent(2)?,
                b"implied_port" => bag.implied_port = self.int_or_absent(2)?,
                b"scrape" => bag.scrape = self.int_or_absent(2)?,
                b"noseed" => bag.noseed = self.int_or_absent(2)?,
                b"seed" => bag.seed = self.int_or_absent(2)?,
                b"BFsd" => bag.bf_seeds = self.bytes_or_absent(2)?,
                b"BFpe" => bag.bf_peers = self.bytes_or_absent(2)?,
                b"token" => bag.token = self.bytes_or_absent(2)?,
                b"nodes" => bag.nodes = self.bytes_or_absent(2)?,
                b"nodes6" => bag.nodes6 = self.bytes_or_absent(2)?,
                b"values" => (bag.values, bag.values6) = self.peers()?,
                b"want" => bag.want = self.want()?,
                b"samples" => bag.samples = self.bytes_or_absent(2)?,
                b"interval" => bag.interval = self.int_or_absent(2)?,
                b"num" => bag.num = self.int_or_absent(2)?,
                // BEP 44. `v` is any bencoded value: kept as its raw bytes, because the
                // immutable target and the signature are computed over exactly those.
                b"v" => {
                    let start = self.pos;
                    self.skip(2)?;
                    bag.v = self.buf.get(start..self.pos);
                }
                b"k" => bag.k = self.bytes_or_absent(2)?,
                b"salt" => bag.salt = self.bytes_or_absent(2)?,
                b"sig" => bag.sig = self.bytes_or_absent(2)?,
                b"seq" => bag.seq = self.int_or_absent(2)?,
                b"cas" => bag.cas = self.int_or_absent(2)?,
                _ => self.skip(2)?,
            }
        }
        Ok(bag)
    }
}

/// The fields of an `a` or `r` dictionary, borrowed from the datagram (one bag serves both:
/// their key sets overlap and each message type reads only its own).
#[derive(Default)]
struct Bag<'a> {
    is_dict: bool,
    id: Option<&'a [u8]>,
    target: Option<&'a [u8]>,
    info_hash: Option<&'a [u8]>,
    port: Option<i64>,
    implied_port: Option<i64>,
    scrape: Option<i64>,
    noseed: Option<i64>,
    seed: Option<i64>,
    bf_seeds: Option<&'a [u8]>,
    bf_peers: Option<&'a [u8]>,
    token: Option<&'a [u8]>,
    nodes: Option<&'a [u8]>,
    nodes6: Option<&'a [u8]>,
    values: Vec<SocketAddrV4>,
    values6: Vec<SocketAddrV6>,
    want: Want,
    samples: Option<&'a [u8]>,
    interval: Option<i64>,
    num: Option<i64>,
    v: Option<&'a [u8]>,
    k: Option<&'a [u8]>,
    salt: Option<&'a [u8]>,
    sig: Option<&'a [u8]>,
    seq: Option<i64>,
    cas: Option<i64>,
}

/// The elements of an `e` list, each absent when missing or mistyped.
#[derive(Default)]
struct RawError<'a> {
    code: Option<i64>,
    message: Option<&'a [u8]>,
}

/// The top-level dictionary, every field as sent, borrowed from the datagram.
#[derive(Default)]
struct RawMessage<'a> {
    t: Option<&'a [u8]>,
    y: Option<&'a [u8]>,
    q: Option<&'a [u8]>,
    a: Option<Bag<'a>>,
    r: Option<Bag<'a>>,
    e: Option<RawError<'a>>,
    ip: Option<&'a [u8]>,
    ro: Option<i64>,
    v: Option<&'a [u8]>,
}

/// Reads a datagram that starts with `d`: the whole top-level dictionary, then checks that
/// nothing follows it.
fn read_message(buf: &[u8]) -> Result<RawMessage<'_>, ScanError> {
    let mut c = Cursor { buf, pos: 1 };
    let mut m = RawMessage::default();
    while let Some(key) = c.key()? {
        match key {
            b"t" => m.t = c.bytes_or_absent(1)?,
            b"y" => m.y = c.bytes_or_absent(1)?,
            b"q" => m.q = c.bytes_or_absent(1)?,
            b"a" => m.a = Some(c.bag()?),
            b"r" => m.r = Some(c.bag()?),
            b"e" => m.e = c.error_list()?,
            b"ip" => m.ip = c.bytes_or_absent(1)?,
            b"ro" => m.ro = c.int_or_absent(1)?,
            b"v" => m.v = c.bytes_or_absent(1)?,
            _ => c.skip(1)?,
        }
    }
    if c.pos != buf.len() {
        return Err(ScanError::Trailing(c.pos));
    }
    Ok(m)
}

fn id20(b: Option<&[u8]>) -> Option<NodeId> {
    b.and_then(NodeId::from_slice)
}

/// An `info_hash` argument: 20 bytes, or `None`.
fn ih20(b: Option<&[u8]>) -> Option<InfoHash> {
    b.and_then(InfoHash::from_slice)
}

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
                let e = self.e.ok_or(DecodeError::BadReply("missing error list"))?;
                Body::Error(ErrorBody {
                    code: e.code.unwrap_or(ERR_GENERIC),
                    message: String::from_utf8_lossy(e.message.unwrap_or(&[])).into_owned(),
                })
            }
            _ => return Err(DecodeError::NotKrpc("missing or unknown message type")),
        };
        Ok(Message {
            tid,
            body,
            ip: self.ip.and_then(compact_addr),
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
    // BEP 5's "204 Method Unknown" answers any method we do not know, even one whose
    // arguments lack an id: the sender learns what is wrong, not that its packet is.
    let unknown = DecodeError::BadQuery {
        tid,
        code: ERR_METHOD_UNKNOWN,
        reason: "method unknown",
    };
    let known = matches!(
        q,
        b"ping" | b"find_node" | b"get_peers" | b"announce_peer" | b"sample_infohashes"
    );
    let Some(a) = a.filter(|a| a.is_dict) else {
        return Err(if known {
            bad("missing argument dictionary")
        } else {
            unknown
        });
    };
    let Some(id) = id20(a.id) else {
        return Err(if known {
            bad("missing or invalid node id")
        } else {
            unknown
        });
    };
    let method = match q {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode {
            target: id20(a.target).ok_or_else(|| bad("missing or invalid target"))?,
        },
        b"get_peers" => Method::GetPeers {
            info_hash: ih20(a.info_hash).ok_or_else(|| bad("missing or invalid info_hash"))?,
            scrape: a.scrape.is_some_and(|v| v != 0),
            noseed: a.noseed.is_some_and(|v| v != 0),
        },
        b"announce_peer" => {
            let info_hash = ih20(a.info_hash).ok_or_else(|| bad("missing or invalid info_hash"))?;
            let token = a
                .token
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
                seed: a.seed.is_some_and(|v| v != 0),
            }
        }
        b"sample_infohashes" => Method::SampleInfohashes {
            target: id20(a.target).ok_or_else(|| bad("missing or invalid target"))?,
        },
        b"get" => Method::Get {
            target: id20(a.target).ok_or_else(|| bad("missing or invalid target"))?,
            seq: a.seq,
        },
        b"put" => Method::Put(Box::new(put_args(tid, &a)?)),
        _ => match id20(a.target).or_else(|| id20(a.info_hash)) {
            Some(target) => Method::Unknown { target },
            None => return Err(unknown),
        },
    };
    Ok(Query {
        id,
        method,
        want: a.want,
    })
}

/// BEP 44 `put` arguments. Size limits get their own error codes (205, 207); anything else
/// missing or mistyped is a protocol error. A query with `k` or `sig` is a mutable put.
fn put_args(tid: Tid, a: &Bag<'_>) -> Result<PutArgs, DecodeError> {
    let err = |code, reason| DecodeError::BadQuery { tid, code, reason };
    let bad = |reason| err(ERR_PROTOCOL, reason);
    let token = a
        .token
        .and_then(Token::new)
        .ok_or_else(|| bad("missing or invalid token"))?;
    let v = a.v.ok_or_else(|| bad("missing v"))?;
    if v.len() > MAX_ITEM_VALUE {
        return Err(err(ERR_VALUE_TOO_BIG, "v too big"));
    }
    let mutable = if a.k.is_some() || a.sig.is_some() {
        let salt = a.salt.unwrap_or(&[]);
        if salt.len() > MAX_ITEM_SALT {
            return Err(err(ERR_SALT_TOO_BIG, "salt too big"));
        }
        let k =
            a.k.and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or_else(|| bad("missing or invalid k"))?;
        let sig = a
            .sig
            .and_then(|s| <[u8; 64]>::try_from(s).ok())
            .ok_or_else(|| bad("missing or invalid sig"))?;
        let seq = a.seq.ok_or_else(|| bad("missing or invalid seq"))?;
        Some(MutablePut {
            k,
            salt: salt.to_vec(),
            seq,
            sig,
            cas: a.cas,
        })
    } else {
        None
    };
    Ok(PutArgs {
        token,
        v: v.to_vec(),
        mutable,
    })
}

fn response(r: Option<Bag<'_>>) -> Result<Response, DecodeError> {
    let r = r
        .filter(|r| r.is_dict)
        .ok_or(DecodeError::BadReply("missing reply dictionary"))?;
    let id = id20(r.id).ok_or(DecodeError::BadReply("missing or invalid node id"))?;
    Ok(Response {
        id,
        nodes: r.nodes.map(<[u8]>::to_vec),
        nodes6: r.nodes6.map(<[u8]>::to_vec),
        values: r.values,
        values6: r.values6,
        token: r.token.and_then(Token::new),
        samples: r.samples.map(<[u8]>::to_vec),
        interval: r.interval,
        num: r.num,
        v: r.v.map(<[u8]>::to_vec),
        k: r.k.and_then(|k| k.try_into().ok()).map(Box::new),
        seq: r.seq,
        sig: r.sig.and_then(|s| s.try_into().ok()).map(Box::new),
        bf_seeds: r.bf_seeds.and_then(ScrapeFilter::from_slice).map(Box::new),
        bf_peers: r.bf_peers.and_then(ScrapeFilter::from_slice).map(Box::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Structural errors are exactly `bencode::validate`'s, wherever they sit (in a field the
    /// decoder reads, in one it skips, or after the message), and take precedence over
    /// missing fields.
    #[test]
    fn structural_errors_match_validate() {
        let malformed: &[&[u8]] = &[
            b"d",
            b"d1:t",
            b"d1:t2:a",
            b"d1:ti1",
            b"d1:tie1:y1:re",
            b"d1:t2:aa1:y1:qee",
            b"d1:t2:aai1ee",
            b"d1:t2:aa1:ye",
            b"d1:rd6:valuesl6:abcdef7:abcdefee1:t2:aa1:y1:re",
            b"d1:rd6:valuesllllllllle1:t2:aa1:y1:re",
            b"d1:rd5:nodesllllllleeeeeeee1:t2:aa1:y1:re",
            b"d1:ellllllllee1:t2:aa1:y1:ee",
            b"d1:xllllllllee",
            b"d1:rdi1e1:xe1:t2:aa1:y1:re",
            b"d1:rd1:x-1:e1:t2:aa1:y1:re",
            b"d1:rd1:x99999999999999999999999:e1:t2:aa1:y1:re",
            b"d1:t2:aa1:y1:re1",
            b"d1:t2:aa1:y1:rede",
            b"d1:t2:aa1:y1:rxe",
        ];
        for c in malformed {
            let text = String::from_utf8_lossy(c);
            let want = bencode::validate(c, KRPC_MAX_DEPTH).expect_err(&text);
            assert_eq!(decode(c), Err(DecodeError::Malformed(want)), "{text}");
        }
        // Exactly at the depth limit, and integers validate accepts: not structural errors.
        for c in [
            &b"d1:rd2:id20:abcdefghij01234567895:nodeslllllleeeeeee1:t2:aa1:y1:re"[..],
            b"d1:xllllllleeeeeee1:t2:aa1:y1:re",
            b"d1:ad2:idi-0ee1:t2:aa1:y1:qe",
            b"d1:ad2:idi01ee1:t2:aa1:y1:qe",
        ] {
            let text = String::from_utf8_lossy(c);
            assert_eq!(bencode::validate(c, KRPC_MAX_DEPTH), Ok(()), "{text}");
            assert!(
                !matches!(decode(c), Err(DecodeError::Malformed(_))),
                "{text}"
            );
        }
    }
}
