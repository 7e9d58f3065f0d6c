//! Iterative lookups (find_node, get_peers, announce, BEP 44 get/put): the search state, free
//! of I/O.
//!
//! The search keeps a bounded candidate list sorted by distance to the target and keeps α
//! queries in flight among the K closest candidates that have not failed (libtorrent's
//! "aggressive" mode: it never spends queries on candidates outside the current top K). A
//! query that passes its short timeout stops occupying a slot, so one slow node does not
//! stall the search, but its late answer is still used. The search is done when the K
//! closest live candidates have all answered.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddrV4};

use crate::dht::bep42;
use crate::dht::id::{Contact, InfoHash, NodeAddr, NodeId, compact_nodes};
use crate::dht::krpc::Token;
use crate::dht::scrape::{ScrapeEstimate, ScrapeFilter};

/// Candidates kept per lookup. Enough to absorb a few rounds of `nodes` (8 each) without
/// dropping close ones; farther ones are useless to an aggressive lookup anyway.
pub const MAX_CANDIDATES: usize = 64;
/// Distinct peers remembered per lookup for de-duplication.
pub const MAX_PEERS_TRACKED: usize = 4096;

/// Which `nodes` entries are junk that must not cost a query slot (issue 12, defect 7):
/// port 0 (nothing listens there), our own address (we would query ourselves), and, on a node
/// that is on the public internet, addresses no internet node can have (bogons, private,
/// loopback, link-local, shared CGNAT space). On a LAN or a loopback test network the private
/// ranges are where the other nodes live, so they are kept there.
#[derive(Debug, Clone, Copy)]
pub struct CandidateFilter<A: NodeAddr = SocketAddrV4> {
    /// Addresses that are us: the bound one (when specific) and the voted external one.
    pub own: [Option<A>; 2],
    /// Whether we are on the public internet (bound to, or voted, a global address).
    pub public: bool,
    /// At most one candidate per IP (libtorrent's `dht_restrict_search_ips`): a sybil that
    /// places many ids next to a target from one address then takes one of the K slots
    /// that receive our announce, not all of them.
    pub one_per_ip: bool,
}

impl<A: NodeAddr> Default for CandidateFilter<A> {
    fn default() -> Self {
        CandidateFilter {
            own: [None; 2],
            public: false,
            one_per_ip: false,
        }
    }
}

impl<A: NodeAddr> CandidateFilter<A> {
    /// Whether `addr` is worth a query.
    pub fn accepts(&self, addr: A) -> bool {
        let ip = addr.ip_addr();
        if addr.port_number() == 0 || self.own.contains(&Some(addr)) {
            return false;
        }
        !(crate::dht::limits::is_bogon(ip) || self.public && !is_global(ip))
    }
}

/// Whether `ip` can be a node on the public internet (std's `is_global` is unstable). IPv6:
/// global unicast (`2000::/3`) other than documentation; an IPv4-mapped address is judged as
/// IPv4.
pub fn is_global(ip: impl Into<IpAddr>) -> bool {
    let ip = match ip.into().to_canonical() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => {
            let s = ip.segments();
            return s[0] & 0xe000 == 0x2000 && !crate::dht::limits::is_bogon(IpAddr::V6(ip));
        }
    };
    let o = ip.octets();
    !(crate::dht::limits::is_bogon_source(ip)
        || ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_documentation()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || (o[0] == 198 && (o[1] & 0xfe) == 18))
}

/// What a lookup is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// find_node queries: the K closest nodes to the target (bootstrap, refresh).
    FindNode,
    /// get_peers queries: the peers of the target infohash, streamed as they arrive.
    GetPeers,
    /// get_peers, then announce_peer to the K closest with their tokens. `port: None` means
    /// `implied_port` (use our UDP source port). `seed` (BEP 33) says we have the whole
    /// torrent: the announces carry `seed=1` and the searches `noseed=1` (a seed has no use
    /// for other seeds).
    Announce {
        /// Our TCP port; `None` for `implied_port`.
        port: Option<u16>,
        /// BEP 33: we have the whole torrent.
        seed: bool,
    },
    /// BEP 33: get_peers with `scrape=1`; the replies' bloom filters are united in
    /// [`Lookup::scrape`].
    Scrape,
    /// BEP 44 `get` queries; the node checks the values (see `crate::dht::item_search`).
    GetItem,
    /// BEP 44 `get` queries, then `put` to the K closest token holders, chosen and replaced
    /// exactly as announce_peer targets are.
    PutItem,
}

impl LookupKind {
    /// Whether the search sends get_peers, and so collects the peers in `values`.
    pub fn wants_peers(&self) -> bool {
        matches!(
            self,
            LookupKind::GetPeers | LookupKind::Announce { .. } | LookupKind::Scrape
        )
    }

    /// Whether the search sends BEP 44 `get` rather than find_node/get_peers.
    pub fn is_item(&self) -> bool {
        matches!(self, LookupKind::GetItem | LookupKind::PutItem)
    }

    /// Whether the search is followed by a store phase (announce_peer or put).
    fn stores(&self) -> bool {
        matches!(self, LookupKind::Announce { .. } | LookupKind::PutItem)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandState {
    Fresh,
    InFlight,
    /// Short timeout passed, the query is still outstanding.
    Slow,
    Responded,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate<A: NodeAddr = SocketAddrV4> {
    /// Unknown for bootstrap routers, which we reach by address only.
    id: Option<NodeId>,
    addr: A,
    distance: NodeId,
    state: CandState,
    token: Option<Token>,
}

/// The parts of a get_peers/find_node reply a lookup uses.
#[derive(Debug, Clone, Copy)]
pub struct SearchReply<'a, A: NodeAddr = SocketAddrV4> {
    /// The replier's address (the candidate it answers for).
    pub from: A,
    /// Whether the query had already passed its short timeout.
    pub was_slow: bool,
    /// The replier's node id.
    pub id: NodeId,
    /// Raw compact node info of the lookup's family (`nodes` or `nodes6`).
    pub nodes: &'a [u8],
    /// The replier's token, kept for an announce_peer or put to it.
    pub token: Option<Token>,
    /// Peers in a get_peers reply.
    pub values: &'a [A],
    /// BEP 33 `BFsd` and `BFpe`, when the reply carried both.
    pub scrape: Option<(&'a ScrapeFilter, &'a ScrapeFilter)>,
}

/// Extra token holders a storing lookup (announce, put) asks beyond the K closest, so a
/// failed announce has a spare to pass its slot to. Without them the spares were only
/// nodes that happened to answer, and a sybil farm's one admitted node (one candidate per
/// IP), taking a token and swallowing the announce, cost the peer one of its 8 storing
/// nodes: in the 10,000-node live-DHT mix that was 7 % of all placements (BENCHMARKS (c)).
/// Two cover the farm's slot and one lost node for two queries per announce.
pub const ANNOUNCE_SPARES: usize = 2;

/// Where a lookup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Querying candidates until the K closest live ones have answered.
    Searching,
    /// announce_peer (or BEP 44 `put`) queries are outstanding.
    Announcing,
    /// Finished: nothing more will be sent.
    Done,
}

/// One iterative search.
#[derive(Debug)]
pub struct Lookup<A: NodeAddr = SocketAddrV4> {
    /// The id (node id, infohash or item target) whose closest nodes are searched.
    pub target: NodeId,
    /// What the lookup is for.
    pub kind: LookupKind,
    own_id: NodeId,
    alpha: usize,
    k: usize,
    candidates: Vec<Candidate<A>>,
    in_flight: usize,
    phase: Phase,
    peers_seen: HashSet<A>,
    announces_pending: usize,
    /// Token holders next in line after the K chosen, closest first: a failed announce
    /// (timeout, error, unsendable) passes its slot to the next of them, so a node that
    /// takes a token and swallows the announce (a sybil, a node that just left) does not
    /// cost the peer one of its K storing nodes.
    spare: std::collections::VecDeque<(A, NodeId, Token)>,
    /// Announces to send in place of failed ones (see `spare`).
    retry: Vec<(A, NodeId, Token)>,
    /// Nodes whose announce timed out once and was sent again.
    resent: Vec<A>,
    /// Announces acknowledged by the storing nodes.
    pub announced: usize,
    /// Queries sent (find_node/get_peers and announce_peer).
    pub messages: u32,
    /// Replies received.
    pub replies: u32,
    filter: CandidateFilter<A>,
    /// `nodes` entries dropped as junk by the filter.
    pub junk_dropped: u32,
    /// A scrape lookup's union of the filters replies carried.
    pub scrape: Option<ScrapeEstimate>,
}

impl<A: NodeAddr> Lookup<A> {
    /// A lookup with no candidates yet, keeping `alpha` queries in flight and finishing on
    /// the `k` closest that answer (both at least 1).
    pub fn new(target: NodeId, kind: LookupKind, own_id: NodeId, alpha: usize, k: usize) -> Self {
        Lookup {
            target,
            kind,
            own_id,
            alpha: alpha.max(1),
            k: k.max(1),
            candidates: Vec::new(),
            in_flight: 0,
            phase: Phase::Searching,
            peers_seen: HashSet::new(),
            announces_pending: 0,
            spare: std::collections::VecDeque::new(),
            retry: Vec::new(),
            resent: Vec::new(),
            announced: 0,
            messages: 0,
            replies: 0,
            filter: CandidateFilter::default(),
            junk_dropped: 0,
            scrape: (kind == LookupKind::Scrape).then(ScrapeEstimate::default),
        }
    }

    /// Sets which `nodes` entries of replies are junk (by default only port 0).
    pub fn set_filter(&mut self, filter: CandidateFilter<A>) {
        self.filter = filter;
    }

    /// Where the lookup stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Adds a contact we may query. Our own id is never a candidate.
    pub fn add_candidate(&mut self, contact: Contact<A>) {
        if contact.id == self.own_id {
            return;
        }
        let one_per_ip = self.filter.one_per_ip;
        if self.candidates.iter().any(|c| {
            c.id == Some(contact.id)
                || c.addr == contact.addr
                || (one_per_ip && c.addr.host() == contact.addr.host())
        }) {
            return;
        }
        let distance = contact.id.distance(&self.target);
        let pos = self.candidates.partition_point(|c| c.distance < distance);
        if pos >= MAX_CANDIDATES {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                id: Some(contact.id),
                addr: contact.addr,
                distance,
                state: CandState::Fresh,
                token: None,
            },
        );
        if self.candidates.len() > MAX_CANDIDATES {
            // Dropping the farthest; if it was in flight its answer will simply be ignored.
            self.candidates.pop();
        }
    }

    /// Adds an entry point known only by address (a bootstrap router). It sorts last, so it
    /// is used only while nothing better is known.
    pub fn add_router(&mut self, addr: A) {
        if self.candidates.iter().any(|c| c.addr == addr) || self.candidates.len() >= MAX_CANDIDATES
        {
            return;
        }
        self.candidates.push(Candidate {
            id: None,
            addr,
            distance: NodeId([0xff; 20]),
            state: CandState::Fresh,
            token: None,
        });
    }

    /// Whether any node or router was added to query.
    pub fn has_candidates(&self) -> bool {
        !self.candidates.is_empty()
    }

    fn find(&mut self, addr: A) -> Option<&mut Candidate<A>> {
        self.candidates.iter_mut().find(|c| c.addr == addr)
    }

    /// How many of the closest live candidates the search must hear from: K, plus
    /// [`ANNOUNCE_SPARES`] when the lookup stores something.
    fn width(&self) -> usize {
        if self.kind.stores() {
            self.k + ANNOUNCE_SPARES
        } else {
            self.k
        }
    }

    /// The next queries to send, as (address, expected id; `None` for a router); each is
    /// marked in flight. At most α are in flight, all among the closest live candidates.
    pub fn next_queries(&mut self, out: &mut Vec<(A, Option<NodeId>)>) {
        out.clear();
        if self.phase != Phase::Searching {
            return;
        }
        let width = self.width();
        let mut live = 0;
        for c in &mut self.candidates {
            if self.in_flight >= self.alpha || live >= width {
                break;
            }
            // Slow candidates do not hold a top-K place, exactly as in `search_complete`:
            // otherwise a slow node keeps the next candidate from being asked while the
            // search cannot finish without it, and the lookup stalls until the hard timeout.
            if matches!(c.state, CandState::Failed | CandState::Slow) {
                continue;
            }
            live += 1;
            if c.state == CandState::Fresh {
                c.state = CandState::InFlight;
                self.in_flight += 1;
                self.messages += 1;
                out.push((c.addr, c.id));
            }
        }
    }

    /// Whether the K closest live candidates have all answered (slow ones do not count as
    /// live: waiting for them would make every lookup as slow as its slowest node).
    fn search_complete(&self) -> bool {
        if self.in_flight > 0 {
            return false;
        }
        let width = self.width();
        let mut live = 0;
        for c in &self.candidates {
            if live >= width {
                break;
            }
            match c.state {
                CandState::Failed | CandState::Slow => continue,
                CandState::Responded => live += 1,
                CandState::Fresh | CandState::InFlight => return false,
            }
        }
        true
    }

    /// A reply to a search query: its `nodes` become candidates and its `values` are
    /// returned, minus those already reported, in `new_peers`.
    pub fn on_reply(&mut self, reply: &SearchReply<'_, A>, new_peers: &mut Vec<A>) {
        if !reply.was_slow {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.replies += 1;
        if let Some(c) = self.find(reply.from) {
            c.state = CandState::Responded;
            // A router's id stays unknown: it sorts last, is never reported among the
            // closest nodes and never receives an announce (BEP 5: routers only help us
            // join).
            c.token = reply.token;
        }
        for n in compact_nodes(reply.nodes) {
            if self.filter.accepts(n.addr) {
                self.add_candidate(n);
            } else {
                self.junk_dropped += 1;
            }
        }
        if let (Some(est), Some((seeds, downloaders))) = (&mut self.scrape, reply.scrape) {
            est.add(seeds, downloaders);
        }
        new_peers.clear();
        if self.kind.wants_peers() {
            for v in reply.values {
                if self.peers_seen.len() < MAX_PEERS_TRACKED && self.peers_seen.insert(*v) {
                    new_peers.push(*v);
                }
            }
        }
    }

    /// The short timeout of a query passed: free its slot.
    pub fn on_slow(&mut self, addr: A) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(c) = self.find(addr).filter(|c| c.state == CandState::InFlight) {
            c.state = CandState::Slow;
        }
    }

    /// A query failed (hard timeout, error reply or unsendable).
    pub fn on_failure(&mut self, addr: A, was_slow: bool) {
        if !was_slow {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if let Some(c) = self.find(addr) {
            c.state = CandState::Failed;
        }
    }

    /// Advances the phase after events: returns the announce targets when the search just
    /// finished and this is an announce lookup (the caller sends them and reports each
    /// answer with [`Lookup::on_announce_result`]).
    pub fn advance(&mut self, announce_to: &mut Vec<(A, NodeId, Token)>) {
        announce_to.clear();
        if self.phase == Phase::Announcing {
            // Replacements for failed announces.
            self.messages += self.retry.len() as u32;
            announce_to.append(&mut self.retry);
            return;
        }
        if self.phase != Phase::Searching || !self.search_complete() {
            return;
        }
        if self.kind.stores() {
            // The K closest nodes that answered with a token, whatever their ids: many
            // clients (Transmission, older libtorrent, crawlers) use ids that are not BEP 42
            // ids, and other clients search the truly closest nodes, so skipping them would
            // park our announce where nobody looks. BEP 42 validity only breaks ties in
            // distance (which, ids being distinct, only equal ids could produce).
            let mut chosen: Vec<(NodeId, bool, A, NodeId, Token)> = self
                .candidates
                .iter()
                .filter(|c| c.state == CandState::Responded)
                .filter_map(|c| {
                    let (id, token) = (c.id?, c.token?);
                    let valid = bep42::is_valid(&id, c.addr.ip_addr());
                    Some((c.distance, !valid, c.addr, id, token))
                })
                .collect();
            chosen.sort_by_key(|x| (x.0, x.1));
            for (k, (_, _, addr, id, token)) in chosen.into_iter().take(2 * self.k).enumerate() {
                if k < self.k {
                    announce_to.push((addr, id, token));
                } else {
                    self.spare.push_back((addr, id, token));
                }
            }
            self.announces_pending = announce_to.len();
            self.messages += announce_to.len() as u32;
            self.phase = if announce_to.is_empty() {
                Phase::Done
            } else {
                Phase::Announcing
            };
        } else {
            self.phase = Phase::Done;
        }
    }

    /// An announce_peer query was acknowledged (`ok`) or failed.
    pub fn on_announce_result(&mut self, ok: bool) {
        if ok {
            self.announced += 1;
        } else if self.phase == Phase::Announcing
            && let Some(next) = self.spare.pop_front()
        {
            // The slot passes to the next token holder; still pending.
            self.retry.push(next);
            return;
        }
        self.announces_pending = self.announces_pending.saturating_sub(1);
        if self.phase == Phase::Announcing && self.announces_pending == 0 {
            self.phase = Phase::Done;
        }
    }

    /// An announce to `addr` timed out. The first time, it is sent again to the same node: a
    /// lost datagram must not move the peer off one of the K closest nodes (the spares are
    /// farther). A second timeout passes the slot on like any failure.
    pub fn on_announce_timeout(&mut self, addr: A) {
        if self.phase == Phase::Announcing
            && !self.resent.contains(&addr)
            && let Some((id, token)) = self
                .candidates
                .iter()
                .find(|c| c.addr == addr)
                .and_then(|c| Some((c.id?, c.token?)))
        {
            self.resent.push(addr);
            self.retry.push((addr, id, token));
            return;
        }
        self.on_announce_result(false);
    }

    /// A put was refused for a reason another node would share (a stale `seq`, a CAS
    /// mismatch, a bad signature): the slot is answered, not passed to a spare, since
    /// spreading a refused item further would only collect more refusals.
    pub fn on_store_refused(&mut self) {
        self.announces_pending = self.announces_pending.saturating_sub(1);
        if self.phase == Phase::Announcing && self.announces_pending == 0 {
            self.phase = Phase::Done;
        }
    }

    /// An announce could not be sent at all.
    pub fn announce_unsent(&mut self) {
        self.on_announce_result(false);
    }

    /// The K closest candidates that answered, closest first.
    pub fn closest_responders(&self) -> Vec<Contact<A>> {
        self.candidates
            .iter()
            .filter(|c| c.state == CandState::Responded)
            .filter_map(|c| c.id.map(|id| Contact::new(id, c.addr)))
            .take(self.k)
            .collect()
    }

    /// Forces completion (e.g. nothing could be sent).
    pub fn finish(&mut self) {
        self.phase = Phase::Done;
    }

    /// The target as the infohash of a get_peers, announce or scrape lookup.
    pub fn target_info_hash(&self) -> InfoHash {
        InfoHash::from_node_id(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn compact(contacts: &[Contact]) -> Vec<u8> {
        let mut v = Vec::new();
        for c in contacts {
            c.write_compact(&mut v);
        }
        v
    }

    fn c(first: u8, i: u32) -> Contact {
        let mut id = [0u8; 20];
        id[0] = first;
        id[19] = i as u8;
        Contact::new(
            NodeId(id),
            SocketAddrV4::new(Ipv4Addr::from(0x7f00_0000 + i), 1),
        )
    }

    /// Only the shared-address block 100.64.0.0/10 is non-global among 100.x and x.64.x
    /// addresses; its neighbours are public.
    #[test]
    fn only_100_64_slash_10_is_carrier_grade_nat() {
        use std::net::Ipv4Addr;
        assert!(!is_global(Ipv4Addr::new(100, 64, 0, 1)));
        assert!(!is_global(Ipv4Addr::new(100, 127, 255, 254)));
        assert!(is_global(Ipv4Addr::new(100, 128, 0, 1)));
        assert!(is_global(Ipv4Addr::new(100, 0, 0, 1)));
        assert!(is_global(Ipv4Addr::new(8, 64, 0, 1)));
        assert!(is_global(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!is_global(Ipv4Addr::new(198, 19, 0, 1)));
    }

    /// A candidate is one node: a second contact with a known id (at another address) or
    /// a known address (with another id) is not added, even without the one-per-IP rule.
    #[test]
    fn a_known_id_or_a_known_address_is_not_a_second_candidate() {
        let target = NodeId([0; 20]);
        let mut l = Lookup::new(target, LookupKind::FindNode, NodeId([0xee; 20]), 3, 8);
        assert!(!l.filter.one_per_ip);
        l.add_candidate(c(0x81, 1));
        // Same id, another address.
        l.add_candidate(Contact::new(c(0x81, 1).id, c(0x82, 2).addr));
        // Same address, another id.
        l.add_candidate(Contact::new(c(0x83, 3).id, c(0x81, 1).addr));
        assert_eq!(l.candidates.len(), 1);
        // Another id at another port of the same IP is a second node.
        let mut other_port = c(0x84, 1).addr;
        other_port.set_port(other_port.port() + 1);
        l.add_candidate(Contact::new(c(0x84, 4).id, other_port));
        assert_eq!(l.candidates.len(), 2);
    }

    #[test]
    fn keeps_alpha_in_flight_among_the_top_k_and_finishes() {
        let target = NodeId([0; 20]);
        let mut l = Lookup::new(target, LookupKind::FindNode, NodeId([0xee; 20]), 3, 2);
        for i in 1..=5 {
            l.add_candidate(c(0x80 + i as u8, i));
        }
        let mut q = Vec::new();
        l.next_queries(&mut q);
        // K = 2 limits the first round to the two closest even though α = 3.
        assert_eq!(q.len(), 2);
        let mut peers = Vec::new();
        // Candidate 1 answers with a much closer node.
        l.on_reply(
            &SearchReply {
                from: c(0x81, 1).addr,
                was_slow: false,
                id: c(0x81, 1).id,
                nodes: &compact(&[c(0x01, 9)]),
                token: None,
                values: &[],
                scrape: None,
            },
            &mut peers,
        );
        l.next_queries(&mut q);
        assert_eq!(q, vec![(c(0x01, 9).addr, Some(c(0x01, 9).id))]);
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(l.phase(), Phase::Searching);
        // Candidate 2 is slow: its slot frees but nothing else is in the top K.
        l.on_slow(c(0x82, 2).addr);
        l.on_reply(
            &SearchReply {
                from: c(0x01, 9).addr,
                was_slow: false,
                id: c(0x01, 9).id,
                nodes: &[],
                token: None,
                values: &[],
                scrape: None,
            },
            &mut peers,
        );
        l.next_queries(&mut q);
        // Top-2 live (slow ones skipped) are 9 and 1, both answered.
        assert!(q.is_empty());
        l.advance(&mut ann);
        assert_eq!(l.phase(), Phase::Done);
        assert_eq!(l.closest_responders(), vec![c(0x01, 9), c(0x81, 1)]);
        assert_eq!((l.messages, l.replies), (3, 2));
    }

    fn reply<'a>(
        from: Contact,
        token: Option<Token>,
        values: &'a [SocketAddrV4],
    ) -> SearchReply<'a> {
        SearchReply {
            from: from.addr,
            was_slow: false,
            id: from.id,
            nodes: &[],
            token,
            values,
            scrape: None,
        }
    }

    /// Nothing in flight is not the end while a fresh candidate is among the K closest.
    #[test]
    fn a_fresh_candidate_in_the_top_k_keeps_the_search_going() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::FindNode,
            NodeId([0xee; 20]),
            1,
            2,
        );
        for i in 1..=3 {
            l.add_candidate(c(0x80 + i as u8, i));
        }
        let mut q = Vec::new();
        l.next_queries(&mut q);
        assert_eq!(q.len(), 1);
        l.on_reply(&reply(c(0x81, 1), None, &[]), &mut Vec::new());
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(l.phase(), Phase::Searching, "candidate 2 was never asked");
        l.next_queries(&mut q);
        assert_eq!(q, vec![(c(0x82, 2).addr, Some(c(0x82, 2).id))]);
    }

    /// At most `MAX_PEERS_TRACKED` distinct peers are reported per lookup.
    #[test]
    fn reported_peers_are_bounded() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::GetPeers,
            NodeId([0xee; 20]),
            3,
            8,
        );
        for i in 1..=2 {
            l.add_candidate(c(0x80 + i as u8, i));
        }
        let mut q = Vec::new();
        l.next_queries(&mut q);
        let many: Vec<SocketAddrV4> = (0..MAX_PEERS_TRACKED as u32 + 1)
            .map(|i| SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 1))
            .collect();
        let mut new = Vec::new();
        l.on_reply(&reply(c(0x81, 1), None, &many), &mut new);
        assert_eq!(new.len(), MAX_PEERS_TRACKED);
        let more = [SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 1)];
        l.on_reply(&reply(c(0x82, 2), None, &more), &mut new);
        assert!(new.is_empty());
    }

    /// An announce that could not be sent counts as a failed one, so the lookup still ends.
    #[test]
    fn unsendable_announces_end_the_lookup() {
        let kind = LookupKind::Announce {
            port: Some(1),
            seed: false,
        };
        let mut l = Lookup::new(NodeId([0; 20]), kind, NodeId([0xee; 20]), 3, 2);
        for i in 1..=2 {
            l.add_candidate(c(0x80 + i as u8, i));
        }
        let mut q = Vec::new();
        l.next_queries(&mut q);
        for i in 1..=2 {
            let token = Token::new(&[i as u8]);
            l.on_reply(&reply(c(0x80 + i as u8, i), token, &[]), &mut Vec::new());
        }
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(l.phase(), Phase::Announcing);
        assert_eq!(ann.len(), 2);
        for _ in &ann {
            l.announce_unsent();
        }
        l.advance(&mut Vec::new());
        assert_eq!(l.phase(), Phase::Done);
        assert_eq!(l.announced, 0);
    }

    #[test]
    fn a_slow_candidate_lets_the_next_one_in() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::FindNode,
            NodeId([0xee; 20]),
            2,
            2,
        );
        for i in 1..=3 {
            l.add_candidate(c(i as u8, i));
        }
        let mut q = Vec::new();
        l.next_queries(&mut q);
        assert_eq!(q.len(), 2);
        // The closest passes its short timeout; the second answers.
        l.on_slow(c(1, 1).addr);
        let mut peers = Vec::new();
        l.on_reply(
            &SearchReply {
                from: c(2, 2).addr,
                was_slow: false,
                id: c(2, 2).id,
                nodes: &[],
                token: None,
                values: &[],
                scrape: None,
            },
            &mut peers,
        );
        // The third must be asked now, not after the slow one's hard timeout.
        l.next_queries(&mut q);
        assert_eq!(q, vec![(c(3, 3).addr, Some(c(3, 3).id))]);
        l.on_reply(
            &SearchReply {
                from: c(3, 3).addr,
                was_slow: false,
                id: c(3, 3).id,
                nodes: &[],
                token: None,
                values: &[],
                scrape: None,
            },
            &mut peers,
        );
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(l.phase(), Phase::Done);
    }

    #[test]
    fn failures_let_farther_candidates_in() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::FindNode,
            NodeId([0xee; 20]),
            1,
            1,
        );
        l.add_candidate(c(1, 1));
        l.add_candidate(c(2, 2));
        let mut q = Vec::new();
        l.next_queries(&mut q);
        assert_eq!(q[0].0, c(1, 1).addr);
        l.on_failure(c(1, 1).addr, false);
        l.next_queries(&mut q);
        assert_eq!(q[0].0, c(2, 2).addr);
    }

    #[test]
    fn get_peers_dedups_peers_and_announces_to_token_holders() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::Announce {
                port: Some(7),
                seed: false,
            },
            NodeId([0xee; 20]),
            3,
            8,
        );
        l.add_router("127.9.9.9:6881".parse().unwrap());
        l.add_candidate(c(1, 1));
        let mut q = Vec::new();
        l.next_queries(&mut q);
        assert_eq!(q.len(), 2);
        let peer: SocketAddrV4 = "127.5.5.5:5".parse().unwrap();
        let mut new = Vec::new();
        l.on_reply(
            &SearchReply {
                from: c(1, 1).addr,
                was_slow: false,
                id: c(1, 1).id,
                nodes: &[],
                token: Token::new(b"tk"),
                values: &[peer, peer],
                scrape: None,
            },
            &mut new,
        );
        assert_eq!(new, vec![peer]);
        l.on_reply(
            &SearchReply {
                from: "127.9.9.9:6881".parse().unwrap(),
                was_slow: false,
                id: NodeId([0x40; 20]),
                nodes: &[],
                token: None,
                values: &[peer],
                scrape: None,
            },
            &mut new,
        );
        assert!(new.is_empty());
        let mut ann = Vec::new();
        l.advance(&mut ann);
        // Only the responder that gave a token is announced to.
        assert_eq!(ann.len(), 1);
        assert_eq!(l.phase(), Phase::Announcing);
        l.on_announce_result(true);
        assert_eq!(l.phase(), Phase::Done);
        assert_eq!(l.announced, 1);
    }

    #[test]
    fn announces_go_to_the_closest_token_holders_whatever_their_ids() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::Announce {
                port: None,
                seed: false,
            },
            NodeId([0xee; 20]),
            3,
            1,
        );
        // Public addresses in a sans-IO lookup: nothing is sent anywhere.
        // The target is all zeros: `plain` (id 0x0101…) is the closest possible non-zero
        // prefix; a BEP 42 id farther away is drawn (its first 21 bits are fixed by the IP
        // and a random r, so setting bits would make it invalid).
        let plain = Contact::new(
            NodeId([1; 20]),
            "203.0.113.1:6881".parse::<SocketAddrV4>().unwrap(),
        );
        let (ip, bep42_id) = (2u8..=250)
            .flat_map(|last| {
                let ip = std::net::Ipv4Addr::new(203, 0, 113, last);
                std::iter::repeat_with(move || (ip, bep42::id_for_ip(ip, &mut rand::rng())))
                    .take(32)
            })
            .find(|(_, id)| id.0[0] >= 2)
            .expect("most BEP 42 prefixes start above 0x01");
        let valid = Contact::new(bep42_id, SocketAddrV4::new(ip, 6881));
        assert!(!bep42::is_valid(&plain.id, *plain.addr.ip()));
        assert!(bep42::is_valid(&valid.id, *valid.addr.ip()));
        l.add_candidate(plain);
        l.add_candidate(valid);
        let mut q = Vec::new();
        l.next_queries(&mut q);
        let mut new = Vec::new();
        for c in [plain, valid] {
            l.on_reply(
                &SearchReply {
                    from: c.addr,
                    was_slow: false,
                    id: c.id,
                    nodes: &[],
                    token: Token::new(b"t"),
                    values: &[],
                    scrape: None,
                },
                &mut new,
            );
        }
        let mut ann = Vec::new();
        l.advance(&mut ann);
        // K = 1: the closest node gets the announce although its id is not a BEP 42 id.
        assert_eq!(ann.iter().map(|a| a.1).collect::<Vec<_>>(), vec![plain.id]);
    }

    /// Makes `holders` the lookup's candidates and has each answer with a token.
    fn all_answer_with_tokens(l: &mut Lookup, holders: &[Contact]) {
        for c in holders {
            l.add_candidate(*c);
        }
        let mut q = Vec::new();
        l.next_queries(&mut q);
        let mut new = Vec::new();
        for c in holders {
            l.on_reply(&token_reply(c), &mut new);
        }
    }

    /// `c`'s reply with a token and nothing else.
    fn token_reply(c: &Contact) -> SearchReply<'static> {
        SearchReply {
            from: c.addr,
            was_slow: false,
            id: c.id,
            nodes: &[],
            token: Token::new(b"t"),
            values: &[],
            scrape: None,
        }
    }

    /// Answers every query the lookup sends (with a token and no nodes) until it sends no
    /// more; returns the ids' first bytes of the nodes it asked, in order.
    fn answer_what_is_asked(l: &mut Lookup, all: &[Contact]) -> Vec<u8> {
        let (mut asked, mut q, mut new) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            l.next_queries(&mut q);
            if q.is_empty() {
                return asked;
            }
            for (addr, _) in q.clone() {
                let c = all.iter().find(|c| c.addr == addr).expect("a candidate");
                asked.push(c.id.0[0]);
                l.on_reply(&token_reply(c), &mut new);
            }
        }
    }

    /// A storing lookup hears from ANNOUNCE_SPARES token holders beyond the K closest, so
    /// the slot of a node that swallows the announce (a sybil farm's one admitted node)
    /// goes to the next true node instead of being lost; a get_peers lookup asks only K.
    #[test]
    fn an_announce_lookup_asks_spares_beyond_k() {
        let k = 3;
        let holders: Vec<Contact> = (1..=7u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new([127, 0, 4, i].into(), 6881),
                )
            })
            .collect();
        let kinds = [
            LookupKind::Announce {
                port: Some(1),
                seed: false,
            },
            LookupKind::GetPeers,
        ];
        for kind in kinds {
            let mut l = Lookup::new(NodeId([0; 20]), kind, NodeId([0xee; 20]), 8, k);
            for c in &holders {
                l.add_candidate(*c);
            }
            let asked = answer_what_is_asked(&mut l, &holders);
            let mut ann = Vec::new();
            l.advance(&mut ann);
            if kind == LookupKind::GetPeers {
                assert_eq!(asked, vec![1, 2, 3], "K only");
                assert_eq!(l.phase(), Phase::Done);
                continue;
            }
            assert_eq!(asked, vec![1, 2, 3, 4, 5], "K + {ANNOUNCE_SPARES}");
            let ids: Vec<u8> = ann.iter().map(|a| a.1.0[0]).collect();
            assert_eq!(ids, vec![1, 2, 3], "announces go to the K closest");
            l.on_announce_result(true);
            l.on_announce_result(false); // node 2 swallowed it
            l.advance(&mut ann);
            assert_eq!(ann.len(), 1);
            assert_eq!(ann[0].1.0[0], 4, "its slot goes to the 4th closest");
        }
    }

    /// A failed announce (a node that gave a token and swallowed the announce) passes its
    /// slot to the next closest token holder; the lookup ends when every slot has an
    /// answer or no spare is left.
    #[test]
    fn a_failed_announce_passes_its_slot_to_the_next_token_holder() {
        let k = 3;
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::Announce {
                port: Some(1),
                seed: false,
            },
            NodeId([0xee; 20]),
            8,
            k,
        );
        let holders: Vec<Contact> = (1..=5u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new([127, 0, 3, i].into(), 6881),
                )
            })
            .collect();
        all_answer_with_tokens(&mut l, &holders);
        let ids =
            |v: &Vec<(SocketAddrV4, NodeId, Token)>| v.iter().map(|a| a.1.0[0]).collect::<Vec<_>>();
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(ids(&ann), vec![1, 2, 3], "the K closest first");
        l.on_announce_result(true);
        l.on_announce_result(false); // node 2 swallowed it
        l.advance(&mut ann);
        assert_eq!(ids(&ann), vec![4], "its slot goes to the next holder");
        l.on_announce_result(false); // node 3 too
        l.advance(&mut ann);
        assert_eq!(ids(&ann), vec![5]);
        assert_eq!(l.phase(), Phase::Announcing);
        l.on_announce_result(true); // node 4
        l.on_announce_result(false); // node 5: no spare left, the slot is lost
        l.advance(&mut ann);
        assert!(ann.is_empty());
        assert_eq!(l.phase(), Phase::Done);
        assert_eq!(l.announced, 2);
    }

    #[test]
    fn a_get_peers_lookup_knows_its_info_hash() {
        let ih = InfoHash([0x5a; 20]);
        let l: Lookup = Lookup::new(
            ih.to_node_id(),
            LookupKind::GetPeers,
            NodeId([0xee; 20]),
            3,
            8,
        );
        assert_eq!(l.target_info_hash(), ih);
    }

    /// A search is complete only once no query is in flight, even when the K closest live
    /// candidates have all answered: the one in flight may name closer nodes.
    #[test]
    fn a_search_with_a_query_in_flight_is_not_complete() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::FindNode,
            NodeId([0xee; 20]),
            2,
            2,
        );
        for i in 1..=3 {
            l.add_candidate(c(i as u8, i));
        }
        let mut q = Vec::new();
        l.next_queries(&mut q);
        l.on_slow(c(1, 1).addr);
        let reply = |i: u32, was_slow: bool| SearchReply {
            from: c(i as u8, i).addr,
            was_slow,
            id: c(i as u8, i).id,
            nodes: &[],
            token: None,
            values: &[],
            scrape: None,
        };
        let mut peers = Vec::new();
        l.on_reply(&reply(2, false), &mut peers);
        l.next_queries(&mut q);
        assert_eq!(q, vec![(c(3, 3).addr, Some(c(3, 3).id))]);
        // The slow one answers after all: the two closest have answered, 3 is in flight.
        l.on_reply(&reply(1, true), &mut peers);
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(l.phase(), Phase::Searching);
        l.on_reply(&reply(3, false), &mut peers);
        l.advance(&mut ann);
        assert_eq!(l.phase(), Phase::Done);
    }

    /// A resent announce goes to the same node with that node's own id and token.
    #[test]
    fn a_resent_announce_carries_the_nodes_own_token() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::Announce {
                port: Some(1),
                seed: false,
            },
            NodeId([0xee; 20]),
            8,
            2,
        );
        let holders: Vec<Contact> = (1..=3u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new([127, 0, 5, i].into(), 6881),
                )
            })
            .collect();
        all_answer_with_tokens(&mut l, &holders);
        let mut ann = Vec::new();
        l.advance(&mut ann);
        let second = ann[1];
        l.on_announce_timeout(second.0);
        l.advance(&mut ann);
        assert_eq!(ann, vec![second]);
    }

    /// Refused puts answer their slots: when every one is refused the lookup is done (no
    /// spare is asked), and `finish` ends a lookup at once.
    #[test]
    fn refused_puts_end_the_lookup_and_finish_ends_it_at_once() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::PutItem,
            NodeId([0xee; 20]),
            8,
            2,
        );
        let holders: Vec<Contact> = (1..=4u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new([127, 0, 6, i].into(), 6881),
                )
            })
            .collect();
        all_answer_with_tokens(&mut l, &holders);
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(ann.len(), 2);
        l.on_store_refused();
        assert_eq!(l.phase(), Phase::Announcing);
        l.on_store_refused();
        assert_eq!(l.phase(), Phase::Done);
        l.advance(&mut ann);
        assert!(ann.is_empty(), "no spare for a refused item");

        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::FindNode,
            NodeId([0xee; 20]),
            3,
            8,
        );
        l.add_candidate(c(1, 1));
        l.finish();
        assert_eq!(l.phase(), Phase::Done);
    }

    /// Up to K spares wait behind the K announces (all K announces may be swallowed), and
    /// every announce sent, first or replacement, counts as a message of the lookup.
    #[test]
    fn k_spares_stand_behind_the_announces_and_every_announce_is_counted() {
        let k = 3;
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::Announce {
                port: Some(1),
                seed: false,
            },
            NodeId([0xee; 20]),
            8,
            k,
        );
        let holders: Vec<Contact> = (1..=8u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new([127, 0, 3, i].into(), 6881),
                )
            })
            .collect();
        all_answer_with_tokens(&mut l, &holders);
        let searched = l.messages;
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(ann.len(), k);
        assert_eq!(l.messages, searched + 3);
        for _ in 0..k {
            l.on_announce_result(false);
        }
        l.advance(&mut ann);
        let ids: Vec<u8> = ann.iter().map(|a| a.1.0[0]).collect();
        assert_eq!(ids, vec![4, 5, 6], "K spares, the next closest");
        assert_eq!(l.messages, searched + 6);
        for _ in 0..k {
            l.on_announce_result(false);
        }
        l.advance(&mut ann);
        assert!(ann.is_empty(), "no more than K spares: {ann:?}");
        assert_eq!(l.phase(), Phase::Done);
    }

    /// A timed-out announce is sent once more to the same node (a lost datagram must not
    /// move the peer off the K closest); a second timeout passes the slot to a spare.
    #[test]
    fn a_timed_out_announce_is_resent_once() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::Announce {
                port: Some(1),
                seed: false,
            },
            NodeId([0xee; 20]),
            8,
            1,
        );
        let holders: Vec<Contact> = (1..=2u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new([127, 0, 4, i].into(), 6881),
                )
            })
            .collect();
        all_answer_with_tokens(&mut l, &holders);
        let mut ann = Vec::new();
        l.advance(&mut ann);
        assert_eq!(ann.len(), 1);
        let first = ann[0].0;
        l.on_announce_timeout(first);
        l.advance(&mut ann);
        assert_eq!(
            ann.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![first],
            "resent"
        );
        l.on_announce_timeout(first);
        l.advance(&mut ann);
        assert_eq!(
            ann.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![holders[1].addr],
            "then a spare"
        );
        l.on_announce_result(true);
        assert_eq!(l.phase(), Phase::Done);
        assert_eq!(l.announced, 1);
    }

    #[test]
    fn candidate_list_is_bounded_and_sorted() {
        let mut l = Lookup::new(
            NodeId([0; 20]),
            LookupKind::FindNode,
            NodeId([0xee; 20]),
            3,
            8,
        );
        for i in 0..200u32 {
            l.add_candidate(c((200 - i) as u8, i));
        }
        assert_eq!(l.candidates.len(), MAX_CANDIDATES);
        assert!(
            l.candidates
                .windows(2)
                .all(|w| w[0].distance <= w[1].distance)
        );
        l.add_candidate(Contact::new(
            NodeId([0xee; 20]),
            "127.0.0.9:1".parse().unwrap(),
        ));
        assert!(
            l.candidates
                .iter()
                .all(|c| c.id != Some(NodeId([0xee; 20])))
        );
    }

    /// Defect 7 of issue 12: junk `nodes` entries never become candidates.
    #[test]
    fn junk_candidates_are_filtered() {
        let me: SocketAddrV4 = "127.0.0.9:6881".parse().unwrap();
        let lan = CandidateFilter {
            own: [Some(me), None],
            public: false,
            one_per_ip: false,
        };
        let ok = |f: &CandidateFilter, s: &str| f.accepts(s.parse().unwrap());
        assert!(ok(&lan, "127.0.0.10:6881"));
        assert!(
            ok(&lan, "192.168.1.2:6881"),
            "a LAN node keeps private peers"
        );
        assert!(!ok(&lan, "127.0.0.10:0"), "port 0");
        assert!(!ok(&lan, "127.0.0.9:6881"), "ourselves");
        assert!(
            ok(&lan, "127.0.0.9:6882"),
            "another port of our IP is another node"
        );
        for bogon in [
            "0.1.2.3:1",
            "224.0.0.1:1",
            "255.255.255.255:1",
            "240.0.0.1:1",
        ] {
            assert!(!ok(&lan, bogon), "{bogon}");
        }
        let public = CandidateFilter {
            own: [None, Some("8.8.4.4:6881".parse().unwrap())],
            public: true,
            one_per_ip: false,
        };
        assert!(ok(&public, "9.9.9.9:6881"));
        assert!(!ok(&public, "8.8.4.4:6881"), "our voted external address");
        for private in [
            "10.0.0.1:1",
            "172.16.0.1:1",
            "192.168.0.1:1",
            "127.0.0.1:1",
            "169.254.0.1:1",
            "100.64.0.1:1",
            "198.18.0.1:1",
            "192.0.2.1:1",
        ] {
            assert!(!ok(&public, private), "{private}");
        }

        let target = NodeId([0; 20]);
        let mut l = Lookup::new(target, LookupKind::FindNode, NodeId([0xee; 20]), 3, 8);
        l.set_filter(lan);
        l.add_router("127.0.0.2:6881".parse().unwrap());
        let mut compact = Vec::new();
        for (i, a) in [
            "127.0.0.10:6881",
            "127.0.0.11:0",
            "127.0.0.9:6881",
            "240.1.1.1:6881",
        ]
        .iter()
        .enumerate()
        {
            Contact::new(
                NodeId([i as u8 + 1; 20]),
                a.parse::<SocketAddrV4>().unwrap(),
            )
            .write_compact(&mut compact);
        }
        let mut peers = Vec::new();
        l.on_reply(
            &SearchReply {
                from: "127.0.0.2:6881".parse().unwrap(),
                was_slow: false,
                id: NodeId([0x77; 20]),
                nodes: &compact,
                token: None,
                values: &[],
                scrape: None,
            },
            &mut peers,
        );
        assert_eq!(l.junk_dropped, 3);
        assert_eq!(l.candidates.len(), 2, "the router and the one good node");
    }
}
