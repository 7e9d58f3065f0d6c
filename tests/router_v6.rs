//! Router mode for both families on real sockets (BEP 32), inside a network namespace: the
//! router seeds both rings from a dual-stack node, answers IPv6 queries with `nodes6` and
//! IPv4 ones with `nodes` (both when `want` asks), bootstraps a node whose only router is
//! its IPv6 address, and keeps both rings across a restart. The `dht-node --router` binary
//! binds an IPv6 socket beside its IPv4 one and answers over it.
//!
//! Every address is loopback or an `fd77::` test address added to `lo` (run with
//! `unshare -rn sh -c 'ip link set lo up && cargo test --features testing --test router_v6'`).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
use trackerless::dht::id::{Contact, NodeId};
use trackerless::dht::krpc::{self, Body, QueryArgs, Want};
use trackerless::dht::node::Config;
use trackerless::dht::router::RouterConfig;
use trackerless::dht::router::io::{self as router_io, RouterRunConfig};
use trackerless::dht::router::store::{Rings, contacts_of, contacts6_of, store_file};
use wait_support::{GENEROUS, wait_for, wait_until};

mod common;
mod wait_support;

/// Loopback and the fd77::/16 test addresses: nothing else is ever sent to.
fn test_allow() -> AllowList {
    AllowList::only(vec![
        "127.0.0.0/8".parse().unwrap(),
        "fd77::/16".parse().unwrap(),
    ])
}

/// An IPv6 test address in a `/64` of its own (the router keeps one entry per `/64`), added
/// to `lo`.
fn v6(i: u8) -> String {
    let a = format!("fd77:0:0:14{i:02x}::1");
    common::ensure_ipv6_on_lo(&a);
    a
}

/// A dual-stack node on 127.140.1.`i` and [`v6`]`(i)`, bootstrapping from `routers`.
async fn dual_node(i: u8, routers: Vec<String>) -> DhtHandle {
    let mut cfg = DhtConfig::new(format!("127.140.1.{i}:0").parse().unwrap());
    cfg.bind6 = Some(format!("[{}]:0", v6(i)).parse().unwrap());
    cfg.node = Config {
        allow: test_allow(),
        ..Config::loopback_testnet()
    };
    cfg.bootstrap = routers;
    let (handle, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    handle
}

fn router_config(data_dir: &std::path::Path, seeds: Vec<String>) -> RouterRunConfig {
    RouterRunConfig {
        bind: "127.140.0.1:0".parse().unwrap(),
        bind6: Some(format!("[{}]:0", v6(0)).parse().unwrap()),
        bind6_optional: false,
        router: RouterConfig {
            verify_delay: Duration::from_millis(200),
            allow: test_allow(),
            rate_limit: None,
            ..RouterConfig::default()
        },
        data_dir: Some(data_dir.to_path_buf()),
        save_interval: Duration::from_secs(300),
        seeds,
    }
}

/// Sends a `find_node` with `want` from `socket` to `to` until a reply comes (UDP: the
/// first datagram may race the router's start) and returns its `nodes` and `nodes6`.
async fn find_node(
    socket: &UdpSocket,
    to: SocketAddr,
    want: Want,
) -> (Option<Vec<SocketAddrV4>>, Option<Vec<SocketAddrV6>>) {
    let mut q = Vec::new();
    let args = QueryArgs::FindNode {
        target: &NodeId([7; 20]),
    };
    krpc::encode_query_want(&mut q, b"fn", &NodeId([0x42; 20]), &args, want, true, None);
    let mut buf = vec![0u8; 4096];
    wait_for("a reply to find_node", GENEROUS, async || {
        socket.send_to(&q, to).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        assert_eq!(from, to);
        let m = krpc::decode(&buf[..n]).unwrap();
        let Body::Response(r) = m.body else {
            panic!("not a reply: {m:?}")
        };
        Some((
            r.nodes.as_deref().map(contacts_of),
            r.nodes6.as_deref().map(contacts6_of),
        ))
    })
    .await
}

fn is_test6(a: &SocketAddrV6) -> bool {
    a.ip().segments()[0] == 0xfd77
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_serves_both_families_and_bootstraps_an_ipv6_node() {
    // A small dual-stack network: node 1 knows nobody, the others join through both its
    // addresses, so its IPv4 and IPv6 tables fill.
    let first = dual_node(1, vec![]).await;
    let first4 = first.local_addr().to_string();
    let first6 = first.local_addr6().expect("IPv6 socket").to_string();
    let mut nodes = vec![first.clone()];
    for i in 2..=9 {
        nodes.push(dual_node(i, vec![first4.clone(), first6.clone()]).await);
    }
    wait_until(
        "the first node to know 5 nodes in each family",
        GENEROUS,
        async || {
            let s4 = first.stats().await.unwrap().good_nodes;
            let s6 = first.stats6().await.unwrap().map_or(0, |s| s.good_nodes);
            s4 >= 5 && s6 >= 5
        },
    )
    .await;

    // The router seeds itself from the first node, over both families.
    let dir = tempfile::tempdir().unwrap();
    let router = router_io::spawn(router_config(
        dir.path(),
        vec![first4.clone(), first6.clone()],
    ))
    .unwrap();
    let r4 = router.local_addr();
    let r6 = router.local_addr6().expect("the router serves IPv6");
    assert!(r6.is_ipv6());
    let (stored, stored6) = wait_for(
        "the router to verify 5 contacts in each family",
        GENEROUS,
        async || {
            let s = router.stats().await.unwrap();
            (s.stored - s.stored6 >= 5 && s.stored6 >= 5).then_some((s.stored, s.stored6))
        },
    )
    .await;

    // Raw queries: over IPv6 without `want`, nodes6 only (IPv6 contacts); with
    // `want = [n4, n6]`, both lists, each of its own family; over IPv4, nodes only.
    let s6 = UdpSocket::bind(format!("[{}]:0", v6(0xf0))).await.unwrap();
    let (n4, n6) = find_node(&s6, r6, Want::NONE).await;
    assert_eq!(n4, None, "no IPv4 list unless asked for");
    let n6 = n6.expect("nodes6 over IPv6");
    assert!(!n6.is_empty() && n6.iter().all(is_test6), "{n6:?}");
    let (n4, n6) = find_node(&s6, r6, Want::BOTH).await;
    let (n4, n6) = (n4.expect("nodes"), n6.expect("nodes6"));
    assert!(
        !n4.is_empty() && n4.iter().all(|a| a.ip().is_loopback()),
        "{n4:?}"
    );
    assert!(!n6.is_empty() && n6.iter().all(is_test6), "{n6:?}");
    let s4 = UdpSocket::bind("127.140.0.99:0").await.unwrap();
    let (n4, n6) = find_node(&s4, r4, Want::NONE).await;
    assert_eq!(n6, None);
    assert!(n4.is_some_and(|n| !n.is_empty()));

    // A fresh node whose only router is the router's IPv6 address fills its IPv6 table.
    let fresh = dual_node(0x20, vec![r6.to_string()]).await;
    wait_until(
        "a node bootstrapped from the router's IPv6 address to know 4 IPv6 nodes",
        GENEROUS,
        async || {
            fresh
                .stats6()
                .await
                .unwrap()
                .is_some_and(|s| s.good_nodes >= 4)
        },
    )
    .await;

    // Both rings survive a restart.
    router.shutdown().await.unwrap();
    let again = router_io::spawn(router_config(dir.path(), vec![])).unwrap();
    assert!(again.loaded() >= stored, "{} of {stored}", again.loaded());
    assert!(
        again.loaded6() >= stored6,
        "{} of {stored6}",
        again.loaded6()
    );
    again.shutdown().await.unwrap();
    fresh.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Starts `dht-node --router` with `extra` flags, bound to `bind4` and `[a6]:0`, its
/// bootstrap a silent local address, and returns it with its "router listening on" line.
async fn spawn_router(
    extra: &[&str],
    bind4: &str,
    a6: &str,
    data_dir: &std::path::Path,
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .arg("--router")
        .args(extra)
        .args(["--bind", bind4, "--bind"])
        .arg(format!("[{a6}]:0"))
        .args(["--bootstrap", "127.140.3.2:9"])
        .args(["--allow-net", "127.0.0.0/8", "--allow-net", "fd77::/16"])
        .args(["--stats-interval", "0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dht-node starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(GENEROUS, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("router listening on") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("a listening line");
    (child, line)
}

/// `dht-node --router` with `--bind` for both families names its IPv6 socket in the
/// listening line and answers a query over it with `nodes6`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_binary_binds_and_answers_ipv6() {
    let a6 = v6(0x30);
    let dir = tempfile::tempdir().unwrap();
    let (_child, line) = spawn_router(&[], "127.140.3.1:0", &a6, dir.path()).await;
    let r6: SocketAddr = line
        .split(" and ")
        .nth(1)
        .and_then(|rest| rest.split(" (IPv6 DHT)").next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 address in {line:?}"));
    assert_eq!(r6.ip().to_string(), a6);
    let s6 = UdpSocket::bind(format!("[{}]:0", v6(0x31))).await.unwrap();
    let (n4, n6) = find_node(&s6, r6, Want::NONE).await;
    assert_eq!(n4, None);
    assert_eq!(n6, Some(vec![]), "an empty IPv6 ring, answered over IPv6");
}

/// `--router-capacity6` sizes the IPv6 ring on its own; without it the IPv6 ring is as big
/// as `--router-capacity`. A store of 6 contacts per family loaded into smaller rings keeps
/// each ring's capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_capacity6_sizes_the_ipv6_ring() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("router");
    std::fs::create_dir_all(&store_dir).unwrap();
    let mut rings = Rings::new(10, 10);
    for i in 1..=6u8 {
        rings.v4.insert(&Contact::new(
            NodeId([i; 20]),
            SocketAddrV4::new([127, 140, 4, i].into(), 6881),
        ));
        let ip: std::net::Ipv6Addr = format!("fd77:0:0:14{:02x}::1", 0x40 + i).parse().unwrap();
        rings.v6.insert(&Contact::new(
            NodeId([i; 20]),
            SocketAddrV6::new(ip, 6881, 0, 0),
        ));
    }
    assert_eq!((rings.v4.len(), rings.v6.len()), (6, 6));
    rings.save(&store_file(&store_dir)).unwrap();
    let a6 = v6(0x32);
    for (extra, want) in [
        (
            &["--router-capacity6", "2"][..],
            "(6 contacts, 2 of them IPv6,",
        ),
        (&[][..], "(8 contacts, 4 of them IPv6,"),
    ] {
        let flags = [&["--router-capacity", "4"][..], extra].concat();
        let (mut child, line) = spawn_router(&flags, "127.140.3.5:0", &a6, dir.path()).await;
        assert!(line.contains(want), "{extra:?}: {line}");
        // SIGKILL: the store on disk stays the 6 + 6 we wrote for the next run.
        child.kill().await.unwrap();
    }
}

/// A host without the IPv6 address asked for: with `bind6_optional` (the CLI's default
/// `--bind`) the router serves IPv4 alone and says so (no IPv6 address, IPv6 off, so no
/// IPv6 contact is queued); without it, starting fails. An address of the wrong family is
/// refused either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ipv6_address_is_optional_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    // Never added to lo: binding it fails with "address not available".
    let absent: SocketAddr = "[fd77:0:0:14ff::dead]:0".parse().unwrap();
    let mut cfg = router_config(dir.path(), vec![]);
    cfg.bind6 = Some(absent);
    cfg.bind6_optional = false;
    assert!(router_io::spawn(cfg.clone()).is_err());
    cfg.bind6_optional = true;
    let router = router_io::spawn(cfg.clone()).expect("IPv4 only");
    assert_eq!(router.local_addr6(), None);
    // Answered over IPv4 as ever.
    let s4 = UdpSocket::bind("127.140.4.1:0").await.unwrap();
    let (n4, _) = find_node(&s4, router.local_addr(), Want::NONE).await;
    assert_eq!(n4, Some(vec![]));
    router.shutdown().await.unwrap();
    cfg.bind6 = Some("127.140.4.2:0".parse().unwrap());
    assert!(router_io::spawn(cfg).is_err(), "an IPv4 address as bind6");
}
