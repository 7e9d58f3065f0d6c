//! BEP 42: node ids tied to the node's external IP, and learning that IP from replies.
//!
//! A node id whose top 21 bits are a CRC32-C of the (masked) IP cannot be chosen freely, so
//! one host cannot place itself next to every infohash (a sybil / eclipse attack). Checking
//! is cheap; enforcing it for routing-table entry would lock out users behind NAT, so (like
//! libtorrent and the8472) the node *prefers* verified ids and requires them only where it
//! matters most: the nodes it stores to and announces to. Addresses in private, loopback and
//! link-local ranges are exempt, as the BEP says. IPv6 (BEP 32's DHT) uses the first 8 bytes
//! of the address under its own mask, and exempts loopback, link-local and unique-local
//! addresses.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::Rng;

use crate::dht::id::NodeId;

const IPV4_MASK: u32 = 0x030f_3fff;
const IPV6_MASK: u64 = 0x0103_070f_1f3f_7fff;

/// The 21-bit prefix BEP 42 derives from `ip` and the 3-bit `r`.
fn crc_for(ip: IpAddr, r: u8) -> u32 {
    match ip {
        IpAddr::V4(ip) => {
            let masked = (u32::from(ip) & IPV4_MASK) | (u32::from(r & 7) << 29);
            crc32c::crc32c(&masked.to_be_bytes())
        }
        IpAddr::V6(ip) => {
            let high = (u128::from(ip) >> 64) as u64;
            let masked = (high & IPV6_MASK) | (u64::from(r & 7) << 61);
            crc32c::crc32c(&masked.to_be_bytes())
        }
    }
}

/// Whether BEP 42 exempts `ip` (private, loopback, link-local, unspecified, and other
/// addresses a public node can never be seen from; for IPv6 loopback, link-local and
/// unique-local `fc00::/7`). An IPv4-mapped IPv6 address is judged as IPv4.
pub fn is_exempt(ip: impl Into<IpAddr>) -> bool {
    match ip.into().to_canonical() {
        IpAddr::V4(ip) => is_exempt4(ip),
        IpAddr::V6(ip) => is_exempt6(ip),
    }
}

fn is_exempt4(ip: Ipv4Addr) -> bool {
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64 // 100.64.0.0/10 (CGNAT)
}

fn is_exempt6(ip: Ipv6Addr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || ip.is_unicast_link_local() || ip.is_unique_local()
}

/// A node id valid for `ip` (random apart from the BEP 42 prefix and the `r` byte).
pub fn id_for_ip<R: Rng + ?Sized>(ip: impl Into<IpAddr>, rng: &mut R) -> NodeId {
    let ip = ip.into().to_canonical();
    let mut id = NodeId::random(rng);
    let r = id.0[19];
    let crc = crc_for(ip, r);
    id.0[0] = (crc >> 24) as u8;
    id.0[1] = (crc >> 16) as u8;
    id.0[2] = ((crc >> 8) as u8 & 0xf8) | (id.0[2] & 0x07);
    id
}

/// Whether `id` is valid for `ip` under BEP 42 (exempt addresses always are).
pub fn is_valid(id: &NodeId, ip: impl Into<IpAddr>) -> bool {
    let ip = ip.into().to_canonical();
    if is_exempt(ip) {
        return true;
    }
    let crc = crc_for(ip, id.0[19]);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && (id.0[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
}

/// Learns our external IP from the `ip` field of replies: a majority over the most recent
/// votes, one per voter IP, so a single node (or a few liars) cannot move it. One per address
/// family: an IPv6 node's view of us says nothing about our IPv4 address.
#[derive(Debug, Clone)]
pub struct IpVoter<I = Ipv4Addr> {
    window: usize,
    min_votes: usize,
    votes: VecDeque<(I, I)>,
    counts: HashMap<I, usize>,
    current: Option<I>,
}

impl<I: Copy + Eq + Ord + Hash + Into<IpAddr>> IpVoter<I> {
    /// Keeps the last `window` votes; a result needs at least `min_votes` of them.
    pub fn new(window: usize, min_votes: usize) -> Self {
        IpVoter {
            window: window.max(1),
            min_votes: min_votes.max(1),
            votes: VecDeque::new(),
            counts: HashMap::new(),
            current: None,
        }
    }

    /// The current majority, if any.
    pub fn external_ip(&self) -> Option<I> {
        self.current
    }

    /// Records that `voter` says we are `seen_as`. Returns the new external IP when the
    /// majority changed.
    pub fn vote(&mut self, voter: I, seen_as: I) -> Option<I> {
        let seen: IpAddr = seen_as.into();
        let broadcast = matches!(seen, IpAddr::V4(v4) if v4.is_broadcast());
        if seen.is_unspecified() || broadcast || seen.is_multicast() {
            return None;
        }
        if let Some(pos) = self.votes.iter().position(|(v, _)| *v == voter) {
            let (_, old) = self.votes.remove(pos).expect("position is valid");
            self.uncount(old);
        }
        self.votes.push_back((voter, seen_as));
        *self.counts.entry(seen_as).or_insert(0) += 1;
        if self.votes.len() > self.window {
            let (_, old) = self.votes.pop_front().expect("not empty");
            self.uncount(old);
        }
        let (best, n) = self
            .counts
            .iter()
            .max_by_key(|(ip, n)| (**n, **ip))
            .map(|(ip, n)| (*ip, *n))?;
        // A strict majority of the window's votes, and enough of them.
        if n >= self.min_votes && n * 2 > self.votes.len() && self.current != Some(best) {
            self.current = Some(best);
            return Some(best);
        }
        None
    }

    fn uncount(&mut self, ip: I) {
        if let Some(c) = self.counts.get_mut(&ip) {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The test vectors of BEP 42: (IP, last byte of the id, first three bytes of a valid id).
    const VECTORS: [(&str, u8, [u8; 3]); 5] = [
        ("124.31.75.21", 1, [0x5f, 0xbf, 0xbf]),
        ("21.75.31.124", 86, [0x5a, 0x3c, 0xe9]),
        ("65.23.51.170", 22, [0xa5, 0xd4, 0x32]),
        ("84.124.73.14", 65, [0x1b, 0x03, 0x21]),
        ("43.213.53.83", 90, [0xe5, 0x6f, 0x6c]),
    ];

    #[test]
    fn bep42_test_vectors() {
        for (ip, last, prefix) in VECTORS {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let mut id = [0u8; 20];
            id[..3].copy_from_slice(&prefix);
            id[19] = last;
            assert!(is_valid(&NodeId(id), ip), "{ip}");
            // The low 3 bits of byte 2 are free.
            id[2] ^= 0x07;
            assert!(is_valid(&NodeId(id), ip), "{ip}");
            id[2] ^= 0x08;
            assert!(!is_valid(&NodeId(id), ip), "{ip}");
        }
    }

    #[test]
    fn generated_ids_validate_only_for_their_ip() {
        let mut rng = StdRng::seed_from_u64(1);
        let ip: Ipv4Addr = "8.8.4.4".parse().unwrap();
        for _ in 0..100 {
            let id = id_for_ip(ip, &mut rng);
            assert!(is_valid(&id, ip));
            assert!(!is_valid(
                &id,
                "8.8.8.8".parse::<std::net::Ipv4Addr>().unwrap()
            ));
        }
        assert!(is_valid(
            &NodeId([0; 20]),
            "192.168.1.1".parse::<std::net::Ipv4Addr>().unwrap()
        ));
        assert!(is_valid(
            &NodeId([0; 20]),
            "127.0.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        ));
        assert!(is_valid(
            &NodeId([0; 20]),
            "100.64.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        ));
        assert!(!is_valid(
            &NodeId([0; 20]),
            "1.2.3.4".parse::<std::net::Ipv4Addr>().unwrap()
        ));
    }

    /// BEP 42 for IPv6 (the BEP 32 DHT): the first 8 bytes under `0x0103070f1f3f7fff`, `r`
    /// in the top 3 bits. Ids validate for their address and not for another; the last 8
    /// bytes (the interface id) and the masked-out bits do not matter, the kept bits do;
    /// loopback, link-local and unique-local addresses are exempt, and an IPv4-mapped
    /// address is judged as IPv4.
    #[test]
    fn ipv6_ids_follow_the_first_eight_bytes_under_the_mask() {
        let mut rng = StdRng::seed_from_u64(6);
        let ip: std::net::Ipv6Addr = "2001:4860:4860::8888".parse().unwrap();
        for _ in 0..100 {
            let id = id_for_ip(ip, &mut rng);
            assert!(is_valid(&id, ip));
            // Another interface id on the same /64: the same prefix.
            let same64: std::net::Ipv6Addr = "2001:4860:4860::1".parse().unwrap();
            assert!(is_valid(&id, same64));
            // Bits the mask drops (the top 7 of byte 0, here 0x20 -> 0x22 keeps bit 0 clear).
            let masked_out: std::net::Ipv6Addr = "2201:4860:4860::8888".parse().unwrap();
            assert!(is_valid(&id, masked_out));
            // A kept bit (the last of byte 0) changes the prefix.
            let other: std::net::Ipv6Addr = "2101:4860:4860::8888".parse().unwrap();
            assert!(!is_valid(&id, other));
        }
        // The CRC is over 8 bytes, not 4: pinned so a change of the layout shows.
        assert_eq!(
            crc_for(IpAddr::V6(ip), 0),
            crc32c::crc32c(&(0x2001_4860_4860_0000u64 & IPV6_MASK).to_be_bytes())
        );
        for exempt in ["::1", "fe80::1", "fd77::5", "fc00::1"] {
            let ip: std::net::Ipv6Addr = exempt.parse().unwrap();
            assert!(is_exempt(ip), "{exempt}");
            assert!(is_valid(&NodeId([0; 20]), ip), "{exempt}");
        }
        assert!(!is_exempt(
            "2001:4860::1".parse::<std::net::Ipv6Addr>().unwrap()
        ));
        let mapped = "::ffff:124.31.75.21".parse::<std::net::Ipv6Addr>().unwrap();
        let mut id = NodeId([0; 20]);
        id.0[..3].copy_from_slice(&[0x5f, 0xbf, 0xbf]);
        id.0[19] = 1;
        assert!(is_valid(&id, mapped), "judged as the IPv4 vector");
    }

    #[test]
    fn voter_needs_a_majority_of_distinct_voters() {
        let mut v = IpVoter::new(10, 3);
        let me: Ipv4Addr = "203.0.113.7".parse().unwrap();
        let liar: Ipv4Addr = "198.51.100.1".parse().unwrap();
        let voter = |i: u8| Ipv4Addr::new(192, 0, 2, i);
        // One voter repeating itself counts once.
        for _ in 0..5 {
            assert_eq!(v.vote(voter(1), liar), None);
        }
        assert_eq!(v.vote(voter(2), me), None);
        assert_eq!(v.vote(voter(3), me), None);
        assert_eq!(v.vote(voter(4), me), Some(me));
        assert_eq!(v.external_ip(), Some(me));
        assert_eq!(v.vote(voter(5), me), None, "no change, no report");
        // A new majority moves it.
        for i in 6..=12 {
            v.vote(voter(i), liar);
        }
        assert_eq!(v.external_ip(), Some(liar));
    }
}
