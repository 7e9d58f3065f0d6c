//! The peer-wire rules of our sessions, checked from the other end of the connection by a
//! scripted peer built on the wire primitives (not on the session code):
//! - a seeder sends its `bitfield` first; requests while choked are dropped; a request
//!   larger than 128 KiB is refused and one of exactly 128 KiB served; `cancel` removes a
//!   queued request; choking discards every queued request;
//! - a downloader with nothing sends no `bitfield`, becomes interested exactly when the
//!   peer has a piece it lacks, broadcasts `have` for every piece it verifies, and loses
//!   interest as soon as it has everything the peer has;
//! - the connection limit (`max_peers`) holds for incoming connections;
//! - those BEP 3 rules hold against a peer that leaves the BEP 6 bit clear; against one
//!   that sets it (BEP 6, Fast): the seeder opens with `have_all` and the peer's canonical
//!   allowed-fast set, serves allowed-fast pieces while choking and rejects other requests;
//!   the downloader opens with `have_none`, requests only allowed-fast pieces while choked,
//!   asks again for a rejected block, and a peer that sends Fast messages without the bit
//!   is dropped;
//! - BEP 11: a peer named only in a `ut_pex` message is dialed; each `ut_pex` peer is told
//!   the others (listen addresses, flags), never itself; with PEX off nothing is advertised
//!   or sent.
//!
//! Requests are answered in order, so "X was not served" is checked without sleeping: a
//! marker request sent after X arrives, and X did not come before it.
//!
//! Addresses: 127.146.x.y.

mod dl_support;
mod wait_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use dl_support::{Peer, content, testnet, torrent_of, v4};
use trackerless::dht::allow::AllowList;
use trackerless::download::{Mode, Phase};
use trackerless::torrent::{InfoHash, PeerId};
use trackerless::wire::ExtHandshake;
use trackerless::wire::pex::{PEX_FIRST_DELAY, PexMsg, UT_PEX, flags, pex_counts};
use trackerless::wire::{
    EXT_HANDSHAKE_ID, Handshake, Message, PeerConn, WireConfig, connect_from, handshake_outgoing,
};
use wait_support::{GENEROUS, wait_until};

const PIECE: u32 = 256 * 1024;
const BLOCK: u32 = 16 * 1024;

type Conn = PeerConn<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

/// Connects from `ip` to `to` and handshakes for `info_hash` as a plain BEP 3 peer (fast
/// bit clear).
async fn scripted_peer(ip: Ipv4Addr, to: SocketAddr, info_hash: InfoHash) -> Conn {
    scripted(ip, to, info_hash, false).await
}

/// The same, claiming BEP 6 (fast bit set).
async fn scripted_fast_peer(ip: Ipv4Addr, to: SocketAddr, info_hash: InfoHash) -> Conn {
    scripted(ip, to, info_hash, true).await
}

async fn scripted(ip: Ipv4Addr, to: SocketAddr, info_hash: InfoHash, fast: bool) -> Conn {
    let mut s = connect_from(
        to,
        Some(ip.into()),
        &AllowList::loopback(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let ours = Handshake::new(info_hash, PeerId::generate());
    let ours = if fast { ours } else { ours.without_fast() };
    let theirs = handshake_outgoing(&mut s, &ours, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(theirs.supports_fast(), "our sessions claim BEP 6");
    PeerConn::from_tcp(
        s,
        &WireConfig {
            read_timeout: Duration::from_secs(20),
            ..WireConfig::default()
        },
    )
}

/// The next message that is not a keep-alive.
async fn next(c: &mut Conn) -> Message {
    loop {
        match c.reader.recv().await {
            Ok(Message::KeepAlive) => {}
            Ok(m) => return m,
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

async fn send(c: &mut Conn, msgs: &[Message]) {
    for m in msgs {
        c.writer.queue(m);
    }
    c.writer.flush().await.unwrap();
}

fn request(index: u32, begin: u32, length: u32) -> Message {
    Message::Request {
        index,
        begin,
        length,
    }
}

/// Reads until the next `piece`, returning `(index, begin, length)`, skipping `have`s and
/// the like; panics on a choke.
async fn next_piece(c: &mut Conn) -> (u32, u32, u32) {
    loop {
        match next(c).await {
            Message::Piece {
                index,
                begin,
                block,
            } => return (index, begin, block.len() as u32),
            Message::Choke => panic!("choked while waiting for a piece"),
            _ => {}
        }
    }
}

fn info_hash(info: &[u8]) -> InfoHash {
    use sha1::{Digest, Sha1};
    InfoHash(Sha1::digest(info).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeder_serves_requests_by_the_rules() {
    let net = testnet(146, 4).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("rules.bin");
    let data = content(4 * PIECE as usize, 3);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    let ih = info_hash(&info);
    // A paced seeder (256 KiB/s: a 64 KiB burst, then a block every 62 ms) with a
    // one-second choking round: requests queue up long enough to be cancelled or choked.
    let seeder = Peer::start(
        v4(127, 146, 1, 1),
        &[net.addr(0)],
        &info,
        src.path(),
        Mode::ReadOnly,
        |c| {
            c.seed = true;
            c.assume_complete = true;
            c.upload_rate = Some(256 * 1024);
            c.choker.interval = Duration::from_secs(1);
        },
    )
    .await;
    let mut p = scripted_peer(v4(127, 146, 1, 2), seeder.addr(), ih).await;

    // A seeder's first message is its bitfield, with every piece.
    match next(&mut p).await {
        Message::Bitfield(b) => assert_eq!(&b[..], &[0xF0]),
        other => panic!("expected a bitfield first, got {other:?}"),
    }

    // A request while choked is dropped: after interest and unchoke, the marker is the
    // first block to arrive.
    send(&mut p, &[request(0, 0, BLOCK), Message::Interested]).await;
    loop {
        match next(&mut p).await {
            Message::Unchoke => break,
            Message::Piece { .. } => panic!("a request sent while choked was served"),
            _ => {}
        }
    }
    send(&mut p, &[request(1, 0, BLOCK)]).await;
    assert_eq!(next_piece(&mut p).await, (1, 0, BLOCK));

    // More than 128 KiB is refused, exactly 128 KiB is served (the bucket lets it through
    // into debt), and the bytes are the file's.
    send(
        &mut p,
        &[
            request(0, 0, 128 * 1024 + BLOCK),
            request(0, 128 * 1024, 128 * 1024),
            request(1, BLOCK, BLOCK),
        ],
    )
    .await;
    loop {
        match next(&mut p).await {
            Message::Piece {
                index,
                begin,
                block,
            } => {
                assert_eq!((index, begin), (0, 128 * 1024), "oversized request served");
                let at = 128 * 1024;
                assert!(block[..] == data[at..at + 128 * 1024], "wrong bytes");
                break;
            }
            Message::Choke => panic!("choked"),
            _ => {}
        }
    }
    assert_eq!(next_piece(&mut p).await, (1, BLOCK, BLOCK));

    // Cancel: the bucket is empty (in debt, even), so eight requests queue; the last four
    // are cancelled in the same breath and never come.
    let mut batch: Vec<Message> = (0..8).map(|b| request(2, b * BLOCK, BLOCK)).collect();
    for b in 4..8 {
        batch.push(Message::Cancel {
            index: 2,
            begin: b * BLOCK,
            length: BLOCK,
        });
    }
    batch.push(request(3, 0, BLOCK));
    send(&mut p, &batch).await;
    for b in 0..4 {
        assert_eq!(next_piece(&mut p).await, (2, b * BLOCK, BLOCK));
    }
    assert_eq!(
        next_piece(&mut p).await,
        (3, 0, BLOCK),
        "a cancelled request was served"
    );

    // Choking drops the queue: ask for the whole file (4 s at this rate), lose interest;
    // the next round chokes us. Nothing arrives after the choke, and after a new unchoke
    // the first block is a fresh marker, not one of the old requests.
    let all: Vec<Message> = (0..4)
        .flat_map(|i| (0..PIECE / BLOCK).map(move |b| request(i, b * BLOCK, BLOCK)))
        .collect();
    send(&mut p, &all).await;
    send(&mut p, &[Message::NotInterested]).await;
    let mut before_choke = 0;
    loop {
        match next(&mut p).await {
            Message::Piece { .. } => before_choke += 1,
            Message::Choke => break,
            _ => {}
        }
    }
    assert!(
        before_choke < all.len(),
        "everything was served before the choke; the test proves nothing"
    );
    send(&mut p, &[Message::Interested]).await;
    loop {
        match next(&mut p).await {
            Message::Unchoke => break,
            Message::Piece { .. } => panic!("a block arrived while choked"),
            _ => {}
        }
    }
    send(&mut p, &[request(0, 100, BLOCK)]).await;
    assert_eq!(
        next_piece(&mut p).await,
        (0, 100, BLOCK),
        "requests queued before the choke were served after it"
    );
    drop(seeder);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloader_keeps_interest_exact_and_announces_pieces() {
    let net = testnet(146, 4).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("haves.bin");
    std::fs::write(&file, content(4 * PIECE as usize, 4)).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    let ih = info_hash(&info);
    // A downloader with no seeder yet, kept running after completion.
    let out = tempfile::tempdir().unwrap();
    let dl = Peer::start(
        v4(127, 146, 2, 1),
        &[net.addr(1)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |c| c.seed = true,
    )
    .await;
    // Connections that arrive during the start-up check are refused; wait it out.
    wait_until("the start-up check to end", GENEROUS, async || {
        matches!(dl.session.phase(), Phase::Downloading)
    })
    .await;
    let mut p = scripted_peer(v4(127, 146, 2, 2), dl.addr(), ih).await;

    // Nothing to offer: no bitfield, the extension handshake comes first.
    match next(&mut p).await {
        Message::Extended {
            id: EXT_HANDSHAKE_ID,
            ..
        } => {}
        other => panic!("expected the extension handshake first, got {other:?}"),
    }
    // We have piece 0 (and never unchoke): the downloader becomes interested.
    send(&mut p, &[Message::Bitfield(Bytes::from_static(&[0x80]))]).await;
    loop {
        match next(&mut p).await {
            Message::Interested => break,
            Message::Have { piece } => panic!("have {piece} before any seeder"),
            _ => {}
        }
    }

    // A seeder arrives; every verified piece is announced to us, and interest is dropped
    // right after the `have` for piece 0, the only one we could give.
    let seeder = Peer::seeder(v4(127, 146, 2, 3), &[net.addr(2)], &info, src.path()).await;
    dl.session.add_peers([seeder.addr()]);
    let mut haves = Vec::new();
    let mut lost_interest_after = None;
    while haves.len() < 4 || lost_interest_after.is_none() {
        match next(&mut p).await {
            Message::Have { piece } => haves.push(piece),
            Message::NotInterested => {
                assert!(lost_interest_after.is_none(), "not-interested twice");
                lost_interest_after = Some(haves.clone());
            }
            Message::Interested => panic!("interested twice"),
            _ => {}
        }
    }
    haves.sort_unstable();
    assert_eq!(haves, [0, 1, 2, 3]);
    let before = lost_interest_after.unwrap();
    assert_eq!(
        before.last(),
        Some(&0),
        "interest must drop right after the have for piece 0: {before:?}"
    );
    dl.wait_complete(Duration::from_secs(30)).await;
    drop(seeder);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_connections_stop_at_the_limit() {
    let net = testnet(146, 4).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("limit.bin");
    std::fs::write(&file, content(PIECE as usize, 5)).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    let ih = info_hash(&info);
    let seeder = Peer::start(
        v4(127, 146, 4, 1),
        &[net.addr(0)],
        &info,
        src.path(),
        Mode::ReadOnly,
        |c| {
            c.seed = true;
            c.assume_complete = true;
            c.max_peers = 2;
        },
    )
    .await;
    // Two connections are served (each gets the bitfield)...
    let mut kept = Vec::new();
    for i in 0..2u8 {
        let mut p = scripted_peer(v4(127, 146, 4, 10 + i), seeder.addr(), ih).await;
        assert!(matches!(next(&mut p).await, Message::Bitfield(_)));
        kept.push(p);
    }
    // ... a third is closed without a message, ...
    let mut third = scripted_peer(v4(127, 146, 4, 12), seeder.addr(), ih).await;
    match third.reader.recv().await {
        Err(_) => {}
        Ok(m) => panic!("a connection over the limit got {m:?}"),
    }
    assert_eq!(seeder.session.progress().peers, 2);
    // ... and once one leaves, a new one is served again.
    drop(kept.pop());
    wait_until(
        "the session to notice the peer leaving",
        GENEROUS,
        async || seeder.session.progress().peers < 2,
    )
    .await;
    let mut again = scripted_peer(v4(127, 146, 4, 13), seeder.addr(), ih).await;
    assert!(matches!(next(&mut again).await, Message::Bitfield(_)));
    drop(seeder);
    net.shutdown().await;
}

/// aria2 sends a fresh full `bitfield` instead of many `have`s once that is shorter, so a
/// `bitfield` may follow `have`s or another `bitfield`. Our seeder must keep serving such a
/// peer (it used to drop it as a protocol violation, and aria2 crawled at a burst per
/// reconnect), and our downloader must count the late bits as `have`s: here the scripted
/// peer is the only source of pieces 1..3, which it announces only in late bitfields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_repeated_bitfields_are_read_as_haves() {
    let net = testnet(146, 4).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("late-bitfield.bin");
    let data = content(4 * PIECE as usize, 5);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    let ih = info_hash(&info);

    // Seeder side: haves, then a bitfield, then another; still served.
    let seeder = Peer::seeder(v4(127, 146, 5, 1), &[net.addr(0)], &info, src.path()).await;
    let mut p = scripted_peer(v4(127, 146, 5, 2), seeder.addr(), ih).await;
    send(
        &mut p,
        &[
            Message::Have { piece: 0 },
            Message::Have { piece: 2 },
            Message::Bitfield(Bytes::from_static(&[0xA0])),
            Message::Bitfield(Bytes::from_static(&[0xB0])),
            Message::Interested,
        ],
    )
    .await;
    loop {
        match next(&mut p).await {
            Message::Unchoke => break,
            Message::Choke => panic!("choked"),
            _ => {}
        }
    }
    send(&mut p, &[request(1, 0, BLOCK)]).await;
    assert_eq!(next_piece(&mut p).await, (1, 0, BLOCK));
    drop(p);

    drop(seeder);

    // Downloader side: the scripted peer announces piece 0 by `have`, pieces 0-1 by a
    // bitfield, everything by a second one, and serves what it is asked for. Another
    // torrent, which nobody announced, so the scripted peer is the only source.
    let file = src.path().join("late-bitfield-2.bin");
    let data = content(4 * PIECE as usize, 6);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    let ih = info_hash(&info);
    let out = tempfile::tempdir().unwrap();
    let dl = Peer::start(
        v4(127, 146, 5, 3),
        &[net.addr(1)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |_| {},
    )
    .await;
    for _ in 0..500 {
        if matches!(dl.session.phase(), Phase::Downloading) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut p = scripted_peer(v4(127, 146, 5, 4), dl.addr(), ih).await;
    send(
        &mut p,
        &[
            Message::Have { piece: 0 },
            Message::Bitfield(Bytes::from_static(&[0xC0])),
            Message::Bitfield(Bytes::from_static(&[0xF0])),
            Message::Unchoke,
        ],
    )
    .await;
    let mut served = [false; 4];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while matches!(dl.session.phase(), Phase::Checking | Phase::Downloading) {
        let msg = tokio::time::timeout_at(deadline, p.reader.recv())
            .await
            .expect("the download did not finish from the late-bitfield peer");
        match msg {
            Ok(Message::Request {
                index,
                begin,
                length,
            }) => {
                let at = (index * PIECE + begin) as usize;
                served[index as usize] = true;
                send(
                    &mut p,
                    &[Message::Piece {
                        index,
                        begin,
                        block: Bytes::copy_from_slice(&data[at..at + length as usize]),
                    }],
                )
                .await;
            }
            Ok(_) => {}
            // Once complete, two seeds have nothing to trade and we may hang up.
            Err(_) => break,
        }
    }
    dl.wait_complete(Duration::from_secs(30)).await;
    assert_eq!(served, [true; 4], "every piece came from the scripted peer");
    assert_eq!(
        std::fs::read(out.path().join("late-bitfield-2.bin")).unwrap(),
        data
    );
    net.shutdown().await;
}

/// BEP 6 messages are only valid when both handshakes set the fast bit: a peer that sends
/// `have_all` without negotiating it is dropped (the scripted peer's handshake leaves the
/// bit clear), while the same connection without it is served (see the tests above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_messages_without_negotiation_end_the_connection() {
    let net = testnet(146, 4).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("fast-unnegotiated.bin");
    let data = content(2 * PIECE as usize, 7);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    let ih = info_hash(&info);
    let seeder = Peer::seeder(v4(127, 146, 6, 1), &[net.addr(0)], &info, src.path()).await;
    let mut p = scripted_peer(v4(127, 146, 6, 2), seeder.addr(), ih).await;
    send(&mut p, &[Message::HaveAll, Message::Interested]).await;
    let deadline = tokio::time::Instant::now() + GENEROUS;
    loop {
        let msg = tokio::time::timeout_at(deadline, p.reader.recv())
            .await
            .expect("the seeder kept a peer that sent have_all without the fast bit");
        match msg {
            Ok(Message::Unchoke) => panic!("unchoked a peer that broke BEP 6 negotiation"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(seeder);
}

/// BEP 6 from the seeder's side, against a peer that negotiated it: `have_all` is the first
/// message; the peer's allowed-fast set (BEP 6's canonical one for its IP) follows; while
/// choked, a request for an allowed-fast piece is served and any other gets a reject
/// instead of silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_seeder_opens_with_have_all_serves_allowed_fast_and_rejects_the_rest() {
    let net = testnet(146, 4).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("fast-seeder.bin");
    const SMALL: u32 = 16 * 1024;
    let pieces = 32u32;
    let data = content((pieces * SMALL) as usize, 8);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(u64::from(SMALL)));
    let ih = info_hash(&info);
    let seeder = Peer::seeder(v4(127, 146, 11, 1), &[net.addr(0)], &info, src.path()).await;
    let ip = v4(127, 146, 11, 2);
    let mut p = scripted_fast_peer(ip, seeder.addr(), ih).await;
    assert_eq!(next(&mut p).await, Message::HaveAll, "have_all comes first");
    let expected = trackerless::wire::fast::allowed_fast_set(
        ip,
        &ih,
        pieces,
        trackerless::wire::fast::ALLOWED_FAST_COUNT,
    );
    let mut allowed = Vec::new();
    while allowed.len() < expected.len() {
        match next(&mut p).await {
            Message::AllowedFast { piece } => allowed.push(piece),
            Message::Unchoke => panic!("unchoked a peer that never said it was interested"),
            _ => {}
        }
    }
    assert_eq!(allowed, expected, "BEP 6's canonical allowed-fast set");
    let fast_piece = allowed[0];
    let other = (0..pieces).find(|p| !allowed.contains(p)).unwrap();
    // Still choked (never interested): one request outside the set, one inside.
    send(
        &mut p,
        &[request(other, 0, BLOCK), request(fast_piece, 0, BLOCK)],
    )
    .await;
    let (mut rejected, mut served) = (false, false);
    while !(rejected && served) {
        match next(&mut p).await {
            Message::RejectRequest {
                index,
                begin,
                length,
            } => {
                assert_eq!(
                    (index, begin, length),
                    (other, 0, BLOCK),
                    "the wrong reject"
                );
                rejected = true;
            }
            Message::Piece {
                index,
                begin,
                block,
            } => {
                assert_eq!(
                    (index, begin),
                    (fast_piece, 0),
                    "only the allowed-fast piece"
                );
                let at = (index * SMALL) as usize;
                assert_eq!(&block[..], &data[at..at + BLOCK as usize]);
                served = true;
            }
            Message::Unchoke => panic!("unchoked a peer that never said it was interested"),
            _ => {}
        }
    }
    drop(p);
    drop(seeder);
    net.shutdown().await;
}

/// BEP 6 from the downloader's side: a peer that has everything (`have_all`), never
/// unchokes us, and allows two pieces fast. We ask for exactly those pieces while choked; a
/// rejected block is asked for again (the reject hands it back at once); once the peer
/// unchokes, the rest follows and the download completes from it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_downloader_fetches_allowed_fast_pieces_while_choked_and_retries_rejects() {
    let net = testnet(146, 4).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("fast-downloader.bin");
    let pieces = 6u32;
    let data = content((pieces * PIECE) as usize, 9);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    let ih = info_hash(&info);
    let out = tempfile::tempdir().unwrap();
    let dl = Peer::start(
        v4(127, 146, 11, 3),
        &[net.addr(1)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |_| {},
    )
    .await;
    wait_until("the session downloads", GENEROUS, async || {
        matches!(dl.session.phase(), Phase::Downloading)
    })
    .await;
    let mut p = scripted_fast_peer(v4(127, 146, 11, 4), dl.addr(), ih).await;
    assert_eq!(
        next(&mut p).await,
        Message::HaveNone,
        "have_none comes first"
    );
    let allowed = [4u32, 1];
    send(
        &mut p,
        &[
            Message::HaveAll,
            Message::AllowedFast { piece: allowed[0] },
            Message::AllowedFast { piece: allowed[1] },
        ],
    )
    .await;
    let serve = |index: u32, begin: u32, length: u32| {
        let at = (index * PIECE + begin) as usize;
        Message::Piece {
            index,
            begin,
            block: Bytes::copy_from_slice(&data[at..at + length as usize]),
        }
    };
    // Choked: only blocks of the allowed pieces are requested. The first request is
    // rejected and must come again.
    let mut rejected = None;
    let mut choked_blocks = 0;
    let blocks_per_piece = PIECE / BLOCK;
    while choked_blocks < 2 * blocks_per_piece {
        // Anything else is interest, our own allowed-fast set, the extension handshake or
        // the DHT port.
        let Message::Request {
            index,
            begin,
            length,
        } = next(&mut p).await
        else {
            continue;
        };
        assert!(
            allowed.contains(&index),
            "requested piece {index} while choked; allowed fast: {allowed:?}"
        );
        if rejected.is_none() {
            rejected = Some((index, begin, length));
            let reject = Message::RejectRequest {
                index,
                begin,
                length,
            };
            send(&mut p, &[reject]).await;
            continue;
        }
        send(&mut p, &[serve(index, begin, length)]).await;
        choked_blocks += 1;
    }
    // Both allowed pieces are complete, the rejected block included (asked again).
    wait_until("both allowed-fast pieces verified", GENEROUS, async || {
        dl.session.progress().verified_pieces >= 2
    })
    .await;
    // Unchoked: the rest.
    send(&mut p, &[Message::Unchoke]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while matches!(dl.session.phase(), Phase::Checking | Phase::Downloading) {
        let msg = tokio::time::timeout_at(deadline, p.reader.recv())
            .await
            .expect("the download did not finish from the fast peer");
        match msg {
            Ok(Message::Request {
                index,
                begin,
                length,
            }) => {
                assert!(!allowed.contains(&index), "allowed pieces were complete");
                send(&mut p, &[serve(index, begin, length)]).await;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    dl.wait_complete(Duration::from_secs(30)).await;
    assert!(rejected.is_some());
    assert_eq!(
        std::fs::read(out.path().join("fast-downloader.bin")).unwrap(),
        data
    );
    net.shutdown().await;
}

/// The extension handshake a session opens with (after its bitfield, if any).
async fn ext_handshake_of(c: &mut Conn) -> ExtHandshake {
    loop {
        if let Message::Extended {
            id: EXT_HANDSHAKE_ID,
            payload,
        } = next(c).await
        {
            return ExtHandshake::decode(&payload).unwrap();
        }
    }
}

/// Our extension handshake advertising `ut_pex` on `pex_id`, with listen port `p`.
fn pex_handshake(p: u16, pex_id: u8) -> Message {
    let mut hs = ExtHandshake::ours(Some(p), None);
    hs.m.insert(UT_PEX.to_owned(), pex_id);
    hs.to_message()
}

/// The next `ut_pex` message (sent to `pex_id`), within `GENEROUS`.
async fn next_pex(c: &mut Conn, pex_id: u8) -> PexMsg {
    let deadline = tokio::time::Instant::now() + GENEROUS;
    loop {
        let m = tokio::time::timeout_at(deadline, next(c))
            .await
            .expect("no ut_pex message in time");
        if let Message::Extended { id, payload } = m
            && id == pex_id
        {
            return PexMsg::decode(&payload).unwrap();
        }
    }
}

/// A single-file torrent of `pieces` pieces in a fresh directory.
fn pex_torrent(name: &str, pieces: usize, seed: u64) -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join(name);
    let data = content(pieces * PIECE as usize, seed);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(u64::from(PIECE)));
    (src, info, data)
}

/// BEP 11 receive side: a downloader whose only way to the seeder is a scripted peer's
/// `ut_pex` message dials the seeder named there and completes. The seeder's session has no
/// DHT (it never announces), so neither the DHT nor anything else names it. A second
/// message right after the first is ignored as a flood and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pex_names_a_seeder_the_dht_never_saw() {
    let net = testnet(146, 4).await;
    let (src, info, data) = pex_torrent("pex.bin", 2, 8);
    let ih = info_hash(&info);
    let seeder = Peer::start(
        v4(127, 146, 7, 1),
        &[net.addr(0)],
        &info,
        src.path(),
        Mode::ReadOnly,
        |c| {
            c.seed = true;
            c.assume_complete = true;
            c.dht = None;
        },
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let dl = Peer::start(
        v4(127, 146, 7, 2),
        &[net.addr(1)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |_| {},
    )
    .await;
    // Connections that arrive during the start-up check are refused; wait it out.
    wait_until("the start-up check to end", GENEROUS, async || {
        matches!(dl.session.phase(), Phase::Downloading)
    })
    .await;
    let mut p = scripted_peer(v4(127, 146, 7, 3), dl.addr(), ih).await;
    let theirs = ext_handshake_of(&mut p).await;
    let pex_id = theirs
        .ext_id(UT_PEX)
        .expect("the downloader advertises ut_pex");
    let s = seeder.addr();
    let mut one = Vec::new();
    PexMsg {
        added: vec![(s, flags::SEED)],
        dropped: vec![],
    }
    .encode_into(&mut one);
    let before = pex_counts();
    send(
        &mut p,
        &[
            pex_handshake(7003, 1),
            Message::Extended {
                id: pex_id,
                payload: Bytes::from(one.clone()),
            },
            Message::Extended {
                id: pex_id,
                payload: Bytes::from(one),
            },
        ],
    )
    .await;
    dl.wait_complete(GENEROUS).await;
    assert_eq!(std::fs::read(out.path().join("pex.bin")).unwrap(), data);
    let after = pex_counts();
    assert!(after.msgs_in > before.msgs_in, "{before:?} {after:?}");
    assert!(after.ignored_flood > before.ignored_flood, "{after:?}");
    assert!(after.peers_learned > before.peers_learned, "{after:?}");
    drop(p);
    drop(seeder);
    net.shutdown().await;
}

/// A seeder limited to 64 KiB/s (so downloaders stay connected for a while) that announces
/// to `net`, and a downloader (`pex` on or off) connected to it through the DHT.
async fn slow_swarm(
    net: &trackerless::sim::testnet::Testnet,
    third: u8,
    pex: bool,
) -> (Peer, Peer, InfoHash, Vec<tempfile::TempDir>) {
    let (src, info, _) = pex_torrent("slow.bin", 4, 9);
    let ih = info_hash(&info);
    let seeder = Peer::start(
        v4(127, 146, third, 1),
        &[net.addr(0)],
        &info,
        src.path(),
        Mode::ReadOnly,
        |c| {
            c.seed = true;
            c.assume_complete = true;
            c.upload_rate = Some(64 * 1024);
        },
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let dl = Peer::start(
        v4(127, 146, third, 2),
        &[net.addr(1)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |c| c.pex = pex,
    )
    .await;
    wait_until("the downloader to reach the seeder", GENEROUS, async || {
        dl.session.progress().peers >= 1
    })
    .await;
    (seeder, dl, ih, vec![src, out])
}

/// BEP 11 send side: a downloader tells each `ut_pex` peer the others it is connected to,
/// with their listen addresses (the seeder it dialed: flagged seed and reachable; an
/// incoming scripted peer: its IP and the `p` of its extension handshake), never the
/// recipient itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pex_tells_each_peer_the_others_but_not_itself() {
    let net = testnet(146, 4).await;
    let (seeder, dl, ih, _dirs) = slow_swarm(&net, 8, true).await;
    let s = seeder.addr();
    let mut p1 = scripted_peer(v4(127, 146, 8, 3), dl.addr(), ih).await;
    send(&mut p1, &[pex_handshake(7001, 5)]).await;
    // p1's handshake is on its way before p2 even connects, and p2's first message goes out
    // two seconds after p2's handshake, so it names p1.
    wait_until("p1 to be registered", GENEROUS, async || {
        dl.session.progress().peers >= 2
    })
    .await;
    let mut p2 = scripted_peer(v4(127, 146, 8, 4), dl.addr(), ih).await;
    send(&mut p2, &[pex_handshake(7002, 6)]).await;
    let me1: SocketAddr = "127.146.8.3:7001".parse().unwrap();
    let me2: SocketAddr = "127.146.8.4:7002".parse().unwrap();
    let m2 = next_pex(&mut p2, 6).await;
    assert!(
        m2.added.iter().all(|(a, _)| *a != me2),
        "echoed p2 to itself: {m2:?}"
    );
    let seed_entry = m2.added.iter().find(|(a, _)| *a == s).copied();
    assert_eq!(
        seed_entry,
        Some((s, flags::SEED | flags::REACHABLE)),
        "{m2:?}"
    );
    // p1 is known by its listen address (it connected in, so it is not flagged reachable).
    assert!(m2.added.contains(&(me1, 0)), "{m2:?}");
    let m1 = next_pex(&mut p1, 5).await;
    assert!(m1.added.iter().all(|(a, _)| *a != me1), "{m1:?}");
    assert!(m1.added.iter().any(|(a, _)| *a == s), "{m1:?}");
    drop((p1, p2, dl, seeder));
    net.shutdown().await;
}

/// With PEX off (`--no-pex`), the extension handshake has no `ut_pex` and no message goes
/// to a peer that advertises it. Absence is observed over a window longer than the first
/// PEX delay (plus the one-second tick that sends it) by reading every message; the test
/// above shows the same set-up with PEX on sends within that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pex_advertises_and_sends_nothing() {
    let net = testnet(146, 4).await;
    let (seeder, dl, ih, _dirs) = slow_swarm(&net, 9, false).await;
    let mut p = scripted_peer(v4(127, 146, 9, 3), dl.addr(), ih).await;
    let theirs = ext_handshake_of(&mut p).await;
    assert_eq!(theirs.m.get(UT_PEX), None, "{theirs:?}");
    send(&mut p, &[pex_handshake(7009, 7)]).await;
    let until = tokio::time::Instant::now() + PEX_FIRST_DELAY + Duration::from_secs(4);
    while let Ok(m) = tokio::time::timeout_at(until, next(&mut p)).await {
        if let Message::Extended { id: 7, payload } = m {
            panic!("ut_pex sent with PEX off: {payload:?}");
        }
    }
    drop((p, dl, seeder));
    net.shutdown().await;
}

/// A private torrent (BEP 27 `private=1`) never speaks PEX, even with PEX on: no `ut_pex`
/// in the extension handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_torrents_do_not_advertise_pex() {
    let net = testnet(146, 4).await;
    let (src, mut info, _) = pex_torrent("private.bin", 1, 10);
    // Single-file info dict keys: length, name, piece length, pieces; `private` sorts last.
    assert_eq!(info.pop(), Some(b'e'));
    info.extend_from_slice(b"7:privatei1ee");
    let ih = info_hash(&info);
    let seeder = Peer::start(
        v4(127, 146, 10, 1),
        &[net.addr(0)],
        &info,
        src.path(),
        Mode::ReadOnly,
        |c| {
            c.seed = true;
            c.assume_complete = true;
            assert!(c.pex, "PEX is on by default");
        },
    )
    .await;
    assert!(seeder.session.info().private);
    let mut p = scripted_peer(v4(127, 146, 10, 2), seeder.addr(), ih).await;
    let theirs = ext_handshake_of(&mut p).await;
    assert_eq!(theirs.m.get(UT_PEX), None, "{theirs:?}");
    assert!(theirs.ext_id(trackerless::wire::UT_METADATA).is_some());
    drop((p, seeder));
    net.shutdown().await;
}
