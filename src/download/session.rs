//! One torrent being downloaded or seeded: the picker, the choker, the storage, the peer
//! connections, and the loop that ties them together.
//!
//! Peer connections are tasks (`super::peer`) that share the torrent's state behind one
//! mutex: the hot path (a block arrives, the pipeline is refilled) takes it briefly without
//! a round trip through another task. Everything periodic or torrent-wide runs in the
//! session task: connecting to candidates as the DHT (and peers' BEP 11 PEX messages)
//! stream them (bounded number of connections and of connection attempts), accepting
//! handed-off incoming connections,
//! hash-check results from the disk threads (`have` broadcasts, bans), the 10 s choking
//! round, the slow-peer sweep, and batched resume-record saves.
//!
//! Bans: every block's sender is recorded. A piece that fails its hash check with a single
//! sender is a strike against that peer's IP. When several peers sent it, the stored copy's
//! per-block checksums are kept, and once the piece passes, the senders of the blocks that
//! differ are the liars (the others are innocent). An IP with
//! [`SessionConfig::ban_after`] strikes is disconnected and never contacted again.

use crate::util::TokenBucket;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::bitfield::Bitfield;
use super::choker::{Choker, ChokerConfig, PeerView};
use super::peer::{self, PeerCmd};
use super::picker::{BlockRef, PeerKey, Picker, PickerConfig};
use super::resume::{ResumeError, ResumeRecord, ResumeStore, plan_start};
use super::storage::{DiskEvent, Mode, Storage, StorageError};
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
    /// Address outgoing peer connections are made from (usually the listen IP).
    pub local_ip: Option<IpAddr>,
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
            wire: WireConfig {
                connect_timeout: Duration::from_secs(5),
                handshake_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(150),
                write_timeout: Duration::from_secs(60),
                ..WireConfig::default()
            },
            max_peers: 50,
            max_connecting: 8,
            listen_port: None,
            local_ip: None,
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

/// Per-connection counters the session reads for choking and progress.
#[derive(Debug, Default)]
pub(super) struct PeerStats {
    pub down: AtomicU64,
    pub up: AtomicU64,
    /// Milliseconds since the session started at which the peer last sent a wanted block
    /// (0: never).
    pub last_block_ms: AtomicU64,
    pub interested: AtomicBool,
    pub seed: AtomicBool,
}

pub(super) struct PeerEntry {
    pub addr: SocketAddr,
    pub peer_id: crate::torrent::PeerId,
    pub cmd: mpsc::UnboundedSender<PeerCmd>,
    pub stats: Arc<PeerStats>,
    pub connected_at: Instant,
    /// Where the peer accepts connections, for PEX: the address we dialed, or for an
    /// incoming peer its IP and the `p` port of its extension handshake (unknown until
    /// then, and then never advertised).
    pub listen: Option<SocketAddrV4>,
    /// BEP 11 `added.f` bits known from the connection itself (uTP, outgoing); the seed
    /// bit is added from `stats` when a message is built.
    pub pex_flags: u8,
    last_down: u64,
    last_up: u64,
    down_rate: f64,
    up_rate: f64,
}

/// The state behind the session mutex.
pub(super) struct State {
    pub picker: Picker,
    pub choker: Choker,
    pub peers: HashMap<PeerKey, PeerEntry>,
    /// Pieces that failed a hash check with several senders: per block, who sent it and
    /// the checksum of what they sent, until the piece passes.
    pub suspects: HashMap<u32, (Vec<PeerKey>, Vec<u32>)>,
    /// Which connection each key was (for blame after it left).
    pub key_ip: HashMap<PeerKey, IpAddr>,
    /// Addresses from peers' BEP 11 messages, waiting for the session loop to offer them
    /// as candidates (with the ban, self and allow-list checks, dedup and connection
    /// limits of DHT peers). Bounded by [`MAX_PEX_INBOX`].
    pub pex_inbox: Vec<SocketAddr>,
}

/// PEX-learnt addresses held between two rounds of the session loop; more are dropped.
pub(super) const MAX_PEX_INBOX: usize = 200;

/// What the session and its peer tasks share.
pub(super) struct Shared {
    pub info_hash: InfoHash,
    pub info: Arc<Info>,
    pub info_bytes: Bytes,
    pub storage: Storage,
    pub cfg: SessionConfig,
    pub started: Instant,
    state: Mutex<State>,
    pub downloaded: AtomicU64,
    pub uploaded: AtomicU64,
    pub wasted: AtomicU64,
    pub upload_limit: Option<Mutex<TokenBucket>>,
    complete: AtomicBool,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A peer task that panicked mid-update leaves counts possibly off by one block; the
        // download can still proceed (and every piece is hash-checked anyway).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<SessionCmd>,
    phase: watch::Receiver<Phase>,
    checked: Arc<(AtomicU64, AtomicU64)>,
    rates: Arc<Mutex<(f64, f64)>>,
    banned: Arc<Mutex<HashSet<IpAddr>>>,
    hash_failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

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
        let upload_limit = cfg.upload_rate.map(|r| Mutex::new(upload_bucket(r, now)));
        let shared = Arc::new(Shared {
            info_hash,
            info: Arc::new(info),
            info_bytes,
            storage,
            cfg,
            started: now,
            state: Mutex::new(State {
                picker,
                choker,
                peers: HashMap::new(),
                suspects: HashMap::new(),
                key_ip: HashMap::new(),
                pex_inbox: Vec::new(),
            }),
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            wasted: AtomicU64::new(0),
            upload_limit,
            complete: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (phase_tx, phase) = watch::channel(Phase::Checking);
        let checked = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let rates = Arc::new(Mutex::new((0.0, 0.0)));
        let banned = Arc::new(Mutex::new(HashSet::new()));
        let hash_failures = Arc::new(AtomicU64::new(0));
        let run = Runner {
            shared: shared.clone(),
            cmds: rx,
            self_tx: tx.clone(),
            disk: disk_rx,
            phase: phase_tx,
            checked: checked.clone(),
            rates: rates.clone(),
            banned: banned.clone(),
            hash_failures: hash_failures.clone(),
            root,
            peers: JoinSet::new(),
            connecting: JoinSet::new(),
            candidates: Candidates::default(),
            strikes: HashMap::new(),
            next_key: 0,
            dirty: false,
            last_save: now,
            lookups: None,
        };
        let task = tokio::spawn(run.run());
        Ok(Session {
            shared,
            tx,
            phase,
            checked,
            rates,
            banned,
            hash_failures,
            task,
        })
    }

    /// The torrent's info hash.
    pub fn info_hash(&self) -> InfoHash {
        self.shared.info_hash
    }

    /// The torrent's parsed info dict.
    pub fn info(&self) -> &Info {
        &self.shared.info
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
        let st = self.shared.lock();
        let peers = st.peers.len();
        let seeds = st
            .peers
            .values()
            .filter(|p| p.stats.seed.load(Ordering::Relaxed))
            .count();
        let verified_bytes = st.picker.verified_bytes();
        let verified_pieces = st.picker.have().count();
        drop(st);
        let (down, up) = *self.rates.lock().unwrap_or_else(|e| e.into_inner());
        Progress {
            phase: self.phase(),
            total_bytes: self.shared.info.total_length(),
            verified_bytes,
            pieces: self.shared.info.num_pieces(),
            verified_pieces,
            checked: (
                self.checked.0.load(Ordering::Relaxed),
                self.checked.1.load(Ordering::Relaxed),
            ),
            downloaded: self.shared.downloaded.load(Ordering::Relaxed),
            uploaded: self.shared.uploaded.load(Ordering::Relaxed),
            wasted: self.shared.wasted.load(Ordering::Relaxed),
            download_rate: down,
            upload_rate: up,
            peers,
            seeds,
            hash_failures: self.hash_failures.load(Ordering::Relaxed),
            banned: self.banned.lock().map(|b| b.len()).unwrap_or(0),
        }
    }

    /// Our verified pieces now.
    pub fn verified(&self) -> Bitfield {
        self.shared.lock().picker.have().clone()
    }

    /// The IPs banned for sending corrupt data.
    pub fn banned(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .banned
            .lock()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
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
    fn offer(&mut self, addr: SocketAddr, now: Instant) {
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

/// How a peer task ended.
struct PeerExit {
    key: PeerKey,
    addr: SocketAddr,
    outgoing: bool,
}

/// The outcome of a connection attempt: the stream and the peer's handshake, or why not.
type Attempt = (SocketAddr, Result<(PeerStream, Handshake), WireError>);

/// The session task.
struct Runner {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedReceiver<SessionCmd>,
    self_tx: mpsc::UnboundedSender<SessionCmd>,
    disk: mpsc::UnboundedReceiver<DiskEvent>,
    phase: watch::Sender<Phase>,
    checked: Arc<(AtomicU64, AtomicU64)>,
    rates: Arc<Mutex<(f64, f64)>>,
    banned: Arc<Mutex<HashSet<IpAddr>>>,
    hash_failures: Arc<AtomicU64>,
    root: PathBuf,
    peers: JoinSet<PeerExit>,
    connecting: JoinSet<Attempt>,
    candidates: Candidates,
    strikes: HashMap<IpAddr, u32>,
    next_key: PeerKey,
    dirty: bool,
    last_save: Instant,
    lookups: Option<tokio::task::JoinHandle<()>>,
}

impl Runner {
    async fn run(mut self) {
        let result = self.run_inner().await;
        self.peers.abort_all();
        self.connecting.abort_all();
        if let Some(l) = self.lookups.take() {
            l.abort();
        }
        self.shared.storage.flush().await;
        if let Err(e) = self.save_resume() {
            tracing::warn!("{e}");
        }
        self.shared.lock().peers.clear();
        let _ = self.phase.send(Phase::Stopped(result));
    }

    async fn run_inner(&mut self) -> Result<(), SessionError> {
        if let Some(stop) = self.check_start().await? {
            let _ = stop.send(());
            return Ok(());
        }
        let complete = self.shared.lock().picker.is_complete();
        if complete {
            self.shared.complete.store(true, Ordering::Relaxed);
            if !self.shared.cfg.seed {
                return Ok(());
            }
            let _ = self.phase.send(Phase::Seeding);
        } else {
            let _ = self.phase.send(Phase::Downloading);
        }
        self.start_lookups();

        let cfg = self.shared.cfg.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_choke = Instant::now();
        let mut rate_mark = (Instant::now(), 0u64, 0u64);
        loop {
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
                            if !self.is_banned(a.ip()) && !self.is_self(a) {
                                self.candidates.offer(a, now);
                            }
                        }
                    }
                    Some(SessionCmd::Incoming(stream, addr, theirs)) => {
                        self.accept_incoming(*stream, addr, theirs);
                    }
                },
                Some(ev) = self.disk.recv() => {
                    if let Some(end) = self.on_disk(ev)? {
                        return end;
                    }
                }
                Some(done) = self.peers.join_next() => {
                    if let Ok(exit) = done {
                        self.peer_left(exit);
                    }
                }
                Some(done) = self.connecting.join_next() => {
                    if let Ok((addr, res)) = done {
                        self.connected(addr, res);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.sweep_slow(now);
                    if now >= next_choke {
                        self.rechoke(now);
                        next_choke = now + cfg.choker.interval;
                    }
                    let (t, d, u) = rate_mark;
                    let dt = now.saturating_duration_since(t).as_secs_f64().max(1e-3);
                    let d2 = self.shared.downloaded.load(Ordering::Relaxed);
                    let u2 = self.shared.uploaded.load(Ordering::Relaxed);
                    if let Ok(mut r) = self.rates.lock() {
                        let (dr, ur) = ((d2 - d) as f64 / dt, (u2 - u) as f64 / dt);
                        *r = (r.0 * 0.5 + dr * 0.5, r.1 * 0.5 + ur * 0.5);
                    }
                    rate_mark = (now, d2, u2);
                    if self.dirty && now.saturating_duration_since(self.last_save) >= cfg.save_interval {
                        self.save_resume()?;
                    }
                }
            }
            self.connect_more();
        }
    }

    /// The start-up check. Returns a stop request that arrived meanwhile, if any.
    async fn check_start(&mut self) -> Result<Option<oneshot::Sender<()>>, SessionError> {
        let n = self.shared.info.num_pieces();
        if self.shared.cfg.assume_complete {
            let mut st = self.shared.lock();
            for p in 0..n as u32 {
                st.picker.mark_have(p);
            }
            return Ok(None);
        }
        let storage = &self.shared.storage;
        let record = self
            .shared
            .cfg
            .resume
            .as_ref()
            .and_then(|r| r.load(&self.shared.info_hash, n, self.shared.info.files.len()));
        let plan = plan_start(
            record.as_ref(),
            &self.root,
            &storage.stamps(),
            |p| storage.piece_files(p),
            |f| storage.preexisting(f),
            n,
        );
        {
            let mut st = self.shared.lock();
            for p in plan.trusted.ones() {
                st.picker.mark_have(p as u32);
            }
        }
        self.checked
            .1
            .store(plan.check.len() as u64, Ordering::Relaxed);
        // Queue the checks a few per disk thread at a time, so a stop is noticed soon.
        let mut pending = plan.check.into_iter();
        let window = 4 * self.shared.cfg.disk_threads.max(1);
        let mut in_flight = 0;
        for p in pending.by_ref().take(window) {
            storage.check(p);
            in_flight += 1;
        }
        while in_flight > 0 {
            tokio::select! {
                ev = self.disk.recv() => match ev {
                    Some(DiskEvent::Checked { piece, ok }) => {
                        in_flight -= 1;
                        self.checked.0.fetch_add(1, Ordering::Relaxed);
                        if ok {
                            self.shared.lock().picker.mark_have(piece);
                        }
                        if let Some(p) = pending.next() {
                            self.shared.storage.check(p);
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
        self.save_resume()?;
        Ok(None)
    }

    fn save_resume(&mut self) -> Result<(), SessionError> {
        self.last_save = Instant::now();
        let Some(store) = &self.shared.cfg.resume else {
            self.dirty = false;
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let rec = ResumeRecord {
            dir: self.root.clone(),
            verified: self.shared.lock().picker.have().clone(),
            stamps: self.shared.storage.stamps(),
        };
        self.dirty = false;
        store
            .save(&self.shared.info_hash, &rec)
            .map_err(SessionError::Resume)
    }

    fn start_lookups(&mut self) {
        let (Some(dht), false) = (self.shared.cfg.dht.clone(), self.shared.info.private) else {
            return;
        };
        let ih = self.shared.info_hash;
        let port = self.shared.cfg.listen_port;
        let max = self.shared.cfg.reannounce;
        let tx = self.self_tx.clone();
        let shared = self.shared.clone();
        // Announcing also looks the peers up; without a listen port nobody could connect
        // to us, so only look. Once complete we announce as a seed (BEP 33: scrapes count
        // us among the seeds, and seeds are left out of our results) and look less often;
        // while downloading, peers that join later are found within half a minute.
        let cfg = PeersConfig {
            announce: port.map_or(Announce::No, Announce::Port),
            first_pause: Duration::from_secs(1),
            max_pause: max,
            max_pause_leeching: max.min(Duration::from_secs(30)),
            seeding: shared.is_complete(),
            rounds: None,
        };
        let mut phase = self.phase.subscribe();
        self.lookups = Some(tokio::spawn(async move {
            let mut feed = dht.peers(ih, cfg);
            loop {
                tokio::select! {
                    p = feed.next() => {
                        let Some(p) = p else { return };
                        if tx.send(SessionCmd::AddPeers(vec![SocketAddr::V4(p)])).is_err() {
                            return;
                        }
                    }
                    changed = phase.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        feed.set_seeding(shared.is_complete());
                    }
                }
            }
        }));
    }

    fn is_banned(&self, ip: IpAddr) -> bool {
        self.banned.lock().map(|b| b.contains(&ip)).unwrap_or(false)
    }

    /// Our own listen address, as the DHT may hand it back to us.
    fn is_self(&self, addr: SocketAddr) -> bool {
        let Some(port) = self.shared.cfg.listen_port else {
            return false;
        };
        let Some(dht) = &self.shared.cfg.dht else {
            return false;
        };
        addr.port() == port && addr.ip() == dht.local_addr().ip()
    }

    fn connect_more(&mut self) {
        self.offer_pex_peers(Instant::now());
        let cfg = &self.shared.cfg;
        if self.shared.is_complete() && !cfg.seed {
            return;
        }
        let now = Instant::now();
        loop {
            let connected = self.shared.lock().peers.len();
            if connected + self.connecting.len() >= cfg.max_peers
                || self.connecting.len() >= cfg.max_connecting
            {
                return;
            }
            let Some(addr) = self.candidates.queue.pop_front() else {
                return;
            };
            if self.is_banned(addr.ip()) {
                continue;
            }
            let already = self.shared.lock().peers.values().any(|p| p.addr == addr);
            if already {
                self.candidates.disconnected(addr, now);
                continue;
            }
            let ih = self.shared.info_hash;
            let ours = Handshake::new(ih, cfg.peer_id);
            let allow = cfg.allow.clone();
            let wire = cfg.wire;
            let local = cfg.local_ip;
            let transports = cfg.transports.clone();
            self.connecting.spawn(async move {
                let res = open_outgoing(addr, local, &allow, &wire, &transports, &ours).await;
                (addr, res)
            });
        }
    }

    /// Moves the addresses peer tasks learnt by PEX into the candidates, through the same
    /// checks as DHT peers (and the allow-list here already, so none is even queued).
    fn offer_pex_peers(&mut self, now: Instant) {
        let learnt = std::mem::take(&mut self.shared.lock().pex_inbox);
        if learnt.is_empty() {
            return;
        }
        let mut new = 0;
        for a in learnt {
            if self.is_banned(a.ip()) || self.is_self(a) || !self.shared.cfg.allow.allows(a) {
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
        if self.is_banned(addr.ip()) {
            return;
        }
        let full = self.shared.lock().peers.len() >= self.shared.cfg.max_peers;
        if full {
            tracing::debug!(%addr, "incoming peer refused: connection limit");
            return;
        }
        if self.add_peer(stream, addr, theirs, false) {
            self.candidates.mark_busy(addr, Instant::now());
        }
    }

    /// Registers a handshaken connection and starts its task. Refuses ourselves, a peer id
    /// already connected, and (when complete) nothing else: a seed serves everyone.
    fn add_peer(
        &mut self,
        stream: PeerStream,
        addr: SocketAddr,
        theirs: Handshake,
        outgoing: bool,
    ) -> bool {
        if theirs.peer_id == self.shared.cfg.peer_id {
            return false;
        }
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(PeerStats::default());
        let utp = stream.kind() == crate::wire::TransportKind::Utp;
        let pex_flags = if utp { crate::wire::pex::flags::UTP } else { 0 }
            | if outgoing {
                crate::wire::pex::flags::REACHABLE
            } else {
                0
            };
        {
            let mut st = self.shared.lock();
            if st.peers.values().any(|p| p.peer_id == theirs.peer_id) {
                return false;
            }
            st.peers.insert(
                key,
                PeerEntry {
                    addr,
                    peer_id: theirs.peer_id,
                    cmd: tx,
                    stats: stats.clone(),
                    connected_at: Instant::now(),
                    listen: if outgoing { v4(addr) } else { None },
                    pex_flags,
                    last_down: 0,
                    last_up: 0,
                    down_rate: 0.0,
                    up_rate: 0.0,
                },
            );
            st.key_ip.insert(key, addr.ip());
        }
        let shared = self.shared.clone();
        self.peers.spawn(async move {
            let began = Instant::now();
            let r = peer::run(shared.clone(), key, addr, stream, theirs, stats.clone(), rx).await;
            let (by, reason) = peer::end_reason(&r);
            tracing::debug!(
                %addr,
                outgoing,
                secs = began.elapsed().as_secs(),
                down = stats.down.load(Ordering::Relaxed),
                up = stats.up.load(Ordering::Relaxed),
                "peer connection ended: {by}: {reason}"
            );
            PeerExit {
                key,
                addr,
                outgoing,
            }
        });
        true
    }

    fn peer_left(&mut self, exit: PeerExit) {
        let now = Instant::now();
        {
            let mut st = self.shared.lock();
            if !st.suspects.values().any(|(s, _)| s.contains(&exit.key)) {
                st.key_ip.remove(&exit.key);
            }
        }
        if exit.outgoing {
            self.candidates.disconnected(exit.addr, now);
        } else if let Some(c) = self.candidates.known.get_mut(&exit.addr) {
            c.busy = false;
        }
    }

    fn on_disk(&mut self, ev: DiskEvent) -> Result<Option<Result<(), SessionError>>, SessionError> {
        match ev {
            DiskEvent::Verified {
                piece,
                ok,
                block_crcs,
            } => {
                if ok {
                    self.piece_passed(piece, block_crcs);
                    if self.shared.lock().picker.is_complete() {
                        return Ok(self.on_complete());
                    }
                } else {
                    self.piece_failed(piece, block_crcs);
                }
                Ok(None)
            }
            DiskEvent::Checked { .. } => Ok(None),
            DiskEvent::WriteFailed(e) => Err(SessionError::Storage(Arc::new(e))),
        }
    }

    fn piece_passed(&mut self, piece: u32, crcs: Option<Vec<u32>>) {
        let mut st = self.shared.lock();
        st.picker.on_verified(piece, true);
        self.dirty = true;
        if let (Some((senders, bad_crcs)), Some(good)) = (st.suspects.remove(&piece), crcs) {
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
                .filter_map(|k| st.key_ip.get(k).copied())
                .collect();
            drop(st);
            for ip in ips {
                self.strike(ip);
            }
            st = self.shared.lock();
        }
        for p in st.peers.values() {
            let _ = p.cmd.send(PeerCmd::Have(piece));
        }
    }

    fn piece_failed(&mut self, piece: u32, crcs: Option<Vec<u32>>) {
        self.hash_failures.fetch_add(1, Ordering::Relaxed);
        let size = u64::from(self.shared.lock().picker.piece_size(piece));
        self.shared.wasted.fetch_add(size, Ordering::Relaxed);
        self.shared.downloaded.fetch_sub(
            size.min(self.shared.downloaded.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let mut st = self.shared.lock();
        let senders = st.picker.block_senders(piece).unwrap_or_default();
        st.picker.on_verified(piece, false);
        let mut distinct = senders.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let single = if let [only] = distinct.as_slice() {
            st.key_ip.get(only).copied()
        } else {
            None
        };
        match single {
            Some(ip) => {
                drop(st);
                tracing::info!(piece, %ip, "piece failed its hash check");
                self.strike(ip);
            }
            None => {
                // Several senders: keep what each sent, judge when the piece passes.
                if let Some(c) = crcs {
                    st.suspects.entry(piece).or_insert((senders, c));
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
        if *n < self.shared.cfg.ban_after {
            return;
        }
        tracing::warn!(%ip, strikes = *n, "banning peer for sending corrupt data");
        if let Ok(mut b) = self.banned.lock() {
            b.insert(ip);
        }
        let st = self.shared.lock();
        for p in st.peers.values().filter(|p| p.addr.ip() == ip) {
            let _ = p.cmd.send(PeerCmd::Close);
        }
    }

    fn on_complete(&mut self) -> Option<Result<(), SessionError>> {
        self.shared.complete.store(true, Ordering::Relaxed);
        self.dirty = true;
        if let Err(e) = self.save_resume() {
            tracing::warn!("{e}");
        }
        if !self.shared.cfg.seed {
            return Some(Ok(()));
        }
        let _ = self.phase.send(Phase::Seeding);
        // Seeds have nothing to give each other.
        let st = self.shared.lock();
        for p in st.peers.values() {
            let _ = p.cmd.send(PeerCmd::Complete);
        }
        None
    }

    fn sweep_slow(&mut self, now: Instant) {
        let mut st = self.shared.lock();
        if st.picker.is_complete() {
            return;
        }
        for (peer, block) in st.picker.reclaim_slow(now) {
            if let Some(p) = st.peers.get(&peer) {
                let _ = p.cmd.send(PeerCmd::Reclaimed(block));
            }
        }
    }

    fn rechoke(&mut self, now: Instant) {
        let mut st = self.shared.lock();
        let seeding = st.picker.is_complete();
        let mut views = Vec::with_capacity(st.peers.len());
        let started = self.shared.started;
        let interval = self.shared.cfg.choker.interval.as_secs_f64().max(1e-3);
        for (&key, p) in st.peers.iter_mut() {
            let down = p.stats.down.load(Ordering::Relaxed);
            let up = p.stats.up.load(Ordering::Relaxed);
            // Average of this round and the last, so one quiet interval does not drop a
            // good partner.
            p.down_rate = 0.5 * p.down_rate + 0.5 * (down - p.last_down) as f64 / interval;
            p.up_rate = 0.5 * p.up_rate + 0.5 * (up - p.last_up) as f64 / interval;
            p.last_down = down;
            p.last_up = up;
            let last = p.stats.last_block_ms.load(Ordering::Relaxed);
            views.push(PeerView {
                key,
                interested: p.stats.interested.load(Ordering::Relaxed),
                down_rate: p.down_rate,
                up_rate: p.up_rate,
                connected_at: p.connected_at,
                last_block: (last > 0).then(|| started + Duration::from_millis(last)),
            });
        }
        let changes = st.choker.rechoke(now, &views, seeding);
        for (key, unchoke) in changes {
            if let Some(p) = st.peers.get(&key) {
                let _ = p.cmd.send(if unchoke {
                    PeerCmd::Unchoke
                } else {
                    PeerCmd::Choke
                });
            }
        }
    }
}

/// Offers to the picker what a peer task knows about its requests; used by [`peer::leave`].
pub(super) fn release_all(
    st: &mut State,
    key: PeerKey,
    bits: &Bitfield,
    seed: Option<bool>,
    outstanding: &[BlockRef],
) {
    match seed {
        Some(seed) => st.picker.remove_peer(key, bits, seed, outstanding),
        None => st.picker.release(key, outstanding),
    }
    st.choker.peer_gone(key);
    st.peers.remove(&key);
}

/// The IPv4 form of a peer address, for DHT PORT handling.
pub(super) fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
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
