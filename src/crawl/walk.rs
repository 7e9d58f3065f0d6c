//! The keyspace walk: which node to ask next, and when, as a sans-IO state machine.
//!
//! [`Walker`] reads no clock and opens no socket: the caller passes `now`, asks
//! [`Walker::poll_query`] for the next query to send, and reports each answer with
//! [`Walker::on_reply`] or [`Walker::on_error`]. The tokio crawler ([`super::run()`]) and the
//! virtual-time harness (`super::sim`, feature `testing`: a [`Walker`] on the IPv4
//! simulator, a [`DualWalker`] on the dual-stack one) drive the same code, so the
//! politeness rules below are tested on a virtual clock and measured at scale.
//!
//! Politeness, the point of this module:
//! - one global token bucket caps our query rate ([`WalkConfig::rate`]); queries the crawler
//!   sends outside the walk (metadata lookups) are charged to it too ([`Walker::charge`]);
//! - a node is sampled at most once per the `interval` it advertised (BEP 51), never sooner
//!   than [`WalkConfig::min_interval`] even if it asks for less;
//! - a node that times out is retried with exponential backoff, and given up after
//!   [`WalkConfig::max_failures`] (a node that never answered, after its one retry) until it
//!   is rediscovered after [`WalkConfig::dead_retry`];
//! - errors 203/204 (no BEP 51) switch that node to one `find_node`; 201/202 count as a
//!   failure (backoff);
//! - at most [`WalkConfig::max_ports_per_ip`] ports per IPv4 address and
//!   [`WalkConfig::max_per_ipv6_net`] contacts per IPv6 /64 are tracked, so a hostile
//!   `nodes` list naming one victim on thousands of ports (or, over IPv6, thousands of
//!   addresses of its /64, which all reach the same site) cannot make us flood it;
//! - memory is bounded ([`WalkConfig::max_nodes`]); a node is only forgotten once its
//!   interval has passed, so forgetting can never cause an early revisit.
//!
//! Coverage: every reply's `nodes` feed a FIFO frontier of fresh nodes. Query targets
//! alternate between two kinds: a bit-reversed counter (a van der Corput sequence over the
//! top 32 bits), so successive targets split the id space evenly and the nodes we learn are
//! spread over all of it; and the queried node's own neighbourhood (its id's top 32 bits),
//! which a Kademlia node knows completely, so nodes that only their close neighbours know
//! of (a newcomer, a node behind a quiet address) are still found.
//! Revisits are ranked by the number of *new* infohashes the node is expected to give,
//! estimated from its last sample (the share of samples we did not know) and `num`; a
//! fresh node is worth a running average of what first visits yield. Whichever is worth
//! more goes first, which keeps packets per infohash found low.

use crate::util::TokenBucket;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::dht::allow::AllowList;
use crate::dht::id::{Contact, Family, ID_LEN, InfoHash, NodeAddr, NodeId, compact_nodes};
use crate::dht::krpc::{ERR_METHOD_UNKNOWN, ERR_PROTOCOL, Response};
use crate::dht::node::{DirectQuery, PingError};

/// Walk settings.
#[derive(Debug, Clone)]
pub struct WalkConfig {
    /// Queries per second, averaged (token bucket).
    pub rate: f64,
    /// Token bucket depth: how many queries may go out back to back after an idle spell.
    pub burst: f64,
    /// Queries awaiting an answer at most (both families together in a [`DualWalker`]: it
    /// bounds the crawler's pending requests and its node's transactions, which a second
    /// family does not make larger).
    pub max_in_flight: usize,
    /// Floor on a node's advertised interval (a node asking for 0 s is not hammered).
    pub min_interval: Duration,
    /// Cap on a node's advertised interval (bounds how long we must remember it).
    pub max_interval: Duration,
    /// Revisit delay for nodes without BEP 51 (they only help discovery).
    pub default_interval: Duration,
    /// A node that never answered is not queried again for this long.
    pub dead_retry: Duration,
    /// Consecutive failures after which a node that used to answer is given up.
    pub max_failures: u8,
    /// Nodes tracked at most (frontier, schedule and penalties together).
    pub max_nodes: usize,
    /// Fresh nodes waiting for a first visit, at most.
    pub max_frontier: usize,
    /// Ports tracked per IPv4 address, at most.
    pub max_ports_per_ip: u8,
    /// Contacts (addresses and ports together) tracked per IPv6 /64, at most. An IPv6 site
    /// gets a whole /64, so a cap per address would let one `nodes6` list name a victim
    /// network on any number of addresses; the cap is larger than the IPv4 one because
    /// several DHT nodes in one home or one hosting /64 is normal.
    pub max_per_ipv6_net: u8,
    /// Contacts taken from one reply, at most (K is 8; some clients send 16).
    pub max_nodes_per_reply: usize,
    /// Only nodes in these networks are queried (the node enforces it again).
    pub allow: AllowList,
    /// Seed for the target sequence's low bits; `None` = OS entropy.
    pub seed: Option<u64>,
}

impl Default for WalkConfig {
    fn default() -> Self {
        WalkConfig {
            rate: 200.0,
            burst: 20.0,
            max_in_flight: 256,
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(7 * 24 * 3600),
            default_interval: Duration::from_secs(6 * 3600),
            dead_retry: Duration::from_secs(3600),
            max_failures: 3,
            max_nodes: 2_000_000,
            max_frontier: 200_000,
            max_ports_per_ip: 8,
            max_per_ipv6_net: 32,
            max_nodes_per_reply: 16,
            allow: AllowList::any(),
            seed: None,
        }
    }
}

/// One query the walk wants sent. `A` is the node's address: a family's own
/// (`SocketAddrV4`, `SocketAddrV6`) from a [`Walker`], a `SocketAddr` from a [`DualWalker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkQuery<A = SocketAddrV4> {
    /// The node to ask.
    pub addr: A,
    /// `sample_infohashes` (BEP 51), or `find_node` for a node without BEP 51.
    pub query: DirectQuery,
}

/// How a query failed, as far as the walk cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// No answer in time (or an answer from a different node id).
    Timeout,
    /// A KRPC error reply with this code.
    Remote(i64),
    /// Our own node had no transaction slot free: not the remote node's fault.
    Busy,
    /// The allow-list refuses the address.
    Refused,
}

/// How the walk reads a failed query of our node (the tokio crawler and the simulated one
/// both map their node's errors through here).
impl From<PingError> for WalkError {
    fn from(e: PingError) -> Self {
        match e {
            // An answer from another node id is no answer from the node we meant.
            PingError::Timeout | PingError::WrongId => WalkError::Timeout,
            PingError::Remote(code, _) => WalkError::Remote(code),
            PingError::Busy => WalkError::Busy,
            PingError::NotAllowed => WalkError::Refused,
        }
    }
}

/// Counters and gauges of the walk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WalkStats {
    /// Queries handed out (sample_infohashes + find_node).
    pub queries: u64,
    /// Of those, `find_node` fallbacks to nodes without BEP 51.
    pub find_node_queries: u64,
    /// Replies received.
    pub replies: u64,
    /// Replies carrying BEP 51 fields.
    pub bep51_replies: u64,
    /// Infohashes received in samples (with repeats).
    pub samples: u64,
    /// Samples that were new to the caller when they arrived.
    pub new_samples: u64,
    /// Queries that timed out.
    pub timeouts: u64,
    /// KRPC error replies (including the 203/204 that mark a node as without BEP 51).
    pub errors: u64,
    /// Queries our node could not send for want of a transaction slot (requeued).
    pub busy: u64,
    /// Nodes found not to support BEP 51.
    pub no_bep51: u64,
    /// Distinct nodes that answered at least once.
    pub visited: u64,
    /// Queries sent by others on the crawler's behalf (metadata lookups), charged to the
    /// rate limit.
    pub external_queries: u64,
    /// Contacts dropped because a bound (nodes, frontier, ports per IP) was reached.
    pub dropped_contacts: u64,
    /// Nodes tracked now (bounded by [`WalkConfig::max_nodes`]).
    pub nodes_known: usize,
    /// Fresh nodes queued for a first visit now.
    pub frontier: usize,
    /// Queries handed out and not yet answered or failed.
    pub in_flight: usize,
    /// Estimated new infohashes per fresh node, recently.
    pub fresh_yield: f64,
}

/// Where a tracked node is in the schedule; every node is in exactly one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Not scheduled: penalised (dead, or no BEP 51) until `next`, then forgettable.
    Idle,
    /// In the fresh-node queue.
    Frontier,
    /// Waiting for its interval to pass (in `due`).
    Due,
    /// Interval passed, ranked by expected yield (in `ready`).
    Ready,
    /// Owes a fallback `find_node` (in `fallback`).
    Fallback,
    InFlight,
}

const RESPONDED: u8 = 1;
const NO_BEP51: u8 = 2;
const HAS_PREFIX: u8 = 4;

/// Per-node state, kept small: a crawler tracks millions.
#[derive(Debug, Clone, Copy)]
struct NodeState {
    /// Top 32 bits of the node's id (valid with `HAS_PREFIX`), for neighbourhood targets.
    prefix: u32,
    /// Earliest next query, in whole seconds since the walker started.
    next: u32,
    /// Expected new infohashes at the next visit, in hundredths.
    yield_est: u16,
    place: Place,
    failures: u8,
    flags: u8,
}

/// Whether no node can be reached at `ip` (a contact naming it is junk or an attack). An
/// IPv6 link-local address names a host only together with an interface (a scope), which a
/// compact contact does not carry.
fn unusable(ip: IpAddr) -> bool {
    ip.is_unspecified()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        }
}

/// The samples a node may hand out per reply (BEP 51 leaves it to the node; 20 is what
/// libtorrent and we send).
const SAMPLES_PER_REPLY: f64 = 20.0;
/// Retry backoff after the first failure of a node that used to answer.
const BACKOFF_BASE: Duration = Duration::from_secs(60);
/// Pause between sweeps of the node map once it is full.
const MAINTAIN_PAUSE: Duration = Duration::from_secs(10);

/// The walk scheduler of one address family's DHT (`A` is `SocketAddrV4` or
/// `SocketAddrV6`): BEP 32 makes the IPv4 and IPv6 DHTs separate keyspaces with separate
/// node sets, so each is walked on its own, the node address itself being the key (a
/// `SocketAddrV4` key stays 6 bytes for the millions of IPv4 nodes). See the module docs,
/// and [`DualWalker`] for both families under one rate limit.
pub struct Walker<A: NodeAddr = SocketAddrV4> {
    cfg: WalkConfig,
    start: Instant,
    rng: StdRng,
    bucket: TokenBucket,
    nodes: HashMap<A, NodeState>,
    /// Contacts tracked per site ([`Walker::site_of`]).
    per_site: HashMap<u64, u8>,
    frontier: VecDeque<A>,
    fallback: VecDeque<A>,
    due: BinaryHeap<Reverse<(u32, A)>>,
    /// (expected yield, earlier due first, node).
    ready: BinaryHeap<(u16, Reverse<u32>, A)>,
    in_flight: usize,
    target_seq: u32,
    queries_made: u32,
    excluded: Vec<A>,
    last_maintain: Option<Instant>,
    stats: WalkStats,
}

impl<A: NodeAddr> Walker<A> {
    /// A walker with an empty frontier; feed it with [`Walker::add_nodes`].
    pub fn new(cfg: WalkConfig, now: Instant) -> Self {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => rand::make_rng(),
        };
        let rate = if cfg.rate.is_finite() && cfg.rate > 0.0 {
            cfg.rate
        } else {
            1.0
        };
        let burst = cfg.burst.max(1.0);
        Walker {
            bucket: TokenBucket::new(rate, burst, now),
            start: now,
            rng,
            nodes: HashMap::new(),
            per_site: HashMap::new(),
            frontier: VecDeque::new(),
            fallback: VecDeque::new(),
            due: BinaryHeap::new(),
            ready: BinaryHeap::new(),
            in_flight: 0,
            target_seq: 0,
            queries_made: 0,
            excluded: Vec::new(),
            last_maintain: None,
            stats: WalkStats {
                fresh_yield: SAMPLES_PER_REPLY,
                ..Default::default()
            },
            cfg,
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &WalkConfig {
        &self.cfg
    }

    /// The site `addr` counts against, and that site's cap: an IPv4 address (its ports are
    /// one host), or an IPv6 /64 (one site's allocation: every address in it reaches the
    /// same network).
    fn site_of(addr: &A, cfg: &WalkConfig) -> (u64, u8) {
        match addr.ip_addr() {
            IpAddr::V4(ip) => (u64::from(u32::from(ip)), cfg.max_ports_per_ip),
            IpAddr::V6(_) => (addr.subnet(), cfg.max_per_ipv6_net),
        }
    }

    /// Never query `addr` (our own node's address).
    pub fn exclude(&mut self, addr: A) {
        self.excluded
            .push(A::from_parts(addr.host(), addr.port_number()));
    }

    /// Whole seconds since start, rounded down (for "is it due yet").
    fn secs_floor(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.start)
            .as_secs()
            .min(u64::from(u32::MAX)) as u32
    }

    /// Whole seconds since start, rounded up (for "not before": a visit at 10.2 s with a
    /// 5 s interval allows the next at 16 s, never at 15.x).
    fn secs_ceil(&self, now: Instant) -> u32 {
        let d = now.saturating_duration_since(self.start);
        let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        s.min(u64::from(u32::MAX)) as u32
    }

    fn at(&self, secs: u32) -> Instant {
        self.start + Duration::from_secs(u64::from(secs))
    }

    fn clamp_secs(d: Duration) -> u32 {
        d.as_secs().min(u64::from(u32::MAX / 2)) as u32
    }

    /// Counters and gauges.
    pub fn stats(&self) -> WalkStats {
        WalkStats {
            nodes_known: self.nodes.len(),
            frontier: self.frontier.len(),
            in_flight: self.in_flight,
            ..self.stats.clone()
        }
    }

    /// Offers addresses of unknown id (e.g. routers). See [`Walker::add_contacts`].
    pub fn add_nodes(&mut self, now: Instant, addrs: impl IntoIterator<Item = A>) {
        for addr in addrs {
            self.add(now, addr, None);
        }
    }

    /// Offers contacts (from a reply, the routing table). Unknown ones join the frontier;
    /// known ones are left where they are, except penalised ones whose penalty is over.
    pub fn add_contacts(&mut self, now: Instant, contacts: impl IntoIterator<Item = Contact<A>>) {
        for c in contacts {
            self.add(now, c.addr, Some(c.id));
        }
    }

    fn add(&mut self, now: Instant, addr: A, id: Option<NodeId>) {
        let now_s = self.secs_floor(now);
        let prefix = id.map(|id| u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]));
        // One form per node: a scope or flow label must not make one node two keys.
        let addr = A::from_parts(addr.host(), addr.port_number());
        if addr.port_number() == 0
            || unusable(addr.ip_addr())
            || !self.cfg.allow.allows(addr.into())
        {
            return;
        }
        let k = addr;
        if self.excluded.contains(&k) {
            return;
        }
        if let Some(st) = self.nodes.get_mut(&k) {
            if let Some(p) = prefix
                && st.flags & HAS_PREFIX == 0
            {
                st.prefix = p;
                st.flags |= HAS_PREFIX;
            }
            if st.place == Place::Idle
                && st.next <= now_s
                && self.frontier.len() < self.cfg.max_frontier
            {
                st.place = Place::Frontier;
                st.failures = 0;
                self.frontier.push_back(k);
            }
            return;
        }
        if self.frontier.len() >= self.cfg.max_frontier {
            self.stats.dropped_contacts += 1;
            return;
        }
        if self.nodes.len() >= self.cfg.max_nodes {
            self.maintain(now);
            if self.nodes.len() >= self.cfg.max_nodes {
                self.stats.dropped_contacts += 1;
                return;
            }
        }
        let (site, cap) = Self::site_of(&addr, &self.cfg);
        let ports = self.per_site.entry(site).or_insert(0);
        if *ports >= cap {
            self.stats.dropped_contacts += 1;
            return;
        }
        *ports += 1;
        self.nodes.insert(
            k,
            NodeState {
                prefix: prefix.unwrap_or(0),
                next: 0,
                yield_est: 0,
                place: Place::Frontier,
                failures: 0,
                flags: if prefix.is_some() { HAS_PREFIX } else { 0 },
            },
        );
        self.frontier.push_back(k);
    }

    /// Whether the query budget has room for one more query now (work outside the walk,
    /// such as a BEP 33 scrape, starts only then and is [`Walker::charge`]d afterwards).
    pub fn has_budget(&mut self, now: Instant) -> bool {
        self.bucket.available(1.0, now)
    }

    /// Charges `n` queries sent outside the walk (e.g. a metadata lookup) to the rate limit.
    pub fn charge(&mut self, now: Instant, n: u32) {
        // Bound the debt to a minute of traffic so one huge charge cannot stall the walk.
        let floor = 60.0 * self.bucket.rate();
        self.bucket.charge(f64::from(n), floor, now);
        self.stats.external_queries += u64::from(n);
    }

    /// Moves nodes whose interval has passed into the ranked ready set.
    fn promote_due(&mut self, now: Instant) {
        let now_s = self.secs_floor(now);
        while let Some(&Reverse((due, k))) = self.due.peek() {
            if due > now_s {
                break;
            }
            self.due.pop();
            if let Some(st) = self.nodes.get_mut(&k)
                && st.place == Place::Due
                && st.next == due
            {
                st.place = Place::Ready;
                self.ready.push((st.yield_est, Reverse(due), k));
            }
        }
    }

    /// Drops stale heads so the queues' fronts are real candidates.
    fn clean_heads(&mut self) {
        while let Some(&k) = self.fallback.front() {
            if self
                .nodes
                .get(&k)
                .is_some_and(|s| s.place == Place::Fallback)
            {
                break;
            }
            self.fallback.pop_front();
        }
        while let Some(&k) = self.frontier.front() {
            if self
                .nodes
                .get(&k)
                .is_some_and(|s| s.place == Place::Frontier)
            {
                break;
            }
            self.frontier.pop_front();
        }
        while let Some(&(_, _, k)) = self.ready.peek() {
            if self.nodes.get(&k).is_some_and(|s| s.place == Place::Ready) {
                break;
            }
            self.ready.pop();
        }
    }

    /// Which node goes next, without taking it.
    fn candidate(&self) -> Option<(A, bool)> {
        if let Some(&k) = self.fallback.front() {
            return Some((k, true));
        }
        let fresh = self.frontier.front().copied();
        let revisit = self.ready.peek().map(|&(y, _, k)| (y, k));
        match (fresh, revisit) {
            (Some(f), Some((y, r))) => {
                if f64::from(y) / 100.0 > self.stats.fresh_yield {
                    Some((r, false))
                } else {
                    Some((f, false))
                }
            }
            (Some(f), None) => Some((f, false)),
            (None, Some((_, r))) => Some((r, false)),
            (None, None) => None,
        }
    }

    /// Alternately a spread target and, when the node's id is known, its neighbourhood.
    fn next_target(&mut self, neighbourhood: Option<u32>) -> NodeId {
        self.queries_made = self.queries_made.wrapping_add(1);
        let mut id = [0u8; ID_LEN];
        self.rng.fill(&mut id[4..]);
        let top = match neighbourhood {
            Some(p) if self.queries_made.is_multiple_of(2) => p,
            _ => {
                // Its own counter: bit-reversing only odd numbers would cover half the space.
                self.target_seq = self.target_seq.wrapping_add(1);
                self.target_seq.reverse_bits()
            }
        };
        id[..4].copy_from_slice(&top.to_be_bytes());
        NodeId(id)
    }

    /// The next query to send now, if the rate limit, the in-flight cap and the schedule
    /// allow one. Call repeatedly until `None`, then wait until [`Walker::poll_timeout`] or
    /// the next answer.
    pub fn poll_query(&mut self, now: Instant) -> Option<WalkQuery<A>> {
        let mut bucket = self.bucket.clone();
        let q = self.poll_query_with(now, &mut bucket);
        self.bucket = bucket;
        q
    }

    /// [`Walker::poll_query`] charging `bucket` instead of the walker's own (a
    /// [`DualWalker`]'s one rate limit for both families).
    fn poll_query_with(&mut self, now: Instant, bucket: &mut TokenBucket) -> Option<WalkQuery<A>> {
        if self.in_flight >= self.cfg.max_in_flight || !bucket.available(1.0, now) {
            return None;
        }
        self.promote_due(now);
        self.clean_heads();
        let (k, is_fallback) = self.candidate()?;
        let st = self.nodes.get_mut(&k).expect("candidates are tracked");
        match st.place {
            Place::Fallback => {
                self.fallback.pop_front();
            }
            Place::Frontier => {
                self.frontier.pop_front();
            }
            Place::Ready => {
                self.ready.pop();
            }
            _ => unreachable!("clean_heads keeps only queued candidates"),
        }
        st.place = Place::InFlight;
        let find_node = is_fallback || st.flags & NO_BEP51 != 0;
        let neighbourhood = (st.flags & HAS_PREFIX != 0).then_some(st.prefix);
        self.in_flight += 1;
        bucket.charge(1.0, f64::INFINITY, now);
        self.stats.queries += 1;
        let target = self.next_target(neighbourhood);
        let query = if find_node {
            self.stats.find_node_queries += 1;
            DirectQuery::FindNode(target)
        } else {
            DirectQuery::SampleInfohashes(target)
        };
        Some(WalkQuery { addr: k, query })
    }

    /// When [`Walker::poll_query`] may next return a query; `None` when only an answer
    /// (or new contacts) can unblock the walk.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let mut bucket = self.bucket.clone();
        self.poll_timeout_with(now, &mut bucket)
    }

    /// [`Walker::poll_timeout`] against `bucket` instead of the walker's own.
    fn poll_timeout_with(&mut self, now: Instant, bucket: &mut TokenBucket) -> Option<Instant> {
        if self.in_flight >= self.cfg.max_in_flight {
            return None;
        }
        self.promote_due(now);
        self.clean_heads();
        let ready = bucket.ready_at(1.0, now);
        if self.candidate().is_some() {
            return Some(ready.max(now));
        }
        self.due
            .peek()
            .map(|&Reverse((due, _))| self.at(due).max(ready))
    }

    /// Whether nothing is queued, scheduled or in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0
            && self.frontier.is_empty()
            && self.fallback.is_empty()
            && self.ready.is_empty()
            && self.due.is_empty()
    }

    /// Takes the in-flight node `addr`, or `None` for an answer we did not ask for.
    fn take_in_flight(&mut self, addr: A) -> Option<A> {
        let k = A::from_parts(addr.host(), addr.port_number());
        let st = self.nodes.get(&k)?;
        if st.place != Place::InFlight {
            return None;
        }
        self.in_flight -= 1;
        Some(k)
    }

    /// Handles a reply from `addr`. BEP 51 samples are sliced into `out` (deduplicated);
    /// `is_new` tells whether the caller has not seen an infohash yet, which is how the
    /// walk learns which nodes are worth revisiting. Returns whether the reply had BEP 51
    /// fields.
    pub fn on_reply(
        &mut self,
        now: Instant,
        addr: A,
        r: &Response,
        mut is_new: impl FnMut(&InfoHash) -> bool,
        out: &mut Vec<InfoHash>,
    ) -> bool {
        out.clear();
        let Some(k) = self.take_in_flight(addr) else {
            return false;
        };
        self.stats.replies += 1;
        let now_ceil = self.secs_ceil(now);
        let bep51 = r.samples.is_some() || r.num.is_some() || r.interval.is_some();
        let (fresh, sent_find_node) = {
            let st = self.nodes.get(&k).expect("in flight");
            (st.flags & RESPONDED == 0, st.flags & NO_BEP51 != 0)
        };
        if fresh {
            self.stats.visited += 1;
        }
        let mut place = Place::Idle;
        let mut next = now_ceil.saturating_add(Self::clamp_secs(self.cfg.default_interval));
        let mut flags = RESPONDED;
        let mut yield_est = 0u16;
        if sent_find_node || !bep51 {
            // A find_node fallback, or a node that answered sample_infohashes like find_node
            // (unknown methods get find_node answers): contacts only.
            flags |= NO_BEP51;
            if !sent_find_node {
                self.stats.no_bep51 += 1;
            }
        } else {
            self.stats.bep51_replies += 1;
            out.extend(r.samples());
            out.sort_unstable();
            out.dedup();
            let got = out.len();
            let new = out.iter().filter(|ih| is_new(ih)).count();
            self.stats.samples += got as u64;
            self.stats.new_samples += new as u64;
            if fresh {
                self.stats.fresh_yield = 0.95 * self.stats.fresh_yield + 0.05 * new as f64;
            }
            let num = match r.num {
                Some(n) if n > 0 => (n.min(1 << 40) as f64).max(got as f64),
                _ => got as f64,
            };
            yield_est = if got == 0 {
                0
            } else {
                // Share of the node's store we did not know, minus what we just learned,
                // spread over what one more reply returns.
                let unknown_after = (new as f64 / got as f64 * num - new as f64).max(0.0);
                let per_reply = num.min((got as f64).max(SAMPLES_PER_REPLY.min(num)));
                (unknown_after / num * per_reply * 100.0)
                    .round()
                    .min(65_535.0) as u16
            };
            let min = self.cfg.min_interval.as_secs();
            let max = self.cfg.max_interval.as_secs().max(min);
            let interval = match r.interval {
                Some(i) if i > 0 => (i as u64).clamp(min, max),
                _ => min,
            };
            next = now_ceil.saturating_add(interval.min(u64::from(u32::MAX / 2)) as u32);
            place = Place::Due;
        }
        let st = self.nodes.get_mut(&k).expect("in flight");
        st.prefix = u32::from_be_bytes([r.id.0[0], r.id.0[1], r.id.0[2], r.id.0[3]]);
        st.flags |= flags | HAS_PREFIX;
        st.failures = 0;
        st.next = next;
        st.place = place;
        st.yield_est = yield_est;
        if place == Place::Due {
            self.due.push(Reverse((next, k)));
        }
        let contacts: Vec<Contact<A>> = compact_nodes(A::nodes_in(r).unwrap_or(&[]))
            .take(self.cfg.max_nodes_per_reply)
            .collect();
        self.add_contacts(now, contacts);
        bep51 && !sent_find_node
    }

    /// Handles a failed query to `addr`.
    pub fn on_error(&mut self, now: Instant, addr: A, e: WalkError) {
        let Some(k) = self.take_in_flight(addr) else {
            return;
        };
        let now_ceil = self.secs_ceil(now);
        let dead_retry = Self::clamp_secs(self.cfg.dead_retry);
        let min_interval = Self::clamp_secs(self.cfg.min_interval);
        let default_interval = Self::clamp_secs(self.cfg.default_interval);
        let max_failures = self.cfg.max_failures.max(1);
        let st = self.nodes.get_mut(&k).expect("in flight");
        let sent_find_node = st.flags & NO_BEP51 != 0;
        match e {
            WalkError::Busy => {
                self.stats.busy += 1;
                st.place = Place::Frontier;
                self.frontier.push_back(k);
                return;
            }
            WalkError::Refused => {
                st.place = Place::Idle;
                st.next = u32::MAX;
                return;
            }
            WalkError::Remote(code)
                if !sent_find_node && (code == ERR_PROTOCOL || code == ERR_METHOD_UNKNOWN) =>
            {
                // No BEP 51 here: one find_node keeps the walk going through this node.
                self.stats.errors += 1;
                self.stats.no_bep51 += 1;
                st.flags |= NO_BEP51 | RESPONDED;
                st.place = Place::Fallback;
                self.fallback.push_back(k);
                return;
            }
            WalkError::Timeout => self.stats.timeouts += 1,
            WalkError::Remote(_) => self.stats.errors += 1,
        }
        st.failures = st.failures.saturating_add(1);
        let answered_before = st.flags & RESPONDED != 0 || matches!(e, WalkError::Remote(_));
        if sent_find_node || st.failures >= max_failures || (!answered_before && st.failures >= 2) {
            // Never answered twice, gave up, or only useful for contacts: forget for a while.
            st.place = Place::Idle;
            st.next = now_ceil.saturating_add(dead_retry);
            return;
        }
        let backoff = BACKOFF_BASE.as_secs() << (2 * u32::from(st.failures - 1)).min(20);
        let backoff = (backoff.min(u64::from(default_interval)) as u32).max(min_interval);
        st.next = now_ceil.saturating_add(backoff);
        st.place = Place::Due;
        self.due.push(Reverse((st.next, k)));
    }

    /// Forgets nodes whose penalty or interval is over and that promise nothing, once the
    /// map is full (at most every [`MAINTAIN_PAUSE`]). Nothing still inside its interval is
    /// forgotten, so a forgotten node can never be revisited early.
    fn maintain(&mut self, now: Instant) {
        if self
            .last_maintain
            .is_some_and(|t| now.saturating_duration_since(t) < MAINTAIN_PAUSE)
        {
            return;
        }
        self.last_maintain = Some(now);
        let now_s = self.secs_floor(now);
        let per_site = &mut self.per_site;
        let cfg = &self.cfg;
        self.nodes.retain(|&k, st| {
            let forget = (st.place == Place::Idle && st.next <= now_s)
                || (st.place == Place::Ready && st.yield_est == 0);
            if forget {
                let (site, _) = Self::site_of(&k, cfg);
                if let Some(c) = per_site.get_mut(&site) {
                    *c -= 1;
                    if *c == 0 {
                        per_site.remove(&site);
                    }
                }
            }
            !forget
        });
        let nodes = &self.nodes;
        self.ready
            .retain(|&(_, _, k)| nodes.get(&k).is_some_and(|s| s.place == Place::Ready));
    }
}

impl WalkStats {
    /// The sum of two walks' numbers (both families of a [`DualWalker`]); `fresh_yield`
    /// is their average weighted by nodes visited, so an idle family does not drag it.
    pub fn combined(a: &WalkStats, b: &WalkStats) -> WalkStats {
        let (wa, wb) = (a.visited as f64 + 1.0, b.visited as f64 + 1.0);
        WalkStats {
            queries: a.queries + b.queries,
            find_node_queries: a.find_node_queries + b.find_node_queries,
            replies: a.replies + b.replies,
            bep51_replies: a.bep51_replies + b.bep51_replies,
            samples: a.samples + b.samples,
            new_samples: a.new_samples + b.new_samples,
            timeouts: a.timeouts + b.timeouts,
            errors: a.errors + b.errors,
            busy: a.busy + b.busy,
            no_bep51: a.no_bep51 + b.no_bep51,
            visited: a.visited + b.visited,
            external_queries: a.external_queries + b.external_queries,
            dropped_contacts: a.dropped_contacts + b.dropped_contacts,
            nodes_known: a.nodes_known + b.nodes_known,
            frontier: a.frontier + b.frontier,
            in_flight: a.in_flight + b.in_flight,
            fresh_yield: (a.fresh_yield * wa + b.fresh_yield * wb) / (wa + wb),
        }
    }
}

/// Both keyspaces walked at once: the IPv4 DHT and the IPv6 DHT (BEP 32), one [`Walker`]
/// each, under **one** token bucket. Politeness is about what we send in total, so a
/// dual-stack crawler must not get twice the rate of an IPv4 one; within the budget the
/// families take turns, so the small IPv6 DHT is not starved by the large IPv4 one and
/// leaves its share to it once it has nothing due. Every other bound of [`WalkConfig`]
/// (nodes, frontier, in flight) applies per family.
///
/// A reply's contacts of the other family (`nodes6` in an answer over IPv4 and vice versa,
/// sent when a query carried BEP 32 `want`) feed the other family's walk.
pub struct DualWalker {
    bucket: TokenBucket,
    v4: Walker<SocketAddrV4>,
    v6: Walker<SocketAddrV6>,
    /// Whether the IPv6 walk runs (off when our node has no IPv6 socket).
    ipv6: bool,
    /// Which family gets the next turn.
    v6_next: bool,
    external_queries: u64,
}

/// Separates the IPv6 walk's target sequence from the IPv4 one's under a fixed seed.
const V6_SEED_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

impl DualWalker {
    /// Two empty walks; with `ipv6` false only the IPv4 one is ever fed or polled.
    pub fn new(cfg: WalkConfig, now: Instant, ipv6: bool) -> Self {
        let v4 = Walker::new(cfg.clone(), now);
        let v6 = Walker::new(
            WalkConfig {
                seed: cfg.seed.map(|s| s ^ V6_SEED_SALT),
                ..cfg
            },
            now,
        );
        DualWalker {
            bucket: v4.bucket.clone(),
            v4,
            v6,
            ipv6,
            v6_next: false,
            external_queries: 0,
        }
    }

    /// Whether the IPv6 keyspace is walked.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6
    }

    /// The IPv4 walk.
    pub fn v4(&self) -> &Walker<SocketAddrV4> {
        &self.v4
    }

    /// The IPv6 walk.
    pub fn v6(&self) -> &Walker<SocketAddrV6> {
        &self.v6
    }

    /// Never query `addr` (one of our own node's addresses).
    pub fn exclude(&mut self, addr: SocketAddr) {
        if let Some(a) = SocketAddrV4::from_socket(addr) {
            self.v4.exclude(a);
        } else if let Some(a) = SocketAddrV6::from_socket(addr) {
            self.v6.exclude(a);
        }
    }

    /// Offers addresses of unknown id, each to its family's walk (an IPv4-mapped IPv6
    /// address is IPv4).
    pub fn add_nodes(&mut self, now: Instant, addrs: impl IntoIterator<Item = SocketAddr>) {
        for addr in addrs {
            if let Some(a) = SocketAddrV4::from_socket(addr) {
                self.v4.add_nodes(now, [a]);
            } else if let Some(a) = SocketAddrV6::from_socket(addr)
                && self.ipv6
            {
                self.v6.add_nodes(now, [a]);
            }
        }
    }

    /// Offers IPv4 contacts (the IPv4 routing table).
    pub fn add_contacts4(&mut self, now: Instant, contacts: impl IntoIterator<Item = Contact>) {
        self.v4.add_contacts(now, contacts);
    }

    /// Offers IPv6 contacts (the IPv6 routing table); ignored while IPv6 is off.
    pub fn add_contacts6(
        &mut self,
        now: Instant,
        contacts: impl IntoIterator<Item = Contact<SocketAddrV6>>,
    ) {
        if self.ipv6 {
            self.v6.add_contacts(now, contacts);
        }
    }

    /// Whether the shared budget has room for one more query now (see
    /// [`Walker::has_budget`]).
    pub fn has_budget(&mut self, now: Instant) -> bool {
        self.bucket.available(1.0, now)
    }

    /// Charges `n` queries sent outside the walk to the shared rate limit (see
    /// [`Walker::charge`]).
    pub fn charge(&mut self, now: Instant, n: u32) {
        let floor = 60.0 * self.bucket.rate();
        self.bucket.charge(f64::from(n), floor, now);
        self.external_queries += u64::from(n);
    }

    /// The next query to send now, from either family, taking turns; see
    /// [`Walker::poll_query`].
    pub fn poll_query(&mut self, now: Instant) -> Option<WalkQuery<SocketAddr>> {
        if self.at_in_flight_cap() {
            return None;
        }
        let order = if self.v6_next && self.ipv6 {
            [Family::V6, Family::V4]
        } else {
            [Family::V4, Family::V6]
        };
        for f in order {
            let q = match f {
                Family::V4 => self
                    .v4
                    .poll_query_with(now, &mut self.bucket)
                    .map(|q| WalkQuery {
                        addr: SocketAddr::V4(q.addr),
                        query: q.query,
                    }),
                Family::V6 if self.ipv6 => {
                    self.v6
                        .poll_query_with(now, &mut self.bucket)
                        .map(|q| WalkQuery {
                            addr: SocketAddr::V6(q.addr),
                            query: q.query,
                        })
                }
                Family::V6 => None,
            };
            if q.is_some() {
                self.v6_next = f == Family::V4;
                return q;
            }
        }
        None
    }

    /// When [`DualWalker::poll_query`] may next return a query (the earlier family).
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        if self.at_in_flight_cap() {
            // Only an answer or a failure frees a slot: nothing to wake for until then.
            return None;
        }
        let t4 = self.v4.poll_timeout_with(now, &mut self.bucket);
        let t6 = if self.ipv6 {
            self.v6.poll_timeout_with(now, &mut self.bucket)
        } else {
            None
        };
        match (t4, t6) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether both walks' queries in flight together fill [`WalkConfig::max_in_flight`]
    /// (each walk alone would allow that many).
    fn at_in_flight_cap(&self) -> bool {
        self.v4.in_flight + self.v6.in_flight >= self.v4.cfg.max_in_flight
    }

    /// Whether neither walk has anything queued, scheduled or in flight.
    pub fn is_idle(&self) -> bool {
        self.v4.is_idle() && self.v6.is_idle()
    }

    /// Handles a reply from `addr` (see [`Walker::on_reply`]), then offers the reply's
    /// contacts of the other family to the other walk.
    pub fn on_reply(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        r: &Response,
        is_new: impl FnMut(&InfoHash) -> bool,
        out: &mut Vec<InfoHash>,
    ) -> bool {
        let max = self.v4.cfg.max_nodes_per_reply;
        if let Some(a) = SocketAddrV4::from_socket(addr) {
            let bep51 = self.v4.on_reply(now, a, r, is_new, out);
            let others: Vec<Contact<SocketAddrV6>> = r.nodes6().take(max).collect();
            self.add_contacts6(now, others);
            bep51
        } else if let Some(a) = SocketAddrV6::from_socket(addr) {
            let bep51 = self.v6.on_reply(now, a, r, is_new, out);
            let others: Vec<Contact> = r.nodes().take(max).collect();
            self.v4.add_contacts(now, others);
            bep51
        } else {
            out.clear();
            false
        }
    }

    /// Handles a failed query to `addr` (see [`Walker::on_error`]).
    pub fn on_error(&mut self, now: Instant, addr: SocketAddr, e: WalkError) {
        if let Some(a) = SocketAddrV4::from_socket(addr) {
            self.v4.on_error(now, a, e);
        } else if let Some(a) = SocketAddrV6::from_socket(addr) {
            self.v6.on_error(now, a, e);
        }
    }

    /// One family's counters and gauges.
    pub fn stats_of(&self, family: Family) -> WalkStats {
        match family {
            Family::V4 => self.v4.stats(),
            Family::V6 => self.v6.stats(),
        }
    }

    /// Both families' counters together, with the queries charged from outside the walk.
    pub fn stats(&self) -> WalkStats {
        let mut s = WalkStats::combined(&self.v4.stats(), &self.v6.stats());
        s.external_queries += self.external_queries;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn a(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0x7f6e_0000 + i), 6881)
    }

    fn cfg() -> WalkConfig {
        WalkConfig {
            rate: 1000.0,
            burst: 1000.0,
            seed: Some(1),
            ..Default::default()
        }
    }

    fn sample_reply(samples: &[InfoHash], num: i64, interval: i64, nodes: &[u32]) -> Response {
        let mut s = Vec::new();
        for ih in samples {
            s.extend_from_slice(&ih.0);
        }
        let mut n = Vec::new();
        for &i in nodes {
            Contact::new(NodeId([i as u8; 20]), a(i)).write_compact(&mut n);
        }
        Response {
            id: NodeId([9; 20]),
            nodes: Some(n),
            samples: Some(s),
            num: Some(num),
            interval: Some(interval),
            ..Default::default()
        }
    }

    #[test]
    fn rate_limit_spaces_queries() {
        let t0 = Instant::now();
        let mut w = Walker::new(
            WalkConfig {
                rate: 10.0,
                burst: 5.0,
                ..cfg()
            },
            t0,
        );
        w.add_nodes(t0, (1..=200).map(a));
        let mut sent = 0;
        while w.poll_query(t0).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 5, "the burst");
        let wake = w.poll_timeout(t0).unwrap();
        assert!(
            wake > t0 && wake <= t0 + Duration::from_millis(101),
            "{wake:?}"
        );
        // Over ten seconds, ten per second plus the burst.
        let mut t = t0;
        for _ in 0..1000 {
            t += Duration::from_millis(10);
            while w.poll_query(t).is_some() {
                sent += 1;
            }
        }
        assert!((104..=106).contains(&sent), "{sent}");
    }

    #[test]
    fn interval_is_respected_and_yield_ranks_revisits() {
        let t0 = Instant::now();
        let mut w = Walker::new(
            WalkConfig {
                min_interval: Duration::from_secs(1),
                ..cfg()
            },
            t0,
        );
        w.add_nodes(t0, [a(1), a(2)]);
        let q1 = w.poll_query(t0).unwrap();
        let q2 = w.poll_query(t0).unwrap();
        assert!(matches!(q1.query, DirectQuery::SampleInfohashes(_)));
        assert_eq!(w.poll_query(t0), None);
        let many: Vec<InfoHash> = (0..20u8).map(|i| InfoHash([i; 20])).collect();
        let mut out = Vec::new();
        // Node 1: 100 infohashes, all we got were new; asks for 100 s.
        assert!(w.on_reply(
            t0,
            q1.addr,
            &sample_reply(&many, 100, 100, &[]),
            |_| true,
            &mut out
        ));
        assert_eq!(out.len(), 20);
        // Node 2: 20 infohashes, all already known; asks for 50 s.
        w.on_reply(
            t0,
            q2.addr,
            &sample_reply(&many, 20, 50, &[]),
            |_| false,
            &mut out,
        );
        assert_eq!(w.poll_query(t0 + Duration::from_secs(49)), None);
        assert_eq!(
            w.poll_timeout(t0 + Duration::from_secs(49)),
            Some(t0 + Duration::from_secs(50))
        );
        let q = w.poll_query(t0 + Duration::from_secs(50)).unwrap();
        assert_eq!(q.addr, a(2));
        assert_eq!(w.poll_query(t0 + Duration::from_secs(99)), None);
        // Both due at once: the one expected to give more goes first.
        let mut w2 = Walker::new(
            WalkConfig {
                min_interval: Duration::from_secs(1),
                ..cfg()
            },
            t0,
        );
        w2.add_nodes(t0, [a(1), a(2)]);
        let q1 = w2.poll_query(t0).unwrap();
        let q2 = w2.poll_query(t0).unwrap();
        w2.on_reply(
            t0,
            q1.addr,
            &sample_reply(&many, 20, 10, &[]),
            |_| false,
            &mut out,
        );
        w2.on_reply(
            t0,
            q2.addr,
            &sample_reply(&many, 100, 10, &[]),
            |_| true,
            &mut out,
        );
        let first = w2.poll_query(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(first.addr, q2.addr);
    }

    #[test]
    fn multi_sample_reply_is_sliced_and_deduplicated() {
        let t0 = Instant::now();
        let mut w = Walker::new(cfg(), t0);
        w.add_nodes(t0, [a(1)]);
        let q = w.poll_query(t0).unwrap();
        let hashes = [
            InfoHash([1; 20]),
            InfoHash([2; 20]),
            InfoHash([1; 20]),
            InfoHash([3; 20]),
        ];
        let mut r = sample_reply(&hashes, 4, 60, &[2, 3, 4]);
        // A ragged tail is ignored, not read as a short infohash.
        r.samples.as_mut().unwrap().extend_from_slice(&[7; 7]);
        let mut out = Vec::new();
        w.on_reply(t0, q.addr, &r, |_| true, &mut out);
        assert_eq!(
            out,
            vec![InfoHash([1; 20]), InfoHash([2; 20]), InfoHash([3; 20])]
        );
        assert_eq!(w.stats().samples, 3);
        // The contacts joined the frontier.
        assert_eq!(w.stats().frontier, 3);
    }

    #[test]
    fn errors_back_off_fall_back_and_give_up() {
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        let mut w = Walker::new(
            WalkConfig {
                min_interval: Duration::from_secs(1),
                ..cfg()
            },
            t0,
        );
        w.add_nodes(t0, [a(1), a(2), a(3)]);
        let qs: Vec<WalkQuery> = (0..3).map(|_| w.poll_query(t0).unwrap()).collect();
        // Node 2 has no BEP 51: one find_node follows at once.
        w.on_error(t0, qs[1].addr, WalkError::Remote(204));
        let f = w.poll_query(t0).unwrap();
        assert_eq!(f.addr, qs[1].addr);
        assert!(matches!(f.query, DirectQuery::FindNode(_)));
        // Node 1 never answered: one retry after 60 s, then nothing until it is
        // rediscovered after dead_retry.
        w.on_error(t0, qs[0].addr, WalkError::Timeout);
        assert_eq!(w.poll_query(secs(59)), None);
        assert_eq!(w.poll_query(secs(60)).map(|q| q.addr), Some(qs[0].addr));
        w.on_error(secs(60), qs[0].addr, WalkError::Timeout);
        w.add_nodes(secs(61), [qs[0].addr]);
        // Node 3 answered once, then times out: retried after 60 s, then 240 s, then dropped.
        let mut out = Vec::new();
        w.on_reply(
            secs(61),
            qs[2].addr,
            &sample_reply(&[], 0, 1, &[]),
            |_| true,
            &mut out,
        );
        assert_eq!(w.poll_query(secs(62)).map(|q| q.addr), Some(qs[2].addr));
        w.on_error(secs(62), qs[2].addr, WalkError::Timeout);
        assert_eq!(w.poll_query(secs(121)), None);
        assert_eq!(w.poll_query(secs(122)).map(|q| q.addr), Some(qs[2].addr));
        w.on_error(secs(122), qs[2].addr, WalkError::Timeout);
        assert_eq!(w.poll_query(secs(361)), None);
        assert_eq!(w.poll_query(secs(362)).map(|q| q.addr), Some(qs[2].addr));
        w.on_error(secs(362), qs[2].addr, WalkError::Timeout);
        assert_eq!(
            w.poll_timeout(secs(362)),
            None,
            "given up after three failures"
        );
        // Node 1 rediscovered after its penalty: queued again.
        w.add_nodes(secs(3660), [qs[0].addr]);
        assert_eq!(w.poll_query(secs(3660)).map(|q| q.addr), Some(qs[0].addr));
    }

    #[test]
    fn bounds_hold_against_hostile_contact_lists() {
        let t0 = Instant::now();
        let mut w = Walker::new(
            WalkConfig {
                max_nodes: 100,
                max_frontier: 50,
                allow: AllowList::loopback(),
                ..cfg()
            },
            t0,
        );
        // One victim IP on a thousand ports: only max_ports_per_ip are kept.
        let victim = Ipv4Addr::new(127, 110, 9, 9);
        w.add_nodes(t0, (1..=1000).map(|p| SocketAddrV4::new(victim, p)));
        assert_eq!(w.stats().nodes_known, 8);
        // Off the allow-list, port 0, multicast: never tracked.
        w.add_nodes(
            t0,
            [
                "10.0.0.1:6881".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
                "224.0.0.1:6881".parse().unwrap(),
            ],
        );
        assert_eq!(w.stats().nodes_known, 8);
        w.add_nodes(t0, (1..=1000).map(a));
        let s = w.stats();
        assert_eq!(s.frontier, 50);
        assert!(s.nodes_known <= 100);
        assert!(s.dropped_contacts > 0);
    }

    /// Node `i` of the IPv6 tests, each in a /64 of its own (the walk caps contacts per /64).
    fn a6(i: u32) -> SocketAddrV6 {
        SocketAddrV6::new(format!("fd77:0:0:{i:x}::6e").parse().unwrap(), 6881, 0, 0)
    }

    /// Over IPv6 the cap is per /64: a thousand addresses of one victim's /64 (or one
    /// address on a thousand ports) yield `max_per_ipv6_net` contacts, while other /64s
    /// are unaffected.
    #[test]
    fn ipv6_contacts_are_capped_per_64() {
        let t0 = Instant::now();
        let mut w = Walker::<SocketAddrV6>::new(
            WalkConfig {
                allow: AllowList::only(vec!["fd77::/16".parse().unwrap()]),
                ..cfg()
            },
            t0,
        );
        let cap = usize::from(w.config().max_per_ipv6_net);
        let victim = |i: u32| {
            let ip: Ipv6Addr = format!("fd77:0:0:99::{i:x}").parse().unwrap();
            SocketAddrV6::new(ip, 6881, 0, 0)
        };
        w.add_nodes(t0, (1..=1000).map(victim));
        assert_eq!(w.stats().nodes_known, cap);
        let one = victim(5000);
        w.add_nodes(t0, (1..=1000).map(|p| one.with_port(p)));
        assert_eq!(w.stats().nodes_known, cap, "same /64, other ports");
        w.add_nodes(t0, (1..=100).map(a6));
        assert_eq!(w.stats().nodes_known, cap + 100, "one per other /64");
        assert!(w.stats().dropped_contacts >= 1999 - cap as u64);
    }

    /// A reply over IPv6: `nodes6` holds IPv6 contacts, `nodes` (IPv4) whatever BEP 32
    /// `want` added.
    fn sample_reply6(samples: &[InfoHash], nodes6: &[u32], nodes4: &[u32]) -> Response {
        let mut r = sample_reply(samples, samples.len() as i64, 60, nodes4);
        let mut n = Vec::new();
        for &i in nodes6 {
            Contact::new(NodeId([i as u8; 20]), a6(i)).write_compact(&mut n);
        }
        r.nodes6 = Some(n);
        r
    }

    #[test]
    fn the_walk_is_generic_over_the_family_and_walks_ipv6_contacts() {
        let t0 = Instant::now();
        let mut w: Walker<SocketAddrV6> = Walker::new(
            WalkConfig {
                allow: AllowList::only(vec!["fd77::/16".parse().unwrap()]),
                ..cfg()
            },
            t0,
        );
        w.add_nodes(t0, [a6(1)]);
        let q = w.poll_query(t0).unwrap();
        assert_eq!(q.addr, a6(1));
        assert!(matches!(q.query, DirectQuery::SampleInfohashes(_)));
        let hashes = [InfoHash([1; 20]), InfoHash([2; 20])];
        let mut out = Vec::new();
        // A scope id on the answer's address is the same node.
        let mut from = a6(1);
        from.set_scope_id(3);
        assert!(w.on_reply(
            t0,
            from,
            &sample_reply6(&hashes, &[2, 3], &[4, 5, 6]),
            |_| true,
            &mut out
        ));
        assert_eq!(out, hashes.to_vec());
        let s = w.stats();
        assert_eq!((s.visited, s.samples, s.new_samples), (1, 2, 2));
        // The two IPv6 contacts joined the frontier; the IPv4 ones are not this walk's.
        assert_eq!(s.frontier, 2);
        let mut next = vec![
            w.poll_query(t0).unwrap().addr,
            w.poll_query(t0).unwrap().addr,
        ];
        next.sort();
        assert_eq!(next, vec![a6(2), a6(3)]);
        // Bounds hold for IPv6 too: one host on many ports (the cap is per /64 here, see
        // ipv6_contacts_are_capped_per_64), junk and foreign addresses.
        let victim: std::net::Ipv6Addr = "fd77::6e:ff".parse().unwrap();
        w.add_nodes(t0, (1..=1000).map(|p| SocketAddrV6::new(victim, p, 0, 0)));
        assert_eq!(w.stats().nodes_known, 3 + 32);
        w.add_nodes(
            t0,
            [
                "[::]:6881".parse().unwrap(),
                "[ff02::1]:6881".parse().unwrap(),
                "[fd77::1]:0".parse().unwrap(),
                "[2001:db8::1]:6881".parse().unwrap(),
            ],
        );
        assert_eq!(w.stats().nodes_known, 3 + 32);
        // Link-local needs a scope no contact carries: never tracked, even when allowed.
        let mut any: Walker<SocketAddrV6> = Walker::new(cfg(), t0);
        any.add_nodes(t0, ["[fe80::1]:6881".parse().unwrap()]);
        assert_eq!(any.stats().nodes_known, 0);
        // The interval is kept per node as in IPv4: node 1 is not asked again early.
        for _ in 0..20 {
            if let Some(q) = w.poll_query(t0) {
                assert_ne!(q.addr, a6(1));
            }
        }
    }

    #[test]
    fn dual_walker_shares_one_rate_limit_and_takes_turns() {
        let t0 = Instant::now();
        let mut w = DualWalker::new(
            WalkConfig {
                rate: 10.0,
                burst: 6.0,
                ..cfg()
            },
            t0,
            true,
        );
        w.add_nodes(t0, (1..=200).map(|i| SocketAddr::V4(a(i))));
        w.add_nodes(t0, (1..=200).map(|i| SocketAddr::V6(a6(i))));
        let mut fams = Vec::new();
        while let Some(q) = w.poll_query(t0) {
            fams.push(Family::of(q.addr));
        }
        assert_eq!(fams.len(), 6, "one burst for both families, not one each");
        assert_eq!(
            fams,
            [
                Family::V4,
                Family::V6,
                Family::V4,
                Family::V6,
                Family::V4,
                Family::V6
            ]
        );
        let mut t = t0;
        let mut sent = fams.len();
        let mut v6 = 3;
        for _ in 0..1000 {
            t += Duration::from_millis(10);
            while let Some(q) = w.poll_query(t) {
                sent += 1;
                v6 += usize::from(q.addr.is_ipv6());
            }
        }
        assert!(
            (105..=107).contains(&sent),
            "the total rate is capped: {sent}"
        );
        assert!((50..=56).contains(&v6), "fair turns: {v6} of {sent}");
        let s = w.stats();
        assert_eq!(s.queries, sent as u64);
        assert_eq!(
            w.stats_of(Family::V4).queries + w.stats_of(Family::V6).queries,
            s.queries
        );
        // Work outside the walk drains the same budget.
        w.charge(t, 600);
        assert!(!w.has_budget(t));
        assert_eq!(w.poll_query(t), None);
        assert!(w.poll_timeout(t).is_some_and(|at| at > t));
    }

    /// `max_in_flight` bounds both families together, as it bounds one walk: a dual-stack
    /// crawler does not have twice the queries pending of an IPv4-only one.
    #[test]
    fn dual_walker_caps_queries_in_flight_across_both_families() {
        let t0 = Instant::now();
        let mut w = DualWalker::new(
            WalkConfig {
                max_in_flight: 4,
                ..cfg()
            },
            t0,
            true,
        );
        w.add_nodes(t0, (1..=20).map(|i| SocketAddr::V4(a(i))));
        w.add_nodes(t0, (1..=20).map(|i| SocketAddr::V6(a6(i))));
        let mut sent = Vec::new();
        while let Some(q) = w.poll_query(t0) {
            sent.push(q.addr);
        }
        assert_eq!(sent.len(), 4, "{sent:?}");
        assert_eq!(sent.iter().filter(|a| a.is_ipv6()).count(), 2, "turns");
        assert_eq!(w.stats().in_flight, 4);
        assert_eq!(w.poll_timeout(t0), None, "only an answer frees a slot");
        // One IPv6 answer frees one slot, for whichever family's turn it is.
        let mut out = Vec::new();
        w.on_reply(
            t0,
            sent[1],
            &sample_reply(&[], 0, 60, &[]),
            |_| true,
            &mut out,
        );
        assert!(w.poll_timeout(t0).is_some());
        assert!(w.poll_query(t0).is_some());
        assert_eq!(w.poll_query(t0), None);
        assert_eq!(w.stats().in_flight, 4);
    }

    #[test]
    fn dual_walker_routes_answers_by_family_and_feeds_the_other_family() {
        let t0 = Instant::now();
        let mut w = DualWalker::new(cfg(), t0, true);
        w.exclude(SocketAddr::V6(a6(9)));
        w.add_nodes(t0, [SocketAddr::V4(a(1)), SocketAddr::V6(a6(1))]);
        let q4 = w.poll_query(t0).unwrap();
        let q6 = w.poll_query(t0).unwrap();
        assert_eq!(
            (q4.addr, q6.addr),
            (SocketAddr::V4(a(1)), SocketAddr::V6(a6(1)))
        );
        let mut out = Vec::new();
        // An answer over IPv4 carrying `nodes6` (BEP 32 want): those go to the IPv6 walk.
        w.on_reply(
            t0,
            q4.addr,
            &sample_reply6(&[InfoHash([4; 20])], &[2, 9], &[2]),
            |_| true,
            &mut out,
        );
        assert_eq!(out, vec![InfoHash([4; 20])]);
        assert_eq!(w.v4().stats().frontier, 1);
        assert_eq!(w.v6().stats().frontier, 1, "fd77::6e:9 is excluded");
        // The IPv6 node's samples count for the IPv6 family.
        w.on_reply(
            t0,
            q6.addr,
            &sample_reply6(&[InfoHash([6; 20]), InfoHash([7; 20])], &[], &[]),
            |_| true,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(w.stats_of(Family::V6).new_samples, 2);
        assert_eq!(w.stats_of(Family::V4).new_samples, 1);
        assert_eq!(w.stats().visited, 2);
        w.on_error(t0, SocketAddr::V6(a6(2)), WalkError::Timeout);
        assert_eq!(w.stats_of(Family::V6).timeouts, 0, "not in flight: ignored");

        // Without IPv6 nothing is fed to or polled from the IPv6 walk.
        let mut w = DualWalker::new(cfg(), t0, false);
        w.add_nodes(t0, [SocketAddr::V6(a6(1)), SocketAddr::V4(a(1))]);
        let q = w.poll_query(t0).unwrap();
        w.on_reply(
            t0,
            q.addr,
            &sample_reply6(&[], &[2, 3], &[]),
            |_| true,
            &mut out,
        );
        assert_eq!(w.v6().stats().nodes_known, 0);
        assert_eq!(w.poll_query(t0), None);
    }
}
