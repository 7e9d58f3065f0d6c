//! Abuse defenses and BEP 42 on the sans-IO node (virtual clock, no sockets): per-IP rate
//! limit and bans, reply quota, bogon sources, our own id, a full store evicting rather than
//! withholding tokens, and adopting a BEP 42 id once repliers agree on our external IP.
//!
//! Some addresses here are public (203.0.113.0/24, TEST-NET-3): they only ever appear inside
//! datagrams handed to a sans-IO node whose allow-list is 127.0.0.0/8, so nothing is sent.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use trackerless::dht::bep42;
use trackerless::dht::id::{InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, QueryArgs, ResponseBody};
use trackerless::dht::limits::RateLimit;
use trackerless::dht::node::{Config, Event, Node};

fn query(args: QueryArgs<'_>, tid: &[u8], id: NodeId) -> Vec<u8> {
    let mut out = Vec::new();
    krpc::encode_query(&mut out, tid, &id, &args, false, None);
    out
}

fn ping(tid: &[u8]) -> Vec<u8> {
    query(QueryArgs::Ping, tid, NodeId([0x44; 20]))
}

/// Feeds one datagram and returns the node's reply to `from` (if any), discarding other
/// output (verification pings).
fn exchange(node: &mut Node, now: Instant, from: SocketAddr, data: &[u8]) -> Option<krpc::Message> {
    node.handle_datagram(now, from, data);
    let mut reply = None;
    while let Some(t) = node.poll_transmit() {
        let m = krpc::decode(t.payload).unwrap();
        if t.to == from && !matches!(m.body, Body::Query(_)) {
            reply = Some(m);
        }
    }
    reply
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn heavy_hitters_are_banned_and_others_still_served() {
    let t0 = Instant::now();
    let mut node = Node::new(
        Config {
            rate_limit: Some(RateLimit {
                packets: 10,
                ..Default::default()
            }),
            ..Config::loopback_testnet()
        },
        t0,
    );
    let flooder = addr("127.70.0.1:1000");
    let honest = addr("127.70.0.2:1000");
    for i in 0..10 {
        assert!(exchange(&mut node, t0, flooder, &ping(&[i])).is_some());
    }
    for i in 10..100u8 {
        assert!(
            exchange(&mut node, t0, flooder, &ping(&[i])).is_none(),
            "banned"
        );
    }
    assert!(exchange(&mut node, t0, honest, &ping(b"h")).is_some());
    let stats = node.stats(t0);
    assert_eq!(stats.dropped_rate_limited, 90);
    assert_eq!(stats.banned_ips, 1);
    // The ban lapses after five minutes.
    let later = t0 + Duration::from_secs(301);
    assert!(exchange(&mut node, later, flooder, &ping(b"x")).is_some());
}

#[test]
fn reply_quota_caps_reply_bandwidth() {
    let t0 = Instant::now();
    let mut node = Node::new(
        Config {
            reply_quota: Some(2_000),
            ..Config::loopback_testnet()
        },
        t0,
    );
    let mut answered = 0;
    for i in 0..100u8 {
        let from = addr(&format!("127.71.0.{}:1000", i + 1));
        answered += usize::from(exchange(&mut node, t0, from, &ping(&[i])).is_some());
    }
    // A ping reply is ~70 bytes: about 2,000 / 70 fit in one second's budget.
    assert!((20..=40).contains(&answered), "answered {answered}");
    assert_eq!(node.stats(t0).dropped_quota, 100 - answered as u64);
    let later = t0 + Duration::from_secs(1);
    assert!(exchange(&mut node, later, addr("127.71.1.1:1"), &ping(b"z")).is_some());
}

#[test]
fn bogon_sources_and_our_own_id_are_ignored() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::loopback_testnet(), t0);
    for bogon in [
        "0.1.2.3:1000",
        "224.0.0.1:1000",
        "255.255.255.255:1000",
        "240.1.1.1:1000",
    ] {
        assert!(
            exchange(&mut node, t0, addr(bogon), &ping(b"b")).is_none(),
            "{bogon}"
        );
    }
    let mine = query(QueryArgs::Ping, b"m", node.id());
    assert!(exchange(&mut node, t0, addr("127.72.0.1:1000"), &mine).is_none());
    assert_eq!(node.stats(t0).dropped_other, 5);
    assert_eq!(node.stats(t0).packets_out, 0);
}

/// Defect 5 of issue 12: BEP 5 has every get_peers reply carry a token; a full store takes
/// the announce by evicting its least-announced infohash instead of refusing it.
#[test]
fn a_full_store_still_hands_out_tokens_and_takes_announces() {
    let t0 = Instant::now();
    let mut cfg = Config::loopback_testnet();
    cfg.store.max_infohashes = 1;
    let mut node = Node::new(cfg, t0);
    let from = addr("127.73.0.1:1000");
    let (a, b) = (InfoHash([0xaa; 20]), InfoHash([0xbb; 20]));
    let token_for = |node: &mut Node, ih: &InfoHash| {
        let r = exchange(
            node,
            t0,
            from,
            &query(
                QueryArgs::GetPeers {
                    info_hash: ih,
                    scrape: false,
                    noseed: false,
                },
                b"g",
                NodeId([1; 20]),
            ),
        );
        match r.unwrap().body {
            Body::Response(r) => r.token,
            other => panic!("{other:?}"),
        }
    };
    let announce = |node: &mut Node, ih: &InfoHash, token: &[u8]| {
        let ann = QueryArgs::AnnouncePeer {
            info_hash: ih,
            port: 1,
            implied_port: false,
            token,
            seed: false,
        };
        matches!(
            exchange(node, t0, from, &query(ann, b"a", NodeId([1; 20])))
                .unwrap()
                .body,
            Body::Response(_)
        )
    };
    let token = token_for(&mut node, &a).expect("empty store hands out tokens");
    assert!(announce(&mut node, &a, token.as_slice()));
    let token = token_for(&mut node, &b).expect("a full store still hands out tokens");
    assert!(announce(&mut node, &b, token.as_slice()));
    assert!(node.store().contains(&b), "the new announce was stored");
    assert!(
        !node.store().contains(&a),
        "by evicting the least-announced"
    );
    let st = node.stats(t0);
    assert_eq!((st.announces_stored, st.infohashes_evicted), (2, 1));
}

#[test]
fn node_adopts_a_bep42_id_for_the_voted_external_ip() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::loopback_testnet(), t0);
    let external: SocketAddrV4 = "203.0.113.77:6881".parse().unwrap();
    assert!(!bep42::is_valid(&node.id(), *external.ip()));
    let old = node.id();
    for i in 1..=5u8 {
        let responder = SocketAddrV4::new(Ipv4Addr::new(127, 74, 0, i), 6881);
        node.ping(t0, responder);
        let t = node.poll_transmit().expect("the ping");
        let m = krpc::decode(t.payload).unwrap();
        let rid = NodeId([i; 20]);
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            m.tid.as_slice(),
            &ResponseBody::id_only(&rid),
            Some(external.into()),
            None,
        );
        node.handle_datagram(t0, SocketAddr::V4(responder), &reply);
    }
    let events: Vec<Event> = std::iter::from_fn(|| node.poll_event()).collect();
    assert!(events.contains(&Event::IdChanged(node.id())), "{events:?}");
    assert_ne!(node.id(), old);
    assert!(bep42::is_valid(&node.id(), *external.ip()));
    assert_eq!(node.stats(t0).external_ip, Some((*external.ip()).into()));
    // The table survived the change of id.
    assert_eq!(node.table().len(), 5);
}
