//! The torrent's files on disk: layout, sparse pre-allocation, positional block I/O and
//! piece hashing, all on a few dedicated disk threads so the async reactor never blocks on
//! the file system or SHA-1.
//!
//! The torrent's bytes are the concatenation of its files; a block or piece may span
//! several files (and skip zero-length ones). Blocks are written to disk as they arrive
//! (so memory does not grow with the piece length or the number of partial pieces) and
//! hashed on the way: a disk thread keeps a running SHA-1 per piece and feeds it each block
//! that continues the hashed prefix, which is the usual case because blocks of a piece are
//! requested in order. Verifying a fully received piece then only reads back the part that
//! arrived out of order (from the page cache).
//!
//! Contiguous blocks are written together: a disk thread holds runs of consecutive blocks
//! (up to [`MERGE_MAX`]) and writes each with one `pwritev` when the run is full, broken,
//! needed (its piece is verified or read, a flush), or when no job has come for
//! [`MERGE_WAIT`]. Buffered writes cost the kernel much less per byte in large chunks (a
//! 16 KiB `pwrite` costs about twice as much per byte as a 256 KiB one on ext4), and the
//! short wait means progress never depends on more blocks arriving.
//!
//! Jobs are sharded over the threads by piece index, so all jobs of one piece run in
//! submission order on one thread: a piece's writes are done before its verification.
//! Results (verifications, errors) come back on a channel the session reads; reads for
//! uploading reply on the requesting connection's own channel.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::SystemTime;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, oneshot};

use crate::torrent::metainfo::Info;

/// Most file handles kept open at once; torrents with more files reopen them as needed,
/// so a 50,000-file torrent does not run into the descriptor limit.
const MAX_OPEN_FILES: usize = 128;

/// Read-back chunk when hashing from disk.
const HASH_CHUNK: usize = 1 << 20;

/// Longest run of contiguous blocks written with one call.
pub const MERGE_MAX: usize = 256 * 1024;

/// How long a disk thread waits for more blocks before writing the runs it holds.
pub const MERGE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs held at once per disk thread (pieces arriving interleaved from several peers);
/// the oldest is written when another starts.
const MAX_RUNS: usize = 8;

/// Whether the files are ours to create and write, or someone's data we only serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create missing files and directories, pre-allocate (sparse), write blocks.
    ReadWrite,
    /// Seed existing files: nothing is created or written; every file must exist with
    /// its full length.
    ReadOnly,
}

/// Why the storage could not be used. Every message names the file concerned.
#[derive(Debug)]
pub enum StorageError {
    /// Creating, opening, sizing, reading or writing a file failed.
    Io {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What was being done, as a verb for the message ("open", "write", ...).
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A file to seed is missing or shorter than the torrent says.
    Incomplete {
        /// The file concerned.
        path: PathBuf,
        /// Its length on disk (0 when missing).
        have: u64,
        /// The length the torrent gives it.
        want: u64,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, op, source } => {
                let hint = match source.raw_os_error() {
                    Some(libc::ENOSPC) => " (disk full)",
                    Some(libc::EDQUOT) => " (disk quota exceeded)",
                    Some(libc::EROFS) => " (read-only file system)",
                    Some(libc::EFBIG) => " (file size limit reached)",
                    _ => "",
                };
                write!(f, "cannot {op} {}: {source}{hint}", path.display())
            }
            StorageError::Incomplete { path, have, want } => write!(
                f,
                "{} has {have} bytes, the torrent needs {want}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StorageError {}

/// What the disk threads report to the session.
#[derive(Debug)]
pub enum DiskEvent {
    /// A fully received piece was hashed. `block_crcs`, when asked for, are CRC-32C
    /// checksums of each block as stored, for telling which sender lied.
    Verified {
        /// The piece hashed.
        piece: u32,
        /// Whether its hash matched the torrent's.
        ok: bool,
        /// CRC-32C of each block, when asked for.
        block_crcs: Option<Vec<u32>>,
    },
    /// A start-up check of a piece already on disk.
    Checked {
        /// The piece hashed.
        piece: u32,
        /// Whether its hash matched the torrent's.
        ok: bool,
    },
    /// A write failed; the session stops (what is verified stays verified).
    WriteFailed(StorageError),
}

/// A block read for uploading.
#[derive(Debug)]
pub struct ReadDone {
    /// Who asked (the caller's tag, e.g. a session's peer key), so one reply channel can
    /// serve many readers.
    pub tag: u32,
    /// Piece index of the block.
    pub piece: u32,
    /// Byte offset of the block within the piece.
    pub begin: u32,
    /// The block, or why it could not be read.
    pub data: Result<Bytes, StorageError>,
}

enum Job {
    Write {
        piece: u32,
        begin: u32,
        data: Bytes,
    },
    Verify {
        piece: u32,
        block_crcs: bool,
    },
    Check {
        piece: u32,
    },
    Read {
        piece: u32,
        begin: u32,
        length: u32,
        tag: u32,
        reply: mpsc::UnboundedSender<ReadDone>,
    },
    Barrier(oneshot::Sender<()>),
}

/// A file's size and modification time, recorded with the resume data so that a restart
/// can tell whether the file changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Length in bytes (0 if missing).
    pub len: u64,
    /// Nanoseconds since the Unix epoch (0 if unknown or missing).
    pub mtime_ns: i64,
}

/// Layout and open-file cache, shared by the disk threads.
struct Files {
    paths: Vec<PathBuf>,
    /// (offset, length) of each file in the torrent's byte stream.
    extents: Vec<(u64, u64)>,
    /// BEP 47 pad files: never opened; their bytes read as zeros and writes to them are
    /// dropped (a block that put anything else there fails its piece hash anyway, because
    /// the hash covers the zeros).
    pad: Vec<bool>,
    piece_length: u64,
    total_length: u64,
    mode: Mode,
    cache: Mutex<FileCache>,
}

#[derive(Default)]
struct FileCache {
    open: HashMap<usize, (Arc<File>, u64)>,
    tick: u64,
}

impl Files {
    fn handle(&self, index: usize) -> Result<Arc<File>, StorageError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        if let Some((f, used)) = cache.open.get_mut(&index) {
            *used = tick;
            return Ok(f.clone());
        }
        let path = &self.paths[index];
        let file = match self.mode {
            Mode::ReadWrite => OpenOptions::new().read(true).write(true).open(path),
            Mode::ReadOnly => File::open(path),
        }
        .map_err(|source| StorageError::Io {
            path: path.clone(),
            op: "open",
            source,
        })?;
        let file = Arc::new(file);
        if cache.open.len() >= MAX_OPEN_FILES
            && let Some(&oldest) = cache
                .open
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| k)
        {
            cache.open.remove(&oldest);
        }
        cache.open.insert(index, (file.clone(), tick));
        Ok(file)
    }

    /// Calls `f(file, offset in file, range of the buffer)` for each file region the torrent
    /// bytes `[offset, offset + len)` cover, in order.
    fn for_each_span(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(usize, u64, std::ops::Range<usize>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let end = offset + len as u64;
        let first = self.extents.partition_point(|&(o, l)| o + l <= offset);
        for (i, &(o, l)) in self.extents.iter().enumerate().skip(first) {
            if o >= end {
                break;
            }
            let from = offset.max(o);
            let to = end.min(o + l);
            if to > from {
                f(
                    i,
                    from - o,
                    (from - offset) as usize..(to - offset) as usize,
                )?;
            }
        }
        Ok(())
    }

    /// Writes `blocks`, which are contiguous from torrent offset `offset`, with one
    /// `pwritev` per file they cover (more if the kernel writes less than asked).
    fn write_blocks(&self, offset: u64, blocks: &[Bytes]) -> Result<(), StorageError> {
        use std::io::IoSlice;
        let total: usize = blocks.iter().map(Bytes::len).sum();
        self.for_each_span(offset, total, |i, at, range| {
            let err = |source| StorageError::Io {
                path: self.paths[i].clone(),
                op: "write",
                source,
            };
            if self.pad[i] {
                return Ok(());
            }
            let file = self.handle(i)?;
            // The parts of the blocks inside `range` (run coordinates).
            let mut slices = Vec::with_capacity(blocks.len());
            let mut pos = 0usize;
            for b in blocks {
                let (from, to) = (pos.max(range.start), (pos + b.len()).min(range.end));
                if from < to {
                    slices.push(IoSlice::new(&b[from - pos..to - pos]));
                }
                pos += b.len();
            }
            write_at(&file, &mut slices, at).map_err(err)
        })
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.for_each_span(offset, buf.len(), |i, at, range| {
            if self.pad[i] {
                buf[range].fill(0);
                return Ok(());
            }
            self.handle(i)?
                .read_exact_at(&mut buf[range], at)
                .map_err(|source| StorageError::Io {
                    path: self.paths[i].clone(),
                    op: "read",
                    source,
                })
        })
    }

    fn piece_size(&self, piece: u32) -> u64 {
        let start = u64::from(piece) * self.piece_length;
        self.total_length
            .saturating_sub(start)
            .min(self.piece_length)
    }
}

/// Blocks that arrived ahead of a piece's hashed prefix, kept (per disk thread, at most
/// this many bytes) to be hashed once the gap fills: peers that read from disk
/// asynchronously (libtorrent) sometimes answer a piece's requests out of order, and
/// without this every such piece would be read back from disk and hashed at the end.
const OUT_OF_ORDER_MAX: usize = 8 << 20;

/// The running hash of a piece's prefix, kept by the disk thread that owns the piece.
struct Running {
    hasher: Sha1,
    upto: u32,
    /// Blocks beyond `upto`, by offset.
    ahead: std::collections::BTreeMap<u32, Bytes>,
}

/// Contiguous blocks of one piece received but not yet written.
struct Run {
    piece: u32,
    /// Torrent offset of the first block.
    offset: u64,
    len: usize,
    blocks: Vec<Bytes>,
}

struct Worker {
    files: Arc<Files>,
    hashes: Arc<Vec<[u8; 20]>>,
    running: HashMap<u32, Running>,
    runs: Vec<Run>,
    /// Bytes held in the `ahead` maps of `running`.
    ahead_bytes: usize,
    events: mpsc::UnboundedSender<DiskEvent>,
    backlog: Arc<AtomicU64>,
    buf: Vec<u8>,
}

impl Worker {
    fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        loop {
            let job = if self.runs.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match jobs.recv_timeout(MERGE_WAIT) {
                    Ok(j) => j,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.write_runs(None);
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        self.write_runs(None);
                        return;
                    }
                }
            };
            match job {
                Job::Write { piece, begin, data } => self.write(piece, begin, data),
                Job::Verify { piece, block_crcs } => {
                    self.write_runs(Some(piece));
                    let (ok, crcs) = self.verify(piece, block_crcs);
                    let _ = self.events.send(DiskEvent::Verified {
                        piece,
                        ok,
                        block_crcs: crcs,
                    });
                }
                Job::Check { piece } => {
                    self.write_runs(Some(piece));
                    self.forget(piece);
                    let (ok, _) = self.verify(piece, false);
                    let _ = self.events.send(DiskEvent::Checked { piece, ok });
                }
                Job::Read {
                    piece,
                    begin,
                    length,
                    tag,
                    reply,
                } => {
                    self.write_runs(Some(piece));
                    let mut buf = vec![0u8; length as usize];
                    let offset = u64::from(piece) * self.files.piece_length + u64::from(begin);
                    let data = self.files.read(offset, &mut buf).map(|()| Bytes::from(buf));
                    let _ = reply.send(ReadDone {
                        tag,
                        piece,
                        begin,
                        data,
                    });
                }
                Job::Barrier(done) => {
                    self.write_runs(None);
                    let _ = done.send(());
                }
            }
        }
    }

    /// Hashes the block if it continues the piece's hashed prefix, and adds it to a run
    /// (written later, see the module docs).
    fn write(&mut self, piece: u32, begin: u32, data: Bytes) {
        let hashed = self.running.entry(piece).or_insert_with(|| Running {
            hasher: Sha1::new(),
            upto: 0,
            ahead: Default::default(),
        });
        if hashed.upto == begin {
            hashed.hasher.update(&data);
            hashed.upto += data.len() as u32;
            while let Some(next) = hashed.ahead.remove(&hashed.upto) {
                self.ahead_bytes -= next.len();
                hashed.hasher.update(&next);
                hashed.upto += next.len() as u32;
            }
        } else if begin > hashed.upto
            && self.ahead_bytes + data.len() <= OUT_OF_ORDER_MAX
            && !hashed.ahead.contains_key(&begin)
        {
            self.ahead_bytes += data.len();
            hashed.ahead.insert(begin, data.clone());
        }
        let offset = u64::from(piece) * self.files.piece_length + u64::from(begin);
        if let Some(i) = self
            .runs
            .iter()
            .position(|r| r.piece == piece && r.offset + r.len as u64 == offset)
        {
            if self.runs[i].len + data.len() <= MERGE_MAX {
                let r = &mut self.runs[i];
                r.len += data.len();
                r.blocks.push(data);
                return;
            }
            let full = self.runs.swap_remove(i);
            self.write_run(full);
        } else if self.runs.len() >= MAX_RUNS {
            let oldest = self.runs.remove(0);
            self.write_run(oldest);
        }
        self.runs.push(Run {
            piece,
            offset,
            len: data.len(),
            blocks: vec![data],
        });
    }

    /// Drops the running hash of `piece` (and the blocks it held), returning it.
    fn forget(&mut self, piece: u32) -> Option<Running> {
        let r = self.running.remove(&piece)?;
        self.ahead_bytes -= r.ahead.values().map(Bytes::len).sum::<usize>();
        Some(r)
    }

    /// Writes the runs of `piece` (all runs for `None`).
    fn write_runs(&mut self, piece: Option<u32>) {
        let mut i = 0;
        while i < self.runs.len() {
            if piece.is_none_or(|p| self.runs[i].piece == p) {
                let r = self.runs.remove(i);
                self.write_run(r);
            } else {
                i += 1;
            }
        }
    }

    fn write_run(&mut self, run: Run) {
        if let Err(e) = self.files.write_blocks(run.offset, &run.blocks) {
            // The prefix hash covers bytes that are not on disk: forget it, so a check of
            // this piece reads the disk and fails.
            self.forget(run.piece);
            let _ = self.events.send(DiskEvent::WriteFailed(e));
        }
        self.backlog.fetch_sub(run.len as u64, Ordering::Relaxed);
    }

    /// Hashes the piece: the running prefix plus whatever follows it, read back from disk.
    fn verify(&mut self, piece: u32, want_crcs: bool) -> (bool, Option<Vec<u32>>) {
        let size = self.files.piece_size(piece);
        let (mut hasher, upto) = match self.forget(piece) {
            Some(r) if !want_crcs => (r.hasher, u64::from(r.upto)),
            _ => (Sha1::new(), 0),
        };
        let base = u64::from(piece) * self.files.piece_length;
        let mut crcs = want_crcs.then(Vec::new);
        let mut at = upto;
        while at < size {
            let n = (size - at).min(HASH_CHUNK as u64) as usize;
            if self.buf.len() < n {
                self.buf.resize(n, 0);
            }
            if self.files.read(base + at, &mut self.buf[..n]).is_err() {
                // Unreadable (e.g. a file deleted under us): the piece is not there.
                return (false, None);
            }
            hasher.update(&self.buf[..n]);
            if let Some(c) = crcs.as_mut() {
                for block in self.buf[..n].chunks(super::picker::BLOCK as usize) {
                    c.push(crc32c::crc32c(block));
                }
            }
            at += n as u64;
        }
        let digest: [u8; 20] = hasher.finalize().into();
        let ok = self.hashes.get(piece as usize) == Some(&digest);
        (ok, crcs)
    }
}

/// The files of one torrent under a directory, with their disk threads.
pub struct Storage {
    root: PathBuf,
    files: Arc<Files>,
    workers: Vec<std_mpsc::Sender<Job>>,
    backlog: Arc<AtomicU64>,
    /// Files that existed with their full length before we opened them (candidates for a
    /// start-up check when there is no resume record).
    preexisting: Vec<bool>,
}

impl Storage {
    /// Lays the torrent out under `root` (a single-file torrent is `root/<name>`, a
    /// multi-file one `root/<name>/<path...>`; every component passed the metainfo
    /// path-safety checks) and starts `threads` disk threads (at least one).
    ///
    /// In [`Mode::ReadWrite`] missing directories and files are created and every file is
    /// sized to its length (sparse: no blocks are allocated until written). In
    /// [`Mode::ReadOnly`] each file must already have its full length.
    pub fn open(
        root: &Path,
        info: &Info,
        mode: Mode,
        threads: usize,
        events: mpsc::UnboundedSender<DiskEvent>,
    ) -> Result<Storage, StorageError> {
        let mut paths = Vec::with_capacity(info.files.len());
        let mut preexisting = Vec::with_capacity(info.files.len());
        for (i, f) in info.files.iter().enumerate() {
            let rel = info.file_path_on_disk(i).unwrap_or_default();
            let path = root.join(rel);
            if f.pad {
                // Nothing on disk: pad bytes are zeros by definition (BEP 47).
                preexisting.push(false);
                paths.push(path);
                continue;
            }
            let existing = fs::metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            preexisting.push(existing.is_some_and(|l| l >= f.length && f.length > 0));
            match mode {
                Mode::ReadOnly => {
                    let have = existing.unwrap_or(0);
                    if existing.is_none() || have < f.length {
                        return Err(StorageError::Incomplete {
                            path,
                            have,
                            want: f.length,
                        });
                    }
                }
                Mode::ReadWrite => {
                    prepare_file(&path, f.length, existing)?;
                    if f.executable {
                        make_executable(&path)?;
                    }
                }
            }
            paths.push(path);
        }
        let files = Arc::new(Files {
            paths,
            extents: info.files.iter().map(|f| (f.offset, f.length)).collect(),
            pad: info.files.iter().map(|f| f.pad).collect(),
            piece_length: info.piece_length,
            total_length: info.total_length(),
            mode,
            cache: Mutex::new(FileCache::default()),
        });
        let hashes = Arc::new(info.pieces.clone());
        let backlog = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for n in 0..threads.max(1) {
            let (tx, rx) = std_mpsc::channel();
            let worker = Worker {
                files: files.clone(),
                hashes: hashes.clone(),
                running: HashMap::new(),
                runs: Vec::new(),
                ahead_bytes: 0,
                events: events.clone(),
                backlog: backlog.clone(),
                buf: Vec::new(),
            };
            std::thread::Builder::new()
                .name(format!("disk-{n}"))
                .spawn(move || worker.run(rx))
                .map_err(|source| StorageError::Io {
                    path: root.to_path_buf(),
                    op: "start a disk thread for",
                    source,
                })?;
            workers.push(tx);
        }
        Ok(Storage {
            root: root.to_path_buf(),
            files,
            workers,
            backlog,
            preexisting,
        })
    }

    /// The directory the torrent is laid out under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether files are written or only seeded.
    pub fn mode(&self) -> Mode {
        self.files.mode
    }

    /// Paths of the torrent's files, in torrent order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.files.paths
    }

    /// Whether file `index` existed with its full length before this storage was opened.
    pub fn preexisting(&self, index: usize) -> bool {
        self.preexisting.get(index).copied().unwrap_or(false)
    }

    fn send(&self, piece: u32, job: Job) {
        let n = self.workers.len();
        // A worker only exits when its sender is dropped, so this cannot fail while `self`
        // lives; if it ever did, the job's reply simply never comes.
        let _ = self.workers[piece as usize % n].send(job);
    }

    /// Queues a received block for writing (and hashing on the way).
    pub fn write(&self, piece: u32, begin: u32, data: Bytes) {
        self.backlog.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.send(piece, Job::Write { piece, begin, data });
    }

    /// Queues the hash check of a fully received piece; the result arrives as
    /// [`DiskEvent::Verified`] after every write queued before it.
    pub fn verify(&self, piece: u32, block_crcs: bool) {
        self.send(piece, Job::Verify { piece, block_crcs });
    }

    /// Queues a start-up check of a piece already on disk ([`DiskEvent::Checked`]).
    pub fn check(&self, piece: u32) {
        self.send(piece, Job::Check { piece });
    }

    /// Queues a read for uploading; the answer goes to `reply`, carrying `tag`.
    pub fn read(
        &self,
        piece: u32,
        begin: u32,
        length: u32,
        tag: u32,
        reply: mpsc::UnboundedSender<ReadDone>,
    ) {
        self.send(
            piece,
            Job::Read {
                piece,
                begin,
                length,
                tag,
                reply,
            },
        );
    }

    /// Bytes queued for writing and not yet written: peers stop requesting while this is
    /// high, which bounds memory when the disk is slower than the network.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Waits until every job queued so far has run.
    pub async fn flush(&self) {
        let mut waits = Vec::new();
        for w in &self.workers {
            let (tx, rx) = oneshot::channel();
            if w.send(Job::Barrier(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Size and modification time of every file now.
    pub fn stamps(&self) -> Vec<FileStamp> {
        // A pad file's stamp is fixed: it has no file, and a stray one at its path is not ours.
        self.files
            .paths
            .iter()
            .zip(&self.files.pad)
            .map(|(p, &pad)| {
                if pad {
                    FileStamp {
                        len: 0,
                        mtime_ns: 0,
                    }
                } else {
                    stamp(p)
                }
            })
            .collect()
    }

    /// The file indices piece `piece` touches on disk (pad files, which have no file, are
    /// left out).
    pub fn piece_files(&self, piece: u32) -> Vec<usize> {
        let mut out = Vec::new();
        let offset = u64::from(piece) * self.files.piece_length;
        let len = self.files.piece_size(piece) as usize;
        let _ = self.files.for_each_span(offset, len, |i, _, _| {
            if !self.files.pad[i] {
                out.push(i);
            }
            Ok(())
        });
        out
    }
}

/// The current [`FileStamp`] of `path` (zeros if it cannot be read).
pub fn stamp(path: &Path) -> FileStamp {
    match fs::metadata(path) {
        Ok(m) => FileStamp {
            len: m.len(),
            mtime_ns: m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        },
        Err(_) => FileStamp {
            len: 0,
            mtime_ns: 0,
        },
    }
}

/// Creates `path` (and its directories) at exactly `length` bytes. Growing uses
/// `set_len`, which makes the file sparse: space is allocated as blocks are written.
/// Gives a file the executable bit wherever it has the read bit (BEP 47 `attr` `x`), the
/// way `chmod +x` under a umask would, so a downloaded program runs as its publisher meant.
fn make_executable(path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |op: &'static str| {
        move |source| StorageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let mut perms = fs::metadata(path).map_err(err("stat"))?.permissions();
    let mode = perms.mode();
    let want = mode | ((mode & 0o444) >> 2);
    if want != mode {
        perms.set_mode(want);
        fs::set_permissions(path, perms).map_err(err("chmod"))?;
    }
    Ok(())
}

fn prepare_file(path: &Path, length: u64, existing: Option<u64>) -> Result<(), StorageError> {
    let err = |op: &'static str| {
        move |source| StorageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| StorageError::Io {
            path: parent.to_path_buf(),
            op: "create directory",
            source,
        })?;
    }
    if existing == Some(length) {
        // Untouched, so its modification time still matches the resume record.
        return OpenOptions::new()
            .write(true)
            .open(path)
            .map(drop)
            .map_err(err("open for writing"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err("create"))?;
    file.set_len(length).map_err(err("allocate"))
}

/// Writes all of `slices` at offset `at` of `file`: one `pwritev` per up to 1,024 slices on
/// unix (more if the kernel writes less than asked).
#[cfg(unix)]
fn write_at(file: &File, slices: &mut [std::io::IoSlice<'_>], at: u64) -> io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut rest = slices;
    let mut at = at;
    while !rest.is_empty() {
        let n = rest.len().min(1024) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices borrow live buffers and
        // `n` does not exceed their count.
        let r = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast::<libc::iovec>(),
                n,
                at as libc::off_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += r as u64;
        IoSlice::advance_slices(&mut rest, r as usize);
    }
    Ok(())
}

/// Elsewhere: a seek and a write per slice. The storage is driven from one disk thread, so
/// nothing else moves the shared file position in between.
#[cfg(not(unix))]
fn write_at(file: &File, slices: &mut [std::io::IoSlice<'_>], at: u64) -> io::Result<()> {
    write_at_portable(file, slices, at)
}

/// The portable positional write (compiled everywhere so the unix test suite checks it).
#[cfg_attr(unix, allow(dead_code))]
fn write_at_portable(file: &File, slices: &[std::io::IoSlice<'_>], at: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(at))?;
    for s in slices {
        f.write_all(s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::metainfo::create_info;

    /// Both positional writers (the unix `pwritev` one and the portable fallback) write the
    /// same bytes at the same place, past more slices than one `pwritev` takes.
    #[test]
    fn positional_writers_agree() {
        use std::io::IoSlice;
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<Vec<u8>> = (0..1500u32).map(|i| vec![(i % 251) as u8; 3]).collect();
        let mut want = vec![0u8; 100];
        for p in &parts {
            want.extend_from_slice(p);
        }
        for portable in [false, true] {
            let path = dir.path().join(format!("f{portable}"));
            let file = File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            if portable {
                write_at_portable(&file, &slices, 100).unwrap();
            } else {
                write_at(&file, &mut slices, 100).unwrap();
            }
            assert_eq!(fs::read(&path).unwrap(), want, "portable: {portable}");
        }
    }

    fn layout(dir: &Path, files: &[(&str, usize)]) -> Vec<u8> {
        let mut all = Vec::new();
        for (i, (name, len)) in files.iter().enumerate() {
            let data: Vec<u8> = (0..*len).map(|k| (k * 7 + i * 13) as u8).collect();
            let p = dir.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, &data).unwrap();
            all.extend_from_slice(&data);
        }
        all
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<DiskEvent>) -> DiskEvent {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn multi_file_blocks_round_trip_across_odd_boundaries() {
        let src = tempfile::tempdir().unwrap();
        // Piece length 20,000 (not a multiple of 16 KiB); files of odd sizes, one empty.
        let all = layout(
            &src.path().join("t"),
            &[("a", 5), ("b/c", 30_001), ("d", 0), ("e", 17_000), ("f", 1)],
        );
        let (_, info) = create_info(&src.path().join("t"), Some(20_000), |_| {}).unwrap();
        let out = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let st = Storage::open(out.path(), &info, Mode::ReadWrite, 2, tx).unwrap();
        // Sparse pre-allocation: every file exists at full length, the empty one too.
        for (i, f) in info.files.iter().enumerate() {
            assert_eq!(fs::metadata(&st.paths()[i]).unwrap().len(), f.length);
        }
        // Write every piece in 16 KiB blocks: even pieces in order (merged into one write
        // that spans files), odd ones last block first (hashed once the gap fills).
        for piece in 0..info.num_pieces() as u32 {
            let size = info.piece_size(piece as usize).unwrap() as u32;
            let base = piece as usize * 20_000;
            let mut begins: Vec<u32> = (0..size.div_ceil(16384)).map(|b| b * 16384).collect();
            if piece % 2 == 1 {
                begins.reverse();
            }
            for begin in begins {
                let end = (begin + 16384).min(size);
                let data = Bytes::copy_from_slice(&all[base + begin as usize..base + end as usize]);
                st.write(piece, begin, data);
            }
            st.verify(piece, piece == 1);
        }
        let mut ok = 0;
        for _ in 0..info.num_pieces() {
            match next(&mut rx).await {
                DiskEvent::Verified {
                    piece,
                    ok: true,
                    block_crcs,
                } => {
                    ok += 1;
                    assert_eq!(block_crcs.is_some(), piece == 1);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ok, info.num_pieces());
        st.flush().await;
        assert_eq!(st.backlog(), 0);
        // The files hold exactly the source bytes.
        let mut got = Vec::new();
        for p in st.paths() {
            got.extend(fs::read(p).unwrap());
        }
        assert_eq!(got, all);
        // Reads across file boundaries (piece 0 spans a, b/c).
        let (rtx, mut rrx) = mpsc::unbounded_channel();
        st.read(0, 0, 16384, 7, rtx.clone());
        st.read(1, 16384, 20_000 - 16384, 7, rtx);
        // Two disk threads: the answers may come in either order.
        for _ in 0..2 {
            let r = rrx.recv().await.unwrap();
            assert_eq!(r.tag, 7, "the reply carries the caller's tag");
            let want = if r.piece == 0 {
                &all[..16384]
            } else {
                &all[20_000 + 16384..40_000]
            };
            assert!(r.data.unwrap()[..] == *want, "read of piece {}", r.piece);
        }
        assert_eq!(st.piece_files(0), [0, 1]);
        assert_eq!(st.piece_files(1), [1, 3]);
    }

    #[tokio::test]
    async fn pad_files_stay_off_disk_and_read_and_verify_as_zeros() {
        let src = tempfile::tempdir().unwrap();
        let t = src.path().join("t");
        // Two files of one size (so two pads share the path `.pad/25536`), one below a
        // piece, one empty.
        layout(
            &t,
            &[("a", 40_000), ("b", 40_000), ("c", 100), ("d", 0), ("e", 5)],
        );
        let created =
            crate::torrent::hybrid::create_hybrid_info(&t, Some(32 << 10), |_| {}).unwrap();
        let info = created.info;
        assert!(info.files.iter().filter(|f| f.pad).count() >= 3);
        // The torrent's byte stream, pads as zeros.
        let mut stream = Vec::new();
        for f in &info.files {
            if f.pad {
                stream.resize(stream.len() + f.length as usize, 0);
            } else {
                stream.extend(fs::read(t.join(f.path.join("/"))).unwrap());
            }
        }
        assert_eq!(stream.len() as u64, info.total_length());

        // Seeding in place needs no pad file, and reads hand out zeros for pad bytes.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let seed = Storage::open(src.path(), &info, Mode::ReadOnly, 1, tx.clone()).unwrap();
        let (rtx, mut rrx) = mpsc::unbounded_channel();
        // Piece 1 is the end of `a` then its pad.
        seed.read(1, 0, 16384, 0, rtx.clone());
        let r = rrx.recv().await.unwrap();
        assert_eq!(r.data.unwrap()[..], stream[32768..32768 + 16384]);
        for p in 0..info.num_pieces() as u32 {
            seed.check(p);
        }
        for _ in 0..info.num_pieces() {
            assert!(matches!(
                next(&mut rx).await,
                DiskEvent::Checked { ok: true, .. }
            ));
        }

        // Downloading: every piece verifies, and no `.pad` appears on disk.
        let out = tempfile::tempdir().unwrap();
        let st = Storage::open(out.path(), &info, Mode::ReadWrite, 2, tx).unwrap();
        for piece in 0..info.num_pieces() as u32 {
            let base = piece as usize * (32 << 10);
            let size = info.piece_size(piece as usize).unwrap() as usize;
            let mut begin = 0;
            while begin < size {
                let end = (begin + 16384).min(size);
                st.write(
                    piece,
                    begin as u32,
                    Bytes::copy_from_slice(&stream[base + begin..base + end]),
                );
                begin = end;
            }
            st.verify(piece, false);
        }
        for _ in 0..info.num_pieces() {
            assert!(matches!(
                next(&mut rx).await,
                DiskEvent::Verified { ok: true, .. }
            ));
        }
        st.flush().await;
        assert!(!out.path().join("t/.pad").exists());
        for name in ["a", "b", "c", "d", "e"] {
            assert_eq!(
                fs::read(out.path().join("t").join(name)).unwrap(),
                fs::read(t.join(name)).unwrap(),
                "{name}"
            );
        }
        // A piece touching only a file and its pad lists only the file.
        assert_eq!(st.piece_files(1), [0]);
    }

    #[test]
    fn executable_attr_sets_the_x_bit() {
        use std::os::unix::fs::PermissionsExt;
        let data = b"#!/bin/sh\n";
        let mut raw = b"d5:filesld4:attr1:x6:lengthi".to_vec();
        raw.extend(format!("{}e4:pathl3:runeed6:lengthi1e4:pathl5:plaineee", data.len()).bytes());
        raw.extend(b"4:name1:t12:piece lengthi16384e6:pieces20:");
        let mut all = data.to_vec();
        all.push(b'z');
        raw.extend_from_slice(&Sha1::digest(&all));
        raw.push(b'e');
        let info = Info::from_bytes(&raw).unwrap();
        let out = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        Storage::open(out.path(), &info, Mode::ReadWrite, 1, tx).unwrap();
        let mode = |n: &str| {
            fs::metadata(out.path().join("t").join(n))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("run") & 0o111, 0o111 & (mode("run") >> 2));
        assert_ne!(mode("run") & 0o100, 0);
        assert_eq!(mode("plain") & 0o111, 0);
    }

    #[tokio::test]
    async fn corrupt_pieces_fail_and_checks_read_from_disk() {
        let src = tempfile::tempdir().unwrap();
        let all = layout(src.path(), &[("one", 70_000)]);
        let (_, info) = create_info(&src.path().join("one"), Some(32_768), |_| {}).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Seeding the source in place: read-only, every piece checks out.
        let seed = Storage::open(src.path(), &info, Mode::ReadOnly, 1, tx.clone()).unwrap();
        for p in 0..3 {
            seed.check(p);
        }
        for _ in 0..3 {
            assert!(matches!(
                next(&mut rx).await,
                DiskEvent::Checked { ok: true, .. }
            ));
        }
        let out = tempfile::tempdir().unwrap();
        let st = Storage::open(out.path(), &info, Mode::ReadWrite, 1, tx).unwrap();
        let mut block = all[..16384].to_vec();
        block[5] ^= 1;
        st.write(0, 0, Bytes::from(block));
        st.write(0, 16384, Bytes::copy_from_slice(&all[16384..32768]));
        st.verify(0, true);
        match next(&mut rx).await {
            DiskEvent::Verified {
                ok: false,
                block_crcs: Some(c),
                ..
            } => {
                assert_eq!(c.len(), 2);
                assert_ne!(c[0], crc32c::crc32c(&all[..16384]));
                assert_eq!(c[1], crc32c::crc32c(&all[16384..32768]));
            }
            other => panic!("{other:?}"),
        }
        // A sparse, never written piece fails its check.
        st.check(1);
        assert!(matches!(
            next(&mut rx).await,
            DiskEvent::Checked {
                piece: 1,
                ok: false
            }
        ));
    }

    #[test]
    fn read_only_needs_complete_files_and_errors_name_the_file() {
        let src = tempfile::tempdir().unwrap();
        layout(src.path(), &[("x", 100)]);
        let (_, info) = create_info(&src.path().join("x"), None, |_| {}).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let empty = tempfile::tempdir().unwrap();
        let e = Storage::open(empty.path(), &info, Mode::ReadOnly, 1, tx.clone())
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("has 0 bytes, the torrent needs 100"),
            "{e}"
        );
        // A directory we cannot write into.
        let ro = tempfile::tempdir().unwrap();
        let mut perm = fs::metadata(ro.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
        fs::set_permissions(ro.path(), perm).unwrap();
        let r = Storage::open(ro.path(), &info, Mode::ReadWrite, 1, tx);
        // Root ignores permission bits; only check the message where they apply.
        if let Err(e) = r {
            let msg = e.to_string();
            assert!(
                msg.contains("cannot create") && msg.contains("permission denied"),
                "{msg}"
            );
        }
    }
}
