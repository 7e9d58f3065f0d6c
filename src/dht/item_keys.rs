//! BEP 44 signing-key files for `dht-item put --mutable`: the 32-byte ed25519 seed as 64 hex
//! digits on one line (the form tools/lt_node.py's `put_mutable` takes, so one key can drive
//! both clients). A missing file is created with a fresh key, readable by its owner only.

use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

/// Why a key file could not be used.
#[derive(Debug)]
pub enum KeyFileError {
    /// The key file exists but could not be read.
    Read {
        /// The key file.
        path: PathBuf,
        /// The read error.
        error: io::Error,
    },
    /// The key file did not exist and a new one could not be written.
    Write {
        /// The key file.
        path: PathBuf,
        /// The write error.
        error: io::Error,
    },
    /// The file is not 64 hex digits (an optional trailing newline aside).
    Malformed {
        /// The key file.
        path: PathBuf,
    },
}

impl std::fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFileError::Read { path, error } => {
                write!(f, "cannot read key file {}: {error}", path.display())
            }
            KeyFileError::Write { path, error } => {
                write!(f, "cannot write key file {}: {error}", path.display())
            }
            KeyFileError::Malformed { path } => write!(
                f,
                "key file {} is not a 64-hex-digit ed25519 seed",
                path.display()
            ),
        }
    }
}

impl std::error::Error for KeyFileError {}

/// Parses a key file's content.
pub fn parse_key(text: &[u8]) -> Option<SigningKey> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text, &mut seed).ok()?;
    Some(SigningKey::from_bytes(&seed))
}

/// Loads the key at `path`, or creates it (mode 0600, written atomically) when the file does
/// not exist. Returns the key and whether it was created.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyFileError> {
    match std::fs::read(path) {
        Ok(text) => parse_key(&text)
            .map(|k| (k, false))
            .ok_or_else(|| KeyFileError::Malformed {
                path: path.to_path_buf(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let text = format!("{}\n", hex::encode(seed));
            crate::util::atomic_write_private(path, text.as_bytes()).map_err(|error| {
                KeyFileError::Write {
                    path: path.to_path_buf(),
                    error,
                }
            })?;
            Ok((SigningKey::from_bytes(&seed), true))
        }
        Err(error) => Err(KeyFileError::Read {
            path: path.to_path_buf(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (k1, created) = load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Malformed { .. })
        ));
        assert!(parse_key(format!("{}\n", "ab".repeat(32)).as_bytes()).is_some());
        assert!(parse_key("ab".repeat(31).as_bytes()).is_none());
    }
}
