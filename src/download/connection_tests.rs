//! Unit tests of [`PeerConnection`]: one or more per rule of the module docs, without a
//! socket. Each drives the machine with messages and the time, and reads the frames it
//! queued (decoded) and the events it raised.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::torrent::InfoHash;
use crate::torrent::metainfo::Info;
use crate::wire::fast::{ALLOWED_FAST_COUNT, allowed_fast_set};
use crate::wire::message::FrameDecoder;
use crate::wire::pex::{PEX_FIRST_DELAY, PEX_MIN_RECEIVE_GAP, PexMsg};
use crate::wire::ut_metadata::MetadataMsg;
use crate::wire::{ExtHandshake, Message, OUR_UT_METADATA_ID, OUR_UT_PEX_ID, WireError};

/// 40 pieces of 32 KiB (two blocks each), the last one 20,000 bytes (a full block and a
/// short one).
const PIECES: usize = 40;
const PIECE_LEN: u32 = 32_768;
const LAST_LEN: u32 = 20_000;
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 6881);
/// The ut_metadata and ut_pex ids the scripted peer advertises.
const PEER_UT_METADATA: u8 = 3;
const PEER_UT_PEX: u8 = 4;

fn info_bytes() -> Vec<u8> {
    let total = (PIECES as u64 - 1) * u64::from(PIECE_LEN) + u64::from(LAST_LEN);
    let mut v =
        format!("d6:lengthi{total}e4:name1:x12:piece lengthi{PIECE_LEN}e6:pieces").into_bytes();
    v.extend_from_slice(format!("{}:", 20 * PIECES).as_bytes());
    v.extend(std::iter::repeat_n(7u8, 20 * PIECES));
    v.push(b'e');
    v
}

fn config(fast: bool) -> ConnConfig {
    let raw = info_bytes();
    ConnConfig {
        info: Arc::new(Info::from_bytes(&raw).unwrap()),
        info_bytes: Bytes::from(raw),
        info_hash: InfoHash([9; 20]),
        addr: SocketAddr::V4(PEER),
        outgoing: true,
        fast,
        extensions: true,
        dht_port: Some(6999),
        listen_port: Some(7000),
        our_ipv6: None,
        pex: true,
        max_pipeline: 512,
    }
}

fn bits(pieces: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(PIECES);
    for &p in pieces {
        b.set(p as usize);
    }
    b
}

fn block(piece: u32, begin: u32, length: u32) -> BlockRef {
    BlockRef {
        piece,
        begin,
        length,
    }
}

fn req(r: BlockRef) -> Message {
    Message::Request {
        index: r.piece,
        begin: r.begin,
        length: r.length,
    }
}

fn piece_msg(r: BlockRef) -> Message {
    Message::Piece {
        index: r.piece,
        begin: r.begin,
        block: Bytes::from(vec![1u8; r.length as usize]),
    }
}

/// A connection after its greeting was taken: `ours` are our pieces.
fn conn(cfg: ConnConfig, ours: &[u32], now: Instant) -> PeerConnection {
    let mut c = PeerConnection::new(cfg, &bits(ours), now);
    sent(&mut c, now);
    c
}

/// The frames the connection queued since the last call, decoded, as a driver that writes
/// them at once would see them (so nothing waits for the socket afterwards).
fn sent(c: &mut PeerConnection, now: Instant) -> Vec<Message> {
    let out = queued(c, now);
    c.on_written(now, c.handed);
    out
}

/// Like [`sent`], but the driver has not written them yet.
fn queued(c: &mut PeerConnection, now: Instant) -> Vec<Message> {
    let Some(raw) = c.take_transmit(now) else {
        return Vec::new();
    };
    let mut d = FrameDecoder::new(1 << 20);
    d.feed(&raw);
    let mut out = Vec::new();
    while let Some(m) = d.decode().unwrap() {
        out.push(m);
    }
    assert_eq!(d.buffered(), 0, "whole frames only");
    out
}

fn events(c: &mut PeerConnection) -> Vec<PeerEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn ext_hs(p: Option<u16>, pex: bool) -> Message {
    let mut m = BTreeMap::from([("ut_metadata".to_owned(), PEER_UT_METADATA)]);
    if pex {
        m.insert("ut_pex".to_owned(), PEER_UT_PEX);
    }
    ExtHandshake {
        m,
        p,
        ..ExtHandshake::default()
    }
    .to_message()
}

fn their_ext(msgs: &[Message]) -> Vec<ExtHandshake> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Extended { id: 0, payload } => Some(ExtHandshake::decode(payload).unwrap()),
            _ => None,
        })
        .collect()
}

/// Unchoked by the peer, which has `pieces`, and with the first batch of requests taken:
/// returns the blocks requested.
fn downloading(c: &mut PeerConnection, pieces: &[u32], now: Instant) -> Vec<BlockRef> {
    c.handle(
        now,
        Message::Bitfield(Bytes::copy_from_slice(bits(pieces).as_bytes())),
    )
    .unwrap();
    c.handle(now, Message::Unchoke).unwrap();
    events(c);
    let room = c.wants_blocks().expect("room to request").room;
    let mut picked = Vec::new();
    'outer: for &p in pieces {
        for b in 0..2 {
            if picked.len() == room {
                break 'outer;
            }
            picked.push(block(p, b * BLOCK, BLOCK));
        }
    }
    c.requested(now, &picked);
    sent(c, now);
    picked
}

// ----- opening and extensions -----

#[test]
fn greeting_is_bitfield_then_extension_handshake_then_port() {
    let t = Instant::now();
    let mut c = PeerConnection::new(config(false), &bits(&[0, 5]), t);
    let out = sent(&mut c, t);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(
        out[0],
        Message::Bitfield(Bytes::copy_from_slice(bits(&[0, 5]).as_bytes()))
    );
    let hs = &their_ext(&out)[0];
    assert_eq!(hs.p, Some(7000));
    assert_eq!(hs.metadata_size, Some(info_bytes().len() as u64));
    assert_eq!(hs.yourip, Some(SocketAddr::V4(PEER).ip()));
    assert_eq!(hs.reqq, Some(MAX_QUEUED_REQUESTS as u32));
    assert_eq!(hs.ext_id("ut_metadata"), Some(OUR_UT_METADATA_ID));
    assert_eq!(hs.ext_id("ut_pex"), Some(OUR_UT_PEX_ID));
    assert_eq!(out[2], Message::Port(6999));

    // Nothing to announce without pieces (and no Fast); no extension handshake or port
    // when the peer's handshake did not ask for them; no ut_pex when PEX is off.
    let cfg = ConnConfig {
        extensions: false,
        dht_port: None,
        ..config(false)
    };
    let mut c = PeerConnection::new(cfg, &bits(&[]), t);
    assert!(sent(&mut c, t).is_empty());
    let cfg = ConnConfig {
        pex: false,
        ..config(false)
    };
    let mut c = PeerConnection::new(cfg, &bits(&[]), t);
    let hs = &their_ext(&sent(&mut c, t))[0];
    assert_eq!(hs.ext_id("ut_pex"), None);
}

#[test]
fn fast_greeting_uses_have_all_or_have_none_and_sends_the_allowed_fast_set() {
    let t = Instant::now();
    let cfg = ConnConfig {
        extensions: false,
        dht_port: None,
        ..config(true)
    };
    let all: Vec<u32> = (0..PIECES as u32).collect();
    let expected = allowed_fast_set(
        *PEER.ip(),
        &InfoHash([9; 20]),
        PIECES as u32,
        ALLOWED_FAST_COUNT,
    );
    assert_eq!(expected.len(), ALLOWED_FAST_COUNT);
    let allowed: Vec<Message> = expected
        .iter()
        .map(|&piece| Message::AllowedFast { piece })
        .collect();
    for (ours, first) in [
        (all.clone(), Message::HaveAll),
        (vec![], Message::HaveNone),
        (
            vec![3],
            Message::Bitfield(Bytes::copy_from_slice(bits(&[3]).as_bytes())),
        ),
    ] {
        let mut c = PeerConnection::new(cfg.clone(), &bits(&ours), t);
        let out = sent(&mut c, t);
        assert_eq!(out[0], first);
        assert_eq!(out[1..], allowed[..]);
    }
    // An IPv6 peer has no allowed-fast set (BEP 6 defines it for IPv4).
    let cfg6 = ConnConfig {
        addr: "[fd77::1]:6881".parse().unwrap(),
        ..cfg
    };
    let mut c = PeerConnection::new(cfg6, &bits(&[]), t);
    assert_eq!(sent(&mut c, t), vec![Message::HaveNone]);
}

#[test]
fn extension_handshakes_accumulate_and_make_an_incoming_peers_listen_address_known_once() {
    let t = Instant::now();
    let cfg = ConnConfig {
        outgoing: false,
        ..config(false)
    };
    let mut c = conn(cfg, &[], t);
    assert_eq!(
        c.listen_addr(),
        None,
        "an incoming peer's source port is not its listen port"
    );
    c.handle(t, ext_hs(Some(5000), false)).unwrap();
    let l = SocketAddr::V4(SocketAddrV4::new(*PEER.ip(), 5000));
    assert_eq!(events(&mut c), vec![PeerEvent::ListenAddr(l)]);
    assert_eq!(c.listen_addr(), Some(l));
    // A later handshake adds to the first (BEP 10) and does not move the listen address.
    let later = ExtHandshake {
        m: BTreeMap::from([("ut_pex".to_owned(), 8)]),
        p: Some(6000),
        reqq: Some(77),
        ..ExtHandshake::default()
    };
    c.handle(t, later.to_message()).unwrap();
    assert!(events(&mut c).is_empty());
    assert_eq!(c.listen_addr(), Some(l));
    assert_eq!(c.peer_ext().ext_id("ut_metadata"), Some(PEER_UT_METADATA));
    assert_eq!(c.peer_ext().ext_id("ut_pex"), Some(8));
    assert_eq!(c.peer_ext().reqq, Some(77));
    // An outgoing peer listens where we dialed it; its `p` changes nothing.
    let mut c = conn(config(false), &[], t);
    assert_eq!(c.listen_addr(), Some(SocketAddr::V4(PEER)));
    c.handle(t, ext_hs(Some(5000), false)).unwrap();
    assert!(events(&mut c).is_empty());
    assert_eq!(c.listen_addr(), Some(SocketAddr::V4(PEER)));
    // An incoming IPv6 peer's listen address is its IPv6 address and `p`.
    let cfg6 = ConnConfig {
        outgoing: false,
        addr: "[fd77::5]:40000".parse().unwrap(),
        ..config(false)
    };
    let mut c = conn(cfg6, &[], t);
    c.handle(t, ext_hs(Some(6000), false)).unwrap();
    let l6: SocketAddr = "[fd77::5]:6000".parse().unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::ListenAddr(l6)]);
}

#[test]
fn the_bep10_ipv6_address_goes_both_ways() {
    let t = Instant::now();
    // Ours: our IPv6 listen address, when we have one.
    let cfg = ConnConfig {
        our_ipv6: Some("fd77::1".parse().unwrap()),
        ..config(false)
    };
    let mut c = PeerConnection::new(cfg, &bits(&[]), t);
    assert_eq!(
        their_ext(&sent(&mut c, t))[0].ipv6,
        Some("fd77::1".parse().unwrap())
    );
    let mut c = PeerConnection::new(config(false), &bits(&[]), t);
    assert_eq!(their_ext(&sent(&mut c, t))[0].ipv6, None);
    // Theirs: a peer met over IPv4 names its IPv6 address: a candidate at its `p`, once.
    let hs = ExtHandshake {
        p: Some(5000),
        ipv6: Some("fd77::2".parse().unwrap()),
        ..ExtHandshake::default()
    };
    c.handle(t, hs.to_message()).unwrap();
    let other: SocketAddr = "[fd77::2]:5000".parse().unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::OtherAddr(other)]);
    c.handle(t, hs.to_message()).unwrap();
    assert!(events(&mut c).is_empty(), "once");
    // Without a port there is nothing to dial; over IPv6 already, nothing new.
    let mut c = conn(config(false), &[], t);
    let no_port = ExtHandshake {
        ipv6: Some("fd77::2".parse().unwrap()),
        ..ExtHandshake::default()
    };
    c.handle(t, no_port.to_message()).unwrap();
    assert!(events(&mut c).is_empty());
    let cfg6 = ConnConfig {
        addr: "[fd77::3]:6881".parse().unwrap(),
        ..config(false)
    };
    let mut c = conn(cfg6, &[], t);
    c.handle(t, hs.to_message()).unwrap();
    assert!(events(&mut c).is_empty());
}

#[test]
fn metadata_requests_are_answered_from_the_info_dict_and_missing_pieces_rejected() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    c.handle(t, ext_hs(None, false)).unwrap();
    let ask = |piece| {
        let mut payload = Vec::new();
        MetadataMsg::Request { piece }.encode_into(&mut payload);
        Message::Extended {
            id: OUR_UT_METADATA_ID,
            payload: Bytes::from(payload),
        }
    };
    c.handle(t, ask(0)).unwrap();
    c.handle(t, ask(1)).unwrap();
    let out = sent(&mut c, t);
    assert_eq!(out.len(), 2);
    let raw = info_bytes();
    match &out[0] {
        Message::Extended { id, payload } => {
            assert_eq!(*id, PEER_UT_METADATA, "addressed with the peer's id");
            assert_eq!(
                MetadataMsg::decode(payload).unwrap(),
                MetadataMsg::Data {
                    piece: 0,
                    total_size: raw.len() as u64,
                    data: &raw[..]
                }
            );
        }
        other => panic!("{other:?}"),
    }
    match &out[1] {
        Message::Extended { payload, .. } => assert_eq!(
            MetadataMsg::decode(payload).unwrap(),
            MetadataMsg::Reject { piece: 1 }
        ),
        other => panic!("{other:?}"),
    }
}

fn pex_payload(added: &[SocketAddr]) -> Message {
    let msg = PexMsg {
        added: added.iter().map(|a| (*a, 0)).collect(),
        dropped: Vec::new(),
    };
    let mut payload = Vec::new();
    msg.encode_into(&mut payload);
    Message::Extended {
        id: OUR_UT_PEX_ID,
        payload: Bytes::from(payload),
    }
}

#[test]
fn received_pex_yields_candidates_but_floods_and_junk_are_ignored_without_closing() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    let other = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 51413));
    let other6: SocketAddr = "[fd77::9]:51413".parse().unwrap();
    c.handle(t, pex_payload(&[other, SocketAddr::V4(PEER), other6]))
        .unwrap();
    assert_eq!(
        events(&mut c),
        vec![PeerEvent::Pex(vec![other, other6])],
        "both families; the peer itself is not a candidate"
    );
    // Too soon after the last: ignored.
    let third = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 10), 51413));
    c.handle(t + Duration::from_secs(5), pex_payload(&[third]))
        .unwrap();
    assert!(events(&mut c).is_empty());
    // Malformed: ignored, the connection stays.
    let later = t + PEX_MIN_RECEIVE_GAP + Duration::from_secs(1);
    let junk = Message::Extended {
        id: OUR_UT_PEX_ID,
        payload: Bytes::from_static(b"not bencode"),
    };
    c.handle(later, junk).unwrap();
    assert!(events(&mut c).is_empty());
    // With PEX off, the id is not ours: ignored as any unadvertised extension.
    let cfg = ConnConfig {
        pex: false,
        ..config(false)
    };
    let mut c = conn(cfg, &[], t);
    c.handle(t, pex_payload(&[other])).unwrap();
    assert!(events(&mut c).is_empty());
}

#[test]
fn our_pex_goes_out_when_due_and_never_names_the_peer_to_itself() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    assert!(
        !c.pex_due(t + Duration::from_secs(600)),
        "the peer does not speak ut_pex"
    );
    c.handle(t, ext_hs(None, true)).unwrap();
    assert!(!c.pex_due(t), "the first message waits a moment");
    let due = t + PEX_FIRST_DELAY;
    assert!(c.pex_due(due));
    let other = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 7, 7, 7), 6881));
    let other6: SocketAddr = "[fd77::7]:6881".parse().unwrap();
    c.send_pex(due, &[(SocketAddr::V4(PEER), 0), (other, 2), (other6, 0)]);
    let out = sent(&mut c, due);
    assert_eq!(out.len(), 1);
    match &out[0] {
        Message::Extended { id, payload } => {
            assert_eq!(*id, PEER_UT_PEX);
            let msg = PexMsg::decode(payload).unwrap();
            assert_eq!(msg.added, vec![(other, 2), (other6, 0)]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !c.pex_due(due + Duration::from_secs(1)),
        "at most one a minute"
    );
    // Switched off by a later handshake (id 0): nothing more.
    let off = ExtHandshake {
        m: BTreeMap::from([("ut_pex".to_owned(), 0)]),
        ..ExtHandshake::default()
    };
    c.handle(due, off.to_message()).unwrap();
    let much_later = due + Duration::from_secs(3600);
    assert!(!c.pex_due(much_later));
    c.send_pex(much_later, &[(other, 0)]);
    assert!(sent(&mut c, much_later).is_empty());
}

#[test]
fn port_messages_name_dht_nodes_unless_the_port_is_zero() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    c.handle(t, Message::Port(7777)).unwrap();
    c.handle(t, Message::Port(0)).unwrap();
    assert_eq!(
        events(&mut c),
        vec![PeerEvent::DhtNode(SocketAddr::V4(SocketAddrV4::new(
            *PEER.ip(),
            7777
        )))]
    );
    // An IPv6 peer names its IPv6 DHT node (BEP 32).
    let v6 = ConnConfig {
        addr: "[fd77::5]:6881".parse().unwrap(),
        ..config(false)
    };
    let mut c = conn(v6, &[], t);
    c.handle(t, Message::Port(7777)).unwrap();
    assert_eq!(
        events(&mut c),
        vec![PeerEvent::DhtNode("[fd77::5]:7777".parse().unwrap())]
    );
}

#[test]
fn unknown_messages_and_unadvertised_extensions_are_ignored() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    for m in [
        Message::Extended {
            id: 99,
            payload: Bytes::from_static(b"x"),
        },
        Message::Unknown { id: 77, len: 3 },
        Message::KeepAlive,
    ] {
        c.handle(t, m).unwrap();
    }
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c, t).is_empty());
}

// ----- downloading -----

#[test]
fn interest_follows_exactly_whether_the_peer_has_a_piece_we_lack() {
    let t = Instant::now();
    let mut c = conn(config(false), &[0], t);
    c.handle(
        t,
        Message::Bitfield(Bytes::copy_from_slice(bits(&[0]).as_bytes())),
    )
    .unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Bitfield]);
    assert!(
        sent(&mut c, t).is_empty(),
        "only what we have: not interested"
    );
    assert!(!c.am_interested());
    c.handle(t, Message::Have { piece: 1 }).unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Have(1)]);
    assert_eq!(sent(&mut c, t), vec![Message::Interested]);
    // A repeated have changes nothing.
    c.handle(t, Message::Have { piece: 1 }).unwrap();
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c, t).is_empty());
    // We complete piece 1 ourselves: `have` goes out, and interest with it.
    c.we_have(t, 1);
    assert_eq!(
        sent(&mut c, t),
        vec![Message::Have { piece: 1 }, Message::NotInterested]
    );
    // A piece we already had announced again is not sent twice.
    c.we_have(t, 1);
    assert!(sent(&mut c, t).is_empty());
    // A have that arrives before any bitfield is the peer's first word.
    let mut c = conn(config(false), &[], t);
    c.handle(t, Message::Have { piece: 4 }).unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Have(4)]);
    assert_eq!(sent(&mut c, t), vec![Message::Interested]);
}

#[test]
fn out_of_range_pieces_and_wrong_bitfields_are_protocol_violations() {
    let t = Instant::now();
    let violation = |fast: bool, m: Message| {
        let mut c = conn(config(fast), &[], t);
        matches!(c.handle(t, m), Err(PeerError::Protocol(_)))
    };
    assert!(violation(
        false,
        Message::Have {
            piece: PIECES as u32
        }
    ));
    assert!(violation(
        true,
        Message::SuggestPiece {
            piece: PIECES as u32
        }
    ));
    assert!(!violation(true, Message::SuggestPiece { piece: 1 }));
    // 40 pieces take 5 bytes.
    assert!(violation(
        false,
        Message::Bitfield(Bytes::from_static(&[0; 6]))
    ));
    assert!(violation(
        false,
        Message::Bitfield(Bytes::from_static(&[0; 4]))
    ));
    assert!(!violation(
        false,
        Message::Bitfield(Bytes::from_static(&[0; 5]))
    ));
}

#[test]
fn a_later_bitfield_is_read_as_haves_and_never_clears_pieces() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    c.handle(t, Message::Have { piece: 1 }).unwrap();
    events(&mut c);
    c.handle(
        t,
        Message::Bitfield(Bytes::copy_from_slice(bits(&[0, 1]).as_bytes())),
    )
    .unwrap();
    assert_eq!(
        events(&mut c),
        vec![PeerEvent::Have(0)],
        "no second picture"
    );
    c.handle(
        t,
        Message::Bitfield(Bytes::copy_from_slice(bits(&[2]).as_bytes())),
    )
    .unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Have(2)]);
    assert_eq!(c.bits(), &bits(&[0, 1, 2]), "cleared bits are ignored");
    // have_none after the first word is meaningless and ignored.
    let mut c = conn(config(true), &[], t);
    c.handle(t, Message::Have { piece: 1 }).unwrap();
    c.handle(t, Message::HaveNone).unwrap();
    assert_eq!(c.bits(), &bits(&[1]));
}

#[test]
fn two_seeds_part_at_once() {
    let t = Instant::now();
    let all: Vec<u32> = (0..PIECES as u32).collect();
    let mut c = conn(config(true), &all, t);
    assert!(matches!(
        c.handle(t, Message::HaveAll),
        Err(PeerError::Done(_))
    ));
    // A seed we meet while downloading: kept until we complete.
    let mut c = conn(config(true), &[], t);
    c.handle(t, Message::HaveAll).unwrap();
    assert!(c.is_seed());
    assert!(!c.keep_when_complete());
    let mut c = conn(config(true), &[], t);
    c.handle(t, Message::Have { piece: 0 }).unwrap();
    assert!(c.keep_when_complete());
}

#[test]
fn requests_go_out_only_while_interested_and_unchoked() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    assert!(c.wants_blocks().is_none(), "nothing known of the peer");
    c.handle(
        t,
        Message::Bitfield(Bytes::copy_from_slice(bits(&[3]).as_bytes())),
    )
    .unwrap();
    assert!(c.wants_blocks().is_none(), "choked");
    c.handle(t, Message::Unchoke).unwrap();
    let r = c.wants_blocks().unwrap();
    assert_eq!(r.room, INITIAL_PIPELINE);
    assert_eq!(r.pieces, &bits(&[3]));
    assert!(!r.restricted);
    c.requested(t, &[block(3, 0, BLOCK), block(3, BLOCK, BLOCK)]);
    assert_eq!(
        sent(&mut c, t),
        vec![
            Message::Interested,
            req(block(3, 0, BLOCK)),
            req(block(3, BLOCK, BLOCK))
        ]
    );
    // Not interested (we completed what it has): no more requests.
    c.we_have(t, 3);
    assert!(c.wants_blocks().is_none());
}

#[test]
fn the_pipeline_is_refilled_in_batches_and_grows_by_slow_start() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    let all: Vec<u32> = (0..PIECES as u32).collect();
    let picked = downloading(&mut c, &all, t);
    assert_eq!(picked.len(), INITIAL_PIPELINE);
    assert!(c.wants_blocks().is_none(), "full");
    // One block in: the target grows by one (slow start), but two free slots are less
    // than a quarter of it.
    c.handle(t, piece_msg(picked[0])).unwrap();
    assert!(c.wants_blocks().is_none());
    for r in &picked[1..8] {
        c.handle(t, piece_msg(*r)).unwrap();
    }
    // 8 blocks in: target 40, 24 outstanding, 16 free (a quarter is 10).
    assert_eq!(c.wants_blocks().unwrap().room, 16);
    // Once measured, the rate decides: two seconds' worth plus a few blocks. Eight blocks
    // in the first second (smoothed: 40 % of them) want 10 in flight; 24 are.
    c.on_tick(t + Duration::from_secs(1)).unwrap();
    assert_eq!(
        pipeline_depth(0.4 * 8.0 * f64::from(BLOCK), 0, 512, None),
        10
    );
    assert!(c.wants_blocks().is_none());
}

#[test]
fn pipeline_follows_rate_and_reqq() {
    // Unmeasured: the slow-start depth, which grows with every block received.
    assert_eq!(pipeline_depth(0.0, INITIAL_PIPELINE, 512, None), 32);
    assert_eq!(pipeline_depth(0.0, 300, 512, None), 300);
    // About two seconds' worth at the measured rate, plus a few blocks.
    assert_eq!(pipeline_depth(1024.0 * 1024.0, 32, 512, None), 132);
    assert_eq!(pipeline_depth(16384.0, 32, 512, None), 6);
    // A trickle still gets the minimum.
    assert_eq!(pipeline_depth(1.0, 32, 512, None), MIN_PIPELINE);
    // Capped by our limit and by the peer's advertised queue.
    assert_eq!(pipeline_depth(100e6, 32, 512, None), 512);
    assert_eq!(pipeline_depth(100e6, 32, 512, Some(250)), 250);
    assert_eq!(pipeline_depth(0.0, 300, 512, Some(50)), 50);
    assert_eq!(pipeline_depth(100e6, 32, 512, Some(0)), 1);
}

#[test]
fn the_peers_reqq_caps_the_pipeline() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    let hs = ExtHandshake {
        reqq: Some(5),
        ..ExtHandshake::default()
    };
    c.handle(t, hs.to_message()).unwrap();
    c.handle(
        t,
        Message::Bitfield(Bytes::copy_from_slice(bits(&[1]).as_bytes())),
    )
    .unwrap();
    c.handle(t, Message::Unchoke).unwrap();
    assert_eq!(c.wants_blocks().unwrap().room, 5);
}

#[test]
fn while_choked_with_fast_only_allowed_fast_pieces_the_peer_has_are_requested() {
    let t = Instant::now();
    let mut c = conn(config(true), &[], t);
    c.handle(
        t,
        Message::Bitfield(Bytes::copy_from_slice(bits(&[2, 3]).as_bytes())),
    )
    .unwrap();
    assert!(c.am_interested());
    assert!(c.wants_blocks().is_none(), "choked, no allowed-fast piece");
    c.handle(t, Message::AllowedFast { piece: 9 }).unwrap();
    assert!(c.wants_blocks().is_none(), "allowed, but the peer lacks it");
    c.handle(t, Message::AllowedFast { piece: 3 }).unwrap();
    let r = c.wants_blocks().unwrap();
    assert!(r.restricted);
    assert_eq!(r.pieces, &bits(&[3]));
    // Out-of-range allowed-fast pieces are ignored.
    c.handle(t, Message::AllowedFast { piece: 1000 }).unwrap();
    assert_eq!(c.wants_blocks().unwrap().pieces, &bits(&[3]));
    // Without Fast a choked peer gets no requests at all.
    let mut c = conn(config(false), &[], t);
    c.handle(
        t,
        Message::Bitfield(Bytes::copy_from_slice(bits(&[3]).as_bytes())),
    )
    .unwrap();
    assert!(c.wants_blocks().is_none());
}

#[test]
fn a_choke_gives_requests_back_without_fast_and_a_reject_gives_back_its_block() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    let picked = downloading(&mut c, &[1, 2], t);
    assert_eq!(picked.len(), 4);
    c.handle(t, Message::Choke).unwrap();
    let released: Vec<PeerEvent> = picked.iter().map(|r| PeerEvent::Released(*r)).collect();
    assert_eq!(events(&mut c), released);
    assert_eq!(c.outstanding().len(), 0);
    assert!(c.peer_choking());

    // With Fast the requests stand; the peer answers each, a reject returns that block.
    let mut c = conn(config(true), &[], t);
    let picked = downloading(&mut c, &[1, 2], t);
    c.handle(t, Message::Choke).unwrap();
    assert!(events(&mut c).is_empty());
    assert_eq!(c.outstanding().len(), 4);
    let r = picked[2];
    let reject = Message::RejectRequest {
        index: r.piece,
        begin: r.begin,
        length: r.length,
    };
    c.handle(t, reject.clone()).unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Released(r)]);
    // A reject for what we did not ask (or no longer ask) is ignored.
    c.handle(t, reject).unwrap();
    assert!(events(&mut c).is_empty());
    assert_eq!(c.outstanding().len(), 3);
}

#[test]
fn blocks_we_asked_for_go_to_the_picker_and_unrequested_ones_are_counted_then_fatal() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    let picked = downloading(&mut c, &[1, 2], t);
    c.handle(t, piece_msg(picked[1])).unwrap();
    assert_eq!(
        events(&mut c),
        vec![PeerEvent::Block {
            piece: 1,
            begin: BLOCK,
            data: Bytes::from(vec![1u8; BLOCK as usize])
        }]
    );
    // Answered twice: the second is unrequested.
    c.handle(t, piece_msg(picked[1])).unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Unrequested(BLOCK)]);
    for _ in 1..MAX_UNREQUESTED {
        c.handle(t, piece_msg(block(7, 0, BLOCK))).unwrap();
    }
    assert!(matches!(
        c.handle(t, piece_msg(block(7, 0, BLOCK))),
        Err(PeerError::Protocol(_))
    ));
}

#[test]
fn a_cancel_is_sent_once_and_the_late_answer_still_counts() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    let picked = downloading(&mut c, &[1, 2], t);
    let r = picked[0];
    c.cancel(t, r);
    assert_eq!(
        sent(&mut c, t),
        vec![Message::Cancel {
            index: r.piece,
            begin: r.begin,
            length: r.length
        }]
    );
    assert_eq!(c.outstanding().len(), 3);
    // Not (or no longer) requested from this peer: nothing to cancel.
    c.cancel(t, r);
    c.cancel(t, block(30, 0, BLOCK));
    assert!(sent(&mut c, t).is_empty());
    // The answer crossed our cancel: the picker may still want it, and it is not held
    // against the peer.
    c.handle(t, piece_msg(r)).unwrap();
    assert!(matches!(
        &events(&mut c)[..],
        [PeerEvent::Block {
            piece: 1,
            begin: 0,
            ..
        }]
    ));
    // Only once.
    c.handle(t, piece_msg(r)).unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Unrequested(BLOCK)]);
}

#[test]
fn fast_messages_without_both_fast_bits_are_violations() {
    let t = Instant::now();
    for m in [
        Message::HaveAll,
        Message::HaveNone,
        Message::SuggestPiece { piece: 1 },
        Message::AllowedFast { piece: 1 },
        Message::RejectRequest {
            index: 1,
            begin: 0,
            length: BLOCK,
        },
    ] {
        let mut c = conn(config(false), &[], t);
        assert!(
            matches!(c.handle(t, m.clone()), Err(PeerError::Protocol(_))),
            "{m:?}"
        );
        let mut c = conn(config(true), &[], t);
        assert!(c.handle(t, m.clone()).is_ok(), "{m:?} with Fast");
    }
}

#[test]
fn interested_is_reported_only_while_we_choke() {
    let t = Instant::now();
    let mut c = conn(config(false), &[1], t);
    c.handle(t, Message::Interested).unwrap();
    assert_eq!(events(&mut c), vec![PeerEvent::Interested]);
    assert!(c.peer_interested());
    c.unchoke(t);
    assert_eq!(sent(&mut c, t), vec![Message::Unchoke]);
    c.unchoke(t);
    assert!(sent(&mut c, t).is_empty(), "unchoke once");
    c.handle(t, Message::NotInterested).unwrap();
    c.handle(t, Message::Interested).unwrap();
    assert!(events(&mut c).is_empty(), "already unchoked");
}

// ----- uploading -----

/// A request for piece `p`'s first block.
fn first_block(p: u32) -> BlockRef {
    block(p, 0, BLOCK)
}

#[test]
fn requests_are_queued_only_when_they_can_be_served_and_dropped_otherwise() {
    let t = Instant::now();
    let mut c = conn(config(false), &[1, 39], t);
    // Choked: dropped silently (BEP 3).
    c.handle(t, req(first_block(1))).unwrap();
    assert_eq!(c.queued_uploads().len(), 0);
    c.unchoke(t);
    sent(&mut c, t);
    for bad in [
        first_block(2),                     // a piece we lack
        block(1, PIECE_LEN - 100, 200),     // past the end of the piece
        block(39, 16_384, LAST_LEN),        // past the end of the short last piece
        block(1, 0, MAX_REQUEST + 1),       // too large
        block(1, 0, 0),                     // empty
        block(PIECES as u32 + 5, 0, BLOCK), // no such piece
    ] {
        c.handle(t, req(bad)).unwrap();
    }
    assert_eq!(c.queued_uploads().len(), 0);
    assert!(sent(&mut c, t).is_empty(), "no rejects without Fast");
    // Good ones, a repeat queued once, the short last block.
    let last = block(39, BLOCK, LAST_LEN - BLOCK);
    for r in [first_block(1), first_block(1), last] {
        c.handle(t, req(r)).unwrap();
    }
    assert_eq!(
        c.queued_uploads().copied().collect::<Vec<_>>(),
        vec![first_block(1), last]
    );
    // `cancel` removes it.
    c.handle(
        t,
        Message::Cancel {
            index: 1,
            begin: 0,
            length: BLOCK,
        },
    )
    .unwrap();
    assert_eq!(c.queued_uploads().copied().collect::<Vec<_>>(), vec![last]);
}

#[test]
fn the_request_queue_is_bounded_by_our_reqq() {
    let t = Instant::now();
    let mut c = conn(config(true), &[1], t);
    c.unchoke(t);
    sent(&mut c, t);
    for i in 0..=MAX_QUEUED_REQUESTS as u32 {
        c.handle(t, req(block(1, i % 2 * BLOCK, 1 + i / 2)))
            .unwrap();
    }
    assert_eq!(c.queued_uploads().len(), MAX_QUEUED_REQUESTS);
    assert_eq!(
        sent(&mut c, t).len(),
        1,
        "the one over the limit is rejected"
    );
}

/// The allowed-fast set we give the test peer (BEP 6's, for its address and our info
/// hash), and a piece outside it.
fn our_allowed_fast_set() -> (Vec<u32>, u32) {
    let allowed = allowed_fast_set(
        *PEER.ip(),
        &InfoHash([9; 20]),
        PIECES as u32,
        ALLOWED_FAST_COUNT,
    );
    let outside = (0..PIECES as u32).find(|p| !allowed.contains(p)).unwrap();
    (allowed, outside)
}

#[test]
fn with_fast_every_unservable_request_is_rejected_and_allowed_fast_pieces_are_served_while_choked()
{
    let t = Instant::now();
    let (allowed, not_allowed) = our_allowed_fast_set();
    let all: Vec<u32> = (0..PIECES as u32).collect();
    let mut c = conn(config(true), &all, t);
    c.handle(t, req(first_block(not_allowed))).unwrap();
    c.handle(t, req(first_block(allowed[0]))).unwrap();
    assert_eq!(
        sent(&mut c, t),
        vec![Message::RejectRequest {
            index: not_allowed,
            begin: 0,
            length: BLOCK
        }]
    );
    assert_eq!(
        c.queued_uploads().copied().collect::<Vec<_>>(),
        vec![first_block(allowed[0])]
    );
    assert_eq!(
        c.next_upload(),
        Some(first_block(allowed[0])),
        "served while choked"
    );
}

#[test]
fn disk_reads_are_few_at_a_time_and_wait_for_the_socket() {
    let t = Instant::now();
    let all: Vec<u32> = (0..PIECES as u32).collect();
    let mut c = conn(config(false), &all, t);
    c.unchoke(t);
    sent(&mut c, t);
    for p in 0..20 {
        c.handle(t, req(first_block(p))).unwrap();
    }
    let mut started = 0;
    while let Some(r) = c.next_upload() {
        assert_eq!(r, first_block(started));
        c.upload_started();
        started += 1;
    }
    assert_eq!(started as usize, MAX_READS);
    // Finished reads go out as pieces.
    let data = Bytes::from(vec![5u8; BLOCK as usize]);
    for p in 0..MAX_READS as u32 {
        assert_eq!(c.on_read(t, p, 0, Some(data.clone())), u64::from(BLOCK));
    }
    let out = queued(&mut c, t);
    assert_eq!(out.len(), MAX_READS);
    assert!(matches!(
        out[0],
        Message::Piece {
            index: 0,
            begin: 0,
            ..
        }
    ));
    // The driver writes nothing: reads stop once the high-water mark waits for the socket.
    for p in 0..PIECES as u32 {
        c.handle(t, req(block(p, BLOCK, BLOCK))).unwrap();
    }
    let mut n = 0;
    while let Some(r) = c.next_upload() {
        c.upload_started();
        c.on_read(t, r.piece, r.begin, Some(data.clone()));
        queued(&mut c, t);
        n += 1;
        assert!(n < 100);
    }
    assert!(c.unsent() >= WRITE_HIGH_WATER);
    assert!(c.unsent() < WRITE_HIGH_WATER + u64::from(BLOCK) + 64);
    assert!(c.queued_uploads().len() > 0, "requests wait for the socket");
    c.on_written(t, c.handed);
    assert_eq!(c.unsent(), 0);
    assert!(c.next_upload().is_some(), "drained: reading resumes");
}

#[test]
fn choking_drops_queued_requests_and_forgets_reads_in_flight() {
    let t = Instant::now();
    let mut c = conn(config(false), &[1, 2], t);
    c.unchoke(t);
    c.handle(t, req(first_block(1))).unwrap();
    c.handle(t, req(first_block(2))).unwrap();
    c.upload_started();
    sent(&mut c, t);
    c.choke(t);
    assert_eq!(sent(&mut c, t), vec![Message::Choke]);
    assert_eq!(c.queued_uploads().len(), 0);
    assert_eq!(c.next_upload(), None);
    // The read that was in flight completes: not sent, even after an unchoke.
    c.unchoke(t);
    let data = Bytes::from(vec![5u8; BLOCK as usize]);
    assert_eq!(c.on_read(t, 1, 0, Some(data)), 0);
    assert_eq!(sent(&mut c, t), vec![Message::Unchoke]);
    c.choke(t);
    c.choke(t);
    assert_eq!(sent(&mut c, t), vec![Message::Choke], "choke once");
}

#[test]
fn with_fast_choking_rejects_what_it_drops_and_keeps_allowed_fast_requests() {
    let t = Instant::now();
    let (allowed, other) = our_allowed_fast_set();
    let all: Vec<u32> = (0..PIECES as u32).collect();
    let mut c = conn(config(true), &all, t);
    c.unchoke(t);
    c.handle(t, req(first_block(other))).unwrap();
    c.handle(t, req(first_block(allowed[0]))).unwrap();
    c.upload_started(); // the `other` read is in flight
    sent(&mut c, t);
    c.choke(t);
    assert_eq!(
        sent(&mut c, t),
        vec![
            Message::Choke,
            Message::RejectRequest {
                index: other,
                begin: 0,
                length: BLOCK
            }
        ]
    );
    assert_eq!(
        c.queued_uploads().copied().collect::<Vec<_>>(),
        vec![first_block(allowed[0])]
    );
    let data = Bytes::from(vec![5u8; BLOCK as usize]);
    assert_eq!(c.on_read(t, other, 0, Some(data)), 0, "forgotten");
}

#[test]
fn a_finished_read_goes_out_as_a_piece_and_a_failed_one_sends_nothing() {
    let t = Instant::now();
    let mut c = conn(config(false), &[1, 2], t);
    c.unchoke(t);
    c.handle(t, req(first_block(1))).unwrap();
    c.handle(t, req(first_block(2))).unwrap();
    c.upload_started();
    c.upload_started();
    sent(&mut c, t);
    assert_eq!(c.on_read(t, 2, 0, None), 0);
    let data = Bytes::from(vec![5u8; BLOCK as usize]);
    assert_eq!(c.on_read(t, 1, 0, Some(data.clone())), u64::from(BLOCK));
    assert_eq!(
        sent(&mut c, t),
        vec![Message::Piece {
            index: 1,
            begin: 0,
            block: data.clone()
        }]
    );
    assert_eq!(c.on_read(t, 1, 0, Some(data)), 0, "answered once");
}

// ----- liveness -----

#[test]
fn a_keep_alive_follows_send_silence_when_nothing_waits() {
    let t = Instant::now();
    let mut c = conn(config(false), &[], t);
    let early = t + KEEPALIVE - Duration::from_secs(1);
    c.on_tick(early).unwrap();
    assert!(sent(&mut c, early).is_empty());
    let later = t + KEEPALIVE;
    c.on_tick(later).unwrap();
    assert_eq!(queued(&mut c, later), vec![Message::KeepAlive]);
    // Bytes still wait for the socket (slowly moving): no keep-alive on top, they will do.
    let mid = later + Duration::from_secs(50);
    c.on_written(mid, c.handed - 1);
    let much_later = later + KEEPALIVE + Duration::from_secs(5);
    c.on_tick(much_later).unwrap();
    assert!(queued(&mut c, much_later).is_empty());
    c.on_written(much_later, c.handed);
    c.on_tick(much_later).unwrap();
    assert_eq!(sent(&mut c, much_later), vec![Message::KeepAlive]);
}

#[test]
fn a_peer_that_stops_reading_is_dropped_after_the_write_stall_time() {
    let t = Instant::now();
    let mut c = PeerConnection::new(config(false), &bits(&[1]), t);
    let greeting = queued(&mut c, t).len();
    assert!(greeting > 0);
    let mut now = t;
    // Progress, however slow, keeps it alive.
    for i in 1..5 {
        now = t + WRITE_STALL * i / 2;
        c.on_written(now, i as u64);
        c.on_tick(now).unwrap();
    }
    let stalled = now + WRITE_STALL + Duration::from_secs(1);
    assert!(matches!(
        c.on_tick(stalled),
        Err(PeerError::Wire(WireError::Timeout(
            crate::wire::Phase::Write
        )))
    ));
}

#[test]
fn every_end_says_who_closed_and_why() {
    use std::io::{Error, ErrorKind};
    let cases: Vec<(Result<&'static str, PeerError>, EndedBy, &str)> = vec![
        (
            Ok("both sides complete: nothing to trade"),
            EndedBy::Us,
            "both sides complete",
        ),
        (
            Err(PeerError::Done("both sides are seeds")),
            EndedBy::Us,
            "seeds",
        ),
        (
            Err(PeerError::Protocol("have for piece 9".into())),
            EndedBy::Us,
            "protocol violation: have for piece 9",
        ),
        (
            Err(PeerError::Wire(WireError::Closed)),
            EndedBy::Peer,
            "EOF",
        ),
        (
            Err(PeerError::Wire(WireError::ClosedMidFrame)),
            EndedBy::Peer,
            "EOF in the middle",
        ),
        (
            Err(PeerError::Wire(WireError::Io(Error::from(
                ErrorKind::ConnectionReset,
            )))),
            EndedBy::Peer,
            "reset",
        ),
        (
            Err(PeerError::Wire(WireError::Timeout(
                crate::wire::Phase::Write,
            ))),
            EndedBy::Us,
            "stopped reading",
        ),
        (
            Err(PeerError::Wire(WireError::Timeout(
                crate::wire::Phase::Read,
            ))),
            EndedBy::Us,
            "timeout while Read",
        ),
        (
            Err(PeerError::Wire(WireError::Io(Error::other("disk on fire")))),
            EndedBy::Error,
            "disk on fire",
        ),
    ];
    for (r, by, needle) in cases {
        let (got_by, reason) = end_reason(&r);
        assert_eq!(got_by, by, "{r:?}");
        assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
    }
    assert_eq!(EndedBy::Peer.to_string(), "peer closed");
}
