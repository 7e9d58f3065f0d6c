//! Three real nodes on loopback: ping, find_node, announce/get_peers round trip, and token
//! checks (wrong token, a token presented from another IP, a token older than 10 minutes).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use trackerless::dht::id::{InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, QueryArgs};
use trackerless::dht::node::{Config, Node};
use trackerless::sim::testnet::{Testnet, TestnetConfig};

async fn testnet(subnet: u8) -> Testnet {
    let net = Testnet::start(
        3,
        TestnetConfig {
            subnet,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let smallest = net.wait_for_tables(2, Duration::from_secs(20)).await;
    assert!(smallest >= 2, "tables did not fill: smallest {smallest}");
    net
}

#[tokio::test]
async fn ping_find_node_announce_and_get_peers() {
    let net = testnet(61).await;
    let (a, b, c) = (&net.nodes[0], &net.nodes[1], &net.nodes[2]);

    assert_eq!(a.ping(net.addr(1)).await.unwrap(), b.id());

    let summary = a.find_node(c.id()).await.unwrap();
    assert!(
        summary.messages >= 1,
        "a find_node reports the queries it sent: {summary:?}"
    );
    assert_eq!(summary.announced, 0, "{summary:?}");
    let found = summary.closest;
    assert!(
        found
            .iter()
            .any(|x| x.id == c.id() && x.addr == net.addr(2)),
        "{found:?}"
    );

    let ih: InfoHash = InfoHash([0x5a; 20]);
    let (_, summary) = b.announce(ih, Some(7000)).unwrap().collect().await;
    assert!(
        summary.announced >= 1,
        "announce acknowledged by nobody: {summary:?}"
    );

    let (peers, _) = c.get_peers(ih).unwrap().collect().await;
    let expected = SocketAddrV4::new(*net.addr(1).ip(), 7000);
    assert!(
        peers.contains(&std::net::SocketAddr::from(expected)),
        "{peers:?}"
    );

    // implied_port: the announcer's UDP port is stored.
    let ih2: InfoHash = InfoHash([0x6b; 20]);
    c.announce(ih2, None).unwrap().collect().await;
    let (peers, _) = a.get_peers(ih2).unwrap().collect().await;
    assert!(
        peers.contains(&std::net::SocketAddr::from(net.addr(2))),
        "{peers:?}"
    );

    let stats = a.stats().await.unwrap();
    assert!(stats.queries_in > 0 && stats.replies_in > 0);
    assert_eq!(stats.dropped_not_allowed, 0);
    net.shutdown().await;
}

/// Sends one query from `sock` to `to` and returns the decoded reply.
async fn ask(sock: &UdpSocket, to: SocketAddrV4, args: QueryArgs<'_>) -> krpc::Message {
    let mut out = Vec::new();
    krpc::encode_query(&mut out, b"zz", &NodeId([0x33; 20]), &args, false, None);
    sock.send_to(&out, to).await.unwrap();
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("reply")
            .unwrap();
        // The node may also ping us (to verify a new querier); skip its queries.
        let m = krpc::decode(&buf[..n]).unwrap();
        if m.tid.as_slice() == b"zz" {
            return m;
        }
    }
}

fn token_of(m: &krpc::Message) -> Vec<u8> {
    match &m.body {
        Body::Response(r) => r
            .token
            .expect("get_peers reply has a token")
            .as_slice()
            .to_vec(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn error_code(m: &krpc::Message) -> Option<i64> {
    match &m.body {
        Body::Error(e) => Some(e.code),
        _ => None,
    }
}

#[tokio::test]
async fn bad_and_foreign_tokens_are_refused() {
    let net = testnet(62).await;
    let target = net.addr(0);
    let ih = InfoHash([0x77; 20]);
    let a = UdpSocket::bind("127.62.9.1:0").await.unwrap();
    let b = UdpSocket::bind("127.62.9.2:0").await.unwrap();

    let reply = ask(
        &a,
        target,
        QueryArgs::GetPeers {
            info_hash: &ih,
            scrape: false,
            noseed: false,
        },
    )
    .await;
    let token = token_of(&reply);

    // A made-up token.
    let bad = ask(
        &a,
        target,
        QueryArgs::AnnouncePeer {
            info_hash: &ih,
            port: 1,
            implied_port: false,
            token: b"nope",
            seed: false,
        },
    )
    .await;
    assert_eq!(error_code(&bad), Some(203));

    // A's token presented from B.
    let foreign = ask(
        &b,
        target,
        QueryArgs::AnnouncePeer {
            info_hash: &ih,
            port: 1,
            implied_port: false,
            token: &token,
            seed: false,
        },
    )
    .await;
    assert_eq!(error_code(&foreign), Some(203));

    // The right token from the right IP.
    let ok = ask(
        &a,
        target,
        QueryArgs::AnnouncePeer {
            info_hash: &ih,
            port: 4242,
            implied_port: false,
            token: &token,
            seed: false,
        },
    )
    .await;
    assert!(matches!(ok.body, Body::Response(_)), "{ok:?}");
    let (peers, _) = net.nodes[1].get_peers(ih).unwrap().collect().await;
    let SocketAddr::V4(a_addr) = a.local_addr().unwrap() else {
        unreachable!()
    };
    assert!(
        peers.contains(&SocketAddr::V4(SocketAddrV4::new(*a_addr.ip(), 4242))),
        "{peers:?}"
    );
    let stats = net.nodes[0].stats().await.unwrap();
    assert_eq!(stats.bad_tokens, 2);
    net.shutdown().await;
}

/// Token lifetime on the virtual clock: a sans-IO node fed datagrams at chosen instants.
#[test]
fn token_older_than_ten_minutes_is_refused() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::loopback_testnet(), t0);
    let from: SocketAddr = "127.63.0.9:5000".parse().unwrap();
    let ih = InfoHash([0x11; 20]);
    let exchange = |node: &mut Node, at: Instant, args: QueryArgs<'_>| {
        let mut out = Vec::new();
        krpc::encode_query(&mut out, b"tt", &NodeId([0x44; 20]), &args, false, None);
        node.handle_timeout(at);
        while node.poll_transmit().is_some() {}
        node.handle_datagram(at, from, &out);
        let t = node.poll_transmit().expect("a reply");
        assert_eq!(t.to, from);
        krpc::decode(t.payload).unwrap()
    };
    let token = token_of(&exchange(
        &mut node,
        t0,
        QueryArgs::GetPeers {
            info_hash: &ih,
            scrape: false,
            noseed: false,
        },
    ));
    let announce = |port| QueryArgs::AnnouncePeer {
        info_hash: &ih,
        port,
        implied_port: false,
        token: &token,
        seed: false,
    };

    // 9 minutes later: still valid (current or previous secret).
    let r = exchange(&mut node, t0 + Duration::from_secs(9 * 60), announce(1));
    assert!(matches!(r.body, Body::Response(_)), "{r:?}");
    // 10 minutes and a second later: refused.
    let r = exchange(
        &mut node,
        t0 + Duration::from_secs(10 * 60 + 1),
        announce(2),
    );
    assert_eq!(error_code(&r), Some(203));
}

/// BEP 51 both ways between our nodes, direct queries, and the passive-harvest channel.
#[tokio::test]
async fn sample_infohashes_direct_queries_and_incoming_reports() {
    use trackerless::dht::driver::{Dht, DhtConfig};
    use trackerless::dht::node::DirectQuery;

    let net = testnet(67).await;
    // Two infohashes announced by node 1; sample them from every node's store.
    for b in [0x21u8, 0x22] {
        net.nodes[1]
            .announce(InfoHash([b; 20]), Some(9000))
            .unwrap()
            .collect()
            .await;
    }
    let mut seen = std::collections::HashSet::new();
    for i in 0..3 {
        let r = net.nodes[1]
            .sample_infohashes(net.addr(i), NodeId([0; 20]))
            .await;
        let Ok(r) = r else { continue };
        assert!(r.interval.is_some() && r.num.is_some(), "{r:?}");
        seen.extend(r.samples());
    }
    assert!(
        seen.contains(&InfoHash([0x21; 20])) && seen.contains(&InfoHash([0x22; 20])),
        "{seen:?}"
    );

    let r = net.nodes[0]
        .query(net.addr(2), DirectQuery::GetPeers(InfoHash([0x21; 20])))
        .await
        .unwrap();
    assert!(r.token.is_some());

    // A node with an incoming channel reports the queries it receives.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut cfg = DhtConfig::new("127.67.9.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    cfg.incoming = Some(tx);
    let (watcher, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    let SocketAddr::V4(waddr) = watcher.local_addr() else {
        unreachable!()
    };
    net.nodes[0]
        .query(waddr, DirectQuery::GetPeers(InfoHash([0x99; 20])))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.info_hash, InfoHash([0x99; 20]));
    assert_eq!(got.from, SocketAddr::V4(net.addr(0)));
    assert_eq!(got.peer, None);
    watcher.shutdown().await.unwrap();
    net.shutdown().await;
}
