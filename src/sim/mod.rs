//! Test networks: a virtual-time simulator over the sans-IO core ([`Sim`]) and a loopback
//! testnet of real nodes on real sockets ([`testnet::Testnet`]), with the statistics the
//! testnet tools report ([`stats`]).
//!
//! The simulator runs thousands of [`Node`]s in one thread with per-packet latency and loss
//! and a virtual clock, so behaviour that takes hours on a real network (token expiry,
//! bucket refresh, churn) is tested in seconds, deterministically for a given seed. No
//! socket is opened: datagrams move between nodes through an in-memory priority queue.

#![deny(missing_docs)]

pub mod dual;
pub mod mix;
pub mod stats;
pub mod testnet;

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::dht::id::NodeId;
use crate::dht::node::{self, Event, Node};
use mix::Behavior;

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// One-way latency is drawn uniformly from this range for every datagram.
    pub latency: (Duration, Duration),
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Seed of the simulation's RNG (latencies, losses, node seeds): the same seed replays
    /// the same run.
    pub seed: u64,
    /// Template for every node (its id and RNG seed are set per node).
    pub node: node::Config,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: (Duration::from_millis(10), Duration::from_millis(50)),
            loss: 0.0,
            seed: 1,
            node: node::Config::loopback_testnet(),
        }
    }
}

/// The simulated address of node `i`: 127.x.y.z, distinct per node, port 6881.
pub fn sim_addr(i: usize) -> SocketAddrV4 {
    let i = i as u32;
    let ip = Ipv4Addr::new(
        127,
        100 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250) as u8 + 1,
    );
    SocketAddrV4::new(ip, 6881)
}

struct Packet {
    at: Instant,
    seq: u64,
    from: SocketAddrV4,
    to: usize,
    data: Vec<u8>,
}

impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Packet {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Counters of the simulated network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams the nodes sent.
    pub sent: u64,
    /// Datagrams handed to their destination node.
    pub delivered: u64,
    /// Datagrams dropped by the loss probability or because the sender is
    /// [`Behavior::Silent`].
    pub lost: u64,
    /// Sent to an address with no (online) node, or swallowed by a
    /// [`Behavior::Sybil`] receiver.
    pub undeliverable: u64,
}

/// The virtual-time simulator.
pub struct Sim {
    config: SimConfig,
    nodes: Vec<Node>,
    online: Vec<bool>,
    index: HashMap<SocketAddrV4, usize>,
    start: Instant,
    now: Instant,
    packets: BinaryHeap<Reverse<Packet>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    deadlines: Vec<Option<Instant>>,
    seq: u64,
    rng: StdRng,
    events: Vec<(usize, Instant, Event)>,
    free_buffers: Vec<Vec<u8>>,
    /// How each node deviates from an honest one (see [`mix`]).
    behaviors: Vec<Behavior>,
    /// Datagram counters of the whole network.
    pub net: NetStats,
}

impl Sim {
    /// An empty network whose virtual clock starts at the current instant.
    pub fn new(config: SimConfig) -> Self {
        let start = Instant::now();
        Sim {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            nodes: Vec::new(),
            online: Vec::new(),
            index: HashMap::new(),
            start,
            now: start,
            packets: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            deadlines: Vec::new(),
            seq: 0,
            events: Vec::new(),
            free_buffers: Vec::new(),
            behaviors: Vec::new(),
            net: NetStats::default(),
        }
    }

    /// Adds a node with the template config and returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(self.config.node.clone())
    }

    /// Adds a node with its own config (e.g. a crawler that reports incoming queries); its
    /// RNG seed is still drawn from the simulation's, so runs stay reproducible.
    pub fn add_node_with(&mut self, mut cfg: node::Config) -> usize {
        let i = self.nodes.len();
        cfg.seed = Some(self.rng.random());
        self.nodes.push(Node::new(cfg, self.now));
        self.online.push(true);
        self.deadlines.push(None);
        self.behaviors.push(Behavior::Honest);
        self.index.insert(sim_addr(i), i);
        self.after(i);
        i
    }

    /// Adds `n` nodes that join one after another (`spacing` apart), each through node 0
    /// as its bootstrap router (retried with backoff, so a join survives packet loss) and up
    /// to two random nodes that joined before it as plain contacts. BEP 5 keeps routers out
    /// of routing tables, so only node 0 plays router: nodes given as routers would be in no
    /// joiner's table.
    pub fn grow(&mut self, n: usize, spacing: Duration) {
        for _ in 0..n {
            let i = self.add_node();
            let joined = self.nodes.len() - 1;
            let mut routers = Vec::new();
            let mut contacts = Vec::new();
            if joined > 0 {
                if self.online[0] {
                    routers.push(sim_addr(0));
                }
                for _ in 0..2 {
                    let j = self.rng.random_range(0..joined);
                    if j != 0 && self.online[j] && !contacts.contains(&sim_addr(j)) {
                        contacts.push(sim_addr(j));
                    }
                }
            }
            self.with_node(i, |node, now| {
                node.add_contacts(now, contacts);
                node.bootstrap(now, &routers);
            });
            let until = self.now + spacing;
            self.run_until(until);
        }
    }

    /// Number of nodes added (online or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added yet.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`, for inspection.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Whether node `i` is on the network (not taken off by [`Sim::set_offline`]).
    pub fn is_online(&self, i: usize) -> bool {
        self.online[i]
    }

    /// Makes node `i` misbehave from now on. A NAT'ed node's other port is reachable too
    /// (a full-cone mapping).
    pub fn set_behavior(&mut self, i: usize, b: Behavior) {
        match b {
            Behavior::Nat(port) => {
                self.index
                    .insert(SocketAddrV4::new(*sim_addr(i).ip(), port), i);
            }
            Behavior::Sybil(at) => {
                self.index.insert(at, i);
            }
            _ => {}
        }
        self.behaviors[i] = b;
    }

    /// How node `i` behaves ([`Behavior::Honest`] unless [`Sim::set_behavior`] changed it).
    pub fn behavior(&self, i: usize) -> Behavior {
        self.behaviors[i]
    }

    /// Sets the probability that a datagram is lost (1.0 silences the network).
    pub fn set_loss(&mut self, loss: f64) {
        self.config.loss = loss;
    }

    /// Node `i` restarts with a new random id and an empty table, rejoining through
    /// `contacts`; everyone who listed it now holds a stale id for its address.
    pub fn restart_with_new_id(&mut self, i: usize, contacts: Vec<SocketAddrV4>) {
        let mut cfg = self.config.node.clone();
        cfg.id = Some(NodeId::random(&mut self.rng));
        cfg.seed = Some(self.rng.random());
        self.nodes[i] = Node::new(cfg, self.now);
        self.deadlines[i] = None;
        let now = self.now;
        self.nodes[i].add_contacts(now, contacts);
        self.after(i);
    }

    /// Takes node `i` off the network: packets to it are lost and its timers stop.
    pub fn set_offline(&mut self, i: usize) {
        self.online[i] = false;
        self.deadlines[i] = None;
    }

    /// Runs `f` on node `i` at the current virtual time, then delivers what it sent.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[i], now);
        self.after(i);
        r
    }

    /// Events the nodes produced since the last call, tagged with the node index.
    pub fn take_events(&mut self) -> Vec<(usize, Event)> {
        self.take_timed_events()
            .into_iter()
            .map(|(i, _, e)| (i, e))
            .collect()
    }

    /// Events with the virtual time at which they were produced.
    pub fn take_timed_events(&mut self) -> Vec<(usize, Instant, Event)> {
        std::mem::take(&mut self.events)
    }

    /// Advances virtual time by `d`, processing everything due.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Processes packets and timers in time order up to `until`.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            let next_packet = self.packets.peek().map(|Reverse(p)| p.at);
            let next_timer = loop {
                match self.timers.peek() {
                    Some(Reverse((t, i))) if self.deadlines[*i] != Some(*t) => {
                        self.timers.pop();
                    }
                    Some(Reverse((t, _))) => break Some(*t),
                    None => break None,
                }
            };
            let next = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p.min(t),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let Reverse(p) = self.packets.pop().expect("peeked");
                if self.online[p.to] && !mix::eaten(self.behaviors[p.to], &p.data) {
                    self.net.delivered += 1;
                    let now = self.now;
                    self.nodes[p.to].handle_datagram(now, SocketAddr::V4(p.from), &p.data);
                    self.after(p.to);
                } else {
                    self.net.undeliverable += 1;
                }
                self.free_buffers.push(p.data);
            } else {
                let Reverse((_, i)) = self.timers.pop().expect("peeked");
                self.deadlines[i] = None;
                let now = self.now;
                self.nodes[i].handle_timeout(now);
                self.after(i);
            }
        }
        self.now = self.now.max(until);
    }

    /// Moves node `i`'s output into the network and re-arms its timer.
    fn after(&mut self, i: usize) {
        let behavior = self.behaviors[i];
        let from = match behavior {
            Behavior::Nat(port) => SocketAddrV4::new(*sim_addr(i).ip(), port),
            Behavior::Sybil(at) => at,
            _ => sim_addr(i),
        };
        let (lo, hi) = self.config.latency;
        while let Some(t) = self.nodes[i].poll_transmit() {
            self.net.sent += 1;
            let SocketAddr::V4(to) = t.to else { continue };
            if behavior == Behavior::Silent {
                self.net.lost += 1;
                continue;
            }
            if self.config.loss > 0.0 && self.rng.random::<f64>() < self.config.loss {
                self.net.lost += 1;
                continue;
            }
            let to_addr = to;
            let Some(&to) = self.index.get(&to) else {
                self.net.undeliverable += 1;
                continue;
            };
            let latency = if hi > lo {
                self.rng.random_range(lo..hi)
            } else {
                lo
            };
            let mut data = self.free_buffers.pop().unwrap_or_default();
            data.clear();
            data.extend_from_slice(t.payload);
            mix::rewrite(behavior, to_addr, &mut data);
            self.seq += 1;
            self.packets.push(Reverse(Packet {
                at: self.now + latency,
                seq: self.seq,
                from,
                to,
                data,
            }));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events.push((i, self.now, e));
        }
        if !self.online[i] {
            return;
        }
        if let Some(mut t) = self.nodes[i].poll_timeout() {
            // Never schedule into the past (that would spin without time advancing).
            if t <= self.now {
                t = self.now + Duration::from_millis(1);
            }
            if self.deadlines[i] != Some(t) {
                self.deadlines[i] = Some(t);
                self.timers.push(Reverse((t, i)));
            }
        }
    }
}
