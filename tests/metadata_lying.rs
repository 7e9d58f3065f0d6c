//! Lying peers next to honest ones: corrupted blocks (whole copy, one piece, one piece while
//! blocks are spread), a wrong `total_size`, absurd and wrong `metadata_size`, short blocks,
//! malformed messages. Each time the fetch must succeed from the honest peer and report the
//! liar as dropped with the right reason. Addresses: 127.81.x.y.

mod meta_support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use meta_support::{FakePeer, Lie, info_hash, synthetic_info};
use trackerless::dht::allow::AllowList;
use trackerless::metadata::{
    BlockError, FetchConfig, FetchError, Fetched, MetadataRegistry, MetadataServer, Misbehavior,
    PeerOutcome, PeerSource, ServeConfig, fetch_metadata,
};
use trackerless::wire::MAX_METADATA_SIZE;

fn addr(c: u8, d: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 81, c, d), 0))
}

fn cfg() -> FetchConfig {
    FetchConfig {
        allow: AllowList::loopback(),
        timeout: Some(Duration::from_secs(20)),
        ..FetchConfig::default()
    }
}

async fn honest_server(bind: SocketAddr, info: &[u8]) -> MetadataServer {
    let registry = Arc::new(MetadataRegistry::new());
    registry.insert(info.to_vec());
    MetadataServer::bind(
        bind,
        registry,
        ServeConfig {
            allow: AllowList::loopback(),
            ..ServeConfig::default()
        },
    )
    .await
    .unwrap()
}

/// Fetches with the liar offered first (so it is connected first and gets the requests),
/// then the honest server; checks the result and returns the liar's drop reason.
async fn liar_then_honest(c: u8, lie: Lie, files: usize, cfg: &FetchConfig) -> Misbehavior {
    let info = synthetic_info(&format!("lie-{c}"), files, u64::from(c));
    let liar = FakePeer::start(addr(c, 1), info.clone(), lie, None).await;
    let honest = honest_server(addr(c, 2), &info).await;
    let got: Fetched = fetch_metadata(
        info_hash(&info),
        PeerSource::new([liar.addr, honest.local_addr()]),
        cfg,
    )
    .await
    .unwrap_or_else(|e| panic!("{lie:?}: {e}"));
    assert_eq!(&got.info[..], &info[..], "{lie:?}");
    assert!(
        got.stats.suppliers().any(|a| a == honest.local_addr()),
        "{lie:?}: {:?}",
        got.stats
    );
    let dropped: Vec<_> = got.stats.dropped().collect();
    assert_eq!(dropped.len(), 1, "{lie:?}: {:?}", got.stats);
    assert_eq!(dropped[0].0, liar.addr, "{lie:?}");
    assert!(
        !got.stats.suppliers().any(|a| a == liar.addr),
        "a liar is never credited: {:?}",
        got.stats
    );
    dropped[0].1.clone()
}

#[tokio::test]
async fn corrupted_copy_is_caught_and_its_peer_dropped() {
    let why = liar_then_honest(1, Lie::CorruptAll, 2000, &cfg()).await;
    assert_eq!(why, Misbehavior::HashMismatch);
    // A single corrupted piece in an otherwise correct copy: same verdict.
    let why = liar_then_honest(2, Lie::CorruptPiece(2), 2000, &cfg()).await;
    assert_eq!(why, Misbehavior::HashMismatch);
    // Single-piece dict.
    let why = liar_then_honest(3, Lie::CorruptAll, 10, &cfg()).await;
    assert_eq!(why, Misbehavior::HashMismatch);
}

#[tokio::test]
async fn liar_among_spread_blocks_is_identified() {
    // One request in flight per peer: the pieces are spread between liar and honest peer,
    // so the first assembly mixes their blocks and fails; the provenance pins the liar. The
    // liar corrupts the n-th block it sends, so its lie is always in the mix.
    let cfg = FetchConfig {
        max_window: 1,
        ..cfg()
    };
    for n in 0..2 {
        let info = synthetic_info("spread-lie", 2500, 30 + u64::from(n));
        let liar = FakePeer::start(
            addr(10 + n as u8, 1),
            info.clone(),
            Lie::CorruptNth(n),
            None,
        )
        .await;
        let honest = honest_server(addr(10 + n as u8, 2), &info).await;
        let got = fetch_metadata(
            info_hash(&info),
            PeerSource::new([liar.addr, honest.local_addr()]),
            &cfg,
        )
        .await
        .unwrap();
        assert_eq!(&got.info[..], &info[..]);
        let dropped: Vec<_> = got.stats.dropped().collect();
        assert_eq!(
            dropped,
            [(liar.addr, &Misbehavior::HashMismatch)],
            "{:?}",
            got.stats
        );
        assert!(got.stats.hash_failures >= 1, "{:?}", got.stats);
        assert!(got.stats.suppliers().all(|a| a == honest.local_addr()));
    }
}

#[tokio::test]
async fn wrong_total_size_is_dropped() {
    let why = liar_then_honest(20, Lie::WrongTotalSize, 2000, &cfg()).await;
    assert!(
        matches!(why, Misbehavior::WrongTotalSize { advertised, got } if got == advertised + 1),
        "{why:?}"
    );
}

#[tokio::test]
async fn absurd_metadata_sizes_are_dropped_before_any_request() {
    for (c, size) in [(21, MAX_METADATA_SIZE + 1), (22, 1 << 40), (23, 0)] {
        let info = synthetic_info("absurd", 50, 7);
        let liar = FakePeer::start(addr(c, 1), info.clone(), Lie::AdvertiseSize(size), None).await;
        let honest = honest_server(addr(c, 2), &info).await;
        let got = fetch_metadata(
            info_hash(&info),
            PeerSource::new([liar.addr, honest.local_addr()]),
            &cfg(),
        )
        .await
        .unwrap();
        assert_eq!(&got.info[..], &info[..]);
        let dropped: Vec<_> = got.stats.dropped().collect();
        assert_eq!(
            dropped,
            [(liar.addr, &Misbehavior::AbsurdMetadataSize(size))],
            "{:?}",
            got.stats
        );
        assert_eq!(
            liar.requests.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "nothing is requested from a peer with an absurd size"
        );
    }
}

#[tokio::test]
async fn plausible_but_wrong_metadata_size_is_dropped() {
    // The liar claims one more block than there is and serves a zero-padded dict; its size
    // group can never verify, and it is dropped either for its failing copy or, if the honest
    // group verifies first, for advertising the wrong size.
    let info = synthetic_info("padded", 2000, 8);
    let real = info.len() as u64;
    let why = liar_then_honest(24, Lie::AdvertiseSize(real + 16384), 2000, &cfg()).await;
    assert!(
        why == Misbehavior::HashMismatch
            || why
                == (Misbehavior::WrongMetadataSize {
                    advertised: real + 16384,
                    actual: real
                }),
        "{why:?}"
    );
}

#[tokio::test]
async fn short_blocks_and_malformed_messages_are_dropped() {
    let why = liar_then_honest(25, Lie::ShortBlock, 2000, &cfg()).await;
    assert!(
        matches!(why, Misbehavior::BadBlock(BlockError::BadLength { expected, got, .. }) if got + 1 == expected),
        "{why:?}"
    );
    let why = liar_then_honest(26, Lie::Malformed, 2000, &cfg()).await;
    assert_eq!(why, Misbehavior::Malformed);
    // A data flood hides the real blocks among unrequested ones; the liar's first two
    // blocks may even be correct, but it is dropped before it finishes.
    let cfg = FetchConfig {
        max_window: 1,
        ..cfg()
    };
    let why = liar_then_honest(29, Lie::Flood, 3000, &cfg).await;
    assert_eq!(why, Misbehavior::Unrequested);
}

#[tokio::test]
async fn a_silent_peer_is_outwaited() {
    let cfg = FetchConfig {
        request_timeout: Duration::from_millis(500),
        steal_after: Duration::from_millis(100),
        ..cfg()
    };
    let info = synthetic_info("silent", 2000, 9);
    let liar = FakePeer::start(addr(27, 1), info.clone(), Lie::Silent, None).await;
    let honest = honest_server(addr(27, 2), &info).await;
    let got = fetch_metadata(
        info_hash(&info),
        PeerSource::new([liar.addr, honest.local_addr()]),
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(&got.info[..], &info[..]);
    // Slow is not lying: the silent peer is not dropped as a liar.
    assert_eq!(got.stats.dropped().count(), 0, "{:?}", got.stats);
}

#[tokio::test]
async fn only_liars_means_failure_with_reasons() {
    let info = synthetic_info("all-liars", 2000, 10);
    let a = FakePeer::start(addr(28, 1), info.clone(), Lie::CorruptAll, None).await;
    let b = FakePeer::start(addr(28, 2), info.clone(), Lie::WrongTotalSize, None).await;
    let err = fetch_metadata(info_hash(&info), PeerSource::new([a.addr, b.addr]), &cfg())
        .await
        .unwrap_err();
    let FetchError::Exhausted(stats) = &err else {
        panic!("{err}")
    };
    assert_eq!(stats.dropped().count(), 2, "{stats:?}");
    assert!(
        stats
            .peers
            .iter()
            .all(|p| matches!(p.outcome, PeerOutcome::Dropped(_)))
    );
    let msg = err.to_string();
    assert!(msg.contains("found 2 peers, tried 2"), "{msg}");
    assert!(msg.contains("2 dropped"), "{msg}");
    assert!(msg.contains("hash check"), "{msg}");
}
