//! Peers over IPv6 (issue 13, the peer-wire part): `dht-seed` listens on an IPv6 test
//! address only, its magnet names it (`x.pe=[fd77::…]:port`), and `dht-get`, allowed to
//! reach `fd77::/16`, downloads the file over IPv6 TCP and, listening on an IPv6 address
//! itself, over IPv6 uTP. Without
//! `fd77::/16` in its allow-list the same download never connects: the list holds for
//! IPv6 too.
//!
//! The DHT stays IPv4 (127.174.0.x testnet); the IPv6 addresses are added to `lo` inside
//! the test's own network namespace (`tools/test.sh` runs every test in one), never routed
//! anywhere. Addresses: testnet 127.174.0.x, seeder 127.174.2.2 / `fd77::174:2`, downloader
//! 127.174.2.1 / `fd77::174:1`.

mod dl_support;

use std::process::Command;

use dl_support::{make_file, run_dht_get_with, same_file, start_seeder_with, testnet};

const SIZE: usize = 3 << 20;

/// Adds `addr`/128 to `lo` unless it is there already. Only possible as root of a network
/// namespace (`unshare -rn`, as `tools/test.sh` runs the tests); anywhere else the test
/// stops here with that explanation rather than touch a real interface.
fn ensure_ipv6_on_lo(addr: &str) {
    let has = |a: &str| {
        Command::new("ip")
            .args(["-6", "addr", "show", "dev", "lo"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{a}/128")))
    };
    if has(addr) {
        return;
    }
    let added = Command::new("ip")
        .args([
            "-6",
            "addr",
            "add",
            &format!("{addr}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added && has(addr),
        "cannot add {addr} to lo: run the tests in their own network namespace \
         (tools/test.sh, or unshare -rn sh -c 'ip link set lo up && cargo test ...')"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_from_an_ipv6_only_seeder_over_tcp_and_utp() {
    ensure_ipv6_on_lo("fd77::174:1");
    ensure_ipv6_on_lo("fd77::174:2");
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
        seeder.magnet.contains("x.pe=%5Bfd77::174:2%5D:"),
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
