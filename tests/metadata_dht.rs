//! End to end through a loopback testnet of our DHT nodes: our seeder (serving side +
//! announce) and the `dht-get --metadata-only` binary as a subprocess, first bootstrapping
//! from a router, then again from nothing but its persisted routing table. Also the
//! binary's failure modes. Addresses: 127.82.x.y.

mod meta_support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use meta_support::{Seeder, info_hash, synthetic_info};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::metainfo::Metainfo;

const BIN: &str = env!("CARGO_BIN_EXE_dht-get");

/// Runs dht-get off the async runtime (the testnet must keep answering meanwhile).
async fn dht_get(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap()
}

fn args(target: &str, bind: &str, bootstrap: &str, data: &Path, out: &Path) -> Vec<String> {
    [
        target,
        "--metadata-only",
        "--bind",
        bind,
        "--bootstrap",
        bootstrap,
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--timeout",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_fetches_metadata_through_the_dht() {
    let net = Testnet::start(
        16,
        TestnetConfig {
            subnet: 82,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(net.wait_for_tables(5, Duration::from_secs(20)).await >= 5);
    let info = synthetic_info("dht e2e: 2000 files", 2000, 42);
    let ih = info_hash(&info);
    let seeder = Seeder::start(
        Ipv4Addr::new(127, 82, 100, 1),
        vec![net.addr(0).to_string()],
        std::slice::from_ref(&info),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    let out = dir.path().join("out");
    let magnet = format!("magnet:?xt=urn:btih:{ih}&dn=ignored");
    let run = dht_get(args(
        &magnet,
        "127.82.200.1:0",
        &net.addr(3).to_string(),
        &data,
        &out,
    ))
    .await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("name: dht e2e: 2000 files"), "{stdout}");
    assert!(stdout.contains("files: 2000"), "{stdout}");
    assert!(stdout.contains("piece length: 16384 bytes"), "{stdout}");
    assert!(stdout.contains("total size: "), "{stdout}");
    let file = out.join("dht e2e_ 2000 files.torrent");
    let meta = Metainfo::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(meta.info_hash, ih);
    assert_eq!(meta.info_bytes, info);
    assert!(meta.announce.is_none() && meta.announce_list.is_empty());
    assert!(seeder.server.stats().data_sent >= 4);
    // dht-get sent its PORT, which made the seeder's node ping it.
    assert_eq!(seeder.server.stats().ports_received, 1);

    // Second run: the only router given is dead, so the lookup works only through the
    // routing table persisted by the first run.
    std::fs::remove_file(&file).unwrap();
    let run = dht_get(args(
        &ih.to_hex(),
        "127.82.200.2:0",
        "127.82.250.250:9",
        &data,
        &out,
    ))
    .await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let meta = Metainfo::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(meta.info_hash, ih);

    // An info hash nobody has: non-zero exit, saying how many peers were found and tried.
    let missing = hex::encode([0x42; 20]);
    let mut a = args(
        &missing,
        "127.82.200.3:0",
        &net.addr(5).to_string(),
        &data,
        &out,
    );
    let last = a.len() - 1;
    a[last] = "1.5".into();
    let run = dht_get(a).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("found 0 peers, tried 0"), "{stderr}");
    assert!(stderr.contains("no verified metadata after"), "{stderr}");

    net.shutdown().await;
}

#[test]
fn bad_invocations_fail_with_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = [
        "--bind",
        "127.82.201.1:0",
        "--bootstrap",
        "127.82.250.250:9",
        "--allow-net",
        "127.0.0.0/8",
        "--data-dir",
        d,
        "--out",
        d,
    ];
    let run = |extra: &[&str]| {
        let out = Command::new(BIN).args(extra).args(base).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["magnet:?xt=urn:btih:nothex", "--metadata-only"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
    // Download mode (no --metadata-only) with nobody to ask: the metadata wait times out
    // with the same one-line explanation and a non-zero exit.
    let (code, err) = run(&[&hex::encode([1u8; 20]), "--timeout", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no verified metadata after"), "{err}");
    let (code, _) = run(&[
        &hex::encode([1u8; 20]),
        "--metadata-only",
        "--timeout",
        "-1",
    ]);
    assert_eq!(code, Some(2), "clap usage error");
}
