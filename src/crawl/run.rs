//! The tokio crawler: a normal DHT node (its own id, answering queries) plus the walk.
//!
//! [`run`] owns the walk ([`DualWalker`]) and the [`Store`] (sled or PostgreSQL). Walk
//! queries go out through [`DhtHandle::query`], so they carry the node's real id and
//! transaction ids; nothing is spoofed and we never answer on anyone's behalf. Queries
//! other nodes send us arrive on the node's `incoming` channel and are recorded too
//! (passive harvest).
//!
//! A node with an IPv6 socket (`DhtConfig::bind6`) makes the crawl dual-stack: a
//! [`DualWalker`] walks the IPv4 and the IPv6 DHT (BEP 32: two keyspaces, two node sets)
//! under one rate limit, queries to IPv6 nodes leave through the IPv6 socket (so their
//! answers carry `nodes6`), and the status counts each family apart ([`FamilyStatus`]).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::backend::Store;
use super::enrich::{MetaJob, MetadataConfig, MetadataPool};
use super::export::write_jsonl_line;
use super::store::{
    HOW_ANNOUNCE, HOW_GET_PEERS, HOW_SAMPLE, Record, StoreError, SwarmEstimate, TorrentMeta,
};
use super::walk::{DualWalker, WalkConfig, WalkError, WalkStats};
use crate::dht::driver::{DhtError, DhtHandle, IncomingQuery};
use crate::dht::id::{Family, InfoHash};
use crate::dht::krpc::Response;

/// One address family's numbers in a status: the IPv4 and the IPv6 DHT are separate
/// keyspaces with separate nodes, so how far each walk got, and what each yields, is
/// worth knowing apart (the IPv6 DHT is far smaller, and may hold torrents the IPv4 one
/// does not).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FamilyStatus {
    /// Nodes this family's walk tracks now.
    pub nodes_known: usize,
    /// Distinct nodes of this family that answered.
    pub visited: u64,
    /// Answers from nodes of this family.
    pub responses: u64,
    /// Infohashes in this family's BEP 51 samples (with repeats).
    pub samples: u64,
    /// Of those, new to the store when they arrived: infohashes this family found first.
    pub samples_new: u64,
    /// get_peers/announce_peer queries that reached us over this family.
    pub passive: u64,
}

/// A status line's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CrawlStatus {
    /// Durable infohashes in the store.
    pub infohashes: u64,
    /// New durable infohashes per minute since the previous status.
    pub new_per_min: f64,
    /// Nodes the walk tracks now ([`WalkStats::nodes_known`]).
    pub nodes_known: usize,
    /// Distinct nodes that answered.
    pub visited: u64,
    /// Queries our node sent per second since the previous status (walk, metadata lookups
    /// and the node's own upkeep).
    pub queries_per_sec: f64,
    /// Infohashes others' get_peers/announce_peer queries told us about (with repeats).
    pub passive: u64,
    /// Torrents whose metadata was fetched and verified (`--metadata`).
    pub metadata_fetched: u64,
    /// Metadata jobs that ended without a verified info dict (no peers, fetch failed,
    /// wrong hash, unparsable).
    pub metadata_failed: u64,
    /// New infohashes not queued for metadata because the queue was full.
    pub metadata_skipped: u64,
    /// BEP 33 scrapes done (`--scrape`).
    pub scrapes: u64,
    /// New infohashes not scraped because the scrape queue was full.
    pub scrapes_skipped: u64,
    /// Time since the crawl started.
    pub elapsed: Duration,
    /// No new infohash for [`CrawlConfig::stall_after`] (cleared by the next new one).
    pub stalled: bool,
    /// Stalls detected (each one warned about and answered with a re-bootstrap).
    pub stalls: u64,
    /// Answers to the walk's queries.
    pub responses: u64,
    /// The walk's queries that failed (timeout, error, busy, refused).
    pub query_failures: u64,
    /// Infohashes in BEP 51 samples (with repeats).
    pub samples: u64,
    /// Sampled infohashes new to the store: the rediscovery ratio is
    /// `1 - samples_new / samples`.
    pub samples_new: u64,
    /// Walk queries in flight at the last status.
    pub queries_in_flight: usize,
    /// Sightings waiting for the next store flush at the last status.
    pub store_pending: usize,
    /// Store flushes done.
    pub flushes: u64,
    /// How long the last flush took (write latency).
    pub flush_last: Duration,
    /// How long the slowest flush took.
    pub flush_max: Duration,
    /// Resident memory of the process in bytes (0 where `/proc` is missing).
    pub rss_bytes: u64,
    /// The IPv4 DHT's share of the numbers above.
    pub ipv4: FamilyStatus,
    /// The IPv6 DHT's share, when the crawler's node runs IPv6 (`None`: IPv4 only).
    pub ipv6: Option<FamilyStatus>,
}

impl CrawlStatus {
    /// The numbers of `family` (`None` for IPv6 when it is not crawled).
    pub fn family(&self, family: Family) -> Option<&FamilyStatus> {
        match family {
            Family::V4 => Some(&self.ipv4),
            Family::V6 => self.ipv6.as_ref(),
        }
    }

    fn family_mut(&mut self, family: Family) -> Option<&mut FamilyStatus> {
        match family {
            Family::V4 => Some(&mut self.ipv4),
            Family::V6 => self.ipv6.as_mut(),
        }
    }

    /// Copies the walk's node counts into the totals and the families.
    fn set_walk(&mut self, w: &DualWalker) {
        let all = w.stats();
        self.nodes_known = all.nodes_known;
        self.visited = all.visited;
        for f in [Family::V4, Family::V6] {
            let s = w.stats_of(f);
            if let Some(fs) = self.family_mut(f) {
                fs.nodes_known = s.nodes_known;
                fs.visited = s.visited;
            }
        }
    }
}

impl std::fmt::Display for CrawlStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "infohashes {} (+{:.0}/min) | nodes known {} visited {} | queries {:.1}/s | passive {}",
            self.infohashes,
            self.new_per_min,
            self.nodes_known,
            self.visited,
            self.queries_per_sec,
            self.passive
        )?;
        // Per family only when there are two: an IPv4-only line stays as it was.
        if let Some(v6) = &self.ipv6 {
            for (fam, s) in [(Family::V4, &self.ipv4), (Family::V6, v6)] {
                write!(
                    f,
                    " | {fam} nodes {} visited {} samples {} new {}",
                    s.nodes_known, s.visited, s.samples, s.samples_new
                )?;
            }
        }
        if self.metadata_fetched + self.metadata_failed + self.metadata_skipped > 0 {
            write!(
                f,
                " | metadata {} fetched {} failed {} skipped",
                self.metadata_fetched, self.metadata_failed, self.metadata_skipped
            )?;
        }
        if self.scrapes + self.scrapes_skipped > 0 {
            write!(
                f,
                " | scrapes {} skipped {}",
                self.scrapes, self.scrapes_skipped
            )?;
        }
        if self.stalled {
            write!(f, " | stalled")?;
        }
        Ok(())
    }
}

/// Called with each status (the binary prints it).
pub type StatusFn = Box<dyn FnMut(&CrawlStatus) + Send>;

/// Crawl settings.
pub struct CrawlConfig {
    /// The walk's rate, schedule and politeness settings.
    pub walk: WalkConfig,
    /// How often sightings are written to disk (what `kill -9` can lose at most).
    pub flush_interval: Duration,
    /// How often [`CrawlConfig::on_status`] is called.
    pub status_interval: Duration,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Append one JSON line per new infohash to this file.
    pub out: Option<PathBuf>,
    /// How often the node's routing table is fed to the walk.
    pub reseed_interval: Duration,
    /// Receives each new infohash once it is durable.
    pub new_infohashes: Option<mpsc::UnboundedSender<InfoHash>>,
    /// Fetch each new infohash's metadata with this pool (`--metadata`); `None` skips it.
    pub metadata: Option<MetadataConfig>,
    /// Called every [`CrawlConfig::status_interval`] with the current numbers.
    pub on_status: Option<StatusFn>,
    /// Discovery-stall detection: no new durable infohash for this long → a warning, the
    /// `stalled`/`stalls` status fields, and a re-bootstrap from [`CrawlConfig::routers`]
    /// (a crawler whose walk ran dry, e.g. cut off from the network for a while, would
    /// otherwise idle until its slow reseed; checked at each status tick).
    pub stall_after: Option<Duration>,
    /// Bootstrap routers, for the re-bootstrap after a stall (each family's node through
    /// the routers of its family, so IPv6 ones re-join the IPv6 DHT).
    pub routers: Vec<SocketAddr>,
    /// Retention: keep at most this many records (the least-seen go first).
    pub max_records: Option<u64>,
    /// Retention: drop records not seen for this long.
    pub max_age: Option<Duration>,
    /// How often retention runs (it scans the sled store), and once at start.
    pub prune_interval: Duration,
    /// BEP 33: estimate each new infohash's swarm (seeds, downloaders) with a DHT scrape.
    pub scrape: Option<ScrapeConfig>,
}

/// `--scrape` settings.
#[derive(Debug, Clone)]
pub struct ScrapeConfig {
    /// Scrape lookups running at once.
    pub max_in_flight: usize,
    /// New infohashes waiting for a scrape at most; beyond it they are skipped (counted),
    /// so a discovery burst cannot grow memory or make the scrapes lag for hours.
    pub queue: usize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            max_in_flight: 4,
            queue: 10_000,
        }
    }
}

impl Default for CrawlConfig {
    fn default() -> Self {
        CrawlConfig {
            walk: WalkConfig::default(),
            flush_interval: Duration::from_secs(5),
            status_interval: Duration::from_secs(5),
            duration: None,
            out: None,
            reseed_interval: Duration::from_secs(30),
            new_infohashes: None,
            metadata: None,
            on_status: None,
            stall_after: None,
            routers: Vec::new(),
            max_records: None,
            max_age: None,
            prune_interval: Duration::from_secs(300),
            scrape: None,
        }
    }
}

/// Why the crawl stopped early.
#[derive(Debug)]
pub enum CrawlError {
    /// The store could not be read, written or flushed.
    Store(StoreError),
    /// The `--out` file could not be opened or written.
    Out(PathBuf, std::io::Error),
    /// The DHT node stopped under us.
    NodeStopped,
}

impl std::fmt::Display for CrawlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrawlError::Store(e) => write!(f, "{e}"),
            CrawlError::Out(p, e) => write!(f, "cannot write {}: {e}", p.display()),
            CrawlError::NodeStopped => write!(f, "the DHT node stopped"),
        }
    }
}

impl std::error::Error for CrawlError {}

impl From<StoreError> for CrawlError {
    fn from(e: StoreError) -> Self {
        CrawlError::Store(e)
    }
}

/// How a crawl ended.
#[derive(Debug, Clone)]
pub struct CrawlReport {
    /// The last status numbers.
    pub status: CrawlStatus,
    /// The walk's counters at the end (both families together).
    pub walk: WalkStats,
    /// The IPv4 walk's counters at the end.
    pub walk4: WalkStats,
    /// The IPv6 walk's counters at the end, when IPv6 was crawled.
    pub walk6: Option<WalkStats>,
}

/// Flush early when this many sightings are buffered.
const MAX_PENDING: usize = 200_000;

struct OutFile {
    path: PathBuf,
    w: BufWriter<File>,
}

struct Crawl {
    dht: DhtHandle,
    store: Store,
    walker: DualWalker,
    out: Option<OutFile>,
    new_tx: Option<mpsc::UnboundedSender<InfoHash>>,
    pool: Option<MetadataPool>,
    status: CrawlStatus,
    samples: Vec<InfoHash>,
    /// The last flush failed transiently (the database is away); see [`Crawl::flush`].
    store_down: bool,
    /// New infohashes waiting for a BEP 33 scrape (with `--scrape`).
    scrape_queue: Option<(VecDeque<InfoHash>, usize)>,
}

impl Crawl {
    fn on_result(&mut self, addr: SocketAddr, r: Result<Response, DhtError>) -> bool {
        let now = Instant::now();
        match r {
            Ok(resp) => {
                let samples = resp.samples().count() as u64;
                self.status.responses += 1;
                self.status.samples += samples;
                let store = &self.store;
                self.walker.on_reply(
                    now,
                    addr,
                    &resp,
                    |ih| !store.is_known(ih),
                    &mut self.samples,
                );
                let new = self.samples.len() as u64;
                self.status.samples_new += new;
                if let Some(fs) = self.status.family_mut(Family::of(addr)) {
                    fs.responses += 1;
                    fs.samples += samples;
                    fs.samples_new += new;
                }
                for ih in &self.samples {
                    self.store.note(*ih, HOW_SAMPLE, None);
                }
            }
            Err(DhtError::Stopped) => return false,
            Err(DhtError::Ping(e)) => {
                self.status.query_failures += 1;
                self.walker.on_error(now, addr, WalkError::from(e));
            }
        }
        true
    }

    fn on_incoming(&mut self, q: IncomingQuery) {
        self.status.passive += 1;
        if let Some(fs) = self.status.family_mut(Family::of(q.from)) {
            fs.passive += 1;
        }
        let how = if q.peer.is_some() {
            HOW_ANNOUNCE
        } else {
            HOW_GET_PEERS
        };
        // Peers of either family: an announce over the IPv6 DHT names an IPv6 peer.
        self.store.note(q.info_hash, how, q.peer);
    }

    /// Makes everything durable, then reports the new records (out file, channel,
    /// metadata queue).
    fn flush(&mut self) -> Result<(), CrawlError> {
        let started = Instant::now();
        let flushed = off_the_loop(|| self.store.flush());
        let took = started.elapsed();
        self.status.flushes += 1;
        self.status.flush_last = took;
        self.status.flush_max = self.status.flush_max.max(took);
        let flushed = match flushed {
            Ok(f) => {
                if self.store_down {
                    self.store_down = false;
                    tracing::warn!("the store is reachable again; buffered sightings written");
                }
                f
            }
            // A database that went away: keep the sightings (bounded, see pg::MAX_BUFFERED)
            // and retry at the next flush tick; nothing is counted until it is written.
            Err(e) if e.is_transient() => {
                if !self.store_down {
                    self.store_down = true;
                    tracing::warn!(
                        "cannot write to the store ({e}); keeping {} sightings in memory and \
                         retrying every flush interval",
                        self.store.pending()
                    );
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let mut records = if flushed.new.is_empty() {
            Default::default()
        } else {
            self.store.get_many(&flushed.new)?
        };
        if let Some(out) = &mut self.out {
            write_lines(out, &records, &flushed.new)?;
            self.store.ack_outbox(&flushed.new)?;
        }
        for ih in &flushed.new {
            if let Some(tx) = &self.new_tx {
                let _ = tx.send(*ih);
            }
            if let Some((queue, max)) = &mut self.scrape_queue {
                if queue.len() < *max {
                    queue.push_back(*ih);
                } else {
                    self.status.scrapes_skipped += 1;
                }
            }
            if let Some(pool) = &self.pool {
                let peers = records.remove(ih).map(|(r, _)| r.peers).unwrap_or_default();
                if !pool.offer(MetaJob {
                    info_hash: *ih,
                    peers,
                }) {
                    self.status.metadata_skipped += 1;
                }
            }
        }
        self.status.infohashes = self.store.count();
        Ok(())
    }
}

/// Appends and syncs the lines of `ihs` (those of them in `records`).
fn write_lines(
    out: &mut OutFile,
    records: &HashMap<InfoHash, (Record, Option<TorrentMeta>)>,
    ihs: &[InfoHash],
) -> Result<(), CrawlError> {
    let err = |e| CrawlError::Out(out.path.clone(), e);
    for ih in ihs {
        if let Some((r, m)) = records.get(ih) {
            write_jsonl_line(&mut out.w, ih, r, m.as_ref()).map_err(err)?;
        }
    }
    out.w.flush().map_err(err)?;
    out.w.get_ref().sync_data().map_err(err)
}

/// Crawls until `stop` resolves, the duration passes, or an error. The node behind `dht`
/// should have been started with `incoming` set (its receiver passed here) for the passive
/// harvest. The store is flushed before this returns.
pub async fn run(
    dht: DhtHandle,
    mut incoming: Option<mpsc::Receiver<IncomingQuery>>,
    store: impl Into<Store>,
    mut cfg: CrawlConfig,
    stop: impl Future<Output = ()>,
) -> Result<CrawlReport, CrawlError> {
    let started = Instant::now();
    let mut store: Store = store.into();
    store.set_outbox(cfg.out.as_deref());
    let out = match &cfg.out {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| CrawlError::Out(path.clone(), e))?;
            let mut out = OutFile {
                path: path.clone(),
                w: BufWriter::new(f),
            };
            // Lines a crash kept us from writing last time.
            let owed = store.outbox()?;
            if !owed.is_empty() {
                tracing::info!("writing {} lines owed from the last run", owed.len());
                write_lines(&mut out, &store.get_many(&owed)?, &owed)?;
                store.ack_outbox(&owed)?;
            }
            Some(out)
        }
        None => None,
    };
    let mut walker = DualWalker::new(cfg.walk.clone(), started, dht.local_addr6().is_some());
    for a in [Some(dht.local_addr()), dht.local_addr6()]
        .into_iter()
        .flatten()
    {
        if !a.ip().is_unspecified() {
            walker.exclude(a);
        }
    }
    let pool = cfg
        .metadata
        .take()
        .map(|m| MetadataPool::start(m, dht.clone()));
    let mut c = Crawl {
        status: CrawlStatus {
            infohashes: store.count(),
            ipv6: walker.has_ipv6().then(FamilyStatus::default),
            ..Default::default()
        },
        dht: dht.clone(),
        store,
        walker,
        out,
        new_tx: cfg.new_infohashes.take(),
        pool,
        samples: Vec::new(),
        store_down: false,
        scrape_queue: cfg
            .scrape
            .as_ref()
            .map(|s| (VecDeque::new(), s.queue.max(1))),
    };
    let max_scrapes = cfg.scrape.as_ref().map_or(0, |s| s.max_in_flight.max(1));
    let (scrape_tx, mut scrape_rx) = mpsc::unbounded_channel();
    let mut scrapes: JoinSet<()> = JoinSet::new();
    let (res_tx, mut res_rx) = mpsc::unbounded_channel();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut flush_tick = tokio::time::interval(cfg.flush_interval.max(Duration::from_millis(10)));
    let status_period = cfg.status_interval.max(Duration::from_millis(10));
    let mut status_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + status_period, status_period);
    // Reseed quickly until the table has filled, then at the configured pace.
    let mut next_reseed = tokio::time::Instant::now();
    let mut reseeds = 0u32;
    let deadline = cfg
        .duration
        .map(|d| tokio::time::Instant::now() + d)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86400));
    let mut last_status = (Instant::now(), c.status.infohashes, queries_out(&dht).await);
    let mut next_prune = Instant::now();
    // When the store last grew (or the last stall was handled).
    let mut last_growth = (Instant::now(), c.status.infohashes);
    tokio::pin!(stop);
    let mut failure = None;
    loop {
        while tasks.try_join_next().is_some() {}
        let now = Instant::now();
        while let Some(q) = c.walker.poll_query(now) {
            let dht = c.dht.clone();
            let tx = res_tx.clone();
            tasks.spawn(async move {
                let r = dht.query(q.addr, q.query).await;
                let _ = tx.send((q.addr, r));
            });
        }
        // Scrapes share the walk's query budget: one starts only while the budget has
        // room, and its queries are charged when it ends.
        while scrapes.try_join_next().is_some() {}
        while scrapes.len() < max_scrapes && c.walker.has_budget(now) {
            let Some(ih) = c.scrape_queue.as_mut().and_then(|(q, _)| q.pop_front()) else {
                break;
            };
            let dht = c.dht.clone();
            let tx = scrape_tx.clone();
            scrapes.spawn(async move {
                let _ = tx.send((ih, dht.scrape(ih).await));
            });
        }
        let wake = c
            .walker
            .poll_timeout(now)
            .map(tokio::time::Instant::from_std)
            .unwrap_or(deadline);
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = tokio::time::sleep_until(deadline) => break,
            Some((addr, r)) = res_rx.recv() => {
                if !c.on_result(addr, r) {
                    failure = Some(CrawlError::NodeStopped);
                    break;
                }
                while let Ok((addr, r)) = res_rx.try_recv() {
                    if !c.on_result(addr, r) {
                        failure = Some(CrawlError::NodeStopped);
                        break;
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
            Some(q) = async { incoming.as_mut()?.recv().await }, if incoming.is_some() => {
                c.on_incoming(q);
            }
            Some((ih, r)) = scrape_rx.recv() => {
                match r {
                    Ok(est) => {
                        c.walker.charge(Instant::now(), est.queries);
                        c.status.scrapes += 1;
                        c.store.set_scrape(ih, SwarmEstimate {
                            seeds: u32::try_from(est.seeds_est()).unwrap_or(u32::MAX),
                            peers: u32::try_from(est.peers_est()).unwrap_or(u32::MAX),
                            at: unix_now(),
                        });
                    }
                    Err(DhtError::Stopped) => {
                        failure = Some(CrawlError::NodeStopped);
                        break;
                    }
                    Err(e) => tracing::debug!("scrape of {ih}: {e}"),
                }
            }
            Some(m) = async { c.pool.as_mut()?.results.recv().await }, if c.pool.is_some() => {
                c.walker.charge(Instant::now(), m.dht_messages);
                match m.result {
                    Ok(meta) => {
                        c.status.metadata_fetched += 1;
                        c.store.set_metadata(m.info_hash, meta);
                    }
                    Err(e) => {
                        c.status.metadata_failed += 1;
                        tracing::debug!("metadata of {}: {e}", m.info_hash);
                    }
                }
            }
            _ = flush_tick.tick() => {
                if let Err(e) = c.flush() {
                    failure = Some(e);
                    break;
                }
                if (cfg.max_records.is_some() || cfg.max_age.is_some())
                    && !c.store_down
                    && (Instant::now() >= next_prune
                        // Over the cap by a tenth: do not wait for the interval.
                        || cfg
                            .max_records
                            .is_some_and(|m| c.store.count() > m.saturating_add(m / 10)))
                {
                    next_prune = Instant::now() + cfg.prune_interval;
                    let older_than = cfg
                        .max_age
                        .map(|a| unix_now().saturating_sub(a.as_secs()));
                    match c.store.prune(older_than, cfg.max_records) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!("retention: pruned {n} records"),
                        Err(e) if e.is_transient() => {}
                        Err(e) => {
                            failure = Some(e.into());
                            break;
                        }
                    }
                    c.status.infohashes = c.store.count();
                }
            }
            _ = status_tick.tick() => {
                let q = queries_out(&dht).await;
                let now = Instant::now();
                let secs = (now - last_status.0).as_secs_f64().max(1e-3);
                c.status.new_per_min =
                    c.status.infohashes.saturating_sub(last_status.1) as f64 * 60.0 / secs;
                c.status.queries_per_sec = q.saturating_sub(last_status.2) as f64 / secs;
                last_status = (now, c.status.infohashes, q);
                let w = c.walker.stats();
                c.status.queries_in_flight = tasks.len();
                c.status.store_pending = c.store.pending();
                c.status.rss_bytes = crate::util::rss_bytes();
                c.status.set_walk(&c.walker);
                c.status.elapsed = now - started;
                if c.status.infohashes > last_growth.1 {
                    last_growth = (now, c.status.infohashes);
                    c.status.stalled = false;
                } else if let Some(after) = cfg.stall_after
                    && now - last_growth.0 >= after
                {
                    c.status.stalled = true;
                    c.status.stalls += 1;
                    tracing::warn!(
                        "discovery stalled: no new infohash for {:.1} minutes \
                         ({} nodes known, {} visited); re-bootstrapping",
                        (now - last_growth.0).as_secs_f64() / 60.0,
                        w.nodes_known,
                        w.visited
                    );
                    if !cfg.routers.is_empty() {
                        let _ = dht.bootstrap(cfg.routers.clone());
                    }
                    next_reseed = tokio::time::Instant::now();
                    last_growth.0 = now;
                }
                if let Some(f) = &mut cfg.on_status {
                    f(&c.status);
                }
            }
            () = tokio::time::sleep_until(next_reseed) => {
                if let Ok(contacts) = dht.contacts().await {
                    c.walker.add_contacts4(Instant::now(), contacts);
                }
                if c.walker.has_ipv6()
                    && let Ok(contacts) = dht.contacts6().await
                {
                    c.walker.add_contacts6(Instant::now(), contacts);
                }
                reseeds += 1;
                let pause = reseed_pause(c.walker.stats().nodes_known, reseeds, cfg.reseed_interval);
                next_reseed = tokio::time::Instant::now() + pause;
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        if c.store.pending() >= MAX_PENDING
            && !c.store_down
            && let Err(e) = c.flush()
        {
            failure = Some(e);
            break;
        }
    }
    tasks.abort_all();
    scrapes.abort_all();
    // Whatever happened, make what we saw durable.
    let flushed = c.flush();
    if let Some(e) = failure {
        return Err(e);
    }
    flushed?;
    if c.store_down {
        tracing::warn!(
            "exiting with {} sightings unwritten: the store is still unreachable (none of them \
             was counted or reported)",
            c.store.pending()
        );
    }
    c.status.set_walk(&c.walker);
    c.status.elapsed = started.elapsed();
    Ok(CrawlReport {
        status: c.status,
        walk: c.walker.stats(),
        walk4: c.walker.stats_of(Family::V4),
        walk6: c.walker.has_ipv6().then(|| c.walker.stats_of(Family::V6)),
    })
}

/// How long after its `reseeds`-th feed the routing table is fed to the walk again: every
/// 500 ms while the walk knows no node (right after start, or after losing them all, the
/// table is still filling, and the walk should start the moment it has anyone), for at most
/// a minute, then every `interval`. The dual-stack simulated crawler (`super::sim`) paces
/// its reseeds with the same rule.
pub(crate) fn reseed_pause(nodes_known: usize, reseeds: u32, interval: Duration) -> Duration {
    if nodes_known == 0 && reseeds < 120 {
        Duration::from_millis(500)
    } else {
        interval
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn queries_out(dht: &DhtHandle) -> u64 {
    dht.stats().await.map(|s| s.queries_out).unwrap_or(0)
}

/// Runs blocking store work (a sled flush fsyncs; a PostgreSQL flush waits on the server)
/// so that, on a multi-threaded runtime, the runtime's other tasks (the queries in flight,
/// the metadata pool, the web server) move to another worker meanwhile instead of stalling
/// behind it. On a current-thread runtime there is no other worker, and it just runs.
fn off_the_loop<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod off_the_loop_tests {
    use super::off_the_loop;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// While the crawl loop's task blocks in a store flush, the runtime's other tasks keep
    /// running (on a multi-threaded runtime), and on a current-thread runtime the work
    /// still runs (`block_in_place` would panic there).
    #[test]
    fn other_tasks_run_while_a_flush_blocks() {
        // One worker, both tasks spawned on it: without `block_in_place` the ticker could
        // not run until the "flush" returned.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ticks = Arc::new(AtomicU32::new(0));
        let during = rt.block_on(async {
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    t.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            });
            let t = ticks.clone();
            // A stand-in for an fsync: blocks its thread until the ticker has run 1,000
            // more times (or 5 s passed).
            let flush = tokio::spawn(async move {
                off_the_loop(|| {
                    let start = t.load(Ordering::Relaxed);
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while t.load(Ordering::Relaxed) < start + 1000
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::yield_now();
                    }
                    t.load(Ordering::Relaxed) - start
                })
            });
            let during = flush.await.unwrap();
            ticker.abort();
            during
        });
        assert!(during >= 1000, "the other task stalled: {during} ticks");

        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { off_the_loop(|| 7) }), 7);
    }
}

#[cfg(test)]
mod status_tests {
    use super::{CrawlStatus, FamilyStatus};

    /// A dual-stack crawl's line names each family's nodes and finds; an IPv4-only one
    /// reads as before.
    #[test]
    fn the_status_line_counts_each_family() {
        let mut s = CrawlStatus {
            infohashes: 9,
            nodes_known: 50,
            visited: 45,
            ..Default::default()
        };
        let v4_only = s.to_string();
        assert!(v4_only.contains("nodes known 50 visited 45"), "{v4_only}");
        assert!(!v4_only.contains("ipv"), "{v4_only}");
        s.ipv4 = FamilyStatus {
            nodes_known: 40,
            visited: 38,
            samples: 800,
            samples_new: 120,
            ..Default::default()
        };
        s.ipv6 = Some(FamilyStatus {
            nodes_known: 10,
            visited: 7,
            samples: 90,
            samples_new: 30,
            ..Default::default()
        });
        let line = s.to_string();
        assert!(
            line.contains(
                " | ipv4 nodes 40 visited 38 samples 800 new 120 \
                 | ipv6 nodes 10 visited 7 samples 90 new 30"
            ),
            "{line}"
        );
    }
}
