//! Peer-wire messages (BEP 3 + BEP 5 `port` + BEP 6 fast + BEP 10 `extended`) and a sans-IO
//! frame codec.
//!
//! The decoder owns one growable buffer; fixed-size messages are parsed out of it without
//! allocating, and payload-carrying messages (bitfield, piece, extended) hand out a
//! reference-counted [`Bytes`] slice of that same buffer, so a 16 KiB block is never copied
//! between the socket and the piece buffer it ends up in.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Message ids (BEP 3, BEP 5, BEP 10).
pub mod id {
    /// `choke` (BEP 3).
    pub const CHOKE: u8 = 0;
    /// `unchoke` (BEP 3).
    pub const UNCHOKE: u8 = 1;
    /// `interested` (BEP 3).
    pub const INTERESTED: u8 = 2;
    /// `not interested` (BEP 3).
    pub const NOT_INTERESTED: u8 = 3;
    /// `have` (BEP 3).
    pub const HAVE: u8 = 4;
    /// `bitfield` (BEP 3).
    pub const BITFIELD: u8 = 5;
    /// `request` (BEP 3).
    pub const REQUEST: u8 = 6;
    /// `piece` (BEP 3).
    pub const PIECE: u8 = 7;
    /// `cancel` (BEP 3).
    pub const CANCEL: u8 = 8;
    /// `port`, the sender's DHT port (BEP 5).
    pub const PORT: u8 = 9;
    /// `suggest piece` (BEP 6).
    pub const SUGGEST_PIECE: u8 = 0x0D;
    /// `have all` (BEP 6).
    pub const HAVE_ALL: u8 = 0x0E;
    /// `have none` (BEP 6).
    pub const HAVE_NONE: u8 = 0x0F;
    /// `reject request` (BEP 6).
    pub const REJECT_REQUEST: u8 = 0x10;
    /// `allowed fast` (BEP 6).
    pub const ALLOWED_FAST: u8 = 0x11;
    /// `extended`, the carrier of every extension message (BEP 10).
    pub const EXTENDED: u8 = 20;
}

/// Default cap on a frame's length prefix: 1 MiB (a bitfield for 8M pieces, or the largest
/// block any client sends) plus room for a header. Anything above is hostile or broken, and is
/// refused before a byte of it is buffered.
pub const DEFAULT_MAX_FRAME: u32 = (1 << 20) + 64;

/// The block size every client requests (BEP 3 convention; larger requests get refused by
/// most peers).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// One peer-wire message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Length 0: keeps the connection from timing out.
    KeepAlive,
    /// `choke` (id 0): the sender will not answer our requests until it unchokes us.
    Choke,
    /// `unchoke` (id 1): the sender will now answer our requests.
    Unchoke,
    /// `interested` (id 2): the sender wants pieces we have.
    Interested,
    /// `not interested` (id 3): the sender wants nothing we have.
    NotInterested,
    /// `have` (id 4): the sender completed (and verified) this piece.
    Have {
        /// Index of the completed piece.
        piece: u32,
    },
    /// `bitfield` (id 5): which pieces the sender has, high bit of byte 0 = piece 0. Only valid
    /// as the first message; the caller checks length and spare bits against the torrent.
    Bitfield(Bytes),
    /// `request` (id 6): asks for one block of a piece.
    Request {
        /// Piece index.
        index: u32,
        /// Byte offset of the block within the piece.
        begin: u32,
        /// Block length in bytes (normally [`BLOCK_SIZE`]).
        length: u32,
    },
    /// `piece` (id 7): one block of data, the answer to a `request`.
    Piece {
        /// Piece index.
        index: u32,
        /// Byte offset of the block within the piece.
        begin: u32,
        /// The block's bytes, a slice of the decoder's buffer (not copied).
        block: Bytes,
    },
    /// `cancel` (id 8): withdraws an earlier `request` (sent in endgame once another peer
    /// delivered the block).
    Cancel {
        /// Piece index of the withdrawn request.
        index: u32,
        /// Byte offset of the withdrawn request.
        begin: u32,
        /// Length of the withdrawn request.
        length: u32,
    },
    /// `port` (id 9): the sender's DHT port (BEP 5).
    Port(u16),
    /// `suggest piece` (id 0x0D, BEP 6): a hint that the sender would like us to download this
    /// piece.
    SuggestPiece {
        /// Index of the suggested piece.
        piece: u32,
    },
    /// `have all` (id 0x0E, BEP 6): replaces a bitfield when the sender has every piece.
    HaveAll,
    /// `have none` (id 0x0F, BEP 6): replaces a bitfield when the sender has no piece.
    HaveNone,
    /// `reject request` (id 0x10, BEP 6): the sender will not serve this request (it answers
    /// every request it drops).
    RejectRequest {
        /// Piece index of the rejected request.
        index: u32,
        /// Byte offset of the rejected request.
        begin: u32,
        /// Length of the rejected request.
        length: u32,
    },
    /// `allowed fast` (id 0x11, BEP 6): the sender serves this piece to us even while it
    /// chokes us.
    AllowedFast {
        /// Index of the piece we may request while choked.
        piece: u32,
    },
    /// `extended` (id 20, BEP 10): `id` 0 is the extension handshake; other ids are the ones
    /// *we* advertised in our `m` dict when received, and the ones the *peer* advertised when
    /// sent.
    Extended {
        /// Extension message id (0 = extension handshake).
        id: u8,
        /// The extension message body: bencoded, and a `ut_metadata` data message appends the
        /// raw metadata block.
        payload: Bytes,
    },
    /// A message id we do not know. Its payload was skipped; the connection stays up.
    Unknown {
        /// The unknown message id.
        id: u8,
        /// The frame's length prefix (id byte + skipped payload).
        len: u32,
    },
}

impl Message {
    /// The message id byte, `None` for a keep-alive.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have { .. } => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request { .. } => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel { .. } => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::SuggestPiece { .. } => id::SUGGEST_PIECE,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::RejectRequest { .. } => id::REJECT_REQUEST,
            Message::AllowedFast { .. } => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
            Message::Unknown { id, .. } => *id,
        })
    }

    /// The value of the length prefix (id byte + payload).
    pub fn frame_len(&self) -> u32 {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have { .. } | Message::SuggestPiece { .. } | Message::AllowedFast { .. } => 5,
            Message::Bitfield(b) => 1 + len_u32(b.len()),
            Message::Request { .. } | Message::Cancel { .. } | Message::RejectRequest { .. } => 13,
            Message::Piece { block, .. } => 9 + len_u32(block.len()),
            Message::Port(_) => 3,
            Message::Extended { payload, .. } => 2 + len_u32(payload.len()),
            Message::Unknown { len, .. } => (*len).max(1),
        }
    }

    /// Appends the wire form (length prefix included) to `out`.
    ///
    /// Appending to a caller-owned buffer lets a writer batch several messages (a pipeline of
    /// requests) into one `write` and reuse the allocation for the life of the connection.
    /// An `Unknown` message is written with a zero-filled payload; that exists for tests.
    pub fn encode(&self, out: &mut impl BufMut) {
        let len = self.frame_len();
        out.put_u32(len);
        let Some(msg_id) = self.id() else { return };
        out.put_u8(msg_id);
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => {}
            Message::Have { piece }
            | Message::SuggestPiece { piece }
            | Message::AllowedFast { piece } => out.put_u32(*piece),
            Message::Bitfield(bits) => out.put_slice(bits),
            Message::Request {
                index,
                begin,
                length,
            }
            | Message::Cancel {
                index,
                begin,
                length,
            }
            | Message::RejectRequest {
                index,
                begin,
                length,
            } => {
                out.put_u32(*index);
                out.put_u32(*begin);
                out.put_u32(*length);
            }
            Message::Piece {
                index,
                begin,
                block,
            } => {
                out.put_u32(*index);
                out.put_u32(*begin);
                out.put_slice(block);
            }
            Message::Port(port) => out.put_u16(*port),
            Message::Extended { id, payload } => {
                out.put_u8(*id);
                out.put_slice(payload);
            }
            Message::Unknown { .. } => out.put_bytes(0, len as usize - 1),
        }
    }
}

/// Lengths above u32::MAX cannot be framed; saturate so the decoder's limit refuses them.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Why the byte stream is not a valid sequence of frames. Every variant means the connection
/// must be closed: framing is lost, or the peer is hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds the configured maximum.
    TooLong {
        /// The length prefix the peer sent.
        len: u32,
        /// The configured maximum it exceeds.
        max: u32,
    },
    /// A known message whose length does not match its fixed size (or is below its minimum).
    BadLength {
        /// The message id.
        id: u8,
        /// The length prefix the peer sent for it.
        len: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(f, "frame length {len} exceeds the maximum of {max}")
            }
            FrameError::BadLength { id, len } => {
                write!(f, "message id {id} has invalid length {len}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Validates the length of a known message id; unknown ids accept any length.
fn check_len(msg_id: u8, len: u32) -> Result<(), FrameError> {
    let ok = match msg_id {
        id::CHOKE
        | id::UNCHOKE
        | id::INTERESTED
        | id::NOT_INTERESTED
        | id::HAVE_ALL
        | id::HAVE_NONE => len == 1,
        id::HAVE | id::SUGGEST_PIECE | id::ALLOWED_FAST => len == 5,
        id::BITFIELD => len >= 1,
        id::REQUEST | id::CANCEL | id::REJECT_REQUEST => len == 13,
        id::PIECE => len >= 9,
        id::PORT => len == 3,
        // An extended message needs at least its extension id byte.
        id::EXTENDED => len >= 2,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(FrameError::BadLength { id: msg_id, len })
    }
}

/// Sans-IO frame decoder: feed it bytes, pull messages out.
///
/// Kept free of sockets so the fuzz tests can drive it with arbitrary chunkings. After the
/// first error it stays failed (returns the same error forever): the stream has lost framing
/// and nothing after the bad frame can be trusted.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: u32,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames whose length prefix exceeds `max_frame`. Nothing is
    /// allocated until bytes arrive.
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame,
            failed: None,
        }
    }

    /// The configured maximum frame length.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Appends received bytes. The caller bounds how much it feeds between `decode` calls;
    /// `decode` never lets a single frame grow beyond `max_frame`. Bytes fed after an error
    /// are discarded: they can never be decoded.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet consumed as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Allocated buffer capacity, exposed so tests can check that a huge length prefix was
    /// refused without reserving room for it.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The error that broke this stream, if any.
    pub fn error(&self) -> Option<FrameError> {
        self.failed
    }

    /// Bytes still missing before the next `decode` can make progress: at least 1 while a
    /// header or frame is incomplete, 0 when a message (or an error) is ready.
    ///
    /// Readers reserve this much (bounded by `max_frame`, because an oversized prefix reports
    /// 0 here and fails in `decode`) so one large frame is read with one allocation.
    pub fn missing(&self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let Some(len) = self.peek_len() else {
            return 4 - self.buf.len();
        };
        if len > self.max_frame {
            return 0;
        }
        (4 + len as usize).saturating_sub(self.buf.len())
    }

    /// The buffer, for readers that receive straight into it (`AsyncReadExt::read_buf`)
    /// instead of copying through `feed`.
    pub(super) fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn peek_len(&self) -> Option<u32> {
        let head: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(head))
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    ///
    /// The length prefix is checked against `max_frame` and against the fixed size of its
    /// message id as soon as the 5 header bytes are in, before the payload is waited for, so
    /// a hostile prefix fails fast and is never buffered.
    pub fn decode(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let Some(len) = self.peek_len() else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(self.fail(FrameError::TooLong {
                len,
                max: self.max_frame,
            }));
        }
        if len == 0 {
            self.buf.advance(4);
            return Ok(Some(Message::KeepAlive));
        }
        let Some(&msg_id) = self.buf.get(4) else {
            return Ok(None);
        };
        if let Err(err) = check_len(msg_id, len) {
            return Err(self.fail(err));
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        // Header consumed; `body` is the payload after the id byte.
        let body_len = len as usize - 1;
        let fixed = |b: &BytesMut, at: usize| -> u32 {
            u32::from_be_bytes([b[5 + at], b[6 + at], b[7 + at], b[8 + at]])
        };
        let msg = match msg_id {
            id::CHOKE => Message::Choke,
            id::UNCHOKE => Message::Unchoke,
            id::INTERESTED => Message::Interested,
            id::NOT_INTERESTED => Message::NotInterested,
            id::HAVE => Message::Have {
                piece: fixed(&self.buf, 0),
            },
            id::SUGGEST_PIECE => Message::SuggestPiece {
                piece: fixed(&self.buf, 0),
            },
            id::ALLOWED_FAST => Message::AllowedFast {
                piece: fixed(&self.buf, 0),
            },
            id::HAVE_ALL => Message::HaveAll,
            id::HAVE_NONE => Message::HaveNone,
            id::REQUEST | id::CANCEL | id::REJECT_REQUEST => {
                let (index, begin, length) = (
                    fixed(&self.buf, 0),
                    fixed(&self.buf, 4),
                    fixed(&self.buf, 8),
                );
                if msg_id == id::REQUEST {
                    Message::Request {
                        index,
                        begin,
                        length,
                    }
                } else if msg_id == id::REJECT_REQUEST {
                    Message::RejectRequest {
                        index,
                        begin,
                        length,
                    }
                } else {
                    Message::Cancel {
                        index,
                        begin,
                        length,
                    }
                }
            }
            id::PORT => Message::Port(u16::from_be_bytes([self.buf[5], self.buf[6]])),
            id::BITFIELD => {
                self.buf.advance(5);
                return Ok(Some(Message::Bitfield(self.take(body_len))));
            }
            id::PIECE => {
                let (index, begin) = (fixed(&self.buf, 0), fixed(&self.buf, 4));
                self.buf.advance(13);
                return Ok(Some(Message::Piece {
                    index,
                    begin,
                    block: self.take(body_len - 8),
                }));
            }
            id::EXTENDED => {
                let ext = self.buf[5];
                self.buf.advance(6);
                return Ok(Some(Message::Extended {
                    id: ext,
                    payload: self.take(body_len - 1),
                }));
            }
            other => Message::Unknown { id: other, len },
        };
        self.buf.advance(total);
        Ok(Some(msg))
    }

    /// Splits `n` bytes off the front of the buffer as a shared slice (no copy).
    fn take(&mut self, n: usize) -> Bytes {
        self.buf.split_to(n).freeze()
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err);
        // The rest of the stream is meaningless; give the memory back now.
        self.buf = BytesMut::new();
        err
    }
}

/// Appends an extended message (BEP 10, id 20) whose payload `fill` writes straight into
/// `buf`, then patches its length prefix: extension handshakes and ut_metadata answers need no
/// intermediate vector. `ext_id` is the id the *peer* advertised (0 for the handshake).
pub fn encode_extended_with(buf: &mut Vec<u8>, ext_id: u8, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, id::EXTENDED, ext_id]);
    fill(buf);
    let len = u32::try_from(buf.len() - start - 4).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Where outgoing frames are queued: a socket's [`PeerWriter`](super::PeerWriter), or the
/// byte buffer of a sans-IO connection that its driver writes later. Code that only builds
/// answers (BEP 9 metadata serving) is written once against this and runs in both.
pub trait FrameSink {
    /// Appends one message.
    fn queue(&mut self, msg: &Message);
    /// Appends an extended message whose payload `fill` writes; see [`encode_extended_with`].
    fn queue_extended_with(&mut self, ext_id: u8, fill: impl FnOnce(&mut Vec<u8>));
}

impl FrameSink for Vec<u8> {
    fn queue(&mut self, msg: &Message) {
        msg.encode(self);
    }

    fn queue_extended_with(&mut self, ext_id: u8, fill: impl FnOnce(&mut Vec<u8>)) {
        encode_extended_with(self, ext_id, fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have { piece: 0xdead_beef },
            Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            Message::Bitfield(Bytes::new()),
            Message::Request {
                index: 1,
                begin: 16384,
                length: 16384,
            },
            Message::Piece {
                index: 7,
                begin: 32768,
                block: Bytes::from(vec![0xab; 16384]),
            },
            Message::Piece {
                index: 0,
                begin: 0,
                block: Bytes::new(),
            },
            Message::Cancel {
                index: 3,
                begin: 0,
                length: 1234,
            },
            Message::Port(6881),
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"d1:md11:ut_metadatai3eee"),
            },
            Message::Extended {
                id: 3,
                payload: Bytes::new(),
            },
            Message::SuggestPiece { piece: 9 },
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest {
                index: 4,
                begin: 16384,
                length: 16384,
            },
            Message::AllowedFast { piece: 0x0102_0304 },
            Message::Unknown { id: 0x0c, len: 1 },
            Message::Unknown { id: 0x15, len: 5 },
        ]
    }

    #[test]
    fn round_trips_every_message_type() {
        let mut wire = Vec::new();
        for msg in all_messages() {
            let before = wire.len();
            msg.encode(&mut wire);
            assert_eq!(wire.len() - before, 4 + msg.frame_len() as usize, "{msg:?}");
        }
        let mut dec = FrameDecoder::default();
        dec.feed(&wire);
        for want in all_messages() {
            assert_eq!(dec.decode(), Ok(Some(want)));
        }
        assert_eq!(dec.decode(), Ok(None));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn decodes_captured_bitfield_and_requests() {
        // From design-notes-seed.txt: a peer's bitfield (87 pieces) + unchoke, then the
        // client's interested + five pipelined requests, as one TCP segment each.
        let peer = hex::decode("0000000c05fffffffffffffffffffffe0000000101").unwrap();
        let client = hex::decode(concat!(
            "0000000102",
            "0000000d06000000270000000000000100",
            "0000000d060000003b0000000000000100",
            "0000000d06000000460000000000000100",
            "0000000d06000000490000000000000100",
            "0000000d06000000380000000000000100",
        ))
        .unwrap();
        let mut dec = FrameDecoder::default();
        dec.feed(&peer);
        let Ok(Some(Message::Bitfield(bits))) = dec.decode() else {
            panic!("no bitfield")
        };
        assert_eq!(bits.len(), 11);
        assert_eq!(bits.iter().map(|b| b.count_ones()).sum::<u32>(), 87);
        assert_eq!(dec.decode(), Ok(Some(Message::Unchoke)));
        dec.feed(&client);
        assert_eq!(dec.decode(), Ok(Some(Message::Interested)));
        for index in [0x27, 0x3b, 0x46, 0x49, 0x38] {
            assert_eq!(
                dec.decode(),
                Ok(Some(Message::Request {
                    index,
                    begin: 0,
                    length: 256
                }))
            );
        }
        assert_eq!(dec.decode(), Ok(None));
    }

    #[test]
    fn waits_for_complete_frames_byte_by_byte() {
        let mut wire = Vec::new();
        Message::Piece {
            index: 1,
            begin: 2,
            block: Bytes::from_static(b"hello"),
        }
        .encode(&mut wire);
        let mut dec = FrameDecoder::default();
        for (i, b) in wire.iter().enumerate() {
            assert_eq!(dec.decode(), Ok(None), "after {i} bytes");
            assert_eq!(dec.missing(), if i < 4 { 4 - i } else { wire.len() - i });
            dec.feed(&[*b]);
        }
        assert_eq!(dec.missing(), 0);
        let Ok(Some(Message::Piece { block, .. })) = dec.decode() else {
            panic!()
        };
        assert_eq!(&block[..], b"hello");
    }

    #[test]
    fn fixed_size_messages_must_have_their_size() {
        // have with 3 payload bytes, request with 12, choke with 1, port with 1, extended
        // without an extension id, piece without its header.
        let cases: &[(&[u8], u8, u32)] = &[
            (b"\x00\x00\x00\x04\x04\x00\x00\x01", 4, 4),
            (b"\x00\x00\x00\x0c\x06", 6, 12),
            (b"\x00\x00\x00\x02\x00\x00", 0, 2),
            (b"\x00\x00\x00\x02\x09\x1a", 9, 2),
            (b"\x00\x00\x00\x01\x14", 20, 1),
            (b"\x00\x00\x00\x05\x07\x00\x00\x00\x01", 7, 5),
            (b"\x00\x00\x00\x0e\x08", 8, 14),
        ];
        for &(input, id, len) in cases {
            let mut dec = FrameDecoder::default();
            dec.feed(input);
            let want = FrameError::BadLength { id, len };
            assert_eq!(dec.decode(), Err(want), "{input:?}");
            // Poisoned: feeding valid frames afterwards does not resurrect the stream.
            dec.feed(b"\x00\x00\x00\x01\x01");
            assert_eq!(dec.decode(), Err(want));
            assert_eq!(dec.error(), Some(want));
        }
    }

    #[test]
    fn unknown_ids_are_skipped_not_fatal() {
        let mut dec = FrameDecoder::default();
        dec.feed(b"\x00\x00\x00\x03\x0c\x00\x01\x00\x00\x00\x01\x02");
        assert_eq!(
            dec.decode(),
            Ok(Some(Message::Unknown { id: 0x0c, len: 3 }))
        );
        assert_eq!(dec.decode(), Ok(Some(Message::Interested)));
    }

    #[test]
    fn oversize_prefix_fails_before_buffering() {
        let mut dec = FrameDecoder::new(16 * 1024 + 13);
        dec.feed(&(16 * 1024 + 14u32).to_be_bytes());
        assert_eq!(dec.missing(), 0);
        assert_eq!(
            dec.decode(),
            Err(FrameError::TooLong {
                len: 16398,
                max: 16397
            })
        );
        assert!(dec.capacity() < 1024, "capacity {}", dec.capacity());
        // Exactly the maximum is fine.
        let mut dec = FrameDecoder::new(13);
        Message::Request {
            index: 1,
            begin: 2,
            length: 3,
        }
        .encode(dec.buf_mut());
        assert!(matches!(dec.decode(), Ok(Some(Message::Request { .. }))));
    }
}
