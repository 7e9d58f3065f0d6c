//! Crawl a DHT for the info hashes its nodes store (BEP 51 `sample_infohashes`), for a
//! bounded time, and print what was found.
//!
//! Everything runs on loopback (127.174.x.y, nothing leaves the machine): a testnet of 30
//! DHT nodes where 100 info hashes are announced, then a crawler node that walks the
//! testnet politely (a global query rate, each node sampled at most once per the interval it
//! advertises) and records every info hash it sees in its store.
//!
//! Run with `cargo run --example crawl_testnet -- --seconds 60` (60 s is the default; the
//! tests use a few seconds).

use std::collections::HashSet;
use std::time::Duration;

use trackerless::crawl::{self, CrawlConfig, CrawlStore, StoreConfig, WalkConfig};
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::{Dht, DhtConfig};
use trackerless::dht::node::Config;
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;

/// `--seconds N` (default 60): how long the crawl runs.
fn seconds_arg() -> Result<f64, String> {
    let mut args = std::env::args().skip(1);
    let mut seconds = 60.0;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                let v = args.next().ok_or("--seconds needs a value")?;
                seconds = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0 && *s <= 86_400.0)
                    .ok_or_else(|| format!("--seconds {v}: expected 0 < N <= 86400"))?;
            }
            other => return Err(format!("unknown argument {other:?} (usage: --seconds N)")),
        }
    }
    Ok(seconds)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = seconds_arg()?;
    let net = Testnet::start(
        30,
        TestnetConfig {
            subnet: 174,
            ..Default::default()
        },
    )
    .await?;
    net.wait_for_tables(5, Duration::from_secs(30)).await;

    // Something to find: 100 info hashes, each announced by one testnet node.
    let mut announced = HashSet::new();
    for i in 0..100u32 {
        let mut hash = [0x74; 20];
        hash[..4].copy_from_slice(&i.to_be_bytes());
        hash[4] = (i.wrapping_mul(97)) as u8;
        let ih = InfoHash(hash);
        net.nodes[i as usize % net.nodes.len()]
            .announce(ih, Some(6000))?
            .collect()
            .await;
        announced.insert(ih);
    }
    println!(
        "testnet of {} nodes holds {} announced info hashes; crawling for {seconds} s",
        net.nodes.len(),
        announced.len()
    );

    // The crawler's own node. `incoming` lets the crawler also record the info hashes that
    // other nodes' get_peers and announce_peer queries mention (passive discovery).
    let (incoming_tx, incoming_rx) = tokio::sync::mpsc::channel(1024);
    let mut dht_config = DhtConfig::new("127.174.200.1:0".parse()?);
    dht_config.node = Config::loopback_testnet();
    dht_config.bootstrap = vec![net.addr(0).to_string()];
    dht_config.incoming = Some(incoming_tx);
    let (dht, driver) = Dht::bind(dht_config).await?;
    tokio::spawn(driver);

    let dir = tempfile::tempdir()?;
    let store = CrawlStore::open(&dir.path().join("crawl"), StoreConfig::default())?;
    let (new_tx, mut new_rx) = tokio::sync::mpsc::unbounded_channel();
    let report = crawl::run(
        dht.clone(),
        Some(incoming_rx),
        store,
        CrawlConfig {
            walk: WalkConfig {
                rate: 200.0,
                allow: AllowList::loopback(),
                ..Default::default()
            },
            flush_interval: Duration::from_millis(200),
            status_interval: Duration::from_secs(5),
            duration: Some(Duration::from_secs_f64(seconds)),
            new_infohashes: Some(new_tx),
            on_status: Some(Box::new(|s| println!("status: {s}"))),
            ..Default::default()
        },
        std::future::pending(),
    )
    .await?;
    dht.shutdown().await?;

    let mut found = HashSet::new();
    while let Ok(ih) = new_rx.try_recv() {
        found.insert(ih);
    }
    for ih in found.iter().take(5) {
        println!("found {ih}");
    }
    let of_ours = found.intersection(&announced).count();
    println!("final: {}", report.status);
    println!(
        "found {} info hashes ({of_ours} of the {} announced); {} BEP 51 replies",
        found.len(),
        announced.len(),
        report.walk.bep51_replies
    );
    net.shutdown().await;
    if of_ours == 0 {
        return Err("the crawl found none of the announced info hashes".into());
    }
    Ok(())
}
