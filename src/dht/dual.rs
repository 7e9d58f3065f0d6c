//! A dual-stack node (BEP 32): the IPv4 DHT's [`Node`] and the IPv6 DHT's side by side, as
//! one sans-IO state machine.
//!
//! BEP 32 keeps the two DHTs independent: each family has its own routing table, node id,
//! peer store and tokens, and a peer announced over IPv4 is an IPv4 peer. What a process that
//! runs both adds is the join between them:
//! - **`want`**: a query over one family that asks for the other family's nodes is answered
//!   from the sibling's table (the sibling is lent to the node for that one datagram);
//! - **bootstrapping one family through the other**: while a sibling's table holds fewer than
//!   K nodes, this node's queries carry `want = [n4, n6]`, and the other family's contacts in
//!   the replies go to the sibling, which verifies them before they enter its table (a
//!   contact is never trusted because another node listed it);
//! - **lookups on both**: `get_peers` and `announce` run on each family present, and their
//!   peers come out together as [`SocketAddr`]s.
//!
//! Either family may be absent (an IPv4-only or IPv6-only host): then this is just the other
//! node, and datagrams of the absent family are dropped and counted.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use crate::dht::id::{Family, InfoHash, NodeAddr};
use crate::dht::node::{DirectQuery, Event, LookupId, Node, OtherFamily, RequestId};
use crate::dht::outbox::Transmit;

/// One lookup started on every family present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DualLookup {
    /// The IPv4 node's lookup.
    pub v4: Option<LookupId>,
    /// The IPv6 node's lookup.
    pub v6: Option<LookupId>,
}

impl DualLookup {
    /// Whether `(family, id)` is one of this lookup's halves.
    pub fn has(&self, family: Family, id: LookupId) -> bool {
        match family {
            Family::V4 => self.v4 == Some(id),
            Family::V6 => self.v6 == Some(id),
        }
    }
}

/// An event of one of the two nodes.
#[derive(Debug)]
pub enum DualEvent {
    /// From the IPv4 node.
    V4(Event<SocketAddrV4>),
    /// From the IPv6 node.
    V6(Event<SocketAddrV6>),
}

impl DualEvent {
    /// The peers of an [`Event::Peers`], of either family, with the lookup half they came
    /// from.
    pub fn peers(&self) -> Option<(Family, LookupId, Vec<SocketAddr>)> {
        match self {
            DualEvent::V4(Event::Peers { lookup, peers }) => Some((
                Family::V4,
                *lookup,
                peers.iter().map(|&p| p.into()).collect(),
            )),
            DualEvent::V6(Event::Peers { lookup, peers }) => Some((
                Family::V6,
                *lookup,
                peers.iter().map(|&p| p.into()).collect(),
            )),
            _ => None,
        }
    }

    /// The lookup half an [`Event::LookupDone`] ended.
    pub fn done(&self) -> Option<(Family, LookupId)> {
        match self {
            DualEvent::V4(Event::LookupDone { lookup, .. }) => Some((Family::V4, *lookup)),
            DualEvent::V6(Event::LookupDone { lookup, .. }) => Some((Family::V6, *lookup)),
            _ => None,
        }
    }
}

/// Datagram counts of the family-level gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DualStats {
    /// Datagrams of a family this process does not run.
    pub dropped_no_family: u64,
    /// Other-family contacts handed from one node to its sibling for verification.
    pub contacts_handed_over: u64,
}

/// The IPv4 and IPv6 nodes of one process.
pub struct DualNode {
    v4: Option<Node<SocketAddrV4>>,
    v6: Option<Node<SocketAddrV6>>,
    /// The clock of the last call, for contacts handed over while events are polled.
    now: Instant,
    stats: DualStats,
}

impl DualNode {
    /// Both nodes, or one (`None` for a family the host does not have). At least one must
    /// be given.
    pub fn new(
        v4: Option<Node<SocketAddrV4>>,
        v6: Option<Node<SocketAddrV6>>,
        now: Instant,
    ) -> Self {
        assert!(v4.is_some() || v6.is_some(), "a DualNode needs a family");
        let mut n = DualNode {
            v4,
            v6,
            now,
            stats: DualStats::default(),
        };
        n.update_want();
        n
    }

    /// The IPv4 node.
    pub fn v4(&self) -> Option<&Node<SocketAddrV4>> {
        self.v4.as_ref()
    }

    /// The IPv6 node.
    pub fn v6(&self) -> Option<&Node<SocketAddrV6>> {
        self.v6.as_ref()
    }

    /// The IPv4 node, to command.
    pub fn v4_mut(&mut self) -> Option<&mut Node<SocketAddrV4>> {
        self.v4.as_mut()
    }

    /// The IPv6 node, to command.
    pub fn v6_mut(&mut self) -> Option<&mut Node<SocketAddrV6>> {
        self.v6.as_mut()
    }

    /// Family-level counts.
    pub fn stats(&self) -> DualStats {
        self.stats
    }

    /// A node asks for the other family's contacts (`want`) exactly while the sibling exists
    /// and its table is short of K.
    fn update_want(&mut self) {
        let short4 = self
            .v4
            .as_ref()
            .map(|n| n.table().len() < n.config().routing.k);
        let short6 = self
            .v6
            .as_ref()
            .map(|n| n.table().len() < n.config().routing.k);
        if let Some(n) = &mut self.v4 {
            n.set_want_other(short6 == Some(true));
        }
        if let Some(n) = &mut self.v6 {
            n.set_want_other(short4 == Some(true));
        }
    }

    /// Handles one datagram: to the node of its family (an IPv4-mapped source is IPv4), with
    /// the sibling lent for `want`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.now = now;
        match Family::of(from) {
            Family::V4 => match &mut self.v4 {
                Some(n) => {
                    let other = self.v6.as_ref().map(|s| s as &dyn OtherFamily);
                    n.handle_datagram_with(now, from, data, other);
                }
                None => self.stats.dropped_no_family += 1,
            },
            Family::V6 => match &mut self.v6 {
                Some(n) => {
                    let other = self.v4.as_ref().map(|s| s as &dyn OtherFamily);
                    n.handle_datagram_with(now, from, data, other);
                }
                None => self.stats.dropped_no_family += 1,
            },
        }
    }

    /// Runs both nodes' timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.update_want();
        if let Some(n) = &mut self.v4 {
            n.handle_timeout(now);
        }
        if let Some(n) = &mut self.v6 {
            n.handle_timeout(now);
        }
    }

    /// The earlier of the two nodes' timers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.v4.as_ref().and_then(Node::poll_timeout);
        let b = self.v6.as_ref().and_then(Node::poll_timeout);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram to send, of either family.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        if self.v4.as_ref().is_some_and(Node::has_transmit) {
            return self.v4.as_mut().and_then(Node::poll_transmit);
        }
        self.v6.as_mut().and_then(Node::poll_transmit)
    }

    /// The next event of either node. Other-family contacts are handed to the sibling here
    /// (not returned): it pings each before trusting it.
    pub fn poll_event(&mut self) -> Option<DualEvent> {
        loop {
            if let Some(ev) = self.v4.as_mut().and_then(Node::poll_event) {
                if let Event::OtherFamilyNodes(addrs) = &ev {
                    self.hand_over(addrs);
                    continue;
                }
                return Some(DualEvent::V4(ev));
            }
            if let Some(ev) = self.v6.as_mut().and_then(Node::poll_event) {
                if let Event::OtherFamilyNodes(addrs) = &ev {
                    self.hand_over(addrs);
                    continue;
                }
                return Some(DualEvent::V6(ev));
            }
            return None;
        }
    }

    fn hand_over(&mut self, addrs: &[SocketAddr]) {
        let now = self.now;
        let mut handed = 0;
        let v4: Vec<SocketAddrV4> = addrs
            .iter()
            .filter_map(|&a| NodeAddr::from_socket(a))
            .collect();
        let v6: Vec<SocketAddrV6> = addrs
            .iter()
            .filter_map(|&a| NodeAddr::from_socket(a))
            .collect();
        if let Some(n) = &mut self.v4 {
            handed += v4.len();
            n.add_contacts(now, v4);
        }
        if let Some(n) = &mut self.v6 {
            handed += v6.len();
            n.add_contacts(now, v6);
        }
        self.stats.contacts_handed_over += handed as u64;
    }

    /// Joins through `routers` of either family (each node gets its own family's).
    pub fn bootstrap(&mut self, now: Instant, routers: &[SocketAddr]) {
        self.bootstrap_family(now, Family::V4, routers);
        self.bootstrap_family(now, Family::V6, routers);
    }

    /// Bootstraps one family's node only (its share of `routers`), e.g. when its routers
    /// resolve later than the other family's, whose join must not restart.
    pub fn bootstrap_family(&mut self, now: Instant, family: Family, routers: &[SocketAddr]) {
        self.now = now;
        match family {
            Family::V4 => {
                if let Some(n) = &mut self.v4 {
                    let r: Vec<SocketAddrV4> = routers
                        .iter()
                        .filter_map(|&a| NodeAddr::from_socket(a))
                        .collect();
                    n.bootstrap(now, &r);
                }
            }
            Family::V6 => {
                if let Some(n) = &mut self.v6 {
                    let r: Vec<SocketAddrV6> = routers
                        .iter()
                        .filter_map(|&a| NodeAddr::from_socket(a))
                        .collect();
                    n.bootstrap(now, &r);
                }
            }
        }
        self.update_want();
    }

    /// Sends one query (see [`Node::query`]) from the node of `to`'s family (an
    /// IPv4-mapped address is IPv4), so its answer comes back over the family it went out
    /// on and, over IPv6, carries `nodes6`. The answer arrives as that node's
    /// [`Event::Reply`] (or [`Event::Pong`]), so it is known by the family together with the
    /// [`RequestId`] returned here: each node numbers its own requests. `None` when this
    /// host has no node of that family (nothing was sent). The tokio driver and the
    /// simulated crawler both route their queries through here.
    pub fn query(
        &mut self,
        now: Instant,
        to: SocketAddr,
        q: DirectQuery,
    ) -> Option<(Family, RequestId)> {
        self.now = now;
        match (SocketAddrV4::from_socket(to), to) {
            (Some(a), _) | (None, SocketAddr::V4(a)) => {
                self.v4.as_mut().map(|n| (Family::V4, n.query(now, a, q)))
            }
            (None, SocketAddr::V6(a)) => self.v6.as_mut().map(|n| (Family::V6, n.query(now, a, q))),
        }
    }

    /// `get_peers` on every family present.
    pub fn get_peers(&mut self, now: Instant, info_hash: InfoHash) -> DualLookup {
        self.now = now;
        DualLookup {
            v4: self.v4.as_mut().map(|n| n.get_peers(now, info_hash)),
            v6: self.v6.as_mut().map(|n| n.get_peers(now, info_hash)),
        }
    }

    /// `announce` on every family present: each announces this host's address of its own
    /// family (the implied port when `port` is `None`).
    pub fn announce(&mut self, now: Instant, info_hash: InfoHash, port: Option<u16>) -> DualLookup {
        self.now = now;
        DualLookup {
            v4: self.v4.as_mut().map(|n| n.announce(now, info_hash, port)),
            v6: self.v6.as_mut().map(|n| n.announce(now, info_hash, port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::node::Config;

    const PING: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";

    /// A host without IPv6 drops (and counts) IPv6 datagrams before any node sees them; an
    /// IPv4-mapped source goes to the IPv4 node.
    #[test]
    fn a_datagram_of_an_absent_family_is_dropped_and_counted() {
        let now = Instant::now();
        let mut n = DualNode::new(Some(Node::new(Config::loopback_testnet(), now)), None, now);
        n.handle_datagram(now, "[fd77::1]:6881".parse().unwrap(), PING);
        assert_eq!(n.stats().dropped_no_family, 1);
        assert!(n.poll_transmit().is_none());
        n.handle_datagram(now, "[::ffff:127.0.0.2]:6881".parse().unwrap(), PING);
        let t = n.poll_transmit().expect("answered over IPv4");
        assert_eq!(t.to, "127.0.0.2:6881".parse::<SocketAddr>().unwrap());
        assert_eq!(n.v4().unwrap().stats(now).replies_out, 1);
    }

    /// `want` is asked for exactly while the sibling's table is short of K, and not at all
    /// without a sibling.
    #[test]
    fn want_is_asked_while_the_sibling_is_short() {
        let now = Instant::now();
        let cfg = || Config {
            allow: crate::dht::allow::AllowList::any(),
            ..Config::loopback_testnet()
        };
        let mut n = DualNode::new(
            Some(Node::new(cfg(), now)),
            Some(Node::new_v6(cfg(), now)),
            now,
        );
        n.bootstrap(now, &["127.0.0.9:6881".parse().unwrap()]);
        let t = n.poll_transmit().expect("a bootstrap query");
        let m = crate::dht::krpc::decode(t.payload).unwrap();
        let crate::dht::krpc::Body::Query(q) = m.body else {
            panic!("a query")
        };
        assert_eq!(q.want, crate::dht::krpc::Want::BOTH);
        let mut alone = DualNode::new(Some(Node::new(cfg(), now)), None, now);
        alone.bootstrap(now, &["127.0.0.9:6881".parse().unwrap()]);
        let t = alone.poll_transmit().expect("a bootstrap query");
        let m = crate::dht::krpc::decode(t.payload).unwrap();
        let crate::dht::krpc::Body::Query(q) = m.body else {
            panic!("a query")
        };
        assert_eq!(q.want, crate::dht::krpc::Want::NONE);
    }
}
