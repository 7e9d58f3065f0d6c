//! [`DhtHandle::peers`]: a swarm's peers from lookups repeated with backoff, the one loop
//! behind `dht-get`'s metadata fetch, the download session and the crawler's metadata jobs.
//!
//! Why repeat at all: one `get_peers` lookup sees the swarm as it is at that moment, and on
//! the live DHT a seeder may announce after we start (or the lookup may miss the nodes that
//! hold it), so a client keeps looking, quickly at first and then less often. Each of those
//! callers used to carry its own copy of this loop with its own pauses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::dht::driver::{DhtError, DhtHandle, PeerStream};
use crate::dht::id::InfoHash;
use crate::util::Backoff;

/// Whether each lookup of a [`PeerFeed`] also announces us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Only look (`get_peers`): nobody could connect to us, or we only want metadata.
    No,
    /// Announce this TCP port.
    Port(u16),
    /// Announce with `implied_port` (our UDP port is the port to reach us on).
    Implied,
}

/// How [`DhtHandle::peers`] repeats its lookups.
#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// Announce ourselves on each lookup, or only look.
    pub announce: Announce,
    /// Pause after the first lookup; each pause is twice the one before.
    pub first_pause: Duration,
    /// The longest pause while seeding (see [`PeerFeed::set_seeding`]).
    pub max_pause: Duration,
    /// The longest pause while not seeding: a downloader wants newcomers soon.
    pub max_pause_leeching: Duration,
    /// Whether we start as a seed (BEP 33: announces carry `seed=1`).
    pub seeding: bool,
    /// Stop after this many lookups (`None`: until the feed is dropped).
    pub rounds: Option<u32>,
}

impl PeersConfig {
    /// Look without announcing: first pause 1 s, then doubling up to 30 s.
    pub fn lookup() -> Self {
        PeersConfig {
            announce: Announce::No,
            first_pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(30),
            max_pause_leeching: Duration::from_secs(30),
            seeding: false,
            rounds: None,
        }
    }

    /// One lookup, no announce (e.g. a crawler's metadata job).
    pub fn once() -> Self {
        PeersConfig {
            rounds: Some(1),
            ..PeersConfig::lookup()
        }
    }
}

/// Counters shared with the feed's task.
#[derive(Debug, Default)]
struct Counters {
    lookups: AtomicU64,
    messages: AtomicU64,
}

/// Peers of repeated lookups, as they arrive (the same peer again in later rounds: the
/// consumer keeps what it already knows). Dropping the feed stops its lookups.
#[derive(Debug)]
pub struct PeerFeed {
    rx: mpsc::UnboundedReceiver<SocketAddr>,
    seeding: watch::Sender<bool>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PeerFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerFeed {
    /// Polls for the next peer (`Ready(None)` once the rounds are done or the node stopped).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<SocketAddr>> {
        self.rx.poll_recv(cx)
    }

    /// The next peer, or `None` once the rounds are done or the node stopped.
    pub async fn next(&mut self) -> Option<SocketAddr> {
        self.rx.recv().await
    }

    /// Switches between seeding (announces say `seed=1`, pauses grow to `max_pause`) and
    /// downloading (pauses stop at `max_pause_leeching`), from the next lookup on.
    pub fn set_seeding(&self, seeding: bool) {
        self.seeding.send_replace(seeding);
    }

    /// Lookups finished so far.
    pub fn lookups(&self) -> u64 {
        self.counters.lookups.load(Ordering::Relaxed)
    }

    /// Messages those lookups sent (what finding the swarm cost).
    pub fn messages(&self) -> u64 {
        self.counters.messages.load(Ordering::Relaxed)
    }
}

impl DhtHandle {
    /// Keeps looking up the swarm of `info_hash` (after waiting for the routing table's
    /// first node), pausing between lookups as `cfg` says, and streams the peers found.
    /// Must be called inside a tokio runtime: the lookups run on a task of their own.
    pub fn peers(&self, info_hash: InfoHash, cfg: PeersConfig) -> PeerFeed {
        let (tx, rx) = mpsc::unbounded_channel();
        let (seeding, seeding_rx) = watch::channel(cfg.seeding);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(feed(
            self.clone(),
            info_hash,
            cfg,
            tx,
            seeding_rx,
            counters.clone(),
        ));
        PeerFeed {
            rx,
            seeding,
            counters,
            task,
        }
    }
}

async fn feed(
    dht: DhtHandle,
    ih: InfoHash,
    cfg: PeersConfig,
    tx: mpsc::UnboundedSender<SocketAddr>,
    seeding: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    if dht.wait_for_nodes(1).await.is_err() {
        return;
    }
    let mut backoff = Backoff::new(cfg.first_pause, cfg.max_pause);
    let mut rounds = 0;
    loop {
        let seed = *seeding.borrow();
        let stream: Result<PeerStream, DhtError> = match cfg.announce {
            Announce::No => dht.get_peers(ih),
            Announce::Port(p) => dht.announce_as(ih, Some(p), seed),
            Announce::Implied => dht.announce_as(ih, None, seed),
        };
        let Ok(mut stream) = stream else { return };
        while let Some(p) = stream.next().await {
            if tx.send(p).is_err() {
                return;
            }
        }
        let messages = stream.summary().map_or(0, |s| u64::from(s.messages));
        counters.messages.fetch_add(messages, Ordering::Relaxed);
        counters.lookups.fetch_add(1, Ordering::Relaxed);
        rounds += 1;
        if cfg.rounds.is_some_and(|r| rounds >= r) {
            return;
        }
        let cap = if *seeding.borrow() {
            cfg.max_pause
        } else {
            cfg.max_pause_leeching.min(cfg.max_pause)
        };
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_capped(cap)) => {}
            _ = tx.closed() => return,
        }
    }
}
