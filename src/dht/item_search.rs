//! The client side of BEP 44, free of I/O: what a `get` lookup believes, and what a `put`
//! sends once the search found the closest token holders.
//!
//! Why values are checked here and not trusted to the replier: any node can answer a `get`
//! with any `v`. An immutable value is self-certifying (its target is the SHA-1 of the
//! bencoded value), a mutable one is signed by the key the target is derived from; a value
//! that fails its check is counted as forged and never reported. The lookup itself (candidates,
//! α, timeouts, deadline) is the ordinary [`crate::dht::lookup::Lookup`]; this state rides
//! alongside it in the node's lookup slot.

use std::net::SocketAddr;

use ed25519_dalek::{Signer, SigningKey};

use crate::dht::id::NodeId;
use crate::dht::items::{MutableMeta, immutable_target, mutable_target, signable, verify};
use crate::dht::krpc::{MAX_ITEM_SALT, MAX_ITEM_VALUE, MutablePut, PutArgs, Token};

/// Distinct closest nodes that must return the same mutable value (same `seq`, same bytes)
/// before a `get` stops early. One is not enough: a node that missed the latest put returns
/// an older `seq` with a valid signature, and only a look at several holders makes the
/// newest one likely. An immutable value needs one, as its hash proves it.
pub const MUTABLE_CONFIRMATIONS: usize = 3;

/// What a `get` lookup is looking for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemQuery {
    /// The item whose bencoded value hashes to the target.
    Immutable,
    /// The item signed by `k` under `salt`; values with `seq < min_seq` are ignored (and
    /// the queries carry `seq = min_seq - 1`, so nodes holding nothing that new send no value).
    Mutable {
        /// The ed25519 public key the value must be signed with.
        k: [u8; 32],
        /// The salt (empty: none); the target is SHA-1 of `k` followed by it.
        salt: Vec<u8>,
        /// The oldest `seq` wanted (e.g. the last one seen); `None` takes any.
        min_seq: Option<i64>,
    },
}

/// A value that passed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundItem {
    /// The bencoded value, exactly as the node sent it (what the hash and signature cover).
    pub v: Vec<u8>,
    /// Key, sequence number and signature of a mutable item.
    pub mutable: Option<MutableMeta>,
}

impl FoundItem {
    fn seq(&self) -> Option<i64> {
        self.mutable.as_ref().map(|m| m.seq)
    }
}

/// What a reply's item fields were worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemVerdict {
    /// No value in the reply.
    NoValue,
    /// A valid value (the new best, or a confirmation of it).
    Accepted,
    /// A valid value older than the best (or than `min_seq`).
    Stale,
    /// A value that fails its hash or signature check: not believed.
    Forged,
}

/// The item fields of one `get` reply.
#[derive(Debug, Clone, Copy)]
pub struct ItemFields<'a> {
    /// The bencoded value `v`, as received.
    pub v: Option<&'a [u8]>,
    /// The ed25519 public key `k` (mutable items).
    pub k: Option<&'a [u8; 32]>,
    /// The sequence number `seq` (mutable items).
    pub seq: Option<i64>,
    /// The ed25519 signature `sig` over salt, `seq` and value (mutable items).
    pub sig: Option<&'a [u8; 64]>,
}

/// The value side of a `get` lookup.
#[derive(Debug, Clone)]
pub struct ItemSearch {
    /// The DHT target: SHA-1 of the value (immutable) or of key and salt (mutable).
    pub target: NodeId,
    /// What a value must satisfy to be believed.
    pub query: ItemQuery,
    best: Option<FoundItem>,
    /// Nodes that returned exactly `best`.
    confirmed_by: Vec<SocketAddr>,
    /// Replies whose value failed its check.
    pub forged: u32,
    /// Valid values older than the best one.
    pub stale: u32,
}

impl ItemSearch {
    /// A search that has seen no reply yet; `target` must be the one `query` implies.
    pub fn new(target: NodeId, query: ItemQuery) -> Self {
        ItemSearch {
            target,
            query,
            best: None,
            confirmed_by: Vec::new(),
            forged: 0,
            stale: 0,
        }
    }

    /// The `seq` to put into `get` queries: BEP 44 nodes return a value only when theirs is
    /// *greater* than it, so one less than `min_seq` (which `min_seq` itself satisfies).
    pub fn query_seq(&self) -> Option<i64> {
        match &self.query {
            ItemQuery::Mutable { min_seq, .. } => min_seq.map(|m| m.saturating_sub(1)),
            ItemQuery::Immutable => None,
        }
    }

    /// Checks one reply's value and keeps it if it is the best so far.
    pub fn on_reply(&mut self, from: SocketAddr, f: ItemFields<'_>) -> ItemVerdict {
        let Some(v) = f.v else {
            return ItemVerdict::NoValue;
        };
        let found = match &self.query {
            ItemQuery::Immutable => {
                if immutable_target(v) != self.target {
                    self.forged += 1;
                    return ItemVerdict::Forged;
                }
                FoundItem {
                    v: v.to_vec(),
                    mutable: None,
                }
            }
            ItemQuery::Mutable { k, salt, min_seq } => {
                // The key must be the one asked for (another key's valid signature proves
                // nothing about this target), and the signature must cover this value, seq
                // and salt.
                let (Some(rk), Some(seq), Some(sig)) = (f.k, f.seq, f.sig) else {
                    self.forged += 1;
                    return ItemVerdict::Forged;
                };
                if rk != k || !verify(k, salt, seq, v, sig) {
                    self.forged += 1;
                    return ItemVerdict::Forged;
                }
                if min_seq.is_some_and(|m| seq < m) {
                    self.stale += 1;
                    return ItemVerdict::Stale;
                }
                FoundItem {
                    v: v.to_vec(),
                    mutable: Some(MutableMeta {
                        k: *k,
                        seq,
                        sig: *sig,
                    }),
                }
            }
        };
        match &self.best {
            Some(best) if *best == found => {
                if !self.confirmed_by.contains(&from) {
                    self.confirmed_by.push(from);
                }
                ItemVerdict::Accepted
            }
            // Higher seq wins; at equal seq the first value seen stays (as a storing node
            // would keep the first writer's value).
            Some(best) if found.seq() <= best.seq() => {
                self.stale += 1;
                ItemVerdict::Stale
            }
            _ => {
                self.best = Some(found);
                self.confirmed_by.clear();
                self.confirmed_by.push(from);
                ItemVerdict::Accepted
            }
        }
    }

    /// The best value so far.
    pub fn best(&self) -> Option<&FoundItem> {
        self.best.as_ref()
    }

    /// Distinct nodes that returned the best value.
    pub fn confirmations(&self) -> usize {
        self.confirmed_by.len()
    }

    /// Whether a `get` may stop now: an immutable value is proven by its hash; a mutable one
    /// once [`MUTABLE_CONFIRMATIONS`] nodes agree on it.
    pub fn satisfied(&self) -> bool {
        match self.query {
            ItemQuery::Immutable => self.best.is_some(),
            ItemQuery::Mutable { .. } => self.confirmed_by.len() >= MUTABLE_CONFIRMATIONS,
        }
    }

    /// Takes the result out.
    pub fn into_result(self) -> (Option<FoundItem>, usize, u32) {
        let n = self.confirmed_by.len();
        (self.best, n, self.forged)
    }
}

/// Why an item cannot be put (checked before anything is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemError {
    /// The value is not one complete bencoded value.
    NotBencode,
    /// BEP 44: the bencoded value is larger than 1000 bytes.
    ValueTooBig(usize),
    /// BEP 44: the salt is longer than 64 bytes.
    SaltTooBig(usize),
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemError::NotBencode => write!(f, "the value is not a single bencoded value"),
            ItemError::ValueTooBig(n) => {
                write!(
                    f,
                    "the bencoded value is {n} bytes, BEP 44 allows {MAX_ITEM_VALUE}"
                )
            }
            ItemError::SaltTooBig(n) => {
                write!(f, "the salt is {n} bytes, BEP 44 allows {MAX_ITEM_SALT}")
            }
        }
    }
}

impl std::error::Error for ItemError {}

/// Nesting accepted in a value (1000 bytes cannot nest deeper than 500 anyway).
const MAX_DEPTH: usize = 64;

/// Checks that `v` is one bencoded value of at most [`MAX_ITEM_VALUE`] bytes.
pub fn check_value(v: &[u8]) -> Result<(), ItemError> {
    if v.len() > MAX_ITEM_VALUE {
        return Err(ItemError::ValueTooBig(v.len()));
    }
    crate::bencode::validate(v, MAX_DEPTH).map_err(|_| ItemError::NotBencode)
}

/// What a put lookup stores once its search is done.
#[derive(Clone)]
pub enum PutRequest {
    /// Stored under SHA-1(`v`).
    Immutable {
        /// The bencoded value (at most 1000 bytes).
        v: Vec<u8>,
    },
    /// Signed here when the search ends, with `seq` or, when `None`, the current `seq` found
    /// by the search plus one (the found one itself when it already holds this value, so a
    /// republish does not bump it); `cas` is sent as given.
    Mutable {
        /// Boxed: the key is several times the size of everything else here.
        key: Box<SigningKey>,
        /// The salt (empty: none; at most 64 bytes).
        salt: Vec<u8>,
        /// The bencoded value (at most 1000 bytes).
        v: Vec<u8>,
        /// The sequence number to sign; `None` derives it from the search.
        seq: Option<i64>,
        /// BEP 44 compare-and-swap: nodes store only if their current `seq` is this.
        cas: Option<i64>,
    },
}

impl std::fmt::Debug for PutRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signing key stays out of logs.
        match self {
            PutRequest::Immutable { v } => write!(f, "Immutable({} bytes)", v.len()),
            PutRequest::Mutable { salt, v, seq, .. } => write!(
                f,
                "Mutable(salt {} bytes, {} bytes, seq {seq:?})",
                salt.len(),
                v.len()
            ),
        }
    }
}

impl PutRequest {
    /// Checks sizes and encoding before anything is sent.
    pub fn validate(&self) -> Result<(), ItemError> {
        match self {
            PutRequest::Immutable { v } => check_value(v),
            PutRequest::Mutable { salt, v, .. } => {
                if salt.len() > MAX_ITEM_SALT {
                    return Err(ItemError::SaltTooBig(salt.len()));
                }
                check_value(v)
            }
        }
    }

    /// The DHT target.
    pub fn target(&self) -> NodeId {
        match self {
            PutRequest::Immutable { v } => immutable_target(v),
            PutRequest::Mutable { key, salt, .. } => {
                mutable_target(&key.verifying_key().to_bytes(), salt)
            }
        }
    }

    /// What the search phase looks for (to learn the current `seq`).
    pub fn query(&self) -> ItemQuery {
        match self {
            PutRequest::Immutable { .. } => ItemQuery::Immutable,
            PutRequest::Mutable { key, salt, .. } => ItemQuery::Mutable {
                k: key.verifying_key().to_bytes(),
                salt: salt.clone(),
                min_seq: None,
            },
        }
    }

    /// The signed `put` arguments (token left empty: each node gets its own), given the
    /// current value the search found.
    pub fn prepare(&self, current: Option<&FoundItem>) -> PutArgs {
        match self {
            PutRequest::Immutable { v } => PutArgs {
                token: Token::new(b"").expect("empty token fits"),
                v: v.clone(),
                mutable: None,
            },
            PutRequest::Mutable {
                key,
                salt,
                v,
                seq,
                cas,
            } => {
                let found = current.and_then(|c| c.mutable.as_ref().map(|m| (m.seq, &c.v)));
                let seq = seq.unwrap_or(match found {
                    Some((s, fv)) if fv == v => s,
                    Some((s, _)) => s.saturating_add(1),
                    None => 1,
                });
                let mut msg = Vec::with_capacity(v.len() + salt.len() + 40);
                signable(salt, seq, v, &mut msg);
                PutArgs {
                    token: Token::new(b"").expect("empty token fits"),
                    v: v.clone(),
                    mutable: Some(MutablePut {
                        k: key.verifying_key().to_bytes(),
                        salt: salt.clone(),
                        seq,
                        sig: key.sign(&msg).to_bytes(),
                        cas: *cas,
                    }),
                }
            }
        }
    }
}

/// How one storing node answered a `put`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The node answered the `put` with a reply: it stored the item.
    Stored,
    /// A KRPC error: 301 CAS mismatch, 302 stale seq, 206 bad signature, 203 bad token...
    Refused {
        /// The KRPC error code.
        code: i64,
        /// The error message the node sent.
        message: String,
    },
    /// No answer (after one resend), or an answer from another node id.
    NoAnswer,
}

/// The per-node results of a put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutReport {
    /// The sequence number put (mutable items).
    pub seq: Option<i64>,
    /// Each node asked, with its answer, in the order the answers came.
    pub nodes: Vec<(SocketAddr, PutOutcome)>,
}

impl PutReport {
    /// Nodes that stored the item.
    pub fn stored(&self) -> usize {
        self.nodes
            .iter()
            .filter(|(_, o)| *o == PutOutcome::Stored)
            .count()
    }

    /// Nodes that refused with `code`.
    pub fn refused_with(&self, code: i64) -> usize {
        self.nodes
            .iter()
            .filter(|(_, o)| matches!(o, PutOutcome::Refused { code: c, .. } if *c == code))
            .count()
    }
}

/// What an item lookup ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// The DHT target searched (for a mutable `get`, derived from key and salt).
    pub target: NodeId,
    /// The best value that passed its check (for a put: the value found before putting).
    pub found: Option<FoundItem>,
    /// Distinct nodes that returned `found`.
    pub confirmations: usize,
    /// Replies whose value failed its hash or signature check.
    pub forged: u32,
    /// For a put lookup.
    pub put: Option<PutReport>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, SocketAddrV4};

    fn a(i: u8) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new([127, 0, 0, i].into(), 6881))
    }

    fn fields<'a>(v: &'a [u8], k: &'a [u8; 32], seq: i64, sig: &'a [u8; 64]) -> ItemFields<'a> {
        ItemFields {
            v: Some(v),
            k: Some(k),
            seq: Some(seq),
            sig: Some(sig),
        }
    }

    fn sign(key: &SigningKey, salt: &[u8], seq: i64, v: &[u8]) -> [u8; 64] {
        let mut msg = Vec::new();
        signable(salt, seq, v, &mut msg);
        key.sign(&msg).to_bytes()
    }

    #[test]
    fn an_immutable_value_with_the_wrong_hash_is_not_believed() {
        let v = b"12:Hello World!";
        let mut s = ItemSearch::new(immutable_target(v), ItemQuery::Immutable);
        let none = ItemFields {
            v: Some(b"5:forge"),
            k: None,
            seq: None,
            sig: None,
        };
        assert_eq!(s.on_reply(a(1), none), ItemVerdict::Forged);
        assert!(s.best().is_none() && !s.satisfied());
        let ok = ItemFields { v: Some(v), ..none };
        assert_eq!(s.on_reply(a(2), ok), ItemVerdict::Accepted);
        assert!(
            s.satisfied(),
            "a hash-checked value needs no second opinion"
        );
        assert_eq!(s.best().unwrap().v, v);
        assert_eq!(s.forged, 1);
    }

    #[test]
    fn mutable_values_need_a_valid_signature_and_the_highest_seq_wins() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let k = key.verifying_key().to_bytes();
        let salt = b"s".to_vec();
        let q = ItemQuery::Mutable {
            k,
            salt: salt.clone(),
            min_seq: None,
        };
        let mut s = ItemSearch::new(mutable_target(&k, &salt), q);
        let (v1, v2) = (b"1:a".as_slice(), b"1:b".as_slice());
        let (sig1, sig2) = (sign(&key, &salt, 1, v1), sign(&key, &salt, 2, v2));
        // A forger reuses a valid signature with another value or seq, or signs with
        // another key, or omits the salt from what was signed.
        assert_eq!(
            s.on_reply(a(1), fields(v2, &k, 1, &sig1)),
            ItemVerdict::Forged
        );
        assert_eq!(
            s.on_reply(a(1), fields(v1, &k, 5, &sig1)),
            ItemVerdict::Forged
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        let ok = other.verifying_key().to_bytes();
        let osig = sign(&other, &salt, 9, v1);
        assert_eq!(
            s.on_reply(a(1), fields(v1, &ok, 9, &osig)),
            ItemVerdict::Forged
        );
        let nosalt = sign(&key, b"", 9, v1);
        assert_eq!(
            s.on_reply(a(1), fields(v1, &k, 9, &nosalt)),
            ItemVerdict::Forged
        );
        assert!(s.best().is_none());
        assert_eq!(s.forged, 4);

        assert_eq!(
            s.on_reply(a(2), fields(v1, &k, 1, &sig1)),
            ItemVerdict::Accepted
        );
        assert_eq!(
            s.on_reply(a(3), fields(v2, &k, 2, &sig2)),
            ItemVerdict::Accepted
        );
        assert_eq!(
            s.on_reply(a(4), fields(v1, &k, 1, &sig1)),
            ItemVerdict::Stale
        );
        assert_eq!(s.best().unwrap().mutable.as_ref().unwrap().seq, 2);
        assert!(!s.satisfied());
        // The same node twice is one confirmation.
        s.on_reply(a(3), fields(v2, &k, 2, &sig2));
        s.on_reply(a(5), fields(v2, &k, 2, &sig2));
        assert!(!s.satisfied());
        s.on_reply(a(6), fields(v2, &k, 2, &sig2));
        assert!(s.satisfied());
        assert_eq!(s.confirmations(), 3);
    }

    #[test]
    fn min_seq_ignores_older_values() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let k = key.verifying_key().to_bytes();
        let q = ItemQuery::Mutable {
            k,
            salt: Vec::new(),
            min_seq: Some(5),
        };
        let mut s = ItemSearch::new(mutable_target(&k, b""), q);
        assert_eq!(s.query_seq(), Some(4), "nodes send values with seq > 4");
        let sig = sign(&key, b"", 4, b"1:a");
        assert_eq!(
            s.on_reply(a(1), fields(b"1:a", &k, 4, &sig)),
            ItemVerdict::Stale
        );
        assert!(s.best().is_none());
    }

    #[test]
    fn a_mutable_put_continues_the_found_seq() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let put = PutRequest::Mutable {
            key: Box::new(key.clone()),
            salt: Vec::new(),
            v: b"1:b".to_vec(),
            seq: None,
            cas: Some(4),
        };
        put.validate().unwrap();
        let args = put.prepare(None);
        let m = args.mutable.as_ref().unwrap();
        assert_eq!((m.seq, m.cas), (1, Some(4)));
        assert!(verify(&m.k, b"", 1, b"1:b", &m.sig));
        let found = |v: &[u8], seq| FoundItem {
            v: v.to_vec(),
            mutable: Some(MutableMeta {
                k: m.k,
                seq,
                sig: [0; 64],
            }),
        };
        let m2 = put.prepare(Some(&found(b"1:a", 4))).mutable.unwrap();
        assert_eq!(m2.seq, 5);
        assert!(verify(&m2.k, b"", 5, b"1:b", &m2.sig));
        // A republish of the same value keeps its seq.
        let m3 = put.prepare(Some(&found(b"1:b", 4))).mutable.unwrap();
        assert_eq!(m3.seq, 4);
    }

    #[test]
    fn values_are_checked_before_a_put() {
        assert_eq!(check_value(b"3:abc"), Ok(()));
        assert_eq!(check_value(b"3:ab"), Err(ItemError::NotBencode));
        assert_eq!(check_value(b"i1ei2e"), Err(ItemError::NotBencode));
        let big = format!("1001:{}", "x".repeat(1001));
        assert_eq!(
            check_value(big.as_bytes()),
            Err(ItemError::ValueTooBig(1006))
        );
        let put = PutRequest::Mutable {
            key: Box::new(SigningKey::from_bytes(&[1; 32])),
            salt: vec![0; 65],
            v: b"1:a".to_vec(),
            seq: None,
            cas: None,
        };
        assert_eq!(put.validate(), Err(ItemError::SaltTooBig(65)));
    }
}
