//! uTP (BEP 29) interop with a real libtorrent (tools/lt_node.py), all on loopback:
//! - libtorrent with TCP disabled both ways downloads 64 MiB from `dht-seed` and seeds 64 MiB
//!   to `dht-get`: every byte crosses uTP, since libtorrent neither connects nor accepts TCP;
//! - libtorrent with default settings (uTP first) downloads from `dht-seed` over uTP, seen
//!   in the seeder's per-transport counters (before uTP it waited ~3.6 s for TCP fallback).
//!
//! Addresses: testnets 127.171-173.0.x, libtorrent 127.17x.1.x, ours 127.17x.2.x.

mod common;
mod dl_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::lt::LtNode;
use dl_support::{Seeder, make_file, run_dht_get, same_file, start_seeder, testnet};
use trackerless::torrent::InfoHash;

const SIZE: usize = 64 << 20;

/// libtorrent (`flags`) downloads 64 MiB from `dht-seed`; returns the seeder and the time.
async fn lt_downloads_from_seed(base: u8, flags: &[&str]) -> (Seeder, Duration) {
    let net = testnet(base, 8).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-us.bin");
    make_file(&file, SIZE, 52);
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder(&net, &file, data.path(), &format!("127.{base}.2.2")).await;
    let ih = seeder.info_hash();
    let mut lt = LtNode::joined(&net, Ipv4Addr::new(127, base, 1, 2), flags).await;
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
    let mut lt = LtNode::joined(&net, Ipv4Addr::new(127, 173, 1, 1), &["--no-tcp"]).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-libtorrent.bin");
    make_file(&file, SIZE, 51);
    let seeded = lt.seed(&file).await;
    let ih: InfoHash = seeded.info_hash.parse().unwrap();
    let mut found = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
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
