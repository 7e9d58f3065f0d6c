//! The DHT node as a sans-IO state machine.
//!
//! [`Node`] performs no I/O and reads no clock: it is fed `(now, from, datagram)` and
//! commands, and it yields datagrams to send ([`Node::poll_transmit`]), the next instant it
//! wants to be woken ([`Node::poll_timeout`]) and events for the application
//! ([`Node::poll_event`]). The tokio driver in [`crate::dht::driver`] and the virtual-time simulator
//! in `crate::sim` run exactly this code, so what the tests and benchmarks measure is what
//! runs on the network.
//!
//! Every datagram leaves through one function, `Node::queue`, which enforces the outbound
//! allow-list.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::dht::allow::AllowList;
use crate::dht::bep42::{self, IpVoter};
use crate::dht::gate::{self, Dropped, Gated};
use crate::dht::id::{Contact, Family, InfoHash, NodeAddr, NodeId, compact_nodes, set_nodes};
use crate::dht::items::{ItemStats, ItemStore, ItemStoreConfig};

mod bep44;
mod items_client;
#[cfg(test)]
mod tests;
use crate::dht::krpc::{
    self, Body, ERR_PROTOCOL, Method, Query, QueryArgs, Response, ResponseBody, Token, Want,
};
use crate::dht::limits::{ByteQuota, RateLimit, RateLimiter};
use crate::dht::lookup::{CandidateFilter, Lookup, LookupKind, Phase, SearchReply, is_global};
pub use crate::dht::outbox::Transmit;
use crate::dht::outbox::{Emitted, Outbox};
use crate::dht::peer_store::{PeerStore, StoreConfig, TokenSecrets};
use crate::dht::routing::{Insert, RoutingConfig, RoutingTable};
use crate::dht::rpc::{Matched, Pending, Transactions};
use crate::dht::scrape::{ScrapeEstimate, ScrapeFilter};
pub use items_client::ItemSlot;

/// Our client version tag: [`crate::CLIENT_CODE`] and a two-byte version.
pub const VERSION: &[u8; 4] = &[crate::CLIENT_CODE[0], crate::CLIENT_CODE[1], 0, 1];

/// Node settings. The defaults suit a node on the public internet; tests and testnets turn
/// off the subnet rule and set the allow-list to 127.0.0.0/8.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our node id; random when `None` (a restarted node passes its persisted id).
    pub id: Option<NodeId>,
    /// At most one lookup candidate per IP (libtorrent's `dht_restrict_search_ips`, on by
    /// default there too): a sybil with many ids on one address gets one announce slot.
    pub restrict_search_ips: bool,
    /// The address our socket is bound to (the driver sets it): `nodes` entries at our own
    /// address are never queried, and a node bound to a global address drops candidates
    /// that no internet node can have (private, loopback, bogons).
    pub local_addr: Option<SocketAddr>,
    /// Routing table settings (bucket size, replacements, subnet and BEP 42 rules).
    pub routing: RoutingConfig,
    /// Peer store bounds for the announces we receive.
    pub store: StoreConfig,
    /// BEP 44 item store bounds.
    pub items: ItemStoreConfig,
    /// Outbound allow-list, enforced on every datagram.
    pub allow: AllowList,
    /// Queries in flight per lookup.
    pub alpha: usize,
    /// Short timeout: frees a lookup slot.
    pub short_timeout: Duration,
    /// Hard timeout: the query failed.
    pub hard_timeout: Duration,
    /// Outstanding queries at most.
    pub max_transactions: usize,
    /// Concurrent lookups at most (user and maintenance).
    pub max_lookups: usize,
    /// Pause between maintenance pings of the least recently seen node.
    pub ping_interval: Duration,
    /// A node heard from more recently than this is not pinged for maintenance.
    pub ping_min_age: Duration,
    /// BEP 43: mark our queries read-only and do not answer queries (for clients that
    /// cannot receive unsolicited packets). Off for a normal node.
    pub read_only: bool,
    /// Seed for the node's random number generator (ids, tids, tokens); `None` = OS entropy.
    /// The simulator passes one so runs are reproducible.
    pub seed: Option<u64>,
    /// BEP 51 `interval` we advertise, in seconds.
    pub sample_interval: u32,
    /// Emit [`Event::Incoming`] for get_peers and announce_peer queries we receive.
    pub report_incoming: bool,
    /// Per-IP packet rate limit with temporary bans; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Bytes per second of replies at most (a spoofed-query amplification cap); `None` =
    /// unlimited.
    pub reply_quota: Option<u64>,
    /// BEP 42: once the majority of repliers agree on our external IP, switch to a node id
    /// valid for it (unless the id is already valid). Emits [`Event::IdChanged`].
    pub adopt_bep42_id: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: None,
            restrict_search_ips: true,
            local_addr: None,
            routing: RoutingConfig::default(),
            store: StoreConfig::default(),
            items: ItemStoreConfig::default(),
            allow: AllowList::any(),
            alpha: 3,
            short_timeout: Duration::from_millis(1000),
            hard_timeout: Duration::from_secs(4),
            max_transactions: 4096,
            max_lookups: 256,
            ping_interval: Duration::from_secs(5),
            ping_min_age: Duration::from_secs(60),
            read_only: false,
            seed: None,
            sample_interval: 6 * 3600,
            report_incoming: false,
            rate_limit: Some(RateLimit::default()),
            reply_quota: Some(DEFAULT_REPLY_QUOTA),
            adopt_bep42_id: true,
        }
    }
}

impl Config {
    /// Settings for a private network on loopback: allow-list 127.0.0.0/8, no subnet rule,
    /// no rate limit or reply quota (test networks and benchmarks push far more traffic
    /// between a few addresses than any public peer would).
    pub fn loopback_testnet() -> Self {
        Config {
            allow: AllowList::loopback(),
            rate_limit: None,
            reply_quota: None,
            routing: RoutingConfig {
                restrict_subnets: false,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Default reply quota: 2 MiB/s, about 7,000 replies per second.
pub const DEFAULT_REPLY_QUOTA: u64 = 2 * 1024 * 1024;

/// Identifies a lookup started with [`Node::find_node`], [`Node::get_peers`] or
/// [`Node::announce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupId(pub u64);

/// Identifies a ping started with [`Node::ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Why a direct query (ping, or [`Node::query`]) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingError {
    /// No answer within [`Config::hard_timeout`].
    Timeout,
    /// The node answered with a KRPC error.
    Remote(i64, String),
    /// The allow-list refuses the destination.
    NotAllowed,
    /// Too many queries outstanding.
    Busy,
    /// The answer carried another node id than the one we asked for (or our own id): the
    /// address does not speak for that node, so the query failed.
    WrongId,
}

/// Results for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<A: NodeAddr = SocketAddrV4> {
    /// The answer to a [`Node::ping`] (or a [`Node::query`] with [`DirectQuery::Ping`]).
    Pong {
        /// The id the ping was started with.
        request: RequestId,
        /// The responder's node id, or why the ping failed.
        result: Result<NodeId, PingError>,
    },
    /// The answer to a [`Node::query`] other than a ping.
    Reply {
        /// The id [`Node::query`] returned.
        request: RequestId,
        /// The node's whole reply, or why the query failed.
        result: Result<Box<Response>, PingError>,
    },
    /// Our node id changed (BEP 42, after learning our external IP): persist it.
    IdChanged(NodeId),
    /// Contacts of the other address family from replies to our BEP 32 `want` (only while
    /// [`Node::set_want_other`] is on): for the sibling node to verify and keep.
    OtherFamilyNodes(Vec<SocketAddr>),
    /// Someone asked us about an infohash (only with [`Config::report_incoming`]): what a
    /// crawler harvests passively. `peer` is set for a valid announce.
    Incoming {
        /// The infohash asked about or announced.
        info_hash: InfoHash,
        /// The querier's address.
        from: A,
        /// The announced peer: the querier's IP with the announced (or implied) port.
        peer: Option<A>,
    },
    /// Peers found by a get_peers/announce lookup, each reported once per lookup.
    Peers {
        /// The lookup that found them.
        lookup: LookupId,
        /// Peers from one reply's `values` that this lookup had not reported yet.
        peers: Vec<A>,
    },
    /// The result of an item lookup ([`Node::get_item`], [`Node::put_item`]), emitted just
    /// before its [`Event::LookupDone`].
    Item {
        /// The item lookup.
        lookup: LookupId,
        /// The value found and, for a put, each storing node's answer.
        result: Box<crate::dht::item_search::ItemResult>,
    },
    /// A lookup the application started has ended; nothing more is reported for it.
    /// Maintenance lookups (bootstrap, bucket refresh) end silently.
    LookupDone {
        /// The lookup that ended.
        lookup: LookupId,
        /// The K closest nodes that answered.
        closest: Vec<Contact<A>>,
        /// announce_peer acknowledgements (announce lookups), or nodes that stored the item
        /// (put lookups).
        announced: usize,
        /// Queries this lookup sent.
        messages: u32,
        /// A scrape lookup's united filters (BEP 33).
        scrape: Option<Box<ScrapeEstimate>>,
    },
}

/// Queries received, by method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodCounts {
    /// BEP 5 `ping` queries.
    pub ping: u64,
    /// BEP 5 `find_node` queries.
    pub find_node: u64,
    /// BEP 5 `get_peers` queries (scrapes included).
    pub get_peers: u64,
    /// BEP 5 `announce_peer` queries, whether or not their token was good.
    pub announce_peer: u64,
    /// BEP 51 `sample_infohashes` queries.
    pub sample_infohashes: u64,
    /// BEP 44 `get` queries.
    pub get: u64,
    /// BEP 44 `put` queries, whether or not the item was stored.
    pub put: u64,
    /// Unknown methods (answered like find_node when they carry a target).
    pub other: u64,
}

impl MethodCounts {
    /// Counts one query of method `m`.
    pub fn count(&mut self, m: &Method) {
        match m {
            Method::Ping => self.ping += 1,
            Method::FindNode { .. } => self.find_node += 1,
            Method::GetPeers { .. } => self.get_peers += 1,
            Method::AnnouncePeer { .. } => self.announce_peer += 1,
            Method::SampleInfohashes { .. } => self.sample_infohashes += 1,
            Method::Get { .. } => self.get += 1,
            Method::Put(_) => self.put += 1,
            Method::Unknown { .. } => self.other += 1,
        }
    }
}

/// Counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Table entries whose id is valid for their IP under BEP 42.
    pub valid_id_nodes: usize,
    /// Queries received and decoded, by method (those claiming our own id excepted).
    pub queries_by_method: MethodCounts,
    /// Table entries that are good (BEP 5): no failed query, and answered or queried us in
    /// the last 15 minutes.
    pub good_nodes: usize,
    /// Table entries neither good nor bad: silent for 15 minutes, or with failed queries
    /// (fewer than [`RoutingConfig::max_failures`] in a row).
    pub questionable_nodes: usize,
    /// Table entries that failed [`RoutingConfig::max_failures`] queries in a row.
    pub bad_nodes: usize,
    /// Buckets in the routing table.
    pub buckets: usize,
    /// Infohashes with at least one announced peer in the peer store.
    pub infohashes: usize,
    /// Announced peers held, over all infohashes.
    pub peers: usize,
    /// BEP 44 items held.
    pub items: usize,
    /// Bytes the item store accounts for its items (what its `max_bytes` cap bounds).
    pub item_bytes: usize,
    /// The item store's counters (puts stored, refreshed, refused; items evicted, expired).
    pub item_counts: ItemStats,
    /// Our queries awaiting an answer.
    pub transactions: usize,
    /// Lookups running, the application's and maintenance ones (bootstrap, refresh).
    pub lookups: usize,
    /// Verification pings outstanding (bounded; drains to zero when the network is quiet).
    pub verifying: usize,
    /// Datagrams received, every one (those dropped and oversized included).
    pub packets_in: u64,
    /// Datagrams queued for sending (past the allow-list and, for replies, the quota).
    pub packets_out: u64,
    /// UDP payload bytes of [`Stats::packets_in`].
    pub bytes_in: u64,
    /// UDP payload bytes of [`Stats::packets_out`].
    pub bytes_out: u64,
    /// Queries that passed the input gate, including those answered with error 203 or 204.
    pub queries_in: u64,
    /// Queries we sent: lookups, pings, verifications and maintenance.
    pub queries_out: u64,
    /// Replies that passed the input gate, whether or not they matched a query of ours.
    pub replies_in: u64,
    /// Replies we sent.
    pub replies_out: u64,
    /// KRPC error messages that passed the input gate.
    pub errors_in: u64,
    /// KRPC error messages we sent (bad query, bad token, BEP 44 refusals).
    pub errors_out: u64,
    /// Undecodable or unattributable datagrams.
    pub dropped_malformed: u64,
    /// Replies matching no outstanding query (or from the wrong address / with the wrong id).
    pub dropped_unmatched: u64,
    /// Datagrams we did not send because the allow-list refused the destination.
    pub dropped_not_allowed: u64,
    /// Other datagrams dropped (non-IPv4 or port 0 sources, our own id, full tables).
    pub dropped_other: u64,
    /// Queries of ours that got no answer within [`Config::hard_timeout`].
    pub timeouts: u64,
    /// announce_peer queries with a good token whose peer was stored (or refreshed).
    pub announces_stored: u64,
    /// announce_peer and BEP 44 `put` queries refused with 203 because their token was not
    /// one we issued to the sender's IP in the last 5 to 10 minutes.
    pub bad_tokens: u64,
    /// Packets from IPs over the rate limit.
    pub dropped_rate_limited: u64,
    /// Replies not sent because of the reply quota.
    pub dropped_quota: u64,
    /// IPs currently banned by the rate limiter.
    pub banned_ips: usize,
    /// Our external IP as voted by repliers (BEP 42).
    pub external_ip: Option<std::net::IpAddr>,
    /// Valid announces not stored (only a store configured to hold nothing refuses).
    pub announces_refused: u64,
    /// Infohashes the full peer store evicted to take a new announce.
    pub infohashes_evicted: u64,
    /// Queries of ours that ended: by a reply, an error, a wrong-id reply or a timeout. Each
    /// query ends exactly once, so `queries_out == queries_ended + transactions` always.
    pub queries_ended: u64,
    /// Lookups ended by [`LOOKUP_DEADLINE`] rather than by converging.
    pub lookups_overdue: u64,
    /// `nodes` entries of replies not queried because they were junk (port 0, our own
    /// address, or not a possible internet address while we are on the internet).
    pub junk_candidates: u64,
    /// Replies to our queries that carried another id than the one we asked (or our own):
    /// each ended its query as a failure.
    pub wrong_id_replies: u64,
}

/// A single query to one node, answered by [`Event::Pong`] (ping) or [`Event::Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectQuery {
    /// BEP 5 `ping`: learns the node's id.
    Ping,
    /// BEP 5 `find_node` for this target.
    FindNode(NodeId),
    /// BEP 5 `get_peers` for this infohash (without the BEP 33 flags).
    GetPeers(InfoHash),
    /// BEP 51 `sample_infohashes` with this target.
    SampleInfohashes(NodeId),
}

/// What an outstanding query is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A query the application asked for (`true`: a ping, answered with `Pong`).
    Direct(RequestId, bool),
    /// Checking an unknown querier or a persisted contact before it may enter the table.
    Verify,
    /// Keeping a table entry fresh.
    Maintenance,
    Search(LookupId),
    Announce(LookupId),
}

/// Why a lookup exists, for what to report when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    User,
    Bootstrap,
    Refresh,
}

struct LookupSlot<A: NodeAddr = SocketAddrV4> {
    lookup: Lookup<A>,
    owner: Owner,
    /// The BEP 44 side of a get/put item lookup.
    item: Option<Box<ItemSlot<A>>>,
    /// When the lookup ends at the latest ([`LOOKUP_DEADLINE`] after it started).
    deadline: Instant,
}

/// See [`Node::overdue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overdue {
    /// Queries still pending past [`Config::hard_timeout`].
    pub transactions: usize,
    /// Lookups still running past [`LOOKUP_DEADLINE`].
    pub lookups: usize,
    /// Verifications in progress beyond the queries in flight (each needs one).
    pub verifications: usize,
}

/// The other family's node, as a node answering a query sees it: BEP 32's `want` asks one
/// family's node for the other family's contacts, and a dual-stack process has both. The
/// node never holds the other one; the caller lends it for the one datagram.
pub trait OtherFamily {
    /// The family of the contacts this gives.
    fn family(&self) -> Family;
    /// Appends the compact form (26 or 38 bytes each) of up to `k` closest verified contacts
    /// to `target`.
    fn write_closest(&self, target: &NodeId, k: usize, out: &mut Vec<u8>);
}

impl<A: NodeAddr> OtherFamily for Node<A> {
    fn family(&self) -> Family {
        A::FAMILY
    }

    fn write_closest(&self, target: &NodeId, k: usize, out: &mut Vec<u8>) {
        // Allocates: only a query whose `want` names the other family comes here.
        let mut contacts = Vec::with_capacity(k);
        self.table.closest(target, k, &mut contacts);
        for c in &contacts {
            c.write_compact(out);
        }
    }
}

/// Queues one datagram through the allow-list and (for replies) the quota, counting what
/// happened: every datagram the node sends passes here.
fn emit<A: NodeAddr>(
    outbox: &mut Outbox<A>,
    stats: &mut Stats,
    allow: &AllowList,
    quota: Option<&mut ByteQuota>,
    now: Instant,
    to: A,
    encode: impl FnOnce(&mut Vec<u8>),
) -> bool {
    match outbox.emit(allow, quota, now, to, encode) {
        Emitted::Queued(len) => {
            stats.packets_out += 1;
            stats.bytes_out += len as u64;
            true
        }
        Emitted::NotAllowed => {
            stats.dropped_not_allowed += 1;
            false
        }
        Emitted::OverQuota => {
            stats.dropped_quota += 1;
            false
        }
    }
}

/// The DHT node core.
pub struct Node<A: NodeAddr = SocketAddrV4> {
    id: NodeId,
    config: Config,
    rng: StdRng,
    table: RoutingTable<A>,
    txns: Transactions<Purpose, A>,
    tokens: TokenSecrets,
    store: PeerStore<A>,
    /// BEP 44 items (served by `bep44.rs`).
    items: ItemStore,
    lookups: HashMap<LookupId, LookupSlot<A>>,
    next_lookup: u64,
    next_request: u64,
    /// Addresses with a verification ping outstanding, so one querier gets one ping.
    verifying: HashSet<A>,
    /// Persisted or PORT-learned contacts waiting for a verification ping (paced).
    to_verify: VecDeque<A>,
    routers: Vec<A>,
    bootstrap_running: bool,
    bootstrap_next: Option<Instant>,
    bootstrap_backoff: Duration,
    next_ping: Instant,
    /// When the next burst of `to_verify` pings may go out.
    next_verify: Instant,
    next_refresh_check: Instant,
    next_sweep: Instant,
    outbox: Outbox<A>,
    events: VecDeque<Event<A>>,
    limiter: Option<RateLimiter<A::Ip>>,
    quota: Option<ByteQuota>,
    voter: IpVoter<A::Ip>,
    stats: Stats,
    // Scratch buffers reused across packets.
    scratch_contacts: Vec<Contact<A>>,
    scratch_nodes: Vec<u8>,
    /// The other family's nodes of a reply to a BEP 32 `want`.
    scratch_nodes_other: Vec<u8>,
    scratch_values: Vec<A>,
    scratch_samples: Vec<u8>,
    /// BEP 33 filters (seeds, downloaders) of the scrape being answered; boxed, 512 bytes.
    scratch_scrape: Box<(ScrapeFilter, ScrapeFilter)>,
    scratch_queries: Vec<(A, Option<NodeId>)>,
    scratch_announce: Vec<(A, NodeId, Token)>,
    scratch_failed: Vec<Pending<Purpose, A>>,
    scratch_slow: Vec<Pending<Purpose, A>>,
    /// See [`Node::set_want_other`].
    want_other: bool,
}

/// Contacts paced per timer tick when re-verifying persisted contacts.
const VERIFY_BURST: usize = 64;
/// Pause between bursts of verification pings.
const VERIFY_PACE: Duration = Duration::from_millis(20);
/// How often idle buckets are checked.
const REFRESH_CHECK: Duration = Duration::from_secs(60);
/// Every lookup ends by this long after it started, whatever its candidates do: a chain of
/// liars that keep listing ever closer (fake) ids, each answering just before its timeout,
/// would otherwise keep a lookup (and whoever awaits it) going for good. Honest lookups on
/// the live DHT end in a few seconds.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(60);
/// How often expired peers are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Bootstrap retry backoff bounds, used while the table stays empty or shallow.
const BOOTSTRAP_MIN_BACKOFF: Duration = Duration::from_secs(2);
const BOOTSTRAP_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Bounds on pending verifications.
const MAX_VERIFYING: usize = 256;
const MAX_TO_VERIFY: usize = 4096;
/// BEP 42 external-IP vote: recent votes kept, and votes a result needs.
const IP_VOTE_WINDOW: usize = 25;
const IP_VOTE_MIN: usize = 5;
/// BEP 51: samples per reply.
const MAX_SAMPLES: usize = 20;
/// Other-family contacts read from one reply (a `want` reply carries K of them).
pub const MAX_OTHER_FAMILY: usize = 16;

impl Node {
    /// Creates a node of the IPv4 DHT. Nothing is sent until [`Node::bootstrap`], a command,
    /// or a datagram.
    pub fn new(config: Config, now: Instant) -> Self {
        Node::of_family(config, now)
    }
}

impl Node<SocketAddrV6> {
    /// Creates a node of the IPv6 DHT (BEP 32): its own table, id, peer store and tokens,
    /// answering on an IPv6 socket.
    pub fn new_v6(config: Config, now: Instant) -> Self {
        Node::of_family(config, now)
    }
}

impl<A: NodeAddr> Node<A> {
    /// Creates a node of `A`'s family ([`Node::new`] and [`Node::new_v6`] name the two).
    pub fn of_family(config: Config, now: Instant) -> Self {
        let mut rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => rand::make_rng(),
        };
        let id = config.id.unwrap_or_else(|| NodeId::random(&mut rng));
        let tokens = TokenSecrets::new(&mut rng, now);
        Node {
            id,
            table: RoutingTable::new(id, config.routing.clone(), now),
            txns: Transactions::new(
                config.max_transactions,
                config.short_timeout,
                config.hard_timeout,
            ),
            tokens,
            store: PeerStore::new(config.store.clone()),
            items: ItemStore::new(config.items.clone()),
            lookups: HashMap::new(),
            next_lookup: 1,
            next_request: 1,
            verifying: HashSet::new(),
            to_verify: VecDeque::new(),
            routers: Vec::new(),
            bootstrap_running: false,
            bootstrap_next: None,
            bootstrap_backoff: BOOTSTRAP_MIN_BACKOFF,
            next_ping: now + config.ping_interval,
            next_verify: now,
            next_refresh_check: now + REFRESH_CHECK,
            next_sweep: now + SWEEP_INTERVAL,
            outbox: Outbox::default(),
            events: VecDeque::new(),
            limiter: config.rate_limit.map(RateLimiter::new),
            quota: config.reply_quota.map(|q| ByteQuota::new(q, now)),
            voter: IpVoter::new(IP_VOTE_WINDOW, IP_VOTE_MIN),
            stats: Stats::default(),
            scratch_contacts: Vec::new(),
            scratch_nodes: Vec::new(),
            scratch_nodes_other: Vec::new(),
            want_other: false,
            scratch_values: Vec::new(),
            scratch_samples: Vec::new(),
            scratch_scrape: Box::default(),
            scratch_queries: Vec::new(),
            scratch_announce: Vec::new(),
            scratch_failed: Vec::new(),
            scratch_slow: Vec::new(),
            rng,
            config,
        }
    }

    /// Our current node id (BEP 42 adoption may change it: [`Event::IdChanged`]).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The settings the node was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable<A> {
        &self.table
    }

    /// The peers announced to us, by infohash.
    pub fn store(&self) -> &PeerStore<A> {
        &self.store
    }

    /// Stores `peer` for `info_hash` as if `peer` had announced itself to us (test
    /// networks only). An announce lookup stores an infohash at the K nodes closest to it
    /// in the announcer's family, wherever those are; a test that needs an infohash held by
    /// exactly this node (say, only by IPv6-only nodes, for a crawler to find over IPv6
    /// alone) places it here instead. Returns whether it is stored.
    #[cfg(feature = "testing")]
    pub fn hold(&mut self, now: Instant, info_hash: InfoHash, peer: A) -> bool {
        self.store
            .announce(info_hash, peer, false, now, &mut self.rng)
    }

    /// The state that must always drain, checked by the simulator's property tests: queries
    /// still pending past their hard timeout, lookups running past [`LOOKUP_DEADLINE`], and
    /// verifications without a query in flight. All three are zero in a correct node at
    /// any moment its timers have run.
    pub fn overdue(&self, now: Instant) -> Overdue {
        let hard = now.checked_sub(self.config.hard_timeout);
        let verify_queries = self.verifying.len();
        Overdue {
            transactions: hard.map_or(0, |t| self.txns.count_sent_before(t)),
            lookups: self.lookups.values().filter(|s| s.deadline < now).count(),
            verifications: verify_queries.saturating_sub(self.txns.len()),
        }
    }

    /// Counters plus current gauges.
    pub fn stats(&self, now: Instant) -> Stats {
        let (good, questionable, bad) = self.table.counts(now);
        Stats {
            good_nodes: good,
            questionable_nodes: questionable,
            bad_nodes: bad,
            buckets: self.table.num_buckets(),
            infohashes: self.store.num_infohashes(),
            peers: self.store.num_peers(),
            items: self.items.len(),
            item_bytes: self.items.bytes(),
            item_counts: self.items.stats(),
            transactions: self.txns.len(),
            lookups: self.lookups.len(),
            verifying: self.verifying.len(),
            banned_ips: self.limiter.as_ref().map_or(0, |l| l.banned(now)),
            valid_id_nodes: self.table.entries().filter(|e| e.valid_id).count(),
            infohashes_evicted: self.store.evicted(),
            external_ip: self.voter.external_ip().map(Into::into),
            ..self.stats.clone()
        }
    }

    // ---------------------------------------------------------------- output side

    /// The next datagram to send. The payload borrows the node until the next call.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        self.outbox.poll()
    }

    /// Hands every queued datagram to `f`, in order (for batched sends: the driver copies
    /// them into one `sendmmsg`).
    pub fn drain_transmits(&mut self, f: impl FnMut(A, &[u8])) {
        self.outbox.drain_all(f);
    }

    /// Whether datagrams are waiting.
    pub fn has_transmit(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event<A>> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self
            .next_ping
            .min(self.next_refresh_check)
            .min(self.next_sweep);
        t = t.min(self.tokens.next_rotation());
        for x in [self.txns.next_deadline(), self.bootstrap_next]
            .into_iter()
            .flatten()
        {
            t = t.min(x);
        }
        // At most max_lookups (256) slots: a scan is cheap next to the packet it follows.
        for slot in self.lookups.values() {
            t = t.min(slot.deadline);
        }
        if !self.to_verify.is_empty() {
            t = t.min(self.next_verify);
        }
        Some(t)
    }

    /// Encodes one query datagram into the outbox (replies use [`emit`] directly).
    fn queue(&mut self, now: Instant, to: A, encode: impl FnOnce(&mut Vec<u8>)) -> bool {
        let Node {
            outbox,
            stats,
            config,
            ..
        } = self;
        emit(outbox, stats, &config.allow, None, now, to, encode)
    }

    /// Sends a query and registers its transaction. `false` when it could not be sent.
    fn send_query(
        &mut self,
        now: Instant,
        to: A,
        expected_id: Option<NodeId>,
        args: QueryArgs<'_>,
        purpose: Purpose,
    ) -> bool {
        if !self.config.allow.allows(to.into()) {
            self.stats.dropped_not_allowed += 1;
            return false;
        }
        if expected_id == Some(self.id) {
            return false;
        }
        let Some(tid) = self
            .txns
            .insert(&mut self.rng, to, expected_id, now, purpose)
        else {
            self.stats.dropped_other += 1;
            return false;
        };
        let id = self.id;
        let read_only = self.config.read_only;
        let want = if self.want_other {
            Want::BOTH
        } else {
            Want::NONE
        };
        self.stats.queries_out += 1;
        self.queue(now, to, |out| {
            krpc::encode_query_want(out, &tid, &id, &args, want, read_only, Some(VERSION))
        })
    }

    // ---------------------------------------------------------------- commands

    /// Sets the bootstrap routers and starts joining the network. While the table stays
    /// empty the join is retried with exponential backoff (2 s doubling to 5 min).
    pub fn bootstrap(&mut self, now: Instant, routers: &[A]) {
        self.routers = routers.to_vec();
        self.start_bootstrap(now);
    }

    fn start_bootstrap(&mut self, now: Instant) {
        if self.bootstrap_running {
            return;
        }
        let mut lookup = self.new_lookup(self.id, LookupKind::FindNode);
        for r in &self.routers {
            lookup.add_router(*r);
        }
        self.bootstrap_running = true;
        self.bootstrap_next = None;
        self.start_lookup(now, lookup, Owner::Bootstrap, None);
    }

    /// Adds known contacts (e.g. persisted ones). They are pinged, paced, and enter the
    /// table when they answer.
    pub fn add_contacts(&mut self, now: Instant, contacts: impl IntoIterator<Item = A>) {
        self.next_verify = self.next_verify.min(now);
        let mut added = false;
        for c in contacts {
            if self.to_verify.len() < MAX_TO_VERIFY {
                self.to_verify.push_back(c);
                added = true;
            }
        }
        // A thin table joins through these contacts: look around once they had a moment to
        // answer (as after a bootstrap that ended while contacts were being verified),
        // rather than after a backoff meant for an unreachable network.
        if added && self.table.len() < self.config.routing.k && !self.bootstrap_running {
            let soon = now + Duration::from_secs(1);
            self.bootstrap_next = Some(self.bootstrap_next.map_or(soon, |t| t.min(soon)));
        }
    }

    /// Whether `addr` is one of the bootstrap routers. Matched on the whole address: on a
    /// loopback testnet many nodes share one IP.
    fn is_router(&self, addr: A) -> bool {
        self.routers.contains(&addr)
    }

    /// Pings `addr`; the answer arrives as [`Event::Pong`].
    pub fn ping(&mut self, now: Instant, addr: A) -> RequestId {
        self.query(now, addr, DirectQuery::Ping)
    }

    /// Sends one query to `addr`; a ping is answered by [`Event::Pong`], anything else by
    /// [`Event::Reply`] with the node's whole response (e.g. BEP 51 samples for a crawler).
    pub fn query(&mut self, now: Instant, addr: A, q: DirectQuery) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        let is_ping = q == DirectQuery::Ping;
        let args = match &q {
            DirectQuery::Ping => QueryArgs::Ping,
            DirectQuery::FindNode(t) => QueryArgs::FindNode { target: t },
            DirectQuery::GetPeers(ih) => QueryArgs::GetPeers {
                info_hash: ih,
                scrape: false,
                noseed: false,
            },
            DirectQuery::SampleInfohashes(t) => QueryArgs::SampleInfohashes { target: t },
        };
        let error = if !self.config.allow.allows(addr.into()) {
            self.stats.dropped_not_allowed += 1;
            Some(PingError::NotAllowed)
        } else if !self.send_query(now, addr, None, args, Purpose::Direct(request, is_ping)) {
            Some(PingError::Busy)
        } else {
            None
        };
        if let Some(e) = error {
            self.direct_result(request, is_ping, Err(e));
        }
        request
    }

    fn direct_result(&mut self, request: RequestId, is_ping: bool, r: Result<Response, PingError>) {
        self.events.push_back(if is_ping {
            Event::Pong {
                request,
                result: r.map(|r| r.id),
            }
        } else {
            Event::Reply {
                request,
                result: r.map(Box::new),
            }
        });
    }

    /// Finds the K closest nodes to `target`.
    pub fn find_node(&mut self, now: Instant, target: NodeId) -> LookupId {
        self.user_lookup(now, target, LookupKind::FindNode)
    }

    /// Finds peers for `info_hash`; they arrive as [`Event::Peers`].
    pub fn get_peers(&mut self, now: Instant, info_hash: InfoHash) -> LookupId {
        self.user_lookup(now, info_hash.to_node_id(), LookupKind::GetPeers)
    }

    /// Finds peers for `info_hash` and announces us to the K closest nodes, on `port` or,
    /// with `None`, on our UDP port (`implied_port`).
    pub fn announce(&mut self, now: Instant, info_hash: InfoHash, port: Option<u16>) -> LookupId {
        self.announce_as(now, info_hash, port, false)
    }

    /// [`Node::announce`] saying whether we are a seed (BEP 33: announces carry `seed=1`,
    /// so scrapes count us among the seeds, and searches carry `noseed=1`).
    pub fn announce_as(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
        port: Option<u16>,
        seed: bool,
    ) -> LookupId {
        self.user_lookup(
            now,
            info_hash.to_node_id(),
            LookupKind::Announce { port, seed },
        )
    }

    /// BEP 33: estimates the swarm of `info_hash` from the bloom filters of the nodes a
    /// get_peers lookup meets; the estimate arrives with [`Event::LookupDone`].
    pub fn scrape(&mut self, now: Instant, info_hash: InfoHash) -> LookupId {
        self.user_lookup(now, info_hash.to_node_id(), LookupKind::Scrape)
    }

    fn new_lookup(&self, target: NodeId, kind: LookupKind) -> Lookup<A> {
        let mut lookup = Lookup::new(
            target,
            kind,
            self.id,
            self.config.alpha,
            self.config.routing.k,
        );
        lookup.set_filter(self.candidate_filter());
        lookup
    }

    /// What counts as junk in `nodes` replies now: our bound and voted addresses are us, and
    /// once we know we are on the internet, non-global addresses cannot be nodes for us.
    fn candidate_filter(&self) -> CandidateFilter<A> {
        let local = self
            .config
            .local_addr
            .and_then(A::from_socket)
            .filter(|a| !a.ip_addr().is_unspecified());
        let external = self.voter.external_ip();
        let port = self.config.local_addr.map_or(0, |a| a.port());
        CandidateFilter {
            own: [local, external.map(|ip| A::from_parts(ip, port))],
            public: local.is_some_and(|a| is_global(a.ip_addr()))
                || external.is_some_and(is_global),
            one_per_ip: self.config.restrict_search_ips,
        }
    }

    fn user_lookup(&mut self, now: Instant, target: NodeId, kind: LookupKind) -> LookupId {
        let lookup = self.new_lookup(target, kind);
        self.start_lookup(now, lookup, Owner::User, None)
    }

    fn start_lookup(
        &mut self,
        now: Instant,
        mut lookup: Lookup<A>,
        owner: Owner,
        item: Option<Box<ItemSlot<A>>>,
    ) -> LookupId {
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        let mut seeds = std::mem::take(&mut self.scratch_contacts);
        // Seed with more than K so a few dead entries do not starve the first round.
        self.table
            .closest(&lookup.target, self.config.routing.k * 2, &mut seeds);
        for c in &seeds {
            lookup.add_candidate(*c);
        }
        if seeds.len() < self.config.routing.k {
            // A thin table: the routers are better than nothing (they sort last).
            for r in &self.routers {
                lookup.add_router(*r);
            }
        }
        self.scratch_contacts = seeds;
        if lookup.has_candidates() && self.lookups.len() < self.config.max_lookups {
            let deadline = now + LOOKUP_DEADLINE;
            self.lookups.insert(
                id,
                LookupSlot {
                    lookup,
                    owner,
                    item,
                    deadline,
                },
            );
            self.step_lookup(now, id);
        } else {
            // Nothing to ask (or too busy): finish at once so callers are never left waiting.
            lookup.finish();
            self.lookups.insert(
                id,
                LookupSlot {
                    lookup,
                    owner,
                    item,
                    deadline: now,
                },
            );
            self.finish_lookup(now, id);
        }
        id
    }

    /// Sends whatever the lookup wants sent and reports its completion.
    fn step_lookup(&mut self, now: Instant, id: LookupId) {
        let mut queries = std::mem::take(&mut self.scratch_queries);
        let mut announce = std::mem::take(&mut self.scratch_announce);
        while let Some(slot) = self.lookups.get_mut(&id) {
            let (target, kind) = (slot.lookup.target, slot.lookup.kind);
            slot.lookup.next_queries(&mut queries);
            if queries.is_empty() {
                slot.lookup.advance(&mut announce);
                // An unsendable announce passes its slot to a spare token holder, which
                // the next `advance` hands out: go round until nothing new is to be sent.
                while !announce.is_empty() {
                    self.send_announces(now, id, target, kind, &mut announce);
                    match self.lookups.get_mut(&id) {
                        Some(slot) => slot.lookup.advance(&mut announce),
                        None => break,
                    }
                }
                break;
            }
            // A refused send frees its slot at once: go round again for replacements.
            if !self.send_searches(now, id, target, kind, &queries) {
                break;
            }
        }
        self.scratch_queries = queries;
        self.scratch_announce = announce;
        if self
            .lookups
            .get(&id)
            .is_some_and(|s| s.lookup.phase() == Phase::Done)
        {
            self.finish_lookup(now, id);
        }
    }

    /// Sends a lookup's search queries; returns whether any could not be sent.
    fn send_searches(
        &mut self,
        now: Instant,
        id: LookupId,
        target: NodeId,
        kind: LookupKind,
        queries: &[(A, Option<NodeId>)],
    ) -> bool {
        let mut unsent = false;
        // A get_peers lookup's target is the info hash it searches (BEP 5).
        let info_hash = InfoHash::from_node_id(target);
        let item_seq = self
            .lookups
            .get(&id)
            .and_then(|s| s.item.as_ref())
            .and_then(|i| i.search.query_seq());
        for &(addr, expected) in queries {
            let args = if kind.is_item() {
                QueryArgs::Get {
                    target: &target,
                    seq: item_seq,
                }
            } else if kind.wants_peers() {
                QueryArgs::GetPeers {
                    info_hash: &info_hash,
                    scrape: kind == LookupKind::Scrape,
                    noseed: matches!(kind, LookupKind::Announce { seed: true, .. }),
                }
            } else {
                QueryArgs::FindNode { target: &target }
            };
            if !self.send_query(now, addr, expected, args, Purpose::Search(id)) {
                if let Some(slot) = self.lookups.get_mut(&id) {
                    slot.lookup.on_failure(addr, false);
                }
                unsent = true;
            }
        }
        unsent
    }

    /// Sends announce_peer to the nodes a finished announce lookup chose.
    fn send_announces(
        &mut self,
        now: Instant,
        id: LookupId,
        target: NodeId,
        kind: LookupKind,
        announce: &mut Vec<(A, NodeId, Token)>,
    ) {
        if kind == LookupKind::PutItem {
            self.send_puts(now, id, announce);
            return;
        }
        let (port, implied_port, seed) = match kind {
            LookupKind::Announce {
                port: Some(p),
                seed,
            } => (p, false, seed),
            LookupKind::Announce { port: None, seed } => (0, true, seed),
            _ => (0, true, false),
        };
        // An announce lookup's target is the info hash it announces (BEP 5).
        let info_hash = InfoHash::from_node_id(target);
        for (addr, node, token) in announce.drain(..) {
            let args = QueryArgs::AnnouncePeer {
                info_hash: &info_hash,
                port,
                implied_port,
                token: token.as_slice(),
                seed,
            };
            if !self.send_query(now, addr, Some(node), args, Purpose::Announce(id))
                && let Some(slot) = self.lookups.get_mut(&id)
            {
                slot.lookup.announce_unsent();
            }
        }
    }

    fn finish_lookup(&mut self, now: Instant, id: LookupId) {
        let Some(slot) = self.lookups.remove(&id) else {
            return;
        };
        if let (Owner::User, Some(item)) = (slot.owner, slot.item) {
            self.events.push_back(Event::Item {
                lookup: id,
                result: Box::new(item.into_result()),
            });
        }
        match slot.owner {
            Owner::User => self.events.push_back(Event::LookupDone {
                lookup: id,
                closest: slot.lookup.closest_responders(),
                announced: slot.lookup.announced,
                messages: slot.lookup.messages,
                scrape: slot.lookup.scrape.map(Box::new),
            }),
            Owner::Bootstrap => {
                self.bootstrap_running = false;
                if self.table.len() < self.config.routing.k
                    && (!self.to_verify.is_empty() || !self.verifying.is_empty())
                {
                    // Known contacts are still being re-verified: look again once they are in.
                    self.bootstrap_next = Some(now + Duration::from_secs(1));
                } else if self.table.len() < self.config.routing.k {
                    // Offline or shallow: try again later, backing off.
                    self.bootstrap_next = Some(now + self.bootstrap_backoff);
                    self.bootstrap_backoff =
                        (self.bootstrap_backoff * 2).min(BOOTSTRAP_MAX_BACKOFF);
                } else {
                    self.bootstrap_backoff = BOOTSTRAP_MIN_BACKOFF;
                }
                if !self.table.is_empty() {
                    let targets = self.table.all_bucket_targets(now, &mut self.rng);
                    for t in targets {
                        let lookup = self.new_lookup(t, LookupKind::FindNode);
                        self.start_lookup(now, lookup, Owner::Refresh, None);
                    }
                }
            }
            Owner::Refresh => {}
        }
    }

    // ---------------------------------------------------------------- input side

    /// Counts a datagram the driver could not hand over whole: longer than its receive
    /// buffer, which no KRPC message we accept is, so it is malformed without being read.
    pub fn note_oversized(&mut self, len: usize) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += len as u64;
        self.stats.dropped_malformed += 1;
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.handle_datagram_with(now, from, data, None);
    }

    /// Handles one received datagram, with the other family's node (when this process runs
    /// both) to answer a BEP 32 `want` for its contacts.
    pub fn handle_datagram_with(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        other: Option<&dyn OtherFamily>,
    ) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        match gate::admit(now, from, data, self.limiter.as_mut()) {
            Gated::Message(from, msg) => match msg.body {
                Body::Query(q) => {
                    self.stats.queries_in += 1;
                    self.handle_query(now, from, msg.tid.as_slice(), q, msg.read_only, other);
                }
                Body::Response(r) => {
                    self.stats.replies_in += 1;
                    self.handle_response(
                        now,
                        from,
                        msg.tid.as_slice(),
                        r,
                        msg.ip.and_then(A::from_socket),
                    );
                }
                Body::Error(e) => {
                    self.stats.errors_in += 1;
                    self.handle_error(now, from, msg.tid.as_slice(), e.code, e.message);
                }
            },
            Gated::BadQuery {
                from,
                tid,
                code,
                reason,
            } => {
                self.stats.queries_in += 1;
                self.send_error(now, from, tid.as_slice(), code, reason);
            }
            Gated::Dropped(Dropped::Source) => self.stats.dropped_other += 1,
            Gated::Dropped(Dropped::RateLimited) => self.stats.dropped_rate_limited += 1,
            Gated::Dropped(Dropped::Malformed) => self.stats.dropped_malformed += 1,
        }
    }

    fn send_error(&mut self, now: Instant, to: A, tid: &[u8], code: i64, message: &str) {
        if self.config.read_only {
            return;
        }
        let Node {
            outbox,
            stats,
            config,
            quota,
            ..
        } = self;
        if emit(
            outbox,
            stats,
            &config.allow,
            quota.as_mut(),
            now,
            to,
            |out| krpc::encode_error(out, tid, code, message, Some(to.into()), Some(VERSION)),
        ) {
            stats.errors_out += 1;
        }
    }

    fn handle_query(
        &mut self,
        now: Instant,
        from: A,
        tid: &[u8],
        q: Query,
        ro: bool,
        other: Option<&dyn OtherFamily>,
    ) {
        if q.id == self.id {
            // Our own id from elsewhere: a reflection or an impostor.
            self.stats.dropped_other += 1;
            return;
        }
        self.stats.queries_by_method.count(&q.method);
        let contact = Contact::new(q.id, from);
        let known = ro || self.table.heard_query(contact, now);
        if !self.config.read_only {
            self.answer_query(now, from, tid, q, other);
        }
        // After the reply, so verification never delays an answer.
        if !known {
            self.maybe_verify(now, contact);
        }
    }

    /// Writes the node lists a reply about `target` carries: BEP 32's `want` (resolved
    /// against the family the query came over) picks ours (`nodes` for IPv4, `nodes6` for
    /// IPv6), the other family's from `other`, or both.
    #[allow(clippy::too_many_arguments)]
    fn fill_nodes<'b>(
        table: &RoutingTable<A>,
        k: usize,
        target: &NodeId,
        want: Want,
        other: Option<&dyn OtherFamily>,
        contacts: &mut Vec<Contact<A>>,
        nodes: &'b mut Vec<u8>,
        nodes_other: &'b mut Vec<u8>,
        body: &mut ResponseBody<'b>,
    ) {
        let want = want.resolve(A::FAMILY);
        nodes.clear();
        nodes_other.clear();
        if want.wants(A::FAMILY) {
            table.closest(target, k, contacts);
            for c in contacts.iter() {
                c.write_compact(nodes);
            }
            set_nodes(body, A::FAMILY, nodes);
        }
        if let Some(other) = other.filter(|o| o.family() != A::FAMILY && want.wants(o.family())) {
            other.write_closest(target, k, nodes_other);
            set_nodes(body, other.family(), nodes_other);
        }
    }

    fn answer_query(
        &mut self,
        now: Instant,
        from: A,
        tid: &[u8],
        q: Query,
        other: Option<&dyn OtherFamily>,
    ) {
        let want = q.want;
        let method = match q.method {
            // BEP 44 replies have their own shape; see bep44.rs.
            Method::Get { target, seq } => {
                return self.answer_get(now, from, tid, target, seq, want, other);
            }
            Method::Put(p) => return self.answer_put(now, from, tid, &p),
            m => m,
        };
        let k = self.config.routing.k;
        let mut body = ResponseBody::id_only(&self.id);
        let mut contacts = std::mem::take(&mut self.scratch_contacts);
        let mut nodes = std::mem::take(&mut self.scratch_nodes);
        let mut nodes_other = std::mem::take(&mut self.scratch_nodes_other);
        let mut values = std::mem::take(&mut self.scratch_values);
        let mut samples = std::mem::take(&mut self.scratch_samples);
        let token;
        match method {
            Method::Get { .. } | Method::Put(_) => {}
            Method::Ping => {}
            Method::FindNode { target } | Method::Unknown { target } => {
                Self::fill_nodes(
                    &self.table,
                    k,
                    &target,
                    want,
                    other,
                    &mut contacts,
                    &mut nodes,
                    &mut nodes_other,
                    &mut body,
                );
            }
            Method::GetPeers {
                info_hash,
                scrape,
                noseed,
            } => {
                Self::fill_nodes(
                    &self.table,
                    k,
                    &info_hash.to_node_id(),
                    want,
                    other,
                    &mut contacts,
                    &mut nodes,
                    &mut nodes_other,
                    &mut body,
                );
                self.tokens.maybe_rotate(now, &mut self.rng);
                token = self.tokens.make(from.host());
                // BEP 5: a get_peers reply always carries a token. A full store makes room
                // for the announce by evicting its least-announced infohash.
                body.token = Some(token.as_slice());
                if scrape {
                    // BEP 33: the filters instead of `values` (as libtorrent does: the asker
                    // wants a count, and 512 bytes of filters plus peers would pass the MTU),
                    // and none when we hold nothing for it (512 bytes of zeros say nothing).
                    let (sd, pe) = &mut *self.scratch_scrape;
                    if self.store.scrape(&info_hash, now, sd, pe) {
                        body.scrape = Some((&self.scratch_scrape.0, &self.scratch_scrape.1));
                    }
                } else {
                    let max = self.store.config().max_values_per_reply;
                    self.store.sample_peers(
                        &info_hash,
                        max,
                        noseed,
                        now,
                        &mut self.rng,
                        &mut values,
                    );
                    A::set_values(&mut body, &values);
                }
                if self.config.report_incoming {
                    self.events.push_back(Event::Incoming {
                        info_hash,
                        from,
                        peer: None,
                    });
                }
            }
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                seed,
            } => {
                self.tokens.maybe_rotate(now, &mut self.rng);
                if !self.tokens.verify(from.host(), token.as_slice()) {
                    self.stats.bad_tokens += 1;
                    self.scratch_contacts = contacts;
                    self.scratch_nodes = nodes;
                    self.scratch_nodes_other = nodes_other;
                    self.scratch_values = values;
                    self.scratch_samples = samples;
                    self.send_error(now, from, tid, ERR_PROTOCOL, "bad token");
                    return;
                }
                let port = if implied_port {
                    from.port_number()
                } else {
                    port
                };
                let peer = from.with_port(port);
                if self
                    .store
                    .announce(info_hash, peer, seed, now, &mut self.rng)
                {
                    self.stats.announces_stored += 1;
                } else {
                    self.stats.announces_refused += 1;
                }
                if self.config.report_incoming {
                    self.events.push_back(Event::Incoming {
                        info_hash,
                        from,
                        peer: Some(peer),
                    });
                }
            }
            Method::SampleInfohashes { target } => {
                Self::fill_nodes(
                    &self.table,
                    k,
                    &target,
                    want,
                    other,
                    &mut contacts,
                    &mut nodes,
                    &mut nodes_other,
                    &mut body,
                );
                self.store
                    .sample_infohashes(MAX_SAMPLES, &mut self.rng, &mut samples);
                body.samples = Some(&samples);
                body.interval = Some(i64::from(self.config.sample_interval));
                body.num = Some(self.store.num_infohashes() as i64);
            }
        }
        let Node {
            outbox,
            stats,
            config,
            quota,
            ..
        } = self;
        if emit(
            outbox,
            stats,
            &config.allow,
            quota.as_mut(),
            now,
            from,
            |out| krpc::encode_response(out, tid, &body, Some(from.into()), Some(VERSION)),
        ) {
            stats.replies_out += 1;
        }
        self.scratch_contacts = contacts;
        self.scratch_nodes = nodes;
        self.scratch_nodes_other = nodes_other;
        self.scratch_values = values;
        self.scratch_samples = samples;
    }

    /// Counts a replier's view of our address; when the majority settles on a public IP our
    /// id is not valid for, switches to a BEP 42 id for it.
    fn vote_external_ip(&mut self, now: Instant, voter: A::Ip, seen_as: A::Ip) {
        let Some(ip) = self.voter.vote(voter, seen_as) else {
            return;
        };
        tracing::info!("external IP is {ip} (by majority of replies)");
        if self.config.adopt_bep42_id && !bep42::is_valid(&self.id, ip) {
            let id = bep42::id_for_ip(ip, &mut self.rng);
            self.change_id(now, id);
        }
    }

    /// Takes a new node id: the table is rebuilt around it from the current entries (they
    /// are all verified, so they go straight back in where the new layout has room).
    pub fn change_id(&mut self, now: Instant, id: NodeId) {
        let old: Vec<_> = self
            .table
            .entries()
            .map(|e| (e.contact, e.last_response))
            .collect();
        self.id = id;
        self.table = RoutingTable::new(id, self.config.routing.clone(), now);
        for (c, seen) in old {
            self.table.heard_response(c, seen);
        }
        tracing::info!("node id is now {id}");
        self.events.push_back(Event::IdChanged(id));
    }

    /// BEP 32 bootstrapping of a dual-stack node: while [`Node::set_want_other`] is on, our
    /// queries carry `want = [n4, n6]` and the other family's contacts in replies (`nodes6`
    /// for the IPv4 node, `nodes` for the IPv6 one) are handed on as
    /// [`Event::OtherFamilyNodes`], for the sibling node to verify. Only contacts we asked
    /// for are read, at most [`MAX_OTHER_FAMILY`] a reply.
    pub fn set_want_other(&mut self, on: bool) {
        self.want_other = on;
    }

    fn report_other_family(&mut self, r: &Response) {
        let raw = match A::FAMILY {
            Family::V4 => r.nodes6.as_deref(),
            Family::V6 => r.nodes.as_deref(),
        };
        let Some(raw) = raw else {
            return;
        };
        let addrs: Vec<SocketAddr> = match A::FAMILY {
            Family::V4 => compact_nodes::<SocketAddrV6>(raw)
                .map(|c| SocketAddr::V6(c.addr))
                .take(MAX_OTHER_FAMILY)
                .collect(),
            Family::V6 => compact_nodes::<SocketAddrV4>(raw)
                .map(|c| SocketAddr::V4(c.addr))
                .take(MAX_OTHER_FAMILY)
                .collect(),
        };
        if !addrs.is_empty() {
            self.events.push_back(Event::OtherFamilyNodes(addrs));
        }
    }

    /// Pings an unknown querier when it could get a table slot: a claimed id becomes a
    /// table entry only once the node answers a query of ours.
    fn maybe_verify(&mut self, now: Instant, contact: Contact<A>) {
        if self.verifying.len() >= MAX_VERIFYING
            || self.verifying.contains(&contact.addr)
            || !self.table.would_accept(&contact, now)
            || !self.config.allow.allows(contact.addr.into())
        {
            return;
        }
        if self.send_query(
            now,
            contact.addr,
            Some(contact.id),
            QueryArgs::Ping,
            Purpose::Verify,
        ) {
            self.verifying.insert(contact.addr);
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: A,
        tid: &[u8],
        r: Response,
        seen_as: Option<A>,
    ) {
        let pending = match self.txns.take(tid, from, Some(&r.id)) {
            Ok(Matched::Expected(p)) if r.id != self.id => p,
            Ok(m) => {
                // Another id than the one we asked (a restarted node, a BEP 42 id switch, a
                // stale `nodes` entry, a sybil), or our own id reflected back: the query
                // failed. It must still end here, or whatever waits on it waits forever.
                self.stats.wrong_id_replies += 1;
                let (Matched::Expected(p) | Matched::WrongId(p)) = m;
                if let Some(id) = p.expected_id {
                    self.table.wrong_id(&Contact::new(id, p.addr), now);
                }
                self.query_failed(now, p, PingError::WrongId);
                return;
            }
            Err(_) => {
                self.stats.dropped_unmatched += 1;
                return;
            }
        };
        self.stats.queries_ended += 1;
        if let Some(seen_as) = seen_as {
            self.vote_external_ip(now, from.host(), seen_as.host());
        }
        if self.want_other {
            self.report_other_family(&r);
        }
        // BEP 5: bootstrap routers are for joining only. They answer everyone and store
        // nothing, so in our table (and so in our replies) they would take a slot from a
        // real node and send others to a node that cannot hold their announces.
        if !self.is_router(pending.addr) {
            // The address we queried, not the reply's source: behind a NAT that rewrote the
            // port the queried one is the address we know reaches the node, and recording
            // the other would list the same node twice.
            let contact = Contact::new(r.id, pending.addr);
            let inserted = self.table.heard_response(contact, now);
            if matches!(inserted, Insert::Added) && self.table.len() >= self.config.routing.k {
                self.bootstrap_backoff = BOOTSTRAP_MIN_BACKOFF;
            }
        }
        match pending.data {
            Purpose::Direct(request, is_ping) => self.direct_result(request, is_ping, Ok(r)),
            Purpose::Verify => {
                self.verifying.remove(&pending.addr);
            }
            Purpose::Maintenance => {}
            Purpose::Search(lid) => {
                let Some(slot) = self.lookups.get_mut(&lid) else {
                    return;
                };
                let mut new_peers = std::mem::take(&mut self.scratch_values);
                let reply = SearchReply {
                    from: pending.addr,
                    was_slow: pending.slow,
                    id: r.id,
                    nodes: A::nodes_in(&r).unwrap_or(&[]),
                    token: r.token,
                    values: A::values_in(&r),
                    scrape: r.bf_seeds.as_deref().zip(r.bf_peers.as_deref()),
                };
                let junk_before = slot.lookup.junk_dropped;
                slot.lookup.on_reply(&reply, &mut new_peers);
                if let Some(item) = &mut slot.item {
                    item.on_search_reply(&mut slot.lookup, pending.addr, &r);
                }
                self.stats.junk_candidates += u64::from(slot.lookup.junk_dropped - junk_before);
                if !new_peers.is_empty() && slot.owner == Owner::User {
                    self.events.push_back(Event::Peers {
                        lookup: lid,
                        peers: new_peers.clone(),
                    });
                }
                self.scratch_values = new_peers;
                self.step_lookup(now, lid);
            }
            Purpose::Announce(lid) => {
                if let Some(slot) = self.lookups.get_mut(&lid) {
                    if let Some(item) = &mut slot.item {
                        item.on_put_stored(pending.addr);
                    }
                    slot.lookup.on_announce_result(true);
                    self.step_lookup(now, lid);
                }
            }
        }
    }

    fn handle_error(&mut self, now: Instant, from: A, tid: &[u8], code: i64, msg: String) {
        let Ok(m) = self.txns.take(tid, from, None) else {
            self.stats.dropped_unmatched += 1;
            return;
        };
        let (Matched::Expected(p) | Matched::WrongId(p)) = m;
        self.query_failed(now, p, PingError::Remote(code, msg));
    }

    /// Ends a query that failed (error reply, wrong-id reply, hard timeout): the one place
    /// that tells whoever waits on it, so every failure path frees the same state.
    fn query_failed(&mut self, now: Instant, p: Pending<Purpose, A>, why: PingError) {
        self.stats.queries_ended += 1;
        match p.data {
            Purpose::Direct(request, is_ping) => self.direct_result(request, is_ping, Err(why)),
            Purpose::Verify => {
                self.verifying.remove(&p.addr);
            }
            Purpose::Maintenance => {}
            Purpose::Search(lid) => {
                if let Some(slot) = self.lookups.get_mut(&lid) {
                    slot.lookup.on_failure(p.addr, p.slow);
                    self.step_lookup(now, lid);
                }
            }
            Purpose::Announce(lid) => {
                if let Some(slot) = self.lookups.get_mut(&lid) {
                    if let Some(item) = &mut slot.item {
                        item.on_put_failure(&mut slot.lookup, p.addr, &why);
                    } else if matches!(why, PingError::Timeout) {
                        slot.lookup.on_announce_timeout(p.addr);
                    } else {
                        slot.lookup.on_announce_result(false);
                    }
                    self.step_lookup(now, lid);
                }
            }
        }
    }

    // ---------------------------------------------------------------- timers

    /// Runs timers that are due: timeouts, maintenance pings, bucket refresh, bootstrap
    /// retries, token rotation, peer expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_transactions(now);
        self.end_overdue_lookups(now);
        self.tokens.maybe_rotate(now, &mut self.rng);

        if now >= self.next_ping {
            self.next_ping = now + self.config.ping_interval;
            if let Some(e) = self.table.least_recently_seen() {
                let c = e.contact;
                if now.saturating_duration_since(e.last_activity()) >= self.config.ping_min_age {
                    self.table.pinged(&c.id, now);
                    self.send_query(
                        now,
                        c.addr,
                        Some(c.id),
                        QueryArgs::Ping,
                        Purpose::Maintenance,
                    );
                }
            }
        }
        if !self.to_verify.is_empty() && now >= self.next_verify {
            self.next_verify = now + VERIFY_PACE;
            self.verify_burst(now);
        }

        if now >= self.next_refresh_check {
            self.next_refresh_check = now + REFRESH_CHECK;
            let targets = self.table.stale_buckets(now, &mut self.rng);
            for t in targets {
                let lookup = self.new_lookup(t, LookupKind::FindNode);
                self.start_lookup(now, lookup, Owner::Refresh, None);
            }
            if self.table.len() < self.config.routing.k && self.bootstrap_next.is_none() {
                self.bootstrap_next = Some(now);
            }
        }

        if self.bootstrap_next.is_some_and(|t| now >= t) {
            self.bootstrap_next = None;
            self.start_bootstrap(now);
        }

        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            self.store.sweep(now);
            self.items.sweep(now);
            if let Some(l) = &mut self.limiter {
                l.sweep(now);
            }
        }
    }

    fn verify_burst(&mut self, now: Instant) {
        for _ in 0..VERIFY_BURST {
            let Some(addr) = self.to_verify.pop_front() else {
                break;
            };
            if self.verifying.contains(&addr) || self.verifying.len() >= MAX_VERIFYING {
                if self.verifying.len() >= MAX_VERIFYING {
                    self.to_verify.push_front(addr);
                    break;
                }
                continue;
            }
            if self.send_query(now, addr, None, QueryArgs::Ping, Purpose::Verify) {
                self.verifying.insert(addr);
            }
        }
    }

    fn end_overdue_lookups(&mut self, now: Instant) {
        if !self.lookups.values().any(|s| s.deadline <= now) {
            return;
        }
        let overdue: Vec<LookupId> = self
            .lookups
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(slot) = self.lookups.get_mut(&id) {
                slot.lookup.finish();
            }
            self.stats.lookups_overdue += 1;
            // Queries still in flight end later on their own; their answers find no lookup.
            self.finish_lookup(now, id);
        }
    }

    fn expire_transactions(&mut self, now: Instant) {
        let mut slow = std::mem::take(&mut self.scratch_slow);
        let mut failed = std::mem::take(&mut self.scratch_failed);
        slow.clear();
        failed.clear();
        self.txns.expire(
            now,
            |p| {
                if matches!(p.data, Purpose::Search(_)) {
                    slow.push(p.clone());
                }
            },
            &mut failed,
        );
        for p in slow.drain(..) {
            if let Purpose::Search(lid) = p.data
                && let Some(slot) = self.lookups.get_mut(&lid)
            {
                slot.lookup.on_slow(p.addr);
                self.step_lookup(now, lid);
            }
        }
        for p in failed.drain(..) {
            self.stats.timeouts += 1;
            if let Some(id) = p.expected_id {
                self.table.failed(&Contact::new(id, p.addr), now);
            }
            self.query_failed(now, p, PingError::Timeout);
        }
        self.scratch_slow = slow;
        self.scratch_failed = failed;
    }

    /// Contacts worth persisting: table entries first, then replacements.
    pub fn contacts(&self) -> Vec<Contact<A>> {
        self.table.all_contacts()
    }

    /// Whether a bootstrap lookup is running.
    pub fn is_bootstrapping(&self) -> bool {
        self.bootstrap_running
    }
}
