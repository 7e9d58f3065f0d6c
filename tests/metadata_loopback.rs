//! Our fetcher against our serving side over loopback TCP, no DHT: a multi-piece info dict
//! (2,000 files, > 16 KiB), blocks spread over several servers, a server that does not have
//! the torrent, hostile input to the server, and PORT messages in both directions.
//! Addresses: 127.80.x.y.

mod meta_support;
mod wait_support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use meta_support::{Lie, synthetic_info};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::{Dht, DhtConfig};
use trackerless::dht::node;
use trackerless::metadata::{
    FetchConfig, FetchError, MetadataRegistry, MetadataServer, PeerOutcome, PeerSource,
    ServeConfig, fetch_metadata,
};
use trackerless::torrent::InfoHash;
use trackerless::torrent::metainfo::Info;
use trackerless::wire::{
    ExtHandshake, Handshake, Message, MetadataMsg, OUR_UT_METADATA_ID, PeerConn, UT_METADATA,
    WireConfig, handshake_outgoing, num_metadata_pieces,
};
use wait_support::{GENEROUS, wait_until};

fn addr(c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 80, c, d), port))
}

fn loopback_config() -> FetchConfig {
    FetchConfig {
        allow: AllowList::loopback(),
        timeout: Some(Duration::from_secs(20)),
        retry_delay: Duration::from_millis(100),
        ..FetchConfig::default()
    }
}

fn serve_config() -> ServeConfig {
    ServeConfig {
        allow: AllowList::loopback(),
        ..ServeConfig::default()
    }
}

async fn server(bind: SocketAddr, infos: &[&[u8]]) -> MetadataServer {
    let registry = Arc::new(MetadataRegistry::new());
    for info in infos {
        registry.insert(info.to_vec());
    }
    MetadataServer::bind(bind, registry, serve_config())
        .await
        .unwrap()
}

#[tokio::test]
async fn fetches_a_multi_piece_dict_from_our_server() {
    let info = synthetic_info("two-thousand", 2000, 1);
    assert!(info.len() > 3 * 16384, "dict is {} bytes", info.len());
    let parsed = Info::from_bytes(&info).unwrap();
    assert_eq!(parsed.files.len(), 2000);
    let ih = meta_support::info_hash(&info);
    let srv = server(addr(1, 1, 0), &[&info]).await;

    let got = fetch_metadata(ih, PeerSource::new([srv.local_addr()]), &loopback_config())
        .await
        .unwrap();
    assert_eq!(&got.info[..], &info[..]);
    assert_eq!(
        got.stats.suppliers().collect::<Vec<_>>(),
        [srv.local_addr()]
    );
    assert_eq!(got.stats.dropped().count(), 0);
    assert_eq!(
        (got.stats.found, got.stats.tried, got.stats.connected),
        (1, 1, 1)
    );
    assert_eq!(
        got.stats.peers[0].blocks,
        num_metadata_pieces(info.len() as u64)
    );
    let s = srv.stats();
    assert_eq!(s.handshakes, 1);
    assert_eq!(
        s.data_sent,
        u64::from(num_metadata_pieces(info.len() as u64))
    );
}

#[tokio::test]
async fn spreads_blocks_over_several_servers() {
    let info = synthetic_info("spread", 3000, 2);
    let pieces = num_metadata_pieces(info.len() as u64);
    assert!(pieces >= 5);
    let ih = meta_support::info_hash(&info);
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(server(addr(2, i + 1, 0), &[&info]).await);
    }
    // One request in flight per peer forces the pieces to be spread.
    let cfg = FetchConfig {
        max_window: 1,
        ..loopback_config()
    };
    let got = fetch_metadata(
        ih,
        PeerSource::new(servers.iter().map(|s| s.local_addr())),
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(&got.info[..], &info[..]);
    let suppliers: Vec<_> = got.stats.suppliers().collect();
    assert!(suppliers.len() >= 2, "{:?}", got.stats);
    let served: u64 = servers.iter().map(|s| s.stats().data_sent).sum();
    assert!(served >= u64::from(pieces), "{served}");
    assert_eq!(got.stats.hash_failures, 0);
}

#[tokio::test]
async fn a_server_without_the_torrent_is_not_usable() {
    let info = synthetic_info("known", 10, 3);
    let other = synthetic_info("unknown", 10, 4);
    let srv = server(addr(3, 1, 0), &[&info]).await;
    let err = fetch_metadata(
        meta_support::info_hash(&other),
        PeerSource::new([srv.local_addr()]),
        &loopback_config(),
    )
    .await
    .unwrap_err();
    let FetchError::Exhausted(stats) = &err else {
        panic!("{err}")
    };
    // Closing on us might be temporary ("torrent not ready"): retried up to max_attempts.
    assert_eq!((stats.found, stats.tried, stats.connected), (1, 3, 0));
    assert!(matches!(stats.peers[0].outcome, PeerOutcome::Failed(_)));
    assert!(err.to_string().contains("found 1 peer, tried 3"), "{err}");
    assert_eq!(srv.stats().unknown_info_hash, 3);
    assert_eq!(srv.stats().handshakes, 0);
}

#[tokio::test]
async fn refused_and_unreachable_peers_end_the_fetch_cleanly() {
    let info = synthetic_info("nobody", 10, 5);
    // Outside the allow-list: refused before any socket exists. Then a closed port.
    let source = PeerSource::new([
        "192.0.2.1:6881".parse().unwrap(),
        addr(4, 1, 9), // nothing listens on port 9
    ]);
    let err = fetch_metadata(meta_support::info_hash(&info), source, &loopback_config())
        .await
        .unwrap_err();
    let stats = err.stats();
    // The refused address is never retried, the closed port is, up to max_attempts.
    assert_eq!((stats.found, stats.tried, stats.connected), (2, 4, 0));
    let PeerOutcome::Failed(why) = &stats.peers[0].outcome else {
        panic!("{stats:?}")
    };
    assert!(why.contains("allow-list"), "{why}");
    assert!(stats.peers[1..].iter().all(|p| p.addr == addr(4, 1, 9)));
}

/// A peer that is not up yet when first tried is tried again. The peer's start is tied to
/// the fetcher's first attempt (which it closes unanswered, like a peer still starting up)
/// rather than to a fixed delay that a slow first attempt could outlast.
#[tokio::test]
async fn a_peer_that_is_not_listening_yet_is_retried() {
    let info = synthetic_info("late", 10, 10);
    let ih = meta_support::info_hash(&info);
    let gate = tokio::net::TcpListener::bind(addr(9, 1, 0)).await.unwrap();
    let bind = gate.local_addr().unwrap();
    let late = tokio::spawn(async move {
        drop(gate.accept().await.unwrap());
        drop(gate);
        server(bind, &[&info]).await
    });
    let base = loopback_config();
    let cfg = FetchConfig {
        // Room for retries while the real server binds, however slowly.
        max_attempts: 10,
        // Plain only: under the default policy a handshake closed unanswered is retried
        // at once with MSE/PE inside the same attempt, and this test is about the
        // fetcher's own retry of a peer that was not up yet.
        wire: trackerless::wire::WireConfig {
            encryption: trackerless::wire::EncryptionPolicy::Disable,
            ..base.wire
        },
        ..base
    };
    let got = fetch_metadata(ih, PeerSource::new([bind]), &cfg)
        .await
        .unwrap();
    let _srv = late.await.unwrap();
    assert!(got.stats.tried >= 2, "{:?}", got.stats);
    assert_eq!(got.stats.suppliers().collect::<Vec<_>>(), [bind]);
}

#[tokio::test]
async fn overall_timeout_reports_found_and_tried() {
    let info = synthetic_info("slow", 10, 6);
    let liar = meta_support::FakePeer::start(addr(5, 1, 0), info.clone(), Lie::Silent, None).await;
    let cfg = FetchConfig {
        timeout: Some(Duration::from_millis(600)),
        ..loopback_config()
    };
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let source = PeerSource::new([liar.addr]).with_channel(rx);
    let err = fetch_metadata(meta_support::info_hash(&info), source, &cfg)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("found 1 peer, tried 1"), "{msg}");
}

/// Handshakes with `srv` for `ih` and exchanges extension handshakes.
async fn raw_client(
    srv: SocketAddr,
    ih: InfoHash,
) -> (
    PeerConn<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>,
    ExtHandshake,
) {
    let mut stream = TcpStream::connect(srv).await.unwrap();
    handshake_outgoing(
        &mut stream,
        &Handshake::new(ih, trackerless::torrent::PeerId([7; 20])),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut conn = PeerConn::from_tcp(stream, &WireConfig::default());
    conn.send(&ExtHandshake::ours(None, None).to_message())
        .await
        .unwrap();
    loop {
        if let Message::Extended { id: 0, payload } = conn.recv().await.unwrap() {
            return (conn, ExtHandshake::decode(&payload).unwrap());
        }
    }
}

#[tokio::test]
async fn server_survives_hostile_input() {
    let info = synthetic_info("hostile", 2000, 7);
    let ih = meta_support::info_hash(&info);
    let srv = server(addr(6, 1, 0), &[&info]).await;

    // Garbage instead of a handshake, and a truncated handshake.
    let mut s = TcpStream::connect(srv.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0);
    let mut s = TcpStream::connect(srv.local_addr()).await.unwrap();
    s.write_all(&Handshake::new(ih, trackerless::torrent::PeerId([1; 20])).encode()[..30])
        .await
        .unwrap();
    drop(s);

    let (mut conn, hs) = raw_client(srv.local_addr(), ih).await;
    assert_eq!(hs.metadata_size, Some(info.len() as u64));
    let their_id = hs.ext_id(UT_METADATA).unwrap();
    assert_ne!(their_id, 0);
    // Malformed ut_metadata payloads, unknown message ids, a piece request, out-of-range
    // pieces, a PORT: the connection stays up and answers in order.
    conn.writer
        .queue_extended_with(OUR_UT_METADATA_ID, |o| o.extend_from_slice(b"garbage"));
    conn.writer.queue_extended_with(OUR_UT_METADATA_ID, |o| {
        o.extend_from_slice(b"d8:msg_typei9ee")
    });
    conn.writer.queue(&Message::Unknown { id: 0x0e, len: 1 });
    conn.writer.queue(&Message::Request {
        index: 0,
        begin: 0,
        length: 16384,
    });
    conn.writer.queue(&Message::Port(0));
    conn.writer
        .queue_metadata(OUR_UT_METADATA_ID, &MetadataMsg::Request { piece: 1000 });
    conn.writer
        .queue_metadata(OUR_UT_METADATA_ID, &MetadataMsg::Request { piece: 1 });
    conn.writer.flush().await.unwrap();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        if let Message::Extended { id, payload } = conn.recv().await.unwrap() {
            assert_eq!(id, their_id, "answers use the id we advertised");
            answers.push(payload);
        }
    }
    assert_eq!(
        MetadataMsg::decode(&answers[0]),
        Ok(MetadataMsg::Reject { piece: 1000 })
    );
    let MetadataMsg::Data {
        piece,
        total_size,
        data,
    } = MetadataMsg::decode(&answers[1]).unwrap()
    else {
        panic!()
    };
    assert_eq!((piece, total_size), (1, info.len() as u64));
    assert_eq!(data, &info[16384..32768]);
    assert!(srv.stats().malformed >= 2);

    // A frame with an absurd length prefix ends that connection only.
    conn.writer.queue(&Message::KeepAlive);
    conn.writer.flush().await.unwrap();
    let (_, mut w) = conn.into_split();
    let _ = w.shutdown().await;
    let mut s = TcpStream::connect(srv.local_addr()).await.unwrap();
    let mut hs = Handshake::new(ih, trackerless::torrent::PeerId([2; 20]))
        .encode()
        .to_vec();
    hs.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&hs).await.unwrap();

    // And the server still serves a normal fetch.
    let got = fetch_metadata(ih, PeerSource::new([srv.local_addr()]), &loopback_config())
        .await
        .unwrap();
    assert_eq!(&got.info[..], &info[..]);
}

#[tokio::test]
async fn connection_limit_closes_excess_connections() {
    let info = synthetic_info("limited", 10, 8);
    let ih = meta_support::info_hash(&info);
    let registry = Arc::new(MetadataRegistry::new());
    registry.insert(info.clone());
    let srv = MetadataServer::bind(
        addr(7, 1, 0),
        registry,
        ServeConfig {
            max_connections: 2,
            ..serve_config()
        },
    )
    .await
    .unwrap();
    let (_a, _) = raw_client(srv.local_addr(), ih).await;
    let (_b, _) = raw_client(srv.local_addr(), ih).await;
    let mut c = TcpStream::connect(srv.local_addr()).await.unwrap();
    let _ = c
        .write_all(&Handshake::new(ih, trackerless::torrent::PeerId([3; 20])).encode())
        .await;
    let mut buf = [0u8; 68];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "third connection must be closed unanswered");
    assert_eq!(srv.stats().refused_full, 1);
}

/// A DHT node on `ip` with nothing in its table, allow-list loopback.
async fn lonely_node(ip: Ipv4Addr) -> trackerless::dht::driver::DhtHandle {
    let mut cfg = DhtConfig::new(SocketAddr::V4(SocketAddrV4::new(ip, 0)));
    cfg.node = node::Config::loopback_testnet();
    let (h, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    h
}

#[tokio::test]
async fn port_messages_flow_both_ways_and_reach_the_dht() {
    let info = synthetic_info("ports", 10, 9);
    let ih = meta_support::info_hash(&info);
    // The peer's DHT node, and ours.
    let peer_dht = lonely_node(Ipv4Addr::new(127, 80, 8, 1)).await;
    let our_dht = lonely_node(Ipv4Addr::new(127, 80, 8, 2)).await;
    let peer = meta_support::FakePeer::start(
        addr(8, 1, 0),
        info.clone(),
        Lie::Honest,
        Some(peer_dht.local_addr().port()),
    )
    .await;
    let cfg = FetchConfig {
        dht: Some(our_dht.clone()),
        dht_port: Some(our_dht.local_addr().port()),
        ..loopback_config()
    };
    let got = fetch_metadata(ih, PeerSource::new([peer.addr]), &cfg)
        .await
        .unwrap();
    assert_eq!(&got.info[..], &info[..]);
    assert_eq!(got.stats.ports_received, 1);
    // Our PORT reached the peer (it set the DHT bit, as our handshake does); the peer
    // counts it on its own task, so wait for it rather than for a guessed time.
    wait_until("the peer to receive our PORT", GENEROUS, async || {
        peer.ports.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(peer.ports.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The PORT we received made our node ping the peer's node, which entered our table.
    let want = match peer_dht.local_addr() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    wait_until("peer's DHT node to enter our table", GENEROUS, async || {
        our_dht
            .contacts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.addr == want)
    })
    .await;

    // Serving side: a PORT from the fetcher makes the server's node ping the fetcher's.
    let srv_dht = lonely_node(Ipv4Addr::new(127, 80, 8, 3)).await;
    let registry = Arc::new(MetadataRegistry::new());
    registry.insert(info.clone());
    let srv = MetadataServer::bind(
        addr(8, 3, 0),
        registry,
        ServeConfig {
            dht: Some(srv_dht.clone()),
            dht_port: Some(srv_dht.local_addr().port()),
            ..serve_config()
        },
    )
    .await
    .unwrap();
    let got = fetch_metadata(ih, PeerSource::new([srv.local_addr()]), &cfg)
        .await
        .unwrap();
    assert_eq!(got.stats.ports_received, 1, "server sent its PORT");
    assert_eq!(srv.stats().ports_received, 1);
    let want = match our_dht.local_addr() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    wait_until(
        "fetcher's DHT node to enter the server's table",
        GENEROUS,
        async || {
            srv_dht
                .contacts()
                .await
                .unwrap()
                .iter()
                .any(|c| c.addr == want)
        },
    )
    .await;
}

/// Random traffic after a valid handshake, fed straight to `serve_connection` so that a
/// panic in the handler fails the test (inside the server's accept loop it would only kill
/// one task). Each connection gets a burst of random frames: known and unknown ids, random
/// payloads, ut_metadata messages with random dicts, and sometimes random raw bytes.
#[tokio::test]
async fn serve_connection_survives_random_traffic() {
    use rand::RngExt;
    use trackerless::metadata::{ServeContext, ServeStats, serve_connection};

    let info = synthetic_info("fuzzed", 1500, 11);
    let ih = meta_support::info_hash(&info);
    let registry = Arc::new(MetadataRegistry::new());
    registry.insert(info.clone());
    let mut config = serve_config();
    config.wire.read_timeout = Duration::from_millis(100);
    let ctx = Arc::new(ServeContext {
        registry,
        config,
        stats: ServeStats::default(),
        listen_port: None,
    });
    let listener = tokio::net::TcpListener::bind(addr(10, 1, 0)).await.unwrap();
    let srv = listener.local_addr().unwrap();
    let mut rng = rand::rng();
    for round in 0..200u32 {
        let mut wire = Handshake::new(ih, trackerless::torrent::PeerId([9; 20]))
            .encode()
            .to_vec();
        if round % 2 == 0 {
            ExtHandshake::ours(None, None)
                .to_message()
                .encode(&mut wire);
        }
        for _ in 0..rng.random_range(1..20) {
            match rng.random_range(0..4) {
                0 => {
                    // A ut_metadata message with random keys and values.
                    let dicts: [&[u8]; 6] = [
                        b"d8:msg_typei0e5:piecei",
                        b"d8:msg_typei1e5:piecei",
                        b"d8:msg_typei2e5:piecei",
                        b"d5:piecei",
                        b"d8:msg_typei-7e5:piecei",
                        b"l8:msg_typei",
                    ];
                    let mut p = dicts[rng.random_range(0..dicts.len())].to_vec();
                    p.extend_from_slice(rng.random_range(-3i64..1_000_000).to_string().as_bytes());
                    p.extend_from_slice(b"e10:total_sizei");
                    p.extend_from_slice(rng.random::<u32>().to_string().as_bytes());
                    p.extend_from_slice(b"ee");
                    let len = rng.random_range(0..64);
                    p.extend((0..len).map(|_| rng.random::<u8>()));
                    let id = if rng.random_bool(0.8) {
                        OUR_UT_METADATA_ID
                    } else {
                        rng.random()
                    };
                    Message::Extended {
                        id,
                        payload: p.into(),
                    }
                    .encode(&mut wire);
                }
                1 => {
                    // Any id with a random payload length that is valid for it.
                    let msg_id: u8 = rng.random_range(0..30);
                    let body: Vec<u8> = match msg_id {
                        0..=3 => vec![],
                        4 => vec![0; 4],
                        6 | 8 => vec![0; 12],
                        9 => vec![0, 0],
                        20 => vec![rng.random(), b'd', b'e'],
                        _ => (0..rng.random_range(0..300))
                            .map(|_| rng.random())
                            .collect(),
                    };
                    wire.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
                    wire.push(msg_id);
                    wire.extend_from_slice(&body);
                }
                2 => Message::Port(rng.random()).encode(&mut wire),
                _ => {
                    let len = rng.random_range(0..100);
                    wire.extend((0..len).map(|_| rng.random::<u8>()));
                }
            }
        }
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(srv).await.unwrap();
            let _ = s.write_all(&wire).await;
            let mut sink = vec![0u8; 1 << 16];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await
            {
                if n == 0 {
                    break;
                }
            }
        });
        let (stream, peer) = listener.accept().await.unwrap();
        let ctx2 = ctx.clone();
        let served =
            tokio::spawn(async move { serve_connection(stream.into(), peer, &ctx2).await });
        let result = served.await;
        assert!(result.is_ok(), "handler panicked in round {round}");
        client.await.unwrap();
    }
    // Random requests got real answers along the way.
    let s = ctx.stats.snapshot();
    assert_eq!(s.handshakes, 200);
    assert!(s.data_sent + s.rejects_sent > 0, "{s:?}");
    assert!(s.malformed > 0, "{s:?}");
}
