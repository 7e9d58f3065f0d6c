//! Body of the `bep44` fuzz target: BEP 44 item values, signatures, the storing node's
//! rules and the getting node's checks, driven by a script of operations read from the input.
//!
//! Why a script and not one parse: the KRPC target already reaches the `get`/`put`
//! decoders, but a fuzzer cannot forge an ed25519 signature, so on its own it never gets
//! past `BadSignature`. Here the input picks values, salts, sequence numbers, `cas`, times
//! and a tampering (or none), and the target signs with fixed keys through ed25519-dalek
//! directly, so every rule behind the signature check (sequence order, CAS, equal-seq
//! writes, eviction, expiry, forged and stale replies) is reachable.
//!
//! Properties, each checked against something other than the code under test:
//! - `items::signable` writes what BEP 44 says is signed (built here with the bencode writer);
//! - a signature verifies exactly when nothing it covers was tampered with;
//! - a put is refused or stored exactly as BEP 44's rules say, given what the store held
//!   before; a refused put changes nothing; the store stays within its caps;
//! - a `get` search believes only values that check out, and its best `seq` never goes down;
//! - every value `check_value` accepts round-trips through a KRPC `put` query.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use sha1::{Digest, Sha1};

use crate::bencode::{put_bytes, put_int};
use crate::dht::id::NodeId;
use crate::dht::item_search::{ItemFields, ItemQuery, ItemSearch, ItemVerdict, check_value};
use crate::dht::items::{ItemStore, ItemStoreConfig, PutError, mutable_target, signable, verify};
use crate::dht::krpc::{self, Body, Message, Method, MutablePut, PutArgs, Query, Tid, Token};

/// Reads the script; running out of input reads as zeros, so every prefix is a script.
struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    /// Small numbers (so sequence numbers and `cas` collide often) and both extremes.
    fn seq(&mut self) -> i64 {
        match self.byte() {
            0x7f => i64::MAX,
            0x80 => i64::MIN,
            b => i64::from(b as i8),
        }
    }
}

/// What BEP 44 says a signature covers: the bencoded dictionary `salt` (when not empty),
/// `seq`, `v`, without its outer `d` and `e`. Written here with the bencode writer, apart
/// from `items::signable`, which writes it by hand.
fn reference_signable(salt: &[u8], seq: i64, v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if !salt.is_empty() {
        put_bytes(&mut out, b"salt");
        put_bytes(&mut out, salt);
    }
    put_bytes(&mut out, b"seq");
    put_int(&mut out, seq);
    put_bytes(&mut out, b"v");
    out.extend_from_slice(v);
    out
}

/// One signed item as a client would build it, then (maybe) tampered with on the way.
struct Signed {
    k: [u8; 32],
    salt: Vec<u8>,
    seq: i64,
    v: Vec<u8>,
    sig: [u8; 64],
    /// The salt the signature was made over (a `get` reply carries no salt: the searcher
    /// verifies with its own, so a reply is genuine for a search with this salt).
    signed_salt: Vec<u8>,
    /// Whether the signature still covers `seq` and `v` (nothing but the salt tampered).
    covers: bool,
    /// Whether the signature still covers (k, salt, seq, v).
    genuine: bool,
}

fn signed(s: &mut Script<'_>, keys: &[SigningKey; 2], control: u8) -> Signed {
    let key = &keys[usize::from(control >> 2 & 1)];
    let salt_len = usize::from(s.byte() % 72);
    let mut salt = s.bytes(salt_len).to_vec();
    let signed_salt = salt.clone();
    let mut seq = s.seq();
    let v_len = usize::from(s.byte()) * 5;
    let mut v = s.bytes(v_len).to_vec();

    let mut msg = Vec::new();
    signable(&salt, seq, &v, &mut msg);
    assert_eq!(
        msg,
        reference_signable(&salt, seq, &v),
        "signable is not what BEP 44 signs"
    );
    let mut sig = key.sign(&msg).to_bytes();
    let k = key.verifying_key().to_bytes();
    let tamper = control >> 3 & 7;
    let genuine = match tamper {
        4 => {
            let i = usize::from(s.byte()) % 64;
            sig[i] ^= 1 << (s.byte() % 8);
            false
        }
        5 => {
            seq = seq.wrapping_add(1);
            false
        }
        6 => {
            salt.push(s.byte());
            false
        }
        7 => {
            v.push(s.byte());
            false
        }
        _ => true,
    };
    Signed {
        k,
        salt,
        seq,
        v,
        sig,
        signed_salt,
        covers: genuine || tamper == 6,
        genuine,
    }
}

/// The fuzz body (see the module documentation).
pub fn bep44(data: &[u8]) {
    let mut s = Script(data);
    let keys = [
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    ];
    let mut config = ItemStoreConfig::with_max_items(usize::from(s.byte() % 8) + 1);
    if s.byte() & 1 == 1 {
        // A byte cap that bites before the count does.
        config.max_bytes = config.max_bytes / 2 + 100;
    }
    let ttl = config.ttl;
    let mut store = ItemStore::new(config.clone());
    let mut now = Instant::now();
    let mut last_put: HashMap<NodeId, Instant> = HashMap::new();

    let k0 = keys[0].verifying_key().to_bytes();
    let n = usize::from(s.byte() % 4);
    let search_salt = s.bytes(n).to_vec();
    let min_seq = match s.byte() {
        0 => None,
        b => Some(i64::from(b as i8)),
    };
    let mut mutable_search = ItemSearch::new(
        mutable_target(&k0, &search_salt),
        ItemQuery::Mutable {
            k: k0,
            salt: search_salt.clone(),
            min_seq,
        },
    );
    let mut immutable_search: Option<ItemSearch> = None;
    let mut best_seq = None;

    while !s.done() {
        let control = s.byte();
        match control & 3 {
            // An immutable put.
            0 => {
                let n = usize::from(s.byte()) * 5;
                let v = s.bytes(n).to_vec();
                round_trip_put(&v, None);
                let target = NodeId(Sha1::digest(&v).into());
                let args = PutArgs {
                    token: Token::new(b"").expect("fits"),
                    v: v.clone(),
                    mutable: None,
                };
                assert_eq!(store.put(&args, now), Ok(target));
                last_put.insert(target, now);
                if v.len() + 192 <= config.max_bytes {
                    let held = store.get(&target, now).expect("a fitting put is held");
                    assert_eq!(held.v, v);
                }
                if immutable_search.is_none() {
                    immutable_search = Some(ItemSearch::new(target, ItemQuery::Immutable));
                }
            }
            // A mutable put.
            1 => {
                let item = signed(&mut s, &keys, control);
                assert_eq!(
                    verify(&item.k, &item.salt, item.seq, &item.v, &item.sig),
                    item.genuine,
                    "verify disagrees with the signer"
                );
                let cas = (control & 0x40 != 0).then(|| s.seq());
                let target = mutable_target(&item.k, &item.salt);
                let before = store.get(&target, now).cloned();
                let (len, bytes) = (store.len(), store.bytes());
                let args = PutArgs {
                    token: Token::new(b"").expect("fits"),
                    v: item.v.clone(),
                    mutable: Some(MutablePut {
                        k: item.k,
                        salt: item.salt.clone(),
                        seq: item.seq,
                        sig: item.sig,
                        cas,
                    }),
                };
                round_trip_put(&item.v, args.mutable.as_ref());
                let old = before
                    .as_ref()
                    .and_then(|b| b.mutable.as_ref().map(|m| (m.seq, &b.v)));
                let expected = if !item.genuine {
                    Err(PutError::BadSignature)
                } else {
                    match old {
                        Some((old_seq, _)) if cas.is_some_and(|c| c != old_seq) => {
                            Err(PutError::CasMismatch)
                        }
                        Some((old_seq, _)) if item.seq < old_seq => Err(PutError::SeqTooOld),
                        Some((old_seq, old_v)) if item.seq == old_seq && *old_v != item.v => {
                            Err(PutError::SeqTooOld)
                        }
                        _ => Ok(target),
                    }
                };
                assert_eq!(store.put(&args, now), expected, "put verdict");
                if expected.is_ok() {
                    last_put.insert(target, now);
                }
                let after = store.get(&target, now);
                if expected.is_err() {
                    assert_eq!(
                        (store.len(), store.bytes()),
                        (len, bytes),
                        "a refused put changed the store"
                    );
                    assert_eq!(after.map(|a| &a.v), before.as_ref().map(|b| &b.v));
                } else if item.v.len() + 192 <= config.max_bytes {
                    let held = after.expect("a fitting put is held");
                    assert_eq!(held.v, item.v);
                    assert_eq!(held.mutable.as_ref().map(|m| m.seq), Some(item.seq));
                }
            }
            // A `get` reply reaching both searches.
            2 => {
                let from = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, s.byte() % 8), 6881);
                let item = signed(&mut s, &keys, control);
                let fields = ItemFields {
                    v: Some(&item.v),
                    k: (control & 0x40 == 0).then_some(&item.k),
                    seq: Some(item.seq),
                    sig: (control & 0x80 == 0).then_some(&item.sig),
                };
                let forged = mutable_search.forged;
                let verdict = mutable_search.on_reply(from.into(), fields);
                let believable = item.covers
                    && fields.k.is_some()
                    && fields.sig.is_some()
                    && item.k == k0
                    && item.signed_salt == search_salt;
                match verdict {
                    ItemVerdict::Forged => {
                        assert!(!believable, "a genuine value was called forged");
                        assert_eq!(mutable_search.forged, forged + 1);
                    }
                    ItemVerdict::Accepted | ItemVerdict::Stale => {
                        assert!(believable, "a forged value was believed: {verdict:?}")
                    }
                    ItemVerdict::NoValue => panic!("a reply with a value read as none"),
                }
                if let Some(best) = mutable_search.best() {
                    let m = best
                        .mutable
                        .as_ref()
                        .expect("a mutable search keeps a mutable best");
                    assert!(verify(&m.k, &search_salt, m.seq, &best.v, &m.sig));
                    assert!(min_seq.is_none_or(|min| m.seq >= min));
                    assert!(
                        best_seq.is_none_or(|b| m.seq >= b),
                        "the best seq went down"
                    );
                    best_seq = Some(m.seq);
                    assert!((1..=8).contains(&mutable_search.confirmations()));
                }
                if let Some(search) = &mut immutable_search {
                    let verdict = search.on_reply(from.into(), fields);
                    let hashes = NodeId(Sha1::digest(&item.v).into()) == search.target;
                    assert_eq!(verdict == ItemVerdict::Forged, !hashes, "{verdict:?}");
                }
            }
            // Time passes: up to about three hours, past the two-hour lifetime.
            _ => {
                now += Duration::from_secs(u64::from(s.byte()) * 45);
                for (target, at) in &last_put {
                    if now.duration_since(*at) >= ttl {
                        assert!(
                            store.get(target, now).is_none(),
                            "an expired item is served"
                        );
                    }
                }
            }
        }
        assert!(store.len() <= config.max_items, "more items than the cap");
        assert!(store.bytes() <= config.max_bytes, "more bytes than the cap");
    }
}

/// A put query with this value (and these mutable fields) survives KRPC encoding and
/// decoding unchanged when `check_value` accepts the value; whatever the bytes, a `put`
/// the decoder reads back carries a value `check_value` accepts.
fn round_trip_put(v: &[u8], mutable: Option<&MutablePut>) {
    let args = PutArgs {
        token: Token::new(b"tok").expect("fits"),
        v: v.to_vec(),
        mutable: mutable.cloned(),
    };
    let message = Message {
        tid: Tid::new(b"aa").expect("fits"),
        body: Body::Query(Query {
            id: NodeId([7; 20]),
            method: Method::Put(Box::new(args)),
            want: Default::default(),
        }),
        ip: None,
        read_only: false,
        version: None,
    };
    let mut out = Vec::new();
    krpc::encode_message(&mut out, &message);
    let decoded = krpc::decode(&out);
    let salt_ok = mutable.is_none_or(|m| m.salt.len() <= krpc::MAX_ITEM_SALT);
    if check_value(v).is_ok() && salt_ok {
        assert_eq!(
            decoded.as_ref(),
            Ok(&message),
            "a valid put does not round-trip"
        );
    } else if let Ok(Message {
        body: Body::Query(Query {
            method: Method::Put(got),
            ..
        }),
        ..
    }) = &decoded
    {
        assert_eq!(
            check_value(&got.v),
            Ok(()),
            "the decoder took an invalid value"
        );
    }
}
