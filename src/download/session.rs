//! One torrent being downloaded or seeded: the picker, the choker, the storage, the peer
//! connections, and the loop that ties them together.
//!
//! The session task owns the torrent's state: the picker, the choker, the storage and every
//! connection's sans-IO protocol machine ([`super::connection::PeerConnection`]). Each peer
//! socket has a thin driver task (`download::peer`) that forwards the peer's messages here
//! and writes what the machine queued; nothing is shared behind a lock. After each input
//! the session drains the machine's events (blocks to the picker and the disk, pieces to
//! the picker's availability, PEX candidates, DHT nodes), refills the peer's requests from
//! the picker, starts the disk reads it may have, and hands the queued bytes to its driver.
//! Everything periodic or torrent-wide runs here too: connecting to candidates as the DHT
//! (and peers' BEP 11 PEX messages) stream them (bounded number of connections and of
//! connection attempts), accepting handed-off incoming connections, hash-check results from
//! the disk threads (`have` broadcasts, bans), the 10 s choking round, the slow-peer sweep,
//! and batched resume-record saves. The [`Session`] handle reads counters and a snapshot
//! the task publishes.
//!
//! Bans: every block's sender is recorded. A piece that fails its hash check with a single
//! sender is a strike against that peer's IP. When several peers sent it, the stored copy's
//! per-block checksums are kept, and once the piece passes, the senders of the blocks that
//! differ are the liars (the others are innocent). An IP with
//! [`SessionConfig::ban_after`] strikes is disconnected and never contacted again.

use crate::util::TokenBucket;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::bitfield::Bitfield;
use super::choker::{Choker, ChokerConfig, PeerView};
use super::connection::{ConnConfig, PeerConnection, PeerError, PeerEvent, end_reason};
use super::peer::{self, IoEvent, PeerIo};
use super::picker::{BlockRef, BlockResult, PeerKey, Picker, PickerConfig};
use super::resume::{ResumeError, ResumeRecord, ResumeStore, plan_start};
use super::storage::{DiskEvent, Mode, ReadDone, Storage, StorageError};
use crate::dht::allow::AllowList;
use crate::dht::driver::DhtHandle;
use crate::dht::peer_feed::{Announce, PeersConfig};
use crate::metadata::PeerHandoff;
use crate::torrent::InfoHash;
use crate::torrent::metainfo::{Info, MetainfoError};
use crate::wire::{Handshake, PeerStream, Transports, WireConfig, WireError, open_outgoing};

/// Settings of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our peer id (use the listener's, so both directions present the same one).
    pub peer_id: crate::torrent::PeerId,
    /// Outbound allow-list: peers outside it are never connected to.
    pub allow: AllowList,
    /// Connect, handshake, read and write timeouts and the frame limit of each connection.
    pub wire: WireConfig,
    /// Peer connections at most (both directions).
    pub max_peers: usize,
    /// Outgoing connection attempts in progress at most.
    pub max_connecting: usize,
    /// Our TCP listen port (advertised in the extension handshake and announced).
    pub listen_port: Option<u16>,
    /// Addresses outgoing peer connections are made from, the one of the peer's family
    /// (usually the listener's IPs; none: the kernel picks).
    pub local_ips: Vec<IpAddr>,
    /// Transports for outgoing connections (the listener's, so uTP leaves from its port).
    pub transports: Transports,
    /// Our DHT node: announce and find peers, ping the senders of PORT messages.
    pub dht: Option<DhtHandle>,
    /// Our DHT UDP port, sent in a PORT message to peers that set the DHT bit.
    pub dht_port: Option<u16>,
    /// Keep running (seeding) once complete; otherwise the session ends at completion.
    pub seed: bool,
    /// Every piece is known to be on disk and valid (a seeder that just hashed its files);
    /// skips the start-up check.
    pub assume_complete: bool,
    /// Which blocks to request from whom.
    pub picker: PickerConfig,
    /// Who may download from us.
    pub choker: ChokerConfig,
    /// Disk threads (writes, hashing, reads).
    pub disk_threads: usize,
    /// Requests in flight to one peer at most (also bounded by its `reqq`).
    pub max_pipeline: usize,
    /// Peers stop requesting while this many bytes wait to be written.
    pub max_disk_backlog: u64,
    /// Upload rate limit in bytes per second (whole session).
    pub upload_rate: Option<u64>,
    /// Hash-failure strikes before an IP is banned.
    pub ban_after: u32,
    /// Longest pause between DHT announces (they start at 1 s and double).
    pub reannounce: Duration,
    /// Where resume records live; `None` disables resuming.
    pub resume: Option<ResumeStore>,
    /// How often the resume record is saved while pieces complete.
    pub save_interval: Duration,
    /// Seed for the picker's and choker's randomness.
    pub rng_seed: u64,
    /// BEP 11 peer exchange: advertise `ut_pex`, take candidate peers from peers' messages
    /// and tell them ours. Never used for private torrents (BEP 27) whatever this says.
    pub pex: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            peer_id: crate::torrent::PeerId::generate(),
            allow: AllowList::any(),
            wire: WireConfig::with_timeout_secs(5, 10, 150, 60),
            max_peers: 50,
            max_connecting: 8,
            listen_port: None,
            local_ips: Vec::new(),
            transports: Transports::default(),
            dht: None,
            dht_port: None,
            seed: false,
            assume_complete: false,
            picker: PickerConfig::default(),
            choker: ChokerConfig::default(),
            disk_threads: 2,
            max_pipeline: 512,
            max_disk_backlog: 64 << 20,
            upload_rate: None,
            ban_after: 2,
            reannounce: Duration::from_secs(300),
            resume: None,
            save_interval: Duration::from_secs(1),
            rng_seed: rand::random(),
            pex: true,
        }
    }
}

/// Why a session could not start or why it stopped. Cloneable (its sources are shared) so
/// that [`Phase::Stopped`] can carry it to every watcher.
#[derive(Debug, Clone)]
pub enum SessionError {
    /// The info dict does not parse or validate.
    Metainfo(Arc<MetainfoError>),
    /// The files could not be created, opened, read or written.
    Storage(Arc<StorageError>),
    /// The resume record could not be written.
    Resume(ResumeError),
    /// The disk threads ended before the session did (they only end when it drops them, so
    /// this is a crash of one of them).
    DiskStopped,
    /// The session task ended without saying how (it panicked or was aborted).
    TaskEnded,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Metainfo(e) => write!(f, "unusable metadata: {e}"),
            SessionError::Storage(e) => write!(f, "{e}"),
            SessionError::Resume(e) => write!(f, "{e}"),
            SessionError::DiskStopped => f.write_str("the disk threads stopped"),
            SessionError::TaskEnded => f.write_str("the session task ended"),
        }
    }
}

impl std::error::Error for SessionError {}

/// Where a session is.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Hashing pieces found on disk.
    Checking,
    /// Fetching the missing pieces from peers.
    Downloading,
    /// Complete and still serving.
    Seeding,
    /// Ended: complete (and not seeding) or stopped; `Err` says why it failed.
    Stopped(Result<(), SessionError>),
}

/// A progress snapshot.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Where the session is.
    pub phase: Phase,
    /// Size of the torrent's content in bytes.
    pub total_bytes: u64,
    /// Bytes of the pieces we have verified.
    pub verified_bytes: u64,
    /// Number of pieces in the torrent.
    pub pieces: usize,
    /// Pieces we have: downloaded and hash-checked, or found valid at start-up.
    pub verified_pieces: usize,
    /// Pieces checked so far / to check at start.
    pub checked: (u64, u64),
    /// Payload bytes received and accepted (not counting duplicates; a piece that fails its
    /// hash check is taken back off).
    pub downloaded: u64,
    /// Payload bytes sent to peers.
    pub uploaded: u64,
    /// Payload bytes received that were of no use (duplicates, unwanted, failed pieces).
    pub wasted: u64,
    /// Payload bytes per second received over the last few seconds.
    pub download_rate: f64,
    /// Payload bytes per second sent over the last few seconds.
    pub upload_rate: f64,
    /// Connected peers (both directions).
    pub peers: usize,
    /// Connected peers that have every piece.
    pub seeds: usize,
    /// Downloaded pieces that failed their hash check.
    pub hash_failures: u64,
    /// IPs banned for sending corrupt data (see [`SessionConfig::ban_after`]).
    pub banned: usize,
}

/// What the session task publishes for its [`Session`] handle. Only the session task writes
/// it; peer connections never see it (they have no shared state at all).
#[derive(Default)]
struct Public {
    downloaded: AtomicU64,
    uploaded: AtomicU64,
    wasted: AtomicU64,
    hash_failures: AtomicU64,
    /// Pieces checked so far / to check at start.
    checked: (AtomicU64, AtomicU64),
    snapshot: Mutex<Snapshot>,
}

/// The parts of [`Progress`] that are not plain counters.
#[derive(Default)]
struct Snapshot {
    verified: Bitfield,
    verified_bytes: u64,
    peers: usize,
    seeds: usize,
    /// Smoothed download and upload rates, bytes per second.
    rates: (f64, f64),
    banned: HashSet<IpAddr>,
}

impl Public {
    fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        // Only the session task writes, and never panics mid-update; a poisoned lock still
        // holds a usable snapshot.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The upload limit's bucket: the crate's one token bucket, sized so pacing stays smooth.
pub(super) fn upload_bucket(rate: u64, now: Instant) -> TokenBucket {
    let rate = rate.max(1) as f64;
    // A quarter second of tokens, but at least a few blocks, so pacing stays smooth
    // without refusing single 16 KiB sends at low rates.
    let burst = (rate / 4.0).max(4.0 * f64::from(super::picker::BLOCK));
    TokenBucket::new(rate, burst, now)
}

enum SessionCmd {
    AddPeers(Vec<SocketAddr>),
    /// Boxed: a stream is a few hundred bytes and this channel mostly carries small
    /// commands.
    Incoming(Box<PeerStream>, SocketAddr, Handshake),
    Stop(oneshot::Sender<()>),
}

/// Hands incoming connections for the torrent to its session (see
/// [`crate::metadata::MetadataRegistry::attach`]).
#[derive(Debug, Clone)]
pub struct SessionHandoff {
    tx: mpsc::UnboundedSender<SessionCmd>,
}

impl fmt::Debug for SessionCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionCmd::AddPeers(p) => write!(f, "AddPeers({})", p.len()),
            SessionCmd::Incoming(_, a, _) => write!(f, "Incoming({a})"),
            SessionCmd::Stop(_) => write!(f, "Stop"),
        }
    }
}

impl PeerHandoff for SessionHandoff {
    fn hand_off(&self, stream: PeerStream, peer: SocketAddr, theirs: Handshake) {
        let _ = self
            .tx
            .send(SessionCmd::Incoming(Box::new(stream), peer, theirs));
    }
}

/// A running torrent session.
pub struct Session {
    info_hash: InfoHash,
    info: Arc<Info>,
    tx: mpsc::UnboundedSender<SessionCmd>,
    phase: watch::Receiver<Phase>,
    public: Arc<Public>,
    task: tokio::task::JoinHandle<()>,
}

/// Messages from peer drivers waiting for the session task at most; a driver with more to
/// say waits (and so does its socket).
const PEER_IO_QUEUE: usize = 1024;

impl Session {
    /// Opens the torrent's files under `root` and starts the session on the current tokio
    /// runtime: first the start-up check (resume record, or hashing what is on disk), then
    /// downloading (or seeding).
    pub fn start(
        info_bytes: Bytes,
        root: &Path,
        mode: Mode,
        cfg: SessionConfig,
    ) -> Result<Session, SessionError> {
        let info =
            Info::from_bytes(&info_bytes).map_err(|e| SessionError::Metainfo(Arc::new(e)))?;
        let info_hash = InfoHash::of_info(&info_bytes);
        let (disk_tx, disk_rx) = mpsc::unbounded_channel();
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let storage = Storage::open(&root, &info, mode, cfg.disk_threads, disk_tx)
            .map_err(|e| SessionError::Storage(Arc::new(e)))?;
        let n = info.num_pieces();
        let now = Instant::now();
        let picker = Picker::new(
            info.piece_length,
            info.total_length(),
            Bitfield::new(n),
            cfg.picker.clone(),
            cfg.rng_seed,
        );
        let choker = Choker::new(cfg.choker.clone(), cfg.rng_seed ^ 0x5eed);
        let upload_limit = cfg.upload_rate.map(|r| upload_bucket(r, now));
        let info = Arc::new(info);
        let public = Arc::new(Public::default());
        public.snapshot().verified = Bitfield::new(n);
        let (tx, rx) = mpsc::unbounded_channel();
        let (phase_tx, phase) = watch::channel(Phase::Checking);
        let (io_tx, io_rx) = mpsc::channel(PEER_IO_QUEUE);
        let (read_tx, read_rx) = mpsc::unbounded_channel();
        let run = Runner {
            info_hash,
            info: info.clone(),
            info_bytes,
            storage,
            cfg,
            picker,
            choker,
            peers: HashMap::new(),
            suspects: HashMap::new(),
            key_ip: HashMap::new(),
            pex_inbox: Vec::new(),
            strikes: HashMap::new(),
            banned: HashSet::new(),
            cmds: rx,
            self_tx: tx.clone(),
            disk: disk_rx,
            io_tx,
            io_rx,
            read_tx,
            read_rx,
            drivers: JoinSet::new(),
            connecting: JoinSet::new(),
            candidates: Candidates::default(),
            phase: phase_tx,
            public: public.clone(),
            root,
            next_key: 0,
            dirty: false,
            last_save: now,
            saving: None,
            lookups: None,
            upload_limit,
            rate_wait: None,
            complete: false,
            pick_buf: Vec::new(),
        };
        let task = tokio::spawn(run.run());
        Ok(Session {
            info_hash,
            info,
            tx,
            phase,
            public,
            task,
        })
    }

    /// The torrent's info hash.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The torrent's parsed info dict.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The handler to attach to the listener's registry for this torrent.
    pub fn handoff(&self) -> Arc<SessionHandoff> {
        Arc::new(SessionHandoff {
            tx: self.tx.clone(),
        })
    }

    /// Offers peer addresses to connect to (a magnet's `x.pe`, peers met while fetching
    /// the metadata, ...). The DHT is searched anyway when the session has a node.
    pub fn add_peers(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let _ = self
            .tx
            .send(SessionCmd::AddPeers(peers.into_iter().collect()));
    }

    /// Where the session is now.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Waits until the session is seeding or stopped, and returns that phase.
    pub async fn wait_complete(&self) -> Phase {
        let mut rx = self.phase.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            if matches!(p, Phase::Seeding | Phase::Stopped(_)) {
                return p;
            }
            if rx.changed().await.is_err() {
                return self.phase();
            }
        }
    }

    /// Waits until the session has stopped.
    pub async fn wait_stopped(&self) -> Result<(), SessionError> {
        let mut rx = self.phase.clone();
        loop {
            if let Phase::Stopped(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(SessionError::TaskEnded);
            }
        }
    }

    /// Stops the session: closes every connection, waits for queued writes, saves the
    /// resume record. Returns how it ended.
    pub async fn stop(self) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(SessionCmd::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
        self.wait_stopped().await
    }

    /// A snapshot of the session's progress and counters.
    pub fn progress(&self) -> Progress {
        let p = &self.public;
        let snap = p.snapshot();
        Progress {
            phase: self.phase(),
            total_bytes: self.info.total_length(),
            verified_bytes: snap.verified_bytes,
            pieces: self.info.num_pieces(),
            verified_pieces: snap.verified.count(),
            checked: (
                p.checked.0.load(Ordering::Relaxed),
                p.checked.1.load(Ordering::Relaxed),
            ),
            downloaded: p.downloaded.load(Ordering::Relaxed),
            uploaded: p.uploaded.load(Ordering::Relaxed),
            wasted: p.wasted.load(Ordering::Relaxed),
            download_rate: snap.rates.0,
            upload_rate: snap.rates.1,
            peers: snap.peers,
            seeds: snap.seeds,
            hash_failures: p.hash_failures.load(Ordering::Relaxed),
            banned: snap.banned.len(),
        }
    }

    /// Our verified pieces now.
    pub fn verified(&self) -> Bitfield {
        self.public.snapshot().verified.clone()
    }

    /// The IPs banned for sending corrupt data.
    pub fn banned(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.public.snapshot().banned.iter().copied().collect();
        v.sort();
        v
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Candidate peer addresses and their connection history.
#[derive(Default)]
struct Candidates {
    queue: VecDeque<SocketAddr>,
    known: HashMap<SocketAddr, Candidate>,
}

struct Candidate {
    failures: u32,
    next_try: Instant,
    /// Queued or being tried or connected.
    busy: bool,
}

/// Failed connection attempts before an address is given up (until the DHT offers it
/// again after a pause).
const MAX_CONNECT_FAILURES: u32 = 3;

/// Addresses remembered per torrent (libtorrent's peer list holds 3,000 by default): a
/// popular swarm's DHT replies, or peers' PEX messages, cannot make a session hold more.
/// When full, an idle address with the most failed attempts makes room; if every one is
/// queued, being tried or connected, the new address is dropped.
const MAX_KNOWN_CANDIDATES: usize = 4000;

impl Candidates {
    /// Queues `addr` for a connection attempt, unless it is no peer address at all (port 0,
    /// or a bogon of either family: multicast, unspecified, link-local, documentation...),
    /// whichever source named it (the DHT, a magnet, a peer's PEX), is known and busy, or
    /// is pausing after failures.
    fn offer(&mut self, addr: SocketAddr, now: Instant) {
        if addr.port() == 0 || crate::dht::limits::is_bogon(addr.ip()) {
            return;
        }
        if !self.known.contains_key(&addr)
            && self.known.len() >= MAX_KNOWN_CANDIDATES
            && !self.evict_one()
        {
            return;
        }
        let c = self.known.entry(addr).or_insert(Candidate {
            failures: 0,
            next_try: now,
            busy: false,
        });
        if c.busy || c.next_try > now {
            return;
        }
        c.busy = true;
        self.queue.push_back(addr);
    }

    fn failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(c) = self.known.get_mut(&addr) {
            c.busy = false;
            c.failures += 1;
            let pause = if c.failures >= MAX_CONNECT_FAILURES {
                Duration::from_secs(300)
            } else {
                Duration::from_secs(2u64.pow(c.failures) * 5)
            };
            c.next_try = now + pause;
        }
    }

    fn disconnected(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(c) = self.known.get_mut(&addr) {
            c.busy = false;
            c.failures = 0;
            c.next_try = now + Duration::from_secs(10);
        }
    }

    /// Forgets the idle address with the most failed attempts; false if none is idle.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .known
            .iter()
            .filter(|(_, c)| !c.busy)
            .max_by_key(|(_, c)| c.failures)
            .map(|(a, _)| *a);
        match victim {
            Some(a) => {
                self.known.remove(&a);
                true
            }
            None => false,
        }
    }

    fn mark_busy(&mut self, addr: SocketAddr, now: Instant) {
        self.known
            .entry(addr)
            .or_insert(Candidate {
                failures: 0,
                next_try: now,
                busy: true,
            })
            .busy = true;
    }
}

/// One connected peer, as the session task holds it.
struct Peer {
    /// The connection's protocol state (sans-IO).
    conn: PeerConnection,
    /// Bytes for the driver to write; dropping it closes the connection.
    frames: mpsc::UnboundedSender<Vec<u8>>,
    addr: SocketAddr,
    peer_id: crate::torrent::PeerId,
    outgoing: bool,
    connected_at: Instant,
    /// Whether (and how) the picker counts the peer's pieces: `Some(seed?)`.
    registered: Option<bool>,
    /// BEP 11 `added.f` bits known from the connection itself (uTP, outgoing); the seed
    /// bit is added when a message is built.
    pex_flags: u8,
    /// Payload bytes received (accepted) from and sent to the peer.
    down: u64,
    up: u64,
    /// When the peer last sent a block we wanted.
    last_block: Option<Instant>,
    last_down: u64,
    last_up: u64,
    down_rate: f64,
    up_rate: f64,
}

/// PEX-learnt addresses held between two rounds of the session loop; more are dropped.
const MAX_PEX_INBOX: usize = 200;

/// The outcome of a connection attempt: the stream and the peer's handshake, or why not.
type Attempt = (SocketAddr, Result<(PeerStream, Handshake), WireError>);

/// Why we close a healthy connection ourselves.
const CLOSED_BY_SESSION: &str = "the session closed it (peer banned, or stopping)";
const BOTH_COMPLETE: &str = "both sides complete: nothing to trade";

/// The session task: owns the picker, the choker, the storage and every connection's state
/// machine; peer drivers only move bytes (see [`super::connection`]).
struct Runner {
    info_hash: InfoHash,
    info: Arc<Info>,
    info_bytes: Bytes,
    storage: Storage,
    cfg: SessionConfig,
    picker: Picker,
    choker: Choker,
    peers: HashMap<PeerKey, Peer>,
    /// Pieces that failed a hash check with several senders: per block, who sent it and
    /// the checksum of what they sent, until the piece passes.
    suspects: HashMap<u32, (Vec<PeerKey>, Vec<u32>)>,
    /// Which connection each key was (for blame after it left).
    key_ip: HashMap<PeerKey, IpAddr>,
    /// Addresses from peers' BEP 11 messages, waiting to be offered as candidates (with
    /// the ban, self and allow-list checks, dedup and connection limits of DHT peers).
    pex_inbox: Vec<SocketAddr>,
    strikes: HashMap<IpAddr, u32>,
    banned: HashSet<IpAddr>,
    cmds: mpsc::UnboundedReceiver<SessionCmd>,
    self_tx: mpsc::UnboundedSender<SessionCmd>,
    disk: mpsc::UnboundedReceiver<DiskEvent>,
    io_tx: mpsc::Sender<PeerIo>,
    io_rx: mpsc::Receiver<PeerIo>,
    read_tx: mpsc::UnboundedSender<ReadDone>,
    read_rx: mpsc::UnboundedReceiver<ReadDone>,
    drivers: JoinSet<()>,
    connecting: JoinSet<Attempt>,
    candidates: Candidates,
    phase: watch::Sender<Phase>,
    public: Arc<Public>,
    root: PathBuf,
    next_key: PeerKey,
    dirty: bool,
    last_save: Instant,
    /// The resume record being written by a blocking thread (at most one at a time; the
    /// fsync never stalls the task every connection's messages go through).
    saving: Option<tokio::task::JoinHandle<Result<(), ResumeError>>>,
    lookups: Option<tokio::task::JoinHandle<()>>,
    upload_limit: Option<TokenBucket>,
    /// Uploads wait for the rate limit until then.
    rate_wait: Option<Instant>,
    complete: bool,
    pick_buf: Vec<BlockRef>,
}

impl Runner {
    async fn run(mut self) {
        let result = self.run_inner().await;
        self.drivers.abort_all();
        self.connecting.abort_all();
        if let Some(l) = self.lookups.take() {
            l.abort();
        }
        self.storage.flush().await;
        if let Err(e) = self.save_now().await {
            tracing::warn!("{e}");
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.close(k, Ok("the session ended"));
        }
        let _ = self.phase.send(Phase::Stopped(result));
    }

    async fn run_inner(&mut self) -> Result<(), SessionError> {
        if let Some(stop) = self.check_start().await? {
            let _ = stop.send(());
            return Ok(());
        }
        if self.picker.is_complete() {
            self.complete = true;
            if !self.cfg.seed {
                return Ok(());
            }
            let _ = self.phase.send(Phase::Seeding);
        } else {
            let _ = self.phase.send(Phase::Downloading);
        }
        self.start_lookups();

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_choke = Instant::now();
        let mut rate_mark = (Instant::now(), 0u64, 0u64);
        loop {
            let wait = self.rate_wait.map(tokio::time::Instant::from_std);
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    None => return Ok(()),
                    Some(SessionCmd::Stop(done)) => {
                        let _ = done.send(());
                        return Ok(());
                    }
                    Some(SessionCmd::AddPeers(addrs)) => {
                        let now = Instant::now();
                        for a in addrs {
                            if !self.banned.contains(&a.ip()) && !self.is_self(a) {
                                self.candidates.offer(a, now);
                            }
                        }
                    }
                    Some(SessionCmd::Incoming(stream, addr, theirs)) => {
                        self.accept_incoming(*stream, addr, theirs);
                    }
                },
                Some(io) = self.io_rx.recv() => self.on_io(io),
                Some(done) = self.read_rx.recv() => self.on_read_done(done),
                Some(ev) = self.disk.recv() => {
                    if self.on_disk(ev)? {
                        // Saved before anyone hears we are complete: a process stopped
                        // right after "complete" restarts without re-checking.
                        if let Err(e) = self.save_now().await {
                            tracing::warn!("{e}");
                        }
                        if let Some(end) = self.on_complete() {
                            return end;
                        }
                    }
                }
                Some(done) = self.connecting.join_next() => {
                    if let Ok((addr, res)) = done {
                        self.connected(addr, res);
                    }
                }
                Some(_) = self.drivers.join_next() => {}
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.on_tick(now);
                    if now >= next_choke {
                        self.rechoke(now);
                        next_choke = now + self.cfg.choker.interval;
                    }
                    let (t, d, u) = rate_mark;
                    let dt = now.saturating_duration_since(t).as_secs_f64().max(1e-3);
                    let d2 = self.public.downloaded.load(Ordering::Relaxed);
                    let u2 = self.public.uploaded.load(Ordering::Relaxed);
                    {
                        let mut snap = self.public.snapshot();
                        let (dr, ur) = ((d2 - d) as f64 / dt, (u2 - u) as f64 / dt);
                        snap.rates = (snap.rates.0 * 0.5 + dr * 0.5, snap.rates.1 * 0.5 + ur * 0.5);
                        snap.seeds = self.peers.values().filter(|p| p.conn.is_seed()).count();
                    }
                    rate_mark = (now, d2, u2);
                    self.check_save().await?;
                    if self.dirty && now.saturating_duration_since(self.last_save) >= self.cfg.save_interval {
                        self.start_save();
                    }
                }
                _ = tokio::time::sleep_until(wait.unwrap_or_else(tokio::time::Instant::now)), if wait.is_some() => {
                    self.rate_wait = None;
                    self.service_all(Instant::now());
                }
            }
            self.connect_more();
        }
    }

    /// The start-up check. Returns a stop request that arrived meanwhile, if any.
    async fn check_start(&mut self) -> Result<Option<oneshot::Sender<()>>, SessionError> {
        let n = self.info.num_pieces();
        if self.cfg.assume_complete {
            for p in 0..n as u32 {
                self.mark_have(p);
            }
            return Ok(None);
        }
        let record = self
            .cfg
            .resume
            .as_ref()
            .and_then(|r| r.load(&self.info_hash, n, self.info.files.len()));
        let storage = &self.storage;
        let plan = plan_start(
            record.as_ref(),
            &self.root,
            &storage.stamps(),
            |p| storage.piece_files(p),
            |f| storage.preexisting(f),
            n,
        );
        for p in plan.trusted.ones() {
            self.mark_have(p as u32);
        }
        self.public
            .checked
            .1
            .store(plan.check.len() as u64, Ordering::Relaxed);
        // Queue the checks a few per disk thread at a time, so a stop is noticed soon.
        let mut pending = plan.check.into_iter();
        let window = 4 * self.cfg.disk_threads.max(1);
        let mut in_flight = 0;
        for p in pending.by_ref().take(window) {
            self.storage.check(p);
            in_flight += 1;
        }
        while in_flight > 0 {
            tokio::select! {
                ev = self.disk.recv() => match ev {
                    Some(DiskEvent::Checked { piece, ok }) => {
                        in_flight -= 1;
                        self.public.checked.0.fetch_add(1, Ordering::Relaxed);
                        if ok {
                            self.mark_have(piece);
                        }
                        if let Some(p) = pending.next() {
                            self.storage.check(p);
                            in_flight += 1;
                        }
                    }
                    Some(_) => {}
                    None => return Err(SessionError::DiskStopped),
                },
                cmd = self.cmds.recv() => match cmd {
                    Some(SessionCmd::Stop(done)) => return Ok(Some(done)),
                    Some(SessionCmd::AddPeers(addrs)) => {
                        let now = Instant::now();
                        for a in addrs {
                            self.candidates.offer(a, now);
                        }
                    }
                    // Nobody to trade with until we know what we have.
                    Some(SessionCmd::Incoming(..)) => {}
                    None => return Ok(None),
                },
            }
        }
        self.dirty = true;
        self.save_now().await?;
        Ok(None)
    }

    /// Records a piece found valid on disk (no peer is connected yet).
    fn mark_have(&mut self, piece: u32) {
        self.picker.mark_have(piece);
        self.publish_verified(piece);
    }

    fn publish_verified(&self, piece: u32) {
        let mut snap = self.public.snapshot();
        snap.verified.set(piece as usize);
        snap.verified_bytes = self.picker.verified_bytes();
    }

    fn publish_peers(&self) {
        let mut snap = self.public.snapshot();
        snap.peers = self.peers.len();
        snap.seeds = self.peers.values().filter(|p| p.conn.is_seed()).count();
    }

    /// The resume record as it stands, if there is a store and something changed.
    fn record_to_save(&mut self) -> Option<(ResumeStore, ResumeRecord)> {
        self.last_save = Instant::now();
        let Some(store) = self.cfg.resume.clone() else {
            self.dirty = false;
            return None;
        };
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let rec = ResumeRecord {
            dir: self.root.clone(),
            verified: self.picker.have().clone(),
            stamps: self.storage.stamps(),
        };
        Some((store, rec))
    }

    /// Starts writing the resume record on a blocking thread, unless one is being written
    /// (then it stays due for the next tick).
    fn start_save(&mut self) {
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some((store, rec)) = self.record_to_save() {
            let ih = self.info_hash;
            self.saving = Some(tokio::task::spawn_blocking(move || store.save(&ih, &rec)));
        }
    }

    /// The outcome of a background save that has finished (a failed one ends the session).
    async fn check_save(&mut self) -> Result<(), SessionError> {
        match self.saving.take() {
            Some(h) if h.is_finished() => join_save(h).await,
            other => {
                self.saving = other;
                Ok(())
            }
        }
    }

    /// Waits for any save in flight, then writes the record now if it changed since.
    async fn save_now(&mut self) -> Result<(), SessionError> {
        if let Some(h) = self.saving.take() {
            join_save(h).await?;
        }
        match self.record_to_save() {
            Some((store, rec)) => {
                let ih = self.info_hash;
                join_save(tokio::task::spawn_blocking(move || store.save(&ih, &rec))).await
            }
            None => Ok(()),
        }
    }

    fn start_lookups(&mut self) {
        let (Some(dht), false) = (self.cfg.dht.clone(), self.info.private) else {
            return;
        };
        let ih = self.info_hash;
        let port = self.cfg.listen_port;
        let max = self.cfg.reannounce;
        let tx = self.self_tx.clone();
        // Announcing also looks the peers up; without a listen port nobody could connect
        // to us, so only look. Once complete we announce as a seed (BEP 33: scrapes count
        // us among the seeds, and seeds are left out of our results) and look less often;
        // while downloading, peers that join later are found within half a minute.
        let cfg = PeersConfig {
            announce: port.map_or(Announce::No, Announce::Port),
            first_pause: Duration::from_secs(1),
            max_pause: max,
            max_pause_leeching: max.min(Duration::from_secs(30)),
            seeding: self.complete,
            rounds: None,
        };
        let mut phase = self.phase.subscribe();
        self.lookups = Some(tokio::spawn(async move {
            let mut feed = dht.peers(ih, cfg);
            loop {
                tokio::select! {
                    p = feed.next() => {
                        let Some(p) = p else { return };
                        if tx.send(SessionCmd::AddPeers(vec![p])).is_err() {
                            return;
                        }
                    }
                    changed = phase.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let seeding = matches!(*phase.borrow(), Phase::Seeding);
                        feed.set_seeding(seeding);
                    }
                }
            }
        }));
    }

    /// Our own listen address, as the DHT may hand it back to us.
    fn is_self(&self, addr: SocketAddr) -> bool {
        let Some(port) = self.cfg.listen_port else {
            return false;
        };
        let Some(dht) = &self.cfg.dht else {
            return false;
        };
        addr.port() == port && addr.ip() == dht.local_addr().ip()
    }

    fn connect_more(&mut self) {
        self.offer_pex_peers(Instant::now());
        if self.complete && !self.cfg.seed {
            return;
        }
        let now = Instant::now();
        loop {
            if self.peers.len() + self.connecting.len() >= self.cfg.max_peers
                || self.connecting.len() >= self.cfg.max_connecting
            {
                return;
            }
            let Some(addr) = self.candidates.queue.pop_front() else {
                return;
            };
            if self.banned.contains(&addr.ip()) {
                continue;
            }
            if self.peers.values().any(|p| p.addr == addr) {
                self.candidates.disconnected(addr, now);
                continue;
            }
            let ours = Handshake::new(self.info_hash, self.cfg.peer_id);
            let allow = self.cfg.allow.clone();
            let wire = self.cfg.wire;
            let local = self
                .cfg
                .local_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == addr.is_ipv4());
            let transports = self.cfg.transports.clone();
            self.connecting.spawn(async move {
                let res = open_outgoing(addr, local, &allow, &wire, &transports, &ours).await;
                (addr, res)
            });
        }
    }

    /// Moves the addresses learnt by PEX into the candidates, through the same checks as
    /// DHT peers (and the allow-list here already, so none is even queued).
    fn offer_pex_peers(&mut self, now: Instant) {
        if self.pex_inbox.is_empty() {
            return;
        }
        let learnt = std::mem::take(&mut self.pex_inbox);
        let mut new = 0;
        for a in learnt {
            if self.banned.contains(&a.ip()) || self.is_self(a) || !self.cfg.allow.allows(a) {
                continue;
            }
            if !self.candidates.known.contains_key(&a) {
                new += 1;
                tracing::debug!(peer = %a, "new candidate peer from PEX");
            }
            self.candidates.offer(a, now);
        }
        crate::wire::pex::note(crate::wire::pex::PexEvent::Learned(new));
    }

    fn connected(&mut self, addr: SocketAddr, res: Result<(PeerStream, Handshake), WireError>) {
        let now = Instant::now();
        match res {
            Ok((stream, theirs)) => {
                if !self.add_peer(stream, addr, theirs, true) {
                    self.candidates.disconnected(addr, now);
                }
            }
            Err(e) => {
                tracing::debug!(%addr, "connect failed: {e}");
                self.candidates.failed(addr, now);
            }
        }
    }

    fn accept_incoming(&mut self, stream: PeerStream, addr: SocketAddr, theirs: Handshake) {
        if self.banned.contains(&addr.ip()) {
            return;
        }
        if self.peers.len() >= self.cfg.max_peers {
            tracing::debug!(%addr, "incoming peer refused: connection limit");
            return;
        }
        if self.add_peer(stream, addr, theirs, false) {
            self.candidates.mark_busy(addr, Instant::now());
        }
    }

    /// Registers a handshaken connection and starts its driver. Refuses ourselves, a peer
    /// id already connected, and (when complete) nothing else: a seed serves everyone.
    fn add_peer(
        &mut self,
        stream: PeerStream,
        addr: SocketAddr,
        theirs: Handshake,
        outgoing: bool,
    ) -> bool {
        if theirs.peer_id == self.cfg.peer_id
            || self.peers.values().any(|p| p.peer_id == theirs.peer_id)
        {
            return false;
        }
        let now = Instant::now();
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        let utp = stream.kind() == crate::wire::TransportKind::Utp;
        let pex_flags = if utp { crate::wire::pex::flags::UTP } else { 0 }
            | if outgoing {
                crate::wire::pex::flags::REACHABLE
            } else {
                0
            };
        let conn = PeerConnection::new(
            ConnConfig {
                info: self.info.clone(),
                info_bytes: self.info_bytes.clone(),
                info_hash: self.info_hash,
                addr,
                outgoing,
                // Every piece-trading connection sends `Handshake::new`, which claims BEP 6
                // (the session's dials, and the listener's reply when it hands one over).
                fast: theirs.supports_fast(),
                extensions: theirs.supports_extensions(),
                dht_port: self.cfg.dht_port.filter(|_| theirs.supports_dht()),
                listen_port: self.cfg.listen_port,
                our_ipv6: self.cfg.local_ips.iter().find_map(|ip| match ip {
                    IpAddr::V6(v6) if !v6.is_unspecified() => Some(*v6),
                    _ => None,
                }),
                pex: self.cfg.pex && !self.info.private,
                max_pipeline: self.cfg.max_pipeline,
            },
            self.picker.have(),
            now,
        );
        let (frames, frames_rx) = mpsc::unbounded_channel();
        self.drivers.spawn(peer::drive(
            key,
            stream,
            self.cfg.wire,
            self.io_tx.clone(),
            frames_rx,
        ));
        self.peers.insert(
            key,
            Peer {
                conn,
                frames,
                addr,
                peer_id: theirs.peer_id,
                outgoing,
                connected_at: now,
                registered: None,
                pex_flags,
                down: 0,
                up: 0,
                last_block: None,
                last_down: 0,
                last_up: 0,
                down_rate: 0.0,
                up_rate: 0.0,
            },
        );
        self.key_ip.insert(key, addr.ip());
        self.publish_peers();
        self.service(key, now);
        true
    }

    /// Ends connection `key` (if it is still open): its requests and availability go back
    /// to the picker, its driver is dropped, and one debug line says who ended it and why.
    fn close(&mut self, key: PeerKey, why: Result<&'static str, PeerError>) {
        let Some(mut p) = self.peers.remove(&key) else {
            return;
        };
        let now = Instant::now();
        let outstanding = p.conn.take_outstanding();
        match p.registered {
            Some(seed) => self
                .picker
                .remove_peer(key, p.conn.bits(), seed, &outstanding),
            None => self.picker.release(key, &outstanding),
        }
        self.choker.peer_gone(key);
        let (by, reason) = end_reason(&why);
        tracing::debug!(
            addr = %p.addr,
            outgoing = p.outgoing,
            secs = now.saturating_duration_since(p.connected_at).as_secs(),
            down = p.down,
            up = p.up,
            "peer connection ended: {by}: {reason}"
        );
        if !self.suspects.values().any(|(s, _)| s.contains(&key)) {
            self.key_ip.remove(&key);
        }
        if p.outgoing {
            self.candidates.disconnected(p.addr, now);
        } else if let Some(c) = self.candidates.known.get_mut(&p.addr) {
            c.busy = false;
        }
        self.publish_peers();
    }

    /// What a peer's driver reported (a peer's failure is its own: it ends only that
    /// connection).
    fn on_io(&mut self, io: PeerIo) {
        let now = Instant::now();
        let key = io.key;
        match io.ev {
            IoEvent::Message(msg) => {
                let Some(p) = self.peers.get_mut(&key) else {
                    return;
                };
                if let Err(e) = p.conn.handle(now, msg) {
                    self.close(key, Err(e));
                    return;
                }
                self.drain_events(key, now);
                self.service(key, now);
            }
            IoEvent::Written(total) => {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.conn.on_written(now, total);
                    self.service(key, now);
                }
            }
            IoEvent::Ended(e) => self.close(key, Err(PeerError::Wire(e))),
        }
    }

    /// Acts on what connection `key`'s machine reported.
    fn drain_events(&mut self, key: PeerKey, now: Instant) {
        loop {
            let Some(p) = self.peers.get_mut(&key) else {
                return;
            };
            let Some(ev) = p.conn.poll_event() else {
                return;
            };
            match ev {
                PeerEvent::Bitfield => {
                    if p.registered.is_none() {
                        p.registered = Some(self.picker.add_peer(p.conn.bits()));
                    }
                }
                PeerEvent::Have(piece) => match p.registered {
                    None => {
                        let mut only = Bitfield::new(self.info.num_pieces());
                        only.set(piece as usize);
                        self.picker.add_peer(&only);
                        p.registered = Some(false);
                    }
                    Some(false) => self.picker.peer_has(piece),
                    Some(true) => {}
                },
                PeerEvent::Block { piece, begin, data } => {
                    self.on_block(key, piece, begin, data, now)
                }
                PeerEvent::Unrequested(len) => {
                    self.public
                        .wasted
                        .fetch_add(u64::from(len), Ordering::Relaxed);
                }
                PeerEvent::Released(r) => self.picker.release(key, &[r]),
                PeerEvent::Interested => {
                    if p.conn.am_choking() && self.choker.on_interested(key) {
                        p.conn.unchoke(now);
                    }
                }
                PeerEvent::DhtNode(a) => {
                    if let Some(dht) = &self.cfg.dht {
                        let _ = dht.add_contacts(vec![a]);
                    }
                }
                // Read from the connection when PEX messages are built.
                PeerEvent::ListenAddr(_) => {}
                PeerEvent::OtherAddr(a) => {
                    if !self.banned.contains(&a.ip())
                        && !self.is_self(a)
                        && self.cfg.allow.allows(a)
                    {
                        tracing::debug!(peer = %a, "candidate peer from a BEP 10 ipv6 address");
                        self.candidates.offer(a, now);
                    }
                }
                PeerEvent::Pex(addrs) => {
                    let room = MAX_PEX_INBOX.saturating_sub(self.pex_inbox.len());
                    self.pex_inbox.extend(addrs.into_iter().take(room));
                }
            }
        }
    }

    /// A block we asked `key` for: to the picker, then to the disk (in order, so a piece's
    /// writes are queued before its hash check).
    fn on_block(&mut self, key: PeerKey, piece: u32, begin: u32, data: Bytes, now: Instant) {
        let len = data.len() as u32;
        match self.picker.on_block(key, piece, begin, len, now) {
            BlockResult::Accepted { complete, cancel } => {
                self.storage.write(piece, begin, data);
                if complete {
                    let crcs = self.suspects.contains_key(&piece);
                    self.storage.verify(piece, crcs);
                }
                let r = BlockRef {
                    piece,
                    begin,
                    length: len,
                };
                for k in cancel {
                    if let Some(o) = self.peers.get_mut(&k) {
                        o.conn.cancel(now, r);
                        transmit(o, now);
                    }
                }
                self.public
                    .downloaded
                    .fetch_add(u64::from(len), Ordering::Relaxed);
                if let Some(p) = self.peers.get_mut(&key) {
                    p.down += u64::from(len);
                    p.last_block = Some(now);
                }
            }
            BlockResult::Duplicate | BlockResult::NotWanted => {
                self.public
                    .wasted
                    .fetch_add(u64::from(len), Ordering::Relaxed);
            }
            BlockResult::Invalid => self.close(
                key,
                Err(PeerError::Protocol(format!(
                    "block {piece}:{begin}+{len} does not fit the torrent"
                ))),
            ),
        }
    }

    /// After any input of connection `key`: refills its requests from the picker, starts
    /// the disk reads it may have, and hands what it queued to its driver.
    fn service(&mut self, key: PeerKey, now: Instant) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if self.storage.backlog() <= self.cfg.max_disk_backlog
            && let Some(req) = p.conn.wants_blocks()
        {
            // A restricted set is not a seed's, whatever the peer has.
            let seed = !req.restricted && p.registered == Some(true);
            self.pick_buf.clear();
            self.picker
                .pick(key, req.pieces, seed, req.room, now, &mut self.pick_buf);
            p.conn.requested(now, &self.pick_buf);
        }
        if self.rate_wait.is_none() {
            while let Some(r) = p.conn.next_upload() {
                if let Some(limit) = &mut self.upload_limit
                    && let Err(wait) = limit.take_or_wait(f64::from(r.length), now)
                {
                    self.rate_wait = Some(now + wait);
                    break;
                }
                p.conn.upload_started();
                self.storage
                    .read(r.piece, r.begin, r.length, key, self.read_tx.clone());
            }
        }
        transmit(p, now);
    }

    fn service_all(&mut self, now: Instant) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.service(k, now);
        }
    }

    fn on_read_done(&mut self, done: ReadDone) {
        let now = Instant::now();
        let key = done.tag;
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let data = match done.data {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("cannot read a block to upload: {e}");
                None
            }
        };
        let sent = p.conn.on_read(now, done.piece, done.begin, data);
        p.up += sent;
        self.public.uploaded.fetch_add(sent, Ordering::Relaxed);
        self.service(key, now);
    }

    /// Once a second: slow requests go back to the picker, every connection's timers
    /// (rate, write stall, keep-alive), and PEX messages that are due.
    fn on_tick(&mut self, now: Instant) {
        if !self.picker.is_complete() {
            for (peer, block) in self.picker.reclaim_slow(now) {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.conn.cancel(now, block);
                }
            }
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        let mut connected: Option<Vec<(PeerKey, SocketAddr, u8)>> = None;
        for key in keys {
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            if let Err(e) = p.conn.on_tick(now) {
                self.close(key, Err(e));
                continue;
            }
            if p.conn.pex_due(now) {
                let all = connected.get_or_insert_with(|| {
                    self.peers
                        .iter()
                        .filter_map(|(k, o)| {
                            let seed = if o.conn.is_seed() {
                                crate::wire::pex::flags::SEED
                            } else {
                                0
                            };
                            o.conn.listen_addr().map(|a| (*k, a, o.pex_flags | seed))
                        })
                        .collect()
                });
                let others: Vec<(SocketAddr, u8)> = all
                    .iter()
                    .filter(|(k, _, _)| *k != key)
                    .map(|(_, a, f)| (*a, *f))
                    .collect();
                if let Some(p) = self.peers.get_mut(&key) {
                    p.conn.send_pex(now, &others);
                }
            }
            self.service(key, now);
        }
    }

    /// A disk thread's report; `true` when the torrent just became complete.
    fn on_disk(&mut self, ev: DiskEvent) -> Result<bool, SessionError> {
        match ev {
            DiskEvent::Verified {
                piece,
                ok,
                block_crcs,
            } => {
                if ok {
                    self.piece_passed(piece, block_crcs);
                    if self.picker.is_complete() {
                        self.complete = true;
                        self.dirty = true;
                        return Ok(true);
                    }
                } else {
                    self.piece_failed(piece, block_crcs);
                }
                Ok(false)
            }
            DiskEvent::Checked { .. } => Ok(false),
            DiskEvent::WriteFailed(e) => Err(SessionError::Storage(Arc::new(e))),
        }
    }

    fn piece_passed(&mut self, piece: u32, crcs: Option<Vec<u32>>) {
        self.picker.on_verified(piece, true);
        self.publish_verified(piece);
        self.dirty = true;
        if let (Some((senders, bad_crcs)), Some(good)) = (self.suspects.remove(&piece), crcs) {
            // The senders of blocks that differ from the verified copy lied.
            let mut liars: Vec<PeerKey> = senders
                .iter()
                .zip(bad_crcs.iter().zip(&good))
                .filter(|(_, (b, g))| b != g)
                .map(|(s, _)| *s)
                .collect();
            liars.sort_unstable();
            liars.dedup();
            let ips: Vec<IpAddr> = liars
                .iter()
                .filter_map(|k| self.key_ip.get(k).copied())
                .collect();
            for ip in ips {
                self.strike(ip);
            }
        }
        let now = Instant::now();
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(p) = self.peers.get_mut(&key) {
                p.conn.we_have(now, piece);
            }
            self.service(key, now);
        }
    }

    fn piece_failed(&mut self, piece: u32, crcs: Option<Vec<u32>>) {
        self.public.hash_failures.fetch_add(1, Ordering::Relaxed);
        let size = u64::from(self.picker.piece_size(piece));
        let public = &self.public;
        public.wasted.fetch_add(size, Ordering::Relaxed);
        public.downloaded.fetch_sub(
            size.min(public.downloaded.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let senders = self.picker.block_senders(piece).unwrap_or_default();
        self.picker.on_verified(piece, false);
        let mut distinct = senders.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let single = if let [only] = distinct.as_slice() {
            self.key_ip.get(only).copied()
        } else {
            None
        };
        match single {
            Some(ip) => {
                tracing::info!(piece, %ip, "piece failed its hash check");
                self.strike(ip);
            }
            None => {
                // Several senders: keep what each sent, judge when the piece passes.
                if let Some(c) = crcs {
                    self.suspects.entry(piece).or_insert((senders, c));
                }
                tracing::info!(
                    piece,
                    senders = distinct.len(),
                    "piece failed its hash check"
                );
            }
        }
    }

    fn strike(&mut self, ip: IpAddr) {
        let n = self.strikes.entry(ip).or_insert(0);
        *n += 1;
        if *n < self.cfg.ban_after {
            return;
        }
        tracing::warn!(%ip, strikes = *n, "banning peer for sending corrupt data");
        self.banned.insert(ip);
        self.public.snapshot().banned.insert(ip);
        let keys: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.addr.ip() == ip)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.close(k, Ok(CLOSED_BY_SESSION));
        }
    }

    /// Every piece is verified (and the record saved): the session ends, or seeds.
    fn on_complete(&mut self) -> Option<Result<(), SessionError>> {
        if !self.cfg.seed {
            return Some(Ok(()));
        }
        let _ = self.phase.send(Phase::Seeding);
        // Seeds have nothing to give each other.
        let done: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.conn.keep_when_complete())
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            self.close(k, Ok(BOTH_COMPLETE));
        }
        None
    }

    fn rechoke(&mut self, now: Instant) {
        let seeding = self.picker.is_complete();
        let mut views = Vec::with_capacity(self.peers.len());
        let interval = self.cfg.choker.interval.as_secs_f64().max(1e-3);
        for (&key, p) in self.peers.iter_mut() {
            // Average of this round and the last, so one quiet interval does not drop a
            // good partner.
            p.down_rate = 0.5 * p.down_rate + 0.5 * (p.down - p.last_down) as f64 / interval;
            p.up_rate = 0.5 * p.up_rate + 0.5 * (p.up - p.last_up) as f64 / interval;
            p.last_down = p.down;
            p.last_up = p.up;
            views.push(PeerView {
                key,
                interested: p.conn.peer_interested(),
                down_rate: p.down_rate,
                up_rate: p.up_rate,
                connected_at: p.connected_at,
                last_block: p.last_block,
            });
        }
        let changes = self.choker.rechoke(now, &views, seeding);
        for (key, unchoke) in changes {
            if let Some(p) = self.peers.get_mut(&key) {
                if unchoke {
                    p.conn.unchoke(now);
                } else {
                    p.conn.choke(now);
                }
            }
            self.service(key, now);
        }
    }
}

/// The outcome of a resume save on a blocking thread.
async fn join_save(
    h: tokio::task::JoinHandle<Result<(), ResumeError>>,
) -> Result<(), SessionError> {
    match h.await {
        Ok(r) => r.map_err(SessionError::Resume),
        // The save panicked (or the runtime is shutting down): the record was not written.
        Err(_) => Err(SessionError::TaskEnded),
    }
}

/// Hands what connection `p` queued to its driver.
fn transmit(p: &mut Peer, now: Instant) {
    if let Some(buf) = p.conn.take_transmit(now) {
        // A driver that is gone reports `Ended`; its bytes no longer matter.
        let _ = p.frames.send(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The candidate table stays bounded: once full, a new address replaces an idle one
    /// that failed (the most failures first), and is dropped while every known address
    /// is queued or connected.
    #[test]
    fn candidates_stay_bounded_and_evict_failed_idle_addresses() {
        let now = Instant::now();
        let addr =
            |i: usize| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6881));
        let mut c = Candidates::default();
        for i in 0..MAX_KNOWN_CANDIDATES + 50 {
            c.offer(addr(i), now);
        }
        assert_eq!(
            c.known.len(),
            MAX_KNOWN_CANDIDATES,
            "all busy: the excess is dropped"
        );
        assert_eq!(c.queue.len(), MAX_KNOWN_CANDIDATES);
        assert!(!c.known.contains_key(&addr(MAX_KNOWN_CANDIDATES)));
        // Two attempts fail, one of them twice: the newcomer replaces the twice-failed one.
        c.failed(addr(7), now);
        c.failed(addr(9), now);
        c.offer(addr(9), now + Duration::from_secs(3600));
        c.failed(addr(9), now + Duration::from_secs(3600));
        let new = addr(MAX_KNOWN_CANDIDATES + 100);
        c.offer(new, now);
        assert_eq!(c.known.len(), MAX_KNOWN_CANDIDATES);
        assert!(c.known.contains_key(&new) && c.known[&new].busy);
        assert!(
            !c.known.contains_key(&addr(9)),
            "the most failures goes first"
        );
        assert!(c.known.contains_key(&addr(7)));
        // A known address is never refused for lack of room.
        c.offer(addr(7), now + Duration::from_secs(3600));
        assert!(c.known[&addr(7)].busy);
    }

    #[test]
    fn candidates_that_are_no_peer_address_are_never_queued() {
        let now = Instant::now();
        let mut c = Candidates::default();
        for bad in [
            "10.0.0.1:0",
            "224.0.0.1:6881",
            "0.0.0.0:6881",
            "[fe80::1]:6881",
            "[ff02::1]:6881",
            "[2001:db8::1]:6881",
            "[::ffff:255.255.255.255]:6881",
        ] {
            c.offer(bad.parse().unwrap(), now);
        }
        assert!(c.queue.is_empty() && c.known.is_empty());
        for good in ["10.0.0.1:6881", "[fd77::1]:6881", "[2a00:1450::1]:51413"] {
            c.offer(good.parse().unwrap(), now);
        }
        assert_eq!(c.queue.len(), 3);
    }

    #[test]
    fn token_bucket_paces_and_lets_oversized_sends_through_in_debt() {
        let t0 = Instant::now();
        // 64 KiB/s: the burst is four 16 KiB blocks.
        let mut b = upload_bucket(64 * 1024, t0);
        for _ in 0..4 {
            assert!(b.take_or_wait(16384.0, t0).is_ok());
        }
        let wait = b.take_or_wait(16384.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.25).abs() < 1e-6, "{wait:?}");
        assert!(
            b.take_or_wait(16384.0, t0 + Duration::from_millis(250))
                .is_ok()
        );
        // A 128 KiB block is larger than the burst: it waits for a full bucket, goes
        // through, and the debt delays what follows by its excess.
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.take_or_wait(131_072.0, t1).is_ok());
        let wait = b.take_or_wait(16384.0, t1).unwrap_err();
        assert!((wait.as_secs_f64() - 1.25).abs() < 1e-6, "{wait:?}");
    }
}
