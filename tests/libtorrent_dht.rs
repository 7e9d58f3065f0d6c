//! Acceptance test: interop with a real libtorrent 2.x DHT node (python bindings, driven by
//! `tools/lt_node.py`; `.ci/run` installs them).
//!
//! Three of our nodes form a small loopback testnet; a libtorrent node is told about them
//! (`add_node`), and a fourth node of ours joins the DHT knowing nothing but libtorrent's
//! address. Then, both ways: a peer announced through our node must be found by
//! libtorrent's lookup, and a peer announced by libtorrent must be found by ours. Along the
//! way our ping of libtorrent must return libtorrent's own id, and libtorrent's BEP 51
//! `sample_infohashes` of our node is logged (not asserted: it is informational).
//!
//! Everything binds to 127.70.x.y (this test's address range). libtorrent's timings vary
//! (its table refresh runs every 5 s), so every wait polls against a deadline; a failure
//! prints both sides' state: our nodes' stats and tables, libtorrent's status, live table,
//! recent events and stderr.

mod common;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::lt::LtNode;
use tokio::time::Instant;
use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
use trackerless::dht::id::{InfoHash, NodeId};
use trackerless::dht::node::Config;
use trackerless::sim::testnet::{Testnet, TestnetConfig};

/// Our testnet nodes are 127.70.0.1-3.
const SUBNET: u8 = 70;
const TESTNET_NODES: usize = 3;
/// libtorrent's address (its port is picked free at start).
const LT_IP: Ipv4Addr = Ipv4Addr::new(127, 70, 1, 1);
/// Our node that bootstraps from libtorrent alone.
const JOINER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 70, 2, 1), 0);

/// Bootstrapping both ways: libtorrent promotes a node that only queried it on its 5 s
/// refresh timer, so ~5 s is expected; 25 s allows a loaded machine.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(25);
/// Each direction's announce → lookup round trip (normally well under a second).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(25);
/// libtorrent's get_peers is re-issued this often while waiting: its lookup only posts an
/// event when it finds peers, so a lookup that raced an incomplete table stays silent.
const LT_LOOKUP_RETRY: Duration = Duration::from_secs(3);
/// One lookup of ours (it ends by itself; this only bounds a stuck one).
const OUR_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

struct Fixture {
    net: Testnet,
    joiner: DhtHandle,
    joiner_task: tokio::task::JoinHandle<()>,
    lt: LtNode,
}

impl Fixture {
    async fn start() -> Fixture {
        let t = Instant::now();
        let net = Testnet::start(
            TESTNET_NODES,
            TestnetConfig {
                subnet: SUBNET,
                ..Default::default()
            },
        )
        .await
        .expect("testnet starts");
        // Every node knows one other at once; the rest of the table fills within ~5 s
        // (a node that joined through a still-empty node waits for its next bootstrap
        // round), which the bootstrap phase below checks while it waits for libtorrent.
        let smallest = net.wait_for_tables(1, Duration::from_secs(20)).await;
        assert!(
            smallest >= 1,
            "our testnet did not form: smallest table {smallest}"
        );
        eprintln!("our testnet started in {:?}", t.elapsed());

        let lt = LtNode::start_on(LT_IP).await;

        // The joiner knows libtorrent only; everything else it must learn through it. It is
        // given as a contact, not a bootstrap router: BEP 5 keeps routers out of the table,
        // and this test wants libtorrent in it (libtorrent's `add_dht_node` vs
        // `dht_bootstrap_nodes` make the same distinction).
        let mut cfg = DhtConfig::new(SocketAddr::V4(JOINER));
        cfg.node = Config::loopback_testnet();
        let (joiner, driver) = Dht::bind(cfg).await.expect("joiner binds");
        let joiner_task = tokio::spawn(driver);
        joiner
            .add_contacts(vec![lt.addr])
            .expect("the joiner takes contacts");

        Fixture {
            net,
            joiner,
            joiner_task,
            lt,
        }
    }

    fn joiner_addr(&self) -> SocketAddrV4 {
        match self.joiner.local_addr() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => panic!("joiner bound IPv6 {a}"),
        }
    }

    /// Both sides' state, for failure messages.
    async fn report(&mut self, what: &str) -> String {
        let mut out = format!("{what}\n=== our nodes ===\n");
        let mut ours: Vec<(String, DhtHandle)> = (0..self.net.nodes.len())
            .map(|i| (format!("testnet[{i}]"), self.net.nodes[i].clone()))
            .collect();
        ours.push(("joiner".into(), self.joiner.clone()));
        for (name, h) in ours {
            let _ = writeln!(out, "{name} {} id {}", h.local_addr(), h.id());
            match h.stats().await {
                Ok(s) => {
                    let _ = writeln!(out, "  stats: {s:?}");
                }
                Err(e) => {
                    let _ = writeln!(out, "  stats: {e}");
                }
            }
            match h.contacts().await {
                Ok(cs) => {
                    let _ = writeln!(out, "  contacts ({}):", cs.len());
                    for c in cs {
                        let lt = if c.id == self.lt.node_id {
                            "  <- libtorrent"
                        } else {
                            ""
                        };
                        let _ = writeln!(out, "    {} {}{lt}", c.id, c.addr);
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "  contacts: {e}");
                }
            }
        }
        out.push_str("=== libtorrent ===\n");
        out.push_str(&self.lt.diagnostics().await);
        out
    }

    async fn fail(&mut self, what: &str) -> ! {
        let report = self.report(what).await;
        panic!("{report}");
    }

    async fn shutdown(self) {
        let _ = self.joiner.shutdown().await;
        let _ = self.joiner_task.await;
        self.net.shutdown().await;
        drop(self.lt);
    }
}

/// What is still missing from the two-way bootstrap (empty = done).
async fn bootstrap_gaps(f: &mut Fixture) -> Vec<String> {
    let mut gaps = Vec::new();
    let lt_id = f.lt.node_id;
    let lt_addr = f.lt.addr;
    let dht_nodes = f.lt.dht_nodes().await;
    if dht_nodes == 0 {
        gaps.push("libtorrent's live table is empty".to_string());
    }
    let lt_table = f.lt.node_table().await;
    let joiner = f.joiner.id();
    if !lt_table.iter().any(|(id, _)| *id == joiner) {
        gaps.push("libtorrent's live table lacks our joiner".to_string());
    }
    let knows_lt = |cs: &[trackerless::dht::id::Contact]| {
        cs.iter().any(|c| c.id == lt_id && c.addr == lt_addr)
    };
    let joiner_contacts = f.joiner.contacts().await.unwrap_or_default();
    if !knows_lt(&joiner_contacts) {
        gaps.push("our joiner's table lacks libtorrent".to_string());
    }
    let first = f.net.nodes[0].contacts().await.unwrap_or_default();
    if !knows_lt(&first) {
        gaps.push("testnet[0]'s table lacks libtorrent".to_string());
    }
    for (i, node) in f.net.nodes.iter().enumerate() {
        let known = node.contacts().await.unwrap_or_default();
        let testnet_peers = known
            .iter()
            .filter(|c| f.net.nodes.iter().any(|n| n.id() == c.id))
            .count();
        if testnet_peers < TESTNET_NODES - 1 {
            gaps.push(format!(
                "testnet[{i}] knows {testnet_peers} other testnet node(s)"
            ));
        }
    }
    gaps
}

/// Runs libtorrent's get_peers for `ih` (re-issued every [`LT_LOOKUP_RETRY`]) until it
/// reports `want`. Returns the number of lookups it took.
async fn lt_finds(
    lt: &mut LtNode,
    ih: InfoHash,
    want: SocketAddrV4,
    deadline: Instant,
) -> Option<u32> {
    let mut attempts = 0;
    while Instant::now() < deadline {
        attempts += 1;
        lt.get_peers(ih).await;
        let wait = LT_LOOKUP_RETRY.min(deadline.saturating_duration_since(Instant::now()));
        if lt.wait_for_peer(ih, want, wait).await {
            return Some(attempts);
        }
    }
    None
}

/// (announces stored, bad tokens) summed over all our nodes.
async fn announce_counters(f: &Fixture) -> (u64, u64) {
    let mut sum = (0, 0);
    for h in f.net.nodes.iter().chain(std::iter::once(&f.joiner)) {
        if let Ok(s) = h.stats().await {
            sum.0 += s.announces_stored;
            sum.1 += s.bad_tokens;
        }
    }
    sum
}

/// Every peer libtorrent's queued `peers` events reported for `ih` (for failure messages).
fn lt_peers_seen(lt: &mut LtNode, ih: InfoHash) -> Vec<String> {
    let ih = ih.to_string();
    let mut seen: Vec<String> = Vec::new();
    for e in lt.take_events("peers") {
        if e.get("info_hash").and_then(|v| v.as_str()) != Some(ih.as_str()) {
            continue;
        }
        let peers = e.get("peers").and_then(|v| v.as_array()).cloned();
        for p in peers.unwrap_or_default() {
            let p = p.as_str().unwrap_or_default().to_string();
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
    }
    seen
}

/// Runs our get_peers for `ih` (repeated) until it returns `want`. Returns the number of
/// lookups it took and every peer seen.
async fn we_find(
    node: &DhtHandle,
    ih: InfoHash,
    want: SocketAddrV4,
    deadline: Instant,
) -> (Option<u32>, Vec<std::net::SocketAddr>) {
    let mut attempts = 0;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        attempts += 1;
        let stream = node.get_peers(ih).expect("our node is running");
        if let Ok((peers, _)) = tokio::time::timeout(OUR_LOOKUP_TIMEOUT, stream.collect()).await {
            for p in peers {
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
            if seen.contains(&std::net::SocketAddr::from(want)) {
                return (Some(attempts), seen);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (None, seen)
}

#[tokio::test]
async fn bootstrap_announce_and_get_peers_both_ways_with_libtorrent() {
    let t0 = Instant::now();
    let mut f = Fixture::start().await;
    let lt_addr = f.lt.addr;
    let lt_id = f.lt.node_id;
    let joiner_addr = f.joiner_addr();
    eprintln!(
        "started in {:?}: libtorrent {lt_addr} id {lt_id}; joiner {joiner_addr} id {}",
        t0.elapsed(),
        f.joiner.id()
    );

    // --- Bootstrap both ways. libtorrent learns our testnet from add_node; the joiner
    // learns everything through libtorrent.
    for i in 0..TESTNET_NODES {
        let a = f.net.addr(i);
        f.lt.add_node(a).await;
    }
    let t = Instant::now();
    let deadline = t + BOOTSTRAP_TIMEOUT;
    loop {
        let gaps = bootstrap_gaps(&mut f).await;
        if gaps.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            f.fail(&format!(
                "bootstrap not done after {BOOTSTRAP_TIMEOUT:?}: {}",
                gaps.join("; ")
            ))
            .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("bootstrapped both ways in {:?}", t.elapsed());

    // --- libtorrent answers our ping with its own id.
    match f.joiner.ping(lt_addr).await {
        Ok(id) if id == lt_id => {}
        Ok(id) => {
            f.fail(&format!(
                "ping {lt_addr} returned id {id}, libtorrent says {lt_id}"
            ))
            .await
        }
        Err(e) => f.fail(&format!("ping {lt_addr} failed: {e}")).await,
    }

    // --- Our announce, libtorrent's lookup.
    let x: InfoHash = InfoHash([0x3c; 20]);
    let p: u16 = 7011;
    let t = Instant::now();
    let (_, summary) = f
        .joiner
        .announce(x, Some(p))
        .expect("joiner runs")
        .collect()
        .await;
    if summary.announced == 0 {
        f.fail(&format!(
            "our announce of {x} was acknowledged by nobody: {summary:?}"
        ))
        .await;
    }
    let our_peer = SocketAddrV4::new(*joiner_addr.ip(), p);
    let announced = summary.announced;
    match lt_finds(&mut f.lt, x, our_peer, t + LOOKUP_TIMEOUT).await {
        Some(n) => eprintln!(
            "our announce ({announced} acks) found by libtorrent after {n} lookup(s), {:?}",
            t.elapsed()
        ),
        None => {
            let seen = lt_peers_seen(&mut f.lt, x);
            f.fail(&format!(
                "libtorrent's get_peers {x} never returned {our_peer} within {LOOKUP_TIMEOUT:?} \
                 (our announce was acknowledged by {announced}); libtorrent reported: {seen:?}"
            ))
            .await
        }
    }

    // --- libtorrent's announce, our lookups (the joiner, and a testnet node that did not
    // bootstrap through libtorrent).
    let y: InfoHash = InfoHash([0xc5; 20]);
    let q: u16 = 7022;
    let lt_peer = SocketAddrV4::new(LT_IP, q);
    let before = announce_counters(&f).await;
    let t = Instant::now();
    f.lt.announce(y, q, 0).await;
    let deadline = t + LOOKUP_TIMEOUT;
    // libtorrent's announce is fire-and-forget; wait until our nodes stored it (which also
    // proves libtorrent echoed our tokens correctly) so the lookups below don't race it.
    loop {
        let now = announce_counters(&f).await;
        if now.1 > before.1 {
            f.fail(&format!(
                "our nodes refused libtorrent's announce_peer: bad_tokens {} -> {}",
                before.1, now.1
            ))
            .await;
        }
        if now.0 > before.0 {
            eprintln!(
                "libtorrent's announce stored by our nodes ({} announce(s)) after {:?}",
                now.0 - before.0,
                t.elapsed()
            );
            break;
        }
        if Instant::now() >= deadline {
            f.fail(&format!(
                "libtorrent's announce_peer for {y} reached none of our nodes in {LOOKUP_TIMEOUT:?}"
            ))
            .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (name, node) in [
        ("joiner", f.joiner.clone()),
        ("testnet[2]", f.net.nodes[2].clone()),
    ] {
        let (found, seen) = we_find(&node, y, lt_peer, deadline).await;
        match found {
            Some(n) => eprintln!(
                "libtorrent's announce found by our {name} after {n} lookup(s), {:?}",
                t.elapsed()
            ),
            None => {
                f.fail(&format!(
                    "our {name}'s get_peers {y} never returned {lt_peer} within \
                     {LOOKUP_TIMEOUT:?}; peers seen: {seen:?}"
                ))
                .await
            }
        }
    }

    // --- BEP 51: what libtorrent gets from our node's sample_infohashes (logged only).
    f.lt.sample_infohashes(joiner_addr, NodeId([0x11; 20]))
        .await;
    let want = joiner_addr.to_string();
    match f
        .lt
        .wait_event("samples", Duration::from_secs(5), |e| {
            e.get("from").and_then(|v| v.as_str()) == Some(want.as_str())
        })
        .await
    {
        Some(e) => eprintln!("libtorrent's sample_infohashes of our joiner: {e}"),
        None => eprintln!("libtorrent got no sample_infohashes answer from our joiner in 5 s"),
    }

    let stats = f.joiner.stats().await.expect("joiner runs");
    eprintln!("joiner stats: {stats:?}");
    eprintln!("total {:?}", t0.elapsed());
    f.shutdown().await;
}

/// BEP 32 interop over IPv6 only: libtorrent listening on an IPv6 test address (its DHT runs
/// a node per listen socket) and our dual-stack node exchange DHT traffic over IPv6:
/// libtorrent answers our IPv6 ping and enters our IPv6 table, answers an IPv6 `find_node`
/// with `nodes6` (never `nodes`), finds a peer we announced over IPv6 (its 18-byte value),
/// and we find a peer it announced, by its IPv6 address.
#[tokio::test]
async fn ipv6_dht_traffic_with_libtorrent() {
    use trackerless::dht::allow::AllowList;
    use trackerless::dht::node::DirectQuery;
    common::ensure_ipv6_on_lo("fd77::70:1");
    common::ensure_ipv6_on_lo("fd77::70:2");
    let mut cfg = DhtConfig::new("127.70.3.1:0".parse().unwrap());
    cfg.bind6 = Some("[fd77::70:1]:0".parse().unwrap());
    cfg.node = Config {
        allow: AllowList::only(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd77::/16".parse().unwrap(),
        ]),
        ..Config::loopback_testnet()
    };
    let ours = Dht::spawn(cfg).unwrap();
    let ours6 = ours.local_addr6().expect("an IPv6 socket");
    let mut lt =
        LtNode::start_on_with(Ipv4Addr::new(127, 70, 3, 2), &["--listen6", "fd77::70:2"]).await;
    let lt6: SocketAddr = format!("[fd77::70:2]:{}", lt.addr.port()).parse().unwrap();
    lt.add_node(ours6).await;
    ours.add_contacts([lt6]).unwrap();

    // libtorrent answers over IPv6 and, verified, enters our IPv6 table.
    let deadline = Instant::now() + BOOTSTRAP_TIMEOUT;
    loop {
        let s = ours.stats6().await.unwrap().expect("IPv6 node");
        if s.good_nodes >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "libtorrent never answered over IPv6: {s:?}"
        );
        // Polling our table until the verification ping has been answered.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (libtorrent's IPv6 node has an id of its own, BEP 42's for its IPv6 address.)
    ours.ping(lt6)
        .await
        .expect("libtorrent answers an IPv6 ping");

    // Its reply to an IPv6 find_node lists IPv6 nodes in nodes6 (BEP 32), us among them once
    // it has verified us, and no IPv4 node (libtorrent 2.1 sends an empty `nodes` too).
    let ours6_v6 = match ours6 {
        SocketAddr::V6(a) => a,
        SocketAddr::V4(_) => unreachable!("an IPv6 socket"),
    };
    let deadline = Instant::now() + BOOTSTRAP_TIMEOUT;
    loop {
        let r = ours
            .query(lt6, DirectQuery::FindNode(NodeId([0x70; 20])))
            .await
            .expect("libtorrent answers find_node over IPv6");
        assert_eq!(r.nodes().count(), 0, "{r:?}");
        if r.nodes6().any(|c| c.addr == ours6_v6) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "libtorrent never listed us in nodes6: {r:?}"
        );
        // Polling libtorrent's table, which its own verification fills.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Our announce over both families reaches libtorrent's IPv6 DHT: it finds our IPv6 peer.
    let ih = InfoHash([0x70; 20]);
    let (_, summary) = ours.announce(ih, Some(7070)).unwrap().collect().await;
    assert!(!summary.closest6.is_empty(), "{summary:?}");
    let want: SocketAddr = format!("[{}]:7070", ours6.ip()).parse().unwrap();
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    let mut found = false;
    while !found && Instant::now() < deadline {
        lt.get_peers(ih).await;
        found = lt.wait_for_peer(ih, want, LT_LOOKUP_RETRY).await;
    }
    assert!(found, "libtorrent did not find {want} over IPv6");

    // And the other way: libtorrent announces; we find its IPv6 address.
    let ih2 = InfoHash([0x71; 20]);
    lt.announce(ih2, 7171, 0).await;
    let want2: SocketAddr = "[fd77::70:2]:7171".parse().unwrap();
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.contains(&want2) {
        let stream = ours.get_peers(ih2).expect("our node is running");
        if let Ok((peers, _)) = tokio::time::timeout(OUR_LOOKUP_TIMEOUT, stream.collect()).await {
            seen.extend(peers);
        }
        if !seen.contains(&want2) {
            // Waiting for libtorrent's announce to land, not asserting after it: safe.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(seen.contains(&want2), "we did not find {want2}: {seen:?}");
    ours.shutdown().await.unwrap();
}
