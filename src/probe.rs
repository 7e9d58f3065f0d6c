//! Measurement helpers for the testnet tools: a "probe" node whose lookups report exactly how
//! many queries they sent, and small statistics helpers.
//!
//! Why a separate driver: message counts alone no longer need one
//! ([`crate::dht::driver::DhtHandle::find_node`] returns its
//! [`crate::dht::driver::LookupSummary`], whose `messages` dht-testnet reports for its nodes'
//! lookups), but a probe can also hold every received datagram back for an emulated
//! wide-area round trip ([`ProbeOptions::delay`], used by `dht-restart-bench --delay-ms`),
//! which the real driver has no hook for. Folding that hook into the real driver and
//! deleting this loop is the remaining step of issue 11 ("one of each"). A probe runs the
//! very same sans-IO [`Node`] (same lookup code, same routing table) behind a minimal tokio
//! loop that keeps every [`Event::LookupDone`], so its numbers are those of a real node.
//! Probes are for measurement only: they have no persistence and no bootstrap retry by name
//! resolution.

#![deny(missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::dht::driver::StartError;
use crate::dht::id::{Contact, InfoHash, NodeId};
use crate::dht::node::{self, Event, LookupId, Node, Stats};

/// What one probe lookup found and cost.
#[derive(Debug, Clone, Default)]
pub struct ProbeLookup {
    /// The K closest nodes that answered, closest first.
    pub closest: Vec<Contact>,
    /// Peers (get_peers only).
    pub peers: Vec<SocketAddrV4>,
    /// Queries the lookup sent.
    pub messages: u32,
    /// Wall time from start to completion.
    pub elapsed: Duration,
}

enum ProbeCmd {
    Lookup {
        target: NodeId,
        get_peers: bool,
        reply: oneshot::Sender<ProbeLookup>,
    },
    Stats(oneshot::Sender<Stats>),
    Contacts(oneshot::Sender<Vec<Contact>>),
}

/// How a probe starts.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Addresses to re-verify at start, as a restarted node does with its persisted contacts
    /// (set `node::Config::id` to the persisted id as well).
    pub persisted: Vec<SocketAddrV4>,
    /// Every received datagram is handed to the node this much later: on loopback, where a
    /// round trip takes microseconds, this emulates a wide-area round trip for this node's
    /// own exchanges (its queries' replies arrive `delay` late), which is what decides how
    /// many sequential rounds a join costs in wall time.
    pub delay: Duration,
}

/// A running probe node. Cloneable; the probe stops when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Probe {
    tx: mpsc::UnboundedSender<ProbeCmd>,
    addr: SocketAddrV4,
    id: NodeId,
}

impl Probe {
    /// Binds `bind` (which must be a loopback address: probes exist only for testnets),
    /// starts the node with `config` (allow-list forced to loopback) on the current runtime,
    /// and bootstraps it from `routers`.
    pub async fn start(
        bind: SocketAddrV4,
        config: node::Config,
        routers: &[SocketAddrV4],
    ) -> Result<Probe, StartError> {
        Self::start_with(bind, config, routers, ProbeOptions::default()).await
    }

    /// [`Probe::start`] with persisted contacts and/or an emulated receive delay. Contacts are
    /// queued before the bootstrap starts, in the order [`crate::dht::driver::Dht::bind`] uses.
    pub async fn start_with(
        bind: SocketAddrV4,
        mut config: node::Config,
        routers: &[SocketAddrV4],
        options: ProbeOptions,
    ) -> Result<Probe, StartError> {
        config.allow = crate::dht::allow::AllowList::loopback();
        let socket = UdpSocket::bind(SocketAddr::V4(bind))
            .await
            .map_err(|error| StartError::Bind {
                addr: SocketAddr::V4(bind),
                error,
            })?;
        let addr = match socket.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            Ok(SocketAddr::V6(_)) => unreachable!("bound an IPv4 address"),
            Err(error) => {
                return Err(StartError::Bind {
                    addr: SocketAddr::V4(bind),
                    error,
                });
            }
        };
        let now = Instant::now();
        let mut node = Node::new(config, now);
        node.add_contacts(now, options.persisted);
        node.bootstrap(now, routers);
        let id = node.id();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(socket, node, rx, options.delay));
        Ok(Probe { tx, addr, id })
    }

    /// The address the probe's socket is bound to (the kernel's port if `bind` had 0).
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// The probe node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Runs a find_node (`get_peers == false`) or get_peers lookup for `target`. `None` if the
    /// probe has stopped.
    pub async fn lookup(&self, target: NodeId, get_peers: bool) -> Option<ProbeLookup> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(ProbeCmd::Lookup {
                target,
                get_peers,
                reply,
            })
            .ok()?;
        rx.await.ok()
    }

    /// Waits until the probe's table has `min` entries (or `timeout` passes) and returns
    /// its size. Lookups started before the bootstrap lookup has filled the table end at
    /// once: the node seeds user lookups from its table only.
    pub async fn wait_for_table(&self, min: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let size = self
                .stats()
                .await
                .map_or(0, |s| s.good_nodes + s.questionable_nodes);
            if size >= min || tokio::time::Instant::now() >= deadline {
                return size;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The probe node's counters (table size included).
    pub async fn stats(&self) -> Option<Stats> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(ProbeCmd::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// What a node would persist: table entries, then replacements.
    pub async fn contacts(&self) -> Option<Vec<Contact>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(ProbeCmd::Contacts(tx)).ok()?;
        rx.await.ok()
    }
}

struct Running {
    reply: oneshot::Sender<ProbeLookup>,
    peers: Vec<SocketAddrV4>,
    started: Instant,
}

async fn drive(
    socket: UdpSocket,
    mut node: Node,
    mut rx: mpsc::UnboundedReceiver<ProbeCmd>,
    delay: Duration,
) {
    let mut buf = vec![0u8; 65_536];
    let mut running: HashMap<LookupId, Running> = HashMap::new();
    // Received datagrams waiting out the emulated delay, in arrival (= delivery) order.
    let mut delayed: VecDeque<(tokio::time::Instant, SocketAddr, Vec<u8>)> = VecDeque::new();
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        while let Some(t) = node.poll_transmit() {
            // A failed send is a lost datagram; the node's timeouts deal with it.
            let _ = socket.send_to(t.payload, t.to).await;
        }
        while let Some(ev) = node.poll_event() {
            match ev {
                Event::Peers { lookup, peers } => {
                    if let Some(r) = running.get_mut(&lookup) {
                        r.peers.extend(peers);
                    }
                }
                Event::LookupDone {
                    lookup,
                    closest,
                    messages,
                    ..
                } => {
                    if let Some(r) = running.remove(&lookup) {
                        let _ = r.reply.send(ProbeLookup {
                            closest,
                            peers: r.peers,
                            messages,
                            elapsed: r.started.elapsed(),
                        });
                    }
                }
                // Pings, direct queries, id changes and incoming reports: not a probe's business.
                _ => {}
            }
        }
        let mut deadline = node
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(far);
        if let Some((due, _, _)) = delayed.front() {
            deadline = deadline.min(*due);
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    if delay.is_zero() {
                        node.handle_datagram(Instant::now(), from, &buf[..n]);
                    } else {
                        let due = tokio::time::Instant::now() + delay;
                        delayed.push_back((due, from, buf[..n].to_vec()));
                    }
                }
            }
            cmd = rx.recv() => match cmd {
                None => break,
                Some(ProbeCmd::Lookup { target, get_peers, reply }) => {
                    let now = Instant::now();
                    let id = if get_peers {
                        node.get_peers(now, InfoHash::from_node_id(target))
                    } else {
                        node.find_node(now, target)
                    };
                    running.insert(id, Running { reply, peers: Vec::new(), started: now });
                }
                Some(ProbeCmd::Stats(tx)) => {
                    let _ = tx.send(node.stats(Instant::now()));
                }
                Some(ProbeCmd::Contacts(tx)) => {
                    let _ = tx.send(node.contacts());
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let now = tokio::time::Instant::now();
                while delayed.front().is_some_and(|d| d.0 <= now) {
                    let (_, from, data) = delayed.pop_front().expect("checked");
                    node.handle_datagram(Instant::now(), from, &data);
                }
                // Harmless when only a delayed datagram was due: timers not yet due are kept.
                node.handle_timeout(Instant::now());
            }
        }
    }
}

/// Order statistics of a sample (nearest-rank percentiles, so every reported value is one
/// that was actually observed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub count: usize,
    /// Smallest value.
    pub min: f64,
    /// 50th percentile (nearest rank).
    pub median: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let r = (p * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        Some(Summary {
            count: v.len(),
            min: v[0],
            median: rank(0.5),
            p90: rank(0.9),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// The `k` ids of `all` closest to `target`, closest first, skipping `exclude`.
pub fn true_closest(all: &[NodeId], target: &NodeId, k: usize, exclude: &NodeId) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = all.iter().copied().filter(|id| id != exclude).collect();
    v.sort_unstable_by_key(|id| id.distance(target));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(
            (s.min, s.median, s.p90, s.max, s.mean),
            (1.0, 5.0, 9.0, 10.0, 5.5)
        );
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.median, one.p90), (7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn closest_ids_exclude_the_origin() {
        let ids: Vec<NodeId> = (0..10u8).map(|i| NodeId([i; 20])).collect();
        let got = true_closest(&ids, &NodeId([0; 20]), 3, &NodeId([0; 20]));
        assert_eq!(got, vec![NodeId([1; 20]), NodeId([2; 20]), NodeId([3; 20])]);
    }

    #[tokio::test]
    async fn probe_lookups_count_their_messages() {
        use crate::sim::testnet::{Testnet, TestnetConfig};
        let net = Testnet::start(
            20,
            TestnetConfig {
                subnet: 99,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        net.wait_for_tables(4, Duration::from_secs(20)).await;
        let probe = Probe::start(
            "127.99.250.1:0".parse().unwrap(),
            node::Config::loopback_testnet(),
            &[net.addr(0)],
        )
        .await
        .unwrap();
        assert!(probe.wait_for_table(4, Duration::from_secs(10)).await >= 4);
        let target = net.nodes[7].id();
        let r = probe.lookup(target, false).await.unwrap();
        assert!(r.messages > 0, "{r:?}");
        assert_eq!(r.closest.first().map(|c| c.id), Some(target), "{r:?}");
        let s = probe.stats().await.unwrap();
        assert!(s.queries_out >= u64::from(r.messages));

        // A restarted probe with a 50 ms receive delay: same id, its contacts come back
        // through verification, and every round trip costs at least the delay.
        let id = probe.id();
        let persisted: Vec<SocketAddrV4> = probe
            .contacts()
            .await
            .unwrap()
            .iter()
            .map(|c| c.addr)
            .collect();
        drop(probe);
        let config = node::Config {
            id: Some(id),
            ..node::Config::loopback_testnet()
        };
        let started = Instant::now();
        let slow = Probe::start_with(
            "127.99.250.2:0".parse().unwrap(),
            config,
            &[],
            ProbeOptions {
                persisted,
                delay: Duration::from_millis(50),
            },
        )
        .await
        .unwrap();
        assert_eq!(slow.id(), id);
        assert!(slow.wait_for_table(4, Duration::from_secs(10)).await >= 4);
        // clock-ok: lower bounds (the configured delay was applied); load only lengthens them.
        assert!(started.elapsed() >= Duration::from_millis(50));
        let r = slow.lookup(target, false).await.unwrap();
        assert_eq!(r.closest.first().map(|c| c.id), Some(target), "{r:?}");
        // clock-ok: a lower bound, as above.
        assert!(r.elapsed >= Duration::from_millis(50), "{r:?}");
        net.shutdown().await;
    }
}
