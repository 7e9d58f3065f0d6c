//! Who may download from us: a sans-IO choker (BEP 3's tit-for-tat, as the original client
//! and libtorrent do it).
//!
//! - Every [`ChokerConfig::interval`] (10 s) the regular slots go to the interested peers
//!   that upload to us fastest; once we are a seed, to those we upload to fastest (they
//!   can use our bandwidth best). Rates are the caller's averages over the last interval.
//! - One **optimistic** slot rotates every [`ChokerConfig::optimistic_every`] rounds (30 s)
//!   to a random choked interested peer, newly connected peers being
//!   [`ChokerConfig::new_peer_weight`] times as likely: it is how a newcomer with nothing
//!   to trade gets its first pieces, and how we discover faster partners.
//! - **Anti-snubbing**: a peer that has sent us no block for [`ChokerConfig::snub_after`]
//!   (60 s) while we are downloading loses its regular slot; it can still win the
//!   optimistic one.
//! - Between rounds, a peer that becomes interested is unchoked at once if a slot is free,
//!   so a fresh downloader does not wait up to 10 s for its first block.
//!
//! Time is a parameter, so the tests drive it on a simulated clock.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::picker::PeerKey;

/// Tuning of the choker.
#[derive(Debug, Clone)]
pub struct ChokerConfig {
    /// Regular (rate-ranked) unchoke slots.
    pub regular_slots: usize,
    /// How often [`Choker::rechoke`] should run.
    pub interval: Duration,
    /// The optimistic slot moves every this many rounds.
    pub optimistic_every: u32,
    /// A peer silent this long while we download from the swarm is snubbed.
    pub snub_after: Duration,
    /// A peer connected for less than this counts as new for the optimistic draw.
    pub new_peer_window: Duration,
    /// How much likelier a new peer is to win the optimistic draw.
    pub new_peer_weight: u32,
}

impl Default for ChokerConfig {
    fn default() -> Self {
        ChokerConfig {
            regular_slots: 4,
            interval: Duration::from_secs(10),
            optimistic_every: 3,
            snub_after: Duration::from_secs(60),
            new_peer_window: Duration::from_secs(60),
            new_peer_weight: 3,
        }
    }
}

/// What the choker needs to know about one connected peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerView {
    /// The session's key for the connection.
    pub key: PeerKey,
    /// The peer is interested in our pieces.
    pub interested: bool,
    /// Bytes per second of blocks the peer sent us recently.
    pub down_rate: f64,
    /// Bytes per second of blocks we sent the peer recently.
    pub up_rate: f64,
    /// When the connection was made: decides whether the peer is still new for the
    /// optimistic draw, and keeps a fresh peer from counting as snubbed.
    pub connected_at: Instant,
    /// When the peer last sent us a block we wanted.
    pub last_block: Option<Instant>,
}

/// The choker state: who is unchoked and who holds the optimistic slot.
#[derive(Debug)]
pub struct Choker {
    cfg: ChokerConfig,
    unchoked: BTreeSet<PeerKey>,
    optimistic: Option<PeerKey>,
    round: u32,
    rng: StdRng,
}

impl Choker {
    /// A choker with nobody unchoked; `seed` seeds the optimistic draw and the random
    /// tie-breaking, so a run can be replayed.
    pub fn new(cfg: ChokerConfig, seed: u64) -> Choker {
        Choker {
            cfg,
            unchoked: BTreeSet::new(),
            optimistic: None,
            round: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The tuning it was made with.
    pub fn config(&self) -> &ChokerConfig {
        &self.cfg
    }

    /// Whether `key` holds a slot (regular or optimistic).
    pub fn is_unchoked(&self, key: PeerKey) -> bool {
        self.unchoked.contains(&key)
    }

    /// The peer holding the optimistic slot.
    pub fn optimistic(&self) -> Option<PeerKey> {
        self.optimistic
    }

    /// Every peer holding a slot, in key order.
    pub fn unchoked(&self) -> impl Iterator<Item = PeerKey> + '_ {
        self.unchoked.iter().copied()
    }

    fn snubbed(&self, p: &PeerView, now: Instant) -> bool {
        let since = p.last_block.unwrap_or(p.connected_at).max(p.connected_at);
        now.saturating_duration_since(since) > self.cfg.snub_after
    }

    /// One choking round at `now`. `seeding`: we have every piece. Returns the changes to
    /// make, `(peer, unchoke?)`, in peer order.
    pub fn rechoke(
        &mut self,
        now: Instant,
        peers: &[PeerView],
        seeding: bool,
    ) -> Vec<(PeerKey, bool)> {
        let rotate = self.round.is_multiple_of(self.cfg.optimistic_every.max(1));
        self.round = self.round.wrapping_add(1);

        // Regular slots: interested, not snubbed, fastest first; ties in random order so an
        // all-zero start does not always favour the lowest keys.
        let eligible: Vec<&PeerView> = peers
            .iter()
            .filter(|p| p.interested && (seeding || !self.snubbed(p, now)))
            .collect();
        let mut ranked: Vec<(f64, u64, PeerKey)> = eligible
            .into_iter()
            .map(|p| {
                let rate = if seeding { p.up_rate } else { p.down_rate };
                (rate, self.rng.random::<u64>(), p.key)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let regular: BTreeSet<PeerKey> = ranked
            .iter()
            .take(self.cfg.regular_slots)
            .map(|r| r.2)
            .collect();

        // The optimistic slot: kept between rotations while its holder is still a choked
        // (not regular) interested peer.
        let holder_ok = self.optimistic.is_some_and(|k| {
            !regular.contains(&k) && peers.iter().any(|p| p.key == k && p.interested)
        });
        if rotate || !holder_ok {
            self.optimistic = self.draw_optimistic(now, peers, &regular);
        }

        let mut want = regular;
        want.extend(self.optimistic);
        let mut changes = Vec::new();
        for &k in self.unchoked.difference(&want) {
            changes.push((k, false));
        }
        for &k in want.difference(&self.unchoked) {
            changes.push((k, true));
        }
        changes.sort_unstable();
        self.unchoked = want;
        changes
    }

    fn draw_optimistic(
        &mut self,
        now: Instant,
        peers: &[PeerView],
        regular: &BTreeSet<PeerKey>,
    ) -> Option<PeerKey> {
        let weighted: Vec<(PeerKey, u32)> = peers
            .iter()
            .filter(|p| p.interested && !regular.contains(&p.key))
            .map(|p| {
                let new = now.saturating_duration_since(p.connected_at) < self.cfg.new_peer_window;
                (
                    p.key,
                    if new {
                        self.cfg.new_peer_weight.max(1)
                    } else {
                        1
                    },
                )
            })
            .collect();
        let total: u32 = weighted.iter().map(|w| w.1).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = self.rng.random_range(0..total);
        for (k, w) in weighted {
            if ticket < w {
                return Some(k);
            }
            ticket -= w;
        }
        None
    }

    /// A peer became interested between rounds: whether to unchoke it now (a slot is free).
    pub fn on_interested(&mut self, key: PeerKey) -> bool {
        if self.unchoked.contains(&key) {
            return false;
        }
        if self.unchoked.len() < self.cfg.regular_slots + 1 {
            self.unchoked.insert(key);
            return true;
        }
        false
    }

    /// A peer disconnected: its slot frees up at the next round.
    pub fn peer_gone(&mut self, key: PeerKey) {
        self.unchoked.remove(&key);
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: PeerKey, t0: Instant, down: f64, up: f64) -> PeerView {
        PeerView {
            key,
            interested: true,
            down_rate: down,
            up_rate: up,
            connected_at: t0,
            last_block: Some(t0),
        }
    }

    #[test]
    fn best_uploaders_get_the_regular_slots() {
        let t0 = Instant::now();
        let mut c = Choker::new(ChokerConfig::default(), 1);
        let peers: Vec<PeerView> = (0..8)
            .map(|k| view(k, t0, f64::from(k) * 100.0, 0.0))
            .collect();
        c.rechoke(t0, &peers, false);
        // 7, 6, 5, 4 by rate, plus one optimistic among 0..4.
        let un: Vec<PeerKey> = c.unchoked().collect();
        assert_eq!(un.len(), 5);
        for k in 4..8 {
            assert!(c.is_unchoked(k));
        }
        let opt = c.optimistic().unwrap();
        assert!(opt < 4);
    }

    #[test]
    fn seeds_rank_by_upload_rate() {
        let t0 = Instant::now();
        let mut c = Choker::new(
            ChokerConfig {
                regular_slots: 2,
                ..ChokerConfig::default()
            },
            2,
        );
        let peers: Vec<PeerView> = (0..5)
            .map(|k| view(k, t0, 0.0, f64::from(10 - k)))
            .collect();
        c.rechoke(t0, &peers, true);
        assert!(c.is_unchoked(0) && c.is_unchoked(1));
        assert!(!c.is_unchoked(2) || c.optimistic() == Some(2));
    }

    #[test]
    fn optimistic_rotates_every_30_s_and_favours_new_peers() {
        let t0 = Instant::now();
        let cfg = ChokerConfig {
            regular_slots: 1,
            ..ChokerConfig::default()
        };
        // Peer 0 is the fast regular; peers 1..=10 are old, 11 is new.
        let mut counts = [0u32; 12];
        let mut rotations = 0;
        for seed in 0..200 {
            let mut c = Choker::new(cfg.clone(), seed);
            let mut peers: Vec<PeerView> = (0..12)
                .map(|k| view(k, t0, if k == 0 { 1e6 } else { 0.0 }, 0.0))
                .collect();
            let now = t0 + Duration::from_secs(120);
            for p in &mut peers {
                p.last_block = Some(now);
            }
            peers[11].connected_at = now - Duration::from_secs(5);
            c.rechoke(now, &peers, false);
            let first = c.optimistic().unwrap();
            counts[first as usize] += 1;
            // Rounds at +10 s and +20 s keep it; +30 s draws again.
            c.rechoke(now + Duration::from_secs(10), &peers, false);
            assert_eq!(c.optimistic(), Some(first));
            c.rechoke(now + Duration::from_secs(20), &peers, false);
            assert_eq!(c.optimistic(), Some(first));
            c.rechoke(now + Duration::from_secs(30), &peers, false);
            if c.optimistic() != Some(first) {
                rotations += 1;
            }
            assert!(c.is_unchoked(0));
        }
        assert_eq!(counts[0], 0, "the regular never holds the optimistic slot");
        // Weight 3 among 13 tickets: ~46 of 200, each old peer ~15.
        let old_avg = counts[1..11].iter().sum::<u32>() as f64 / 10.0;
        assert!(
            f64::from(counts[11]) > 2.0 * old_avg,
            "new peer favoured: {counts:?}"
        );
        assert!(rotations > 150, "the slot moves at 30 s: {rotations}");
    }

    #[test]
    fn snubbing_peers_lose_their_regular_slot() {
        let t0 = Instant::now();
        let mut c = Choker::new(
            ChokerConfig {
                regular_slots: 2,
                ..ChokerConfig::default()
            },
            3,
        );
        let mut peers: Vec<PeerView> = (0..4).map(|k| view(k, t0, f64::from(k), 0.0)).collect();
        let now = t0 + Duration::from_secs(61);
        // Peer 3 (fastest average) sent nothing for 61 s; the others just did.
        for p in &mut peers[..3] {
            p.last_block = Some(now);
        }
        c.rechoke(now, &peers, false);
        let regular: Vec<PeerKey> = c
            .unchoked()
            .filter(|&k| Some(k) != c.optimistic())
            .collect();
        assert_eq!(regular, [1, 2]);
        // When seeding, snubbing does not apply.
        let mut s = Choker::new(
            ChokerConfig {
                regular_slots: 2,
                ..ChokerConfig::default()
            },
            3,
        );
        for p in &mut peers {
            p.up_rate = p.down_rate;
        }
        s.rechoke(now, &peers, true);
        assert!(s.is_unchoked(3));
    }

    /// BEP 3 / libtorrent: "no block for a minute" snubs; a block exactly a minute ago
    /// does not (the boundary of `snub_after`).
    #[test]
    fn snubbing_starts_strictly_after_snub_after() {
        let t0 = Instant::now();
        let cfg = ChokerConfig {
            regular_slots: 1,
            snub_after: Duration::from_secs(60),
            ..ChokerConfig::default()
        };
        let mut c = Choker::new(cfg, 5);
        assert_eq!(c.config().regular_slots, 1);
        assert_eq!(c.config().snub_after, Duration::from_secs(60));
        let now = t0 + Duration::from_secs(100);
        let mut fast = view(1, t0, 1000.0, 0.0);
        let slow = PeerView {
            last_block: Some(now),
            ..view(2, t0, 1.0, 0.0)
        };
        fast.last_block = Some(now - Duration::from_secs(60));
        c.rechoke(now, &[fast, slow], false);
        assert!(
            c.is_unchoked(1) && c.optimistic() != Some(1),
            "60 s: not snubbed"
        );
        fast.last_block = Some(now - Duration::from_secs(60) - Duration::from_millis(1));
        let mut c = Choker::new(c.config().clone(), 5);
        c.rechoke(now, &[fast, slow], false);
        assert!(
            !c.is_unchoked(1) || c.optimistic() == Some(1),
            "past 60 s: snubbed"
        );
        assert!(c.is_unchoked(2));
    }

    /// Between rotations the optimistic holder keeps its slot only while it is still
    /// connected, interested and not a regular: otherwise the slot is drawn again at once.
    #[test]
    fn the_optimistic_slot_is_redrawn_when_its_holder_stops_qualifying() {
        let t0 = Instant::now();
        let cfg = ChokerConfig {
            regular_slots: 1,
            ..ChokerConfig::default()
        };
        for seed in 0..20 {
            // Peer 0 is the regular; 1 and 2 compete for the optimistic slot.
            let peers: Vec<PeerView> = (0..3)
                .map(|k| view(k, t0, if k == 0 { 1000.0 } else { 0.0 }, 0.0))
                .collect();
            let mut c = Choker::new(cfg.clone(), seed);
            c.rechoke(t0, &peers, false);
            let holder = c.optimistic().unwrap();
            let other = 3 - holder;
            // Not a rotation round: the holder lost interest.
            let mut lost = peers.clone();
            lost[holder as usize].interested = false;
            let mut c1 = Choker::new(cfg.clone(), seed);
            c1.rechoke(t0, &peers, false);
            c1.rechoke(t0 + Duration::from_secs(10), &lost, false);
            assert_eq!(c1.optimistic(), Some(other), "seed {seed}");
            assert!(!c1.is_unchoked(holder));
            // The holder disconnected.
            let gone: Vec<PeerView> = peers.iter().copied().filter(|p| p.key != holder).collect();
            let mut c2 = Choker::new(cfg.clone(), seed);
            c2.rechoke(t0, &peers, false);
            c2.rechoke(t0 + Duration::from_secs(10), &gone, false);
            assert_eq!(c2.optimistic(), Some(other), "seed {seed}");
            // The holder became the fastest: a regular now, so the optimistic slot moves on.
            let mut faster = peers.clone();
            faster[holder as usize].down_rate = 1e6;
            let mut c3 = Choker::new(cfg.clone(), seed);
            c3.rechoke(t0, &peers, false);
            c3.rechoke(t0 + Duration::from_secs(10), &faster, false);
            assert!(c3.is_unchoked(holder));
            assert!(c3.optimistic().is_some_and(|k| k != holder), "seed {seed}");
            // Still qualifying: kept.
            let mut c4 = Choker::new(cfg.clone(), seed);
            c4.rechoke(t0, &peers, false);
            c4.rechoke(t0 + Duration::from_secs(10), &peers, false);
            assert_eq!(c4.optimistic(), Some(holder), "seed {seed}");
        }
    }

    #[test]
    fn a_departing_peer_frees_its_slot_and_only_its_own() {
        let t0 = Instant::now();
        let cfg = ChokerConfig {
            regular_slots: 1,
            ..ChokerConfig::default()
        };
        let peers: Vec<PeerView> = (0..3)
            .map(|k| view(k, t0, if k == 0 { 1000.0 } else { 0.0 }, 0.0))
            .collect();
        let mut c = Choker::new(cfg, 9);
        c.rechoke(t0, &peers, false);
        let holder = c.optimistic().unwrap();
        let bystander = 3 - holder;
        c.peer_gone(bystander);
        assert_eq!(c.optimistic(), Some(holder));
        c.peer_gone(0);
        assert_eq!(
            c.optimistic(),
            Some(holder),
            "the regular leaving keeps the optimistic"
        );
        assert!(!c.is_unchoked(0));
        c.peer_gone(holder);
        assert_eq!(c.optimistic(), None);
        assert_eq!(c.unchoked().count(), 0);
    }

    /// A peer connected exactly `new_peer_window` ago is no longer new: equal odds.
    #[test]
    fn the_new_peer_bonus_ends_at_new_peer_window() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(600);
        let cfg = ChokerConfig {
            regular_slots: 0,
            ..ChokerConfig::default()
        };
        let mut wins = 0;
        for seed in 0..400 {
            let old = view(1, t0, 0.0, 0.0);
            let edge = view(2, now - cfg.new_peer_window, 0.0, 0.0);
            let mut c = Choker::new(cfg.clone(), seed);
            c.rechoke(now, &[old, edge], false);
            wins += u32::from(c.optimistic() == Some(2));
        }
        // Even odds give ~200 of 400; the 3x bonus would give ~300.
        assert!((160..240).contains(&wins), "{wins}");
    }

    #[test]
    fn interest_between_rounds_uses_free_slots() {
        let t0 = Instant::now();
        let mut c = Choker::new(ChokerConfig::default(), 4);
        for k in 0..5 {
            assert!(c.on_interested(k));
        }
        assert!(!c.on_interested(5), "4 regular + 1 optimistic slots");
        assert!(!c.on_interested(0), "already unchoked");
        c.peer_gone(2);
        assert!(c.on_interested(5));
        // The next round chokes peers that are no longer interested.
        let mut peers: Vec<PeerView> = [0, 1, 3, 4, 5]
            .iter()
            .map(|&k| view(k, t0, 0.0, 0.0))
            .collect();
        peers[0].interested = false;
        let changes = c.rechoke(t0, &peers, false);
        assert!(changes.contains(&(0, false)), "{changes:?}");
        assert!(!c.is_unchoked(0));
    }
}
