//! Seed a file and download it from another peer with [`trackerless::client::Client`],
//! knowing only its magnet link: the downloader finds the seeder through the DHT, fetches
//! the metadata from it (BEP 9) and then every piece, SHA-1 verified.
//!
//! Everything runs on loopback (127.173.0.x, nothing leaves the machine): a small testnet of
//! DHT nodes, one client seeding a generated 2 MiB file, another downloading it. Neither is
//! told the other's address: the seeder announces itself and the downloader looks it up,
//! as a trackerless torrent does.
//!
//! Run with `cargo run --example download`.

use std::time::Duration;

use trackerless::client::{AddOptions, Client, ClientConfig, Target};
use trackerless::download::Phase;
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::magnet::Magnet;
use trackerless::torrent::metainfo::create_info;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = Testnet::start(
        8,
        TestnetConfig {
            subnet: 173,
            ..Default::default()
        },
    )
    .await?;
    net.wait_for_tables(4, Duration::from_secs(30)).await;

    // The file to share: 2 MiB of varied bytes, hashed into an info dict.
    let src = tempfile::tempdir()?;
    let file = src.path().join("example.bin");
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i * 7 + i / 4093) as u8).collect();
    std::fs::write(&file, &data)?;
    let (info, parsed) = create_info(&file, None, |_| {})?;

    // ClientConfig::default() only talks to loopback peers; widen `allow` for real use.
    let seeder = Client::start(net.nodes[1].clone(), ClientConfig::default()).await?;
    let seeding = seeder.seed(info.into(), src.path()).await?;
    let magnet = Magnet::from_info_hash(seeding.info_hash()).to_uri();
    println!(
        "seeding {} ({} bytes, {} pieces) on {}: {magnet}",
        parsed.name,
        parsed.total_length(),
        parsed.num_pieces(),
        seeder.local_addr()
    );

    let out = tempfile::tempdir()?;
    let downloader = Client::start(net.nodes[6].clone(), ClientConfig::default()).await?;
    let torrent = downloader
        .add(Target::parse(&magnet)?, out.path(), AddOptions::default())
        .await?;
    let phase = tokio::time::timeout(Duration::from_secs(120), torrent.wait_complete()).await;
    let progress = torrent.progress();
    match phase {
        Ok(Phase::Stopped(Ok(()))) | Ok(Phase::Seeding) => {}
        Ok(other) => return Err(format!("download ended {other:?}: {progress:?}").into()),
        Err(_) => return Err(format!("download not complete after 120 s: {progress:?}").into()),
    }
    let got = std::fs::read(out.path().join("example.bin"))?;
    if got != data {
        return Err("the downloaded file differs from the seeded one".into());
    }
    println!(
        "downloaded {} bytes: identical to the seeded file",
        progress.downloaded
    );

    torrent.stop().await?;
    seeding.stop().await?;
    net.shutdown().await;
    Ok(())
}
