//! BEP 44 interop, server side: libtorrent 2.x (python bindings via `tools/lt_node.py`) puts an
//! immutable item into a loopback testnet of our nodes; our nodes must accept it (libtorrent
//! counts the successes), hold it (a raw `get` to each of them returns the value), and serve
//! it back to libtorrent's own `get` lookup.
//!
//! Everything binds to 127.72.x.y (this test's range); waits poll against deadlines.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::lt::LtNode;
use serde_bencode::value::Value as Bencode;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use trackerless::dht::id::NodeId;
use trackerless::dht::items::immutable_target;
use trackerless::dht::krpc::{self, Body, Message, Method, Query, Tid};
use trackerless::sim::testnet::{Testnet, TestnetConfig};

const SUBNET: u8 = 72;
const TESTNET_NODES: usize = 4;
const LT_IP: Ipv4Addr = Ipv4Addr::new(127, 72, 1, 1);
/// Where the test's raw `get` queries come from.
const PROBE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 72, 2, 1), 0);
const TIMEOUT: Duration = Duration::from_secs(30);

/// The `v` of a BEP 44 `get` reply from `node`, if it holds an item for `target`.
async fn raw_get(sock: &UdpSocket, node: SocketAddrV4, target: NodeId) -> Option<Vec<u8>> {
    let msg = Message {
        tid: Tid::new(b"gt").unwrap(),
        body: Body::Query(Query {
            id: NodeId([0x5a; 20]),
            method: Method::Get { target, seq: None },
        }),
        ip: None,
        read_only: true,
        version: None,
    };
    let mut buf = Vec::new();
    krpc::encode_message(&mut buf, &msg);
    sock.send_to(&buf, node).await.unwrap();
    let mut rx = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut rx))
        .await
        .ok()?
        .ok()?;
    let Ok(Bencode::Dict(top)) = serde_bencode::from_bytes::<Bencode>(&rx[..n]) else {
        return None;
    };
    let Some(Bencode::Dict(r)) = top.get(&b"r"[..]) else {
        return None;
    };
    match r.get(&b"v"[..]) {
        Some(Bencode::Bytes(v)) => Some(v.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_immutable_item_through_our_nodes() {
    let net = Testnet::start(
        TESTNET_NODES,
        TestnetConfig {
            subnet: SUBNET,
            ..Default::default()
        },
    )
    .await
    .expect("testnet starts");
    let smallest = net.wait_for_tables(1, Duration::from_secs(20)).await;
    assert!(smallest >= 1, "our testnet did not form");

    let mut lt = LtNode::start_on(LT_IP).await;
    for i in 0..TESTNET_NODES {
        lt.add_node(net.addr(i)).await;
    }
    let n = lt.wait_dht_nodes(TESTNET_NODES as u64, TIMEOUT).await;
    assert!(n >= 1, "libtorrent learned none of our nodes");

    let value = "hello-from-libtorrent";
    let r = lt.command(&format!("put_immutable {value}")).await;
    let target_hex = r["target"].as_str().expect("target").to_string();
    let want = immutable_target(format!("{}:{value}", value.len()).as_bytes());
    assert_eq!(target_hex, hex::encode(want.0), "BEP 44 immutable target");

    let put = lt
        .wait_event("put", TIMEOUT, |e| e["target"] == target_hex.as_str())
        .await
        .expect("libtorrent's put completes");
    let successes = put["num_success"].as_u64().unwrap_or(0);
    assert!(successes >= 1, "no node of ours accepted the put: {put}");

    // Our nodes hold it: ask each directly.
    let sock = UdpSocket::bind(PROBE).await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut holders = 0;
    while Instant::now() < deadline {
        holders = 0;
        for i in 0..TESTNET_NODES {
            if raw_get(&sock, net.addr(i), want).await.as_deref() == Some(value.as_bytes()) {
                holders += 1;
            }
        }
        if holders >= 1 {
            break;
        }
    }
    assert!(holders >= 1, "none of our nodes serves the item");

    // And libtorrent's own lookup reads it back from us.
    lt.command(&format!("get_immutable {target_hex}")).await;
    let item = lt
        .wait_event("item", TIMEOUT, |e| e["target"] == target_hex.as_str())
        .await
        .expect("libtorrent's get completes");
    assert_eq!(item["found"], true, "{item}");
    assert_eq!(item["value"], value, "{item}");
    lt.quit().await;
}
