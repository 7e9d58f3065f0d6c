//! Drives `tools/lt_node.py` (a real python-libtorrent 2.x session) as a subprocess, so the
//! integration tests can check our node against the reference implementation.
//!
//! The child speaks JSON lines: one reply (with an `"ok"` key) per command, in order, and
//! asynchronous events (with an `"event"` key) interleaved anywhere. A reader thread parses
//! stdout into a channel; replies are matched to commands and events are queued until a
//! test asks for them, so no event is lost while waiting for a reply. A second thread keeps
//! the tail of stderr so every panic can show what libtorrent said before it died.
//!
//! Threads (not tokio tasks) own the pipes so the helper works on any runtime flavour, and
//! the async waits never block the runtime the nodes under test run on.
//!
//! Set `TRACKERLESS_LT_VERBOSE=1` to start the child with `--verbose` (libtorrent's DHT log
//! and every DHT packet on its stderr) and to mirror that stderr to the test's stderr;
//! `LT_STDERR=1` mirrors the (non-verbose) stderr only, e.g. to watch peer connections.
//!
//! This is the one driver for `lt_node.py`: the DHT interop tests use the DHT commands, the
//! metadata and download tests the torrent ones ([`LtNode::seed`], [`LtNode::add_magnet`],
//! [`LtNode::wait_finished`], [`LtNode::torrent_status`]).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use trackerless::dht::id::{InfoHash, NodeId};

/// How long `lt_node.py` may take to print its ready line (python + libtorrent import take
/// ~0.3 s on an idle machine; a loaded CI machine can be much slower).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command may take to be answered (`status` and `get_node_table` wait up to
/// 5 s for a libtorrent alert inside the child).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of the child's stderr is kept for failure messages.
const STDERR_TAIL: usize = 16 * 1024;
/// Queued events kept at most; the oldest go first. A busy session posts many (peers
/// batches, incoming get_peers) that a test may never ask for.
const MAX_QUEUED_EVENTS: usize = 10_000;

/// The command line `python3 tools/lt_node.py` uses.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/lt_node.py")
}

/// One running `lt_node.py`. The child is killed when this is dropped.
pub struct LtNode {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Events read while waiting for something else, oldest first.
    events: VecDeque<Value>,
    stderr: Arc<Mutex<String>>,
    /// libtorrent's DHT node id, from the ready line.
    pub node_id: NodeId,
    /// The address libtorrent listens on (TCP and UDP: DHT, uTP).
    pub addr: SocketAddrV4,
    /// The session's save dir (`seed` writes its .torrent files here); owned so it lives as
    /// long as the child and is removed after it.
    pub save_dir: tempfile::TempDir,
}

/// What `seed PATH` answered.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub info_hash: String,
    pub magnet: String,
    /// The .torrent libtorrent wrote (in its save dir).
    pub torrent: PathBuf,
    pub name: String,
}

impl LtNode {
    /// Starts libtorrent on `ip` with a free port (TCP and UDP), retrying a few times in
    /// case another process grabs the port between the probe and libtorrent's bind.
    /// Panics with the child's stderr if it cannot start.
    pub async fn start_on(ip: Ipv4Addr) -> LtNode {
        LtNode::start_on_with(ip, &[]).await
    }

    /// A libtorrent session on `ip` (with `lt_node.py` `flags`) that knows the first three
    /// nodes of `net` and has at least one in its DHT table.
    pub async fn joined(
        net: &trackerless::sim::testnet::Testnet,
        ip: Ipv4Addr,
        flags: &[&str],
    ) -> LtNode {
        let mut lt = LtNode::start_on_with(ip, flags).await;
        for i in 0..3 {
            lt.add_node(net.addr(i)).await;
        }
        let n = lt.wait_dht_nodes(1, Duration::from_secs(20)).await;
        assert!(n >= 1, "libtorrent's DHT table stayed empty");
        lt
    }

    /// [`LtNode::start_on`] with extra `lt_node.py` flags (e.g. `--no-utp`).
    pub async fn start_on_with(ip: Ipv4Addr, flags: &[&str]) -> LtNode {
        let mut errors = Vec::new();
        for _ in 0..4 {
            let port = match free_port(ip) {
                Ok(p) => p,
                Err(e) => panic!("no free TCP+UDP port on {ip}: {e}"),
            };
            match LtNode::try_start_with(SocketAddrV4::new(ip, port), flags).await {
                Ok(n) => return n,
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "lt_node.py did not start on {ip} (is python libtorrent 2.x installed? \
             `pip install libtorrent`):\n{}",
            errors.join("\n---\n")
        );
    }

    /// Starts libtorrent on exactly `bind`; panics with the child's stderr if it cannot, so
    /// an interop test never passes vacuously.
    pub async fn start(bind: SocketAddrV4) -> LtNode {
        match LtNode::try_start(bind).await {
            Ok(n) => n,
            Err(e) => panic!(
                "lt_node.py did not start on {bind} (is python libtorrent 2.x installed? \
                 `pip install libtorrent`):\n{e}"
            ),
        }
    }

    /// Starts libtorrent on exactly `bind`; `Err` carries the reason and the child's stderr.
    pub async fn try_start(bind: SocketAddrV4) -> Result<LtNode, String> {
        LtNode::try_start_with(bind, &[]).await
    }

    /// [`LtNode::try_start`] with extra `lt_node.py` flags.
    pub async fn try_start_with(bind: SocketAddrV4, flags: &[&str]) -> Result<LtNode, String> {
        let save_dir = tempfile::Builder::new()
            .prefix("lt_node_test_")
            .tempdir()
            .map_err(|e| format!("cannot create a save dir: {e}"))?;
        let verbose = env_flag("TRACKERLESS_LT_VERBOSE");
        let mirror = verbose || env_flag("LT_STDERR");
        let mut cmd = Command::new("python3");
        cmd.arg(script_path())
            .arg("--bind")
            .arg(bind.to_string())
            .arg("--save-dir")
            .arg(save_dir.path())
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if verbose {
            cmd.arg("--verbose");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run python3 {}: {e}", script_path().display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr_pipe = child.stderr.take().expect("stderr is piped");

        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("lt_node stdout {bind}"))
            .spawn(move || read_stdout(stdout, tx))
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let tail = Arc::clone(&stderr);
        std::thread::Builder::new()
            .name(format!("lt_node stderr {bind}"))
            .spawn(move || read_stderr(stderr_pipe, tail, mirror))
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;

        let mut node = LtNode {
            child,
            stdin,
            lines,
            events: VecDeque::new(),
            stderr,
            node_id: NodeId([0; 20]),
            addr: bind,
            save_dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let line = match tokio::time::timeout_at(deadline, node.lines.recv()).await {
                Err(_) => {
                    return Err(node.failure(&format!("no ready line within {READY_TIMEOUT:?}")));
                }
                Ok(None) => return Err(node.failure("exited before it was ready")),
                Ok(Some(v)) => v,
            };
            match line.get("event").and_then(Value::as_str) {
                Some("ready") => {
                    let id = line.get("node_id").and_then(Value::as_str).unwrap_or("");
                    node.node_id = id
                        .parse()
                        .map_err(|e| node.failure(&format!("bad node_id in {line}: {e}")))?;
                    return Ok(node);
                }
                Some("error") => return Err(node.failure(&format!("failed to start: {line}"))),
                _ => node.queue_event(line),
            }
        }
    }

    /// Sends one command line and returns its reply (`{"ok":true,...}`); `Err` for an
    /// `ok:false` reply (the child's error message). Panics if the child dies or does not
    /// answer within [`COMMAND_TIMEOUT`]: the protocol is then broken and nothing sensible
    /// can follow.
    pub async fn try_command(&mut self, line: &str) -> Result<Value, String> {
        self.send_line(line);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let v = self.recv_until(deadline).await.unwrap_or_else(|| {
                panic!(
                    "{}",
                    self.failure(&format!("no reply to {line:?} within {COMMAND_TIMEOUT:?}"))
                )
            });
            match v.get("ok") {
                Some(Value::Bool(true)) => return Ok(v),
                Some(_) => {
                    return Err(v
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("ok:false without an error message")
                        .to_string());
                }
                None => self.queue_event(v),
            }
        }
    }

    /// Like [`LtNode::try_command`] but panics on an `ok:false` reply.
    pub async fn command(&mut self, line: &str) -> Value {
        match self.try_command(line).await {
            Ok(v) => v,
            Err(e) => panic!(
                "{}",
                self.failure(&format!("command {line:?} refused: {e}"))
            ),
        }
    }

    /// The first event of `kind` (queued or arriving within `timeout`) for which `accept`
    /// returns true; queued events that don't match stay queued. `None` on timeout.
    pub async fn wait_event(
        &mut self,
        kind: &str,
        timeout: Duration,
        mut accept: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self
            .events
            .iter()
            .position(|e| is_event(e, kind) && accept(e))
        {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + timeout;
        while let Some(v) = self.recv_until(deadline).await {
            if is_event(&v, kind) && accept(&v) {
                return Some(v);
            }
            self.queue_event(v);
        }
        None
    }

    /// Drops every queued event (e.g. before timing a new operation).
    pub fn clear_events(&mut self) {
        while self.lines.try_recv().is_ok() {}
        self.events.clear();
    }

    /// Every event of `kind` that arrives within `window` (plus those already queued),
    /// removed from the queue.
    pub async fn collect_events(&mut self, kind: &str, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        while let Some(v) = self.recv_until(deadline).await {
            self.queue_event(v);
        }
        self.take_events(kind)
    }

    /// Removes and returns the queued events of `kind` without waiting.
    pub fn take_events(&mut self, kind: &str) -> Vec<Value> {
        while let Ok(v) = self.lines.try_recv() {
            self.queue_event(v);
        }
        let (mine, rest) = self.events.drain(..).partition(|e| is_event(e, kind));
        self.events = rest;
        mine.into()
    }

    /// The child's process id (for CPU and memory measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `status`: live routing-table size and more (see `tools/lt_node.py`).
    pub async fn status(&mut self) -> Value {
        self.command("status").await
    }

    /// Live routing-table size.
    pub async fn dht_nodes(&mut self) -> u64 {
        let st = self.status().await;
        st.get("dht_nodes").and_then(Value::as_u64).unwrap_or(0)
    }

    /// Polls `status` until the live routing table holds at least `n` nodes or `timeout`
    /// passes; returns the last count.
    pub async fn wait_dht_nodes(&mut self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.dht_nodes().await;
            if have >= n || Instant::now() >= deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// libtorrent's live routing table as (id, address) pairs.
    pub async fn node_table(&mut self) -> Vec<(NodeId, SocketAddrV4)> {
        let reply = self.command("get_node_table").await;
        parse_nodes(reply.get("nodes"))
    }

    pub async fn add_node(&mut self, addr: impl Into<std::net::SocketAddr>) {
        let addr = addr.into();
        self.command(&format!("add_node {} {}", addr.ip(), addr.port()))
            .await;
    }

    /// `dht_announce(ih, port, flags)`; flags: 1 = seed, 2 = implied_port.
    pub async fn announce(&mut self, info_hash: InfoHash, port: u16, flags: u32) {
        self.command(&format!("announce {info_hash} {port} {flags}"))
            .await;
    }

    /// Starts a get_peers lookup; results arrive as `peers` events (see
    /// [`LtNode::wait_for_peer`]).
    pub async fn get_peers(&mut self, info_hash: InfoHash) {
        self.command(&format!("get_peers {info_hash}")).await;
    }

    /// Waits up to `timeout` for a `peers` event for `info_hash` that lists `peer`.
    pub async fn wait_for_peer(
        &mut self,
        info_hash: InfoHash,
        peer: impl Into<std::net::SocketAddr>,
        timeout: Duration,
    ) -> bool {
        let peer = peer.into();
        let ih = info_hash.to_string();
        let want = peer.to_string();
        self.wait_event("peers", timeout, |e| {
            e.get("info_hash").and_then(Value::as_str) == Some(ih.as_str())
                && e.get("peers")
                    .and_then(Value::as_array)
                    .is_some_and(|ps| ps.iter().any(|p| p.as_str() == Some(want.as_str())))
        })
        .await
        .is_some()
    }

    /// Asks `node` for a BEP 51 sample; the answer arrives as a `samples` event.
    pub async fn sample_infohashes(&mut self, node: SocketAddrV4, target: NodeId) {
        self.command(&format!(
            "sample_infohashes {} {} {target}",
            node.ip(),
            node.port()
        ))
        .await;
    }

    /// `seed PATH`: libtorrent makes a v1 torrent of the file or directory, seeds it from
    /// its parent directory and announces it to the DHT.
    pub async fn seed(&mut self, path: &Path) -> Seeded {
        self.seed_with(&format!("seed \"{}\"", path.display()))
            .await
    }

    /// `seed_default PATH PIECE_SIZE`: like [`Self::seed`] with libtorrent's default torrent
    /// format (2.x: hybrid v1+v2 with BEP 47 pad files); `info_hash` is the v1 hash.
    #[allow(dead_code)]
    pub async fn seed_default(&mut self, path: &Path, piece_size: u32) -> Seeded {
        self.seed_with(&format!("seed_default \"{}\" {piece_size}", path.display()))
            .await
    }

    /// `add_torrent_file TORRENT DIR`: libtorrent downloads the .torrent into `dir`; its
    /// peers come from [`Self::add_peer`].
    #[allow(dead_code)]
    pub async fn add_torrent_file(&mut self, torrent: &Path, dir: &Path) -> String {
        let r = self
            .command(&format!(
                "add_torrent_file \"{}\" \"{}\"",
                torrent.display(),
                dir.display()
            ))
            .await;
        r["info_hash"].as_str().unwrap_or_default().to_owned()
    }

    /// `add_torrent_file TORRENT DIR upload_mode`: like [`Self::add_torrent_file`], but the
    /// torrent never downloads (it serves the metadata, and no data since it has none).
    #[allow(dead_code)]
    pub async fn add_torrent_file_upload_mode(&mut self, torrent: &Path, dir: &Path) -> String {
        let r = self
            .command(&format!(
                "add_torrent_file \"{}\" \"{}\" upload_mode",
                torrent.display(),
                dir.display()
            ))
            .await;
        r["info_hash"].as_str().unwrap_or_default().to_owned()
    }

    /// `peer_info IH`: the torrent's connected peers (`ip`, `source`, `pex`, `outgoing`,
    /// `seed`, `client`).
    #[allow(dead_code)]
    pub async fn peer_info(&mut self, info_hash: &str) -> Vec<Value> {
        let r = self.command(&format!("peer_info {info_hash}")).await;
        r["peers"].as_array().cloned().unwrap_or_default()
    }

    /// `dht_announce_torrent IH`: announces the torrent to the DHT now.
    #[allow(dead_code)]
    pub async fn announce_torrent(&mut self, info_hash: &str) {
        self.command(&format!("dht_announce_torrent {info_hash}"))
            .await;
    }

    /// `add_peer IH IP PORT`: libtorrent connects to the peer for that torrent.
    #[allow(dead_code)]
    pub async fn add_peer(&mut self, info_hash: &str, peer: std::net::SocketAddr) {
        self.command(&format!(
            "add_peer {info_hash} {} {}",
            peer.ip(),
            peer.port()
        ))
        .await;
    }

    async fn seed_with(&mut self, line: &str) -> Seeded {
        let r = self.command(line).await;
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Seeded {
            info_hash: field("info_hash"),
            magnet: field("magnet"),
            torrent: PathBuf::from(field("torrent")),
            name: field("name"),
        }
    }

    /// `add_magnet MAGNET DIR`: libtorrent resolves and downloads the magnet into `dir`.
    pub async fn add_magnet(&mut self, magnet: &str, dir: &Path) {
        self.command(&format!("add_magnet \"{magnet}\" \"{}\"", dir.display()))
            .await;
    }

    /// `torrent_status IH` (progress, peers, payload byte counts, ...).
    pub async fn torrent_status(&mut self, info_hash: &str) -> Value {
        self.command(&format!("torrent_status {info_hash}")).await
    }

    /// Waits for the `finished` event of `info_hash`; `false` on timeout.
    pub async fn wait_finished(&mut self, info_hash: &str, timeout: Duration) -> bool {
        self.wait_event("finished", timeout, |e| {
            e.get("info_hash").and_then(Value::as_str) == Some(info_hash)
        })
        .await
        .is_some()
    }

    /// Asks the child to quit and waits (briefly) for a clean exit; dropping an `LtNode`
    /// kills it instead.
    pub async fn quit(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"quit\n").and_then(|_| stdin.flush());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// libtorrent's side of the story for a failure message: status, live table, queued
    /// events and the stderr tail. Never panics (a dead child is reported as such).
    pub async fn diagnostics(&mut self) -> String {
        let mut out = format!("libtorrent node {} id {}\n", self.addr, self.node_id);
        if let Ok(Some(status)) = self.child.try_wait() {
            out.push_str(&format!("  child exited: {status}\n"));
        } else {
            for cmd in ["status", "get_node_table"] {
                match self.try_command_no_panic(cmd).await {
                    Ok(v) => out.push_str(&format!("  {cmd}: {v}\n")),
                    Err(e) => out.push_str(&format!("  {cmd} failed: {e}\n")),
                }
            }
        }
        while let Ok(v) = self.lines.try_recv() {
            self.queue_event(v);
        }
        out.push_str(&format!("  {} queued event(s)", self.events.len()));
        for e in self.events.iter().rev().take(20) {
            out.push_str(&format!("\n    {e}"));
        }
        out.push_str(&format!("\n  stderr tail:\n{}", self.stderr_tail()));
        out
    }

    /// The last few KiB the child wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// [`LtNode::try_command`] for diagnostics: a dead or stuck child is an `Err`, not a panic.
    async fn try_command_no_panic(&mut self, line: &str) -> Result<Value, String> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err("stdin closed".into());
        };
        if let Err(e) = stdin.write_all(format!("{line}\n").as_bytes()) {
            return Err(format!("cannot write to the child: {e}"));
        }
        let _ = stdin.flush();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            match self.recv_until(deadline).await {
                None => return Err("no reply (child dead or stuck)".into()),
                Some(v) if v.get("ok").is_some() => return Ok(v),
                Some(v) => self.queue_event(v),
            }
        }
    }

    fn queue_event(&mut self, v: Value) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(v);
    }

    fn send_line(&mut self, line: &str) {
        let res = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|_| stdin.flush()),
            None => Err(std::io::Error::other("stdin already closed")),
        };
        if let Err(e) = res {
            panic!("{}", self.failure(&format!("cannot send {line:?}: {e}")));
        }
    }

    /// The next stdout line, or `None` at the deadline or when the child has closed stdout.
    async fn recv_until(&mut self, deadline: Instant) -> Option<Value> {
        tokio::time::timeout_at(deadline, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// A failure message: what went wrong, the child's exit status if it has exited, and
    /// its stderr tail.
    fn failure(&mut self, what: &str) -> String {
        // Give a dying child a moment so its exit status and last words are in.
        let mut status = None;
        for _ in 0..20 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = match status {
            Some(s) => format!("exited: {s}"),
            None => "still running".to_string(),
        };
        format!(
            "lt_node.py on {}: {what} ({status})\n--- lt_node stderr (tail) ---\n{}",
            self.addr,
            self.stderr_tail()
        )
    }
}

impl Drop for LtNode {
    fn drop(&mut self) {
        // Closing stdin alone would make it exit cleanly, but that can take seconds
        // (libtorrent's session teardown); a test has no state to save, so kill it.
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn is_event(v: &Value, kind: &str) -> bool {
    v.get("event").and_then(Value::as_str) == Some(kind)
}

/// `[{"id":hex,"addr":"ip:port"},...]` as pairs; malformed entries are skipped.
pub fn parse_nodes(v: Option<&Value>) -> Vec<(NodeId, SocketAddrV4)> {
    v.and_then(Value::as_array)
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| {
                    let id = n.get("id")?.as_str()?.parse().ok()?;
                    let addr = n.get("addr")?.as_str()?.parse().ok()?;
                    Some((id, addr))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A port free for both TCP and UDP on `ip` (libtorrent listens on both).
fn free_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..50 {
        let tcp = TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        match UdpSocket::bind((ip, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
}

fn read_stdout(stdout: impl Read, tx: mpsc::UnboundedSender<Value>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        // A line that is not JSON is a protocol bug in the script; surface it as an event
        // rather than dying, so the failure message shows it.
        let v = serde_json::from_str(&line)
            .unwrap_or_else(|_| serde_json::json!({"event": "unparsed", "line": line}));
        if tx.send(v).is_err() {
            break;
        }
    }
}

fn read_stderr(stderr: impl Read, tail: Arc<Mutex<String>>, mirror: bool) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if mirror {
            eprintln!("{line}");
        }
        let Ok(mut t) = tail.lock() else { break };
        t.push_str(&line);
        t.push('\n');
        if t.len() > 2 * STDERR_TAIL {
            let mut cut = t.len() - STDERR_TAIL;
            while !t.is_char_boundary(cut) {
                cut += 1;
            }
            t.drain(..cut);
        }
    }
}
