//! Peers over IPv6 (issue 13, the peer-wire part): `dht-seed` listens on an IPv6 test
//! address only, its magnet names it (`x.pe=[fd77::…]:port`), and `dht-get`, allowed to
//! reach `fd77::/16`, downloads the file over IPv6 TCP and, listening on an IPv6 address
//! itself, over IPv6 uTP. Without
//! `fd77::/16` in its allow-list the same download never connects: the list holds for
//! IPv6 too.
//!
//! With a real libtorrent (python libtorrent 2.x, `tools/lt_node.py --listen6`), a 32 MiB
//! magnet goes both ways over IPv6 only: libtorrent fetches it from an IPv6-only
//! `dht-seed` (its DHT off, so the magnet's `x.pe` is its only way in), and `dht-get`
//! fetches one from libtorrent given only its IPv6 address.
//!
//! The DHT stays IPv4 (127.174-175.0.x testnets); the IPv6 addresses are added to `lo` inside
//! the test's own network namespace (`tools/test.sh` runs every test in one), never routed
//! anywhere. Addresses: testnets 127.174.0.x and 127.175.0.x; ours 127.174.2.x /
//! `fd77::174:x` and 127.175.2.x / `fd77::175:2-3`; libtorrent 127.175.1.1 / `fd77::175:1`.

mod common;
mod dl_support;

use common::lt::LtNode;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trackerless::torrent::InfoHash;

use dl_support::{make_file, run_dht_get_with, same_file, start_seeder_with, testnet};

const SIZE: usize = 3 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_from_an_ipv6_only_seeder_over_tcp_and_utp() {
    common::ensure_ipv6_on_lo("fd77::174:1");
    common::ensure_ipv6_on_lo("fd77::174:2");
    let net = testnet(174, 8).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("over-v6.bin");
    make_file(&file, SIZE, 74);
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder_with(
        &net,
        &file,
        data.path(),
        "127.174.2.2",
        &["--listen", "[fd77::174:2]:0", "--allow-net", "fd77::/16"],
    )
    .await;
    assert!(
        seeder.magnet.contains("x.pe=[fd77::174:2]:"),
        "the magnet names the IPv6 listener: {}",
        seeder.magnet
    );

    // TCP from the downloader's default listener (IPv4, so the kernel picks the IPv6
    // source); uTP from a listener on an IPv6 address, whose UDP socket the uTP
    // connections leave from.
    for (transport, extra) in [
        ("TCP", &["--no-utp"][..]),
        ("uTP", &["--no-tcp", "--listen", "[fd77::174:1]:0"][..]),
    ] {
        let mut flags = vec!["--allow-net", "fd77::/16"];
        flags.extend_from_slice(extra);
        let run = run_dht_get_with(
            &seeder.magnet,
            "127.174.2.1:0",
            &net.addr(3).to_string(),
            &flags,
        )
        .await;
        assert!(
            run.status.success(),
            "dht-get over IPv6 {transport} failed: {}",
            run.text
        );
        assert!(
            same_file(&file, &run.out.path().join("over-v6.bin")),
            "IPv6 {transport}: bytes differ"
        );
        println!("IPv6 {transport}: {:?}", run.took);
    }

    // The same magnet without fd77::/16 allowed: the only peer is out of bounds, so the
    // metadata never comes (the DHT's IPv4 entry for the seeder has nobody listening).
    let run = run_dht_get_with(
        &seeder.magnet,
        "127.174.2.1:0",
        &net.addr(3).to_string(),
        &["--timeout", "3"],
    )
    .await;
    assert!(!run.status.success(), "{}", run.text);
    assert!(!run.out.path().join("over-v6.bin").exists());
    drop(seeder);
    net.shutdown().await;
}

const LT_SIZE: usize = 32 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_and_we_trade_a_magnet_both_ways_over_ipv6_only() {
    for a in ["fd77::175:1", "fd77::175:2", "fd77::175:3"] {
        common::ensure_ipv6_on_lo(a);
    }
    let net = testnet(175, 8).await;
    let mut lt = LtNode::start_on_with(
        Ipv4Addr::new(127, 175, 1, 1),
        &["--listen6", "fd77::175:1", "--no-dht"],
    )
    .await;

    // libtorrent ← dht-seed, over IPv6 only: our seeder listens on an IPv6 address alone,
    // and libtorrent has no DHT, so the magnet's x.pe is all it has.
    let content = tempfile::tempdir().unwrap();
    let ours = content.path().join("to-libtorrent.bin");
    make_file(&ours, LT_SIZE, 75);
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder_with(
        &net,
        &ours,
        data.path(),
        "127.175.2.2",
        &["--listen", "[fd77::175:2]:0", "--allow-net", "fd77::/16"],
    )
    .await;
    let ih = seeder.magnet["magnet:?xt=urn:btih:".len()..][..40].to_string();
    assert!(ih.parse::<InfoHash>().is_ok(), "{}", seeder.magnet);
    let save = tempfile::tempdir().unwrap();
    let t = Instant::now();
    lt.add_magnet(&seeder.magnet, save.path()).await;
    if !lt.wait_finished(&ih, Duration::from_secs(120)).await {
        panic!(
            "libtorrent did not finish over IPv6: {}\n{}",
            lt.torrent_status(&ih).await,
            lt.diagnostics().await
        );
    }
    let got = save.path().join("to-libtorrent.bin");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !same_file(&ours, &got) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(same_file(&ours, &got), "libtorrent: bytes differ");
    println!("libtorrent <- dht-seed over IPv6: {:?}", t.elapsed());
    drop(seeder);

    // dht-get ← libtorrent, over IPv6 only: the magnet names libtorrent's IPv6 address and
    // nothing else (libtorrent has no DHT to be found through).
    let theirs = content.path().join("from-libtorrent.bin");
    make_file(&theirs, LT_SIZE, 76);
    let seeded = lt.seed(&theirs).await;
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&x.pe=[fd77::175:1]:{}",
        seeded.info_hash,
        lt.addr.port()
    );
    let run = run_dht_get_with(
        &magnet,
        "127.175.2.3:0",
        &net.addr(3).to_string(),
        &["--allow-net", "fd77::/16", "--listen", "[fd77::175:3]:0"],
    )
    .await;
    if !run.status.success() {
        panic!(
            "dht-get over IPv6 from libtorrent failed: {}\n{}",
            run.text,
            lt.diagnostics().await
        );
    }
    assert!(
        same_file(&theirs, &run.out.path().join("from-libtorrent.bin")),
        "dht-get: bytes differ"
    );
    println!("dht-get <- libtorrent over IPv6: {:?}", run.took);
    lt.quit().await;
    net.shutdown().await;
}
