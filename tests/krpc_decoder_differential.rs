//! `krpc::decode` (the single-pass borrowing decoder) against an independent reference
//! decoder, `trackerless::fuzzing::krpc_reference`, written from the BEP texts (BEP 3
//! bencoding, BEP 5 messages, BEP 42 `ip`, BEP 43 `ro`, BEP 51 `sample_infohashes`) on
//! serde_bencode's value tree with its own grammar check and field rules; it shares no code
//! with the real decoder. Both must reach the same verdict on every input: the same decoded
//! message field for field, or the same KRPC error code and transaction id to answer with,
//! or the same kind of drop (malformed, not KRPC, unusable reply). Reason strings and error
//! offsets are diagnostics and are not compared.
//!
//! Inputs: the real-world corpus (tests/data/krpc-real), the krpc fuzz corpus, seeds and
//! regressions (fuzz/), mutations of the real corpus, random KRPC-shaped bencode that
//! exercises every lenient rule (wrong types, repeated keys, unknown keys, unsorted keys,
//! 19/20/21-byte ids, `ro` values), and nesting around the depth limit in every position.
//!
//! Documented leniencies both decoders share on purpose (a strict reading of the BEPs would
//! refuse these; see the reference's module docs for why each is accepted): unsorted and
//! repeated dictionary keys (the last wins), integers with leading zeros or `-0`, unknown
//! keys, wrongly typed known keys read as absent, any non-zero `ro`/`implied_port`, short
//! `e` lists, non-6-byte `values` entries skipped, unknown methods with a 20-byte `target`
//! or `info_hash` answered as `find_node`, transaction id / token / `v` length limits taken
//! from the crate's types (policy: BEP 5 sets none).
//!
//! The test of the test, `planted_wrong_rules_are_caught`: the reference with a
//! deliberately wrong rule (19-byte ids accepted; `ro` ignored) must disagree with the real
//! decoder on these same inputs, or the comparison could not catch such a bug.

mod replay_support;

use trackerless::dht::krpc::{self, Message};
use trackerless::fuzzing::krpc_reference::{self as reference, Drop, Rules, Verdict};

fn corpus() -> Vec<Vec<u8>> {
    replay_support::load_all(
        &replay_support::root("tests/data/krpc-real"),
        &replay_support::bin_file,
    )
    .into_iter()
    .map(|(_, d)| d)
    .collect()
}

/// The krpc fuzz inputs: seeds, the minimized corpus and the crash regressions.
fn fuzz_inputs() -> Vec<Vec<u8>> {
    [
        "fuzz/seeds/krpc",
        "fuzz/corpus/krpc",
        "fuzz/regressions/krpc",
    ]
    .iter()
    .flat_map(|dir| replay_support::load_all(&replay_support::root(dir), &replay_support::any_file))
    .map(|(_, d)| d)
    .collect()
}

/// The two verdicts on `input` when they differ.
fn disagreement(input: &[u8], rules: &Rules) -> Option<(Verdict, Verdict)> {
    let real = Verdict::of(krpc::decode(input));
    let reference = reference::decode(input, rules);
    (real != reference).then_some((real, reference))
}

/// Both decoders' verdict on `input`; fails the test when they differ.
fn same(input: &[u8]) -> Verdict {
    let real = Verdict::of(krpc::decode(input));
    let want = reference::decode(input, &Rules::of_this_build());
    assert_eq!(
        real,
        want,
        "decoders disagree (left: krpc::decode, right: reference) on {:?}",
        String::from_utf8_lossy(input)
    );
    real
}

fn is_message(v: &Verdict) -> bool {
    matches!(v, Verdict::Message(_))
}

/// `e` lists with fewer than two elements: the case the serde path used to get wrong.
#[test]
fn short_error_lists() {
    for input in [
        &b"d1:eli201ee1:t2:aa1:y1:ee"[..],
        b"d1:ele1:t2:aa1:y1:ee",
        b"d1:eldee1:t2:aa1:y1:ee",
        b"d1:eli202e3:abci9ee1:t2:aa1:y1:ee",
        b"d1:t2:aa1:y1:e1:eli201eee",
    ] {
        assert!(matches!(
            same(input),
            Verdict::Message(Message {
                body: krpc::Body::Error(_),
                ..
            })
        ));
    }
}

/// The tid/token limits the reference runs with are the crate's (policy, not protocol),
/// and at least BEP 5's typical sizes.
#[test]
fn length_policy_is_read_from_the_crate() {
    let r = Rules::of_this_build();
    assert!(
        r.max_tid >= 16 && r.max_token >= 20 && r.max_version >= 4,
        "{r:?}"
    );
    let tid = vec![b'x'; r.max_tid];
    let mut q = format!(
        "d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t{}:",
        tid.len()
    )
    .into_bytes();
    q.extend_from_slice(&tid);
    q.extend_from_slice(b"1:y1:qe");
    assert!(is_message(&same(&q)));
    let mut long = format!(
        "d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t{}:",
        tid.len() + 1
    )
    .into_bytes();
    long.extend_from_slice(&tid);
    long.extend_from_slice(b"x1:y1:qe");
    assert_eq!(same(&long), Verdict::Drop(Drop::NotKrpc));
}

/// splitmix64, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const KEYS: &[&str] = &[
    "t",
    "y",
    "q",
    "a",
    "r",
    "e",
    "ip",
    "ro",
    "v",
    "id",
    "target",
    "info_hash",
    "port",
    "implied_port",
    "token",
    "nodes",
    "values",
    "samples",
    "interval",
    "num",
    "scrape",
    "noseed",
    "seed",
    "BFsd",
    "BFpe",
    "zz",
];

const STRINGS: &[&str] = &[
    "q",
    "r",
    "e",
    "ping",
    "find_node",
    "get_peers",
    "announce_peer",
    "sample_infohashes",
    "vote",
    "",
];

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

/// A random value: biased towards the lengths and words KRPC fields care about.
fn value(rng: &mut Rng, depth: usize, out: &mut Vec<u8>) {
    match rng.below(if depth >= 4 { 3 } else { 6 }) {
        0 => {
            let v = [0i64, 1, -1, 6881, 65535, 65536, 300, i64::MIN][rng.below(8)];
            out.extend_from_slice(format!("i{v}e").as_bytes());
        }
        1 => {
            let len = [0usize, 2, 4, 6, 8, 17, 20, 26, 52, 40][rng.below(10)];
            let s: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            put_str(out, &s);
        }
        2 => put_str(out, STRINGS[rng.below(STRINGS.len())].as_bytes()),
        3 | 4 => dict(rng, depth + 1, out),
        _ => {
            out.push(b'l');
            for _ in 0..rng.below(4) {
                value(rng, depth + 1, out);
            }
            out.push(b'e');
        }
    }
}

fn dict(rng: &mut Rng, depth: usize, out: &mut Vec<u8>) {
    out.push(b'd');
    for _ in 0..rng.below(9) {
        put_str(out, KEYS[rng.below(KEYS.len())].as_bytes());
        value(rng, depth, out);
    }
    out.push(b'e');
}

/// A top-level dictionary that usually carries a plausible `t`, `y`, `q` and `a`/`r`/`e`,
/// plus random extra entries, so that most cases reach the typed layer.
fn message(rng: &mut Rng, out: &mut Vec<u8>) {
    out.push(b'd');
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let mut entry = |key: &str, f: &mut dyn FnMut(&mut Rng, &mut Vec<u8>), rng: &mut Rng| {
        let mut e = Vec::new();
        put_str(&mut e, key.as_bytes());
        f(rng, &mut e);
        entries.push(e);
    };
    if rng.below(10) > 0 {
        entry(
            "t",
            &mut |rng, e| {
                // Around the current (16) and the planned (64) tid limits.
                let len = [0usize, 1, 2, 4, 8, 16, 17, 64, 65][rng.below(9)];
                let t: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                put_str(e, &t)
            },
            rng,
        );
    }
    if rng.below(10) > 0 {
        entry(
            "y",
            &mut |rng, e| put_str(e, [b"q", b"r", b"e"][rng.below(3)]),
            rng,
        );
    }
    if rng.below(3) > 0 {
        entry(
            "q",
            &mut |rng, e| put_str(e, STRINGS[rng.below(STRINGS.len())].as_bytes()),
            rng,
        );
    }
    for key in ["a", "r"] {
        if rng.below(3) > 0 {
            entry(
                key,
                &mut |rng, e| {
                    e.push(b'd');
                    // Each argument present with probability 2/3 (integers and `values` 1/3),
                    // sometimes twice, in random order: repeated keys must keep the last.
                    let mut args: Vec<Vec<u8>> = Vec::new();
                    for _ in 0..1 + usize::from(rng.below(4) == 0) {
                        for arg in ["id", "target", "info_hash", "token", "nodes", "samples"] {
                            if rng.below(3) > 0 {
                                let mut a = Vec::new();
                                put_str(&mut a, arg.as_bytes());
                                // Ids of 19/20/21 bytes; tokens around the current (32)
                                // and the planned (64) limits.
                                let len =
                                    [20usize, 20, 20, 8, 26, 19, 21, 32, 33, 64, 65][rng.below(11)];
                                let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                                put_str(&mut a, &v);
                                args.push(a);
                            }
                        }
                        // BEP 33: filters of exactly 256 bytes, or one byte off.
                        for arg in ["BFsd", "BFpe"] {
                            if rng.below(4) == 0 {
                                let mut a = Vec::new();
                                put_str(&mut a, arg.as_bytes());
                                let len = [256usize, 256, 255, 257][rng.below(4)];
                                let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                                put_str(&mut a, &v);
                                args.push(a);
                            }
                        }
                        for arg in [
                            "port",
                            "implied_port",
                            "interval",
                            "num",
                            "values",
                            "scrape",
                            "noseed",
                            "seed",
                        ] {
                            if rng.below(3) == 0 {
                                let mut a = Vec::new();
                                put_str(&mut a, arg.as_bytes());
                                value(rng, 3, &mut a);
                                args.push(a);
                            }
                        }
                        if rng.below(4) == 0 {
                            let mut a = Vec::new();
                            put_str(&mut a, KEYS[rng.below(KEYS.len())].as_bytes());
                            value(rng, 2, &mut a);
                            args.push(a);
                        }
                    }
                    for i in (1..args.len()).rev() {
                        args.swap(i, rng.below(i + 1));
                    }
                    args.into_iter().for_each(|a| e.extend_from_slice(&a));
                    e.push(b'e');
                },
                rng,
            );
        }
    }
    if rng.below(4) == 0 {
        entry("e", &mut |rng, e| value(rng, 2, e), rng);
    }
    for _ in 0..rng.below(3) {
        let key = KEYS[rng.below(KEYS.len())];
        entry(key, &mut |rng, e| value(rng, 1, e), rng);
    }
    // Random order, which also puts repeated keys in either order.
    for i in (1..entries.len()).rev() {
        entries.swap(i, rng.below(i + 1));
    }
    for e in entries {
        out.extend_from_slice(&e);
    }
    out.push(b'e');
}

#[test]
fn corpus_decodes_identically() {
    let corpus = corpus();
    assert!(corpus.len() > 2000, "corpus missing");
    for d in &corpus {
        // The whole corpus is valid KRPC (tests/krpc_corpus.rs).
        assert!(is_message(&same(d)));
    }
}

#[test]
fn fuzz_corpus_decodes_identically() {
    let inputs = fuzz_inputs();
    let decoded = inputs.iter().filter(|d| is_message(&same(d))).count();
    // The corpus reaches the typed layer, not only the bencode checks.
    assert!(decoded > 100, "only {decoded} of {} decoded", inputs.len());
}

/// Mutations of the real corpus, 40 per datagram.
fn mutations(corpus: &[Vec<u8>], rng: &mut Rng, per: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in corpus {
        for _ in 0..per {
            let mut m = d.clone();
            match rng.below(4) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
                1 if !m.is_empty() => m.truncate(rng.below(m.len())),
                2 if !m.is_empty() => {
                    // Swap a byte for a structural character: retypes values while often
                    // keeping the datagram well-formed.
                    let i = rng.below(m.len());
                    m[i] = b"ield0123456789:"[rng.below(15)];
                }
                _ => {
                    // Splice a random KRPC-ish value in after the first key.
                    let mut v = Vec::new();
                    value(rng, 1, &mut v);
                    let at = m.iter().position(|&b| b == b':').map_or(0, |p| p + 2);
                    let at = at.min(m.len());
                    m.splice(at..at, v);
                }
            }
            out.push(m);
        }
    }
    out
}

#[test]
fn mutated_corpus_decodes_identically() {
    for m in mutations(&corpus(), &mut Rng(7), 40) {
        same(&m);
    }
}

/// Random KRPC-shaped datagrams (and a quarter of plain random dictionaries).
fn random_messages(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut m = Vec::new();
            if rng.below(4) == 0 {
                dict(rng, 0, &mut m);
            } else {
                message(rng, &mut m);
            }
            m
        })
        .collect()
}

#[test]
fn random_krpc_shaped_messages_decode_identically() {
    let decoded = random_messages(&mut Rng(42), 200_000)
        .iter()
        .filter(|m| is_message(&same(m)))
        .count();
    // The generator must reach the typed layer often enough to test it.
    assert!(decoded > 5_000, "only {decoded} random messages decoded");
}

/// The test of the test: each deliberately wrong rule makes the comparison fail on the same
/// kinds of input the tests above use, so a real decoder with that bug would be caught.
#[test]
fn planted_wrong_rules_are_caught() {
    let mut rng = Rng(1234);
    let mut inputs = corpus();
    inputs.extend(fuzz_inputs());
    inputs.extend(random_messages(&mut rng, 20_000));
    let right = Rules::of_this_build();
    // The right rules agree on exactly these inputs, so every disagreement below is the
    // planted rule's.
    assert_eq!(
        inputs
            .iter()
            .filter_map(|d| disagreement(d, &right))
            .count(),
        0
    );
    for (name, wrong) in [
        (
            "19-byte ids accepted",
            Rules {
                planted_accept_19_byte_ids: true,
                ..right
            },
        ),
        (
            "ro ignored",
            Rules {
                planted_ignore_ro: true,
                ..right
            },
        ),
        (
            "tids one byte shorter",
            Rules {
                max_tid: right.max_tid - 1,
                ..right
            },
        ),
    ] {
        let found: Vec<_> = inputs
            .iter()
            .filter_map(|d| disagreement(d, &wrong))
            .collect();
        assert!(
            !found.is_empty(),
            "the reference with the wrong rule \"{name}\" agreed with the real decoder on all {} inputs",
            inputs.len()
        );
    }
}

/// `n` nested containers (lists, or dicts under a KRPC key) around a random scalar.
fn chain(rng: &mut Rng, n: usize, out: &mut Vec<u8>) {
    let mut closers = Vec::with_capacity(n);
    for _ in 0..n {
        if rng.below(2) == 0 {
            out.push(b'l');
        } else {
            out.push(b'd');
            put_str(out, KEYS[rng.below(KEYS.len())].as_bytes());
        }
        closers.push(b'e');
    }
    value(rng, 4, out);
    out.extend_from_slice(&closers);
}

/// Nesting from 0 to 11 levels in every position the decoder reads itself or skips: the
/// depth limit must bite at the same offset as `bencode::validate`'s, and a truncated or
/// corrupted chain must fail the same way.
#[test]
fn nesting_around_the_depth_limit_decodes_identically() {
    let templates: &[(&[u8], &[u8])] = &[
        (b"d1:t2:aa1:y1:r1:rd2:id20:abcdefghij0123456789", b"ee"),
        (
            b"d1:rd2:id20:abcdefghij01234567896:valuesl",
            b"ee1:t2:aa1:y1:re",
        ),
        (b"d1:eli201e", b"e1:t2:aa1:y1:ee"),
        (b"d1:el", b"e1:t2:aa1:y1:ee"),
        (
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:q",
            b"e",
        ),
    ];
    let mut rng = Rng(99);
    let mut malformed = 0;
    for i in 0..100_000 {
        let (head, tail) = templates[i % templates.len()];
        let mut m = head.to_vec();
        // Templates ending in a dict take a key before the chain.
        if head.ends_with(b"9") || head.ends_with(b"q") {
            put_str(&mut m, KEYS[rng.below(KEYS.len())].as_bytes());
        }
        let depth = rng.below(12);
        chain(&mut rng, depth, &mut m);
        m.extend_from_slice(tail);
        match rng.below(6) {
            0 => m.truncate(rng.below(m.len())),
            1 => {
                let i = rng.below(m.len());
                m[i] = b"ield0123456789:"[rng.below(15)];
            }
            _ => {}
        }
        if same(&m) == Verdict::Drop(Drop::Malformed) {
            malformed += 1;
        }
    }
    // Both sides of the limit must be covered.
    assert!(
        (20_000..80_000).contains(&malformed),
        "{malformed} malformed"
    );
}
