//! The walk on the virtual-time simulator: the crawler's node is an ordinary simulated
//! [`Node`](crate::dht::node::Node) and the [`Walker`] drives it through
//! [`Node::query`](crate::dht::node::Node::query), exactly as the tokio crawler drives its
//! node through [`DhtHandle::query`](crate::dht::driver::DhtHandle::query). Used by the
//! interval test and the 5,000-node benchmark, where it counts every packet and runs hours in
//! seconds.
//!
//! A set of infohashes stands in for the sled store. Passive harvest is not simulated (the
//! simulator gives every node one configuration, and reporting every node's incoming
//! queries would swamp the event queue).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::walk::{WalkConfig, WalkError, WalkQuery, Walker};
use crate::dht::id::InfoHash;
use crate::dht::node::{Event, PingError, RequestId};
use crate::sim::Sim;

/// Longest virtual-time step between looks at the node's events, so answers are handled
/// close to when they arrive.
const STEP: Duration = Duration::from_millis(10);

/// A crawler running on a simulated node.
pub struct SimCrawler {
    /// The crawler's node index in the simulator.
    pub node: usize,
    /// The walk it drives: the same scheduler as the tokio crawler's.
    pub walker: Walker,
    /// Every infohash found so far.
    pub known: HashSet<InfoHash>,
    /// Every query sent, with its virtual send time (kept when `log_queries`).
    pub log: Vec<(Instant, WalkQuery)>,
    /// Whether to fill `log` (off by default: it grows with every query).
    pub log_queries: bool,
    requests: HashMap<RequestId, SocketAddrV4>,
    samples: Vec<InfoHash>,
    reseed_every: Duration,
    next_reseed: Instant,
}

impl SimCrawler {
    /// Adds the crawler's node to `sim`, bootstrapping from `routers`.
    pub fn join(sim: &mut Sim, walk: WalkConfig, routers: &[SocketAddrV4]) -> SimCrawler {
        let node = sim.add_node();
        sim.with_node(node, |n, now| n.bootstrap(now, routers));
        let now = sim.now();
        let mut walker = Walker::new(walk, now);
        walker.exclude(crate::sim::sim_addr(node));
        SimCrawler {
            node,
            walker,
            known: HashSet::new(),
            log: Vec::new(),
            log_queries: false,
            requests: HashMap::new(),
            samples: Vec::new(),
            reseed_every: Duration::from_secs(30),
            next_reseed: now,
        }
    }

    /// Runs the simulation and the walk until `until` (virtual), or until `stop` says so
    /// (checked after each step).
    pub fn run_until(
        &mut self,
        sim: &mut Sim,
        until: Instant,
        mut stop: impl FnMut(&Self) -> bool,
    ) {
        loop {
            let now = sim.now();
            if now >= until || stop(self) {
                break;
            }
            if now >= self.next_reseed {
                let contacts: Vec<SocketAddrV4> = sim
                    .node(self.node)
                    .contacts()
                    .iter()
                    .map(|c| c.addr)
                    .collect();
                self.walker.add_nodes(now, contacts);
                self.next_reseed = now + self.reseed_every;
            }
            let (walker, requests, log, log_on) = (
                &mut self.walker,
                &mut self.requests,
                &mut self.log,
                self.log_queries,
            );
            sim.with_node(self.node, |n, now| {
                while let Some(q) = walker.poll_query(now) {
                    let id = n.query(now, q.addr, q.query);
                    requests.insert(id, q.addr);
                    if log_on {
                        log.push((now, q));
                    }
                }
            });
            self.drain(sim);
            let wake = self
                .walker
                .poll_timeout(now)
                .unwrap_or(until)
                .min(until)
                .min(self.next_reseed)
                .min(now + STEP)
                .max(now + Duration::from_millis(1));
            sim.run_until(wake);
            self.drain(sim);
        }
    }

    fn drain(&mut self, sim: &mut Sim) {
        let now = sim.now();
        for (i, ev) in sim.take_events() {
            if i != self.node {
                continue;
            }
            let Event::Reply { request, result } = ev else {
                continue;
            };
            let Some(addr) = self.requests.remove(&request) else {
                continue;
            };
            match result {
                Ok(r) => {
                    let known = &self.known;
                    self.walker.on_reply(
                        now,
                        addr,
                        &r,
                        |ih| !known.contains(ih),
                        &mut self.samples,
                    );
                    self.known.extend(self.samples.iter().copied());
                }
                Err(e) => {
                    let e = match e {
                        PingError::Timeout | PingError::WrongId => WalkError::Timeout,
                        PingError::Remote(c, _) => WalkError::Remote(c),
                        PingError::Busy => WalkError::Busy,
                        PingError::NotAllowed => WalkError::Refused,
                    };
                    self.walker.on_error(now, addr, e);
                }
            }
        }
    }
}
