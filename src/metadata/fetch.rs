//! The metadata fetcher: info hash + candidate peers in, verified info dict out.
//!
//! One coordinator task owns all state (peers, assemblies, stats); each peer connection is a
//! task that only does I/O — connect, handshakes, PORT, and forwarding ut_metadata messages —
//! and talks to the coordinator over channels. Keeping every decision in one place makes the
//! lie handling (see [`super::assemble`]) straightforward to reason about.
//!
//! Strategy: blocks are requested from whichever peers are ready, spread so that each piece
//! is first asked of one peer only (a slow request is duplicated to a second peer after
//! [`FetchConfig::steal_after`]). That is the fast path: with several honest peers the dict
//! arrives in parallel. If the assembled dict fails the hash check, every peer is asked for
//! every piece it has not sent, so per-peer copies identify the liars; see the assemble
//! module for why this always terminates with the liars and only the liars dropped.
//!
//! Peers are validated before anything is buffered: `metadata_size` must be in
//! 1..=[`MAX_METADATA_SIZE`](crate::wire::MAX_METADATA_SIZE), every data message must carry
//! `total_size` equal to it and a block of exactly the expected length, and all candidate
//! blocks together are capped by [`FetchConfig::max_buffered`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::assemble::{Assembly, BlockError, Verdict};
use crate::dht::allow::AllowList;
use crate::dht::driver::{DhtHandle, PeerStream};
use crate::wire::{
    EXT_HANDSHAKE_ID, ExtHandshake, Handshake, MetadataMsg, OUR_UT_METADATA_ID, PeerConn,
    UT_METADATA, WireConfig, WireError, connect, handshake_outgoing, valid_metadata_size,
};

/// Unrequested data messages tolerated from one peer. A few are normal (an answer to a
/// request that already came from elsewhere, a duplicate); a stream of them only costs us
/// bandwidth and coordinator time.
pub const MAX_UNREQUESTED: u32 = 32;

/// Default for [`FetchConfig::max_window`]. libtorrent queues up to 1024 incoming metadata
/// requests and answers them as its send buffer drains, so a deeper pipeline is safe; 16
/// covers a 256 KiB dict (about 5,000 files) in one round trip.
pub const MAX_WINDOW: usize = 16;

/// Distinct metadata sizes tracked at once. Honest peers all advertise the same size; each
/// further size is a liar's, and each costs an assembly, so their number is capped.
pub const MAX_SIZE_GROUPS: usize = 4;

/// Settings of one fetch.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Our peer id in handshakes.
    pub peer_id: [u8; 20],
    /// Outbound allow-list: peers outside it are never connected to.
    pub allow: AllowList,
    /// Connect, handshake, read and write timeouts of each connection.
    pub wire: WireConfig,
    /// Peer connections open (or opening) at once.
    pub max_connections: usize,
    /// Requests in flight to one peer at most (also bounded by the peer's `reqq`).
    pub max_window: usize,
    /// How long a handshaken peer has to send its extension handshake.
    pub ext_handshake_timeout: Duration,
    /// How long a requested block may take before the peer is given up as too slow.
    pub request_timeout: Duration,
    /// How long a block request may be outstanding before the same block is also asked of a
    /// second peer.
    pub steal_after: Duration,
    /// Overall deadline; `None` waits until the peer source is exhausted.
    pub timeout: Option<Duration>,
    /// Cap on candidate block bytes held (distinct blocks, all peers).
    pub max_buffered: usize,
    /// Connection attempts per peer address. A peer that failed for a reason that may pass
    /// (connection refused or reset, "torrent not ready", rejected requests, too slow) is
    /// retried after `retry_delay`, doubled for each further attempt; a liar never is.
    pub max_attempts: u32,
    pub retry_delay: Duration,
    /// Our DHT node: PORT messages received from peers make it ping them.
    pub dht: Option<DhtHandle>,
    /// Our DHT UDP port, sent in a PORT message to peers that set the DHT bit.
    pub dht_port: Option<u16>,
    /// Our TCP listen port, advertised as `p` in the extension handshake.
    pub listen_port: Option<u16>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            peer_id: crate::wire::generate_peer_id(),
            allow: AllowList::any(),
            wire: WireConfig {
                connect_timeout: Duration::from_secs(3),
                handshake_timeout: Duration::from_secs(5),
                read_timeout: Duration::from_secs(30),
                write_timeout: Duration::from_secs(10),
                ..WireConfig::default()
            },
            max_connections: 12,
            max_window: MAX_WINDOW,
            ext_handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(8),
            steal_after: Duration::from_millis(500),
            timeout: None,
            max_buffered: 64 << 20,
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
            dht: None,
            dht_port: None,
            listen_port: None,
        }
    }
}

/// Where candidate peers come from, in priority order: an initial list (a magnet's `x.pe`
/// peers), then any number of DHT lookups and/or a channel, interleaved as they produce.
#[derive(Default)]
pub struct PeerSource {
    initial: VecDeque<SocketAddr>,
    streams: Vec<PeerStream>,
    channel: Option<mpsc::UnboundedReceiver<SocketAddr>>,
}

impl PeerSource {
    /// A source that yields `initial` and then ends.
    pub fn new(initial: impl IntoIterator<Item = SocketAddr>) -> Self {
        PeerSource {
            initial: initial.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Adds the peers of a DHT lookup.
    pub fn with_dht(mut self, stream: PeerStream) -> Self {
        self.streams.push(stream);
        self
    }

    /// Adds peers sent on a channel (e.g. by a task repeating lookups); the source ends
    /// only when every sender is dropped.
    pub fn with_channel(mut self, rx: mpsc::UnboundedReceiver<SocketAddr>) -> Self {
        self.channel = Some(rx);
        self
    }

    /// The next candidate, `None` when every input has ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<SocketAddr> {
        if let Some(a) = self.initial.pop_front() {
            return Some(a);
        }
        loop {
            if self.streams.is_empty() && self.channel.is_none() {
                return None;
            }
            // Polls every input fairly; an input that ends is removed.
            let ended = std::future::poll_fn(|cx| {
                for (i, s) in self.streams.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(r) = s.poll_next(cx) {
                        return std::task::Poll::Ready(match r {
                            Some(a) => Ok(SocketAddr::V4(a)),
                            None => Err(Some(i)),
                        });
                    }
                }
                if let Some(rx) = &mut self.channel
                    && let std::task::Poll::Ready(r) = rx.poll_recv(cx)
                {
                    return std::task::Poll::Ready(r.ok_or(None));
                }
                std::task::Poll::Pending
            })
            .await;
            match ended {
                Ok(addr) => return Some(addr),
                Err(Some(i)) => {
                    self.streams.swap_remove(i);
                }
                Err(None) => self.channel = None,
            }
        }
    }
}

/// How a peer misbehaved; each gets the peer dropped and never contacted again in this fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehavior {
    /// Blocks it sent are not part of the dict whose SHA-1 is the info hash.
    HashMismatch,
    /// Its `metadata_size` is 0 or above the cap.
    AbsurdMetadataSize(u64),
    /// Its `metadata_size` is not the size of the verified dict.
    WrongMetadataSize { advertised: u64, actual: u64 },
    /// A data message's `total_size` differs from the peer's `metadata_size`.
    WrongTotalSize { advertised: u64, got: u64 },
    /// A block of the wrong length (or for a piece that does not exist).
    BadBlock(BlockError),
    /// A later extension handshake changed `metadata_size`.
    SizeChanged { from: u64, to: u64 },
    /// An undecodable ut_metadata message.
    Malformed,
    /// Kept sending blocks nobody asked for (more than [`MAX_UNREQUESTED`]).
    Unrequested,
}

impl fmt::Display for Misbehavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misbehavior::HashMismatch => write!(f, "sent metadata failing the hash check"),
            Misbehavior::AbsurdMetadataSize(s) => write!(f, "advertised absurd metadata_size {s}"),
            Misbehavior::WrongMetadataSize { advertised, actual } => write!(
                f,
                "advertised metadata_size {advertised}, the verified dict has {actual}"
            ),
            Misbehavior::WrongTotalSize { advertised, got } => write!(
                f,
                "sent total_size {got} after advertising metadata_size {advertised}"
            ),
            Misbehavior::BadBlock(e) => write!(f, "{e}"),
            Misbehavior::SizeChanged { from, to } => {
                write!(f, "changed metadata_size from {from} to {to}")
            }
            Misbehavior::Malformed => write!(f, "sent a malformed ut_metadata message"),
            Misbehavior::Unrequested => write!(f, "flooded us with unrequested blocks"),
        }
    }
}

/// What became of one peer address we tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutcome {
    /// Still connected when the fetch ended, without having contributed.
    Unused,
    /// Sent blocks of the verified dict.
    Supplied,
    /// Dropped for lying or breaking the protocol.
    Dropped(Misbehavior),
    /// Could not be used: unreachable, no ut_metadata, rejected our requests, too slow...
    Failed(String),
}

/// One tried peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub addr: SocketAddr,
    pub outcome: PeerOutcome,
    /// Blocks it sent that passed the size checks.
    pub blocks: u32,
}

/// What a fetch did.
#[derive(Debug, Clone, Default)]
pub struct FetchStats {
    /// Distinct peer addresses offered by the source.
    pub found: usize,
    /// Connection attempts made (a retried peer counts each time).
    pub tried: usize,
    /// Attempts that completed the BitTorrent handshake.
    pub connected: usize,
    /// Final state of each attempt, in order of attempt.
    pub peers: Vec<PeerReport>,
    /// PORT messages received (each made our DHT node ping the sender).
    pub ports_received: usize,
    /// Hash checks of assembled or per-peer copies that failed.
    pub hash_failures: usize,
    pub elapsed: Duration,
}

impl FetchStats {
    /// Peers dropped for misbehaving, with the reason.
    pub fn dropped(&self) -> impl Iterator<Item = (SocketAddr, &Misbehavior)> {
        self.peers.iter().filter_map(|p| match &p.outcome {
            PeerOutcome::Dropped(m) => Some((p.addr, m)),
            _ => None,
        })
    }

    /// Peers whose blocks make up the verified dict.
    pub fn suppliers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers
            .iter()
            .filter(|p| p.outcome == PeerOutcome::Supplied)
            .map(|p| p.addr)
    }

    /// A one-line summary: "found 3 peers, tried 3 (connected 2, 1 dropped: ...)".
    pub fn summary(&self) -> String {
        let mut s = format!(
            "found {} peer{}, tried {} (connected {}",
            self.found,
            if self.found == 1 { "" } else { "s" },
            self.tried,
            self.connected
        );
        let dropped: Vec<String> = self
            .dropped()
            .map(|(addr, why)| format!("{addr} {why}"))
            .collect();
        if !dropped.is_empty() {
            s.push_str(&format!(
                ", {} dropped: {}",
                dropped.len(),
                dropped.join("; ")
            ));
        }
        let mut failures: Vec<String> = self
            .peers
            .iter()
            .filter_map(|p| match &p.outcome {
                PeerOutcome::Failed(why) => Some(why.clone()),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            failures.sort();
            failures.dedup();
            failures.truncate(3);
            s.push_str(&format!(", failures: {}", failures.join("; ")));
        }
        s.push(')');
        s
    }
}

/// A verified info dict.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The bencoded info dict; its SHA-1 is the info hash.
    pub info: Bytes,
    pub stats: FetchStats,
}

/// Why no metadata was obtained.
#[derive(Debug, Clone)]
pub enum FetchError {
    /// The deadline passed.
    Timeout(FetchStats),
    /// The peer source ended and every peer was used up.
    Exhausted(FetchStats),
}

impl FetchError {
    pub fn stats(&self) -> &FetchStats {
        match self {
            FetchError::Timeout(s) | FetchError::Exhausted(s) => s,
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Timeout(s) => write!(
                f,
                "no verified metadata after {:.1} s: {}",
                s.elapsed.as_secs_f64(),
                s.summary()
            ),
            FetchError::Exhausted(s) => {
                write!(f, "no peer supplied verified metadata: {}", s.summary())
            }
        }
    }
}

impl std::error::Error for FetchError {}

// ------------------------------------------------------------------------ peer tasks

enum PeerCmd {
    Request(Vec<u32>),
}

enum PeerEvent {
    Connected,
    Ext {
        ut_metadata: Option<u8>,
        metadata_size: Option<u64>,
        reqq: Option<u32>,
    },
    Data {
        piece: u32,
        total_size: u64,
        data: Bytes,
    },
    Reject {
        piece: u32,
    },
    Malformed,
    Port,
    Closed {
        why: String,
        retry: bool,
    },
}

struct TaskCtx {
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    allow: AllowList,
    wire: WireConfig,
    dht: Option<DhtHandle>,
    dht_port: Option<u16>,
    listen_port: Option<u16>,
}

type EventTx = mpsc::UnboundedSender<(usize, PeerEvent)>;

async fn peer_task(
    idx: usize,
    addr: SocketAddr,
    ctx: Arc<TaskCtx>,
    events: EventTx,
    cmds: mpsc::UnboundedReceiver<PeerCmd>,
) {
    let (why, retry) = match run_peer(idx, addr, &ctx, &events, cmds).await {
        Ok(()) => ("closed".to_owned(), false),
        Err(e) => {
            // Refusals that will not change: the allow-list, a peer for another torrent or
            // without the extension protocol.
            let retry = !matches!(
                e,
                PeerEnd::NoExtensions
                    | PeerEnd::Wire(WireError::Refused(_) | WireError::InfoHashMismatch { .. })
            );
            (e.to_string(), retry)
        }
    };
    let _ = events.send((idx, PeerEvent::Closed { why, retry }));
}

/// Why a peer task ended without a wire error.
#[derive(Debug)]
enum PeerEnd {
    Wire(WireError),
    NoExtensions,
}

impl fmt::Display for PeerEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerEnd::Wire(e) => write!(f, "{e}"),
            PeerEnd::NoExtensions => write!(f, "peer does not support the extension protocol"),
        }
    }
}

impl From<WireError> for PeerEnd {
    fn from(e: WireError) -> Self {
        PeerEnd::Wire(e)
    }
}

async fn run_peer(
    idx: usize,
    addr: SocketAddr,
    ctx: &TaskCtx,
    events: &EventTx,
    mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
) -> Result<(), PeerEnd> {
    let mut stream = connect(addr, &ctx.allow, ctx.wire.connect_timeout).await?;
    let ours = Handshake::new(ctx.info_hash, ctx.peer_id);
    let theirs = handshake_outgoing(&mut stream, &ours, ctx.wire.handshake_timeout).await?;
    if !theirs.supports_extensions() {
        return Err(PeerEnd::NoExtensions);
    }
    let _ = events.send((idx, PeerEvent::Connected));
    let PeerConn {
        mut reader,
        mut writer,
    } = PeerConn::from_tcp(stream, &ctx.wire);
    writer.queue(&ExtHandshake::ours(ctx.listen_port, None).to_message());
    if theirs.supports_dht()
        && let Some(port) = ctx.dht_port
    {
        writer.queue(&crate::wire::Message::Port(port));
    }
    writer.flush().await?;
    let mut peer_ext = ExtHandshake::default();
    loop {
        tokio::select! {
            msg = reader.recv() => {
                let msg = msg?;
                handle_peer_message(idx, addr, ctx, events, &mut peer_ext, &mut writer, msg)
                    .await?;
            }
            cmd = cmds.recv() => match cmd {
                None => return Ok(()),
                Some(PeerCmd::Request(pieces)) => {
                    let Some(id) = peer_ext.ext_id(UT_METADATA) else { continue };
                    for piece in pieces {
                        writer.queue_metadata(id, &MetadataMsg::Request { piece });
                    }
                    writer.flush().await?;
                }
            },
        }
    }
}

async fn handle_peer_message<W: tokio::io::AsyncWrite + Unpin>(
    idx: usize,
    addr: SocketAddr,
    ctx: &TaskCtx,
    events: &EventTx,
    peer_ext: &mut ExtHandshake,
    writer: &mut crate::wire::PeerWriter<W>,
    msg: crate::wire::Message,
) -> Result<(), PeerEnd> {
    use crate::wire::Message;
    match msg {
        Message::Extended {
            id: EXT_HANDSHAKE_ID,
            payload,
        } => {
            // An undecodable handshake is ignored: the coordinator's ext-handshake timeout
            // ends the peer if no usable one follows.
            if let Ok(hs) = ExtHandshake::decode(&payload) {
                peer_ext.update(hs);
                let _ = events.send((
                    idx,
                    PeerEvent::Ext {
                        ut_metadata: peer_ext.ext_id(UT_METADATA),
                        metadata_size: peer_ext.metadata_size,
                        reqq: peer_ext.reqq,
                    },
                ));
            }
        }
        Message::Extended {
            id: OUR_UT_METADATA_ID,
            payload,
        } => match MetadataMsg::decode(&payload) {
            Ok(MetadataMsg::Data {
                piece,
                total_size,
                data,
            }) => {
                let data = payload.slice_ref(data);
                let _ = events.send((
                    idx,
                    PeerEvent::Data {
                        piece,
                        total_size,
                        data,
                    },
                ));
            }
            Ok(MetadataMsg::Reject { piece }) => {
                let _ = events.send((idx, PeerEvent::Reject { piece }));
            }
            Ok(MetadataMsg::Request { piece }) => {
                // We are fetching: we have nothing to give yet.
                if let Some(id) = peer_ext.ext_id(UT_METADATA) {
                    writer.queue_metadata(id, &MetadataMsg::Reject { piece });
                    writer.flush().await?;
                }
            }
            Err(_) => {
                let _ = events.send((idx, PeerEvent::Malformed));
            }
        },
        Message::Port(port) => {
            if let (Some(dht), SocketAddr::V4(v4), true) = (&ctx.dht, addr, port != 0) {
                let _ = dht.add_contacts(vec![SocketAddrV4::new(*v4.ip(), port)]);
                let _ = events.send((idx, PeerEvent::Port));
            }
        }
        // Choke state, bitfields, haves and the like concern piece transfer, not metadata.
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------------------------------ coordinator

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaken(Instant),
    Ready,
    Closed,
}

struct Slot {
    addr: SocketAddr,
    cmd: Option<mpsc::UnboundedSender<PeerCmd>>,
    phase: Phase,
    /// The size group the peer joined, valid once `joined`.
    group: usize,
    joined: bool,
    window: usize,
    outstanding: Vec<(u32, Instant)>,
    supplied: Vec<bool>,
    rejected: Vec<bool>,
    blocks: u32,
    unrequested: u32,
    outcome: Option<PeerOutcome>,
}

struct Group {
    asm: Assembly,
    cross_check: bool,
    /// Per piece: requests in flight, and when the latest was sent.
    in_flight: Vec<u16>,
    last_request: Vec<Option<Instant>>,
}

#[derive(Default)]
struct Known {
    attempts: u32,
    active: bool,
    queued: bool,
    banned: bool,
    last_failure: Option<Instant>,
    /// A retry is scheduled (in `Coordinator::retries`).
    retry_pending: bool,
}

struct Coordinator {
    cfg: FetchConfig,
    ctx: Arc<TaskCtx>,
    events_tx: EventTx,
    tasks: JoinSet<()>,
    slots: Vec<Slot>,
    groups: Vec<Group>,
    known: HashMap<SocketAddr, Known>,
    pending: VecDeque<SocketAddr>,
    /// Peers to re-queue at the given time.
    retries: Vec<(Instant, SocketAddr)>,
    active: usize,
    stats: FetchStats,
    result: Option<Vec<u8>>,
}

/// Fetches and verifies the info dict of `info_hash` from the peers `source` yields.
///
/// Returns as soon as one dict verifies; connections still open are closed. Peers that lied
/// are listed in the stats with the reason ([`FetchStats::dropped`]).
pub async fn fetch_metadata(
    info_hash: [u8; 20],
    mut source: PeerSource,
    cfg: &FetchConfig,
) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let deadline = cfg.timeout.map(|t| tokio::time::Instant::now() + t);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut co = Coordinator {
        ctx: Arc::new(TaskCtx {
            info_hash,
            peer_id: cfg.peer_id,
            allow: cfg.allow.clone(),
            wire: cfg.wire,
            dht: cfg.dht.clone(),
            dht_port: cfg.dht_port,
            listen_port: cfg.listen_port,
        }),
        cfg: cfg.clone(),
        events_tx,
        tasks: JoinSet::new(),
        slots: Vec::new(),
        groups: Vec::new(),
        known: HashMap::new(),
        pending: VecDeque::new(),
        retries: Vec::new(),
        active: 0,
        stats: FetchStats::default(),
        result: None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut source_done = false;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(sleep);
    let outcome = loop {
        co.launch();
        if let Some(info) = co.result.take() {
            break Ok(info);
        }
        if source_done && co.pending.is_empty() && co.active == 0 && co.retries.is_empty() {
            break Err(false);
        }
        tokio::select! {
            biased;
            Some((idx, ev)) = events_rx.recv() => co.on_event(idx, ev),
            _ = tick.tick() => co.on_tick(),
            addr = source.next(), if !source_done => match addr {
                Some(a) => co.offer(a),
                None => source_done = true,
            },
            () = &mut sleep => break Err(true),
        }
    };
    co.finish();
    co.stats.elapsed = started.elapsed();
    let stats = std::mem::take(&mut co.stats);
    match outcome {
        Ok(info) => Ok(Fetched {
            info: Bytes::from(info),
            stats,
        }),
        Err(true) => Err(FetchError::Timeout(stats)),
        Err(false) => Err(FetchError::Exhausted(stats)),
    }
}

impl Coordinator {
    fn offer(&mut self, addr: SocketAddr) {
        let now = Instant::now();
        let max_attempts = self.cfg.max_attempts.max(1);
        let retry_delay = self.cfg.retry_delay;
        let is_new = !self.known.contains_key(&addr);
        let k = self.known.entry(addr).or_default();
        if is_new {
            self.stats.found += 1;
        }
        let waited = k
            .last_failure
            .is_none_or(|t| now.duration_since(t) >= retry_delay);
        if k.banned
            || k.active
            || k.queued
            || k.retry_pending
            || k.attempts >= max_attempts
            || !waited
        {
            return;
        }
        k.queued = true;
        self.pending.push_back(addr);
    }

    fn launch(&mut self) {
        while self.result.is_none() && self.active < self.cfg.max_connections.max(1) {
            let Some(addr) = self.pending.pop_front() else {
                return;
            };
            let k = self.known.entry(addr).or_default();
            k.queued = false;
            k.active = true;
            k.attempts += 1;
            let idx = self.slots.len();
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
            self.slots.push(Slot {
                addr,
                cmd: Some(cmd_tx),
                phase: Phase::Connecting,
                group: 0,
                joined: false,
                window: 0,
                outstanding: Vec::new(),
                supplied: Vec::new(),
                rejected: Vec::new(),
                blocks: 0,
                unrequested: 0,
                outcome: None,
            });
            self.active += 1;
            self.stats.tried += 1;
            self.tasks.spawn(peer_task(
                idx,
                addr,
                self.ctx.clone(),
                self.events_tx.clone(),
                cmd_rx,
            ));
        }
    }

    /// Records why a peer ended, and closes its connection if still open.
    ///
    /// Outcomes only get more specific: a conviction overrides anything (the peer is banned
    /// and its blocks forgotten, even if it already left), `Supplied` overrides a plain
    /// failure, and anything else only fills an empty outcome.
    fn close(&mut self, idx: usize, outcome: PeerOutcome) {
        let slot = &mut self.slots[idx];
        let replace = match (&slot.outcome, &outcome) {
            (None, _) => true,
            (Some(PeerOutcome::Dropped(_)), _) => false,
            (Some(_), PeerOutcome::Dropped(_)) => true,
            (Some(PeerOutcome::Failed(_) | PeerOutcome::Unused), PeerOutcome::Supplied) => true,
            _ => false,
        };
        let convicted = replace && matches!(outcome, PeerOutcome::Dropped(_));
        if replace {
            slot.outcome = Some(outcome);
        }
        let (addr, group, joined) = (slot.addr, slot.group, slot.joined);
        if convicted {
            self.known.entry(addr).or_default().banned = true;
            if joined {
                self.groups[group].asm.remove_peer(idx);
            }
        }
        let slot = &mut self.slots[idx];
        if slot.phase == Phase::Closed {
            return;
        }
        slot.phase = Phase::Closed;
        slot.cmd = None;
        let outstanding = std::mem::take(&mut slot.outstanding);
        self.active -= 1;
        if joined {
            let g = &mut self.groups[group];
            for (piece, _) in outstanding {
                let c = &mut g.in_flight[piece as usize];
                *c = c.saturating_sub(1);
            }
        }
        let k = self.known.entry(addr).or_default();
        k.active = false;
        k.last_failure = Some(Instant::now());
    }

    /// Closes a peer that could not be used and, if `retry` and attempts remain, schedules
    /// another attempt.
    fn fail(&mut self, idx: usize, why: impl Into<String>, retry: bool) {
        self.close(idx, PeerOutcome::Failed(why.into()));
        let addr = self.slots[idx].addr;
        let max_attempts = self.cfg.max_attempts.max(1);
        let k = self.known.entry(addr).or_default();
        if !retry || k.banned || k.retry_pending || k.attempts >= max_attempts {
            return;
        }
        let delay = self.cfg.retry_delay * 2u32.saturating_pow(k.attempts.saturating_sub(1));
        k.retry_pending = true;
        self.retries.push((Instant::now() + delay, addr));
    }

    fn on_event(&mut self, idx: usize, ev: PeerEvent) {
        if self.slots[idx].phase == Phase::Closed {
            return;
        }
        match ev {
            PeerEvent::Connected => {
                self.stats.connected += 1;
                self.slots[idx].phase = Phase::Handshaken(Instant::now());
            }
            PeerEvent::Ext {
                ut_metadata,
                metadata_size,
                reqq,
            } => self.on_ext(idx, ut_metadata, metadata_size, reqq),
            PeerEvent::Data {
                piece,
                total_size,
                data,
            } => self.on_data(idx, piece, total_size, data),
            PeerEvent::Reject { piece } => self.on_reject(idx, piece),
            PeerEvent::Malformed => self.close(idx, PeerOutcome::Dropped(Misbehavior::Malformed)),
            PeerEvent::Port => self.stats.ports_received += 1,
            PeerEvent::Closed { why, retry } => self.fail(idx, why, retry),
        }
    }

    fn on_ext(
        &mut self,
        idx: usize,
        ut_metadata: Option<u8>,
        metadata_size: Option<u64>,
        reqq: Option<u32>,
    ) {
        if self.slots[idx].phase == Phase::Ready {
            let size = self.groups[self.slots[idx].group].asm.size();
            match (ut_metadata, metadata_size) {
                (None, _) => self.fail(idx, "peer disabled ut_metadata", false),
                (Some(_), Some(s)) if s != size => self.close(
                    idx,
                    PeerOutcome::Dropped(Misbehavior::SizeChanged { from: size, to: s }),
                ),
                _ => {}
            }
            return;
        }
        let Some(_) = ut_metadata else {
            return self.fail(idx, "peer does not support ut_metadata", false);
        };
        let Some(size) = metadata_size else {
            // It may be fetching the metadata itself; ask again later.
            return self.fail(idx, "peer has no metadata (no metadata_size)", true);
        };
        if !valid_metadata_size(size) {
            return self.close(
                idx,
                PeerOutcome::Dropped(Misbehavior::AbsurdMetadataSize(size)),
            );
        }
        let group = match self.groups.iter().position(|g| g.asm.size() == size) {
            Some(g) => g,
            None if self.groups.len() < MAX_SIZE_GROUPS => {
                let Some(asm) = Assembly::new(self.ctx.info_hash, size) else {
                    return self.close(
                        idx,
                        PeerOutcome::Dropped(Misbehavior::AbsurdMetadataSize(size)),
                    );
                };
                let n = asm.num_pieces() as usize;
                self.groups.push(Group {
                    asm,
                    cross_check: false,
                    in_flight: vec![0; n],
                    last_request: vec![None; n],
                });
                self.groups.len() - 1
            }
            None => {
                return self.fail(idx, "too many conflicting metadata sizes", false);
            }
        };
        let n = self.groups[group].asm.num_pieces() as usize;
        let slot = &mut self.slots[idx];
        slot.phase = Phase::Ready;
        slot.group = group;
        slot.joined = true;
        let max_window = self.cfg.max_window.max(1);
        slot.window = reqq.map_or(max_window, |r| r as usize).clamp(1, max_window);
        slot.supplied = vec![false; n];
        slot.rejected = vec![false; n];
        self.schedule(idx);
    }

    fn on_data(&mut self, idx: usize, piece: u32, total_size: u64, data: Bytes) {
        let slot = &mut self.slots[idx];
        // Data before the extension handshake was never requested either.
        let requested = match slot.phase {
            Phase::Ready => slot.outstanding.iter().position(|&(p, _)| p == piece),
            _ => None,
        };
        let Some(pos) = requested else {
            // Unrequested (or a duplicate): not stored; tolerated up to a limit.
            slot.unrequested += 1;
            if slot.unrequested > MAX_UNREQUESTED {
                self.close(idx, PeerOutcome::Dropped(Misbehavior::Unrequested));
            }
            return;
        };
        let group = slot.group;
        let size = self.groups[group].asm.size();
        if total_size != size {
            return self.close(
                idx,
                PeerOutcome::Dropped(Misbehavior::WrongTotalSize {
                    advertised: size,
                    got: total_size,
                }),
            );
        }
        slot.outstanding.swap_remove(pos);
        let g = &mut self.groups[group];
        let c = &mut g.in_flight[piece as usize];
        *c = c.saturating_sub(1);
        if g.asm.stored_bytes() + data.len() > self.cfg.max_buffered {
            return self.fail(idx, "metadata buffer budget exhausted", false);
        }
        if let Err(e) = g.asm.add_block(idx, piece, data) {
            return self.close(idx, PeerOutcome::Dropped(Misbehavior::BadBlock(e)));
        }
        let slot = &mut self.slots[idx];
        slot.supplied[piece as usize] = true;
        slot.blocks += 1;
        self.verify(group);
        if self.result.is_none() {
            self.schedule_group(group);
        }
    }

    fn on_reject(&mut self, idx: usize, piece: u32) {
        let slot = &mut self.slots[idx];
        if slot.phase != Phase::Ready {
            return;
        }
        let Some(pos) = slot.outstanding.iter().position(|&(p, _)| p == piece) else {
            return;
        };
        slot.outstanding.swap_remove(pos);
        slot.rejected[piece as usize] = true;
        let group = slot.group;
        let c = &mut self.groups[group].in_flight[piece as usize];
        *c = c.saturating_sub(1);
        self.schedule(idx);
        let slot = &self.slots[idx];
        if slot.phase == Phase::Ready && slot.outstanding.is_empty() {
            let rejected = slot.rejected.iter().filter(|&&r| r).count();
            self.fail(
                idx,
                format!("peer rejected {rejected} metadata request(s)"),
                true,
            );
            self.schedule_group(group);
        }
    }

    fn verify(&mut self, group: usize) {
        match self.groups[group].asm.verify() {
            Verdict::Incomplete => {}
            Verdict::Failed { liars } => {
                self.stats.hash_failures += 1 + liars.len();
                for liar in liars {
                    self.close(liar, PeerOutcome::Dropped(Misbehavior::HashMismatch));
                }
                self.groups[group].cross_check = true;
            }
            Verdict::Verified {
                info,
                suppliers,
                liars,
            } => {
                self.stats.hash_failures += liars.len();
                for liar in liars {
                    self.close(liar, PeerOutcome::Dropped(Misbehavior::HashMismatch));
                }
                for s in suppliers {
                    self.close(s, PeerOutcome::Supplied);
                }
                let actual = self.groups[group].asm.size();
                for idx in 0..self.slots.len() {
                    let slot = &self.slots[idx];
                    if slot.phase == Phase::Ready && slot.group != group {
                        let advertised = self.groups[slot.group].asm.size();
                        self.close(
                            idx,
                            PeerOutcome::Dropped(Misbehavior::WrongMetadataSize {
                                advertised,
                                actual,
                            }),
                        );
                    }
                }
                self.result = Some(info);
            }
        }
    }

    fn schedule_group(&mut self, group: usize) {
        for idx in 0..self.slots.len() {
            if self.slots[idx].phase == Phase::Ready && self.slots[idx].group == group {
                self.schedule(idx);
            }
        }
    }

    /// Fills peer `idx`'s request window. See the module docs for the policy.
    fn schedule(&mut self, idx: usize) {
        let now = Instant::now();
        let steal_after = self.cfg.steal_after;
        let slot = &mut self.slots[idx];
        if slot.phase != Phase::Ready || slot.outstanding.len() >= slot.window {
            return;
        }
        let g = &mut self.groups[slot.group];
        let n = g.asm.num_pieces();
        let mut free = slot.window - slot.outstanding.len();
        let mut picks = Vec::new();
        let askable = |slot: &Slot, p: u32| {
            !slot.supplied[p as usize]
                && !slot.rejected[p as usize]
                && !slot.outstanding.iter().any(|&(q, _)| q == p)
        };
        if g.cross_check {
            for p in 0..n {
                if free == 0 {
                    break;
                }
                if askable(slot, p) {
                    picks.push(p);
                    free -= 1;
                }
            }
        } else {
            // Unrequested pieces first, then duplicates of requests that are slow to come.
            for pass in 0..2 {
                for p in 0..n {
                    if free == 0 {
                        break;
                    }
                    let i = p as usize;
                    if g.asm.has_candidate(p) || !askable(slot, p) || picks.contains(&p) {
                        continue;
                    }
                    let ok = if pass == 0 {
                        g.in_flight[i] == 0
                    } else {
                        g.in_flight[i] < 2
                            && g.last_request[i]
                                .is_some_and(|t| now.duration_since(t) >= steal_after)
                    };
                    if ok {
                        picks.push(p);
                        free -= 1;
                    }
                }
            }
        }
        if picks.is_empty() {
            return;
        }
        for &p in &picks {
            slot.outstanding.push((p, now));
            g.in_flight[p as usize] += 1;
            g.last_request[p as usize] = Some(now);
        }
        if let Some(tx) = &slot.cmd {
            let _ = tx.send(PeerCmd::Request(picks));
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        while self.tasks.try_join_next().is_some() {}
        let mut i = 0;
        while i < self.retries.len() {
            if self.retries[i].0 > now {
                i += 1;
                continue;
            }
            let (_, addr) = self.retries.swap_remove(i);
            let k = self.known.entry(addr).or_default();
            k.retry_pending = false;
            if !(k.banned || k.active || k.queued) {
                k.queued = true;
                self.pending.push_back(addr);
            }
        }
        for idx in 0..self.slots.len() {
            let slot = &self.slots[idx];
            match slot.phase {
                Phase::Handshaken(at)
                    if now.duration_since(at) >= self.cfg.ext_handshake_timeout =>
                {
                    self.fail(idx, "no usable extension handshake", false);
                }
                Phase::Ready => {
                    let late = slot
                        .outstanding
                        .iter()
                        .any(|&(_, t)| now.duration_since(t) >= self.cfg.request_timeout);
                    if late {
                        let group = slot.group;
                        self.fail(idx, "metadata request timed out", true);
                        self.schedule_group(group);
                    } else {
                        self.schedule(idx);
                    }
                }
                _ => {}
            }
        }
        // A cross-checking group whose peers have all finished their copies without a
        // verdict needs no further action: new peers will join it as they connect.
    }

    /// Closes everything and fills in the per-peer reports.
    fn finish(&mut self) {
        for idx in 0..self.slots.len() {
            self.close(idx, PeerOutcome::Unused);
        }
        self.tasks.abort_all();
        self.stats.peers = self
            .slots
            .iter()
            .map(|s| PeerReport {
                addr: s.addr,
                outcome: s.outcome.clone().unwrap_or(PeerOutcome::Unused),
                blocks: s.blocks,
            })
            .collect();
    }
}
