//! The crawl store on sled: infohash → when and how it was seen, a few peers, and metadata.
//!
//! Durability contract (what the README promises): sightings are buffered in memory and
//! written in one atomic sled batch per [`CrawlStore::flush`], followed by an fsync; sled's
//! own background flushing is turned off, so what is on disk is exactly what the last
//! successful flush wrote. The crawler flushes on an interval and on shutdown, and only
//! counts (and reports) records that a flush made durable, so after `kill -9` at most the
//! sightings of the last interval are lost, and nothing the crawler reported is.
//!
//! The `--out` file is kept consistent with the store through an outbox: the batch that
//! creates a record also writes an outbox key for it, and the key is removed only once the
//! JSON line has been appended and synced. After a crash, [`CrawlStore::outbox`] lists the
//! records whose lines may be missing, and the crawler writes them on its next start: the
//! out file may repeat a line after a crash, but never misses a stored record.
//!
//! Layout: one tree `records` with 20-byte infohash keys and, under keys of other lengths
//! (so they can never collide with an infohash), the record count and the outbox; metadata
//! in a second tree `meta`, since it is written independently and much larger.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dht::id::{ID_LEN, InfoHash};
use crate::util::sled_open::{self, SledError};

/// Seen in a BEP 51 sample.
pub const HOW_SAMPLE: u8 = 1;
/// Someone sent us a get_peers for it.
pub const HOW_GET_PEERS: u8 = 2;
/// Someone announced a peer for it to us (a live peer).
pub const HOW_ANNOUNCE: u8 = 4;

/// Peer addresses kept per infohash.
pub const MAX_PEERS: usize = 4;
/// Files kept per torrent's metadata (the count of all is kept too).
pub const MAX_META_FILES: usize = 10_000;

/// Version 2 adds the optional BEP 33 estimate after the peers; version 1 values (no
/// estimate) still read. Version 3 tags each peer with its family (`4` + 6 bytes, or
/// `6` + 18 bytes: BEP 32 peers announced over IPv6); it is written only for records that
/// hold an IPv6 peer, so an IPv4-only store stays readable by older versions.
const RECORD_VERSION: u8 = 2;
/// See [`RECORD_VERSION`].
const RECORD_VERSION_V6: u8 = 3;
/// Tags of a peer in a version 3 value.
const PEER_TAG_V4: u8 = 4;
const PEER_TAG_V6: u8 = 6;
const COUNT_KEY: &[u8] = b"\x00count";
const OUTBOX_PREFIX: &[u8] = b"\x00outbox/";

/// What the store knows about one infohash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds of the latest sighting.
    pub last_seen: u64,
    /// Sightings counted (samples, get_peers and announce_peer queries).
    pub times_seen: u32,
    /// `HOW_*` bits.
    pub how: u8,
    /// Announced peers (live when seen), oldest first; IPv6 ones from announces over the
    /// IPv6 DHT.
    pub peers: Vec<SocketAddr>,
    /// The newest BEP 33 scrape of the swarm (`dht-crawl --scrape`).
    pub scrape: Option<SwarmEstimate>,
}

/// A BEP 33 estimate of a swarm's size, and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmEstimate {
    /// Estimated seeds (from the `BFsd` bloom filter).
    pub seeds: u32,
    /// Estimated downloaders (from the `BFpe` bloom filter).
    pub peers: u32,
    /// Unix seconds.
    pub at: u64,
}

impl Record {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let n = self.peers.len().min(MAX_PEERS);
        let tagged = self.peers[..n].iter().any(SocketAddr::is_ipv6);
        out.push(if tagged {
            RECORD_VERSION_V6
        } else {
            RECORD_VERSION
        });
        out.extend_from_slice(&self.first_seen.to_be_bytes());
        out.extend_from_slice(&self.last_seen.to_be_bytes());
        out.extend_from_slice(&self.times_seen.to_be_bytes());
        out.push(self.how);
        out.push(n as u8);
        for p in &self.peers[..n] {
            match p.ip() {
                IpAddr::V4(ip) => {
                    if tagged {
                        out.push(PEER_TAG_V4);
                    }
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(PEER_TAG_V6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&p.port().to_be_bytes());
        }
        if let Some(e) = &self.scrape {
            out.extend_from_slice(&e.seeds.to_be_bytes());
            out.extend_from_slice(&e.peers.to_be_bytes());
            out.extend_from_slice(&e.at.to_be_bytes());
        }
    }

    /// `None` for a value this version cannot read.
    pub fn decode(b: &[u8]) -> Option<Record> {
        if b.len() < 23 || !(1..=RECORD_VERSION_V6).contains(&b[0]) {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let n = usize::from(b[22]);
        if n > MAX_PEERS {
            return None;
        }
        let mut peers = Vec::with_capacity(n);
        let mut end = 23;
        for _ in 0..n {
            let tag = if b[0] == RECORD_VERSION_V6 {
                let t = *b.get(end)?;
                end += 1;
                t
            } else {
                PEER_TAG_V4
            };
            let len = match tag {
                PEER_TAG_V4 => 4,
                PEER_TAG_V6 => 16,
                _ => return None,
            };
            let c = b.get(end..end + len + 2)?;
            let ip = match tag {
                PEER_TAG_V4 => IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])),
                _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&c[..16]).ok()?)),
            };
            peers.push(SocketAddr::new(
                ip,
                u16::from_be_bytes([c[len], c[len + 1]]),
            ));
            end += len + 2;
        }
        let scrape = match b.len().checked_sub(end) {
            Some(0) => None,
            Some(16) if b[0] >= 2 => Some(SwarmEstimate {
                seeds: u32_at(end),
                peers: u32_at(end + 4),
                at: u64_at(end + 8),
            }),
            _ => return None,
        };
        Some(Record {
            first_seen: u64_at(1),
            last_seen: u64_at(9),
            times_seen: u32::from_be_bytes(b[17..21].try_into().expect("4 bytes")),
            how: b[21],
            peers,
            scrape,
        })
    }

    /// The `HOW_*` bits as words.
    pub fn how_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (bit, name) in [
            (HOW_SAMPLE, "sample"),
            (HOW_GET_PEERS, "get_peers"),
            (HOW_ANNOUNCE, "announce"),
        ] {
            if self.how & bit != 0 {
                v.push(name);
            }
        }
        v
    }

    /// One more sighting at `now` (unix seconds).
    pub(crate) fn note(&mut self, how: u8, peer: Option<SocketAddr>, now: u64) {
        self.last_seen = self.last_seen.max(now);
        self.times_seen = self.times_seen.saturating_add(1);
        self.how |= how;
        if let Some(p) = peer {
            add_peer(&mut self.peers, p);
        }
    }

    pub(crate) fn merge(&mut self, s: &Record) {
        self.first_seen = self.first_seen.min(s.first_seen);
        self.last_seen = self.last_seen.max(s.last_seen);
        self.times_seen = self.times_seen.saturating_add(s.times_seen);
        self.how |= s.how;
        for p in &s.peers {
            add_peer(&mut self.peers, *p);
        }
        if let Some(e) = s.scrape
            && self.scrape.is_none_or(|o| o.at <= e.at)
        {
            self.scrape = Some(e);
        }
    }

    /// A pending entry that carries only an estimate: no sighting (times_seen 0), and
    /// last_seen 0 so that merging it into the stored record moves nothing but the estimate.
    pub(crate) fn scrape_only(e: SwarmEstimate) -> Record {
        Record {
            first_seen: e.at,
            last_seen: 0,
            times_seen: 0,
            how: 0,
            peers: Vec::new(),
            scrape: Some(e),
        }
    }
}

/// Keeps the newest `MAX_PEERS` distinct peers. An IPv4-mapped IPv6 address is kept as the
/// IPv4 one (one peer, one form), and a scope id is dropped (it means nothing elsewhere).
fn add_peer(peers: &mut Vec<SocketAddr>, p: SocketAddr) {
    let p = SocketAddr::new(p.ip().to_canonical(), p.port());
    if let Some(i) = peers.iter().position(|x| *x == p) {
        peers.remove(i);
    } else if peers.len() >= MAX_PEERS {
        peers.remove(0);
    }
    peers.push(p);
}

/// A torrent's metadata as stored (from its verified info dict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorrentMeta {
    /// The info dict's `name` (lossily decoded if not UTF-8).
    pub name: String,
    /// Sum of the file lengths in bytes.
    pub total_size: u64,
    /// Number of files (all of them, even when `files` is cut at [`MAX_META_FILES`]).
    pub file_count: u64,
    /// The files in torrent order, at most [`MAX_META_FILES`].
    pub files: Vec<MetaFile>,
    /// Unix seconds.
    pub fetched_at: u64,
}

/// One file of a torrent: its path inside the torrent (`/`-joined) and length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Path inside the torrent, `/`-joined (the name, for a single-file torrent).
    pub path: String,
    /// Length in bytes.
    pub length: u64,
}

impl TorrentMeta {
    /// From a verified info dict; `None` when it does not parse as one. Names and paths
    /// that are not UTF-8 (common in older torrents, e.g. GBK or Latin-1 names without a
    /// `name.utf-8`) are a reason to refuse a torrent for download, not to lose it from an
    /// index: they are kept with each invalid byte sequence as U+FFFD.
    pub fn from_info(raw: &[u8], fetched_at: u64) -> Option<TorrentMeta> {
        let Ok(info) = crate::torrent::metainfo::Info::from_bytes(raw) else {
            return Self::from_info_lossy(raw, fetched_at);
        };
        // BEP 47 pad files are alignment, not content: left out of the counts and the list,
        // as the lenient reading below leaves them out, so a torrent is indexed with the
        // same figures whichever reading took it.
        let real = || info.files.iter().filter(|f| !f.pad);
        Some(TorrentMeta {
            name: info.name.clone(),
            total_size: real().map(|f| f.length).sum(),
            file_count: real().count() as u64,
            files: real()
                .take(MAX_META_FILES)
                .map(|f| MetaFile {
                    path: if info.single_file {
                        info.name.clone()
                    } else {
                        f.path.join("/")
                    },
                    length: f.length,
                })
                .collect(),
            fetched_at,
        })
    }
}

impl TorrentMeta {
    /// The lenient reading behind [`TorrentMeta::from_info`]: only the fields an index
    /// shows (name, file paths and lengths), names decoded lossily, `.utf-8` keys preferred,
    /// BEP 47 pad files left out; still `None` for anything that is not an info dict with a
    /// name and valid lengths.
    fn from_info_lossy(raw: &[u8], fetched_at: u64) -> Option<TorrentMeta> {
        use serde_bencode::value::Value;
        let Ok(Value::Dict(d)) = serde_bencode::from_bytes::<Value>(raw) else {
            return None;
        };
        let text = |d: &std::collections::HashMap<Vec<u8>, Value>, key: &str| match d
            .get(format!("{key}.utf-8").as_bytes())
            .or_else(|| d.get(key.as_bytes()))
        {
            Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let name = text(&d, "name").filter(|n| !n.is_empty())?;
        let length = |d: &std::collections::HashMap<Vec<u8>, Value>| match d.get(&b"length"[..]) {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let mut files = Vec::new();
        let (mut total, mut count) = (0u64, 0u64);
        match d.get(&b"files"[..]) {
            Some(Value::List(list)) => {
                for f in list {
                    let Value::Dict(f) = f else { return None };
                    let len = length(f)?;
                    let pad =
                        matches!(f.get(&b"attr"[..]), Some(Value::Bytes(a)) if a.contains(&b'p'));
                    if pad {
                        continue;
                    }
                    let parts = match f.get(&b"path.utf-8"[..]).or_else(|| f.get(&b"path"[..])) {
                        Some(Value::List(p)) => p,
                        _ => return None,
                    };
                    let mut path = Vec::with_capacity(parts.len());
                    for part in parts {
                        let Value::Bytes(b) = part else { return None };
                        path.push(String::from_utf8_lossy(b).into_owned());
                    }
                    total = total.checked_add(len)?;
                    count += 1;
                    if files.len() < MAX_META_FILES {
                        files.push(MetaFile {
                            path: path.join("/"),
                            length: len,
                        });
                    }
                }
            }
            None => {
                let len = length(&d)?;
                total = len;
                count = 1;
                files.push(MetaFile {
                    path: name.clone(),
                    length: len,
                });
            }
            Some(_) => return None,
        }
        Some(TorrentMeta {
            name,
            total_size: total,
            file_count: count,
            files,
            fetched_at,
        })
    }
}

/// Why the store could not be used.
#[derive(Debug)]
pub enum StoreError {
    /// Another process holds it.
    Locked(PathBuf),
    /// Unreadable files.
    Corrupt(PathBuf, String),
    /// Cannot create, read or write.
    Io(PathBuf, String),
    /// The PostgreSQL store failed.
    Postgres(super::pg::PgError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked(p) => write!(
                f,
                "the crawl store at {} is in use (is dht-crawl running with this data \
                 directory? stop it first, or pass a different --data-dir)",
                p.display()
            ),
            StoreError::Corrupt(p, d) => write!(
                f,
                "the crawl store at {} is unreadable ({d}); move it aside or pass a different \
                 --data-dir",
                p.display()
            ),
            StoreError::Io(p, d) => write!(
                f,
                "cannot use the crawl store at {}: {d} (check permissions and free space)",
                p.display()
            ),
            StoreError::Postgres(e) => write!(f, "{e}"),
        }
    }
}

impl StoreError {
    /// Whether a later flush may succeed (a PostgreSQL server that went away); the crawl
    /// keeps buffering and retries instead of stopping. sled errors are never transient.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Postgres(e) if e.is_transient())
    }
}

impl From<super::pg::PgError> for StoreError {
    fn from(e: super::pg::PgError) -> Self {
        StoreError::Postgres(e)
    }
}

impl std::error::Error for StoreError {}

fn classify(path: &Path, e: sled::Error) -> StoreError {
    sled_open::classify(path, e).into()
}

impl From<SledError> for StoreError {
    fn from(e: SledError) -> Self {
        match e {
            SledError::Locked { path } => StoreError::Locked(path),
            SledError::Corrupt { path, detail } => StoreError::Corrupt(path, detail),
            SledError::Io { path, detail } => StoreError::Io(path, detail),
        }
    }
}

/// What one flush made durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// Infohashes the store did not have before.
    pub new: Vec<InfoHash>,
    /// Records that existed and were updated.
    pub updated: usize,
    /// Metadata entries written.
    pub metadata: usize,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache, bytes. sled's default (1 GiB) would dominate the crawler's memory.
    pub cache_bytes: u64,
    /// Write outbox keys for new records (the crawler sets this when it has `--out`).
    pub outbox: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_bytes: 16 << 20,
            outbox: false,
        }
    }
}

/// The crawl store. See the module docs.
pub struct CrawlStore {
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    pending: HashMap<InfoHash, Record>,
    pending_meta: Vec<(InfoHash, TorrentMeta)>,
    count: u64,
    outbox: bool,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CrawlStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<CrawlStore, StoreError> {
        let config = sled::Config::new()
            .cache_capacity(cfg.cache_bytes)
            .flush_every_ms(None);
        let db = sled_open::open(dir, config)?;
        let records = db.open_tree("records").map_err(|e| classify(dir, e))?;
        let meta = db.open_tree("meta").map_err(|e| classify(dir, e))?;
        let count = match records.get(COUNT_KEY).map_err(|e| classify(dir, e))? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8")),
            _ => records
                .iter()
                .keys()
                .filter(|k| k.as_ref().is_ok_and(|k| k.len() == ID_LEN))
                .count() as u64,
        };
        Ok(CrawlStore {
            path: dir.to_path_buf(),
            db,
            records,
            meta,
            pending: HashMap::new(),
            pending_meta: Vec::new(),
            count,
            outbox: cfg.outbox,
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether flushes write outbox keys for new records (see the module docs).
    pub fn set_outbox(&mut self, on: bool) {
        self.outbox = on;
    }

    /// Durable records (what a flush has written).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sightings waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.pending_meta.len()
    }

    /// Records a sighting at `now` (unix seconds), buffered until the next flush.
    pub fn note_at(&mut self, ih: InfoHash, how: u8, peer: Option<SocketAddr>, now: u64) {
        let r = self.pending.entry(ih).or_insert_with(|| Record {
            first_seen: now,
            last_seen: now,
            times_seen: 0,
            how: 0,
            peers: Vec::new(),
            scrape: None,
        });
        r.first_seen = r.first_seen.min(now);
        r.note(how, peer, now);
    }

    /// Records a BEP 33 estimate of a known infohash's swarm, buffered until the next
    /// flush (it never creates a record: an infohash pruned meanwhile stays gone).
    pub fn set_scrape(&mut self, ih: InfoHash, e: SwarmEstimate) {
        self.pending
            .entry(ih)
            .and_modify(|r| r.merge(&Record::scrape_only(e)))
            .or_insert_with(|| Record::scrape_only(e));
    }

    /// Records a sighting now.
    pub fn note(&mut self, ih: InfoHash, how: u8, peer: Option<SocketAddr>) {
        self.note_at(ih, how, peer, now_unix());
    }

    /// Whether the store has, or is about to write, `ih`.
    pub fn is_known(&self, ih: &InfoHash) -> bool {
        self.pending.contains_key(ih) || self.records.contains_key(ih.0).unwrap_or(false)
    }

    /// The durable record of `ih`.
    pub fn get(&self, ih: &InfoHash) -> Option<Record> {
        let v = self.records.get(ih.0).ok()??;
        Record::decode(&v)
    }

    /// Buffers metadata for `ih` until the next flush.
    pub fn set_metadata(&mut self, ih: InfoHash, m: TorrentMeta) {
        self.pending_meta.push((ih, m));
    }

    /// The durable metadata of `ih`.
    pub fn metadata(&self, ih: &InfoHash) -> Option<TorrentMeta> {
        let v = self.meta.get(ih.0).ok()??;
        serde_bencode::from_bytes(&v).ok()
    }

    /// Writes everything buffered in one atomic batch and syncs it to disk.
    pub fn flush(&mut self) -> Result<Flushed, StoreError> {
        let mut done = Flushed::default();
        if self.pending.is_empty() && self.pending_meta.is_empty() {
            return Ok(done);
        }
        let mut batch = sled::Batch::default();
        let mut buf = Vec::with_capacity(64);
        for (ih, s) in &self.pending {
            let existing = self
                .records
                .get(ih.0)
                .map_err(|e| classify(&self.path, e))?;
            let rec = match &existing {
                Some(v) => {
                    done.updated += 1;
                    // An unreadable old value is replaced, not counted again.
                    let mut r = Record::decode(v).unwrap_or_else(|| s.clone());
                    if Record::decode(v).is_some() {
                        r.merge(s);
                    }
                    r
                }
                // An estimate for a record pruned since: nothing to attach it to.
                None if s.times_seen == 0 => continue,
                None => {
                    done.new.push(*ih);
                    if self.outbox {
                        batch.insert([OUTBOX_PREFIX, &ih.0].concat(), &[][..]);
                    }
                    s.clone()
                }
            };
            rec.encode(&mut buf);
            batch.insert(&ih.0[..], &buf[..]);
        }
        let count = self.count + done.new.len() as u64;
        batch.insert(COUNT_KEY, &count.to_be_bytes()[..]);
        self.records
            .apply_batch(batch)
            .map_err(|e| classify(&self.path, e))?;
        for (ih, m) in &self.pending_meta {
            let v = serde_bencode::to_bytes(m)
                .map_err(|e| StoreError::Io(self.path.clone(), e.to_string()))?;
            self.meta
                .insert(ih.0, v)
                .map_err(|e| classify(&self.path, e))?;
        }
        done.metadata = self.pending_meta.len();
        self.db.flush().map_err(|e| classify(&self.path, e))?;
        self.count = count;
        self.pending.clear();
        self.pending_meta.clear();
        done.new.sort_unstable();
        Ok(done)
    }

    /// Records whose `--out` line may not have been written yet (see the module docs).
    pub fn outbox(&self) -> Vec<InfoHash> {
        self.records
            .scan_prefix(OUTBOX_PREFIX)
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.len() == OUTBOX_PREFIX.len() + ID_LEN)
            .filter_map(|k| InfoHash::from_slice(&k[OUTBOX_PREFIX.len()..]))
            .collect()
    }

    /// Marks these records' lines as written. Made durable by the next flush; a crash
    /// before it only repeats those lines.
    pub fn ack_outbox(&self, done: &[InfoHash]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for ih in done {
            batch.remove([OUTBOX_PREFIX, &ih.0].concat());
        }
        self.records
            .apply_batch(batch)
            .map_err(|e| classify(&self.path, e))
    }

    /// Every durable record, in infohash order. Unreadable values are skipped.
    pub fn iter(&self) -> impl Iterator<Item = (InfoHash, Record)> + '_ {
        self.records
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(k, _)| k.len() == ID_LEN)
            .filter_map(|(k, v)| Some((InfoHash::from_slice(&k)?, Record::decode(&v)?)))
    }

    /// Up to `limit` durable records after `after`, in infohash order, with metadata.
    pub fn page(
        &self,
        after: Option<InfoHash>,
        limit: usize,
    ) -> Vec<(InfoHash, Record, Option<TorrentMeta>)> {
        use std::ops::Bound;
        let start = match after {
            Some(ih) => Bound::Excluded(ih.0.to_vec()),
            None => Bound::Unbounded,
        };
        self.records
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .filter_map(|kv| kv.ok())
            .filter(|(k, _)| k.len() == ID_LEN)
            .filter_map(|(k, v)| Some((InfoHash::from_slice(&k)?, Record::decode(&v)?)))
            .take(limit)
            .map(|(ih, r)| {
                let m = self.metadata(&ih);
                (ih, r, m)
            })
            .collect()
    }

    /// Retention: removes records last seen before `older_than` (unix seconds), then, while
    /// more than `max_records` remain, the least-seen (fewest sightings, then oldest last
    /// seen) ones, with their metadata and outbox keys, in one batch made durable before
    /// this returns. A full scan: called every few minutes, not per flush. Returns how
    /// many records went.
    pub fn prune(
        &mut self,
        older_than: Option<u64>,
        max_records: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut keep: Vec<(u32, u64, InfoHash)> = Vec::new();
        let mut victims: Vec<InfoHash> = Vec::new();
        for (ih, r) in self.iter() {
            if older_than.is_some_and(|t| r.last_seen < t) {
                victims.push(ih);
            } else {
                keep.push((r.times_seen, r.last_seen, ih));
            }
        }
        if let Some(max) = max_records
            && keep.len() as u64 > max
        {
            let excess = keep.len() - max as usize;
            keep.sort_unstable();
            victims.extend(keep.drain(..excess).map(|(_, _, ih)| ih));
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let mut meta = sled::Batch::default();
        for ih in &victims {
            batch.remove(&ih.0[..]);
            batch.remove([OUTBOX_PREFIX, &ih.0].concat());
            meta.remove(&ih.0[..]);
        }
        let count = keep.len() as u64;
        batch.insert(COUNT_KEY, &count.to_be_bytes()[..]);
        self.records
            .apply_batch(batch)
            .map_err(|e| classify(&self.path, e))?;
        self.meta
            .apply_batch(meta)
            .map_err(|e| classify(&self.path, e))?;
        self.db.flush().map_err(|e| classify(&self.path, e))?;
        self.count = count;
        Ok(victims.len() as u64)
    }

    /// Every durable record with its metadata, for the web page's scans (sled has no
    /// secondary index: search and "newest" read the whole store, fine at the sizes one
    /// embedded store holds; PostgreSQL is the answer beyond).
    pub fn scan(&self) -> impl Iterator<Item = (InfoHash, Record, Option<TorrentMeta>)> + '_ {
        self.iter().map(|(ih, r)| {
            let m = self.metadata(&ih);
            (ih, r, m)
        })
    }

    /// Records with metadata.
    pub fn metadata_count(&self) -> u64 {
        self.meta.len() as u64
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ih(i: u32) -> InfoHash {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b[19] = 0xab;
        InfoHash(b)
    }

    /// Non-UTF-8 names and paths are indexed lossily; pad files are left out; junk is not.
    /// A hybrid torrent's pad files (BEP 47) are left out of the index whichever reading
    /// takes the dict: the strict one (valid names) and the lenient one (a non-UTF-8 name)
    /// give the same files, count and size.
    #[test]
    fn pad_files_are_left_out_by_both_readings() {
        let dict = |name: &[u8]| {
            let mut d = b"d5:filesl".to_vec();
            d.extend_from_slice(b"d6:lengthi5e4:pathl1:aee");
            d.extend_from_slice(b"d4:attr1:p6:lengthi16379e4:pathl4:.pad5:16379ee");
            d.extend_from_slice(b"d6:lengthi9e4:pathl1:beee");
            d.extend_from_slice(format!("4:name{}:", name.len()).as_bytes());
            d.extend_from_slice(name);
            d.extend_from_slice(b"12:piece lengthi16384e6:pieces40:");
            d.extend_from_slice(&[1; 40]);
            d.push(b'e');
            d
        };
        let strict = TorrentMeta::from_info(&dict(b"dir"), 1).expect("indexed");
        let lenient = TorrentMeta::from_info(&dict(b"d\xffr"), 1).expect("indexed");
        assert!(crate::torrent::metainfo::Info::from_bytes(&dict(b"dir")).is_ok());
        for m in [&strict, &lenient] {
            assert_eq!((m.file_count, m.total_size), (2, 14), "{m:?}");
            let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(paths, ["a", "b"]);
        }
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_lossily() {
        let raw = b"d5:filesl\
            d6:lengthi3e4:pathl3:dir3:a\xffbeed6:lengthi9e4:attr1:p4:pathl4:.pad1:9ee\
            d6:lengthi4e10:path.utf-8l5:b.txtee\
            e4:name5:gb\xc4\xe3\xba12:piece lengthi16384e6:pieces20:01234567890123456789e";
        let m = TorrentMeta::from_info(raw, 7).expect("indexed");
        assert_eq!(m.name, "gb\u{FFFD}\u{FFFD}");
        assert_eq!((m.total_size, m.file_count), (7, 2));
        assert_eq!(m.files[0].path, "dir/a\u{FFFD}b");
        assert_eq!(m.files[1].path, "b.txt");
        assert_eq!(m.fetched_at, 7);
        // Not an info dict, a negative length, no name: still refused.
        assert_eq!(TorrentMeta::from_info(b"le", 1), None);
        assert_eq!(
            TorrentMeta::from_info(b"d6:lengthi-1e4:name2:\xff\xffe", 1),
            None
        );
        assert_eq!(TorrentMeta::from_info(b"d6:lengthi1ee", 1), None);
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = Record {
            first_seen: 1,
            last_seen: 2,
            times_seen: 3,
            how: HOW_SAMPLE | HOW_ANNOUNCE,
            peers: vec![
                "127.0.0.1:80".parse().unwrap(),
                "1.2.3.4:5".parse().unwrap(),
            ],
            scrape: None,
        };
        let mut b = Vec::new();
        r.encode(&mut b);
        assert_eq!(Record::decode(&b), Some(r.clone()));
        assert_eq!(r.how_names(), ["sample", "announce"]);
        for cut in 0..b.len() {
            assert_eq!(Record::decode(&b[..cut]), None);
        }
        // A version-1 value (written before estimates existed) still reads.
        let mut v1 = b.clone();
        v1[0] = 1;
        assert_eq!(Record::decode(&v1), Some(r.clone()));
        let with = Record {
            scrape: Some(SwarmEstimate {
                seeds: 30,
                peers: 70,
                at: 99,
            }),
            ..r.clone()
        };
        let mut w = Vec::new();
        with.encode(&mut w);
        assert_eq!(Record::decode(&w), Some(with));
        for cut in (b.len() + 1)..w.len() {
            assert_eq!(Record::decode(&w[..cut]), None, "cut at {cut}");
        }
        w[0] = 1;
        assert_eq!(Record::decode(&w), None, "version 1 has no estimate");
        b[0] = 9;
        assert_eq!(Record::decode(&b), None);
    }

    /// BEP 32 peers: a record holding an IPv6 peer is written as version 3 (each peer
    /// tagged with its family), reads back, and rejects every truncation and a bad tag; a
    /// record with IPv4 peers only is still written as version 2, which older crawlers read.
    #[test]
    fn records_with_ipv6_peers_round_trip_as_version_3() {
        let v4_only = Record {
            first_seen: 1,
            last_seen: 2,
            times_seen: 3,
            how: HOW_ANNOUNCE,
            peers: vec!["127.0.0.1:80".parse().unwrap()],
            scrape: None,
        };
        let mut b = Vec::new();
        v4_only.encode(&mut b);
        assert_eq!(b[0], 2);
        let r = Record {
            peers: vec![
                "127.0.0.1:80".parse().unwrap(),
                "[fd77::6e:1]:6881".parse().unwrap(),
                "1.2.3.4:5".parse().unwrap(),
            ],
            scrape: Some(SwarmEstimate {
                seeds: 1,
                peers: 2,
                at: 3,
            }),
            ..v4_only
        };
        r.encode(&mut b);
        assert_eq!(b[0], 3);
        assert_eq!(b.len(), 23 + 7 + 19 + 7 + 16);
        assert_eq!(Record::decode(&b), Some(r.clone()));
        let peers_end = b.len() - 16;
        for cut in 0..b.len() {
            // Cut right after the peers: the same record without the estimate.
            let want = (cut == peers_end).then(|| Record {
                scrape: None,
                ..r.clone()
            });
            assert_eq!(Record::decode(&b[..cut]), want, "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[23] = 5;
        assert_eq!(Record::decode(&bad), None, "unknown family tag");
        // Merging keeps both families.
        let mut m = Record {
            peers: Vec::new(),
            ..r.clone()
        };
        m.merge(&r);
        assert_eq!(m.peers, r.peers);
    }

    /// `--scrape` estimates: the newest wins, a sighting's counters are untouched, and an
    /// estimate never creates a record.
    #[test]
    fn estimates_attach_to_records_and_never_create_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
        s.note_at(ih(1), HOW_SAMPLE, None, 1000);
        s.flush().unwrap();
        let est = |seeds, at| SwarmEstimate {
            seeds,
            peers: 7,
            at,
        };
        s.set_scrape(ih(1), est(3, 2000));
        s.set_scrape(ih(2), est(4, 2000));
        let f = s.flush().unwrap();
        assert!(f.new.is_empty(), "{f:?}");
        assert!(s.get(&ih(2)).is_none());
        let r = s.get(&ih(1)).unwrap();
        assert_eq!((r.times_seen, r.first_seen, r.last_seen), (1, 1000, 1000));
        assert_eq!(r.scrape, Some(est(3, 2000)));
        // An older estimate (from another crawler's slower flush) does not win; a
        // sighting with a newer one in the same flush keeps both.
        s.set_scrape(ih(1), est(1, 1500));
        s.flush().unwrap();
        assert_eq!(s.get(&ih(1)).unwrap().scrape, Some(est(3, 2000)));
        s.note_at(ih(1), HOW_SAMPLE, None, 3000);
        s.set_scrape(ih(1), est(9, 3000));
        s.flush().unwrap();
        let r = s.get(&ih(1)).unwrap();
        assert_eq!((r.times_seen, r.last_seen), (2, 3000));
        assert_eq!(r.scrape, Some(est(9, 3000)));
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn survives_reopen_with_counts_merges_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let peer: SocketAddr = "127.110.0.9:6000".parse().unwrap();
        let peer6: SocketAddr = "[fd77::6e:9]:6001".parse().unwrap();
        {
            let mut s = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
            for i in 0..100 {
                s.note_at(ih(i), HOW_SAMPLE, None, 1000);
            }
            s.note_at(ih(5), HOW_ANNOUNCE, Some(peer), 1010);
            s.note_at(ih(6), HOW_ANNOUNCE, Some(peer6), 1010);
            assert!(s.is_known(&ih(5)) && !s.is_known(&ih(500)));
            assert_eq!(s.count(), 0, "nothing is counted before it is durable");
            let f = s.flush().unwrap();
            assert_eq!(f.new.len(), 100);
            assert_eq!(s.count(), 100);
            s.note_at(ih(5), HOW_GET_PEERS, None, 2000);
            s.note_at(ih(100), HOW_SAMPLE, None, 2000);
            s.set_metadata(
                ih(5),
                TorrentMeta {
                    name: "x".into(),
                    total_size: 3,
                    file_count: 1,
                    files: vec![MetaFile {
                        path: "x".into(),
                        length: 3,
                    }],
                    fetched_at: 2000,
                },
            );
            let f = s.flush().unwrap();
            assert_eq!((f.new, f.updated, f.metadata), (vec![ih(100)], 1, 1));
        }
        let s = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(s.count(), 101);
        let r = s.get(&ih(5)).unwrap();
        assert_eq!(
            (r.first_seen, r.last_seen, r.times_seen, r.how),
            (1000, 2000, 3, HOW_SAMPLE | HOW_ANNOUNCE | HOW_GET_PEERS)
        );
        assert_eq!(r.peers, vec![peer]);
        assert_eq!(s.get(&ih(6)).unwrap().peers, vec![peer6]);
        assert_eq!(s.metadata(&ih(5)).unwrap().name, "x");
        assert_eq!(s.iter().count(), 101);
        assert!(s.outbox().is_empty(), "no outbox without --out");
    }

    #[test]
    fn unflushed_sightings_are_not_on_disk_and_outbox_lists_unacked() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            outbox: true,
            ..Default::default()
        };
        {
            let mut s = CrawlStore::open(dir.path(), cfg.clone()).unwrap();
            s.note_at(ih(1), HOW_SAMPLE, None, 1);
            s.note_at(ih(2), HOW_SAMPLE, None, 1);
            s.flush().unwrap();
            s.ack_outbox(&[ih(1)]).unwrap();
            s.note_at(ih(3), HOW_SAMPLE, None, 1);
            s.note_at(ih(4), HOW_SAMPLE, None, 1);
            s.flush().unwrap();
            // Lost: never flushed (what kill -9 costs).
            s.note_at(ih(5), HOW_SAMPLE, None, 1);
        }
        let s = CrawlStore::open(dir.path(), cfg).unwrap();
        assert_eq!(s.count(), 4);
        assert!(!s.is_known(&ih(5)));
        let mut o = s.outbox();
        o.sort();
        assert_eq!(o, vec![ih(2), ih(3), ih(4)]);
    }

    #[test]
    fn peers_keep_the_newest_few() {
        let mut peers = Vec::new();
        for p in 1..=6u16 {
            add_peer(&mut peers, SocketAddr::from((Ipv4Addr::LOCALHOST, p)));
        }
        // The IPv4-mapped form of a peer is that peer.
        add_peer(
            &mut peers,
            SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 4)),
        );
        let ports: Vec<u16> = peers.iter().map(|p| p.port()).collect();
        assert_eq!(ports, [3, 5, 6, 4]);
        assert!(peers.iter().all(SocketAddr::is_ipv4));
    }

    #[test]
    fn locked_and_garbage_stores_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let _s = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
        let e = CrawlStore::open(dir.path(), StoreConfig::default())
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Locked(_)), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"\xde\xad garbage").unwrap();
        std::fs::write(dir.path().join("db"), vec![0xa5u8; 50_000]).unwrap();
        let e = CrawlStore::open(dir.path(), StoreConfig::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("--data-dir"), "{e}");
    }
}
