//! BEP 33 DHT scrapes: the 256-byte bloom filters of seed and downloader IPs a node returns
//! for a `get_peers` with `scrape=1`, and the swarm-size estimate from their union.
//!
//! A swarm's announces are scattered over many nodes around its infohash, none holding the
//! whole set, so neither summing nor averaging peer counts says how big it is. Bloom filters
//! of the announcers' IPs can be OR-ed across nodes without counting anyone twice, and their
//! population can be estimated from the share of zero bits. Every implementation must set
//! exactly the same bits (BEP 33 fixes the hash, k = 2 and m = 2048), or unions across
//! clients would be meaningless.

use std::net::IpAddr;

use sha1::{Digest, Sha1};

/// Filter size in bytes (BEP 33: m = 256 × 8 bits).
pub const FILTER_LEN: usize = 256;
const M: u32 = (FILTER_LEN * 8) as u32;
/// Hash functions per insert (BEP 33: k = 2).
const K: f64 = 2.0;

/// One BEP 33 bloom filter (`BFsd` for seeds, `BFpe` for downloaders).
#[derive(Clone, PartialEq, Eq)]
pub struct ScrapeFilter(pub [u8; FILTER_LEN]);

impl std::fmt::Debug for ScrapeFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScrapeFilter(~{:.1})", self.estimate())
    }
}

impl Default for ScrapeFilter {
    fn default() -> Self {
        ScrapeFilter([0; FILTER_LEN])
    }
}

impl ScrapeFilter {
    /// A filter from a reply's bytes; `None` unless exactly 256 bytes (a shorter or longer
    /// one cannot be OR-ed with ours, and guessing its layout would corrupt the union).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(ScrapeFilter)
    }

    /// Inserts an address: SHA-1 over its 4 or 16 bytes (an IPv4-mapped IPv6 address counts
    /// as the IPv4 address it is, so one peer is one peer whichever socket saw it).
    pub fn insert(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.insert_bytes(&v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.insert_bytes(&v4.octets()),
                None => self.insert_bytes(&v6.octets()),
            },
        }
    }

    /// Inserts raw compact IP bytes: the two indices are the first two little-endian 16-bit
    /// words of the hash, modulo m.
    pub fn insert_bytes(&mut self, ip: &[u8]) {
        let h = Sha1::digest(ip);
        for idx in [
            u32::from(h[0]) | u32::from(h[1]) << 8,
            u32::from(h[2]) | u32::from(h[3]) << 8,
        ] {
            let idx = idx % M;
            self.0[(idx / 8) as usize] |= 1 << (idx % 8);
        }
    }

    /// Adds every element of `other` (bitwise OR): the filter of the union of both sets.
    pub fn union(&mut self, other: &ScrapeFilter) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// BEP 33's estimate of how many distinct addresses were inserted:
    /// `ln(c / m) / (k · ln(1 − 1/m))` with `c` the zero bits. A saturated filter (no zero
    /// bit, past ~15,000 addresses) is read as having one zero bit: the largest size the
    /// filter can tell apart, so the estimate stays finite and reads as "at least this".
    pub fn estimate(&self) -> f64 {
        let zeros: u32 = self.0.iter().map(|b| b.count_zeros()).sum();
        let c = f64::from(zeros.max(1));
        let m = f64::from(M);
        (c / m).ln() / (K * (1.0 - 1.0 / m).ln())
    }
}

/// A scrape's result: the union of every reply's filters and how many nodes sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeEstimate {
    /// The union of the replies' `BFsd` filters (seeds).
    pub seeds: ScrapeFilter,
    /// The union of the replies' `BFpe` filters (downloaders, i.e. peers that are not seeds).
    pub downloaders: ScrapeFilter,
    /// Nodes whose reply carried both filters.
    pub replies: usize,
    /// Queries the scrape lookup sent (what it cost; a crawler charges them to its budget).
    pub queries: u32,
}

impl ScrapeEstimate {
    /// Folds one reply's filters in.
    pub fn add(&mut self, seeds: &ScrapeFilter, downloaders: &ScrapeFilter) {
        self.seeds.union(seeds);
        self.downloaders.union(downloaders);
        self.replies += 1;
    }

    /// Estimated seeds, rounded.
    pub fn seeds_est(&self) -> u64 {
        self.seeds.estimate().round() as u64
    }

    /// Estimated downloaders (peers that are not seeds), rounded.
    pub fn peers_est(&self) -> u64 {
        self.downloaders.estimate().round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// BEP 33's test vector: 192.0.2.0 to 192.0.2.255 give this filter and an estimate of
    /// 257.854; adding 2001:db8:: to 2001:db8::3e7 (1,000 IPv6 addresses) gives 1224.93.
    #[test]
    fn bep33_test_vectors() {
        let mut f = ScrapeFilter::default();
        for i in 0..=255u8 {
            f.insert(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)));
        }
        let v4 = "24c0004020043000102012743e00480037110820422110008000c0e302854835\
                  a05401a4045021302a306c060001881002d8a0a3a8001901b40a800900310008\
                  d2108110c2496a0028700010d804188b01415200082004088026411104a80404\
                  8002002000080680828c400080cc40020c042c0494447280928041402104080d\
                  4240040414a41f0205654800b0811830d2020042b002c5800004a71d0204804a\
                  0028120a004c10017801490b834004044106005421000c86900a002050020351\
                  0060144e900100924a1018141a028012913f0041802250042280481200002004\
                  430804210101c08111c10801001080002038008211004266848606b035001048";
        assert_eq!(hex::encode(f.0), v4);
        assert!((f.estimate() - 257.854).abs() < 0.001, "{}", f.estimate());
        for i in 0..0x3e8u16 {
            f.insert(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)));
        }
        let both = "f6c3f5eaa07ffd91bde89f777f26fb2bff37bdb8fb2bbaa2fd3ddde7bacfff75\
                    ee7ccbaefe5eedb1fbfaff67f6abff5e43ddbca3fd9b9ffdf4ffd3e9dff12d1b\
                    df59db53dbe9fa5b7ff3b8fdfcde1afb8bedd7be2f3ee71ebbbfe93bcdeefe14\
                    8246c2bc5dbff7e7efdcf24fd8dc7adffd8fffdfddfff7a4bbeedf5cb95ce81f\
                    c7fcff1ff4ffffdfe5f7fdcbb7fd79b3fa1fc77bfe07fff905b7b7ffc7fefeff\
                    e0b8370bb0cd3f5b7f2bd93feb4386cfdd6f7fd5bfaf2e9ebffffeecd67adbf7\
                    c67f17efd5d75eba6ffeba7fff47a91eb1bfbb53e8abfb5762abe8ff237279bf\
                    efbfeef5ffc5febfdfe5adffadfee1fb737ffffbfd9f6aeffeee76b6fd8f72ef";
        assert_eq!(hex::encode(f.0), both);
        assert!((f.estimate() - 1224.93).abs() < 0.001, "{}", f.estimate());
    }

    #[test]
    fn union_counts_shared_members_once_and_mapped_v6_is_v4() {
        let mut a = ScrapeFilter::default();
        let mut b = ScrapeFilter::default();
        for i in 0..60u8 {
            a.insert(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)));
        }
        for i in 30..90u8 {
            b.insert(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)));
        }
        a.union(&b);
        let est = a.estimate();
        assert!((est - 90.0).abs() < 9.0, "{est}");
        let mut m = ScrapeFilter::default();
        m.insert(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()));
        let mut v = ScrapeFilter::default();
        v.insert(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(m, v);
    }

    #[test]
    fn empty_saturated_and_wrong_sizes() {
        assert_eq!(ScrapeFilter::default().estimate(), 0.0);
        assert!(ScrapeFilter::default().is_empty());
        let full = ScrapeFilter([0xff; FILTER_LEN]);
        let e = full.estimate();
        assert!(e.is_finite() && e > 7000.0, "{e}");
        assert!(ScrapeFilter::from_slice(&[0; 255]).is_none());
        assert!(ScrapeFilter::from_slice(&[0; 257]).is_none());
        assert!(ScrapeFilter::from_slice(&[0; 256]).is_some());
    }
}
