//! Bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), kept in the library so that the
//! normal test suite (`tests/fuzz_corpus_replay.rs`) replays the checked-in corpora through
//! exactly the same code on the stable toolchain: CI catches a regression in any parser
//! without nightly, libFuzzer or sanitizers.
//!
//! Every function takes arbitrary bytes and panics only when a property is violated:
//! besides "never panics", each checks that what decodes re-encodes into something that
//! decodes to the same value, so an encoder/decoder disagreement (a message we would send
//! but could not read back, or a `.torrent` we would write with a different info hash) is a
//! crash the fuzzer can find.

#![deny(missing_docs)]

pub mod bep44;
pub mod crawl_row;
pub mod krpc_reference;

use bytes::BytesMut;

use crate::dht::krpc::{self, Body, Message, Method};
use crate::torrent::metainfo::{self, Metainfo};
use crate::wire::{self, ExtHandshake, FrameDecoder, FrameError, MetadataMsg};

/// A fuzz target's body: arbitrary bytes in, a panic only on a violated property.
pub type Target = fn(&[u8]);

/// Every entry point, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("krpc", krpc),
    ("wire", wire),
    ("bep9", bep9),
    ("metainfo", metainfo),
    ("mse", mse),
    ("bep44", bep44::bep44),
    ("crawl_row", crawl_row::crawl_row),
];

/// The parts of a KRPC message that survive `encode_message`: queries carry no top-level
/// `ip`, replies and errors no `ro`, and an unknown method is answered (and so re-encoded)
/// as `find_node`.
fn encodable(mut m: Message) -> Message {
    match &mut m.body {
        Body::Query(q) => {
            m.ip = None;
            if let Method::Unknown { target } = q.method {
                q.method = Method::FindNode { target };
            }
        }
        Body::Response(_) | Body::Error(_) => m.read_only = false,
    }
    m
}

/// KRPC: `krpc::decode` on one datagram (which runs the bencode pre-scan first).
///
/// Properties: the independent reference decoder ([`krpc_reference`], written from the BEPs
/// on serde_bencode) reaches the same verdict (the same fields, the same error code, or the
/// same kind of drop); a decoded message re-encodes into bytes that decode to the same
/// message; and encoding is a fixed point (encode, decode, encode gives the same bytes).
pub fn krpc(data: &[u8]) {
    let decoded = krpc::decode(data);
    let reference = krpc_reference::decode(data, &krpc_reference::Rules::of_this_build());
    assert_eq!(
        krpc_reference::Verdict::of(decoded.clone()),
        reference,
        "the reference decoder disagrees with krpc::decode"
    );
    let Ok(message) = decoded else { return };
    let message = encodable(message);
    let mut encoded = Vec::new();
    krpc::encode_message(&mut encoded, &message);
    let again = krpc::decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "re-encoded message does not decode ({e}): {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(again, message, "decode(encode(m)) != m");
    let mut twice = Vec::new();
    krpc::encode_message(&mut twice, &again);
    assert_eq!(twice, encoded, "encoding is not stable");
}

/// Everything the decoder produced from one stream: the messages, and how it ended.
#[derive(Debug, PartialEq)]
struct Decoded {
    messages: Vec<wire::Message>,
    error: Option<FrameError>,
    buffered: usize,
}

/// Decodes until the decoder wants more bytes or fails.
fn drain(dec: &mut FrameDecoder, out: &mut Decoded) {
    loop {
        match dec.decode() {
            Ok(Some(m)) => out.messages.push(m),
            Ok(None) => return,
            Err(e) => {
                out.error = Some(e);
                return;
            }
        }
    }
}

/// Peer wire: the first two bytes pick a maximum frame length and a chunking; the rest is
/// the byte stream a peer sends after the handshake. Also tries the whole input as a
/// handshake.
///
/// Properties: feeding the stream in arbitrary chunks yields exactly what feeding it whole
/// does (same messages, same error, same bytes left over); the decoder never buffers a frame
/// beyond its limit; every decoded message re-encodes into a frame that decodes to itself;
/// extended payloads go through the BEP 10/BEP 9 decoders without panicking.
pub fn wire(data: &[u8]) {
    if let Ok(hs) = wire::Handshake::decode(data) {
        assert_eq!(
            wire::Handshake::decode(&hs.encode()),
            Ok(hs),
            "handshake round trip"
        );
    }
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    // Small limits reach the too-long path with short inputs; 255 means the default.
    let max_frame = match limit {
        255 => wire::DEFAULT_MAX_FRAME,
        l => u32::from(*l) * 4,
    };

    let mut whole = Decoded {
        messages: Vec::new(),
        error: None,
        buffered: 0,
    };
    let mut dec = FrameDecoder::new(max_frame);
    dec.feed(stream);
    drain(&mut dec, &mut whole);
    whole.buffered = dec.buffered();

    let mut chunked = Decoded {
        messages: Vec::new(),
        error: None,
        buffered: 0,
    };
    let mut dec = FrameDecoder::new(max_frame);
    // A tiny xorshift seeded by the input: chunk sizes 1..=16, or with the top bit of the
    // seed, 1..=4 (byte-at-a-time-ish splits of headers).
    let mut state = u32::from(*seed) | 0x100;
    let span = if seed & 0x80 != 0 { 4 } else { 16 };
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % span + 1) as usize;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        dec.feed(chunk);
        drain(&mut dec, &mut chunked);
        // A frame is only buffered once its header passed the length check.
        assert!(
            dec.buffered() <= 4 + max_frame as usize + chunk.len(),
            "decoder holds {} bytes with a {max_frame}-byte limit",
            dec.buffered()
        );
        if chunked.error.is_some() {
            break;
        }
    }
    chunked.buffered = dec.buffered();
    if chunked.error.is_some() {
        // After an error the decoder drops its buffer; whole-stream decoding did the same.
        assert_eq!(dec.buffered(), 0);
    }
    assert_eq!(chunked, whole, "chunked decoding differs from whole");

    let mut frames = BytesMut::new();
    for m in &whole.messages {
        m.encode(&mut frames);
        if let wire::Message::Extended { id, payload } = m {
            if *id == wire::EXT_HANDSHAKE_ID {
                let _ = ExtHandshake::decode(payload);
            } else {
                let _ = MetadataMsg::decode(payload);
            }
        }
    }
    let mut again = Decoded {
        messages: Vec::new(),
        error: None,
        buffered: 0,
    };
    let mut dec = FrameDecoder::new(max_frame);
    dec.feed(&frames);
    drain(&mut dec, &mut again);
    assert_eq!(again.error, None, "re-encoded frames fail to decode");
    assert_eq!(again.messages, whole.messages, "frame round trip");
    assert_eq!(dec.buffered(), 0);
}

/// BEP 9 / BEP 10 / BEP 11: the payload of an extended message, as a `ut_metadata` message,
/// as an extension handshake and as a `ut_pex` message (both families).
///
/// Properties: whatever decodes re-encodes into a payload that decodes to the same value;
/// a PEX message never holds more than its per-family caps.
pub fn bep9(data: &[u8]) {
    if let Ok(msg) = crate::wire::pex::PexMsg::decode(data) {
        let cap = crate::wire::pex::MAX_PEX_ENTRIES;
        for v6 in [false, true] {
            assert!(msg.added.iter().filter(|(a, _)| a.is_ipv6() == v6).count() <= cap);
            assert!(msg.dropped.iter().filter(|a| a.is_ipv6() == v6).count() <= cap);
        }
        let mut encoded = Vec::new();
        msg.encode_into(&mut encoded);
        assert_eq!(
            crate::wire::pex::PexMsg::decode(&encoded),
            Ok(msg),
            "ut_pex round trip"
        );
    }
    if let Ok(msg) = MetadataMsg::decode(data) {
        let encoded = msg.encode();
        assert_eq!(
            MetadataMsg::decode(&encoded),
            Ok(msg),
            "ut_metadata round trip"
        );
        if let MetadataMsg::Data {
            piece, total_size, ..
        } = msg
        {
            // The helpers a fetcher sizes its buffers with must not panic on peer values.
            let _ = wire::metadata_block_len(piece, total_size);
            let _ = wire::num_metadata_pieces(total_size);
            let _ = wire::valid_metadata_size(total_size);
        }
    }
    if let Ok(hs) = ExtHandshake::decode(data) {
        let encoded = hs.encode();
        assert_eq!(
            ExtHandshake::decode(&encoded).as_ref(),
            Ok(&hs),
            "extension handshake round trip"
        );
        if let Some(size) = hs.metadata_size {
            let _ = wire::num_metadata_pieces(size);
        }
    }
}

/// Metainfo: the input as a `.torrent` file, and as a bare info dict (what BEP 9 delivers).
///
/// Properties: a parsed torrent written back with `to_bytes` parses to the same value, info
/// hash included; a bare info dict wrapped with `torrent_file_from_info` keeps its info hash;
/// the piece and file geometry helpers stay within bounds.
pub fn metainfo(data: &[u8]) {
    if let Ok(meta) = Metainfo::from_bytes(data) {
        let written = meta.to_bytes();
        let again = Metainfo::from_bytes(&written)
            .unwrap_or_else(|e| panic!("written torrent does not parse: {e}"));
        assert_eq!(again.info_hash, meta.info_hash, "info hash changed");
        assert_eq!(again, meta, "torrent round trip");
        geometry(&meta.info);
    }
    if let Ok(meta) = Metainfo::from_info_bytes(data) {
        let file = metainfo::torrent_file_from_info(data);
        let again = Metainfo::from_bytes(&file)
            .unwrap_or_else(|e| panic!("wrapped info dict does not parse: {e}"));
        assert_eq!(again.info_hash, meta.info_hash, "info hash changed");
        assert_eq!(again.info, meta.info);
    }
}

/// Walks the first and last pieces and every file: their spans must tile the piece exactly.
fn geometry(info: &metainfo::Info) {
    let pieces = info.num_pieces();
    assert_eq!(pieces, info.pieces.len());
    let total = info.total_length();
    let mut covered = 0u64;
    for index in (0..pieces.min(4)).chain(pieces.saturating_sub(4)..pieces) {
        let size = info.piece_size(index).expect("piece in range has a size");
        assert!(size <= info.piece_length);
        let spans = info.piece_spans(index).expect("piece in range has spans");
        let sum: u64 = spans.iter().map(|s| s.length).sum();
        assert_eq!(sum, size, "spans of piece {index} do not add up");
        for s in &spans {
            let f = &info.files[s.file];
            assert!(s.file_offset + s.length <= f.length);
        }
        if index + 1 == pieces {
            covered = info.piece_length * (pieces as u64 - 1) + size;
        }
    }
    if pieces > 0 {
        assert_eq!(covered, total, "pieces do not cover the data");
    }
    assert!(info.piece_size(pieces).is_none());
    for i in 0..info.files.len().min(64) {
        let _ = info.file_path_on_disk(i);
    }
}

/// MSE/PE handshake (`wire::mse`): the first byte picks the role, the allowed methods and a
/// chunk size; the rest is the peer's bytes. Whatever they are, the handshake ends in an
/// outcome, an error or a wait, never a panic, and its receive buffer stays bounded.
pub fn mse(data: &[u8]) {
    let _ = mse_run(data);
}

/// [`mse`]'s body, returning how the handshake ended: `None` when it still waits for input.
/// The seeds in fuzz/seeds/mse/handshake_* are complete peer transcripts written by an
/// independent (Python) implementation, so the replay test also checks they succeed.
pub fn mse_run(
    data: &[u8],
) -> Option<Result<crate::wire::mse::MseOutcome, crate::wire::mse::MseError>> {
    use crate::wire::mse::{CryptoSet, DEFAULT_TIMEOUT, DhKey, MseHandshake, MseSecrets, Role};
    let (&ctl, rest) = data.split_first()?;
    let now = std::time::Instant::now();
    let hash = crate::torrent::InfoHash([0xab; 20]);
    let role = if ctl & 1 == 0 {
        Role::Initiator {
            info_hash: hash,
            ia: rest.get(..rest.len().min(68)).unwrap_or_default().to_vec(),
        }
    } else {
        Role::responder([&hash])
    };
    let allowed = CryptoSet(((ctl >> 1) & 3) as u32);
    let secrets = MseSecrets {
        key: DhKey::from_private([ctl | 1; 20]),
        pad_len: (ctl as usize) * 2,
        pad2_len: ctl as usize,
    };
    let mut hs = match MseHandshake::new(role, allowed, secrets, now, DEFAULT_TIMEOUT) {
        Ok(hs) => hs,
        Err(e) => return Some(Err(e)),
    };
    let chunk = 1 + (ctl as usize >> 3);
    for (i, c) in rest.chunks(chunk).enumerate() {
        let r = hs.feed(now, c);
        let out = hs.take_output();
        assert!(
            out.len() <= 2048,
            "one step never sends more than a pad and a header"
        );
        match r {
            Ok(None) => {}
            Ok(Some(mut o)) => {
                // What a driver does next: the rest of the stream, decrypted under RC4.
                let mut tail = rest[((i + 1) * chunk).min(rest.len())..].to_vec();
                if let Some(c) = o.ciphers.as_mut() {
                    c.dec.apply(&mut tail);
                }
                o.initial_payload.extend_from_slice(&tail);
                return Some(Ok(o));
            }
            Err(e) => return Some(Err(e)),
        }
    }
    None
}
