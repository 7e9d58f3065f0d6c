//! Metadata enrichment: a bounded pool of workers that, for each new infohash, looks up
//! peers on the DHT and asks a [`MetadataFetcher`] for the info dict (BEP 9).
//!
//! The fetcher is a trait so the crawl does not depend on how metadata is transferred; the
//! pool verifies what it gets (SHA-1 must equal the infohash, the dict must parse) before
//! anything is stored or written as a `.torrent` file. The queue is bounded: when new
//! infohashes arrive faster than metadata can be fetched, the surplus is skipped (and
//! counted) rather than buffered without limit.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use super::store::TorrentMeta;
use crate::dht::driver::DhtHandle;
use crate::dht::id::InfoHash;
use crate::dht::peer_feed::PeersConfig;
use crate::metadata::FetchError;

/// Boxed future returned by [`MetadataFetcher::fetch`].
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, FetchError>> + Send + 'a>>;

/// Something that can fetch a torrent's raw info dict from peers.
pub trait MetadataFetcher: Send + Sync + 'static {
    /// Fetches the bencoded info dict of `info_hash` from `peers` (live ones first). The
    /// pool checks the SHA-1, so an implementation may return unverified bytes.
    fn fetch(&self, info_hash: InfoHash, peers: Vec<SocketAddr>) -> FetchFuture<'_>;
}

/// Pool settings.
#[derive(Clone)]
pub struct MetadataConfig {
    /// Fetches running at once.
    pub workers: usize,
    /// Transfers the info dict from the peers found.
    pub fetcher: Arc<dyn MetadataFetcher>,
    /// Write `<hex infohash>.torrent` here for each fetched torrent.
    pub torrent_dir: Option<PathBuf>,
    /// Infohashes waiting for a worker, at most.
    pub queue: usize,
    /// How long the peer lookup may take.
    pub lookup_timeout: Duration,
}

impl std::fmt::Debug for MetadataConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataConfig")
            .field("workers", &self.workers)
            .field("torrent_dir", &self.torrent_dir)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// One job: an infohash and the peers already known for it (from announces).
#[derive(Debug, Clone)]
pub struct MetaJob {
    /// The torrent whose metadata is wanted.
    pub info_hash: InfoHash,
    /// Peers announced to us for it; a DHT lookup adds more.
    pub peers: Vec<SocketAddr>,
}

/// Why a job got no metadata.
#[derive(Debug, Clone)]
pub enum EnrichError {
    /// Neither the announces nor a DHT lookup gave a peer to ask.
    NoPeers,
    /// No peer handed over the info dict (BEP 9).
    Fetch(FetchError),
    /// The dict a peer sent does not hash to the infohash (a liar, or a corrupt peer).
    Mismatch,
    /// The dict hashes right but is not a usable info dict.
    Unparsable,
}

impl std::fmt::Display for EnrichError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrichError::NoPeers => f.write_str("no peers found"),
            EnrichError::Fetch(e) => write!(f, "{e}"),
            EnrichError::Mismatch => f.write_str("info dict does not match the infohash"),
            EnrichError::Unparsable => f.write_str("info dict does not parse"),
        }
    }
}

impl std::error::Error for EnrichError {}

/// What became of one job.
#[derive(Debug, Clone)]
pub struct MetaOutcome {
    /// The job's infohash.
    pub info_hash: InfoHash,
    /// The verified metadata, or why there is none.
    pub result: Result<TorrentMeta, EnrichError>,
    /// DHT queries the peer lookup sent (charged to the crawl's rate limit).
    pub dht_messages: u32,
}

/// The running pool.
pub struct MetadataPool {
    jobs: mpsc::Sender<MetaJob>,
    /// One outcome per job taken, in order of completion.
    pub results: mpsc::UnboundedReceiver<MetaOutcome>,
    _workers: JoinSet<()>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MetadataPool {
    /// Starts `cfg.workers` workers on the current runtime.
    pub fn start(cfg: MetadataConfig, dht: DhtHandle) -> MetadataPool {
        let (jobs, rx) = mpsc::channel(cfg.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let (tx, results) = mpsc::unbounded_channel();
        let mut workers = JoinSet::new();
        for _ in 0..cfg.workers.max(1) {
            let rx = rx.clone();
            let tx = tx.clone();
            let dht = dht.clone();
            let cfg = cfg.clone();
            workers.spawn(async move {
                loop {
                    let job = rx.lock().await.recv().await;
                    let Some(job) = job else { break };
                    let outcome = run_job(&cfg, &dht, job).await;
                    if tx.send(outcome).is_err() {
                        break;
                    }
                }
            });
        }
        MetadataPool {
            jobs,
            results,
            _workers: workers,
        }
    }

    /// Queues a job; `false` when the queue is full (the job is skipped).
    pub fn offer(&self, job: MetaJob) -> bool {
        self.jobs.try_send(job).is_ok()
    }
}

async fn run_job(cfg: &MetadataConfig, dht: &DhtHandle, job: MetaJob) -> MetaOutcome {
    let ih = job.info_hash;
    let mut peers = job.peers;
    let mut feed = dht.peers(ih, PeersConfig::once());
    let _ = tokio::time::timeout(cfg.lookup_timeout, async {
        while let Some(p) = feed.next().await {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
    })
    .await;
    let dht_messages = u32::try_from(feed.messages()).unwrap_or(u32::MAX);
    let result = if peers.is_empty() {
        Err(EnrichError::NoPeers)
    } else {
        match cfg.fetcher.fetch(ih, peers).await {
            Ok(raw) => verify_and_save(cfg, &ih, &raw).await,
            Err(e) => Err(EnrichError::Fetch(e)),
        }
    };
    MetaOutcome {
        info_hash: ih,
        result,
        dht_messages,
    }
}

/// Checks the dict against the infohash, parses it, and writes the .torrent file.
async fn verify_and_save(
    cfg: &MetadataConfig,
    ih: &InfoHash,
    raw: &[u8],
) -> Result<TorrentMeta, EnrichError> {
    if InfoHash::of_info(raw) != *ih {
        return Err(EnrichError::Mismatch);
    }
    let meta = TorrentMeta::from_info(raw, now_unix()).ok_or(EnrichError::Unparsable)?;
    if let Some(dir) = &cfg.torrent_dir {
        let path = dir.join(format!("{}.torrent", ih.to_hex()));
        let bytes = crate::torrent::metainfo::torrent_file_from_info(raw);
        // The metadata is stored regardless; a failed file write is only logged.
        if let Err(e) = crate::util::atomic_write_async(path.clone(), bytes).await {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
    Ok(meta)
}

/// The real fetcher: BEP 9 over the peer wire protocol ([`crate::metadata`]).
pub struct Bep9Fetcher(pub crate::metadata::FetchConfig);

impl MetadataFetcher for Bep9Fetcher {
    fn fetch(&self, info_hash: InfoHash, peers: Vec<SocketAddr>) -> FetchFuture<'_> {
        Box::pin(async move {
            let source = crate::metadata::PeerSource::new(peers);
            crate::metadata::fetch_metadata(info_hash, source, &self.0)
                .await
                .map(|f| f.info.to_vec())
        })
    }
}
