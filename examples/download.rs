//! Seed a file and download it from another peer, finding each other through the DHT.
//!
//! Everything runs on loopback (127.173.0.x, nothing leaves the machine): a small testnet of
//! DHT nodes; one of them seeds a generated 2 MiB file, another downloads it knowing only the
//! torrent's info dict. Neither side is told the other's address: each session announces
//! itself and looks up the others through its DHT node, as a trackerless torrent does.
//!
//! Run with `cargo run --example download`. To download from a magnet link, fetch the info
//! dict first (see the `fetch_metadata` example), then start a session as below.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::DhtHandle;
use trackerless::download::{Mode, Phase, Session, SessionConfig};
use trackerless::metadata::{MetadataRegistry, MetadataServer, ServeConfig};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::metainfo::create_info;

/// One BitTorrent peer: a TCP listener on the DHT node's IP (it answers metadata requests
/// and hands piece connections to the session) and a session for the torrent `info` with
/// its files under `root`.
struct Peer {
    server: MetadataServer,
    session: Session,
}

async fn start_peer(
    dht: &DhtHandle,
    info: &[u8],
    root: &Path,
    seed: bool,
) -> Result<Peer, Box<dyn std::error::Error>> {
    let peer_id = trackerless::torrent::PeerId::generate();
    let registry = Arc::new(MetadataRegistry::new());
    let server = MetadataServer::bind(
        SocketAddr::new(dht.local_addr().ip(), 0),
        registry.clone(),
        ServeConfig {
            peer_id,
            allow: AllowList::loopback(),
            dht: Some(dht.clone()),
            dht_port: Some(dht.local_addr().port()),
            ..ServeConfig::default()
        },
    )
    .await?;
    let config = SessionConfig {
        peer_id,
        allow: AllowList::loopback(),
        listen_port: Some(server.local_addr().port()),
        local_ip: Some(server.local_addr().ip()),
        dht: Some(dht.clone()),
        dht_port: Some(dht.local_addr().port()),
        // A seeder that just hashed its files knows they are complete; a downloader stops
        // once it has every piece.
        seed,
        assume_complete: seed,
        ..SessionConfig::default()
    };
    let mode = if seed {
        Mode::ReadOnly
    } else {
        Mode::ReadWrite
    };
    let session = Session::start(Bytes::copy_from_slice(info), root, mode, config)?;
    // Incoming connections for this info hash go to the session.
    let info_hash = registry.insert(info.to_vec());
    registry.attach(info_hash, session.handoff());
    Ok(Peer { server, session })
}

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

    let seeder = start_peer(&net.nodes[1], &info, src.path(), true).await?;
    println!(
        "seeding {} ({} bytes, {} pieces) on {}",
        parsed.name,
        parsed.total_length(),
        parsed.num_pieces(),
        seeder.server.local_addr()
    );

    let out = tempfile::tempdir()?;
    let downloader = start_peer(&net.nodes[6], &info, out.path(), false).await?;
    let phase =
        tokio::time::timeout(Duration::from_secs(120), downloader.session.wait_complete()).await;
    let progress = downloader.session.progress();
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

    downloader.session.stop().await?;
    seeder.session.stop().await?;
    net.shutdown().await;
    Ok(())
}
