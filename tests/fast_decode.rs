//! The prototype borrowing decoder (`fast_decode`) must give exactly what `krpc::decode`
//! gives: on the real-world corpus, on mutations of it, and on random KRPC-shaped bencode
//! that exercises every lenient rule (wrong types, repeated keys, unknown keys, nesting).

use std::path::PathBuf;

use trackerless::{bencode, fast_decode, krpc};

fn corpus() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/krpc-real");
    let mut out = Vec::new();
    for source in std::fs::read_dir(&root).expect("corpus directory") {
        let source = source.unwrap().path();
        if !source.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&source).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "bin") {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// Whether the top-level dictionary has an `e` list with fewer than two elements.
fn has_short_error_list(input: &[u8]) -> bool {
    let mut pos = 1;
    while input.get(pos).is_some_and(u8::is_ascii_digit) {
        let key_end = bencode::scan_value(input, pos, 64).unwrap();
        let value_end = bencode::scan_value(input, key_end, 64).unwrap();
        if &input[pos..key_end] == b"1:e" && input[key_end] == b'l' {
            let mut elements = 0;
            let mut p = key_end + 1;
            while input[p] != b'e' {
                p = bencode::scan_value(input, p, 64).unwrap();
                elements += 1;
            }
            if elements < 2 {
                return true;
            }
        }
        pos = value_end;
    }
    false
}

fn same(input: &[u8]) -> bool {
    let slow = krpc::decode(input);
    let fast = fast_decode::decode(input);
    if slow == Err(krpc::DecodeError::NotKrpc("undecodable")) {
        // Known bug of the serde path (reported with this prototype): after an `e` list with
        // fewer than two elements ends, `LError` calls `skip_seq` on the finished sequence,
        // serde_bencode reads on into the enclosing dictionary, and the whole datagram fails.
        // The borrowing decoder reads such a list leniently instead (see `short_error_lists`).
        assert!(
            has_short_error_list(input),
            "serde failed on {:?} for another reason",
            String::from_utf8_lossy(input)
        );
        return false;
    }
    assert_eq!(
        slow,
        fast,
        "decoders disagree on {:?}",
        String::from_utf8_lossy(input)
    );
    true
}

#[test]
fn short_error_lists() {
    let error = |code, message: &str| {
        Ok(krpc::Message {
            tid: krpc::Tid::new(b"aa").unwrap(),
            body: krpc::Body::Error(krpc::ErrorBody {
                code,
                message: message.into(),
            }),
            ip: None,
            read_only: false,
            version: None,
        })
    };
    for (input, want) in [
        (&b"d1:eli203ee1:t2:aa1:y1:ee"[..], error(203, "")),
        (b"d1:ele1:t2:aa1:y1:ee", error(201, "")),
        (b"d1:eldee1:t2:aa1:y1:ee", error(201, "")),
        (b"d1:eli202e3:abci9ee1:t2:aa1:y1:ee", error(202, "abc")),
    ] {
        assert_eq!(fast_decode::decode(input), want, "{input:?}");
    }
    // The serde path agrees once the list has two elements.
    same(b"d1:eli202e3:abci9ee1:t2:aa1:y1:ee");
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
            &mut |rng, e| put_str(e, &rng.next().to_be_bytes()[..rng.below(9)]),
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
                    for arg in ["id", "target", "info_hash", "token", "nodes", "samples"] {
                        if rng.below(3) > 0 {
                            put_str(e, arg.as_bytes());
                            let len = [20usize, 20, 20, 8, 26, 19][rng.below(6)];
                            let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                            put_str(e, &v);
                        }
                    }
                    for arg in ["port", "implied_port", "interval", "num"] {
                        if rng.below(3) == 0 {
                            put_str(e, arg.as_bytes());
                            value(rng, 3, e);
                        }
                    }
                    if rng.below(3) == 0 {
                        put_str(e, b"values");
                        value(rng, 2, e);
                    }
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
        same(d);
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
            same(&m);
        }
    }
}

#[test]
fn random_krpc_shaped_messages_decode_identically() {
    let mut rng = Rng(42);
    let (mut decoded, mut skipped) = (0, 0);
    for _ in 0..200_000 {
        let mut m = Vec::new();
        if rng.below(4) == 0 {
            dict(&mut rng, 0, &mut m);
        } else {
            message(&mut rng, &mut m);
        }
        if krpc::decode(&m).is_ok() {
            decoded += 1;
        }
        if !same(&m) {
            skipped += 1;
        }
    }
    // The generator must reach the typed layer often enough to test it, and the serde bug
    // must not hide most cases.
    assert!(decoded > 5_000, "only {decoded} random messages decoded");
    assert!(skipped < 20_000, "{skipped} cases skipped");
}
