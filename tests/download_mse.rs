//! MSE/PE (BitTorrent protocol encryption) on real connections, against a real libtorrent
//! (tools/lt_node.py) set to encryption "required" (`out_enc_policy`/`in_enc_policy`
//! forced, `allowed_enc_level` RC4) and to "disabled", and between our own binaries:
//! - libtorrent with encryption forced downloads a magnet from `dht-seed` (default policy:
//!   it accepts encrypted connections, uTP or TCP), metadata and pieces;
//! - `dht-get` downloads from a libtorrent seeder with encryption forced, with the default
//!   policy (plain first, then encrypted once the peer hangs up) and with `--encryption
//!   require`;
//! - `dht-get --encryption require` against a libtorrent that only speaks plain fails with
//!   a message saying so, and a non-zero exit;
//! - `dht-seed --encryption require` and `dht-get --encryption require` move a file over
//!   RC4, and the seeder counts its connections as RC4, none plain.
//!
//! Addresses: testnet 127.187.0.x, libtorrent 127.187.1.x, ours 127.187.2.x.

mod common;
mod dl_support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::lt::LtNode;
use dl_support::{last_counts, make_file, run_dht_get_with, same_file, start_seeder_with, testnet};
use trackerless::sim::testnet::Testnet;
use trackerless::torrent::InfoHash;
use trackerless::wire::enc_policy::ENCRYPTION_REQUIRED_MSG;

const SIZE: usize = 16 << 20;

/// libtorrent seeds `file`; returns once its announce is findable in the testnet.
async fn lt_seeding(net: &Testnet, lt: &mut LtNode, file: &Path) -> common::lt::Seeded {
    let seeded = lt.seed(file).await;
    let ih: InfoHash = seeded.info_hash.parse().unwrap();
    for _ in 0..60 {
        let (peers, _) = net.nodes[5].get_peers(ih).unwrap().collect().await;
        if peers.contains(&std::net::SocketAddr::from(lt.addr)) {
            return seeded;
        }
        lt.command(&format!("dht_announce_torrent {}", seeded.info_hash))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("libtorrent's announce never reached our testnet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_with_encryption_forced_downloads_from_dht_seed() {
    let net = testnet(187, 8).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("to-forced.bin");
    make_file(&file, SIZE, 61);
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder_with(&net, &file, data.path(), "127.187.2.1", &[]).await;
    let ih = seeder.info_hash();
    let mut lt = LtNode::joined(
        &net,
        Ipv4Addr::new(127, 187, 1, 1),
        &["--encryption", "forced"],
    )
    .await;
    let save = tempfile::tempdir().unwrap();
    lt.add_magnet(&seeder.magnet, save.path()).await;
    if !lt.wait_finished(&ih, Duration::from_secs(120)).await {
        panic!(
            "libtorrent (encryption forced) did not finish: {}\n{}",
            lt.torrent_status(&ih).await,
            lt.diagnostics().await
        );
    }
    let got = save.path().join("to-forced.bin");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !same_file(&file, &got) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(same_file(&file, &got), "bytes differ");
    // libtorrent only speaks RC4 here: every connection that carried data was encrypted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let counts = loop {
        if let Some(c) = seeder.crypto_counts()
            && c[2] + c[5] >= 1
        {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no RC4 connection counted: {:?}",
            seeder.crypto_counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        counts[0] + counts[3],
        0,
        "a plain connection to a forced peer: {counts:?}"
    );
    lt.quit().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_from_a_libtorrent_seeder_with_encryption_forced() {
    let net = testnet(187, 8).await;
    let mut lt = LtNode::joined(
        &net,
        Ipv4Addr::new(127, 187, 1, 2),
        &["--encryption", "forced"],
    )
    .await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-forced.bin");
    make_file(&file, SIZE, 62);
    let seeded = lt_seeding(&net, &mut lt, &file).await;
    // The default policy (plain first, encrypted once refused) and `require` (RC4 only).
    for (k, extra) in [&[][..], &["--encryption", "require"][..]]
        .iter()
        .enumerate()
    {
        let run = run_dht_get_with(
            &seeded.magnet,
            &format!("127.187.2.{}:0", 2 + k),
            &net.addr(6).to_string(),
            extra,
        )
        .await;
        if !run.status.success() {
            panic!(
                "dht-get {extra:?} failed: {}\n{}",
                run.text,
                lt.diagnostics().await
            );
        }
        assert!(
            same_file(&file, &run.out.path().join("from-forced.bin")),
            "dht-get {extra:?}: bytes differ"
        );
        let lines: Vec<&str> = run.text.lines().collect();
        let c: [u64; 9] = last_counts(&lines, "peer encryption: ")
            .unwrap_or_else(|| panic!("no counts: {}", run.text));
        assert!(c[2] >= 1, "no outgoing RC4 connection: {c:?}");
        assert_eq!(c[0] + c[1], 0, "a plain connection to a forced peer: {c:?}");
        if extra.is_empty() {
            // Plain first, refused, then encrypted: the default policy's one fallback.
            assert!(c[8] >= 1, "no fallback counted: {c:?}");
        } else {
            assert_eq!(c[8], 0, "require starts encrypted: {c:?}");
        }
    }
    lt.quit().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_plain_only_peer_fails_with_a_clear_message() {
    let net = testnet(187, 8).await;
    let mut lt = LtNode::joined(
        &net,
        Ipv4Addr::new(127, 187, 1, 3),
        &["--encryption", "disabled"],
    )
    .await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("plain-only.bin");
    make_file(&file, 1 << 20, 63);
    let seeded = lt_seeding(&net, &mut lt, &file).await;
    let run = run_dht_get_with(
        &seeded.magnet,
        "127.187.2.4:0",
        &net.addr(6).to_string(),
        &["--encryption", "require", "--timeout", "15"],
    )
    .await;
    assert!(!run.status.success(), "dht-get succeeded: {}", run.text);
    assert!(run.text.contains(ENCRYPTION_REQUIRED_MSG), "{}", run.text);
    lt.quit().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_seeder_and_downloader_both_requiring_encryption_move_a_file_over_rc4() {
    let net = testnet(187, 8).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("rc4-both.bin");
    make_file(&file, SIZE, 64);
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder_with(
        &net,
        &file,
        data.path(),
        "127.187.2.5",
        &["--encryption", "require"],
    )
    .await;
    let run = run_dht_get_with(
        &seeder.magnet,
        "127.187.2.6:0",
        &net.addr(6).to_string(),
        &["--encryption", "require"],
    )
    .await;
    assert!(run.status.success(), "dht-get failed: {}", run.text);
    assert!(
        same_file(&file, &run.out.path().join("rc4-both.bin")),
        "bytes differ"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let counts = loop {
        if let Some(c) = seeder.crypto_counts()
            && c[5] >= 1
        {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no incoming RC4 connection counted: {:?}",
            seeder.crypto_counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        counts[3] + counts[4],
        0,
        "plain or MSE-plaintext accepted: {counts:?}"
    );
    net.shutdown().await;
}
