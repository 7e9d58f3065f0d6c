//! Sans-IO assembly of an info dict from 16 KiB blocks supplied by several peers.
//!
//! Blocks are spread over peers for speed, so when the SHA-1 of the assembled dict does not
//! match the info hash, "the metadata is bad" is not enough: some peer lied, and it has to be
//! found and dropped while the honest ones keep going. Every stored block therefore keeps its
//! provenance: each piece holds the distinct contents received for it (*candidates*), each
//! with the peers that sent exactly those bytes. Verification then proceeds in two ways:
//!
//! * **Per-peer copies.** A peer that has supplied every piece has vouched for one complete
//!   dict; hashing it tells whether that peer is honest. A failing copy convicts its peer with
//!   certainty, whatever anyone else sent. Each copy is hashed once.
//! * **Combinations.** While no single peer has supplied everything (the normal fast path,
//!   where pieces came from different peers), the product of candidates is searched, depth
//!   first with a SHA-1 state cloned per prefix so shared prefixes are hashed once. The search
//!   only runs when the product is small ([`MAX_COMBINATIONS`]) and has changed since the last
//!   search, which bounds the hashing a flood of distinct lies can cause.
//!
//! Once some combination verifies, the truth is known: every peer that sent a different
//! block for any piece lied. If nothing verifies, the caller switches to asking every peer
//! for every piece (cross-checking), so that each peer eventually either completes an honest
//! copy or convicts itself; this always terminates, because a peer is never asked for the same
//! piece twice.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::torrent::InfoHash;
use crate::wire::{metadata_block_len, num_metadata_pieces, valid_metadata_size};

/// Identifies a peer to the assembly; the fetcher's index of the connection.
pub type PeerKey = usize;

/// Largest candidate product searched for a verifying combination. With one liar among
/// honest peers, a piece has at most two candidates, so 16 covers a liar on four pieces of
/// a fast-path assembly; beyond that, per-peer copies decide.
pub const MAX_COMBINATIONS: u64 = 16;

/// Why a block was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The piece index is beyond the end of the dict.
    NoSuchPiece {
        /// The block index the peer sent.
        piece: u32,
        /// How many blocks the dict has.
        pieces: u32,
    },
    /// The block is not exactly as long as that piece must be (16 KiB, or the remainder for
    /// the last piece).
    BadLength {
        /// The block index.
        piece: u32,
        /// The length that block must have.
        expected: usize,
        /// The length the peer sent.
        got: usize,
    },
}

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockError::NoSuchPiece { piece, pieces } => {
                write!(f, "metadata piece {piece} does not exist (only {pieces})")
            }
            BlockError::BadLength {
                piece,
                expected,
                got,
            } => write!(
                f,
                "metadata piece {piece} is {got} bytes, expected {expected}"
            ),
        }
    }
}

impl std::error::Error for BlockError {}

/// The outcome of [`Assembly::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some piece has no candidate yet and no peer has a complete copy.
    Incomplete,
    /// A combination hashed to the info hash.
    Verified {
        /// The info dict, exactly as its SHA-1 was checked.
        info: Vec<u8>,
        /// Peers that sent at least one block of the verified dict.
        suppliers: Vec<PeerKey>,
        /// Peers that sent at least one block differing from the verified dict.
        liars: Vec<PeerKey>,
    },
    /// Nothing verified. `liars` are peers whose own complete copy failed the hash check
    /// (possibly none: then more blocks from more peers are needed).
    Failed {
        /// Peers whose own complete copy failed the hash check.
        liars: Vec<PeerKey>,
    },
}

#[derive(Debug, Clone)]
struct Candidate {
    data: Bytes,
    sources: BTreeSet<PeerKey>,
}

/// Candidate blocks of one info dict of a given size, with provenance.
#[derive(Debug, Clone)]
pub struct Assembly {
    info_hash: InfoHash,
    size: u64,
    pieces: Vec<Vec<Candidate>>,
    stored: usize,
    /// Bumped whenever the candidate product changes, so an unchanged product is not
    /// searched twice.
    generation: u64,
    searched_generation: Option<u64>,
    /// Peers whose complete copy has been hashed (and verified or failed).
    copies_checked: BTreeSet<PeerKey>,
}

impl Assembly {
    /// An empty assembly for a dict of `size` bytes; `None` for a size
    /// [`valid_metadata_size`] refuses, so a hostile size never allocates anything.
    pub fn new(info_hash: InfoHash, size: u64) -> Option<Assembly> {
        if !valid_metadata_size(size) {
            return None;
        }
        let n = num_metadata_pieces(size) as usize;
        Some(Assembly {
            info_hash,
            size,
            pieces: vec![Vec::new(); n],
            stored: 0,
            generation: 0,
            searched_generation: None,
            copies_checked: BTreeSet::new(),
        })
    }

    /// The dict size this assembly is for.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of 16 KiB pieces.
    pub fn num_pieces(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Whether any block has been stored for `piece`.
    pub fn has_candidate(&self, piece: u32) -> bool {
        self.pieces
            .get(piece as usize)
            .is_some_and(|c| !c.is_empty())
    }

    /// Whether every piece has at least one candidate.
    pub fn all_pieces_present(&self) -> bool {
        self.pieces.iter().all(|c| !c.is_empty())
    }

    /// Bytes held in distinct candidates (identical blocks from several peers count once).
    pub fn stored_bytes(&self) -> usize {
        self.stored
    }

    /// Stores block `piece` as sent by `peer`, after checking its length. Identical bytes from
    /// several peers share one candidate.
    pub fn add_block(&mut self, peer: PeerKey, piece: u32, data: Bytes) -> Result<(), BlockError> {
        let pieces = self.num_pieces();
        let expected = metadata_block_len(piece, self.size)
            .ok_or(BlockError::NoSuchPiece { piece, pieces })?;
        if data.len() != expected {
            return Err(BlockError::BadLength {
                piece,
                expected,
                got: data.len(),
            });
        }
        let slot = &mut self.pieces[piece as usize];
        if let Some(c) = slot.iter_mut().find(|c| c.data == data) {
            c.sources.insert(peer);
            return Ok(());
        }
        self.stored += data.len();
        slot.push(Candidate {
            data,
            sources: BTreeSet::from([peer]),
        });
        self.generation += 1;
        Ok(())
    }

    /// Forgets everything `peer` vouched for (it was convicted, or left); blocks no one else
    /// sent are discarded.
    pub fn remove_peer(&mut self, peer: PeerKey) {
        for slot in &mut self.pieces {
            let before = slot.len();
            for c in slot.iter_mut() {
                c.sources.remove(&peer);
            }
            slot.retain(|c| !c.sources.is_empty());
            if slot.len() != before {
                self.generation += 1;
            }
        }
        self.stored = self.pieces.iter().flatten().map(|c| c.data.len()).sum();
    }

    /// The candidate index `peer` supplied for each piece, if it supplied every piece.
    fn copy_of(&self, peer: PeerKey) -> Option<Vec<usize>> {
        self.pieces
            .iter()
            .map(|slot| slot.iter().position(|c| c.sources.contains(&peer)))
            .collect()
    }

    /// The info hash the dict made of the `choice` candidates would have.
    fn hash_choice(&self, choice: &[usize]) -> InfoHash {
        let mut h = Sha1::new();
        for (slot, &i) in self.pieces.iter().zip(choice) {
            h.update(&slot[i].data);
        }
        InfoHash(h.finalize().into())
    }

    /// Number of combinations, saturating above [`MAX_COMBINATIONS`].
    fn product(&self) -> u64 {
        let mut p: u64 = 1;
        for slot in &self.pieces {
            p = p.saturating_mul(slot.len() as u64);
            if p > MAX_COMBINATIONS {
                return p;
            }
        }
        p
    }

    /// Depth-first search of the candidate product for a combination hashing to the info
    /// hash. The hasher state after each prefix is cloned, so a prefix shared by many
    /// combinations is hashed once.
    fn search(&self) -> Option<Vec<usize>> {
        let n = self.pieces.len();
        let mut choice = vec![0usize; n];
        let mut states: Vec<Sha1> = Vec::with_capacity(n + 1);
        states.push(Sha1::new());
        let mut depth = 0;
        loop {
            if depth == n {
                let digest = InfoHash(states[n].clone().finalize().into());
                if digest == self.info_hash {
                    return Some(choice);
                }
                // Backtrack to the deepest piece with an untried candidate.
                loop {
                    if depth == 0 {
                        return None;
                    }
                    depth -= 1;
                    states.pop();
                    choice[depth] += 1;
                    if choice[depth] < self.pieces[depth].len() {
                        break;
                    }
                    choice[depth] = 0;
                }
            }
            let mut next = states[depth].clone();
            next.update(&self.pieces[depth][choice[depth]].data);
            states.push(next);
            depth += 1;
        }
    }

    /// Tries to verify: first every new complete per-peer copy, then (if the product is small
    /// and changed) the combinations. See the module docs.
    pub fn verify(&mut self) -> Verdict {
        let peers: BTreeSet<PeerKey> = self
            .pieces
            .iter()
            .flatten()
            .flat_map(|c| c.sources.iter().copied())
            .collect();
        let mut liars = Vec::new();
        let mut winner = None;
        for peer in peers {
            if self.copies_checked.contains(&peer) {
                continue;
            }
            let Some(copy) = self.copy_of(peer) else {
                continue;
            };
            self.copies_checked.insert(peer);
            if self.hash_choice(&copy) == self.info_hash {
                winner = Some(copy);
                break;
            }
            liars.push(peer);
        }
        if winner.is_none() {
            if !self.all_pieces_present() {
                return if liars.is_empty() {
                    Verdict::Incomplete
                } else {
                    Verdict::Failed { liars }
                };
            }
            if self.searched_generation != Some(self.generation)
                && self.product() <= MAX_COMBINATIONS
            {
                self.searched_generation = Some(self.generation);
                winner = self.search();
            }
        }
        let Some(choice) = winner else {
            return Verdict::Failed { liars };
        };
        let mut info = Vec::with_capacity(self.size as usize);
        let mut suppliers = BTreeSet::new();
        let mut wrong = BTreeSet::new();
        for (slot, &i) in self.pieces.iter().zip(&choice) {
            info.extend_from_slice(&slot[i].data);
            suppliers.extend(slot[i].sources.iter().copied());
            for (j, c) in slot.iter().enumerate() {
                if j != i {
                    wrong.extend(c.sources.iter().copied());
                }
            }
        }
        Verdict::Verified {
            info,
            suppliers: suppliers.into_iter().collect(),
            liars: wrong.into_iter().collect(),
        }
    }

    /// Which peers sent which pieces (for diagnostics and tests).
    pub fn provenance(&self) -> BTreeMap<PeerKey, Vec<u32>> {
        let mut out: BTreeMap<PeerKey, Vec<u32>> = BTreeMap::new();
        for (i, slot) in self.pieces.iter().enumerate() {
            for c in slot {
                for &p in &c.sources {
                    out.entry(p).or_default().push(i as u32);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::METADATA_BLOCK;

    fn dict(len: usize) -> (Vec<u8>, InfoHash) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let h = InfoHash(Sha1::digest(&data).into());
        (data, h)
    }

    fn block(data: &[u8], piece: usize) -> Bytes {
        let start = piece * METADATA_BLOCK;
        let end = (start + METADATA_BLOCK).min(data.len());
        Bytes::copy_from_slice(&data[start..end])
    }

    fn corrupt(b: &Bytes) -> Bytes {
        let mut v = b.to_vec();
        v[0] ^= 0xff;
        Bytes::from(v)
    }

    #[test]
    fn refuses_absurd_sizes_and_bad_blocks() {
        assert!(Assembly::new(InfoHash([0; 20]), 0).is_none());
        assert!(Assembly::new(InfoHash([0; 20]), 16 * 1024 * 1024 + 1).is_none());
        let mut a = Assembly::new(InfoHash([0; 20]), 20_000).unwrap();
        assert_eq!(a.num_pieces(), 2);
        assert_eq!(
            a.add_block(1, 2, Bytes::from_static(b"x")),
            Err(BlockError::NoSuchPiece {
                piece: 2,
                pieces: 2
            })
        );
        assert_eq!(
            a.add_block(1, 1, Bytes::from(vec![0; 100])),
            Err(BlockError::BadLength {
                piece: 1,
                expected: 20_000 - METADATA_BLOCK,
                got: 100
            })
        );
        assert_eq!(a.verify(), Verdict::Incomplete);
        assert_eq!(a.stored_bytes(), 0);
    }

    #[test]
    fn striped_blocks_verify_without_any_complete_copy() {
        let (data, ih) = dict(3 * METADATA_BLOCK + 10);
        let mut a = Assembly::new(ih, data.len() as u64).unwrap();
        for piece in 0..4 {
            a.add_block(piece % 2, piece as u32, block(&data, piece))
                .unwrap();
        }
        match a.verify() {
            Verdict::Verified {
                info,
                suppliers,
                liars,
            } => {
                assert_eq!(info, data);
                assert_eq!(suppliers, vec![0, 1]);
                assert!(liars.is_empty());
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn liar_is_found_among_striped_blocks() {
        // Peer 0 honest on pieces 0 and 2, peer 1 lies on piece 1 and is honest on 3; peer 2
        // then cross-checks piece 1. The combination search finds the truth and names 1.
        let (data, ih) = dict(4 * METADATA_BLOCK);
        let mut a = Assembly::new(ih, data.len() as u64).unwrap();
        a.add_block(0, 0, block(&data, 0)).unwrap();
        a.add_block(1, 1, corrupt(&block(&data, 1))).unwrap();
        a.add_block(0, 2, block(&data, 2)).unwrap();
        a.add_block(1, 3, block(&data, 3)).unwrap();
        assert_eq!(a.verify(), Verdict::Failed { liars: vec![] });
        // Same product again: not re-searched, still failed.
        assert_eq!(a.verify(), Verdict::Failed { liars: vec![] });
        a.add_block(2, 1, block(&data, 1)).unwrap();
        match a.verify() {
            Verdict::Verified {
                info,
                suppliers,
                liars,
            } => {
                assert_eq!(info, data);
                assert_eq!(liars, vec![1]);
                assert_eq!(suppliers, vec![0, 1, 2]);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn complete_lying_copy_convicts_its_peer_at_once() {
        let (data, ih) = dict(2 * METADATA_BLOCK + 1);
        let mut a = Assembly::new(ih, data.len() as u64).unwrap();
        for piece in 0..3 {
            let b = block(&data, piece);
            a.add_block(7, piece as u32, if piece == 2 { corrupt(&b) } else { b })
                .unwrap();
        }
        assert_eq!(a.verify(), Verdict::Failed { liars: vec![7] });
        a.remove_peer(7);
        assert!(!a.all_pieces_present());
        assert_eq!(a.stored_bytes(), 0);
        for piece in 0..3 {
            a.add_block(8, piece as u32, block(&data, piece)).unwrap();
        }
        assert!(matches!(a.verify(), Verdict::Verified { ref liars, .. } if liars.is_empty()));
    }

    #[test]
    fn per_peer_copies_settle_large_products() {
        // Two liars corrupt every piece of a 6-piece dict: the product (3^6) is too big to
        // search, but complete copies decide, and the honest copy wins.
        let (data, ih) = dict(6 * METADATA_BLOCK);
        let mut a = Assembly::new(ih, data.len() as u64).unwrap();
        for piece in 0..6 {
            let b = block(&data, piece);
            a.add_block(1, piece as u32, corrupt(&b)).unwrap();
            let mut other = b.to_vec();
            other[1] ^= 1;
            a.add_block(2, piece as u32, Bytes::from(other)).unwrap();
        }
        assert_eq!(a.verify(), Verdict::Failed { liars: vec![1, 2] });
        a.remove_peer(1);
        a.remove_peer(2);
        for piece in 0..6 {
            a.add_block(3, piece as u32, block(&data, piece)).unwrap();
            // Identical blocks share storage.
            a.add_block(4, piece as u32, block(&data, piece)).unwrap();
        }
        assert_eq!(a.stored_bytes(), data.len());
        match a.verify() {
            Verdict::Verified {
                suppliers, liars, ..
            } => {
                assert_eq!(suppliers, vec![3, 4]);
                assert!(liars.is_empty());
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(a.provenance()[&3].len(), 6);
    }
}
