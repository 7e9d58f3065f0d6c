//! A dual-stack testnet (BEP 32) on a virtual clock: IPv4-only, IPv6-only and dual nodes,
//! every datagram delivered in memory by address after a fixed latency, every node a sans-IO
//! [`DualNode`] (an IPv4-only host is a `DualNode` without its IPv6 half).
//!
//! What it shows:
//! - dual nodes that join through an IPv4 router only fill their IPv6 table through
//!   `want = [n4, n6]` (contacts handed over and verified by the IPv6 node);
//! - a peer announced by a dual node reaches each DHT in its own family: an IPv6-only node
//!   finds the announcer's IPv6 address through dual nodes, an IPv4-only node its IPv4
//!   address, and neither gets the other family's;
//! - every lookup ends and every query ends exactly once, in both families.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use trackerless::dht::allow::AllowList;
use trackerless::dht::id::{Family, InfoHash, NodeId};
use trackerless::dht::node::{Config, Stats};
use trackerless::sim::dual::DualNet;

const LATENCY: Duration = Duration::from_millis(5);
const LOOKUP_LIMIT: Duration = Duration::from_secs(60);

fn ended_once(s: &Stats) -> bool {
    s.queries_out == s.queries_ended + s.transactions as u64
}

#[test]
fn a_dual_stack_testnet_keeps_each_family_in_its_own_dht() {
    let mut net = DualNet::new(LATENCY);
    let v4 = |i: u8| -> SocketAddrV4 { format!("127.0.1.{i}:6881").parse().unwrap() };
    let v6 = |g: u16, i: u16| -> SocketAddrV6 { format!("[fd77::{g}:{i}]:6881").parse().unwrap() };
    // Node 0: the dual router everybody starts from.
    let router = net.add(Some(v4(200)), Some(v6(9, 1)));
    let duals: Vec<usize> = (1..=12)
        .map(|i| net.add(Some(v4(100 + i)), Some(v6(3, u16::from(i)))))
        .collect();
    let v4_only: Vec<usize> = (1..=10).map(|i| net.add(Some(v4(i)), None)).collect();
    let v6_only: Vec<usize> = (1..=10).map(|i| net.add(None, Some(v6(2, i)))).collect();
    let r4: SocketAddr = v4(200).into();
    let r6: SocketAddr = v6(9, 1).into();
    let now = net.now();
    net.node_mut(router).bootstrap(now, &[]);
    net.touch(router);
    // Nodes join one after another (as on a real network: all at the same instant, each
    // early joiner would meet a router that knows nobody yet and keep a sparse table), in
    // an order that mixes the kinds. Dual nodes are given the IPv4 router only.
    let mut joins: Vec<(usize, SocketAddr)> = Vec::new();
    for k in 0..12 {
        joins.push((duals[k], r4));
        if k < 10 {
            joins.push((v4_only[k], r4));
            joins.push((v6_only[k], r6));
        }
    }
    for (n, r) in joins {
        let t = net.now();
        net.node_mut(n).bootstrap(t, &[r]);
        net.touch(n);
        net.run_for(Duration::from_secs(2));
    }
    net.run_for(Duration::from_secs(60));

    // Cross-bootstrap: every dual node has an IPv6 table, filled from contacts its IPv4
    // node was handed in `nodes6` (it was never given an IPv6 router).
    for &d in &duals {
        let n = net.node(d);
        let t6 = n.v6().unwrap().table().len();
        assert!(t6 > 0, "dual node {d} has no IPv6 contact");
        assert!(n.stats().contacts_handed_over > 0, "dual node {d}");
        assert!(!n.v4().unwrap().table().is_empty(), "dual node {d}");
        // Each table holds only its own family (the types say so; the addresses agree).
        assert!(
            n.v6()
                .unwrap()
                .contacts()
                .iter()
                .all(|c| c.addr.ip().segments()[0] == 0xfd77)
        );
    }
    for &n in &v6_only {
        assert!(
            !net.node(n).v6().unwrap().table().is_empty(),
            "v6-only node {n}"
        );
    }

    // A dual node announces (implied port): over IPv4 its IPv4 address, over IPv6 its IPv6.
    let ih = InfoHash([0x77; 20]);
    let announcer = duals[4];
    let t = net.now();
    let a = net.node_mut(announcer).announce(t, ih, None);
    net.finish(announcer, a, LOOKUP_LIMIT)
        .expect("the announce ends");
    let a4: SocketAddr = v4(105).into();
    let a6: SocketAddr = v6(3, 5).into();

    // An IPv6-only node finds the IPv6 address, never the IPv4 one.
    let seeker6 = v6_only[7];
    let t = net.now();
    let l = net.node_mut(seeker6).get_peers(t, ih);
    assert!(l.v4.is_none());
    let found = net.finish(seeker6, l, LOOKUP_LIMIT).expect("ends");
    assert_eq!(found.peers, vec![a6], "IPv6-only node");

    // An IPv4-only node finds the IPv4 address.
    let seeker4 = v4_only[3];
    let t = net.now();
    let l = net.node_mut(seeker4).get_peers(t, ih);
    let found = net.finish(seeker4, l, LOOKUP_LIMIT).expect("ends");
    assert_eq!(found.peers, vec![a4], "IPv4-only node");

    // A dual node finds both.
    let seeker = duals[9];
    let t = net.now();
    let l = net.node_mut(seeker).get_peers(t, ih);
    let found = net.finish(seeker, l, LOOKUP_LIMIT).expect("ends");
    assert_eq!(found.peers, vec![a4, a6], "dual node");

    // Settle, then every query of every node in both families has ended exactly once.
    net.run_for(Duration::from_secs(10));
    for i in 0..net.len() {
        let now = net.now();
        let n = net.node(i);
        if let Some(n4) = n.v4() {
            assert!(
                ended_once(&n4.stats(now)),
                "node {i} IPv4: {:?}",
                n4.stats(now)
            );
        }
        if let Some(n6) = n.v6() {
            assert!(
                ended_once(&n6.stats(now)),
                "node {i} IPv6: {:?}",
                n6.stats(now)
            );
        }
        assert_eq!(n.stats().dropped_no_family, 0, "node {i}");
    }
}

#[path = "common/mod.rs"]
mod common;
#[path = "wait_support/mod.rs"]
mod wait_support;

/// The dual-stack driver on real sockets (loopback and `fd77::61:x` on `lo`, inside the
/// test's network namespace): three nodes join over IPv4; only the first is also given the
/// second's IPv6 address (as a router's AAAA record would). The third, which knows no IPv6
/// address at all, fills its IPv6 table through `want`; a peer announced by it is then
/// found by the first in both families from one `get_peers` stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_drivers_join_ipv6_through_ipv4_and_find_both_families() {
    use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
    use wait_support::{GENEROUS, wait_until};
    for i in 1..=3 {
        common::ensure_ipv6_on_lo(&format!("fd77::61:{i}"));
    }
    let start = |i: u8| {
        let mut c = DhtConfig::new(format!("127.61.0.{i}:0").parse().unwrap());
        c.bind6 = Some(format!("[fd77::61:{i}]:0").parse().unwrap());
        c.node = Config {
            allow: AllowList::only(vec![
                "127.0.0.0/8".parse().unwrap(),
                "fd77::/16".parse().unwrap(),
            ]),
            ..Config::loopback_testnet()
        };
        Dht::spawn(c).expect("binds")
    };
    let nodes: Vec<DhtHandle> = (1..=3).map(start).collect();
    for n in &nodes {
        assert!(n.local_addr6().is_some_and(|a| a.is_ipv6()));
        let others: Vec<SocketAddr> = nodes
            .iter()
            .filter(|o| o.local_addr() != n.local_addr())
            .map(DhtHandle::local_addr)
            .collect();
        n.add_contacts(others).unwrap();
    }
    // One IPv6 address given: the first node's sibling pings the second's.
    nodes[0].add_contacts(nodes[1].local_addr6()).unwrap();
    wait_until("the first IPv6 contact", GENEROUS, async || {
        let s = nodes[0].stats6().await.unwrap().expect("an IPv6 node");
        s.good_nodes >= 1
    })
    .await;
    // The third node's lookups over IPv4 ask for `nodes6` too; what comes back is verified
    // by its IPv6 node.
    wait_until("the third node's IPv6 table", GENEROUS, async || {
        let _ = nodes[2].find_node(NodeId([0x33; 20])).await;
        let s = nodes[2].stats6().await.unwrap().expect("an IPv6 node");
        s.good_nodes >= 1
    })
    .await;
    let ih = InfoHash([0x61; 20]);
    let (_, announced) = nodes[2].announce(ih, Some(7777)).unwrap().collect().await;
    assert!(
        announced.announced >= 2,
        "stored over both families: {announced:?}"
    );
    assert!(!announced.closest6.is_empty());
    let want4: SocketAddr = "127.61.0.3:7777".parse().unwrap();
    let want6: SocketAddr = "[fd77::61:3]:7777".parse().unwrap();
    let (mut peers, summary) = nodes[0].get_peers(ih).unwrap().collect().await;
    peers.sort();
    assert_eq!(peers, vec![want4, want6], "{summary:?}");
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A host without the IPv6 address asked for: with `bind6_optional` (the CLI's default of
/// both families) the node runs IPv4 only; an IPv6 address given explicitly must bind.
#[tokio::test]
async fn an_unavailable_ipv6_address_is_optional_only_when_asked_so() {
    use trackerless::dht::driver::{Dht, DhtConfig};
    let mut c = DhtConfig::new("127.61.1.1:0".parse().unwrap());
    c.node = Config::loopback_testnet();
    // Never added to lo: the kernel refuses to bind it (EADDRNOTAVAIL).
    c.bind6 = Some("[fd77::61:99]:0".parse().unwrap());
    assert!(
        Dht::bind(c.clone()).await.is_err(),
        "explicit IPv6 must bind"
    );
    c.bind6_optional = true;
    let (dht, driver) = Dht::bind(c).await.expect("runs IPv4 only");
    tokio::spawn(driver);
    assert_eq!(dht.local_addr6(), None);
    assert_eq!(dht.stats6().await.unwrap(), None);
    dht.shutdown().await.unwrap();
}

/// Persistence per family: a dual node's IPv6 id and IPv6 contacts are saved beside the
/// IPv4 ones, and after a restart from the same data directory it keeps that id and
/// rejoins its IPv6 contact without being told again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_ipv6_id_and_table() {
    use trackerless::dht::driver::{Dht, DhtConfig};
    use trackerless::dht::persist::NodeStore;
    use wait_support::{GENEROUS, wait_until};
    for i in 1..=2 {
        common::ensure_ipv6_on_lo(&format!("fd77::62:{i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = |i: u8, data: Option<std::path::PathBuf>| {
        let mut c = DhtConfig::new(format!("127.62.0.{i}:0").parse().unwrap());
        c.bind6 = Some(format!("[fd77::62:{i}]:0").parse().unwrap());
        c.data_dir = data;
        c.node = Config {
            allow: AllowList::only(vec![
                "127.0.0.0/8".parse().unwrap(),
                "fd77::/16".parse().unwrap(),
            ]),
            ..Config::loopback_testnet()
        };
        c
    };
    let other = Dht::spawn(config(2, None)).unwrap();
    let other6 = other.local_addr6().unwrap();
    let node = Dht::spawn(config(1, Some(dir.path().to_path_buf()))).unwrap();
    node.add_contacts([other6]).unwrap();
    wait_until("the IPv6 contact verified", GENEROUS, async || {
        node.stats6().await.unwrap().unwrap().good_nodes >= 1
    })
    .await;
    node.shutdown().await.unwrap();
    let (id6, saved6) = {
        let store = NodeStore::open(dir.path()).unwrap();
        (
            store.node_id_of(Family::V6).unwrap(),
            store.contact_addrs6(),
        )
    };
    assert!(id6.is_some());
    assert_eq!(
        saved6
            .iter()
            .map(|a| SocketAddr::V6(*a))
            .collect::<Vec<_>>(),
        vec![other6]
    );
    // Restart: the saved IPv6 contact is pinged and re-enters the table.
    let node = Dht::spawn(config(1, Some(dir.path().to_path_buf()))).unwrap();
    wait_until("the saved IPv6 contact back", GENEROUS, async || {
        node.stats6().await.unwrap().unwrap().good_nodes >= 1
    })
    .await;
    node.shutdown().await.unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    assert_eq!(
        store.node_id_of(Family::V6).unwrap(),
        id6,
        "the IPv6 id survives"
    );
    other.shutdown().await.unwrap();
}

/// The `dht-node` binary with `--bind` for both families answers over IPv6 and says so.
#[tokio::test]
async fn dht_node_binds_both_families() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use trackerless::dht::driver::{Dht, DhtConfig};
    common::ensure_ipv6_on_lo("fd77::63:1");
    common::ensure_ipv6_on_lo("fd77::63:2");
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["--bind", "127.63.0.1:6881", "--bind", "[fd77::63:1]:6881"])
        .args(["--allow-net", "127.0.0.0/8", "--allow-net", "fd77::/16"])
        .args([
            "--no-subnet-limit",
            "--stats-interval",
            "0",
            "--bootstrap",
            "127.63.0.9:1",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dht-node starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("a listening line");
    assert!(
        line.contains("127.63.0.1:6881 and [fd77::63:1]:6881 (IPv6 DHT)"),
        "{line}"
    );
    let mut c = DhtConfig::new("127.63.0.2:0".parse().unwrap());
    c.bind6 = Some("[fd77::63:2]:0".parse().unwrap());
    c.node = Config {
        allow: AllowList::only(vec![
            "fd77::/16".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ]),
        ..Config::loopback_testnet()
    };
    let probe = Dht::spawn(c).unwrap();
    let target: SocketAddr = "[fd77::63:1]:6881".parse().unwrap();
    probe
        .ping(target)
        .await
        .expect("dht-node answers a ping over IPv6");
    probe.shutdown().await.unwrap();
    child.kill().await.unwrap();
}

/// Real sockets, each kind of host: dual-stack nodes, an IPv4-only node and an IPv6-only
/// node (`DhtConfig::bind` an IPv6 address, no `bind6`). A dual node announces; through
/// the dual nodes the IPv6-only node finds its IPv6 address and the IPv4-only node its
/// IPv4 one (each DHT carries its own family's peers). The IPv6-only node's primary node
/// is its IPv6 one: `stats()`, `find_node` and the handle's id are IPv6's; IPv4 pings are
/// refused without a packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_only_driver_finds_peers_through_dual_nodes() {
    use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
    use trackerless::dht::node::PingError;
    use wait_support::{GENEROUS, wait_until};
    for i in 1..=4 {
        common::ensure_ipv6_on_lo(&format!("fd77::64:{i}"));
    }
    common::ensure_ipv6_on_lo("fd77::64:30");
    let allow = || Config {
        allow: AllowList::only(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd77::/16".parse().unwrap(),
        ]),
        ..Config::loopback_testnet()
    };
    let start = |bind: &str, bind6: Option<&str>| {
        let mut c = DhtConfig::new(bind.parse().unwrap());
        c.bind6 = bind6.map(|b| b.parse().unwrap());
        c.node = allow();
        Dht::spawn(c).expect("binds")
    };
    let duals: Vec<DhtHandle> = (1..=4)
        .map(|i| {
            start(
                &format!("127.64.0.{i}:0"),
                Some(&format!("[fd77::64:{i}]:0")),
            )
        })
        .collect();
    for n in &duals {
        for o in &duals {
            if o.local_addr() != n.local_addr() {
                n.add_contacts([o.local_addr(), o.local_addr6().unwrap()])
                    .unwrap();
            }
        }
    }
    let v4_only = start("127.64.0.20:0", None);
    // The IPv6-only node learns its first contact from its configuration (`--contact`
    // takes either family), the IPv4-only one through the handle.
    let v6_only = {
        let mut c = DhtConfig::new("[fd77::64:30]:0".parse().unwrap());
        c.node = allow();
        c.contacts = vec![duals[0].local_addr6().unwrap(), duals[0].local_addr()];
        Dht::spawn(c).expect("binds")
    };
    assert!(v6_only.local_addr().is_ipv6());
    assert_eq!(v6_only.local_addr6(), Some(v6_only.local_addr()));
    v4_only.add_contacts([duals[0].local_addr()]).unwrap();
    // An IPv4 address is out of an IPv6-only node's reach.
    let r = v6_only.ping(duals[0].local_addr()).await;
    assert!(
        matches!(
            r,
            Err(trackerless::dht::driver::DhtError::Ping(
                PingError::NotAllowed
            ))
        ),
        "{r:?}"
    );
    wait_until("every dual node's tables", GENEROUS, async || {
        for n in &duals {
            let s4 = n.stats().await.unwrap();
            let s6 = n.stats6().await.unwrap().expect("an IPv6 node");
            if s4.good_nodes < 3 || s6.good_nodes < 3 {
                return false;
            }
        }
        true
    })
    .await;
    // The IPv6-only node joins through lookups of its own (its primary node is IPv6).
    wait_until("the IPv6-only node's table", GENEROUS, async || {
        let _ = v6_only.find_node(NodeId([0x64; 20])).await;
        v6_only.stats().await.unwrap().good_nodes >= 3
    })
    .await;
    let s6 = v6_only.stats6().await.unwrap().expect("the IPv6 node");
    assert_eq!(s6.good_nodes, v6_only.stats().await.unwrap().good_nodes);
    assert!(
        v6_only.contacts().await.unwrap().is_empty(),
        "no IPv4 table"
    );
    wait_until("the IPv4-only node's table", GENEROUS, async || {
        let _ = v4_only.find_node(NodeId([0x46; 20])).await;
        v4_only.stats().await.unwrap().good_nodes >= 3
    })
    .await;

    let ih = InfoHash([0x64; 20]);
    let (_, announced) = duals[3].announce(ih, Some(7777)).unwrap().collect().await;
    assert!(announced.announced >= 2, "{announced:?}");
    let (peers6, summary6) = v6_only.get_peers(ih).unwrap().collect().await;
    assert_eq!(
        peers6,
        vec!["[fd77::64:4]:7777".parse::<SocketAddr>().unwrap()],
        "IPv6-only: {summary6:?}"
    );
    assert!(summary6.closest.is_empty() && !summary6.closest6.is_empty());
    let (peers4, summary4) = v4_only.get_peers(ih).unwrap().collect().await;
    assert_eq!(
        peers4,
        vec!["127.64.0.4:7777".parse::<SocketAddr>().unwrap()],
        "IPv4-only: {summary4:?}"
    );
    // An IPv6-only node announces and is found over IPv6.
    let ih2 = InfoHash([0x65; 20]);
    let (_, a) = v6_only.announce(ih2, Some(6666)).unwrap().collect().await;
    assert!(a.announced >= 1, "{a:?}");
    let (found, _) = duals[1].get_peers(ih2).unwrap().collect().await;
    assert_eq!(
        found,
        vec!["[fd77::64:30]:6666".parse::<SocketAddr>().unwrap()]
    );
    for n in duals.iter().chain([&v4_only, &v6_only]) {
        n.shutdown().await.unwrap();
    }
}
