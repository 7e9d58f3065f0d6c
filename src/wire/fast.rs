//! BEP 6 (Fast extension) rules that need no connection: the canonical allowed-fast set.
//!
//! The set is derived from the peer's IPv4 /24 and the info hash so that every peer behind one
//! NAT gets the same pieces (handing out more per address would let one host multiply its free
//! pieces) and both sides can compute it without exchanging anything.

use std::net::Ipv4Addr;

use sha1::{Digest, Sha1};

use crate::torrent::InfoHash;

/// How many allowed-fast pieces we hand a peer (BEP 6 suggests 10 as a sensible default).
pub const ALLOWED_FAST_COUNT: usize = 10;

/// Allowed-fast pieces we remember from one peer: a hostile peer cannot grow the list
/// beyond this (libtorrent's own sets are 10 long).
pub const MAX_ALLOWED_IN: usize = 64;

/// The first `k` pieces of the canonical allowed-fast sequence for a peer at `ip` in a torrent
/// of `num_pieces` pieces (BEP 6 "allowed fast set generation").
///
/// Capped at `num_pieces`, so a torrent with fewer pieces than `k` yields every piece instead
/// of looping forever. The result is in generation order and free of duplicates.
pub fn allowed_fast_set(ip: Ipv4Addr, info_hash: &InfoHash, num_pieces: u32, k: usize) -> Vec<u32> {
    let k = k.min(num_pieces as usize);
    let mut set = Vec::with_capacity(k);
    if k == 0 {
        return set;
    }
    // Seed: the /24 of the address, then the info hash; afterwards each round hashes the
    // previous digest.
    let mut octets = ip.octets();
    octets[3] = 0;
    let mut x: [u8; 20] = {
        let mut h = Sha1::new();
        h.update(octets);
        h.update(info_hash.as_bytes());
        h.finalize().into()
    };
    loop {
        for chunk in x.chunks_exact(4) {
            let y = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let index = y % num_pieces;
            if !set.contains(&index) {
                set.push(index);
                if set.len() == k {
                    return set;
                }
            }
        }
        x = Sha1::digest(x).into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector printed in BEP 6: 1313 pieces, peer 80.4.4.200, info hash 0xaa * 20.
    #[test]
    fn bep6_test_vector() {
        let ip = Ipv4Addr::new(80, 4, 4, 200);
        let ih = InfoHash([0xaa; 20]);
        assert_eq!(
            allowed_fast_set(ip, &ih, 1313, 7),
            [1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(ip, &ih, 1313, 9),
            [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
        // Only the /24 matters.
        assert_eq!(
            allowed_fast_set(Ipv4Addr::new(80, 4, 4, 1), &ih, 1313, 9),
            allowed_fast_set(ip, &ih, 1313, 9)
        );
    }

    #[test]
    fn small_torrents_terminate() {
        let ip = Ipv4Addr::new(127, 0, 0, 1);
        let mut all = allowed_fast_set(ip, &InfoHash([1; 20]), 3, 10);
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2]);
        assert!(allowed_fast_set(ip, &InfoHash([1; 20]), 0, 10).is_empty());
        assert_eq!(allowed_fast_set(ip, &InfoHash([1; 20]), 1, 10), [0]);
    }
}
