//! KRPC codec: the BEP 5 example packets byte for byte, the hand-written encoder against
//! serde_bencode's canonical output, and hostile input.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use serde_bencode::value::Value;
use trackerless::dht::id::{Contact, Family, InfoHash, NodeId};
use trackerless::dht::krpc::{
    self, Bep44Fields, Body, DecodeError, ErrorBody, ItemReply, Message, Method, MutablePut, Query,
    QueryArgs, Response, ResponseBody, Tid, Token, Version, Want,
};
use trackerless::dht::scrape::ScrapeFilter;

fn id(s: &[u8; 20]) -> NodeId {
    NodeId(*s)
}

fn tid(s: &[u8]) -> Tid {
    Tid::new(s).unwrap()
}

fn plain(tid_bytes: &[u8], body: Body) -> Message {
    Message {
        tid: tid(tid_bytes),
        body,
        ip: None,
        read_only: false,
        version: None,
    }
}

fn query(method: Method) -> Message {
    plain(
        b"aa",
        Body::Query(Query {
            id: id(b"abcdefghij0123456789"),
            method,
            want: Default::default(),
        }),
    )
}

fn encoded(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    krpc::encode_message(&mut out, m);
    out
}

/// Every example in BEP 5, as (bencoded text, the message it denotes).
fn bep5_examples() -> Vec<(&'static [u8], Message)> {
    let info_hash = InfoHash(*b"mnopqrstuvwxyz123456");
    vec![
        (
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
            plain(
                b"aa",
                Body::Error(ErrorBody { code: 201, message: "A Generic Error Ocurred".into() }),
            ),
        ),
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe", query(Method::Ping)),
        (
            b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
            plain(b"aa", Body::Response(Response::with_id(id(b"mnopqrstuvwxyz123456")))),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
            query(Method::FindNode { target: id(b"mnopqrstuvwxyz123456") }),
        ),
        (
            b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re",
            plain(
                b"aa",
                Body::Response(Response {
                    nodes: Some(b"def456...".to_vec()),
                    ..Response::with_id(id(b"0123456789abcdefghij"))
                }),
            ),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
            query(Method::GetPeers { info_hash, scrape: false, noseed: false }),
        ),
        (
            b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
            plain(
                b"aa",
                Body::Response(Response {
                    token: Token::new(b"aoeusnth"),
                    values: vec![peer(b"axje.u"), peer(b"idhtnm")],
                    ..Response::with_id(id(b"abcdefghij0123456789"))
                }),
            ),
        ),
        (
            b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...5:token8:aoeusnthe1:t2:aa1:y1:re",
            plain(
                b"aa",
                Body::Response(Response {
                    nodes: Some(b"def456...".to_vec()),
                    token: Token::new(b"aoeusnth"),
                    ..Response::with_id(id(b"abcdefghij0123456789"))
                }),
            ),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
            query(Method::AnnouncePeer {
                info_hash,
                port: 6881,
                implied_port: false,
                token: Token::new(b"aoeusnth").unwrap(),
                seed: false,
            }),
        ),
    ]
}

fn peer(b: &[u8; 6]) -> SocketAddrV4 {
    trackerless::dht::id::compact_peer(b).unwrap()
}

#[test]
fn bep5_examples_decode_and_encode_byte_exact() {
    for (wire, message) in bep5_examples() {
        let text = String::from_utf8_lossy(wire);
        assert_eq!(krpc::decode(wire).as_ref(), Ok(&message), "decoding {text}");
        assert_eq!(encoded(&message), wire, "encoding {text}");
    }
}

// ---- byte-exact against serde_bencode's canonical (sorted) encoder ----

/// Dictionary entries as (key, value) pairs.
type Entries<'a> = Vec<(&'a [u8], Value)>;

fn b(s: &[u8]) -> Value {
    Value::Bytes(s.to_vec())
}

fn dict(entries: Vec<(&[u8], Value)>) -> Value {
    Value::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v))
            .collect::<HashMap<_, _>>(),
    )
}

fn canonical(v: &Value) -> Vec<u8> {
    serde_bencode::to_bytes(v).unwrap()
}

#[test]
fn hand_encoder_matches_serde_bencode_for_every_shape() {
    let me = id(&[0x11; 20]);
    let target = id(&[0x22; 20]);
    // The same 160 bits as the info hash of the get_peers and announce_peer shapes.
    let ih = InfoHash::from_node_id(target);
    let token = b"tok123";
    let ip: SocketAddrV4 = "127.1.2.3:6881".parse().unwrap();
    let version = b"TK\x00\x01";
    let item_v = b"d1:ai1e1:bl1:xee";
    let item_v_tree = dict(vec![
        (b"a", Value::Int(1)),
        (b"b", Value::List(vec![b(b"x")])),
    ]);
    let salted = MutablePut {
        k: [0x33; 32],
        salt: b"salt".to_vec(),
        seq: 7,
        sig: [0x44; 64],
        cas: Some(6),
    };
    let unsalted = MutablePut {
        salt: Vec::new(),
        cas: None,
        ..salted.clone()
    };

    let shapes: Vec<(QueryArgs, Entries)> = vec![
        (QueryArgs::Ping, vec![]),
        (
            QueryArgs::FindNode { target: &target },
            vec![(b"target", b(&target.0))],
        ),
        (
            QueryArgs::GetPeers {
                info_hash: &ih,
                scrape: false,
                noseed: false,
            },
            vec![(b"info_hash", b(&target.0))],
        ),
        (
            QueryArgs::AnnouncePeer {
                info_hash: &ih,
                port: 51413,
                implied_port: true,
                token,
                seed: false,
            },
            vec![
                (b"implied_port", Value::Int(1)),
                (b"info_hash", b(&target.0)),
                (b"port", Value::Int(51413)),
                (b"token", b(token)),
            ],
        ),
        (
            QueryArgs::GetPeers {
                info_hash: &ih,
                scrape: true,
                noseed: true,
            },
            vec![
                (b"info_hash", b(&target.0)),
                (b"noseed", Value::Int(1)),
                (b"scrape", Value::Int(1)),
            ],
        ),
        (
            QueryArgs::AnnouncePeer {
                info_hash: &ih,
                port: 2,
                implied_port: false,
                token,
                seed: true,
            },
            vec![
                (b"info_hash", b(&target.0)),
                (b"port", Value::Int(2)),
                (b"seed", Value::Int(1)),
                (b"token", b(token)),
            ],
        ),
        (
            QueryArgs::AnnouncePeer {
                info_hash: &ih,
                port: 1,
                implied_port: false,
                token,
                seed: false,
            },
            vec![
                (b"info_hash", b(&target.0)),
                (b"port", Value::Int(1)),
                (b"token", b(token)),
            ],
        ),
        (
            QueryArgs::SampleInfohashes { target: &target },
            vec![(b"target", b(&target.0))],
        ),
        (
            QueryArgs::Get {
                target: &target,
                seq: None,
            },
            vec![(b"target", b(&target.0))],
        ),
        (
            QueryArgs::Get {
                target: &target,
                seq: Some(-1),
            },
            vec![(b"seq", Value::Int(-1)), (b"target", b(&target.0))],
        ),
        (
            QueryArgs::Put {
                token,
                v: item_v,
                mutable: None,
            },
            vec![(b"token", b(token)), (b"v", item_v_tree.clone())],
        ),
        (
            QueryArgs::Put {
                token,
                v: item_v,
                mutable: Some(&salted),
            },
            vec![
                (b"cas", Value::Int(6)),
                (b"k", b(&[0x33; 32])),
                (b"salt", b(b"salt")),
                (b"seq", Value::Int(7)),
                (b"sig", b(&[0x44; 64])),
                (b"token", b(token)),
                (b"v", item_v_tree.clone()),
            ],
        ),
        (
            QueryArgs::Put {
                token,
                v: item_v,
                mutable: Some(&unsalted),
            },
            vec![
                (b"k", b(&[0x33; 32])),
                (b"seq", Value::Int(7)),
                (b"sig", b(&[0x44; 64])),
                (b"token", b(token)),
                (b"v", item_v_tree.clone()),
            ],
        ),
    ];
    for (args, extra) in shapes {
        for read_only in [false, true] {
            let mut a = vec![(&b"id"[..], b(&me.0))];
            a.extend(extra.iter().cloned());
            let name: &[u8] = match args {
                QueryArgs::Ping => b"ping",
                QueryArgs::FindNode { .. } => b"find_node",
                QueryArgs::GetPeers { .. } => b"get_peers",
                QueryArgs::AnnouncePeer { .. } => b"announce_peer",
                QueryArgs::SampleInfohashes { .. } => b"sample_infohashes",
                QueryArgs::Get { .. } => b"get",
                QueryArgs::Put { .. } => b"put",
            };
            let mut top = vec![
                (&b"a"[..], dict(a)),
                (b"q", b(name)),
                (b"t", b(b"xy")),
                (b"v", b(version)),
                (b"y", b(b"q")),
            ];
            if read_only {
                top.push((b"ro", Value::Int(1)));
            }
            let mut ours = Vec::new();
            krpc::encode_query(&mut ours, b"xy", &me, &args, read_only, Some(version));
            assert_eq!(ours, canonical(&dict(top)), "{args:?} ro={read_only}");
            // And the decoder reads back what was encoded (the value's bytes as sent).
            let m = krpc::decode(&ours).unwrap();
            let mut again = Vec::new();
            krpc::encode_message(&mut again, &m);
            assert_eq!(again, ours, "{args:?}");
        }
    }

    // BEP 44 get replies, with and without a (mutable) item.
    let nodes = [5u8; 26];
    for item in [
        None,
        Some(ItemReply {
            v: item_v,
            mutable: None,
        }),
        Some(ItemReply {
            v: item_v,
            mutable: Some((&[0x33; 32], 7, &[0x44; 64])),
        }),
    ] {
        let mut ours = Vec::new();
        let base = ResponseBody {
            nodes: Some(&nodes),
            token: Some(token),
            ..ResponseBody::id_only(&me)
        };
        krpc::encode_get_response(&mut ours, b"g1", base, item, None, None);
        let mut r = vec![
            (&b"id"[..], b(&me.0)),
            (b"nodes", b(&nodes)),
            (b"token", b(token)),
        ];
        if let Some(i) = item {
            r.push((b"v", item_v_tree.clone()));
            if i.mutable.is_some() {
                r.push((b"k", b(&[0x33; 32])));
                r.push((b"seq", Value::Int(7)));
                r.push((b"sig", b(&[0x44; 64])));
            }
        }
        let want = dict(vec![(b"r", dict(r)), (b"t", b(b"g1")), (b"y", b(b"r"))]);
        assert_eq!(ours, canonical(&want), "{item:?}");
    }

    let nodes = [7u8; 52];
    let values: Vec<SocketAddrV4> = vec![
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.2:65535".parse().unwrap(),
    ];
    let samples = [9u8; 60];
    let bf_sd = ScrapeFilter([0x5d; 256]);
    let bf_pe = ScrapeFilter([0x9e; 256]);
    let body = ResponseBody {
        id: &me,
        nodes: Some(&nodes),
        nodes6: None,
        token: Some(token),
        values: &values,
        values6: &[],
        samples: Some(&samples),
        interval: Some(21600),
        num: Some(-3),
        // Every field at once: no real reply has them all, but each has its sorted place.
        bep44: Bep44Fields {
            v: Some(item_v),
            k: Some(&[0x33; 32]),
            seq: Some(7),
            sig: Some(&[0x44; 64]),
        },
        scrape: Some((&bf_sd, &bf_pe)),
    };
    let mut ours = Vec::new();
    krpc::encode_response(&mut ours, b"\x00\xff", &body, Some(ip.into()), None);
    // And it decodes to the same fields (the value's bytes as sent).
    let Body::Response(back) = krpc::decode(&ours).unwrap().body else {
        panic!("not a response");
    };
    assert_eq!(back.v.as_deref(), Some(&item_v[..]));
    assert_eq!(back.k.as_deref(), Some(&[0x33; 32]));
    assert_eq!(back.seq, Some(7));
    assert_eq!(back.sig.as_deref(), Some(&[0x44; 64]));
    assert_eq!(back.bf_seeds.as_deref(), Some(&bf_sd));
    assert_eq!(back.bf_peers.as_deref(), Some(&bf_pe));
    let r = dict(vec![
        (b"BFpe", b(&bf_pe.0)),
        (b"BFsd", b(&bf_sd.0)),
        (b"id", b(&me.0)),
        (b"interval", Value::Int(21600)),
        (b"k", b(&[0x33; 32])),
        (b"nodes", b(&nodes)),
        (b"num", Value::Int(-3)),
        (b"samples", b(&samples)),
        (b"seq", Value::Int(7)),
        (b"sig", b(&[0x44; 64])),
        (b"token", b(token)),
        (b"v", item_v_tree.clone()),
        (
            b"values",
            Value::List(
                values
                    .iter()
                    .map(|v| b(&trackerless::dht::id::compact_peer_bytes(*v)))
                    .collect(),
            ),
        ),
    ]);
    let want = dict(vec![
        (b"ip", b(&trackerless::dht::id::compact_peer_bytes(ip))),
        (b"r", r),
        (b"t", b(b"\x00\xff")),
        (b"y", b(b"r")),
    ]);
    assert_eq!(ours, canonical(&want));

    let mut ours = Vec::new();
    krpc::encode_response(
        &mut ours,
        b"t1",
        &ResponseBody::id_only(&me),
        None,
        Some(version),
    );
    let want = dict(vec![
        (b"r", dict(vec![(b"id", b(&me.0))])),
        (b"t", b(b"t1")),
        (b"v", b(version)),
        (b"y", b(b"r")),
    ]);
    assert_eq!(ours, canonical(&want));

    let mut ours = Vec::new();
    krpc::encode_error(
        &mut ours,
        b"t1",
        203,
        "bad token",
        Some(ip.into()),
        Some(version),
    );
    let want = dict(vec![
        (b"e", Value::List(vec![Value::Int(203), b(b"bad token")])),
        (b"ip", b(&trackerless::dht::id::compact_peer_bytes(ip))),
        (b"t", b(b"t1")),
        (b"v", b(version)),
        (b"y", b(b"e")),
    ]);
    assert_eq!(ours, canonical(&want));
}

#[test]
fn typed_round_trip_keeps_top_level_extras() {
    let m = Message {
        tid: tid(b"\x01\x02\x03\x04"),
        body: Body::Response(Response {
            token: Token::new(&[0xaa; 20]),
            values: vec!["127.9.9.9:80".parse().unwrap()],
            ..Response::with_id(id(&[3; 20]))
        }),
        ip: Some("127.4.4.4:4444".parse().unwrap()),
        read_only: false,
        version: Version::new(b"LT\x01\x02"),
    };
    assert_eq!(krpc::decode(&encoded(&m)), Ok(m));
    let q = Message {
        read_only: true,
        ..query(Method::Ping)
    };
    assert_eq!(krpc::decode(&encoded(&q)), Ok(q));
}

// ---- tolerance and hostile input ----

#[test]
fn unknown_keys_unsorted_keys_and_wrong_types_are_tolerated() {
    // Unsorted top level, an extra key, a non-UTF-8 key, `ip` in the reply dict.
    let m = krpc::decode(
        b"d1:rd2:id20:abcdefghij01234567892:ip4:\x7f\x00\x00\x015:token7:caojian6:valuesl6:axje.u18:aaaaaaaaaaaaaaaaaaee1:y1:r1:t2:aa2:\xff\xfei1e1:v4:UT\xa6\x6fe",
    )
    .unwrap();
    let Body::Response(r) = m.body else {
        panic!("not a response")
    };
    assert_eq!(r.token.unwrap().as_slice(), b"caojian");
    assert_eq!(r.values, vec![peer(b"axje.u")]);
    assert_eq!(m.version.unwrap().as_slice(), b"UT\xa6\x6f");
    // A mistyped optional field in a query is ignored; `port` is optional with implied_port.
    let m = krpc::decode(b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:port3:abc5:token2:ope1:q13:announce_peer1:t2:aa1:y1:qe").unwrap();
    let Body::Query(Query {
        method: Method::AnnouncePeer {
            port, implied_port, ..
        },
        ..
    }) = m.body
    else {
        panic!("not an announce")
    };
    assert_eq!((port, implied_port), (0, true));
}

fn bad_query_code(buf: &[u8]) -> Option<i64> {
    match krpc::decode(buf) {
        Err(DecodeError::BadQuery { code, .. }) => Some(code),
        _ => None,
    }
}

#[test]
fn answerable_bad_queries_get_203_or_204() {
    // Missing id, short id, missing target, missing token, bad port, no `a`.
    for q in [
        &b"d1:ad6:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe"[..],
        b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe",
        b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe",
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881ee1:q13:announce_peer1:t2:aa1:y1:qe",
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti0e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
        b"d1:q4:ping1:t2:aa1:y1:qe",
        b"d1:ai5e1:q4:ping1:t2:aa1:y1:qe",
    ] {
        assert_eq!(bad_query_code(q), Some(203), "{}", String::from_utf8_lossy(q));
    }
    assert_eq!(
        bad_query_code(b"d1:ad2:id20:abcdefghij0123456789e1:q5:fly!!1:t2:aa1:y1:qe"),
        Some(204)
    );
    // An unknown method with a target is answered like find_node (forward compatibility).
    let m = krpc::decode(b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234565:token2:xx4:votei3ee1:q4:vote1:t2:aa1:y1:qe").unwrap();
    assert!(matches!(
        m.body,
        Body::Query(Query {
            method: Method::Unknown { .. },
            ..
        })
    ));
}

#[test]
fn unanswerable_input_is_rejected_not_answered() {
    let cases: &[&[u8]] = &[
        b"",
        b"garbage",
        b"le",
        b"d1:y1:qe",                      // no tid
        b"d1:t2:aae",                     // no type
        b"d1:t2:aa1:y1:ze",               // unknown type
        b"d1:rd2:id3:abce1:t2:aa1:y1:re", // reply with bad id
        b"d1:t2:aa1:y1:ee",               // error without list
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe trailing",
        b"d1:t40:0123456789012345678901234567890123456789e", // tid too long
    ];
    for c in cases {
        let r = krpc::decode(c);
        assert!(
            !matches!(r, Ok(_) | Err(DecodeError::BadQuery { .. })),
            "{}: {r:?}",
            String::from_utf8_lossy(c)
        );
    }
}

/// An `e` list with fewer than two elements (the serde-based decoder used to read past its
/// end and drop the datagram, so the transaction it fails timed out instead).
#[test]
fn short_error_lists_decode() {
    let error = |code, message: &str| {
        Ok(plain(
            b"aa",
            Body::Error(ErrorBody {
                code,
                message: message.into(),
            }),
        ))
    };
    for (input, want) in [
        (&b"d1:eli201ee1:t2:aa1:y1:ee"[..], error(201, "")),
        (b"d1:eli203ee1:t2:aa1:y1:ee", error(203, "")),
        (b"d1:ele1:t2:aa1:y1:ee", error(krpc::ERR_GENERIC, "")),
        (b"d1:eldee1:t2:aa1:y1:ee", error(krpc::ERR_GENERIC, "")),
        (b"d1:el3:abce1:t2:aa1:y1:ee", error(krpc::ERR_GENERIC, "")),
        (b"d1:eli202e3:abci9ee1:t2:aa1:y1:ee", error(202, "abc")),
        (b"d1:eli202ei5e3:abce1:t2:aa1:y1:ee", error(202, "")),
    ] {
        assert_eq!(
            krpc::decode(input),
            want,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn depth_bombs_huge_lengths_and_oversize_datagrams_do_not_hurt() {
    let mut bomb = b"d1:a".to_vec();
    bomb.extend(std::iter::repeat_n(b'l', 100_000));
    bomb.extend(std::iter::repeat_n(b'e', 100_000));
    bomb.extend_from_slice(b"1:t2:aa1:y1:qe");
    // Larger than any datagram: refused by size before it is even scanned.
    assert!(krpc::decode(&bomb).is_err());
    // A bomb that fits in a datagram reaches the depth check.
    let mut bomb = b"d1:a".to_vec();
    bomb.extend(std::iter::repeat_n(b'l', 30_000));
    bomb.extend(std::iter::repeat_n(b'e', 30_000));
    bomb.extend_from_slice(b"1:t2:aa1:y1:qe");
    assert!(matches!(
        krpc::decode(&bomb),
        Err(DecodeError::Malformed(_))
    ));

    let mut dict_bomb = Vec::new();
    for _ in 0..15_000 {
        dict_bomb.extend_from_slice(b"d1:x");
    }
    assert!(matches!(
        krpc::decode(&dict_bomb),
        Err(DecodeError::Malformed(_))
    ));

    let huge = b"d1:t9223372036854775807:aa1:y1:qe";
    assert!(matches!(krpc::decode(huge), Err(DecodeError::Malformed(_))));
    let huge_int = b"d1:ti99999999999999999999999e1:y1:qe";
    assert!(matches!(
        krpc::decode(huge_int),
        Err(DecodeError::Malformed(_))
    ));

    let mut big = b"d1:ad2:id20:abcdefghij01234567895:extra".to_vec();
    big.extend_from_slice(format!("{}:", 65_536).as_bytes());
    big.extend(std::iter::repeat_n(b'x', 65_536));
    big.extend_from_slice(b"e1:q4:ping1:t2:aa1:y1:qe");
    assert!(krpc::decode(&big).is_err());
    // Just under the limit is accepted: size alone is not an error.
    let mut ok = b"d1:ad2:id20:abcdefghij01234567895:extra".to_vec();
    ok.extend_from_slice(format!("{}:", 60_000).as_bytes());
    ok.extend(std::iter::repeat_n(b'x', 60_000));
    ok.extend_from_slice(b"e1:q4:ping1:t2:aa1:y1:qe");
    assert!(krpc::decode(&ok).is_ok());
}

#[test]
fn samples_slice_into_infohashes() {
    let mut samples = Vec::new();
    for i in 0..5u8 {
        samples.extend_from_slice(&[i; 20]);
    }
    let m = plain(
        b"aa",
        Body::Response(Response {
            samples: Some(samples),
            interval: Some(60),
            num: Some(5),
            nodes: Some(Vec::new()),
            ..Response::with_id(id(&[1; 20]))
        }),
    );
    let decoded = krpc::decode(&encoded(&m)).unwrap();
    let Body::Response(r) = decoded.body else {
        panic!()
    };
    let got: Vec<InfoHash> = r.samples().collect();
    assert_eq!(got, (0..5u8).map(|i| InfoHash([i; 20])).collect::<Vec<_>>());
}

/// BEP 32, both ways: `want` in the queries whose replies carry nodes (in its sorted place,
/// last among the arguments), `nodes6` after `nodes`, 18-byte peers in the same `values`
/// list as 6-byte ones, and an 18-byte top-level `ip`; each matches serde_bencode's
/// canonical bytes and decodes back to the same fields.
#[test]
fn bep32_want_nodes6_ipv6_values_and_ip_round_trip() {
    let me = id(b"abcdefghij0123456789");
    let target = id(b"mnopqrstuvwxyz123456");
    let ih = InfoHash::from_node_id(target);
    for (want, list) in [
        (Want::BOTH, vec![b(b"n4"), b(b"n6")]),
        (Want::only(Family::V6), vec![b(b"n6")]),
        (Want::only(Family::V4), vec![b(b"n4")]),
    ] {
        type Shape<'a> = (QueryArgs<'a>, &'a [u8], Vec<(&'a [u8], Value)>);
        let shapes: [Shape; 2] = [
            (
                QueryArgs::FindNode { target: &target },
                b"find_node",
                vec![(b"target", b(&target.0))],
            ),
            (
                QueryArgs::GetPeers {
                    info_hash: &ih,
                    scrape: false,
                    noseed: false,
                },
                b"get_peers",
                vec![(b"info_hash", b(ih.as_bytes()))],
            ),
        ];
        for (args, name, mut fields) in shapes {
            let mut ours = Vec::new();
            krpc::encode_query_want(&mut ours, b"aa", &me, &args, want, false, None);
            fields.push((b"id", b(&me.0)));
            fields.push((b"want", Value::List(list.clone())));
            let expect = dict(vec![
                (b"a", dict(fields)),
                (b"q", b(name)),
                (b"t", b(b"aa")),
                (b"y", b(b"q")),
            ]);
            assert_eq!(
                ours,
                canonical(&expect),
                "{}",
                String::from_utf8_lossy(&ours)
            );
            let Body::Query(q) = krpc::decode(&ours).unwrap().body else {
                panic!("not a query")
            };
            assert_eq!(q.want, want);
        }
    }
    // A ping's reply carries no nodes, so `want` is not written; an absent `want` is NONE.
    let mut ping = Vec::new();
    krpc::encode_query_want(
        &mut ping,
        b"aa",
        &me,
        &QueryArgs::Ping,
        Want::BOTH,
        false,
        None,
    );
    assert_eq!(
        ping,
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"
    );
    let Body::Query(q) = krpc::decode(&ping).unwrap().body else {
        panic!("not a query")
    };
    assert_eq!(q.want, Want::NONE);

    // Unknown `want` entries and non-strings are ignored; a non-list `want` is absent.
    let odd = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n52:n6i4eee1:q9:find_node1:t2:aa1:y1:qe";
    let Body::Query(q) = krpc::decode(odd).unwrap().body else {
        panic!("not a query")
    };
    assert_eq!(q.want, Want::only(Family::V6));
    let not_list = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:want2:n6e1:q9:find_node1:t2:aa1:y1:qe";
    let Body::Query(q) = krpc::decode(not_list).unwrap().body else {
        panic!("not a query")
    };
    assert_eq!(q.want, Want::NONE);

    // A reply with both node lists, both kinds of peers and an IPv6 `ip`.
    let v4: SocketAddrV4 = "1.2.3.4:5".parse().unwrap();
    let v6a: SocketAddrV6 = "[2001:4860::1]:6881".parse().unwrap();
    let v6b: SocketAddrV6 = "[fd77::9]:65535".parse().unwrap();
    let mut nodes = Vec::new();
    Contact::new(id(b"01234567890123456789"), v4).write_compact(&mut nodes);
    let mut nodes6 = Vec::new();
    Contact::new(id(b"98765432109876543210"), v6a).write_compact(&mut nodes6);
    Contact::new(id(b"aaaaaaaaaaaaaaaaaaaa"), v6b).write_compact(&mut nodes6);
    assert_eq!(nodes6.len(), 2 * 38);
    let values = [v4];
    let values6 = [v6a, v6b];
    let body = ResponseBody {
        nodes: Some(&nodes),
        nodes6: Some(&nodes6),
        token: Some(b"tok"),
        values: &values,
        values6: &values6,
        ..ResponseBody::id_only(&me)
    };
    let requester: SocketAddr = "[fd77::2]:4000".parse().unwrap();
    let mut ours = Vec::new();
    krpc::encode_response(&mut ours, b"rr", &body, Some(requester), None);
    let compact6 = |a: SocketAddrV6| {
        let mut v = a.ip().octets().to_vec();
        v.extend_from_slice(&a.port().to_be_bytes());
        v
    };
    let expect = dict(vec![
        (b"ip", b(&compact6("[fd77::2]:4000".parse().unwrap()))),
        (
            b"r",
            dict(vec![
                (b"id", b(&me.0)),
                (b"nodes", b(&nodes)),
                (b"nodes6", b(&nodes6)),
                (b"token", b(b"tok")),
                (
                    b"values",
                    Value::List(vec![
                        b(&[1, 2, 3, 4, 0, 5]),
                        b(&compact6(v6a)),
                        b(&compact6(v6b)),
                    ]),
                ),
            ]),
        ),
        (b"t", b(b"rr")),
        (b"y", b(b"r")),
    ]);
    assert_eq!(ours, canonical(&expect));
    let m = krpc::decode(&ours).unwrap();
    assert_eq!(m.ip, Some(requester));
    let Body::Response(r) = m.body else {
        panic!("not a reply")
    };
    assert_eq!(r.values, values);
    assert_eq!(r.values6, values6);
    assert_eq!(r.values_of::<SocketAddrV6>().collect::<Vec<_>>(), values6);
    assert_eq!(r.values_of::<SocketAddrV4>().collect::<Vec<_>>(), values);
    assert_eq!(r.nodes().map(|c| c.addr).collect::<Vec<_>>(), [v4]);
    assert_eq!(r.nodes6().map(|c| c.addr).collect::<Vec<_>>(), [v6a, v6b]);
    assert_eq!(r.nodes_of::<SocketAddrV6>().count(), 2);
    assert!(r.nodes_well_formed());
    // A ragged `nodes6` is not well formed; its whole entries still read.
    let mut ragged = r.clone();
    ragged.nodes6.as_mut().unwrap().push(0);
    assert!(!ragged.nodes_well_formed());
    assert_eq!(ragged.nodes6().count(), 2);
    // `values` entries of other lengths are skipped, and so is an `ip` of another length.
    let junk = b"d2:ip5:abcde1:rd2:id20:abcdefghij01234567896:valuesl5:abcde17:abcdefghijklmnopq6:abcdefee1:t2:aa1:y1:re";
    let m = krpc::decode(junk).unwrap();
    assert_eq!(m.ip, None);
    let Body::Response(r) = m.body else {
        panic!("not a reply")
    };
    assert_eq!(r.values.len(), 1);
    assert!(r.values6.is_empty());
}
