//! Real nodes on loopback at scale and over restarts: the outbound allow-list, a 500-node
//! testnet where every lookup finds an announced peer, and persistence across restarts.

use std::net::{SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

mod wait_support;

use tokio::net::UdpSocket;
use trackerless::dht::driver::{Dht, DhtConfig, DhtError};
use trackerless::dht::id::{Contact, InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, Method, ResponseBody};
use trackerless::dht::node::{Config, PingError};
use trackerless::dht::peer_feed::PeersConfig;
use trackerless::sim::testnet::{Testnet, TestnetConfig};

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// A send to 10.0.0.1 never reaches the socket and is counted; so are sends to the
/// non-loopback contacts a (fake) node hands us.
#[tokio::test]
async fn allow_list_drops_and_counts_off_loopback_sends() {
    // A fake node that answers every query with 8 contacts in 10.0.0.0/8.
    let fake = UdpSocket::bind("127.65.0.2:0").await.unwrap();
    let fake_addr = v4(fake.local_addr().unwrap());
    let fake_task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut nodes = Vec::new();
        for i in 0..8u8 {
            let addr = SocketAddrV4::new([10, 0, 0, i + 1].into(), 6881);
            Contact::new(NodeId([i + 1; 20]), addr).write_compact(&mut nodes);
        }
        let me = NodeId([0xfa; 20]);
        let mut answered = 0u32;
        while let Ok((n, from)) = fake.recv_from(&mut buf).await {
            let Ok(m) = krpc::decode(&buf[..n]) else {
                continue;
            };
            if let Body::Query(q) = m.body {
                let mut body = ResponseBody::id_only(&me);
                if !matches!(q.method, Method::Ping) {
                    body.nodes = Some(&nodes);
                }
                let mut out = Vec::new();
                krpc::encode_response(&mut out, m.tid.as_slice(), &body, None, None);
                fake.send_to(&out, from).await.unwrap();
                answered += 1;
            }
        }
        answered
    });

    // No routers yet: the counters only see what this test does.
    let mut cfg = DhtConfig::new("127.65.0.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);

    let err = dht
        .ping("10.0.0.1:6881".parse::<SocketAddrV4>().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err, DhtError::Ping(PingError::NotAllowed));
    let after = dht.stats().await.unwrap();
    assert_eq!(after.dropped_not_allowed, 1);
    assert_eq!(after.packets_out, 0, "nothing left the node");

    dht.bootstrap(vec![fake_addr]).unwrap();
    // A lookup through the fake node tries the 10/8 contacts: all refused and counted.
    let found = dht.find_node(NodeId([0x42; 20])).await.unwrap().closest;
    assert!(
        found.iter().all(|c| c.addr.ip().octets()[0] == 127),
        "{found:?}"
    );
    let stats = dht.stats().await.unwrap();
    assert!(stats.dropped_not_allowed >= 8, "{stats:?}");
    // Every datagram that did leave went to the fake node.
    dht.shutdown().await.unwrap();
    fake_task.abort();
    let _ = fake_task.await;
    assert!(stats.packets_out >= 1);
}

/// The acceptance check: after bootstrap, 100 random get_peers lookups for an infohash
/// announced by one node all find that peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_node_testnet_lookups_all_find_the_peer() {
    let net = Testnet::start(
        500,
        TestnetConfig {
            subnet: 51,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let smallest = net.wait_for_tables(8, Duration::from_secs(60)).await;
    assert!(smallest >= 8, "some node has only {smallest} contacts");

    let ih = InfoHash([0x3c; 20]);
    let announcer = 123;
    let (_, summary) = net.nodes[announcer]
        .announce(ih, Some(4000))
        .unwrap()
        .collect()
        .await;
    assert!(summary.announced >= 4, "{summary:?}");
    let expected = SocketAddrV4::new(*net.addr(announcer).ip(), 4000);

    let mut lookups = tokio::task::JoinSet::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..100 {
        rng_state = rng_state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let who = (rng_state >> 33) as usize % net.nodes.len();
        let node = net.nodes[who].clone();
        lookups.spawn(async move {
            let mut stream = node.get_peers(ih).unwrap();
            let mut found = false;
            while let Some(p) = stream.next().await {
                found |= p == std::net::SocketAddr::from(expected);
            }
            (
                who,
                found,
                stream.summary().map(|s| s.messages).unwrap_or(0),
            )
        });
        // A few at a time, like real users.
        if lookups.len() >= 10 {
            let r = lookups.join_next().await.unwrap().unwrap();
            assert!(r.1, "lookup from node {} did not find the peer", r.0);
        }
    }
    let mut messages = Vec::new();
    while let Some(r) = lookups.join_next().await {
        let (who, found, m) = r.unwrap();
        assert!(found, "lookup from node {who} did not find the peer");
        messages.push(m);
    }
    messages.sort_unstable();
    println!("messages per lookup (last 10): {messages:?}");
    net.shutdown().await;
}

/// `DhtHandle::peers` repeats its lookups: a peer announced only after the feed's first
/// lookup came back empty is found by a later round (the reason to repeat at all), the
/// feed counts its lookups and their messages, and a one-round feed ends on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_feed_finds_a_peer_that_announced_after_it_started() {
    let net = Testnet::start(
        40,
        TestnetConfig {
            subnet: 54,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let smallest = net.wait_for_tables(8, Duration::from_secs(60)).await;
    assert!(smallest >= 8, "some node has only {smallest} contacts");
    let ih = InfoHash([0x5d; 20]);
    let quick = PeersConfig {
        first_pause: Duration::from_millis(50),
        max_pause: Duration::from_millis(400),
        max_pause_leeching: Duration::from_millis(200),
        ..PeersConfig::lookup()
    };
    let mut feed = net.nodes[0].peers(ih, quick);
    wait_support::wait_until("the first lookup", wait_support::GENEROUS, async || {
        feed.lookups() >= 1
    })
    .await;
    // Nothing announced yet, so nothing found (a ready peer would be returned at once).
    assert!(
        tokio::time::timeout(Duration::ZERO, feed.next())
            .await
            .is_err()
    );
    let (_, summary) = net.nodes[17]
        .announce(ih, Some(4100))
        .unwrap()
        .collect()
        .await;
    assert!(summary.announced >= 1, "{summary:?}");
    let expected = SocketAddrV4::new(*net.addr(17).ip(), 4100);
    let found = tokio::time::timeout(wait_support::GENEROUS, async {
        while let Some(p) = feed.next().await {
            if p == std::net::SocketAddr::from(expected) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the feed never found the late announce");
    // The peer came from a later round, whose end is counted just after its peers.
    wait_support::wait_until(
        "the second lookup's end",
        wait_support::GENEROUS,
        async || feed.lookups() >= 2,
    )
    .await;
    assert!(feed.messages() > 0);

    let mut once = net.nodes[3].peers(ih, PeersConfig::once());
    let mut peers = Vec::new();
    tokio::time::timeout(wait_support::GENEROUS, async {
        while let Some(p) = once.next().await {
            peers.push(p);
        }
    })
    .await
    .expect("a one-round feed ends");
    assert!(
        peers.contains(&std::net::SocketAddr::from(expected)),
        "{peers:?}"
    );
    assert_eq!(once.lookups(), 1);
    net.shutdown().await;
}

/// A restarted node keeps its id and refills its table from persisted contacts alone (its
/// bootstrap router is dead on the second start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_id_and_refills_from_persisted_contacts() {
    // The node keeps its bootstrap router out of its table (BEP 5), so its table holds
    // the nodes its join lookups reached: 15 or 16 in a 60-node net (about two full
    // buckets, by the random ids), which is what the restart must get back. 12 is the
    // bar: the point here is the refill, not the join.
    let net = Testnet::start(
        60,
        TestnetConfig {
            subnet: 52,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(8, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DhtConfig::new("127.52.200.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    cfg.data_dir = Some(dir.path().join("dht"));
    cfg.bootstrap = vec![net.addr(0).to_string()];

    let (first, driver) = Dht::bind(cfg.clone()).await.unwrap();
    tokio::spawn(driver);
    let mut table = 0;
    for _ in 0..300 {
        let s = first.stats().await.unwrap();
        table = s.good_nodes;
        if table >= 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(table >= 12, "first run only reached {table} nodes");
    let id = first.id();
    first.shutdown().await.unwrap();

    cfg.bootstrap = vec!["127.52.255.254:9".to_string()];
    let (second, driver) = Dht::bind(cfg.clone()).await.unwrap();
    tokio::spawn(driver);
    assert_eq!(second.id(), id, "the node id survives a restart");
    let start = std::time::Instant::now();
    let mut refilled = 0;
    for _ in 0..600 {
        refilled = second.stats().await.unwrap().good_nodes;
        if refilled >= table * 9 / 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refilled >= table * 9 / 10, "refilled {refilled} of {table}");
    println!(
        "restart refilled {refilled} of {table} nodes in {:?}",
        start.elapsed()
    );
    second.shutdown().await.unwrap();
    net.shutdown().await;
}

/// The binary turns store problems into one clear line and a non-zero exit.
#[test]
fn dht_node_reports_corrupt_and_locked_stores_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("dht");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("conf"), b"\x00\x01garbage").unwrap();
    std::fs::write(store.join("db"), vec![0x5a; 50_000]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["--bind", "127.66.0.1:0", "--bootstrap", "127.66.0.2:9"])
        .args(["--allow-net", "127.0.0.0/8", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: the node store at"), "{err}");
    assert!(last.contains("--data-dir"), "{err}");
    assert!(!err.contains("RUST_BACKTRACE"), "no panic message: {err}");

    let bad_flag = Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["--allow-net", "127.0.0.0/99"])
        .output()
        .unwrap();
    assert_eq!(bad_flag.status.code(), Some(2));
}
