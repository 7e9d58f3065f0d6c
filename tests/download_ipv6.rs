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

/// Every `x.pe` of a magnet (`%3A` or `:`), in order.
fn magnet_peers(magnet: &str) -> Vec<std::net::SocketAddr> {
    magnet
        .split('&')
        .filter_map(|p| p.strip_prefix("x.pe="))
        .map(|s| s.replace("%3A", ":").replace("%3a", ":"))
        .map(|s| s.parse().unwrap_or_else(|_| panic!("bad x.pe {s}")))
        .collect()
}

/// The magnet with its `x.pe` peers replaced by `peer` alone.
fn only_peer(magnet: &str, peer: std::net::SocketAddr) -> String {
    let mut m: Vec<String> = magnet
        .split('&')
        .filter(|p| !p.starts_with("x.pe="))
        .map(String::from)
        .collect();
    m.push(format!("x.pe={peer}"));
    m.join("&")
}

/// `--listen` defaults to beside every `--bind`: a seeder whose DHT runs both families
/// listens on both addresses, on one port (announces carry a port, not an address), names
/// both in its magnet, and serves a download over each family and each transport. The
/// downloader's bootstrap answers nobody, so the magnet's one `x.pe` is its only way in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_seeder_listens_on_both_families_by_default() {
    for a in ["fd77::176:1", "fd77::176:2"] {
        common::ensure_ipv6_on_lo(a);
    }
    let net = testnet(176, 4).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("dual.bin");
    make_file(&file, SIZE, 77);
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder_with(
        &net,
        &file,
        data.path(),
        "127.176.2.2",
        &["--bind", "[fd77::176:2]:0", "--allow-net", "fd77::/16"],
    )
    .await;
    let peers = magnet_peers(&seeder.magnet);
    assert_eq!(peers.len(), 2, "one x.pe per family: {}", seeder.magnet);
    assert_eq!(peers[0].ip().to_string(), "127.176.2.2");
    assert_eq!(peers[1].ip().to_string(), "fd77::176:2");
    assert_eq!(peers[0].port(), peers[1].port(), "one port for both");

    let mut runs = 0;
    for peer in &peers {
        for (transport, extra) in [("TCP", "--no-utp"), ("uTP", "--no-tcp")] {
            let listen = if peer.is_ipv4() {
                "127.176.2.1:0"
            } else {
                "[fd77::176:1]:0"
            };
            let run = run_dht_get_with(
                &only_peer(&seeder.magnet, *peer),
                "127.176.2.1:0",
                "127.176.9.9:1",
                &["--allow-net", "fd77::/16", "--listen", listen, extra],
            )
            .await;
            assert!(
                run.status.success(),
                "dht-get from {peer} over {transport} failed: {}",
                run.text
            );
            assert!(same_file(&file, &run.out.path().join("dual.bin")));
            runs += 1;
        }
    }
    // Each run was accepted by the seeder on the transport it was limited to.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let c = seeder.transport_counts().unwrap_or_default();
        if c[0] >= 2 && c[2] >= 2 || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        counts[0] >= 2 && counts[2] >= 2,
        "tcp in, utp in: {counts:?}"
    );
    assert_eq!(runs, 4);
    drop(seeder);
    net.shutdown().await;
}

/// With both families on wildcard addresses the default listener is one dual-stack `[::]`
/// socket per transport: an IPv4 peer reaches it (and is seen as IPv4, so the seeder's
/// IPv4 allow-list admits it) as does an IPv6 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_binds_listen_dual_stack_and_see_ipv4_peers_as_ipv4() {
    common::ensure_ipv6_on_lo("fd77::177:1");
    let net = testnet(177, 4).await;
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("wild.bin");
    make_file(&file, SIZE, 78);
    let data = tempfile::tempdir().unwrap();
    // The seeder's DHT on 0.0.0.0 and [::]; its allow-list is 127.0.0.0/8 and fd77::/16.
    let seeder = start_seeder_with(
        &net,
        &file,
        data.path(),
        "0.0.0.0",
        &["--bind", "[::]:0", "--allow-net", "fd77::/16"],
    )
    .await;
    assert!(magnet_peers(&seeder.magnet).is_empty(), "{}", seeder.magnet);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let l = seeder
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.starts_with("seeding "))
            .cloned();
        match l {
            Some(l) => break l,
            None if Instant::now() > deadline => panic!("no seeding line"),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let on = line
        .split(" on ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("{line}"));
    let listen: std::net::SocketAddr = on.parse().unwrap_or_else(|_| panic!("{line}"));
    assert!(listen.ip().is_unspecified() && listen.is_ipv6(), "{line}");
    // 127.0.0.1, not another 127/8 address: a wildcard UDP socket answers from the
    // route's preferred source (127.0.0.1 on lo), and a uTP peer only accepts replies
    // from the address it dialled (the same holds on any multi-homed host).
    for ip in ["127.0.0.1", "fd77::177:1"] {
        let peer = std::net::SocketAddr::new(ip.parse().unwrap(), listen.port());
        for extra in ["--no-utp", "--no-tcp"] {
            let run = run_dht_get_with(
                &only_peer(&seeder.magnet, peer),
                "127.177.2.1:0",
                "127.177.9.9:1",
                // Our own listener on both families (repeatable --listen), so our
                // uTP can dial either.
                &[
                    "--allow-net",
                    "fd77::/16",
                    "--listen",
                    "127.177.2.1:0",
                    "--listen",
                    "[fd77::177:1]:0",
                    extra,
                ],
            )
            .await;
            assert!(
                run.status.success(),
                "dht-get from {peer} ({extra}) failed: {}",
                run.text
            );
            assert!(same_file(&file, &run.out.path().join("wild.bin")));
        }
    }
    drop(seeder);
    net.shutdown().await;
}
