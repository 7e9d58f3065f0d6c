//! Interop with a real libtorrent session (tools/lt_node.py), all on loopback:
//! - libtorrent seeds and announces into a testnet of our nodes; `dht-get --metadata-only`
//!   finds it through the DHT and writes a .torrent with the right info hash (single-file and
//!   a 2,000-file torrent whose info dict spans several 16 KiB pieces);
//! - libtorrent resolves magnets from *our* serving side, once found through the DHT and once
//!   given our address in the magnet (`x.pe`);
//! - our fetcher, offered a lying peer of ours first and the libtorrent seeder next, drops
//!   the liar and still gets the metadata.
//!
//! Addresses: 127.83.x.y.

mod common;
mod meta_support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::lt::LtNode;
use meta_support::{FakePeer, Lie, Seeder, info_hash, synthetic_info};
use trackerless::dht::allow::AllowList;
use trackerless::metadata::{FetchConfig, Misbehavior, PeerSource, fetch_metadata};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;
use trackerless::torrent::metainfo::Metainfo;
use trackerless::wire::num_metadata_pieces;

const BIN: &str = env!("CARGO_BIN_EXE_dht-get");

fn v4(c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 83, c, d), port)
}

async fn testnet() -> Testnet {
    let net = Testnet::start(
        10,
        TestnetConfig {
            subnet: 83,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(net.wait_for_tables(5, Duration::from_secs(20)).await >= 5);
    net
}

/// A libtorrent session that knows some testnet nodes.
async fn lt_in(net: &Testnet, bind: SocketAddrV4) -> LtNode {
    let mut lt = LtNode::start(bind).await;
    for i in 0..3 {
        let a = net.addr(i);
        lt.add_node(a).await;
    }
    let n = lt.wait_dht_nodes(1, Duration::from_secs(20)).await;
    assert!(n >= 1, "libtorrent's DHT table stayed empty");
    lt
}

/// Waits until our DHT returns `peer` for `ih`, asking libtorrent to re-announce meanwhile.
async fn wait_announced(net: &Testnet, lt: &mut LtNode, ih: &str, peer: SocketAddrV4) {
    let id: InfoHash = ih.parse().unwrap();
    for _ in 0..30 {
        let (peers, _) = net.nodes[4].get_peers(id).unwrap().collect().await;
        if peers.contains(&std::net::SocketAddr::from(peer)) {
            return;
        }
        lt.command(&format!("dht_announce_torrent {ih}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("libtorrent's announce of {ih} never reached our testnet");
}

fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{:02}", i / 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i:05}.txt")),
            format!("file {i} {}", "x".repeat(i % 50)),
        )
        .unwrap();
    }
}

async fn dht_get(net: &Testnet, target: &str, bind: &str, out: &Path) -> (bool, String) {
    let args: Vec<String> = [
        target,
        "--metadata-only",
        "--bind",
        bind,
        "--bootstrap",
        &net.addr(6).to_string(),
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--data-dir",
        out.join("state").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--timeout",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_fetches_metadata_from_a_libtorrent_seeder() {
    let net = testnet().await;
    let lt_addr = v4(50, 1, 28001);
    let mut lt = lt_in(&net, lt_addr).await;
    let content = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();

    // A single file, then a 2,000-file tree (a multi-piece info dict).
    let single = content.path().join("hello.txt");
    std::fs::write(&single, b"hello from libtorrent\n".repeat(1000)).unwrap();
    let tree = content.path().join("lt-multi");
    make_tree(&tree, 2000);
    for (i, path) in [single, tree].iter().enumerate() {
        let r = lt.seed(path).await;
        let (ih, name) = (r.info_hash, r.name);
        let lt_torrent = std::fs::read(&r.torrent).unwrap();
        let lt_meta = Metainfo::from_bytes(&lt_torrent).unwrap();
        wait_announced(&net, &mut lt, &ih, lt_addr).await;

        let (ok, text) = dht_get(
            &net,
            &r.magnet,
            &format!("127.83.60.{}:0", i + 1),
            out.path(),
        )
        .await;
        assert!(ok, "{text}");
        let written = std::fs::read(out.path().join(format!("{name}.torrent"))).unwrap();
        let meta = Metainfo::from_bytes(&written).unwrap();
        assert_eq!(meta.info_hash.to_hex(), ih);
        assert_eq!(meta.info_bytes, lt_meta.info_bytes);
        assert!(
            text.contains(&format!("files: {}", lt_meta.info.files.len())),
            "{text}"
        );
        assert!(
            text.contains(&lt_addr.to_string()),
            "fetched from libtorrent: {text}"
        );
        if i == 1 {
            assert!(meta.info_bytes.len() > 16 * 1024, "multi-piece dict");
            assert_eq!(meta.info.files.len(), 2000);
        }
    }
    lt.quit().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_resolves_magnets_from_our_serving_side() {
    let net = testnet().await;
    let via_dht = synthetic_info("served-by-us-dht", 2000, 71);
    let via_xpe = synthetic_info("served-by-us-xpe", 1500, 72);
    let seeder = Seeder::start(
        Ipv4Addr::new(127, 83, 100, 1),
        vec![net.addr(1).to_string()],
        std::slice::from_ref(&via_dht),
    )
    .await;
    seeder.server.registry().insert(via_xpe.clone());
    let mut lt = lt_in(&net, v4(51, 1, 28002)).await;
    let save = tempfile::tempdir().unwrap();

    // Through the DHT only.
    let ih = info_hash(&via_dht).to_hex();
    lt.add_magnet(&format!("magnet:?xt=urn:btih:{ih}"), save.path())
        .await;
    let ev = lt
        .wait_event("metadata", Duration::from_secs(60), |e| {
            e["info_hash"] == ih.as_str()
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "libtorrent never got the metadata: {:?}",
                seeder.server.stats()
            )
        });
    assert_eq!(ev["name"], "served-by-us-dht");
    let st = lt.torrent_status(&ih).await;
    assert_eq!(st["has_metadata"], true);
    let served = seeder.server.stats();
    assert!(served.data_sent >= 4, "{served:?}");

    // Given our address in the magnet.
    let ih = info_hash(&via_xpe).to_hex();
    let srv = seeder.server.local_addr();
    lt.add_magnet(&format!("magnet:?xt=urn:btih:{ih}&x.pe={srv}"), save.path())
        .await;
    let ev = lt
        .wait_event("metadata", Duration::from_secs(60), |e| {
            e["info_hash"] == ih.as_str()
        })
        .await
        .expect("libtorrent never got the x.pe metadata");
    assert_eq!(ev["name"], "served-by-us-xpe");
    // libtorrent sets the DHT bit and sent us its PORT.
    assert!(seeder.server.stats().ports_received >= 1);
    lt.quit().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liar_next_to_libtorrent_is_dropped() {
    let lt_addr = v4(52, 1, 28003);
    let mut lt = LtNode::start(lt_addr).await;
    let content = tempfile::tempdir().unwrap();
    let tree = content.path().join("lt-liar");
    make_tree(&tree, 1200);
    let r = lt.seed(&tree).await;
    let ih: InfoHash = r.info_hash.parse().unwrap();
    let lt_meta = Metainfo::from_bytes(&std::fs::read(&r.torrent).unwrap()).unwrap();
    let liar = FakePeer::start(
        SocketAddr::V4(v4(52, 2, 0)),
        lt_meta.info_bytes.clone(),
        Lie::CorruptNth(1),
        None,
    )
    .await;
    // The liar first; libtorrent only once the liar has answered a request for every
    // piece (its lie included), an event rather than a guessed delay.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(liar.addr).unwrap();
    let pieces = num_metadata_pieces(lt_meta.info_bytes.len() as u64) as u64;
    let requests = liar.requests.clone();
    let feeder = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while requests.load(std::sync::atomic::Ordering::Relaxed) < pieces
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(SocketAddr::V4(lt_addr)).unwrap();
        // Keep the channel open: a closed one would end the fetch's peer source.
        std::future::pending::<()>().await;
    });
    let cfg = FetchConfig {
        allow: AllowList::loopback(),
        timeout: Some(Duration::from_secs(30)),
        ..FetchConfig::default()
    };
    let got = fetch_metadata(ih, PeerSource::new([]).with_channel(rx), &cfg)
        .await
        .unwrap();
    feeder.abort();
    assert_eq!(&got.info[..], &lt_meta.info_bytes[..]);
    let dropped: Vec<_> = got.stats.dropped().collect();
    assert_eq!(
        dropped,
        [(liar.addr, &Misbehavior::HashMismatch)],
        "{:?}",
        got.stats
    );
    assert_eq!(
        got.stats.suppliers().collect::<Vec<_>>(),
        [SocketAddr::V4(lt_addr)]
    );
    lt.quit().await;
}
