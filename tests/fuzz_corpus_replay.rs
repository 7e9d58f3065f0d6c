//! Replays every checked-in fuzz input (fuzz/seeds/<target>/ and the minimized
//! fuzz/corpus/<target>/ that fuzzing grew from them, see FUZZING.md) through the same
//! entry points the cargo-fuzz targets call, so CI catches a parser regression on the
//! stable toolchain without libFuzzer. Crashes found by fuzzing are kept in
//! fuzz/regressions/<target>/ and replayed here as well.

use std::path::{Path, PathBuf};

use trackerless::dht::krpc::{self, Body, ErrorBody};
use trackerless::fuzzing::{self, TARGETS};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `f` on every file under `fuzz/<kind>/<target>/`; returns how many there were.
fn replay(kind: &str, target: &str, f: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let files = inputs(&dir);
    for path in &files {
        let data = std::fs::read(path).expect("readable corpus file");
        // A panic names the file, so it can be fed to `cargo fuzz run <target> <file>`.
        let outcome = std::panic::catch_unwind(|| f(&data));
        if let Err(panic) = outcome {
            std::panic::resume_unwind(Box::new(format!(
                "{} failed on {}: {}",
                target,
                path.display(),
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )));
        }
    }
    files.len()
}

#[test]
fn every_seed_replays() {
    for (target, f) in TARGETS {
        let n = replay("seeds", target, *f);
        assert!(n > 0, "no seeds for {target}");
    }
}

#[test]
fn every_minimized_corpus_input_replays() {
    for (target, f) in TARGETS {
        let n = replay("corpus", target, *f);
        // The minimized corpus keeps at least the inputs reaching distinct code; a near-empty
        // directory means it was lost.
        assert!(n >= 10, "fuzz/corpus/{target} has only {n} inputs");
    }
}

#[test]
fn every_fuzz_regression_replays() {
    for (target, f) in TARGETS {
        replay("regressions", target, *f);
    }
}

/// Crash 1 of FUZZING.md: an error message with a short `e` list (`[201]`, `[]`) must decode
/// as an error, not be dropped as undecodable (the serde-based decoder read past the end of
/// the list; the borrowing decoder that replaced it must not regress).
#[test]
fn krpc_short_error_lists_decode() {
    for (datagram, code) in [
        (&b"d1:eli202ee1:t2:aa1:y1:ee"[..], 202),
        (b"d1:ele1:t2:aa1:y1:ee", krpc::ERR_GENERIC),
    ] {
        let m = krpc::decode(datagram).expect("a short error list still decodes");
        assert_eq!(
            m.body,
            Body::Error(ErrorBody {
                code,
                message: String::new()
            })
        );
    }
    assert!(replay("regressions", "krpc", fuzzing::krpc) > 0);
}
