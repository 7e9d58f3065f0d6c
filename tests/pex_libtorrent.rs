//! BEP 11 peer exchange with a real libtorrent (tools/lt_node.py), all on loopback:
//! - receiving: `dht-get` finds only libtorrent S1 in the DHT (S1 has the metadata and no
//!   data, in upload mode), learns through S1's `ut_pex` of libtorrent S2 (a seeder with no
//!   DHT, never announced anywhere), and downloads every byte from S2;
//! - sending: libtorrent L (no DHT, connected only to our `dht-seed` A) learns from A's
//!   `ut_pex` of our `dht-get` B (also downloading from A) and connects to it.
//!
//! libtorrent sends its first PEX message a few seconds after a connection, and at most one
//! a minute after that: every wait polls with a generous deadline.
//!
//! Addresses: testnet 127.185.0.x, libtorrent 127.185.1.x, ours 127.185.2.x.

mod common;
mod dl_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::lt::LtNode;
use dl_support::{make_file, run_dht_get, start_seeder_with, testnet};
use trackerless::sim::testnet::Testnet;
use trackerless::torrent::InfoHash;

const SIZE: usize = 4 << 20;

/// Polls `get_peers` on a testnet node until `want` is among the peers, or the deadline.
async fn dht_knows(net: &Testnet, ih: InfoHash, want: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (peers, _) = net.nodes[5].get_peers(ih).unwrap().collect().await;
        if peers.contains(&want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Whether libtorrent `lt` has a connected peer for `ih` whose address satisfies `pred`.
async fn lt_peer(lt: &mut LtNode, ih: &str, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    lt.peer_info(ih).await.iter().any(pred)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_from_a_seeder_known_only_by_pex() {
    let net = testnet(185, 8).await;
    // S2: the only copy of the data; no DHT, so it is in no node's peer store; no PEX, so
    // it never hears of us from S1 and connects to us (the connection must be ours).
    let mut s2 = LtNode::start_on_with(
        Ipv4Addr::new(127, 185, 1, 2),
        &["--no-dht", "--keep-redundant", "--no-pex"],
    )
    .await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("pex-only.bin");
    make_file(&file, SIZE, 61);
    let seeded = s2.seed(&file).await;
    let ih = seeded.info_hash.clone();
    let ih_id: InfoHash = ih.parse().unwrap();
    // S1: metadata, no data, never downloads; in the DHT; connected to S2. Both keep the
    // connection libtorrent would close as redundant (two upload-only ends).
    let mut s1 = LtNode::start_on_with(Ipv4Addr::new(127, 185, 1, 1), &["--keep-redundant"]).await;
    for i in 0..3 {
        s1.add_node(net.addr(i)).await;
    }
    assert!(s1.wait_dht_nodes(1, Duration::from_secs(20)).await >= 1);
    let empty = tempfile::tempdir().unwrap();
    s1.add_torrent_file_upload_mode(&seeded.torrent, empty.path())
        .await;
    s1.add_peer(&ih, SocketAddr::V4(s2.addr)).await;
    let s2_addr = SocketAddr::V4(s2.addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut linked = false;
    while !linked && Instant::now() < deadline {
        linked = lt_peer(&mut s1, &ih, |p| p["ip"] == s2_addr.to_string()).await;
        if !linked {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(
        linked,
        "S1 never connected to S2: {}",
        s1.diagnostics().await
    );
    s1.announce_torrent(&ih).await;
    assert!(
        dht_knows(
            &net,
            ih_id,
            SocketAddr::V4(s1.addr),
            Duration::from_secs(60)
        )
        .await,
        "S1's announce never reached the testnet"
    );

    // Without PEX dht-get would wait for peers forever: bounded, so the test fails instead.
    let run = tokio::time::timeout(
        Duration::from_secs(180),
        run_dht_get(&seeded.magnet, "127.185.2.1:0", &net.addr(6).to_string()),
    )
    .await
    .expect("dht-get did not finish: it never reached S2");
    assert!(
        run.status.success(),
        "dht-get failed: {}\nS1: {}\nS2: {}",
        run.text,
        s1.diagnostics().await,
        s2.diagnostics().await
    );
    assert_eq!(
        std::fs::read(run.out.path().join("pex-only.bin")).unwrap(),
        std::fs::read(&file).unwrap(),
        "bytes differ"
    );
    // Every byte came from S2 (S1 has none), which only PEX could name.
    let st1 = s1.torrent_status(&ih).await;
    assert_eq!(
        (
            st1["total_payload_download"].as_u64(),
            st1["total_payload_upload"].as_u64()
        ),
        (Some(0), Some(0)),
        "S1 moved data: {st1}"
    );
    let st = s2.torrent_status(&ih).await;
    assert!(
        st["total_payload_upload"].as_u64().unwrap_or(0) >= SIZE as u64,
        "S2 did not upload the file: {st}"
    );
    assert!(
        run.text
            .lines()
            .any(|l| l.starts_with("pex: messages in ") && !l.ends_with("peers learned 0")),
        "no PEX counted: {}",
        run.text
    );
    let (peers, _) = net.nodes[5].get_peers(ih_id).unwrap().collect().await;
    assert!(!peers.contains(&s2_addr), "S2 was in the DHT: {peers:?}");
    s1.quit().await;
    s2.quit().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_learns_our_downloader_from_our_seeders_pex() {
    let net = testnet(185, 8).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("pex-send.bin");
    make_file(&file, SIZE / 2, 62);
    let data = tempfile::tempdir().unwrap();
    // A: our seeder, slow (64 KiB/s) so both downloaders stay connected for a minute.
    let a = start_seeder_with(
        &net,
        &file,
        data.path(),
        "127.185.2.2",
        &["--upload-rate", "65536"],
    )
    .await;
    let ih = a.info_hash();
    // B: our downloader, finds A in the DHT.
    let magnet = a.magnet.clone();
    let bootstrap = net.addr(6).to_string();
    let b = tokio::spawn(async move { run_dht_get(&magnet, "127.185.2.3:0", &bootstrap).await });
    // A's status line counts B among its session's peers once the piece connection is up
    // (the metadata connection before it is not a session peer).
    let a_peers = |a: &dl_support::Seeder| -> u64 {
        let lines = a.lines.lock().unwrap();
        lines
            .iter()
            .rev()
            .find(|l| l.starts_with("seeding ") && l.contains(" peers "))
            .and_then(|l| l.split(" peers ").nth(1)?.split(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while a_peers(&a) < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a_peers(&a) >= 1,
        "B never connected to A: {:?}",
        a.lines.lock().unwrap()
    );
    // L: libtorrent without DHT, told only of A.
    let mut l = LtNode::start_on_with(Ipv4Addr::new(127, 185, 1, 3), &["--no-dht"]).await;
    let save = tempfile::tempdir().unwrap();
    l.add_magnet(&a.magnet, save.path()).await;
    let a_addr: SocketAddr = {
        let line = a.lines.lock().unwrap().first().cloned().unwrap_or_default();
        // "seeding NAME (...) on IP:PORT, DHT IP:PORT"
        let on = line.rsplit(" on ").next().unwrap_or_default();
        on.split(',').next().unwrap_or_default().parse().unwrap()
    };
    l.add_peer(&ih, a_addr).await;
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut learnt = false;
    while !learnt && Instant::now() < deadline {
        learnt = lt_peer(&mut l, &ih, |p| {
            p["ip"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("127.185.2.3:"))
                && p["pex"] == true
        })
        .await;
        if !learnt {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if !learnt {
        // A's status lines without the per-second progress ones.
        let said: Vec<String> = a
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.starts_with("seeding "))
            .cloned()
            .collect();
        panic!(
            "libtorrent never got B from A's PEX: {:?}\nA: {said:?}\n{}",
            l.peer_info(&ih).await,
            l.diagnostics().await
        );
    }
    // A prints its counters on its next one-second tick, which may come after L acted on
    // the message: wait for the line rather than read it once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.pex_counts().is_none_or(|c| c[1] < 1) {
        assert!(
            Instant::now() < deadline,
            "A counted no PEX message sent: {:?}",
            a.lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B finishes (from A, and maybe from L), so no dht-get outlives the test.
    let run = tokio::time::timeout(Duration::from_secs(300), b)
        .await
        .expect("B did not finish")
        .unwrap();
    assert!(run.status.success(), "B failed: {}", run.text);
    l.quit().await;
    drop(a);
    net.shutdown().await;
}
