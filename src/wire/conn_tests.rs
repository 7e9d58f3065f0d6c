//! Tests of the tokio layer over real loopback TCP (127.0.0.1 only) and in-memory pipes.

use crate::torrent::{InfoHash, PeerId};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::dht::allow::{AllowList, IpNet};

const INFO_HASH: InfoHash = InfoHash([0x42; 20]);
const SHORT: Duration = Duration::from_secs(5);

fn config() -> WireConfig {
    WireConfig {
        read_timeout: SHORT,
        write_timeout: SHORT,
        ..WireConfig::default()
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Both sides over real TCP: handshake with DHT + extension bits, extension handshakes with
/// different ut_metadata ids in each direction, then core and ut_metadata messages, with the
/// client running its reader and writer as separate tasks.
#[tokio::test]
async fn loopback_session_end_to_end() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = l.accept().await.unwrap();
        let served: HashSet<InfoHash> = HashSet::from([INFO_HASH]);
        let server_id = PeerId::generate();
        let theirs = handshake_incoming(&mut stream, SHORT, |hs| {
            served
                .contains(&hs.info_hash)
                .then(|| Handshake::new(hs.info_hash, server_id))
        })
        .await
        .unwrap();
        assert!(theirs.supports_dht() && theirs.supports_extensions());
        let mut conn = PeerConn::from_tcp(stream, &config());
        // The server advertises ut_metadata on id 3, so clients must address it with 3.
        let mut ours = ExtHandshake::ours(Some(6881), Some(20000));
        ours.m.insert(UT_METADATA.to_owned(), 3);
        conn.writer.queue(&ours.to_message());
        conn.writer.queue(&Message::Port(6881));
        conn.writer.flush().await.unwrap();

        let Message::Extended { id: 0, payload } = conn.recv().await.unwrap() else {
            panic!("expected extension handshake")
        };
        let peer_ext = ExtHandshake::decode(&payload).unwrap();
        let peer_ut = peer_ext.ext_id(UT_METADATA).unwrap();
        assert_eq!(conn.recv().await.unwrap(), Message::Interested);
        assert_eq!(conn.recv().await.unwrap(), Message::KeepAlive);
        let Message::Request {
            index,
            begin,
            length,
        } = conn.recv().await.unwrap()
        else {
            panic!("expected request")
        };
        conn.writer.queue(&Message::Unchoke);
        conn.writer.queue(&Message::Piece {
            index,
            begin,
            block: Bytes::from(vec![7u8; length as usize]),
        });
        conn.writer.flush().await.unwrap();
        // A ut_metadata request arrives on the id *we* advertised.
        let Message::Extended { id: 3, payload } = conn.recv().await.unwrap() else {
            panic!("expected ut_metadata on our id 3")
        };
        assert_eq!(
            MetadataMsg::decode(&payload),
            Ok(MetadataMsg::Request { piece: 1 })
        );
        let block = vec![b'x'; metadata_block_len(1, 20000).unwrap()];
        let data = MetadataMsg::Data {
            piece: 1,
            total_size: 20000,
            data: &block,
        };
        conn.writer.queue_metadata(peer_ut, &data);
        conn.writer.shutdown().await.unwrap();
        assert!(matches!(conn.recv().await, Err(WireError::Closed)));
        theirs.peer_id
    });

    let mut stream = connect(addr, &AllowList::loopback(), SHORT).await.unwrap();
    let our_id = PeerId::generate();
    let ours = Handshake::new(INFO_HASH, our_id);
    let theirs = handshake_outgoing(&mut stream, &ours, SHORT).await.unwrap();
    assert!(theirs.supports_dht() && theirs.supports_extensions() && theirs.supports_fast());
    assert_eq!(&theirs.peer_id.0[..8], b"-TK0001-");

    let mut conn = PeerConn::from_tcp(stream, &config());
    let ext = ExtHandshake::ours(None, None);
    conn.writer
        .queue_extended_with(EXT_HANDSHAKE_ID, |out| ext.encode_into(out));
    conn.writer.flush().await.unwrap();
    let Message::Extended { id: 0, payload } = conn.recv().await.unwrap() else {
        panic!("expected extension handshake")
    };
    let server_ext = ExtHandshake::decode(&payload).unwrap();
    assert_eq!(server_ext.metadata_size, Some(20000));
    let server_ut = server_ext.ext_id(UT_METADATA).unwrap();
    assert_eq!(server_ut, 3);

    let (mut reader, mut writer) = conn.into_split();
    let reader_task = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match reader.recv().await {
                Ok(msg) => got.push(msg),
                Err(WireError::Closed) => return got,
                Err(e) => panic!("reader: {e}"),
            }
        }
    });
    writer.send(&Message::Interested).await.unwrap();
    writer.send_keepalive().await.unwrap();
    writer
        .send(&Message::Request {
            index: 2,
            begin: 16384,
            length: 16384,
        })
        .await
        .unwrap();
    // Sent with the id the *server* advertised.
    writer.queue_metadata(server_ut, &MetadataMsg::Request { piece: 1 });
    writer.flush().await.unwrap();
    let got = reader_task.await.unwrap();
    writer.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap(), our_id);

    assert_eq!(got[0], Message::Port(6881));
    assert_eq!(got[1], Message::Unchoke);
    let Message::Piece {
        index: 2,
        begin: 16384,
        block,
    } = &got[2]
    else {
        panic!("{:?}", got[2])
    };
    assert!(block.len() == 16384 && block.iter().all(|&b| b == 7));
    // The data message comes back on the id we advertised.
    let Message::Extended { id, payload } = &got[3] else {
        panic!("{:?}", got[3])
    };
    assert_eq!(*id, OUR_UT_METADATA_ID);
    let MetadataMsg::Data {
        piece: 1,
        total_size: 20000,
        data,
    } = MetadataMsg::decode(payload).unwrap()
    else {
        panic!()
    };
    assert_eq!(data.len(), 20000 - METADATA_BLOCK);
    assert_eq!(got.len(), 4);
}

/// The allow-list gate. First proven with a destination that is itself loopback (so a broken
/// gate connects to our own listener instead of leaking traffic), and only then exercised
/// with a non-loopback address, which must be refused before any socket exists.
#[tokio::test]
async fn connect_outside_allow_list_is_refused() {
    let only_one = AllowList::only(vec![IpNet::new([127, 0, 0, 1].into(), 32).unwrap()]);
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let other = l.local_addr().unwrap();
    let before = refused_connects();
    let res = connect(other, &only_one, SHORT).await;
    assert!(
        matches!(res, Err(WireError::Refused(a)) if a == other),
        "{res:?}"
    );
    // Had the refused connect reached the listener, its connection would be queued ahead of
    // this marker connection from 127.0.0.3 (an address nothing else here uses): checked by
    // order, not by waiting a while for nothing to happen.
    let marker = tokio::net::TcpSocket::new_v4().unwrap();
    marker.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let _marker = marker.connect(other).await.unwrap();
    let (_, first) = l.accept().await.unwrap();
    assert_eq!(
        first.ip(),
        std::net::IpAddr::from([127, 0, 0, 3]),
        "a refused connect reached the listener"
    );
    assert!(refused_connects() > before);

    let outside: SocketAddr = "10.0.0.1:6881".parse().unwrap();
    let before = refused_connects();
    // "The refusal does not wait on I/O", checked without a clock: the very first poll of
    // the connect future, with a waker nothing will ever wake, must already be the refusal.
    let loopback_only = AllowList::loopback();
    let res = {
        let mut fut = std::pin::pin!(connect(outside, &loopback_only, SHORT));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(res) => res,
            std::task::Poll::Pending => panic!("refusal must not wait on I/O"),
        }
    };
    assert!(
        matches!(res, Err(WireError::Refused(a)) if a == outside),
        "{res:?}"
    );
    assert!(refused_connects() > before);
    let msg = res.unwrap_err().to_string();
    assert!(
        msg.contains("10.0.0.1:6881") && msg.contains("allow-list"),
        "{msg}"
    );

    // The same gate for inbound peers.
    let before = refused_connects();
    assert!(check_peer_allowed("127.9.9.9:1".parse().unwrap(), &AllowList::loopback()).is_ok());
    assert!(matches!(
        check_peer_allowed("192.0.2.1:6881".parse().unwrap(), &AllowList::loopback()),
        Err(WireError::Refused(_))
    ));
    assert!(refused_connects() > before);
}

#[tokio::test]
async fn info_hash_mismatch_is_rejected_on_both_sides() {
    // Accepting side: the peer asks for a torrent we do not serve; we send nothing back.
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake_incoming(&mut s, SHORT, |hs| {
            (hs.info_hash == INFO_HASH).then(|| Handshake::new(INFO_HASH, PeerId::generate()))
        })
        .await
    });
    let mut s = connect(addr, &AllowList::loopback(), SHORT).await.unwrap();
    let ours = Handshake::new(InfoHash([9; 20]), PeerId::generate());
    let client = handshake_outgoing(&mut s, &ours, SHORT).await;
    assert!(
        matches!(server.await.unwrap(), Err(WireError::UnknownInfoHash(h)) if h == InfoHash([9; 20]))
    );
    assert!(matches!(client, Err(WireError::Closed)), "{client:?}");

    // Initiating side: a (raw, non-checking) peer answers for another torrent.
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut theirs = [0u8; HANDSHAKE_LEN];
        s.read_exact(&mut theirs).await.unwrap();
        s.write_all(&Handshake::new(InfoHash([8; 20]), PeerId::generate()).encode())
            .await
            .unwrap();
        s
    });
    let mut s = connect(addr, &AllowList::loopback(), SHORT).await.unwrap();
    let ours = Handshake::new(INFO_HASH, PeerId::generate());
    let client = handshake_outgoing(&mut s, &ours, SHORT).await;
    assert!(
        matches!(client, Err(WireError::InfoHashMismatch { expected, got })
            if expected == INFO_HASH && got == InfoHash([8; 20])),
        "{client:?}"
    );
    drop(server.await.unwrap());

    // Our own responder answering with a different hash is a bug caught before sending.
    let (mut a, mut b) = tokio::io::duplex(256);
    b.write_all(&Handshake::new(INFO_HASH, PeerId::generate()).encode())
        .await
        .unwrap();
    let res = handshake_incoming(&mut a, SHORT, |_| {
        Some(Handshake::new(InfoHash([8; 20]), PeerId::generate()))
    })
    .await;
    assert!(
        matches!(res, Err(WireError::InfoHashMismatch { .. })),
        "{res:?}"
    );
    drop(a);
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "nothing may be sent after a refused handshake"
    );
}

#[tokio::test]
async fn read_timeout_fires_and_keeps_partial_data() {
    let (l, addr) = listener().await;
    let mut raw = connect(addr, &AllowList::loopback(), SHORT).await.unwrap();
    let (server_side, _) = l.accept().await.unwrap();
    let cfg = WireConfig {
        read_timeout: Duration::from_millis(150),
        ..config()
    };
    let mut conn = PeerConn::from_tcp(server_side, &cfg);

    // Half a `have`, then silence.
    raw.write_all(&[0, 0, 0, 5, 4, 0]).await.unwrap();
    let started = Instant::now();
    let res = conn.recv().await;
    assert!(
        matches!(res, Err(WireError::Timeout(Phase::Read))),
        "{res:?}"
    );
    // clock-ok: a lower bound (the timeout did not fire early); load only makes it longer.
    assert!(started.elapsed() >= Duration::from_millis(150));
    // The bytes read before the timeout are not lost.
    raw.write_all(&[0, 1, 2]).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), Message::Have { piece: 0x102 });
    drop(raw);
    assert!(matches!(conn.recv().await, Err(WireError::Closed)));
}

#[tokio::test]
async fn handshake_timeout_and_garbage() {
    // A peer that never answers.
    let (l, addr) = listener().await;
    let mut s = connect(addr, &AllowList::loopback(), SHORT).await.unwrap();
    let _silent = l.accept().await.unwrap();
    let ours = Handshake::new(INFO_HASH, PeerId::generate());
    let res = handshake_outgoing(&mut s, &ours, Duration::from_millis(100)).await;
    assert!(
        matches!(res, Err(WireError::Timeout(Phase::Handshake))),
        "{res:?}"
    );

    // A peer speaking something else is rejected after 20 bytes, without waiting.
    let (mut a, mut b) = tokio::io::duplex(256);
    b.write_all(b"GET /announce HTTP/1.1\r\n").await.unwrap();
    let res = handshake_incoming(&mut a, SHORT, |_| None).await;
    assert!(
        matches!(res, Err(WireError::Handshake(HandshakeError::BadProtocol))),
        "{res:?}"
    );
}

#[tokio::test]
async fn oversize_frame_closes_without_allocating() {
    let (a, mut b) = tokio::io::duplex(64);
    let cfg = WireConfig {
        max_frame: 16 * 1024 + 13,
        ..config()
    };
    let mut conn = PeerConn::from_stream(a, &cfg);
    b.write_all(&[0, 0, 0, 1, 1]).await.unwrap();
    b.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    b.write_all(&[7; 32]).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), Message::Unchoke);
    let res = conn.recv().await;
    assert!(
        matches!(
            res,
            Err(WireError::Frame(FrameError::TooLong { len: u32::MAX, .. }))
        ),
        "{res:?}"
    );
    assert!(conn.reader.decoder().capacity() < 64 * 1024);
    // The reader stays failed.
    assert!(matches!(conn.recv().await, Err(WireError::Frame(_))));
}

#[tokio::test]
async fn eof_inside_a_frame_is_distinguished() {
    let (a, mut b) = tokio::io::duplex(64);
    let mut conn = PeerConn::from_stream(a, &config());
    b.write_all(&[0, 0, 0, 13, 6, 0, 0]).await.unwrap();
    drop(b);
    assert!(matches!(conn.recv().await, Err(WireError::ClosedMidFrame)));
}

#[tokio::test]
async fn queued_extended_matches_message_encoding() {
    let (a, b) = tokio::io::duplex(4096);
    let mut tx = PeerConn::from_stream(a, &config());
    let mut rx = PeerConn::from_stream(b, &config());
    let ext = ExtHandshake::ours(Some(1), Some(2));
    tx.writer
        .queue_extended_with(EXT_HANDSHAKE_ID, |out| ext.encode_into(out));
    tx.writer.queue(&ext.to_message());
    tx.writer
        .queue_metadata(5, &MetadataMsg::Reject { piece: 9 });
    assert!(tx.writer.pending() > 0);
    tx.writer.flush().await.unwrap();
    assert_eq!(tx.writer.pending(), 0);
    let first = rx.recv().await.unwrap();
    assert_eq!(first, ext.to_message());
    assert_eq!(rx.recv().await.unwrap(), first);
    let Message::Extended { id: 5, payload } = rx.recv().await.unwrap() else {
        panic!()
    };
    assert_eq!(
        MetadataMsg::decode(&payload),
        Ok(MetadataMsg::Reject { piece: 9 })
    );
}
