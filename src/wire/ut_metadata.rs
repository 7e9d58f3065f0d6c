//! BEP 9 `ut_metadata` messages: fetching the info dict from peers in 16 KiB blocks.

use std::fmt;

use super::benc::{self, DictEntries};
use crate::bencode::{self, MAX_DEPTH, ScanError};

/// Size of every metadata block except the last.
pub const METADATA_BLOCK: usize = 16 * 1024;

/// Largest info dict we accept. A peer's `metadata_size` decides how much we buffer, so it
/// must be capped; real info dicts reach a few MiB only for huge multi-file torrents.
pub const MAX_METADATA_SIZE: u64 = 16 * 1024 * 1024;

/// One ut_metadata message. `data` borrows the received payload, so a block is copied once,
/// straight into the metadata buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMsg<'a> {
    /// `msg_type` 0: please send block `piece`.
    Request {
        /// Index of the wanted block.
        piece: u32,
    },
    /// `msg_type` 1: block `piece` of a `total_size`-byte info dict.
    Data {
        /// Index of the block carried.
        piece: u32,
        /// Size of the whole info dict in bytes, as the sender states it.
        total_size: u64,
        /// The raw block, appended after the bencoded dict.
        data: &'a [u8],
    },
    /// `msg_type` 2: the peer will not send block `piece`.
    Reject {
        /// Index of the refused block.
        piece: u32,
    },
}

/// Why a ut_metadata payload could not be decoded. Callers ignore the message (and may count
/// the peer as misbehaving); none of these is worth closing the connection over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataError {
    /// The leading dict is not well-formed bencode.
    Bencode(ScanError),
    /// The leading value is not a dict.
    NotADict,
    /// `msg_type` missing or not an integer.
    MissingMsgType,
    /// A `msg_type` this version of BEP 9 does not define.
    UnknownMsgType(i64),
    /// `piece` missing, negative or above u32.
    BadPiece,
    /// A data message without a valid (non-negative) `total_size`.
    BadTotalSize,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::Bencode(e) => write!(f, "ut_metadata: {e}"),
            MetadataError::NotADict => write!(f, "ut_metadata message is not a dictionary"),
            MetadataError::MissingMsgType => write!(f, "ut_metadata message without msg_type"),
            MetadataError::UnknownMsgType(t) => write!(f, "unknown ut_metadata msg_type {t}"),
            MetadataError::BadPiece => write!(f, "ut_metadata message with invalid piece"),
            MetadataError::BadTotalSize => write!(f, "ut_metadata data without valid total_size"),
        }
    }
}

impl std::error::Error for MetadataError {}

const MSG_REQUEST: i64 = 0;
const MSG_DATA: i64 = 1;
const MSG_REJECT: i64 = 2;

impl<'a> MetadataMsg<'a> {
    /// Parses the payload of an extended message addressed to our ut_metadata id.
    ///
    /// The payload is a bencoded dict, followed (for data messages) by the raw block; the
    /// dict's end is found structurally with [`bencode::scan_value`], since the block is
    /// arbitrary bytes that would otherwise read as trailing garbage. Bytes after the dict of
    /// a request or reject are ignored.
    pub fn decode(payload: &'a [u8]) -> Result<Self, MetadataError> {
        let dict_end =
            bencode::scan_value(payload, 0, MAX_DEPTH).map_err(MetadataError::Bencode)?;
        let dict = payload.get(..dict_end).ok_or(MetadataError::NotADict)?;
        let entries = DictEntries::new(dict).ok_or(MetadataError::NotADict)?;
        let (mut msg_type, mut piece, mut total_size) = (None, None, None);
        for (key, raw) in entries {
            match key {
                b"msg_type" => msg_type = benc::as_int(raw),
                b"piece" => piece = benc::as_int(raw),
                b"total_size" => total_size = benc::as_int(raw),
                _ => {}
            }
        }
        let msg_type = msg_type.ok_or(MetadataError::MissingMsgType)?;
        if !(MSG_REQUEST..=MSG_REJECT).contains(&msg_type) {
            return Err(MetadataError::UnknownMsgType(msg_type));
        }
        let piece = piece
            .and_then(|p| u32::try_from(p).ok())
            .ok_or(MetadataError::BadPiece)?;
        Ok(match msg_type {
            MSG_REQUEST => MetadataMsg::Request { piece },
            MSG_REJECT => MetadataMsg::Reject { piece },
            _ => {
                let total_size = total_size
                    .and_then(|t| u64::try_from(t).ok())
                    .ok_or(MetadataError::BadTotalSize)?;
                let data = payload.get(dict_end..).unwrap_or_default();
                MetadataMsg::Data {
                    piece,
                    total_size,
                    data,
                }
            }
        })
    }

    /// Appends the payload (dict, plus the block for data messages) to `out`. Keys are in
    /// canonical order: msg_type < piece < total_size.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (msg_type, piece) = match *self {
            MetadataMsg::Request { piece } => (MSG_REQUEST, piece),
            MetadataMsg::Data { piece, .. } => (MSG_DATA, piece),
            MetadataMsg::Reject { piece } => (MSG_REJECT, piece),
        };
        out.push(b'd');
        benc::put_bytes(out, b"msg_type");
        benc::put_int(out, msg_type);
        benc::put_bytes(out, b"piece");
        benc::put_int(out, i64::from(piece));
        if let MetadataMsg::Data {
            total_size, data, ..
        } = *self
        {
            benc::put_bytes(out, b"total_size");
            benc::put_int(out, i64::try_from(total_size).unwrap_or(i64::MAX));
            out.push(b'e');
            out.extend_from_slice(data);
        } else {
            out.push(b'e');
        }
    }

    /// The payload as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let extra = match self {
            MetadataMsg::Data { data, .. } => data.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(64 + extra);
        self.encode_into(&mut out);
        out
    }
}

/// Number of 16 KiB blocks an info dict of `size` bytes is sent in.
pub fn num_metadata_pieces(size: u64) -> u32 {
    u32::try_from(size.div_ceil(METADATA_BLOCK as u64)).unwrap_or(u32::MAX)
}

/// The exact length block `piece` must have for an info dict of `total_size` bytes (the last
/// block is the remainder), or `None` if there is no such block. The fetcher compares a data
/// message against this before copying it, so a short or padded block is refused.
pub fn metadata_block_len(piece: u32, total_size: u64) -> Option<usize> {
    let start = u64::from(piece) * METADATA_BLOCK as u64;
    if start >= total_size {
        return None;
    }
    let len = (total_size - start).min(METADATA_BLOCK as u64);
    usize::try_from(len).ok()
}

/// Checks a peer-advertised `metadata_size` before anything is allocated for it.
pub fn valid_metadata_size(size: u64) -> bool {
    (1..=MAX_METADATA_SIZE).contains(&size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_all_kinds() {
        let block = vec![b'e'; 100];
        for msg in [
            MetadataMsg::Request { piece: 0 },
            MetadataMsg::Reject { piece: 7 },
            MetadataMsg::Data {
                piece: 2,
                total_size: 32868,
                data: &block,
            },
            MetadataMsg::Data {
                piece: 0,
                total_size: 0,
                data: &[],
            },
        ] {
            assert_eq!(MetadataMsg::decode(&msg.encode()), Ok(msg));
        }
        assert_eq!(
            MetadataMsg::Request { piece: 0 }.encode(),
            b"d8:msg_typei0e5:piecei0ee"
        );
    }

    #[test]
    fn data_message_block_follows_the_dict() {
        // The block is itself valid-looking bencode, which must not confuse the split.
        let payload = b"d8:msg_typei1e5:piecei0e10:total_sizei8eed1:ai1ee";
        let msg = MetadataMsg::decode(payload).unwrap();
        assert_eq!(
            msg,
            MetadataMsg::Data {
                piece: 0,
                total_size: 8,
                data: b"d1:ai1ee"
            }
        );
        // Extra keys and a different key order are accepted.
        let payload = b"d5:piecei3e10:total_sizei49200e8:msg_typei1e3:zzzli1eeeRAW";
        assert_eq!(
            MetadataMsg::decode(payload),
            Ok(MetadataMsg::Data {
                piece: 3,
                total_size: 49200,
                data: b"RAW"
            })
        );
    }

    #[test]
    fn bad_messages_are_errors() {
        let cases: &[(&[u8], MetadataError)] = &[
            (
                b"d8:msg_typei3e5:piecei0ee",
                MetadataError::UnknownMsgType(3),
            ),
            (b"d5:piecei0ee", MetadataError::MissingMsgType),
            (b"d8:msg_type1:05:piecei0ee", MetadataError::MissingMsgType),
            (b"d8:msg_typei0ee", MetadataError::BadPiece),
            (b"d8:msg_typei0e5:piecei-1ee", MetadataError::BadPiece),
            (
                b"d8:msg_typei2e5:piecei4294967296ee",
                MetadataError::BadPiece,
            ),
            (b"d8:msg_typei1e5:piecei0ee", MetadataError::BadTotalSize),
            (
                b"d8:msg_typei1e5:piecei0e10:total_sizei-1eexx",
                MetadataError::BadTotalSize,
            ),
            (b"li0ee", MetadataError::NotADict),
            (
                b"d8:msg_typei1e",
                MetadataError::Bencode(ScanError::Truncated),
            ),
            (b"", MetadataError::Bencode(ScanError::Truncated)),
        ];
        for (input, want) in cases {
            assert_eq!(
                MetadataMsg::decode(input),
                Err(*want),
                "{}",
                input.escape_ascii()
            );
        }
    }

    #[test]
    fn block_geometry() {
        assert_eq!(num_metadata_pieces(0), 0);
        assert_eq!(num_metadata_pieces(1), 1);
        assert_eq!(num_metadata_pieces(16384), 1);
        assert_eq!(num_metadata_pieces(16385), 2);
        assert_eq!(metadata_block_len(0, 16385), Some(16384));
        assert_eq!(metadata_block_len(1, 16385), Some(1));
        assert_eq!(metadata_block_len(2, 16385), None);
        assert_eq!(metadata_block_len(1, 32768), Some(16384));
        assert_eq!(metadata_block_len(2, 32768), None);
        assert_eq!(metadata_block_len(0, 0), None);
        assert_eq!(metadata_block_len(u32::MAX, u64::MAX), Some(16384));
        assert!(valid_metadata_size(MAX_METADATA_SIZE) && valid_metadata_size(1));
        assert!(!valid_metadata_size(0) && !valid_metadata_size(MAX_METADATA_SIZE + 1));
    }
}
