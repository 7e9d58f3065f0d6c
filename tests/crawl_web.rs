//! `dht-crawl serve`: the binary serving a real store, spoken to over real HTTP on loopback,
//! and rendered by a real headless Chromium (DOM checks, an XSS check, screenshots saved
//! under target/tmp/crawl-web/ as artifacts).

#[path = "crawl_pg_common/mod.rs"]
mod pgtest;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use trackerless::crawl::store::{HOW_ANNOUNCE, HOW_SAMPLE, MetaFile};
use trackerless::crawl::{CrawlStore, PgStore, Store, StoreConfig, TorrentMeta};
use trackerless::dht::id::InfoHash;

const XSS: &str = "<script>alert(1)</script>";

fn ih(i: u32) -> InfoHash {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b[19] = 0x77;
    InfoHash(b)
}

fn meta(name: &str, files: &[&str]) -> TorrentMeta {
    TorrentMeta {
        name: name.into(),
        total_size: 3 << 30,
        file_count: files.len() as u64,
        files: files
            .iter()
            .map(|p| MetaFile {
                path: p.to_string(),
                length: 1 << 30,
            })
            .collect(),
        fetched_at: 1_767_225_700,
    }
}

/// 120 "pack" torrents, one Ubuntu, one named like a script tag, one with no metadata.
fn fill(store: &mut Store) {
    for i in 0..120 {
        store.note_at(ih(i), HOW_SAMPLE, None, 1_767_225_600 + u64::from(i));
        store.set_metadata(ih(i), meta(&format!("pack {i}"), &["a.bin"]));
    }
    store.note_at(
        ih(500),
        HOW_ANNOUNCE,
        Some("127.0.0.9:6881".parse().unwrap()),
        1_767_300_000,
    );
    store.set_metadata(
        ih(500),
        meta(
            "Ubuntu 24.04 Desktop",
            &["ubuntu/desktop-amd64.iso", "docs/giraffe_notes.txt"],
        ),
    );
    store.note_at(ih(666), HOW_SAMPLE, None, 1_767_300_001);
    store.set_metadata(ih(666), meta(XSS, &[&format!("{XSS}/x.txt")]));
    store.note_at(ih(777), HOW_SAMPLE, None, 1_767_300_002);
    store.flush().unwrap();
}

/// Starts `dht-crawl serve` on an ephemeral loopback port; returns it and its address.
fn serve(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .arg("serve")
        .args(["--http", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (child, addr)
}

/// One HTTP/1.1 request; returns (status, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path)
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = get(addr, path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn sled_store(dir: &Path) {
    let mut store: Store = CrawlStore::open(&dir.join("crawl"), StoreConfig::default())
        .unwrap()
        .into();
    fill(&mut store);
}

#[test]
fn pages_and_api_over_a_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    sled_store(dir.path());
    let (mut child, addr) = serve(&["--data-dir", dir.path().to_str().unwrap()]);

    let (code, body) = get(addr, "/");
    assert_eq!(code, 200);
    assert!(body.contains("id=\"stat-records\">123<"), "{body}");
    assert!(body.contains("id=\"stat-with-metadata\">122<"), "{body}");
    // Newest first: the record with no metadata is shown by its hash.
    assert!(body.contains(&ih(777).to_hex()));

    // Substring search on sled, any case; the query is echoed escaped.
    let (code, body) = get(addr, "/search?q=UBUNTU");
    assert_eq!(code, 200);
    assert!(body.contains("Ubuntu 24.04 Desktop"), "{body}");
    assert!(body.contains("1 result on page 1"), "{body}");
    let (_, body) = get(addr, "/search?q=%3Cscript%3E");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(!body.contains(XSS), "{body}");

    // The torrent page: files, size, seen times, magnet.
    let (code, body) = get(addr, &format!("/torrent/{}", ih(500).to_hex()));
    assert_eq!(code, 200);
    for want in [
        "ubuntu/desktop-amd64.iso",
        "3.0 GiB",
        "2026-01-01 20:40:00 UTC",
        &format!(
            "magnet:?xt=urn:btih:{}&amp;dn=Ubuntu%2024%2E04%20Desktop",
            ih(500).to_hex()
        ),
        "127.0.0.9:6881",
    ] {
        assert!(body.contains(want), "{want} missing: {body}");
    }
    let (_, body) = get(addr, &format!("/torrent/{}", ih(666).to_hex()));
    assert!(!body.contains(XSS), "unescaped name: {body}");
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;/x.txt"));

    // Bad input.
    assert_eq!(get(addr, "/torrent/zz").0, 400);
    assert_eq!(get(addr, &format!("/torrent/{}", "0".repeat(40))).0, 404);
    assert_eq!(get(addr, "/api/torrent/nothex").0, 400);
    assert_eq!(get(addr, "/nope").0, 404);
    assert_eq!(get(addr, "/search?page=-3&q=x").0, 400);
    assert_eq!(
        get(addr, &format!("/search?q={}", "a".repeat(10_000))).0,
        200
    );
    // Read-only.
    assert_eq!(request(addr, "POST", "/api/search").0, 405);

    // JSON API, paginated.
    let mut names = HashSet::new();
    for page in 1..=3 {
        let v = get_json(addr, &format!("/api/search?q=pack&page={page}"));
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), if page < 3 { 50 } else { 20 }, "page {page}");
        assert_eq!(v["more"], page < 3);
        for r in results {
            names.insert(r["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(names.len(), 120, "pages are disjoint and complete");
    let v = get_json(addr, &format!("/api/torrent/{}", ih(666).to_hex()));
    assert_eq!(v["name"], XSS);
    assert_eq!(v["files"][0]["path"], format!("{XSS}/x.txt"));
    assert!(
        v["magnet"]
            .as_str()
            .unwrap()
            .starts_with("magnet:?xt=urn:btih:")
    );
    let v = get_json(addr, "/api/stats");
    assert_eq!(
        (v["records"].as_u64(), v["with_metadata"].as_u64()),
        (Some(123), Some(122))
    );

    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn search_on_postgres_is_full_text_over_names_and_paths() {
    let url = pgtest::fresh_db("web").await;
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut store: Store = PgStore::open(&u).unwrap().into();
        fill(&mut store);
    })
    .await
    .unwrap();
    let (mut child, addr) = serve(&["--store", &url]);
    let v = tokio::task::spawn_blocking(move || {
        // "giraffe" is only in a file path; "desktop ubuntu" is words in any order.
        let a = get_json(addr, "/api/search?q=giraffe");
        let b = get_json(addr, "/api/search?q=desktop%20ubuntu");
        let c = get_json(addr, "/api/stats");
        let (_, html) = get(addr, "/search?q=giraffe");
        (a, b, c, html)
    })
    .await
    .unwrap();
    assert_eq!(v.0["results"].as_array().unwrap().len(), 1, "{}", v.0);
    assert_eq!(v.0["results"][0]["name"], "Ubuntu 24.04 Desktop");
    assert_eq!(v.1["results"][0]["info_hash"], ih(500).to_hex());
    assert_eq!(v.2["records"], 123);
    assert!(v.2["store"].as_str().unwrap().starts_with("postgres "));
    assert!(v.3.contains("Ubuntu 24.04 Desktop"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Headless Chromium's serialised DOM of `url`, and a screenshot of it at `shot`.
fn chromium(url: &str, shot: &Path) -> String {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("headless Chromium is needed (apt-get install chromium)");
    let profile = tempfile::tempdir().unwrap();
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ];
    let dom = Command::new(bin)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(dom.status.success(), "chromium failed on {url}");
    let shot_run = Command::new(bin)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1200,900", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(shot_run.success(), "chromium screenshot of {url} failed");
    assert!(
        std::fs::metadata(shot)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

#[test]
fn chromium_renders_status_and_search_and_escapes_names() {
    let dir = tempfile::tempdir().unwrap();
    sled_store(dir.path());
    let (mut child, addr) = serve(&["--data-dir", dir.path().to_str().unwrap()]);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crawl-web");
    std::fs::create_dir_all(&shots).unwrap();

    let dom = chromium(&format!("http://{addr}/"), &shots.join("status.png"));
    assert!(dom.contains("<table id=\"status\">"), "{dom}");
    assert!(dom.contains("id=\"stat-records\">123</td>"), "{dom}");
    assert!(dom.contains("Ubuntu 24.04 Desktop"), "{dom}");

    let dom = chromium(
        &format!("http://{addr}/search?q=ubuntu"),
        &shots.join("search.png"),
    );
    assert!(dom.contains("<span id=\"query\">ubuntu</span>"), "{dom}");
    assert!(
        dom.contains(&format!("href=\"/torrent/{}\"", ih(500).to_hex())),
        "{dom}"
    );

    // The hostile name is text, not an element: the DOM has no script element at all.
    let dom = chromium(
        &format!("http://{addr}/torrent/{}", ih(666).to_hex()),
        &shots.join("xss.png"),
    );
    assert!(
        !dom.to_lowercase().contains("<script"),
        "a script element: {dom}"
    );
    assert!(
        dom.contains("<h1 id=\"name\">&lt;script&gt;alert(1)&lt;/script&gt;</h1>"),
        "{dom}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A crawler with `--http`: live status, `/api/stats` and Prometheus `/metrics` while it
/// runs; on a net with nothing to find, `--stall-after` warns, counts and re-bootstraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_serves_live_metrics_and_detects_a_stall() {
    use trackerless::sim::testnet::{Testnet, TestnetConfig};
    let net = Testnet::start(
        12,
        TestnetConfig {
            subnet: 174,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args([
            "--bind",
            "127.175.0.1:0",
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--status-interval",
            "1",
            "--stall-after",
            "0.05",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let warned = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("discovery stalled") && l.contains("re-bootstrapping"))
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("the crawler exited").unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim().trim_end_matches('/').parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let metrics = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (code, body) = get(addr, "/metrics");
            assert_eq!(code, 200);
            let value = |name: &str| -> f64 {
                body.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(-1.0)
            };
            if value("dht_crawl_stalls_total") >= 1.0 && value("dht_crawl_nodes_known") > 0.0 {
                let stats = get_json(addr, "/api/stats");
                let (page_code, page) = get(addr, "/");
                let search_code = get(addr, "/search?q=x").0;
                return (body, stats, page_code, page, search_code);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no stall reported: {body}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .await
    .unwrap();
    let (body, stats, page_code, page, search_code) = metrics;
    assert!(
        body.contains("# TYPE dht_crawl_stalls_total counter"),
        "{body}"
    );
    assert!(body.contains("dht_crawl_infohashes 0"), "{body}");
    // Health beyond the counts: answers, queue depths, store write latency, memory.
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(value("dht_crawl_responses_total") > 0.0, "{body}");
    assert!(value("dht_crawl_query_failures_total") >= 0.0, "{body}");
    assert!(value("dht_crawl_queries_in_flight") >= 0.0, "{body}");
    assert!(value("dht_crawl_store_pending") >= 0.0, "{body}");
    assert!(value("dht_crawl_store_flushes_total") >= 1.0, "{body}");
    assert!(value("dht_crawl_store_flush_seconds_max") >= 0.0, "{body}");
    assert!(value("dht_crawl_resident_memory_bytes") > 1e6, "{body}");
    assert!(stats["crawl"]["stalls"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(page_code, 200);
    assert!(page.contains("id=\"stat-stalls\""), "{page}");
    assert_eq!(search_code, 503, "sled is held by the crawl");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        warned.join().unwrap().is_some(),
        "no stall warning on stderr"
    );
    net.shutdown().await;
}
