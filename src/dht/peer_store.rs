//! Announce tokens and the peer store.
//!
//! Tokens prove that an announcer can receive packets at the address it announces from (so
//! nobody can sign up a third party's IP). A token is a truncated SHA-1 over the requester's
//! IP and a secret that rotates every five minutes; the current and previous secrets are
//! accepted, so a token stays valid for 5 to 10 minutes (BEP 5) and no per-requester state
//! is kept.
//!
//! The peer store is bounded in both dimensions (infohashes, peers per infohash) because every
//! entry is created by remote parties; peers expire unless re-announced.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::{Rng, RngExt};
use sha1::{Digest, Sha1};

use crate::dht::id::{InfoHash, NodeAddr};
use crate::dht::krpc::Token;
use crate::dht::scrape::ScrapeFilter;

/// How often the token secret changes (BEP 5).
pub const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);
/// Bytes of SHA-1 kept in a token: short keeps replies small, 8 bytes is unguessable enough.
pub const TOKEN_LEN: usize = 8;

/// The rotating token secrets.
#[derive(Debug, Clone)]
pub struct TokenSecrets {
    current: [u8; 16],
    previous: [u8; 16],
    rotated_at: Instant,
}

impl TokenSecrets {
    /// Two fresh random secrets, the next rotation due [`TOKEN_ROTATION`] after `now`.
    pub fn new<R: Rng + ?Sized>(rng: &mut R, now: Instant) -> Self {
        let mut current = [0u8; 16];
        let mut previous = [0u8; 16];
        rng.fill_bytes(&mut current);
        rng.fill_bytes(&mut previous);
        TokenSecrets {
            current,
            previous,
            rotated_at: now,
        }
    }

    /// Rotates as many times as the clock says is due (after a long stall both secrets are
    /// replaced, so no token outlives its 10 minutes).
    pub fn maybe_rotate<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        let mut rotations = 0;
        while now.saturating_duration_since(self.rotated_at) >= TOKEN_ROTATION && rotations < 2 {
            self.previous = self.current;
            rng.fill_bytes(&mut self.current);
            self.rotated_at += TOKEN_ROTATION;
            rotations += 1;
        }
        if now.saturating_duration_since(self.rotated_at) >= TOKEN_ROTATION {
            self.rotated_at = now;
        }
    }

    /// When the next rotation is due.
    pub fn next_rotation(&self) -> Instant {
        self.rotated_at + TOKEN_ROTATION
    }

    fn token_with(secret: &[u8; 16], ip: IpAddr) -> Token {
        let mut h = Sha1::new();
        // The address's own bytes: 4 for IPv4 (an IPv4-mapped IPv6 address is IPv4), 16 for
        // IPv6, so a token is bound to the querier's address in its family (BEP 32).
        match ip.to_canonical() {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        h.update(secret);
        let digest = h.finalize();
        Token::new(&digest[..TOKEN_LEN]).expect("token fits")
    }

    /// The token we hand to `ip` now.
    pub fn make(&self, ip: impl Into<IpAddr>) -> Token {
        Self::token_with(&self.current, ip.into())
    }

    /// Whether `token` was issued to `ip` under the current or previous secret.
    pub fn verify(&self, ip: impl Into<IpAddr>, token: &[u8]) -> bool {
        let ip = ip.into();
        token == Self::token_with(&self.current, ip).as_slice()
            || token == Self::token_with(&self.previous, ip).as_slice()
    }
}

/// Peer store limits.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Infohashes held at most; a new one beyond it evicts a least-announced one.
    pub max_infohashes: usize,
    /// Peers held per infohash at most; a new one beyond it replaces the peer closest to
    /// expiry.
    pub max_peers_per_infohash: usize,
    /// How long an announce is remembered without being refreshed.
    pub peer_ttl: Duration,
    /// At most this many peers in one `values` reply: 100 × 8 bytes keeps a get_peers reply
    /// (with `nodes`, token and `ip`) under ~1,200 bytes, below common path MTUs.
    pub max_values_per_reply: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_infohashes: 2000,
            max_peers_per_infohash: 500,
            peer_ttl: Duration::from_secs(45 * 60),
            max_values_per_reply: 100,
        }
    }
}

/// The top bit of a peer's stamp: it announced `seed=1` (BEP 33). The other 31 bits are its
/// expiry in seconds since the store's epoch (68 years), so the flag costs no memory.
const SEED: u32 = 1 << 31;

fn expiry(stamp: u32) -> u32 {
    stamp & !SEED
}

#[derive(Debug)]
struct Swarm<A> {
    /// Peers with their stamp: the expiry in whole seconds since the store's epoch and the
    /// [`SEED`] bit; 12 bytes a peer instead of 24 with an `Instant`, which halves the
    /// memory of a full store.
    peers: Vec<(A, u32)>,
    /// Position of this infohash in `PeerStore::keys` (for O(1) random sampling).
    key_index: usize,
}

/// Announced peers by infohash (of one address family: BEP 32 keeps the IPv4 and IPv6 DHTs'
/// peers apart).
#[derive(Debug)]
pub struct PeerStore<A = SocketAddrV4> {
    config: StoreConfig,
    swarms: HashMap<InfoHash, Swarm<A>>,
    /// The keys of `swarms`, so BEP 51 can sample infohashes uniformly.
    keys: Vec<InfoHash>,
    total_peers: usize,
    /// Expiry times count seconds from here (set by the first announce).
    epoch: Option<Instant>,
    /// Announces refused (only when the limits are zero).
    refused: u64,
    /// Infohashes evicted to make room for a new one.
    evicted: u64,
}

impl<A: NodeAddr> PeerStore<A> {
    /// An empty store with these limits.
    pub fn new(config: StoreConfig) -> Self {
        PeerStore {
            config,
            swarms: HashMap::new(),
            keys: Vec::new(),
            total_peers: 0,
            epoch: None,
            refused: 0,
            evicted: 0,
        }
    }

    /// The limits the store was made with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Number of infohashes with at least one peer.
    pub fn num_infohashes(&self) -> usize {
        self.swarms.len()
    }

    /// Number of peers held, over all infohashes (expired ones count until swept).
    pub fn num_peers(&self) -> usize {
        self.total_peers
    }

    /// Whether `info_hash` has peers stored.
    pub fn contains(&self, info_hash: &InfoHash) -> bool {
        self.swarms.contains_key(info_hash)
    }

    /// Whether the store holds [`StoreConfig::max_infohashes`] infohashes, so a new one
    /// needs room.
    pub fn is_full(&self) -> bool {
        self.swarms.len() >= self.config.max_infohashes
    }

    /// Seconds since the epoch (saturating at 31 bits, the stamp's room; the epoch is the
    /// first time seen).
    fn secs(&mut self, t: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(t);
        u32::try_from(t.saturating_duration_since(epoch).as_secs())
            .unwrap_or(u32::MAX)
            .min(!SEED)
    }

    /// Announces refused (a store configured to hold nothing).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Infohashes evicted to make room for new ones.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records (or refreshes) `peer` for `info_hash`; returns whether it is stored. A full
    /// store makes room for a new infohash by evicting the least-announced one (fewest
    /// peers, then the one whose freshest peer expires first), as libtorrent does: BEP 5
    /// has every get_peers reply carry a token, and a store that refused new infohashes
    /// would make the node unannounceable for everything new while it holds stale swarms.
    /// The swarms that matter (many peers) survive a stream of one-off announces, which
    /// only replace each other. When a swarm is full, the peer closest to expiry makes
    /// room. `seed` is BEP 33's flag (the peer has the whole torrent); a re-announce
    /// replaces it, so a downloader that completes becomes a seed.
    pub fn announce<R: Rng + ?Sized>(
        &mut self,
        info_hash: InfoHash,
        peer: A,
        seed: bool,
        now: Instant,
        rng: &mut R,
    ) -> bool {
        let ttl = u32::try_from(self.config.peer_ttl.as_secs()).unwrap_or(u32::MAX);
        let expires = self.secs(now).saturating_add(ttl).min(!SEED) | if seed { SEED } else { 0 };
        if let Some(swarm) = self.swarms.get_mut(&info_hash) {
            if let Some(p) = swarm.peers.iter_mut().find(|(a, _)| *a == peer) {
                p.1 = expires;
                return true;
            }
            if swarm.peers.len() >= self.config.max_peers_per_infohash {
                if let Some(oldest) = swarm.peers.iter_mut().min_by_key(|(_, e)| expiry(*e)) {
                    *oldest = (peer, expires);
                }
                return true;
            }
            swarm.peers.push((peer, expires));
            self.total_peers += 1;
            return true;
        }
        if self.config.max_peers_per_infohash == 0 || self.config.max_infohashes == 0 {
            self.refused += 1;
            return false;
        }
        if self.swarms.len() >= self.config.max_infohashes {
            self.evict_one(rng);
        }
        self.keys.push(info_hash);
        self.swarms.insert(
            info_hash,
            Swarm {
                peers: vec![(peer, expires)],
                key_index: self.keys.len() - 1,
            },
        );
        self.total_peers += 1;
        true
    }

    /// Evicts the least-announced of a few random infohashes (fewest peers, then the one
    /// whose freshest peer expires first). Sampling keeps a full store's announce O(1): a
    /// scan of every swarm on each new announce would let a token holder make each of its
    /// packets cost millions of steps. With 8 samples of a bigger store the victim is in the least-announced
    /// eighth of the store with probability 1 − (7/8)^8 ≈ 66 %, and the big swarms (the
    /// ones worth keeping) are almost never picked.
    fn evict_one<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        const SAMPLES: usize = 8;
        let n = self.keys.len();
        if n == 0 {
            return;
        }
        let mut victim: Option<(InfoHash, (usize, u32))> = None;
        // A small store is scanned whole: the choice is then exact.
        for i in 0..SAMPLES.min(n) {
            let key = self.keys[if n <= SAMPLES {
                i
            } else {
                rng.random_range(0..n)
            }];
            let sw = &self.swarms[&key];
            let freshest = sw.peers.iter().map(|(_, e)| expiry(*e)).max().unwrap_or(0);
            let rank = (sw.peers.len(), freshest);
            if victim.is_none_or(|(_, r)| rank < r) {
                victim = Some((key, rank));
            }
        }
        if let Some((key, _)) = victim {
            self.remove(&key);
            self.evicted += 1;
        }
    }

    fn remove(&mut self, info_hash: &InfoHash) {
        if let Some(swarm) = self.swarms.remove(info_hash) {
            self.total_peers -= swarm.peers.len();
            self.keys.swap_remove(swarm.key_index);
            if let Some(moved) = self.keys.get(swarm.key_index) {
                self.swarms
                    .get_mut(moved)
                    .expect("key list mirrors map")
                    .key_index = swarm.key_index;
            }
        }
    }

    /// Fills `out` with up to `max` random unexpired peers of `info_hash` (a partial
    /// Fisher-Yates shuffle in place: the order of a swarm carries no meaning); with
    /// `noseed` (BEP 33: the asker is a seed) seeds are left out.
    pub fn sample_peers<R: Rng + ?Sized>(
        &mut self,
        info_hash: &InfoHash,
        max: usize,
        noseed: bool,
        now: Instant,
        rng: &mut R,
        out: &mut Vec<A>,
    ) {
        out.clear();
        let now = self.secs(now);
        let Some(swarm) = self.swarms.get_mut(info_hash) else {
            return;
        };
        let n = swarm.peers.len();
        let mut i = 0;
        while i < n && out.len() < max {
            let j = rng.random_range(i..n);
            swarm.peers.swap(i, j);
            let (addr, stamp) = swarm.peers[i];
            if expiry(stamp) > now && !(noseed && stamp & SEED != 0) {
                out.push(addr);
            }
            i += 1;
        }
    }

    /// BEP 33: the bloom filters of the unexpired seeds' and downloaders' IPs of
    /// `info_hash`; returns false (and empty filters) when we hold no swarm for it.
    pub fn scrape(
        &mut self,
        info_hash: &InfoHash,
        now: Instant,
        seeds: &mut ScrapeFilter,
        downloaders: &mut ScrapeFilter,
    ) -> bool {
        *seeds = ScrapeFilter::default();
        *downloaders = ScrapeFilter::default();
        let now = self.secs(now);
        let Some(swarm) = self.swarms.get(info_hash) else {
            return false;
        };
        for &(addr, stamp) in &swarm.peers {
            if expiry(stamp) > now {
                let f = if stamp & SEED != 0 {
                    &mut *seeds
                } else {
                    &mut *downloaders
                };
                f.insert(addr.ip_addr());
            }
        }
        true
    }

    /// Up to `max` random infohashes (BEP 51 samples), appended to `out` as raw bytes.
    pub fn sample_infohashes<R: Rng + ?Sized>(&self, max: usize, rng: &mut R, out: &mut Vec<u8>) {
        out.clear();
        let n = self.keys.len();
        if n <= max {
            for k in &self.keys {
                out.extend_from_slice(&k.0);
            }
            return;
        }
        for idx in rand::seq::index::sample(rng, n, max) {
            out.extend_from_slice(&self.keys[idx].0);
        }
    }

    /// Drops expired peers and empty infohashes.
    pub fn sweep(&mut self, now: Instant) {
        let now = self.secs(now);
        let mut empty = Vec::new();
        for (k, swarm) in &mut self.swarms {
            let before = swarm.peers.len();
            swarm.peers.retain(|(_, e)| expiry(*e) > now);
            self.total_peers -= before - swarm.peers.len();
            if swarm.peers.is_empty() {
                empty.push(*k);
            }
        }
        for k in empty {
            self.remove(&k);
        }
    }

    /// Every infohash and peer (for tools and persistence).
    pub fn iter(&self) -> impl Iterator<Item = (&InfoHash, impl Iterator<Item = A> + '_)> {
        self.swarms
            .iter()
            .map(|(k, s)| (k, s.peers.iter().map(|(a, _)| *a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn tokens_are_per_ip_and_live_5_to_10_minutes() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut s = TokenSecrets::new(&mut rng, t0);
        let a = Ipv4Addr::new(127, 0, 0, 1);
        let b = Ipv4Addr::new(127, 0, 0, 2);
        let tok = s.make(a);
        assert_eq!(tok.len(), TOKEN_LEN);
        assert!(s.verify(a, tok.as_slice()));
        assert!(!s.verify(b, tok.as_slice()), "a token is bound to its IP");
        s.maybe_rotate(t0 + Duration::from_secs(5 * 60 + 1), &mut rng);
        assert!(
            s.verify(a, tok.as_slice()),
            "previous secret still accepted"
        );
        s.maybe_rotate(t0 + Duration::from_secs(10 * 60 + 1), &mut rng);
        assert!(
            !s.verify(a, tok.as_slice()),
            "older than 10 minutes is refused"
        );
        // After a long stall both secrets are fresh.
        let tok = s.make(a);
        s.maybe_rotate(t0 + Duration::from_secs(3600), &mut rng);
        assert!(!s.verify(a, tok.as_slice()));
        assert!(s.next_rotation() > t0 + Duration::from_secs(3600));
    }

    /// After a stall of several rotation periods both secrets are replaced at once (two
    /// rotations, not as many as were missed) and the clock restarts from now, so a token
    /// handed out right after the stall lives its full 5 to 10 minutes.
    #[test]
    fn after_a_stall_the_rotation_clock_restarts_from_now() {
        let mut rng = StdRng::seed_from_u64(4);
        let t0 = Instant::now();
        let mut s = TokenSecrets::new(&mut rng, t0);
        let a = Ipv4Addr::new(127, 0, 0, 1);
        let stall = t0 + TOKEN_ROTATION * 7 / 2;
        s.maybe_rotate(stall, &mut rng);
        assert_eq!(s.next_rotation(), stall + TOKEN_ROTATION);
        let tok = s.make(a);
        // 1.7 periods later: one rotation since the token, so it is still accepted (the
        // clock kept at the last whole period would have rotated twice by now).
        s.maybe_rotate(stall + TOKEN_ROTATION * 17 / 10, &mut rng);
        assert!(
            s.verify(a, tok.as_slice()),
            "a fresh token lives 5 to 10 minutes"
        );
    }

    #[test]
    fn the_store_reports_its_config_and_what_it_holds() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        let cfg = StoreConfig {
            max_infohashes: 3,
            max_peers_per_infohash: 2,
            peer_ttl: Duration::from_secs(60),
            max_values_per_reply: 9,
        };
        let mut st = PeerStore::new(cfg.clone());
        assert_eq!(st.config().max_infohashes, 3);
        assert_eq!(st.config().max_peers_per_infohash, 2);
        assert_eq!(st.config().peer_ttl, Duration::from_secs(60));
        assert_eq!(st.config().max_values_per_reply, 9);
        let (a, b) = (InfoHash([1; 20]), InfoHash([2; 20]));
        assert!(!st.contains(&a));
        st.announce(a, peer(1), false, now, &mut rng);
        assert!(st.contains(&a) && !st.contains(&b));
    }

    /// Of two swarms of equal size and freshness, the one scanned first is evicted: the
    /// choice is deterministic, so a run replays the same way.
    #[test]
    fn of_equal_swarms_the_first_scanned_is_evicted() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        let mut st = PeerStore::new(StoreConfig {
            max_infohashes: 2,
            ..StoreConfig::default()
        });
        let (a, b, c) = (InfoHash([1; 20]), InfoHash([2; 20]), InfoHash([3; 20]));
        st.announce(a, peer(1), false, now, &mut rng);
        st.announce(b, peer(2), false, now, &mut rng);
        st.announce(c, peer(3), false, now, &mut rng);
        assert!(!st.contains(&a) && st.contains(&b) && st.contains(&c));
        assert_eq!(st.evicted(), 1);
    }

    fn peer(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0x7f00_0000 + i), 6881)
    }

    /// A peer lives exactly `peer_ttl`: served, scraped and kept a second before, gone at it.
    #[test]
    fn a_peer_expires_exactly_at_its_ttl() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let cfg = StoreConfig::default();
        let ttl = cfg.peer_ttl;
        let mut st = PeerStore::new(cfg);
        let ih = InfoHash([1; 20]);
        st.announce(ih, peer(1), true, t0, &mut rng);
        let mut out = Vec::new();
        let (mut sd, mut pe) = (ScrapeFilter::default(), ScrapeFilter::default());
        let before = t0 + ttl - Duration::from_secs(1);
        st.sample_peers(&ih, 10, false, before, &mut rng, &mut out);
        assert_eq!(out, [peer(1)]);
        assert!(st.scrape(&ih, before, &mut sd, &mut pe));
        assert!(sd.estimate() > 0.5, "the seed is counted");
        st.sweep(before);
        assert_eq!(st.num_peers(), 1);
        out.clear();
        let (mut sd, mut pe) = (ScrapeFilter::default(), ScrapeFilter::default());
        st.sample_peers(&ih, 10, false, t0 + ttl, &mut rng, &mut out);
        assert!(out.is_empty());
        st.scrape(&ih, t0 + ttl, &mut sd, &mut pe);
        assert!(sd.estimate() < 0.5 && pe.estimate() < 0.5);
        st.sweep(t0 + ttl);
        assert_eq!((st.num_peers(), st.num_infohashes()), (0, 0));
    }

    #[test]
    fn fullness_and_refusals_are_reported() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        let one = StoreConfig {
            max_infohashes: 1,
            ..StoreConfig::default()
        };
        let mut st = PeerStore::new(one);
        assert!(!st.is_full());
        st.announce(InfoHash([1; 20]), peer(1), false, now, &mut rng);
        assert!(st.is_full());
        let mut none = PeerStore::new(StoreConfig {
            max_infohashes: 0,
            ..StoreConfig::default()
        });
        assert!(none.is_full());
        assert!(!none.announce(InfoHash([1; 20]), peer(1), false, now, &mut rng));
        assert_eq!(none.refused(), 1);
    }

    #[test]
    fn store_is_bounded_and_expires() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        let mut st = PeerStore::new(StoreConfig {
            max_infohashes: 3,
            max_peers_per_infohash: 4,
            peer_ttl: Duration::from_secs(60),
            max_values_per_reply: 100,
        });
        let ih = |i: u8| InfoHash([i; 20]);
        for i in 0..10 {
            st.announce(ih(1), peer(i), false, now, &mut rng);
        }
        assert_eq!(st.num_peers(), 4);
        st.announce(ih(2), peer(1), false, now, &mut rng);
        st.announce(ih(2), peer(2), false, now, &mut rng);
        assert!(st.announce(ih(3), peer(1), false, now, &mut rng));
        // Full: a new infohash is taken, evicting the least-announced one (ih 3, one peer).
        assert!(st.announce(ih(4), peer(1), false, now, &mut rng));
        assert_eq!(st.num_infohashes(), 3);
        assert!(st.swarms.contains_key(&ih(4)));
        assert!(!st.swarms.contains_key(&ih(3)));
        assert!(st.swarms.contains_key(&ih(1)) && st.swarms.contains_key(&ih(2)));
        assert_eq!((st.refused(), st.evicted()), (0, 1));
        assert_eq!(st.num_peers(), 4 + 2 + 1);
        st.remove(&ih(4));
        st.announce(ih(3), peer(1), false, now, &mut rng);
        // Re-announcing refreshes rather than duplicating.
        st.announce(
            ih(1),
            peer(9),
            false,
            now + Duration::from_secs(40),
            &mut rng,
        );
        let mut out = Vec::new();
        st.sample_peers(&ih(1), 100, false, now, &mut rng, &mut out);
        assert_eq!(out.len(), 4);
        st.sweep(now + Duration::from_secs(61));
        assert_eq!(st.num_infohashes(), 1);
        assert_eq!(st.num_peers(), 1);
        st.sample_peers(
            &ih(1),
            100,
            false,
            now + Duration::from_secs(61),
            &mut rng,
            &mut out,
        );
        assert_eq!(out, vec![peer(9)]);
        assert_eq!(st.keys.len(), 1);
    }

    #[test]
    fn samples_are_random_subsets() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        let mut st = PeerStore::new(StoreConfig::default());
        for i in 0..300 {
            st.announce(InfoHash([7; 20]), peer(i), false, now, &mut rng);
        }
        let mut a = Vec::new();
        let mut b = Vec::new();
        st.sample_peers(&InfoHash([7; 20]), 100, false, now, &mut rng, &mut a);
        st.sample_peers(&InfoHash([7; 20]), 100, false, now, &mut rng, &mut b);
        assert_eq!(a.len(), 100);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 100);
        assert_ne!(a, b);
        for i in 0..50u8 {
            st.announce(InfoHash([i; 20]), peer(1), false, now, &mut rng);
        }
        let mut s = Vec::new();
        st.sample_infohashes(20, &mut rng, &mut s);
        assert_eq!(s.len(), 20 * 20);
    }

    /// A flood of one-off announces into a full store replaces other one-offs: the big
    /// swarms survive, and every new announce is taken (issue 12, defect 5).
    #[test]
    fn a_flood_of_one_offs_keeps_the_big_swarms() {
        let mut rng = StdRng::seed_from_u64(5);
        let now = Instant::now();
        let mut st = PeerStore::new(StoreConfig {
            max_infohashes: 1000,
            ..StoreConfig::default()
        });
        let big = |i: u32| {
            InfoHash({
                let mut b = [0xAA; 20];
                b[..4].copy_from_slice(&i.to_be_bytes());
                b
            })
        };
        for i in 0..10 {
            for p in 0..50 {
                st.announce(big(i), peer(p), false, now, &mut rng);
            }
        }
        for i in 0..20_000u32 {
            let mut b = [0x55; 20];
            b[..4].copy_from_slice(&i.to_be_bytes());
            assert!(st.announce(InfoHash(b), peer(1), false, now, &mut rng));
        }
        assert_eq!(st.num_infohashes(), 1000);
        assert_eq!(st.evicted(), 20_000 + 10 - 1000);
        for i in 0..10 {
            assert!(st.contains(&big(i)), "big swarm {i} was evicted");
        }
    }

    /// BEP 33 on the store: seeds and downloaders go to their own filters, `noseed` leaves
    /// seeds out of `values`, a re-announce updates the flag, and expired peers leave both.
    #[test]
    fn seeds_are_kept_apart_for_scrapes_and_noseed() {
        let mut rng = StdRng::seed_from_u64(9);
        let now = Instant::now();
        let mut st = PeerStore::new(StoreConfig {
            peer_ttl: Duration::from_secs(60),
            ..StoreConfig::default()
        });
        let ih = InfoHash([3; 20]);
        for i in 0..30 {
            st.announce(ih, peer(i), true, now, &mut rng);
        }
        for i in 30..100 {
            st.announce(ih, peer(i), false, now, &mut rng);
        }
        let (mut sd, mut pe) = (ScrapeFilter::default(), ScrapeFilter::default());
        assert!(st.scrape(&ih, now, &mut sd, &mut pe));
        let (s, p) = (sd.estimate(), pe.estimate());
        assert!((s - 30.0).abs() < 3.0 && (p - 70.0).abs() < 7.0, "{s} {p}");
        let mut out = Vec::new();
        st.sample_peers(&ih, 200, true, now, &mut rng, &mut out);
        assert_eq!(out.len(), 70);
        assert!(out.iter().all(|a| u32::from(*a.ip()) & 0xff >= 30));
        st.sample_peers(&ih, 200, false, now, &mut rng, &mut out);
        assert_eq!(out.len(), 100);
        // A downloader that completes re-announces as a seed.
        st.announce(ih, peer(99), true, now, &mut rng);
        st.sample_peers(&ih, 200, true, now, &mut rng, &mut out);
        assert_eq!(out.len(), 69);
        st.scrape(&ih, now + Duration::from_secs(61), &mut sd, &mut pe);
        assert!(sd.is_empty() && pe.is_empty());
        assert!(!st.scrape(&InfoHash([4; 20]), now, &mut sd, &mut pe));
        assert!(sd.is_empty() && pe.is_empty());
    }
}
