//! Bootstrap-router mode (`dht-node --router`): the entry point new nodes ask first.
//!
//! A router keeps no Kademlia table and no peers. It answers `find_node`, `get_peers` (nodes
//! only) and `ping` from a large ring of *verified* contacts, handing out 8–16 per reply and
//! rotating through the ring so the load spreads across the network. Every querier is queued
//! for a verification ping some minutes later; the ping's transaction id is a keyed hash of
//! the querier's address (a SYN-cookie), so no per-ping state is kept and only a node that
//! really answers from that address, with a BEP 42-valid id, gets into the ring.
//!
//! Like [`crate::dht::node::Node`] this is sans-IO; [`io`] drives it with batched syscalls.

pub mod io;
pub mod store;

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::dht::allow::AllowList;
use crate::dht::bep42;
use crate::dht::gate::{self, Dropped, Gated};
use crate::dht::id::{Contact, NodeId};
use crate::dht::krpc::{self, Body, ERR_GENERIC, Method, QueryArgs, ResponseBody};
use crate::dht::limits::{self, ByteQuota, RateLimit, RateLimiter};
use crate::dht::node::{MethodCounts, VERSION};
use crate::dht::outbox::{Emitted, Outbox, Transmit};
use store::{NodeRing, RecentSet};

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Verified contacts kept (the ring's size).
    pub capacity: usize,
    /// How long after its query a new node is pinged. Minutes, like bootstrap-dht: a node
    /// that is still there after that is worth handing out.
    pub verify_delay: Duration,
    /// Queriers waiting for their verification ping, at most.
    pub max_pending: usize,
    /// Verification pings sent per timer tick, at most (no bursts).
    pub verify_burst: usize,
    /// Contacts per reply to a first-time requester.
    pub contacts_new: usize,
    /// Contacts per reply to a recent requester (it already had a first batch): fewer, so a
    /// node that keeps asking does not drain the ring.
    pub contacts_repeat: usize,
    /// Admit only ids valid for their IP under BEP 42 (exempt addresses pass).
    pub require_valid_id: bool,
    /// Outbound allow-list, enforced on every datagram (replies and verification queries).
    pub allow: AllowList,
    /// Per-IP packet rate limit with temporary bans; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Bytes per second of replies and errors at most (an amplification cap); `None` =
    /// unlimited.
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
            verify_delay: Duration::from_secs(15 * 60),
            max_pending: 1_000_000,
            verify_burst: 256,
            contacts_new: 16,
            contacts_repeat: 8,
            require_valid_id: true,
            allow: AllowList::any(),
            rate_limit: Some(RateLimit::default()),
            reply_quota: None,
            id: None,
            seed: None,
        }
    }
}

/// Router counters and gauges.
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
    /// Cookie matched but the IP already has an entry.
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
    /// Other datagrams dropped: unusable sources (non-IPv4, port 0, bogon), messages
    /// carrying our own id, KRPC errors received, and datagrams the driver could not read.
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
    /// Gauge: verified contacts in the ring.
    pub stored: usize,
    /// Gauge: queriers waiting for their verification query.
    pub pending: usize,
    /// Gauge: IPs currently banned by the rate limiter.
    pub banned_ips: usize,
    /// Gauge: bytes held by the ring and the recent-IP filters.
    pub memory_bytes: usize,
}

/// The router core.
pub struct Router {
    id: NodeId,
    config: RouterConfig,
    ring: NodeRing,
    pending: VecDeque<(Instant, SocketAddrV4)>,
    /// Queriers queued recently, so one busy node is queued once.
    queued: RecentSet,
    /// Recent requesters, who get fewer contacts.
    requesters: RecentSet,
    cookie_key: RandomState,
    limiter: Option<RateLimiter>,
    quota: Option<ByteQuota>,
    outbox: Outbox,
    stats: RouterStats,
    nodes_scratch: Vec<u8>,
    next_sweep: Instant,
    rng: StdRng,
}

/// Cookie transaction ids are 4 bytes.
const COOKIE_LEN: usize = 4;

impl Router {
    /// A router serving the contacts of `ring` (empty, or loaded from a saved store).
    pub fn new(config: RouterConfig, ring: NodeRing, now: Instant) -> Self {
        let mut rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => rand::make_rng(),
        };
        let id = config.id.unwrap_or_else(|| NodeId::random(&mut rng));
        Router {
            id,
            queued: RecentSet::new(config.max_pending.clamp(1024, 1 << 22)),
            requesters: RecentSet::new(100_000),
            cookie_key: RandomState::new(),
            limiter: config.rate_limit.map(RateLimiter::new),
            quota: config.reply_quota.map(|q| ByteQuota::new(q, now)),
            outbox: Outbox::default(),
            stats: RouterStats::default(),
            nodes_scratch: Vec::with_capacity(16 * 26),
            pending: VecDeque::new(),
            next_sweep: now + Duration::from_secs(60),
            rng,
            ring,
            config,
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The verified contacts handed out.
    pub fn ring(&self) -> &NodeRing {
        &self.ring
    }

    /// Counters plus current gauges.
    pub fn stats(&self, now: Instant) -> RouterStats {
        RouterStats {
            stored: self.ring.len(),
            pending: self.pending.len(),
            banned_ips: self.limiter.as_ref().map_or(0, |l| l.banned(now)),
            memory_bytes: self.ring.memory() + self.queued.memory() + self.requesters.memory(),
            ..self.stats.clone()
        }
    }

    /// The verification cookie for `addr`: what we put in the ping's `t` and expect back.
    fn cookie(&self, addr: SocketAddrV4) -> [u8; COOKIE_LEN] {
        let h = self
            .cookie_key
            .hash_one((u32::from(*addr.ip()), addr.port()));
        (h as u32).to_be_bytes()
    }

    /// The next datagram to send. The payload borrows the router until the next call.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        self.outbox.poll()
    }

    /// Hands every queued datagram to `f` (for batched sends).
    pub fn drain_transmits(&mut self, f: impl FnMut(SocketAddrV4, &[u8])) {
        self.outbox.drain_all(f);
    }

    /// Whether datagrams are waiting.
    pub fn has_transmit(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// When the next verification ping or sweep is due.
    pub fn poll_timeout(&self) -> Instant {
        let due = self
            .pending
            .front()
            .map(|(t, _)| *t)
            .unwrap_or(self.next_sweep);
        due.min(self.next_sweep)
    }

    fn emit(
        &mut self,
        now: Instant,
        to: SocketAddrV4,
        reply: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let quota = if reply { self.quota.as_mut() } else { None };
        match self.outbox.emit(&self.config.allow, quota, now, to, encode) {
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

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let (from, msg) = match gate::admit(now, from, data, self.limiter.as_mut()) {
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
                self.answer(now, from, msg.tid.as_slice(), &q.method);
                if !msg.read_only {
                    self.enqueue(now, from);
                }
            }
            Body::Response(r) => self.verify_reply(now, from, msg.tid.as_slice(), &r),
            Body::Error(_) => self.stats.dropped_other += 1,
        }
    }

    fn answer(&mut self, now: Instant, from: SocketAddrV4, tid: &[u8], method: &Method) {
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
        nodes.clear();
        let mut body = ResponseBody::id_only(&id);
        if !matches!(method, Method::Ping) {
            let n = if self.requesters.contains(*from.ip()) {
                self.config.contacts_repeat
            } else {
                self.requesters.insert(*from.ip());
                self.config.contacts_new
            };
            self.ring.take(n, *from.ip(), &mut nodes);
            body.nodes = Some(&nodes);
            if let Method::SampleInfohashes { .. } = method {
                body.samples = Some(&[]);
                body.num = Some(0);
                body.interval = Some(6 * 3600);
            }
        }
        let quota = self.quota.as_mut();
        match self
            .outbox
            .emit(&self.config.allow, quota, now, from, |out| {
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
    }

    /// Queues a querier for a verification query after `verify_delay`, unless it is known
    /// or already queued.
    fn enqueue(&mut self, now: Instant, from: SocketAddrV4) {
        self.enqueue_at(now + self.config.verify_delay, from);
    }

    fn enqueue_at(&mut self, due: Instant, addr: SocketAddrV4) {
        let ip = *addr.ip();
        if addr.port() == 0 || self.ring.has_ip(ip) || self.queued.contains(ip) {
            return;
        }
        if self.pending.len() >= self.config.max_pending {
            self.stats.queue_full += 1;
            return;
        }
        self.queued.insert(ip);
        // Due times only grow when the delay is constant; an immediate one goes first.
        if self.pending.back().is_some_and(|(t, _)| *t > due) {
            self.pending.push_front((due, addr));
        } else {
            self.pending.push_back((due, addr));
        }
    }

    /// Seeds the store from known routers or nodes: they are queried at once, and every
    /// verified reply's `nodes` are queried in turn, so an empty router fills itself.
    pub fn seed(&mut self, now: Instant, addrs: &[SocketAddrV4]) {
        for a in addrs {
            self.enqueue_at(now, *a);
        }
    }

    /// A reply: admitted only if its transaction id is the cookie for its source address.
    /// Its `nodes` are queued for verification too (that is how the store grows from a seed).
    fn verify_reply(&mut self, now: Instant, from: SocketAddrV4, tid: &[u8], r: &krpc::Response) {
        if tid != self.cookie(from) {
            self.stats.bad_cookie += 1;
            return;
        }
        if r.id == self.id {
            self.stats.dropped_other += 1;
            return;
        }
        if self.ring.len() < self.ring.capacity() {
            for c in r.nodes().take(16) {
                if self.config.allow.allows(SocketAddr::V4(c.addr))
                    && !limits::is_bogon_source(*c.addr.ip())
                {
                    self.enqueue_at(now, c.addr);
                }
            }
        }
        if self.config.require_valid_id && !bep42::is_valid(&r.id, *from.ip()) {
            self.stats.rejected_invalid_id += 1;
            return;
        }
        if self.ring.insert(&Contact::new(r.id, from)) {
            self.stats.admitted += 1;
        } else {
            self.stats.duplicate_ip += 1;
        }
    }

    /// Counts a datagram the driver could not read (truncated, or not IPv4).
    pub fn note_unreadable(&mut self) {
        self.stats.packets_in += 1;
        self.stats.dropped_other += 1;
    }

    /// Sends due verification queries (paced) and sweeps the rate limiter.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut sent = 0;
        while sent < self.config.verify_burst {
            match self.pending.front() {
                Some(&(due, addr)) if due <= now => {
                    self.pending.pop_front();
                    if self.ring.has_ip(*addr.ip()) {
                        continue;
                    }
                    let tid = self.cookie(addr);
                    let id = self.id;
                    // find_node (for a random target, so answers differ) rather than ping:
                    // the answer also brings candidates.
                    let target = NodeId::random(&mut self.rng);
                    if self.emit(now, addr, false, |out| {
                        let args = QueryArgs::FindNode { target: &target };
                        krpc::encode_query(out, &tid, &id, &args, false, Some(VERSION))
                    }) {
                        self.stats.pings_out += 1;
                    }
                    sent += 1;
                }
                _ => break,
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(60);
            if let Some(l) = &mut self.limiter {
                l.sweep(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::id::InfoHash;

    fn router(cfg: RouterConfig) -> (Router, Instant) {
        let now = Instant::now();
        let cfg = RouterConfig {
            allow: AllowList::loopback(),
            ..cfg
        };
        // A ring far bigger than any test fills: its one-entry-per-IP check is a Bloom filter
        // sized for the ring (about 1 % false positives when full), and at 100 slots a few
        // dozen entries made a new IP look present about once in 300 runs, so it was never
        // verified and `replies_rotate_and_repeat_requesters_get_fewer` failed at random.
        (Router::new(cfg, NodeRing::new(100_000), now), now)
    }

    fn query(method: QueryArgs<'_>, id: NodeId, ro: bool) -> Vec<u8> {
        let mut out = Vec::new();
        krpc::encode_query(&mut out, b"qq", &id, &method, ro, None);
        out
    }

    /// Runs a query from `from`, then lets the verification ping happen and has the querier
    /// answer it with `reply_id` (and, if `tamper`, a wrong transaction id).
    fn verify(
        r: &mut Router,
        now: &mut Instant,
        from: SocketAddrV4,
        reply_id: NodeId,
        tamper: bool,
    ) {
        r.handle_datagram(
            *now,
            SocketAddr::V4(from),
            &query(QueryArgs::Ping, reply_id, false),
        );
        while r.poll_transmit().is_some() {}
        *now += r.config.verify_delay;
        r.handle_timeout(*now);
        let ping = r.poll_transmit().expect("verification query");
        assert_eq!(ping.to, SocketAddr::V4(from));
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
        r.handle_datagram(*now, SocketAddr::V4(from), &reply);
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
        r.seed(now, &[seed]);
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
}
