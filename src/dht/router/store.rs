//! The router's node store: a fixed-capacity ring of verified contacts (26 bytes each, no
//! per-entry overhead), a two-generation Bloom filter for one-entry-per-IP, and a flat file
//! that loads in one read.
//!
//! 10M contacts are 260 MB of ring plus ~24 MB of filters, which is why entries are packed
//! bytes rather than structs in a map: the point of a bootstrap router is holding many fresh,
//! diverse contacts cheaply.

use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use crate::dht::id::{COMPACT_NODE_LEN, Contact};

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
    fn positions(&self, key: u32) -> [u64; BLOOM_K as usize] {
        let h = self.hasher.hash_one(key);
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        std::array::from_fn(|i| h1.wrapping_add((i as u64).wrapping_mul(h2)) % self.nbits)
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: u32) {
        for p in self.positions(key) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// Whether `key` was probably inserted: never a false negative, about 1 % false
    /// positives once `n` items are in.
    pub fn contains(&self, key: u32) -> bool {
        self.positions(key)
            .iter()
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Bytes of memory the bit array takes.
    pub fn memory(&self) -> usize {
        self.bits.len() * 8
    }
}

/// A "seen recently" set that forgets: inserts go to the current generation, lookups check
/// both, and after `generation` inserts the older one is dropped.
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
    /// inserted IP is remembered for one to two generations' worth of inserts.
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

    /// Whether `ip` was probably inserted in the current or the previous generation.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let k = u32::from(ip);
        self.current.contains(k) || self.previous.contains(k)
    }

    /// Records `ip`; the insert that fills the current generation starts a new one.
    pub fn insert(&mut self, ip: Ipv4Addr) {
        self.current.insert(u32::from(ip));
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

/// Magic and version at the start of the store file.
const FILE_MAGIC: &[u8; 8] = b"TLROUTE1";

/// The contacts of a [`NodeRing`] at one moment, in file order (see [`NodeRing::snapshot`]).
pub struct RingSnapshot {
    bytes: Vec<u8>,
}

impl RingSnapshot {
    /// Contacts in the snapshot.
    pub fn len(&self) -> usize {
        self.bytes.len() / COMPACT_NODE_LEN
    }

    /// True when the snapshot holds no contact.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes the snapshot to `path` atomically and durably, in the format
    /// [`NodeRing::load`] reads.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        crate::util::atomic_write_with(path, |f| {
            f.write_all(FILE_MAGIC)?;
            f.write_all(&(self.len() as u64).to_le_bytes())?;
            f.write_all(&self.bytes)
        })
    }
}

/// Verified contacts in insertion order, overwriting the oldest when full.
#[derive(Debug)]
pub struct NodeRing {
    entries: Vec<u8>,
    capacity: usize,
    /// Next slot written.
    write: usize,
    len: usize,
    /// Next slot handed out.
    read: usize,
    ips: RecentSet,
}

impl NodeRing {
    /// An empty ring of `capacity` contacts (at least 1). The IP filters are sized for the
    /// capacity at once; the entries grow as the ring fills.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        NodeRing {
            entries: Vec::new(),
            capacity,
            write: 0,
            len: 0,
            read: 0,
            // One generation per ring's worth of inserts: an IP that rotated out of the
            // ring is forgotten at most one generation later.
            ips: RecentSet::new(capacity),
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

    /// Whether `ip` already has an entry (probably: a Bloom filter, ~1 % false positives,
    /// which only costs that IP a place).
    pub fn has_ip(&self, ip: Ipv4Addr) -> bool {
        self.ips.contains(ip)
    }

    /// Adds a contact unless its IP is already present. Returns whether it was added.
    pub fn insert(&mut self, c: &Contact) -> bool {
        if self.has_ip(*c.addr.ip()) {
            return false;
        }
        self.put(c);
        true
    }

    /// Writes a contact into the next slot without the duplicate check (the Bloom filter's
    /// false positives would otherwise drop a few saved entries on every restart).
    fn put(&mut self, c: &Contact) {
        let at = self.write * COMPACT_NODE_LEN;
        if at == self.entries.len() {
            c.write_compact(&mut self.entries);
        } else {
            let slot = &mut self.entries[at..at + COMPACT_NODE_LEN];
            slot[..20].copy_from_slice(&c.id.0);
            slot[20..].copy_from_slice(&crate::dht::id::compact_peer_bytes(c.addr));
        }
        self.ips.insert(*c.addr.ip());
        self.write = (self.write + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    /// Appends up to `n` compact contacts to `out`, continuing round-robin from where the
    /// last call stopped so successive requesters get different nodes; entries at
    /// `exclude` (the requester itself) are skipped.
    pub fn take(&mut self, n: usize, exclude: Ipv4Addr, out: &mut Vec<u8>) {
        let mut given = 0;
        for _ in 0..self.len {
            if given >= n {
                break;
            }
            let i = self.read % self.len;
            self.read = (i + 1) % self.len;
            let e = &self.entries[i * COMPACT_NODE_LEN..(i + 1) * COMPACT_NODE_LEN];
            if e[20..24] == exclude.octets() {
                continue;
            }
            out.extend_from_slice(e);
            given += 1;
        }
    }

    /// Every contact, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Contact> + '_ {
        let start = if self.len < self.capacity {
            0
        } else {
            self.write
        };
        (0..self.len).filter_map(move |k| {
            let i = (start + k) % self.capacity;
            Contact::from_compact(&self.entries[i * COMPACT_NODE_LEN..(i + 1) * COMPACT_NODE_LEN])
        })
    }

    /// Bytes of memory the store takes (ring plus filters).
    pub fn memory(&self) -> usize {
        self.entries.capacity() + self.ips.memory()
    }

    /// Writes the store to `path` atomically and durably ([`crate::util::atomic_write_with`]).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        self.snapshot().save(path)
    }

    /// A copy of the contacts, oldest first, to be written elsewhere: copying 26 MB takes
    /// milliseconds, writing and fsyncing it can take seconds, and the router's one thread
    /// must not stop answering for that.
    pub fn snapshot(&self) -> RingSnapshot {
        let start = if self.len < self.capacity {
            0
        } else {
            self.write
        };
        let mut bytes = Vec::with_capacity(self.len * COMPACT_NODE_LEN);
        if self.len > 0 {
            let first = (start..start + self.len)
                .take_while(|&i| i < self.capacity)
                .count();
            bytes.extend_from_slice(
                &self.entries[start * COMPACT_NODE_LEN..(start + first) * COMPACT_NODE_LEN],
            );
            bytes.extend_from_slice(&self.entries[..(self.len - first) * COMPACT_NODE_LEN]);
        }
        RingSnapshot { bytes }
    }

    /// Loads a store written by [`NodeRing::save`] into a ring of `capacity` (the newest
    /// entries win when the file holds more). A missing file is an empty store.
    pub fn load(path: &Path, capacity: usize) -> Result<NodeRing, StoreError> {
        let ring = NodeRing::new(capacity);
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ring),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut ring = ring;
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if data.len() < 16 || &data[..8] != FILE_MAGIC {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
            });
        }
        let count = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes")) as usize;
        let body = &data[16..];
        if body.len() != count.saturating_mul(COMPACT_NODE_LEN) {
            return Err(StoreError::Truncated {
                path: path.to_path_buf(),
                bytes: body.len(),
                entries: count,
            });
        }
        let skip = count.saturating_sub(capacity);
        for chunk in body.chunks_exact(COMPACT_NODE_LEN).skip(skip) {
            if let Some(c) = Contact::from_compact(chunk) {
                ring.put(&c);
            }
        }
        Ok(ring)
    }
}

/// The file the router keeps its store in, inside its data directory.
pub fn store_file(dir: &Path) -> std::path::PathBuf {
    dir.join("router-nodes.bin")
}

/// Contacts of a compact buffer (for tests and tools).
pub fn contacts_of(buf: &[u8]) -> Vec<SocketAddrV4> {
    crate::dht::id::compact_nodes(buf).map(|c| c.addr).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::id::NodeId;

    fn c(i: u32) -> Contact {
        Contact::new(
            NodeId([i as u8; 20]),
            SocketAddrV4::new(Ipv4Addr::from(0x7f00_0000 + i), 6881),
        )
    }

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::new(10_000, RandomState::new());
        for i in 0..10_000u32 {
            b.insert(i);
        }
        assert!((0..10_000u32).all(|i| b.contains(i)));
        let fp = (1_000_000..1_100_000u32).filter(|i| b.contains(*i)).count();
        assert!(fp < 2_000, "false positives {fp} of 100000");
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
        r.take(3, Ipv4Addr::UNSPECIFIED, &mut out);
        let mut out2 = Vec::new();
        r.take(3, *c(5).addr.ip(), &mut out2);
        let (a, b) = (contacts_of(&out), contacts_of(&out2));
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 3);
        assert!(
            !b.contains(&c(5).addr),
            "the requester is not handed itself"
        );
        assert_ne!(a, b, "successive replies rotate");
    }

    #[test]
    fn save_and_load_round_trip_and_reject_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_file(dir.path());
        let mut r = NodeRing::new(100);
        for i in 1..=50 {
            r.insert(&c(i));
        }
        r.save(&path).unwrap();
        let back = NodeRing::load(&path, 100).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            r.iter().collect::<Vec<_>>()
        );
        let small = NodeRing::load(&path, 10).unwrap();
        // The newest ten of what the ring holds (its IP filter may, rarely, have refused an
        // insert as a probable duplicate, so the expectation comes from the ring itself).
        let all: Vec<_> = r.iter().collect();
        assert!(all.len() >= 45, "{}", all.len());
        assert_eq!(
            small.iter().collect::<Vec<_>>(),
            all[all.len() - 10..],
            "newest entries kept"
        );
        assert!(
            NodeRing::load(&dir.path().join("missing"), 10)
                .unwrap()
                .is_empty()
        );
        std::fs::write(&path, b"TLROUTE1\x05\0\0\0\0\0\0\0short").unwrap();
        assert!(matches!(
            NodeRing::load(&path, 10),
            Err(StoreError::Truncated { entries: 5, .. })
        ));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            NodeRing::load(&path, 10),
            Err(StoreError::NotAStore { .. })
        ));
    }

    #[test]
    fn snapshot_of_a_wrapped_ring_saves_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_file(dir.path());
        let mut r = NodeRing::new(5);
        for i in 1..=8 {
            r.insert(&c(i));
        }
        let snap = r.snapshot();
        assert_eq!(snap.len(), 5);
        // The ring keeps changing while the snapshot is written elsewhere.
        r.insert(&c(9));
        snap.save(&path).unwrap();
        let back = NodeRing::load(&path, 5).unwrap();
        assert_eq!(
            back.iter().map(|x| x.addr).collect::<Vec<_>>(),
            (4..=8).map(|i| c(i).addr).collect::<Vec<_>>()
        );
        assert!(NodeRing::new(3).snapshot().is_empty());
    }
}
