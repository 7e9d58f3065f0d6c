//! Every peer connection's end is logged at debug level with who closed it and why, so
//! an interop stall can be diagnosed from our side alone: `dht-seed` with
//! `RUST_LOG=debug` is connected to by scripted peers that hang up (peer closed: EOF or reset) and
//! that break a rule (we closed: protocol violation).
//!
//! Addresses: ours 127.154.2.1, scripted peers 127.154.2.2.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trackerless::dht::allow::AllowList;
use trackerless::torrent::{InfoHash, PeerId};
use trackerless::wire::{
    Handshake, Message, PeerConn, WireConfig, connect_from, handshake_outgoing,
};

const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");

async fn handshaken(to: SocketAddr, ih: InfoHash) -> tokio::net::TcpStream {
    let mut s = connect_from(
        to,
        Some("127.154.2.2".parse().unwrap()),
        &AllowList::loopback(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    handshake_outgoing(
        &mut s,
        &Handshake::new(ih, PeerId::generate()).without_fast(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    s
}

/// Waits until the collected stderr has a line containing every one of `needles`.
async fn wait_line(log: &Mutex<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let text = log.lock().unwrap();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} in:\n{text}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_end_is_logged_with_who_and_why() {
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("log.bin");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut seeder = Command::new(SEED)
        .arg(&file)
        .args([
            "--bind",
            "127.154.2.1:0",
            "--bootstrap",
            "127.154.0.250:6881",
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "trackerless::download=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = seeder.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    let stdout = seeder.stdout.take().unwrap();
    let magnet = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        first
    })
    .await
    .unwrap();
    let ih = InfoHash::from_hex(&magnet["magnet:?xt=urn:btih:".len()..][..40]).unwrap();
    let peer: SocketAddr = magnet
        .split("x.pe=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .map(|s| s.replace("%3A", ":").replace("%3a", ":"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no x.pe in {magnet}"));

    // A peer that handshakes and hangs up (EOF, or a reset when our bitfield was still
    // unread in its socket).
    drop(handshaken(peer, ih).await);
    let line = wait_line(&log, &["peer connection ended", "peer closed: "]).await;
    assert!(line.contains("127.154.2.2"), "{line}");

    // A peer that announces a piece past the end.
    let s = handshaken(peer, ih).await;
    let mut conn = PeerConn::from_tcp(s, &WireConfig::default());
    conn.writer.queue(&Message::Have { piece: 9999 });
    conn.writer.flush().await.unwrap();
    wait_line(
        &log,
        &[
            "peer connection ended",
            "we closed: protocol violation: have for piece 9999",
        ],
    )
    .await;
    drop(conn);
    let _ = seeder.kill();
    let _ = seeder.wait();
}
