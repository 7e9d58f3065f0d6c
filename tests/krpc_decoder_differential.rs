//! `krpc::decode` (the single-pass borrowing decoder) against a reference decoder built on
//! serde_bencode: the decoder that shipped before it (pre-scan with `bencode::validate`,
//! lenient serde visitors, typed validation), kept verbatim in `trackerless::fuzzing::krpc_reference`
//! (shared with the `krpc` fuzz target) except for the fix of its short-`e`-list bug. Both must give exactly the same result, errors and reasons included,
//! on the real-world corpus, on mutations of it, on random KRPC-shaped bencode that exercises
//! every lenient rule (wrong types, repeated keys, unknown keys, unsorted keys), and on
//! nesting around the depth limit in every position. Any panic fails the test too.

mod replay_support;

// The reference: the serde_bencode-based decoder `krpc::decode` replaced.
use trackerless::dht::krpc::{self, DecodeError, Message};
use trackerless::fuzzing::krpc_reference as reference;

fn corpus() -> Vec<Vec<u8>> {
    replay_support::load_all(
        &replay_support::root("tests/data/krpc-real"),
        &replay_support::bin_file,
    )
    .into_iter()
    .map(|(_, d)| d)
    .collect()
}

/// Decodes `input` with both decoders and fails on any difference.
fn same(input: &[u8]) -> Result<Message, DecodeError> {
    let want = reference::decode(input);
    assert_ne!(
        want,
        Err(DecodeError::NotKrpc("undecodable")),
        "the serde reference failed on {:?}",
        String::from_utf8_lossy(input)
    );
    let got = krpc::decode(input);
    assert_eq!(
        got,
        want,
        "decoders disagree on {:?}",
        String::from_utf8_lossy(input)
    );
    got
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
            Ok(Message {
                body: krpc::Body::Error(_),
                ..
            })
        ));
    }
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
                // Up to 16 bytes is a valid tid, 17 is not.
                let len = [0usize, 1, 2, 4, 8, 16, 17][rng.below(7)];
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
                                // Tokens up to 32 bytes are kept, 33 are not.
                                let len = [20usize, 20, 20, 8, 26, 19, 32, 33][rng.below(8)];
                                let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                                put_str(&mut a, &v);
                                args.push(a);
                            }
                        }
                        for arg in ["port", "implied_port", "interval", "num", "values"] {
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
        assert!(same(d).is_ok());
    }
}

#[test]
fn mutated_corpus_decodes_identically() {
    let corpus = corpus();
    let mut rng = Rng(7);
    for d in &corpus {
        for _ in 0..40 {
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
                    value(&mut rng, 1, &mut v);
                    let at = m.iter().position(|&b| b == b':').map_or(0, |p| p + 2);
                    let at = at.min(m.len());
                    m.splice(at..at, v);
                }
            }
            let _ = same(&m);
        }
    }
}

#[test]
fn random_krpc_shaped_messages_decode_identically() {
    let mut rng = Rng(42);
    let mut decoded = 0;
    for _ in 0..200_000 {
        let mut m = Vec::new();
        if rng.below(4) == 0 {
            dict(&mut rng, 0, &mut m);
        } else {
            message(&mut rng, &mut m);
        }
        if same(&m).is_ok() {
            decoded += 1;
        }
    }
    // The generator must reach the typed layer often enough to test it.
    assert!(decoded > 5_000, "only {decoded} random messages decoded");
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
        if matches!(same(&m), Err(DecodeError::Malformed(_))) {
            malformed += 1;
        }
    }
    // Both sides of the limit must be covered.
    assert!(
        (20_000..80_000).contains(&malformed),
        "{malformed} malformed"
    );
}
