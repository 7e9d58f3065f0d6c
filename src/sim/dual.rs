//! A dual-stack network of sans-IO [`DualNode`]s on a virtual clock (BEP 32): IPv4-only,
//! IPv6-only and dual nodes, every datagram delivered in memory by address after a fixed
//! latency. The IPv4 [`super::Sim`] models loss, NATs and liars; this one models families,
//! for the dual-stack tests and the per-family lookup benchmark.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use crate::dht::allow::AllowList;
use crate::dht::dual::{DualEvent, DualLookup, DualNode};
use crate::dht::id::{Family, InfoHash};
use crate::dht::node::{Config, Event, Node};

/// How a lookup ended, per family half.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DualOutcome {
    /// Peers reported by either half.
    pub peers: Vec<SocketAddr>,
    /// Queries the IPv4 half sent (`None`: no IPv4 half).
    pub messages4: Option<u32>,
    /// Queries the IPv6 half sent.
    pub messages6: Option<u32>,
}

/// The network.
pub struct DualNet {
    nodes: Vec<DualNode>,
    /// Each node's address per family.
    addrs: Vec<(Option<SocketAddrV4>, Option<SocketAddrV6>)>,
    by_addr: HashMap<SocketAddr, usize>,
    /// (delivery time, sequence) -> (to, from, datagram).
    wire: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    /// Node timers, possibly stale (a node is only ever woken early, which is harmless).
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    seq: u64,
    now: Instant,
    latency: Duration,
    events: Vec<(usize, DualEvent)>,
}

/// Settings of a testnet node: the loopback testnet's, with the IPv6 test prefix allowed.
pub fn config(seed: u64) -> Config {
    Config {
        seed: Some(seed),
        allow: AllowList::only(vec![
            "127.0.0.0/8".parse().expect("valid"),
            "fd77::/16".parse().expect("valid"),
        ]),
        ..Config::loopback_testnet()
    }
}

impl DualNet {
    /// An empty network whose datagrams take `latency`.
    pub fn new(latency: Duration) -> DualNet {
        DualNet {
            nodes: Vec::new(),
            addrs: Vec::new(),
            by_addr: HashMap::new(),
            wire: BTreeMap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            now: Instant::now(),
            latency,
            events: Vec::new(),
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a node with these addresses (at least one); its index.
    pub fn add(&mut self, v4: Option<SocketAddrV4>, v6: Option<SocketAddrV6>) -> usize {
        let i = self.nodes.len();
        let seed = i as u64 + 1;
        let n4 = v4.map(|a| {
            self.by_addr.insert(a.into(), i);
            let cfg = Config {
                local_addr: Some(a.into()),
                ..config(seed)
            };
            Node::new(cfg, self.now)
        });
        let n6 = v6.map(|a| {
            self.by_addr.insert(a.into(), i);
            let cfg = Config {
                local_addr: Some(a.into()),
                ..config(seed + (1 << 32))
            };
            Node::new_v6(cfg, self.now)
        });
        self.nodes.push(DualNode::new(n4, n6, self.now));
        self.addrs.push((v4, v6));
        self.timers.push(Reverse((self.now, i)));
        i
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &DualNode {
        &self.nodes[i]
    }

    /// Node `i`, to command (call [`DualNet::touch`] after, so its timers are seen).
    pub fn node_mut(&mut self, i: usize) -> &mut DualNode {
        &mut self.nodes[i]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s addresses.
    pub fn addrs(&self, i: usize) -> (Option<SocketAddrV4>, Option<SocketAddrV6>) {
        self.addrs[i]
    }

    /// Collects node `i`'s datagrams and events and schedules its next timer.
    pub fn touch(&mut self, i: usize) {
        let (v4, v6) = self.addrs[i];
        while let Some(t) = self.nodes[i].poll_transmit() {
            let from: SocketAddr = match Family::of(t.to) {
                Family::V4 => v4.expect("an IPv4 node sends over IPv4").into(),
                Family::V6 => v6.expect("an IPv6 node sends over IPv6").into(),
            };
            self.seq += 1;
            self.wire.insert(
                (self.now + self.latency, self.seq),
                (t.to, from, t.payload.to_vec()),
            );
        }
        while let Some(ev) = self.nodes[i].poll_event() {
            self.events.push((i, ev));
        }
        if let Some(t) = self.nodes[i].poll_timeout() {
            self.timers.push(Reverse((t, i)));
        }
    }

    /// Runs the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs the network until `until` (virtual; a time already past does nothing), for a
    /// caller that keeps its own schedule, such as the simulated crawler
    /// (`crate::crawl::sim`), which wakes at its walk's next deadline.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            let next_wire = self.wire.keys().next().map(|k| k.0);
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            let Some(next) = [next_wire, next_timer]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= until)
            else {
                self.now = self.now.max(until);
                return;
            };
            self.now = self.now.max(next);
            if next_wire == Some(next) {
                let (&k, _) = self.wire.iter().next().expect("a datagram is due");
                let (to, from, data) = self.wire.remove(&k).expect("present");
                if let Some(&j) = self.by_addr.get(&to) {
                    self.nodes[j].handle_datagram(self.now, from, &data);
                    self.touch(j);
                }
            } else {
                let Reverse((_, i)) = self.timers.pop().expect("a timer is due");
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                }
                self.touch(i);
            }
        }
    }

    /// Runs until both halves of `lookup` on node `i` have ended (at most `limit`).
    pub fn finish(&mut self, i: usize, lookup: DualLookup, limit: Duration) -> Option<DualOutcome> {
        self.touch(i);
        let mut out = DualOutcome::default();
        let mut open = usize::from(lookup.v4.is_some()) + usize::from(lookup.v6.is_some());
        let deadline = self.now + limit;
        while self.now < deadline {
            self.run_for(Duration::from_millis(100));
            for (j, ev) in std::mem::take(&mut self.events) {
                if j != i {
                    continue;
                }
                if let Some((f, id, p)) = ev.peers()
                    && lookup.has(f, id)
                {
                    out.peers.extend(p);
                }
                let messages = match &ev {
                    DualEvent::V4(Event::LookupDone { messages, .. })
                    | DualEvent::V6(Event::LookupDone { messages, .. }) => *messages,
                    _ => continue,
                };
                if let Some((f, id)) = ev.done()
                    && lookup.has(f, id)
                {
                    match f {
                        Family::V4 => out.messages4 = Some(messages),
                        Family::V6 => out.messages6 = Some(messages),
                    }
                    open -= 1;
                }
            }
            if open == 0 {
                out.peers.sort();
                out.peers.dedup();
                return Some(out);
            }
        }
        None
    }

    /// Drops the events gathered so far (a long run between lookups gathers many).
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// Takes the events gathered so far, tagged with the node index, for a caller that
    /// drives its own node (the simulated crawler reads the answers to its queries here).
    /// The buffer keeps its capacity, so a caller that looks every few milliseconds does
    /// not reallocate it each time.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, (usize, DualEvent)> {
        self.events.drain(..)
    }

    /// Makes node `i`'s `family` node store `info_hash` (with the node's own address of that
    /// family as the peer), so its BEP 51 samples return it. Placing an infohash at chosen
    /// nodes, rather than announcing it (which stores it at the K closest nodes of the
    /// announcer's family), lets a test say exactly which DHT holds it: e.g. only IPv6-only
    /// nodes, which a crawler reaches over IPv6 alone. Returns false if node `i` has no
    /// `family` node (or its store refused).
    pub fn hold(&mut self, i: usize, family: Family, info_hash: InfoHash) -> bool {
        let now = self.now;
        let Some(&(v4, v6)) = self.addrs.get(i) else {
            return false;
        };
        let node = &mut self.nodes[i];
        match family {
            Family::V4 => match (node.v4_mut(), v4) {
                (Some(n), Some(a)) => n.hold(now, info_hash, a),
                _ => false,
            },
            Family::V6 => match (node.v6_mut(), v6) {
                (Some(n), Some(a)) => n.hold(now, info_hash, a),
                _ => false,
            },
        }
    }
}
