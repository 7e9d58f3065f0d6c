//! Messages per lookup in a dual-stack network, each family (BEP 32), beside an IPv4-only
//! network of the same size in the same run (the reference). A program, not a timed test:
//!
//!     cargo bench --bench dual_lookups -- [NODES] [--lookups N]
//!
//! Defaults: 2,000 nodes, 50 lookups per family. The dual-stack network is a third
//! IPv4-only, a third IPv6-only and a third dual nodes; every node joins through one dual
//! router (dual nodes through its IPv4 address only, so their IPv6 tables fill through
//! `want`), one join every 0.5 s of virtual time, then two minutes settle. Each lookup is a
//! `get_peers` for a random infohash from a random node of the family measured (IPv4-only
//! nodes for IPv4, IPv6-only for IPv6, dual nodes for both halves at once). 5 ms latency,
//! no loss: this measures the lookup, not the network.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use trackerless::dht::id::InfoHash;
use trackerless::sim::dual::DualNet;

const LATENCY: Duration = Duration::from_millis(5);
const JOIN_SPACING: Duration = Duration::from_millis(500);
const LIMIT: Duration = Duration::from_secs(120);

fn v4(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        [127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
        6881,
    )
}

fn v6(i: usize) -> SocketAddrV6 {
    format!("[fd77::1:{:x}]:6881", i).parse().expect("valid")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    V4,
    V6,
    Dual,
}

/// Builds and joins a network of `n` nodes of `kinds` (cycled), node 0 a dual router.
fn build(n: usize, kinds: &[Kind]) -> (DualNet, Vec<Kind>) {
    let mut net = DualNet::new(LATENCY);
    let mut of = Vec::with_capacity(n);
    net.add(Some(v4(0)), Some(v6(0)));
    of.push(Kind::Dual);
    let now = net.now();
    net.node_mut(0).bootstrap(now, &[]);
    net.touch(0);
    let r4: SocketAddr = v4(0).into();
    let r6: SocketAddr = v6(0).into();
    for i in 1..n {
        let kind = kinds[i % kinds.len()];
        let (a4, a6, router) = match kind {
            Kind::V4 => (Some(v4(i)), None, r4),
            Kind::V6 => (None, Some(v6(i)), r6),
            Kind::Dual => (Some(v4(i)), Some(v6(i)), r4),
        };
        let j = net.add(a4, a6);
        of.push(kind);
        let t = net.now();
        net.node_mut(j).bootstrap(t, &[router]);
        net.touch(j);
        net.run_for(JOIN_SPACING);
    }
    net.run_for(Duration::from_secs(120));
    net.clear_events();
    (net, of)
}

#[derive(Default)]
struct Tally {
    lookups: usize,
    ended: usize,
    messages: u64,
}

impl Tally {
    fn add(&mut self, m: Option<u32>) {
        self.lookups += 1;
        if let Some(m) = m {
            self.ended += 1;
            self.messages += u64::from(m);
        }
    }

    fn row(&self, name: &str, nodes: usize, reference: Option<f64>) {
        let per = self.messages as f64 / self.ended.max(1) as f64;
        let ratio = reference.map_or("1.00 (reference)".to_string(), |r| {
            format!("{:.2}", per / r)
        });
        println!(
            "| {name} | {nodes} | {}/{} | {per:.1} | {ratio} |",
            self.ended, self.lookups
        );
    }

    fn per(&self) -> f64 {
        self.messages as f64 / self.ended.max(1) as f64
    }
}

fn run_lookups(
    net: &mut DualNet,
    of: &[Kind],
    want: Kind,
    count: usize,
    rng: &mut StdRng,
) -> (Tally, Tally) {
    let (mut t4, mut t6) = (Tally::default(), Tally::default());
    let candidates: Vec<usize> = (1..of.len()).filter(|&i| of[i] == want).collect();
    for _ in 0..count {
        let i = candidates[rng.random_range(0..candidates.len())];
        let mut ih = [0u8; 20];
        rng.fill(&mut ih);
        let t = net.now();
        let l = net.node_mut(i).get_peers(t, InfoHash(ih));
        let out = net.finish(i, l, LIMIT);
        if l.v4.is_some() {
            t4.add(out.as_ref().and_then(|o| o.messages4));
        }
        if l.v6.is_some() {
            t6.add(out.as_ref().and_then(|o| o.messages6));
        }
        net.clear_events();
    }
    (t4, t6)
}

fn main() {
    let mut nodes = 2000;
    let mut lookups = 50;
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--lookups" => {
                lookups = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--lookups N")
            }
            n => nodes = n.parse().expect("NODES"),
        }
    }
    let mut rng = StdRng::seed_from_u64(32);
    let t0 = Instant::now();
    let (mut reference, of_ref) = build(nodes, &[Kind::V4]);
    let (r4, _) = run_lookups(&mut reference, &of_ref, Kind::V4, lookups, &mut rng);
    let (mut dual, of) = build(nodes, &[Kind::V4, Kind::V6, Kind::Dual]);
    let (d4, _) = run_lookups(&mut dual, &of, Kind::V4, lookups, &mut rng);
    let (_, d6) = run_lookups(&mut dual, &of, Kind::V6, lookups, &mut rng);
    let (b4, b6) = run_lookups(&mut dual, &of, Kind::Dual, lookups, &mut rng);
    println!("| network, lookups from | nodes | ended | messages per lookup | vs IPv4-only net |");
    println!("|---|---|---|---|---|");
    let r = r4.per();
    r4.row("IPv4-only net, IPv4 nodes", nodes, None);
    d4.row("dual-stack net, IPv4-only nodes (IPv4 DHT)", nodes, Some(r));
    d6.row("dual-stack net, IPv6-only nodes (IPv6 DHT)", nodes, Some(r));
    b4.row("dual-stack net, dual nodes: IPv4 half", nodes, Some(r));
    b6.row("dual-stack net, dual nodes: IPv6 half", nodes, Some(r));
    eprintln!("(ran in {:.1} s)", t0.elapsed().as_secs_f64());
}
