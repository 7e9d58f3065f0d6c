//! `trackerless::client::Client`'s refusals, on loopback: what a library user sees when a
//! magnet cannot be fetched or a torrent cannot be downloaded without trackers. (A full
//! magnet download through the client is the `download` example, run by examples_run.rs;
//! `dht-get` and `dht-seed`, built on the client, are tested in the download_* tests.)

use std::net::SocketAddr;
use std::time::Duration;

use trackerless::client::{AddOptions, Client, ClientConfig, ClientError, Target};
use trackerless::dht::driver::{Dht, DhtConfig};
use trackerless::dht::node::Config;
use trackerless::torrent::InfoHash;
use trackerless::torrent::magnet::Magnet;
use trackerless::torrent::metainfo::Metainfo;

async fn lonely_dht(ip: &str) -> trackerless::dht::driver::DhtHandle {
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    let cfg = DhtConfig {
        node: Config::loopback_testnet(),
        ..DhtConfig::new(addr)
    };
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    dht
}

/// No peer anywhere and an empty routing table: the fetch gives up at the timeout, and the
/// error says the DHT had no node (the likely reason), as `dht-get` prints it.
#[tokio::test]
async fn a_magnet_nobody_has_times_out_naming_the_empty_routing_table() {
    let dht = lonely_dht("127.67.0.1").await;
    let client = Client::start(
        dht.clone(),
        ClientConfig {
            metadata_timeout: Some(Duration::from_millis(500)),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(client.local_addr().ip(), dht.local_addr().ip());
    let magnet = Magnet::from_info_hash(InfoHash([0x42; 20]));
    let err = tokio::time::timeout(Duration::from_secs(30), client.fetch_metadata(&magnet))
        .await
        .expect("the fetch ends at its own timeout")
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Metadata { dht_nodes: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("the DHT routing table has 0 nodes"),
        "{err}"
    );
    dht.shutdown().await.unwrap();
}

/// BEP 27: a private torrent's peers come only from its trackers, so with no peer given
/// the client refuses it instead of waiting forever.
#[tokio::test]
async fn a_private_torrent_without_peers_is_refused() {
    let dht = lonely_dht("127.67.0.2").await;
    let client = Client::start(dht.clone(), ClientConfig::default())
        .await
        .unwrap();
    let mut info = b"d6:lengthi5e4:name1:f12:piece lengthi16384e6:pieces20:".to_vec();
    info.extend_from_slice(&[7; 20]);
    info.extend_from_slice(b"7:privatei1ee");
    let mut torrent = b"d4:info".to_vec();
    torrent.extend_from_slice(&info);
    torrent.push(b'e');
    let meta = Metainfo::from_bytes(&torrent).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = client
        .add(Target::Torrent(meta), out.path(), AddOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, ClientError::Private { name } if name == "f"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("private torrent (BEP 27)"),
        "{err}"
    );
    dht.shutdown().await.unwrap();
}
