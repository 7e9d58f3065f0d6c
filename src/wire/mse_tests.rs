//! MSE unit tests: RC4 vectors, DH agreement, full in-memory handshakes, junk and truncation.

use super::*;

fn now() -> Instant {
    Instant::now()
}

fn secrets(seed: u8, pad: usize, pad2: usize) -> MseSecrets {
    MseSecrets {
        key: DhKey::from_private([seed; 20]),
        pad_len: pad,
        pad2_len: pad2,
    }
}

#[test]
fn rc4_known_vectors() {
    // The classic vectors (Wikipedia / RFC 6229 style, first bytes of the stream).
    for (key, plain, cipher) in [
        (&b"Key"[..], &b"Plaintext"[..], "bbf316e8d940af0ad3"),
        (b"Wiki", b"pedia", "1021bf0420"),
        (b"Secret", b"Attack at dawn", "45a01f645fc35b383552544b9bf5"),
    ] {
        let mut buf = plain.to_vec();
        Rc4::new(key).apply(&mut buf);
        assert_eq!(hex::encode(&buf), cipher);
        // Byte-at-a-time gives the same stream as one call.
        let mut c = Rc4::new(key);
        let mut buf2 = plain.to_vec();
        for b in buf2.chunks_mut(1) {
            c.apply(b);
        }
        assert_eq!(buf, buf2);
    }
    // RFC 6229, key 0x0102030405, keystream at offset 0 and at offset 1024 (after discard).
    let mut c = Rc4::new(&[1, 2, 3, 4, 5]);
    let mut ks = [0u8; 16];
    c.apply(&mut ks);
    assert_eq!(hex::encode(ks), "b2396305f03dc027ccc3524a0a1118a8");
    let mut c = Rc4::new(&[1, 2, 3, 4, 5]);
    c.discard(1024);
    let mut ks = [0u8; 16];
    c.apply(&mut ks);
    assert_eq!(hex::encode(ks), "30abbcc7c20b01609f23ee2d5f6bb7df");
}

#[test]
fn dh_both_sides_agree_and_match_known_public() {
    // 2^1 mod P = 2: the simplest known answer for the public value.
    let mut one = [0u8; 20];
    one[19] = 1;
    let k = DhKey::from_private(one);
    let mut expect = [0u8; DH_LEN];
    expect[DH_LEN - 1] = 2;
    assert_eq!(k.public(), &expect);
    // 2^160 mod P is 2^160 (P is larger): a one bit at position 160.
    // 2^700 < P: exponent 700 = 0x02bc gives a single one bit at position 700.
    let mut e = [0u8; 20];
    e[18] = 0x02;
    e[19] = 0xbc;
    let mut expect = [0u8; DH_LEN];
    expect[DH_LEN - 1 - 700 / 8] = 1 << (700 % 8);
    assert_eq!(DhKey::from_private(e).public(), &expect);
    // 2^768 mod P = 2^768 - P: the first reduction, computed by hand from the prime's hex.
    let mut e = [0u8; 20];
    e[18] = 0x03;
    let p = hex::decode(DH_PRIME).unwrap();
    let mut expect = [0u8; DH_LEN];
    let mut borrow = 0i16;
    for i in (0..DH_LEN).rev() {
        let v = -(p[i] as i16) - borrow;
        expect[i] = v.rem_euclid(256) as u8;
        borrow = if v < 0 { 1 } else { 0 };
    }
    assert_eq!(DhKey::from_private(e).public(), &expect);
    let a = DhKey::from_private([7; 20]);
    let b = DhKey::from_private([9; 20]);
    let sa = a.shared(b.public()).unwrap();
    let sb = b.shared(a.public()).unwrap();
    assert_eq!(sa, sb);
    assert_ne!(sa, [0u8; DH_LEN]);
    // Degenerate peer values are refused.
    assert_eq!(a.shared(&[0u8; DH_LEN]), Err(MseError::BadPublicKey));
    let mut one_pub = [0u8; DH_LEN];
    one_pub[DH_LEN - 1] = 1;
    assert_eq!(a.shared(&one_pub), Err(MseError::BadPublicKey));
    assert_eq!(a.shared(&[0xff; DH_LEN]), Err(MseError::BadPublicKey));
}

const HASH: InfoHash = InfoHash([0xab; 20]);
const OTHER: InfoHash = InfoHash([0xcd; 20]);

/// What a driver does with bytes after the handshake: decrypt if RC4, append.
fn deliver(o: &mut MseOutcome, c: &[u8]) {
    let mut c = c.to_vec();
    if let Some(ci) = o.ciphers.as_mut() {
        ci.dec.apply(&mut c);
    }
    o.initial_payload.extend_from_slice(&c);
}

/// Runs both sides in memory, delivering output in `chunk`-byte pieces.
fn run(
    provide: CryptoSet,
    accept: CryptoSet,
    pads: (usize, usize),
    chunk: usize,
    trailing: &[u8],
) -> (Result<MseOutcome, MseError>, Result<MseOutcome, MseError>) {
    let t = now();
    let mut a = MseHandshake::new(
        Role::Initiator {
            info_hash: HASH,
            ia: b"\x13BitTorrent protocol initial".to_vec(),
        },
        provide,
        secrets(3, pads.0, pads.1),
        t,
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    let mut b = MseHandshake::new(
        Role::responder([&OTHER, &HASH]),
        accept,
        secrets(5, pads.1, pads.0),
        t,
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    let (mut ra, mut rb) = (None, None);
    let mut b_sent_trailing = false;
    for _ in 0..10_000 {
        let to_b = a.take_output();
        let mut to_a = b.take_output();
        if rb
            .as_ref()
            .is_some_and(|r: &Result<MseOutcome, MseError>| r.is_ok())
            && !b_sent_trailing
        {
            b_sent_trailing = true;
            let mut tail = trailing.to_vec();
            if let Some(Ok(MseOutcome {
                ciphers: Some(c), ..
            })) = rb.as_mut()
            {
                c.enc.apply(&mut tail);
            }
            to_a.extend_from_slice(&tail);
        }
        if to_b.is_empty() && to_a.is_empty() && (ra.is_some() || rb.is_some()) {
            break;
        }
        if rb.is_none() {
            for c in to_b.chunks(chunk) {
                if let Some(Ok(o)) = rb.as_mut() {
                    deliver(o, c);
                    continue;
                }
                match b.feed(t, c) {
                    Ok(None) => {}
                    Ok(Some(o)) => rb = Some(Ok(o)),
                    Err(e) => {
                        rb = Some(Err(e));
                        break;
                    }
                }
            }
        }
        if ra.is_none() {
            for c in to_a.chunks(chunk) {
                if let Some(Ok(o)) = ra.as_mut() {
                    // Past the handshake the driver reads the stream itself.
                    deliver(o, c);
                    continue;
                }
                match a.feed(t, c) {
                    Ok(None) => {}
                    Ok(Some(o)) => ra = Some(Ok(o)),
                    Err(e) => {
                        ra = Some(Err(e));
                        break;
                    }
                }
            }
        }
        if ra.is_some() && rb.is_some() && b_sent_trailing {
            break;
        }
    }
    (
        ra.unwrap_or(Err(MseError::Eof)),
        rb.unwrap_or(Err(MseError::Eof)),
    )
}

#[test]
fn rc4_handshake_in_memory_all_chunkings_and_pads() {
    for pads in [(0, 0), (1, 7), (512, 512), (300, 0)] {
        for chunk in [1, 3, 97, 4096] {
            // The responder accepts RC4 only (a `require` policy).
            let (a, b) = run(CryptoSet::BOTH, CryptoSet::RC4, pads, chunk, b"after");
            let (mut a, mut b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.method, Method::Rc4);
            assert_eq!(b.method, Method::Rc4);
            assert_eq!(b.info_hash, HASH);
            assert_eq!(b.initial_payload, b"\x13BitTorrent protocol initial");
            assert_eq!(a.initial_payload, b"after", "pads {pads:?} chunk {chunk}");
            // The ciphers continue in step: what one encrypts the other decrypts.
            let (ca, cb) = (a.ciphers.as_mut().unwrap(), b.ciphers.as_mut().unwrap());
            let mut m = b"piece data".to_vec();
            ca.enc.apply(&mut m);
            assert_ne!(m, b"piece data");
            cb.dec.apply(&mut m);
            assert_eq!(m, b"piece data");
            let mut m = b"reply".to_vec();
            cb.enc.apply(&mut m);
            ca.dec.apply(&mut m);
            assert_eq!(m, b"reply");
        }
    }
}

/// Both sides allow both: the responder selects plaintext, as libtorrent does by default
/// (the handshake is obfuscated either way; RC4 would cost CPU for the whole transfer).
#[test]
fn plaintext_selected_when_both_allow_both() {
    let (a, b) = run(CryptoSet::BOTH, CryptoSet::BOTH, (3, 4), 7, b"x");
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.method, b.method), (Method::Plain, Method::Plain));
    assert!(a.ciphers.is_none() && b.ciphers.is_none());
}

#[test]
fn plain_selected_when_only_plain_is_common() {
    let (a, b) = run(CryptoSet::BOTH, CryptoSet::PLAIN, (10, 20), 5, b"plain!");
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.method, Method::Plain);
    assert_eq!(b.method, Method::Plain);
    assert!(a.ciphers.is_none() && b.ciphers.is_none());
    assert_eq!(a.initial_payload, b"plain!");
    assert_eq!(b.initial_payload, b"\x13BitTorrent protocol initial");
}

#[test]
fn require_rc4_against_plain_only_fails_clearly() {
    let (_, b) = run(CryptoSet::RC4, CryptoSet::PLAIN, (0, 0), 4096, b"");
    let e = b.unwrap_err();
    assert_eq!(e, MseError::NoCommonMethod { peer: 2, ours: 1 });
    assert!(e.to_string().contains("no common method"), "{e}");
}

#[test]
fn unknown_info_hash_is_refused() {
    let t = now();
    let mut a = MseHandshake::new(
        Role::Initiator {
            info_hash: HASH,
            ia: vec![],
        },
        CryptoSet::BOTH,
        secrets(3, 0, 0),
        t,
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    let mut b = MseHandshake::new(
        Role::responder([&OTHER]),
        CryptoSet::BOTH,
        secrets(5, 0, 0),
        t,
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    assert!(b.feed(t, &a.take_output()).unwrap().is_none());
    assert!(a.feed(t, &b.take_output()).unwrap().is_none());
    assert_eq!(
        b.feed(t, &a.take_output()).unwrap_err(),
        MseError::UnknownInfoHash
    );
}

#[test]
fn junk_truncation_and_timeout_are_errors_not_panics() {
    let t = now();
    let resp = || {
        MseHandshake::new(
            Role::responder([&HASH]),
            CryptoSet::BOTH,
            secrets(5, 0, 0),
            t,
            DEFAULT_TIMEOUT,
        )
        .unwrap()
    };
    // A valid public value followed by 2 KiB of junk never syncs.
    let mut b = resp();
    let mut junk = DhKey::from_private([1; 20]).public().to_vec();
    junk.extend((0..2048u32).map(|i| (i * 7 + 3) as u8));
    assert_eq!(b.feed(t, &junk).unwrap_err(), MseError::NoSync);
    assert_eq!(b.feed(t, b"more").unwrap_err(), MseError::Eof);
    // Truncated: waits, then the deadline ends it.
    let mut b = resp();
    assert!(b.feed(t, &junk[..50]).unwrap().is_none());
    assert_eq!(b.feed(b.deadline(), b"x").unwrap_err(), MseError::Timeout);
    assert_eq!(b.eof(), MseError::Eof);
    // An initiator fed junk after a good public value finds no VC.
    let mut a = MseHandshake::new(
        Role::Initiator {
            info_hash: HASH,
            ia: vec![],
        },
        CryptoSet::BOTH,
        secrets(3, 0, 0),
        t,
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(a.feed(t, &junk).unwrap_err(), MseError::NoSync);
    // Oversized IA is refused up front.
    let e = MseHandshake::new(
        Role::Initiator {
            info_hash: HASH,
            ia: vec![0; MAX_IA + 1],
        },
        CryptoSet::BOTH,
        secrets(3, 0, 0),
        t,
        DEFAULT_TIMEOUT,
    )
    .unwrap_err();
    assert_eq!(e, MseError::BadLength(MAX_IA + 1));
}

#[test]
fn classify_plain_vs_mse() {
    assert_eq!(classify_incoming(b""), Incoming::NeedMore);
    assert_eq!(classify_incoming(b"\x13Bit"), Incoming::NeedMore);
    assert_eq!(
        classify_incoming(b"\x13BitTorrent protocol\0\0"),
        Incoming::Plain
    );
    assert_eq!(classify_incoming(b"\x13BitX"), Incoming::Mse);
    assert_eq!(classify_incoming(&[0x55; 96]), Incoming::Mse);
}
