//! The one way integration tests replay a checked-in corpus directory.
//!
//! A replay loop over `read_dir` passes vacuously when the directory was moved, renamed or
//! emptied: it finds nothing, runs nothing and asserts nothing. [`replay_dir`] refuses that:
//! the directory must exist, hold at least one input, and every input present must have
//! been handed to the callback. Each test crate that replays a corpus says
//! `mod replay_support;` and goes through it; `tests/fuzz_corpus_replay.rs` tests the helper
//! itself on a missing and an empty directory.
#![allow(dead_code)]

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a corpus directory could not be replayed in full.
#[derive(Debug)]
pub enum ReplayError {
    /// The directory (or a subdirectory) could not be listed: moved, renamed, unreadable.
    Unreadable { dir: PathBuf, source: io::Error },
    /// The directory exists but holds no input the filter accepts.
    Empty { dir: PathBuf },
    /// Fewer inputs were replayed than the directory holds.
    Short {
        dir: PathBuf,
        replayed: usize,
        present: usize,
    },
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Unreadable { dir, source } => {
                write!(f, "corpus directory {} unreadable: {source}", dir.display())
            }
            ReplayError::Empty { dir } => {
                write!(f, "corpus directory {} holds no inputs", dir.display())
            }
            ReplayError::Short {
                dir,
                replayed,
                present,
            } => write!(
                f,
                "replayed {replayed} of the {present} inputs in {}",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for ReplayError {}

/// `CARGO_MANIFEST_DIR/<rel>`: corpora are addressed from the crate root.
pub fn root(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every regular file under `dir` (recursing into subdirectories) that `keep` accepts,
/// sorted so failures reproduce in the same order.
pub fn files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let unreadable = |source| ReplayError::Unreadable {
            dir: d.clone(),
            source,
        };
        for entry in std::fs::read_dir(&d).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() && keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Any file.
pub fn any_file(_: &Path) -> bool {
    true
}

/// Files with extension `.bin` (the real KRPC corpus keeps its README next to the captures).
pub fn bin_file(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "bin")
}

/// Calls `f` on the path and contents of every input under `dir` that `keep` accepts and
/// returns how many it replayed, or an error when the directory is missing or empty, or
/// when fewer inputs were replayed than it holds (counted again after the replay, so a
/// listing that lost entries cannot pass either).
pub fn replay_dir(
    dir: &Path,
    keep: &dyn Fn(&Path) -> bool,
    mut f: impl FnMut(&Path, &[u8]),
) -> Result<usize, ReplayError> {
    let inputs = files(dir, keep)?;
    let mut replayed = 0;
    for path in &inputs {
        let data = std::fs::read(path).map_err(|source| ReplayError::Unreadable {
            dir: path.clone(),
            source,
        })?;
        f(path, &data);
        replayed += 1;
    }
    let present = files(dir, keep)?.len();
    if present == 0 {
        return Err(ReplayError::Empty {
            dir: dir.to_path_buf(),
        });
    }
    if replayed < present {
        return Err(ReplayError::Short {
            dir: dir.to_path_buf(),
            replayed,
            present,
        });
    }
    Ok(replayed)
}

/// [`replay_dir`] for tests: panics with the reason instead of returning it.
pub fn replay_all(dir: &Path, keep: &dyn Fn(&Path) -> bool, f: impl FnMut(&Path, &[u8])) -> usize {
    replay_dir(dir, keep, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Every input under `dir` that `keep` accepts, with its path shown as a string, read in
/// full; the same existence and non-emptiness checks as [`replay_dir`].
pub fn load_all(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    replay_all(dir, keep, |p, d| {
        out.push((p.display().to_string(), d.to_vec()))
    });
    out
}
