//! The one way this crate writes a whole file: to a temporary name beside it, flushed to
//! disk, renamed over the target, and the directory flushed too. A crash or `kill -9` at
//! any moment leaves either the old file or the new one, never a truncated mix: rename is
//! atomic, and without the two fsyncs a power loss can still surface an empty file or lose
//! the rename itself.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `data` to `path` atomically and durably (see the module docs).
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    atomic_write_with(path, |w| w.write_all(data))
}

/// Like [`atomic_write`], streaming: `fill` writes the content through a buffered writer, so
/// a large file (a router's 26 MB contact ring) need not be built in memory first.
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    write_via_tmp(path, None, fill)
}

/// Like [`atomic_write`] for a secret (a signing key): the file is created readable by its
/// owner only (0600 on Unix) from the start, so the secret is never briefly world-readable
/// under the temporary name.
pub fn atomic_write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    write_via_tmp(path, Some(0o600), |w| w.write_all(data))
}

fn write_via_tmp(
    path: &Path,
    mode: Option<u32>,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = tmp_name(path);
    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            // A stale temporary file would keep its old mode: remove it first.
            let _ = fs::remove_file(&tmp);
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let f = opts.open(&tmp)?;
        let mut w = BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`atomic_write`] on tokio's blocking pool, for async code that must not stall its
/// event loop on fsync.
pub async fn atomic_write_async(path: PathBuf, data: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || atomic_write(&path, &data))
        .await
        .map_err(io::Error::other)?
}

/// `NAME.tmp.PID` beside the target: same directory (rename never crosses file systems),
/// and a name no other process writing the same file at the same time would pick.
fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    // Directories cannot be opened for fsync on every platform; the rename is still atomic.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.torrent");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.torrent")]);
    }

    #[test]
    fn failure_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        atomic_write(&p, b"old").unwrap();
        // Renaming a file over a non-empty directory fails: the old content must survive.
        let target = dir.path().join("d");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inner"), b"").unwrap();
        assert!(atomic_write(&target, b"new").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert!(
            !dir.path()
                .join(format!("d.tmp.{}", std::process::id()))
                .exists()
        );
    }

    #[tokio::test]
    async fn async_variant_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y");
        atomic_write_async(p.clone(), b"data".to_vec())
            .await
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"data");
    }
}
