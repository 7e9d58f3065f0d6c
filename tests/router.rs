//! Bootstrap-router mode on real sockets: it seeds itself from a testnet, verifies nodes with
//! cookies, bootstraps a fresh node, keeps its store across restarts, and serves metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::{Dht, DhtConfig};
use trackerless::dht::node::Config;
use trackerless::dht::router::RouterConfig;
use trackerless::dht::router::io::{self as router_io, RouterRunConfig};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use wait_support::{GENEROUS, wait_for, wait_until};

mod wait_support;

fn router_config(data_dir: &std::path::Path, seed: String) -> RouterRunConfig {
    RouterRunConfig {
        bind: "127.130.0.1:0".parse().unwrap(),
        bind6: None,
        bind6_optional: false,
        router: RouterConfig {
            verify_delay: Duration::from_millis(200),
            allow: AllowList::loopback(),
            rate_limit: None,
            ..RouterConfig::default()
        },
        data_dir: Some(data_dir.to_path_buf()),
        save_interval: Duration::from_secs(300),
        seeds: vec![seed],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_seeds_itself_bootstraps_a_node_and_survives_restart() {
    let net = Testnet::start(
        30,
        TestnetConfig {
            subnet: 131,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(8, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let router = router_io::spawn(router_config(dir.path(), net.addr(0).to_string())).unwrap();

    let stored = wait_for(
        "the router to verify 25 of 30 nodes",
        GENEROUS,
        async || {
            let stored = router.stats().await.unwrap().stored;
            (stored >= 25).then_some(stored)
        },
    )
    .await;

    // A fresh node whose only router is ours fills its table.
    let mut cfg = DhtConfig::new("127.130.1.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    cfg.bootstrap = vec![router.local_addr().to_string()];
    let (fresh, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    wait_until(
        "a node bootstrapped from the router to know 10 nodes",
        GENEROUS,
        async || fresh.stats().await.unwrap().good_nodes >= 10,
    )
    .await;
    // The querier itself gets queued and verified too (after the router's verify delay):
    // wait for that instead of guessing how long it takes.
    wait_until(
        "the router to admit the querier and count its find_node",
        GENEROUS,
        async || {
            let st = router.stats().await.unwrap();
            st.admitted as usize >= stored && st.queries_by_method.find_node >= 1
        },
    )
    .await;

    // The store survives a restart. How fast it loads is a benchmark's business
    // (`cargo bench --bench router_store`), not a functional test's.
    router.shutdown().await.unwrap();
    let again = router_io::spawn(router_config(dir.path(), "127.131.255.254:9".into())).unwrap();
    assert!(
        again.loaded() >= stored,
        "restart loaded {} of {stored}",
        again.loaded()
    );
    again.shutdown().await.unwrap();
    fresh.shutdown().await.unwrap();
    net.shutdown().await;
}

/// Scrapes `http://addr/metrics` (loopback).
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_in_both_modes() {
    let net = Testnet::start(
        10,
        TestnetConfig {
            subnet: 132,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(5, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    for (i, router) in [(1u8, true), (2, false)] {
        let ip = format!("127.132.100.{i}");
        let maddr: SocketAddr = format!("{ip}:{}", free_tcp_port(&ip)).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dht-node"));
        cmd.args([
            "--bind",
            &format!("{ip}:0"),
            "--bootstrap",
            &net.addr(0).to_string(),
        ])
        .args([
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--stats-interval",
            "0",
        ])
        .args(["--metrics", &maddr.to_string(), "--data-dir"])
        .arg(dir.path().join(format!("d{i}")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if router {
            cmd.args(["--router", "--router-verify-delay", "0"]);
        }
        let _child = Kill(cmd.spawn().unwrap());
        let (gauge, want) = if router {
            ("trackerless_router_stored_nodes{family=\"ipv4\"}", 5.0)
        } else {
            ("trackerless_table_nodes{family=\"ipv4\"}", 5.0)
        };
        let mut seen = None;
        for _ in 0..100 {
            if let Some(text) = scrape(maddr) {
                assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
                seen = metric(&text, gauge);
                if seen.is_some_and(|v| v >= want) {
                    let by_method = if router {
                        "trackerless_queries_received_total{method=\"find_node\"}"
                    } else {
                        "trackerless_queries_received_total{family=\"ipv4\",method=\"find_node\"}"
                    };
                    assert!(text.contains(by_method), "{text}");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            seen.is_some_and(|v| v >= want),
            "router={router}: {gauge} = {seen:?}"
        );
    }
    net.shutdown().await;
}
