//! Replays every checked-in fuzz input (fuzz/seeds/<target>/ and the minimized
//! fuzz/corpus/<target>/ that fuzzing grew from them, see FUZZING.md) through the same
//! entry points the cargo-fuzz targets call, so CI catches a parser regression on the
//! stable toolchain without libFuzzer. Crashes found by fuzzing are kept in
//! fuzz/regressions/<target>/ and replayed here as well.

mod replay_support;

use std::path::Path;

use replay_support::{ReplayError, any_file, replay_all, replay_dir, root};
use trackerless::dht::krpc::{self, Body, ErrorBody};
use trackerless::fuzzing::{self, TARGETS};

/// Runs `f` on every file under `fuzz/<kind>/<target>/` through the shared replay helper
/// (which fails when the directory is missing or empty); returns how many there were.
fn replay(kind: &str, target: &str, f: fn(&[u8])) -> usize {
    let dir = root("fuzz").join(kind).join(target);
    replay_all(&dir, &any_file, |path, data| {
        // A panic names the file, so it can be fed to `cargo fuzz run <target> <file>`.
        let outcome = std::panic::catch_unwind(|| f(data));
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
    })
}

#[test]
fn every_seed_replays() {
    for (target, f) in TARGETS {
        replay("seeds", target, *f);
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

/// Only targets on which fuzzing found a crash have a `fuzz/regressions/<target>/`; every
/// directory there must belong to a known target (a renamed target would otherwise stop
/// being replayed) and replay in full, and krpc's (FUZZING.md, crash 1) must be there.
#[test]
fn every_fuzz_regression_replays() {
    let dirs = std::fs::read_dir(root("fuzz/regressions")).expect("fuzz/regressions exists");
    let mut replayed = Vec::new();
    for dir in dirs {
        let dir = dir.expect("readable directory entry").path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (target, f) = TARGETS
            .iter()
            .find(|(t, _)| *t == name)
            .unwrap_or_else(|| panic!("fuzz/regressions/{name} belongs to no fuzz target"));
        replay("regressions", target, *f);
        replayed.push(name);
    }
    assert!(replayed.iter().any(|t| t == "krpc"), "{replayed:?}");
}

/// The helper every replay goes through fails on a missing directory: a moved corpus must
/// not pass as "nothing to replay".
#[test]
fn replay_helper_fails_on_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("moved-away");
    let mut calls = 0;
    let r = replay_dir(&missing, &any_file, |_, _| calls += 1);
    assert!(matches!(r, Err(ReplayError::Unreadable { .. })), "{r:?}");
    assert_eq!(calls, 0);
}

/// ... and on an empty one (an emptied corpus), even when it only holds empty
/// subdirectories or files the filter rejects.
#[test]
fn replay_helper_fails_on_an_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let r = replay_dir(tmp.path(), &any_file, |_, _| {});
    assert!(matches!(r, Err(ReplayError::Empty { .. })), "{r:?}");

    std::fs::create_dir(tmp.path().join("source")).unwrap();
    std::fs::write(tmp.path().join("source/README.md"), b"not an input").unwrap();
    let r = replay_dir(tmp.path(), &replay_support::bin_file, |_, _| {});
    assert!(matches!(r, Err(ReplayError::Empty { .. })), "{r:?}");
}

/// ... and replays every file present, subdirectories included, in a stable order.
#[test]
fn replay_helper_replays_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("b")).unwrap();
    std::fs::write(tmp.path().join("a.bin"), b"1").unwrap();
    std::fs::write(tmp.path().join("b/c.bin"), b"22").unwrap();
    std::fs::write(tmp.path().join("b/README"), b"skip").unwrap();
    let mut seen = Vec::new();
    let n = replay_dir(tmp.path(), &replay_support::bin_file, |p, d| {
        seen.push((p.file_name().unwrap().to_owned(), d.len()))
    })
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(seen, [("a.bin".into(), 1), ("c.bin".into(), 2)]);
    assert_eq!(
        replay_dir(Path::new(tmp.path()), &any_file, |_, _| {}).unwrap(),
        3
    );
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
    replay("regressions", "krpc", fuzzing::krpc);
}

/// The MSE seeds named handshake_* are complete peer transcripts computed by
/// fuzz/make_seeds.py's own (Python) DH and RC4: our handshake must accept every one, with
/// the method the transcript selects and the initial payload it carries. A second,
/// independent implementation agreeing with ours is the known-answer test for the protocol.
#[test]
fn mse_seed_transcripts_complete() {
    let dir = root("fuzz").join("seeds").join("mse");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz/seeds/mse exists") {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("handshake_") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let ctl = data[0];
        let allowed = (ctl >> 1) & 3;
        let outcome = fuzzing::mse_run(&data);
        if allowed == 0 {
            assert!(matches!(outcome, Some(Err(_))), "{name}: {outcome:?}");
            continue;
        }
        let o = match outcome {
            Some(Ok(o)) => o,
            other => panic!("{name}: {other:?}"),
        };
        if ctl & 1 == 1 {
            assert!(
                o.initial_payload.starts_with(b"\x13BitTorrent protocol"),
                "{name}"
            );
        } else {
            assert_eq!(o.initial_payload, b"trail", "{name}");
        }
        n += 1;
    }
    assert!(n >= 6, "only {n} MSE transcripts completed");
}
