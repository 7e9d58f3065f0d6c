//! The real-world corpus (tests/data/krpc-real: 2,761 datagrams captured from the live DHT by
//! libtorrent, uTorrent, rtorrent, aria2 and bogus nodes) must decode in full, and a node fed
//! all of it must answer every query correctly, send nothing off loopback (the corpus is full
//! of real public addresses), and still answer a ping over a real socket afterwards, as well
//! as after a battery of malformed input.

use std::net::{SocketAddr, SocketAddrV4};
mod replay_support;

use std::time::{Duration, Instant};

use trackerless::dht::driver::{Dht, DhtConfig};
use trackerless::dht::id::NodeId;
use trackerless::dht::krpc::{self, Body, Method, QueryArgs};
use trackerless::dht::node::{Config, Node};

/// All corpus datagrams with their file names, sorted.
fn corpus() -> Vec<(String, Vec<u8>)> {
    replay_support::load_all(
        &replay_support::root("tests/data/krpc-real"),
        &replay_support::bin_file,
    )
}

#[test]
fn every_real_datagram_decodes() {
    let corpus = corpus();
    assert_eq!(corpus.len(), 2761, "corpus is incomplete");
    let (mut queries, mut replies) = (0, 0);
    for (name, bytes) in &corpus {
        match krpc::decode(bytes) {
            Ok(m) => match m.body {
                Body::Query(_) => queries += 1,
                Body::Response(_) => replies += 1,
                Body::Error(_) => {}
            },
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert_eq!((queries, replies), (1972, 789));
}

/// Feeds the whole corpus to a sans-IO node, each datagram from a distinct loopback source,
/// and checks every reply.
#[test]
fn node_answers_every_real_query_and_stays_on_loopback() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::loopback_testnet(), t0);
    let mut answered = 0;
    let mut refused_announces = 0;
    for (i, (name, bytes)) in corpus().iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        let from = SocketAddr::V4(SocketAddrV4::new(
            [127, 64, (i / 250) as u8, (i % 250) as u8 + 1].into(),
            6881,
        ));
        let msg = krpc::decode(bytes).unwrap();
        node.handle_datagram(now, from, bytes);
        node.handle_timeout(now);
        let mut reply = None;
        while let Some(t) = node.poll_transmit() {
            assert!(
                matches!(t.to, SocketAddr::V4(a) if a.ip().octets()[0] == 127),
                "{name}: sent to {}",
                t.to
            );
            let m = krpc::decode(t.payload).expect("our own output decodes");
            if m.tid == msg.tid && t.to == from {
                reply = Some(m);
            }
        }
        let Body::Query(q) = msg.body else {
            // Replies and errors match nothing of ours: never answered.
            assert!(reply.is_none(), "{name}: answered a reply");
            continue;
        };
        let reply = reply.unwrap_or_else(|| panic!("{name}: query not answered"));
        match (&q.method, &reply.body) {
            // A token we never issued is refused: that error is owed.
            (Method::AnnouncePeer { .. }, Body::Error(e)) if e.code == 203 => {
                refused_announces += 1
            }
            (_, Body::Response(r)) => {
                assert_eq!(r.id, node.id(), "{name}");
                answered += 1;
            }
            (m, other) => panic!("{name}: {m:?} answered with {other:?}"),
        }
    }
    assert_eq!(answered + refused_announces, 1972);
    assert_eq!(
        refused_announces, 43,
        "every real announce carries a foreign token"
    );
    let stats = node.stats(t0);
    assert_eq!(stats.dropped_malformed, 0);
    assert_eq!(
        stats.dropped_unmatched, 789,
        "every real reply is unsolicited here"
    );
}

/// Hostile datagrams that must be dropped or answered with an error, never crash the node.
fn malformed() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"d".to_vec(),
        b"de".to_vec(),
        b"i42e".to_vec(),
        b"d1:t2:aae".to_vec(),
        b"d1:t2:aa1:y1:qe".to_vec(),
        b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe".to_vec(),
        b"d1:ad2:id20:abcdefghij0123456789e1:q7:unknown1:t2:aa1:y1:qe".to_vec(),
        b"d1:t9223372036854775807:aa1:y1:qe".to_vec(),
        b"d1:t18446744073709551616:x1:y1:qe".to_vec(),
        b"d1:ti-0e1:y1:re".to_vec(),
        b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...e1:t2:aa1:y1:re".to_vec(),
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee".to_vec(),
        vec![0xff; 1500],
        vec![b'd'; 1500],
    ];
    let mut lists = b"d1:a".to_vec();
    lists.extend(std::iter::repeat_n(b'l', 30_000));
    lists.extend(std::iter::repeat_n(b'e', 30_000));
    v.push(lists);
    let mut dicts = Vec::new();
    for _ in 0..16_000 {
        dicts.extend_from_slice(b"d1:x");
    }
    v.push(dicts);
    let mut big = b"d1:ad2:id20:abcdefghij01234567895:extra".to_vec();
    big.extend_from_slice(b"65000:");
    big.extend(std::iter::repeat_n(b'x', 65_000));
    big.extend_from_slice(b"e1:q4:ping1:t2:aa1:y1:qe");
    v.push(big);
    // Every prefix of a valid query.
    let q = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
    for n in 0..q.len() {
        v.push(q[..n].to_vec());
    }
    v
}

/// The real driver and socket: after the malformed battery and the whole corpus, the node
/// still answers a ping.
#[tokio::test]
async fn node_survives_hostile_input_on_a_real_socket() {
    let mut cfg = DhtConfig::new("127.64.100.1:0".parse().unwrap());
    cfg.node = Config::loopback_testnet();
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    let SocketAddr::V4(target) = dht.local_addr() else {
        unreachable!()
    };
    let sock = tokio::net::UdpSocket::bind("127.64.100.2:0").await.unwrap();
    let mut sent = 0u64;
    for (i, d) in malformed()
        .iter()
        .chain(corpus().iter().map(|(_, b)| b))
        .enumerate()
    {
        // The OS refuses datagrams above the UDP maximum; everything else goes out.
        if sock.send_to(d, target).await.is_ok() {
            sent += 1;
        }
        // Pace so the kernel's receive buffer never overflows (every datagram must arrive):
        // after big ones and every 50, wait until the node has read what was sent. The
        // deadline is generous: giving up early would let datagrams be dropped and fail the
        // count below for a reason that is only the machine's load.
        if d.len() > 8192 || i % 50 == 49 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while dht.stats().await.unwrap().packets_in < sent {
                assert!(
                    Instant::now() < deadline,
                    "the node stopped reading at {sent}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let mut q = Vec::new();
    krpc::encode_query(
        &mut q,
        b"pp",
        &NodeId([9; 20]),
        &QueryArgs::Ping,
        false,
        None,
    );
    sock.send_to(&q, target).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let reply = loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("the node still answers")
            .unwrap();
        let m = krpc::decode(&buf[..n]).unwrap();
        if m.tid.as_slice() == b"pp" {
            break m;
        }
    };
    assert!(matches!(reply.body, Body::Response(r) if r.id == dht.id()));
    let stats = dht.stats().await.unwrap();
    assert_eq!(
        stats.packets_in,
        sent + 1,
        "every datagram and the ping were seen"
    );
    assert!(stats.dropped_malformed > 100, "{stats:?}");
    assert_eq!(stats.dropped_not_allowed, 0);
    dht.shutdown().await.unwrap();
}
