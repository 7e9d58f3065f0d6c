//! Every program under `examples/` runs to the end and prints its result (issue 11: "every
//! example under `examples/` runs in CI inside the loopback namespace").
//!
//! `cargo test` builds the examples next to the test binaries (`target/<profile>/examples/`)
//! whenever it builds all targets, as `tools/test.sh` does, so this test runs those
//! binaries rather than calling cargo (which holds the build directory's lock while tests
//! run). When only this test is selected (`cargo test --test examples_run`), cargo does not
//! build the examples: run `cargo build --examples` first, or the test fails saying so.
//!
//! Each example binds only loopback addresses of its own (127.171-174.x.y) and exits by
//! itself; the crawl is shortened from its 60 s default with `--seconds`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `target/<profile>/examples/<name>`: this test binary lives in `target/<profile>/deps/`.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --examples` (a plain `cargo test` builds it)",
        path.display()
    );
    path
}

/// Runs the example to its end (at most `limit`) and returns its stdout; fails on a
/// non-zero exit, showing both streams.
fn run_example(name: &str, args: &[&str], limit: Duration) -> String {
    let mut child = Command::new(example_path(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Reading stdout to its end is the event "the example exited"; the channel bounds the
    // wait so a hung example fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "example {name} still running after {limit:?}; stderr:\n{}",
                err_reader.join().unwrap_or_default()
            );
        }
    };
    let status = child.wait().expect("wait for example");
    let err = err_reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "example {name} exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn find_peers_finds_the_announced_peer() {
    let out = run_example("find_peers", &[], LIMIT);
    assert!(
        out.contains("found the announced peer 127.171.0.4:4000"),
        "{out}"
    );
}

#[test]
fn fetch_metadata_fetches_the_served_torrent() {
    let out = run_example("fetch_metadata", &[], LIMIT);
    assert!(out.contains("name: example torrent"), "{out}");
    assert!(out.contains("files: 2"), "{out}");
    assert!(out.contains("total size: 100019 bytes"), "{out}");
}

#[test]
fn download_gets_an_identical_file() {
    let out = run_example("download", &[], LIMIT);
    assert!(
        out.contains("downloaded 2097152 bytes: identical to the seeded file"),
        "{out}"
    );
}

#[test]
fn crawl_testnet_finds_announced_info_hashes() {
    let out = run_example("crawl_testnet", &["--seconds", "3"], LIMIT);
    let summary = out
        .lines()
        .find(|l| l.starts_with("found ") && l.contains(" of the 100 announced"))
        .unwrap_or_else(|| panic!("no summary line:\n{out}"));
    // "found N info hashes (M of the 100 announced); ..." with M > 0 (the example itself
    // exits non-zero when M is 0; this checks the line says so too).
    let of_ours: usize = summary
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable summary {summary:?}"));
    assert!(of_ours > 0, "{out}");
}

#[test]
fn crawl_testnet_rejects_a_bad_argument() {
    let status = Command::new(example_path("crawl_testnet"))
        .args(["--seconds", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run example");
    assert!(!status.success());
}
