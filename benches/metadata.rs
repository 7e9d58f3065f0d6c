//! Metadata benchmarks, all on loopback (run in release: `cargo bench --bench metadata`).
//!
//! 1. Magnet → .torrent latency from a libtorrent seeder announced in a warm testnet of our
//!    nodes: our `dht-get --metadata-only` (a fresh process and a fresh DHT node every run,
//!    so process start, bootstrap and lookup are all included), our library fetcher on an
//!    already running node, and libtorrent's own magnet resolution (add_magnet → metadata
//!    event) in a second, already running libtorrent session. Each run uses a torrent none of
//!    them has seen; the order of the contenders alternates.
//! 2. Metadata fetches per second: our fetcher against our serving side holding 1,000
//!    distinct torrents (one server thread, 8 listen addresses), and — as the reference —
//!    our fetcher and libtorrent each resolving the same set of torrents from one libtorrent
//!    seeder.
//!
//! Addresses: testnet 127.85.x.y, libtorrent 127.86.0.x, dht-get 127.87.x.y, our
//! servers 127.88.0.x.

#[path = "../tests/common/lt.rs"]
#[allow(dead_code)]
mod lt;
#[path = "../tests/meta_support/mod.rs"]
mod meta_support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lt::LtNode;
use meta_support::{info_hash, synthetic_info};
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
use trackerless::dht::node;
use trackerless::metadata::{
    FetchConfig, MetadataRegistry, MetadataServer, PeerSource, ServeConfig, fetch_metadata,
};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;

const BIN: &str = env!("CARGO_BIN_EXE_dht-get");
const RUNS: usize = 15;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut xs: Vec<f64>) -> (String, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    let p50 = percentile(&xs, 0.5);
    (
        format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            xs.len(),
            xs[0] * 1e3,
            p50 * 1e3,
            percentile(&xs, 0.9) * 1e3,
            xs[xs.len() - 1] * 1e3
        ),
        p50,
    )
}

fn make_tree(root: &Path, files: usize, salt: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{:02}", i / 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i:05}.txt")),
            format!("run {salt} file {i} {}", "x".repeat(i % 50)),
        )
        .unwrap();
    }
}

async fn our_node(ip: Ipv4Addr, router: SocketAddrV4) -> DhtHandle {
    let mut cfg = DhtConfig::new(SocketAddr::new(ip.into(), 0));
    cfg.node = node::Config::loopback_testnet();
    cfg.bootstrap = vec![router.to_string()];
    let (h, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    for _ in 0..200 {
        let s = h.stats().await.unwrap();
        if s.good_nodes >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    h
}

/// Our library path on a running node: get_peers lookup streaming into the fetcher.
async fn library_fetch(dht: &DhtHandle, ih: InfoHash) -> f64 {
    let t = Instant::now();
    let stream = dht.get_peers(ih).unwrap();
    let cfg = FetchConfig {
        allow: AllowList::loopback(),
        timeout: Some(Duration::from_secs(30)),
        dht: Some(dht.clone()),
        dht_port: Some(dht.local_addr().port()),
        ..FetchConfig::default()
    };
    let got = fetch_metadata(ih, PeerSource::new([]).with_dht(stream), &cfg)
        .await
        .expect("library fetch");
    assert_eq!(info_hash(&got.info), ih);
    if got.stats.tried > 1 {
        eprintln!("note: library fetch needed a retry: {:?}", got.stats.peers);
    }
    t.elapsed().as_secs_f64()
}

/// Runs dht-get; returns the wall time of the process and the time it reports for lookup +
/// fetch (from its "fetched ... in X s" line), to separate process and node start-up.
async fn dht_get_run(magnet: &str, bind: String, router: SocketAddrV4, out: &Path) -> (f64, f64) {
    let args: Vec<String> = [
        magnet,
        "--metadata-only",
        "--bind",
        &bind,
        "--bootstrap",
        &router.to_string(),
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--data-dir",
        out.join(&bind).to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--timeout",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t = Instant::now();
    let o = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap();
    let dt = t.elapsed().as_secs_f64();
    assert!(
        o.status.success(),
        "dht-get failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let reported = stdout
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("fetched ")?;
            let (_, after) = rest.split_once(" in ")?;
            after.split(' ').next()?.parse::<f64>().ok()
        })
        .expect("dht-get printed no timing line");
    (dt, reported)
}

async fn lt_resolve(lt: &mut LtNode, magnet: &str, ih: &str, save: &Path) -> f64 {
    lt.clear_events();
    let t = Instant::now();
    lt.command(&format!("add_magnet {magnet} {}", save.display()))
        .await;
    lt.wait_event("metadata", Duration::from_secs(60), |e| {
        e["info_hash"] == ih
    })
    .await
    .expect("libtorrent never resolved the magnet");
    let dt = t.elapsed().as_secs_f64();
    // libtorrent goes on to download the content (up to 2,000 files); let that finish, untimed,
    // so its disk and CPU work does not slow down the next measurement.
    let _ = lt
        .wait_event("finished", Duration::from_secs(30), |e| {
            e["info_hash"] == ih
        })
        .await;
    dt
}

/// Polls until libtorrent reports the torrent in state "seeding".
async fn wait_seeding(lt: &mut LtNode, ih: &str) {
    for _ in 0..2000 {
        let st = lt.command(&format!("torrent_status {ih}")).await;
        if st["state"] == "seeding" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("torrent {ih} never reached the seeding state");
}

async fn latency(net: &Testnet, seeder: &mut LtNode, fetcher: &mut LtNode) {
    let content = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let lib_node = our_node(Ipv4Addr::new(127, 87, 250, 1), net.addr(7)).await;
    println!("\n### Magnet → .torrent latency ({RUNS} runs per row, ms)\n");
    println!("| contender | runs | min | p50 | p90 | max |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (label, files) in [("1 file", 1usize), ("2,000 files", 2000)] {
        let (mut ours, mut inner, mut lib, mut theirs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut seeded = Vec::new();
        for r in 0..RUNS * 2 {
            let path = content.path().join(format!("t{files}-{r}"));
            if files == 1 {
                std::fs::write(&path, format!("single file {r}\n").repeat(2000)).unwrap();
            } else {
                make_tree(&path, files, r);
            }
            let v = seeder
                .command(&format!("seed \"{}\"", path.display()))
                .await;
            seeded.push((
                v["info_hash"].as_str().unwrap().to_owned(),
                v["magnet"].as_str().unwrap().to_owned(),
            ));
        }
        // Wait until every torrent is started (a freshly added libtorrent torrent refuses
        // peers while "checking_resume_data") and findable in our DHT.
        for (ih, _) in &seeded {
            wait_seeding(seeder, ih).await;
            let id: InfoHash = ih.parse().unwrap();
            for _ in 0..40 {
                let (peers, _) = net.nodes[3].get_peers(id).unwrap().collect().await;
                if !peers.is_empty() {
                    break;
                }
                seeder.command(&format!("dht_announce_torrent {ih}")).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        for r in 0..RUNS {
            let (ih_a, magnet_a) = &seeded[2 * r];
            let (ih_b, magnet_b) = &seeded[2 * r + 1];
            let bind = format!("127.87.{}.{}:0", files % 200, r + 1);
            let lt_first = r % 2 == 1;
            if lt_first {
                theirs.push(lt_resolve(fetcher, magnet_a, ih_a, out.path()).await);
            }
            let (wall, reported) = dht_get_run(magnet_a, bind, net.addr(r % 10), out.path()).await;
            ours.push(wall);
            inner.push(reported);
            if !lt_first {
                theirs.push(lt_resolve(fetcher, magnet_a, ih_a, out.path()).await);
            }
            let ih: InfoHash = ih_b.parse().unwrap();
            lib.push(library_fetch(&lib_node, ih).await);
            let _ = magnet_b;
        }
        let (a, p_ours) = summary(&format!("ours: `dht-get` process, {label}"), ours);
        let (a2, _) = summary(
            &format!("(of which `dht-get` lookup + fetch, as it reports), {label}"),
            inner,
        );
        let (b, _) = summary(&format!("ours: library on a running node, {label}"), lib);
        let (c, p_lt) = summary(&format!("libtorrent 2.1.1 add_magnet, {label}"), theirs);
        println!("{a}\n{a2}\n{b}\n{c}");
        ratios.push((label, p_lt / p_ours));
    }
    println!();
    for (label, ratio) in ratios {
        println!("- {label}: libtorrent p50 / dht-get p50 = {ratio:.2}");
    }
    let _ = lib_node.shutdown().await;
}

/// Fetches every info hash from `addr_of(i)` with `concurrency` fetches in flight; returns
/// elapsed seconds. Every fetch must verify.
async fn fetch_all(
    hashes: &[InfoHash],
    addr_of: impl Fn(usize) -> SocketAddr,
    concurrency: usize,
) -> f64 {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let cfg = Arc::new(FetchConfig {
        allow: AllowList::loopback(),
        timeout: Some(Duration::from_secs(30)),
        ..FetchConfig::default()
    });
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, &ih) in hashes.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (cfg, addr) = (cfg.clone(), addr_of(i));
        set.spawn(async move {
            let _p = permit;
            let got = fetch_metadata(ih, PeerSource::new([addr]), &cfg).await;
            got.map(|g| info_hash(&g.info) == ih).unwrap_or(false)
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += usize::from(r.unwrap());
    }
    assert_eq!(ok, hashes.len(), "every fetch must verify");
    t.elapsed().as_secs_f64()
}

async fn throughput(lt_seeder: &mut LtNode, lt_fetcher: &mut LtNode) {
    println!("\n### Metadata fetches per second\n");
    // Our server: 1,000 distinct torrents, 8 listen addresses, its own thread and runtime.
    const N: usize = 1000;
    let registry = Arc::new(MetadataRegistry::new());
    let mut hashes = Vec::new();
    for i in 0..N {
        hashes.push(registry.insert(synthetic_info(&format!("t{i}"), 10, i as u64)));
    }
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let reg = registry.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut servers = Vec::new();
            for k in 0..8u8 {
                let s = MetadataServer::bind(
                    SocketAddr::new(Ipv4Addr::new(127, 88, 0, k + 1).into(), 0),
                    reg.clone(),
                    ServeConfig {
                        allow: AllowList::loopback(),
                        max_connections: 1024,
                        ..ServeConfig::default()
                    },
                )
                .await
                .unwrap();
                addr_tx.send(s.local_addr()).unwrap();
                servers.push(s);
            }
            std::future::pending::<()>().await;
        });
    });
    let addrs: Vec<SocketAddr> = (0..8).map(|_| addr_rx.recv().unwrap()).collect();
    println!("| fetcher → server | torrents | concurrency | seconds | fetches/s |");
    println!("|---|---|---|---|---|");
    for concurrency in [16usize, 64, 256] {
        let secs = fetch_all(&hashes, |i| addrs[i % addrs.len()], concurrency).await;
        println!(
            "| ours → ours (1,000 torrents, 1 server thread) | {N} | {concurrency} | {secs:.3} | {:.0} |",
            N as f64 / secs
        );
    }

    // Reference: the same M torrents resolved from one libtorrent seeder, by us and by
    // libtorrent (all magnets added at once, seeder given in x.pe).
    const M: usize = 200;
    let content = tempfile::tempdir().unwrap();
    let save = tempfile::tempdir().unwrap();
    let mut lt_torrents = Vec::new();
    for i in 0..M {
        let p = content.path().join(format!("s{i}.bin"));
        std::fs::write(&p, format!("seeded {i}\n").repeat(100)).unwrap();
        let v = lt_seeder
            .command(&format!("seed \"{}\"", p.display()))
            .await;
        lt_torrents.push(v["info_hash"].as_str().unwrap().to_owned());
    }
    for ih in &lt_torrents {
        wait_seeding(lt_seeder, ih).await;
    }
    let seeder_addr = SocketAddr::V4(lt_seeder.addr);
    let lt_hashes: Vec<InfoHash> = lt_torrents.iter().map(|h| h.parse().unwrap()).collect();
    // libtorrent listens with a TCP backlog of 5 (its listen_queue_size default): more
    // simultaneous TCP connects than that lose their SYNs and retry after 1 s, 3 s... while
    // libtorrent-to-libtorrent goes over uTP. So our fetcher is measured at two levels.
    let ours_4 = fetch_all(&lt_hashes[..M / 2], |_| seeder_addr, 4).await;
    let ours = fetch_all(&lt_hashes[M / 2..], |_| seeder_addr, 64).await;
    lt_fetcher.clear_events();
    let t = Instant::now();
    for ih in &lt_torrents {
        lt_fetcher
            .command(&format!(
                "add_magnet magnet:?xt=urn:btih:{ih}&x.pe={seeder_addr} {}",
                save.path().display()
            ))
            .await;
    }
    let mut pending: std::collections::HashSet<&str> =
        lt_torrents.iter().map(|s| s.as_str()).collect();
    while !pending.is_empty() {
        let ev = lt_fetcher
            .wait_event("metadata", Duration::from_secs(120), |_| true)
            .await
            .expect("libtorrent stalled resolving magnets");
        pending.remove(ev["info_hash"].as_str().unwrap_or_default());
    }
    let theirs = t.elapsed().as_secs_f64();
    println!(
        "| ours → libtorrent seeder (TCP) | {} | 4 | {ours_4:.3} | {:.0} |",
        M / 2,
        (M / 2) as f64 / ours_4
    );
    println!(
        "| ours → libtorrent seeder (TCP) | {} | 64 | {ours:.3} | {:.0} |",
        M / 2,
        (M / 2) as f64 / ours
    );
    println!(
        "| libtorrent → libtorrent seeder (all magnets added at once) | {M} | session default | {theirs:.3} | {:.0} |",
        M as f64 / theirs
    );
    println!(
        "\n- same seeder, ours (concurrency 4) / libtorrent fetches per second = {:.2}",
        (theirs / M as f64) / (ours_4 / (M / 2) as f64)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let net = Testnet::start(
        30,
        TestnetConfig {
            subnet: 85,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let smallest = net.wait_for_tables(8, Duration::from_secs(30)).await;
    let mut seeder = LtNode::start(SocketAddrV4::new(Ipv4Addr::new(127, 86, 0, 1), 29001)).await;
    let mut fetcher = LtNode::start(SocketAddrV4::new(Ipv4Addr::new(127, 86, 0, 2), 29002)).await;
    for lt in [&mut seeder, &mut fetcher] {
        for i in 0..5 {
            let a = net.addr(i * 5);
            lt.command(&format!("add_node {} {}", a.ip(), a.port()))
                .await;
        }
        lt.wait_dht_nodes(3, Duration::from_secs(30)).await;
    }
    // Let libtorrent's tables settle (its refresh runs every 5 s) so the testnet is warm.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let lt_nodes = fetcher.status().await["dht_nodes"].clone();
    println!(
        "testnet: 30 of our nodes (smallest table {smallest}), libtorrent fetcher table {lt_nodes} nodes"
    );
    latency(&net, &mut seeder, &mut fetcher).await;
    throughput(&mut seeder, &mut fetcher).await;
    seeder.quit().await;
    fetcher.quit().await;
    net.shutdown().await;
}
