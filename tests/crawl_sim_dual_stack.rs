//! dht-crawl's walk over both address families (BEP 32) on a virtual clock: the simulated
//! crawler ([`SimDualCrawler`]) on a dual-stack [`DualNet`] of IPv4-only, IPv6-only and
//! dual nodes, where some infohashes are held only by IPv4-only nodes, some only by
//! IPv6-only nodes, and some only by the IPv6 half of dual nodes.
//!
//! What it shows:
//! - a dual-stack crawler, given an IPv4 router only, walks both DHTs (the IPv6 one found
//!   through `nodes6`) and finds all three sets; each family's walk visits that family's
//!   nodes;
//! - an IPv4-only crawler on the same net finds the IPv4 set and nothing held only in the
//!   IPv6 DHT, though it talks to the very dual nodes that hold some of it (over IPv4, whose
//!   peer store is separate);
//! - an IPv6-only crawler, given the router's IPv6 address, finds the two IPv6 sets and
//!   nothing of the IPv4 one; an IPv4 contact handed to it is refused once and dropped;
//! - every query ends: the crawler's request map never outgrows the walk's in-flight cap,
//!   and once the network has run past the timeouts no request, walk slot or node
//!   transaction is left.
//!
//! No socket is opened: datagrams move in memory.

use std::collections::HashSet;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use trackerless::crawl::WalkConfig;
use trackerless::crawl::sim::{SimCrawler, SimDualCrawler};
use trackerless::dht::id::{Family, InfoHash};
use trackerless::dht::node::Overdue;
use trackerless::sim::dual::DualNet;

const LATENCY: Duration = Duration::from_millis(5);
const DUAL: u16 = 12;
const V4_ONLY: u16 = 12;
const V6_ONLY: u16 = 12;
/// Infohashes each holder holds: fewer than one 20-hash sample, so one visit finds them.
const PER_NODE: usize = 5;
const MAX_IN_FLIGHT: usize = 8;

fn v4(g: u8, i: u16) -> SocketAddrV4 {
    SocketAddrV4::new([127, 0, g, i as u8].into(), 6881)
}

fn v6(g: u16, i: u16) -> SocketAddrV6 {
    format!("[fd77::{g}:{i}]:6881").parse().unwrap()
}

struct Net {
    net: DualNet,
    r4: SocketAddr,
    r6: SocketAddr,
    /// Held only by IPv4-only nodes.
    in_v4_only: Vec<InfoHash>,
    /// Held only by IPv6-only nodes.
    in_v6_only: Vec<InfoHash>,
    /// Held only by dual nodes, and only by their IPv6 node.
    in_dual_v6: Vec<InfoHash>,
}

/// The network, every node joined, the infohashes placed.
fn build() -> Net {
    let mut net = DualNet::new(LATENCY);
    // Node 0: the dual router everybody starts from.
    let router = net.add(Some(v4(9, 1)), Some(v6(9, 1)));
    let duals: Vec<usize> = (1..=DUAL)
        .map(|i| net.add(Some(v4(3, i)), Some(v6(3, i))))
        .collect();
    let v4_only: Vec<usize> = (1..=V4_ONLY)
        .map(|i| net.add(Some(v4(1, i)), None))
        .collect();
    let v6_only: Vec<usize> = (1..=V6_ONLY)
        .map(|i| net.add(None, Some(v6(2, i))))
        .collect();
    let r4: SocketAddr = v4(9, 1).into();
    let r6: SocketAddr = v6(9, 1).into();
    let now = net.now();
    net.node_mut(router).bootstrap(now, &[]);
    net.touch(router);
    // One after another, the kinds mixed (all at one instant, early joiners would meet a
    // router that knows nobody yet); dual nodes get the IPv4 router only.
    for k in 0..usize::from(DUAL.max(V4_ONLY).max(V6_ONLY)) {
        for (list, r) in [(&duals, r4), (&v4_only, r4), (&v6_only, r6)] {
            if let Some(&n) = list.get(k) {
                let t = net.now();
                net.node_mut(n).bootstrap(t, &[r]);
                net.touch(n);
                net.run_for(Duration::from_secs(2));
            }
        }
    }
    net.run_for(Duration::from_secs(60));
    net.clear_events();

    let mut rng = StdRng::seed_from_u64(32);
    let mut place = |net: &mut DualNet, nodes: &[usize], family| {
        let mut placed = Vec::new();
        for &n in nodes {
            for _ in 0..PER_NODE {
                let ih = InfoHash::random(&mut rng);
                assert!(net.hold(n, family, ih), "node {n} holds {ih}");
                placed.push(ih);
            }
        }
        placed
    };
    let in_v4_only = place(&mut net, &v4_only, Family::V4);
    let in_v6_only = place(&mut net, &v6_only, Family::V6);
    let in_dual_v6 = place(&mut net, &duals, Family::V6);
    // A node without the family holds nothing.
    assert!(!net.hold(v4_only[0], Family::V6, InfoHash([1; 20])));
    assert!(!net.hold(v6_only[0], Family::V4, InfoHash([1; 20])));
    Net {
        net,
        r4,
        r6,
        in_v4_only,
        in_v6_only,
        in_dual_v6,
    }
}

fn walk() -> WalkConfig {
    WalkConfig {
        rate: 50.0,
        burst: 20.0,
        max_in_flight: MAX_IN_FLIGHT,
        seed: Some(6),
        ..Default::default()
    }
}

fn found(c: &SimDualCrawler, set: &[InfoHash]) -> usize {
    set.iter().filter(|h| c.known.contains(h)).count()
}

/// Crawls for `d`, then lets every query end; the most requests ever pending.
fn crawl(c: &mut SimDualCrawler, net: &mut DualNet, d: Duration) -> usize {
    let until = net.now() + d;
    c.run_until(net, until, |_| false);
    c.settle(net, Duration::from_secs(30));
    c.max_pending()
}

/// Every query the crawler sent ended, in its request map, its walk and its node.
fn all_ended(c: &SimDualCrawler, net: &DualNet, most: usize, who: &str) {
    assert!(
        (1..=MAX_IN_FLIGHT).contains(&most),
        "{who}: {most} requests pending at most"
    );
    assert_eq!(c.pending(), 0, "{who}: requests left");
    assert_eq!(c.walker.stats().in_flight, 0, "{who}: walk slots left");
    // The node's own upkeep may have a query out right now, but nothing is overdue, and
    // every query it ever sent has ended or is that one.
    let now = net.now();
    let n = net.node(c.node);
    let stats = [
        n.v4().map(|n| (n.stats(now), n.overdue(now))),
        n.v6().map(|n| (n.stats(now), n.overdue(now))),
    ];
    for (s, overdue) in stats.into_iter().flatten() {
        assert_eq!(overdue, Overdue::default(), "{who}");
        assert_eq!(
            s.queries_out,
            s.queries_ended + s.transactions as u64,
            "{who}: {s:?}"
        );
        assert!(
            s.transactions <= 2,
            "{who}: {} transactions",
            s.transactions
        );
    }
}

#[test]
fn a_dual_stack_crawler_finds_what_only_the_ipv6_dht_holds_and_single_stack_ones_find_their_own() {
    let Net {
        mut net,
        r4,
        r6,
        in_v4_only,
        in_v6_only,
        in_dual_v6,
    } = build();
    let total = in_v4_only.len() + in_v6_only.len() + in_dual_v6.len();
    assert_eq!(total, PER_NODE * usize::from(V4_ONLY + V6_ONLY + DUAL));

    // Dual-stack, joining through the IPv4 router only.
    let mut c = SimCrawler::join_dual(&mut net, walk(), Some(v4(5, 1)), Some(v6(5, 1)), &[r4]);
    assert!(c.walker.has_ipv6());
    let most = crawl(&mut c, &mut net, Duration::from_secs(120));
    let (s4, s6) = (c.walker.stats_of(Family::V4), c.walker.stats_of(Family::V6));
    println!(
        "dual crawler: found {} of {total}; IPv4 walk {s4:?}; IPv6 walk {s6:?}; {most} pending at most",
        c.known.len()
    );
    assert_eq!(
        found(&c, &in_v4_only),
        in_v4_only.len(),
        "IPv4-only nodes' set"
    );
    assert_eq!(
        found(&c, &in_v6_only),
        in_v6_only.len(),
        "IPv6-only nodes' set"
    );
    assert_eq!(
        found(&c, &in_dual_v6),
        in_dual_v6.len(),
        "dual nodes' IPv6 set"
    );
    assert_eq!(c.known.len(), total, "nothing else is held");
    // The IPv4 DHT: router, dual and IPv4-only nodes; the IPv6 DHT: router, dual and
    // IPv6-only nodes. Each walk visited (nearly) all of its own.
    let per_dht = u64::from(1 + DUAL + V4_ONLY);
    assert!(s4.visited >= per_dht - 2, "IPv4 visited {}", s4.visited);
    assert!(s4.visited <= per_dht, "IPv4 visited {}", s4.visited);
    let per_dht6 = u64::from(1 + DUAL + V6_ONLY);
    assert!(s6.visited >= per_dht6 - 2, "IPv6 visited {}", s6.visited);
    assert!(s6.visited <= per_dht6, "IPv6 visited {}", s6.visited);
    // Samples came over both families: IPv6 ones are the IPv6 walk's.
    let v6_held = (in_v6_only.len() + in_dual_v6.len()) as u64;
    assert_eq!(s6.new_samples, v6_held);
    assert_eq!(s4.new_samples, in_v4_only.len() as u64);
    all_ended(&c, &net, most, "dual crawler");

    // IPv4 only, on the same network (its own addresses, the same router).
    let mut c4 = SimCrawler::join_dual(&mut net, walk(), Some(v4(5, 2)), None, &[r4]);
    assert!(!c4.walker.has_ipv6());
    let most = crawl(&mut c4, &mut net, Duration::from_secs(120));
    let (s4, s6) = (
        c4.walker.stats_of(Family::V4),
        c4.walker.stats_of(Family::V6),
    );
    println!(
        "IPv4-only crawler: found {} of {total}; IPv4 walk {s4:?}; IPv6 walk {s6:?}",
        c4.known.len()
    );
    assert_eq!(
        found(&c4, &in_v4_only),
        in_v4_only.len(),
        "IPv4-only nodes' set"
    );
    assert_eq!(found(&c4, &in_v6_only), 0, "IPv6-only nodes' set");
    assert_eq!(found(&c4, &in_dual_v6), 0, "dual nodes' IPv6 set");
    // It did talk to the dual nodes that hold the IPv6 set, over IPv4: the IPv4 DHT's
    // nodes, one more now (the first crawler), were all but visited.
    assert!(s4.visited > per_dht - 2, "IPv4 visited {}", s4.visited);
    assert_eq!((s6.queries, s6.visited, s6.nodes_known), (0, 0, 0));
    all_ended(&c4, &net, most, "IPv4-only crawler");

    let seen: HashSet<InfoHash> = c.known.intersection(&c4.known).copied().collect();
    assert_eq!(seen.len(), in_v4_only.len());

    // IPv6 only, joining through the router's IPv6 address: the mirror image. Its IPv4
    // walk has no node to send from: an IPv4 contact is refused at once (as the driver
    // refuses it), its query still ends, and it is not tried again.
    let mut c6 = SimCrawler::join_dual(&mut net, walk(), None, Some(v6(5, 3)), &[r6]);
    assert!(c6.walker.has_ipv6());
    // No reply carries IPv4 contacts to an IPv6-only node (it asks for `n6` alone), so
    // hand its walk one, as a `--bootstrap` IPv4 address would.
    let t = net.now();
    c6.walker.add_nodes(t, [SocketAddr::V4(v4(1, 1))]);
    let most = crawl(&mut c6, &mut net, Duration::from_secs(120));
    let (s4, s6) = (
        c6.walker.stats_of(Family::V4),
        c6.walker.stats_of(Family::V6),
    );
    println!(
        "IPv6-only crawler: found {} of {total}; IPv4 walk {s4:?}; IPv6 walk {s6:?}",
        c6.known.len()
    );
    assert_eq!(found(&c6, &in_v4_only), 0, "IPv4-only nodes' set");
    assert_eq!(
        found(&c6, &in_v6_only),
        in_v6_only.len(),
        "IPv6-only nodes' set"
    );
    assert_eq!(
        found(&c6, &in_dual_v6),
        in_dual_v6.len(),
        "dual nodes' IPv6 set"
    );
    assert!(s6.visited > per_dht6 - 2, "IPv6 visited {}", s6.visited);
    assert_eq!(
        (s4.queries, s4.visited, s4.samples, s4.in_flight),
        (1, 0, 0, 0),
        "the IPv4 contact: refused once (no IPv4 node), never retried in two minutes"
    );
    all_ended(&c6, &net, most, "IPv6-only crawler");
}
