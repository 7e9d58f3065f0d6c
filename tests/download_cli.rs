//! `dht-seed` and `dht-get` as processes in a loopback testnet:
//! - a download killed with SIGKILL mid-way, restarted, interrupted with SIGINT (Ctrl-C),
//!   restarted again: each run keeps what the previous ones verified (counted in bytes
//!   received) and the last one completes with identical bytes. The seeder runs with
//!   `--upload-rate`, which is what makes the download slow enough to interrupt, and the
//!   test checks that the limit held;
//! - a download from a `.torrent` file (no metadata fetch), with `--torrent-out`;
//! - clear one-line errors for a directory that cannot be written and a missing PATH;
//! - `dht-get --seed` serving another downloader after the original seeder left.
//!
//! Addresses: testnet 127.142.0.x, seeders 127.142.1.x, downloaders 127.142.2.x; the
//! `--seed` test 127.146.0.x (testnet) and 127.146.3.x.

mod dl_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dl_support::{content, testnet};
use trackerless::sim::testnet::Testnet;

const GET: &str = env!("CARGO_BIN_EXE_dht-get");
const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");

/// A child process killed when dropped, with its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The stderr reader, joined once the child exits so that every line is in.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(bin: &str, args: &[String]) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let keep = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut k = keep.lock().unwrap();
                k.push_str(&l);
                k.push('\n');
            }
        });
        Proc {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// The next stdout line within `timeout`.
    fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Reads stdout until a progress line shows at least `pct` percent; returns it.
    fn wait_percent(&self, pct: f64, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Some(l) = self.line(Duration::from_millis(200)) else {
                continue;
            };
            if let Some(p) = percent(&l)
                && p >= pct
            {
                return l;
            }
            seen.push(l);
        }
        panic!(
            "no progress line reached {pct}%: {seen:?}\nstderr: {}",
            self.stderr.lock().unwrap()
        );
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    /// Waits for exit; returns the exit code (None if killed by a signal), all remaining
    /// stdout and stderr.
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; stderr: {}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The readers end at end of file on the child's pipes: drain stdout until its
        // reader hangs up and join the stderr reader, instead of sleeping and hoping they
        // are done. A grandchild holding a pipe open would block here; the deadline turns
        // that into a failure with a message.
        let mut out = Vec::new();
        let drained_by = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .lines
                .recv_timeout(drained_by.saturating_duration_since(Instant::now()))
            {
                Ok(l) => out.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stdout never reached end of file"),
            }
        }
        if let Some(r) = self.stderr_reader.take() {
            r.join().expect("stderr reader");
        }
        let err = self.stderr.lock().unwrap().clone();
        (status.code(), out.join("\n"), err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The percentage of a `downloading  42.0% ...` line.
fn percent(line: &str) -> Option<f64> {
    let rest = line.strip_prefix("downloading")?.trim_start();
    rest.split('%').next()?.trim().parse().ok()
}

/// `downloaded N bytes` from the summary.
fn downloaded(text: &str) -> u64 {
    let at = text
        .find("downloaded ")
        .unwrap_or_else(|| panic!("no summary in {text}"));
    text[at + 11..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad summary in {text}"))
}

fn net_args(net: &Testnet, bind: &str, boot: usize, data: &Path) -> Vec<String> {
    [
        "--bind",
        bind,
        "--bootstrap",
        &net.addr(boot).to_string(),
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--rate-limit",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_seeder(
    net: &Testnet,
    path: &Path,
    ip: &str,
    extra: &[&str],
    data: &Path,
) -> (Proc, String) {
    let mut args = vec![path.to_str().unwrap().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(net_args(net, &format!("{ip}:0"), 0, data));
    let p = Proc::spawn(SEED, &args);
    let magnet = p
        .line(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no magnet from dht-seed: {}", p.stderr.lock().unwrap()));
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
    (p, magnet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_downloads_resume_without_refetching() {
    let net = testnet(142, 6).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let size = 24u64 << 20;
    std::fs::write(&file, content(size as usize, 9)).unwrap();
    let rate = 2_000_000u64;
    let seed_data = tempfile::tempdir().unwrap();
    let (_seeder, magnet) = start_seeder(
        &net,
        &file,
        "127.142.1.1",
        &[
            "--upload-rate",
            &rate.to_string(),
            "--piece-length",
            "65536",
        ],
        seed_data.path(),
    );
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let get_args = |bind: &str| {
        let mut a = vec![
            magnet.clone(),
            "--out".into(),
            out.path().to_str().unwrap().into(),
        ];
        a.extend(net_args(&net, bind, 1, data.path()));
        a
    };

    // Run 1: SIGKILL once a third is verified.
    let args = get_args("127.142.2.1:0");
    let (kill_line, took) = tokio::task::spawn_blocking(move || {
        let p = Proc::spawn(GET, &args);
        let t = Instant::now();
        let l = p.wait_percent(35.0, Duration::from_secs(60));
        let took = t.elapsed();
        p.signal(libc::SIGKILL);
        let (code, _, _) = p.finish(Duration::from_secs(10));
        assert_eq!(code, None, "killed by the signal");
        (l, took)
    })
    .await
    .unwrap();
    // The seeder's limit held: 35% of the file cannot arrive faster than the rate allows
    // (a quarter-second burst aside).
    let floor = (size as f64 * 0.35 - rate as f64 / 4.0) / rate as f64;
    assert!(
        took.as_secs_f64() >= floor * 0.9,
        "35% after {took:?}, faster than --upload-rate {rate} allows ({floor:.1} s)"
    );

    // Run 2: resumes (checks what the crash left), then Ctrl-C at 65%.
    let args = get_args("127.142.2.2:0");
    let (code, text) = tokio::task::spawn_blocking(move || {
        let p = Proc::spawn(GET, &args);
        p.wait_percent(65.0, Duration::from_secs(60));
        p.signal(libc::SIGINT);
        let (code, out, err) = p.finish(Duration::from_secs(20));
        (code, format!("{out}\n{err}"))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("interrupted: "), "{text}");
    let second = downloaded(&text);
    assert!(
        second < size * 6 / 10,
        "run 2 fetched {second} of {size} bytes; run 1 stopped at {kill_line}"
    );

    // Run 3: completes, fetching only what is left.
    let args = get_args("127.142.2.3:0");
    let (code, text) = tokio::task::spawn_blocking(move || {
        let p = Proc::spawn(GET, &args);
        let (code, out, err) = p.finish(Duration::from_secs(60));
        (code, format!("{out}\n{err}"))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("complete: "), "{text}");
    let third = downloaded(&text);
    assert!(third < size / 2, "run 3 fetched {third} of {size}: {text}");
    assert!(
        std::fs::read(&file).unwrap() == std::fs::read(out.path().join("big.bin")).unwrap(),
        "bytes differ"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torrent_files_and_clear_errors() {
    let net = testnet(142, 6).await;
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("shared dir");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("one.txt"), content(100_000, 1)).unwrap();
    std::fs::write(dir.join("sub/two.bin"), content(300_001, 2)).unwrap();
    let torrent = src.path().join("shared.torrent");
    let seed_data = tempfile::tempdir().unwrap();
    let (_seeder, magnet) = start_seeder(
        &net,
        &dir,
        "127.142.1.2",
        &["--torrent-out", torrent.to_str().unwrap()],
        seed_data.path(),
    );
    assert!(magnet.contains("&dn=shared%20dir"), "{magnet}");
    assert!(magnet.contains("&x.pe=127.142.1.2:"), "{magnet}");

    // From the .torrent file: no metadata fetch needed.
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut args = vec![
        torrent.to_str().unwrap().to_string(),
        "--out".into(),
        out.path().to_str().unwrap().into(),
    ];
    args.extend(net_args(&net, "127.142.2.10:0", 2, data.path()));
    let (code, text) = tokio::task::spawn_blocking(move || {
        let (code, out, err) = Proc::spawn(GET, &args).finish(Duration::from_secs(60));
        (code, format!("{out}\n{err}"))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{text}");
    dl_support::assert_same_tree(&dir, &out.path().join("shared dir"));

    // A directory nobody may create files in (root included): one clear line, status 1.
    let mut args = vec![
        torrent.to_str().unwrap().to_string(),
        "--out".into(),
        "/sys/kernel".into(),
    ];
    args.extend(net_args(&net, "127.142.2.11:0", 2, data.path()));
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        Proc::spawn(GET, &args).finish(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("error: cannot create directory /sys/kernel/shared dir: ")
            && err
                .trim_end()
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("error: ")),
        "{err}"
    );

    // dht-seed of a missing path, and a bad piece length.
    let o = Command::new(SEED)
        .args([
            "/nonexistent/x",
            "--bind",
            "127.142.1.9:0",
            "--bootstrap",
            "127.142.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("/nonexistent/x"),
        "{err}"
    );
    let o = Command::new(SEED)
        .args([dir.to_str().unwrap(), "--piece-length", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "usage error");
    net.shutdown().await;
}

/// `dht-get --seed`: after completing it keeps serving (here as the only source left) until
/// Ctrl-C, then exits 0 with a summary that counts what it uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flag_keeps_serving_after_completion() {
    let net = testnet(146, 6).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("relay.bin");
    let size = 4u64 << 20;
    std::fs::write(&file, content(size as usize, 21)).unwrap();
    let seed_data = tempfile::tempdir().unwrap();
    let (seeder, magnet) = start_seeder(&net, &file, "127.146.3.1", &[], seed_data.path());

    let (out1, data1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut args = vec![
        magnet.clone(),
        "--out".into(),
        out1.path().to_str().unwrap().into(),
        "--seed".into(),
    ];
    args.extend(net_args(&net, "127.146.3.2:0", 1, data1.path()));
    let relay = tokio::task::spawn_blocking(move || {
        let p = Proc::spawn(GET, &args);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if p.line(Duration::from_millis(200))
                .is_some_and(|l| l == "seeding until Ctrl-C")
            {
                return p;
            }
        }
        panic!(
            "dht-get --seed never started seeding: {}",
            p.stderr.lock().unwrap()
        );
    })
    .await
    .unwrap();
    // The original seeder leaves; the relay is the only source.
    drop(seeder);

    let (out2, data2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut args = vec![
        magnet.clone(),
        "--out".into(),
        out2.path().to_str().unwrap().into(),
    ];
    args.extend(net_args(&net, "127.146.3.3:0", 2, data2.path()));
    let (code, text) = tokio::task::spawn_blocking(move || {
        let (code, out, err) = Proc::spawn(GET, &args).finish(Duration::from_secs(90));
        (code, format!("{out}\n{err}"))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "second downloader: {text}");
    let want = std::fs::read(&file).unwrap();
    assert!(want == std::fs::read(out2.path().join("relay.bin")).unwrap());

    let (code, text) = tokio::task::spawn_blocking(move || {
        relay.signal(libc::SIGINT);
        let (code, out, err) = relay.finish(Duration::from_secs(20));
        (code, format!("{out}\n{err}"))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "Ctrl-C while seeding is a success: {text}");
    let uploaded: u64 = text
        .split(", uploaded ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no upload count in {text}"));
    assert!(
        uploaded >= size,
        "the relay uploaded {uploaded} bytes of a {size}-byte file: {text}"
    );
    assert!(want == std::fs::read(out1.path().join("relay.bin")).unwrap());
    net.shutdown().await;
}
