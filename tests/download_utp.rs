//! uTP (BEP 29) interop with a real libtorrent (tools/lt_node.py), all on loopback:
//! - libtorrent with TCP disabled both ways downloads 64 MiB from `dht-seed` and seeds 64 MiB
//!   to `dht-get`: every byte crosses uTP, since libtorrent neither connects nor accepts TCP;
//! - libtorrent with default settings (uTP first) downloads from `dht-seed` over uTP, seen
//!   in the seeder's per-transport counters (before uTP it waited ~3.6 s for TCP fallback).
//!
//! Addresses: testnets 127.171-173.0.x, libtorrent 127.17x.1.x, ours 127.17x.2.x.

mod common;
mod dl_support;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lt::LtNode;
use dl_support::{make_file, run_dht_get, testnet};
use trackerless::dht::id::NodeId;
use trackerless::sim::testnet::Testnet;

const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");
const SIZE: usize = 64 << 20;

/// A libtorrent session on `ip` (with lt_node.py `flags`) that knows a few testnet nodes.
async fn lt_in(net: &Testnet, ip: Ipv4Addr, flags: &[&str]) -> LtNode {
    let mut lt = LtNode::start_on_with(ip, flags).await;
    for i in 0..3 {
        lt.add_node(net.addr(i)).await;
    }
    let n = lt.wait_dht_nodes(1, Duration::from_secs(20)).await;
    assert!(n >= 1, "libtorrent's DHT table stayed empty");
    lt
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(x), Ok(y)) = (std::fs::read(a), std::fs::read(b)) else {
        return false;
    };
    x == y
}

/// A running `dht-seed` and every stdout line it printed so far.
struct Seeder {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    magnet: String,
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_seeder(net: &Testnet, file: &Path, data: &Path, ip: &str) -> Seeder {
    let mut child = Command::new(SEED)
        .arg(file)
        .args([
            "--bind",
            &format!("{ip}:0"),
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let magnet = tokio::task::spawn_blocking(move || {
        let mut it = BufReader::new(stdout).lines();
        let first = it.next().and_then(Result::ok).unwrap_or_default();
        // Keep draining (and recording) so the seeder never blocks on a full pipe.
        std::thread::spawn(move || {
            for l in it.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        first
    })
    .await
    .unwrap();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
    Seeder {
        child,
        lines,
        magnet,
    }
}

impl Seeder {
    fn info_hash(&self) -> String {
        self.magnet["magnet:?xt=urn:btih:".len()..][..40].to_string()
    }

    /// The last "peer connections: tcp in A out B, utp in C out D" line, as [A, B, C, D].
    fn transport_counts(&self) -> Option<[u64; 4]> {
        let lines = self.lines.lock().unwrap();
        let l = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("peer connections: "))?;
        let nums: Vec<u64> = l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        nums.try_into().ok()
    }
}

/// libtorrent (`flags`) downloads 64 MiB from `dht-seed`; returns the seeder and the time.
async fn lt_downloads_from_seed(base: u8, flags: &[&str]) -> (Seeder, Duration) {
    let net = testnet(base, 8).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-us.bin");
    make_file(&file, SIZE, 52);
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder(&net, &file, data.path(), &format!("127.{base}.2.2")).await;
    let ih = seeder.info_hash();
    let mut lt = lt_in(&net, Ipv4Addr::new(127, base, 1, 2), flags).await;
    let save = tempfile::tempdir().unwrap();
    let t = Instant::now();
    lt.add_magnet(&seeder.magnet, save.path()).await;
    let done = lt.wait_finished(&ih, Duration::from_secs(180)).await;
    let took = t.elapsed();
    if !done {
        let said = seeder.lines.lock().unwrap().clone();
        panic!(
            "libtorrent did not finish: {}\nseeder: {said:?}\n{}",
            lt.torrent_status(&ih).await,
            lt.diagnostics().await
        );
    }
    // `finished` can come before libtorrent's disk writes are visible: poll for the bytes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !same_file(&file, &save.path().join("from-us.bin")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        same_file(&file, &save.path().join("from-us.bin")),
        "bytes differ"
    );
    // The counters line is printed on the seeder's next 1 s tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seeder.transport_counts().is_none_or(|c| c[2] == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lt.quit().await;
    net.shutdown().await;
    (seeder, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utp_only_libtorrent_downloads_from_dht_seed() {
    let (seeder, took) = lt_downloads_from_seed(171, &["--no-tcp"]).await;
    println!("libtorrent (uTP only) took {took:?}");
    let c = seeder.transport_counts();
    assert!(
        c.is_some_and(|c| c[2] >= 1),
        "no incoming uTP connection counted: {:?}",
        seeder.lines.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_libtorrent_reaches_dht_seed_over_utp() {
    let (seeder, took) = lt_downloads_from_seed(172, &[]).await;
    println!("libtorrent (default settings) took {took:?}");
    let c = seeder.transport_counts();
    assert!(
        c.is_some_and(|c| c[2] >= 1),
        "libtorrent did not reach us over uTP: {:?}",
        seeder.lines.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_from_a_utp_only_libtorrent() {
    let net = testnet(173, 8).await;
    let mut lt = lt_in(&net, Ipv4Addr::new(127, 173, 1, 1), &["--no-tcp"]).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-libtorrent.bin");
    make_file(&file, SIZE, 51);
    let seeded = lt.seed(&file).await;
    let ih: NodeId = seeded.info_hash.parse().unwrap();
    let mut found = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (peers, _) = net.nodes[5].get_peers(ih).unwrap().collect().await;
        if peers.contains(&lt.addr) {
            found = true;
            break;
        }
        lt.command(&format!("dht_announce_torrent {}", seeded.info_hash))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(found, "libtorrent's announce never reached our testnet");

    let run = run_dht_get(&seeded.magnet, "127.173.2.1:0", &net.addr(6).to_string()).await;
    let (out, text) = (&run.out, &run.text);
    if !run.status.success() {
        panic!("dht-get failed: {text}\n{}", lt.diagnostics().await);
    }
    println!("dht-get (from a uTP-only libtorrent) took {:?}", run.took);
    assert!(text.contains("complete: 64.0 MiB verified"), "{text}");
    assert!(
        same_file(&file, &out.path().join("from-libtorrent.bin")),
        "bytes differ"
    );
    lt.quit().await;
    net.shutdown().await;
}
