//! BEP 44 interop, server side: libtorrent 2.x (python bindings via `tools/lt_node.py`) puts
//! immutable and mutable items (with and without salt) into a loopback testnet of our nodes;
//! our nodes must accept them (libtorrent counts the successes), hold them (a raw `get` to
//! each returns the value, and for a mutable item a signature that verifies), refuse a stale
//! sequence number (302) and a forged signature (206), and serve the items back to
//! libtorrent's own `get` lookups.
//!
//! Client side: what libtorrent puts, `dht-item get` reads, and libtorrent's own lookups
//! read what `dht-item put` stored.
//!
//! Each test has its own 127.x range (they run in parallel); waits poll against deadlines.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::item_cli;
use common::lt::LtNode;
use ed25519_dalek::{Signer, SigningKey};
use serde_bencode::value::Value as Bencode;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use trackerless::dht::id::NodeId;
use trackerless::dht::items::{immutable_target, mutable_target, signable, verify};
use trackerless::dht::krpc::{self, Body, Message, Method, MutablePut, PutArgs, Query, Tid, Token};
use trackerless::sim::testnet::{Testnet, TestnetConfig};

const TESTNET_NODES: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(30);

type Dict = HashMap<Vec<u8>, Bencode>;

/// Our testnet on 127.SUBNET.0.x, libtorrent on 127.SUBNET.1.1 knowing all of it, and a UDP
/// socket on 127.SUBNET.2.1 for raw queries.
async fn setup(subnet: u8) -> (Testnet, LtNode, UdpSocket) {
    let net = Testnet::start(
        TESTNET_NODES,
        TestnetConfig {
            subnet,
            ..Default::default()
        },
    )
    .await
    .expect("testnet starts");
    let smallest = net.wait_for_tables(1, Duration::from_secs(20)).await;
    assert!(smallest >= 1, "our testnet did not form");
    let mut lt = LtNode::start_on(Ipv4Addr::new(127, subnet, 1, 1)).await;
    for i in 0..TESTNET_NODES {
        lt.add_node(net.addr(i)).await;
    }
    let n = lt.wait_dht_nodes(TESTNET_NODES as u64, TIMEOUT).await;
    assert!(n >= 1, "libtorrent learned none of our nodes");
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(127, subnet, 2, 1), 0))
        .await
        .unwrap();
    (net, lt, sock)
}

/// Sends one query and returns the reply's top-level dictionary.
async fn ask(sock: &UdpSocket, node: SocketAddrV4, method: Method) -> Option<Dict> {
    let msg = Message {
        tid: Tid::new(b"gt").unwrap(),
        body: Body::Query(Query {
            id: NodeId([0x5a; 20]),
            method,
            want: Default::default(),
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
    match serde_bencode::from_bytes::<Bencode>(&rx[..n]) {
        Ok(Bencode::Dict(top)) => Some(top),
        _ => None,
    }
}

/// The `r` dictionary of a `get` reply.
async fn raw_get(sock: &UdpSocket, node: SocketAddrV4, target: NodeId) -> Option<Dict> {
    let top = ask(sock, node, Method::Get { target, seq: None }).await?;
    match top.get(&b"r"[..]) {
        Some(Bencode::Dict(r)) => Some(r.clone()),
        _ => None,
    }
}

fn bytes<'a>(d: &'a Dict, k: &str) -> Option<&'a [u8]> {
    match d.get(k.as_bytes()) {
        Some(Bencode::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn int(d: &Dict, k: &str) -> Option<i64> {
    match d.get(k.as_bytes()) {
        Some(Bencode::Int(i)) => Some(*i),
        _ => None,
    }
}

/// Polls our nodes until one returns a reply to `get target` that `ok` accepts.
async fn wait_held(
    net: &Testnet,
    sock: &UdpSocket,
    target: NodeId,
    ok: impl Fn(&Dict) -> bool,
) -> Option<(SocketAddrV4, Dict)> {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        for i in 0..TESTNET_NODES {
            if let Some(r) = raw_get(sock, net.addr(i), target).await
                && ok(&r)
            {
                return Some((net.addr(i), r));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_immutable_item_through_our_nodes() {
    let (net, mut lt, sock) = setup(72).await;
    let value = "hello-from-libtorrent";
    let r = lt.command(&format!("put_immutable {value}")).await;
    let target_hex = r["target"].as_str().expect("target").to_string();
    let want = immutable_target(format!("{}:{value}", value.len()).as_bytes());
    assert_eq!(target_hex, hex::encode(want.0), "BEP 44 immutable target");

    let put = lt
        .wait_event("put", TIMEOUT, |e| e["target"] == target_hex.as_str())
        .await
        .expect("libtorrent's put completes");
    assert!(
        put["num_success"].as_u64().unwrap_or(0) >= 1,
        "no node of ours accepted the put: {put}"
    );

    let held = wait_held(&net, &sock, want, |r| {
        bytes(r, "v") == Some(value.as_bytes())
    })
    .await;
    assert!(held.is_some(), "none of our nodes serves the item");

    lt.command(&format!("get_immutable {target_hex}")).await;
    let item = lt
        .wait_event("item", TIMEOUT, |e| e["target"] == target_hex.as_str())
        .await
        .expect("libtorrent's get completes");
    assert_eq!(item["found"], true, "{item}");
    assert_eq!(item["value"], value, "{item}");
    lt.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_mutable_items_through_our_nodes() {
    let (net, mut lt, sock) = setup(73).await;
    let seed = [0x42u8; 32];
    let key = SigningKey::from_bytes(&seed);
    let pk = key.verifying_key().to_bytes();
    for salt in ["", "pepper"] {
        let value = format!("mutable-{}", if salt.is_empty() { "plain" } else { salt });
        let r = lt
            .command(&format!("put_mutable {} {value} {salt}", hex::encode(seed)))
            .await;
        assert_eq!(
            r["public_key"],
            hex::encode(pk),
            "same key from the same seed"
        );
        let target = mutable_target(&pk, salt.as_bytes());
        assert_eq!(r["target"], hex::encode(target.0));
        let put = lt
            .wait_event("put", TIMEOUT, |e| {
                e["public_key"] == hex::encode(pk).as_str()
            })
            .await
            .expect("libtorrent's put completes");
        assert!(
            put["num_success"].as_u64().unwrap_or(0) >= 1,
            "no node of ours accepted the mutable put: {put}"
        );
        let bencoded_v = format!("{}:{value}", value.len()).into_bytes();
        let (holder, r) = wait_held(&net, &sock, target, |r| {
            bytes(r, "v") == Some(value.as_bytes())
        })
        .await
        .expect("one of our nodes serves the mutable item");
        let seq = int(&r, "seq").expect("seq");
        let k: [u8; 32] = bytes(&r, "k").unwrap().try_into().unwrap();
        let sig: [u8; 64] = bytes(&r, "sig").unwrap().try_into().unwrap();
        assert_eq!(k, pk);
        assert!(verify(&k, salt.as_bytes(), seq, &bencoded_v, &sig));

        // Refusals, straight to the holder with a fresh token.
        let tok = Token::new(bytes(&r, "token").expect("token")).unwrap();
        let put_raw = |seq: i64, forge: bool| {
            let v = b"5:stale".to_vec();
            let mut msg = Vec::new();
            signable(salt.as_bytes(), seq, &v, &mut msg);
            let mut sig = key.sign(&msg).to_bytes();
            if forge {
                sig[7] ^= 1;
            }
            Method::Put(Box::new(PutArgs {
                token: tok,
                v,
                mutable: Some(MutablePut {
                    k: pk,
                    salt: salt.as_bytes().to_vec(),
                    seq,
                    sig,
                    cas: None,
                }),
            }))
        };
        let code = |top: Option<Dict>| match top.as_ref().and_then(|t| t.get(&b"e"[..])) {
            Some(Bencode::List(l)) => match l.first() {
                Some(Bencode::Int(c)) => Some(*c),
                _ => None,
            },
            _ => None,
        };
        assert_eq!(
            code(ask(&sock, holder, put_raw(seq - 1, false)).await),
            Some(302)
        );
        assert_eq!(
            code(ask(&sock, holder, put_raw(seq + 1, true)).await),
            Some(206)
        );

        lt.command(&format!("get_mutable {} {salt}", hex::encode(pk)))
            .await;
        let item = lt
            .wait_event("mutable_item", TIMEOUT, |e| {
                e["value"] == value.as_str() && e["authoritative"] == true
            })
            .await
            .expect("libtorrent's mutable get finds the item");
        assert_eq!(item["seq"], seq, "{item}");
    }
    lt.quit().await;
}

/// Client interop, libtorrent → `dht-item`: items libtorrent put through our nodes
/// (immutable, mutable with and without salt) are read by `dht-item get`, hash or signature
/// checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_item_reads_what_libtorrent_put() {
    let subnet = 76;
    let (net, mut lt, _sock) = setup(subnet).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let value = "lt-immutable";
    let r = lt.command(&format!("put_immutable {value}")).await;
    let target = r["target"].as_str().expect("target").to_string();
    let put = lt
        .wait_event("put", TIMEOUT, |e| e["target"] == target.as_str())
        .await
        .expect("libtorrent's put completes");
    assert!(put["num_success"].as_u64().unwrap_or(0) >= 1, "{put}");
    let out = item_cli::run(&net, subnet, &data, &["get", &target]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(item_cli::json_line(&out)["value"], value);

    let seed = [0x43u8; 32];
    let pk = hex::encode(SigningKey::from_bytes(&seed).verifying_key().to_bytes());
    for salt in ["", "pepper"] {
        let value = format!("lt-mutable-{salt}");
        lt.command(&format!("put_mutable {} {value} {salt}", hex::encode(seed)))
            .await;
        let want_target = hex::encode(
            mutable_target(
                &SigningKey::from_bytes(&seed).verifying_key().to_bytes(),
                salt.as_bytes(),
            )
            .0,
        );
        let put = lt
            // libtorrent's put alert names a mutable item by its key (the target is zero).
            .wait_event("put", TIMEOUT, |e| e["public_key"] == pk.as_str())
            .await
            .expect("libtorrent's mutable put completes");
        assert!(put["num_success"].as_u64().unwrap_or(0) >= 1, "{put}");
        let mut args = vec!["get", "--pubkey", &pk];
        if !salt.is_empty() {
            args.extend(["--salt", salt]);
        }
        let out = item_cli::run(&net, subnet, &data, &args).await;
        assert!(out.status.success(), "{out:?}");
        let got = item_cli::json_line(&out);
        assert_eq!(got["value"], value.as_str(), "{got}");
        assert_eq!(got["seq"], put["seq"], "{got} vs {put}");
        assert_eq!(got["target"], want_target.as_str());
    }
    lt.quit().await;
}

/// Client interop, `dht-item` → libtorrent: what `dht-item put` stored in our nodes
/// (immutable, mutable with and without salt) is found by libtorrent's own
/// `dht_get_immutable_item` / `dht_get_mutable_item` lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_reads_what_dht_item_put() {
    let subnet = 77;
    let (net, mut lt, _sock) = setup(subnet).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let out = item_cli::run(&net, subnet, &data, &["put", "from dht-item"]).await;
    assert!(out.status.success(), "{out:?}");
    let target = item_cli::json_line(&out)["target"]
        .as_str()
        .unwrap()
        .to_string();
    lt.command(&format!("get_immutable {target}")).await;
    let item = lt
        .wait_event("item", TIMEOUT, |e| e["target"] == target.as_str())
        .await
        .expect("libtorrent's get completes");
    assert_eq!(item["found"], true, "{item}");
    assert_eq!(item["value"], "from dht-item", "{item}");

    let key_file = dir.path().join("k");
    let key_arg = key_file.to_str().unwrap();
    for salt in ["", "pepper"] {
        let value = format!("ours-mutable-{salt}");
        let mut args = vec!["put", "--mutable", "--key-file", key_arg];
        if !salt.is_empty() {
            args.extend(["--salt", salt]);
        }
        args.push(&value);
        let out = item_cli::run(&net, subnet, &data, &args).await;
        assert!(out.status.success(), "{out:?}");
        let seq = item_cli::json_line(&out)["seq"].clone();
        let key = trackerless::dht::item_keys::parse_key(&std::fs::read(&key_file).unwrap())
            .expect("the key file dht-item wrote");
        let pk = hex::encode(key.verifying_key().to_bytes());
        lt.command(&format!("get_mutable {pk} {salt}")).await;
        let item = lt
            .wait_event("mutable_item", TIMEOUT, |e| {
                e["value"] == value.as_str() && e["authoritative"] == true
            })
            .await
            .expect("libtorrent's mutable get finds our item");
        assert_eq!(item["seq"], seq, "{item}");
        assert_eq!(item["public_key"], pk.as_str());
    }
    lt.quit().await;
}
