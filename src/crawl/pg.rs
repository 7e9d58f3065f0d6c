//! The crawl store on PostgreSQL, for indexers that outgrow one process and one machine.
//!
//! Same contract as the sled store ([`super::store`]): sightings are buffered in memory and
//! written by [`PgStore::flush`] in one transaction (multi-row upserts, `ON CONFLICT
//! (info_hash) DO UPDATE`), and only what a committed transaction wrote is counted and
//! reported, so what a flush acknowledged is never lost (the server's `fsync` and
//! `synchronous_commit` make a commit durable). Several crawlers may share one database:
//! the merge of two crawlers' sightings of one infohash happens inside the upsert (min of
//! first_seen, sum of times_seen, union of the `how` bits, newest peers), rows are upserted
//! in infohash order so two concurrent flushes lock rows in the same order and cannot
//! deadlock, and `RETURNING (xmax = 0)` tells which rows this flush created, so an infohash
//! is reported as new by exactly one crawler.
//!
//! The schema is created and migrated on open from the versioned files in `migrations/`
//! (recorded in `schema_version`), under an advisory lock so crawlers starting together
//! migrate once.
//!
//! The crawl loop is synchronous with its store (sled's flush blocks too), so the store
//! talks to the server from its own thread with its own small tokio runtime: the caller
//! blocks on a reply channel, which works from inside another runtime, where `block_on`
//! would panic. That thread reconnects when the connection has dropped, so a database that
//! went away and came back costs failed flushes (whose sightings stay buffered), not the
//! crawl.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::store::{Flushed, MAX_PEERS, Record, SwarmEstimate, TorrentMeta};
use crate::dht::id::InfoHash;

/// The schema migrations, in order: (version, SQL). A database at version N gets every
/// migration above N on open.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_sightings.sql")),
    (2, include_str!("../../migrations/0002_metadata.sql")),
    (3, include_str!("../../migrations/0003_scrape.sql")),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 3;

/// Serialises migrations between crawlers starting at once (`pg_advisory_xact_lock` key).
const MIGRATION_LOCK: i64 = 0x7472_6163_6b6c_6573; // "trackles"

/// Rows per upsert statement.
const CHUNK: usize = 5_000;

/// Distinct infohashes buffered at most (while the database is unreachable); sightings of
/// further new infohashes are dropped and counted, so an outage cannot exhaust memory.
pub const MAX_BUFFERED: usize = 1_000_000;

/// Infohashes remembered for [`PgStore::is_known`] before the set is cleared.
const MAX_KNOWN: usize = 4_000_000;

/// Why the PostgreSQL store failed.
#[derive(Debug)]
pub enum PgError {
    /// The `--store` value is not a PostgreSQL connection string.
    BadUrl(tokio_postgres::Error),
    /// The server could not be reached or refused us.
    Connect {
        /// `user@host/db`, for the message (never the password).
        target: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    Query(tokio_postgres::Error),
    /// Migrating the schema to `version` failed.
    Migration {
        /// The schema version whose migration failed.
        version: i32,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The database's schema is newer than this build knows.
    TooNew {
        /// The schema version in the database.
        found: i32,
        /// The newest schema version this build knows.
        known: i32,
    },
    /// The store's connection thread is gone.
    Gone,
}

/// A tokio-postgres error with the server's message, when there is one (its own Display
/// says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::BadUrl(e) => write!(
                f,
                "not a PostgreSQL connection string ({}); expected postgres://USER@HOST/DB",
                describe(e)
            ),
            PgError::Connect { target, source } => write!(
                f,
                "cannot connect to PostgreSQL at {target}: {} (is the server running, and \
                 are --store / the PG* variables right?)",
                describe(source)
            ),
            PgError::Query(e) => write!(f, "PostgreSQL: {}", describe(e)),
            PgError::Migration { version, source } => write!(
                f,
                "migrating the crawl schema to version {version} failed: {}",
                describe(source)
            ),
            PgError::TooNew { found, known } => write!(
                f,
                "the database's crawl schema is version {found}, newer than this dht-crawl \
                 knows ({known}); upgrade dht-crawl"
            ),
            PgError::Gone => write!(f, "the PostgreSQL connection thread stopped"),
        }
    }
}

impl std::error::Error for PgError {}

impl PgError {
    /// Whether the database may come back (connection lost or refused, server shutting
    /// down or out of connections): the crawler then keeps its sightings buffered and
    /// retries, instead of stopping.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { .. } => true,
            PgError::Query(e) => {
                e.is_closed()
                    || e.as_db_error().is_some_and(|db| {
                        let code = db.code().code();
                        // 08: connection exception; 57P: operator intervention (admin
                        // shutdown, crash shutdown, cannot connect now); 53300: too many
                        // connections; 55000: e.g. the database disallows connections.
                        code.starts_with("08")
                            || code.starts_with("57P")
                            || code == "53300"
                            || code == "55000"
                    })
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Query(e)
    }
}

/// A connection config from `url` (`postgres://USER@HOST/DB`, `postgresql:///DB?host=/run/dir`
/// or `key=value` pairs), with what it leaves out taken from the `PGHOST`, `PGPORT`,
/// `PGUSER`, `PGDATABASE` and `PGPASSWORD` variables like libpq does. A host starting with
/// `/` is a Unix-socket directory.
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, PgError> {
    let mut cfg: tokio_postgres::Config = url.parse().map_err(PgError::BadUrl)?;
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if cfg.get_hosts().is_empty() {
        let hosts = var("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into());
        for h in hosts.split(',') {
            cfg.host(h);
        }
    }
    if cfg.get_ports().is_empty()
        && let Some(p) = var("PGPORT").and_then(|p| p.parse().ok())
    {
        cfg.port(p);
    }
    if cfg.get_user().is_none()
        && let Some(u) = var("PGUSER").or_else(|| var("USER"))
    {
        cfg.user(u);
    }
    if cfg.get_dbname().is_none()
        && let Some(d) = var("PGDATABASE")
    {
        cfg.dbname(d);
    }
    if cfg.get_password().is_none()
        && let Some(p) = var("PGPASSWORD")
    {
        cfg.password(p);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    cfg.application_name("dht-crawl");
    Ok(cfg)
}

/// Where `cfg` points, for messages (never the password).
pub fn describe_target(cfg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "{}@{}/{}",
        cfg.get_user().unwrap_or("?"),
        hosts.join(","),
        cfg.get_dbname().or(cfg.get_user()).unwrap_or("?")
    )
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<Client, PgError> {
    let (client, conn) = cfg.connect(NoTls).await.map_err(|e| PgError::Connect {
        target: describe_target(cfg),
        source: e,
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Migrates the schema to `upto` (at most [`SCHEMA_VERSION`]); returns the version it is at.
/// Public so tests can build the previous version's schema.
pub async fn migrate(client: &Client, upto: i32) -> Result<i32, PgError> {
    client.batch_execute("BEGIN").await?;
    let r = migrate_locked(client, upto).await;
    match r {
        Ok(v) => {
            client.batch_execute("COMMIT").await?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn migrate_locked(client: &Client, upto: i32) -> Result<i32, PgError> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // "relation already exists, skipping" notices are noise on every start.
    client
        .batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?;
    let mut current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(PgError::TooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS {
        if *version <= current || *version > upto {
            continue;
        }
        client
            .batch_execute(sql)
            .await
            .map_err(|source| PgError::Migration {
                version: *version,
                source,
            })?;
        client
            .execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[version],
            )
            .await?;
        tracing::info!("crawl schema migrated to version {version}");
        current = *version;
    }
    Ok(current)
}

type Job = Box<dyn FnOnce(Arc<Client>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A row as a flush's upsert returned it: the merged record and whether it was created.
struct Upserted {
    ih: InfoHash,
    inserted: bool,
}

/// The PostgreSQL crawl store. See the module docs.
pub struct PgStore {
    target: String,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    pending: HashMap<InfoHash, Record>,
    pending_meta: HashMap<InfoHash, TorrentMeta>,
    /// Infohashes this process has noted or flushed (see [`PgStore::is_known`]).
    known: HashSet<InfoHash>,
    count: u64,
    outbox: Option<String>,
    /// Sightings of new infohashes dropped because [`MAX_BUFFERED`] were already waiting.
    dropped: u64,
}

fn text_safe(s: &str) -> String {
    // PostgreSQL text cannot hold NUL; the exact value is kept in the bencoded `meta`.
    s.replace('\0', "\u{FFFD}")
}

fn peers_text(peers: &[SocketAddr]) -> String {
    peers
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A record from the columns `first_seen, last_seen, times_seen, how, peers` at `base`
/// and `seeds_est, peers_est, scraped_at` at `scrape`.
fn row_record(row: &tokio_postgres::Row, base: usize, scrape: usize) -> Record {
    let peers: Vec<String> = row.get(base + 4);
    let est = |i: usize| {
        row.get::<_, Option<i32>>(scrape + i)
            .map(|v| v.max(0) as u32)
    };
    Record {
        scrape: match (est(0), est(1), row.get::<_, Option<i64>>(scrape + 2)) {
            (Some(seeds), Some(peers), Some(at)) => Some(SwarmEstimate {
                seeds,
                peers,
                at: at.max(0) as u64,
            }),
            _ => None,
        },
        first_seen: row.get::<_, i64>(base).max(0) as u64,
        last_seen: row.get::<_, i64>(base + 1).max(0) as u64,
        times_seen: row.get::<_, i64>(base + 2).clamp(0, i64::from(u32::MAX)) as u32,
        how: row.get::<_, i16>(base + 3) as u8,
        peers: peers
            .iter()
            .filter_map(|p| p.parse().ok())
            .take(MAX_PEERS)
            .collect(),
    }
}

impl PgStore {
    /// Torrents whose name or file paths contain all the words of `q` (full text, the
    /// GIN index), most recently seen first.
    pub fn search(
        &self,
        q: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(InfoHash, Record, Option<TorrentMeta>)>, PgError> {
        let q = text_safe(q);
        let (offset, limit) = (to_i64(offset as u64), to_i64(limit as u64));
        self.call(move |c| async move {
            let rows = c
                .query(
                    "SELECT t.info_hash, t.first_seen, t.last_seen, t.times_seen, t.how, t.peers,
                            m.meta, t.seeds_est, t.peers_est, t.scraped_at
                     FROM crawl_metadata m JOIN crawl_torrents t USING (info_hash)
                     WHERE m.search @@ plainto_tsquery('simple'::regconfig,
                                                       translate($1, '/._-', '    '))
                     ORDER BY t.last_seen DESC, t.info_hash OFFSET $2 LIMIT $3",
                    &[&q, &offset, &limit],
                )
                .await?;
            Ok(rows.iter().filter_map(full_row).collect())
        })
    }

    /// The most recently discovered records, newest first.
    pub fn newest(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(InfoHash, Record, Option<TorrentMeta>)>, PgError> {
        let (offset, limit) = (to_i64(offset as u64), to_i64(limit as u64));
        self.call(move |c| async move {
            let rows = c
                .query(
                    "SELECT t.info_hash, t.first_seen, t.last_seen, t.times_seen, t.how, t.peers,
                            m.meta, t.seeds_est, t.peers_est, t.scraped_at
                     FROM crawl_torrents t LEFT JOIN crawl_metadata m USING (info_hash)
                     ORDER BY t.first_seen DESC, t.info_hash OFFSET $1 LIMIT $2",
                    &[&offset, &limit],
                )
                .await?;
            Ok(rows.iter().filter_map(full_row).collect())
        })
    }

    /// Retention, as [`super::store::CrawlStore::prune`]: records last seen before
    /// `older_than`, then the least-seen beyond `max_records`, with their metadata and
    /// outbox rows, in one transaction. Returns how many records went; [`PgStore::count`]
    /// is then the database's count.
    pub fn prune(
        &mut self,
        older_than: Option<u64>,
        max_records: Option<u64>,
    ) -> Result<u64, PgError> {
        let older = older_than.map(to_i64);
        let max = max_records.map(to_i64);
        let (removed, count) = self.call(move |c| async move {
            c.batch_execute("BEGIN").await?;
            let r = async {
                let mut removed = 0u64;
                if let Some(t) = older {
                    removed += c
                        .execute(
                            "WITH gone AS (DELETE FROM crawl_torrents WHERE last_seen < $1
                                           RETURNING info_hash),
                                  m AS (DELETE FROM crawl_metadata
                                        WHERE info_hash IN (SELECT info_hash FROM gone)),
                                  o AS (DELETE FROM crawl_outbox
                                        WHERE info_hash IN (SELECT info_hash FROM gone))
                             SELECT 1 FROM gone",
                            &[&t],
                        )
                        .await?;
                }
                let n: i64 = c
                    .query_one("SELECT count(*) FROM crawl_torrents", &[])
                    .await?
                    .get(0);
                let mut count = n;
                if let Some(max) = max
                    && n > max
                {
                    let excess = n - max;
                    removed += c
                        .execute(
                            "WITH gone AS (DELETE FROM crawl_torrents WHERE info_hash IN
                                   (SELECT info_hash FROM crawl_torrents
                                    ORDER BY times_seen, last_seen, info_hash LIMIT $1)
                                   RETURNING info_hash),
                                  m AS (DELETE FROM crawl_metadata
                                        WHERE info_hash IN (SELECT info_hash FROM gone)),
                                  o AS (DELETE FROM crawl_outbox
                                        WHERE info_hash IN (SELECT info_hash FROM gone))
                             SELECT 1 FROM gone",
                            &[&excess],
                        )
                        .await?;
                    count = max;
                }
                Ok::<_, PgError>((removed, count.max(0) as u64))
            }
            .await;
            match r {
                Ok(v) => {
                    c.batch_execute("COMMIT").await?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })?;
        self.count = count;
        Ok(removed)
    }

    /// (records, records with metadata) in the database now.
    pub fn totals(&self) -> Result<(u64, u64), PgError> {
        self.call(|c| async move {
            let r = c
                .query_one(
                    "SELECT (SELECT count(*) FROM crawl_torrents),
                            (SELECT count(*) FROM crawl_metadata)",
                    &[],
                )
                .await?;
            Ok((
                r.get::<_, i64>(0).max(0) as u64,
                r.get::<_, i64>(1).max(0) as u64,
            ))
        })
    }
}

/// (info_hash, first_seen, last_seen, times_seen, how, peers, meta, seeds_est, peers_est,
/// scraped_at) → a record.
fn full_row(r: &tokio_postgres::Row) -> Option<(InfoHash, Record, Option<TorrentMeta>)> {
    let ih = InfoHash::from_slice(r.get::<_, &[u8]>(0))?;
    let meta = r
        .get::<_, Option<&[u8]>>(6)
        .and_then(|b| serde_bencode::from_bytes(b).ok());
    Some((ih, row_record(r, 1, 7), meta))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects (to `url`, completed from the `PG*` variables, see [`pg_config`]),
    /// creates or migrates the schema, and starts the store's connection thread.
    pub fn open(url: &str) -> Result<PgStore, PgError> {
        let cfg = pg_config(url)?;
        let target = describe_target(&cfg);
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u64, PgError>>();
        std::thread::Builder::new()
            .name("crawl-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(_) => return,
                };
                rt.block_on(async move {
                    let start = async {
                        let client = connect(&cfg).await?;
                        migrate(&client, SCHEMA_VERSION).await?;
                        let n: i64 = client
                            .query_one("SELECT count(*) FROM crawl_torrents", &[])
                            .await?
                            .get(0);
                        Ok::<_, PgError>((client, n.max(0) as u64))
                    };
                    let mut client = match start.await {
                        Ok((c, n)) => {
                            let _ = ready_tx.send(Ok(n));
                            Arc::new(c)
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    while let Some(job) = rx.recv().await {
                        if client.is_closed() {
                            match connect(&cfg).await {
                                Ok(c) => {
                                    tracing::warn!(
                                        "reconnected to PostgreSQL at {}",
                                        describe_target(&cfg)
                                    );
                                    client = Arc::new(c);
                                }
                                Err(e) => tracing::debug!("{e}"),
                            }
                        }
                        job(client.clone()).await;
                    }
                });
            })
            .map_err(|_| PgError::Gone)?;
        let count = ready_rx.recv().map_err(|_| PgError::Gone)??;
        Ok(PgStore {
            target,
            jobs,
            pending: HashMap::new(),
            pending_meta: HashMap::new(),
            known: HashSet::new(),
            count,
            outbox: None,
            dropped: 0,
        })
    }

    /// Runs `f` on the connection thread and waits for its result.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |c| {
            Box::pin(async move {
                let _ = tx.send(f(c).await);
            })
        });
        self.jobs.send(job).map_err(|_| PgError::Gone)?;
        rx.recv().map_err(|_| PgError::Gone)?
    }

    /// Where the store is (user@host/db), for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Write outbox rows for new records under `owner` (the `--out` file's path).
    pub fn set_outbox(&mut self, owner: Option<String>) {
        self.outbox = owner;
    }

    /// Records in the database when we opened it plus those our flushes created (other
    /// crawlers' inserts since are not counted; a count(*) per flush would not scale).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sightings and metadata waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.pending_meta.len()
    }

    /// Records a sighting at `now` (unix seconds), buffered until the next flush.
    pub fn note_at(&mut self, ih: InfoHash, how: u8, peer: Option<SocketAddr>, now: u64) {
        if self.pending.len() >= MAX_BUFFERED && !self.pending.contains_key(&ih) {
            if self.dropped == 0 {
                tracing::warn!(
                    "{MAX_BUFFERED} sightings are waiting for PostgreSQL; dropping sightings \
                     of further new infohashes until a flush succeeds"
                );
            }
            self.dropped += 1;
            return;
        }
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
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(ih);
    }

    /// Whether this process has seen `ih` (noted or flushed). Asking the server for every
    /// sample would cost a round trip each; the walk only uses this to steer, and the
    /// upsert decides what is new.
    pub fn is_known(&self, ih: &InfoHash) -> bool {
        self.known.contains(ih)
    }

    /// Buffers the metadata of `ih` until the next flush.
    pub fn set_metadata(&mut self, ih: InfoHash, m: TorrentMeta) {
        self.pending_meta.insert(ih, m);
    }

    /// Records a BEP 33 estimate of a known infohash's swarm until the next flush (the
    /// upsert keeps the newest estimate; it never creates a row: see `write_batch`).
    pub fn set_scrape(&mut self, ih: InfoHash, e: SwarmEstimate) {
        self.pending
            .entry(ih)
            .and_modify(|r| r.merge(&Record::scrape_only(e)))
            .or_insert_with(|| Record::scrape_only(e));
    }

    /// Sightings dropped since open because the buffer was full (see [`MAX_BUFFERED`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The durable record of `ih`.
    pub fn get(&self, ih: &InfoHash) -> Result<Option<Record>, PgError> {
        let key = ih.0.to_vec();
        self.call(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT first_seen, last_seen, times_seen, how, peers,
                            seeds_est, peers_est, scraped_at
                     FROM crawl_torrents WHERE info_hash = $1",
                    &[&key],
                )
                .await?;
            Ok(row.map(|r| row_record(&r, 0, 5)))
        })
    }

    /// The durable records (with metadata) of `ihs`, in one query: reporting a flush's new
    /// records must not cost a round trip each.
    pub fn get_many(
        &self,
        ihs: &[InfoHash],
    ) -> Result<HashMap<InfoHash, (Record, Option<TorrentMeta>)>, PgError> {
        if ihs.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<Vec<u8>> = ihs.iter().map(|ih| ih.0.to_vec()).collect();
        self.call(move |c| async move {
            let rows = c
                .query(
                    "SELECT t.info_hash, t.first_seen, t.last_seen, t.times_seen, t.how, t.peers,
                            m.meta, t.seeds_est, t.peers_est, t.scraped_at
                     FROM crawl_torrents t LEFT JOIN crawl_metadata m USING (info_hash)
                     WHERE t.info_hash = ANY($1)",
                    &[&keys],
                )
                .await?;
            Ok(rows
                .iter()
                .filter_map(full_row)
                .map(|(ih, r, m)| (ih, (r, m)))
                .collect())
        })
    }

    /// The durable metadata of `ih`.
    pub fn metadata(&self, ih: &InfoHash) -> Result<Option<TorrentMeta>, PgError> {
        let key = ih.0.to_vec();
        self.call(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT meta FROM crawl_metadata WHERE info_hash = $1",
                    &[&key],
                )
                .await?;
            Ok(row.and_then(|r| serde_bencode::from_bytes(r.get::<_, &[u8]>(0)).ok()))
        })
    }

    /// Writes everything buffered in one transaction. On failure the sightings stay
    /// buffered for the next try.
    pub fn flush(&mut self) -> Result<Flushed, PgError> {
        if self.pending.is_empty() && self.pending_meta.is_empty() {
            return Ok(Flushed::default());
        }
        let mut rows: Vec<(InfoHash, Record)> =
            self.pending.iter().map(|(k, v)| (*k, v.clone())).collect();
        rows.sort_unstable_by_key(|(ih, _)| *ih);
        let mut metas: Vec<(InfoHash, TorrentMeta)> = self
            .pending_meta
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        metas.sort_unstable_by_key(|(ih, _)| *ih);
        let owner = self.outbox.clone();
        let meta_rows = metas.clone();
        let upserted = self.call(move |c| async move {
            c.batch_execute("BEGIN").await?;
            let r = write_batch(&c, &rows, &meta_rows, owner.as_deref()).await;
            match r {
                Ok(up) => {
                    c.batch_execute("COMMIT").await?;
                    Ok(up)
                }
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })?;
        let mut done = Flushed::default();
        for u in upserted {
            if u.inserted {
                done.new.push(u.ih);
            } else {
                done.updated += 1;
            }
        }
        done.metadata = metas.len();
        self.count += done.new.len() as u64;
        self.pending.clear();
        self.pending_meta.clear();
        done.new.sort_unstable();
        Ok(done)
    }

    /// Records whose `--out` line may not have been written yet.
    pub fn outbox(&self) -> Result<Vec<InfoHash>, PgError> {
        let Some(owner) = self.outbox.clone() else {
            return Ok(Vec::new());
        };
        self.call(move |c| async move {
            let rows = c
                .query(
                    "SELECT info_hash FROM crawl_outbox WHERE owner = $1 ORDER BY info_hash",
                    &[&owner],
                )
                .await?;
            Ok(rows
                .iter()
                .filter_map(|r| InfoHash::from_slice(r.get::<_, &[u8]>(0)))
                .collect())
        })
    }

    /// Marks these records' lines as written.
    pub fn ack_outbox(&self, done: &[InfoHash]) -> Result<(), PgError> {
        let Some(owner) = self.outbox.clone() else {
            return Ok(());
        };
        if done.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = done.iter().map(|ih| ih.0.to_vec()).collect();
        self.call(move |c| async move {
            c.execute(
                "DELETE FROM crawl_outbox WHERE owner = $1 AND info_hash = ANY($2)",
                &[&owner, &keys],
            )
            .await?;
            Ok(())
        })
    }

    /// Up to `limit` durable records after `after`, in infohash order, with metadata.
    pub fn page(
        &self,
        after: Option<InfoHash>,
        limit: usize,
    ) -> Result<Vec<(InfoHash, Record, Option<TorrentMeta>)>, PgError> {
        let after = after.map(|ih| ih.0.to_vec()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| async move {
            let rows = c
                .query(
                    "SELECT t.info_hash, t.first_seen, t.last_seen, t.times_seen, t.how, t.peers,
                            m.meta, t.seeds_est, t.peers_est, t.scraped_at
                     FROM crawl_torrents t LEFT JOIN crawl_metadata m USING (info_hash)
                     WHERE t.info_hash > $1 ORDER BY t.info_hash LIMIT $2",
                    &[&after, &limit],
                )
                .await?;
            Ok(rows.iter().filter_map(full_row).collect())
        })
    }
}

async fn write_batch(
    c: &Client,
    rows: &[(InfoHash, Record)],
    metas: &[(InfoHash, TorrentMeta)],
    owner: Option<&str>,
) -> Result<Vec<Upserted>, PgError> {
    let mut out = Vec::with_capacity(rows.len());
    // Estimates without a sighting update existing rows only (an infohash pruned since
    // stays gone); the rows are locked in infohash order first, as the upsert does, so
    // concurrent flushes cannot deadlock.
    let (sightings, estimates): (Vec<_>, Vec<_>) = rows.iter().partition(|(_, r)| r.times_seen > 0);
    for chunk in estimates.chunks(CHUNK) {
        let ihs: Vec<&[u8]> = chunk.iter().map(|(ih, _)| &ih.0[..]).collect();
        let est = |f: fn(&SwarmEstimate) -> i64| -> Vec<i64> {
            chunk
                .iter()
                .map(|(_, r)| r.scrape.as_ref().map_or(0, f))
                .collect()
        };
        let seeds = est(|e| i64::from(e.seeds));
        let peers = est(|e| i64::from(e.peers));
        let at = est(|e| to_i64(e.at));
        c.execute(
            "SELECT 1 FROM crawl_torrents WHERE info_hash = ANY($1)
             ORDER BY info_hash FOR UPDATE",
            &[&ihs],
        )
        .await?;
        c.execute(
            "UPDATE crawl_torrents AS t
             SET seeds_est = u.s::int4, peers_est = u.p::int4, scraped_at = u.a
             FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int8[]) AS u(ih, s, p, a)
             WHERE t.info_hash = u.ih AND (t.scraped_at IS NULL OR t.scraped_at <= u.a)",
            &[&ihs, &seeds, &peers, &at],
        )
        .await?;
    }
    for chunk in sightings.chunks(CHUNK) {
        let ihs: Vec<&[u8]> = chunk.iter().map(|(ih, _)| &ih.0[..]).collect();
        let first: Vec<i64> = chunk.iter().map(|(_, r)| to_i64(r.first_seen)).collect();
        let last: Vec<i64> = chunk.iter().map(|(_, r)| to_i64(r.last_seen)).collect();
        let times: Vec<i64> = chunk.iter().map(|(_, r)| i64::from(r.times_seen)).collect();
        let how: Vec<i16> = chunk.iter().map(|(_, r)| i16::from(r.how)).collect();
        let peers: Vec<String> = chunk.iter().map(|(_, r)| peers_text(&r.peers)).collect();
        let keep = MAX_PEERS as i32;
        let est = |f: fn(&SwarmEstimate) -> i64| -> Vec<Option<i64>> {
            chunk
                .iter()
                .map(|(_, r)| r.scrape.as_ref().map(f))
                .collect()
        };
        let seeds_est = est(|e| i64::from(e.seeds));
        let peers_est = est(|e| i64::from(e.peers));
        let scraped_at = est(|e| to_i64(e.at));
        // The newest estimate wins (`greatest` skips NULLs).
        let returned = c
            .query(
                "INSERT INTO crawl_torrents AS t
                     (info_hash, first_seen, last_seen, times_seen, how, peers,
                      seeds_est, peers_est, scraped_at)
                 SELECT ih, fs, ls, ts, hw,
                        CASE WHEN p = '' THEN '{}'::text[] ELSE string_to_array(p, ',') END,
                        se::int4, pe::int4, sa
                 FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int8[], $5::int2[],
                             $6::text[], $8::int8[], $9::int8[], $10::int8[])
                      AS u(ih, fs, ls, ts, hw, p, se, pe, sa)
                 ORDER BY ih
                 ON CONFLICT (info_hash) DO UPDATE SET
                     first_seen = least(t.first_seen, excluded.first_seen),
                     last_seen = greatest(t.last_seen, excluded.last_seen),
                     times_seen = t.times_seen + excluded.times_seen,
                     how = t.how | excluded.how,
                     peers = crawl_merge_peers(t.peers, excluded.peers, $7),
                     seeds_est = CASE WHEN excluded.scraped_at >= coalesce(t.scraped_at, 0)
                                 THEN excluded.seeds_est ELSE t.seeds_est END,
                     peers_est = CASE WHEN excluded.scraped_at >= coalesce(t.scraped_at, 0)
                                 THEN excluded.peers_est ELSE t.peers_est END,
                     scraped_at = greatest(t.scraped_at, excluded.scraped_at)
                 RETURNING info_hash, (xmax::text = '0')",
                &[
                    &ihs,
                    &first,
                    &last,
                    &times,
                    &how,
                    &peers,
                    &keep,
                    &seeds_est,
                    &peers_est,
                    &scraped_at,
                ],
            )
            .await?;
        for r in &returned {
            let Some(ih) = InfoHash::from_slice(r.get::<_, &[u8]>(0)) else {
                continue;
            };
            out.push(Upserted {
                ih,
                inserted: r.get(1),
            });
        }
    }
    if let Some(owner) = owner {
        let new: Vec<&[u8]> = out
            .iter()
            .filter(|u| u.inserted)
            .map(|u| &u.ih.0[..])
            .collect();
        if !new.is_empty() {
            c.execute(
                "INSERT INTO crawl_outbox (owner, info_hash) SELECT $1, unnest($2::bytea[])
                 ON CONFLICT DO NOTHING",
                &[&owner, &new],
            )
            .await?;
        }
    }
    for chunk in metas.chunks(CHUNK) {
        let ihs: Vec<&[u8]> = chunk.iter().map(|(ih, _)| &ih.0[..]).collect();
        let names: Vec<String> = chunk.iter().map(|(_, m)| text_safe(&m.name)).collect();
        let sizes: Vec<i64> = chunk.iter().map(|(_, m)| to_i64(m.total_size)).collect();
        let counts: Vec<i64> = chunk.iter().map(|(_, m)| to_i64(m.file_count)).collect();
        let paths: Vec<String> = chunk
            .iter()
            .map(|(_, m)| {
                m.files
                    .iter()
                    .map(|f| text_safe(&f.path))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        let fetched: Vec<i64> = chunk.iter().map(|(_, m)| to_i64(m.fetched_at)).collect();
        let mut raw = Vec::with_capacity(chunk.len());
        for (_, m) in chunk {
            // A TorrentMeta always encodes; an empty value would only lose this one.
            raw.push(serde_bencode::to_bytes(m).unwrap_or_default());
        }
        c.execute(
            "INSERT INTO crawl_metadata
                 (info_hash, name, total_size, file_count, file_paths, fetched_at, meta)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::int8[], $5::text[],
                                  $6::int8[], $7::bytea[])
             ON CONFLICT (info_hash) DO UPDATE SET
                 name = excluded.name, total_size = excluded.total_size,
                 file_count = excluded.file_count, file_paths = excluded.file_paths,
                 fetched_at = excluded.fetched_at, meta = excluded.meta",
            &[&ihs, &names, &sizes, &counts, &paths, &fetched, &raw],
        )
        .await?;
    }
    Ok(out)
}
