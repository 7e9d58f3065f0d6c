//! The walk on the virtual-time simulators: the crawler's node is an ordinary simulated node
//! and the walk drives it through `Node::query`, exactly as the tokio crawler drives its
//! node through [`DhtHandle::query`](crate::dht::driver::DhtHandle::query). One crawl loop
//! ([`SimCrawler::run_until`]) runs on either network:
//! - the IPv4 [`Sim`] (latency spread, loss, NATs, liars; thousands of nodes): a
//!   [`Walker`] on an IPv4 [`Node`](crate::dht::node::Node). Used by the interval test and
//!   the 5,000-node benchmark, where it counts every packet and runs hours in seconds;
//! - the dual-stack [`DualNet`] (IPv4-only, IPv6-only and dual nodes, BEP 32): a
//!   [`DualWalker`] on a [`DualNode`](crate::dht::dual::DualNode) ([`SimDualCrawler`]).
//!   Each query leaves from the node of its address's family (through
//!   [`DualNode::query`](crate::dht::dual::DualNode::query), the routing the tokio driver
//!   uses), its answer is fed back with that address, and each family's routing table
//!   feeds that family's walk, as in the tokio crawler.
//!
//! What differs between the two networks is behind [`CrawlNet`]; what the loop needs of a
//! walk, behind [`SimWalk`].
//!
//! A set of infohashes stands in for the sled store. Passive harvest is not simulated (the
//! IPv4 simulator gives every node one configuration, and reporting every node's incoming
//! queries would swamp the event queue).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use super::run::reseed_pause;
use super::walk::{DualWalker, WalkConfig, WalkError, WalkQuery, WalkStats, Walker};
use crate::dht::id::{Family, InfoHash, NodeAddr};
use crate::dht::krpc::Response;
use crate::dht::node::{Event, PingError, RequestId};
use crate::sim::Sim;
use crate::sim::dual::DualNet;

/// Longest virtual-time step between looks at the node's events, so answers are handled
/// close to when they arrive.
const STEP: Duration = Duration::from_millis(10);

/// A query's key until its answer arrives: each family's node numbers its own requests.
pub type SimRequest = (Family, RequestId);

/// What the crawl loop needs of a walk: one family's [`Walker`] or both families'
/// [`DualWalker`] (see their methods of the same names).
pub trait SimWalk {
    /// A queried node's address: a family's own for a [`Walker`], a [`SocketAddr`] for a
    /// [`DualWalker`].
    type Addr: Copy + Eq + Hash + Debug;
    /// The next query to send now.
    fn poll_query(&mut self, now: Instant) -> Option<WalkQuery<Self::Addr>>;
    /// When [`SimWalk::poll_query`] may next return a query.
    fn poll_timeout(&mut self, now: Instant) -> Option<Instant>;
    /// Handles a reply from `addr`; `out` receives its samples.
    fn on_reply(
        &mut self,
        now: Instant,
        addr: Self::Addr,
        r: &Response,
        is_new: impl FnMut(&InfoHash) -> bool,
        out: &mut Vec<InfoHash>,
    ) -> bool;
    /// Handles a failed query to `addr`.
    fn on_error(&mut self, now: Instant, addr: Self::Addr, e: WalkError);
    /// Counters and gauges (both families together for a [`DualWalker`]).
    fn stats(&self) -> WalkStats;
}

impl<A: NodeAddr> SimWalk for Walker<A> {
    type Addr = A;

    fn poll_query(&mut self, now: Instant) -> Option<WalkQuery<A>> {
        Walker::poll_query(self, now)
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        Walker::poll_timeout(self, now)
    }

    fn on_reply(
        &mut self,
        now: Instant,
        addr: A,
        r: &Response,
        is_new: impl FnMut(&InfoHash) -> bool,
        out: &mut Vec<InfoHash>,
    ) -> bool {
        Walker::on_reply(self, now, addr, r, is_new, out)
    }

    fn on_error(&mut self, now: Instant, addr: A, e: WalkError) {
        Walker::on_error(self, now, addr, e);
    }

    fn stats(&self) -> WalkStats {
        Walker::stats(self)
    }
}

impl SimWalk for DualWalker {
    type Addr = SocketAddr;

    fn poll_query(&mut self, now: Instant) -> Option<WalkQuery<SocketAddr>> {
        DualWalker::poll_query(self, now)
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        DualWalker::poll_timeout(self, now)
    }

    fn on_reply(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        r: &Response,
        is_new: impl FnMut(&InfoHash) -> bool,
        out: &mut Vec<InfoHash>,
    ) -> bool {
        DualWalker::on_reply(self, now, addr, r, is_new, out)
    }

    fn on_error(&mut self, now: Instant, addr: SocketAddr, e: WalkError) {
        DualWalker::on_error(self, now, addr, e);
    }

    fn stats(&self) -> WalkStats {
        DualWalker::stats(self)
    }
}

/// A simulated network a [`SimCrawler`] can run on: how the crawler's node sends the walk's
/// queries, how their answers come back, and which routing table feeds which walk.
pub trait CrawlNet {
    /// The walk that drives the crawler's node on this network.
    type Walk: SimWalk;
    /// The virtual clock.
    fn now(&self) -> Instant;
    /// Runs the network until `until` (virtual).
    fn run_until(&mut self, until: Instant);
    /// Offers node `node`'s routing table(s) to `walk`.
    fn reseed(&self, node: usize, now: Instant, walk: &mut Self::Walk);
    /// Sends every query `walk` has ready now from node `node`, calling `sent` with the
    /// send time, the key its answer will come back under, and the query. A query the node
    /// cannot send at all is reported to `walk` as failed, not to `sent`.
    fn send_ready(
        &mut self,
        node: usize,
        walk: &mut Self::Walk,
        sent: impl FnMut(Instant, SimRequest, WalkQuery<<Self::Walk as SimWalk>::Addr>),
    );
    /// Hands `answer` every answer to node `node`'s queries that arrived since the last
    /// call, and drops the network's other events.
    fn take_answers(
        &mut self,
        node: usize,
        answer: impl FnMut(SimRequest, Result<Box<Response>, PingError>),
    );
}

impl CrawlNet for Sim {
    type Walk = Walker<SocketAddrV4>;

    fn now(&self) -> Instant {
        Sim::now(self)
    }

    fn run_until(&mut self, until: Instant) {
        Sim::run_until(self, until);
    }

    /// The contacts' addresses only (their ids are not passed), as this crawler has always
    /// done: the 5,000-node benchmark's recorded numbers were measured that way.
    fn reseed(&self, node: usize, now: Instant, walk: &mut Walker<SocketAddrV4>) {
        walk.add_nodes(now, self.node(node).contacts().iter().map(|c| c.addr));
    }

    fn send_ready(
        &mut self,
        node: usize,
        walk: &mut Walker<SocketAddrV4>,
        mut sent: impl FnMut(Instant, SimRequest, WalkQuery),
    ) {
        self.with_node(node, |n, now| {
            while let Some(q) = walk.poll_query(now) {
                let id = n.query(now, q.addr, q.query);
                sent(now, (Family::V4, id), q);
            }
        });
    }

    fn take_answers(
        &mut self,
        node: usize,
        mut answer: impl FnMut(SimRequest, Result<Box<Response>, PingError>),
    ) {
        for (i, ev) in self.take_events() {
            if i != node {
                continue;
            }
            if let Event::Reply { request, result } = ev {
                answer((Family::V4, request), result);
            }
        }
    }
}

impl CrawlNet for DualNet {
    type Walk = DualWalker;

    fn now(&self) -> Instant {
        DualNet::now(self)
    }

    fn run_until(&mut self, until: Instant) {
        DualNet::run_until(self, until);
    }

    /// Each family's table to its walk, with the contacts' ids (for neighbourhood targets),
    /// as the tokio crawler does; the IPv6 table only while the IPv6 DHT is walked.
    fn reseed(&self, node: usize, now: Instant, walk: &mut DualWalker) {
        let n = self.node(node);
        if let Some(n4) = n.v4() {
            walk.add_contacts4(now, n4.contacts());
        }
        if walk.has_ipv6()
            && let Some(n6) = n.v6()
        {
            walk.add_contacts6(now, n6.contacts());
        }
    }

    fn send_ready(
        &mut self,
        node: usize,
        walk: &mut DualWalker,
        mut sent: impl FnMut(Instant, SimRequest, WalkQuery<SocketAddr>),
    ) {
        let now = DualNet::now(self);
        let n = self.node_mut(node);
        while let Some(q) = walk.poll_query(now) {
            match n.query(now, q.addr, q.query) {
                Some(key) => sent(now, key, q),
                // No node of that family (a contact of the other family reached a walk
                // the host cannot serve): refused, as the tokio driver answers it.
                None => walk.on_error(now, q.addr, WalkError::Refused),
            }
        }
        self.touch(node);
    }

    fn take_answers(
        &mut self,
        node: usize,
        mut answer: impl FnMut(SimRequest, Result<Box<Response>, PingError>),
    ) {
        use crate::dht::dual::DualEvent;
        for (i, ev) in self.drain_events() {
            if i != node {
                continue;
            }
            match ev {
                DualEvent::V4(Event::Reply { request, result }) => {
                    answer((Family::V4, request), result);
                }
                DualEvent::V6(Event::Reply { request, result }) => {
                    answer((Family::V6, request), result);
                }
                _ => {}
            }
        }
    }
}

/// The address type of network `N`'s walk.
type AddrOf<N> = <<N as CrawlNet>::Walk as SimWalk>::Addr;

/// A crawler running on a simulated node of network `N`: the IPv4 [`Sim`] (the default)
/// or the dual-stack [`DualNet`] ([`SimDualCrawler`]).
pub struct SimCrawler<N: CrawlNet = Sim> {
    /// The crawler's node index in the network.
    pub node: usize,
    /// The walk it drives: the same scheduler as the tokio crawler's.
    pub walker: N::Walk,
    /// Every infohash found so far.
    pub known: HashSet<InfoHash>,
    /// Every query sent, with its virtual send time (kept when `log_queries`).
    pub log: Vec<(Instant, WalkQuery<AddrOf<N>>)>,
    /// Whether to fill `log` (off by default: it grows with every query).
    pub log_queries: bool,
    /// Queries awaiting an answer. Every query the node sends ends in exactly one answer
    /// or error event, which removes its entry, so this stays bounded by the walk's
    /// `max_in_flight`.
    requests: HashMap<SimRequest, AddrOf<N>>,
    /// The most entries `requests` ever held.
    max_pending: usize,
    samples: Vec<InfoHash>,
    reseed_every: Duration,
    next_reseed: Instant,
    /// Table feeds so far.
    reseeds: u32,
    /// Whether reseeds follow the tokio crawler's start-up pace ([`reseed_pause`]: every
    /// 500 ms while the walk knows no node) rather than a flat `reseed_every`.
    fast_start: bool,
}

/// A crawler on the dual-stack network: both families' walks under one rate limit.
pub type SimDualCrawler = SimCrawler<DualNet>;

impl SimCrawler<Sim> {
    /// Adds the crawler's node to `sim`, bootstrapping from `routers`.
    ///
    /// Its table feeds the walk at join and every 30 s after, with no faster pace while the
    /// table fills (unlike the tokio crawler and [`SimDualCrawler`]): the benchmark numbers
    /// recorded in BENCHMARKS.md were measured so.
    pub fn join(sim: &mut Sim, walk: WalkConfig, routers: &[SocketAddrV4]) -> SimCrawler {
        let node = sim.add_node();
        sim.with_node(node, |n, now| n.bootstrap(now, routers));
        let now = sim.now();
        let mut walker = Walker::new(walk, now);
        walker.exclude(crate::sim::sim_addr(node));
        SimCrawler::with_walker(node, walker, now, false)
    }
}

impl SimCrawler<DualNet> {
    /// Adds the crawler's node to `net` with these addresses (at least one: [`DualNet::add`]
    /// panics otherwise), bootstrapping each family's node from the `routers` of its family.
    /// The IPv6 DHT is walked exactly when the node has an IPv6 address, as the tokio
    /// crawler walks it when its node has an IPv6 socket.
    pub fn join_dual(
        net: &mut DualNet,
        walk: WalkConfig,
        v4: Option<SocketAddrV4>,
        v6: Option<SocketAddrV6>,
        routers: &[SocketAddr],
    ) -> SimDualCrawler {
        let node = net.add(v4, v6);
        let now = net.now();
        net.node_mut(node).bootstrap(now, routers);
        net.touch(node);
        let mut walker = DualWalker::new(walk, now, v6.is_some());
        for a in [v4.map(SocketAddr::V4), v6.map(SocketAddr::V6)]
            .into_iter()
            .flatten()
        {
            walker.exclude(a);
        }
        SimCrawler::with_walker(node, walker, now, true)
    }
}

impl<N: CrawlNet> SimCrawler<N> {
    fn with_walker(node: usize, walker: N::Walk, now: Instant, fast_start: bool) -> Self {
        SimCrawler {
            node,
            walker,
            known: HashSet::new(),
            log: Vec::new(),
            log_queries: false,
            requests: HashMap::new(),
            max_pending: 0,
            samples: Vec::new(),
            reseed_every: Duration::from_secs(30),
            next_reseed: now,
            reseeds: 0,
            fast_start,
        }
    }

    /// Queries awaiting an answer (the walk's own count is `walker.stats().in_flight`).
    pub fn pending(&self) -> usize {
        self.requests.len()
    }

    /// The most queries ever awaiting an answer at once (measured as each is sent, so a
    /// burst answered within one step still counts): the walk's `max_in_flight` bounds it.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Runs the network and the walk until `until` (virtual), or until `stop` says so
    /// (checked after each step).
    pub fn run_until(&mut self, net: &mut N, until: Instant, mut stop: impl FnMut(&Self) -> bool) {
        loop {
            let now = net.now();
            if now >= until || stop(self) {
                break;
            }
            if now >= self.next_reseed {
                net.reseed(self.node, now, &mut self.walker);
                self.reseeds = self.reseeds.saturating_add(1);
                let pause = if self.fast_start {
                    reseed_pause(
                        self.walker.stats().nodes_known,
                        self.reseeds,
                        self.reseed_every,
                    )
                } else {
                    self.reseed_every
                };
                self.next_reseed = now + pause;
            }
            let (requests, max_pending, log, log_on) = (
                &mut self.requests,
                &mut self.max_pending,
                &mut self.log,
                self.log_queries,
            );
            net.send_ready(self.node, &mut self.walker, |at, key, q| {
                requests.insert(key, q.addr);
                *max_pending = (*max_pending).max(requests.len());
                if log_on {
                    log.push((at, q));
                }
            });
            self.drain(net);
            let wake = self
                .walker
                .poll_timeout(now)
                .unwrap_or(until)
                .min(until)
                .min(self.next_reseed)
                .min(now + STEP)
                .max(now + Duration::from_millis(1));
            net.run_until(wake);
            self.drain(net);
        }
    }

    /// Runs the network for `d` without sending new queries, handing every answer that
    /// arrives to the walk: run past the node's query timeout, it lets every query in
    /// flight end, so a test can check that none is left outstanding.
    pub fn settle(&mut self, net: &mut N, d: Duration) {
        let until = net.now() + d;
        while net.now() < until {
            let wake = (net.now() + STEP).min(until);
            net.run_until(wake);
            self.drain(net);
        }
    }

    fn drain(&mut self, net: &mut N) {
        let now = net.now();
        let (walker, requests, known, samples) = (
            &mut self.walker,
            &mut self.requests,
            &mut self.known,
            &mut self.samples,
        );
        net.take_answers(self.node, |key, result| {
            let Some(addr) = requests.remove(&key) else {
                return;
            };
            match result {
                Ok(r) => {
                    walker.on_reply(now, addr, &r, |ih| !known.contains(ih), samples);
                    known.extend(samples.iter().copied());
                }
                Err(e) => walker.on_error(now, addr, WalkError::from(e)),
            }
        });
    }
}
