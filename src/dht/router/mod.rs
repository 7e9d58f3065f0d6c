//! Bootstrap-router mode (`dht-node --router`): the entry point new nodes ask first.
//!
//! A router keeps no Kademlia table and no peers. It answers `find_node`, `get_peers` (nodes
//! only) and `ping` from a large ring of *verified* contacts, handing out 8–16 per reply and
//! rotating through the ring so the load spreads across the network. Every querier is queued
//! for a verification ping some minutes later; the ping's transaction id is a keyed hash of
//! the querier's address (a SYN-cookie), so no per-ping state is kept and only a node that
//! really answers from that address, with a BEP 42-valid id, gets into the ring.
//!
//! **Both families (BEP 32).** The IPv4 DHT and the IPv6 DHT are separate networks, so the
//! router keeps one ring per family, each with its own verification queue, filters and rate
//! limiter, and one code path generic over [`NodeAddr`] serves both. A query is answered
//! from the ring of the family it arrived over (`nodes` over IPv4, `nodes6` over IPv6)
//! unless its `want` names families, in which case it gets exactly those. A newcomer is
//! verified over its own family, so an IPv6 contact is only ever handed out after it
//! answered a cookie over IPv6. With IPv6 on ([`RouterConfig::ipv6`]) the verification
//! queries carry `want = [n4, n6]`, so the other family's contacts in the replies are queued
//! for verification too and an IPv4 seed fills the IPv6 ring as well.
//!
//! Like [`crate::dht::node::Node`] this is sans-IO; [`io`] drives it with batched syscalls.

pub mod io;
pub mod store;

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::dht::allow::AllowList;
use crate::dht::bep42;
use crate::dht::gate::{self, Dropped, Gated};
use crate::dht::id::{Contact, Family, NodeAddr, NodeId};
use crate::dht::krpc::{self, Body, ERR_GENERIC, Method, QueryArgs, ResponseBody, Want};
use crate::dht::limits::{self, ByteQuota, RateLimit, RateLimiter};
use crate::dht::node::{MethodCounts, VERSION};
use crate::dht::outbox::{Emitted, Outbox, Transmit};
use store::{NodeRing, NodeRing6, RecentSet, RingSnapshot, Rings, host_key};

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Verified IPv4 contacts kept (the size of the IPv4 ring).
    pub capacity: usize,
    /// Verified IPv6 contacts kept (the size of the IPv6 ring): on its own because a
    /// router's IPv6 traffic is a fraction of its IPv4 traffic, and an IPv6 contact costs
    /// 1.4 times the memory (BENCHMARKS.md, router memory per contact).
    pub capacity6: usize,
    /// How long after its query a new node is pinged. Minutes, like bootstrap-dht: a node
    /// that is still there after that is worth handing out.
    pub verify_delay: Duration,
    /// Queriers waiting for their verification ping, at most, per family.
    pub max_pending: usize,
    /// Verification pings sent per timer tick and family, at most (no bursts).
    pub verify_burst: usize,
    /// Contacts per reply to a first-time requester (per family asked for).
    pub contacts_new: usize,
    /// Contacts per reply to a recent requester (it already had a first batch): fewer, so a
    /// node that keeps asking does not drain the ring.
    pub contacts_repeat: usize,
    /// Admit only ids valid for their IP under BEP 42 (exempt addresses pass).
    pub require_valid_id: bool,
    /// Serve the IPv6 DHT too: answer IPv6 queries and verify IPv6 contacts. The driver
    /// turns it off when it has no IPv6 socket, so nothing is queued that could never be
    /// verified (IPv6 datagrams are then dropped, and verification queries carry no
    /// `want`).
    pub ipv6: bool,
    /// Outbound allow-list, enforced on every datagram (replies and verification queries).
    pub allow: AllowList,
    /// Per-IP packet rate limit with temporary bans; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Bytes per second of replies and errors at most, both families together (an
    /// amplification cap on one uplink); `None` = unlimited.
    pub reply_quota: Option<u64>,
    /// Our id; random when `None`.
    pub id: Option<NodeId>,
    /// Seed for the random number generator (our id, verification targets); `None` = OS
    /// entropy. The cookie key is random either way.
    pub seed: Option<u64>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            capacity: 1_000_000,
            capacity6: 1_000_000,
            verify_delay: Duration::from_secs(15 * 60),
            max_pending: 1_000_000,
            verify_burst: 256,
            contacts_new: 16,
            contacts_repeat: 8,
            require_valid_id: true,
            ipv6: true,
            allow: AllowList::any(),
            rate_limit: Some(RateLimit::default()),
            reply_quota: None,
            id: None,
            seed: None,
        }
    }
}

/// Router counters and gauges (both families together unless a field says otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Queries received and decoded, by method (those claiming our own id excepted).
    pub queries_by_method: MethodCounts,
    /// Replies sent to queries.
    pub replies_out: u64,
    /// KRPC errors sent: to queries the decoder refused (203 or 204; 205 or 207 for a BEP 44
    /// `put`) and to announce_peer and `put`, which a router does not store (201).
    pub errors_out: u64,
    /// Verification queries sent: a `find_node` for a random target, whose reply must echo
    /// the SYN cookie in its transaction id (the counter keeps its historical name).
    pub pings_out: u64,
    /// Replies whose cookie matched and whose node was admitted.
    pub admitted: u64,
    /// Cookie matched but the id is not valid for the IP (BEP 42).
    pub rejected_invalid_id: u64,
    /// Cookie matched but the host (an IPv4 address, an IPv6 `/64`) already has an entry.
    pub duplicate_ip: u64,
    /// Replies that matched no cookie.
    pub bad_cookie: u64,
    /// Undecodable datagrams.
    pub dropped_malformed: u64,
    /// Datagrams from IPs over the rate limit (or banned for having been).
    pub dropped_rate_limited: u64,
    /// Replies and errors not sent because of the reply quota.
    pub dropped_quota: u64,
    /// Datagrams not sent because the allow-list refused the destination.
    pub dropped_not_allowed: u64,
    /// Other datagrams dropped: unusable sources (port 0, bogon, IPv6 with
    /// [`RouterConfig::ipv6`] off), messages carrying our own id, KRPC errors received, and
    /// datagrams the driver could not read.
    pub dropped_other: u64,
    /// Queriers not queued because the queue was full.
    pub queue_full: u64,
    /// Datagrams received, every one (dropped and unreadable ones included).
    pub packets_in: u64,
    /// Datagrams queued for sending (past the allow-list and, for replies, the quota).
    pub packets_out: u64,
    /// UDP payload bytes of the datagrams received (unreadable ones not counted).
    pub bytes_in: u64,
    /// UDP payload bytes of [`RouterStats::packets_out`].
    pub bytes_out: u64,
    /// Gauge: verified contacts in the rings, both families.
    pub stored: usize,
    /// Gauge: verified contacts in the IPv6 ring (included in [`RouterStats::stored`]).
    pub stored6: usize,
    /// Gauge: queriers waiting for their verification query, both families.
    pub pending: usize,
    /// Gauge: IPv6 queriers waiting (included in [`RouterStats::pending`]).
    pub pending6: usize,
    /// Gauge: IPs currently banned by the rate limiters.
    pub banned_ips: usize,
    /// Gauge: bytes held by the rings and the recent-host filters.
    pub memory_bytes: usize,
}

/// One family's share of the router: its ring, its verification queue, its filters, its
/// rate limiter (keyed by its own kind of IP) and its outgoing datagrams.
struct Half<A: NodeAddr> {
    ring: NodeRing<A>,
    pending: VecDeque<(Instant, A)>,
    /// Hosts queued recently, so one busy node is queued once.
    queued: RecentSet,
    /// Recent requesters, who get fewer contacts.
    requesters: RecentSet,
    limiter: Option<RateLimiter<A::Ip>>,
    outbox: Outbox<A>,
}

impl<A: NodeAddr> Half<A> {
    fn new(config: &RouterConfig, ring: NodeRing<A>) -> Self {
        Half {
            ring,
            pending: VecDeque::new(),
            queued: RecentSet::new(config.max_pending.clamp(1024, 1 << 22)),
            requesters: RecentSet::new(100_000),
            limiter: config.rate_limit.map(RateLimiter::new),
            outbox: Outbox::default(),
        }
    }

    fn memory(&self) -> usize {
        self.ring.memory() + self.queued.memory() + self.requesters.memory()
    }

    fn banned(&self, now: Instant) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.banned(now))
    }
}

/// Both halves.
struct Halves {
    v4: Half<SocketAddrV4>,
    v6: Half<SocketAddrV6>,
}

/// An address family the router serves: the type-to-field map that lets one generic code
/// path pick its family's [`Half`].
trait Side: NodeAddr {
    fn half(h: &mut Halves) -> &mut Half<Self>;
    fn half_ref(h: &Halves) -> &Half<Self>;
}

impl Side for SocketAddrV4 {
    fn half(h: &mut Halves) -> &mut Half<Self> {
        &mut h.v4
    }
    fn half_ref(h: &Halves) -> &Half<Self> {
        &h.v4
    }
}

impl Side for SocketAddrV6 {
    fn half(h: &mut Halves) -> &mut Half<Self> {
        &mut h.v6
    }
    fn half_ref(h: &Halves) -> &Half<Self> {
        &h.v6
    }
}

/// The router core.
pub struct Router {
    id: NodeId,
    config: RouterConfig,
    halves: Halves,
    cookie_key: RandomState,
    quota: Option<ByteQuota>,
    stats: RouterStats,
    nodes_scratch: Vec<u8>,
    nodes6_scratch: Vec<u8>,
    next_sweep: Instant,
    rng: StdRng,
}

/// Cookie transaction ids are 4 bytes.
const COOKIE_LEN: usize = 4;

/// Contacts taken from a verified reply's node lists (per list) to verify in turn.
const FOLLOW_PER_REPLY: usize = 16;

impl Router {
    /// A router serving the contacts of `rings` (empty, or loaded from a saved store).
    pub fn new(config: RouterConfig, rings: Rings, now: Instant) -> Self {
        let mut rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => rand::make_rng(),
        };
        let id = config.id.unwrap_or_else(|| NodeId::random(&mut rng));
        Router {
            id,
            halves: Halves {
                v4: Half::new(&config, rings.v4),
                v6: Half::new(&config, rings.v6),
            },
            cookie_key: RandomState::new(),
            quota: config.reply_quota.map(|q| ByteQuota::new(q, now)),
            stats: RouterStats::default(),
            nodes_scratch: Vec::with_capacity(16 * SocketAddrV4::NODE_LEN),
            nodes6_scratch: Vec::with_capacity(16 * SocketAddrV6::NODE_LEN),
            next_sweep: now + Duration::from_secs(60),
            rng,
            config,
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The verified IPv4 contacts handed out.
    pub fn ring(&self) -> &NodeRing {
        &self.halves.v4.ring
    }

    /// The verified IPv6 contacts handed out.
    pub fn ring6(&self) -> &NodeRing6 {
        &self.halves.v6.ring
    }

    /// A copy of both rings for saving ([`RingSnapshot::save`]).
    pub fn snapshot(&self) -> RingSnapshot {
        RingSnapshot::of(&self.halves.v4.ring, &self.halves.v6.ring)
    }

    /// Counters plus current gauges.
    pub fn stats(&self, now: Instant) -> RouterStats {
        let (v4, v6) = (&self.halves.v4, &self.halves.v6);
        RouterStats {
            stored: v4.ring.len() + v6.ring.len(),
            stored6: v6.ring.len(),
            pending: v4.pending.len() + v6.pending.len(),
            pending6: v6.pending.len(),
            banned_ips: v4.banned(now) + v6.banned(now),
            memory_bytes: v4.memory() + v6.memory(),
            ..self.stats.clone()
        }
    }

    /// The verification cookie for `addr`: what we put in the ping's `t` and expect back.
    /// The family is part of what is hashed (an [`std::net::IpAddr`]), so a cookie sent
    /// over one family is no good over the other.
    fn cookie<A: NodeAddr>(&self, addr: A) -> [u8; COOKIE_LEN] {
        let h = self
            .cookie_key
            .hash_one((addr.ip_addr(), addr.port_number()));
        (h as u32).to_be_bytes()
    }

    /// The next datagram to send, of either family (IPv4 first). The payload borrows the
    /// router until the next call.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        if !self.halves.v4.outbox.is_empty() {
            return self.halves.v4.outbox.poll();
        }
        self.halves.v6.outbox.poll()
    }

    /// The next IPv6 datagram to send (for the driver's IPv6 socket).
    pub fn poll_transmit6(&mut self) -> Option<Transmit<'_>> {
        self.halves.v6.outbox.poll()
    }

    /// Hands every queued IPv4 datagram to `f` (for batched sends on the IPv4 socket).
    pub fn drain_transmits(&mut self, f: impl FnMut(SocketAddrV4, &[u8])) {
        self.halves.v4.outbox.drain_all(f);
    }

    /// Hands every queued IPv6 datagram to `f` (for batched sends on the IPv6 socket).
    pub fn drain_transmits6(&mut self, f: impl FnMut(SocketAddrV6, &[u8])) {
        self.halves.v6.outbox.drain_all(f);
    }

    /// Whether datagrams of either family are waiting.
    pub fn has_transmit(&self) -> bool {
        !self.halves.v4.outbox.is_empty() || !self.halves.v6.outbox.is_empty()
    }

    /// When the next verification ping or sweep is due.
    pub fn poll_timeout(&self) -> Instant {
        [
            self.halves.v4.pending.front().map(|(t, _)| *t),
            self.halves.v6.pending.front().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_sweep, Instant::min)
    }

    fn emit<A: Side>(
        &mut self,
        now: Instant,
        to: A,
        reply: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let quota = if reply { self.quota.as_mut() } else { None };
        let outbox = &mut A::half(&mut self.halves).outbox;
        match outbox.emit(&self.config.allow, quota, now, to, encode) {
            Emitted::Queued(len) => {
                self.stats.packets_out += 1;
                self.stats.bytes_out += len as u64;
                true
            }
            Emitted::NotAllowed => {
                self.stats.dropped_not_allowed += 1;
                false
            }
            Emitted::OverQuota => {
                self.stats.dropped_quota += 1;
                false
            }
        }
    }

    /// Handles one received datagram, of either family (an IPv4-mapped IPv6 source is
    /// IPv4, as a dual-stack socket reports it).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        match Family::of(from) {
            Family::V4 => self.handle_from::<SocketAddrV4>(now, from, data),
            Family::V6 if self.config.ipv6 => self.handle_from::<SocketAddrV6>(now, from, data),
            Family::V6 => self.stats.dropped_other += 1,
        }
    }

    fn handle_from<A: Side>(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let limiter = A::half(&mut self.halves).limiter.as_mut();
        let (from, msg) = match gate::admit::<A>(now, from, data, limiter) {
            Gated::Message(from, msg) => (from, msg),
            Gated::BadQuery {
                from,
                tid,
                code,
                reason,
            } => {
                if self.emit(now, from, true, |out| {
                    krpc::encode_error(
                        out,
                        tid.as_slice(),
                        code,
                        reason,
                        Some(from.into()),
                        Some(VERSION),
                    )
                }) {
                    self.stats.errors_out += 1;
                }
                return;
            }
            Gated::Dropped(Dropped::Source) => {
                self.stats.dropped_other += 1;
                return;
            }
            Gated::Dropped(Dropped::RateLimited) => {
                self.stats.dropped_rate_limited += 1;
                return;
            }
            Gated::Dropped(Dropped::Malformed) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        match msg.body {
            Body::Query(q) => {
                if q.id == self.id {
                    self.stats.dropped_other += 1;
                    return;
                }
                self.answer(now, from, msg.tid.as_slice(), &q.method, q.want);
                if !msg.read_only {
                    self.enqueue(now, from);
                }
            }
            Body::Response(r) => self.verify_reply(now, from, msg.tid.as_slice(), &r),
            Body::Error(_) => self.stats.dropped_other += 1,
        }
    }

    /// Answers a query from `from`: nodes of the families `want` names, or of the family
    /// the query came over when it names none (BEP 32).
    fn answer<A: Side>(&mut self, now: Instant, from: A, tid: &[u8], method: &Method, want: Want) {
        self.stats.queries_by_method.count(method);
        let id = self.id;
        if let Method::AnnouncePeer { .. } | Method::Put(_) = method {
            // No peer or item storage here: say so rather than pretend. (A BEP 44 `get` is
            // answered below like `find_node`: nodes, no value and no token.)
            if self.emit(now, from, true, |out| {
                krpc::encode_error(
                    out,
                    tid,
                    ERR_GENERIC,
                    "this is a bootstrap router: it stores no peers or items, use DHT nodes",
                    Some(from.into()),
                    Some(VERSION),
                )
            }) {
                self.stats.errors_out += 1;
            }
            return;
        }
        let mut nodes = std::mem::take(&mut self.nodes_scratch);
        let mut nodes6 = std::mem::take(&mut self.nodes6_scratch);
        nodes.clear();
        nodes6.clear();
        let mut body = ResponseBody::id_only(&id);
        if !matches!(method, Method::Ping) {
            let key = host_key(from.ip_addr());
            let half = A::half(&mut self.halves);
            let n = if half.requesters.contains(key) {
                self.config.contacts_repeat
            } else {
                half.requesters.insert(key);
                self.config.contacts_new
            };
            // The requester is left out of its own family's list only: its key means
            // nothing in the other ring.
            let own = |f: Family| (f == A::FAMILY).then_some(key);
            let want = want.resolve(A::FAMILY);
            if want.n4 {
                self.halves.v4.ring.take(n, own(Family::V4), &mut nodes);
                body.nodes = Some(&nodes);
            }
            if want.n6 {
                self.halves.v6.ring.take(n, own(Family::V6), &mut nodes6);
                body.nodes6 = Some(&nodes6);
            }
            if let Method::SampleInfohashes { .. } = method {
                body.samples = Some(&[]);
                body.num = Some(0);
                body.interval = Some(6 * 3600);
            }
        }
        let quota = self.quota.as_mut();
        let outbox = &mut A::half(&mut self.halves).outbox;
        match outbox.emit(&self.config.allow, quota, now, from, |out| {
            krpc::encode_response(out, tid, &body, Some(from.into()), Some(VERSION))
        }) {
            Emitted::Queued(len) => {
                self.stats.packets_out += 1;
                self.stats.bytes_out += len as u64;
                self.stats.replies_out += 1;
            }
            Emitted::NotAllowed => self.stats.dropped_not_allowed += 1,
            Emitted::OverQuota => self.stats.dropped_quota += 1,
        }
        self.nodes_scratch = nodes;
        self.nodes6_scratch = nodes6;
    }

    /// Queues a querier for a verification query after `verify_delay`, unless it is known
    /// or already queued.
    fn enqueue<A: Side>(&mut self, now: Instant, from: A) {
        self.enqueue_at(now + self.config.verify_delay, from);
    }

    fn enqueue_at<A: Side>(&mut self, due: Instant, addr: A) {
        let key = host_key(addr.ip_addr());
        let max = self.config.max_pending;
        let half = A::half(&mut self.halves);
        if addr.port_number() == 0
            || half.ring.has_host(addr.ip_addr())
            || half.queued.contains(key)
        {
            return;
        }
        if half.pending.len() >= max {
            self.stats.queue_full += 1;
            return;
        }
        half.queued.insert(key);
        // Due times only grow when the delay is constant; an immediate one goes first.
        if half.pending.back().is_some_and(|(t, _)| *t > due) {
            half.pending.push_front((due, addr));
        } else {
            half.pending.push_back((due, addr));
        }
    }

    /// Seeds the store from known routers or nodes of either family: they are queried at
    /// once, and every verified reply's nodes are queried in turn, so an empty router fills
    /// itself. IPv6 seeds are skipped with [`RouterConfig::ipv6`] off.
    pub fn seed(&mut self, now: Instant, addrs: &[SocketAddr]) {
        for &a in addrs {
            if let Some(a4) = SocketAddrV4::from_socket(a) {
                self.enqueue_at(now, a4);
            } else if let Some(a6) = SocketAddrV6::from_socket(a)
                && self.config.ipv6
            {
                self.enqueue_at(now, a6);
            }
        }
    }

    /// A reply: admitted only if its transaction id is the cookie for its source address.
    /// Its nodes are queued for verification too (that is how the store grows from a seed):
    /// its own family's and, with IPv6 on, the other family's (each verified over its own
    /// family before it is handed out).
    fn verify_reply<A: Side>(&mut self, now: Instant, from: A, tid: &[u8], r: &krpc::Response) {
        if tid != self.cookie(from) {
            self.stats.bad_cookie += 1;
            return;
        }
        if r.id == self.id {
            self.stats.dropped_other += 1;
            return;
        }
        self.follow::<A>(now, r);
        if self.config.ipv6 {
            match A::FAMILY {
                Family::V4 => self.follow::<SocketAddrV6>(now, r),
                Family::V6 => self.follow::<SocketAddrV4>(now, r),
            }
        }
        if self.config.require_valid_id && !bep42::is_valid(&r.id, from.ip_addr()) {
            self.stats.rejected_invalid_id += 1;
            return;
        }
        if A::half(&mut self.halves)
            .ring
            .insert(&Contact::new(r.id, from))
        {
            self.stats.admitted += 1;
        } else {
            self.stats.duplicate_ip += 1;
        }
    }

    /// Queues the family-`B` contacts of a verified reply for verification, while `B`'s
    /// ring has room.
    fn follow<B: Side>(&mut self, now: Instant, r: &krpc::Response) {
        let ring = &B::half_ref(&self.halves).ring;
        if ring.len() >= ring.capacity() {
            return;
        }
        for c in r.nodes_of::<B>().take(FOLLOW_PER_REPLY) {
            if self.config.allow.allows(c.addr.into()) && !limits::is_bogon(c.addr.ip_addr()) {
                self.enqueue_at(now, c.addr);
            }
        }
    }

    /// Counts a datagram the driver could not read (truncated, or of no family it serves).
    pub fn note_unreadable(&mut self) {
        self.stats.packets_in += 1;
        self.stats.dropped_other += 1;
    }

    /// Sends due verification queries (paced, per family) and sweeps the rate limiters.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.verify_due::<SocketAddrV4>(now);
        self.verify_due::<SocketAddrV6>(now);
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(60);
            if let Some(l) = &mut self.halves.v4.limiter {
                l.sweep(now);
            }
            if let Some(l) = &mut self.halves.v6.limiter {
                l.sweep(now);
            }
        }
    }

    fn verify_due<A: Side>(&mut self, now: Instant) {
        let want = if self.config.ipv6 {
            Want::BOTH
        } else {
            Want::NONE
        };
        let mut sent = 0;
        while sent < self.config.verify_burst {
            let half = A::half(&mut self.halves);
            match half.pending.front() {
                Some(&(due, addr)) if due <= now => {
                    half.pending.pop_front();
                    if half.ring.has_host(addr.ip_addr()) {
                        continue;
                    }
                    let tid = self.cookie(addr);
                    let id = self.id;
                    // find_node (for a random target, so answers differ) rather than ping:
                    // the answer also brings candidates, of both families when asked.
                    let target = NodeId::random(&mut self.rng);
                    if self.emit(now, addr, false, |out| {
                        let args = QueryArgs::FindNode { target: &target };
                        krpc::encode_query_want(out, &tid, &id, &args, want, false, Some(VERSION))
                    }) {
                        self.stats.pings_out += 1;
                    }
                    sent += 1;
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::id::InfoHash;
    use crate::dht::router::store::{contacts_of, contacts6_of};

    fn router(cfg: RouterConfig) -> (Router, Instant) {
        let now = Instant::now();
        let cfg = RouterConfig {
            allow: test_allow(),
            ..cfg
        };
        // A ring far bigger than any test fills: its one-entry-per-IP check is a Bloom filter
        // sized for the ring (about 1 % false positives when full), and at 100 slots a few
        // dozen entries made a new IP look present about once in 300 runs, so it was never
        // verified and `replies_rotate_and_repeat_requesters_get_fewer` failed at random.
        (Router::new(cfg, Rings::new(100_000, 100_000), now), now)
    }

    /// Loopback of both families and the fd77::/16 test addresses: nothing else is ever
    /// queued for sending.
    fn test_allow() -> AllowList {
        AllowList::only(
            ["127.0.0.0/8", "::1/128", "fd77::/16"]
                .iter()
                .map(|n| n.parse().unwrap())
                .collect(),
        )
    }

    fn query(method: QueryArgs<'_>, id: NodeId, ro: bool) -> Vec<u8> {
        let mut out = Vec::new();
        krpc::encode_query(&mut out, b"qq", &id, &method, ro, None);
        out
    }

    /// Runs a query from `from`, then lets the verification ping happen and has the querier
    /// answer it with `reply_id` (and, if `tamper`, a wrong transaction id).
    fn verify<A: NodeAddr>(
        r: &mut Router,
        now: &mut Instant,
        from: A,
        reply_id: NodeId,
        tamper: bool,
    ) {
        r.handle_datagram(*now, from.into(), &query(QueryArgs::Ping, reply_id, false));
        while r.poll_transmit().is_some() {}
        *now += r.config.verify_delay;
        r.handle_timeout(*now);
        let ping = r.poll_transmit().expect("verification query");
        assert_eq!(ping.to, from.into(), "verified over its own family");
        let m = krpc::decode(ping.payload).unwrap();
        let mut tid = m.tid.as_slice().to_vec();
        if tamper {
            tid[0] ^= 1;
        }
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            &tid,
            &ResponseBody::id_only(&reply_id),
            None,
            None,
        );
        r.handle_datagram(*now, from.into(), &reply);
    }

    #[test]
    fn cookie_admits_only_the_real_responder() {
        let (mut r, mut now) = router(RouterConfig::default());
        let a: SocketAddrV4 = "127.80.0.1:6881".parse().unwrap();
        verify(&mut r, &mut now, a, NodeId([1; 20]), true);
        assert_eq!(r.ring().len(), 0);
        assert_eq!(r.stats(now).bad_cookie, 1);
        // A reply from another address with a cookie meant for `a` fails too.
        let b: SocketAddrV4 = "127.80.0.2:6881".parse().unwrap();
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            &r.cookie(a),
            &ResponseBody::id_only(&NodeId([2; 20])),
            None,
            None,
        );
        r.handle_datagram(now, SocketAddr::V4(b), &reply);
        assert_eq!(r.ring().len(), 0);
        // The genuine exchange is admitted.
        let c: SocketAddrV4 = "127.80.0.3:6881".parse().unwrap();
        verify(&mut r, &mut now, c, NodeId([3; 20]), false);
        assert_eq!(
            r.ring().iter().collect::<Vec<_>>(),
            vec![Contact::new(NodeId([3; 20]), c)]
        );
        assert_eq!(r.stats(now).admitted, 1);
    }

    #[test]
    fn read_only_queriers_are_served_but_never_queued() {
        let (mut r, now) = router(RouterConfig::default());
        let a: SocketAddrV4 = "127.80.1.1:6881".parse().unwrap();
        r.handle_datagram(
            now,
            SocketAddr::V4(a),
            &query(
                QueryArgs::FindNode {
                    target: &NodeId([0; 20]),
                },
                NodeId([1; 20]),
                true,
            ),
        );
        let reply = r.poll_transmit().expect("answered");
        assert!(matches!(
            krpc::decode(reply.payload).unwrap().body,
            Body::Response(_)
        ));
        assert_eq!(r.stats(now).pending, 0);
    }

    /// The router's input gate is the node's ([`crate::dht::gate`]): a query from an
    /// IPv4-mapped IPv6 source (what a dual-stack socket reports) is answered at its IPv4
    /// address, as the node does; the router's own copy of the gate used to drop it.
    #[test]
    fn an_ipv4_mapped_querier_is_answered_like_the_node_answers_it() {
        let (mut r, now) = router(RouterConfig::default());
        let a: SocketAddrV4 = "127.80.2.1:6881".parse().unwrap();
        let mapped = SocketAddr::V6(std::net::SocketAddrV6::new(
            a.ip().to_ipv6_mapped(),
            a.port(),
            0,
            0,
        ));
        let q = query(
            QueryArgs::FindNode {
                target: &NodeId([0; 20]),
            },
            NodeId([1; 20]),
            false,
        );
        r.handle_datagram(now, mapped, &q);
        let reply = r.poll_transmit().expect("answered");
        assert_eq!(reply.to, SocketAddr::V4(a));
        assert_eq!(r.stats(now).dropped_other, 0);
    }

    #[test]
    fn invalid_bep42_ids_are_not_admitted() {
        let (mut r, mut now) = router(RouterConfig::default());
        // Loopback is exempt, so test the rule directly with the core's check: a public
        // address never reaches the network here (allow-list is loopback, nothing is sent).
        let public: SocketAddrV4 = "203.0.113.9:6881".parse().unwrap();
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            &r.cookie(public),
            &ResponseBody::id_only(&NodeId([9; 20])),
            None,
            None,
        );
        r.handle_datagram(now, SocketAddr::V4(public), &reply);
        assert_eq!(r.stats(now).rejected_invalid_id, 1);
        let good = bep42::id_for_ip(*public.ip(), &mut rand::rng());
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            &r.cookie(public),
            &ResponseBody::id_only(&good),
            None,
            None,
        );
        r.handle_datagram(now, SocketAddr::V4(public), &reply);
        assert_eq!(r.stats(now).admitted, 1);
        now += Duration::from_secs(1);
        assert_eq!(r.stats(now).stored, 1);
    }

    #[test]
    fn replies_rotate_and_repeat_requesters_get_fewer() {
        let (mut r, mut now) = router(RouterConfig {
            verify_delay: Duration::from_secs(1),
            ..Default::default()
        });
        for i in 1..=40u8 {
            let a = SocketAddrV4::new([127, 81, 0, i].into(), 6881);
            verify(&mut r, &mut now, a, NodeId([i; 20]), false);
        }
        assert_eq!(r.ring().len(), 40);
        let asker: SocketAddrV4 = "127.82.0.1:7000".parse().unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            r.handle_datagram(
                now,
                SocketAddr::V4(asker),
                &query(
                    QueryArgs::GetPeers {
                        info_hash: &InfoHash([0; 20]),
                        scrape: false,
                        noseed: false,
                    },
                    NodeId([0xaa; 20]),
                    false,
                ),
            );
            let t = r.poll_transmit().unwrap();
            let Body::Response(resp) = krpc::decode(t.payload).unwrap().body else {
                panic!()
            };
            assert!(resp.token.is_none(), "no token: a router stores nothing");
            got.push(resp.nodes().collect::<Vec<_>>());
            while r.poll_transmit().is_some() {}
        }
        assert_eq!(got[0].len(), 16);
        assert_eq!(got[1].len(), 8, "repeat requester");
        assert!(
            got[1].iter().all(|c| !got[0].contains(c)),
            "rotation hands out other nodes"
        );
    }

    #[test]
    fn seeding_follows_nodes_in_verified_replies() {
        let (mut r, now) = router(RouterConfig::default());
        let seed: SocketAddrV4 = "127.84.0.1:6881".parse().unwrap();
        r.seed(now, &[seed.into()]);
        r.handle_timeout(now);
        let q = krpc::decode(r.poll_transmit().unwrap().payload).unwrap();
        let mut nodes = Vec::new();
        for i in 2..=4u8 {
            Contact::new(
                NodeId([i; 20]),
                SocketAddrV4::new([127, 84, 0, i].into(), 6881),
            )
            .write_compact(&mut nodes);
        }
        let body = ResponseBody {
            nodes: Some(&nodes),
            ..ResponseBody::id_only(&NodeId([1; 20]))
        };
        let mut reply = Vec::new();
        krpc::encode_response(&mut reply, q.tid.as_slice(), &body, None, None);
        r.handle_datagram(now, SocketAddr::V4(seed), &reply);
        assert_eq!(r.ring().len(), 1);
        r.handle_timeout(now);
        let mut asked = Vec::new();
        while let Some(t) = r.poll_transmit() {
            asked.push(t.to);
        }
        assert_eq!(
            asked.len(),
            3,
            "the seed's nodes are verified next: {asked:?}"
        );
    }

    #[test]
    fn announce_is_refused_and_flooders_are_banned() {
        let (mut r, now) = router(RouterConfig {
            rate_limit: Some(RateLimit {
                packets: 5,
                ..Default::default()
            }),
            ..Default::default()
        });
        let a: SocketAddrV4 = "127.83.0.1:6881".parse().unwrap();
        let ih = InfoHash([5; 20]);
        let ann = query(
            QueryArgs::AnnouncePeer {
                info_hash: &ih,
                port: 1,
                implied_port: false,
                token: b"x",
                seed: false,
            },
            NodeId([1; 20]),
            false,
        );
        r.handle_datagram(now, SocketAddr::V4(a), &ann);
        let m = krpc::decode(r.poll_transmit().unwrap().payload).unwrap();
        assert!(
            matches!(m.body, Body::Error(e) if e.code == 201 && e.message.contains("stores no peers"))
        );
        for _ in 0..10 {
            r.handle_datagram(
                now,
                SocketAddr::V4(a),
                &query(QueryArgs::Ping, NodeId([1; 20]), false),
            );
        }
        let st = r.stats(now);
        assert_eq!(st.dropped_rate_limited, 6);
        assert_eq!(st.banned_ips, 1);
    }

    /// BEP 44: a router stores nothing, so `put` is refused like `announce_peer`, and `get`
    /// is answered like `find_node` (nodes only: no value, no token).
    #[test]
    fn bep44_put_is_refused_and_get_gets_nodes() {
        let (mut r, now) = router(RouterConfig::default());
        let a: SocketAddrV4 = "127.83.0.2:6881".parse().unwrap();
        let target = NodeId([6; 20]);
        let put = query(
            QueryArgs::Put {
                token: b"x",
                v: b"1:x",
                mutable: None,
            },
            NodeId([2; 20]),
            false,
        );
        r.handle_datagram(now, SocketAddr::V4(a), &put);
        let m = krpc::decode(r.poll_transmit().unwrap().payload).unwrap();
        assert!(matches!(m.body, Body::Error(e) if e.code == 201));
        let get = query(
            QueryArgs::Get {
                target: &target,
                seq: None,
            },
            NodeId([2; 20]),
            false,
        );
        r.handle_datagram(now, SocketAddr::V4(a), &get);
        let m = krpc::decode(r.poll_transmit().unwrap().payload).unwrap();
        let Body::Response(resp) = m.body else {
            panic!("get not answered: {m:?}");
        };
        assert!(resp.nodes.is_some());
        assert!(resp.token.is_none());
    }

    /// An IPv6 host in its own `/64` (fd77:0:g:i::1), so each is a distinct host.
    fn v6(g: u16, i: u16) -> SocketAddrV6 {
        SocketAddrV6::new(
            std::net::Ipv6Addr::new(0xfd77, 0, g, i, 0, 0, 0, 1),
            6881,
            0,
            0,
        )
    }

    /// A router allowed to talk to loopback and fd77::/16, with `n` verified contacts in
    /// each ring (IPv4 127.81.0.i, IPv6 fd77:0:1:i::1).
    fn dual_router(n: u8) -> (Router, Instant) {
        let now = Instant::now();
        let cfg = RouterConfig {
            allow: test_allow(),
            verify_delay: Duration::from_secs(1),
            ..RouterConfig::default()
        };
        let mut r = Router::new(cfg, Rings::new(100_000, 100_000), now);
        let mut now = now;
        for i in 1..=n {
            let a = SocketAddrV4::new([127, 81, 0, i].into(), 6881);
            verify(&mut r, &mut now, a, NodeId([i; 20]), false);
            verify(
                &mut r,
                &mut now,
                v6(1, i.into()),
                NodeId([0x80 | i; 20]),
                false,
            );
        }
        assert_eq!((r.ring().len(), r.ring6().len()), (n.into(), n.into()));
        (r, now)
    }

    /// Sends `find_node` with `want` from `from` and returns the reply's address and its
    /// `nodes` and `nodes6` (decoded).
    fn ask(
        r: &mut Router,
        now: Instant,
        from: SocketAddr,
        want: Want,
    ) -> (
        SocketAddr,
        Option<Vec<SocketAddrV4>>,
        Option<Vec<SocketAddrV6>>,
    ) {
        let mut q = Vec::new();
        let target = NodeId([0; 20]);
        let args = QueryArgs::FindNode { target: &target };
        krpc::encode_query_want(&mut q, b"qq", &NodeId([0xee; 20]), &args, want, false, None);
        r.handle_datagram(now, from, &q);
        let t = r.poll_transmit().expect("answered");
        let to = t.to;
        let m = krpc::decode(t.payload).unwrap();
        let Body::Response(resp) = m.body else {
            panic!("not a reply: {m:?}")
        };
        assert_eq!(
            m.ip,
            Some(from),
            "BEP 42 `ip` echoes the querier, of its family"
        );
        while r.poll_transmit().is_some() {}
        (
            to,
            resp.nodes.as_deref().map(contacts_of),
            resp.nodes6.as_deref().map(contacts6_of),
        )
    }

    /// BEP 32: an IPv6 query is answered over IPv6 from the IPv6 ring (`nodes6`, no
    /// `nodes`), an IPv4 one from the IPv4 ring; neither list ever holds the other family.
    #[test]
    fn an_ipv6_query_is_answered_with_nodes6_from_the_ipv6_ring() {
        let (mut r, now) = dual_router(20);
        let replies = r.stats(now).replies_out;
        let asker6 = SocketAddr::V6(v6(7, 1));
        let (to, n4, n6) = ask(&mut r, now, asker6, Want::NONE);
        assert_eq!(to, asker6);
        assert_eq!(n4, None, "no IPv4 nodes unless asked for");
        let n6 = n6.expect("nodes6");
        assert_eq!(n6.len(), 16);
        let ring6: Vec<_> = r.ring6().iter().map(|c| c.addr).collect();
        assert!(n6.iter().all(|a| ring6.contains(a)), "{n6:?}");

        let asker4: SocketAddr = "127.82.0.1:7000".parse().unwrap();
        let (to, n4, n6) = ask(&mut r, now, asker4, Want::NONE);
        assert_eq!(to, asker4);
        assert_eq!(n6, None);
        let ring4: Vec<_> = r.ring().iter().map(|c| c.addr).collect();
        let n4 = n4.expect("nodes");
        assert_eq!(n4.len(), 16);
        assert!(n4.iter().all(|a| ring4.contains(a)));
        assert_eq!(r.stats(now).replies_out, replies + 2);
    }

    /// `want` names the lists in the reply: both with `[n4, n6]`, only the other family's
    /// when that is all it names, whichever family the query came over. A repeat requester
    /// gets fewer per list, counted per family of the requester.
    #[test]
    fn want_selects_the_families_of_the_reply() {
        let (mut r, now) = dual_router(20);
        let asker4: SocketAddr = "127.82.0.2:7000".parse().unwrap();
        let (_, n4, n6) = ask(&mut r, now, asker4, Want::BOTH);
        assert_eq!(n4.map(|v| v.len()), Some(16));
        assert_eq!(n6.map(|v| v.len()), Some(16));
        let (_, n4, n6) = ask(&mut r, now, asker4, Want::only(Family::V6));
        assert_eq!(n4, None);
        assert_eq!(n6.map(|v| v.len()), Some(8), "repeat requester");

        let asker6 = SocketAddr::V6(v6(7, 2));
        let (to, n4, n6) = ask(&mut r, now, asker6, Want::only(Family::V4));
        assert_eq!(to, asker6, "answered over the family it asked over");
        assert_eq!(n6, None);
        assert_eq!(
            n4.map(|v| v.len()),
            Some(16),
            "first request from this IPv6 host"
        );
    }

    /// The requester is not handed itself: over IPv6 its whole `/64` is left out.
    #[test]
    fn an_ipv6_requester_is_not_handed_its_own_slash_64() {
        let (mut r, now) = dual_router(3);
        // Another address in the /64 of the ring's first IPv6 entry.
        let mut ip = v6(1, 1).ip().segments();
        ip[7] = 0x99;
        let asker = SocketAddr::V6(SocketAddrV6::new(ip.into(), 7000, 0, 0));
        let (_, _, n6) = ask(&mut r, now, asker, Want::NONE);
        let n6 = n6.unwrap();
        assert_eq!(n6.len(), 2, "{n6:?}");
        assert!(!n6.contains(&v6(1, 1)));
    }

    /// An IPv6 newcomer is verified over IPv6 with a cookie, enters the IPv6 ring and only
    /// it: a wrong cookie, or the right cookie from another address or over IPv4, fails.
    #[test]
    fn ipv6_newcomers_are_verified_over_ipv6() {
        let (mut r, mut now) = router(RouterConfig::default());
        let a = SocketAddrV6::new("::1".parse().unwrap(), 7001, 0, 0);
        verify(&mut r, &mut now, a, NodeId([1; 20]), true);
        assert_eq!(r.ring6().len(), 0);
        assert_eq!(r.stats(now).bad_cookie, 1);
        let cookie = r.cookie(a);
        // The cookie for `a`, sent from an IPv4 address, is not `a`'s.
        let v4: SocketAddrV4 = "127.85.0.1:7001".parse().unwrap();
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            &cookie,
            &ResponseBody::id_only(&NodeId([3; 20])),
            None,
            None,
        );
        r.handle_datagram(now, v4.into(), &reply);
        assert_eq!(r.stats(now).bad_cookie, 2);
        assert!(r.ring().is_empty() && r.ring6().is_empty());
        // The genuine exchange.
        let b = SocketAddrV6::new("::1".parse().unwrap(), 7002, 0, 0);
        let (mut r, mut now) = router(RouterConfig::default());
        r.handle_datagram(
            now,
            b.into(),
            &query(QueryArgs::Ping, NodeId([4; 20]), false),
        );
        while r.poll_transmit().is_some() {}
        now += r.config.verify_delay;
        r.handle_timeout(now);
        let t = r.poll_transmit().expect("verification query");
        assert_eq!(t.to, SocketAddr::V6(b));
        let m = krpc::decode(t.payload).unwrap();
        let Body::Query(q) = &m.body else { panic!() };
        assert_eq!(q.want, Want::BOTH, "asks for both families' nodes");
        let tid = m.tid.as_slice().to_vec();
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            &tid,
            &ResponseBody::id_only(&NodeId([4; 20])),
            None,
            None,
        );
        r.handle_datagram(now, b.into(), &reply);
        assert_eq!(
            r.ring6().iter().collect::<Vec<_>>(),
            vec![Contact::new(NodeId([4; 20]), b)]
        );
        assert!(
            r.ring().is_empty(),
            "an IPv6 contact never enters the IPv4 ring"
        );
        let st = r.stats(now);
        assert_eq!((st.admitted, st.stored, st.stored6), (1, 1, 1));
    }

    /// BEP 42 for IPv6: a public IPv6 source needs an id derived from its address.
    #[test]
    fn invalid_bep42_ids_are_not_admitted_over_ipv6() {
        let (mut r, now) = router(RouterConfig::default());
        // Nothing is sent: the reply is handed to the core directly.
        let public = SocketAddrV6::new("2a00:1450:4001::1".parse().unwrap(), 6881, 0, 0);
        let reply = |id: &NodeId, r: &Router| {
            let mut out = Vec::new();
            krpc::encode_response(
                &mut out,
                &r.cookie(public),
                &ResponseBody::id_only(id),
                None,
                None,
            );
            out
        };
        let bad = reply(&NodeId([9; 20]), &r);
        r.handle_datagram(now, public.into(), &bad);
        assert_eq!(r.stats(now).rejected_invalid_id, 1);
        let good = bep42::id_for_ip(*public.ip(), &mut rand::rng());
        let good = reply(&good, &r);
        r.handle_datagram(now, public.into(), &good);
        assert_eq!(r.stats(now).stored6, 1);
    }

    /// Each family's ring is bounded by its own capacity (`capacity`, `capacity6`): filling
    /// one does not evict the other, and each keeps its newest contacts.
    #[test]
    fn each_family_ring_is_bounded_on_its_own() {
        let now = Instant::now();
        let cfg = RouterConfig {
            allow: test_allow(),
            capacity: 3,
            capacity6: 2,
            verify_delay: Duration::from_secs(1),
            ..RouterConfig::default()
        };
        let mut r = Router::new(cfg, Rings::new(3, 2), now);
        let mut now = now;
        for i in 1..=5u8 {
            verify(&mut r, &mut now, v6(2, i.into()), NodeId([i; 20]), false);
        }
        verify(
            &mut r,
            &mut now,
            SocketAddrV4::new([127, 86, 0, 1].into(), 6881),
            NodeId([1; 20]),
            false,
        );
        assert_eq!(r.ring().len(), 1);
        assert_eq!(
            r.ring6().iter().map(|c| c.addr).collect::<Vec<_>>(),
            (4..=5).map(|i| v6(2, i)).collect::<Vec<_>>()
        );
        for i in 2..=6u8 {
            verify(
                &mut r,
                &mut now,
                SocketAddrV4::new([127, 86, 0, i].into(), 6881),
                NodeId([i; 20]),
                false,
            );
        }
        assert_eq!(r.ring().len(), 3);
        assert_eq!(
            r.ring6().len(),
            2,
            "IPv4 inserts do not evict IPv6 contacts"
        );
        assert_eq!(r.stats(now).stored, 5, "3 IPv4 + 2 IPv6");
    }

    /// A verified IPv4 reply's `nodes6` are queued on the IPv6 side and verified over IPv6
    /// (never admitted on the IPv4 node's word).
    #[test]
    fn nodes6_in_an_ipv4_reply_are_verified_over_ipv6() {
        let (mut r, now) = router(RouterConfig {
            allow: test_allow(),
            ..RouterConfig::default()
        });
        let seed: SocketAddrV4 = "127.87.0.1:6881".parse().unwrap();
        r.seed(now, &[seed.into()]);
        r.handle_timeout(now);
        let q = krpc::decode(r.poll_transmit().unwrap().payload).unwrap();
        let mut nodes6 = Vec::new();
        for i in 1..=3u16 {
            Contact::new(NodeId([i as u8; 20]), v6(3, i)).write_compact(&mut nodes6);
        }
        let body = ResponseBody {
            nodes6: Some(&nodes6),
            ..ResponseBody::id_only(&NodeId([1; 20]))
        };
        let mut reply = Vec::new();
        krpc::encode_response(&mut reply, q.tid.as_slice(), &body, None, None);
        r.handle_datagram(now, seed.into(), &reply);
        assert_eq!((r.ring().len(), r.ring6().len()), (1, 0));
        assert_eq!(r.stats(now).pending6, 3);
        r.handle_timeout(now);
        let mut asked = Vec::new();
        while let Some(t) = r.poll_transmit() {
            asked.push(t.to);
        }
        assert_eq!(
            asked,
            (1..=3)
                .map(|i| SocketAddr::V6(v6(3, i)))
                .collect::<Vec<_>>()
        );
    }

    /// With IPv6 off (the driver has no IPv6 socket) IPv6 datagrams are dropped, IPv6 seeds
    /// and `nodes6` are not queued, and verification queries carry no `want`.
    #[test]
    fn with_ipv6_off_nothing_ipv6_is_queued_or_answered() {
        let (mut r, now) = router(RouterConfig {
            ipv6: false,
            ..RouterConfig::default()
        });
        let a6 = SocketAddr::V6(SocketAddrV6::new("::1".parse().unwrap(), 7003, 0, 0));
        r.handle_datagram(now, a6, &query(QueryArgs::Ping, NodeId([1; 20]), false));
        assert!(r.poll_transmit().is_none());
        assert_eq!(r.stats(now).dropped_other, 1);
        let seed: SocketAddrV4 = "127.88.0.1:6881".parse().unwrap();
        r.seed(now, &[seed.into(), a6]);
        assert_eq!(r.stats(now).pending, 1);
        r.handle_timeout(now);
        let q = krpc::decode(r.poll_transmit().unwrap().payload).unwrap();
        let Body::Query(query) = &q.body else {
            panic!()
        };
        assert_eq!(query.want, Want::NONE);
    }
}
