//! The resume record: which pieces of a download are verified, kept in sled under the data
//! directory so that a download stopped by Ctrl-C or a crash continues where it was.
//!
//! One record per info hash holds the download directory, the verified-pieces bitfield and
//! the size and modification time of every file when the record was written. On start a
//! recorded piece is trusted without reading it if every file it touches still has the
//! recorded size and time (a clean stop writes the record after the last write, so this is
//! the usual case); a piece in a file that changed since (a crash after the last save, or
//! someone editing the file) is hashed again. The record is written in batches — every few
//! seconds while pieces complete, on completion and on stop — never per block.
//!
//! The info dict of a magnet download is stored too, so a restart does not have to fetch
//! the metadata from peers again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::bitfield::Bitfield;
use super::storage::FileStamp;
use crate::torrent::InfoHash;
use crate::util::sled_open::{self, SledError};

const RECORD_VERSION: u32 = 1;

/// A sled database of resume records.
#[derive(Clone)]
pub struct ResumeStore {
    path: PathBuf,
    db: sled::Db,
}

/// Why the resume store failed. A download without it still works; it just cannot resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeError {
    /// The store could not be opened (held by another process, unreadable, no access).
    Open(SledError),
    /// A record could not be written or flushed.
    Write {
        /// The store's directory.
        path: PathBuf,
        /// What sled or the operating system said.
        detail: String,
    },
}

impl std::fmt::Display for ResumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeError::Open(SledError::Locked { path }) => write!(
                f,
                "the resume store at {} is in use (is another dht-get or dht-seed running with \
                 this data directory? stop it or pass a different --data-dir)",
                path.display()
            ),
            ResumeError::Open(SledError::Corrupt { path, detail }) => write!(
                f,
                "the resume store at {} is unreadable ({detail}); it only records which pieces \
                 were verified, so move it aside to re-check downloads from scratch, or pass a \
                 different --data-dir",
                path.display()
            ),
            ResumeError::Open(SledError::Io { path, detail }) => write!(
                f,
                "cannot use the resume store at {}: {detail} (check permissions and free space)",
                path.display()
            ),
            ResumeError::Write { path, detail } => write!(
                f,
                "cannot save to the resume store at {}: {detail}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ResumeError {}

impl std::fmt::Debug for ResumeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeStore")
    }
}

/// What was recorded for one download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRecord {
    /// The download directory the record is about.
    pub dir: PathBuf,
    /// The pieces verified when the record was written.
    pub verified: Bitfield,
    /// Size and modification time of each file (torrent order) when the record was
    /// written; a piece is trusted without hashing only if its files still match.
    pub stamps: Vec<FileStamp>,
}

#[derive(Serialize, Deserialize)]
struct Raw {
    v: u32,
    dir: ByteBuf,
    pieces: u64,
    have: ByteBuf,
    /// Per file: length, mtime in ns.
    files: Vec<(u64, i64)>,
}

/// `rec/` and the 20 raw info-hash bytes: the key layout of every store already on disk,
/// so it must not change with the type that carries the hash.
fn record_key(ih: &InfoHash) -> Vec<u8> {
    let mut k = b"rec/".to_vec();
    k.extend_from_slice(ih.as_bytes());
    k
}

/// `info/` and the 20 raw info-hash bytes (see [`record_key`]).
fn info_key(ih: &InfoHash) -> Vec<u8> {
    let mut k = b"info/".to_vec();
    k.extend_from_slice(ih.as_bytes());
    k
}

impl ResumeStore {
    /// Opens (or creates) the store in `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<ResumeStore, ResumeError> {
        let db = sled_open::open(dir, sled::Config::new().cache_capacity(4 << 20))
            .map_err(ResumeError::Open)?;
        Ok(ResumeStore {
            path: dir.to_path_buf(),
            db,
        })
    }

    fn write_error(&self, e: impl std::fmt::Display) -> ResumeError {
        ResumeError::Write {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// The record for `ih`, if one is stored and readable for a torrent of `pieces` pieces
    /// and `files` files (anything else is treated as absent: it describes another layout).
    pub fn load(&self, ih: &InfoHash, pieces: usize, files: usize) -> Option<ResumeRecord> {
        let raw = self.db.get(record_key(ih)).ok()??;
        let r: Raw = serde_bencode::from_bytes(&raw).ok()?;
        if r.v != RECORD_VERSION || r.pieces != pieces as u64 || r.files.len() != files {
            return None;
        }
        Some(ResumeRecord {
            dir: path_from_bytes(&r.dir),
            verified: Bitfield::from_bytes_lossy(&r.have, pieces),
            stamps: r
                .files
                .iter()
                .map(|&(len, mtime_ns)| FileStamp { len, mtime_ns })
                .collect(),
        })
    }

    /// Stores the record for `ih` and flushes it to disk.
    pub fn save(&self, ih: &InfoHash, rec: &ResumeRecord) -> Result<(), ResumeError> {
        let raw = Raw {
            v: RECORD_VERSION,
            dir: ByteBuf::from(path_bytes(&rec.dir)),
            pieces: rec.verified.len() as u64,
            have: ByteBuf::from(rec.verified.as_bytes().to_vec()),
            files: rec.stamps.iter().map(|s| (s.len, s.mtime_ns)).collect(),
        };
        let bytes = serde_bencode::to_bytes(&raw).map_err(|e| self.write_error(e))?;
        self.db
            .insert(record_key(ih), bytes)
            .map_err(|e| self.write_error(e))?;
        self.db.flush().map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// Forgets `ih` (record and info dict).
    pub fn remove(&self, ih: &InfoHash) -> Result<(), ResumeError> {
        let r = self
            .db
            .remove(record_key(ih))
            .and(self.db.remove(info_key(ih)));
        r.map(drop).map_err(|e| self.write_error(e))
    }

    /// The info dict stored for `ih` (the caller checks its hash).
    pub fn load_info(&self, ih: &InfoHash) -> Option<Vec<u8>> {
        self.db.get(info_key(ih)).ok()?.map(|v| v.to_vec())
    }

    /// Keeps the info dict of `ih`, so a restart needs no metadata fetch.
    pub fn save_info(&self, ih: &InfoHash, info: &[u8]) -> Result<(), ResumeError> {
        self.db
            .insert(info_key(ih), info)
            .and_then(|_| self.db.flush().map(drop))
            .map_err(|e| self.write_error(e))
    }
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

fn path_from_bytes(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

/// What the start-up check should do with each piece, given the record (if any), the files'
/// current stamps, which file each piece touches, and which files existed before we opened
/// the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPlan {
    /// Trusted as verified without reading.
    pub trusted: Bitfield,
    /// To hash before use.
    pub check: Vec<u32>,
}

/// Decides [`StartPlan`]: with a record for this directory, recorded pieces whose files are
/// unchanged are trusted and other recorded pieces are checked; without one, pieces lying
/// entirely in files that already existed at full length are checked (someone may have put
/// the data there), everything else is missing.
pub fn plan_start(
    record: Option<&ResumeRecord>,
    dir: &Path,
    current: &[FileStamp],
    piece_files: impl Fn(u32) -> Vec<usize>,
    preexisting: impl Fn(usize) -> bool,
    pieces: usize,
) -> StartPlan {
    let mut trusted = Bitfield::new(pieces);
    let mut check = Vec::new();
    match record.filter(|r| r.dir == dir && r.stamps.len() == current.len()) {
        Some(rec) => {
            let unchanged: Vec<bool> = rec
                .stamps
                .iter()
                .zip(current)
                .map(|(a, b)| a == b)
                .collect();
            for p in rec.verified.ones() {
                let files = piece_files(p as u32);
                if files.iter().all(|&f| unchanged[f]) {
                    trusted.set(p);
                } else {
                    check.push(p as u32);
                }
            }
        }
        None => {
            for p in 0..pieces as u32 {
                let files = piece_files(p);
                if !files.is_empty() && files.iter().all(|&f| preexisting(f)) {
                    check.push(p);
                }
            }
        }
    }
    StartPlan { trusted, check }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(len: u64, mtime_ns: i64) -> FileStamp {
        FileStamp { len, mtime_ns }
    }

    /// A store held by another handle is a typed error whose message says what to do.
    #[test]
    fn a_held_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let first = ResumeStore::open(dir.path()).unwrap();
        let e = ResumeStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(e, ResumeError::Open(SledError::Locked { .. })),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("in use") && msg.contains("--data-dir"),
            "{msg}"
        );
        drop(first);
        assert!(ResumeStore::open(dir.path()).is_ok());
    }

    #[test]
    fn records_round_trip_and_wrong_shapes_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResumeStore::open(&dir.path().join("resume")).unwrap();
        let ih = InfoHash([7u8; 20]);
        assert!(store.load(&ih, 10, 1).is_none());
        let mut have = Bitfield::new(10);
        have.set(3);
        have.set(9);
        let rec = ResumeRecord {
            dir: PathBuf::from("/tmp/somewhere"),
            verified: have,
            stamps: vec![st(100, 5)],
        };
        store.save(&ih, &rec).unwrap();
        assert_eq!(store.load(&ih, 10, 1), Some(rec));
        assert!(store.load(&ih, 11, 1).is_none());
        assert!(store.load(&ih, 10, 2).is_none());
        store.save_info(&ih, b"d4:infoe").unwrap();
        assert_eq!(store.load_info(&ih).unwrap(), b"d4:infoe");
        store.remove(&ih).unwrap();
        assert!(store.load(&ih, 10, 1).is_none() && store.load_info(&ih).is_none());
    }

    /// The on-disk layout is pinned byte for byte: a store written before info hashes had a
    /// type of their own (keys `rec/` or `info/` plus the 20 raw bytes, a bencoded record)
    /// must still load, and new writes must land under the same keys.
    #[test]
    fn stored_keys_and_records_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResumeStore::open(&dir.path().join("resume")).unwrap();
        let raw = [0x11u8; 20];
        let rec_key = [b"rec/".as_slice(), &raw].concat();
        let info_key = [b"info/".as_slice(), &raw].concat();
        let old_record = b"d3:dir2:/d5:fileslli5ei7eee4:have1:\x816:piecesi8e1:vi1ee";
        store.db.insert(&rec_key, old_record.as_slice()).unwrap();
        store.db.insert(&info_key, b"d4:infoe".as_slice()).unwrap();
        let ih = InfoHash(raw);
        let want = ResumeRecord {
            dir: PathBuf::from("/d"),
            verified: Bitfield::from_bytes_lossy(&[0x81], 8),
            stamps: vec![st(5, 7)],
        };
        assert_eq!(store.load(&ih, 8, 1), Some(want.clone()));
        assert_eq!(store.load_info(&ih).unwrap(), b"d4:infoe");
        // Writing it back gives the same bytes under the same key, and nothing else.
        store.db.clear().unwrap();
        store.save(&ih, &want).unwrap();
        store.save_info(&ih, b"d4:infoe").unwrap();
        assert_eq!(&*store.db.get(&rec_key).unwrap().unwrap(), old_record);
        assert_eq!(&*store.db.get(&info_key).unwrap().unwrap(), b"d4:infoe");
        assert_eq!(store.db.len(), 2);
    }

    #[test]
    fn start_plan_trusts_unchanged_files_only() {
        let dir = Path::new("/dl");
        // 4 pieces: 0,1 in file 0; 2 spans files 0 and 1; 3 in file 1.
        let files = |p: u32| match p {
            0 | 1 => vec![0],
            2 => vec![0, 1],
            _ => vec![1],
        };
        let mut have = Bitfield::new(4);
        for p in [0, 2, 3] {
            have.set(p);
        }
        let rec = ResumeRecord {
            dir: dir.to_path_buf(),
            verified: have,
            stamps: vec![st(10, 1), st(10, 2)],
        };
        // Nothing changed: trust 0, 2, 3.
        let plan = plan_start(Some(&rec), dir, &[st(10, 1), st(10, 2)], files, |_| true, 4);
        assert_eq!(plan.trusted.ones().collect::<Vec<_>>(), [0, 2, 3]);
        assert!(plan.check.is_empty());
        // File 1 was written after the record (a crash): pieces 2 and 3 are checked.
        let plan = plan_start(Some(&rec), dir, &[st(10, 1), st(10, 9)], files, |_| true, 4);
        assert_eq!(plan.trusted.ones().collect::<Vec<_>>(), [0]);
        assert_eq!(plan.check, [2, 3]);
        // A record for another directory is no record: pre-existing files are checked.
        let plan = plan_start(
            Some(&rec),
            Path::new("/other"),
            &[st(10, 1), st(10, 2)],
            files,
            |f| f == 0,
            4,
        );
        assert_eq!(plan.trusted.count(), 0);
        assert_eq!(plan.check, [0, 1]);
    }
}
