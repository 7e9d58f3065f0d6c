//! Opening a sled store, written once for the three stores that use sled (the node's, the
//! crawler's and the downloads' resume store).
//!
//! sled 0.34 has paths that panic on garbage files instead of returning an error, reports a
//! held lock only as an I/O error with a particular message, and releases its file lock from
//! a background thread a moment after the last handle is dropped (so a store reopened right
//! after a shutdown can still look locked). Each caller used to handle a different subset of
//! that; here all of it is handled once, and each store turns [`SledError`] into its own
//! message (which command holds the store, what is safe to delete).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a sled store could not be opened or used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SledError {
    /// Another process holds the store's lock.
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// The files are not a readable store (sled reported corruption or panicked on them).
    Corrupt {
        /// The store's directory.
        path: PathBuf,
        /// What sled said.
        detail: String,
    },
    /// The directory cannot be created, read or written.
    Io {
        /// The store's directory.
        path: PathBuf,
        /// The operating system's error.
        detail: String,
    },
}

impl SledError {
    /// The store's directory.
    pub fn path(&self) -> &Path {
        match self {
            SledError::Locked { path } | SledError::Corrupt { path, .. } => path,
            SledError::Io { path, .. } => path,
        }
    }
}

impl fmt::Display for SledError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SledError::Locked { path } => {
                write!(f, "{} is in use by another process", path.display())
            }
            SledError::Corrupt { path, detail } => {
                write!(f, "{} is unreadable ({detail})", path.display())
            }
            SledError::Io { path, detail } => write!(f, "cannot use {}: {detail}", path.display()),
        }
    }
}

impl std::error::Error for SledError {}

/// Sorts a sled error for the store in `path`.
pub fn classify(path: &Path, e: sled::Error) -> SledError {
    let path = path.to_path_buf();
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            SledError::Locked { path }
        }
        sled::Error::Io(io) => SledError::Io {
            path,
            detail: io.to_string(),
        },
        sled::Error::Corruption { at, .. } => SledError::Corrupt {
            path,
            detail: match at {
                Some(at) => format!("corruption detected at {at:?}"),
                None => "corruption detected".into(),
            },
        },
        other => SledError::Corrupt {
            path,
            detail: other.to_string(),
        },
    }
}

/// Opens (creating the directory if needed) the store `config` describes at `dir`. A lock
/// held by our own just-closed handle is waited out for up to a second before it counts as
/// [`SledError::Locked`]; a panic inside sled becomes [`SledError::Corrupt`].
pub fn open(dir: &Path, config: sled::Config) -> Result<sled::Db, SledError> {
    std::fs::create_dir_all(dir).map_err(|e| SledError::Io {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    let config = config.path(dir);
    let attempt = || match catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(classify(dir, e)),
        Err(panic) => Err(SledError::Corrupt {
            path: dir.to_path_buf(),
            detail: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled panicked while opening it".into()),
        }),
    };
    let mut opened = attempt();
    for _ in 0..20 {
        match opened {
            Err(SledError::Locked { .. }) => {
                std::thread::sleep(Duration::from_millis(50));
                opened = attempt();
            }
            _ => break,
        }
    }
    opened
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_reports_a_held_lock_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s");
        let db = open(&store, sled::Config::new()).expect("fresh store opens");
        db.insert(b"k", b"v").unwrap();
        // Held by `db`: locked (after the grace period), with the path in the message.
        let e = open(&store, sled::Config::new()).unwrap_err();
        assert_eq!(
            e,
            SledError::Locked {
                path: store.clone()
            }
        );
        assert!(e.to_string().contains("in use"), "{e}");
        drop(db);
        // Released: opens again (the grace period covers sled's background unlock).
        let db = open(&store, sled::Config::new()).expect("reopens after drop");
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(db);

        // Garbage where the store's files should be: an error, never a panic.
        let bad = dir.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("conf"), b"\xff\xfe not a sled config").unwrap();
        std::fs::write(bad.join("db"), vec![0xA5; 4096]).unwrap();
        let e = open(&bad, sled::Config::new()).unwrap_err();
        assert!(
            matches!(e, SledError::Corrupt { .. } | SledError::Io { .. }),
            "{e:?}"
        );

        // A file where the directory should be: an I/O error naming it.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = open(&file.join("store"), sled::Config::new()).unwrap_err();
        assert!(matches!(e, SledError::Io { .. }), "{e:?}");
    }
}
