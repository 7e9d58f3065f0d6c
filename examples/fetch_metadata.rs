//! Fetch a torrent's metadata (its info dict) knowing only its info hash, as a magnet link
//! does: the DHT finds the peers, BEP 9 fetches the dict from them, and the dict is trusted
//! only once it hashes to the info hash.
//!
//! Everything runs on loopback (127.172.0.x, nothing leaves the machine): a small testnet of
//! DHT nodes; one of them "seeds" a generated torrent by serving its metadata over TCP and
//! announcing it; another looks the info hash up and fetches the metadata from whoever the
//! lookup finds.
//!
//! Run with `cargo run --example fetch_metadata`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use trackerless::dht::allow::AllowList;
use trackerless::metadata::{
    FetchConfig, MetadataRegistry, MetadataServer, PeerSource, ServeConfig, fetch_metadata,
};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::metainfo::{Info, create_info};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = Testnet::start(
        12,
        TestnetConfig {
            subnet: 172,
            ..Default::default()
        },
    )
    .await?;
    net.wait_for_tables(5, Duration::from_secs(30)).await;

    // A torrent to share: a directory of two small files, hashed into an info dict.
    let dir = tempfile::tempdir()?;
    let content = dir.path().join("example torrent");
    std::fs::create_dir(&content)?;
    std::fs::write(content.join("hello.txt"), b"hello, trackerless\n")?;
    std::fs::write(content.join("zeros.bin"), vec![0u8; 100_000])?;
    let (info, _) = create_info(&content, None, |_| {})?;

    // The seeding side: node 2 of the testnet serves the metadata on TCP, on its own IP,
    // and announces that port in the DHT.
    let seeder = &net.nodes[2];
    let registry = Arc::new(MetadataRegistry::new());
    let info_hash = registry.insert(info);
    let server = MetadataServer::bind(
        SocketAddr::new(seeder.local_addr().ip(), 0),
        registry,
        ServeConfig {
            allow: AllowList::loopback(),
            ..ServeConfig::default()
        },
    )
    .await?;
    let (_, announced) = seeder
        .announce(info_hash, Some(server.local_addr().port()))?
        .collect()
        .await;
    println!(
        "serving {} on {} (announced to {} nodes)",
        info_hash,
        server.local_addr(),
        announced.announced
    );

    // The fetching side: node 9 knows nothing but the info hash.
    let lookup = net.nodes[9].get_peers(info_hash)?;
    let config = FetchConfig {
        allow: AllowList::loopback(),
        timeout: Some(Duration::from_secs(60)),
        ..FetchConfig::default()
    };
    let fetched = fetch_metadata(info_hash, PeerSource::new([]).with_dht(lookup), &config)
        .await
        .map_err(|e| format!("no metadata: {}", e.stats().summary()))?;
    let parsed = Info::from_bytes(&fetched.info)?;
    println!("fetched the metadata of {info_hash}:");
    println!("  name: {}", parsed.name);
    println!("  files: {}", parsed.files.len());
    println!("  total size: {} bytes", parsed.total_length());
    println!("  {}", fetched.stats.summary());

    drop(server);
    net.shutdown().await;
    Ok(())
}
