//! The router's node store: a fixed-capacity ring of verified contacts per address family
//! (26 bytes per IPv4 entry, 38 per IPv6 entry, no per-entry overhead), a two-generation
//! Bloom filter per ring for one entry per host, and one flat file that loads in one read.
//!
//! 10M IPv4 contacts are 260 MB of ring plus ~24 MB of filters, which is why entries are
//! packed bytes rather than structs in a map: the point of a bootstrap router is holding many
//! fresh, diverse contacts cheaply.
//!
//! **Hosts.** One entry per IPv4 address, but one per IPv6 `/64`: an IPv6 host is normally
//! given a whole `/64`, so a per-address rule would let one machine fill the ring with as
//! many "hosts" as it cares to configure addresses. BEP 42 draws the same line (an IPv6
//! node id is derived from the top 64 bits of its address). See [`host_key`].
//!
//! **File format.** Version 2 (`TLROUTE2`) holds both families in one file: the header, the
//! IPv4 entries, then the IPv6 entries. One file rather than a second `router-nodes6.bin`,
//! because the two rings are saved from one snapshot and replaced by one atomic rename, so a
//! crash can never leave the families from different saves, and a corrupt store is one file
//! moved aside. Version 1 files (`TLROUTE1`, IPv4 only, written before the router served
//! IPv6) still load, as an IPv4 ring and an empty IPv6 one; the next save writes version 2.

use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

use crate::dht::id::{Contact, Family, ID_LEN, NodeAddr};

/// A Bloom filter sized for `n` items at about 1 % false positives.
#[derive(Debug, Clone)]
pub struct Bloom {
    bits: Vec<u64>,
    nbits: u64,
    hasher: RandomState,
}

/// Hash functions per item (optimal for 1 % at 9.6 bits per item).
const BLOOM_K: u64 = 7;

impl Bloom {
    /// An empty filter for `n` items (at least 64), hashed with `hasher`.
    pub fn new(n: usize, hasher: RandomState) -> Self {
        let nbits = ((n.max(64) as u64) * 96 / 10).next_multiple_of(64);
        Bloom {
            bits: vec![0; (nbits / 64) as usize],
            nbits,
            hasher,
        }
    }

    /// The `BLOOM_K` bit positions of `key` (double hashing from one 64-bit hash).
    fn positions(&self, key: u64) -> [u64; BLOOM_K as usize] {
        let h = self.hasher.hash_one(key);
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        std::array::from_fn(|i| h1.wrapping_add((i as u64).wrapping_mul(h2)) % self.nbits)
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: u64) {
        for p in self.positions(key) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// Whether `key` was probably inserted: never a false negative, about 1 % false
    /// positives once `n` items are in.
    pub fn contains(&self, key: u64) -> bool {
        self.positions(key)
            .iter()
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Bytes of memory the bit array takes.
    pub fn memory(&self) -> usize {
        self.bits.len() * 8
    }
}

/// The key a host is known by in the router's filters: an IPv4 address, or the `/64` of an
/// IPv6 one (see the module docs for why). The two families never share a filter, so their
/// keys may overlap. An IPv4-mapped IPv6 address is keyed as the IPv4 address it carries.
pub fn host_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    }
}

/// [`host_key`] of a compact address (`A`'s 6- or 18-byte form): the same key, read from
/// the bytes, so the ring can compare entries without decoding them.
fn host_key_of_compact<A: NodeAddr>(addr: &[u8]) -> u64 {
    match A::FAMILY {
        Family::V4 => u64::from(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]])),
        Family::V6 => {
            let mut top = [0u8; 8];
            top.copy_from_slice(&addr[..8]);
            u64::from_be_bytes(top)
        }
    }
}

/// A "seen recently" set of hosts (keyed by [`host_key`]) that forgets: inserts go to the
/// current generation, lookups check both, and after `generation` inserts the older one is
/// dropped.
#[derive(Debug, Clone)]
pub struct RecentSet {
    current: Bloom,
    previous: Bloom,
    inserted: usize,
    generation: usize,
    hasher: RandomState,
}

impl RecentSet {
    /// An empty set whose generations take `generation` inserts each (at least 1), so an
    /// inserted key is remembered for one to two generations' worth of inserts.
    pub fn new(generation: usize) -> Self {
        let hasher = RandomState::new();
        RecentSet {
            current: Bloom::new(generation, hasher.clone()),
            previous: Bloom::new(generation, hasher.clone()),
            inserted: 0,
            generation: generation.max(1),
            hasher,
        }
    }

    /// Whether `key` was probably inserted in the current or the previous generation.
    pub fn contains(&self, key: u64) -> bool {
        self.current.contains(key) || self.previous.contains(key)
    }

    /// Records `key`; the insert that fills the current generation starts a new one.
    pub fn insert(&mut self, key: u64) {
        self.current.insert(key);
        self.inserted += 1;
        if self.inserted >= self.generation {
            self.rotate();
        }
    }

    /// Starts a new generation now.
    pub fn rotate(&mut self) {
        let fresh = Bloom::new(self.generation, self.hasher.clone());
        self.previous = std::mem::replace(&mut self.current, fresh);
        self.inserted = 0;
    }

    /// Bytes of memory both generations' bit arrays take.
    pub fn memory(&self) -> usize {
        self.current.memory() + self.previous.memory()
    }
}

/// Why the router store could not be read or written.
#[derive(Debug)]
pub enum StoreError {
    /// Reading or writing the file failed.
    Io {
        /// The store file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file does not start with the store's magic.
    NotAStore {
        /// The file read.
        path: PathBuf,
    },
    /// The file is a router store of a version this build does not read (a newer one).
    UnsupportedVersion {
        /// The file read.
        path: PathBuf,
        /// The version byte found.
        version: u8,
    },
    /// The body does not hold the number of entries the header announces.
    Truncated {
        /// The file read.
        path: PathBuf,
        /// Bytes after the header.
        bytes: usize,
        /// Entries the header announces.
        entries: usize,
    },
    /// The background save task died (a panic in the writer).
    Task {
        /// The store file being saved.
        path: PathBuf,
        /// The task's join error, as text.
        detail: String,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::NotAStore { path } => {
                write!(f, "{} is not a router store", path.display())
            }
            StoreError::UnsupportedVersion { path, version } => write!(
                f,
                "{} is a router store of version {} (this build reads 1 and 2)",
                path.display(),
                char::from(*version).escape_default()
            ),
            StoreError::Truncated {
                path,
                bytes,
                entries,
            } => write!(
                f,
                "{} is truncated or corrupt ({bytes} bytes for {entries} entries)",
                path.display()
            ),
            StoreError::Task { path, detail } => {
                write!(f, "saving {} failed: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The store file starts with `TLROUTE` and a version digit.
const MAGIC_PREFIX: &[u8; 7] = b"TLROUTE";
/// Version 1: `TLROUTE1`, IPv4 entry count (u64 LE), the 26-byte IPv4 entries. Read only.
const VERSION_1: u8 = b'1';
/// Version 2: `TLROUTE2`, IPv4 and IPv6 entry counts (u64 LE each), the 26-byte IPv4
/// entries, then the 38-byte IPv6 entries. What [`RingSnapshot::save`] writes.
const VERSION_2: u8 = b'2';

/// The contacts of the two rings at one moment, in file order (see [`Rings::snapshot`]).
pub struct RingSnapshot {
    v4: Vec<u8>,
    v6: Vec<u8>,
}

impl RingSnapshot {
    /// A copy of the contacts of `v4` and `v6`, each oldest first.
    pub fn of(v4: &NodeRing<SocketAddrV4>, v6: &NodeRing<SocketAddrV6>) -> Self {
        RingSnapshot {
            v4: v4.snapshot_bytes(),
            v6: v6.snapshot_bytes(),
        }
    }

    /// IPv4 contacts in the snapshot.
    pub fn len4(&self) -> usize {
        self.v4.len() / SocketAddrV4::NODE_LEN
    }

    /// IPv6 contacts in the snapshot.
    pub fn len6(&self) -> usize {
        self.v6.len() / SocketAddrV6::NODE_LEN
    }

    /// Contacts in the snapshot, both families.
    pub fn len(&self) -> usize {
        self.len4() + self.len6()
    }

    /// True when the snapshot holds no contact.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Writes the snapshot to `path` atomically and durably, in the format [`Rings::load`]
    /// reads (version 2).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        crate::util::atomic_write_with(path, |f| {
            f.write_all(MAGIC_PREFIX)?;
            f.write_all(&[VERSION_2])?;
            f.write_all(&(self.len4() as u64).to_le_bytes())?;
            f.write_all(&(self.len6() as u64).to_le_bytes())?;
            f.write_all(&self.v4)?;
            f.write_all(&self.v6)
        })
    }
}

/// Verified contacts of one family in insertion order, overwriting the oldest when full.
#[derive(Debug)]
pub struct NodeRing<A: NodeAddr = SocketAddrV4> {
    /// `A::NODE_LEN`-byte compact entries, back to back; never more than `capacity` of them
    /// allocated (see [`NodeRing::grow`]).
    entries: Vec<u8>,
    capacity: usize,
    /// Next slot written.
    write: usize,
    len: usize,
    /// Next slot handed out.
    read: usize,
    /// The hosts present ([`host_key`]).
    hosts: RecentSet,
    /// One entry's bytes, reused to overwrite a slot.
    slot: Vec<u8>,
    _family: std::marker::PhantomData<A>,
}

/// The IPv6 ring.
pub type NodeRing6 = NodeRing<SocketAddrV6>;

impl<A: NodeAddr> NodeRing<A> {
    /// An empty ring of `capacity` contacts (at least 1). The host filters are sized for the
    /// capacity at once; the entries grow as the ring fills.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        NodeRing {
            entries: Vec::new(),
            capacity,
            write: 0,
            len: 0,
            read: 0,
            // One generation per ring's worth of inserts: a host that rotated out of the
            // ring is forgotten at most one generation later.
            hosts: RecentSet::new(capacity),
            slot: Vec::with_capacity(A::NODE_LEN),
            _family: std::marker::PhantomData,
        }
    }

    /// Contacts held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no contact is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Contacts held at most; beyond it each insert overwrites the oldest.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the host of `ip` (an IPv6 address's `/64`) already has an entry (probably: a
    /// Bloom filter, ~1 % false positives, which only costs that host a place).
    pub fn has_host(&self, ip: IpAddr) -> bool {
        self.hosts.contains(host_key(ip))
    }

    /// Adds a contact unless its host is already present. Returns whether it was added.
    pub fn insert(&mut self, c: &Contact<A>) -> bool {
        if self.has_host(c.addr.ip_addr()) {
            return false;
        }
        self.put(c);
        true
    }

    /// Makes room for one more entry at the end without ever allocating past `capacity`
    /// entries: plain `Vec` doubling would let a full 1M-entry ring hold up to twice the
    /// bytes it uses, which is what a router has least of.
    fn grow(&mut self) {
        if self.entries.len() == self.entries.capacity() {
            let have = self.entries.len() / A::NODE_LEN;
            let more = have.max(1024).min(self.capacity - have);
            self.entries.reserve_exact(more * A::NODE_LEN);
        }
    }

    /// Writes a contact into the next slot without the duplicate check (the Bloom filter's
    /// false positives would otherwise drop a few saved entries on every restart).
    fn put(&mut self, c: &Contact<A>) {
        let at = self.write * A::NODE_LEN;
        if at == self.entries.len() {
            self.grow();
            c.write_compact(&mut self.entries);
        } else {
            self.slot.clear();
            c.write_compact(&mut self.slot);
            self.entries[at..at + A::NODE_LEN].copy_from_slice(&self.slot);
        }
        self.hosts.insert(host_key(c.addr.ip_addr()));
        self.write = (self.write + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    /// Appends up to `n` compact contacts to `out`, continuing round-robin from where the
    /// last call stopped so successive requesters get different nodes; entries of the host
    /// `exclude` (the requester itself, by [`host_key`]) are skipped.
    pub fn take(&mut self, n: usize, exclude: Option<u64>, out: &mut Vec<u8>) {
        let mut given = 0;
        for _ in 0..self.len {
            if given >= n {
                break;
            }
            let i = self.read % self.len;
            self.read = (i + 1) % self.len;
            let e = &self.entries[i * A::NODE_LEN..(i + 1) * A::NODE_LEN];
            if exclude == Some(host_key_of_compact::<A>(&e[ID_LEN..])) {
                continue;
            }
            out.extend_from_slice(e);
            given += 1;
        }
    }

    /// Every contact, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Contact<A>> + '_ {
        let start = if self.len < self.capacity {
            0
        } else {
            self.write
        };
        (0..self.len).filter_map(move |k| {
            let i = (start + k) % self.capacity;
            Contact::from_compact(&self.entries[i * A::NODE_LEN..(i + 1) * A::NODE_LEN])
        })
    }

    /// Bytes of memory the ring takes (entries plus host filters): exact accounting of its
    /// heap allocations, the figure `benches/router_store.rs` reports per contact.
    pub fn memory(&self) -> usize {
        self.entries.capacity() + self.hosts.memory() + self.slot.capacity()
    }

    /// The entries, oldest first, as the file stores them.
    fn snapshot_bytes(&self) -> Vec<u8> {
        let start = if self.len < self.capacity {
            0
        } else {
            self.write
        };
        let mut bytes = Vec::with_capacity(self.len * A::NODE_LEN);
        if self.len > 0 {
            let first = (start..start + self.len)
                .take_while(|&i| i < self.capacity)
                .count();
            bytes.extend_from_slice(
                &self.entries[start * A::NODE_LEN..(start + first) * A::NODE_LEN],
            );
            bytes.extend_from_slice(&self.entries[..(self.len - first) * A::NODE_LEN]);
        }
        bytes
    }

    /// Fills the ring from a file section of `count` entries, keeping the newest
    /// `capacity` of them.
    fn fill(&mut self, body: &[u8], count: usize) {
        let skip = count.saturating_sub(self.capacity);
        for chunk in body.chunks_exact(A::NODE_LEN).skip(skip) {
            if let Some(c) = Contact::from_compact(chunk) {
                self.put(&c);
            }
        }
    }
}

/// The router's two rings: the IPv4 DHT's contacts and the IPv6 DHT's (BEP 32 keeps the
/// two DHTs apart, so a contact only ever goes to its own family's ring).
#[derive(Debug)]
pub struct Rings {
    /// IPv4 contacts, handed out in `nodes`.
    pub v4: NodeRing<SocketAddrV4>,
    /// IPv6 contacts, handed out in `nodes6`.
    pub v6: NodeRing<SocketAddrV6>,
}

impl Rings {
    /// Two empty rings: `capacity4` IPv4 contacts, `capacity6` IPv6 ones.
    pub fn new(capacity4: usize, capacity6: usize) -> Self {
        Rings {
            v4: NodeRing::new(capacity4),
            v6: NodeRing::new(capacity6),
        }
    }

    /// Contacts held, both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether both rings are empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Bytes of memory both rings take.
    pub fn memory(&self) -> usize {
        self.v4.memory() + self.v6.memory()
    }

    /// Writes both rings to `path` atomically and durably ([`crate::util::atomic_write_with`]).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        self.snapshot().save(path)
    }

    /// A copy of the contacts, oldest first, to be written elsewhere: copying 26 MB takes
    /// milliseconds, writing and fsyncing it can take seconds, and the router's one thread
    /// must not stop answering for that.
    pub fn snapshot(&self) -> RingSnapshot {
        RingSnapshot::of(&self.v4, &self.v6)
    }

    /// Loads a store written by [`Rings::save`] (version 2) or by a router before IPv6
    /// (version 1: IPv4 only) into rings of `capacity4` and `capacity6` contacts (the
    /// newest entries win when the file holds more). A missing file is an empty store.
    pub fn load(path: &Path, capacity4: usize, capacity6: usize) -> Result<Rings, StoreError> {
        let mut rings = Rings::new(capacity4, capacity6);
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(rings),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (n4, n6, body) = parse(path, &data)?;
        let (b4, b6) = body.split_at(n4 * SocketAddrV4::NODE_LEN);
        rings.v4.fill(b4, n4);
        rings.v6.fill(b6, n6);
        Ok(rings)
    }
}

/// Reads a store file's header and checks its body's length: the IPv4 and IPv6 entry
/// counts and the entries (IPv4 first).
fn parse<'a>(path: &Path, data: &'a [u8]) -> Result<(usize, usize, &'a [u8]), StoreError> {
    let count = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize;
    if data.len() < 8 || &data[..7] != MAGIC_PREFIX {
        return Err(StoreError::NotAStore {
            path: path.to_path_buf(),
        });
    }
    let (n4, n6, body) = match data[7] {
        VERSION_1 if data.len() >= 16 => (count(&data[8..16]), 0, &data[16..]),
        VERSION_2 if data.len() >= 24 => (count(&data[8..16]), count(&data[16..24]), &data[24..]),
        VERSION_1 | VERSION_2 => {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
            });
        }
        other => {
            return Err(StoreError::UnsupportedVersion {
                path: path.to_path_buf(),
                version: other,
            });
        }
    };
    let want = n4
        .checked_mul(SocketAddrV4::NODE_LEN)
        .zip(n6.checked_mul(SocketAddrV6::NODE_LEN))
        .and_then(|(a, b)| a.checked_add(b));
    if want != Some(body.len()) {
        return Err(StoreError::Truncated {
            path: path.to_path_buf(),
            bytes: body.len(),
            entries: n4.saturating_add(n6),
        });
    }
    Ok((n4, n6, body))
}

/// The file the router keeps its store in, inside its data directory.
pub fn store_file(dir: &Path) -> std::path::PathBuf {
    dir.join("router-nodes.bin")
}

/// Contacts of a compact buffer (for tests and tools).
pub fn contacts_of(buf: &[u8]) -> Vec<SocketAddrV4> {
    crate::dht::id::compact_nodes(buf).map(|c| c.addr).collect()
}

/// Contacts of a compact IPv6 buffer (`nodes6`; for tests and tools).
pub fn contacts6_of(buf: &[u8]) -> Vec<SocketAddrV6> {
    crate::dht::id::compact_nodes(buf).map(|c| c.addr).collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dht::id::NodeId;

    fn c(i: u32) -> Contact {
        Contact::new(
            NodeId([i as u8; 20]),
            SocketAddrV4::new(Ipv4Addr::from(0x7f00_0000 + i), 6881),
        )
    }

    /// An IPv6 contact in its own `/64` (fd77:0:0:i::1).
    fn c6(i: u32) -> Contact<SocketAddrV6> {
        let ip = std::net::Ipv6Addr::new(0xfd77, 0, 0, i as u16, 0, 0, 0, 1);
        Contact::new(NodeId([i as u8; 20]), SocketAddrV6::new(ip, 6881, 0, 0))
    }

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::new(10_000, RandomState::new());
        for i in 0..10_000u64 {
            b.insert(i);
        }
        assert!((0..10_000u64).all(|i| b.contains(i)));
        let fp = (1_000_000..1_100_000u64).filter(|i| b.contains(*i)).count();
        assert!(fp < 2_000, "false positives {fp} of 100000");
    }

    #[test]
    fn host_keys_are_ipv4_addresses_and_ipv6_slash_64s() {
        let k = |s: &str| host_key(s.parse().unwrap());
        assert_ne!(k("127.0.0.1"), k("127.0.0.2"));
        assert_eq!(k("::ffff:127.0.0.1"), k("127.0.0.1"), "mapped is IPv4");
        assert_eq!(k("fd77::1"), k("fd77::2"), "one /64, one host");
        assert_ne!(k("fd77::1"), k("fd77:0:0:1::1"));
        let mut compact = Vec::new();
        c6(5).addr.write_compact(&mut compact);
        assert_eq!(
            host_key_of_compact::<SocketAddrV6>(&compact),
            host_key(c6(5).addr.ip_addr())
        );
        compact.clear();
        c(5).addr.write_compact(&mut compact);
        assert_eq!(
            host_key_of_compact::<SocketAddrV4>(&compact),
            host_key(c(5).addr.ip_addr())
        );
    }

    #[test]
    fn ring_overwrites_oldest_rotates_and_dedups_ips() {
        let mut r = NodeRing::new(4);
        for i in 1..=6 {
            assert!(r.insert(&c(i)));
        }
        assert!(!r.insert(&c(6)), "one entry per IP");
        assert_eq!(r.len(), 4);
        let all: Vec<_> = r.iter().map(|x| x.addr).collect();
        assert_eq!(all, (3..=6).map(|i| c(i).addr).collect::<Vec<_>>());
        let mut out = Vec::new();
        r.take(3, None, &mut out);
        let mut out2 = Vec::new();
        r.take(3, Some(host_key(c(5).addr.ip_addr())), &mut out2);
        let (a, b) = (contacts_of(&out), contacts_of(&out2));
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 3);
        assert!(
            !b.contains(&c(5).addr),
            "the requester is not handed itself"
        );
        assert_ne!(a, b, "successive replies rotate");
    }

    /// The IPv6 ring: bounded like the IPv4 one, one entry per `/64`, 38-byte entries, and
    /// it never allocates past its capacity.
    #[test]
    fn ipv6_ring_is_bounded_and_keeps_one_entry_per_slash_64() {
        let mut r = NodeRing6::new(4);
        for i in 1..=6 {
            assert!(r.insert(&c6(i)));
        }
        let same_64 = Contact::new(
            NodeId([9; 20]),
            SocketAddrV6::new("fd77:0:0:6::2".parse().unwrap(), 7000, 0, 0),
        );
        assert!(!r.insert(&same_64), "another address of a /64 already held");
        assert_eq!(r.len(), 4);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            (3..=6).map(c6).collect::<Vec<_>>()
        );
        let mut out = Vec::new();
        r.take(8, Some(host_key(same_64.addr.ip_addr())), &mut out);
        assert_eq!(out.len(), 3 * 38, "the requester's /64 is left out");
        assert_eq!(contacts6_of(&out).len(), 3);
        assert!(r.memory() >= 4 * 38);
        assert!(
            r.entries.capacity() <= 4 * 38,
            "never allocated past capacity: {}",
            r.entries.capacity()
        );
    }

    #[test]
    fn save_and_load_round_trip_both_families_and_reject_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_file(dir.path());
        let mut r = Rings::new(100, 100);
        for i in 1..=50 {
            r.v4.insert(&c(i));
        }
        for i in 1..=30 {
            r.v6.insert(&c6(i));
        }
        r.save(&path).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data.starts_with(b"TLROUTE2"));
        let back = Rings::load(&path, 100, 100).unwrap();
        assert_eq!(
            back.v4.iter().collect::<Vec<_>>(),
            r.v4.iter().collect::<Vec<_>>()
        );
        assert_eq!(
            back.v6.iter().collect::<Vec<_>>(),
            r.v6.iter().collect::<Vec<_>>()
        );
        assert!(back.v6.len() >= 27, "{}", back.v6.len());
        let small = Rings::load(&path, 10, 10).unwrap();
        // The newest ten of what each ring holds (its host filter may, rarely, have refused
        // an insert as a probable duplicate, so the expectation comes from the ring itself).
        let all: Vec<_> = r.v4.iter().collect();
        assert!(all.len() >= 45, "{}", all.len());
        assert_eq!(
            small.v4.iter().collect::<Vec<_>>(),
            all[all.len() - 10..],
            "newest entries kept"
        );
        let all6: Vec<_> = r.v6.iter().collect();
        assert_eq!(small.v6.iter().collect::<Vec<_>>(), all6[all6.len() - 10..]);
        assert!(
            Rings::load(&dir.path().join("missing"), 10, 10)
                .unwrap()
                .is_empty()
        );
        std::fs::write(&path, b"TLROUTE1\x05\0\0\0\0\0\0\0short").unwrap();
        assert!(matches!(
            Rings::load(&path, 10, 10),
            Err(StoreError::Truncated { entries: 5, .. })
        ));
        // Version 2 counts the IPv6 entries at 38 bytes: 26 bytes are not one of them.
        let mut v2 = b"TLROUTE2".to_vec();
        v2.extend_from_slice(&0u64.to_le_bytes());
        v2.extend_from_slice(&1u64.to_le_bytes());
        v2.extend_from_slice(&[0; 26]);
        std::fs::write(&path, &v2).unwrap();
        assert!(matches!(
            Rings::load(&path, 10, 10),
            Err(StoreError::Truncated { entries: 1, .. })
        ));
        // Counts that overflow the length computation are an error, not a panic.
        let mut huge = b"TLROUTE2".to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(matches!(
            Rings::load(&path, 10, 10),
            Err(StoreError::Truncated { .. })
        ));
        std::fs::write(&path, b"TLROUTE9\0\0\0\0\0\0\0\0").unwrap();
        let e = Rings::load(&path, 10, 10).unwrap_err();
        assert!(
            matches!(e, StoreError::UnsupportedVersion { version: b'9', .. }),
            "{e}"
        );
        for garbage in [&b"garbage"[..], b"TLROUTE2\0\0", b"TLROUTE"] {
            std::fs::write(&path, garbage).unwrap();
            assert!(matches!(
                Rings::load(&path, 10, 10),
                Err(StoreError::NotAStore { .. })
            ));
        }
    }

    /// A store written before the router served IPv6 (version 1, built here byte by byte
    /// as that code wrote it) loads as the IPv4 ring, with an empty IPv6 ring; saving it
    /// again writes version 2 with the same contacts.
    #[test]
    fn a_version_1_store_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_file(dir.path());
        let mut old = b"TLROUTE1".to_vec();
        old.extend_from_slice(&3u64.to_le_bytes());
        for i in 1..=3u8 {
            old.extend_from_slice(&[i; 20]);
            old.extend_from_slice(&[127, 0, 9, i]);
            old.extend_from_slice(&6881u16.to_be_bytes());
        }
        assert_eq!(old.len(), 16 + 3 * 26);
        std::fs::write(&path, &old).unwrap();
        let rings = Rings::load(&path, 100, 100).unwrap();
        let want: Vec<Contact> = (1..=3u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new(Ipv4Addr::new(127, 0, 9, i), 6881),
                )
            })
            .collect();
        assert_eq!(rings.v4.iter().collect::<Vec<_>>(), want);
        assert!(rings.v6.is_empty());
        rings.save(&path).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data.starts_with(b"TLROUTE2"));
        assert_eq!(data.len(), 24 + 3 * 26);
        assert_eq!(
            &data[24..],
            &old[16..],
            "the same entries, in the same order"
        );
        let again = Rings::load(&path, 100, 100).unwrap();
        assert_eq!(again.v4.iter().collect::<Vec<_>>(), want);
    }

    #[test]
    fn snapshot_of_a_wrapped_ring_saves_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_file(dir.path());
        let mut r = Rings::new(5, 5);
        for i in 1..=8 {
            r.v4.insert(&c(i));
            r.v6.insert(&c6(i));
        }
        let snap = r.snapshot();
        assert_eq!((snap.len4(), snap.len6()), (5, 5));
        // The rings keep changing while the snapshot is written elsewhere.
        r.v4.insert(&c(9));
        r.v6.insert(&c6(9));
        snap.save(&path).unwrap();
        let back = Rings::load(&path, 5, 5).unwrap();
        assert_eq!(
            back.v4.iter().map(|x| x.addr).collect::<Vec<_>>(),
            (4..=8).map(|i| c(i).addr).collect::<Vec<_>>()
        );
        assert_eq!(
            back.v6.iter().collect::<Vec<_>>(),
            (4..=8).map(c6).collect::<Vec<_>>()
        );
        assert!(Rings::new(3, 3).snapshot().is_empty());
    }
}
