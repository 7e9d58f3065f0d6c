//! Find the peers of an info hash through the DHT.
//!
//! Starts a small testnet of DHT nodes on loopback (127.171.0.x, nothing leaves the machine),
//! announces an info hash from one node as if it seeded the torrent on TCP port 4000, then
//! looks the info hash up from another node and prints the peers it finds.
//!
//! Run with `cargo run --example find_peers`. On the real network you would start one
//! [`Dht`](trackerless::dht::driver::Dht) with the default bootstrap routers instead of a
//! testnet; the lookup code is the same.

use std::net::SocketAddrV4;
use std::time::Duration;

use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 20 nodes, each bootstrapping from a few earlier ones; every node only talks to
    // 127.0.0.0/8.
    let net = Testnet::start(
        20,
        TestnetConfig {
            subnet: 171,
            ..Default::default()
        },
    )
    .await?;
    // Lookups need routing tables: wait until every node knows a few others.
    let smallest = net.wait_for_tables(5, Duration::from_secs(30)).await;
    println!(
        "testnet of {} nodes up (smallest table: {smallest})",
        net.nodes.len()
    );

    // Any 20 bytes work as an info hash; a real one is the SHA-1 of a torrent's info dict.
    let info_hash: InfoHash = "0123456789abcdef0123456789abcdef01234567".parse()?;
    let seeder = 3;
    let (_, announced) = net.nodes[seeder]
        .announce(info_hash, Some(4000))?
        .collect()
        .await;
    println!(
        "node {seeder} announced {info_hash} to {} nodes",
        announced.announced
    );

    let expected = SocketAddrV4::new(*net.addr(seeder).ip(), 4000);
    let searcher = 17;
    let mut peers = net.nodes[searcher].get_peers(info_hash)?;
    let mut found = false;
    while let Some(peer) = peers.next().await {
        println!("node {searcher} found peer {peer}");
        found |= peer == std::net::SocketAddr::from(expected);
    }
    net.shutdown().await;
    if !found {
        return Err(format!("the lookup ended without finding {expected}").into());
    }
    println!("found the announced peer {expected}");
    Ok(())
}
