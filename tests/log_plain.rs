//! Logs are plain text when stderr is not a terminal (issue 11, part 6): a `dht-node` whose
//! stderr is a pipe must not write ANSI colour codes, or every line in a journal or a log
//! file carries `\x1b[...m` noise.
//!
//! `NO_COLOR` is removed from the child's environment so the test checks the terminal
//! detection itself (with `NO_COLOR` set the output would be plain either way).
//!
//! Addresses: the node on 127.67.0.1, a bootstrap address nobody listens on at 127.67.0.2.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn dht_node_logs_without_colour_codes_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["--bind", "127.67.0.1:0", "--bootstrap", "127.67.0.2:9"])
        .args(["--allow-net", "127.0.0.0/8", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dht-node starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));

    // Read lines on a thread until the node says it is listening (an event, not a sleep);
    // the thread hands back everything it read, then the rest after the kill.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains(" listening on ") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            line.clear();
        }
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let came_up = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    let log = reader.join().expect("reader thread");

    assert!(came_up, "dht-node never logged its listening line:\n{log}");
    assert!(log.contains("INFO"), "info lines were logged:\n{log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in piped stderr:\n{log:?}"
    );
}
