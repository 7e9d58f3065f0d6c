//! Interop with a real libtorrent (tools/lt_node.py), all on loopback, 64 MiB each way:
//! - libtorrent seeds a file into a testnet of our nodes; `dht-get` downloads it via the
//!   magnet link (peers from the DHT, metadata over BEP 9, pieces over BEP 3) and the bytes
//!   match;
//! - `dht-seed` shares a file; libtorrent downloads it via the printed magnet link and the
//!   bytes match.
//!
//! Addresses: testnet 127.144.0.x, libtorrent 127.144.1.x, ours 127.144.2.x.

mod common;
mod dl_support;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lt::LtNode;
use dl_support::{make_file, run_dht_get, same_file, testnet};
use trackerless::torrent::InfoHash;

const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");
const SIZE: usize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_from_a_libtorrent_seeder() {
    let net = testnet(144, 8).await;
    let mut lt = LtNode::joined(&net, Ipv4Addr::new(127, 144, 1, 1), &[]).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-libtorrent.bin");
    make_file(&file, SIZE, 41);
    let seeded = lt.seed(&file).await;
    // Wait until libtorrent's announce is in our DHT, re-announcing meanwhile.
    let ih: InfoHash = seeded.info_hash.parse().unwrap();
    let mut found = false;
    for _ in 0..40 {
        let (peers, _) = net.nodes[5].get_peers(ih).unwrap().collect().await;
        if peers.contains(&std::net::SocketAddr::from(lt.addr)) {
            found = true;
            break;
        }
        lt.command(&format!("dht_announce_torrent {}", seeded.info_hash))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(found, "libtorrent's announce never reached our testnet");

    let run = run_dht_get(&seeded.magnet, "127.144.2.1:0", &net.addr(6).to_string()).await;
    let (out, text) = (&run.out, &run.text);
    if !run.status.success() {
        panic!("dht-get failed: {text}\n{}", lt.diagnostics().await);
    }
    println!("dht-get took {:?}", run.took);
    assert!(text.contains("complete: 64.0 MiB verified"), "{text}");
    assert!(
        same_file(&file, &out.path().join("from-libtorrent.bin")),
        "bytes differ"
    );
    let st = lt.torrent_status(&seeded.info_hash).await;
    assert!(
        st["total_payload_upload"].as_u64().unwrap_or(0) >= SIZE as u64,
        "libtorrent uploaded it: {st}"
    );
    lt.quit().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_downloads_from_dht_seed() {
    let net = testnet(144, 8).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-us.bin");
    make_file(&file, SIZE, 42);
    let data = tempfile::tempdir().unwrap();
    let mut seeder = Command::new(SEED)
        .arg(&file)
        .args([
            "--bind",
            "127.144.2.2:0",
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = seeder.stdout.take().unwrap();
    let magnet = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        // Keep draining so the seeder never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        first
    })
    .await
    .unwrap();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
    let ih = magnet["magnet:?xt=urn:btih:".len()..][..40].to_string();

    let mut lt = LtNode::joined(&net, Ipv4Addr::new(127, 144, 1, 2), &[]).await;
    let save = tempfile::tempdir().unwrap();
    let t = Instant::now();
    lt.add_magnet(&magnet, save.path()).await;
    let done = lt.wait_finished(&ih, Duration::from_secs(120)).await;
    let _ = seeder.kill();
    let _ = seeder.wait();
    if !done {
        panic!(
            "libtorrent did not finish: {}\n{}",
            lt.torrent_status(&ih).await,
            lt.diagnostics().await
        );
    }
    println!("libtorrent took {:?}", t.elapsed());
    // libtorrent reports `finished` once every piece verified, which can be before its
    // disk writes are visible in the file: poll for the bytes (seen once under load).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !same_file(&file, &save.path().join("from-us.bin")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        same_file(&file, &save.path().join("from-us.bin")),
        "bytes differ"
    );
    let st = lt.torrent_status(&ih).await;
    assert_eq!(st["is_seeding"], true, "{st}");
    lt.quit().await;
    net.shutdown().await;
}
