//! Deterministic fuzzing of the peer-wire codecs, plus allocation checks.
//!
//! Peer bytes are attacker-controlled, so the decoders are driven with random input,
//! truncated and mutated valid frames, in random chunkings. A seeded RNG keeps failures
//! reproducible. A counting global allocator (per thread, so parallel tests do not disturb
//! each other) checks that hostile length prefixes and hot-path messages allocate nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use trackerless::wire::{
    DEFAULT_MAX_FRAME, ExtHandshake, FrameDecoder, FrameError, Handshake, Message, MetadataMsg,
    metadata_block_len,
};

struct CountingAlloc;

thread_local! {
    /// (number of allocations, largest allocation) on this thread.
    static ALLOCS: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

fn record(size: usize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = ALLOCS.try_with(|a| {
        let (n, max) = a.get();
        a.set((n + 1, max.max(size)));
    });
}

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` and returns (allocations, largest allocation) it made on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64, usize) {
    ALLOCS.with(|a| a.set((0, 0)));
    let out = f();
    let (n, max) = ALLOCS.with(|a| a.get());
    (out, n, max)
}

fn random_bytes(rng: &mut StdRng, max_len: usize) -> Vec<u8> {
    let mut v = vec![0u8; rng.random_range(0..=max_len)];
    rng.fill_bytes(&mut v);
    v
}

fn random_ext_handshake(rng: &mut StdRng) -> ExtHandshake {
    let mut hs = ExtHandshake::default();
    for name in ["ut_metadata", "ut_pex", "lt_donthave", "upload_only"] {
        if rng.random_bool(0.5) {
            hs.m.insert(name.to_owned(), rng.random());
        }
    }
    hs.v = rng.random_bool(0.5).then(|| "libtorrent/2.0.9".to_owned());
    // Port 0 means "no port" and decodes as absent.
    hs.p = rng.random_bool(0.5).then(|| rng.random_range(1..=u16::MAX));
    hs.reqq = rng.random_bool(0.5).then(|| rng.random());
    hs.metadata_size = rng
        .random_bool(0.5)
        .then(|| rng.random_range(0..1u64 << 40));
    hs.yourip = rng.random_bool(0.5).then(|| {
        if rng.random_bool(0.5) {
            IpAddr::from(rng.random::<[u8; 4]>())
        } else {
            IpAddr::from(rng.random::<[u8; 16]>())
        }
    });
    hs
}

fn random_metadata_msg(rng: &mut StdRng) -> Vec<u8> {
    let piece = rng.random_range(0..4);
    match rng.random_range(0..3) {
        0 => MetadataMsg::Request { piece }.encode(),
        1 => MetadataMsg::Reject { piece }.encode(),
        _ => {
            let total_size = rng.random_range(1..70_000);
            let len = metadata_block_len(piece, total_size).unwrap_or(3).min(200);
            let data = random_bytes(rng, len);
            MetadataMsg::Data {
                piece,
                total_size,
                data: &data,
            }
            .encode()
        }
    }
}

fn random_message(rng: &mut StdRng) -> Message {
    match rng.random_range(0..14) {
        0 => Message::KeepAlive,
        1 => Message::Choke,
        2 => Message::Unchoke,
        3 => Message::Interested,
        4 => Message::NotInterested,
        5 => Message::Have {
            piece: rng.random(),
        },
        6 => Message::Bitfield(Bytes::from(random_bytes(rng, 40))),
        7 => Message::Request {
            index: rng.random(),
            begin: rng.random(),
            length: rng.random(),
        },
        8 => Message::Piece {
            index: rng.random(),
            begin: rng.random(),
            block: Bytes::from(random_bytes(rng, 64)),
        },
        9 => Message::Cancel {
            index: rng.random(),
            begin: rng.random(),
            length: rng.random(),
        },
        10 => Message::Port(rng.random()),
        11 => Message::Extended {
            id: 0,
            payload: Bytes::from(random_ext_handshake(rng).encode()),
        },
        12 => Message::Extended {
            id: 1,
            payload: Bytes::from(random_metadata_msg(rng)),
        },
        _ => {
            // Ids 10..=12, 18, 19 and 21..=255 are unknown to us (13..=17 are BEP 6).
            let id = loop {
                let id: u8 = rng.random_range(10..=255);
                if id != 20 && !(13..=17).contains(&id) {
                    break id;
                }
            };
            Message::Unknown {
                id,
                len: rng.random_range(1..20),
            }
        }
    }
}

fn mutate(rng: &mut StdRng, buf: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..5) {
            0 if !buf.is_empty() => {
                let i = rng.random_range(0..buf.len());
                buf[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !buf.is_empty() => {
                let i = rng.random_range(0..buf.len());
                buf[i] = rng.random();
            }
            2 => buf.truncate(rng.random_range(0..=buf.len())),
            3 => {
                let i = rng.random_range(0..=buf.len());
                buf.insert(i, rng.random());
            }
            _ if !buf.is_empty() => {
                let i = rng.random_range(0..buf.len());
                buf.remove(i);
            }
            _ => {}
        }
    }
}

/// Parses extension payloads the way a connection would; only "no panic" is checked, since
/// their errors are ignored by callers.
fn poke_payload(payload: &[u8]) {
    let _ = ExtHandshake::decode(payload);
    if let Ok(MetadataMsg::Data {
        piece,
        total_size,
        data,
    }) = MetadataMsg::decode(payload)
    {
        let _ = metadata_block_len(piece, total_size).map(|len| len == data.len());
    }
}

/// Feeds `input` in random chunks, draining after each; returns the messages and the error.
fn run_decoder(
    rng: &mut StdRng,
    dec: &mut FrameDecoder,
    input: &[u8],
) -> (Vec<Message>, Option<FrameError>) {
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(24));
        dec.feed(&rest[..n]);
        rest = &rest[n..];
        loop {
            match dec.decode() {
                Ok(Some(msg)) => {
                    assert!(msg.frame_len() <= dec.max_frame(), "{msg:?} over the limit");
                    if let Message::Extended { payload, .. } = &msg {
                        poke_payload(payload);
                    }
                    out.push(msg);
                }
                Ok(None) => {
                    assert!(
                        dec.missing() > 0,
                        "no progress possible yet nothing missing"
                    );
                    break;
                }
                Err(e) => {
                    // Failed streams stay failed, whatever arrives next.
                    dec.feed(rest);
                    assert_eq!(dec.decode(), Err(e));
                    assert_eq!(dec.error(), Some(e));
                    return (out, Some(e));
                }
            }
        }
    }
    (out, None)
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let mut rng = StdRng::seed_from_u64(0x5eed_f00d);
    let (mut intact, mut errors, mut decoded) = (0u32, 0u32, 0usize);
    for _ in 0..200_000 {
        let max_frame = match rng.random_range(0..3) {
            0 => rng.random_range(0..80),
            1 => 16 * 1024 + 13,
            _ => DEFAULT_MAX_FRAME,
        };
        let mut dec = FrameDecoder::new(max_frame);
        match rng.random_range(0..10) {
            0..3 => {
                let input = random_bytes(&mut rng, 48);
                let _ = Handshake::decode(&input);
                poke_payload(&input);
                let (msgs, _) = run_decoder(&mut rng, &mut dec, &input);
                decoded += msgs.len();
            }
            3..5 => {
                // Bencode payloads mutated directly, which reaches deeper than via frames.
                let mut payload = if rng.random_bool(0.5) {
                    random_ext_handshake(&mut rng).encode()
                } else {
                    random_metadata_msg(&mut rng)
                };
                mutate(&mut rng, &mut payload);
                poke_payload(&payload);
            }
            _ => {
                let msgs: Vec<Message> = (0..rng.random_range(1..5))
                    .map(|_| random_message(&mut rng))
                    .collect();
                let mut wire = Vec::new();
                for m in &msgs {
                    m.encode(&mut wire);
                }
                let mutated = rng.random_bool(0.7);
                if mutated {
                    mutate(&mut rng, &mut wire);
                }
                let (got, err) = run_decoder(&mut rng, &mut dec, &wire);
                decoded += got.len();
                if err.is_some() {
                    errors += 1;
                }
                let fits = msgs.iter().all(|m| m.frame_len() <= max_frame);
                if !mutated && fits {
                    // Any chunking of valid frames decodes to exactly the original messages.
                    assert_eq!(err, None);
                    assert_eq!(got, msgs);
                    assert_eq!(dec.buffered(), 0);
                    intact += 1;
                }
            }
        }
    }
    // Guard against a generator that silently stopped exercising the interesting paths.
    assert!(intact > 10_000, "{intact}");
    assert!(errors > 10_000, "{errors}");
    assert!(decoded > 100_000, "{decoded}");
}

#[test]
fn oversize_prefix_fails_without_allocating() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2_000 {
        let max = rng.random_range(0..=DEFAULT_MAX_FRAME);
        let len = rng.random_range(max + 1..=u32::MAX);
        let mut dec = FrameDecoder::new(max);
        let mut wire = len.to_be_bytes().to_vec();
        wire.push(rng.random());
        let split = rng.random_range(1..=4);
        let (res, _, largest) = allocations(|| {
            dec.feed(&wire[..split]);
            let first = dec.decode();
            dec.feed(&wire[split..]);
            (first, dec.decode())
        });
        let want = Err(FrameError::TooLong { len, max });
        if split < 4 {
            assert_eq!(res.0, Ok(None));
        } else {
            assert_eq!(res.0, want);
        }
        assert_eq!(res.1, want);
        // Only the few header bytes were ever buffered, never anything sized by `len`.
        assert!(
            largest <= 64,
            "allocated {largest} bytes for a refused frame"
        );
        let (res, n, _) = allocations(|| dec.decode());
        assert_eq!((res, n), (want, 0));
    }
}

#[test]
fn hot_path_messages_do_not_allocate() {
    let msgs: Vec<Message> = (0..1000u32)
        .map(|i| match i % 6 {
            0 => Message::Have { piece: i },
            1 => Message::Request {
                index: i,
                begin: 16384,
                length: 16384,
            },
            2 => Message::Cancel {
                index: i,
                begin: 0,
                length: 16384,
            },
            3 => Message::Unchoke,
            4 => Message::KeepAlive,
            _ => Message::Interested,
        })
        .collect();
    let mut wire = Vec::with_capacity(16 * 1024);
    for m in &msgs {
        m.encode(&mut wire);
    }
    // Encoding into a reused buffer: no allocation.
    let (_, n, _) = allocations(|| {
        wire.clear();
        for m in &msgs {
            m.encode(&mut wire);
        }
    });
    assert_eq!(n, 0, "encoding allocated");

    let mut dec = FrameDecoder::default();
    dec.feed(&wire);
    let (got, n, _) = allocations(|| {
        let mut count = 0usize;
        let mut sum = 0u64;
        while let Ok(Some(m)) = dec.decode() {
            count += 1;
            if let Message::Have { piece } | Message::Request { index: piece, .. } = m {
                sum += u64::from(piece);
            }
        }
        (count, sum)
    });
    assert_eq!(n, 0, "decoding fixed-size messages allocated");
    assert_eq!(got.0, msgs.len());
    assert!(got.1 > 0);

    // A ut_metadata data message borrows its block from the payload.
    let block = vec![0x5a; 16384];
    let payload = MetadataMsg::Data {
        piece: 0,
        total_size: 16384,
        data: &block,
    }
    .encode();
    let (msg, n, _) = allocations(|| MetadataMsg::decode(&payload));
    assert_eq!(n, 0, "ut_metadata decode allocated");
    assert_eq!(
        msg,
        Ok(MetadataMsg::Data {
            piece: 0,
            total_size: 16384,
            data: &block
        })
    );
}

#[test]
fn ext_handshake_round_trips_losslessly() {
    let mut rng = StdRng::seed_from_u64(99);
    for _ in 0..5_000 {
        let hs = random_ext_handshake(&mut rng);
        let wire = hs.encode();
        let back = ExtHandshake::decode(&wire).unwrap();
        assert_eq!(back, hs);
        assert_eq!(back.encode(), wire, "encoding is canonical");
        assert_eq!(trackerless::bencode::validate(&wire, 2), Ok(()));
    }
}
