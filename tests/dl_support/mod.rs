//! Helpers for the download tests: content on disk, a loopback testnet, and our peers (a
//! DHT node + the listener + a download or seeding session on one loopback IP).
//!
//! Each test crate uses a different subset, hence the dead-code allowance.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
use trackerless::dht::node::Config;
use trackerless::download::{Mode, Phase, Session, SessionConfig};
use trackerless::metadata::{MetadataRegistry, MetadataServer, ServeConfig};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::metainfo::create_info;

/// Whether two files have the same bytes (false if either cannot be read).
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

/// The numbers of the last line in `lines` that starts with `prefix` (a counters line such
/// as `peer connections: tcp in 1 out 0, ...`), or `None` if there is no such line or it
/// does not hold exactly `N` numbers. Digits inside words (`rc4`) are not numbers.
pub fn last_counts<const N: usize, S: AsRef<str>>(lines: &[S], prefix: &str) -> Option<[u64; N]> {
    let l = lines
        .iter()
        .rev()
        .map(AsRef::as_ref)
        .find(|l| l.starts_with(prefix))?;
    let nums: Vec<u64> = l
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|t| t.parse().ok())
        .collect();
    nums.try_into().ok()
}

/// Deterministic pseudo-random bytes (xorshift), so content differs between files and
/// positions and a misplaced block is caught.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file of `len` pseudo-random bytes.
pub fn make_file(path: &Path, len: usize, seed: u64) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, content(len, seed)).unwrap();
}

/// Writes files `(relative path, len)` under `dir`.
pub fn make_tree(dir: &Path, files: &[(&str, usize)]) {
    for (i, (rel, len)) in files.iter().enumerate() {
        make_file(&dir.join(rel), *len, 1000 + i as u64);
    }
}

/// Asserts that every file under `a` equals the same path under `b`.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let mut stack = vec![PathBuf::new()];
    let mut files = 0;
    while let Some(rel) = stack.pop() {
        let here = a.join(&rel);
        if here.is_dir() {
            for e in std::fs::read_dir(&here).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else {
            let x = std::fs::read(&here).unwrap();
            let y = std::fs::read(b.join(&rel))
                .unwrap_or_else(|e| panic!("{} missing: {e}", b.join(&rel).display()));
            assert!(x == y, "{} differs", rel.display());
            files += 1;
        }
    }
    assert!(files > 0, "nothing compared under {}", a.display());
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// A loopback testnet of `n` of our nodes on 127.`subnet`.x.y.
pub async fn testnet(subnet: u8, n: usize) -> Testnet {
    let net = Testnet::start(
        n,
        TestnetConfig {
            subnet,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        net.wait_for_tables(3.min(n - 1), Duration::from_secs(20))
            .await
            >= 3.min(n - 1)
    );
    net
}

/// A DHT node on `ip` (ephemeral port) bootstrapped from `bootstrap`, loopback only.
pub async fn dht_node(ip: Ipv4Addr, bootstrap: &[SocketAddrV4]) -> DhtHandle {
    let mut cfg = DhtConfig::new(SocketAddr::new(ip.into(), 0));
    cfg.node = Config::loopback_testnet();
    cfg.bootstrap = bootstrap.iter().map(|a| a.to_string()).collect();
    let (dht, driver) = Dht::bind(cfg).await.unwrap();
    tokio::spawn(driver);
    dht.wait_for_nodes(1).await.unwrap();
    dht
}

/// One of our peers: a DHT node, the listener, and a session, all on one loopback IP.
pub struct Peer {
    pub dht: DhtHandle,
    pub server: MetadataServer,
    pub registry: Arc<MetadataRegistry>,
    pub session: Session,
}

/// The session settings a loopback peer on `ip` uses.
pub fn session_config(
    dht: &DhtHandle,
    server: &MetadataServer,
    peer_id: trackerless::torrent::PeerId,
) -> SessionConfig {
    SessionConfig {
        peer_id,
        allow: AllowList::loopback(),
        listen_port: Some(server.local_addr().port()),
        local_ips: vec![server.local_addr().ip()],
        dht: Some(dht.clone()),
        dht_port: Some(dht.local_addr().port()),
        ..SessionConfig::default()
    }
}

impl Peer {
    /// Starts a peer for the torrent `info` with its files under `root`; `mode` and
    /// `tweak` (applied to the default loopback config) decide seeding or downloading.
    pub async fn start(
        ip: Ipv4Addr,
        bootstrap: &[SocketAddrV4],
        info: &[u8],
        root: &Path,
        mode: Mode,
        tweak: impl FnOnce(&mut SessionConfig),
    ) -> Peer {
        let dht = dht_node(ip, bootstrap).await;
        let peer_id = trackerless::torrent::PeerId::generate();
        let registry = Arc::new(MetadataRegistry::new());
        let server = MetadataServer::bind(
            SocketAddr::new(ip.into(), 0),
            registry.clone(),
            ServeConfig {
                peer_id,
                allow: AllowList::loopback(),
                dht: Some(dht.clone()),
                dht_port: Some(dht.local_addr().port()),
                ..ServeConfig::default()
            },
        )
        .await
        .unwrap();
        let mut cfg = session_config(&dht, &server, peer_id);
        tweak(&mut cfg);
        let session = Session::start(Bytes::copy_from_slice(info), root, mode, cfg).unwrap();
        let ih = registry.insert(info.to_vec());
        registry.attach(ih, session.handoff());
        Peer {
            dht,
            server,
            registry,
            session,
        }
    }

    /// A seeder of the files under `root` (already complete, so no start-up hashing).
    pub async fn seeder(
        ip: Ipv4Addr,
        bootstrap: &[SocketAddrV4],
        info: &[u8],
        root: &Path,
    ) -> Peer {
        Peer::start(ip, bootstrap, info, root, Mode::ReadOnly, |c| {
            c.seed = true;
            c.assume_complete = true;
        })
        .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Waits (up to `timeout`) for the download to complete; panics with its progress if it
    /// does not.
    pub async fn wait_complete(&self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.session.wait_complete()).await {
            Ok(Phase::Seeding) | Ok(Phase::Stopped(Ok(()))) => {}
            Ok(other) => panic!("session ended {other:?}: {:?}", self.session.progress()),
            Err(_) => panic!(
                "not complete after {timeout:?}: {:?}",
                self.session.progress()
            ),
        }
        let p = self.session.progress();
        assert_eq!(p.verified_pieces, p.pieces, "{p:?}");
    }
}

/// Hashes `path` into a v1 info dict with `piece_length`.
pub fn torrent_of(path: &Path, piece_length: Option<u64>) -> Vec<u8> {
    create_info(path, piece_length, |_| {}).unwrap().0
}

/// A peer that has the pieces `has(piece)` selects and answers requests for them, but
/// corrupts one byte of every block of the pieces `lie(piece)` selects. Built from the wire
/// primitives, independent of our session code.
pub struct Liar {
    pub addr: SocketAddr,
    pub blocks_sent: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Liar {
    pub async fn start(
        ip: Ipv4Addr,
        info_hash: trackerless::torrent::InfoHash,
        data: Arc<Vec<u8>>,
        piece_length: u64,
        has: fn(u32) -> bool,
        lie: fn(u32) -> bool,
    ) -> Liar {
        use std::sync::atomic::{AtomicU64, Ordering};
        use trackerless::wire::{Handshake, Message, PeerConn, WireConfig, handshake_incoming};
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip.into(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let blocks_sent = Arc::new(AtomicU64::new(0));
        let sent = blocks_sent.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (data, sent) = (data.clone(), sent.clone());
                tokio::spawn(async move {
                    let id = trackerless::torrent::PeerId::generate();
                    let Ok(_) = handshake_incoming(&mut stream, Duration::from_secs(5), |hs| {
                        (hs.info_hash == info_hash)
                            .then(|| Handshake::new(info_hash, id).without_fast())
                    })
                    .await
                    else {
                        return;
                    };
                    let pieces = (data.len() as u64).div_ceil(piece_length) as usize;
                    let mut bits = vec![0u8; pieces.div_ceil(8)];
                    for p in 0..pieces {
                        if has(p as u32) {
                            bits[p / 8] |= 0x80 >> (p % 8);
                        }
                    }
                    let mut conn = PeerConn::from_tcp(stream, &WireConfig::default());
                    conn.writer.queue(&Message::Bitfield(Bytes::from(bits)));
                    if conn.writer.flush().await.is_err() {
                        return;
                    }
                    while let Ok(msg) = conn.reader.recv().await {
                        match msg {
                            Message::Interested => conn.writer.queue(&Message::Unchoke),
                            Message::Request {
                                index,
                                begin,
                                length,
                            } => {
                                let start =
                                    (u64::from(index) * piece_length + u64::from(begin)) as usize;
                                let Some(slice) = data.get(start..start + length as usize) else {
                                    return;
                                };
                                let mut block = slice.to_vec();
                                if lie(index) {
                                    block[0] ^= 0x55;
                                }
                                conn.writer.queue(&Message::Piece {
                                    index,
                                    begin,
                                    block: Bytes::from(block),
                                });
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                        if conn.writer.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Liar {
            addr,
            blocks_sent,
            task,
        }
    }
}

/// What one `dht-get` run printed and where it wrote the download.
pub struct GetRun {
    pub status: std::process::ExitStatus,
    /// stdout then stderr.
    pub text: String,
    pub out: tempfile::TempDir,
    pub took: Duration,
    /// The data directory (kept alive with the run).
    pub data: tempfile::TempDir,
}

/// Runs `dht-get MAGNET` bound to `bind` (an `ip:port` on 127/8), bootstrapping from
/// `bootstrap`, sending only to 127.0.0.0/8, into a fresh output directory. The process
/// is killed if the returned future is dropped unfinished.
pub async fn run_dht_get(magnet: &str, bind: &str, bootstrap: &str) -> GetRun {
    run_dht_get_with(magnet, bind, bootstrap, &[]).await
}

/// [`run_dht_get`] with extra `dht-get` flags.
pub async fn run_dht_get_with(magnet: &str, bind: &str, bootstrap: &str, extra: &[&str]) -> GetRun {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        magnet,
        "--out",
        out.path().to_str().unwrap(),
        "--bind",
        bind,
        "--bootstrap",
        bootstrap,
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let t = std::time::Instant::now();
    // Killed if this future is dropped (a test's timeout), so no run outlives its test.
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_dht-get"))
        .args(&args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    GetRun {
        status: o.status,
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        out,
        took: t.elapsed(),
        data,
    }
}

/// A running `dht-seed` and every stdout line it printed so far (killed when dropped).
pub struct Seeder {
    child: std::process::Child,
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
    pub magnet: String,
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dht-seed FILE` on `ip` (any port), bootstrapping from the testnet's first node,
/// sending only to 127.0.0.0/8; returns once it printed its magnet.
pub async fn start_seeder(net: &Testnet, file: &Path, data: &Path, ip: &str) -> Seeder {
    start_seeder_with(net, file, data, ip, &[]).await
}

/// [`start_seeder`] with extra `dht-seed` flags.
pub async fn start_seeder_with(
    net: &Testnet,
    file: &Path,
    data: &Path,
    ip: &str,
    extra: &[&str],
) -> Seeder {
    start_seeder_at(net.addr(0), file, data, ip, extra).await
}

/// [`start_seeder_with`] bootstrapping from `bootstrap` (which need not answer).
pub async fn start_seeder_at(
    bootstrap: SocketAddrV4,
    file: &Path,
    data: &Path,
    ip: &str,
    extra: &[&str],
) -> Seeder {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dht-seed"))
        .arg(file)
        .args([
            "--bind",
            &format!("{ip}:0"),
            "--bootstrap",
            &bootstrap.to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let magnet = tokio::task::spawn_blocking(move || {
        let mut it = BufReader::new(stdout).lines();
        let first = it.next().and_then(Result::ok).unwrap_or_default();
        // Keep draining (and recording) so the seeder never blocks on a full pipe.
        std::thread::spawn(move || {
            for l in it.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        first
    })
    .await
    .unwrap();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
    Seeder {
        child,
        lines,
        magnet,
    }
}

impl Seeder {
    pub fn info_hash(&self) -> String {
        self.magnet["magnet:?xt=urn:btih:".len()..][..40].to_string()
    }

    /// The seeder's peer address, from its magnet's `x.pe`.
    pub fn addr(&self) -> SocketAddrV4 {
        self.magnet
            .split("x.pe=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .map(|s| s.replace("%3A", ":").replace("%3a", ":"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no x.pe in {}", self.magnet))
    }

    /// The last "peer connections: tcp in A out B, utp in C out D" line, as [A, B, C, D].
    pub fn transport_counts(&self) -> Option<[u64; 4]> {
        last_counts(&self.lines.lock().unwrap(), "peer connections: ")
    }

    /// The last "peer encryption: out plain A mse-plaintext B rc4 C; in plain D
    /// mse-plaintext E rc4 F; mse failed G; refused by policy H; fallbacks I" line, as
    /// [A, ..., I].
    pub fn crypto_counts(&self) -> Option<[u64; 9]> {
        last_counts(&self.lines.lock().unwrap(), "peer encryption: ")
    }

    /// The last "pex: messages in A out B, ignored C too frequent D malformed, peers
    /// learned E" line, as [A, B, C, D, E].
    pub fn pex_counts(&self) -> Option<[u64; 5]> {
        last_counts(&self.lines.lock().unwrap(), "pex: ")
    }
}
