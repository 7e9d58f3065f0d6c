//! dht-crawl on PostgreSQL, against a real server (see tests/crawl_pg_common): migrations,
//! concurrent crawlers sharing one database, hostile names, and the binary's errors.

#[path = "crawl_pg_common/mod.rs"]
mod pgtest;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use trackerless::crawl::pg::{self, PgError, PgStore};
use trackerless::crawl::store::{HOW_ANNOUNCE, HOW_GET_PEERS, HOW_SAMPLE, MetaFile, SwarmEstimate};
use trackerless::crawl::{
    self, CrawlConfig, CrawlStore, Store, StoreConfig, TorrentMeta, WalkConfig,
};
use trackerless::dht::driver::{Dht, DhtConfig};
use trackerless::dht::id::InfoHash;
use trackerless::dht::node::Config;
use trackerless::sim::testnet::{Testnet, TestnetConfig};

fn ih(i: u32) -> InfoHash {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b[19] = 0x5a;
    InfoHash(b)
}

/// PgStore::open blocks on its connection thread; keep it off the test's runtime threads.
async fn open(url: &str) -> Result<PgStore, PgError> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || PgStore::open(&url))
        .await
        .unwrap()
}

/// Runs blocking store calls off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A database at schema v1 with a row in it migrates to v2 keeping the row; opening an
/// up-to-date schema again changes nothing; a schema newer than we know is refused.
#[tokio::test]
async fn migrates_from_empty_and_from_the_previous_version() {
    // From empty.
    let url = pgtest::fresh_db("mig_empty").await;
    drop(open(&url).await.unwrap());
    let c = pgtest::client(&url).await;
    let versions: Vec<i32> = c
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    // Again: a no-op.
    drop(open(&url).await.unwrap());
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // From v1, with data.
    let url = pgtest::fresh_db("mig_v1").await;
    let c = pgtest::client(&url).await;
    assert_eq!(pg::migrate(&c, 1).await.unwrap(), 1);
    c.execute(
        "INSERT INTO crawl_torrents VALUES ($1, 100, 200, 3, 1, '{\"127.0.0.1:6881\"}')",
        &[&ih(1).0.to_vec()],
    )
    .await
    .unwrap();
    let has_meta: bool = c
        .query_one("SELECT to_regclass('crawl_metadata') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!has_meta, "v1 has no metadata table");
    let mut s = open(&url).await.unwrap();
    assert_eq!(s.count(), 1);
    let (r, s) = blocking(move || {
        let r = s.get(&ih(1)).unwrap().unwrap();
        s.note_at(
            ih(1),
            HOW_ANNOUNCE,
            Some("127.0.0.2:7".parse().unwrap()),
            300,
        );
        s.set_metadata(ih(1), meta("after migration"));
        let f = s.flush().unwrap();
        assert_eq!((f.new.len(), f.updated, f.metadata), (0, 1, 1));
        // v3: a BEP 33 estimate attaches to the row (the newest wins) and never creates one.
        let est = |seeds, at| SwarmEstimate {
            seeds,
            peers: 70,
            at,
        };
        s.set_scrape(ih(1), est(30, 400));
        s.set_scrape(ih(2), est(1, 400));
        assert!(s.flush().unwrap().new.is_empty());
        s.set_scrape(ih(1), est(5, 350));
        s.flush().unwrap();
        assert_eq!(s.get(&ih(1)).unwrap().unwrap().scrape, Some(est(30, 400)));
        assert!(s.get(&ih(2)).unwrap().is_none());
        (r, s)
    })
    .await;
    assert_eq!(
        (r.first_seen, r.last_seen, r.times_seen, r.how),
        (100, 200, 3, 1)
    );
    assert_eq!(r.peers, ["127.0.0.1:6881".parse::<SocketAddr>().unwrap()]);
    let page = blocking(move || s.page(None, 10).unwrap()).await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].1.times_seen, 4);
    assert_eq!(page[0].1.scrape.map(|e| (e.seeds, e.peers)), Some((30, 70)));
    assert_eq!(page[0].1.how, HOW_SAMPLE | HOW_ANNOUNCE);
    assert_eq!(page[0].2.as_ref().unwrap().name, "after migration");

    // Newer than we know.
    c.execute("INSERT INTO schema_version (version) VALUES (99)", &[])
        .await
        .unwrap();
    let e = open(&url).await.err().unwrap();
    assert!(matches!(e, PgError::TooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade dht-crawl"), "{e}");
}

fn meta(name: &str) -> TorrentMeta {
    TorrentMeta {
        name: name.into(),
        total_size: 42,
        file_count: 2,
        files: vec![
            MetaFile {
                path: format!("{name}/a.txt"),
                length: 40,
            },
            MetaFile {
                path: "b/ubuntu.iso".into(),
                length: 2,
            },
        ],
        fetched_at: 77,
    }
}

/// Two stores on one database see one infohash: the upsert merges their sightings, and
/// exactly one of them reports it as new.
#[tokio::test]
async fn two_stores_merge_sightings_and_report_new_once() {
    let url = pgtest::fresh_db("merge").await;
    let a = open(&url).await.unwrap();
    let b = open(&url).await.unwrap();
    let (fa, fb, a, b) = blocking(move || {
        let (mut a, mut b) = (a, b);
        for i in 0..50 {
            a.note_at(ih(i), HOW_SAMPLE, None, 1000 + u64::from(i));
        }
        a.note_at(
            ih(7),
            HOW_ANNOUNCE,
            Some("127.0.0.1:1".parse().unwrap()),
            1100,
        );
        // A BEP 32 peer, announced over the IPv6 DHT.
        a.note_at(
            ih(7),
            HOW_ANNOUNCE,
            Some("[fd77::6e:1]:1".parse().unwrap()),
            1101,
        );
        for i in 25..75 {
            b.note_at(ih(i), HOW_GET_PEERS, None, 900);
        }
        b.note_at(
            ih(30),
            HOW_ANNOUNCE,
            Some("127.0.0.1:2".parse().unwrap()),
            2000,
        );
        let fa = a.flush().unwrap();
        let fb = b.flush().unwrap();
        (fa, fb, a, b)
    })
    .await;
    assert_eq!(fa.new.len(), 50);
    assert_eq!((fb.new.len(), fb.updated), (25, 25));
    let all: HashSet<InfoHash> = fa.new.iter().chain(&fb.new).copied().collect();
    assert_eq!(
        all.len(),
        75,
        "each infohash is new for exactly one crawler"
    );
    let (r30, r7) = blocking(move || {
        drop(b);
        (
            a.get(&ih(30)).unwrap().unwrap(),
            a.get(&ih(7)).unwrap().unwrap(),
        )
    })
    .await;
    assert_eq!(
        (r30.first_seen, r30.last_seen, r30.times_seen, r30.how),
        (900, 2000, 3, HOW_SAMPLE | HOW_GET_PEERS | HOW_ANNOUNCE)
    );
    assert_eq!(r30.peers, ["127.0.0.1:2".parse::<SocketAddr>().unwrap()]);
    let want7: Vec<SocketAddr> = ["127.0.0.1:1", "[fd77::6e:1]:1"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(r7.peers, want7);
    // The peer merge keeps the newest few, a peer seen again moving to the end.
    let c = pgtest::client(&url).await;
    let merged: Vec<String> = c
        .query_one("SELECT crawl_merge_peers('{a,b,c,d}', '{b,e}', 4)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(merged, ["c", "d", "b", "e"]);
}

/// A bencoded info dict whose name is `name` (any bytes), with an optional `name.utf-8`.
fn info_dict(name: &[u8], utf8: Option<&str>) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(b"d6:lengthi5e4:name");
    d.extend_from_slice(name.len().to_string().as_bytes());
    d.push(b':');
    d.extend_from_slice(name);
    if let Some(u) = utf8 {
        d.extend_from_slice(format!("10:name.utf-8{}:{u}", u.len()).as_bytes());
    }
    d.extend_from_slice(b"12:piece lengthi16384e6:pieces20:");
    d.extend_from_slice(&[7u8; 20]);
    d.push(b'e');
    d
}

/// Names with NUL characters (which PostgreSQL text cannot hold) and invalid UTF-8 (with
/// and without a `name.utf-8`) are stored, read back exactly, and found by the full-text
/// index.
#[tokio::test]
async fn hostile_names_are_stored_safely() {
    let url = pgtest::fresh_db("names").await;
    let s = open(&url).await.unwrap();
    let nul = meta("nul\0inside zebra");
    // Not UTF-8, with no fallback: kept for the index, each bad sequence as U+FFFD.
    let lossy = TorrentMeta::from_info(&info_dict(b"okapi \xff\xfe", None), 5)
        .expect("a name that is not UTF-8 is still indexed");
    assert_eq!(lossy.name, "okapi \u{FFFD}\u{FFFD}");
    // Not UTF-8, with a name.utf-8 fallback.
    let from_bytes = TorrentMeta::from_info(
        &info_dict(b"bad \xff\xfe", Some("fallback giraffe \u{1F992}")),
        5,
    )
    .expect("a name that is not UTF-8 but has a name.utf-8 parses");
    assert_eq!(from_bytes.name, "fallback giraffe \u{1F992}");
    let quote = meta("it's \"quoted\" <b>tag</b>; DROP TABLE crawl_torrents; --");
    let metas = [
        nul.clone(),
        from_bytes.clone(),
        quote.clone(),
        lossy.clone(),
    ];
    let s = blocking(move || {
        let mut s = s;
        for (i, m) in metas.into_iter().enumerate() {
            s.note_at(ih(i as u32), HOW_SAMPLE, None, 1);
            s.set_metadata(ih(i as u32), m);
        }
        s.flush().unwrap();
        s
    })
    .await;
    let s = blocking(move || {
        assert_eq!(s.metadata(&ih(0)).unwrap().unwrap(), nul);
        assert_eq!(s.metadata(&ih(1)).unwrap().unwrap(), from_bytes);
        assert_eq!(s.metadata(&ih(2)).unwrap().unwrap(), quote);
        assert_eq!(s.metadata(&ih(3)).unwrap().unwrap(), lossy);
        s
    })
    .await;
    // A fresh store (nothing cached) reads the same.
    drop(s);
    let s = open(&url).await.unwrap();
    let page = blocking(move || s.page(None, 10).unwrap()).await;
    assert_eq!(page[0].2.as_ref().unwrap().name, "nul\0inside zebra");
    let c = pgtest::client(&url).await;
    for word in ["zebra", "giraffe", "ubuntu", "okapi"] {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM crawl_metadata
                 WHERE search @@ plainto_tsquery('simple', $1)",
                &[&word],
            )
            .await
            .unwrap()
            .get(0);
        assert!(n >= 1, "full-text search for {word} found nothing");
    }
    let tables: i64 = c
        .query_one("SELECT count(*) FROM crawl_torrents", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 4);
}

/// A small loopback testnet whose nodes hold `infohashes` announced infohashes.
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

/// Runs the library crawler on `bind` into `store` until `done` says so (or a minute).
async fn crawl_into(
    net_addr: SocketAddrV4,
    bind: &str,
    store: Store,
    seen: Arc<Mutex<HashSet<InfoHash>>>,
    want: usize,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut cfg = DhtConfig::new(bind.parse().unwrap());
    cfg.node = Config::loopback_testnet();
    cfg.bootstrap = vec![net_addr.to_string()];
    cfg.incoming = Some(tx);
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    let (new_tx, mut new_rx) = tokio::sync::mpsc::unbounded_channel();
    let done = {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            loop {
                tokio::select! {
                    Some(ih) = new_rx.recv() => {
                        seen.lock().unwrap().insert(ih);
                    }
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = tokio::time::sleep_until(deadline) => return,
                }
                if seen.lock().unwrap().len() >= want {
                    return;
                }
            }
        }
    };
    // The store's flushes block: run the crawl on its own thread's runtime so three
    // crawlers do not stall each other.
    let dht2 = dht.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(crawl::run(
            dht2,
            Some(rx),
            store,
            CrawlConfig {
                walk: WalkConfig {
                    rate: 300.0,
                    burst: 30.0,
                    allow: trackerless::dht::allow::AllowList::loopback(),
                    ..Default::default()
                },
                flush_interval: Duration::from_millis(200),
                new_infohashes: Some(new_tx),
                ..Default::default()
            },
            done,
        ))
    })
    .await
    .unwrap()
    .unwrap();
    dht.shutdown().await.unwrap();
}

/// Three crawler processes over one loopback testnet write into one database; the union
/// of what they stored equals what one sled crawl of the same net stores, every record's
/// sightings were merged rather than overwritten, and each infohash was reported new (in
/// exactly one crawler's --out file) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_crawlers_into_one_database_equal_a_sled_crawl() {
    // Few enough infohashes per node that one crawler alone can sample them all.
    let (net, hashes) = populated_testnet(171, 40, 60).await;
    let want: HashSet<InfoHash> = hashes.iter().copied().collect();
    let url = pgtest::fresh_db("three").await;

    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut crawlers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        crawlers.push(
            Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
                .args([
                    "--bind",
                    &format!("127.173.0.{}:0", i + 1),
                    "--bootstrap",
                    &net.addr(0).to_string(),
                    "--allow-net",
                    "127.0.0.0/8",
                    "--no-subnet-limit",
                    "--data-dir",
                    dir.path().to_str().unwrap(),
                    "--store",
                    &url,
                    "--out",
                    dir.path().join("new.jsonl").to_str().unwrap(),
                    "--flush-interval",
                    "1",
                    "--status-interval",
                    "0",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    // Until the database holds every infohash (or a deadline), then a clean stop.
    let c = pgtest::client(&url).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let n: i64 = c
            .query_one("SELECT count(*) FROM crawl_torrents", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n as usize >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut child in crawlers {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "a crawler failed: {status}");
    }
    let mut reported = HashSet::new();
    for dir in &dirs {
        let text = std::fs::read_to_string(dir.path().join("new.jsonl")).unwrap_or_default();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ih: InfoHash = v["info_hash"].as_str().unwrap().parse().unwrap();
            assert!(reported.insert(ih), "{ih} reported new by two crawlers");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let sled = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
    let sled_seen = Arc::new(Mutex::new(HashSet::new()));
    crawl_into(
        net.addr(0),
        "127.173.0.9:0",
        sled.into(),
        sled_seen,
        want.len(),
    )
    .await;
    let sled = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
    let sled_set: HashSet<InfoHash> = sled.iter().map(|(ih, _)| ih).collect();

    let pg = open(&url).await.unwrap();
    let rows = blocking(move || pg.page(None, 100_000).unwrap()).await;
    let pg_set: HashSet<InfoHash> = rows.iter().map(|(ih, _, _)| *ih).collect();
    assert_eq!(pg_set.len(), rows.len());
    let diff = |a: &HashSet<InfoHash>, b: &HashSet<InfoHash>| {
        format!(
            "{} vs {}: {} only in the first, {} only in the second",
            a.len(),
            b.len(),
            a.difference(b).count(),
            b.difference(a).count()
        )
    };
    assert!(
        pg_set == want,
        "three crawlers found {}",
        diff(&pg_set, &want)
    );
    assert!(
        sled_set == want,
        "the sled crawl found {}",
        diff(&sled_set, &want)
    );
    assert!(
        pg_set == sled_set,
        "PostgreSQL union vs sled: {}",
        diff(&pg_set, &sled_set)
    );
    assert!(
        reported == pg_set,
        "reported new vs stored: {}",
        diff(&reported, &pg_set)
    );
    for (ih, r, _) in &rows {
        assert!(r.times_seen >= 1 && r.how & HOW_SAMPLE != 0, "{ih}: {r:?}");
        assert!(r.first_seen <= r.last_seen);
    }
    net.shutdown().await;
}

/// The binary: an unreachable database at start is one clear `error:` line and status 1.
#[test]
fn unreachable_database_is_one_error_line() {
    for store in [
        "postgresql:///nope?host=/nonexistent/socket/dir&user=nobody",
        "postgres://user@127.0.0.1:1/db",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
            .args([
                "--bind",
                "127.173.1.1:0",
                "--bootstrap",
                "127.173.1.2:6881",
                "--allow-net",
                "127.0.0.0/8",
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--store",
                store,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{store}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{store}: {err}");
        assert!(
            lines[0].starts_with("error: cannot connect to PostgreSQL at"),
            "{store}: {err}"
        );
    }
    // A value that is neither sled nor a PostgreSQL URL is refused by the argument parser.
    let out = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args(["export", "--store", "mysql://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `kill -9` of a crawler writing to PostgreSQL: everything it reported as stored (status
/// count, --out lines) is in the database, and `export --store` dumps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_reported_on_postgres() {
    let (net, _hashes) = populated_testnet(172, 40, 300).await;
    let url = pgtest::fresh_db("kill9").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args([
            "--bind",
            "127.173.2.1:0",
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--store",
            &url,
            "--out",
            out.to_str().unwrap(),
            "--flush-interval",
            "1",
            "--status-interval",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let last_count = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut growth = 0;
        while Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            let count: u64 = line
                .strip_prefix("infohashes ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected status line {line:?}"));
            if count > 0 {
                growth += 1;
                if growth >= 2 {
                    return count;
                }
            }
        }
        panic!("the crawler never reported infohashes");
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let s = open(&url).await.unwrap();
    assert!(
        s.count() >= last_count,
        "reported {last_count}, stored {}",
        s.count()
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let written: Vec<InfoHash> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["info_hash"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let s = blocking(move || {
        for w in &written {
            assert!(s.get(w).unwrap().is_some(), "{w} written but not stored");
        }
        s
    })
    .await;
    let exported = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args(["export", "--store", &url])
        .output()
        .unwrap();
    assert!(exported.status.success());
    assert_eq!(
        String::from_utf8(exported.stdout).unwrap().lines().count() as u64,
        s.count()
    );
    net.shutdown().await;
}

/// The database going away (connections terminated and refused) and coming back: the
/// failed flush is transient and keeps every sighting buffered, and the next flush after
/// the database returns writes them all.
#[tokio::test]
async fn database_going_away_keeps_sightings_buffered_until_it_returns() {
    let url = pgtest::fresh_db("away").await;
    let db: String = url
        .split("///")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .unwrap()
        .to_string();
    let s = open(&url).await.unwrap();
    let s = blocking(move || {
        let mut s = s;
        for i in 0..10 {
            s.note_at(ih(i), HOW_SAMPLE, None, 1);
        }
        assert_eq!(s.flush().unwrap().new.len(), 10);
        s
    })
    .await;
    let admin = pgtest::admin().await;
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    let s = blocking(move || {
        let mut s = s;
        for i in 5..20 {
            s.note_at(ih(i), HOW_ANNOUNCE, None, 2);
        }
        for attempt in 0..2 {
            let e = s.flush().expect_err("a flush with the database gone fails");
            assert!(e.is_transient(), "attempt {attempt}: {e}");
            assert_eq!(s.pending(), 15, "nothing is dropped by a failed flush");
            assert_eq!(s.count(), 10, "nothing unwritten is counted");
        }
        s
    })
    .await;
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let (f, s) = blocking(move || {
        let mut s = s;
        (s.flush().unwrap(), s)
    })
    .await;
    assert_eq!((f.new.len(), f.updated), (10, 5));
    assert_eq!(s.count(), 20);
    let r = blocking(move || s.get(&ih(7)).unwrap().unwrap()).await;
    assert_eq!((r.times_seen, r.how), (2, HOW_SAMPLE | HOW_ANNOUNCE));
    // A store that is not PostgreSQL, or a bad statement, is not transient.
    assert!(!PgError::Gone.is_transient());
}

/// The binary through a database outage: it keeps crawling, says so once on stderr, and
/// writes what it buffered when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_rides_out_a_database_outage() {
    let (net, _hashes) = populated_testnet(176, 40, 400).await;
    let url = pgtest::fresh_db("outage").await;
    let db: String = url
        .split("///")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args([
            "--bind",
            "127.177.0.1:0",
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--store",
            &url,
            "--flush-interval",
            "1",
            "--status-interval",
            "0",
            // Slow enough that discovery is still going on when the database goes away.
            "--rate",
            "4",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_line = move |rx: std::sync::mpsc::Receiver<String>, what: &'static str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return (l, rx),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no stderr line containing {what:?}");
    };
    let admin = pgtest::admin().await;
    // Crawling and storing first.
    let c = pgtest::client(&url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // (An error until the crawler has created the schema.)
        let n: i64 = c
            .query_one("SELECT count(*) FROM crawl_torrents", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    let (warning, rx) =
        tokio::task::spawn_blocking(move || wait_line(rx, "cannot write to the store"))
            .await
            .unwrap();
    assert!(
        warning.contains("retrying every flush interval"),
        "{warning}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the crawler exited");
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || wait_line(rx, "reachable again"))
        .await
        .unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the crawler exited");
    child.kill().unwrap();
    child.wait().unwrap();
    net.shutdown().await;
}

/// Retention on both stores: records not seen since the cut-off go, then the least-seen
/// beyond the cap, with their metadata; the count follows and survives a reopen.
#[tokio::test]
async fn retention_prunes_old_then_least_seen_records_in_both_stores() {
    let url = pgtest::fresh_db("retention").await;
    let dir = tempfile::tempdir().unwrap();
    let pg: Store = open(&url).await.unwrap().into();
    let sled: Store = CrawlStore::open(dir.path(), StoreConfig::default())
        .unwrap()
        .into();
    for (kind, store) in [("postgres", pg), ("sled", sled)] {
        let (kind, left) = blocking(move || {
            let mut s = store;
            // 0..40 last seen long ago; 40..100 recently, seen (i % 5) + 1 times.
            for i in 0..100u32 {
                let t = if i < 40 { 1_000 } else { 1_000_000 };
                for _ in 0..(i % 5) + 1 {
                    s.note_at(ih(i), HOW_SAMPLE, None, t);
                }
                s.set_metadata(ih(i), meta(&format!("t{i}")));
            }
            s.flush().unwrap();
            assert_eq!(s.count(), 100, "{kind}");
            assert_eq!(s.prune(Some(500_000), None).unwrap(), 40, "{kind}: by age");
            assert_eq!(s.count(), 60, "{kind}");
            assert_eq!(
                s.prune(Some(500_000), Some(30)).unwrap(),
                30,
                "{kind}: by count"
            );
            assert_eq!(s.count(), 30, "{kind}");
            assert_eq!(
                s.prune(Some(500_000), Some(30)).unwrap(),
                0,
                "{kind}: idempotent"
            );
            let left = s.page(None, 1000).unwrap();
            assert_eq!(s.totals().unwrap(), (30, 30), "{kind}: metadata went too");
            (kind, left)
        })
        .await;
        assert_eq!(left.len(), 30, "{kind}");
        // Of 60 recent records seen 1..=5 times, 12 of each: the 30 kept are the 12 seen
        // 5 times, the 12 seen 4 times, and 6 seen 3 times.
        let mut by_times = [0; 6];
        for (ih, r, m) in &left {
            assert!(r.last_seen == 1_000_000, "{kind}: {ih} is old");
            assert!(m.is_some(), "{kind}");
            by_times[r.times_seen as usize] += 1;
        }
        assert_eq!(by_times, [0, 0, 0, 6, 12, 12], "{kind}");
    }
    // The sled count persists.
    let s = CrawlStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(s.count(), 30);
}

/// `--max-records` on the binary: the crawl keeps its store near the cap while it runs
/// (pruning once it is a tenth over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_keeps_the_store_under_max_records() {
    let (net, _hashes) = populated_testnet(178, 30, 200).await;
    let url = pgtest::fresh_db("maxrec").await;
    let dir = tempfile::tempdir().unwrap();
    let status = tokio::task::spawn_blocking({
        let url = url.clone();
        let boot = net.addr(0).to_string();
        let data = dir.path().to_str().unwrap().to_string();
        move || {
            Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
                .args([
                    "--bind",
                    "127.179.0.1:0",
                    "--bootstrap",
                    &boot,
                    "--allow-net",
                    "127.0.0.0/8",
                    "--no-subnet-limit",
                    "--data-dir",
                    &data,
                    "--store",
                    &url,
                    "--flush-interval",
                    "1",
                    "--status-interval",
                    "0",
                    "--duration",
                    "5",
                    "--max-records",
                    "20",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(status.success());
    let c = pgtest::client(&url).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM crawl_torrents", &[])
        .await
        .unwrap()
        .get(0);
    let seen: i64 = c
        .query_one(
            "SELECT coalesce(sum(times_seen), 0)::bigint FROM crawl_torrents",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n > 0 && n <= 22, "{n} records with --max-records 20");
    assert!(seen >= n);
    net.shutdown().await;
}
