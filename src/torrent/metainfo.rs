//! `.torrent` metainfo (BEP 3, v1): parsing, validation, writing, and creation from disk.
//!
//! Two rules shape this module:
//!
//! * The info hash is the SHA-1 of the `info` dict's bytes *exactly as received*. Torrents in
//!   the wild carry unsorted keys and keys nobody documents; re-encoding would silently change
//!   the hash and put us in a different swarm. So the raw bytes are kept next to the typed
//!   view, and writing a torrent splices them back verbatim.
//! * A torrent names the files the downloader will create, and it comes from strangers. Every
//!   path component is checked so that joining it under the download directory can never land
//!   outside it (`..`, absolute paths, separators, drive prefixes, NUL), on any platform.
//!
//! Bytes are always structurally validated by [`bencode::validate`] before serde_bencode sees
//! them, because serde_bencode recurses once per nesting level and accepts trailing garbage.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_bencode::value::Value;
use serde_bytes::ByteBuf;
use sha1::{Digest, Sha1};

use super::InfoHash;
use crate::bencode::{self, MAX_DEPTH, ScanError, put_bytes, put_int};

/// Largest piece length accepted. Real torrents stay at or below 16 MiB; 256 MiB leaves room
/// for odd creators while keeping a single piece buffer within what a downloader can hold.
pub const MAX_PIECE_LENGTH: u64 = 256 << 20;

/// Smallest piece length [`create_info`] picks: the BitTorrent block size, below which the
/// piece hashes cost more than they protect.
pub const MIN_AUTO_PIECE_LENGTH: u64 = 16 << 10;

/// Largest piece length [`create_info`] picks; the common client ceiling.
pub const MAX_AUTO_PIECE_LENGTH: u64 = 16 << 20;

/// [`create_info`] picks the smallest power-of-two piece length giving at most this many
/// pieces, so the info dict (20 bytes per piece) stays small enough to fetch quickly over
/// BEP 9 while pieces stay small enough to verify and re-request cheaply.
pub const AUTO_TARGET_PIECES: u64 = 2000;

/// One file of the torrent, in the order its bytes appear in the concatenated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's directory; for a single-file torrent, `[name]`.
    /// Every component has passed the path-safety check.
    pub path: Vec<String>,
    /// Length in bytes (zero-length files are allowed).
    pub length: u64,
    /// Offset of the file's first byte in the torrent's concatenated data.
    pub offset: u64,
    /// BEP 47 pad file (`attr` contains `p`, or the path is `.pad/...`): alignment filler
    /// whose bytes are all zero. It is never created on disk; its bytes are served and
    /// verified as zeros. Pad files may share a path (libtorrent names them `.pad/<size>`).
    pub pad: bool,
    /// BEP 47 `attr` `x`: the file gets the executable bit when we create it.
    pub executable: bool,
    /// BEP 47 `attr` `h`: a hidden file. On Unix hiding is a matter of the name (a leading
    /// dot), which the torrent already carries, so nothing more is done; it is kept so a
    /// caller can tell.
    pub hidden: bool,
}

/// The part of a file that a piece covers (see [`Info::piece_spans`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpan {
    /// Index into [`Info::files`].
    pub file: usize,
    /// Offset within that file.
    pub file_offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// The validated typed view of an `info` dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Suggested name: the file name (single-file) or top directory (multi-file).
    pub name: String,
    /// Bytes per piece; every piece but the last has exactly this length.
    pub piece_length: u64,
    /// SHA-1 of each piece.
    pub pieces: Vec<[u8; 20]>,
    /// The files; a single-file torrent has one entry whose path is `[name]`.
    pub files: Vec<FileEntry>,
    /// BEP 27 private flag: the publisher asked that peers come only from its trackers, which
    /// a trackerless client should respect by not searching the DHT for this torrent.
    pub private: bool,
    /// Whether the dict used the single-file form (`length`) rather than `files`.
    pub single_file: bool,
    /// `meta version` 2 next to the v1 keys: a BEP 52 hybrid torrent. We download and seed
    /// it through its v1 part; the v2 keys (`file tree`, `meta version`) stay untouched in
    /// the raw info bytes, so what we serve and write keeps them byte for byte.
    pub hybrid: bool,
}

/// A parsed `.torrent` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// The typed, validated view of [`Metainfo::info_bytes`].
    pub info: Info,
    /// SHA-1 of [`Metainfo::info_bytes`].
    pub info_hash: InfoHash,
    /// The `info` dict exactly as it appeared in the file (or as received over BEP 9).
    pub info_bytes: Vec<u8>,
    /// `announce`: kept for writing the file back; a trackerless client does not use it.
    pub announce: Option<String>,
    /// `announce-list` tiers (BEP 12), likewise only kept.
    pub announce_list: Vec<Vec<String>>,
    /// `nodes` (BEP 5): DHT bootstrap contacts suggested by the torrent's creator.
    pub nodes: Vec<(String, u16)>,
    /// `comment`.
    pub comment: Option<String>,
    /// `created by`.
    pub created_by: Option<String>,
    /// `creation date`, seconds since the Unix epoch.
    pub creation_date: Option<i64>,
    /// BEP 52 `piece layers` (hybrid and v2 torrents), the bencoded value exactly as it
    /// appeared: we do not use v2 hashes, but a `.torrent` we write back must keep them or
    /// v2-capable clients would have to fetch them from peers.
    pub piece_layers: Option<Vec<u8>>,
}

/// Why a `.torrent`, an info dict, or a directory to share cannot be used.
#[derive(Debug)]
pub enum MetainfoError {
    /// Not one well-formed bencoded value (includes depth bombs and trailing bytes).
    Bencode(ScanError),
    /// The named value is not a dictionary.
    NotADict(&'static str),
    /// The torrent has no `info` key.
    MissingInfo,
    /// A value has the wrong type (or a key is duplicated); `path` locates it, e.g.
    /// `files[2].length`.
    Decode {
        /// What was being decoded: `"torrent"` or `"info dict"`.
        what: &'static str,
        /// Where the bad value is, e.g. `files[2].length` (empty or `.` at the top level).
        path: String,
        /// The decoder's description of the problem.
        message: String,
    },
    /// A required key is absent; the string locates it (`piece length`, `files[3].path`).
    MissingField(String),
    /// A name or path component that is not UTF-8 (and has no usable `.utf-8` variant).
    NotUtf8(String),
    /// `piece length` is zero, negative or above [`MAX_PIECE_LENGTH`].
    BadPieceLength(i64),
    /// `pieces` is not a whole number of 20-byte hashes.
    PiecesNotMultipleOf20(usize),
    /// The number of piece hashes does not match ceil(total length / piece length).
    PieceCountMismatch {
        /// ceil(total length / piece length).
        expected: u64,
        /// The number of hashes in `pieces`.
        actual: usize,
    },
    /// Both `length` and `files`: single- or multi-file is ambiguous.
    BothLengthAndFiles,
    /// Neither `length` nor `files`.
    NeitherLengthNorFiles,
    /// A file length below zero.
    NegativeLength {
        /// The file's path components.
        path: Vec<String>,
        /// The length it gives.
        length: i64,
    },
    /// The file lengths add up past 2^64.
    TotalLengthOverflow,
    /// The torrent's total length is zero: there is nothing to download.
    EmptyTorrent,
    /// `files` is an empty list.
    NoFiles,
    /// The torrent's `name` could escape or misdirect the download directory.
    UnsafeName {
        /// The name as given.
        name: String,
        /// What is wrong with it, for the message.
        reason: &'static str,
    },
    /// A file path could escape or misdirect the download directory.
    UnsafePath {
        /// The path components as given.
        path: Vec<String>,
        /// What is wrong with it, for the message.
        reason: &'static str,
    },
    /// Two files with the same path: the second would overwrite the first.
    DuplicatePath(Vec<String>),
    /// A BEP 47 symbolic link entry (`attr` contains `l`). Links are refused outright
    /// rather than checked: a link target is a path from a stranger that the file system
    /// would follow on every later write, and no torrent we need to read depends on one.
    Symlink(Vec<String>),
    /// A BEP 52 v2-only info dict (`meta version` 2 without v1 `pieces`).
    V2Only,
    /// A file's path is also used as a directory by another file.
    PathConflict {
        /// The file whose path is also a directory.
        file: Vec<String>,
        /// A file inside that directory.
        other: Vec<String>,
    },
    /// Reading the file system failed.
    Io {
        /// The file or directory being read.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// [`create_info`] found no regular file to share at this path.
    NothingToShare(PathBuf),
    /// A file's length changed while it was being hashed.
    FileChanged(PathBuf),
    /// A file on disk whose name cannot be put in a torrent (not UTF-8, or no name at all).
    UnsupportedFileName(PathBuf),
    /// Encoding the info dict failed (not expected to happen).
    Encode(String),
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MetainfoError as E;
        match self {
            E::Bencode(e) => write!(f, "malformed bencode: {e}"),
            E::NotADict(what) => write!(f, "{what} is not a bencoded dictionary"),
            E::MissingInfo => write!(f, "torrent has no `info` dictionary"),
            E::Decode {
                what,
                path,
                message,
            } if path.is_empty() || path == "." => {
                write!(f, "invalid {what}: {message}")
            }
            E::Decode {
                what,
                path,
                message,
            } => {
                write!(f, "invalid {what}: at `{path}`: {message}")
            }
            E::MissingField(field) => write!(f, "info dict has no `{field}`"),
            E::NotUtf8(what) => write!(f, "{what} is not valid UTF-8"),
            E::BadPieceLength(n) => {
                write!(f, "piece length {n} is outside 1..={MAX_PIECE_LENGTH}")
            }
            E::PiecesNotMultipleOf20(n) => {
                write!(
                    f,
                    "`pieces` is {n} bytes, not a multiple of 20 (one SHA-1 per piece)"
                )
            }
            E::PieceCountMismatch { expected, actual } => write!(
                f,
                "torrent has {actual} piece hashes but its length and piece length need {expected}"
            ),
            E::BothLengthAndFiles => {
                write!(
                    f,
                    "info dict has both `length` and `files`; exactly one is allowed"
                )
            }
            E::NeitherLengthNorFiles => {
                write!(f, "info dict has neither `length` nor `files`")
            }
            E::NegativeLength { path, length } => {
                write!(f, "file {path:?} has negative length {length}")
            }
            E::TotalLengthOverflow => write!(f, "file lengths add up to more than 2^64 bytes"),
            E::EmptyTorrent => write!(f, "torrent's total length is 0: nothing to download"),
            E::NoFiles => write!(f, "info dict's `files` list is empty"),
            E::UnsafeName { name, reason } => write!(f, "unsafe torrent name {name:?}: {reason}"),
            E::UnsafePath { path, reason } => write!(f, "unsafe file path {path:?}: {reason}"),
            E::DuplicatePath(path) => write!(f, "file path {path:?} appears twice"),
            E::Symlink(path) => write!(
                f,
                "file {path:?} is a symbolic link (BEP 47 attr `l`); links are not supported"
            ),
            E::V2Only => write!(f, "v2-only torrents are not supported yet"),
            E::PathConflict { file, other } => {
                write!(f, "file {file:?} is also the directory of file {other:?}")
            }
            E::Io { path, source } => write!(f, "{}: {source}", path.display()),
            E::NothingToShare(path) => {
                write!(
                    f,
                    "{}: no regular files with any content to share",
                    path.display()
                )
            }
            E::FileChanged(path) => {
                write!(
                    f,
                    "{}: file changed size while being hashed",
                    path.display()
                )
            }
            E::UnsupportedFileName(path) => write!(
                f,
                "{}: has no UTF-8 file name, so it cannot be named in a torrent",
                path.display()
            ),
            E::Encode(msg) => write!(f, "cannot encode info dict: {msg}"),
        }
    }
}

impl std::error::Error for MetainfoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetainfoError::Io { source, .. } => Some(source),
            MetainfoError::Bencode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ScanError> for MetainfoError {
    fn from(e: ScanError) -> Self {
        MetainfoError::Bencode(e)
    }
}

/// Why `component` is unsafe as one path component under a download directory, if it is.
///
/// Checks are spelled out rather than left to `Path`, because `Path` follows the platform
/// we run on: on Unix `C:` and `a\b` are ordinary names, yet a torrent written here may be
/// downloaded on Windows. The platform parser is consulted as a final guard.
pub fn unsafe_component_reason(component: &str) -> Option<&'static str> {
    let bytes = component.as_bytes();
    if component.is_empty() {
        return Some("empty component");
    }
    if component.contains('\0') {
        return Some("NUL byte in component");
    }
    if component.contains(['/', '\\']) {
        return Some("path separator inside a component");
    }
    // `.`, `..`, and also `...` or `. .`: Windows strips trailing dots and spaces, which
    // turns `.. ` into `..`.
    if bytes.iter().all(|&b| b == b'.' || b == b' ') {
        return Some("`.` or `..` component");
    }
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Some("Windows drive prefix");
    }
    let mut parts = Path::new(component).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(n)), None) if n == component => None,
        _ => Some("not a plain file name on this platform"),
    }
}

/// Decodes `bytes` (already validated) into `T`, turning serde's error into one that says
/// which key was wrong.
fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, MetainfoError> {
    let mut de = serde_bencode::Deserializer::new(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| MetainfoError::Decode {
        what,
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// The info dict as serde sees it. Every key is optional here so that a missing one is
/// reported by name through [`MetainfoError::MissingField`]; unknown keys are ignored (they
/// still count in the info hash, which is taken over the raw bytes).
#[derive(Deserialize)]
struct RawInfo {
    name: Option<ByteBuf>,
    /// Only consulted when `name` is not UTF-8; its type is unchecked because it is optional.
    #[serde(rename = "name.utf-8")]
    name_utf8: Option<Value>,
    #[serde(rename = "piece length")]
    piece_length: Option<i64>,
    pieces: Option<ByteBuf>,
    length: Option<i64>,
    files: Option<Vec<RawFile>>,
    private: Option<i64>,
    /// BEP 47 attributes of a single-file torrent's file.
    attr: Option<ByteBuf>,
    #[serde(rename = "meta version")]
    meta_version: Option<i64>,
}

#[derive(Deserialize)]
struct RawFile {
    length: Option<i64>,
    path: Option<Vec<ByteBuf>>,
    #[serde(rename = "path.utf-8")]
    path_utf8: Option<Value>,
    /// BEP 47 attributes: `p` pad, `x` executable, `h` hidden, `l` symlink.
    attr: Option<ByteBuf>,
}

/// The BEP 47 flags we act on, from an `attr` string (unknown letters are ignored, as the
/// BEP asks).
#[derive(Default, Clone, Copy)]
struct Attr {
    pad: bool,
    executable: bool,
    hidden: bool,
    symlink: bool,
}

fn attr_flags(attr: Option<&ByteBuf>) -> Attr {
    let bytes = attr.map_or(&[][..], |a| a.as_slice());
    Attr {
        pad: bytes.contains(&b'p'),
        executable: bytes.contains(&b'x'),
        hidden: bytes.contains(&b'h'),
        symlink: bytes.contains(&b'l'),
    }
}

/// `bytes` as UTF-8, else the `.utf-8` fallback if it is a UTF-8 byte string.
fn utf8_or_fallback(
    bytes: &[u8],
    fallback: Option<&Value>,
    what: &str,
) -> Result<String, MetainfoError> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s.to_owned());
    }
    if let Some(Value::Bytes(b)) = fallback
        && let Ok(s) = String::from_utf8(b.clone())
    {
        return Ok(s);
    }
    Err(MetainfoError::NotUtf8(what.to_owned()))
}

/// A file's path components as UTF-8; when any is not, the whole `path.utf-8` list is used
/// instead (mixing components from both lists would build a path nobody wrote).
fn file_path(
    raw: &[ByteBuf],
    fallback: Option<&Value>,
    index: usize,
) -> Result<Vec<String>, MetainfoError> {
    if let Ok(path) = raw.iter().map(|c| String::from_utf8(c.to_vec())).collect() {
        return Ok(path);
    }
    if let Some(Value::List(list)) = fallback {
        let path: Option<Vec<String>> = list
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
                _ => None,
            })
            .collect();
        if let Some(path) = path {
            return Ok(path);
        }
    }
    Err(MetainfoError::NotUtf8(format!("files[{index}].path")))
}

impl Info {
    /// Parses and validates a raw info dict, e.g. metadata fetched over BEP 9 whose SHA-1 was
    /// just checked against the magnet's info hash.
    pub fn from_bytes(raw_info: &[u8]) -> Result<Info, MetainfoError> {
        bencode::validate(raw_info, MAX_DEPTH)?;
        if raw_info.first() != Some(&b'd') {
            return Err(MetainfoError::NotADict("info"));
        }
        let raw: RawInfo = decode(raw_info, "info dict")?;
        Info::from_raw(raw)
    }

    fn from_raw(raw: RawInfo) -> Result<Info, MetainfoError> {
        use MetainfoError as E;
        let name_bytes = raw.name.ok_or_else(|| E::MissingField("name".into()))?;
        let name = utf8_or_fallback(&name_bytes, raw.name_utf8.as_ref(), "name")?;
        if let Some(reason) = unsafe_component_reason(&name) {
            return Err(E::UnsafeName { name, reason });
        }

        let piece_length = raw
            .piece_length
            .ok_or_else(|| E::MissingField("piece length".into()))?;
        let piece_length = u64::try_from(piece_length)
            .ok()
            .filter(|&p| (1..=MAX_PIECE_LENGTH).contains(&p))
            .ok_or(E::BadPieceLength(piece_length))?;

        let hybrid = raw.meta_version == Some(2);
        let pieces = match raw.pieces {
            Some(p) => p,
            None if hybrid => return Err(E::V2Only),
            None => return Err(E::MissingField("pieces".into())),
        };
        if pieces.len() % 20 != 0 {
            return Err(E::PiecesNotMultipleOf20(pieces.len()));
        }
        let pieces: Vec<[u8; 20]> = pieces
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();

        let (files, single_file) = match (raw.length, raw.files) {
            (Some(_), Some(_)) => return Err(E::BothLengthAndFiles),
            (None, None) => return Err(E::NeitherLengthNorFiles),
            (Some(length), None) => {
                let path = vec![name.clone()];
                let attr = attr_flags(raw.attr.as_ref());
                if attr.symlink {
                    return Err(E::Symlink(path));
                }
                let length = u64::try_from(length).map_err(|_| E::NegativeLength {
                    path: path.clone(),
                    length,
                })?;
                (
                    vec![FileEntry {
                        path,
                        length,
                        offset: 0,
                        // A torrent that is one pad file has nothing to download; keep it
                        // a real (empty-or-not) file rather than a hole.
                        pad: false,
                        executable: attr.executable,
                        hidden: attr.hidden,
                    }],
                    true,
                )
            }
            (None, Some(raw_files)) => (Info::files_from_raw(raw_files)?, false),
        };

        let total = files.last().map_or(0, |f| f.offset + f.length);
        if total == 0 {
            return Err(E::EmptyTorrent);
        }
        let expected = total.div_ceil(piece_length);
        if expected != pieces.len() as u64 {
            return Err(E::PieceCountMismatch {
                expected,
                actual: pieces.len(),
            });
        }

        Ok(Info {
            name,
            piece_length,
            pieces,
            files,
            private: raw.private.is_some_and(|p| p != 0),
            single_file,
            hybrid,
        })
    }

    /// Validates the multi-file list and lays the files out end to end.
    fn files_from_raw(raw_files: Vec<RawFile>) -> Result<Vec<FileEntry>, MetainfoError> {
        use MetainfoError as E;
        if raw_files.is_empty() {
            return Err(E::NoFiles);
        }
        let mut files = Vec::with_capacity(raw_files.len());
        let mut offset: u64 = 0;
        for (i, raw) in raw_files.into_iter().enumerate() {
            let raw_path = raw
                .path
                .ok_or_else(|| E::MissingField(format!("files[{i}].path")))?;
            let path = file_path(&raw_path, raw.path_utf8.as_ref(), i)?;
            if path.is_empty() {
                return Err(E::UnsafePath {
                    path,
                    reason: "empty path",
                });
            }
            if let Some(reason) = path.iter().find_map(|c| unsafe_component_reason(c)) {
                return Err(E::UnsafePath { path, reason });
            }
            let attr = attr_flags(raw.attr.as_ref());
            if attr.symlink {
                return Err(E::Symlink(path));
            }
            let length = raw
                .length
                .ok_or_else(|| E::MissingField(format!("files[{i}].length")))?;
            let length = u64::try_from(length).map_err(|_| E::NegativeLength {
                path: path.clone(),
                length,
            })?;
            files.push(FileEntry {
                pad: attr.pad || path[0] == ".pad",
                path,
                length,
                offset,
                executable: attr.executable,
                hidden: attr.hidden,
            });
            offset = offset.checked_add(length).ok_or(E::TotalLengthOverflow)?;
        }
        check_path_collisions(&files)?;
        Ok(files)
    }

    /// Files that exist on disk: BEP 47 pad files are left out (what a user counts).
    pub fn real_files(&self) -> usize {
        self.files.iter().filter(|f| !f.pad).count()
    }

    /// Sum of all file lengths.
    pub fn total_length(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.length))
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Length of piece `index`: `piece_length`, except the last piece, which holds whatever
    /// remains. `None` for an index past the end (indices come from peers).
    pub fn piece_size(&self, index: usize) -> Option<u64> {
        if index >= self.pieces.len() {
            return None;
        }
        let start = (index as u64).checked_mul(self.piece_length)?;
        let remaining = self.total_length().checked_sub(start)?;
        Some(remaining.min(self.piece_length))
    }

    /// Where file `index` goes, relative to the download directory: `name` for a single-file
    /// torrent, `name/<path...>` for a multi-file one. Safe to join because every component
    /// was checked at parse time. `None` for an index past the end.
    pub fn file_path_on_disk(&self, index: usize) -> Option<PathBuf> {
        let file = self.files.get(index)?;
        if self.single_file {
            return Some(PathBuf::from(&self.name));
        }
        let mut path = PathBuf::from(&self.name);
        path.extend(&file.path);
        Some(path)
    }

    /// The file regions piece `index` covers, in order (zero-length files are skipped), so
    /// the downloader can write a verified piece and the seeder can read one back.
    pub fn piece_spans(&self, index: usize) -> Option<Vec<FileSpan>> {
        let size = self.piece_size(index)?;
        // `piece_size` checked this product; saturating adds keep a hand-built, inconsistent
        // `Info` from panicking.
        let start = index as u64 * self.piece_length;
        let end = start.saturating_add(size);
        // Files are sorted by offset, so binary-search the first one ending past the start.
        let first = self
            .files
            .partition_point(|f| f.offset.saturating_add(f.length) <= start);
        let mut spans = Vec::new();
        for (i, f) in self.files.iter().enumerate().skip(first) {
            if f.offset >= end {
                break;
            }
            let from = start.max(f.offset);
            let to = end.min(f.offset.saturating_add(f.length));
            if to > from {
                spans.push(FileSpan {
                    file: i,
                    file_offset: from - f.offset,
                    length: to - from,
                });
            }
        }
        Some(spans)
    }
}

/// Refuses two files with one path, and a file whose path is a directory of another: either
/// would make the downloader clobber or fail to create files. Case-folding collisions (which
/// matter only on case-insensitive file systems) are not checked.
///
/// Directories are interned as (parent id, name) nodes so the check costs one hash lookup per
/// path component; comparing whole path prefixes would be quadratic in path depth, which a
/// hostile info dict controls.
fn check_path_collisions(files: &[FileEntry]) -> Result<(), MetainfoError> {
    // (parent directory id, name) -> (directory id, index of a file below it). Id 0 is the
    // torrent's top directory.
    let mut dirs: HashMap<(usize, &str), (usize, usize)> = HashMap::new();
    // (parent directory id, name) -> file index.
    let mut leaves: HashMap<(usize, &str), usize> = HashMap::with_capacity(files.len());
    let mut leaf_keys = Vec::with_capacity(files.len());
    for (index, f) in files.iter().enumerate() {
        // Pad files never reach the disk, so their paths cannot collide with anything.
        if f.pad {
            continue;
        }
        let Some((name, parents)) = f.path.split_last() else {
            continue;
        };
        let mut parent = 0;
        for component in parents {
            let next_id = dirs.len() + 1;
            parent = dirs
                .entry((parent, component.as_str()))
                .or_insert((next_id, index))
                .0;
        }
        let key = (parent, name.as_str());
        if leaves.insert(key, index).is_some() {
            return Err(MetainfoError::DuplicatePath(f.path.clone()));
        }
        leaf_keys.push((key, index));
    }
    for (key, index) in leaf_keys {
        if let Some(&(_, below)) = dirs.get(&key) {
            return Err(MetainfoError::PathConflict {
                file: files[index].path.clone(),
                other: files[below].path.clone(),
            });
        }
    }
    Ok(())
}

/// Top-level keys we read. Optional metadata is taken loosely (a malformed `comment` or
/// `announce-list` is dropped, not fatal: a trackerless download needs none of it). `info`
/// is listed only so that a second `info` key is refused as a duplicate instead of letting
/// two clients disagree on which one counts.
#[derive(Deserialize)]
struct RawTop {
    #[allow(dead_code)]
    info: Option<IgnoredAny>,
    announce: Option<Value>,
    #[serde(rename = "announce-list")]
    announce_list: Option<Value>,
    nodes: Option<Value>,
    comment: Option<Value>,
    #[serde(rename = "created by")]
    created_by: Option<Value>,
    #[serde(rename = "creation date")]
    creation_date: Option<Value>,
}

fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// BEP 12 tiers; a flat list of URLs (a common mistake) is read as one URL per tier.
fn announce_tiers(v: &Value) -> Vec<Vec<String>> {
    let Value::List(tiers) = v else {
        return Vec::new();
    };
    tiers
        .iter()
        .filter_map(|tier| match tier {
            Value::List(urls) => Some(urls.iter().filter_map(value_str).collect::<Vec<_>>()),
            Value::Bytes(_) => value_str(tier).map(|url| vec![url]),
            _ => None,
        })
        .filter(|tier| !tier.is_empty())
        .collect()
}

/// `nodes`: `[[host, port], ...]`; entries that are not a host string and a valid port are
/// dropped.
fn node_list(v: &Value) -> Vec<(String, u16)> {
    let Value::List(nodes) = v else {
        return Vec::new();
    };
    nodes
        .iter()
        .filter_map(|node| match node {
            Value::List(pair) => match pair.as_slice() {
                [host, Value::Int(port)] => {
                    let host = value_str(host).filter(|h| !h.is_empty())?;
                    let port = u16::try_from(*port).ok().filter(|&p| p != 0)?;
                    Some((host, port))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl Metainfo {
    /// Parses a `.torrent` file. The info hash is taken over the `info` value's bytes as they
    /// appear in `buf`.
    pub fn from_bytes(buf: &[u8]) -> Result<Metainfo, MetainfoError> {
        bencode::validate(buf, MAX_DEPTH)?;
        if buf.first() != Some(&b'd') {
            return Err(MetainfoError::NotADict("torrent"));
        }
        let span = bencode::dict_value_span(buf, b"info")?.ok_or(MetainfoError::MissingInfo)?;
        let top: RawTop = decode(buf, "torrent")?;
        let mut meta = Metainfo::from_info_bytes(&buf[span])?;
        meta.announce = top.announce.as_ref().and_then(value_str);
        meta.announce_list = top
            .announce_list
            .as_ref()
            .map(announce_tiers)
            .unwrap_or_default();
        meta.nodes = top.nodes.as_ref().map(node_list).unwrap_or_default();
        meta.piece_layers =
            bencode::dict_value_span(buf, b"piece layers")?.map(|span| buf[span].to_vec());
        let lossy = |v: &Value| match v {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        meta.comment = top.comment.as_ref().and_then(lossy);
        meta.created_by = top.created_by.as_ref().and_then(lossy);
        meta.creation_date = match top.creation_date {
            Some(Value::Int(t)) => Some(t),
            _ => None,
        };
        Ok(meta)
    }

    /// Wraps a raw info dict (from BEP 9 or [`create_info`]) into a `Metainfo` with no other
    /// keys; set `created_by` etc. before [`Metainfo::to_bytes`] if wanted.
    pub fn from_info_bytes(raw_info: &[u8]) -> Result<Metainfo, MetainfoError> {
        let info = Info::from_bytes(raw_info)?;
        Ok(Metainfo {
            info,
            info_hash: InfoHash::of_info(raw_info),
            info_bytes: raw_info.to_vec(),
            announce: None,
            announce_list: Vec::new(),
            nodes: Vec::new(),
            comment: None,
            created_by: None,
            creation_date: None,
            piece_layers: None,
        })
    }

    /// Writes the `.torrent`: keys in sorted order as bencode requires, the info dict spliced
    /// in verbatim so the info hash is unchanged. `piece layers` is written back verbatim;
    /// other unknown top-level keys of a parsed file are not reproduced (they are outside the
    /// info hash and nothing here reads them).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.info_bytes.len() + 256);
        out.push(b'd');
        // Keys in byte order: announce, announce-list, comment, created by, creation date,
        // info, nodes, piece layers.
        if let Some(url) = &self.announce {
            put_bytes(&mut out, b"announce");
            put_bytes(&mut out, url.as_bytes());
        }
        if !self.announce_list.is_empty() {
            put_bytes(&mut out, b"announce-list");
            out.push(b'l');
            for tier in &self.announce_list {
                out.push(b'l');
                for url in tier {
                    put_bytes(&mut out, url.as_bytes());
                }
                out.push(b'e');
            }
            out.push(b'e');
        }
        if let Some(comment) = &self.comment {
            put_bytes(&mut out, b"comment");
            put_bytes(&mut out, comment.as_bytes());
        }
        if let Some(by) = &self.created_by {
            put_bytes(&mut out, b"created by");
            put_bytes(&mut out, by.as_bytes());
        }
        if let Some(date) = self.creation_date {
            put_bytes(&mut out, b"creation date");
            put_int(&mut out, date);
        }
        put_bytes(&mut out, b"info");
        out.extend_from_slice(&self.info_bytes);
        if !self.nodes.is_empty() {
            put_bytes(&mut out, b"nodes");
            out.push(b'l');
            for (host, port) in &self.nodes {
                out.push(b'l');
                put_bytes(&mut out, host.as_bytes());
                put_int(&mut out, i64::from(*port));
                out.push(b'e');
            }
            out.push(b'e');
        }
        if let Some(layers) = &self.piece_layers {
            put_bytes(&mut out, b"piece layers");
            out.extend_from_slice(layers);
        }
        out.push(b'e');
        out
    }
}

/// A minimal trackerless `.torrent` around raw info bytes: `d4:info<raw_info>e`, the bytes
/// embedded verbatim so the file's info hash is the SHA-1 of `raw_info`. Meant for metadata
/// already validated by [`Info::from_bytes`]; to add `created by` or `creation date`, use
/// [`Metainfo::from_info_bytes`] and [`Metainfo::to_bytes`].
pub fn torrent_file_from_info(raw_info: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw_info.len() + 8);
    out.extend_from_slice(b"d4:info");
    out.extend_from_slice(raw_info);
    out.push(b'e');
    out
}

/// The piece length [`create_info`] uses when none is given: the smallest power of two in
/// [`MIN_AUTO_PIECE_LENGTH`]..=[`MAX_AUTO_PIECE_LENGTH`] yielding at most
/// [`AUTO_TARGET_PIECES`] pieces.
pub fn default_piece_length(total_length: u64) -> u64 {
    let mut piece = MIN_AUTO_PIECE_LENGTH;
    while piece < MAX_AUTO_PIECE_LENGTH && total_length.div_ceil(piece) > AUTO_TARGET_PIECES {
        piece *= 2;
    }
    piece
}

/// The info dict as written by [`create_info`]. serde_bencode sorts struct keys by their
/// bytes when encoding (checked by a test), which makes the output canonical bencode, the
/// same bytes libtorrent produces for the same content.
#[derive(Serialize)]
struct WriteInfo<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<WriteFile<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    name: &'a str,
    #[serde(rename = "piece length")]
    piece_length: u64,
    #[serde(with = "serde_bytes")]
    pieces: &'a [u8],
}

#[derive(Serialize)]
struct WriteFile<'a> {
    length: u64,
    path: &'a [String],
}

/// A file found by [`create_info`].
pub(super) struct DiskFile {
    pub(super) components: Vec<String>,
    pub(super) source: PathBuf,
    pub(super) length: u64,
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MetainfoError + '_ {
    move |source| MetainfoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lists the regular files under `root` (following symlinks to files, but not symlinks to
/// directories, which could loop or reach outside the tree), sorted by path components
/// byte-wise so the same tree always yields the same torrent.
/// The files a torrent of `path` shares and their total length: a directory's regular files
/// (see [`list_files`]), or the file itself as one entry with `single` as its path. Nothing
/// to share (no bytes, or neither a file nor a directory) is an error.
pub(super) fn files_to_share(
    path: &Path,
    meta: &fs::Metadata,
    single: Vec<String>,
) -> Result<(Vec<DiskFile>, u64), MetainfoError> {
    let files = if meta.is_dir() {
        list_files(path)?
    } else if meta.is_file() {
        vec![DiskFile {
            components: single,
            source: path.to_path_buf(),
            length: meta.len(),
        }]
    } else {
        return Err(MetainfoError::NothingToShare(path.to_path_buf()));
    };
    let total = files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.length))
        .ok_or(MetainfoError::TotalLengthOverflow)?;
    if total == 0 {
        return Err(MetainfoError::NothingToShare(path.to_path_buf()));
    }
    Ok((files, total))
}

pub(super) fn list_files(root: &Path) -> Result<Vec<DiskFile>, MetainfoError> {
    let mut found = Vec::new();
    let mut dirs: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let source = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| MetainfoError::UnsupportedFileName(source.clone()))?;
            let mut components = prefix.clone();
            components.push(name);
            let kind = entry.file_type().map_err(io_err(&source))?;
            if kind.is_dir() {
                dirs.push((source, components));
            } else if kind.is_file() || kind.is_symlink() {
                // `fs::metadata` follows the link; dangling links and links to directories
                // or devices are left out.
                match fs::metadata(&source) {
                    Ok(meta) if meta.is_file() => found.push(DiskFile {
                        components,
                        source,
                        length: meta.len(),
                    }),
                    Ok(_) => {}
                    Err(_) if kind.is_symlink() => {}
                    Err(e) => return Err(io_err(&source)(e)),
                }
            }
        }
    }
    found.sort_by(|a, b| a.components.cmp(&b.components));
    Ok(found)
}

/// Hashes the concatenation of `files` in pieces of `piece_length`, calling `progress` with
/// the running total of bytes hashed. Files are read through fixed-size buffers, so memory
/// does not grow with the piece length.
fn hash_pieces(
    files: &[DiskFile],
    piece_length: u64,
    progress: &mut impl FnMut(u64),
) -> Result<Vec<u8>, MetainfoError> {
    let mut pieces = Vec::new();
    let mut hasher = Sha1::new();
    let mut in_piece: u64 = 0;
    let mut hashed: u64 = 0;
    let mut buf = vec![0u8; 256 << 10];
    for file in files {
        let handle = fs::File::open(&file.source).map_err(io_err(&file.source))?;
        let mut reader = handle.take(file.length);
        let mut left = file.length;
        while left > 0 {
            let room = usize::try_from(piece_length - in_piece).unwrap_or(usize::MAX);
            let want = buf.len().min(room);
            let n = reader
                .read(&mut buf[..want])
                .map_err(io_err(&file.source))?;
            if n == 0 {
                return Err(MetainfoError::FileChanged(file.source.clone()));
            }
            hasher.update(&buf[..n]);
            in_piece += n as u64;
            left -= n as u64;
            hashed += n as u64;
            if in_piece == piece_length {
                pieces.extend_from_slice(&hasher.finalize_reset());
                in_piece = 0;
            }
            progress(hashed);
        }
        // A file that grew since it was listed would hash content the torrent does not
        // describe the length of; refuse rather than publish a torrent that cannot verify.
        let mut probe = [0u8; 1];
        let grew = reader
            .into_inner()
            .read(&mut probe)
            .map_err(io_err(&file.source))?
            > 0;
        if grew {
            return Err(MetainfoError::FileChanged(file.source.clone()));
        }
    }
    if in_piece > 0 {
        pieces.extend_from_slice(&hasher.finalize());
    }
    Ok(pieces)
}

/// Builds a v1 info dict for a file or a directory tree, for seeding.
///
/// A directory becomes a multi-file torrent named after it, holding its regular files in
/// sorted order (zero-length files included, as libtorrent does); a file becomes a
/// single-file torrent. `piece_length` defaults to [`default_piece_length`]. `progress`
/// receives the running total of bytes hashed. Returns the canonical encoded dict (whose
/// SHA-1 is the info hash) and its typed view, which has passed the same validation as a
/// downloaded torrent; so, for instance, a file named `a\b` is refused here rather than
/// published in a torrent other clients would refuse.
pub fn create_info(
    path: &Path,
    piece_length: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<(Vec<u8>, Info), MetainfoError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let canonical = fs::canonicalize(path).map_err(io_err(path))?;
    // The name the user gave (a symlink keeps its own name), unless that is `.` or `..`.
    let name = path
        .file_name()
        .or_else(|| canonical.file_name())
        .ok_or_else(|| MetainfoError::UnsupportedFileName(path.to_path_buf()))?
        .to_str()
        .ok_or_else(|| MetainfoError::UnsupportedFileName(path.to_path_buf()))?
        .to_owned();

    let (files, total) = files_to_share(path, &meta, Vec::new())?;

    let piece_length = match piece_length {
        Some(p) if (1..=MAX_PIECE_LENGTH).contains(&p) => p,
        Some(p) => {
            return Err(MetainfoError::BadPieceLength(
                i64::try_from(p).unwrap_or(i64::MAX),
            ));
        }
        None => default_piece_length(total),
    };
    let pieces = hash_pieces(&files, piece_length, &mut progress)?;

    let write = if meta.is_dir() {
        WriteInfo {
            files: Some(
                files
                    .iter()
                    .map(|f| WriteFile {
                        length: f.length,
                        path: &f.components,
                    })
                    .collect(),
            ),
            length: None,
            name: &name,
            piece_length,
            pieces: &pieces,
        }
    } else {
        WriteInfo {
            files: None,
            length: Some(total),
            name: &name,
            piece_length,
            pieces: &pieces,
        }
    };
    let raw = serde_bencode::to_bytes(&write).map_err(|e| MetainfoError::Encode(e.to_string()))?;
    let info = Info::from_bytes(&raw)?;
    Ok((raw, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temp dir, removed by the caller.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tl-metainfo-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Sharing a directory takes regular files and links to regular files; links to
    /// directories and dangling links are left out rather than failing the whole share.
    #[cfg(unix)]
    /// A file of exactly N pieces has N piece hashes (no empty last piece), and a piece
    /// length outside 1..=MAX_PIECE_LENGTH is refused before anything is hashed.
    #[test]
    fn create_info_counts_whole_pieces_and_refuses_bad_piece_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("two.bin");
        std::fs::write(&file, vec![7u8; 2 * 16384]).unwrap();
        let (raw, info) = create_info(&file, Some(16384), |_| {}).unwrap();
        assert_eq!(info.num_pieces(), 2);
        assert_eq!(info.pieces.len(), 2);
        assert!(raw.windows(11).any(|w| w == b"6:pieces40:"));
        for bad in [0, MAX_PIECE_LENGTH + 1] {
            assert!(matches!(
                create_info(&file, Some(bad), |_| {}),
                Err(MetainfoError::BadPieceLength(_))
            ));
        }
    }

    /// The bencode and I/O errors keep their cause as `source()`, so a caller's error
    /// report can print the chain.
    #[test]
    fn bencode_and_io_errors_keep_their_source() {
        use std::error::Error;
        let e = Info::from_bytes(b"l").unwrap_err();
        assert!(matches!(e, MetainfoError::Bencode(_)), "{e:?}");
        assert!(e.source().is_some());
        let dir = tempfile::tempdir().unwrap();
        let e = create_info(&dir.path().join("missing"), None, |_| {}).unwrap_err();
        assert!(matches!(e, MetainfoError::Io { .. }), "{e:?}");
        assert!(e.source().is_some());
        assert!(MetainfoError::NoFiles.source().is_none());
    }

    #[test]
    fn listing_a_directory_skips_links_to_directories_and_dangling_links() {
        let dir = scratch("links");
        fs::write(dir.join("a.bin"), b"aaaa").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/b.bin"), b"bb").unwrap();
        std::os::unix::fs::symlink(dir.join("a.bin"), dir.join("link-to-file")).unwrap();
        std::os::unix::fs::symlink(dir.join("sub"), dir.join("link-to-dir")).unwrap();
        std::os::unix::fs::symlink(dir.join("missing"), dir.join("dangling")).unwrap();
        let files = list_files(&dir).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.components.join("/")).collect();
        assert_eq!(names, ["a.bin", "link-to-file", "sub/b.bin"]);
        assert_eq!(
            files.iter().map(|f| f.length).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Hashing reports cumulative progress, and a file that grew since it was listed
    /// fails rather than publishing a torrent that cannot verify.
    #[test]
    fn hashing_reports_progress_and_refuses_a_grown_file() {
        let dir = scratch("hash");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(dir.join("f"), &data).unwrap();
        let file = |length| DiskFile {
            components: vec!["f".into()],
            source: dir.join("f"),
            length,
        };
        let mut seen = Vec::new();
        let pieces = hash_pieces(&[file(100_000)], 32_768, &mut |n| seen.push(n)).unwrap();
        assert_eq!(pieces.len(), 4 * 20);
        assert_eq!(&pieces[..20], &Sha1::digest(&data[..32_768])[..]);
        assert_eq!(seen.last(), Some(&100_000));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert!(seen.len() > 1);
        match hash_pieces(&[file(99_999)], 32_768, &mut |_| {}) {
            Err(MetainfoError::FileChanged(p)) => assert_eq!(p, dir.join("f")),
            other => panic!("a grown file must fail: {other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A decode error at the top level names no path; deeper ones say where.
    #[test]
    fn decode_errors_name_their_path_only_below_the_top() {
        let e = |path: &str| MetainfoError::Decode {
            what: "torrent",
            path: path.into(),
            message: "bad".into(),
        };
        assert_eq!(e("").to_string(), "invalid torrent: bad");
        assert_eq!(e(".").to_string(), "invalid torrent: bad");
        assert_eq!(
            e("info.files").to_string(),
            "invalid torrent: at `info.files`: bad"
        );
    }

    // A tiny bencode writer that keeps keys in the order given, so tests can build the
    // non-canonical dicts found in the wild.
    fn bs(bytes: &[u8]) -> Vec<u8> {
        let mut out = format!("{}:", bytes.len()).into_bytes();
        out.extend_from_slice(bytes);
        out
    }
    fn s(text: &str) -> Vec<u8> {
        bs(text.as_bytes())
    }
    fn int(n: i64) -> Vec<u8> {
        format!("i{n}e").into_bytes()
    }
    fn list(items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![b'l'];
        items.iter().for_each(|i| out.extend_from_slice(i));
        out.push(b'e');
        out
    }
    fn dict(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![b'd'];
        for (k, v) in pairs {
            out.extend(s(k));
            out.extend_from_slice(v);
        }
        out.push(b'e');
        out
    }
    fn pieces(n: usize) -> Vec<u8> {
        bs(&(0..n * 20).map(|i| i as u8).collect::<Vec<_>>())
    }
    fn file(len: i64, path: &[&str]) -> Vec<u8> {
        dict(&[
            ("length", int(len)),
            ("path", list(&path.iter().map(|c| s(c)).collect::<Vec<_>>())),
        ])
    }
    /// A multi-file info dict with piece length 4 and the right number of pieces.
    fn multi(files: &[(i64, &[&str])]) -> Vec<u8> {
        let total: i64 = files.iter().map(|f| f.0.max(0)).sum();
        let n = (total as usize).div_ceil(4);
        let files: Vec<Vec<u8>> = files.iter().map(|(len, p)| file(*len, p)).collect();
        dict(&[
            ("files", list(&files)),
            ("name", s("top")),
            ("piece length", int(4)),
            ("pieces", pieces(n)),
        ])
    }
    fn single(name: &str, len: i64, piece_len: i64, n_pieces: usize) -> Vec<u8> {
        dict(&[
            ("length", int(len)),
            ("name", s(name)),
            ("piece length", int(piece_len)),
            ("pieces", pieces(n_pieces)),
        ])
    }
    fn sha1(bytes: &[u8]) -> InfoHash {
        InfoHash::of_info(bytes)
    }

    #[test]
    fn single_file_info() {
        let raw = single("movie.mkv", 10, 4, 3);
        let info = Info::from_bytes(&raw).unwrap();
        assert_eq!(info.name, "movie.mkv");
        assert!(info.single_file && !info.private);
        assert_eq!(info.piece_length, 4);
        assert_eq!(
            info.files,
            vec![FileEntry {
                path: vec!["movie.mkv".into()],
                length: 10,
                offset: 0,
                pad: false,
                executable: false,
                hidden: false,
            }]
        );
        assert_eq!(info.total_length(), 10);
        assert_eq!(info.num_pieces(), 3);
        assert_eq!(info.pieces[1], std::array::from_fn(|i| (20 + i) as u8));
        assert_eq!(
            (0..4).map(|i| info.piece_size(i)).collect::<Vec<_>>(),
            vec![Some(4), Some(4), Some(2), None]
        );
        assert_eq!(info.file_path_on_disk(0), Some(PathBuf::from("movie.mkv")));
        assert_eq!(info.file_path_on_disk(1), None);
    }

    #[test]
    fn last_piece_is_full_when_length_divides_evenly() {
        let info = Info::from_bytes(&single("x", 12, 4, 3)).unwrap();
        assert_eq!(info.piece_size(2), Some(4));
        assert_eq!(info.piece_size(3), None);
        let info = Info::from_bytes(&single("x", 1, 1 << 20, 1)).unwrap();
        assert_eq!(info.piece_size(0), Some(1));
    }

    #[test]
    fn multi_file_info_lays_files_end_to_end() {
        let raw = multi(&[(5, &["a", "b.txt"]), (0, &["empty"]), (6, &["c"])]);
        let info = Info::from_bytes(&raw).unwrap();
        assert!(!info.single_file);
        assert_eq!(info.name, "top");
        let layout: Vec<(u64, u64)> = info.files.iter().map(|f| (f.offset, f.length)).collect();
        assert_eq!(layout, vec![(0, 5), (5, 0), (5, 6)]);
        assert_eq!(info.total_length(), 11);
        assert_eq!(info.num_pieces(), 3);
        assert_eq!(info.piece_size(2), Some(3));
        assert_eq!(
            info.file_path_on_disk(0),
            Some(["top", "a", "b.txt"].iter().collect())
        );
        assert_eq!(
            info.file_path_on_disk(2),
            Some(["top", "c"].iter().collect())
        );
        assert_eq!(info.file_path_on_disk(3), None);
    }

    #[test]
    fn piece_spans_cross_file_boundaries() {
        let info = Info::from_bytes(&multi(&[(5, &["a"]), (0, &["e"]), (6, &["c"])])).unwrap();
        let span = |file, file_offset, length| FileSpan {
            file,
            file_offset,
            length,
        };
        assert_eq!(info.piece_spans(0), Some(vec![span(0, 0, 4)]));
        // Bytes 4..8: the last byte of `a`, nothing of the empty file, three of `c`.
        assert_eq!(
            info.piece_spans(1),
            Some(vec![span(0, 4, 1), span(2, 0, 3)])
        );
        assert_eq!(info.piece_spans(2), Some(vec![span(2, 3, 3)]));
        assert_eq!(info.piece_spans(3), None);
        for i in 0..info.num_pieces() {
            let covered: u64 = info.piece_spans(i).unwrap().iter().map(|s| s.length).sum();
            assert_eq!(Some(covered), info.piece_size(i));
        }
    }

    #[test]
    fn info_hash_is_taken_over_raw_bytes() {
        // Unsorted keys and an unknown key, as some creators write them.
        let raw = dict(&[
            ("pieces", pieces(1)),
            ("name", s("n")),
            ("x-unknown", dict(&[("zz", list(&[int(1), s("q")]))])),
            ("piece length", int(16384)),
            ("length", int(3)),
        ]);
        let torrent = dict(&[("info", raw.clone()), ("announce", s("http://t/a"))]);
        let meta = Metainfo::from_bytes(&torrent).unwrap();
        assert_eq!(meta.info_hash, sha1(&raw));
        assert_eq!(meta.info_bytes, raw);
        let value: Value = serde_bencode::from_bytes(&raw).unwrap();
        let reencoded = serde_bencode::to_bytes(&value).unwrap();
        assert_ne!(reencoded, raw, "re-encoding sorts the keys");
        assert_ne!(meta.info_hash, sha1(&reencoded));
        // Writing the torrent back keeps the bytes, hence the hash.
        let written = meta.to_bytes();
        let again = Metainfo::from_bytes(&written).unwrap();
        assert_eq!(again.info_hash, sha1(&raw));
        assert_eq!(again, meta);
    }

    #[test]
    fn metainfo_round_trip_with_all_optional_keys() {
        let raw = multi(&[(3, &["d", "f"]), (4, &["g"])]);
        let mut meta = Metainfo::from_info_bytes(&raw).unwrap();
        meta.announce = Some("udp://tracker.example:6969/announce".into());
        meta.announce_list = vec![
            vec!["udp://a".into(), "udp://b".into()],
            vec!["http://c".into()],
        ];
        meta.nodes = vec![("router.example".into(), 6881), ("10.0.0.1".into(), 1)];
        meta.comment = Some("a comment: é".into());
        meta.created_by = Some("trackerless".into());
        meta.creation_date = Some(1_700_000_000);
        let bytes = meta.to_bytes();
        bencode::validate(&bytes, MAX_DEPTH).unwrap();
        // Canonical: top-level keys strictly increasing.
        let Value::Dict(_) = serde_bencode::from_bytes::<Value>(&bytes).unwrap() else {
            panic!()
        };
        let keys = top_level_keys(&bytes);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(keys.len(), 7);
        assert_eq!(Metainfo::from_bytes(&bytes).unwrap(), meta);
    }

    /// Keys of the top-level dict in order of appearance.
    fn top_level_keys(buf: &[u8]) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut pos = 1;
        while buf[pos] != b'e' {
            let key_end = bencode::scan_value(buf, pos, MAX_DEPTH).unwrap();
            let colon = pos + buf[pos..].iter().position(|&b| b == b':').unwrap();
            keys.push(buf[colon + 1..key_end].to_vec());
            pos = bencode::scan_value(buf, key_end, MAX_DEPTH).unwrap();
        }
        keys
    }

    #[test]
    fn minimal_torrent_file_embeds_info_verbatim() {
        let raw = dict(&[
            ("name", s("z")),
            ("length", int(1)),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        let file = torrent_file_from_info(&raw);
        assert_eq!(file, [b"d4:info".as_slice(), &raw, b"e"].concat());
        let meta = Metainfo::from_bytes(&file).unwrap();
        assert_eq!(meta.info_hash, sha1(&raw));
        assert_eq!(meta.to_bytes(), file);
        assert!(meta.announce.is_none() && meta.nodes.is_empty());
    }

    #[test]
    fn optional_top_level_keys_are_read_leniently() {
        let info = single("x", 1, 1, 1);
        let torrent = dict(&[
            ("announce", int(5)),
            // A flat list of URLs instead of tiers, plus junk.
            (
                "announce-list",
                list(&[
                    s("udp://a"),
                    list(&[s("udp://b"), int(1)]),
                    list(&[]),
                    int(3),
                ]),
            ),
            ("comment", bs(b"caf\xe9")),
            ("created by", list(&[])),
            ("creation date", s("yesterday")),
            ("info", info.clone()),
            (
                "nodes",
                list(&[
                    list(&[s("1.2.3.4"), int(6881)]),
                    list(&[s("big.port"), int(70000)]),
                    list(&[s("zero.port"), int(0)]),
                    list(&[s(""), int(5)]),
                    list(&[int(1), int(2)]),
                    list(&[s("three"), int(1), int(2)]),
                    s("junk"),
                    list(&[s("router.example"), int(65535)]),
                ]),
            ),
            ("x-unknown-top", dict(&[("a", int(1))])),
        ]);
        let meta = Metainfo::from_bytes(&torrent).unwrap();
        assert_eq!(meta.announce, None);
        assert_eq!(
            meta.announce_list,
            vec![vec!["udp://a".to_string()], vec!["udp://b".to_string()]]
        );
        assert_eq!(meta.comment.as_deref(), Some("caf\u{FFFD}"));
        assert_eq!(meta.created_by, None);
        assert_eq!(meta.creation_date, None);
        assert_eq!(
            meta.nodes,
            vec![
                ("1.2.3.4".to_string(), 6881),
                ("router.example".to_string(), 65535)
            ]
        );
        assert_eq!(meta.info_hash, sha1(&info));
    }

    #[test]
    fn private_flag() {
        let with = |p: i64| {
            dict(&[
                ("length", int(1)),
                ("name", s("x")),
                ("piece length", int(1)),
                ("pieces", pieces(1)),
                ("private", int(p)),
            ])
        };
        assert!(Info::from_bytes(&with(1)).unwrap().private);
        assert!(!Info::from_bytes(&with(0)).unwrap().private);
        assert!(!Info::from_bytes(&single("x", 1, 1, 1)).unwrap().private);
    }

    #[test]
    fn unsafe_components_are_named() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (".", "`.`"),
            ("..", "`..`"),
            ("...", "`..`"),
            (".. ", "`..`"),
            ("a/b", "separator"),
            ("/etc", "separator"),
            ("a\\b", "separator"),
            ("\\\\server", "separator"),
            ("a\0b", "NUL"),
            ("C:", "drive"),
            ("c:evil", "drive"),
        ];
        for (component, reason) in cases {
            let got = unsafe_component_reason(component);
            assert!(
                got.is_some_and(|r| r.contains(reason)),
                "{component:?}: {got:?}"
            );
        }
        for fine in [
            "a",
            ".hidden",
            "a..b",
            "x.",
            "C",
            "1:2",
            "movie: the sequel",
            "é",
            " a",
            "..a",
        ] {
            assert_eq!(unsafe_component_reason(fine), None, "{fine:?}");
        }
    }

    #[test]
    fn path_traversal_in_files_is_refused() {
        let bad: &[&[&str]] = &[
            &["..", "etc", "passwd"],
            &["a", "..", "..", "b"],
            &["/etc/passwd"],
            &["", "x"],
            &["a", ""],
            &[".", "x"],
            &["a\\..\\..\\b"],
            &["a\0.txt"],
            &["C:", "Windows"],
            &["C:\\Windows"],
            &[],
        ];
        for path in bad {
            let raw = multi(&[(1, &["ok"]), (3, path)]);
            match Info::from_bytes(&raw) {
                Err(MetainfoError::UnsafePath { path: got, reason }) => {
                    assert_eq!(got, path.iter().map(|c| c.to_string()).collect::<Vec<_>>());
                    let msg = Info::from_bytes(&raw).unwrap_err().to_string();
                    assert!(
                        msg.contains(reason) && msg.contains("unsafe file path"),
                        "{msg}"
                    );
                }
                other => panic!("{path:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["..", ".", "", "/abs", "a/b", "a\\b", "n\0", "D:x"] {
            match Info::from_bytes(&single(name, 1, 1, 1)) {
                Err(MetainfoError::UnsafeName { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name:?} gave {other:?}"),
            }
            let multi_named = dict(&[
                ("files", list(&[file(1, &["f"])])),
                ("name", s(name)),
                ("piece length", int(1)),
                ("pieces", pieces(1)),
            ]);
            assert!(matches!(
                Info::from_bytes(&multi_named),
                Err(MetainfoError::UnsafeName { .. })
            ));
        }
        let msg = Info::from_bytes(&single("..", 1, 1, 1))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"..\""), "{msg}");
    }

    fn attr_file(len: i64, path: &[&str], attr: &str) -> Vec<u8> {
        dict(&[
            ("attr", s(attr)),
            ("length", int(len)),
            ("path", list(&path.iter().map(|c| s(c)).collect::<Vec<_>>())),
        ])
    }

    fn multi_raw(files: &[Vec<u8>], total: usize, extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut pairs = vec![
            ("files", list(files)),
            ("name", s("top")),
            ("piece length", int(4)),
            ("pieces", pieces(total.div_ceil(4))),
        ];
        pairs.extend(extra.iter().cloned());
        dict(&pairs)
    }

    #[test]
    fn bep47_pad_files_may_share_a_path_and_attrs_are_read() {
        // libtorrent names every pad file `.pad/<size>`, so equal sizes repeat a path.
        let raw = multi_raw(
            &[
                attr_file(3, &["run.sh"], "x"),
                attr_file(1, &[".pad", "1"], "p"),
                attr_file(3, &[".hidden"], "h"),
                attr_file(1, &[".pad", "1"], "p"),
                // Old creators mark pads only by the path.
                file(4, &[".pad", "4"]),
                file(4, &[".pad", "4"]),
                attr_file(2, &["z"], "qz"),
            ],
            18,
            &[],
        );
        let info = Info::from_bytes(&raw).unwrap();
        let flags: Vec<(bool, bool, bool)> = info
            .files
            .iter()
            .map(|f| (f.pad, f.executable, f.hidden))
            .collect();
        assert_eq!(
            flags,
            [
                (false, true, false),
                (true, false, false),
                (false, false, true),
                (true, false, false),
                (true, false, false),
                (true, false, false),
                (false, false, false),
            ]
        );
        assert!(!info.hybrid);
        // Real files still may not repeat a path, nor collide with a pad's.
        let dup = multi_raw(&[attr_file(1, &["a"], "x"), file(1, &["a"])], 2, &[]);
        assert!(matches!(
            Info::from_bytes(&dup),
            Err(MetainfoError::DuplicatePath(_))
        ));
    }

    #[test]
    fn symlinks_and_v2_only_dicts_are_refused_clearly() {
        let link = multi_raw(&[attr_file(1, &["l"], "l")], 1, &[]);
        let err = Info::from_bytes(&link).unwrap_err();
        assert!(matches!(&err, MetainfoError::Symlink(p) if p == &["l"]));
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let single_link = dict(&[
            ("attr", s("l")),
            ("length", int(1)),
            ("name", s("f")),
            ("piece length", int(4)),
            ("pieces", pieces(1)),
        ]);
        assert!(matches!(
            Info::from_bytes(&single_link),
            Err(MetainfoError::Symlink(_))
        ));
        let v2_only = dict(&[
            ("file tree", dict(&[])),
            ("meta version", int(2)),
            ("name", s("f")),
            ("piece length", int(16384)),
        ]);
        let err = Info::from_bytes(&v2_only).unwrap_err();
        assert_eq!(err.to_string(), "v2-only torrents are not supported yet");
    }

    #[test]
    fn hybrid_keys_survive_in_what_we_serve_and_write() {
        let tree = dict(&[("a", dict(&[("", dict(&[("length", int(3))]))]))]);
        let raw = multi_raw(
            &[file(3, &["a"])],
            3,
            &[("file tree", tree.clone()), ("meta version", int(2))],
        );
        let layers = dict(&[("x", s("y"))]);
        let torrent = dict(&[("info", raw.clone()), ("piece layers", layers.clone())]);
        let meta = Metainfo::from_bytes(&torrent).unwrap();
        assert!(meta.info.hybrid);
        assert_eq!(meta.info_bytes, raw);
        assert_eq!(meta.piece_layers.as_deref(), Some(&layers[..]));
        let written = meta.to_bytes();
        assert_eq!(written, torrent);
        assert_eq!(Metainfo::from_bytes(&written).unwrap(), meta);
    }

    #[test]
    fn duplicate_and_conflicting_paths_are_refused() {
        let dup = multi(&[(1, &["a", "b"]), (1, &["a", "b"])]);
        assert!(
            matches!(Info::from_bytes(&dup), Err(MetainfoError::DuplicatePath(p)) if p == ["a", "b"])
        );
        let conflict = multi(&[(1, &["a", "b", "c"]), (1, &["a", "b"])]);
        match Info::from_bytes(&conflict) {
            Err(MetainfoError::PathConflict { file, other }) => {
                assert_eq!(file, ["a", "b"]);
                assert_eq!(other, ["a", "b", "c"]);
            }
            other => panic!("{other:?}"),
        }
        // Conflicts are found in either order and at any depth.
        let conflict = multi(&[(1, &["a", "b"]), (1, &["x"]), (1, &["a", "b", "c", "d"])]);
        match Info::from_bytes(&conflict) {
            Err(MetainfoError::PathConflict { file, other }) => {
                assert_eq!(file, ["a", "b"]);
                assert_eq!(other, ["a", "b", "c", "d"]);
            }
            other => panic!("{other:?}"),
        }
        let conflict = multi(&[(1, &["d", "e"]), (1, &["d"])]);
        assert!(matches!(
            Info::from_bytes(&conflict),
            Err(MetainfoError::PathConflict { .. })
        ));
        // A directory and a file of the same name in different parents do not conflict.
        assert!(
            Info::from_bytes(&multi(&[
                (1, &["a", "b", "c"]),
                (1, &["b"]),
                (1, &["c", "a"])
            ]))
            .is_ok()
        );
        // Same leaf name in different directories is fine.
        assert!(
            Info::from_bytes(&multi(&[(1, &["a", "x"]), (1, &["b", "x"]), (1, &["x"])])).is_ok()
        );
    }

    #[test]
    fn deep_paths_are_checked_in_linear_time() {
        // Two files 200k components deep sharing every directory; a prefix-by-prefix
        // comparison would do ~10^10 component comparisons.
        let deep: Vec<Vec<u8>> = (0..200_000).map(|_| s("d")).collect();
        let mut first = deep.clone();
        first.push(s("x"));
        let mut second = deep;
        second.push(s("y"));
        let raw = dict(&[
            (
                "files",
                list(&[
                    dict(&[("length", int(1)), ("path", list(&first))]),
                    dict(&[("length", int(1)), ("path", list(&second))]),
                ]),
            ),
            ("name", s("n")),
            ("piece length", int(2)),
            ("pieces", pieces(1)),
        ]);
        let started = std::time::Instant::now();
        assert_eq!(Info::from_bytes(&raw).unwrap().files[1].path.len(), 200_001);
        // clock-ok: a complexity check, not a speed test: linear parsing takes milliseconds,
        // a quadratic one minutes; 5 s sits three orders of magnitude from both.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn piece_table_is_checked() {
        let odd = dict(&[
            ("length", int(1)),
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", bs(&[0; 21])),
        ]);
        assert!(matches!(
            Info::from_bytes(&odd),
            Err(MetainfoError::PiecesNotMultipleOf20(21))
        ));
        assert!(matches!(
            Info::from_bytes(&single("x", 10, 4, 2)),
            Err(MetainfoError::PieceCountMismatch {
                expected: 3,
                actual: 2
            })
        ));
        assert!(matches!(
            Info::from_bytes(&single("x", 8, 4, 3)),
            Err(MetainfoError::PieceCountMismatch {
                expected: 2,
                actual: 3
            })
        ));
        let msg = Info::from_bytes(&odd).unwrap_err().to_string();
        assert!(msg.contains("21") && msg.contains("20"), "{msg}");
    }

    #[test]
    fn piece_length_is_checked() {
        for bad in [0, -1, i64::MIN, (MAX_PIECE_LENGTH + 1) as i64, i64::MAX] {
            assert!(
                matches!(Info::from_bytes(&single("x", 1, bad, 1)), Err(MetainfoError::BadPieceLength(n)) if n == bad),
                "{bad}"
            );
        }
        let max = MAX_PIECE_LENGTH as i64;
        assert_eq!(
            Info::from_bytes(&single("x", max + 1, max, 2))
                .unwrap()
                .piece_size(1),
            Some(1)
        );
        // Not a power of two: allowed.
        assert!(Info::from_bytes(&single("x", 10, 3, 4)).is_ok());
    }

    #[test]
    fn length_and_files_are_exclusive() {
        let both = dict(&[
            ("files", list(&[file(1, &["a"])])),
            ("length", int(1)),
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert!(matches!(
            Info::from_bytes(&both),
            Err(MetainfoError::BothLengthAndFiles)
        ));
        let neither = dict(&[
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert!(matches!(
            Info::from_bytes(&neither),
            Err(MetainfoError::NeitherLengthNorFiles)
        ));
        let empty = dict(&[
            ("files", list(&[])),
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", pieces(0)),
        ]);
        assert!(matches!(
            Info::from_bytes(&empty),
            Err(MetainfoError::NoFiles)
        ));
    }

    #[test]
    fn lengths_are_checked() {
        assert!(matches!(
            Info::from_bytes(&single("x", -5, 1, 0)),
            Err(MetainfoError::NegativeLength { length: -5, .. })
        ));
        match Info::from_bytes(&multi(&[(2, &["a"]), (-1, &["b", "c"])])) {
            Err(e @ MetainfoError::NegativeLength { .. }) => {
                assert!(e.to_string().contains("[\"b\", \"c\"]"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Info::from_bytes(&single("x", 0, 1, 0)),
            Err(MetainfoError::EmptyTorrent)
        ));
        assert!(matches!(
            Info::from_bytes(&multi(&[(0, &["a"]), (0, &["b"])])),
            Err(MetainfoError::EmptyTorrent)
        ));
        let huge = dict(&[
            (
                "files",
                list(&[
                    file(i64::MAX, &["a"]),
                    file(i64::MAX, &["b"]),
                    file(i64::MAX, &["c"]),
                ]),
            ),
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert!(matches!(
            Info::from_bytes(&huge),
            Err(MetainfoError::TotalLengthOverflow)
        ));
        // A claimed length far beyond the piece table is a count mismatch, not an allocation.
        assert!(matches!(
            Info::from_bytes(&single("x", i64::MAX, 1 << 20, 1)),
            Err(MetainfoError::PieceCountMismatch { actual: 1, .. })
        ));
    }

    #[test]
    fn missing_and_mistyped_keys_are_named() {
        let no_name = dict(&[
            ("length", int(1)),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert_eq!(
            Info::from_bytes(&no_name).unwrap_err().to_string(),
            "info dict has no `name`"
        );
        let no_pl = dict(&[("length", int(1)), ("name", s("x")), ("pieces", pieces(1))]);
        assert_eq!(
            Info::from_bytes(&no_pl).unwrap_err().to_string(),
            "info dict has no `piece length`"
        );
        let no_pieces = dict(&[
            ("length", int(1)),
            ("name", s("x")),
            ("piece length", int(1)),
        ]);
        assert_eq!(
            Info::from_bytes(&no_pieces).unwrap_err().to_string(),
            "info dict has no `pieces`"
        );
        let no_len = dict(&[
            (
                "files",
                list(&[file(1, &["a"]), dict(&[("path", list(&[s("b")]))])]),
            ),
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert_eq!(
            Info::from_bytes(&no_len).unwrap_err().to_string(),
            "info dict has no `files[1].length`"
        );
        let no_path = dict(&[
            ("files", list(&[dict(&[("length", int(1))])])),
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert_eq!(
            Info::from_bytes(&no_path).unwrap_err().to_string(),
            "info dict has no `files[0].path`"
        );

        let wrong_type = dict(&[
            (
                "files",
                list(&[
                    file(1, &["a"]),
                    dict(&[("length", s("big")), ("path", list(&[s("b")]))]),
                ]),
            ),
            ("name", s("x")),
            ("piece length", int(1)),
            ("pieces", pieces(2)),
        ]);
        let msg = Info::from_bytes(&wrong_type).unwrap_err().to_string();
        assert!(
            msg.starts_with("invalid info dict: at `files[1].length`:"),
            "{msg}"
        );
        let wrong_pl = dict(&[
            ("length", int(1)),
            ("name", s("x")),
            ("piece length", s("1")),
            ("pieces", pieces(1)),
        ]);
        let msg = Info::from_bytes(&wrong_pl).unwrap_err().to_string();
        assert!(msg.contains("`piece length`"), "{msg}");
        let dup = dict(&[
            ("length", int(1)),
            ("name", s("x")),
            ("name", s("y")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        let msg = Info::from_bytes(&dup).unwrap_err().to_string();
        assert!(msg.contains("uplicate") && msg.contains("name"), "{msg}");
    }

    #[test]
    fn non_utf8_names_fall_back_to_utf8_variants() {
        let latin1 = dict(&[
            ("length", int(1)),
            ("name", bs(b"caf\xe9")),
            ("name.utf-8", s("café")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert_eq!(Info::from_bytes(&latin1).unwrap().name, "café");
        let no_fallback = dict(&[
            ("length", int(1)),
            ("name", bs(b"caf\xe9")),
            ("piece length", int(1)),
            ("pieces", pieces(1)),
        ]);
        assert_eq!(
            Info::from_bytes(&no_fallback).unwrap_err().to_string(),
            "name is not valid UTF-8"
        );

        let file_with = |fallback: Option<Vec<u8>>| {
            let mut entry = vec![("length", int(1)), ("path", list(&[s("dir"), bs(b"\xff")]))];
            if let Some(f) = fallback {
                entry.push(("path.utf-8", f));
            }
            dict(&[
                ("files", list(&[dict(&entry)])),
                ("name", s("x")),
                ("piece length", int(1)),
                ("pieces", pieces(1)),
            ])
        };
        let info = Info::from_bytes(&file_with(Some(list(&[s("dir"), s("ÿ")])))).unwrap();
        assert_eq!(info.files[0].path, ["dir", "ÿ"]);
        assert_eq!(
            Info::from_bytes(&file_with(None)).unwrap_err().to_string(),
            "files[0].path is not valid UTF-8"
        );
        assert!(matches!(
            Info::from_bytes(&file_with(Some(int(3)))),
            Err(MetainfoError::NotUtf8(_))
        ));
        // The fallback is checked like any path.
        assert!(matches!(
            Info::from_bytes(&file_with(Some(list(&[s("..")])))),
            Err(MetainfoError::UnsafePath { .. })
        ));
    }

    #[test]
    fn structural_garbage_is_an_error_not_a_panic() {
        let info = single("x", 1, 1, 1);
        let mut bomb = b"d4:info".to_vec();
        bomb.extend(std::iter::repeat_n(b'l', 50_000));
        bomb.extend(std::iter::repeat_n(b'e', 50_001));
        assert!(matches!(
            Metainfo::from_bytes(&bomb),
            Err(MetainfoError::Bencode(ScanError::TooDeep(_)))
        ));
        let mut info_bomb = info[..info.len() - 1].to_vec();
        info_bomb.extend(s("deep"));
        info_bomb.extend(std::iter::repeat_n(b'l', 50_000));
        info_bomb.extend(std::iter::repeat_n(b'e', 50_001));
        assert!(matches!(
            Info::from_bytes(&info_bomb),
            Err(MetainfoError::Bencode(ScanError::TooDeep(_)))
        ));

        let mut trailing = torrent_file_from_info(&info);
        trailing.extend_from_slice(b"garbage");
        assert!(matches!(
            Metainfo::from_bytes(&trailing),
            Err(MetainfoError::Bencode(ScanError::Trailing(_)))
        ));
        assert!(matches!(
            Info::from_bytes(&[info.as_slice(), b"i1e"].concat()),
            Err(MetainfoError::Bencode(ScanError::Trailing(_)))
        ));
        let truncated = &torrent_file_from_info(&info)[..20];
        assert!(matches!(
            Metainfo::from_bytes(truncated),
            Err(MetainfoError::Bencode(_))
        ));
        assert!(matches!(
            Metainfo::from_bytes(b""),
            Err(MetainfoError::Bencode(_))
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"99999999999:x"),
            Err(MetainfoError::Bencode(_))
        ));

        assert!(matches!(
            Metainfo::from_bytes(b"li1ee"),
            Err(MetainfoError::NotADict("torrent"))
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"d4:infoi1ee"),
            Err(MetainfoError::NotADict("info"))
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"d4:infol1:xee"),
            Err(MetainfoError::NotADict("info"))
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"d8:announce1:xe"),
            Err(MetainfoError::MissingInfo)
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"de"),
            Err(MetainfoError::MissingInfo)
        ));
        let two_infos = dict(&[("info", info.clone()), ("info", single("y", 1, 1, 1))]);
        let msg = Metainfo::from_bytes(&two_infos).unwrap_err().to_string();
        assert!(msg.contains("uplicate") && msg.contains("info"), "{msg}");
    }

    #[test]
    fn every_truncation_and_byte_flip_is_handled() {
        let raw = dict(&[
            ("files", list(&[file(3, &["d", "f"]), file(5, &["g"])])),
            ("name", s("top")),
            ("piece length", int(4)),
            ("pieces", pieces(2)),
        ]);
        let torrent = torrent_file_from_info(&raw);
        for cut in 0..torrent.len() {
            assert!(
                Metainfo::from_bytes(&torrent[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // Flipping bytes must never panic; most flips are errors, some are still valid.
        for pos in 0..torrent.len() {
            for replacement in [b'0', b'9', b'e', b'i', b'l', b'd', b':', b'-', 0xff] {
                let mut mutated = torrent.clone();
                mutated[pos] = replacement;
                let _ = Metainfo::from_bytes(&mutated);
            }
        }
    }

    #[test]
    fn writer_sorts_keys_canonically() {
        // create_info relies on serde_bencode sorting struct fields by key bytes; the struct
        // declares them sorted, so check with a file list whose inner keys would also need it.
        let files = [
            vec!["b".to_string()],
            vec!["a".to_string(), "c".to_string()],
        ];
        let write = WriteInfo {
            files: Some(
                files
                    .iter()
                    .map(|p| WriteFile { length: 7, path: p })
                    .collect(),
            ),
            length: None,
            name: "n",
            piece_length: 16384,
            pieces: &[1; 20],
        };
        let bytes = serde_bencode::to_bytes(&write).unwrap();
        let want = [
            b"d5:filesld6:lengthi7e4:pathl1:bee" as &[u8],
            b"d6:lengthi7e4:pathl1:a1:ceee",
            b"4:name1:n12:piece lengthi16384e6:pieces20:",
            &[1; 20],
            b"e",
        ]
        .concat();
        assert_eq!(bytes, want);
        // A struct declared out of order still comes out sorted.
        #[derive(Serialize)]
        struct Unsorted {
            z: u8,
            a: u8,
            #[serde(rename = "piece length")]
            p: u8,
        }
        assert_eq!(
            serde_bencode::to_bytes(&Unsorted { z: 1, a: 2, p: 3 }).unwrap(),
            b"d1:ai2e12:piece lengthi3e1:zi1ee"
        );
    }

    #[test]
    fn default_piece_length_targets_a_bounded_piece_count() {
        assert_eq!(default_piece_length(1), MIN_AUTO_PIECE_LENGTH);
        assert_eq!(
            default_piece_length(2000 * MIN_AUTO_PIECE_LENGTH),
            MIN_AUTO_PIECE_LENGTH
        );
        assert_eq!(
            default_piece_length(2000 * MIN_AUTO_PIECE_LENGTH + 1),
            2 * MIN_AUTO_PIECE_LENGTH
        );
        assert_eq!(default_piece_length(u64::MAX), MAX_AUTO_PIECE_LENGTH);
        for total in [1u64 << 30, 700 << 20, 4_700_000_000, 123_456_789] {
            let p = default_piece_length(total);
            assert!(p.is_power_of_two());
            let n = total.div_ceil(p);
            assert!((1000..=2000).contains(&n), "{total}: {p} gives {n} pieces");
        }
    }

    #[test]
    fn errors_display_and_chain() {
        let io = MetainfoError::Io {
            path: "/x/y".into(),
            source: io::Error::other("boom"),
        };
        assert_eq!(io.to_string(), "/x/y: boom");
        assert!(std::error::Error::source(&io).is_some());
        let e: MetainfoError = ScanError::Trailing(3).into();
        assert_eq!(
            e.to_string(),
            "malformed bencode: trailing bytes after offset 3"
        );
    }
}
