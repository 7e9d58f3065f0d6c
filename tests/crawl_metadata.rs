//! `dht-crawl --metadata`: the crawler finds infohashes our seeders announced, fetches their
//! metadata over BEP 9, stores name/size/files, and writes .torrent files.

mod meta_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use meta_support::{Seeder, info_hash, synthetic_info};
use trackerless::crawl::{CrawlStore, StoreConfig};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::metainfo::Metainfo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_fetches_metadata_of_what_it_finds() {
    let net = Testnet::start(
        20,
        TestnetConfig {
            subnet: 117,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(8, Duration::from_secs(30)).await;
    let infos: Vec<Vec<u8>> = (0..3)
        .map(|i| synthetic_info(&format!("crawled-{i}"), 1 + i * 3, i as u64))
        .collect();
    let _seeder = Seeder::start(
        [127, 117, 50, 1].into(),
        vec![net.addr(0).to_string()],
        &infos,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let torrents = dir.path().join("torrents");
    let status = Command::new(env!("CARGO_BIN_EXE_dht-crawl"))
        .args([
            "--bind",
            "127.117.60.1:0",
            "--bootstrap",
            &net.addr(0).to_string(),
        ])
        .args([
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
        ])
        .arg(dir.path())
        .args([
            "--duration",
            "15",
            "--flush-interval",
            "1",
            "--status-interval",
            "0",
        ])
        .args(["--metadata", "--metadata-workers", "4", "--torrent-dir"])
        .arg(&torrents)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default()).unwrap();
    for (i, info) in infos.iter().enumerate() {
        let ih = info_hash(info);
        let meta = store
            .metadata(&ih)
            .unwrap_or_else(|| panic!("no metadata stored for torrent {i} ({ih})"));
        assert_eq!(meta.name, format!("crawled-{i}"));
        let file = torrents.join(format!("{ih}.torrent"));
        let written = Metainfo::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(written.info_hash, ih);
    }
    net.shutdown().await;
}
