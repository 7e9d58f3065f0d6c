//! Unit tests of the sans-IO node: one datagram or timer in, the datagrams and events out,
//! on a virtual clock. The rules covered, one or more tests each:
//! - answering: ping / find_node / get_peers / announce_peer / sample_infohashes replies
//!   carry our id, the querier's tid and address (BEP 42 `ip`) and the right fields;
//! - tokens: a get_peers token lets the same IP announce (any port, `implied_port`), not
//!   another IP; a bad token gets error 203;
//! - the input gate: port 0, bogon, other-family and our-own-id sources are dropped,
//!   IPv4-mapped ones answered as IPv4, malformed datagrams counted, bad queries answered
//!   with their code;
//! - never trusting a query: an unknown querier enters the table only after answering our
//!   verification ping with the id it claimed (one ping per querier);
//! - every query ends exactly once: by a reply, an error, a wrong-id reply or a timeout;
//!   a late or misaddressed reply ends nothing; `queries_out == queries_ended + transactions`;
//! - lookups: one with nothing to ask ends at once; routers are asked but never enter the
//!   table; peers are reported; announces go to the token holders; the deadline ends a
//!   lookup whose queries never end;
//! - timers: bootstrap retries with doubling backoff, maintenance pings only for entries
//!   older than `ping_min_age`, paced verification of added contacts;
//! - BEP 42: a majority of repliers agreeing on a public IP gives us a valid id for it;
//! - BEP 43: a read-only node answers nothing and marks its queries `ro`;
//! - BEP 32: an IPv6 node answers with `nodes6` and an 18-byte `ip`, binds tokens to the
//!   querier's IPv6 address, stores and returns 18-byte peers, and looks up through
//!   `nodes6`; `want` picks `nodes`, `nodes6` or both (the other family's from the sibling
//!   node lent for the datagram).

use super::*;
use crate::dht::krpc::{Message, ResponseBody};
use crate::dht::limits::RateLimit;

const ME: NodeId = NodeId([0x80; 20]);
const ID5: NodeId = NodeId([5; 20]);
const ROUTER_ID: NodeId = NodeId([0x50; 20]);

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn config() -> Config {
    Config {
        id: Some(ME),
        seed: Some(7),
        ..Config::loopback_testnet()
    }
}

fn id(b: u8) -> NodeId {
    NodeId([b; 20])
}

fn ih(b: u8) -> InfoHash {
    InfoHash([b; 20])
}

fn query(args: QueryArgs<'_>, tid: &[u8], from_id: NodeId) -> Vec<u8> {
    let mut out = Vec::new();
    krpc::encode_query(&mut out, tid, &from_id, &args, false, None);
    out
}

fn response(tid: &[u8], body: &ResponseBody<'_>, ip: Option<SocketAddrV4>) -> Vec<u8> {
    let mut out = Vec::new();
    krpc::encode_response(&mut out, tid, body, ip.map(Into::into), None);
    out
}

fn error(tid: &[u8], code: i64) -> Vec<u8> {
    let mut out = Vec::new();
    krpc::encode_error(&mut out, tid, code, "no", None, None);
    out
}

/// Everything the node queued, decoded.
fn sent(node: &mut Node) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some(t) = node.poll_transmit() {
        out.push((
            t.to,
            krpc::decode(t.payload).expect("the node sends valid KRPC"),
        ));
    }
    out
}

fn events(node: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| node.poll_event()).collect()
}

/// The one reply (response or error) the node sent to `to`.
fn reply_to(node: &mut Node, to: SocketAddrV4) -> Message {
    let mut replies: Vec<Message> = sent(node)
        .into_iter()
        .filter(|(a, m)| *a == SocketAddr::V4(to) && !matches!(m.body, Body::Query(_)))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(replies.len(), 1, "one reply to {to}");
    replies.remove(0)
}

fn response_of(m: &Message) -> &Response {
    match &m.body {
        Body::Response(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn queries_in(out: &[(SocketAddr, Message)]) -> Vec<(SocketAddrV4, Vec<u8>, Query)> {
    out.iter()
        .filter_map(|(a, m)| match (a, &m.body) {
            (SocketAddr::V4(a), Body::Query(q)) => Some((*a, m.tid.as_slice().to_vec(), q.clone())),
            _ => None,
        })
        .collect()
}

fn assert_ended_once(node: &Node, now: Instant) {
    let s = node.stats(now);
    assert_eq!(
        s.queries_out,
        s.queries_ended + s.transactions as u64,
        "every query ends exactly once: {s:?}"
    );
}

/// A node whose table holds `n` verified contacts at 127.0.1.1.. with ids i+1 (first byte).
fn node_with_table(n: u8, now: Instant) -> Node {
    let mut node = Node::new(config(), now);
    for i in 0..n {
        let c = Contact::new(
            NodeId([i.wrapping_mul(37).wrapping_add(1); 20]),
            SocketAddrV4::new(std::net::Ipv4Addr::new(127, 0, 1, i + 1), 7000),
        );
        node.table.heard_response(c, now);
    }
    node
}

#[test]
fn ping_is_answered_with_our_id_the_tid_and_the_querier_address() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let from = sa("127.0.0.2:1000");
    let data = query(QueryArgs::Ping, b"aa", id(1));
    node.handle_datagram(now, SocketAddr::V4(from), &data);
    let m = reply_to(&mut node, from);
    assert_eq!(m.tid.as_slice(), b"aa");
    assert_eq!(m.ip, Some(from.into()));
    assert_eq!(m.version.as_ref().map(|v| v.as_slice()), Some(&VERSION[..]));
    assert_eq!(response_of(&m).id, ME);
    let s = node.stats(now);
    assert_eq!((s.packets_in, s.bytes_in), (1, data.len() as u64));
    assert_eq!(
        (s.queries_in, s.replies_out, s.queries_by_method.ping),
        (1, 1, 1)
    );
    assert_eq!(s.packets_out, 2, "the reply and a verification ping");
    let mut node2 = Node::new(config(), now);
    node2.handle_datagram(now, SocketAddr::V4(from), &data);
    let mut bytes = 0;
    let mut packets = 0;
    while let Some(t) = node2.poll_transmit() {
        bytes += t.payload.len() as u64;
        packets += 1;
    }
    let s = node2.stats(now);
    assert_eq!((s.packets_out, s.bytes_out), (packets, bytes));
}

#[test]
fn a_loopback_testnet_node_has_no_rate_limit_or_reply_quota() {
    let c = Config::loopback_testnet();
    assert!(c.rate_limit.is_none() && c.reply_quota.is_none());
    assert!(!c.routing.restrict_subnets);
    assert!(c.allow.allows("127.9.9.9:1".parse().unwrap()));
    assert!(!c.allow.allows("10.0.0.1:1".parse().unwrap()));
}

/// The default reply quota is 2 MiB a second: 20,000 ping replies (about 1.4 MB) in one
/// instant all go out, 40,000 (2.8 MB) do not.
#[test]
fn the_default_reply_quota_is_two_mib_a_second() {
    assert_eq!(DEFAULT_REPLY_QUOTA, 2 * 1024 * 1024);
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            id: Some(ME),
            seed: Some(7),
            rate_limit: None,
            ..Config::default()
        },
        now,
    );
    assert_eq!(node.config.reply_quota, Some(DEFAULT_REPLY_QUOTA));
    let ping = query(QueryArgs::Ping, b"aa", id(1));
    let mut bytes = 0;
    for i in 0..40_000u32 {
        let [_, b, c, d] = i.to_be_bytes();
        let from = SocketAddrV4::new([127, b + 1, c, d.max(1)].into(), 1000);
        node.handle_datagram(now, SocketAddr::V4(from), &ping);
        while let Some(t) = node.poll_transmit() {
            bytes += t.payload.len() as u64;
        }
        if i == 19_999 {
            assert_eq!(
                node.stats(now).dropped_quota,
                0,
                "{bytes} bytes by 20,000 replies"
            );
        }
    }
    let s = node.stats(now);
    assert!(s.dropped_quota > 0, "{s:?}");
    assert!(bytes > 1024 * 1024, "{bytes}");
}

#[test]
fn overdue_reports_what_the_timers_have_not_ended_yet() {
    let t0 = Instant::now();
    let config = Config {
        short_timeout: LOOKUP_DEADLINE * 2,
        hard_timeout: LOOKUP_DEADLINE * 3,
        ..config()
    };
    let mut node = Node::new(config, t0);
    node.table
        .heard_response(Contact::new(id(1), sa("127.0.0.2:1000")), t0);
    node.find_node(t0, id(3));
    assert_eq!(
        node.overdue(t0 + LOOKUP_DEADLINE),
        Overdue::default(),
        "due, not overdue"
    );
    let late = t0 + LOOKUP_DEADLINE + Duration::from_secs(1);
    assert_eq!(node.overdue(late).lookups, 1);
    assert_eq!(node.overdue(late).transactions, 0);
    let later = t0 + LOOKUP_DEADLINE * 3 + Duration::from_secs(1);
    assert_eq!(node.overdue(later).transactions, 1);
    node.handle_timeout(later);
    assert_eq!(node.overdue(later), Overdue::default());
}

#[test]
fn an_unknown_querier_enters_the_table_only_after_answering_our_ping_with_its_id() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let honest = sa("127.0.0.2:1000");
    let liar = sa("127.0.0.3:1000");
    for (from, claimed) in [(honest, id(1)), (liar, id(2))] {
        node.handle_datagram(
            now,
            SocketAddr::V4(from),
            &query(QueryArgs::Ping, b"q1", claimed),
        );
        // A second query while the first verification is outstanding: no second ping.
        node.handle_datagram(
            now,
            SocketAddr::V4(from),
            &query(QueryArgs::Ping, b"q2", claimed),
        );
    }
    assert_eq!(node.table.len(), 0, "a query alone never enters the table");
    let pings = queries_in(&sent(&mut node));
    assert_eq!(
        pings.len(),
        2,
        "one verification ping per querier: {pings:?}"
    );
    assert_eq!(node.stats(now).verifying, 2);
    for (to, tid, q) in pings {
        assert_eq!(q.method, Method::Ping);
        let answer_id = if to == honest { id(1) } else { id(9) };
        node.handle_datagram(
            now,
            SocketAddr::V4(to),
            &response(&tid, &ResponseBody::id_only(&answer_id), None),
        );
    }
    let ids: Vec<NodeId> = node.table.entries().map(|e| e.contact.id).collect();
    assert_eq!(
        ids,
        vec![id(1)],
        "only the querier that answered with its claimed id"
    );
    let s = node.stats(now);
    assert_eq!((s.verifying, s.wrong_id_replies), (0, 1));
    assert_ended_once(&node, now);
}

#[test]
fn find_node_returns_the_k_closest_contacts_of_the_table() {
    let now = Instant::now();
    let mut node = node_with_table(30, now);
    assert!(node.table.len() >= 8);
    let from = sa("127.0.0.2:1000");
    let target = id(0x11);
    node.handle_datagram(
        now,
        SocketAddr::V4(from),
        &query(QueryArgs::FindNode { target: &target }, b"fn", id(1)),
    );
    let m = reply_to(&mut node, from);
    let mut expected = Vec::new();
    node.table.closest(&target, 8, &mut expected);
    let got: Vec<Contact> =
        crate::dht::id::compact_nodes(response_of(&m).nodes.as_deref().unwrap()).collect();
    assert_eq!(got.len(), 8);
    assert_eq!(got, expected);
    assert_eq!(node.stats(now).queries_by_method.find_node, 1);
}

#[test]
fn a_get_peers_token_lets_the_same_ip_announce_and_no_other() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let ih = ih(0x42);
    let asker = sa("127.0.0.2:1000");
    let gp = QueryArgs::GetPeers {
        info_hash: &ih,
        scrape: false,
        noseed: false,
    };
    node.handle_datagram(now, SocketAddr::V4(asker), &query(gp, b"g1", id(1)));
    let r = reply_to(&mut node, asker);
    let token = response_of(&r)
        .token
        .expect("get_peers replies carry a token");
    assert!(response_of(&r).values.is_empty());

    // Another port of the same IP, explicit port.
    let same_ip = sa("127.0.0.2:2000");
    let announce = |port, implied_port| QueryArgs::AnnouncePeer {
        info_hash: &ih,
        port,
        implied_port,
        token: token.as_slice(),
        seed: false,
    };
    node.handle_datagram(
        now,
        SocketAddr::V4(same_ip),
        &query(announce(6881, false), b"a1", id(1)),
    );
    assert!(matches!(
        reply_to(&mut node, same_ip).body,
        Body::Response(_)
    ));
    // implied_port: the UDP source port is the peer's port.
    node.handle_datagram(
        now,
        SocketAddr::V4(same_ip),
        &query(announce(6881, true), b"a2", id(1)),
    );
    assert!(matches!(
        reply_to(&mut node, same_ip).body,
        Body::Response(_)
    ));
    // Another IP with the same token: refused with 203.
    let other = sa("127.0.0.3:1000");
    node.handle_datagram(
        now,
        SocketAddr::V4(other),
        &query(announce(6881, false), b"a3", id(3)),
    );
    match reply_to(&mut node, other).body {
        Body::Error(e) => assert_eq!(e.code, ERR_PROTOCOL),
        b => panic!("expected error 203, got {b:?}"),
    }
    let s = node.stats(now);
    assert_eq!(
        (s.announces_stored, s.bad_tokens, s.peers, s.infohashes),
        (2, 1, 2, 1)
    );
    assert_eq!(
        (
            s.queries_by_method.get_peers,
            s.queries_by_method.announce_peer
        ),
        (1, 3)
    );

    // A later get_peers gets both peers as values.
    let third = sa("127.0.0.4:1000");
    node.handle_datagram(now, SocketAddr::V4(third), &query(gp, b"g2", id(4)));
    let mut values = response_of(&reply_to(&mut node, third)).values.clone();
    values.sort();
    assert_eq!(values, vec![sa("127.0.0.2:2000"), sa("127.0.0.2:6881")]);
}

#[test]
fn report_incoming_tells_the_application_about_get_peers_and_announces() {
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            report_incoming: true,
            ..config()
        },
        now,
    );
    let ih = ih(0x42);
    let from = sa("127.0.0.2:1000");
    let gp = QueryArgs::GetPeers {
        info_hash: &ih,
        scrape: false,
        noseed: false,
    };
    node.handle_datagram(now, SocketAddr::V4(from), &query(gp, b"g1", id(1)));
    let token = response_of(&reply_to(&mut node, from)).token.unwrap();
    let ap = QueryArgs::AnnouncePeer {
        info_hash: &ih,
        port: 5,
        implied_port: false,
        token: token.as_slice(),
        seed: true,
    };
    node.handle_datagram(now, SocketAddr::V4(from), &query(ap, b"a1", id(1)));
    assert_eq!(
        events(&mut node),
        vec![
            Event::Incoming {
                info_hash: ih,
                from,
                peer: None
            },
            Event::Incoming {
                info_hash: ih,
                from,
                peer: Some(sa("127.0.0.2:5"))
            },
        ]
    );
}

#[test]
fn sample_infohashes_replies_carry_samples_interval_and_count() {
    let now = Instant::now();
    let mut node = node_with_table(3, now);
    let mut rng = StdRng::seed_from_u64(1);
    for b in 1..=3u8 {
        node.store
            .announce(ih(b), sa("127.0.0.9:1"), false, now, &mut rng);
    }
    let from = sa("127.0.0.2:1000");
    let target = id(0x11);
    node.handle_datagram(
        now,
        SocketAddr::V4(from),
        &query(QueryArgs::SampleInfohashes { target: &target }, b"s", id(1)),
    );
    let m = reply_to(&mut node, from);
    let r = response_of(&m);
    assert_eq!(r.samples.as_ref().map(Vec::len), Some(60));
    assert_eq!(r.num, Some(3));
    assert_eq!(r.interval, Some(i64::from(node.config.sample_interval)));
    assert_eq!(r.nodes.as_ref().map(|n| n.len() / 26), Some(3));
    assert_eq!(node.stats(now).queries_by_method.sample_infohashes, 1);
}

#[test]
fn the_input_gate_drops_what_no_node_should_answer() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let ping = query(QueryArgs::Ping, b"aa", id(1));
    for from in ["127.0.0.2:0", "0.0.0.0:1000", "[fd77::1]:1000", "[::1]:0"] {
        node.handle_datagram(now, from.parse().unwrap(), &ping);
    }
    // Our own id from elsewhere.
    node.handle_datagram(
        now,
        "127.0.0.2:1000".parse().unwrap(),
        &query(QueryArgs::Ping, b"aa", ME),
    );
    assert!(sent(&mut node).is_empty());
    let s = node.stats(now);
    assert_eq!((s.packets_in, s.dropped_other, s.queries_in), (5, 5, 1));

    // An IPv4-mapped source is answered as IPv4.
    node.handle_datagram(now, "[::ffff:127.0.0.2]:1000".parse().unwrap(), &ping);
    let m = reply_to(&mut node, sa("127.0.0.2:1000"));
    assert_eq!(m.ip, Some(sa("127.0.0.2:1000").into()));
}

#[test]
fn malformed_datagrams_are_counted_and_bad_queries_get_their_error_code() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let from = sa("127.0.0.2:1000");
    node.handle_datagram(now, SocketAddr::V4(from), b"d1:ad2:id");
    assert!(sent(&mut node).is_empty());
    assert_eq!(node.stats(now).dropped_malformed, 1);
    // A ping without an id: 203 with the query's tid.
    node.handle_datagram(now, SocketAddr::V4(from), b"d1:ade1:q4:ping1:t2:xy1:y1:qe");
    let m = reply_to(&mut node, from);
    assert_eq!(m.tid.as_slice(), b"xy");
    match m.body {
        Body::Error(e) => assert_eq!(e.code, ERR_PROTOCOL),
        b => panic!("expected an error, got {b:?}"),
    }
    let s = node.stats(now);
    assert_eq!((s.queries_in, s.errors_out), (1, 1));
    let bytes_before = node.stats(now).bytes_in;
    node.note_oversized(5000);
    let s = node.stats(now);
    assert_eq!((s.dropped_malformed, s.packets_in), (2, 3));
    assert_eq!(s.bytes_in, bytes_before + 5000);
}

#[test]
fn a_read_only_node_answers_nothing_and_marks_its_queries() {
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            read_only: true,
            ..config()
        },
        now,
    );
    let from = sa("127.0.0.2:1000");
    node.handle_datagram(
        now,
        SocketAddr::V4(from),
        &query(QueryArgs::Ping, b"aa", id(1)),
    );
    node.handle_datagram(now, SocketAddr::V4(from), b"d1:ade1:q4:ping1:t2:xy1:y1:qe");
    let out = sent(&mut node);
    assert!(
        out.iter().all(|(_, m)| matches!(m.body, Body::Query(_))),
        "no replies: {out:?}"
    );
    node.ping(now, sa("127.0.0.3:1000"));
    let out = sent(&mut node);
    assert_eq!(out.len(), 1);
    assert!(out[0].1.read_only, "BEP 43: our queries say ro=1");
}

#[test]
fn a_ping_ends_exactly_once_by_its_timeout() {
    let t0 = Instant::now();
    let mut node = Node::new(config(), t0);
    let to = sa("127.0.0.2:1000");
    let request = node.ping(t0, to);
    let (_, tid, _) = queries_in(&sent(&mut node)).remove(0);
    node.handle_timeout(t0 + node.config.short_timeout);
    assert!(
        events(&mut node).is_empty(),
        "the short timeout only frees a lookup slot"
    );
    let t1 = t0 + node.config.hard_timeout;
    node.handle_timeout(t1);
    assert_eq!(
        events(&mut node),
        vec![Event::Pong {
            request,
            result: Err(PingError::Timeout)
        }]
    );
    // A late answer ends nothing.
    node.handle_datagram(
        t1,
        SocketAddr::V4(to),
        &response(&tid, &ResponseBody::id_only(&id(1)), None),
    );
    assert!(events(&mut node).is_empty());
    let s = node.stats(t1);
    assert_eq!(
        (
            s.timeouts,
            s.queries_ended,
            s.dropped_unmatched,
            s.transactions
        ),
        (1, 1, 1, 0)
    );
    assert_ended_once(&node, t1);
    assert_eq!(node.overdue(t1), Overdue::default());
}

#[test]
fn a_ping_ends_by_its_reply_an_error_or_a_wrong_id() {
    let now = Instant::now();
    let mut node = node_with_table(1, now);
    let known = node.table.entries().next().unwrap().contact;
    // Reply with the right id.
    let r1 = node.ping(now, sa("127.0.0.2:1000"));
    let (to, tid, _) = queries_in(&sent(&mut node)).remove(0);
    // From another address: not ours to match.
    node.handle_datagram(
        now,
        "127.0.0.9:1000".parse().unwrap(),
        &response(&tid, &ResponseBody::id_only(&id(5)), None),
    );
    node.handle_datagram(
        now,
        SocketAddr::V4(to),
        &response(&tid, &ResponseBody::id_only(&id(5)), None),
    );
    // An error.
    let r2 = node.ping(now, sa("127.0.0.3:1000"));
    let (to, tid, _) = queries_in(&sent(&mut node)).remove(0);
    node.handle_datagram(now, SocketAddr::V4(to), &error(&tid, 202));
    // Our own id reflected back: the query failed.
    let r3 = node.query(now, known.addr, DirectQuery::Ping);
    let out = sent(&mut node);
    let (to, tid, _) = queries_in(&out).remove(0);
    assert_eq!(to, known.addr);
    node.handle_datagram(
        now,
        SocketAddr::V4(to),
        &response(&tid, &ResponseBody::id_only(&ME), None),
    );
    assert_eq!(
        events(&mut node),
        vec![
            Event::Pong {
                request: r1,
                result: Ok(id(5))
            },
            Event::Pong {
                request: r2,
                result: Err(PingError::Remote(202, "no".into()))
            },
            Event::Pong {
                request: r3,
                result: Err(PingError::WrongId)
            },
        ]
    );
    // An error answering nothing of ours.
    node.handle_datagram(now, SocketAddr::V4(to), &error(b"zz", 201));
    let s = node.stats(now);
    let ended = (
        s.dropped_unmatched,
        s.errors_in,
        s.wrong_id_replies,
        s.queries_ended,
    );
    assert_eq!(ended, (2, 2, 1, 3));
    assert_eq!(s.replies_in, 3);
    assert_ended_once(&node, now);
}

#[test]
fn a_direct_query_returns_the_whole_reply() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let ih = ih(3);
    let request = node.query(now, sa("127.0.0.2:1000"), DirectQuery::GetPeers(ih));
    let (to, tid, q) = queries_in(&sent(&mut node)).remove(0);
    assert_eq!(
        q.method,
        Method::GetPeers {
            info_hash: ih,
            scrape: false,
            noseed: false
        }
    );
    let peers = [sa("127.0.0.7:7")];
    let body = ResponseBody {
        values: &peers,
        ..ResponseBody::id_only(&ID5)
    };
    node.handle_datagram(now, SocketAddr::V4(to), &response(&tid, &body, None));
    match events(&mut node).as_slice() {
        [
            Event::Reply {
                request: r,
                result: Ok(resp),
            },
        ] => {
            assert_eq!(*r, request);
            assert_eq!(resp.values, peers);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_query_outside_the_allow_list_fails_at_once_and_sends_nothing() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let request = node.ping(now, sa("10.0.0.1:1000"));
    assert!(sent(&mut node).is_empty());
    assert_eq!(
        events(&mut node),
        vec![Event::Pong {
            request,
            result: Err(PingError::NotAllowed)
        }]
    );
    assert_eq!(node.stats(now).dropped_not_allowed, 1);
}

#[test]
fn a_lookup_with_nothing_to_ask_ends_at_once() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let lookup = node.find_node(now, id(3));
    assert!(sent(&mut node).is_empty());
    assert_eq!(
        events(&mut node),
        vec![Event::LookupDone {
            lookup,
            closest: vec![],
            announced: 0,
            messages: 0,
            scrape: None
        }]
    );
    assert_eq!(node.stats(now).lookups, 0);
}

#[test]
fn a_lookup_through_a_router_reports_peers_and_keeps_the_router_out_of_the_table() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let router = sa("127.0.0.50:6881");
    node.bootstrap(now, &[router]);
    let (to, tid, q) = queries_in(&sent(&mut node)).remove(0);
    assert_eq!((to, &q.method), (router, &Method::FindNode { target: ME }));
    node.handle_datagram(
        now,
        SocketAddr::V4(to),
        &response(&tid, &ResponseBody::id_only(&id(0x50)), None),
    );
    assert!(!node.is_bootstrapping());
    assert_eq!(node.table.len(), 0, "a router never enters the table");
    sent(&mut node);

    let ih = ih(0x42);
    let lookup = node.get_peers(now, ih);
    let (to, tid, q) = queries_in(&sent(&mut node)).remove(0);
    assert_eq!(to, router, "a thin table falls back on the routers");
    assert!(matches!(q.method, Method::GetPeers { info_hash, .. } if info_hash == ih));
    let peers = [sa("127.0.0.7:7"), sa("127.0.0.8:8")];
    let token = [1u8, 2];
    let body = ResponseBody {
        values: &peers,
        token: Some(&token),
        ..ResponseBody::id_only(&ROUTER_ID)
    };
    node.handle_datagram(now, SocketAddr::V4(to), &response(&tid, &body, None));
    let ev = events(&mut node);
    assert_eq!(
        ev[0],
        Event::Peers {
            lookup,
            peers: peers.to_vec()
        }
    );
    assert!(matches!(ev[1], Event::LookupDone { lookup: l, messages: 1, .. } if l == lookup));
    assert_eq!(node.table.len(), 0);
    assert_ended_once(&node, now);
}

#[test]
fn an_announce_lookup_announces_to_the_token_holders() {
    let now = Instant::now();
    let mut node = node_with_table(4, now);
    let ih = ih(0x42);
    let lookup = node.announce(now, ih, Some(6881));
    let mut announced = 0;
    for _round in 0..10 {
        let out = sent(&mut node);
        if out.is_empty() {
            break;
        }
        for (to, tid, q) in queries_in(&out) {
            let who = node
                .table
                .entries()
                .find(|e| e.contact.addr == to)
                .unwrap()
                .contact
                .id;
            match q.method {
                Method::GetPeers { .. } => {
                    let token = [to.ip().octets()[3]];
                    let body = ResponseBody {
                        token: Some(&token),
                        ..ResponseBody::id_only(&who)
                    };
                    node.handle_datagram(now, SocketAddr::V4(to), &response(&tid, &body, None));
                }
                Method::AnnouncePeer {
                    info_hash,
                    port,
                    implied_port,
                    token,
                    ..
                } => {
                    assert_eq!((info_hash, port, implied_port), (ih, 6881, false));
                    assert_eq!(
                        token.as_slice(),
                        [to.ip().octets()[3]],
                        "the token that node gave"
                    );
                    announced += 1;
                    node.handle_datagram(
                        now,
                        SocketAddr::V4(to),
                        &response(&tid, &ResponseBody::id_only(&who), None),
                    );
                }
                m => panic!("unexpected {m:?}"),
            }
        }
    }
    assert_eq!(announced, 4);
    match events(&mut node).as_slice() {
        [
            Event::LookupDone {
                lookup: l,
                announced: 4,
                closest,
                ..
            },
        ] => {
            assert_eq!(*l, lookup);
            assert_eq!(closest.len(), 4);
        }
        e => panic!("{e:?}"),
    }
    assert_ended_once(&node, now);
}

#[test]
fn a_lookup_whose_queries_never_end_is_ended_by_its_deadline() {
    let t0 = Instant::now();
    let config = Config {
        short_timeout: LOOKUP_DEADLINE * 2,
        hard_timeout: LOOKUP_DEADLINE * 3,
        ..config()
    };
    let mut node = Node::new(config, t0);
    node.table
        .heard_response(Contact::new(id(1), sa("127.0.0.2:1000")), t0);
    let lookup = node.find_node(t0, id(3));
    assert_eq!(queries_in(&sent(&mut node)).len(), 1);
    assert!(node.poll_timeout().unwrap() <= t0 + LOOKUP_DEADLINE);
    node.handle_timeout(t0 + LOOKUP_DEADLINE - Duration::from_millis(1));
    assert!(events(&mut node).is_empty());
    node.handle_timeout(t0 + LOOKUP_DEADLINE);
    assert!(
        matches!(events(&mut node).as_slice(), [Event::LookupDone { lookup: l, .. }] if *l == lookup)
    );
    // (The bucket refresh due at the same moment starts lookups of its own.)
    assert_eq!(node.stats(t0 + LOOKUP_DEADLINE).lookups_overdue, 1);
    assert_eq!(node.overdue(t0 + LOOKUP_DEADLINE).lookups, 0);
}

#[test]
fn bootstrap_retries_with_doubling_backoff_while_the_table_stays_empty() {
    let t0 = Instant::now();
    let mut node = Node::new(config(), t0);
    let router = sa("127.0.0.50:6881");
    node.bootstrap(t0, &[router]);
    let mut now = t0;
    let mut starts = vec![];
    while starts.len() < 4 {
        if queries_in(&sent(&mut node))
            .iter()
            .any(|(to, _, _)| *to == router)
        {
            starts.push(now.duration_since(t0).as_secs());
        }
        now = node.poll_timeout().unwrap();
        node.handle_timeout(now);
    }
    // A silent router leaves the attempt nothing to ask once its query is slow (the 1 s
    // short timeout); the next attempt follows after 2, 4, 8 s.
    assert_eq!(starts, vec![0, 3, 8, 17]);
}

#[test]
fn maintenance_pings_only_entries_older_than_ping_min_age() {
    let t0 = Instant::now();
    let mut node = node_with_table(1, t0);
    let c = node.table.entries().next().unwrap().contact;
    node.handle_timeout(t0 + node.config.ping_interval);
    assert!(sent(&mut node).is_empty(), "heard from recently");
    let later = t0 + node.config.ping_min_age + node.config.ping_interval;
    node.handle_timeout(later);
    let qs = queries_in(&sent(&mut node));
    assert!(
        qs.iter()
            .any(|(to, _, q)| *to == c.addr && q.method == Method::Ping),
        "{qs:?}"
    );
}

#[test]
fn added_contacts_are_pinged_in_paced_bursts_and_enter_the_table_when_they_answer() {
    let t0 = Instant::now();
    let mut node = Node::new(config(), t0);
    let contacts: Vec<SocketAddrV4> = (0..100u8)
        .map(|i| SocketAddrV4::new([127, 0, 2, i].into(), 1))
        .collect();
    node.add_contacts(t0, contacts.iter().copied());
    assert_eq!(node.poll_timeout(), Some(t0));
    node.handle_timeout(t0);
    let first = queries_in(&sent(&mut node));
    assert_eq!(first.len(), VERIFY_BURST);
    node.handle_timeout(t0 + VERIFY_PACE / 2);
    assert!(queries_in(&sent(&mut node)).is_empty(), "paced");
    node.handle_timeout(t0 + VERIFY_PACE);
    assert_eq!(queries_in(&sent(&mut node)).len(), 100 - VERIFY_BURST);
    let (to, tid, _) = &first[0];
    node.handle_datagram(
        t0,
        SocketAddr::V4(*to),
        &response(tid, &ResponseBody::id_only(&id(0x33)), None),
    );
    assert_eq!(node.table.len(), 1);
    assert_eq!(node.stats(t0).verifying, 99);
}

#[test]
fn a_majority_of_repliers_seeing_a_public_ip_gives_us_a_bep42_id_for_it() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let public = sa("203.0.113.7:6881");
    for i in 0..IP_VOTE_MIN as u8 {
        let to = SocketAddrV4::new([127, 0, 3, i + 1].into(), 1000);
        node.ping(now, to);
        let (to, tid, _) = queries_in(&sent(&mut node)).remove(0);
        node.handle_datagram(
            now,
            SocketAddr::V4(to),
            &response(&tid, &ResponseBody::id_only(&id(i + 1)), Some(public)),
        );
    }
    let changed: Vec<NodeId> = events(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            Event::IdChanged(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(node.id(), changed[0]);
    assert!(bep42::is_valid(&node.id(), *public.ip()));
    assert_eq!(node.stats(now).external_ip, Some((*public.ip()).into()));
    // The table moved to the new id with its entries.
    assert_eq!(node.table.len(), IP_VOTE_MIN);
}

#[test]
fn stats_report_bad_entries_evictions_and_refused_sends() {
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            max_transactions: 1,
            store: StoreConfig {
                max_infohashes: 2,
                ..StoreConfig::default()
            },
            ..config()
        },
        now,
    );
    let c = Contact::new(id(1), sa("127.0.0.2:1000"));
    node.table.heard_response(c, now);
    for _ in 0..node.config.routing.max_failures + 1 {
        node.table.failed(&c, now);
    }
    assert_eq!(node.stats(now).bad_nodes, 1);
    let mut rng = StdRng::seed_from_u64(1);
    for b in 1..=3 {
        node.store
            .announce(ih(b), sa("127.0.0.9:1"), false, now, &mut rng);
    }
    assert_eq!(node.stats(now).infohashes_evicted, 1);
    // A full transaction table refuses the second query.
    assert!(!node.has_transmit());
    node.ping(now, sa("127.0.0.3:1000"));
    assert!(node.has_transmit());
    let busy = node.ping(now, sa("127.0.0.4:1000"));
    assert!(events(&mut node).contains(&Event::Pong {
        request: busy,
        result: Err(PingError::Busy)
    }));
    assert_eq!(node.stats(now).dropped_other, 1);
    sent(&mut node);
    assert!(!node.has_transmit());
    // Contacts outside the allow-list are never pinged.
    node.add_contacts(now, [sa("10.0.0.1:1000")]);
    node.handle_timeout(now);
    assert!(sent(&mut node).is_empty());
    assert_eq!(node.stats(now).dropped_not_allowed, 1);
}

#[test]
fn added_contacts_are_bounded_and_make_a_thin_table_look_around_soon() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let many = (0..MAX_TO_VERIFY as u32 + 10).map(|i| {
        let [_, b, c, d] = i.to_be_bytes();
        SocketAddrV4::new([127, b + 1, c, d].into(), 1)
    });
    node.add_contacts(now, many);
    assert_eq!(node.to_verify.len(), MAX_TO_VERIFY);
    assert_eq!(node.bootstrap_next, Some(now + Duration::from_secs(1)));

    // A full table does not need to look around; nor does a node already bootstrapping.
    let mut full = node_with_table(8, now);
    assert!(full.table.len() >= full.config.routing.k);
    full.add_contacts(now, [sa("127.0.0.2:1")]);
    assert_eq!(full.bootstrap_next, None);
    let mut joining = Node::new(config(), now);
    joining.bootstrap(now, &[sa("127.0.0.50:1")]);
    joining.add_contacts(now, [sa("127.0.0.2:1")]);
    assert_eq!(joining.bootstrap_next, None);
}

#[test]
fn nodes_listed_at_our_own_address_are_never_queried() {
    let now = Instant::now();
    let me = sa("127.0.0.1:6881");
    let mut node = Node::new(
        Config {
            local_addr: Some(me.into()),
            ..config()
        },
        now,
    );
    let router = sa("127.0.0.50:6881");
    node.bootstrap(now, &[router]);
    let (to, tid, _) = queries_in(&sent(&mut node)).remove(0);
    let mut nodes = Vec::new();
    Contact::new(id(0x81), me).write_compact(&mut nodes);
    Contact::new(id(0x82), sa("127.0.0.3:1")).write_compact(&mut nodes);
    let body = ResponseBody {
        nodes: Some(&nodes),
        ..ResponseBody::id_only(&ROUTER_ID)
    };
    node.handle_datagram(now, SocketAddr::V4(to), &response(&tid, &body, None));
    let asked: Vec<SocketAddrV4> = queries_in(&sent(&mut node))
        .into_iter()
        .map(|q| q.0)
        .collect();
    assert_eq!(asked, vec![sa("127.0.0.3:1")]);
    assert_eq!(node.stats(now).junk_candidates, 1);
}

#[test]
fn lookups_beyond_max_lookups_end_at_once() {
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            max_lookups: 1,
            ..config()
        },
        now,
    );
    node.table
        .heard_response(Contact::new(id(1), sa("127.0.0.2:1000")), now);
    let first = node.find_node(now, id(3));
    assert_eq!(queries_in(&sent(&mut node)).len(), 1);
    let second = node.find_node(now, id(4));
    assert!(sent(&mut node).is_empty());
    let ev = events(&mut node);
    assert!(
        matches!(ev.as_slice(), [Event::LookupDone { lookup, messages: 0, .. }] if *lookup == second)
    );
    assert_eq!(node.stats(now).lookups, 1);
    assert_ne!(first, second);
}

#[test]
fn scrape_and_seed_lookups_set_their_bep33_flags() {
    let now = Instant::now();
    let mut node = node_with_table(1, now);
    let ih = ih(9);
    node.scrape(now, ih);
    node.get_peers(now, ih);
    node.announce_as(now, ih, Some(1), true);
    let flags: Vec<(bool, bool)> = queries_in(&sent(&mut node))
        .into_iter()
        .map(|(_, _, q)| match q.method {
            Method::GetPeers { scrape, noseed, .. } => (scrape, noseed),
            m => panic!("{m:?}"),
        })
        .collect();
    assert_eq!(flags, vec![(true, false), (false, false), (false, true)]);
}

#[test]
fn a_bootstrap_that_fills_the_table_to_k_does_not_retry() {
    let now = Instant::now();
    let mut node = node_with_table(8, now);
    assert_eq!(node.table.len(), node.config.routing.k);
    // A contact still waiting for its verification ping does not make a full table look
    // again (only a thin one waits for its contacts).
    node.add_contacts(now, [sa("127.0.0.77:1")]);
    assert_eq!(node.bootstrap_next, None);
    node.bootstrap(now, &[sa("127.0.0.50:1")]);
    // Everyone answers with nothing new.
    for _ in 0..5 {
        for (to, tid, _) in queries_in(&sent(&mut node)) {
            let who = node
                .table
                .entries()
                .find(|e| e.contact.addr == to)
                .map_or(ROUTER_ID, |e| e.contact.id);
            node.handle_datagram(
                now,
                SocketAddr::V4(to),
                &response(&tid, &ResponseBody::id_only(&who), None),
            );
        }
    }
    assert!(!node.is_bootstrapping());
    assert!(!node.to_verify.is_empty());
    assert_eq!(node.bootstrap_next, None);
    assert_eq!(node.bootstrap_backoff, BOOTSTRAP_MIN_BACKOFF);
}

#[test]
fn a_store_that_holds_nothing_refuses_announces_and_counts_them() {
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            store: StoreConfig {
                max_infohashes: 0,
                ..StoreConfig::default()
            },
            ..config()
        },
        now,
    );
    let ih = ih(0x42);
    let from = sa("127.0.0.2:1000");
    let gp = QueryArgs::GetPeers {
        info_hash: &ih,
        scrape: false,
        noseed: false,
    };
    node.handle_datagram(now, SocketAddr::V4(from), &query(gp, b"g1", id(1)));
    let token = response_of(&reply_to(&mut node, from)).token.unwrap();
    let ap = QueryArgs::AnnouncePeer {
        info_hash: &ih,
        port: 5,
        implied_port: false,
        token: token.as_slice(),
        seed: false,
    };
    node.handle_datagram(now, SocketAddr::V4(from), &query(ap, b"a1", id(1)));
    assert!(
        matches!(reply_to(&mut node, from).body, Body::Response(_)),
        "still acknowledged"
    );
    let s = node.stats(now);
    assert_eq!(
        (s.announces_stored, s.announces_refused, s.peers),
        (0, 1, 0)
    );
}

#[test]
fn an_ip_over_the_rate_limit_is_banned_and_counted() {
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            rate_limit: Some(RateLimit {
                packets: 5,
                ..RateLimit::default()
            }),
            ..config()
        },
        now,
    );
    let from = SocketAddr::V4(sa("127.0.0.2:1000"));
    let ping = query(QueryArgs::Ping, b"aa", id(1));
    for _ in 0..8 {
        node.handle_datagram(now, from, &ping);
    }
    let replies = sent(&mut node)
        .into_iter()
        .filter(|(_, m)| matches!(m.body, Body::Response(_)))
        .count();
    assert_eq!(replies, 5);
    let s = node.stats(now);
    assert_eq!((s.dropped_rate_limited, s.banned_ips), (3, 1));
}

#[test]
fn a_thin_table_rejoins_at_the_refresh_check_and_checks_again_a_minute_later() {
    let t0 = Instant::now();
    let mut node = node_with_table(1, t0);
    let router = sa("127.0.0.50:1");
    node.bootstrap(t0, &[router]);
    assert!(node.is_bootstrapping());
    for (to, tid, _) in queries_in(&sent(&mut node)) {
        let who = if to == router {
            ROUTER_ID
        } else {
            NodeId([1; 20])
        };
        node.handle_datagram(
            t0,
            SocketAddr::V4(to),
            &response(&tid, &ResponseBody::id_only(&who), None),
        );
    }
    let _ = sent(&mut node);
    assert!(!node.is_bootstrapping());
    // Push the backoff retry past the refresh check, so only the check can start a join.
    node.bootstrap_next = None;
    let check = t0 + REFRESH_CHECK;
    node.handle_timeout(check);
    assert_eq!(node.next_refresh_check, check + REFRESH_CHECK);
    assert!(node.is_bootstrapping(), "fewer than K entries: join again");
    assert!(
        queries_in(&sent(&mut node))
            .iter()
            .any(|(to, _, _)| *to == router)
    );
}

#[test]
fn an_item_lookup_asks_with_bep44_get() {
    let now = Instant::now();
    let mut node = node_with_table(2, now);
    node.get_item(now, id(7), crate::dht::item_search::ItemQuery::Immutable);
    let qs = queries_in(&sent(&mut node));
    assert_eq!(qs.len(), 2);
    for (_, _, q) in qs {
        assert!(
            matches!(q.method, Method::Get { target, seq: None } if target == id(7)),
            "{q:?}"
        );
    }
}

/// A query from outside the allow-list is read but never answered: the allow-list binds
/// replies as well as queries. (203.0.113.0/24 is TEST-NET-3; the datagram only exists
/// inside this sans-IO node.)
#[test]
fn queries_from_outside_the_allow_list_get_no_reply() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let from = sa("203.0.113.5:1000");
    node.handle_datagram(
        now,
        SocketAddr::V4(from),
        &query(QueryArgs::Ping, b"aa", id(1)),
    );
    assert!(sent(&mut node).is_empty());
    let s = node.stats(now);
    assert_eq!(
        (s.queries_in, s.replies_out, s.dropped_not_allowed),
        (1, 0, 1)
    );
}

/// `stats` reports the live gauges of the table, store, item store, transactions, lookups,
/// verifications, bans and the voted external IP.
#[test]
fn stats_report_every_gauge() {
    let t0 = Instant::now();
    let mut node = Node::new(
        Config {
            rate_limit: Some(RateLimit {
                packets: 1,
                ..RateLimit::default()
            }),
            ..config()
        },
        t0,
    );
    node.table
        .heard_response(Contact::new(id(1), sa("127.0.0.2:1000")), t0);
    let later = t0 + Duration::from_secs(20 * 60);
    node.table
        .heard_response(Contact::new(id(2), sa("127.0.0.3:1000")), later);
    let mut rng = StdRng::seed_from_u64(1);
    // A table entry whose id is valid for its (public) address under BEP 42.
    let public = std::net::Ipv4Addr::new(203, 0, 113, 9);
    node.table.heard_response(
        Contact::new(
            bep42::id_for_ip(public, &mut rng),
            SocketAddrV4::new(public, 1),
        ),
        later,
    );
    node.store
        .announce(ih(9), sa("127.0.0.9:1"), false, later, &mut rng);
    let put = crate::dht::krpc::PutArgs {
        token: Token::new(b"t").unwrap(),
        v: b"5:hello".to_vec(),
        mutable: None,
    };
    node.items.put(&put, later).unwrap();
    node.ping(later, sa("127.0.0.4:1000"));
    node.find_node(later, id(3));
    let querier = sa("127.0.0.5:1000");
    let ping = query(QueryArgs::Ping, b"aa", id(5));
    node.handle_datagram(later, SocketAddr::V4(querier), &ping);
    node.handle_datagram(later, SocketAddr::V4(querier), &ping);
    for i in 0..IP_VOTE_MIN as u8 {
        node.voter
            .vote([127, 0, 4, i + 1].into(), [203, 0, 113, 7].into());
    }
    let s = node.stats(later);
    let (good, questionable, bad) = node.table.counts(later);
    assert_eq!(
        (s.good_nodes, s.questionable_nodes, s.bad_nodes),
        (good, questionable, bad)
    );
    assert_eq!((good, questionable), (2, 1));
    assert_eq!(s.buckets, node.table.num_buckets());
    assert_eq!((s.infohashes, s.peers), (1, 1));
    assert_eq!(s.items, 1);
    assert!(s.item_bytes > 0);
    assert_eq!(s.item_counts, node.items.stats());
    assert_ne!(s.item_counts, Default::default());
    assert_eq!(
        (s.transactions, s.lookups, s.verifying),
        (node.txns.len(), 1, 1)
    );
    assert!(
        s.transactions >= 3,
        "a ping, a lookup query, a verification"
    );
    assert_eq!(s.banned_ips, 1);
    let valid = node.table.entries().filter(|e| e.valid_id).count();
    assert_eq!(s.valid_id_nodes, valid);
    assert!(valid >= 1);
    assert_eq!(s.external_ip, Some([203, 0, 113, 7].into()));
}

/// The pinged-then-answered steps of [`a_majority_of_repliers_seeing_a_public_ip_gives_us_a_bep42_id_for_it`]:
/// `IP_VOTE_MIN` repliers say they see us at `public`.
fn vote_for(node: &mut Node, now: Instant, public: SocketAddrV4) {
    for i in 0..IP_VOTE_MIN as u8 {
        let to = SocketAddrV4::new([127, 0, 3, i + 1].into(), 1000);
        node.ping(now, to);
        let (to, tid, _) = queries_in(&sent(node)).remove(0);
        node.handle_datagram(
            now,
            SocketAddr::V4(to),
            &response(&tid, &ResponseBody::id_only(&id(i + 1)), Some(public)),
        );
    }
}

/// The id changes only when adopting is on and the id is not already valid for the voted
/// address: an operator's fixed id, or one that already matches, stays.
#[test]
fn a_voted_public_ip_keeps_an_id_that_is_valid_or_fixed() {
    let now = Instant::now();
    let public = sa("203.0.113.7:6881");
    let mut rng = StdRng::seed_from_u64(5);
    let valid = bep42::id_for_ip(*public.ip(), &mut rng);
    let mut node = Node::new(
        Config {
            id: Some(valid),
            ..config()
        },
        now,
    );
    vote_for(&mut node, now, public);
    assert_eq!(node.id(), valid, "already valid for the address");
    assert_eq!(node.stats(now).external_ip, Some((*public.ip()).into()));

    let mut node = Node::new(
        Config {
            adopt_bep42_id: false,
            ..config()
        },
        now,
    );
    vote_for(&mut node, now, public);
    assert_eq!(node.id(), ME, "adopting is off");
    assert_eq!(node.stats(now).external_ip, Some((*public.ip()).into()));
}

/// A query for a method we do not know but that carries a target is answered like
/// find_node and counted under `other`.
#[test]
fn an_unknown_method_with_a_target_is_answered_and_counted_as_other() {
    let now = Instant::now();
    let mut node = node_with_table(3, now);
    let from = sa("127.0.0.9:7000");
    let mut q = b"d1:ad2:id20:".to_vec();
    q.extend_from_slice(&[9; 20]);
    q.extend_from_slice(b"6:target20:");
    q.extend_from_slice(&[1; 20]);
    q.extend_from_slice(b"e1:q4:vote1:t2:vv1:y1:qe");
    node.handle_datagram(now, SocketAddr::V4(from), &q);
    let reply = reply_to(&mut node, from);
    assert_eq!(reply.tid.as_slice(), b"vv");
    assert!(
        response_of(&reply)
            .nodes
            .as_ref()
            .is_some_and(|n| !n.is_empty())
    );
    let counts = node.stats(now).queries_by_method;
    assert_eq!((counts.other, counts.find_node), (1, 0));
}

/// A lookup starts from the 2K closest entries, so K dead ones in front do not leave it
/// without anyone to ask.
#[test]
fn a_lookup_is_seeded_with_twice_k_candidates() {
    let t0 = Instant::now();
    let k = config().routing.k;
    let mut node = node_with_table(2 * k as u8 + 4, t0);
    let target = NodeId([0x33; 20]);
    node.find_node(t0, target);
    let mut asked = std::collections::HashSet::new();
    for _ in 0..10_000 {
        for (to, _, q) in queries_in(&sent(&mut node)) {
            if matches!(q.method, Method::FindNode { target: t } if t == target) {
                asked.insert(to);
            }
        }
        if node.lookups.is_empty() {
            break;
        }
        // Nobody answers: every query times out, and the lookup asks the next candidate.
        let now = node.poll_timeout().unwrap();
        node.handle_timeout(now);
    }
    assert!(node.lookups.is_empty(), "the lookup ended");
    assert_eq!(asked.len(), 2 * k, "every seed is asked, and only they");
}

/// A bootstrap that ends while known contacts are still being verified looks again one
/// second later (they may fill the table), not after the backoff for an empty network.
#[test]
fn a_bootstrap_ending_during_verification_looks_again_a_second_later() {
    let t0 = Instant::now();
    let mut node = Node::new(config(), t0);
    let router = sa("127.0.0.50:6881");
    node.add_contacts(t0, [sa("127.0.2.1:7000"), sa("127.0.2.2:7000")]);
    node.bootstrap(t0, &[router]);
    let mut now = t0;
    let mut starts = vec![];
    while starts.len() < 2 && now < t0 + Duration::from_secs(60) {
        if queries_in(&sent(&mut node))
            .iter()
            .any(|(to, _, _)| *to == router)
        {
            starts.push(now.duration_since(t0).as_millis());
        }
        if starts.len() == 1 && node.bootstrap_next.is_some() {
            // The first attempt has ended; the contacts are still being verified.
            assert!(!node.verifying.is_empty() && node.to_verify.is_empty());
            assert_eq!(node.bootstrap_next, Some(now + Duration::from_secs(1)));
        }
        now = node.poll_timeout().unwrap();
        node.handle_timeout(now);
    }
    assert_eq!(starts, vec![0, 2000]);
}

/// The bootstrap backoff resets only once the table is full enough (K entries): one node
/// answering does not make an empty network look healthy.
#[test]
fn the_bootstrap_backoff_resets_only_at_k_entries() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let k = config().routing.k;
    node.bootstrap_backoff = Duration::from_secs(16);
    for i in 0..k as u8 {
        let to = SocketAddrV4::new([127, 0, 4, i + 1].into(), 1000);
        node.ping(now, to);
        let (to, tid, _) = queries_in(&sent(&mut node)).remove(0);
        node.handle_datagram(
            now,
            SocketAddr::V4(to),
            &response(&tid, &ResponseBody::id_only(&id(i + 1)), None),
        );
        if node.table.len() < k {
            assert_eq!(node.bootstrap_backoff, Duration::from_secs(16), "{i}");
        }
    }
    assert_eq!(node.table.len(), k);
    assert_eq!(node.bootstrap_backoff, BOOTSTRAP_MIN_BACKOFF);
}

/// Expired peers are swept at the sweep interval even when nothing else happens.
#[test]
fn expired_peers_are_swept_when_the_sweep_is_due() {
    let t0 = Instant::now();
    let mut node = Node::new(config(), t0);
    let mut rng = StdRng::seed_from_u64(1);
    node.store
        .announce(InfoHash([7; 20]), sa("127.0.0.7:6881"), false, t0, &mut rng);
    assert_eq!(node.stats(t0).peers, 1);
    let ttl = node.store.config().peer_ttl;
    let later = t0 + ttl + SWEEP_INTERVAL + Duration::from_secs(1);
    node.handle_timeout(later);
    assert_eq!(node.stats(later).peers, 0);
}

/// A contact already being verified is skipped, not a reason to stop the burst: the
/// contacts after it are still pinged.
#[test]
fn a_contact_already_being_verified_does_not_stall_the_others() {
    let t0 = Instant::now();
    let mut node = Node::new(config(), t0);
    let (a, b) = (sa("127.0.2.1:7000"), sa("127.0.2.2:7000"));
    node.add_contacts(t0, [a]);
    node.handle_timeout(t0);
    let first: Vec<_> = queries_in(&sent(&mut node))
        .into_iter()
        .map(|q| q.0)
        .collect();
    assert_eq!(first, [a]);
    node.to_verify.push_back(a);
    node.to_verify.push_back(b);
    node.verify_burst(t0);
    let second: Vec<_> = queries_in(&sent(&mut node))
        .into_iter()
        .map(|q| q.0)
        .collect();
    assert_eq!(second, [b]);
    assert!(node.to_verify.is_empty());
}

/// The node reports the configuration it was started with.
#[test]
fn the_node_keeps_the_config_it_was_given() {
    let now = Instant::now();
    let mut cfg = config();
    cfg.routing.k = 5;
    cfg.read_only = true;
    let node = Node::new(cfg, now);
    assert_eq!(node.config().routing.k, 5);
    assert!(node.config().read_only);
}

/// Every direct query gets its own request id.
#[test]
fn direct_queries_get_distinct_request_ids() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let a = node.ping(now, sa("127.0.0.21:7000"));
    let b = node.ping(now, sa("127.0.0.22:7000"));
    let c = node.ping(now, sa("127.0.0.23:7000"));
    assert!(a != b && b != c && a != c);
}

/// We are on the public internet when either our bound address or the one repliers vote
/// for is global: a node bound to 0.0.0.0 learns it from the vote.
#[test]
fn a_voted_global_address_makes_the_node_public() {
    let now = Instant::now();
    let mut node = Node::new(
        Config {
            adopt_bep42_id: false,
            local_addr: Some(sa("0.0.0.0:6881").into()),
            ..config()
        },
        now,
    );
    assert!(!node.candidate_filter().public);
    vote_for(&mut node, now, sa("8.8.4.4:6881"));
    assert!(node.candidate_filter().public);
}

/// A table with K entries is enough: the routers are not added to a lookup (they join
/// only when the table is thinner than K).
#[test]
fn a_table_of_k_entries_looks_up_without_the_routers() {
    let t0 = Instant::now();
    let k = config().routing.k;
    let mut node = node_with_table(k as u8, t0);
    let router = sa("127.0.0.50:6881");
    node.routers.push(router);
    let target = NodeId([0x33; 20]);
    node.find_node(t0, target);
    for _ in 0..10_000 {
        for (to, _, _) in queries_in(&sent(&mut node)) {
            assert_ne!(to, router, "a router was asked");
        }
        if node.lookups.is_empty() {
            break;
        }
        let now = node.poll_timeout().unwrap();
        node.handle_timeout(now);
    }
    assert!(node.lookups.is_empty());
}

/// Candidates the allow-list refuses free their slots at once: the lookup asks the next
/// ones in the same step.
#[test]
fn refused_candidates_are_replaced_in_the_same_step() {
    let now = Instant::now();
    let mut node = Node::new(config(), now);
    let target = NodeId([0x10; 20]);
    // The three closest are off loopback (refused here), five more on loopback.
    for i in 0..3u8 {
        let mut id = [0x10; 20];
        id[19] = i;
        node.table.heard_response(
            Contact::new(
                NodeId(id),
                SocketAddrV4::new([10, 0, 0, i + 1].into(), 7000),
            ),
            now,
        );
    }
    for i in 0..5u8 {
        let mut id = [0x11; 20];
        id[19] = i;
        node.table.heard_response(
            Contact::new(
                NodeId(id),
                SocketAddrV4::new([127, 0, 7, i + 1].into(), 7000),
            ),
            now,
        );
    }
    node.find_node(now, target);
    let asked: Vec<SocketAddrV4> = queries_in(&sent(&mut node))
        .into_iter()
        .map(|q| q.0)
        .collect();
    assert!(!asked.is_empty(), "nothing asked after the refusals");
    assert!(asked.iter().all(|a| a.ip().is_loopback()), "{asked:?}");
}

/// An announce with `implied_port` (no TCP port given) keeps its BEP 33 seed flag.
#[test]
fn an_implied_port_announce_keeps_its_seed_flag() {
    let now = Instant::now();
    let mut node = node_with_table(2, now);
    let ih = ih(0x43);
    node.announce_as(now, ih, None, true);
    let mut seen = 0;
    for _round in 0..10 {
        let out = sent(&mut node);
        if out.is_empty() {
            break;
        }
        for (to, tid, q) in queries_in(&out) {
            let who = node
                .table
                .entries()
                .find(|e| e.contact.addr == to)
                .unwrap()
                .contact
                .id;
            match q.method {
                Method::GetPeers { .. } => {
                    let token = [to.ip().octets()[3]];
                    let body = ResponseBody {
                        token: Some(&token),
                        ..ResponseBody::id_only(&who)
                    };
                    node.handle_datagram(now, SocketAddr::V4(to), &response(&tid, &body, None));
                }
                Method::AnnouncePeer {
                    implied_port, seed, ..
                } => {
                    assert!(implied_port && seed, "implied {implied_port} seed {seed}");
                    seen += 1;
                    node.handle_datagram(
                        now,
                        SocketAddr::V4(to),
                        &response(&tid, &ResponseBody::id_only(&who), None),
                    );
                }
                m => panic!("unexpected {m:?}"),
            }
        }
    }
    assert_eq!(seen, 2);
}

/// A table of exactly K entries is healthy: the refresh check does not rejoin through the
/// routers (only a thinner one does).
#[test]
fn a_table_of_k_entries_does_not_rejoin_at_the_refresh_check() {
    let t0 = Instant::now();
    let k = config().routing.k;
    let mut node = node_with_table(k as u8, t0);
    node.routers.push(sa("127.0.0.50:6881"));
    let at = node.next_refresh_check;
    node.handle_timeout(at);
    assert!(!node.bootstrap_running, "a full enough table rejoined");
    assert!(node.bootstrap_next.is_none());
}

/// Junk contacts in replies (port 0 here) are counted once each, across every reply of a
/// lookup.
#[test]
fn junk_contacts_are_counted_once_across_replies() {
    let now = Instant::now();
    let mut node = node_with_table(2, now);
    node.find_node(now, NodeId([0x44; 20]));
    let mut nodes = Vec::new();
    for i in 0..2u8 {
        Contact::new(
            NodeId([0x90 + i; 20]),
            SocketAddrV4::new([127, 0, 9, i + 1].into(), 0),
        )
        .write_compact(&mut nodes);
    }
    let before = node.stats(now).junk_candidates;
    let mut replied = 0;
    for (to, tid, q) in queries_in(&sent(&mut node)) {
        if !matches!(q.method, Method::FindNode { .. }) {
            continue;
        }
        let who = node
            .table
            .entries()
            .find(|e| e.contact.addr == to)
            .unwrap()
            .contact
            .id;
        let body = ResponseBody {
            nodes: Some(&nodes),
            ..ResponseBody::id_only(&who)
        };
        node.handle_datagram(now, SocketAddr::V4(to), &response(&tid, &body, None));
        replied += 1;
    }
    assert_eq!(replied, 2);
    assert_eq!(node.stats(now).junk_candidates - before, 4);
}

// ---- BEP 32: the IPv6 DHT and `want` ----

fn sa6(s: &str) -> SocketAddrV6 {
    s.parse().unwrap()
}

/// A loopback-testnet config whose allow-list also takes the IPv6 test range.
fn config6() -> Config {
    Config {
        allow: AllowList::only(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd77::/16".parse().unwrap(),
        ]),
        ..config()
    }
}

/// An IPv6 node whose table holds `n` verified contacts at fd77::1:i.
fn node6_with_table(n: u8, now: Instant) -> Node<SocketAddrV6> {
    let mut node = Node::new_v6(config6(), now);
    for i in 0..n {
        let c = Contact::new(
            NodeId([i.wrapping_mul(37).wrapping_add(1); 20]),
            sa6(&format!("[fd77::1:{}]:7000", i + 1)),
        );
        node.table.heard_response(c, now);
    }
    node
}

fn sent6(node: &mut Node<SocketAddrV6>) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some(t) = node.poll_transmit() {
        out.push((t.to, krpc::decode(t.payload).expect("valid KRPC")));
    }
    out
}

fn find_node_want(target: NodeId, want: Want) -> Vec<u8> {
    let mut out = Vec::new();
    let args = QueryArgs::FindNode { target: &target };
    krpc::encode_query_want(&mut out, b"fw", &id(9), &args, want, false, None);
    out
}

/// An IPv6 node answers over IPv6 with 38-byte `nodes6` (never `nodes`), an 18-byte `ip`,
/// and refuses IPv4 sources (the IPv4 DHT is another node's).
#[test]
fn an_ipv6_node_answers_with_nodes6_and_an_18_byte_ip() {
    let now = Instant::now();
    let mut node = node6_with_table(5, now);
    let from = sa6("[fd77::9]:6881");
    node.handle_datagram(
        now,
        SocketAddr::V6(from),
        &find_node_want(id(3), Want::NONE),
    );
    // The reply, and a verification ping to the unknown querier (over IPv6 too).
    let out = sent6(&mut node);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(to, _)| *to == SocketAddr::V6(from)));
    let reply = &out
        .iter()
        .find(|(_, m)| matches!(m.body, Body::Response(_)))
        .unwrap()
        .1;
    assert_eq!(reply.ip, Some(SocketAddr::V6(from)));
    let r = response_of(reply);
    assert!(r.nodes.is_none());
    assert_eq!(r.nodes6.as_ref().unwrap().len(), 5 * 38);
    assert!(r.nodes6().all(|c| c.addr.ip().segments()[0] == 0xfd77));
    // An IPv4 source is not this node's.
    node.handle_datagram(
        now,
        SocketAddr::V4(sa("127.0.0.9:6881")),
        &find_node_want(id(3), Want::NONE),
    );
    assert!(sent6(&mut node).is_empty());
    assert_eq!(node.stats(now).dropped_other, 1);
}

/// BEP 32 `want`, answered by an IPv4 node that lends its IPv6 sibling: none gives the
/// transport's family, `n6` gives only `nodes6`, `n4` and `n6` give both; without a sibling
/// `n6` gives an empty answer rather than the wrong family.
#[test]
fn want_picks_the_node_lists_of_a_reply() {
    let now = Instant::now();
    let mut v4 = node_with_table(4, now);
    let v6 = node6_with_table(3, now);
    let from = sa("127.0.0.9:6881");
    let ask = |v4: &mut Node, want: Want, other: Option<&dyn OtherFamily>| {
        v4.handle_datagram_with(
            now,
            SocketAddr::V4(from),
            &find_node_want(id(3), want),
            other,
        );
        let m = reply_to(v4, from);
        let r = response_of(&m).clone();
        (
            r.nodes.map_or(0, |n| n.len() / 26),
            r.nodes6.map_or(0, |n| n.len() / 38),
        )
    };
    assert_eq!(ask(&mut v4, Want::NONE, Some(&v6)), (4, 0));
    assert_eq!(ask(&mut v4, Want::only(Family::V6), Some(&v6)), (0, 3));
    assert_eq!(ask(&mut v4, Want::BOTH, Some(&v6)), (4, 3));
    assert_eq!(ask(&mut v4, Want::only(Family::V4), Some(&v6)), (4, 0));
    assert_eq!(ask(&mut v4, Want::only(Family::V6), None), (0, 0));
    // get_peers and BEP 44 get honour it too.
    let mut q = Vec::new();
    let info = ih(3);
    let args = QueryArgs::GetPeers {
        info_hash: &info,
        scrape: false,
        noseed: false,
    };
    krpc::encode_query_want(&mut q, b"gp", &id(9), &args, Want::BOTH, false, None);
    v4.handle_datagram_with(now, SocketAddr::V4(from), &q, Some(&v6));
    let m = reply_to(&mut v4, from);
    let r = response_of(&m);
    assert_eq!(r.nodes6().count(), 3);
    assert_eq!(r.nodes().count(), 4);
    assert!(r.token.is_some());
    let target = id(3);
    let mut q = Vec::new();
    let args = QueryArgs::Get {
        target: &target,
        seq: None,
    };
    krpc::encode_query_want(
        &mut q,
        b"gt",
        &id(9),
        &args,
        Want::only(Family::V6),
        false,
        None,
    );
    v4.handle_datagram_with(now, SocketAddr::V4(from), &q, Some(&v6));
    let m = reply_to(&mut v4, from);
    let r = response_of(&m);
    assert_eq!((r.nodes().count(), r.nodes6().count()), (0, 3));
}

/// The IPv6 peer store: a get_peers token is bound to the querier's IPv6 address (another
/// IPv6 address cannot use it), an announce stores an 18-byte peer with the announced (or
/// implied) port, and a later get_peers returns it in `values`.
#[test]
fn ipv6_tokens_announces_and_values() {
    let now = Instant::now();
    let mut node = node6_with_table(2, now);
    let a = sa6("[fd77::a]:6881");
    let b = sa6("[fd77::b]:6881");
    let info = ih(0x42);
    let gp = query(
        QueryArgs::GetPeers {
            info_hash: &info,
            scrape: false,
            noseed: false,
        },
        b"g1",
        id(9),
    );
    node.handle_datagram(now, SocketAddr::V6(a), &gp);
    let out = sent6(&mut node);
    let token = response_of(&out[0].1).token.unwrap();
    let announce = |port, implied| {
        query(
            QueryArgs::AnnouncePeer {
                info_hash: &info,
                port,
                implied_port: implied,
                token: token.as_slice(),
                seed: false,
            },
            b"a1",
            id(9),
        )
    };
    // The token is a's, not b's.
    node.handle_datagram(now, SocketAddr::V6(b), &announce(7777, false));
    let out = sent6(&mut node);
    assert!(matches!(&out[0].1.body, Body::Error(e) if e.code == 203));
    node.handle_datagram(now, SocketAddr::V6(a), &announce(7777, false));
    let out = sent6(&mut node);
    assert!(matches!(out[0].1.body, Body::Response(_)));
    node.handle_datagram(now, SocketAddr::V6(a), &announce(0, true));
    sent6(&mut node);
    node.handle_datagram(now, SocketAddr::V6(b), &gp);
    let out = sent6(&mut node);
    let r = response_of(&out[0].1);
    let mut got = r.values6.clone();
    got.sort();
    assert_eq!(got, vec![sa6("[fd77::a]:6881"), sa6("[fd77::a]:7777")]);
    assert!(r.values.is_empty());
}

/// An IPv6 lookup asks IPv6 contacts, reads `nodes6` from replies (a reply's IPv4 `nodes` are
/// another DHT's and ignored) and reports IPv6 peers.
#[test]
fn an_ipv6_lookup_follows_nodes6_and_reports_ipv6_peers() {
    let now = Instant::now();
    let mut node = node6_with_table(1, now);
    let lid = node.get_peers(now, ih(0x42));
    let out = sent6(&mut node);
    assert_eq!(out.len(), 1);
    let (to, m) = &out[0];
    let SocketAddr::V6(to) = *to else {
        panic!("queried over IPv4")
    };
    let mut nodes = Vec::new();
    Contact::new(id(0x42), sa6("[fd77::2:1]:7000")).write_compact(&mut nodes);
    let mut nodes4 = Vec::new();
    Contact::new(id(0x41), sa("127.0.2.1:7000")).write_compact(&mut nodes4);
    let peers = [sa6("[fd77::99]:51413")];
    let replier = id(1);
    let body = ResponseBody {
        nodes: Some(&nodes4),
        nodes6: Some(&nodes),
        token: Some(b"tk"),
        values6: &peers,
        ..ResponseBody::id_only(&replier)
    };
    let mut reply = Vec::new();
    krpc::encode_response(&mut reply, m.tid.as_slice(), &body, None, None);
    node.handle_datagram(now, SocketAddr::V6(to), &reply);
    let evs: Vec<_> = std::iter::from_fn(|| node.poll_event()).collect();
    assert!(
        evs.iter().any(
            |e| matches!(e, Event::Peers { lookup, peers: p } if *lookup == lid && p == &peers)
        )
    );
    let next: Vec<_> = sent6(&mut node).into_iter().map(|(a, _)| a).collect();
    assert_eq!(next, vec![SocketAddr::V6(sa6("[fd77::2:1]:7000"))]);
}
