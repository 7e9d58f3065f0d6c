//! BEP 33 DHT scrapes end to end: one sans-IO node answering `scrape`, `noseed` and `seed`
//! as BEP 33 says, then a loopback testnet where 30 seeders and 70 downloaders announced,
//! scraped through the library and through `dht-get --scrape`; and libtorrent's filters,
//! bit for bit the same as ours for the same announcers.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::lt::LtNode;
use tokio::net::UdpSocket;
use trackerless::dht::id::{InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, QueryArgs, Response};
use trackerless::dht::node::{Config, Node};
use trackerless::dht::scrape::ScrapeFilter;
use trackerless::sim::testnet::{Testnet, TestnetConfig};

const SEEDS: usize = 30;
const DOWNLOADERS: usize = 70;

/// BEP 33's estimator is a bloom-filter cardinality estimate with m = 2048, k = 2; its
/// standard deviation for n entries is about sqrt(m (e^{kn/m} − 1 − kn/m)) / k (Swamidass
/// and Baldi), 0.5 for 30 and 1.1 for 70. Three deviations, at least 2.
fn tolerance(n: usize) -> f64 {
    let (m, k) = (2048.0f64, 2.0f64);
    let x = k * n as f64 / m;
    let sd = (m * (x.exp() - 1.0 - x)).sqrt() / k;
    (3.0 * sd).max(2.0)
}

fn close(estimate: f64, n: usize) -> bool {
    (estimate - n as f64).abs() <= tolerance(n)
}

fn exchange(node: &mut Node, now: Instant, from: SocketAddr, args: QueryArgs<'_>) -> Response {
    let mut q = Vec::new();
    krpc::encode_query(&mut q, b"sq", &NodeId([0x44; 20]), &args, false, None);
    node.handle_datagram(now, from, &q);
    let mut reply = None;
    while let Some(t) = node.poll_transmit() {
        if t.to == from
            && let Body::Response(r) = krpc::decode(t.payload).unwrap().body
        {
            reply = Some(r);
        }
    }
    reply.expect("a reply")
}

fn get_peers(info_hash: &InfoHash, scrape: bool, noseed: bool) -> QueryArgs<'_> {
    QueryArgs::GetPeers {
        info_hash,
        scrape,
        noseed,
    }
}

#[test]
fn a_node_answers_scrapes_and_noseed_as_bep33_says() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::loopback_testnet(), t0);
    let ih = InfoHash([0x33; 20]);
    let mut seeds = ScrapeFilter::default();
    for i in 0..SEEDS + DOWNLOADERS {
        let ip = Ipv4Addr::new(127, 90, (i / 200) as u8, (i % 200) as u8 + 1);
        let from = SocketAddr::V4(SocketAddrV4::new(ip, 7000));
        let token = exchange(&mut node, t0, from, get_peers(&ih, false, false))
            .token
            .expect("a token");
        let seed = i < SEEDS;
        if seed {
            seeds.insert(IpAddr::V4(ip));
        }
        let args = QueryArgs::AnnouncePeer {
            info_hash: &ih,
            port: 7000,
            implied_port: false,
            token: token.as_slice(),
            seed,
        };
        exchange(&mut node, t0, from, args);
    }
    let asker: SocketAddr = "127.91.0.1:1".parse().unwrap();

    let r = exchange(&mut node, t0, asker, get_peers(&ih, true, false));
    let (sd, pe) = (r.bf_seeds.expect("BFsd"), r.bf_peers.expect("BFpe"));
    assert_eq!(
        *sd, seeds,
        "the seeds' filter is exactly BEP 33's over their IPs"
    );
    assert!(close(sd.estimate(), SEEDS), "{}", sd.estimate());
    assert!(close(pe.estimate(), DOWNLOADERS), "{}", pe.estimate());
    assert!(
        r.values.is_empty(),
        "a scrape is answered with filters, not peers"
    );
    assert!(r.token.is_some() && r.nodes.is_some());

    // noseed: only the downloaders come back; without it, everyone.
    let r = exchange(&mut node, t0, asker, get_peers(&ih, false, true));
    assert_eq!(r.values.len(), DOWNLOADERS);
    assert!(r.values.iter().all(|p| {
        let [_, _, hi, lo] = p.ip().octets();
        usize::from(hi) * 200 + usize::from(lo) > SEEDS
    }));
    assert!(r.bf_seeds.is_none() && r.bf_peers.is_none());
    let r = exchange(&mut node, t0, asker, get_peers(&ih, false, false));
    assert_eq!(r.values.len(), SEEDS + DOWNLOADERS);

    // A swarm we hold nothing for gets no filters (512 bytes of zeros say nothing).
    let r = exchange(
        &mut node,
        t0,
        asker,
        get_peers(&InfoHash([1; 20]), true, false),
    );
    assert!(r.bf_seeds.is_none() && r.bf_peers.is_none() && r.token.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_of_a_testnet_swarm_estimates_its_seeds_and_downloaders() {
    let n = SEEDS + DOWNLOADERS + 40;
    let net = Testnet::start(
        n,
        TestnetConfig {
            subnet: 141,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let smallest = net.wait_for_tables(8, Duration::from_secs(60)).await;
    assert!(smallest >= 8, "a node has only {smallest} contacts");
    let ih = InfoHash([0x5c; 20]);
    let mut set = tokio::task::JoinSet::new();
    for (i, node) in net.nodes.iter().take(SEEDS + DOWNLOADERS).enumerate() {
        let node = node.clone();
        set.spawn(async move {
            node.announce_as(ih, Some(6000), i < SEEDS)
                .unwrap()
                .collect()
                .await
                .1
                .announced
        });
    }
    while let Some(acks) = set.join_next().await {
        assert!(acks.unwrap() > 0, "every announce was stored somewhere");
    }

    // From a node that did not announce.
    let est = net.nodes[n - 1].scrape(ih).await.unwrap();
    println!(
        "library scrape: seeds {:.1} downloaders {:.1} from {} nodes",
        est.seeds.estimate(),
        est.downloaders.estimate(),
        est.replies
    );
    assert!(est.replies >= 5, "only {} nodes sent filters", est.replies);
    assert!(close(est.seeds.estimate(), SEEDS), "{est:?}");
    assert!(close(est.downloaders.estimate(), DOWNLOADERS), "{est:?}");

    // The command line: `dht-get --scrape` prints the same kind of estimate and exits 0.
    let data = tempfile::tempdir().unwrap();
    let args = [
        hex::encode(ih.0),
        "--scrape".into(),
        "--bind".into(),
        "127.141.9.1:0".into(),
        "--bootstrap".into(),
        net.addr(0).to_string(),
        "--allow-net".into(),
        "127.0.0.0/8".into(),
        "--no-subnet-limit".into(),
        "--timeout".into(),
        "60".into(),
        "--data-dir".into(),
        data.path().display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dht-get"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dht-get --scrape failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let [_, seeds, _, downloaders, _, nodes] = words[..] else {
        panic!("unexpected output: {stdout}");
    };
    let (seeds, downloaders, nodes): (usize, usize, usize) = (
        seeds.parse().unwrap(),
        downloaders.parse().unwrap(),
        nodes.parse().unwrap(),
    );
    println!("dht-get --scrape: {stdout}");
    assert!(close(seeds as f64, SEEDS) && close(downloaders as f64, DOWNLOADERS) && nodes >= 5);
    net.shutdown().await;
}

/// Sends one query from `sock` and waits for its answer.
async fn ask(sock: &UdpSocket, to: SocketAddrV4, args: QueryArgs<'_>) -> Response {
    let mut q = Vec::new();
    krpc::encode_query(&mut q, b"lt", &NodeId([0x77; 20]), &args, false, None);
    sock.send_to(&q, to).await.unwrap();
    loop {
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("libtorrent answered")
            .unwrap();
        match krpc::decode(&buf[..n]).unwrap().body {
            Body::Response(r) => return r,
            Body::Error(e) => panic!("error from {to}: {e:?}"),
            Body::Query(_) => continue,
        }
    }
}

/// Interop: libtorrent, given announces from 12 addresses (4 with `seed=1`), answers a
/// scrape with exactly the filters we compute over those addresses, and honours `noseed`;
/// so scrapes union filters across both implementations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_filters_are_bit_for_bit_ours() {
    let lt = LtNode::start(SocketAddrV4::new(Ipv4Addr::new(127, 142, 0, 1), 16881)).await;
    let ih = InfoHash([0x6b; 20]);
    let (mut seeds, mut downloaders) = (ScrapeFilter::default(), ScrapeFilter::default());
    for i in 0..12u8 {
        let ip = Ipv4Addr::new(127, 142, 1, i + 1);
        let sock = UdpSocket::bind(SocketAddrV4::new(ip, 0)).await.unwrap();
        let token = ask(&sock, lt.addr, get_peers(&ih, false, false))
            .await
            .token
            .expect("a token");
        let seed = i < 4;
        let args = QueryArgs::AnnouncePeer {
            info_hash: &ih,
            port: 7000,
            implied_port: false,
            token: token.as_slice(),
            seed,
        };
        ask(&sock, lt.addr, args).await;
        if seed {
            seeds.insert(IpAddr::V4(ip));
        } else {
            downloaders.insert(IpAddr::V4(ip));
        }
    }
    let sock = UdpSocket::bind("127.142.2.1:0").await.unwrap();
    let r = ask(&sock, lt.addr, get_peers(&ih, true, false)).await;
    assert_eq!(r.bf_seeds.as_deref(), Some(&seeds), "BFsd");
    assert_eq!(r.bf_peers.as_deref(), Some(&downloaders), "BFpe");
    let r = ask(&sock, lt.addr, get_peers(&ih, false, true)).await;
    assert_eq!(r.values.len(), 8, "noseed: the 8 downloaders only");
    assert!(r.values.iter().all(|p| p.ip().octets()[3] > 4));
}
