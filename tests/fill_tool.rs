//! `dht-loadgen fill`, the one fill tool (issue 11: "one fill tool"): it fills a real
//! `dht-node`'s peer store through the protocol from sources run in waves, every announce
//! is acknowledged, and `--verify` reads the peers back.
//!
//! Addresses: the node on 127.68.0.1:6881, fill sources from 127.68.1.1.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn fill_in_waves_is_acknowledged_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["--bind", "127.68.0.1:6881", "--bootstrap", "127.68.0.2:9"])
        .args(["--allow-net", "127.0.0.0/8", "--rate-limit", "0"])
        .args(["--reply-quota", "0", "--stats-interval", "0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dht-node starts");
    let stderr = BufReader::new(node.stderr.take().expect("piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains(" listening on ") {
                let _ = tx.send(());
            }
        }
    });
    let up = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let fill = up.then(|| {
        Command::new(env!("CARGO_BIN_EXE_dht-loadgen"))
            .args(["fill", "--target", "127.68.0.1:6881"])
            .args(["--infohashes", "30", "--peers", "12", "--sources", "10"])
            .args(["--sources-at-once", "3", "--source-base", "127.68.1.1"])
            .args(["--verify", "6"])
            .output()
            .expect("dht-loadgen runs")
    });
    let _ = node.kill();
    let _ = node.wait();
    assert!(up, "dht-node never logged its listening line");
    let fill = fill.unwrap();
    let out = String::from_utf8_lossy(&fill.stdout);
    let err = String::from_utf8_lossy(&fill.stderr);
    assert!(fill.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("30 infohashes x 12 peers from 10 sources")
            && out.contains("announced 360 failed 0"),
        "{out}"
    );
    // 12 peers per infohash, 10 source IPs: ports 10000 and 10001 make them distinct, and
    // every one comes back.
    assert!(
        out.contains(
            "verify: 6 infohashes looked up, peers returned per infohash mean 12.0 min 12"
        ),
        "{out}"
    );
}
