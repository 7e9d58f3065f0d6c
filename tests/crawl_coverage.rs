//! The acceptance check for `dht-crawl`: a loopback testnet of 1,000 of our nodes holding
//! 10,000 announced infohashes, plus three real libtorrent nodes holding infohashes no other
//! node has; the crawler must find ≥ 99 % of ours and every libtorrent one (which it can only
//! get by sampling libtorrent over BEP 51) within its time budget.
//!
//! The testnet's nodes advertise a 5 s BEP 51 interval (their setting, which the crawler
//! respects) so that the several visits per node that random 20-of-80 samples need fit in a
//! test; libtorrent advertises its default 6 h and is therefore visited once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use tokio::net::UdpSocket;
use trackerless::allow::AllowList;
use trackerless::crawl::{self, CrawlConfig, CrawlStore, StoreConfig, WalkConfig};
use trackerless::id::{InfoHash, NodeId};
use trackerless::krpc::{self, Body, QueryArgs, Response};
use trackerless::net::{Dht, DhtConfig};
use trackerless::node::Config;
use trackerless::sim::testnet::{Testnet, TestnetConfig};

const NODES: usize = 1000;
const INFOHASHES: usize = 10_000;
const LT_NODES: usize = 3;
const LT_HASHES_EACH: usize = 10;
/// The crawler's budget once the network is ready.
const BUDGET: Duration = Duration::from_secs(120);

/// One python-libtorrent session driven through tools/lt_node.py.
struct Lt {
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<Value>,
    addr: SocketAddrV4,
}

impl Lt {
    fn start(addr: SocketAddrV4) -> Lt {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/lt_node.py");
        let mut child = Command::new("python3")
            .args([script, "--bind", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with libtorrent (tools/test.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let mut lt = Lt {
            child,
            stdin,
            lines,
            addr,
        };
        let ready = lt.wait(|v| v["event"] == "ready");
        assert_eq!(ready["bind"], addr.to_string());
        lt
    }

    fn wait(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.lines.recv_timeout(left).expect("lt_node.py answered");
            if f(&v) {
                return v;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let v = self.wait(|v| v.get("ok").is_some());
        assert_eq!(v["ok"], true, "{line}: {v}");
        v
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one query from `sock` and waits for its answer (skipping queries sent to us).
async fn ask(sock: &UdpSocket, to: SocketAddrV4, tid: &[u8], args: QueryArgs<'_>) -> Response {
    let me = NodeId([0x77; 20]);
    let mut q = Vec::new();
    krpc::encode_query(&mut q, tid, &me, &args, false, None);
    sock.send_to(&q, to).await.unwrap();
    loop {
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("libtorrent answered")
            .unwrap();
        let m = krpc::decode(&buf[..n]).unwrap();
        match m.body {
            Body::Response(r) if m.tid.as_slice() == tid => return r,
            Body::Error(e) => panic!("error from {to}: {e:?}"),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_finds_99_percent_of_10000_infohashes_on_1000_nodes_and_libtorrent() {
    let t0 = Instant::now();
    let net = Testnet::start(
        NODES,
        TestnetConfig {
            subnet: 110,
            node: Config {
                sample_interval: 5,
                ..Config::loopback_testnet()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let smallest = net.wait_for_tables(8, Duration::from_secs(120)).await;
    assert!(smallest >= 8, "a node has only {smallest} contacts");
    println!("testnet of {NODES} up in {:?}", t0.elapsed());

    // Three libtorrent nodes join through a few of ours.
    let mut rng = StdRng::seed_from_u64(110);
    let mut lts: Vec<Lt> = (0..LT_NODES)
        .map(|i| Lt::start(SocketAddrV4::new([127, 111, 0, i as u8 + 1].into(), 16881)))
        .collect();
    for lt in &mut lts {
        for _ in 0..8 {
            let a = net.addr(rng.random_range(0..NODES));
            lt.cmd(&format!("add_node {} {}", a.ip(), a.port()));
        }
    }

    // 10,000 infohashes announced by 100 of our nodes, 64 announces at a time.
    let t1 = Instant::now();
    let hashes: Vec<InfoHash> = (0..INFOHASHES).map(|_| NodeId::random(&mut rng)).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut stored = 0usize;
    for (i, ih) in hashes.iter().enumerate() {
        let node = net.nodes[(i * 7) % NODES].clone();
        let ih = *ih;
        set.spawn(async move { node.announce(ih, Some(6000)).unwrap().collect().await.1 });
        while set.len() >= 64 {
            stored += usize::from(set.join_next().await.unwrap().unwrap().announced > 0);
        }
    }
    while let Some(r) = set.join_next().await {
        stored += usize::from(r.unwrap().announced > 0);
    }
    assert_eq!(stored, INFOHASHES, "every announce was stored somewhere");
    println!("{INFOHASHES} announces in {:?}", t1.elapsed());

    // Infohashes only libtorrent holds: announced straight to each libtorrent node, each
    // from its own address (the token is per address and infohash).
    let mut lt_hashes = Vec::new();
    for (i, lt) in lts.iter().enumerate() {
        for j in 0..LT_HASHES_EACH {
            let ih = NodeId::random(&mut rng);
            let from = SocketAddrV4::new([127, 111, 1 + i as u8, j as u8 + 1].into(), 0);
            let sock = UdpSocket::bind(from).await.unwrap();
            let r = ask(
                &sock,
                lt.addr,
                b"gp",
                QueryArgs::GetPeers { info_hash: &ih },
            )
            .await;
            let token = r.token.expect("a get_peers reply carries a token");
            ask(
                &sock,
                lt.addr,
                b"ap",
                QueryArgs::AnnouncePeer {
                    info_hash: &ih,
                    port: 7000 + j as u16,
                    implied_port: false,
                    token: token.as_slice(),
                },
            )
            .await;
            lt_hashes.push(ih);
        }
    }
    // libtorrent must be in our nodes' tables for the walk to meet it.
    for lt in &mut lts {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = lt.cmd("status");
            if s["dht_nodes"].as_u64().unwrap_or(0) >= 8 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    println!("libtorrent ready after {:?}", t0.elapsed());

    // The crawler: an ordinary node of its own, bootstrapping from two of ours.
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let mut cfg = DhtConfig::new("127.111.2.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    cfg.bootstrap = vec![net.addr(0).to_string(), net.addr(NODES / 2).to_string()];
    cfg.incoming = Some(tx);
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    let dir = tempfile::tempdir().unwrap();
    let store = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
    let (new_tx, mut new_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let crawl_started = Instant::now();
    let crawler = tokio::spawn(crawl::run(
        dht.clone(),
        Some(rx),
        store,
        CrawlConfig {
            walk: WalkConfig {
                rate: 500.0,
                burst: 50.0,
                min_interval: Duration::from_secs(1),
                allow: AllowList::loopback(),
                seed: Some(1),
                ..Default::default()
            },
            flush_interval: Duration::from_millis(500),
            duration: Some(BUDGET),
            new_infohashes: Some(new_tx),
            ..Default::default()
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    let ours: HashSet<InfoHash> = hashes.iter().copied().collect();
    let theirs: HashSet<InfoHash> = lt_hashes.iter().copied().collect();
    let (mut found_ours, mut found_theirs) = (0usize, 0usize);
    let mut per_lt = [0usize; LT_NODES];
    let mut at_99 = None;
    while let Some(ih) = new_rx.recv().await {
        found_ours += usize::from(ours.contains(&ih));
        if let Some(i) = lt_hashes.iter().position(|h| *h == ih) {
            found_theirs += 1;
            per_lt[i / LT_HASHES_EACH] += 1;
        }
        if at_99.is_none() && found_ours * 100 >= INFOHASHES * 99 {
            at_99 = Some(crawl_started.elapsed());
        }
        if at_99.is_some() && found_theirs == theirs.len() {
            println!("all found after {:?}", crawl_started.elapsed());
            break;
        }
    }
    let _ = stop_tx.send(());
    let report = crawler.await.unwrap().unwrap();
    let crawl_secs = crawl_started.elapsed().as_secs();
    // Politeness seen from the other side: only the crawler sends sample_infohashes here,
    // and no node got more than one per its 5 s interval.
    let mut most = 0;
    for n in &net.nodes {
        let s = n.stats().await.unwrap();
        most = most.max(s.queries_by_method.sample_infohashes);
    }
    assert!(
        most <= crawl_secs / 5 + 1,
        "a node was sampled {most} times in {crawl_secs} s"
    );
    println!("most samples asked of one node: {most} in {crawl_secs} s");
    println!(
        "crawler: 99 % after {at_99:?}; ours {found_ours}/{INFOHASHES}, libtorrent's \
         {found_theirs}/{}; {:?}",
        theirs.len(),
        report.walk
    );
    assert!(
        found_ours * 100 >= INFOHASHES * 99,
        "found {found_ours} of {INFOHASHES} within {BUDGET:?}"
    );
    assert_eq!(
        found_theirs,
        theirs.len(),
        "every infohash held only by libtorrent was found (per libtorrent node: {per_lt:?})"
    );
    dht.shutdown().await.unwrap();
    drop(lts);
    net.shutdown().await;
    println!("total {:?}", t0.elapsed());
}
