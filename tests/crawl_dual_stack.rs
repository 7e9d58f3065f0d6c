//! dht-crawl over both address families (BEP 32): a dual-stack crawler walks the IPv4 and
//! the IPv6 DHT of a small loopback testnet and finds the torrents that only the IPv6 DHT
//! holds; an IPv4-only crawler on the same net cannot.
//!
//! The testnet: dual-stack nodes (127.124.0.x and fd77::7c:x), and IPv6-only nodes
//! (fd77::7c:1x; their allow-list admits no IPv4 address, so their IPv4 half is mute).
//! Each family's node keeps its own peer store, so what the IPv6-only nodes announce is
//! stored by IPv6 nodes only, and sampling the IPv4 DHT never returns it.
//!
//! Run inside a network namespace (`unshare -rn`), where the fd77:: test addresses are
//! added to `lo`; nothing leaves the machine.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use trackerless::crawl::store::HOW_ANNOUNCE;
use trackerless::crawl::{
    self, CrawlConfig, CrawlReport, CrawlStore, Record, StoreConfig, WalkConfig,
};
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
use trackerless::dht::id::{Family, InfoHash};
use trackerless::dht::node::Config;

#[path = "common/mod.rs"]
mod common;
#[path = "wait_support/mod.rs"]
mod wait_support;

use wait_support::{GENEROUS, wait_until};

const DUAL: u8 = 6;
const V6_ONLY: u8 = 4;

fn node_config(allow: AllowList) -> Config {
    Config {
        allow,
        ..Config::loopback_testnet()
    }
}

fn both() -> AllowList {
    AllowList::only(vec![
        "127.0.0.0/8".parse().unwrap(),
        "fd77::/16".parse().unwrap(),
    ])
}

fn ipv6_only() -> AllowList {
    AllowList::only(vec!["fd77::/16".parse().unwrap()])
}

fn spawn(bind: &str, bind6: &str, allow: AllowList) -> DhtHandle {
    let mut c = DhtConfig::new(bind.parse().unwrap());
    c.bind6 = Some(bind6.parse().unwrap());
    c.node = node_config(allow);
    Dht::spawn(c).expect("binds")
}

struct Net {
    dual: Vec<DhtHandle>,
    v6_only: Vec<DhtHandle>,
    /// Announced by dual-stack nodes: in both DHTs.
    in_both: Vec<InfoHash>,
    /// Announced by IPv6-only nodes: in the IPv6 DHT only.
    in_v6: Vec<InfoHash>,
}

impl Net {
    async fn start() -> Net {
        for i in 1..=DUAL {
            common::ensure_ipv6_on_lo(&format!("fd77::7c:{i}"));
        }
        for i in 1..=V6_ONLY {
            common::ensure_ipv6_on_lo(&format!("fd77::7c:1{i}"));
        }
        common::ensure_ipv6_on_lo("fd77::7c:99");
        let dual: Vec<DhtHandle> = (1..=DUAL)
            .map(|i| {
                spawn(
                    &format!("127.124.0.{i}:0"),
                    &format!("[fd77::7c:{i}]:0"),
                    both(),
                )
            })
            .collect();
        let v6_only: Vec<DhtHandle> = (1..=V6_ONLY)
            .map(|i| {
                spawn(
                    &format!("127.124.1.{i}:0"),
                    &format!("[fd77::7c:1{i}]:0"),
                    ipv6_only(),
                )
            })
            .collect();
        let v4: Vec<SocketAddr> = dual.iter().map(DhtHandle::local_addr).collect();
        let v6: Vec<SocketAddr> = dual
            .iter()
            .chain(&v6_only)
            .filter_map(DhtHandle::local_addr6)
            .collect();
        // Each node pings the others (again while its tables are short: a ping answered
        // while the other side was still starting up may not have made it a table entry).
        for (i, n) in dual.iter().chain(&v6_only).enumerate() {
            let contacts: Vec<SocketAddr> = if i < dual.len() {
                v4.iter().chain(&v6).copied().collect()
            } else {
                v6.clone()
            };
            wait_until("full tables", GENEROUS, async || {
                let v6_full = n.stats6().await.unwrap().expect("an IPv6 node").good_nodes >= 4;
                let v4_full = i >= dual.len() || n.stats().await.unwrap().good_nodes >= 4;
                if !(v6_full && v4_full) {
                    n.add_contacts(contacts.iter().copied()).unwrap();
                }
                v6_full && v4_full
            })
            .await;
        }
        let mut rng = StdRng::seed_from_u64(0x7c);
        let mut announce = async |nodes: &[DhtHandle], count: usize| {
            let mut hashes = Vec::new();
            for i in 0..count {
                let ih = InfoHash::random(&mut rng);
                let (_, summary) = nodes[i % nodes.len()]
                    .announce(ih, Some(6000))
                    .unwrap()
                    .collect()
                    .await;
                assert!(summary.announced > 0, "{summary:?}");
                hashes.push(ih);
            }
            hashes
        };
        let in_both = announce(&dual, 12).await;
        let in_v6 = announce(&v6_only, 12).await;
        Net {
            dual,
            v6_only,
            in_both,
            in_v6,
        }
    }

    async fn shutdown(self) {
        for n in self.dual.iter().chain(&self.v6_only) {
            n.shutdown().await.unwrap();
        }
    }
}

/// What one crawl saw.
struct Crawled {
    report: CrawlReport,
    found: HashSet<InfoHash>,
    lines: Vec<String>,
    /// The store's record of the infohash announced to the crawler over IPv6.
    announced: Option<(InfoHash, Record)>,
}

/// Crawls with a fresh node (`bind6` makes it dual-stack) until `enough` of the new
/// infohashes have been reported, or a generous deadline. With `bind6`, an IPv6-only node
/// also announces to the crawler's IPv6 node (an infohash equal to that node's id, so the
/// crawler is the closest node and gets the announce).
async fn crawl_until(
    net: &Net,
    bind: &str,
    bind6: Option<&str>,
    enough: impl Fn(&HashSet<InfoHash>) -> bool + Send + 'static,
) -> Crawled {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut cfg = DhtConfig::new(bind.parse().unwrap());
    cfg.bind6 = bind6.map(|a| a.parse().unwrap());
    cfg.node = node_config(both());
    cfg.incoming = Some(tx);
    let dht = Dht::spawn(cfg).expect("binds");
    // One dual-stack node of each family to start from; the walk finds the rest.
    dht.add_contacts([net.dual[0].local_addr()]).unwrap();
    if bind6.is_some() {
        dht.add_contacts(net.dual[0].local_addr6()).unwrap();
    }
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    // The announcer learns the crawler's IPv6 node (and its id) by pinging it.
    let announce = match dht.local_addr6() {
        Some(a6) => {
            let id6 = net.v6_only[0]
                .ping(a6)
                .await
                .expect("the crawler answers over IPv6");
            Some((net.v6_only[0].clone(), InfoHash(id6.0)))
        }
        None => None,
    };
    let announced_ih = announce.as_ref().map(|(_, ih)| *ih);
    let (new_tx, mut new_rx) = tokio::sync::mpsc::unbounded_channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let lines_w = lines.clone();
    let found = Arc::new(Mutex::new(HashSet::new()));
    let found_w = found.clone();
    let stop = async move {
        if let Some((node, ih)) = announce {
            let (_, summary) = node.announce(ih, Some(6000)).unwrap().collect().await;
            assert!(summary.announced > 0, "{summary:?}");
        }
        while let Some(ih) = new_rx.recv().await {
            let done = {
                let mut f = found_w.lock().unwrap();
                f.insert(ih);
                enough(&f) && announced_ih.is_none_or(|a| f.contains(&a))
            };
            if done {
                break;
            }
        }
    };
    let report = crawl::run(
        dht.clone(),
        Some(rx),
        store,
        CrawlConfig {
            walk: WalkConfig {
                rate: 500.0,
                burst: 50.0,
                min_interval: Duration::from_secs(1),
                allow: both(),
                ..Default::default()
            },
            flush_interval: Duration::from_millis(100),
            status_interval: Duration::from_millis(100),
            duration: Some(GENEROUS),
            new_infohashes: Some(new_tx),
            on_status: Some(Box::new(move |s| {
                lines_w.lock().unwrap().push(s.to_string());
            })),
            ..Default::default()
        },
        stop,
    )
    .await
    .unwrap();
    dht.shutdown().await.unwrap();
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    let found = found.lock().unwrap().clone();
    let lines = lines.lock().unwrap().clone();
    Crawled {
        report,
        found,
        lines,
        announced: announced_ih.and_then(|ih| Some((ih, store.get(&ih)?))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_crawl_finds_what_only_the_ipv6_dht_holds() {
    let net = Net::start().await;
    let in_v6: HashSet<InfoHash> = net.in_v6.iter().copied().collect();
    let all: HashSet<InfoHash> = net.in_both.iter().chain(&net.in_v6).copied().collect();

    let want = all.clone();
    let Crawled {
        report,
        found,
        lines,
        announced,
    } = crawl_until(&net, "127.124.2.1:0", Some("[fd77::7c:99]:0"), move |f| {
        want.is_subset(f)
    })
    .await;
    // The peer announced over IPv6 is recorded (BEP 32 peers in the store).
    let (_, record) = announced.expect("the IPv6 announce reached the store");
    let peer = SocketAddr::new(net.v6_only[0].local_addr6().unwrap().ip(), 6000);
    assert!(record.peers.contains(&peer), "{record:?}");
    assert!(record.how & HOW_ANNOUNCE != 0, "{record:?}");
    assert!(report.status.ipv6.as_ref().unwrap().passive > 0);
    let missing: Vec<_> = all.difference(&found).collect();
    assert!(missing.is_empty(), "not found: {missing:?}\n{report:?}");
    let s = &report.status;
    let v6 = s.ipv6.as_ref().expect("the IPv6 DHT was crawled");
    // The IPv6-only torrents can only have come from IPv6 samples.
    assert!(
        v6.samples_new >= in_v6.len() as u64,
        "{v6:?} vs {} IPv6-only torrents",
        in_v6.len()
    );
    assert!(v6.visited >= u64::from(V6_ONLY), "{v6:?}");
    assert!(v6.nodes_known >= usize::from(V6_ONLY), "{v6:?}");
    assert!(s.ipv4.visited >= 1 && s.ipv4.samples > 0, "{:?}", s.ipv4);
    assert_eq!(s.visited, s.ipv4.visited + v6.visited);
    assert_eq!(s.samples_new, s.ipv4.samples_new + v6.samples_new);
    let w6 = report.walk6.as_ref().expect("an IPv6 walk");
    assert!(w6.bep51_replies > 0, "{w6:?}");
    assert_eq!(report.walk.queries, report.walk4.queries + w6.queries);
    // The status line (the final one, which the binary prints too: the crawl may well
    // end before the first tick) and the metrics show both families.
    for l in lines.iter().chain([&s.to_string()]) {
        assert!(
            l.contains("| ipv4 nodes ") && l.contains("| ipv6 nodes "),
            "{l}"
        );
    }
    let line = s.to_string();
    assert!(
        line.contains(&format!(
            "| ipv6 nodes {} visited {} samples {} new {}",
            v6.nodes_known, v6.visited, v6.samples, v6.samples_new
        )),
        "{line}"
    );
    let metrics = crawl::web::render_metrics(Some(s), None);
    let line = format!(
        "dht_crawl_family_samples_new_total{{family=\"{}\"}} {}\n",
        Family::V6,
        v6.samples_new
    );
    assert!(metrics.contains(&line), "{line:?} missing from\n{metrics}");

    // The same net crawled over IPv4 only: every torrent of the IPv4 DHT, none of the
    // IPv6-only ones.
    let want = net.in_both.iter().copied().collect::<HashSet<_>>();
    let Crawled {
        report,
        found,
        lines,
        ..
    } = crawl_until(&net, "127.124.2.2:0", None, move |f| want.is_subset(f)).await;
    assert!(
        net.in_both.iter().all(|ih| found.contains(ih)),
        "{report:?}"
    );
    assert!(
        found.is_disjoint(&in_v6),
        "the IPv4 DHT does not hold these"
    );
    assert!(report.status.ipv6.is_none() && report.walk6.is_none());
    for l in lines.iter().chain([&report.status.to_string()]) {
        assert!(!l.contains("ipv"), "{l}");
    }
    net.shutdown().await;
}

/// The binary: `--bind` for both families makes `dht-crawl` dual-stack; its status line
/// gains an IPv6 part, `/api/stats`, the status page and `/metrics` (`--http`) count each
/// family, and the IPv6-only torrents reach `--out`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_bound_to_both_families_crawls_the_ipv6_dht() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let net = Net::start().await;
    common::ensure_ipv6_on_lo("fd77::7c:98");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args([
            "--bind",
            "127.124.3.1:0",
            "--bind",
            "[fd77::7c:98]:0",
            "--bootstrap",
            &net.dual[0].local_addr().to_string(),
            "--bootstrap",
            &net.dual[0].local_addr6().unwrap().to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--allow-net",
            "fd77::/16",
            "--no-subnet-limit",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--flush-interval",
            "1",
            "--status-interval",
            "1",
            "--http",
            "127.124.3.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let total = net.in_both.len() + net.in_v6.len();
    let v6_wanted = net.in_v6.len() as u64;
    let (last, http) = tokio::task::spawn_blocking(move || {
        let number_after = |line: &str, key: &str| -> Option<u64> {
            line.split(key)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        let http = first
            .strip_prefix("serving status on http://")
            .and_then(|r| r.strip_suffix('/'))
            .unwrap_or_else(|| panic!("{first:?}"))
            .to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            let part6 = line
                .split(" | ipv6 nodes ")
                .nth(1)
                .unwrap_or_else(|| panic!("no IPv6 part in {line:?}"));
            assert!(line.contains(" | ipv4 nodes "), "{line}");
            let stored = number_after(&line, "infohashes ").unwrap_or(0);
            let new6 = number_after(part6, " new ").unwrap_or(0);
            if stored >= total as u64 && new6 >= v6_wanted {
                return (line, http);
            }
        }
        panic!("the crawler never stored the IPv6 DHT's torrents");
    })
    .await
    .unwrap();
    // The web side, read while the crawl runs: the numbers are at least what the status
    // line showed.
    let (stats, page, metrics) = tokio::task::spawn_blocking(move || {
        let (code, stats) = common::http_get(&http, "/api/stats");
        assert_eq!(code, 200, "{stats}");
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        (
            stats,
            common::http_get(&http, "/").1,
            common::http_get(&http, "/metrics").1,
        )
    })
    .await
    .unwrap();
    let ipv6 = &stats["crawl"]["ipv6"];
    assert!(
        ipv6["samples_new"].as_u64().unwrap() >= v6_wanted,
        "{stats}"
    );
    assert!(ipv6["visited"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["crawl"]["ipv4"]["visited"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(page.contains("id=\"stat-ipv6-nodes-visited\""), "{page}");
    let new6: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dht_crawl_family_samples_new_total{family=\"ipv6\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 samples metric in\n{metrics}"));
    assert!(new6 >= v6_wanted as f64, "{metrics}");
    child.kill().unwrap();
    child.wait().unwrap();
    let written: HashSet<InfoHash> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["info_hash"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    for ih in &net.in_v6 {
        assert!(
            written.contains(ih),
            "{ih} missing from --out; last status {last}"
        );
    }
    net.shutdown().await;
}
