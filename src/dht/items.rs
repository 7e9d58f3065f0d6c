//! BEP 44 item storage: immutable items (stored under the SHA-1 of their bencoded value) and
//! mutable items (ed25519-signed, stored under SHA-1(public key ++ salt), replaced only by a
//! higher sequence number).
//!
//! Why bounded on both count and bytes: a `put` costs a sender one token round trip, so on the
//! live DHT anyone can fill a store; the caps keep the worst case at about `max_bytes` of
//! memory, and evicting the least recently *put* item (not the least recently read) means an
//! attacker's flood displaces stale items first while items their owners keep re-putting
//! (hourly, per BEP 44) survive longer. Items not re-put for [`ItemStoreConfig::ttl`] (BEP 44:
//! 2 hours) expire.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha1::{Digest, Sha1};

use crate::dht::id::NodeId;
use crate::dht::krpc::{
    ERR_BAD_SIGNATURE, ERR_CAS_MISMATCH, ERR_SEQ_TOO_OLD, ItemReply, MAX_ITEM_VALUE, MutablePut,
    PutArgs,
};

/// Bounds and lifetime of the item store.
#[derive(Debug, Clone)]
pub struct ItemStoreConfig {
    /// Items held at most (libtorrent's default `max_dht_items` is 700).
    pub max_items: usize,
    /// Accounted bytes held at most (value + key + signature + per-item overhead).
    pub max_bytes: usize,
    /// An item not re-put for this long is dropped (BEP 44: may expire after 2 hours).
    pub ttl: Duration,
}

/// Default `max_items`, as libtorrent.
pub const DEFAULT_MAX_ITEMS: usize = 700;

impl ItemStoreConfig {
    /// At most `n` items, and the bytes of `n` maximum-size items (so the byte cap only bites
    /// when the count is raised without thought to memory, never before the count does).
    pub fn with_max_items(n: usize) -> Self {
        ItemStoreConfig {
            max_items: n,
            max_bytes: n.saturating_mul(MAX_ITEM_VALUE + ITEM_OVERHEAD),
            ttl: Duration::from_secs(2 * 3600),
        }
    }
}

impl Default for ItemStoreConfig {
    fn default() -> Self {
        ItemStoreConfig::with_max_items(DEFAULT_MAX_ITEMS)
    }
}

/// Bytes charged per item beyond its value: key, signature, map entries.
const ITEM_OVERHEAD: usize = 32 + 64 + 96;

/// Why a put was refused; each maps to its BEP 44 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutError {
    /// 206.
    BadSignature,
    /// 301: `cas` given and not equal to the stored sequence number.
    CasMismatch,
    /// 302: the sequence number is lower than the stored one (or equal with another value).
    SeqTooOld,
}

impl PutError {
    /// The BEP 44 error code to answer the `put` with.
    pub fn code(self) -> i64 {
        match self {
            PutError::BadSignature => ERR_BAD_SIGNATURE,
            PutError::CasMismatch => ERR_CAS_MISMATCH,
            PutError::SeqTooOld => ERR_SEQ_TOO_OLD,
        }
    }

    /// The error message sent with [`PutError::code`].
    pub fn message(self) -> &'static str {
        match self {
            PutError::BadSignature => "invalid signature",
            PutError::CasMismatch => "CAS mismatch, re-read value and try again",
            PutError::SeqTooOld => "sequence number less than current",
        }
    }
}

/// The signed part of a mutable item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutableMeta {
    /// The ed25519 public key the item is signed with.
    pub k: [u8; 32],
    /// The sequence number; a put replaces the item only with a higher one.
    pub seq: i64,
    /// The ed25519 signature over salt, `seq` and value ([`signable`]).
    pub sig: [u8; 64],
}

/// One stored item.
#[derive(Debug, Clone)]
pub struct StoredItem {
    /// The bencoded value.
    pub v: Vec<u8>,
    /// Key, sequence number and signature of a mutable item; `None` for an immutable one.
    pub mutable: Option<MutableMeta>,
    put_at: Instant,
    /// Position in the put order (smaller = put longer ago).
    order: u64,
}

impl StoredItem {
    /// The item as it goes into a `get` reply.
    pub fn reply(&self) -> ItemReply<'_> {
        ItemReply {
            v: &self.v,
            mutable: self.mutable.as_ref().map(|m| (&m.k, m.seq, &m.sig)),
        }
    }

    fn cost(&self) -> usize {
        self.v.len() + ITEM_OVERHEAD
    }
}

/// The immutable-item target: SHA-1 of the bencoded value.
pub fn immutable_target(v: &[u8]) -> NodeId {
    NodeId(Sha1::digest(v).into())
}

/// The mutable-item target: SHA-1 of the public key followed by the salt (if any).
pub fn mutable_target(k: &[u8; 32], salt: &[u8]) -> NodeId {
    let mut h = Sha1::new();
    h.update(k);
    h.update(salt);
    NodeId(h.finalize().into())
}

/// Appends the byte string BEP 44 signs: `[4:salt<len>:<salt>]3:seqi<seq>e1:v<bencoded v>`
/// (the salt part only for a non-empty salt). Built field by field rather than by
/// re-encoding a dictionary, so no serializer quirk can change what is verified.
pub fn signable(salt: &[u8], seq: i64, v: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    if !salt.is_empty() {
        let _ = write!(out, "4:salt{}:", salt.len());
        out.extend_from_slice(salt);
    }
    let _ = write!(out, "3:seqi{seq}e1:v");
    out.extend_from_slice(v);
}

/// Whether `sig` is `k`'s signature over the BEP 44 signable string.
pub fn verify(k: &[u8; 32], salt: &[u8], seq: i64, v: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(k) else {
        return false;
    };
    let mut msg = Vec::with_capacity(v.len() + salt.len() + 40);
    signable(salt, seq, v, &mut msg);
    key.verify(&msg, &Signature::from_bytes(sig)).is_ok()
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemStats {
    /// Puts accepted for a target the store did not hold.
    pub stored: u64,
    /// Puts accepted for a target already held (a re-put or a newer `seq`).
    pub refreshed: u64,
    /// Puts refused with a [`PutError`].
    pub refused: u64,
    /// Items dropped to make room under `max_items` or `max_bytes`.
    pub evicted: u64,
    /// Items dropped by [`ItemStore::sweep`] for not being re-put within the TTL.
    pub expired: u64,
}

/// The bounded BEP 44 store.
#[derive(Debug)]
pub struct ItemStore {
    config: ItemStoreConfig,
    items: HashMap<NodeId, StoredItem>,
    /// Put order → target, for evicting the least recently put item.
    by_order: BTreeMap<u64, NodeId>,
    next_order: u64,
    bytes: usize,
    stats: ItemStats,
}

impl ItemStore {
    /// An empty store with these bounds.
    pub fn new(config: ItemStoreConfig) -> Self {
        ItemStore {
            config,
            items: HashMap::new(),
            by_order: BTreeMap::new(),
            next_order: 0,
            bytes: 0,
            stats: ItemStats::default(),
        }
    }

    /// The bounds the store was made with.
    pub fn config(&self) -> &ItemStoreConfig {
        &self.config
    }

    /// Items held (expired ones count until the next [`ItemStore::sweep`]).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Accounted bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The store's counters since it was made.
    pub fn stats(&self) -> ItemStats {
        self.stats
    }

    /// The live item stored under `target`.
    pub fn get(&self, target: &NodeId, now: Instant) -> Option<&StoredItem> {
        self.items
            .get(target)
            .filter(|i| now.saturating_duration_since(i.put_at) < self.config.ttl)
    }

    /// Stores (or refreshes) the item of a `put` whose token was already checked; returns
    /// its target. A mutable item's signature is verified before anything else is looked at.
    pub fn put(&mut self, args: &PutArgs, now: Instant) -> Result<NodeId, PutError> {
        let r = self.put_inner(args, now);
        if r.is_err() {
            self.stats.refused += 1;
        }
        r
    }

    fn put_inner(&mut self, args: &PutArgs, now: Instant) -> Result<NodeId, PutError> {
        let (target, meta) = match &args.mutable {
            None => (immutable_target(&args.v), None),
            Some(MutablePut {
                k,
                salt,
                seq,
                sig,
                cas,
            }) => {
                if !verify(k, salt, *seq, &args.v, sig) {
                    return Err(PutError::BadSignature);
                }
                let target = mutable_target(k, salt);
                if let Some(old) = self.get(&target, now).and_then(|i| i.mutable.as_ref()) {
                    if cas.is_some_and(|c| c != old.seq) {
                        return Err(PutError::CasMismatch);
                    }
                    if *seq < old.seq {
                        return Err(PutError::SeqTooOld);
                    }
                    let same = *seq == old.seq;
                    if same && self.items.get(&target).is_some_and(|i| i.v != args.v) {
                        // Equal seq, different value: first writer wins, as with a lower seq.
                        return Err(PutError::SeqTooOld);
                    }
                }
                let meta = MutableMeta {
                    k: *k,
                    seq: *seq,
                    sig: *sig,
                };
                (target, Some(meta))
            }
        };
        let order = self.next_order;
        self.next_order += 1;
        if let Some(old) = self.items.remove(&target) {
            self.by_order.remove(&old.order);
            self.bytes -= old.cost();
            self.stats.refreshed += 1;
        } else {
            self.stats.stored += 1;
        }
        let item = StoredItem {
            v: args.v.clone(),
            mutable: meta,
            put_at: now,
            order,
        };
        let cost = item.cost();
        while !self.items.is_empty()
            && (self.items.len() + 1 > self.config.max_items
                || self.bytes + cost > self.config.max_bytes)
        {
            self.evict_oldest();
            self.stats.evicted += 1;
        }
        if self.items.len() < self.config.max_items && self.bytes + cost <= self.config.max_bytes {
            self.bytes += cost;
            self.by_order.insert(order, target);
            self.items.insert(target, item);
        }
        Ok(target)
    }

    fn evict_oldest(&mut self) {
        if let Some((_, target)) = self.by_order.pop_first()
            && let Some(old) = self.items.remove(&target)
        {
            self.bytes -= old.cost();
        }
    }

    /// Drops items not re-put within the TTL.
    pub fn sweep(&mut self, now: Instant) {
        while let Some((_, target)) = self.by_order.first_key_value() {
            // The put order is also the put-time order (time never goes backwards here).
            let Some(item) = self.items.get(target) else {
                self.by_order.pop_first();
                continue;
            };
            if now.saturating_duration_since(item.put_at) < self.config.ttl {
                break;
            }
            self.evict_oldest();
            self.stats.expired += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::krpc::Token;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    const PK: &str = "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548";
    const SIG1: &str = "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff\
                        1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01";
    const SIG2: &str = "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d\
                        df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08";
    const V: &[u8] = b"12:Hello World!";

    fn pk() -> [u8; 32] {
        h(PK).try_into().unwrap()
    }

    fn sig(s: &str) -> [u8; 64] {
        h(s).try_into().unwrap()
    }

    fn mutable(salt: &[u8], seq: i64, sig: [u8; 64], cas: Option<i64>) -> PutArgs {
        PutArgs {
            token: Token::new(b"tok").unwrap(),
            v: V.to_vec(),
            mutable: Some(MutablePut {
                k: pk(),
                salt: salt.to_vec(),
                seq,
                sig,
                cas,
            }),
        }
    }

    /// BEP 44 test vectors 1-3: signable buffers, signatures and targets.
    #[test]
    fn bep44_test_vectors() {
        let mut buf = Vec::new();
        signable(b"", 1, V, &mut buf);
        assert_eq!(buf, b"3:seqi1e1:v12:Hello World!");
        buf.clear();
        signable(b"foobar", 1, V, &mut buf);
        assert_eq!(buf, b"4:salt6:foobar3:seqi1e1:v12:Hello World!");

        assert!(verify(&pk(), b"", 1, V, &sig(SIG1)));
        assert!(verify(&pk(), b"foobar", 1, V, &sig(SIG2)));
        // Wrong salt, seq or value: refused.
        assert!(!verify(&pk(), b"foobar", 1, V, &sig(SIG1)));
        assert!(!verify(&pk(), b"", 2, V, &sig(SIG1)));
        assert!(!verify(&pk(), b"", 1, b"12:Hello World?", &sig(SIG1)));

        assert_eq!(
            mutable_target(&pk(), b"").0.to_vec(),
            h("4a533d47ec9c7d95b1ad75f576cffc641853b750")
        );
        assert_eq!(
            mutable_target(&pk(), b"foobar").0.to_vec(),
            h("411eba73b6f087ca51a3795d9c8c938d365e32c1")
        );
        assert_eq!(
            immutable_target(V).0.to_vec(),
            h("e5f96f6f38320f0f33959cb4d3d656452117aadb")
        );
    }

    #[test]
    fn mutable_put_rules() {
        let now = Instant::now();
        let mut s = ItemStore::new(ItemStoreConfig::default());
        let mut bad = sig(SIG1);
        bad[0] ^= 1;
        assert_eq!(
            s.put(&mutable(b"", 1, bad, None), now),
            Err(PutError::BadSignature)
        );
        let t = s.put(&mutable(b"", 1, sig(SIG1), None), now).unwrap();
        assert_eq!(t.0.to_vec(), h("4a533d47ec9c7d95b1ad75f576cffc641853b750"));
        let got = s.get(&t, now).unwrap();
        assert_eq!(got.v, V);
        assert_eq!(got.mutable.as_ref().unwrap().seq, 1);
        // CAS against the stored seq 1.
        assert_eq!(
            s.put(&mutable(b"", 1, sig(SIG1), Some(0)), now),
            Err(PutError::CasMismatch)
        );
        // Re-put of the same item refreshes it.
        assert_eq!(s.put(&mutable(b"", 1, sig(SIG1), Some(1)), now), Ok(t));
        assert_eq!(s.stats().refreshed, 1);
        // Salted item lives under its own target.
        let t2 = s.put(&mutable(b"foobar", 1, sig(SIG2), None), now).unwrap();
        assert_ne!(t, t2);
        assert_eq!(s.len(), 2);
        // Error codes.
        assert_eq!(PutError::BadSignature.code(), 206);
        assert_eq!(PutError::CasMismatch.code(), 301);
        assert_eq!(PutError::SeqTooOld.code(), 302);
    }

    #[test]
    fn lower_seq_is_refused() {
        use ed25519_dalek::{Signer, SigningKey};
        let now = Instant::now();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let k = key.verifying_key().to_bytes();
        let put = |seq: i64, v: &[u8]| {
            let mut msg = Vec::new();
            signable(b"", seq, v, &mut msg);
            PutArgs {
                token: Token::new(b"t").unwrap(),
                v: v.to_vec(),
                mutable: Some(MutablePut {
                    k,
                    salt: Vec::new(),
                    seq,
                    sig: key.sign(&msg).to_bytes(),
                    cas: None,
                }),
            }
        };
        let mut s = ItemStore::new(ItemStoreConfig::default());
        let t = s.put(&put(5, b"1:a"), now).unwrap();
        assert_eq!(s.put(&put(4, b"1:b"), now), Err(PutError::SeqTooOld));
        assert_eq!(s.put(&put(5, b"1:b"), now), Err(PutError::SeqTooOld));
        assert_eq!(s.put(&put(6, b"1:b"), now), Ok(t));
        assert_eq!(s.get(&t, now).unwrap().v, b"1:b");
    }

    fn immutable(v: &[u8]) -> PutArgs {
        PutArgs {
            token: Token::new(b"t").unwrap(),
            v: v.to_vec(),
            mutable: None,
        }
    }

    #[test]
    fn bounded_by_count_and_bytes_evicting_least_recently_put() {
        let now = Instant::now();
        let mut s = ItemStore::new(ItemStoreConfig {
            max_items: 3,
            max_bytes: usize::MAX,
            ttl: Duration::from_secs(7200),
        });
        let a = s.put(&immutable(b"1:a"), now).unwrap();
        let b = s.put(&immutable(b"1:b"), now).unwrap();
        let c = s.put(&immutable(b"1:c"), now).unwrap();
        // Re-putting `a` makes `b` the least recently put.
        s.put(&immutable(b"1:a"), now).unwrap();
        let d = s.put(&immutable(b"1:d"), now).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.get(&b, now).is_none());
        for t in [a, c, d] {
            assert!(s.get(&t, now).is_some());
        }
        assert_eq!(s.stats().evicted, 1);

        let mut s = ItemStore::new(ItemStoreConfig {
            max_items: 100,
            max_bytes: 2 * (ITEM_OVERHEAD + 3),
            ttl: Duration::from_secs(7200),
        });
        for v in [b"1:a", b"1:b", b"1:c"] {
            s.put(&immutable(v), now).unwrap();
        }
        assert_eq!(s.len(), 2);
        assert!(s.bytes() <= s.config().max_bytes);
    }

    /// A put flood (distinct maximum-size values) never takes the store past its caps, and the
    /// newest items are the ones kept.
    #[test]
    fn flood_stays_within_default_caps() {
        let now = Instant::now();
        let mut s = ItemStore::new(ItemStoreConfig::default());
        let mut last = None;
        for i in 0..5000u32 {
            let body = format!("{i:0>996}");
            let v = format!("{}:{body}", body.len());
            assert_eq!(v.len(), MAX_ITEM_VALUE);
            last = Some(s.put(&immutable(v.as_bytes()), now).unwrap());
            assert!(s.len() <= DEFAULT_MAX_ITEMS);
            assert!(s.bytes() <= s.config().max_bytes);
        }
        assert_eq!(s.len(), DEFAULT_MAX_ITEMS);
        assert!(s.get(&last.unwrap(), now).is_some());
        assert_eq!(s.stats().evicted, 5000 - DEFAULT_MAX_ITEMS as u64);
    }

    #[test]
    fn items_expire_without_reput() {
        let t0 = Instant::now();
        let mut s = ItemStore::new(ItemStoreConfig::default());
        let a = s.put(&immutable(b"1:a"), t0).unwrap();
        let later = t0 + Duration::from_secs(3600);
        let b = s.put(&immutable(b"1:b"), later).unwrap();
        let end = t0 + Duration::from_secs(2 * 3600 + 1);
        assert!(s.get(&a, end).is_none());
        s.sweep(end);
        assert_eq!(s.len(), 1);
        assert!(s.get(&b, end).is_some());
        assert_eq!(s.stats().expired, 1);
        assert_eq!(s.bytes(), ITEM_OVERHEAD + 3);
    }
}
