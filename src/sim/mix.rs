//! The "live-DHT mix": the simulator's nodes misbehaving the way nodes on the live DHT do,
//! and one measured run (lookups, announces and the invariants) over such a network.
//!
//! An honest-only simulator flatters the node: on the live DHT a share of every `nodes`
//! reply points at nodes that answer with another id (restarts, BEP 42 switches, liars), sit
//! behind NATs that rewrite ports, never answer, answer read-only, list junk addresses, or
//! crowd a target as sybils that swallow announces. [`Profile`] sets the share of each;
//! [`run`] builds a network with them and reports the figures BENCHMARKS.md compares with a
//! clean network, while checking on every node, every virtual second, that nothing is
//! overdue (no query past its hard timeout, no lookup past its deadline, no verification
//! without its query) and that every query we sent ended exactly once.
//!
//! Sim addresses are loopback, where BEP 42 does not apply, so every id counts as valid: the
//! "non-BEP 42 client" share of the live DHT is what the clean network already is here.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::{Sim, SimConfig, sim_addr};
use crate::dht::id::{InfoHash, NodeId};
use crate::dht::node::{Event, LookupId, Overdue};

/// How a simulated node deviates from an honest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Follows the protocol (the default of every node).
    Honest,
    /// Answers with this id instead of its own (a liar, or a node that changed id).
    WrongId(NodeId),
    /// Behind a NAT: everything it sends comes from this port instead of 6881.
    Nat(u16),
    /// Sends nothing at all (still listed in others' tables).
    Silent,
    /// Half of the entries of its `nodes` replies are junk: port 0, a bogon address, or
    /// the address of the node it answers.
    Junk,
    /// A sybil placed next to a target, sending from this address (a target's sybils share
    /// one IP, many ports, as sybil farms on the live DHT do): answers lookups, gives
    /// tokens, and swallows the announces it is sent (never stores, never answers them).
    Sybil(SocketAddrV4),
}

/// Whether a node with behavior `b` swallows the datagram `data` sent to it.
pub(super) fn eaten(b: Behavior, data: &[u8]) -> bool {
    matches!(b, Behavior::Sybil(_)) && is_query(data) && contains(data, b"13:announce_peer")
}

/// Rewrites a datagram a node with behavior `b` sends to `to`.
pub(super) fn rewrite(b: Behavior, to: SocketAddrV4, data: &mut [u8]) {
    if !is_response(data) {
        return;
    }
    match b {
        Behavior::WrongId(id) => {
            if let Some(at) = find(data, b"2:id20:") {
                data[at + 7..at + 27].copy_from_slice(&id.0);
            }
        }
        Behavior::Junk => junk_nodes(data, to),
        _ => {}
    }
}

/// Our encoder sorts keys, so `y` is the last key: its value ends the datagram.
fn is_response(data: &[u8]) -> bool {
    data.ends_with(b"1:y1:re")
}

fn is_query(data: &[u8]) -> bool {
    data.ends_with(b"1:y1:qe")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Replaces every other 26-byte entry of the `nodes` value with junk.
fn junk_nodes(data: &mut [u8], to: SocketAddrV4) {
    let Some(key) = find(data, b"5:nodes") else {
        return;
    };
    let mut pos = key + 7;
    let mut len = 0usize;
    while let Some(d) = data.get(pos).filter(|c| c.is_ascii_digit()) {
        len = len * 10 + usize::from(d - b'0');
        pos += 1;
    }
    if data.get(pos) != Some(&b':') {
        return;
    }
    let start = pos + 1;
    let Some(nodes) = data.get_mut(start..start + len) else {
        return;
    };
    for (k, entry) in nodes.chunks_exact_mut(26).enumerate() {
        match k % 6 {
            1 => entry[24..26].copy_from_slice(&[0, 0]),
            3 => entry[20..24].copy_from_slice(&[0, 0, 0, k as u8]),
            5 => {
                entry[20..24].copy_from_slice(&to.ip().octets());
                entry[24..26].copy_from_slice(&to.port().to_be_bytes());
            }
            _ => {}
        }
    }
}

/// Shares of each kind of misbehaving node (fractions of the network).
#[derive(Debug, Clone, Copy, Default)]
pub struct Profile {
    /// Nodes that answer with another id ([`Behavior::WrongId`]).
    pub wrong_id: f64,
    /// Nodes behind a port-rewriting NAT ([`Behavior::Nat`]).
    pub nat: f64,
    /// Nodes that never send anything ([`Behavior::Silent`]).
    pub silent: f64,
    /// Nodes that join as BEP 43 read-only clients: their queries carry `ro` = 1 and they
    /// answer none.
    pub read_only: f64,
    /// Nodes whose `nodes` replies are half junk ([`Behavior::Junk`]).
    pub junk: f64,
    /// Nodes that restart with a new id before the measurement.
    pub restarted: f64,
    /// Over how long before the announces the restarts happen, evenly spread (zero: all at
    /// the instant of the announces, when no node can know the new ids yet).
    pub restart_spread: Duration,
    /// Sybils placed next to each announced infohash.
    pub sybils_per_target: usize,
}

impl Profile {
    /// Nobody misbehaves.
    pub fn clean() -> Self {
        Profile::default()
    }

    /// The mix the issue asks for, in shares seen in live-DHT captures and crawls (about a
    /// third of listed nodes do not answer as listed).
    pub fn live() -> Self {
        Profile {
            wrong_id: 0.05,
            nat: 0.10,
            silent: 0.15,
            read_only: 0.05,
            junk: 0.05,
            restarted: 0.05,
            // Continuous churn: the restarted nodes came back at times spread over the
            // two minutes before the announces, so some are re-learned and the last are
            // not (with zero, all restart at the instant of the announces, and the "true
            // closest" include ids no node can know yet).
            restart_spread: Duration::from_secs(120),
            sybils_per_target: 8,
        }
    }
}

impl Profile {
    /// A behavior drawn by the per-node shares (wrong id, NAT, silent, junk; the rest of
    /// the profile is about placement and joining, which a caller arranges itself).
    pub fn draw<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Behavior {
        let x: f64 = rng.random();
        let mut edge = self.wrong_id;
        if x < edge {
            return Behavior::WrongId(NodeId::random(rng));
        }
        edge += self.nat;
        if x < edge {
            return Behavior::Nat(40_000 + rng.random_range(0..20_000));
        }
        edge += self.silent;
        if x < edge {
            return Behavior::Silent;
        }
        edge += self.junk;
        if x < edge {
            return Behavior::Junk;
        }
        Behavior::Honest
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Nodes in the network (read-only clients and sybils included).
    pub nodes: usize,
    /// get_peers lookups started.
    pub lookups: usize,
    /// Lookups (get_peers) that ended with `LookupDone`.
    pub completed: usize,
    /// Queries sent per completed lookup, on average.
    pub messages_per_lookup: f64,
    /// Median virtual time from start to `LookupDone`.
    pub time_p50: Duration,
    /// 99th percentile of that time.
    pub time_p99: Duration,
    /// Of the 8 closest storing nodes to each announced infohash, the share that stored it.
    pub placement: f64,
    /// Of those 8 per target, the ones that did not store it and had restarted with a new
    /// id.
    pub missed_restarted: usize,
    /// Of those 8 per target, the others that did not store it.
    pub missed_other: usize,
    /// The other misses by behavior: honest, NAT'ed, junk-listing.
    pub missed_by_behavior: [usize; 3],
    /// Lookups by plain BEP 5 clients that found the announced peer.
    pub found: usize,
    /// Worst [`Overdue`] seen on any node at any checkpoint (all zero when correct).
    pub worst_overdue: Overdue,
    /// Nodes whose `queries_out != queries_ended + transactions` at some checkpoint.
    pub accounting_errors: usize,
    /// Lookups ended by their deadline rather than by converging, summed over all nodes.
    pub lookups_overdue: u64,
    /// Junk `nodes` entries the nodes refused to query, summed over all nodes.
    pub junk_candidates: u64,
    /// Replies that carried another id than the one queried, summed over all nodes.
    pub wrong_id_replies: u64,
}

/// Builds a network of `nodes` with `profile`, announces `targets` infohashes from random
/// honest nodes, then runs `lookups` get_peers from random honest nodes, checking the
/// invariants every virtual second. Deterministic for a seed.
pub fn run(nodes: usize, profile: Profile, targets: usize, lookups: usize, seed: u64) -> Report {
    let mut sim = Sim::new(SimConfig {
        latency: (Duration::from_millis(20), Duration::from_millis(150)),
        loss: 0.02,
        seed,
        ..SimConfig::default()
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let targets: Vec<NodeId> = (0..targets).map(|_| NodeId::random(&mut rng)).collect();
    let mut read_only_cfg = sim.config.node.clone();
    read_only_cfg.read_only = true;

    // Join: honest and misbehaving nodes alike (they misbehave from the measurement on),
    // read-only ones as clients that never answer; sybils join last, next to the targets.
    let read_only = (nodes as f64 * profile.read_only) as usize;
    sim.grow(nodes - read_only, Duration::from_millis(2));
    for _ in 0..read_only {
        let i = sim.add_node_with(read_only_cfg.clone());
        let contacts = vec![sim_addr(rng.random_range(0..nodes - read_only))];
        sim.with_node(i, |n, now| n.add_contacts(now, contacts));
    }
    for (k, t) in targets.iter().enumerate() {
        for port in 0..profile.sybils_per_target {
            let at = SocketAddrV4::new([127, 250, 0, k as u8 + 1].into(), 7000 + port as u16);
            let mut cfg = sim.config.node.clone();
            // 20+ leading bits shared with the target: closer than any honest node of 10k.
            cfg.id = Some(t.random_at_depth(20 + rng.random_range(0..20), &mut rng));
            let i = sim.add_node_with(cfg);
            sim.set_behavior(i, Behavior::Sybil(at));
            let contacts = vec![sim_addr(rng.random_range(0..nodes - read_only))];
            sim.with_node(i, |n, now| n.add_contacts(now, contacts));
        }
    }
    sim.run_for(Duration::from_secs(120));

    // The misbehaving share, drawn among the ordinary nodes (never node 0, the router).
    let mut ordinary: Vec<usize> = (1..nodes - read_only).collect();
    ordinary.shuffle(&mut rng);
    let mut take = |share: f64| -> Vec<usize> {
        let n = ((nodes as f64) * share) as usize;
        ordinary.split_off(ordinary.len().saturating_sub(n))
    };
    for i in take(profile.wrong_id) {
        sim.set_behavior(i, Behavior::WrongId(NodeId::random(&mut rng)));
    }
    for i in take(profile.nat) {
        sim.set_behavior(i, Behavior::Nat(40_000 + rng.random_range(0..20_000)));
    }
    for i in take(profile.silent) {
        sim.set_behavior(i, Behavior::Silent);
    }
    for i in take(profile.junk) {
        sim.set_behavior(i, Behavior::Junk);
    }
    let restarted = take(profile.restarted);
    let honest = ordinary; // what is left: honest nodes

    let mut report = Report {
        nodes: sim.len(),
        lookups,
        ..Report::default()
    };
    let check = |sim: &Sim, report: &mut Report| {
        let now = sim.now();
        for i in 0..sim.len() {
            if !sim.is_online(i) {
                continue;
            }
            let n = sim.node(i);
            let o = n.overdue(now);
            let w = &mut report.worst_overdue;
            w.transactions = w.transactions.max(o.transactions);
            w.lookups = w.lookups.max(o.lookups);
            w.verifications = w.verifications.max(o.verifications);
            let s = n.stats(now);
            if s.queries_out != s.queries_ended + s.transactions as u64 {
                report.accounting_errors += 1;
            }
        }
    };
    let step = |sim: &mut Sim, d: Duration, report: &mut Report| {
        let end = sim.now() + d;
        while sim.now() < end {
            sim.run_for(Duration::from_secs(1).min(end - sim.now()));
            check(sim, report);
        }
    };

    // Restarts, spread evenly over `restart_spread` before the announces (continuous
    // churn), the last ones at the instant of the announces.
    let groups = (profile.restart_spread.as_secs() as usize).clamp(1, restarted.len().max(1));
    let gap = profile.restart_spread / groups as u32;
    for (g, chunk) in restarted
        .chunks(restarted.len().div_ceil(groups).max(1))
        .enumerate()
    {
        if g > 0 {
            step(&mut sim, gap, &mut report);
        }
        for &i in chunk {
            let contacts = vec![sim_addr(rng.random_range(0..nodes - read_only))];
            sim.restart_with_new_id(i, contacts);
        }
    }
    sim.take_events();

    // Announce each target from a random honest node. The targets are drawn as node ids
    // (sybils are placed next to them); as info hashes they are the same 160 bits.
    let mut announcers = HashMap::new();
    for t in &targets {
        let who = honest[rng.random_range(0..honest.len())];
        announcers.insert(*t, sim_addr(who));
        sim.with_node(who, |n, now| {
            n.announce(now, InfoHash::from_node_id(*t), Some(6881))
        });
    }
    step(&mut sim, Duration::from_secs(90), &mut report);
    sim.take_events();

    // Placement: the 8 closest nodes that can store (honest or merely NAT'ed/junk-listing,
    // online, answering) to each target, and how many of them hold it.
    let storing: Vec<usize> = (0..sim.len())
        .filter(|&i| {
            matches!(
                sim.behavior(i),
                Behavior::Honest | Behavior::Nat(_) | Behavior::Junk
            ) && i < nodes - read_only
        })
        .collect();
    let mut held = 0usize;
    for t in &targets {
        let mut by_distance: Vec<usize> = storing.clone();
        by_distance.sort_by_key(|&i| sim.node(i).id().distance(t));
        for &i in by_distance.iter().take(8) {
            if sim.node(i).store().contains(&InfoHash::from_node_id(*t)) {
                held += 1;
            } else if restarted.contains(&i) {
                report.missed_restarted += 1;
            } else {
                report.missed_other += 1;
                let k = match sim.behavior(i) {
                    Behavior::Nat(_) => 1,
                    Behavior::Junk => 2,
                    _ => 0,
                };
                report.missed_by_behavior[k] += 1;
            }
        }
    }
    report.placement = held as f64 / (8 * targets.len()).max(1) as f64;

    // Lookups by plain BEP 5 clients (honest nodes, no `ro`, no BEP 42 checks).
    let mut started: HashMap<(usize, LookupId), (NodeId, Instant)> = HashMap::new();
    for k in 0..lookups {
        let who = honest[rng.random_range(0..honest.len())];
        let t = targets[k % targets.len()];
        let id = sim.with_node(who, |n, now| n.get_peers(now, InfoHash::from_node_id(t)));
        started.insert((who, id), (t, sim.now()));
        step(&mut sim, Duration::from_millis(100), &mut report);
    }
    step(&mut sim, Duration::from_secs(90), &mut report);

    let mut found: HashMap<(usize, LookupId), bool> = HashMap::new();
    let mut messages = 0u64;
    let mut times = Vec::new();
    for (node, at, e) in sim.take_timed_events() {
        match e {
            Event::Peers { lookup, peers } => {
                if let Some((t, _)) = started.get(&(node, lookup))
                    && peers.iter().any(|p| Some(p) == announcers.get(t))
                {
                    found.insert((node, lookup), true);
                }
            }
            Event::LookupDone {
                lookup,
                messages: m,
                ..
            } => {
                if let Some((_, t0)) = started.get(&(node, lookup)) {
                    report.completed += 1;
                    messages += u64::from(m);
                    times.push(at - *t0);
                }
            }
            _ => {}
        }
    }
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    report.time_p50 = pct(0.5);
    report.time_p99 = pct(0.99);
    report.messages_per_lookup = messages as f64 / report.completed.max(1) as f64;
    report.found = found.len();
    for i in 0..sim.len() {
        let s = sim.node(i).stats(sim.now());
        report.lookups_overdue += s.lookups_overdue;
        report.junk_candidates += s.junk_candidates;
        report.wrong_id_replies += s.wrong_id_replies;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_touch_only_what_they_should() {
        use crate::dht::id::Contact;
        use crate::dht::krpc::{self, Body, ResponseBody};
        let me = NodeId([1; 20]);
        let mut compact = Vec::new();
        for k in 0..6u8 {
            Contact::new(
                NodeId([k; 20]),
                SocketAddrV4::new([127, 0, 0, k + 1].into(), 6881),
            )
            .write_compact(&mut compact);
        }
        let mut body = ResponseBody::id_only(&me);
        body.nodes = Some(&compact);
        let mut out = Vec::new();
        krpc::encode_response(&mut out, b"aa", &body, None, None);
        let to: SocketAddrV4 = "127.9.9.9:1234".parse().unwrap();

        let mut lied = out.clone();
        rewrite(Behavior::WrongId(NodeId([7; 20])), to, &mut lied);
        let m = krpc::decode(&lied).unwrap();
        let Body::Response(r) = m.body else { panic!() };
        assert_eq!(r.id, NodeId([7; 20]));
        assert_eq!(r.nodes().count(), 6);

        let mut junk = out.clone();
        rewrite(Behavior::Junk, to, &mut junk);
        let Body::Response(r) = krpc::decode(&junk).unwrap().body else {
            panic!()
        };
        let addrs: Vec<SocketAddrV4> = r.nodes().map(|c| c.addr).collect();
        assert_eq!(addrs[0], "127.0.0.1:6881".parse().unwrap());
        assert_eq!(addrs[1].port(), 0);
        assert_eq!(addrs[3].ip().octets()[0], 0);
        assert_eq!(addrs[5], to);

        let mut query = Vec::new();
        let ih = InfoHash([3; 20]);
        krpc::encode_query(
            &mut query,
            b"qq",
            &me,
            &krpc::QueryArgs::AnnouncePeer {
                info_hash: &ih,
                port: 1,
                implied_port: false,
                token: b"tok",
                seed: false,
            },
            false,
            None,
        );
        assert!(eaten(Behavior::Sybil(to), &query));
        assert!(!eaten(Behavior::Honest, &query));
        let before = query.clone();
        rewrite(Behavior::WrongId(NodeId([7; 20])), to, &mut query);
        assert_eq!(query, before, "queries are never rewritten");
    }
}
