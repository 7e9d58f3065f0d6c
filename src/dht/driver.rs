//! The tokio driver: one task owns the UDP socket and the [`Node`], and applications talk
//! to it through a cloneable [`DhtHandle`].
//!
//! One task per socket with no locks is what measured fastest here (a current-thread runtime
//! with one task owning the socket reached ~300k request/replies per second on loopback; a
//! multi-thread runtime with one worker, 166k), so [`Dht::spawn`] runs the driver on its own
//! thread with a current-thread runtime. [`Dht::bind`] instead returns the driver as a future
//! for callers that run many nodes on one runtime (the loopback testnet).
//!
//! Dual stack (BEP 32): with [`DhtConfig::bind6`] the same task also owns an IPv6 socket and
//! the IPv6 DHT's node, the two held as one [`DualNode`] (which answers `want` from the
//! sibling and bootstraps each family through the other). `get_peers` and `announce` run on
//! both and their peers come out of one [`PeerStream`]; the other commands act on the IPv4
//! node, or on the node of the address they name.

use std::collections::HashMap;
#[cfg(feature = "testing")]
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::sync::{mpsc, oneshot};

use crate::dht::bootstrap;
use crate::dht::dual::{DualEvent, DualNode};
use crate::dht::id::{Contact, Contact6, Family, InfoHash, NodeAddr, NodeId};
use crate::dht::item_search::{
    FoundItem, ItemError, ItemQuery, ItemResult, PutOutcome, PutRequest,
};
use crate::dht::krpc::Response;
use crate::dht::node::{self, DirectQuery, Event, LookupId, Node, PingError, RequestId, Stats};
use crate::dht::persist::{NodeStore, PersistError};
use crate::dht::scrape::ScrapeEstimate;
use crate::dht::udp;

/// Everything needed to start a node.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// UDP address to bind: an IPv4 address (the IPv4 DHT's socket), or an IPv6 one with
    /// [`DhtConfig::bind6`] `None` for a node that runs the IPv6 DHT only (a host without
    /// IPv4, or a test's IPv6-only node).
    pub bind: SocketAddr,
    /// BEP 32: an IPv6 address for a second socket and the IPv6 DHT's node (its own table
    /// and id); `None` runs one family only, the one of [`DhtConfig::bind`].
    pub bind6: Option<SocketAddr>,
    /// When binding [`DhtConfig::bind6`] fails because the host has no IPv6 (no IPv6
    /// support, or the address is not available), run IPv4 only after one log line instead
    /// of failing (the CLI's default, which asks for both families).
    pub bind6_optional: bool,
    /// The sans-IO node's settings (including the outbound allow-list).
    pub node: node::Config,
    /// Bootstrap routers as `host:port` (A and AAAA records both used). A family none of
    /// whose routers resolve retries with its own backoff ([`bootstrap::ResolveSchedule`]).
    /// BEP 5: routers only help us join; they never enter the routing table.
    pub bootstrap: Vec<String>,
    /// Known DHT nodes (not routers) to ping at start: each one that answers enters the
    /// table of its family like any node (libtorrent's `add_dht_node`); one of a family the
    /// node does not run is ignored.
    pub contacts: Vec<SocketAddr>,
    /// Directory of the node store (id and contacts); `None` keeps nothing across restarts.
    pub data_dir: Option<PathBuf>,
    /// How often contacts are saved while running (they are also saved on shutdown).
    pub save_interval: Duration,
    /// Receives the infohashes of get_peers/announce_peer queries this node is sent (a
    /// crawler's passive harvest). Full channel: the report is dropped, never the query.
    pub incoming: Option<mpsc::Sender<IncomingQuery>>,
    /// Test harness: every received datagram is handed to the node this much later (zero:
    /// at once). On loopback a round trip takes microseconds, which hides how many
    /// sequential rounds a join or a lookup costs; holding what arrives back emulates a
    /// wide-area round trip for this node's own exchanges (`dht-restart-bench --delay-ms`).
    /// Only with the `testing` feature, so a production node neither carries the hook nor
    /// can be slowed by it.
    #[cfg(feature = "testing")]
    pub receive_delay: Duration,
}

/// A get_peers or announce_peer query we received (see [`DhtConfig::incoming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingQuery {
    /// The infohash queried or announced.
    pub info_hash: InfoHash,
    /// The querying node's address (the UDP source), of either family.
    pub from: SocketAddr,
    /// The announced peer, for a valid announce_peer.
    pub peer: Option<SocketAddr>,
}

impl DhtConfig {
    /// A node bound to `bind` with default settings and no bootstrap routers.
    pub fn new(bind: SocketAddr) -> Self {
        DhtConfig {
            bind,
            bind6: None,
            bind6_optional: false,
            node: node::Config::default(),
            bootstrap: Vec::new(),
            contacts: Vec::new(),
            data_dir: None,
            save_interval: Duration::from_secs(5 * 60),
            incoming: None,
            #[cfg(feature = "testing")]
            receive_delay: Duration::ZERO,
        }
    }
}

/// Why a node did not start.
#[derive(Debug)]
pub enum StartError {
    /// The UDP socket could not be bound (or its local address read).
    Bind {
        /// The address in [`DhtConfig::bind`].
        addr: SocketAddr,
        /// The socket error.
        error: io::Error,
    },
    /// The node store in [`DhtConfig::data_dir`] could not be opened or read.
    Store(PersistError),
    /// [`Dht::spawn`] could not start its thread or runtime, or the thread exited before
    /// the node was bound.
    Runtime(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind { addr, error } => write!(f, "cannot bind UDP {addr}: {error}"),
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Runtime(e) => write!(f, "cannot start the runtime: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a request to the node failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtError {
    /// The node has shut down.
    Stopped,
    /// The queried node did not answer properly (a ping or a direct query).
    Ping(PingError),
}

impl std::fmt::Display for DhtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DhtError::Stopped => write!(f, "the DHT node has stopped"),
            DhtError::Ping(e) => write!(f, "ping failed: {e:?}"),
        }
    }
}

impl std::error::Error for DhtError {}

/// What a BEP 44 put achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutSummary {
    /// Where the item is stored (immutable: SHA-1 of the value; mutable: SHA-1 of key and salt).
    pub target: NodeId,
    /// The sequence number put (mutable items).
    pub seq: Option<i64>,
    /// Nodes that stored it.
    pub stored: usize,
    /// Every node asked and its answer (refusals carry their BEP 44 error code).
    pub nodes: Vec<(SocketAddr, PutOutcome)>,
}

/// A BEP 44 item read from the DHT, already checked against its hash or signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GotItem {
    /// Where the item is stored (immutable: SHA-1 of the value; mutable: SHA-1 of key and
    /// salt).
    pub target: NodeId,
    /// The value, with its key, `seq` and signature for a mutable item.
    pub item: FoundItem,
    /// Distinct nodes that returned this exact value.
    pub confirmations: usize,
    /// Replies whose value failed its check (ignored).
    pub forged: u32,
}

/// Why an item call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemsError {
    /// The node has stopped.
    Stopped,
    /// The value or salt breaks a BEP 44 limit; nothing was sent.
    Invalid(ItemError),
    /// No node returned a valid value.
    NotFound {
        /// Where the item was looked for.
        target: NodeId,
        /// Replies whose value failed its hash or signature check.
        forged: u32,
    },
    /// No node stored the item; each node's answer is in the summary.
    NotStored(Box<PutSummary>),
}

impl std::fmt::Display for ItemsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemsError::Stopped => write!(f, "the DHT node has stopped"),
            ItemsError::Invalid(e) => write!(f, "{e}"),
            ItemsError::NotFound { target, forged } => {
                write!(f, "no valid item found under {}", hex::encode(target.0))?;
                if *forged > 0 {
                    write!(f, " ({forged} forged values ignored)")?;
                }
                Ok(())
            }
            ItemsError::NotStored(s) => {
                write!(f, "no node stored the item ({} asked", s.nodes.len())?;
                let mut codes: Vec<i64> = s
                    .nodes
                    .iter()
                    .filter_map(|(_, o)| match o {
                        PutOutcome::Refused { code, .. } => Some(*code),
                        _ => None,
                    })
                    .collect();
                codes.sort_unstable();
                codes.dedup();
                if !codes.is_empty() {
                    write!(f, ", errors {codes:?}")?;
                }
                write!(f, ")")
            }
        }
    }
}

impl std::error::Error for ItemsError {}

/// How a lookup ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupSummary {
    /// The K closest nodes that answered (the IPv4 DHT's).
    pub closest: Vec<Contact>,
    /// The K closest nodes of the IPv6 DHT that answered (a dual-stack node's `get_peers`
    /// and `announce` only).
    pub closest6: Vec<Contact6>,
    /// Nodes that acknowledged our announce (announce lookups only).
    pub announced: usize,
    /// Queries the lookup sent.
    pub messages: u32,
    /// A scrape's united BEP 33 filters ([`DhtHandle::scrape`] only).
    pub scrape: Option<Box<ScrapeEstimate>>,
}

enum LookupUpdate {
    Peers(Vec<SocketAddr>),
    Done(LookupSummary),
}

/// Peers of a get_peers/announce lookup, streamed as they arrive.
pub struct PeerStream {
    rx: mpsc::UnboundedReceiver<LookupUpdate>,
    buffered: Vec<SocketAddr>,
    summary: Option<LookupSummary>,
}

impl PeerStream {
    /// Polls for the next new peer (`Ready(None)` once the lookup has finished), for
    /// callers that merge several sources in one `poll_fn`.
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<SocketAddr>> {
        use std::task::Poll;
        loop {
            if let Some(p) = self.buffered.pop() {
                return Poll::Ready(Some(p));
            }
            if self.summary.is_some() {
                return Poll::Ready(None);
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(LookupUpdate::Peers(mut p)) => {
                    p.reverse();
                    self.buffered = p;
                }
                Some(LookupUpdate::Done(s)) => self.summary = Some(s),
                None => self.summary = Some(LookupSummary::default()),
            }
        }
    }

    /// The next new peer, or `None` when the lookup has finished.
    pub async fn next(&mut self) -> Option<SocketAddr> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Drains the stream: every peer, and how the lookup ended.
    pub async fn collect(mut self) -> (Vec<SocketAddr>, LookupSummary) {
        let mut peers = Vec::new();
        while let Some(p) = self.next().await {
            peers.push(p);
        }
        (peers, self.summary.unwrap_or_default())
    }

    /// How the lookup ended, once [`PeerStream::next`] has returned `None`.
    pub fn summary(&self) -> Option<&LookupSummary> {
        self.summary.as_ref()
    }
}

enum Command {
    Ping(SocketAddr, oneshot::Sender<Result<NodeId, PingError>>),
    Query(
        SocketAddr,
        DirectQuery,
        oneshot::Sender<Result<Box<Response>, PingError>>,
    ),
    Lookup(LookupRequest, mpsc::UnboundedSender<LookupUpdate>),
    Item(ItemRequest, oneshot::Sender<ItemResult>),
    AddContacts(Vec<SocketAddr>),
    Bootstrap(Vec<SocketAddr>),
    Stats(oneshot::Sender<Stats>),
    Stats6(oneshot::Sender<Option<Stats>>),
    Contacts(oneshot::Sender<Vec<Contact>>),
    Contacts6(oneshot::Sender<Vec<Contact6>>),
    WaitNodes(usize, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<Result<(), PersistError>>),
}

enum ItemRequest {
    Get(NodeId, ItemQuery),
    Put(PutRequest),
}

enum LookupRequest {
    FindNode(NodeId),
    GetPeers(InfoHash),
    Announce(InfoHash, Option<u16>, bool),
    Scrape(InfoHash),
}

/// A handle to a running node. Cheap to clone; the node stops when [`DhtHandle::shutdown`]
/// is called or every handle is dropped.
#[derive(Clone, Debug)]
pub struct DhtHandle {
    tx: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    local_addr6: Option<SocketAddr>,
    /// Shared with the driver, which updates it when BEP 42 changes our id.
    id: Arc<Mutex<NodeId>>,
}

impl DhtHandle {
    /// The UDP address the node is bound to (with the actual port when port 0 was asked):
    /// the IPv4 socket's, or the IPv6 one's on an IPv6-only node.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The IPv6 socket's address, when the node runs the IPv6 DHT too.
    pub fn local_addr6(&self) -> Option<SocketAddr> {
        self.local_addr6
    }

    /// Our current node id.
    pub fn id(&self) -> NodeId {
        *self.id.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, c: Command) -> Result<(), DhtError> {
        self.tx.send(c).map_err(|_| DhtError::Stopped)
    }

    /// Pings `addr` (from the node of its family) and returns its node id.
    pub async fn ping(&self, addr: impl Into<SocketAddr>) -> Result<NodeId, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Ping(addr.into(), tx))?;
        rx.await
            .map_err(|_| DhtError::Stopped)?
            .map_err(DhtError::Ping)
    }

    /// Sends one query to one node and returns its whole reply (e.g. a crawler's BEP 51
    /// `sample_infohashes`, or `get_peers` to a node that lacks it). A ping returns a reply
    /// holding just the node id.
    pub async fn query(
        &self,
        addr: impl Into<SocketAddr>,
        q: DirectQuery,
    ) -> Result<Response, DhtError> {
        let addr = addr.into();
        if q == DirectQuery::Ping {
            return self.ping(addr).await.map(Response::with_id);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Query(addr, q, tx))?;
        match rx.await.map_err(|_| DhtError::Stopped)? {
            Ok(r) => Ok(*r),
            Err(e) => Err(DhtError::Ping(e)),
        }
    }

    /// BEP 51: asks `addr` for a sample of the infohashes it stores.
    pub async fn sample_infohashes(
        &self,
        addr: impl Into<SocketAddr>,
        target: NodeId,
    ) -> Result<Response, DhtError> {
        self.query(addr, DirectQuery::SampleInfohashes(target))
            .await
    }

    fn lookup(&self, req: LookupRequest) -> Result<PeerStream, DhtError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(Command::Lookup(req, tx))?;
        Ok(PeerStream {
            rx,
            buffered: Vec::new(),
            summary: None,
        })
    }

    /// Looks up the nodes closest to `target`: the K closest that answered are in
    /// [`LookupSummary::closest`], closest first.
    ///
    /// The whole summary is returned, not only the contacts, because what a lookup cost
    /// ([`LookupSummary::messages`]) is what the lookup benchmarks measure; without it they
    /// needed a second node driver of their own.
    pub async fn find_node(&self, target: NodeId) -> Result<LookupSummary, DhtError> {
        let (_, summary) = self
            .lookup(LookupRequest::FindNode(target))?
            .collect()
            .await;
        Ok(summary)
    }

    /// Starts a get_peers lookup; peers stream in as they are found.
    pub fn get_peers(&self, info_hash: InfoHash) -> Result<PeerStream, DhtError> {
        self.lookup(LookupRequest::GetPeers(info_hash))
    }

    /// Announces that we have `info_hash` on TCP `port` (`None`: our UDP port, i.e.
    /// `implied_port`). Peers already in the swarm stream in as a by-product.
    pub fn announce(&self, info_hash: InfoHash, port: Option<u16>) -> Result<PeerStream, DhtError> {
        self.announce_as(info_hash, port, false)
    }

    /// [`DhtHandle::announce`] saying whether we have the whole torrent (BEP 33: a seed's
    /// announces carry `seed=1` so scrapes count it as one, and its searches `noseed=1`).
    pub fn announce_as(
        &self,
        info_hash: InfoHash,
        port: Option<u16>,
        seed: bool,
    ) -> Result<PeerStream, DhtError> {
        self.lookup(LookupRequest::Announce(info_hash, port, seed))
    }

    /// BEP 33: estimates the swarm of `info_hash` (seeds and downloaders) from the bloom
    /// filters of the nodes around it. `replies` is 0 when no node answered with filters
    /// (none holds the infohash's swarm, or none speaks BEP 33).
    pub async fn scrape(&self, info_hash: InfoHash) -> Result<ScrapeEstimate, DhtError> {
        let (_, summary) = self
            .lookup(LookupRequest::Scrape(info_hash))?
            .collect()
            .await;
        let mut est = summary.scrape.map(|s| *s).unwrap_or_default();
        est.queries = summary.messages;
        Ok(est)
    }

    async fn item(&self, req: ItemRequest) -> Result<ItemResult, ItemsError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Item(req, tx))
            .map_err(|_| ItemsError::Stopped)?;
        rx.await.map_err(|_| ItemsError::Stopped)
    }

    async fn put_item(&self, req: PutRequest) -> Result<PutSummary, ItemsError> {
        req.validate().map_err(ItemsError::Invalid)?;
        let r = self.item(ItemRequest::Put(req)).await?;
        let report = r.put.unwrap_or_default();
        let summary = PutSummary {
            target: r.target,
            seq: report.seq,
            stored: report.stored(),
            nodes: report.nodes,
        };
        if summary.stored == 0 {
            return Err(ItemsError::NotStored(Box::new(summary)));
        }
        Ok(summary)
    }

    async fn get_item(&self, target: NodeId, q: ItemQuery) -> Result<GotItem, ItemsError> {
        let r = self.item(ItemRequest::Get(target, q)).await?;
        match r.found {
            Some(item) => Ok(GotItem {
                target: r.target,
                item,
                confirmations: r.confirmations,
                forged: r.forged,
            }),
            None => Err(ItemsError::NotFound {
                target: r.target,
                forged: r.forged,
            }),
        }
    }

    /// Stores a BEP 44 immutable item: `value` is one bencoded value of at most 1000 bytes;
    /// its target (SHA-1 of `value`) is in the summary. `Err(NotStored)` when no node took
    /// it (with each node's answer).
    pub async fn put_immutable(&self, value: Vec<u8>) -> Result<PutSummary, ItemsError> {
        self.put_item(PutRequest::Immutable { v: value }).await
    }

    /// Reads a BEP 44 immutable item; only a value whose SHA-1 is `target` is returned.
    pub async fn get_immutable(&self, target: NodeId) -> Result<GotItem, ItemsError> {
        self.get_item(target, ItemQuery::Immutable).await
    }

    /// Signs and stores a BEP 44 mutable item under `key` and `salt` (empty = none). With
    /// `seq: None` the current sequence number is read first and the next one used (the
    /// current one when the network already holds this value, so republishing does not
    /// bump it); `cas` asks nodes to refuse unless their `seq` is exactly that (error 301).
    pub async fn put_mutable(
        &self,
        key: &SigningKey,
        salt: &[u8],
        value: Vec<u8>,
        seq: Option<i64>,
        cas: Option<i64>,
    ) -> Result<PutSummary, ItemsError> {
        self.put_item(PutRequest::Mutable {
            key: Box::new(key.clone()),
            salt: salt.to_vec(),
            v: value,
            seq,
            cas,
        })
        .await
    }

    /// Reads a BEP 44 mutable item: the highest `seq` with a valid signature by `key` among
    /// the closest nodes (stopping once several agree), none older than `min_seq`.
    pub async fn get_mutable(
        &self,
        key: &VerifyingKey,
        salt: &[u8],
        min_seq: Option<i64>,
    ) -> Result<GotItem, ItemsError> {
        if salt.len() > crate::dht::krpc::MAX_ITEM_SALT {
            return Err(ItemsError::Invalid(ItemError::SaltTooBig(salt.len())));
        }
        let q = ItemQuery::Mutable {
            k: key.to_bytes(),
            salt: salt.to_vec(),
            min_seq,
        };
        self.get_item(NodeId([0; 20]), q).await
    }

    /// Pings these addresses; those that answer may enter the routing table (e.g. a peer's
    /// BEP 5 PORT message). The allow-list applies.
    pub fn add_contacts<A: Into<SocketAddr>>(
        &self,
        addrs: impl IntoIterator<Item = A>,
    ) -> Result<(), DhtError> {
        self.send(Command::AddContacts(
            addrs.into_iter().map(Into::into).collect(),
        ))
    }

    /// (Re-)joins the network through these routers (each family's node through its own).
    pub fn bootstrap<A: Into<SocketAddr>>(
        &self,
        routers: impl IntoIterator<Item = A>,
    ) -> Result<(), DhtError> {
        self.send(Command::Bootstrap(
            routers.into_iter().map(Into::into).collect(),
        ))
    }

    /// The IPv6 node's counters and table (`None` when the node runs IPv4 only).
    pub async fn stats6(&self) -> Result<Option<Stats>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats6(tx))?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// A snapshot of the node's counters and table, plus the driver's UDP send errors
    /// (counted in [`Stats::dropped_other`]): the IPv4 node's, or the IPv6 one's on an
    /// IPv6-only node (whose [`DhtHandle::stats6`] is the same node).
    pub async fn stats(&self) -> Result<Stats, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx))?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// Resolves once the routing tables (both families together) hold at least `n` nodes (e.g. to start a lookup as
    /// soon as bootstrap has found someone).
    pub async fn wait_for_nodes(&self, n: usize) -> Result<(), DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::WaitNodes(n, tx))?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// The IPv4 routing table's contacts (main entries, then replacements); none on an
    /// IPv6-only node.
    pub async fn contacts(&self) -> Result<Vec<Contact>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Contacts(tx))?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// The IPv6 routing table's contacts (main entries, then replacements); empty when the
    /// node runs IPv4 only. A crawler seeds its IPv6 walk with them.
    pub async fn contacts6(&self) -> Result<Vec<Contact6>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Contacts6(tx))?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// Stops the node after saving its state. Returns the save error, if any.
    pub async fn shutdown(&self) -> Result<(), PersistError> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Shutdown(tx)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// Starting nodes.
pub struct Dht;

impl Dht {
    /// Binds, opens the store and runs the node on its own thread (current-thread runtime).
    /// Errors (bind, store) are reported before this returns. Callable from anywhere,
    /// including inside another tokio runtime (it blocks only until the node is bound).
    pub fn spawn(config: DhtConfig) -> Result<DhtHandle, StartError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let name = format!("dht {}", config.bind);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(StartError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Self::bind(config).await {
                        Ok((handle, driver)) => {
                            let _ = tx.send(Ok(handle));
                            driver.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(StartError::Runtime)?;
        rx.recv().unwrap_or_else(|_| {
            Err(StartError::Runtime(io::Error::other(
                "the node thread exited",
            )))
        })
    }

    /// Binds and opens the store; returns the handle and the driver future, which the caller
    /// spawns on a tokio runtime (it must run inside one).
    pub async fn bind(
        config: DhtConfig,
    ) -> Result<
        (
            DhtHandle,
            impl std::future::Future<Output = ()> + Send + 'static,
        ),
        StartError,
    > {
        let not_family = |addr: SocketAddr, what: &str| StartError::Bind {
            addr,
            error: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not an {what} address"),
            ),
        };
        // Which address each family's socket takes: `bind` is the IPv4 one, unless it is
        // IPv6 and alone (an IPv6-only node).
        let (bind4, bind6) = match (config.bind, config.bind6) {
            (b @ SocketAddr::V4(_), b6) => (Some(b), b6),
            (b @ SocketAddr::V6(_), None) => (None, Some(b)),
            (b, Some(_)) => return Err(not_family(b, "IPv4")),
        };
        let socket = match bind4 {
            Some(a) => Some(udp::bind(a).map_err(|error| StartError::Bind { addr: a, error })?),
            None => None,
        };
        // Optional only beside an IPv4 socket: an IPv6-only node without IPv6 is an error.
        let v6_optional = config.bind6_optional && socket.is_some();
        let socket6 = match bind6 {
            Some(a) if !a.is_ipv6() => return Err(not_family(a, "IPv6")),
            Some(a) => match udp::bind(a) {
                Ok(s) => Some((s, a)),
                Err(error) if v6_optional && udp::no_ipv6(&error) => {
                    tracing::info!("no IPv6 on this host ({error}): running the IPv4 DHT only");
                    None
                }
                Err(error) => return Err(StartError::Bind { addr: a, error }),
            },
            None => None,
        };
        let local_addr6 = match &socket6 {
            Some((s, a)) => Some(
                s.local_addr()
                    .map_err(|error| StartError::Bind { addr: *a, error })?,
            ),
            None => None,
        };
        let local_addr4 = match &socket {
            Some(s) => Some(s.local_addr().map_err(|error| StartError::Bind {
                addr: config.bind,
                error,
            })?),
            None => None,
        };
        // The handle's main address: the IPv4 socket's, or the IPv6 one on an IPv6-only node.
        let local_addr = local_addr4
            .or(local_addr6)
            .expect("at least one socket is bound");
        let store = match &config.data_dir {
            Some(dir) => Some(NodeStore::open(dir).map_err(StartError::Store)?),
            None => None,
        };
        let mut node_config = config.node.clone();
        node_config.report_incoming |= config.incoming.is_some();
        if node_config.local_addr.is_none() {
            node_config.local_addr = local_addr4;
        }
        let mut persisted = Vec::new();
        if let Some(store) = &store {
            if node_config.id.is_none() {
                node_config.id = store.node_id().map_err(StartError::Store)?;
            }
            persisted = store.contact_addrs();
        }
        let now = Instant::now();
        // The IPv6 node: the same settings, its own id (BEP 42 ids are per address) and its
        // own socket address.
        let mut node6 = match local_addr6 {
            Some(a6) => {
                let id = match &store {
                    Some(s) => s.node_id_of(Family::V6).map_err(StartError::Store)?,
                    None => None,
                };
                let cfg = node::Config {
                    id,
                    local_addr: Some(a6),
                    seed: node_config.seed.map(|s| s ^ 0x6666),
                    ..node_config.clone()
                };
                Some(Node::new_v6(cfg, now))
            }
            None => None,
        };
        let mut node = local_addr4.map(|_| Node::new(node_config, now));
        if let Some(store) = &store {
            if let Some(node) = &node {
                store.set_node_id(&node.id()).map_err(StartError::Store)?;
            }
            if let Some(n6) = &mut node6 {
                store
                    .set_node_id_of(Family::V6, &n6.id())
                    .map_err(StartError::Store)?;
                n6.add_contacts(now, store.contact_addrs6());
            }
            store.flush().map_err(StartError::Store)?;
        }
        let (given4, given6) = split_all(config.contacts.clone());
        persisted.extend(given4);
        if let Some(node) = &mut node {
            node.add_contacts(now, persisted);
        }
        if let Some(n6) = &mut node6 {
            n6.add_contacts(now, given6);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let primary_id = match (&node, &node6) {
            (Some(n), _) => n.id(),
            (None, Some(n6)) => n6.id(),
            (None, None) => unreachable!("at least one socket is bound"),
        };
        let id = Arc::new(Mutex::new(primary_id));
        let handle = DhtHandle {
            tx,
            local_addr,
            local_addr6,
            id: id.clone(),
        };
        let driver = Driver {
            dual: DualNode::new(node, node6, now),
            io6: socket6.map(|(s, _)| udp::BatchedSocket::new(s, RECV_BUF)),
            lookups6: HashMap::new(),
            rx,
            store,
            routers: config.bootstrap.clone(),
            save_interval: config.save_interval,
            pings: HashMap::new(),
            replies: HashMap::new(),
            incoming: config.incoming.clone(),
            lookups: HashMap::new(),
            items: HashMap::new(),
            io: socket.map(|s| udp::BatchedSocket::new(s, RECV_BUF)),
            id,
            waiters: Vec::new(),
            saving: None,
            #[cfg(feature = "testing")]
            held: (!config.receive_delay.is_zero()).then(|| Held {
                delay: config.receive_delay,
                queue: VecDeque::new(),
            }),
        };
        Ok((handle, driver.run()))
    }
}

/// Runs `$body` with `$n` bound to the driver's primary node (see [`Driver::dual`]), of
/// whichever family: the node types differ, so a closure could not take either.
macro_rules! on_primary {
    ($self:ident, |$n:ident| $body:expr) => {
        if let Some($n) = $self.dual.v4_mut() {
            $body
        } else {
            let $n = $self
                .dual
                .v6_mut()
                .expect("a driver runs at least one family");
            $body
        }
    };
}

struct Driver {
    /// The IPv4 node, the IPv6 one, or both. The first present is the *primary* node:
    /// lookups other than get_peers/announce and items run on it, and its id is the
    /// handle's.
    dual: DualNode,
    /// The IPv6 socket.
    io6: Option<udp::BatchedSocket<SocketAddrV6>>,
    /// IPv6 halves of dual lookups: the IPv6 lookup id to the IPv4 one that keys `lookups`.
    lookups6: HashMap<LookupId, LookupId>,
    rx: mpsc::UnboundedReceiver<Command>,
    store: Option<NodeStore>,
    routers: Vec<String>,
    save_interval: Duration,
    pings: HashMap<(Family, RequestId), oneshot::Sender<Result<NodeId, PingError>>>,
    replies: HashMap<(Family, RequestId), ReplyTx>,
    incoming: Option<mpsc::Sender<IncomingQuery>>,
    lookups: HashMap<LookupId, Stream>,
    items: HashMap<LookupId, oneshot::Sender<ItemResult>>,
    /// The IPv4 socket (`None` on an IPv6-only node).
    io: Option<udp::BatchedSocket>,
    id: Arc<Mutex<NodeId>>,
    /// `wait_for_nodes` callers: (table size wanted, who to tell).
    waiters: Vec<(usize, oneshot::Sender<()>)>,
    /// The periodic save running on the blocking pool, if any: sled's flush is disk I/O
    /// and must not hold up the event loop (replies, timers, commands).
    saving: Option<tokio::task::JoinHandle<Result<(), PersistError>>>,
    /// Datagrams waiting out [`DhtConfig::receive_delay`]; `None` when there is no delay, so
    /// the receive path is then exactly the one without the feature.
    #[cfg(feature = "testing")]
    held: Option<Held>,
}

/// Who waits for a direct query's reply.
type ReplyTx = oneshot::Sender<Result<Box<Response>, PingError>>;

/// A lookup's stream and how many of its halves (one per family) are still running.
struct Stream {
    tx: mpsc::UnboundedSender<LookupUpdate>,
    open: u8,
    summary: LookupSummary,
}

/// Received datagrams held back for an emulated receive delay
/// ([`DhtConfig::receive_delay`]), in arrival order, which is also their delivery order
/// since every one waits the same delay.
#[cfg(feature = "testing")]
struct Held {
    delay: Duration,
    queue: VecDeque<(tokio::time::Instant, SocketAddr, Vec<u8>)>,
}

#[cfg(feature = "testing")]
impl Held {
    /// When the oldest held datagram is due, for the driver's timer.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.queue.front().map(|d| d.0)
    }

    /// Hands the node every datagram whose delay has passed.
    fn deliver_due(&mut self, node: &mut DualNode) {
        let now = tokio::time::Instant::now();
        while self.queue.front().is_some_and(|d| d.0 <= now) {
            let (_, from, data) = self.queue.pop_front().expect("checked");
            node.handle_datagram(Instant::now(), from, &data);
        }
    }
}

/// What the socket feeds while a receive delay is set: received datagrams are copied into
/// [`Held`] instead of handled; the rest (the oversized count, outgoing datagrams) goes to
/// the node as usual. A wrapper rather than a branch in [`udp::BatchedSocket::receive`], so
/// the socket code and the undelayed path stay as they are.
#[cfg(feature = "testing")]
struct Holding<'a> {
    node: &'a mut DualNode,
    held: &'a mut Held,
}

#[cfg(feature = "testing")]
impl udp::Core for Holding<'_> {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let due = tokio::time::Instant::from_std(now) + self.held.delay;
        self.held.queue.push_back((due, from, data.to_vec()));
    }

    fn note_oversized(&mut self, len: usize) {
        udp::Core::<std::net::SocketAddrV4>::note_oversized(self.node, len);
    }

    fn drain_transmits(&mut self, f: impl FnMut(std::net::SocketAddrV4, &[u8])) {
        udp::Core::<std::net::SocketAddrV4>::drain_transmits(self.node, f);
    }
}

/// `recvmmsg` batches read per wake-up before commands and timers get a turn.
const RECV_ROUNDS: usize = 4;
/// Receive buffer per datagram. KRPC messages are far smaller (the largest we send is a
/// BEP 51 reply of well under 1 KiB); a longer datagram is counted as malformed unread
/// (`Node::note_oversized`).
const RECV_BUF: usize = 4096;

impl Driver {
    async fn run(mut self) {
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut save_tick = tokio::time::interval(self.save_interval);
        save_tick.tick().await;
        let mut schedule =
            bootstrap::ResolveSchedule::new(self.dual.v4().is_some(), self.dual.v6().is_some());
        let resolve_at = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(resolve_at);
        // Resolve before serving commands so the first lookups can use the routers.
        if self.routers.is_empty() {
            // No routers: join through persisted contacts (or wait to be contacted).
            self.dual.bootstrap(Instant::now(), &[]);
            schedule = bootstrap::ResolveSchedule::new(false, false);
        } else {
            self.resolve_and_bootstrap(&mut schedule, true).await;
        }
        let mut need_resolve = schedule.pending();
        if let Some(at) = schedule.next_at() {
            resolve_at
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
        }
        let mut shutdown_ack = None;
        loop {
            self.flush().await;
            self.dispatch_events();
            if !self.waiters.is_empty() {
                let have = self.dual.v4().map_or(0, |n| n.table().len())
                    + self.dual.v6().map_or(0, |n| n.table().len());
                let mut i = 0;
                while i < self.waiters.len() {
                    if self.waiters[i].0 <= have {
                        let (_, tx) = self.waiters.swap_remove(i);
                        let _ = tx.send(());
                    } else {
                        i += 1;
                    }
                }
            }
            let deadline = self
                .dual
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(far);
            #[cfg(feature = "testing")]
            let deadline = match self.held.as_ref().and_then(Held::next_due) {
                Some(due) => deadline.min(due),
                None => deadline,
            };
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Shutdown(ack)) => {
                        shutdown_ack = Some(ack);
                        break;
                    }
                    Some(c) => self.command(c),
                    None => break,
                },
                () = &mut sleep => self.timer(),
                () = &mut resolve_at, if need_resolve => {
                    self.resolve_and_bootstrap(&mut schedule, false).await;
                    need_resolve = schedule.pending();
                    if let Some(at) = schedule.next_at() {
                        resolve_at.as_mut().reset(tokio::time::Instant::from_std(at));
                    }
                }
                _ = save_tick.tick() => self.start_save(),
                // Last in the biased order: under a saturating flood the socket is always
                // readable, and commands and timers (rare, cheap) must still get their turn.
                r = async {
                    match &self.io {
                        Some(io) => io.socket().readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_ok() {
                        self.receive();
                    }
                }
                r = async {
                    match &self.io6 {
                        Some(io) => io.socket().readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_ok()
                        && let Some(io) = &mut self.io6
                    {
                        io.receive(&mut self.dual, RECV_ROUNDS);
                    }
                }
            }
        }
        self.flush().await;
        if let Some(h) = self.saving.take() {
            // Let a periodic save finish before the final one.
            let _ = h.await;
        }
        let saved = match (self.save_in_background(), &self.store) {
            (Some(h), Some(store)) => h.await.unwrap_or_else(|e| {
                Err(PersistError::Io {
                    path: store.path().to_path_buf(),
                    detail: format!("the save task failed: {e}"),
                })
            }),
            _ => Ok(()),
        };
        // Close the store (releasing its lock) before acknowledging, so a caller can reopen
        // the same data directory as soon as shutdown() returns.
        drop(self.store.take());
        if let Some(ack) = shutdown_ack {
            let _ = ack.send(saved);
        }
    }

    /// Resolves the routers and bootstraps each family that is due: at the first call
    /// every family (one without a router address joins through its persisted contacts),
    /// later only a family whose routers now resolve, so the other's join never restarts.
    /// A family left without an address retries on its own backoff (`schedule`); its first
    /// failure is a warning, the repeats are debug lines (a router list without AAAA
    /// records is common and must not fill the log).
    async fn resolve_and_bootstrap(
        &mut self,
        schedule: &mut bootstrap::ResolveSchedule,
        first: bool,
    ) {
        let (addrs, errors) = bootstrap::resolve(&self.routers).await;
        for e in &errors {
            if first {
                tracing::warn!("bootstrap router {e}");
            } else {
                tracing::debug!("bootstrap router {e}");
            }
        }
        let now = Instant::now();
        if first {
            self.dual.bootstrap(now, &addrs);
        }
        for (family, name) in [(Family::V4, "IPv4"), (Family::V6, "IPv6")] {
            if !schedule.due(now, family) {
                continue;
            }
            let found = addrs
                .iter()
                .filter(|a| a.is_ipv4() == (family == Family::V4))
                .count();
            if found > 0 && !first {
                self.dual.bootstrap_family(now, family, &addrs);
            }
            match schedule.attempted(now, family, found) {
                0 => {}
                1 => tracing::warn!("no {name} bootstrap router resolved; will retry"),
                n => tracing::debug!("no {name} bootstrap router resolved (attempt {n})"),
            }
        }
    }

    /// Starts a periodic save unless the previous one is still running (a finished one
    /// has logged its own failure).
    fn start_save(&mut self) {
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::debug!("routing table save still running; skipping this one");
            return;
        }
        self.saving = self.save_in_background();
    }

    /// Snapshots the contacts here and writes them on the blocking pool.
    fn save_in_background(&self) -> Option<tokio::task::JoinHandle<Result<(), PersistError>>> {
        let store = self.store.clone()?;
        let contacts = self.dual.v4().map(Node::contacts);
        let contacts6 = self.dual.v6().map(Node::contacts);
        Some(tokio::task::spawn_blocking(move || {
            let res = match &contacts {
                Some(c) => store.save_contacts(c),
                None => Ok(()),
            }
            .and_then(|()| match &contacts6 {
                Some(c6) => store.save_contacts_of(c6),
                None => Ok(()),
            });
            if let Err(e) = &res {
                tracing::warn!("saving the routing table failed: {e}");
            }
            res
        }))
    }

    async fn flush(&mut self) {
        if let Some(io) = &mut self.io {
            io.flush(&mut self.dual).await;
        }
        if let Some(io) = &mut self.io6 {
            io.flush(&mut self.dual).await;
        }
    }

    /// Whether the primary node (see [`Driver::dual`]) is the IPv4 one.
    fn v4_primary(&self) -> bool {
        self.dual.v4().is_some()
    }

    /// Reads what the socket has into the node, or into the hold queue when a receive delay
    /// is set.
    fn receive(&mut self) {
        let Some(io) = &mut self.io else {
            return;
        };
        #[cfg(feature = "testing")]
        if let Some(held) = &mut self.held {
            let mut core = Holding {
                node: &mut self.dual,
                held,
            };
            io.receive(&mut core, RECV_ROUNDS);
            return;
        }
        io.receive(&mut self.dual, RECV_ROUNDS);
    }

    /// The timer fired: held datagrams now due go to the node, then its own timers run
    /// (harmless when only a held datagram was due: the node keeps timers not yet due).
    fn timer(&mut self) {
        #[cfg(feature = "testing")]
        if let Some(held) = &mut self.held {
            held.deliver_due(&mut self.dual);
        }
        self.dual.handle_timeout(Instant::now());
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Ping(addr, tx) => match self.dual.query(now, addr, DirectQuery::Ping) {
                Some(req) => {
                    self.pings.insert(req, tx);
                }
                None => {
                    let _ = tx.send(Err(PingError::NotAllowed));
                }
            },
            Command::Query(addr, q, tx) => match self.dual.query(now, addr, q) {
                Some(req) => {
                    self.replies.insert(req, tx);
                }
                None => {
                    let _ = tx.send(Err(PingError::NotAllowed));
                }
            },
            Command::Lookup(req, tx) => {
                // get_peers and announce run on both families; the rest on the primary.
                let both = matches!(
                    req,
                    LookupRequest::GetPeers(_) | LookupRequest::Announce(..)
                );
                let id = on_primary!(self, |n| match req {
                    LookupRequest::FindNode(t) => n.find_node(now, t),
                    LookupRequest::GetPeers(ih) => n.get_peers(now, ih),
                    LookupRequest::Announce(ih, port, seed) => n.announce_as(now, ih, port, seed),
                    LookupRequest::Scrape(ih) => n.scrape(now, ih),
                });
                let mut open = 1;
                if both
                    && self.v4_primary()
                    && let Some(n6) = self.dual.v6_mut()
                {
                    let id6 = match req {
                        LookupRequest::GetPeers(ih) => n6.get_peers(now, ih),
                        LookupRequest::Announce(ih, port, seed) => {
                            n6.announce_as(now, ih, port, seed)
                        }
                        _ => unreachable!("only get_peers and announce run on both"),
                    };
                    self.lookups6.insert(id6, id);
                    open = 2;
                }
                self.lookups.insert(
                    id,
                    Stream {
                        tx,
                        open,
                        summary: LookupSummary::default(),
                    },
                );
            }
            Command::Item(req, tx) => {
                let id = on_primary!(self, |n| match req {
                    ItemRequest::Get(target, q) => n.get_item(now, target, q),
                    ItemRequest::Put(p) => n.put_item(now, p),
                });
                self.items.insert(id, tx);
            }
            Command::AddContacts(addrs) => {
                let (v4, v6) = split_all(addrs);
                if let Some(n) = self.dual.v4_mut() {
                    n.add_contacts(now, v4);
                }
                if let Some(n) = self.dual.v6_mut() {
                    n.add_contacts(now, v6);
                }
            }
            Command::Bootstrap(routers) => self.dual.bootstrap(now, &routers),
            Command::Stats(tx) => {
                let mut s = on_primary!(self, |n| n.stats(now));
                s.dropped_other += match &self.io {
                    Some(io) => io.send_errors(),
                    None => self.io6.as_ref().map_or(0, |io| io.send_errors()),
                };
                let _ = tx.send(s);
            }
            Command::Stats6(tx) => {
                let errors = self.io6.as_ref().map_or(0, |io| io.send_errors());
                let s = self.dual.v6().map(|n| {
                    let mut s = n.stats(now);
                    s.dropped_other += errors;
                    s
                });
                let _ = tx.send(s);
            }
            Command::Contacts(tx) => {
                let _ = tx.send(self.dual.v4().map(Node::contacts).unwrap_or_default());
            }
            Command::Contacts6(tx) => {
                let _ = tx.send(self.dual.v6().map(|n| n.contacts()).unwrap_or_default());
            }
            Command::WaitNodes(n, tx) => self.waiters.push((n, tx)),
            Command::Shutdown(_) => unreachable!("handled by the loop"),
        }
    }

    fn dispatch_events(&mut self) {
        while let Some(ev) = self.dual.poll_event() {
            match ev {
                DualEvent::V4(ev) => self.on_event(Family::V4, ev, |closest| LookupSummary {
                    closest,
                    ..LookupSummary::default()
                }),
                DualEvent::V6(ev) => self.on_event(Family::V6, ev, |closest6| LookupSummary {
                    closest6,
                    ..LookupSummary::default()
                }),
            }
        }
    }

    /// One half of a lookup reported peers or ended; the stream ends with its last half.
    fn on_lookup(&mut self, key: LookupId, update: LookupUpdate) {
        let Some(stream) = self.lookups.get_mut(&key) else {
            return;
        };
        match update {
            LookupUpdate::Peers(p) => {
                let _ = stream.tx.send(LookupUpdate::Peers(p));
            }
            LookupUpdate::Done(half) => {
                let s = &mut stream.summary;
                s.closest.extend(half.closest);
                s.closest6.extend(half.closest6);
                s.announced += half.announced;
                s.messages += half.messages;
                if half.scrape.is_some() {
                    s.scrape = half.scrape;
                }
                stream.open -= 1;
                if stream.open == 0 {
                    let stream = self.lookups.remove(&key).expect("present");
                    let _ = stream.tx.send(LookupUpdate::Done(stream.summary));
                }
            }
        }
    }

    fn on_incoming(&self, info_hash: InfoHash, from: SocketAddr, peer: Option<SocketAddr>) {
        if let Some(tx) = &self.incoming {
            let _ = tx.try_send(IncomingQuery {
                info_hash,
                from,
                peer,
            });
        }
    }

    /// Whether `family`'s node is the primary one (see [`Driver::dual`]).
    fn is_primary(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.v4_primary(),
            Family::V6 => !self.v4_primary(),
        }
    }

    /// One node's event, either family: `half` puts a finished lookup's closest contacts
    /// into the summary field of their family. A lookup of the primary node keys its
    /// stream; the secondary node's get_peers/announce halves map to it via `lookups6`.
    fn on_event<A: NodeAddr + Into<SocketAddr>>(
        &mut self,
        family: Family,
        ev: Event<A>,
        half: fn(Vec<Contact<A>>) -> LookupSummary,
    ) {
        let primary = self.is_primary(family);
        match ev {
            Event::Pong { request, result } => {
                if let Some(tx) = self.pings.remove(&(family, request)) {
                    let _ = tx.send(result);
                }
            }
            Event::Reply { request, result } => {
                if let Some(tx) = self.replies.remove(&(family, request)) {
                    let _ = tx.send(result);
                }
            }
            Event::IdChanged(id) => {
                if primary {
                    *self.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
                }
                if let Some(store) = self.store.clone() {
                    // Off the event loop, like every other store write.
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = store
                            .set_node_id_of(family, &id)
                            .and_then(|()| store.flush())
                        {
                            tracing::warn!("could not save the new {family:?} node id: {e}");
                        }
                    });
                }
            }
            Event::Incoming {
                info_hash,
                from,
                peer,
            } => self.on_incoming(info_hash, from.into(), peer.map(Into::into)),
            // Items run on the primary node only.
            Event::Item { lookup, result } => {
                if primary && let Some(tx) = self.items.remove(&lookup) {
                    let _ = tx.send(*result);
                }
            }
            Event::Peers { lookup, peers } => {
                let key = if primary {
                    Some(lookup)
                } else {
                    self.lookups6.get(&lookup).copied()
                };
                if let Some(key) = key {
                    let peers = peers.into_iter().map(Into::into).collect();
                    self.on_lookup(key, LookupUpdate::Peers(peers));
                }
            }
            Event::LookupDone {
                lookup,
                closest,
                announced,
                messages,
                scrape,
            } => {
                let key = if primary {
                    Some(lookup)
                } else {
                    self.lookups6.remove(&lookup)
                };
                if let Some(key) = key {
                    let summary = LookupSummary {
                        announced,
                        messages,
                        scrape,
                        ..half(closest)
                    };
                    self.on_lookup(key, LookupUpdate::Done(summary));
                }
            }
            // Handed to the sibling inside the DualNode; never surfaces here.
            Event::OtherFamilyNodes(_) => {}
        }
    }
}

/// An address split by family (an IPv4-mapped IPv6 address is IPv4).
enum Split {
    V4(SocketAddrV4),
    V6(SocketAddrV6),
}

fn split(a: SocketAddr) -> Split {
    match SocketAddrV4::from_socket(a) {
        Some(v4) => Split::V4(v4),
        None => match a {
            SocketAddr::V6(v6) => Split::V6(v6),
            SocketAddr::V4(v4) => Split::V4(v4),
        },
    }
}

fn split_all(addrs: Vec<SocketAddr>) -> (Vec<SocketAddrV4>, Vec<SocketAddrV6>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in addrs {
        match split(a) {
            Split::V4(a) => v4.push(a),
            Split::V6(a) => v6.push(a),
        }
    }
    (v4, v6)
}

/// Each socket serves the DualNode: datagrams go through its family routing (with the
/// sibling lent for `want`), transmits come from the socket's family's node.
impl udp::Core for DualNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        DualNode::handle_datagram(self, now, from, data);
    }

    fn note_oversized(&mut self, len: usize) {
        if let Some(n) = self.v4_mut() {
            n.note_oversized(len);
        }
    }

    fn drain_transmits(&mut self, f: impl FnMut(std::net::SocketAddrV4, &[u8])) {
        if let Some(n) = self.v4_mut() {
            n.drain_transmits(f);
        }
    }
}

impl udp::Core<SocketAddrV6> for DualNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        DualNode::handle_datagram(self, now, from, data);
    }

    fn note_oversized(&mut self, len: usize) {
        if let Some(n) = self.v6_mut() {
            n.note_oversized(len);
        }
    }

    fn drain_transmits(&mut self, f: impl FnMut(SocketAddrV6, &[u8])) {
        if let Some(n) = self.v6_mut() {
            n.drain_transmits(f);
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::sim::testnet::{Testnet, TestnetConfig};

    /// A node on the loopback testnet: `id` and `contacts` as a restart would pass them,
    /// `routers` to bootstrap from, `delay` held on every datagram it receives.
    async fn start(
        bind: &str,
        id: Option<NodeId>,
        routers: &[SocketAddrV4],
        contacts: Vec<SocketAddrV4>,
        delay: Duration,
    ) -> DhtHandle {
        let mut config = DhtConfig::new(bind.parse().unwrap());
        config.node = node::Config {
            id,
            ..node::Config::loopback_testnet()
        };
        config.bootstrap = routers.iter().map(|r| r.to_string()).collect();
        config.contacts = contacts.into_iter().map(SocketAddr::V4).collect();
        config.receive_delay = delay;
        let (handle, driver) = Dht::bind(config).await.unwrap();
        tokio::spawn(driver);
        handle
    }

    /// The emulated receive delay is applied to every exchange: a restarted node (same id,
    /// its previous contacts, no router, as `dht-restart-bench --delay-ms` starts one) with a
    /// 50 ms delay takes at least that long to join, for each ping and for a lookup, and
    /// still finds what an undelayed node finds. On loopback an undelayed round trip takes
    /// well under a millisecond, so a driver that ignored the delay fails every bound.
    #[tokio::test]
    async fn a_receive_delay_holds_back_every_reply() {
        const DELAY: Duration = Duration::from_millis(50);
        let net = Testnet::start(
            20,
            TestnetConfig {
                subnet: 99,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        net.wait_for_tables(4, Duration::from_secs(20)).await;
        let wait = |h: DhtHandle| async move {
            tokio::time::timeout(Duration::from_secs(10), h.wait_for_nodes(4))
                .await
                .expect("the table fills")
                .unwrap();
        };
        let fast = start(
            "127.99.250.1:0",
            None,
            &[net.addr(0)],
            vec![],
            Duration::ZERO,
        )
        .await;
        wait(fast.clone()).await;
        let target = net.nodes[7].id();
        let r = fast.find_node(target).await.unwrap();
        assert_eq!(r.closest.first().map(|c| c.id), Some(target), "{r:?}");

        let id = fast.id();
        let persisted: Vec<SocketAddrV4> = fast
            .contacts()
            .await
            .unwrap()
            .iter()
            .map(|c| c.addr)
            .collect();
        fast.shutdown().await.unwrap();
        let started = Instant::now();
        let slow = start("127.99.250.2:0", Some(id), &[], persisted, DELAY).await;
        assert_eq!(slow.id(), id);
        wait(slow.clone()).await;
        // clock-ok: lower bounds (the configured delay was applied); load only lengthens them.
        assert!(started.elapsed() >= DELAY);
        for i in 1..6 {
            let t = Instant::now();
            let pong = slow.ping(net.addr(i)).await.unwrap();
            assert_eq!(pong, net.nodes[i].id());
            // clock-ok: a lower bound, as above.
            assert!(t.elapsed() >= DELAY, "ping {i}: {:?}", t.elapsed());
        }
        let t = Instant::now();
        let r = slow.find_node(target).await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.closest.first().map(|c| c.id), Some(target), "{r:?}");
        // clock-ok: a lower bound, as above.
        assert!(took >= DELAY, "{took:?} {r:?}");
        slow.shutdown().await.unwrap();
        net.shutdown().await;
    }
}
