//! The DHT core against nodes that behave the way nodes on the live DHT do (issue 12): replies
//! with another id, NATs that rewrite ports, forged queries, junk `nodes`, odd tids and
//! tokens. Each test drives one sans-IO [`Node`] on a virtual clock and plays the remote
//! nodes by hand, so no socket is opened and every step is deterministic.
//!
//! Some addresses here are public (TEST-NET ranges): they only ever appear inside datagrams
//! handed to a sans-IO node, so nothing is sent anywhere.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use trackerless::dht::id::{Contact, InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, Method, QueryArgs, ResponseBody};
use trackerless::dht::node::{Config, Event, Node, PingError};

/// One datagram the node sent.
struct Sent {
    to: SocketAddrV4,
    msg: krpc::Message,
}

fn drain(node: &mut Node) -> Vec<Sent> {
    let mut out = Vec::new();
    while let Some(t) = node.poll_transmit() {
        let SocketAddr::V4(to) = t.to else {
            panic!("IPv4 only")
        };
        out.push(Sent {
            to,
            msg: krpc::decode(t.payload).expect("the node sends valid KRPC"),
        });
    }
    out
}

fn events(node: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| node.poll_event()).collect()
}

/// The queries among `sent`, as (to, tid, method).
fn queries(sent: &[Sent]) -> Vec<(SocketAddrV4, Vec<u8>, Method)> {
    sent.iter()
        .filter_map(|s| match &s.msg.body {
            Body::Query(q) => Some((s.to, s.msg.tid.as_slice().to_vec(), q.method.clone())),
            _ => None,
        })
        .collect()
}

fn reply(tid: &[u8], id: &NodeId, nodes: &[Contact], token: Option<&[u8]>) -> Vec<u8> {
    let mut compact = Vec::new();
    for c in nodes {
        c.write_compact(&mut compact);
    }
    let mut body = ResponseBody::id_only(id);
    body.nodes = Some(&compact);
    body.token = token;
    let mut out = Vec::new();
    krpc::encode_response(&mut out, tid, &body, None, None);
    out
}

fn query(args: QueryArgs<'_>, tid: &[u8], id: &NodeId) -> Vec<u8> {
    let mut out = Vec::new();
    krpc::encode_query(&mut out, tid, id, &args, false, None);
    out
}

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn id(b: u8) -> NodeId {
    NodeId([b; 20])
}

fn testnet_node(t0: Instant) -> Node {
    Node::new(
        Config {
            id: Some(id(0x10)),
            seed: Some(7),
            ..Config::loopback_testnet()
        },
        t0,
    )
}

/// Steps the node's timers until `until`, returning everything it emitted.
fn run_timers(node: &mut Node, from: Instant, until: Instant) -> (Vec<Sent>, Vec<Event>) {
    let mut sent = Vec::new();
    let mut evs = Vec::new();
    let mut now = from;
    while now <= until {
        node.handle_timeout(now);
        sent.extend(drain(node));
        evs.extend(events(node));
        now += Duration::from_millis(100);
    }
    (sent, evs)
}

/// Defect 1: a lookup whose only candidate answers with another id than the one it was
/// listed with ends (LookupDone fires, its slot and transaction are freed) instead of
/// waiting for an answer that was already consumed.
#[test]
fn wrong_id_reply_ends_the_lookup() {
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let router = a("127.1.0.1:6881");
    node.bootstrap(t0, &[router]);
    let q = queries(&drain(&mut node));
    assert_eq!(q.len(), 1);
    // The router refuses: the bootstrap lookup ends with nothing learned.
    let mut err = Vec::new();
    krpc::encode_error(&mut err, &q[0].1, 202, "busy", None, None);
    node.handle_datagram(t0, router.into(), &err);
    drain(&mut node);
    let lid = node.find_node(t0, id(0x11));
    let q = queries(&drain(&mut node));
    assert_eq!(q.len(), 1, "the router is asked");
    let listed = Contact::new(id(0x12), a("127.1.0.2:6881"));
    node.handle_datagram(
        t0,
        router.into(),
        &reply(&q[0].1, &id(0x20), &[listed], None),
    );
    let q = queries(&drain(&mut node));
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, listed.addr);
    // The listed address now belongs to someone else.
    node.handle_datagram(
        t0,
        listed.addr.into(),
        &reply(&q[0].1, &id(0x66), &[], None),
    );
    let done: Vec<_> = events(&mut node)
        .into_iter()
        .filter(|e| matches!(e, Event::LookupDone { lookup, .. } if *lookup == lid))
        .collect();
    assert_eq!(done.len(), 1, "the lookup ended at the wrong-id reply");
    let st = node.stats(t0);
    assert_eq!(st.lookups, 0);
    assert_eq!(st.transactions, 0);
    assert_eq!(st.wrong_id_replies, 1);
    // It ended once: no second LookupDone from a timeout later.
    let (_, evs) = run_timers(&mut node, t0, t0 + Duration::from_secs(10));
    assert!(
        !evs.iter()
            .any(|e| matches!(e, Event::LookupDone { lookup, .. } if *lookup == lid))
    );
}

/// Defect 1: the bootstrap lookup ends on a wrong-id reply too (it used to stay "running",
/// so no retry was ever scheduled).
#[test]
fn wrong_id_reply_ends_the_bootstrap() {
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let router = a("127.1.0.1:6881");
    node.bootstrap(t0, &[router]);
    let q = queries(&drain(&mut node));
    let listed = Contact::new(id(0x12), a("127.1.0.2:6881"));
    node.handle_datagram(
        t0,
        router.into(),
        &reply(&q[0].1, &id(0x20), &[listed], None),
    );
    let q = queries(&drain(&mut node));
    assert_eq!(q[0].0, listed.addr);
    assert!(node.is_bootstrapping());
    node.handle_datagram(
        t0,
        listed.addr.into(),
        &reply(&q[0].1, &id(0x66), &[], None),
    );
    assert!(!node.is_bootstrapping(), "the bootstrap lookup ended");
}

/// Defect 1: a verification ping answered with another id frees its `verifying` entry, and
/// a direct ping answered with our own id fails with `WrongId` instead of never resolving.
#[test]
fn wrong_id_reply_frees_verification_and_fails_direct_queries() {
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let querier = a("127.1.0.3:6881");
    node.handle_datagram(
        t0,
        querier.into(),
        &query(QueryArgs::Ping, b"q1", &id(0x30)),
    );
    let q = queries(&drain(&mut node));
    assert_eq!(q.len(), 1, "an unknown querier is verified with a ping");
    assert_eq!(node.stats(t0).verifying, 1);
    node.handle_datagram(t0, querier.into(), &reply(&q[0].1, &id(0x31), &[], None));
    let st = node.stats(t0);
    assert_eq!(st.verifying, 0, "the verification ended");
    assert_eq!(st.transactions, 0);
    assert!(!node.table().contains(&id(0x31)) && !node.table().contains(&id(0x30)));

    let target = a("127.1.0.4:6881");
    let req = node.ping(t0, target);
    let q = queries(&drain(&mut node));
    node.handle_datagram(t0, target.into(), &reply(&q[0].1, &node.id(), &[], None));
    let evs = events(&mut node);
    assert!(
        evs.iter().any(|e| matches!(e, Event::Pong { request, result: Err(PingError::WrongId) } if *request == req)),
        "{evs:?}"
    );
    assert_eq!(node.stats(t0).transactions, 0);
}

/// Puts `c` in the node's table the honest way: it answers a ping of ours.
fn confirm(node: &mut Node, now: Instant, c: Contact) {
    node.ping(now, c.addr);
    let q = queries(&drain(node));
    let tid = &q.iter().find(|q| q.0 == c.addr).expect("pinged").1;
    node.handle_datagram(now, c.addr.into(), &reply(tid, &c.id, &[], None));
    events(node);
    assert!(node.table().contains(&c.id));
}

/// Defect 2: a query (forgeable by anyone who read our `find_node` replies) never removes or
/// replaces a confirmed entry, not even one claiming a new id from the entry's address.
#[test]
fn a_query_never_evicts_a_confirmed_entry() {
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let e = Contact::new(id(0x40), a("127.1.0.5:6881"));
    confirm(&mut node, t0, e);
    for (i, forged) in [id(0x41), id(0x42), id(0x43)].iter().enumerate() {
        node.handle_datagram(
            t0,
            e.addr.into(),
            &query(QueryArgs::Ping, &[b'f', i as u8], forged),
        );
        drain(&mut node);
        assert!(
            node.table().contains(&e.id),
            "still there after forgery {i}"
        );
        assert!(!node.table().contains(forged));
    }
    // Only our own query answered with another id replaces it.
    node.ping(t0, e.addr);
    let q = queries(&drain(&mut node));
    node.handle_datagram(t0, e.addr.into(), &reply(&q[0].1, &id(0x44), &[], None));
    assert!(!node.table().contains(&e.id));
    assert!(node.table().contains(&id(0x44)));
}

/// Defect 6: a NAT rewrote the source port of the reply. It still answers our query (tid +
/// IP match, as libtorrent does); the table keeps the address we queried; a reply carrying
/// the tid from another IP is dropped and the query stays pending.
#[test]
fn a_reply_from_a_rewritten_port_matches_by_ip() {
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let target = a("127.1.0.6:6881");
    let req = node.ping(t0, target);
    let q = queries(&drain(&mut node));
    assert_eq!(q[0].0, target);
    let other_ip = a("127.1.0.7:6881");
    node.handle_datagram(t0, other_ip.into(), &reply(&q[0].1, &id(0x50), &[], None));
    assert!(events(&mut node).is_empty(), "another IP answers nothing");
    assert_eq!(node.stats(t0).transactions, 1);
    assert_eq!(node.stats(t0).dropped_unmatched, 1);
    let natted = a("127.1.0.6:40123");
    node.handle_datagram(t0, natted.into(), &reply(&q[0].1, &id(0x50), &[], None));
    let evs = events(&mut node);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Pong { request, result: Ok(_) } if *request == req)),
        "{evs:?}"
    );
    assert_eq!(node.stats(t0).transactions, 0);
    let entry = node
        .table()
        .entries()
        .find(|e| e.contact.id == id(0x50))
        .expect("the node is in the table");
    assert_eq!(
        entry.contact.addr, target,
        "recorded at the address we queried"
    );
}

/// Defect 7: `nodes` entries with port 0, our own address or a bogon address never cost a
/// query; the good one next to them is queried.
#[test]
fn junk_nodes_entries_are_never_queried() {
    let t0 = Instant::now();
    let me = a("127.1.0.9:6881");
    let mut node = Node::new(
        Config {
            id: Some(id(0x10)),
            seed: Some(7),
            local_addr: Some(me.into()),
            ..Config::loopback_testnet()
        },
        t0,
    );
    let router = a("127.1.0.1:6881");
    node.bootstrap(t0, &[router]);
    let q = queries(&drain(&mut node));
    let junk = [
        Contact::new(id(0x11), a("127.1.0.2:0")),
        Contact::new(id(0x12), me),
        Contact::new(id(0x13), a("0.0.0.5:6881")),
        Contact::new(id(0x14), a("239.1.1.1:6881")),
    ];
    let good = Contact::new(id(0x15), a("127.1.0.3:6881"));
    let mut listed = junk.to_vec();
    listed.push(good);
    node.handle_datagram(t0, router.into(), &reply(&q[0].1, &id(0x20), &listed, None));
    let q = queries(&drain(&mut node));
    let to: Vec<_> = q.iter().map(|q| q.0).collect();
    assert_eq!(to, vec![good.addr], "only the good entry is queried");
    assert_eq!(node.stats(t0).junk_candidates, 4);
}

/// Defect 8: an unknown method without `a.id` gets 204 (not 203); a 40-byte tid is answered
/// and echoed (BEP 5 sets no limit; 64 bytes bounds it), a 65-byte one is dropped and
/// counted; an announce with a 40-byte token is judged on the token's validity, not its length.
#[test]
fn error_codes_and_lengths_follow_bep5() {
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let from = a("127.1.0.8:6881");
    let answer = |node: &mut Node, datagram: &[u8]| {
        node.handle_datagram(t0, from.into(), datagram);
        drain(node)
            .into_iter()
            .find(|s| s.to == from && !matches!(s.msg.body, Body::Query(_)))
    };
    let r = answer(&mut node, b"d1:ad2:xxi1ee1:q3:foo1:t2:aa1:y1:qe").expect("answered");
    assert!(
        matches!(&r.msg.body, Body::Error(e) if e.code == 204),
        "{:?}",
        r.msg
    );

    let long_tid = [b'T'; 40];
    let r = answer(&mut node, &query(QueryArgs::Ping, &long_tid, &id(0x60))).expect("answered");
    assert_eq!(r.msg.tid.as_slice(), &long_tid[..]);
    assert!(matches!(r.msg.body, Body::Response(_)));

    let before = node.stats(t0);
    assert!(answer(&mut node, &query(QueryArgs::Ping, &[b'T'; 65], &id(0x60))).is_none());
    let after = node.stats(t0);
    assert!(
        after.packets_in > before.packets_in && after.packets_out == before.packets_out,
        "a 65-byte tid is dropped"
    );

    let ih = InfoHash([0x61; 20]);
    let long_token = [b'k'; 40];
    let ann = QueryArgs::AnnouncePeer {
        info_hash: &ih,
        port: 1,
        implied_port: false,
        token: &long_token,
        seed: false,
    };
    let r = answer(&mut node, &query(ann, b"an", &id(0x60))).expect("answered");
    assert!(
        matches!(&r.msg.body, Body::Error(e) if e.code == 203 && e.message.contains("token")),
        "{:?}",
        r.msg
    );
}

/// Defect 9: our client code is in no client table we know of (libtorrent's
/// `identify_client` list and the BitTorrent wiki's Azureus-style list), and the DHT `v` tag
/// and the peer id carry the same one.
#[test]
fn client_code_is_unused_and_consistent() {
    const KNOWN: &[&str] = &[
        "7T", "AB", "AG", "AR", "AT", "AV", "AX", "AZ", "A~", "BB", "BC", "BE", "BF", "BG", "BI",
        "BL", "BN", "BP", "BR", "BS", "BT", "BU", "BW", "BX", "CD", "CT", "DE", "DP", "EB", "ES",
        "FC", "FD", "FG", "FL", "FT", "FW", "FX", "GR", "GS", "HK", "HL", "HM", "HN", "IL", "JS",
        "JT", "KC", "KG", "KT", "LC", "LH", "LK", "LP", "LT", "LW", "MG", "MK", "ML", "MO", "MP",
        "MR", "MT", "NB", "NX", "OS", "OT", "PB", "PC", "PD", "PI", "QD", "QT", "RT", "RZ", "SB",
        "SD", "SK", "SM", "SN", "SP", "SS", "ST", "SZ", "S~", "TB", "TE", "TL", "TN", "TR", "TS",
        "TT", "TU", "UE", "UL", "UM", "UT", "UW", "VG", "WD", "WT", "WW", "WY", "XC", "XF", "XL",
        "XS", "XT", "XX", "ZO", "ZT", "lt", "pX", "qB", "st", "rQ",
    ];
    let code = std::str::from_utf8(&trackerless::CLIENT_CODE).unwrap();
    assert!(!KNOWN.contains(&code), "{code} belongs to another client");
    assert_eq!(
        &trackerless::dht::node::VERSION[..2],
        &trackerless::CLIENT_CODE
    );
    let pid = trackerless::torrent::peer_id::PEER_ID_PREFIX;
    assert_eq!(&pid[1..3], &trackerless::CLIENT_CODE);
    // What a node puts on the wire.
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    node.ping(t0, a("127.1.0.9:6881"));
    let sent = drain(&mut node);
    assert_eq!(
        sent[0].msg.version.as_ref().map(|v| v.as_slice().to_vec()),
        Some(trackerless::dht::node::VERSION.to_vec())
    );
}

/// Defect 3: a bootstrap router that answers (with its id, as routers do) never enters the
/// routing table, so it is never handed out in our replies either.
#[test]
fn routers_stay_out_of_the_table_and_our_replies() {
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let router = a("127.1.0.1:6881");
    let router_id = id(0x11); // as close to us as it gets: it would surely be kept
    node.bootstrap(t0, &[router]);
    let peer = Contact::new(id(0x12), a("127.1.0.2:6881"));
    let mut now = t0;
    // Answer every find_node for a while: the router lists `peer`, `peer` lists nobody.
    for _ in 0..50 {
        for (to, tid, _) in queries(&drain(&mut node)) {
            let (rid, nodes) = if to == router {
                (router_id, vec![peer])
            } else if to == peer.addr {
                (peer.id, vec![])
            } else {
                continue;
            };
            node.handle_datagram(now, to.into(), &reply(&tid, &rid, &nodes, None));
        }
        now += Duration::from_millis(100);
        node.handle_timeout(now);
    }
    assert!(node.table().contains(&peer.id));
    assert!(
        !node.table().contains(&router_id),
        "the router is in the table"
    );
    assert!(node.contacts().iter().all(|c| c.addr != router));
    // A find_node for the router's own id gets `peer`, not the router.
    let asker = a("127.1.0.9:6881");
    node.handle_datagram(
        now,
        asker.into(),
        &query(QueryArgs::FindNode { target: &router_id }, b"fn", &id(0x77)),
    );
    let sent = drain(&mut node);
    let r = sent
        .iter()
        .find_map(|s| match &s.msg.body {
            Body::Response(r) if s.to == asker => Some(r.clone()),
            _ => None,
        })
        .expect("answered");
    let listed: Vec<Contact> = r.nodes().collect();
    assert_eq!(listed, vec![peer]);
}

/// Invariant "every lookup ends": a chain of liars, each answering after a second with one
/// node closer to the target than itself, would keep a lookup going for 160 s (one step per
/// bit); the lookup deadline ends it at 60 s with `LookupDone`.
#[test]
fn a_chain_of_ever_closer_liars_meets_the_lookup_deadline() {
    use trackerless::dht::node::LOOKUP_DEADLINE;
    let t0 = Instant::now();
    let mut node = testnet_node(t0);
    let target = NodeId([0x80; 20]);
    let at_step = |k: usize| {
        let mut id = target;
        id.0[k / 8] ^= 0x80 >> (k % 8);
        Contact::new(id, a(&format!("127.2.{}.{}:6881", k / 200, k % 200 + 1)))
    };
    node.add_contacts(t0, [at_step(0).addr]);
    node.handle_timeout(t0);
    let mut now = t0;
    // Let the contact be verified (it answers as step 0).
    for (to, tid, _) in queries(&drain(&mut node)) {
        node.handle_datagram(now, to.into(), &reply(&tid, &at_step(0).id, &[], None));
    }
    let lid = node.find_node(now, target);
    let mut done_at = None;
    let mut step = 0;
    while now < t0 + Duration::from_secs(200) && done_at.is_none() {
        now += Duration::from_secs(1);
        for (to, tid, _) in queries(&drain(&mut node)) {
            if let Some(k) = (0..160).find(|&k| at_step(k).addr == to) {
                step = step.max(k);
                let next: Vec<Contact> =
                    (k + 1 < 160).then(|| at_step(k + 1)).into_iter().collect();
                node.handle_datagram(now, to.into(), &reply(&tid, &at_step(k).id, &next, None));
            }
        }
        node.handle_timeout(now);
        for e in events(&mut node) {
            if matches!(e, Event::LookupDone { lookup, .. } if lookup == lid) {
                done_at = Some(now);
            }
        }
    }
    let done_at = done_at.expect("the lookup ended");
    assert!(step < 159, "the chain was cut short, at step {step}");
    assert!(
        done_at - t0 <= LOOKUP_DEADLINE + Duration::from_secs(2),
        "ended after {:?}",
        done_at - t0
    );
    assert_eq!(node.stats(now).lookups_overdue, 1);
}
