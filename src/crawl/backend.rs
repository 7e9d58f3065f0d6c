//! The store the crawl writes to: the embedded sled store (zero setup, one process) or
//! PostgreSQL (many crawlers, one database). One enum rather than a trait object so the
//! crawl loop, the export and the web page call the same methods on either, and the sled
//! path stays exactly as it was.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use super::pg::PgStore;
use super::store::{CrawlStore, Flushed, Record, StoreError, SwarmEstimate, TorrentMeta};
use crate::dht::id::InfoHash;

/// Either crawl store. See the module docs.
pub enum Store {
    /// The embedded sled store (a directory, one process).
    Sled(CrawlStore),
    /// A PostgreSQL database (a `postgres://` URL, shared by many crawlers).
    Postgres(PgStore),
}

impl From<CrawlStore> for Store {
    fn from(s: CrawlStore) -> Self {
        Store::Sled(s)
    }
}

impl From<PgStore> for Store {
    fn from(s: PgStore) -> Self {
        Store::Postgres(s)
    }
}

/// Whether a `--store` value names a PostgreSQL database rather than the sled store.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl Store {
    /// Where the store is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Store::Sled(s) => s.path().display().to_string(),
            Store::Postgres(s) => format!("postgres {}", s.target()),
        }
    }

    /// Write outbox entries for new records, for the `--out` file at `out`.
    pub fn set_outbox(&mut self, out: Option<&Path>) {
        match self {
            Store::Sled(s) => s.set_outbox(out.is_some()),
            Store::Postgres(s) => s.set_outbox(out.map(|p| {
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.to_path_buf())
                    .display()
                    .to_string()
            })),
        }
    }

    /// Durable records: what flushes made durable (on PostgreSQL, those in the database at
    /// open plus ours since).
    pub fn count(&self) -> u64 {
        match self {
            Store::Sled(s) => s.count(),
            Store::Postgres(s) => s.count(),
        }
    }

    /// Sightings and metadata waiting for the next flush.
    pub fn pending(&self) -> usize {
        match self {
            Store::Sled(s) => s.pending(),
            Store::Postgres(s) => s.pending(),
        }
    }

    /// Records a sighting of `ih` at `now` (unix seconds) by way of `how` (`HOW_*` bits),
    /// with the announced `peer` if any; buffered until the next flush.
    pub fn note_at(&mut self, ih: InfoHash, how: u8, peer: Option<SocketAddr>, now: u64) {
        match self {
            Store::Sled(s) => s.note_at(ih, how, peer, now),
            Store::Postgres(s) => s.note_at(ih, how, peer, now),
        }
    }

    /// [`Self::note_at`] with the current time.
    pub fn note(&mut self, ih: InfoHash, how: u8, peer: Option<SocketAddr>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.note_at(ih, how, peer, now);
    }

    /// Whether `ih` was seen before: stored or pending on sled, seen by this process on
    /// PostgreSQL (a hint for steering the walk, not an answer to "is it new").
    pub fn is_known(&self, ih: &InfoHash) -> bool {
        match self {
            Store::Sled(s) => s.is_known(ih),
            Store::Postgres(s) => s.is_known(ih),
        }
    }

    /// The durable record of `ih`.
    pub fn get(&self, ih: &InfoHash) -> Result<Option<Record>, StoreError> {
        match self {
            Store::Sled(s) => Ok(s.get(ih)),
            Store::Postgres(s) => Ok(s.get(ih)?),
        }
    }

    /// The durable records (with metadata) of `ihs`; missing ones are left out.
    pub fn get_many(
        &self,
        ihs: &[InfoHash],
    ) -> Result<HashMap<InfoHash, (Record, Option<TorrentMeta>)>, StoreError> {
        match self {
            Store::Sled(s) => Ok(ihs
                .iter()
                .filter_map(|ih| Some((*ih, (s.get(ih)?, s.metadata(ih)))))
                .collect()),
            Store::Postgres(s) => Ok(s.get_many(ihs)?),
        }
    }

    /// Buffers a BEP 33 estimate of a known record's swarm until the next flush.
    pub fn set_scrape(&mut self, ih: InfoHash, e: SwarmEstimate) {
        match self {
            Store::Sled(s) => s.set_scrape(ih, e),
            Store::Postgres(s) => s.set_scrape(ih, e),
        }
    }

    /// Buffers the metadata of `ih` until the next flush.
    pub fn set_metadata(&mut self, ih: InfoHash, m: TorrentMeta) {
        match self {
            Store::Sled(s) => s.set_metadata(ih, m),
            Store::Postgres(s) => s.set_metadata(ih, m),
        }
    }

    /// The durable metadata of `ih`.
    pub fn metadata(&self, ih: &InfoHash) -> Result<Option<TorrentMeta>, StoreError> {
        match self {
            Store::Sled(s) => Ok(s.metadata(ih)),
            Store::Postgres(s) => Ok(s.metadata(ih)?),
        }
    }

    /// Makes everything buffered durable; see each store's durability contract.
    pub fn flush(&mut self) -> Result<Flushed, StoreError> {
        match self {
            Store::Sled(s) => s.flush(),
            Store::Postgres(s) => Ok(s.flush()?),
        }
    }

    /// Records whose `--out` line may not have been written yet (after a crash).
    pub fn outbox(&self) -> Result<Vec<InfoHash>, StoreError> {
        match self {
            Store::Sled(s) => Ok(s.outbox()),
            Store::Postgres(s) => Ok(s.outbox()?),
        }
    }

    /// Marks these records' `--out` lines as written.
    pub fn ack_outbox(&self, done: &[InfoHash]) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => s.ack_outbox(done),
            Store::Postgres(s) => Ok(s.ack_outbox(done)?),
        }
    }

    /// Up to `limit` durable records after `after`, in infohash order, with metadata.
    pub fn page(
        &self,
        after: Option<InfoHash>,
        limit: usize,
    ) -> Result<Vec<(InfoHash, Record, Option<TorrentMeta>)>, StoreError> {
        match self {
            Store::Sled(s) => Ok(s.page(after, limit)),
            Store::Postgres(s) => Ok(s.page(after, limit)?),
        }
    }

    /// Torrents whose name (or, on PostgreSQL, file paths) match `q`, most recently seen
    /// first: full text on PostgreSQL, a case-insensitive substring of the name on sled.
    pub fn search(
        &self,
        q: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(InfoHash, Record, Option<TorrentMeta>)>, StoreError> {
        match self {
            Store::Sled(s) => {
                let needle = q.to_lowercase();
                let mut hits: Vec<_> = s
                    .scan()
                    .filter(|(_, _, m)| {
                        m.as_ref()
                            .is_some_and(|m| m.name.to_lowercase().contains(&needle))
                    })
                    .collect();
                hits.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(&b.0)));
                Ok(hits.into_iter().skip(offset).take(limit).collect())
            }
            Store::Postgres(s) => Ok(s.search(q, offset, limit)?),
        }
    }

    /// The most recently discovered records, newest first.
    pub fn newest(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(InfoHash, Record, Option<TorrentMeta>)>, StoreError> {
        match self {
            Store::Sled(s) => {
                let mut all: Vec<_> = s.scan().collect();
                all.sort_by(|a, b| b.1.first_seen.cmp(&a.1.first_seen).then(a.0.cmp(&b.0)));
                Ok(all.into_iter().skip(offset).take(limit).collect())
            }
            Store::Postgres(s) => Ok(s.newest(offset, limit)?),
        }
    }

    /// (records, records with metadata) in the store now.
    pub fn totals(&self) -> Result<(u64, u64), StoreError> {
        match self {
            Store::Sled(s) => Ok((s.count(), s.metadata_count())),
            Store::Postgres(s) => Ok(s.totals()?),
        }
    }

    /// Retention (see each store's `prune`): drops records last seen before `older_than`
    /// (unix seconds), then the least-seen beyond `max_records`. Returns how many went.
    pub fn prune(
        &mut self,
        older_than: Option<u64>,
        max_records: Option<u64>,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sled(s) => s.prune(older_than, max_records),
            Store::Postgres(s) => Ok(s.prune(older_than, max_records)?),
        }
    }
}
