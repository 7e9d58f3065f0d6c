//! dht-crawl: BEP 51 on the wire, the walk's politeness on a virtual clock, and the
//! crawler's durability across restarts and `kill -9`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use trackerless::crawl::sim::SimCrawler;
use trackerless::crawl::{self, CrawlConfig, CrawlStore, StoreConfig, WalkConfig};
use trackerless::dht::driver::{Dht, DhtConfig};
use trackerless::dht::id::{Contact, InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, QueryArgs, ResponseBody};
use trackerless::dht::node::{Config, DirectQuery, Event};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::sim::{Sim, SimConfig};

/// The classic bug: `samples` is several 20-byte hashes back to back.
#[test]
fn sample_infohashes_reply_with_several_samples_round_trips() {
    let hashes: Vec<InfoHash> = (1..=7u8)
        .map(|i| {
            let mut b = [i; 20];
            b[0] = 0xf0 | i;
            InfoHash(b)
        })
        .collect();
    let samples: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        Contact::new(
            NodeId([i; 20]),
            format!("127.0.0.{}:6881", i + 1)
                .parse::<std::net::SocketAddrV4>()
                .unwrap(),
        )
        .write_compact(&mut nodes);
    }
    let me = NodeId([0x55; 20]);
    let body = ResponseBody {
        samples: Some(&samples),
        interval: Some(21600),
        num: Some(1234),
        nodes: Some(&nodes),
        ..ResponseBody::id_only(&me)
    };
    let mut out = Vec::new();
    krpc::encode_response(&mut out, b"aa", &body, None, None);
    let m = krpc::decode(&out).unwrap();
    let Body::Response(r) = m.body else {
        panic!("not a response")
    };
    assert_eq!(r.samples().collect::<Vec<_>>(), hashes);
    assert_eq!((r.interval, r.num), (Some(21600), Some(1234)));
    assert_eq!(r.nodes().count(), 3);
    // The same bytes through serde_bencode: one 140-byte string, not 7 strings.
    let generic: serde_bencode::value::Value = serde_bencode::from_bytes(&out).unwrap();
    let serde_bencode::value::Value::Dict(d) = generic else {
        panic!()
    };
    let serde_bencode::value::Value::Dict(r) = &d[&b"r".to_vec()] else {
        panic!()
    };
    assert_eq!(
        r[&b"samples".to_vec()],
        serde_bencode::value::Value::Bytes(samples.clone())
    );
}

/// Our node answers sample_infohashes with random samples of its store, its advertised
/// interval, the store size and nodes.
#[tokio::test]
async fn our_node_serves_bep51() {
    let net = Testnet::start(
        4,
        TestnetConfig {
            subnet: 112,
            node: Config {
                sample_interval: 1234,
                ..Config::loopback_testnet()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(3, Duration::from_secs(10)).await;
    let announced: HashSet<InfoHash> = (0..40u8).map(|i| InfoHash([i; 20])).collect();
    for ih in &announced {
        net.nodes[1]
            .announce(*ih, Some(7000))
            .unwrap()
            .collect()
            .await;
    }
    let sock = UdpSocket::bind("127.112.9.1:0").await.unwrap();
    let me = NodeId([0xee; 20]);
    let mut union = HashSet::new();
    for round in 0..6u8 {
        let mut q = Vec::new();
        let target = NodeId([round; 20]);
        krpc::encode_query(
            &mut q,
            &[round, 1],
            &me,
            &QueryArgs::SampleInfohashes { target: &target },
            false,
            None,
        );
        sock.send_to(&q, net.addr(0)).await.unwrap();
        // Skip the node's own queries to us (it verifies unknown queriers with a ping).
        let r = loop {
            let mut buf = [0u8; 2048];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let m = krpc::decode(&buf[..n]).unwrap();
            match m.body {
                Body::Response(r) if m.tid.as_slice() == [round, 1] => break r,
                Body::Query(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        };
        let got: Vec<InfoHash> = r.samples().collect();
        assert_eq!(got.len(), 20, "a full sample from a 40-infohash store");
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 20, "no repeats");
        assert!(got.iter().all(|h| announced.contains(h)));
        assert_eq!(r.interval, Some(1234));
        assert_eq!(r.num, Some(40));
        assert!(r.nodes().count() >= 2);
        union.extend(got);
    }
    assert!(union.len() > 20, "samples are random, not a fixed prefix");
    net.shutdown().await;
}

/// On a virtual clock: no node is sampled again before the interval it advertised, the
/// global rate holds, revisits do happen, and the walk finds (almost) everything.
#[test]
fn walk_respects_interval_and_rate_on_the_simulator() {
    let interval = 600;
    let mut sim = Sim::new(SimConfig {
        seed: 5,
        node: Config {
            sample_interval: interval,
            ..Config::loopback_testnet()
        },
        ..Default::default()
    });
    sim.grow(300, Duration::from_millis(20));
    sim.run_for(Duration::from_secs(60));
    let mut rng = StdRng::seed_from_u64(9);
    let hashes: Vec<InfoHash> = (0..3000).map(|_| InfoHash::random(&mut rng)).collect();
    for (i, ih) in hashes.iter().enumerate() {
        let who = rng.random_range(0..300);
        sim.with_node(who, |n, now| n.announce(now, *ih, Some(1000 + i as u16)));
        if i % 100 == 99 {
            sim.run_for(Duration::from_secs(1));
        }
    }
    sim.run_for(Duration::from_secs(30));
    let stored: usize = sim
        .take_events()
        .iter()
        .filter(|(_, e)| matches!(e, Event::LookupDone { announced, .. } if *announced > 0))
        .count();
    assert_eq!(stored, hashes.len());

    let rate = 20.0;
    let mut c = SimCrawler::join(
        &mut sim,
        WalkConfig {
            rate,
            burst: 5.0,
            min_interval: Duration::from_secs(1),
            seed: Some(3),
            ..Default::default()
        },
        &[trackerless::sim::sim_addr(0)],
    );
    c.log_queries = true;
    let start = sim.now();
    let hour = Duration::from_secs(3600);
    c.run_until(&mut sim, start + hour, |_| false);

    let mut last: HashMap<SocketAddrV4, Instant> = HashMap::new();
    let mut visits: HashMap<SocketAddrV4, u32> = HashMap::new();
    for (t, q) in &c.log {
        if let DirectQuery::SampleInfohashes(_) = q.query {
            if let Some(prev) = last.insert(q.addr, *t) {
                let gap = *t - prev;
                assert!(
                    gap >= Duration::from_secs(u64::from(interval)),
                    "{} sampled again after {gap:?}",
                    q.addr
                );
            }
            *visits.entry(q.addr).or_default() += 1;
        }
    }
    let max_visits = visits.values().max().copied().unwrap_or(0);
    assert!(
        max_visits >= 2,
        "nodes are revisited once their interval passes"
    );
    assert!(max_visits <= 3600 / interval + 1, "{max_visits}");
    assert!(visits.len() >= 290, "visited {} of 300 nodes", visits.len());
    // The bucket: rate per second plus the burst, over the hour.
    let sent = c.log.len() as f64;
    assert!(sent <= rate * 3600.0 + 5.0, "{sent}");
    let found = hashes.iter().filter(|h| c.known.contains(h)).count();
    assert!(
        found * 100 >= hashes.len() * 99,
        "found {found} of {}",
        hashes.len()
    );
    let packets = sim.node(c.node).stats(sim.now()).queries_out;
    println!(
        "sim walk: {} queries ({} sample) for {found} infohashes; node queries_out {packets}; max visits per node {max_visits}",
        c.log.len(),
        visits.values().sum::<u32>()
    );
}

/// A small loopback testnet whose nodes hold `per_node`-ish infohashes each.
async fn populated_testnet(subnet: u8, n: usize, infohashes: usize) -> (Testnet, Vec<InfoHash>) {
    let net = Testnet::start(
        n,
        TestnetConfig {
            subnet,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(8, Duration::from_secs(30)).await;
    let mut rng = StdRng::seed_from_u64(u64::from(subnet));
    let hashes: Vec<InfoHash> = (0..infohashes)
        .map(|_| InfoHash::random(&mut rng))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, ih) in hashes.iter().enumerate() {
        let node = net.nodes[i % n].clone();
        let ih = *ih;
        set.spawn(async move { node.announce(ih, Some(5000)).unwrap().collect().await });
        if set.len() >= 32 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    (net, hashes)
}

/// The crawler as a library, twice on one data directory: the second run keeps the first
/// run's records, and only genuinely new infohashes reach the out file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_store_and_out_file_survive_a_restart() {
    let (net, hashes) = populated_testnet(115, 40, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.jsonl");
    let mut counts = Vec::new();
    for run in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut cfg = DhtConfig::new(format!("127.116.0.{}:0", run + 1).parse().unwrap());
        cfg.node = Config::loopback_testnet();
        cfg.bootstrap = vec![net.addr(0).to_string()];
        cfg.incoming = Some(tx);
        let (dht, driver) = Dht::bind(cfg).await.unwrap();
        tokio::spawn(driver);
        let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
        let before = store.count();
        let report = crawl::run(
            dht.clone(),
            Some(rx),
            store,
            CrawlConfig {
                walk: WalkConfig {
                    rate: 500.0,
                    burst: 50.0,
                    allow: trackerless::dht::allow::AllowList::loopback(),
                    ..Default::default()
                },
                flush_interval: Duration::from_millis(200),
                duration: Some(Duration::from_secs(4)),
                out: Some(out.clone()),
                ..Default::default()
            },
            std::future::pending(),
        )
        .await
        .unwrap();
        dht.shutdown().await.unwrap();
        assert!(report.status.infohashes >= before);
        assert!(report.walk.bep51_replies > 0, "{:?}", report.walk);
        counts.push(report.status.infohashes);
    }
    assert!(counts[0] > 0);
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    assert_eq!(store.count(), counts[1]);
    let lines = std::fs::read_to_string(&out).unwrap();
    let mut seen = HashSet::new();
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let ih: InfoHash = v["info_hash"].as_str().unwrap().parse().unwrap();
        assert!(seen.insert(ih), "{ih} reported twice");
        assert!(store.get(&ih).is_some());
        assert!(hashes.contains(&ih));
    }
    assert_eq!(
        seen.len() as u64,
        store.count(),
        "one line per stored record"
    );
    net.shutdown().await;
}

/// `kill -9` the binary: every infohash it counted or wrote to --out is in the store; a
/// restart writes the lines the crash kept from the out file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_reported() {
    let (net, _hashes) = populated_testnet(113, 60, 600).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.jsonl");
    let args = |bind: &str, extra: &[&str]| {
        let mut a: Vec<String> = [
            "--bind",
            bind,
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--flush-interval",
            "1",
            "--status-interval",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args(args("127.114.0.1:0", &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let last_count = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen_growth = 0;
        while Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            let count: u64 = line
                .strip_prefix("infohashes ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected status line {line:?}"));
            assert!(
                line.contains("nodes known") && line.contains("queries"),
                "{line}"
            );
            if count > 0 {
                seen_growth += 1;
                if seen_growth >= 2 {
                    return count;
                }
            }
        }
        panic!("the crawler never reported infohashes");
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let ih_of = |l: &str| -> InfoHash {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["info_hash"].as_str().unwrap().parse().unwrap()
    };
    {
        let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
        assert!(
            store.count() >= last_count,
            "reported {last_count}, store has {}",
            store.count()
        );
        assert_eq!(store.iter().count() as u64, store.count());
        let text = std::fs::read_to_string(&out).unwrap();
        for l in text.lines() {
            assert!(store.get(&ih_of(l)).is_some(), "{l} written but not stored");
        }
    }
    // A restart (2 s) writes whatever lines the crash owed.
    let status = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args(args("127.114.0.2:0", &["--duration", "2"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let written: HashSet<InfoHash> = text.lines().map(ih_of).collect();
    for (ih, _) in store.iter() {
        assert!(written.contains(&ih), "{ih} stored but never written");
    }
    drop(store);

    // export dumps the same records, as JSON lines and as CSV.
    let exported = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args(["export", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(exported.status.success());
    let lines = String::from_utf8(exported.stdout).unwrap();
    let exported: HashSet<InfoHash> = lines.lines().map(ih_of).collect();
    assert_eq!(exported, written);
    let csv = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args([
            "export",
            "--format",
            "csv",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(csv.status.success());
    assert_eq!(
        String::from_utf8(csv.stdout).unwrap().lines().count(),
        exported.len() + 1
    );
    net.shutdown().await;
}

#[test]
fn bad_arguments_and_stores_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
            .args(args)
            .output()
            .unwrap()
    };
    for bad in [
        &["--rate", "0"][..],
        &["--rate", "fast"],
        &["--flush-interval", "0"],
        &["--allow-net", "10.0.0.0/99"],
        &["export", "--format", "xml"],
    ] {
        let o = run(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
    let o = run(&[
        "export",
        "--data-dir",
        dir.path().join("none").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.starts_with("error: no crawl store"), "{err}");
    assert_eq!(err.lines().count(), 1);
    // A store held by another process.
    let held = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    let o = run(&["export", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8(o.stderr).unwrap().contains("in use"));
    drop(held);
}

/// A fetcher standing in for BEP 9 peers: it hands out known info dicts (and one lie), and
/// records the peers it was given.
struct CannedFetcher {
    dicts: HashMap<InfoHash, Vec<u8>>,
    asked: std::sync::Mutex<Vec<(InfoHash, Vec<std::net::SocketAddr>)>>,
}

impl trackerless::crawl::enrich::MetadataFetcher for CannedFetcher {
    fn fetch(
        &self,
        info_hash: InfoHash,
        peers: Vec<std::net::SocketAddr>,
    ) -> trackerless::crawl::enrich::FetchFuture<'_> {
        self.asked.lock().unwrap().push((info_hash, peers));
        let r = self.dicts.get(&info_hash).cloned().ok_or_else(|| {
            trackerless::metadata::FetchError::Exhausted(
                trackerless::metadata::FetchStats::default(),
            )
        });
        Box::pin(async move { r })
    }
}

/// The metadata pool: new infohashes are looked up on the DHT, fetched, verified against
/// their hash, stored and written as .torrent files; a dict that does not hash to its
/// infohash is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_pool_fetches_verifies_and_writes_torrents() {
    use sha1::{Digest, Sha1};
    let net = Testnet::start(
        20,
        TestnetConfig {
            subnet: 117,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(8, Duration::from_secs(20)).await;
    let dict = |name: &str| {
        format!(
            "d6:lengthi5e4:name{}:{name}12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae",
            name.len()
        )
        .into_bytes()
    };
    let mut dicts = HashMap::new();
    let mut good = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let raw = dict(name);
        let ih = InfoHash(Sha1::digest(&raw).into());
        dicts.insert(ih, raw);
        good.push(ih);
    }
    let liar = InfoHash([0x5a; 20]);
    dicts.insert(liar, dict("lie"));
    for (i, ih) in good.iter().chain([&liar]).enumerate() {
        net.nodes[i + 1]
            .announce(*ih, Some(6000))
            .unwrap()
            .collect()
            .await;
    }
    let fetcher = std::sync::Arc::new(CannedFetcher {
        dicts,
        asked: Default::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let torrents = dir.path().join("torrents");
    std::fs::create_dir(&torrents).unwrap();
    let mut cfg = DhtConfig::new("127.117.9.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    cfg.bootstrap = vec![net.addr(0).to_string()];
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    let report = crawl::run(
        dht.clone(),
        None,
        store,
        CrawlConfig {
            walk: WalkConfig {
                rate: 200.0,
                allow: trackerless::dht::allow::AllowList::loopback(),
                ..Default::default()
            },
            flush_interval: Duration::from_millis(200),
            duration: Some(Duration::from_secs(6)),
            metadata: Some(trackerless::crawl::enrich::MetadataConfig {
                workers: 2,
                fetcher: fetcher.clone(),
                torrent_dir: Some(torrents.clone()),
                queue: 100,
                lookup_timeout: Duration::from_secs(5),
            }),
            ..Default::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    dht.shutdown().await.unwrap();
    assert_eq!(report.status.metadata_fetched, 3, "{:?}", report.status);
    assert_eq!(report.status.metadata_failed, 1, "{:?}", report.status);
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    for (ih, name) in good.iter().zip(["alpha", "beta", "gamma"]) {
        let m = store.metadata(ih).expect("metadata stored");
        assert_eq!((m.name.as_str(), m.total_size, m.file_count), (name, 5, 1));
        let file = std::fs::read(torrents.join(format!("{}.torrent", ih.to_hex()))).unwrap();
        let mi = trackerless::torrent::metainfo::Metainfo::from_bytes(&file).unwrap();
        assert_eq!(mi.info_hash, *ih);
    }
    assert!(store.metadata(&liar).is_none());
    assert!(!torrents.join(format!("{}.torrent", liar.to_hex())).exists());
    // The DHT lookup found the announcer (a live peer on port 6000) for each.
    for (_, peers) in fetcher.asked.lock().unwrap().iter() {
        assert!(peers.iter().any(|p| p.port() == 6000), "{peers:?}");
    }
    net.shutdown().await;
}

/// `--scrape`: every new infohash gets a BEP 33 estimate of its swarm (here one downloader
/// each, announced by one testnet node), stored with the record and exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_records_each_new_swarms_estimate() {
    let (net, hashes) = populated_testnet(119, 40, 60).await;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut cfg = DhtConfig::new("127.120.0.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    cfg.bootstrap = vec![net.addr(0).to_string()];
    cfg.incoming = Some(tx);
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    let report = crawl::run(
        dht.clone(),
        Some(rx),
        store,
        CrawlConfig {
            walk: WalkConfig {
                rate: 500.0,
                burst: 50.0,
                allow: trackerless::dht::allow::AllowList::loopback(),
                ..Default::default()
            },
            flush_interval: Duration::from_millis(200),
            duration: Some(Duration::from_secs(8)),
            scrape: Some(crawl::ScrapeConfig::default()),
            ..Default::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    dht.shutdown().await.unwrap();
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    let mut scraped = 0;
    for (ih, r) in store.iter() {
        assert!(hashes.contains(&ih));
        if let Some(e) = r.scrape {
            scraped += 1;
            assert_eq!(
                (e.seeds, e.peers),
                (0, 1),
                "{ih}: one downloader announced it"
            );
            let v = trackerless::crawl::export::record_json(&ih, &r, None);
            assert_eq!(v["peers_est"], 1);
        }
    }
    println!(
        "{:?}; scraped {scraped} of {}",
        report.status,
        store.count()
    );
    assert!(report.status.scrapes >= scraped);
    assert!(
        scraped * 10 >= store.count() * 9 && scraped > 0,
        "only {scraped} of {} records were scraped",
        store.count()
    );
    net.shutdown().await;
}
