//! Which blocks to ask which peer for: a sans-IO piece picker.
//!
//! The strategy is the one the original client introduced and libtorrent refined:
//!
//! - **Random first.** Until [`PickerConfig::random_first`] pieces are verified, new pieces
//!   are picked at random among those the peer has. A fresh downloader has nothing to trade;
//!   a random piece finishes as fast as a rare one and is as likely to interest others,
//!   while every newcomer piling onto the same rarest piece would not spread anything.
//! - **Rarest first** afterwards: among the pieces the peer has and nobody is downloading
//!   yet, the one the fewest connected peers have (ties broken at random). It keeps rare
//!   pieces alive in the swarm and gives us what others will want from us.
//! - **Finish what is started.** Free blocks of pieces already being downloaded are picked
//!   before any new piece is started, so few pieces are partial at once, they verify
//!   early, and a `have` can go out sooner.
//! - **Endgame.** Once every missing block has been requested, a peer with room in its
//!   pipeline may ask for blocks already requested from others (at most
//!   [`PickerConfig::max_duplicates`] extra requesters per block, oldest requests first);
//!   when the block arrives from anyone, [`Picker::on_block`] names the other requesters so
//!   the caller can send them `cancel`. Without this the last piece waits for the slowest
//!   peer.
//! - **Slow peers.** [`Picker::reclaim_slow`] takes back blocks a peer has sat on far longer
//!   than the swarm's average request latency (a multiple of it, with a floor), so other
//!   peers can fetch them; the piece then avoids that peer until it completes.
//!
//! Seeds (peers whose first bitfield was full) are counted apart from piece availability:
//! they add one to every piece, so they do not change which piece is rarest, and counting
//! them individually would cost a pass over every piece per seed.
//!
//! Pieces not started yet live in buckets by availability, so rarest-first costs a few
//! probes rather than a scan of every piece. Everything is deterministic for a given
//! random seed, which the tests use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::bitfield::Bitfield;

/// Identifies a peer connection to the picker (the session hands these out).
pub type PeerKey = u32;

/// Bytes per requested block (BEP 3 convention; peers refuse larger requests).
pub const BLOCK: u32 = 16 * 1024;

/// A block of a piece: what a `request`, `piece` or `cancel` message names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// Piece index.
    pub piece: u32,
    /// Byte offset of the block within the piece.
    pub begin: u32,
    /// Block length: [`BLOCK`], or less for the last block of a piece.
    pub length: u32,
}

impl BlockRef {
    /// The block a `request`, `piece`, `cancel` or `reject_request` message names (their
    /// fields are `index`, `begin`, `length`).
    pub fn new(piece: u32, begin: u32, length: u32) -> Self {
        BlockRef {
            piece,
            begin,
            length,
        }
    }
}

/// Tuning of the picker.
#[derive(Debug, Clone)]
pub struct PickerConfig {
    /// Verified pieces before rarest-first replaces random picking.
    pub random_first: usize,
    /// In endgame, how many peers besides the first may be asked for the same block.
    pub max_duplicates: usize,
    /// A block is reclaimed from its peer after this many times the average latency.
    pub slow_factor: f64,
    /// ... but never sooner than this, so bursts on a fast link do not churn requests.
    pub min_slow_timeout: Duration,
    /// ... and always after this, whatever the average.
    pub max_slow_timeout: Duration,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            random_first: 1,
            max_duplicates: 2,
            slow_factor: 6.0,
            min_slow_timeout: Duration::from_secs(4),
            max_slow_timeout: Duration::from_secs(60),
        }
    }
}

/// What [`Picker::on_block`] made of a received block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockResult {
    /// New data to write. `complete`: every block of the piece is now in, so it can be
    /// verified (after this block is written). `cancel`: other peers this block was also
    /// requested from (endgame), which should be sent a `cancel`.
    Accepted {
        /// Every block of the piece is now in.
        complete: bool,
        /// Other peers the block is still requested from.
        cancel: Vec<PeerKey>,
    },
    /// We already have this block (an endgame duplicate that crossed its cancel).
    Duplicate,
    /// A piece we have or have not started: nobody asked for this.
    NotWanted,
    /// Offset or length do not name a block of the piece.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Free,
    Requested { peer: PeerKey, at: Instant },
    Received { from: PeerKey },
}

/// A piece somebody is downloading.
#[derive(Debug)]
struct Partial {
    blocks: Vec<Block>,
    free: u32,
    received: u32,
    /// A peer that had blocks of this piece reclaimed for slowness: it is not given more of
    /// it (outside endgame).
    avoid: Option<PeerKey>,
}

const NONE: u32 = u32::MAX;

/// The sans-IO picker; see the module docs.
#[derive(Debug)]
pub struct Picker {
    cfg: PickerConfig,
    piece_length: u64,
    total_length: u64,
    have: Bitfield,
    /// Peers (other than seeds) that have each piece.
    avail: Vec<u32>,
    seeds: u32,
    /// Unstarted missing pieces by availability.
    buckets: Vec<Vec<u32>>,
    /// Position of each piece in its bucket (`NONE`: not in a bucket).
    slot: Vec<u32>,
    unstarted: usize,
    /// Started pieces by index, and their indices in start order.
    partial: Vec<Option<Box<Partial>>>,
    started: Vec<u32>,
    /// Started pieces with free blocks.
    open: Vec<u32>,
    /// Endgame: requesters of a block besides the one in its `Requested` state.
    dups: HashMap<(u32, u32), Vec<PeerKey>>,
    rng: StdRng,
    /// Exponentially weighted average of request-to-arrival time, seconds.
    latency: Option<f64>,
}

impl Picker {
    /// A picker for a torrent of `num_pieces` pieces of `piece_length` bytes (the last one
    /// holding the rest of `total_length`), of which `have` are already verified.
    pub fn new(
        piece_length: u64,
        total_length: u64,
        have: Bitfield,
        cfg: PickerConfig,
        seed: u64,
    ) -> Picker {
        let n = have.len();
        let mut p = Picker {
            cfg,
            piece_length,
            total_length,
            avail: vec![0; n],
            seeds: 0,
            buckets: vec![Vec::new()],
            slot: vec![NONE; n],
            unstarted: 0,
            partial: (0..n).map(|_| None).collect(),
            started: Vec::new(),
            open: Vec::new(),
            dups: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            latency: None,
            have,
        };
        for i in 0..n {
            if !p.have.get(i) {
                p.bucket_insert(i as u32);
            }
        }
        p
    }

    // ------------------------------------------------------------------ queries

    /// Our verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Number of pieces in the torrent.
    pub fn num_pieces(&self) -> usize {
        self.have.len()
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Length of piece `index` (0 past the end).
    pub fn piece_size(&self, index: u32) -> u32 {
        let start = u64::from(index) * self.piece_length;
        self.total_length
            .saturating_sub(start)
            .min(self.piece_length) as u32
    }

    /// Blocks in piece `index`.
    pub fn blocks_in(&self, index: u32) -> u32 {
        self.piece_size(index).div_ceil(BLOCK)
    }

    /// The block of `piece` starting at block number `block`.
    pub fn block_ref(&self, piece: u32, block: u32) -> BlockRef {
        let size = self.piece_size(piece);
        let begin = block * BLOCK;
        BlockRef {
            piece,
            begin,
            length: (size - begin).min(BLOCK),
        }
    }

    /// Bytes of verified pieces.
    pub fn verified_bytes(&self) -> u64 {
        if self.have.is_full() {
            return self.total_length;
        }
        let full = self.have.count() as u64 * self.piece_length;
        let last = self.have.len().saturating_sub(1);
        if self.have.get(last) {
            full - self.piece_length + u64::from(self.piece_size(last as u32))
        } else {
            full
        }
    }

    /// Whether every missing block has been requested (the endgame).
    pub fn in_endgame(&self) -> bool {
        self.unstarted == 0 && self.open.is_empty() && !self.have.is_full()
    }

    /// Pieces `bits` has that we lack: how interesting a peer with `bits` is.
    pub fn count_wanted(&self, bits: &Bitfield) -> usize {
        bits.as_bytes()
            .iter()
            .zip(self.have.as_bytes())
            .map(|(theirs, ours)| (theirs & !ours).count_ones() as usize)
            .sum()
    }

    /// Peers (seeds included) known to have piece `index`.
    pub fn availability(&self, index: u32) -> u32 {
        self.avail.get(index as usize).copied().unwrap_or(0) + self.seeds
    }

    /// Pieces started and not yet verified.
    pub fn num_partial(&self) -> usize {
        self.started.len()
    }

    /// Who sent each block of a fully received piece (for blaming a hash failure), `None`
    /// if the piece is not fully received.
    pub fn block_senders(&self, piece: u32) -> Option<Vec<PeerKey>> {
        let p = self.partial.get(piece as usize)?.as_ref()?;
        p.blocks
            .iter()
            .map(|b| match b {
                Block::Received { from } => Some(*from),
                _ => None,
            })
            .collect()
    }

    /// The current slow-peer timeout.
    pub fn slow_timeout(&self) -> Duration {
        let avg = self.latency.unwrap_or(0.0);
        Duration::from_secs_f64(avg * self.cfg.slow_factor)
            .clamp(self.cfg.min_slow_timeout, self.cfg.max_slow_timeout)
    }

    // ------------------------------------------------------------------ availability

    /// A peer's first bitfield; returns whether it was counted as a seed (pass that back to
    /// [`Self::remove_peer`]).
    pub fn add_peer(&mut self, bits: &Bitfield) -> bool {
        if bits.is_full() {
            self.seeds += 1;
            return true;
        }
        for i in bits.ones() {
            self.inc_avail(i as u32);
        }
        false
    }

    /// A peer's `have`.
    pub fn peer_has(&mut self, index: u32) {
        if (index as usize) < self.avail.len() {
            self.inc_avail(index);
        }
    }

    /// A peer left: its availability goes, and so do its outstanding requests (`requested`,
    /// as it tracked them), which return to the pool.
    pub fn remove_peer(
        &mut self,
        peer: PeerKey,
        bits: &Bitfield,
        seed: bool,
        requested: &[BlockRef],
    ) {
        if seed {
            self.seeds = self.seeds.saturating_sub(1);
        } else {
            for i in bits.ones() {
                self.dec_avail(i as u32);
            }
        }
        self.release(peer, requested);
    }

    fn inc_avail(&mut self, i: u32) {
        let in_bucket = self.slot[i as usize] != NONE;
        if in_bucket {
            self.bucket_remove(i);
        }
        self.avail[i as usize] += 1;
        if in_bucket {
            self.bucket_insert(i);
        }
    }

    fn dec_avail(&mut self, i: u32) {
        let in_bucket = self.slot[i as usize] != NONE;
        if in_bucket {
            self.bucket_remove(i);
        }
        self.avail[i as usize] = self.avail[i as usize].saturating_sub(1);
        if in_bucket {
            self.bucket_insert(i);
        }
    }

    fn bucket_insert(&mut self, i: u32) {
        let a = self.avail[i as usize] as usize;
        if self.buckets.len() <= a {
            self.buckets.resize_with(a + 1, Vec::new);
        }
        self.slot[i as usize] = self.buckets[a].len() as u32;
        self.buckets[a].push(i);
        self.unstarted += 1;
    }

    fn bucket_remove(&mut self, i: u32) {
        let a = self.avail[i as usize] as usize;
        let pos = self.slot[i as usize] as usize;
        let bucket = &mut self.buckets[a];
        bucket.swap_remove(pos);
        if let Some(&moved) = bucket.get(pos) {
            self.slot[moved as usize] = pos as u32;
        }
        self.slot[i as usize] = NONE;
        self.unstarted -= 1;
    }

    // ------------------------------------------------------------------ picking

    /// Appends up to `want` blocks for `peer` (whose pieces are `bits`; `seed` as returned
    /// by [`Self::add_peer`]) to `out`, marking them requested at `now`. Returns how many
    /// were added.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        bits: &Bitfield,
        seed: bool,
        want: usize,
        now: Instant,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let mut got = 0;
        // 1. Free blocks of started pieces.
        let mut k = 0;
        while got < want && k < self.open.len() {
            let piece = self.open[k];
            let usable = bits.get(piece as usize)
                && self.partial[piece as usize]
                    .as_ref()
                    .is_some_and(|p| p.avoid != Some(peer));
            if usable {
                got += self.take_free(piece, peer, want - got, now, out);
                // `take_free` drops a piece from `open` once it has no free block left.
                if self.open.get(k) == Some(&piece) {
                    k += 1;
                }
            } else {
                k += 1;
            }
        }
        // 2. New pieces.
        while got < want {
            let Some(piece) = self.choose_new(bits, seed) else {
                break;
            };
            self.start(piece);
            got += self.take_free(piece, peer, want - got, now, out);
        }
        // 3. Endgame duplicates.
        if got < want && self.in_endgame() {
            got += self.pick_duplicates(peer, bits, want - got, out);
        }
        got
    }

    /// A piece to start: random while too few are verified, else rarest first.
    fn choose_new(&mut self, bits: &Bitfield, seed: bool) -> Option<u32> {
        if self.unstarted == 0 {
            return None;
        }
        let n = self.have.len();
        if self.have.count() < self.cfg.random_first {
            for _ in 0..64 {
                let i = self.rng.random_range(0..n);
                if self.slot[i] != NONE && bits.get(i) {
                    return Some(i as u32);
                }
            }
        }
        // A peer counted in availability has every one of its pieces at availability >= 1,
        // so only a seed can supply pieces of bucket 0.
        let first = if seed { 0 } else { 1 };
        for a in first..self.buckets.len() {
            let len = self.buckets[a].len();
            if len == 0 {
                continue;
            }
            let start = self.rng.random_range(0..len);
            for k in 0..len {
                let i = self.buckets[a][(start + k) % len];
                if bits.get(i as usize) {
                    return Some(i);
                }
            }
        }
        None
    }

    fn start(&mut self, piece: u32) {
        self.bucket_remove(piece);
        let n = self.blocks_in(piece);
        self.partial[piece as usize] = Some(Box::new(Partial {
            blocks: vec![Block::Free; n as usize],
            free: n,
            received: 0,
            avoid: None,
        }));
        self.started.push(piece);
        self.open.push(piece);
    }

    fn take_free(
        &mut self,
        piece: u32,
        peer: PeerKey,
        want: usize,
        now: Instant,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let Some(p) = self.partial[piece as usize].as_mut() else {
            return 0;
        };
        let mut got = 0;
        for (b, state) in p.blocks.iter_mut().enumerate() {
            if got == want {
                break;
            }
            if *state == Block::Free {
                *state = Block::Requested { peer, at: now };
                p.free -= 1;
                got += 1;
                out.push(BlockRef {
                    piece,
                    begin: b as u32 * BLOCK,
                    length: 0,
                });
            }
        }
        let now_full = p.free == 0;
        // Lengths filled in outside the borrow of `p`.
        let from = out.len() - got;
        for r in &mut out[from..] {
            r.length = self.block_ref(piece, r.begin / BLOCK).length;
        }
        if now_full {
            self.open.retain(|&x| x != piece);
        }
        got
    }

    fn pick_duplicates(
        &mut self,
        peer: PeerKey,
        bits: &Bitfield,
        want: usize,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        // Candidates: (requesters, requested at, piece, block), fewest requesters and
        // oldest request first.
        let mut cands: Vec<(usize, Instant, u32, u32)> = Vec::new();
        for &piece in &self.started {
            if !bits.get(piece as usize) {
                continue;
            }
            let Some(p) = self.partial[piece as usize].as_ref() else {
                continue;
            };
            for (b, state) in p.blocks.iter().enumerate() {
                let Block::Requested { peer: first, at } = *state else {
                    continue;
                };
                if first == peer {
                    continue;
                }
                let extra = self.dups.get(&(piece, b as u32));
                let n_extra = extra.map_or(0, |v| v.len());
                if n_extra >= self.cfg.max_duplicates || extra.is_some_and(|v| v.contains(&peer)) {
                    continue;
                }
                cands.push((n_extra, at, piece, b as u32));
            }
        }
        cands.sort();
        let mut got = 0;
        for (_, _, piece, b) in cands.into_iter().take(want) {
            self.dups.entry((piece, b)).or_default().push(peer);
            out.push(self.block_ref(piece, b));
            got += 1;
        }
        got
    }

    // ------------------------------------------------------------------ arrivals

    /// A block arrived from `peer`.
    pub fn on_block(
        &mut self,
        peer: PeerKey,
        piece: u32,
        begin: u32,
        len: u32,
        now: Instant,
    ) -> BlockResult {
        if piece as usize >= self.have.len() {
            return BlockResult::Invalid;
        }
        if self.have.get(piece as usize) {
            return BlockResult::NotWanted;
        }
        if !begin.is_multiple_of(BLOCK) {
            return BlockResult::Invalid;
        }
        let b = begin / BLOCK;
        if b >= self.blocks_in(piece) || self.block_ref(piece, b).length != len {
            return BlockResult::Invalid;
        }
        let extra = self.dups.remove(&(piece, b)).unwrap_or_default();
        let Some(p) = self.partial[piece as usize].as_mut() else {
            return BlockResult::NotWanted;
        };
        let state = p.blocks[b as usize];
        let mut cancel = Vec::new();
        match state {
            Block::Received { .. } => return BlockResult::Duplicate,
            Block::Free => {
                p.free -= 1;
                if p.free == 0 {
                    self.open.retain(|&x| x != piece);
                }
            }
            Block::Requested { peer: first, at } => {
                if first == peer {
                    let secs = now.saturating_duration_since(at).as_secs_f64();
                    self.latency = Some(match self.latency {
                        None => secs,
                        Some(avg) => avg * 0.95 + secs * 0.05,
                    });
                } else {
                    cancel.push(first);
                }
            }
        }
        cancel.extend(extra.into_iter().filter(|&x| x != peer));
        let p = self.partial[piece as usize]
            .as_mut()
            .expect("checked above");
        p.blocks[b as usize] = Block::Received { from: peer };
        p.received += 1;
        BlockResult::Accepted {
            complete: p.received == p.blocks.len() as u32,
            cancel,
        }
    }

    /// Returns `peer`'s outstanding requests to the pool: it choked us, rejected them, left,
    /// or we cancelled them. Blocks also requested from other peers stay with those.
    pub fn release(&mut self, peer: PeerKey, blocks: &[BlockRef]) {
        for r in blocks {
            let b = r.begin / BLOCK;
            let key = (r.piece, b);
            let Some(p) = self
                .partial
                .get_mut(r.piece as usize)
                .and_then(|p| p.as_mut())
            else {
                continue;
            };
            let Some(state) = p.blocks.get_mut(b as usize) else {
                continue;
            };
            match *state {
                Block::Requested { peer: first, at } if first == peer => {
                    // Hand the block to the next requester, if any.
                    match self.dups.get_mut(&key) {
                        Some(extra) if !extra.is_empty() => {
                            *state = Block::Requested {
                                peer: extra.remove(0),
                                at,
                            };
                            if extra.is_empty() {
                                self.dups.remove(&key);
                            }
                        }
                        _ => {
                            *state = Block::Free;
                            p.free += 1;
                            if p.free == 1 {
                                self.open.push(r.piece);
                            }
                        }
                    }
                }
                _ => {
                    if let Some(extra) = self.dups.get_mut(&key) {
                        extra.retain(|&x| x != peer);
                        if extra.is_empty() {
                            self.dups.remove(&key);
                        }
                    }
                }
            }
        }
    }

    /// Takes back blocks requested longer than [`Self::slow_timeout`] ago from peers that
    /// have not delivered them, returning `(peer, block)` pairs to cancel. Each affected
    /// piece avoids that peer from now on.
    pub fn reclaim_slow(&mut self, now: Instant) -> Vec<(PeerKey, BlockRef)> {
        let timeout = self.slow_timeout();
        let mut taken = Vec::new();
        for &piece in &self.started {
            let Some(p) = self.partial[piece as usize].as_ref() else {
                continue;
            };
            for (b, state) in p.blocks.iter().enumerate() {
                if let Block::Requested { peer, at } = *state
                    && now.saturating_duration_since(at) > timeout
                {
                    taken.push((peer, piece, b as u32));
                }
            }
        }
        let mut out = Vec::with_capacity(taken.len());
        for (peer, piece, b) in taken {
            let r = self.block_ref(piece, b);
            self.release(peer, &[r]);
            if let Some(p) = self.partial[piece as usize].as_mut() {
                p.avoid = Some(peer);
            }
            out.push((peer, r));
        }
        out
    }

    /// The hash check of a fully received piece came back. On success the piece is ours;
    /// on failure every block is free again (to be fetched anew).
    pub fn on_verified(&mut self, piece: u32, ok: bool) {
        let i = piece as usize;
        if i >= self.have.len() || self.have.get(i) {
            return;
        }
        if ok {
            self.partial[i] = None;
            self.started.retain(|&x| x != piece);
            self.open.retain(|&x| x != piece);
            self.dups.retain(|&(p, _), _| p != piece);
            self.have.set(i);
            return;
        }
        let n = self.blocks_in(piece);
        if let Some(p) = self.partial[i].as_mut() {
            // A block still requested (an endgame duplicate in flight) would otherwise be
            // re-requested while its answer is on the way; treat it as free like the rest.
            p.blocks.fill(Block::Free);
            p.free = n;
            p.received = 0;
            p.avoid = None;
            self.dups.retain(|&(pc, _), _| pc != piece);
            if !self.open.contains(&piece) {
                self.open.push(piece);
            }
        }
    }

    /// Marks a piece verified that was never downloaded here (e.g. found complete on
    /// disk after start).
    pub fn mark_have(&mut self, piece: u32) {
        let i = piece as usize;
        if i >= self.have.len() || self.have.get(i) {
            return;
        }
        if self.slot[i] != NONE {
            self.bucket_remove(piece);
            self.have.set(i);
        } else {
            self.on_verified(piece, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picker(pieces: usize, piece_len: u64, random_first: usize) -> Picker {
        let total = pieces as u64 * piece_len;
        Picker::new(
            piece_len,
            total,
            Bitfield::new(pieces),
            PickerConfig {
                random_first,
                ..PickerConfig::default()
            },
            7,
        )
    }

    fn bits(n: usize, set: &[usize]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in set {
            b.set(i);
        }
        b
    }

    fn deliver(p: &mut Picker, peer: PeerKey, blocks: &[BlockRef], now: Instant) -> Vec<u32> {
        let mut complete = Vec::new();
        for r in blocks {
            if let BlockResult::Accepted { complete: true, .. } =
                p.on_block(peer, r.piece, r.begin, r.length, now)
            {
                complete.push(r.piece);
            }
        }
        complete
    }

    #[test]
    fn block_geometry_handles_a_short_last_piece() {
        let p = Picker::new(
            40_000,
            100_000,
            Bitfield::new(3),
            PickerConfig::default(),
            1,
        );
        assert_eq!(p.piece_size(2), 20_000);
        assert_eq!(p.blocks_in(0), 3);
        assert_eq!(p.block_ref(0, 2).length, 40_000 - 2 * BLOCK);
        assert_eq!(p.blocks_in(2), 2);
        assert_eq!(p.block_ref(2, 1).length, 20_000 - BLOCK);
    }

    /// Verified bytes count a short last piece at its real size, however the pieces are
    /// gathered; completeness is every piece.
    #[test]
    fn verified_bytes_count_the_short_last_piece_at_its_size() {
        let mut p = Picker::new(
            40_000,
            100_000,
            Bitfield::new(3),
            PickerConfig::default(),
            1,
        );
        assert_eq!(
            (p.num_pieces(), p.verified_bytes(), p.is_complete()),
            (3, 0, false)
        );
        p.mark_have(2);
        assert_eq!(p.verified_bytes(), 20_000);
        p.mark_have(0);
        assert_eq!(p.verified_bytes(), 60_000);
        assert!(!p.is_complete());
        p.mark_have(1);
        assert_eq!(p.verified_bytes(), 100_000);
        assert!(p.is_complete());
    }

    /// Random-first picks only pieces the peer has, and rarest-first scans its whole
    /// availability bucket: whichever single piece a peer has is the one it is asked for.
    #[test]
    fn a_peer_is_asked_only_for_a_piece_it_has_in_either_mode() {
        let n = 10;
        for random_first in [0, 4] {
            for j in 0..n {
                let now = Instant::now();
                let mut p = picker(n, u64::from(BLOCK), random_first);
                // Two peers announcing every piece one by one (not seeds): every piece is
                // in availability bucket 2.
                for _ in 0..2 {
                    for i in 0..n {
                        p.peer_has(i as u32);
                    }
                }
                let mut out = Vec::new();
                let got = p.pick(1, &bits(n, &[j]), false, 4, now, &mut out);
                assert_eq!(got, 1, "random_first {random_first}, piece {j}");
                assert_eq!(out[0].piece as usize, j);
            }
        }
    }

    /// Before the endgame a peer gets no duplicates (blocks requested from another peer);
    /// in the endgame it does, as many as it wants.
    #[test]
    fn duplicates_only_in_the_endgame() {
        let now = Instant::now();
        // Three pieces of two blocks.
        let mut p = picker(3, 2 * u64::from(BLOCK), 0);
        let all = Bitfield::full(3);
        for i in 0..3 {
            p.peer_has(i);
        }
        let only0 = bits(3, &[0]);
        let mut a = Vec::new();
        // Peer 1 requests both blocks of piece 0; pieces 1 and 2 are not started.
        assert_eq!(p.pick(1, &only0, false, 10, now, &mut a), 2);
        assert!(!p.in_endgame());
        let mut b = Vec::new();
        assert_eq!(p.pick(2, &only0, false, 4, now, &mut b), 0, "{b:?}");
        // Now the endgame: peer 1 requests every remaining block.
        let mut rest = Vec::new();
        assert_eq!(p.pick(1, &all, false, 100, now, &mut rest), 4);
        assert!(p.in_endgame());
        let mut c = Vec::new();
        assert_eq!(p.pick(3, &all, false, 3, now, &mut c), 3);
        assert_eq!(c.len(), 3);
    }

    /// Requests carry each block's own length: the last block of a torrent whose length is
    /// not a multiple of the block size is short.
    #[test]
    fn the_last_block_is_requested_at_its_short_length() {
        let now = Instant::now();
        let total = 3 * u64::from(BLOCK) + 100;
        let mut p = Picker::new(
            4 * u64::from(BLOCK),
            total,
            Bitfield::new(1),
            PickerConfig::default(),
            1,
        );
        let all = Bitfield::full(1);
        p.add_peer(&all);
        let mut out = Vec::new();
        assert_eq!(p.pick(1, &all, true, 10, now, &mut out), 4);
        out.sort();
        let lengths: Vec<u32> = out.iter().map(|r| r.length).collect();
        assert_eq!(lengths, vec![BLOCK, BLOCK, BLOCK, 100]);
    }

    #[test]
    fn random_first_then_rarest_first() {
        let n = 64;
        let now = Instant::now();
        let mut p = picker(n, u64::from(BLOCK), 1);
        // Peer 1 has everything (a seed); peers 2 and 3 have overlapping halves, so pieces
        // 0..16 have availability 2 and the rest 1 or 0 apart from the seed.
        let all = Bitfield::full(n);
        assert!(p.add_peer(&all));
        let half: Vec<usize> = (0..32).collect();
        let quarter: Vec<usize> = (0..16).collect();
        assert!(!p.add_peer(&bits(n, &half)));
        assert!(!p.add_peer(&bits(n, &quarter)));

        // Random first: with a fresh picker the seed's first picks spread over the torrent
        // instead of starting at the rarest bucket (pieces 32..64 have availability 0).
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut q = Picker::new(
                u64::from(BLOCK),
                n as u64 * u64::from(BLOCK),
                Bitfield::new(n),
                PickerConfig::default(),
                seed,
            );
            q.add_peer(&all);
            q.add_peer(&bits(n, &half));
            let mut out = Vec::new();
            q.pick(1, &all, true, 1, now, &mut out);
            firsts.insert(out[0].piece);
        }
        assert!(
            firsts.iter().any(|&i| i < 32),
            "random first must not be rarest first: {firsts:?}"
        );

        // Complete one piece: rarest first from now on.
        let mut out = Vec::new();
        p.pick(1, &all, true, 1, now, &mut out);
        assert_eq!(deliver(&mut p, 1, &out, now), [out[0].piece]);
        p.on_verified(out[0].piece, true);
        let first = out[0].piece;
        for _ in 0..10 {
            out.clear();
            p.pick(1, &all, true, 1, now, &mut out);
            assert!(
                out[0].piece >= 32,
                "a seed is asked for pieces nobody else has first: {out:?}"
            );
            deliver(&mut p, 1, &out, now);
            p.on_verified(out[0].piece, true);
        }
        // The half-peer: pieces 16..32 (availability 1) before 0..16 (availability 2).
        loop {
            let rarest: Vec<u32> = (16..32).filter(|&i| !p.have().get(i as usize)).collect();
            out.clear();
            p.pick(2, &bits(n, &half), false, 1, now, &mut out);
            let i = out[0].piece;
            if rarest.is_empty() {
                assert!(i < 16 && i != first);
                break;
            }
            assert!(
                rarest.contains(&i),
                "rarest of the peer's pieces first: got {i}"
            );
            deliver(&mut p, 2, &out, now);
            p.on_verified(i, true);
        }
    }

    #[test]
    fn started_pieces_are_finished_first() {
        let now = Instant::now();
        let mut p = picker(8, 4 * u64::from(BLOCK), 0);
        let all = Bitfield::full(8);
        p.add_peer(&all);
        let mut a = Vec::new();
        p.pick(1, &all, true, 2, now, &mut a);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|r| r.piece == a[0].piece));
        // Peer 2 first gets the two remaining blocks of that piece.
        let mut b = Vec::new();
        p.pick(2, &all, true, 3, now, &mut b);
        assert_eq!(b[0].piece, a[0].piece);
        assert_eq!(b[1].piece, a[0].piece);
        assert_ne!(b[2].piece, a[0].piece);
        assert_eq!(p.num_partial(), 2);
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let now = Instant::now();
        let mut p = picker(2, 2 * u64::from(BLOCK), 0);
        let all = Bitfield::full(2);
        p.add_peer(&all);
        p.add_peer(&all);
        // Peer 1 takes every block: that is the endgame.
        let mut a = Vec::new();
        assert_eq!(p.pick(1, &all, true, 10, now, &mut a), 4);
        assert!(p.in_endgame());
        // Peer 2 may now ask for the same blocks, oldest request first.
        let mut b = Vec::new();
        let later = now + Duration::from_millis(10);
        assert_eq!(p.pick(2, &all, true, 10, later, &mut b), 4);
        let mut sa = a.clone();
        let mut sb = b.clone();
        sa.sort();
        sb.sort();
        assert_eq!(sa, sb);
        // Nothing more for either: each block is requested from both already.
        let mut c = Vec::new();
        assert_eq!(p.pick(2, &all, true, 10, later, &mut c), 0);
        assert_eq!(p.pick(1, &all, true, 10, later, &mut c), 0);
        // A third peer may still duplicate (max_duplicates = 2 extra requesters).
        assert_eq!(p.pick(3, &all, true, 1, later, &mut c), 1);

        // The block arrives from peer 2: peer 1 (and 3, for that block) get a cancel.
        let r = a[0];
        match p.on_block(2, r.piece, r.begin, r.length, later) {
            BlockResult::Accepted { cancel, .. } => {
                let mut cancel = cancel;
                cancel.sort();
                let expect: Vec<PeerKey> = if c[0] == r { vec![1, 3] } else { vec![1] };
                assert_eq!(cancel, expect);
            }
            other => panic!("{other:?}"),
        }
        // Peer 1's copy arriving later (crossed the cancel) is a duplicate.
        assert_eq!(
            p.on_block(1, r.piece, r.begin, r.length, later),
            BlockResult::Duplicate
        );
        // The remaining blocks arrive from peer 1; each names peer 2 for a cancel.
        for r in &a[1..] {
            match p.on_block(1, r.piece, r.begin, r.length, later) {
                BlockResult::Accepted { cancel, .. } => assert!(cancel.contains(&2)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn released_blocks_go_to_other_peers() {
        let now = Instant::now();
        let mut p = picker(1, 4 * u64::from(BLOCK), 0);
        let all = Bitfield::full(1);
        p.add_peer(&all);
        p.add_peer(&all);
        let mut a = Vec::new();
        p.pick(1, &all, true, 4, now, &mut a);
        // Peer 1 chokes us: its requests return to the pool, peer 2 gets them (no endgame
        // duplicates involved).
        p.release(1, &a);
        assert!(!p.in_endgame());
        let mut b = Vec::new();
        assert_eq!(p.pick(2, &all, true, 4, now, &mut b), 4);
        assert_eq!(a, b);
        // Releasing an endgame duplicate leaves the block with its other requester.
        let mut c = Vec::new();
        assert_eq!(p.pick(1, &all, true, 1, now, &mut c), 1);
        p.release(2, &c);
        let mut d = Vec::new();
        assert_eq!(p.pick(3, &all, true, 4, now, &mut d), 4);
        assert!(
            d.contains(&c[0]),
            "still requested (from peer 1), so duplicable"
        );
    }

    #[test]
    fn slow_peers_lose_their_blocks() {
        let t0 = Instant::now();
        let mut p = picker(4, 2 * u64::from(BLOCK), 0);
        let all = Bitfield::full(4);
        p.add_peer(&all);
        p.add_peer(&all);
        // The fast peer establishes a 10 ms average latency.
        let mut fast = Vec::new();
        p.pick(1, &all, true, 2, t0, &mut fast);
        deliver(&mut p, 1, &fast, t0 + Duration::from_millis(10));
        // The slow peer takes a piece and sits on it.
        let mut slow = Vec::new();
        p.pick(2, &all, true, 2, t0, &mut slow);
        assert!(p.reclaim_slow(t0 + Duration::from_secs(1)).is_empty());
        let taken = p.reclaim_slow(t0 + Duration::from_secs(5));
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|(peer, _)| *peer == 2));
        // The fast peer picks them up; the slow one is not given that piece again.
        let mut again = Vec::new();
        p.pick(2, &all, true, 2, t0 + Duration::from_secs(5), &mut again);
        assert!(again.iter().all(|r| r.piece != slow[0].piece));
        let mut refetch = Vec::new();
        p.pick(1, &all, true, 2, t0 + Duration::from_secs(5), &mut refetch);
        assert_eq!(refetch, slow);
        // The slow peer's late copy is still accepted (it is valid data) and cancels
        // nobody's but the fast peer's request.
        let r = slow[0];
        assert!(matches!(
            p.on_block(2, r.piece, r.begin, r.length, t0 + Duration::from_secs(6)),
            BlockResult::Accepted { ref cancel, .. } if cancel == &vec![1]
        ));
    }

    #[test]
    fn hash_failure_frees_the_piece_and_names_senders() {
        let now = Instant::now();
        let mut p = picker(2, 2 * u64::from(BLOCK), 0);
        let all = Bitfield::full(2);
        p.add_peer(&all);
        let mut a = Vec::new();
        p.pick(1, &all, true, 1, now, &mut a);
        let mut b = Vec::new();
        p.pick(2, &all, true, 1, now, &mut b);
        assert_eq!(a[0].piece, b[0].piece);
        assert!(deliver(&mut p, 1, &a, now).is_empty());
        assert_eq!(deliver(&mut p, 2, &b, now), [a[0].piece]);
        assert_eq!(p.block_senders(a[0].piece), Some(vec![1, 2]));
        p.on_verified(a[0].piece, false);
        assert!(!p.have().get(a[0].piece as usize));
        let mut c = Vec::new();
        assert_eq!(p.pick(3, &all, true, 2, now, &mut c), 2);
        assert!(c.iter().all(|r| r.piece == a[0].piece));
    }

    #[test]
    fn bad_blocks_are_refused() {
        let now = Instant::now();
        let mut p = picker(2, 3 * u64::from(BLOCK), 0);
        assert_eq!(p.on_block(1, 5, 0, BLOCK, now), BlockResult::Invalid);
        let all = Bitfield::full(2);
        let mut a = Vec::new();
        p.pick(1, &all, true, 1, now, &mut a);
        let r = a[0];
        assert_eq!(p.on_block(1, r.piece, 1, BLOCK, now), BlockResult::Invalid);
        assert_eq!(
            p.on_block(1, r.piece, 0, BLOCK - 1, now),
            BlockResult::Invalid
        );
        assert_eq!(
            p.on_block(1, r.piece, 3 * BLOCK, BLOCK, now),
            BlockResult::Invalid
        );
        assert_eq!(
            p.on_block(1, 1 - r.piece, 0, BLOCK, now),
            BlockResult::NotWanted
        );
    }

    /// A pick asks for exactly `want` blocks, across new pieces and across started ones.
    #[test]
    fn a_pick_takes_exactly_what_was_wanted() {
        let now = Instant::now();
        let piece = 3 * u64::from(BLOCK);
        let mut p = picker(8, piece, 0);
        let all = Bitfield::full(8);
        p.add_peer(&all);
        p.add_peer(&all);
        let mut out = Vec::new();
        p.pick(1, &all, true, 4, now, &mut out);
        assert_eq!(out.len(), 4, "a whole new piece and one block of the next");
        // Peer 1 leaves: its blocks go back, leaving two started pieces with free blocks.
        let taken = out.clone();
        p.release(1, &taken);
        let mut again = Vec::new();
        p.pick(2, &all, true, 4, now, &mut again);
        assert_eq!(again.len(), 4, "{again:?}");
        assert!(
            again
                .iter()
                .all(|r| r.piece == taken[0].piece || r.piece == taken[3].piece)
        );
    }

    /// The latency estimate is a moving average (5 % weight to each new sample) of the
    /// time the first requester took to deliver.
    #[test]
    fn latency_is_a_moving_average_of_first_requester_deliveries() {
        let now = Instant::now();
        let mut p = picker(4, u64::from(BLOCK), 0);
        let all = Bitfield::full(4);
        p.add_peer(&all);
        let mut out = Vec::new();
        p.pick(1, &all, true, 2, now, &mut out);
        deliver(&mut p, 1, &out[..1], now + Duration::from_secs(1));
        assert_eq!(p.latency, Some(1.0));
        deliver(&mut p, 1, &out[1..], now + Duration::from_secs(3));
        assert!((p.latency.unwrap() - 1.1).abs() < 1e-9, "{:?}", p.latency);
        // The slow timeout is the average times `slow_factor`, within its bounds.
        let want = Duration::from_secs_f64(1.1 * p.cfg.slow_factor)
            .clamp(p.cfg.min_slow_timeout, p.cfg.max_slow_timeout);
        assert_eq!(p.slow_timeout(), want);
        assert!(
            want > p.cfg.min_slow_timeout,
            "the test needs the unclamped range"
        );
    }

    /// Releasing touches only the releasing peer's own requests: a block first requested
    /// by another peer stays theirs, and a released endgame duplicate no longer gets a
    /// cancel.
    #[test]
    fn releasing_touches_only_the_releasing_peers_requests() {
        let now = Instant::now();
        let mut p = picker(1, 2 * u64::from(BLOCK), 0);
        let all = Bitfield::full(1);
        for _ in 0..3 {
            p.add_peer(&all);
        }
        let mut a = Vec::new();
        p.pick(1, &all, true, 2, now, &mut a);
        // Peer 2 releases blocks it never asked for: nothing changes for peer 3.
        p.release(2, &a);
        let mut c = Vec::new();
        assert!(p.in_endgame());
        // Peer 2 duplicates both (endgame), then releases them again.
        let mut b = Vec::new();
        assert_eq!(p.pick(2, &all, true, 2, now, &mut b), 2);
        p.release(2, &b);
        match p.on_block(1, a[0].piece, a[0].begin, a[0].length, now) {
            BlockResult::Accepted { cancel, .. } => assert!(cancel.is_empty(), "{cancel:?}"),
            other => panic!("{other:?}"),
        }
        // Peer 3 can duplicate the other block, which is still peer 1's.
        assert_eq!(p.pick(3, &all, true, 2, now, &mut c), 1);
        assert_eq!(c[0], a[1]);
    }

    /// An unrequested block that arrives leaves the piece's other free blocks pickable.
    #[test]
    fn an_unrequested_block_leaves_the_other_free_blocks_pickable() {
        let now = Instant::now();
        let mut p = picker(1, 3 * u64::from(BLOCK), 0);
        let all = Bitfield::full(1);
        p.add_peer(&all);
        let mut a = Vec::new();
        assert_eq!(p.pick(1, &all, true, 1, now, &mut a), 1);
        // Block 2 arrives unasked (e.g. a request that crossed a choke), not the one asked.
        let unasked = (0..3u32)
            .map(|b| b * BLOCK)
            .find(|&b| b != a[0].begin)
            .unwrap();
        assert!(matches!(
            p.on_block(2, 0, unasked, BLOCK, now),
            BlockResult::Accepted { .. }
        ));
        let mut b = Vec::new();
        // Free blocks come before anything else (endgame duplicates would follow).
        assert_eq!(p.pick(2, &all, true, 1, now, &mut b), 1, "the third block");
        assert!(b[0].begin != a[0].begin && b[0].begin != unasked);
    }

    /// When the first requester of a duplicated block lets go, the block passes to the
    /// next requester (it stays requested, not free).
    #[test]
    fn a_released_block_passes_to_its_duplicate_requester() {
        let now = Instant::now();
        let mut p = picker(1, u64::from(BLOCK), 0);
        let all = Bitfield::full(1);
        p.add_peer(&all);
        let mut a = Vec::new();
        assert_eq!(p.pick(1, &all, true, 1, now, &mut a), 1);
        assert!(p.in_endgame());
        let mut b = Vec::new();
        assert_eq!(p.pick(2, &all, true, 1, now, &mut b), 1);
        p.release(1, &a);
        let state = p.partial[0].as_ref().unwrap().blocks[0];
        assert!(
            matches!(state, Block::Requested { peer: 2, .. }),
            "{state:?}"
        );
    }

    /// Verifying a piece leaves the other started pieces open, and a verdict on a piece we
    /// already have (or one out of range) changes nothing.
    #[test]
    fn verifying_one_piece_keeps_the_others_open_and_repeats_are_ignored() {
        let now = Instant::now();
        let mut p = picker(2, 2 * u64::from(BLOCK), 0);
        let all = Bitfield::full(2);
        p.add_peer(&all);
        let mut a = Vec::new();
        // Three blocks: one piece whole, one block of the other.
        assert_eq!(p.pick(1, &all, true, 3, now, &mut a), 3);
        let whole = a
            .iter()
            .map(|r| r.piece)
            .find(|&x| a.iter().filter(|r| r.piece == x).count() == 2)
            .unwrap();
        let done = deliver(
            &mut p,
            1,
            &a.iter()
                .copied()
                .filter(|r| r.piece == whole)
                .collect::<Vec<_>>(),
            now,
        );
        assert_eq!(done, vec![whole]);
        p.on_verified(whole, true);
        let mut b = Vec::new();
        assert_eq!(
            p.pick(2, &all, true, 1, now, &mut b),
            1,
            "the other piece's free block"
        );
        assert_eq!(b[0].piece, 1 - whole);
        assert!(
            !a.contains(&b[0]),
            "a free block, not a duplicate of peer 1's"
        );
        // Repeated or stray verdicts are ignored.
        p.on_verified(whole, false);
        assert!(p.have().get(whole as usize));
        p.on_verified(99, true);
        assert_eq!(p.have().count(), 1);
    }

    /// Verifying one piece drops only that piece's endgame duplicates.
    #[test]
    fn verifying_a_piece_keeps_other_pieces_duplicates() {
        let now = Instant::now();
        let mut p = picker(2, u64::from(BLOCK), 0);
        let all = Bitfield::full(2);
        p.add_peer(&all);
        p.add_peer(&all);
        let mut a = Vec::new();
        p.pick(1, &all, true, 2, now, &mut a);
        let mut b = Vec::new();
        assert_eq!(p.pick(2, &all, true, 2, now, &mut b), 2);
        deliver(&mut p, 1, &a[..1], now);
        p.on_verified(a[0].piece, true);
        match p.on_block(1, a[1].piece, a[1].begin, a[1].length, now) {
            BlockResult::Accepted { cancel, .. } => assert_eq!(cancel, [2]),
            other => panic!("{other:?}"),
        }
    }

    /// A pick takes exactly `want` blocks from the started pieces, however many are free.
    #[test]
    fn free_blocks_of_started_pieces_are_taken_up_to_want() {
        let now = Instant::now();
        let mut p = picker(2, 4 * u64::from(BLOCK), 0);
        let all = Bitfield::full(2);
        p.add_peer(&all);
        let mut a = Vec::new();
        // Start both pieces with one block each.
        assert_eq!(p.pick(1, &all, true, 5, now, &mut a), 5);
        let mut b = Vec::new();
        assert_eq!(p.pick(2, &all, true, 2, now, &mut b), 2);
        assert_eq!(b.len(), 2);
    }

    /// A departing peer's pieces move down the availability buckets: the piece it leaves
    /// rarest is the one rarest-first picks next.
    #[test]
    fn a_departing_peer_makes_its_pieces_rarer() {
        let now = Instant::now();
        let mut p = picker(3, u64::from(BLOCK), 0);
        // Piece 0 at availability 3, pieces 1 and 2 at 2.
        let a = bits(3, &[0, 1, 2]);
        let b = bits(3, &[0, 1, 2]);
        let c = bits(3, &[0]);
        for peer in [&a, &b, &c] {
            for i in peer.ones() {
                p.peer_has(i as u32);
            }
        }
        // Two of them leave: piece 0 is now at 1, pieces 1 and 2 at 0 (only a seed has
        // those), so a non-seed asking for everything gets piece 0.
        p.remove_peer(1, &a, false, &[]);
        p.remove_peer(2, &b, false, &[]);
        assert_eq!(p.availability(0), 1);
        let mut out = Vec::new();
        assert_eq!(p.pick(3, &bits(3, &[0, 1, 2]), false, 1, now, &mut out), 1);
        assert_eq!(out[0].piece, 0);
        // And a piece already started is never put back among the new ones.
        let mut more = Vec::new();
        p.remove_peer(3, &c, false, &[]);
        p.peer_has(0);
        assert_eq!(
            p.pick(4, &bits(3, &[0]), false, 1, now, &mut more),
            0,
            "{more:?}"
        );
    }

    /// A hash failure drops only the failed piece's duplicates: another piece's block
    /// arriving afterwards still cancels its duplicate request.
    #[test]
    fn a_hash_failure_keeps_the_other_pieces_duplicates() {
        let now = Instant::now();
        let mut p = picker(2, u64::from(BLOCK), 0);
        let all = Bitfield::full(2);
        p.add_peer(&all);
        let mut a = Vec::new();
        assert_eq!(p.pick(1, &all, true, 2, now, &mut a), 2);
        let mut dup = Vec::new();
        assert_eq!(p.pick(3, &all, true, 2, now, &mut dup), 2);
        assert_eq!(deliver(&mut p, 1, &a[..1], now), vec![a[0].piece]);
        p.on_verified(a[0].piece, false);
        match p.on_block(1, a[1].piece, a[1].begin, a[1].length, now) {
            BlockResult::Accepted { cancel, .. } => assert_eq!(cancel, [3]),
            other => panic!("{other:?}"),
        }
    }

    /// Marking a piece we have (or one out of range) changes nothing.
    #[test]
    fn marking_a_piece_twice_or_out_of_range_changes_nothing() {
        let mut p = picker(3, u64::from(BLOCK), 0);
        p.mark_have(1);
        p.mark_have(1);
        p.mark_have(99);
        assert_eq!(p.have().count(), 1);
        assert_eq!(p.verified_bytes(), u64::from(BLOCK));
    }

    /// A hash failure of one piece frees only that piece's duplicates; verifying one piece
    /// keeps the others' blocks available to endgame duplicates.
    #[test]
    fn one_pieces_verdict_leaves_the_others_duplicates() {
        let now = Instant::now();
        let mut p = picker(2, u64::from(BLOCK), 0);
        let all = Bitfield::full(2);
        p.add_peer(&all);
        let mut a = Vec::new();
        assert_eq!(p.pick(1, &all, true, 2, now, &mut a), 2);
        assert!(p.in_endgame());
        // Piece a[0] arrives and passes: a third peer may still duplicate the other.
        deliver(&mut p, 1, &a[..1], now);
        p.on_verified(a[0].piece, true);
        let mut c = Vec::new();
        assert_eq!(p.pick(3, &all, true, 2, now, &mut c), 1);
        assert_eq!(c[0], a[1]);
        // The other piece fails its check: its blocks are free again, for anyone.
        deliver(&mut p, 1, &a[1..], now);
        p.on_verified(a[1].piece, false);
        let mut d = Vec::new();
        assert_eq!(p.pick(4, &all, true, 1, now, &mut d), 1);
        assert_eq!(d[0], a[1]);
    }

    /// A block nobody requested (of a started piece) is taken, and that piece leaves the
    /// open list once it has no free block, without taking other started pieces with it:
    /// those are still finished before new ones are started.
    #[test]
    fn an_unrequested_block_of_a_started_piece_is_taken() {
        let now = Instant::now();
        let mut p = picker(4, 2 * u64::from(BLOCK), 0);
        let all = Bitfield::full(4);
        p.add_peer(&all);
        let mut a = Vec::new();
        p.pick(1, &all, true, 3, now, &mut a);
        // Pieces x (both blocks requested) and y (one requested, one free) are started;
        // x's second block goes back to the pool, so x is open again.
        let (x, y) = (a[0].piece, a[2].piece);
        assert_ne!(x, y);
        p.release(1, &a[1..2]);
        let y_free = p.block_ref(y, 1 - a[2].begin / BLOCK);
        assert!(matches!(
            p.on_block(1, y_free.piece, y_free.begin, y_free.length, now),
            BlockResult::Accepted { .. }
        ));
        // Nothing of y is left to pick; x's free block comes before any new piece.
        let mut b = Vec::new();
        p.pick(2, &all, true, 1, now, &mut b);
        assert_eq!(b, [a[1]]);
        let mut c = Vec::new();
        p.pick(2, &all, true, 1, now, &mut c);
        assert!(c[0].piece != x && c[0].piece != y, "{c:?}");
    }

    /// A piece found complete on disk before it was started is never picked.
    #[test]
    fn a_piece_marked_have_before_it_started_is_never_picked() {
        let now = Instant::now();
        let mut p = picker(3, u64::from(BLOCK), 0);
        let all = Bitfield::full(3);
        p.add_peer(&all);
        p.mark_have(1);
        let mut out = Vec::new();
        p.pick(1, &all, true, 10, now, &mut out);
        let mut pieces: Vec<u32> = out.iter().map(|r| r.piece).collect();
        pieces.sort();
        assert_eq!(pieces, [0, 2]);
    }

    #[test]
    fn availability_tracks_peers() {
        let mut p = picker(4, u64::from(BLOCK), 0);
        let b = bits(4, &[1, 2]);
        assert!(!p.add_peer(&b));
        p.peer_has(3);
        assert_eq!(p.availability(3), 1);
        p.peer_has(4); // past the end: ignored
        assert_eq!(p.availability(1), 1);
        assert_eq!(p.availability(0), 0);
        let full = Bitfield::full(4);
        assert!(p.add_peer(&full));
        assert_eq!(p.availability(0), 1);
        p.remove_peer(9, &b, false, &[]);
        assert_eq!(p.availability(1), 1);
        assert_eq!(p.count_wanted(&b), 2);
        p.mark_have(1);
        assert_eq!(p.count_wanted(&b), 1);
        assert_eq!(p.verified_bytes(), u64::from(BLOCK));
    }
}
