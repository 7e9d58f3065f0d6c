//! BEP 5 trackerless `.torrent` files carry `nodes`, DHT contacts to join through:
//! `dht-seed --torrent-out` writes its own DHT address and contacts from its table there,
//! and `dht-get FILE.torrent` bootstraps from them. Here the downloader's `--bootstrap`
//! points at an address where nothing listens, and the torrent has no `x.pe`-like peer
//! list, so the torrent's `nodes` are its only way into the DHT and to the seeder.
//!
//! Addresses: testnet 127.153.0.x, seeder 127.153.2.1, downloader 127.153.2.2.

mod dl_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use dl_support::{make_file, testnet};
use trackerless::torrent::metainfo::Metainfo;

const GET: &str = env!("CARGO_BIN_EXE_dht-get");
const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_joins_the_dht_through_the_torrents_nodes() {
    let net = testnet(153, 6).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("nodes.bin");
    make_file(&file, 3 << 20, 61);
    let torrent = content.path().join("nodes.torrent");
    let seed_data = tempfile::tempdir().unwrap();
    let mut seeder = Command::new(SEED)
        .arg(&file)
        .args([
            "--torrent-out",
            torrent.to_str().unwrap(),
            "--bind",
            "127.153.2.1:0",
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            seed_data.path().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = seeder.stdout.take().unwrap();
    let magnet = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        first
    })
    .await
    .unwrap();
    assert!(magnet.starts_with("magnet:"), "{magnet}");

    // The torrent names the seeder's own DHT node first, then testnet contacts.
    let meta = Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    assert!(
        meta.nodes.first().is_some_and(|(h, _)| h == "127.153.2.1"),
        "{:?}",
        meta.nodes
    );
    assert!(
        meta.nodes.iter().any(|(h, _)| h.starts_with("127.153.0.")),
        "no contact from the table: {:?}",
        meta.nodes
    );
    assert!(meta.nodes.len() <= 9);

    // Keep only the testnet contacts, so the join cannot go through the seeder's own node
    // and the peer must be found by a real lookup.
    let mut meta = meta;
    meta.nodes.retain(|(h, _)| h.starts_with("127.153.0."));
    std::fs::write(&torrent, meta.to_bytes()).unwrap();

    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        torrent.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--bind",
        "127.153.2.2:0",
        "--bootstrap",
        "127.153.9.9:6881",
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Without the fix dht-get would search forever: bound it (coreutils `timeout`).
    let o = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("120")
            .arg(GET)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = seeder.kill();
    let _ = seeder.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "dht-get failed: {text}");
    assert_eq!(
        std::fs::read(out.path().join("nodes.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    net.shutdown().await;
}
