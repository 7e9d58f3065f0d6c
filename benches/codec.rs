//! KRPC codec throughput: our hand-written encoder and our tolerant decoder against plain
//! serde_bencode on equivalent derive structs, for the four messages a busy node handles most.
//!
//! Run with `cargo bench --bench codec` (options after `--`: `--reps N`, `--rep-ms MS`,
//! `--warmup-ms MS`, or `--count OP MSG N`, see below). Every case is warmed up, then timed `--reps` times over a fixed
//! iteration count; the median rate is reported with the spread (min–max), and the ratios are
//! taken between medians of the same run, so a noisy machine shifts both sides alike.
//!
//! No criterion: a timed loop with warm-up and a median is all these numbers need, and it
//! keeps the dependency list and the build time (2 shared cores) small.
//!
//! The `validate` row times `bencode::validate` alone: our decoder does that same structural
//! walk while it extracts the fields, so the row shows what extraction adds on top of it.
//!
//! `--count OP MSG N` (OP `encode` or `decode`, MSG `ping`, `find_node`, `get_peers` or
//! `announce`) runs just our side of one case N times, untimed, for an instruction counter:
//! `valgrind --tool=callgrind BENCH --count decode ping 20000`, minus the same with N = 0,
//! divided by N, is an exact per-message cost that a busy machine cannot disturb.
//!
//! Before timing, the serde structs are checked to encode to exactly our bytes and to decode
//! our bytes, so both sides really do the same work.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use trackerless::bencode;
use trackerless::dht::id::{Contact, InfoHash, NodeId, compact_peer_bytes};
use trackerless::dht::krpc::{self, QueryArgs, ResponseBody};

/// Version tag our node sends (`node::VERSION`).
const VERSION: &[u8] = b"TK\x00\x01";

// ------------------------------------------------------------------ serde reference shapes

/// The top-level KRPC dictionary as a plain derive struct: what one would write without a
/// hand-written codec. Byte strings are owned (`ByteBuf`), like the fields our decoder fills.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
struct SMsg {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<SArgs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<SResp>,
    t: ByteBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<ByteBuf>,
    y: ByteBuf,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
struct SArgs {
    id: ByteBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    implied_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    info_hash: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<ByteBuf>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
struct SResp {
    id: ByteBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nodes: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<ByteBuf>>,
}

fn bb(b: &[u8]) -> ByteBuf {
    ByteBuf::from(b.to_vec())
}

// ------------------------------------------------------------------ the messages

/// Inputs of one message, in the borrowed form our node encodes from.
struct Fixture {
    tid: Vec<u8>,
    id: NodeId,
    other: NodeId,
    token: Vec<u8>,
    nodes: Vec<u8>,
    values: Vec<SocketAddrV4>,
    requester: SocketAddrV4,
}

fn fixture() -> Fixture {
    let id = NodeId(*b"abcdefghij0123456789");
    let other = NodeId(*b"mnopqrstuvwxyz123456");
    let mut nodes = Vec::new();
    for i in 0..8u8 {
        let mut nid = [0u8; 20];
        nid.iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = i.wrapping_mul(31) ^ j as u8);
        Contact::new(
            NodeId(nid),
            SocketAddrV4::new(Ipv4Addr::new(10, i, 2, 3), 6881 + u16::from(i)),
        )
        .write_compact(&mut nodes);
    }
    let values = (0..50u16)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, i as u8), 40000 + i))
        .collect();
    Fixture {
        tid: b"\x8f\x03".to_vec(),
        id,
        other,
        token: b"\x01\x02\x03\x04\x05\x06\x07\x08".to_vec(),
        nodes,
        values,
        requester: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 51413),
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ping,
    FindNodeReply,
    GetPeersReply,
    Announce,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Ping,
        Kind::FindNodeReply,
        Kind::GetPeersReply,
        Kind::Announce,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Ping => "ping query",
            Kind::FindNodeReply => "find_node reply, 8 nodes",
            Kind::GetPeersReply => "get_peers reply, 8 nodes + token + 50 values",
            Kind::Announce => "announce_peer query",
        }
    }
}

/// Our encoder, exactly as the node calls it (into a reused buffer).
fn encode_ours(k: Kind, f: &Fixture, out: &mut Vec<u8>) {
    match k {
        Kind::Ping => {
            krpc::encode_query(out, &f.tid, &f.id, &QueryArgs::Ping, false, Some(VERSION))
        }
        Kind::Announce => krpc::encode_query(
            out,
            &f.tid,
            &f.id,
            &QueryArgs::AnnouncePeer {
                info_hash: &InfoHash::from_node_id(f.other),
                port: 6881,
                implied_port: false,
                token: &f.token,
                seed: false,
            },
            false,
            Some(VERSION),
        ),
        Kind::FindNodeReply => {
            let body = ResponseBody {
                nodes: Some(&f.nodes),
                ..ResponseBody::id_only(&f.id)
            };
            krpc::encode_response(out, &f.tid, &body, Some(f.requester.into()), Some(VERSION))
        }
        Kind::GetPeersReply => {
            let body = ResponseBody {
                nodes: Some(&f.nodes),
                token: Some(&f.token),
                values: &f.values,
                ..ResponseBody::id_only(&f.id)
            };
            krpc::encode_response(out, &f.tid, &body, Some(f.requester.into()), Some(VERSION))
        }
    }
}

/// The same message as a serde value.
fn serde_msg(k: Kind, f: &Fixture) -> SMsg {
    let base = SMsg {
        t: bb(&f.tid),
        v: Some(bb(VERSION)),
        ..Default::default()
    };
    match k {
        Kind::Ping | Kind::Announce => {
            let mut a = SArgs {
                id: bb(&f.id.0),
                ..Default::default()
            };
            let q: &[u8] = if let Kind::Announce = k {
                a.info_hash = Some(bb(&f.other.0));
                a.port = Some(6881);
                a.token = Some(bb(&f.token));
                b"announce_peer"
            } else {
                b"ping"
            };
            SMsg {
                a: Some(a),
                q: Some(bb(q)),
                y: bb(b"q"),
                ..base
            }
        }
        Kind::FindNodeReply | Kind::GetPeersReply => {
            let mut r = SResp {
                id: bb(&f.id.0),
                nodes: Some(bb(&f.nodes)),
                ..Default::default()
            };
            if let Kind::GetPeersReply = k {
                r.token = Some(bb(&f.token));
                r.values = Some(
                    f.values
                        .iter()
                        .map(|v| bb(&compact_peer_bytes(*v)))
                        .collect(),
                );
            }
            SMsg {
                ip: Some(bb(&compact_peer_bytes(f.requester))),
                r: Some(r),
                y: bb(b"r"),
                ..base
            }
        }
    }
}

// ------------------------------------------------------------------ timing

struct Opts {
    reps: usize,
    rep: Duration,
    warmup: Duration,
    /// `--count`: (decode?, message, iterations).
    count: Option<(bool, Kind, u64)>,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        reps: 7,
        rep: Duration::from_millis(200),
        warmup: Duration::from_millis(200),
        count: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a positive integer"))
        };
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--reps" => o.reps = num("--reps")?.max(1) as usize,
            "--rep-ms" => o.rep = Duration::from_millis(num("--rep-ms")?.max(1)),
            "--warmup-ms" => o.warmup = Duration::from_millis(num("--warmup-ms")?),
            "--count" => {
                let usage = "--count needs OP (encode|decode), MSG (ping|find_node|get_peers|announce) and N";
                let decode = match args.next().as_deref() {
                    Some("encode") => false,
                    Some("decode") => true,
                    _ => return Err(usage.into()),
                };
                let kind = match args.next().as_deref() {
                    Some("ping") => Kind::Ping,
                    Some("find_node") => Kind::FindNodeReply,
                    Some("get_peers") => Kind::GetPeersReply,
                    Some("announce") => Kind::Announce,
                    _ => return Err(usage.into()),
                };
                let n = args.next().and_then(|v| v.parse().ok()).ok_or(usage)?;
                o.count = Some((decode, kind, n));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// Median and spread of one case, in operations per second.
#[derive(Clone, Copy)]
struct Rate {
    median: f64,
    min: f64,
    max: f64,
}

impl Rate {
    fn show(&self) -> String {
        format!(
            "{:>7} /s [{}–{}]",
            si(self.median),
            si(self.min).trim(),
            si(self.max).trim()
        )
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Warms `op` up, picks an iteration count filling `opts.rep`, then times `opts.reps` runs.
fn measure(opts: &Opts, mut op: impl FnMut()) -> Rate {
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < opts.warmup.max(Duration::from_millis(20)) {
        op();
        n += 1;
    }
    let per_iter = start.elapsed().as_secs_f64() / n as f64;
    let iters = ((opts.rep.as_secs_f64() / per_iter) as u64).max(1);
    let mut rates: Vec<f64> = (0..opts.reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                op();
            }
            iters as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    Rate {
        median: rates[rates.len() / 2],
        min: rates[0],
        max: rates[rates.len() - 1],
    }
}

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("codec bench: {e}");
            return ExitCode::from(2);
        }
    };
    let f = fixture();
    if let Some((decode, k, n)) = opts.count {
        let mut buf = Vec::with_capacity(2048);
        encode_ours(k, &f, &mut buf);
        for _ in 0..n {
            if decode {
                black_box(krpc::decode(black_box(&buf)).expect("decodes"));
            } else {
                buf.clear();
                encode_ours(k, black_box(&f), &mut buf);
                black_box(&buf);
            }
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "KRPC codec, messages/s: median of {} runs of ~{} ms each [min–max]; ratio = ours / serde_bencode",
        opts.reps,
        opts.rep.as_millis()
    );
    for k in Kind::ALL {
        let mut ours = Vec::with_capacity(2048);
        encode_ours(k, &f, &mut ours);
        let smsg = serde_msg(k, &f);
        let theirs = serde_bencode::to_bytes(&smsg).expect("serde encodes");
        // Proof that both sides do the same work.
        assert_eq!(ours, theirs, "{k:?}: serde struct does not match our bytes");
        let decoded: SMsg = serde_bencode::from_bytes(&ours).expect("serde decodes ours");
        assert_eq!(decoded, smsg, "{k:?}: serde round trip differs");
        let typed = krpc::decode(&ours).expect("we decode our own bytes");
        let mut again = Vec::new();
        krpc::encode_message(&mut again, &typed);
        assert_eq!(again, ours, "{k:?}: encode_message differs");
        let wire = ours.clone();

        let mut buf = Vec::with_capacity(2048);
        let enc_ours = measure(&opts, || {
            buf.clear();
            encode_ours(k, black_box(&f), &mut buf);
            black_box(&buf);
        });
        let enc_typed = measure(&opts, || {
            buf.clear();
            krpc::encode_message(&mut buf, black_box(&typed));
            black_box(&buf);
        });
        let enc_serde = measure(&opts, || {
            black_box(serde_bencode::to_bytes(black_box(&smsg)).expect("encodes"));
        });
        let dec_ours = measure(&opts, || {
            black_box(krpc::decode(black_box(&wire)).expect("decodes"));
        });
        let scan = measure(&opts, || {
            bencode::validate(black_box(&wire), 8).expect("valid");
        });
        let dec_serde = measure(&opts, || {
            black_box(serde_bencode::from_bytes::<SMsg>(black_box(&wire)).expect("decodes"));
        });
        let rt_ours = measure(&opts, || {
            buf.clear();
            encode_ours(k, black_box(&f), &mut buf);
            black_box(krpc::decode(&buf).expect("decodes"));
        });
        let rt_serde = measure(&opts, || {
            let b = serde_bencode::to_bytes(black_box(&smsg)).expect("encodes");
            black_box(serde_bencode::from_bytes::<SMsg>(&b).expect("decodes"));
        });

        let ratio = |a: Rate, b: Rate| a.median / b.median;
        println!("\n{} ({} bytes)", k.label(), wire.len());
        println!(
            "  encode      ours {}   serde_bencode {}   ratio {:>5.1}x",
            enc_ours.show(),
            enc_serde.show(),
            ratio(enc_ours, enc_serde)
        );
        println!(
            "  encode_msg  ours {}   (from a typed krpc::Message)  ratio {:>5.1}x",
            enc_typed.show(),
            ratio(enc_typed, enc_serde)
        );
        println!(
            "  decode      ours {}   serde_bencode {}   ratio {:>5.2}x",
            dec_ours.show(),
            dec_serde.show(),
            ratio(dec_ours, dec_serde)
        );
        println!(
            "  validate    alone {}  (bencode::validate: structure only, no extraction)",
            scan.show()
        );
        println!(
            "  enc+dec     ours {}   serde_bencode {}   ratio {:>5.2}x",
            rt_ours.show(),
            rt_serde.show(),
            ratio(rt_ours, rt_serde)
        );
    }
    ExitCode::SUCCESS
}
