//! Drives `tools/lt_node.py` (a real libtorrent session) over its JSON-lines protocol.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/lt_node.py");

/// One libtorrent session on a loopback address. Its log goes to stderr when `LT_STDERR` is
/// set (e.g. to see libtorrent try uTP before TCP), and is discarded otherwise.
pub struct LtNode {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::UnboundedReceiver<Value>,
    events: mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    pub bind: SocketAddrV4,
    pub node_id: String,
    pub save_dir: tempfile::TempDir,
}

impl LtNode {
    /// Starts the session and waits for its `ready` line. Panics with the reason if python3,
    /// libtorrent or the port is unavailable: the interop tests must not pass vacuously.
    pub async fn start(bind: SocketAddrV4) -> LtNode {
        let save_dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg("--bind")
            .arg(bind.to_string())
            .arg("--save-dir")
            .arg(save_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("LT_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run python3 tools/lt_node.py (is python3 installed?)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("ok").is_some() {
                    let _ = reply_tx.send(v);
                } else {
                    let _ = event_tx.send(v);
                }
            }
        });
        let mut node = LtNode {
            child,
            stdin,
            replies,
            events,
            backlog: VecDeque::new(),
            bind,
            node_id: String::new(),
            save_dir,
        };
        let ready = node
            .wait_event(
                |e| e["event"] == "ready" || e["event"] == "error",
                Duration::from_secs(30),
            )
            .await
            .expect("lt_node.py printed nothing (is python libtorrent installed?)");
        assert_eq!(
            ready["event"], "ready",
            "lt_node.py failed to start: {ready}"
        );
        node.node_id = ready["node_id"].as_str().unwrap_or_default().to_owned();
        node
    }

    /// Sends one command and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> Value {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("lt_node.py stdin");
        self.stdin.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.replies.recv())
            .await
            .unwrap_or_else(|_| panic!("no reply to {line:?}"))
            .unwrap_or_else(|| panic!("lt_node.py exited before answering {line:?}"))
    }

    /// Sends one command and panics unless it succeeded.
    pub async fn cmd_ok(&mut self, line: &str) -> Value {
        let r = self.cmd(line).await;
        assert_eq!(r["ok"], true, "{line:?} failed: {r}");
        r
    }

    /// The first event (buffered or new) matching `pred`, within `timeout`. Non-matching
    /// events are kept for later calls.
    pub async fn wait_event(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            if pred(&ev) {
                return Some(ev);
            }
            if self.backlog.len() > 10_000 {
                self.backlog.pop_front();
            }
            self.backlog.push_back(ev);
        }
    }

    /// Drops buffered events (e.g. before timing a new operation).
    pub fn clear_events(&mut self) {
        self.backlog.clear();
        while self.events.try_recv().is_ok() {}
    }

    /// Polls `status` until the live DHT table holds at least `n` nodes; returns the count.
    pub async fn wait_dht_nodes(&mut self, n: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.cmd("status").await;
            let have = s["dht_nodes"].as_u64().unwrap_or(0);
            if have >= n || tokio::time::Instant::now() >= deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}
