//! `dht-get`: downloads a torrent named by a magnet link, an info hash or a `.torrent` file,
//! using only the DHT and the peers it finds (no trackers).

#[path = "common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{CommandFactory, FromArgMatches, Parser};
use cli::NetArgs;
use sha1::{Digest, Sha1};
use trackerless::dht::allow::AllowList;
use trackerless::dht::driver::DhtHandle;
use trackerless::dht::id::NodeId;
use trackerless::dht::peer_feed::PeersConfig;
use trackerless::download::display::{ProgressDisplay, human_bytes, human_duration};
use trackerless::download::{Mode, ResumeStore, Session, SessionConfig};
use trackerless::metadata::{FetchConfig, Fetched, MetadataRegistry, PeerSource, fetch_metadata};
use trackerless::torrent::PeerId;
use trackerless::torrent::magnet::Magnet;
use trackerless::torrent::metainfo::{Info, Metainfo, torrent_file_from_info};

/// Download a torrent through the Mainline DHT (no trackers).
///
/// TARGET is a magnet link, a 40-hex / 32-base32 info hash, or a .torrent file. The info
/// hash is looked up in the DHT, the metadata fetched from the peers found (BEP 9) unless a
/// .torrent was given, and the pieces downloaded from many peers at once, each SHA-1
/// verified. An interrupted download (Ctrl-C, a crash) resumes where it stopped when run
/// again with the same --out and --data-dir. Exit status 0 means every piece is verified.
///
/// With --metadata-only, only the metadata is fetched, and written as `<name>.torrent`.
#[derive(Parser, Debug)]
#[command(name = "dht-get", version)]
struct Cli {
    /// A magnet link, a 40-hex / 32-base32 info hash, or a .torrent file.
    #[arg(value_name = "MAGNET_OR_INFOHASH_OR_TORRENT_FILE")]
    target: String,
    /// Fetch only the metadata and write `<name>.torrent` into --out.
    #[arg(long)]
    metadata_only: bool,
    /// Download directory (created if missing); a multi-file torrent goes into `DIR/<name>/`.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Keep seeding after the download completes, until Ctrl-C.
    #[arg(long)]
    seed: bool,
    /// Only estimate the swarm's size (BEP 33 DHT scrape): print the estimated seeds and
    /// downloaders, from the bloom filters of the nodes around the info hash, and exit.
    #[arg(long, conflicts_with_all = ["metadata_only", "seed"])]
    scrape: bool,
    #[command(flatten)]
    peer: cli::PeerArgs,
    /// Give up if no metadata arrives within this many seconds.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    timeout: Duration,
    /// Upload at most this many bytes per second (default: unlimited).
    #[arg(long, value_name = "BYTES")]
    upload_rate: Option<u64>,
    #[command(flatten)]
    transport: cli::TransportArgs,
    #[command(flatten)]
    net: NetArgs,
}

/// A trackerless `.torrent`'s `nodes` (BEP 5) as extra bootstrap routers: the torrent's
/// creator named DHT nodes to join through, which matters when the built-in routers are
/// unreachable or `--bootstrap` names none that work. Like every router they are only
/// asked to start the join; they enter the routing table only by answering like any other
/// node. IPv6 literals are skipped (the node speaks IPv4), as are entries that are not
/// `host:port`.
fn torrent_routers(nodes: &[(String, u16)]) -> Vec<String> {
    nodes
        .iter()
        .filter(|(host, _)| !host.contains(':'))
        .map(|(host, port)| format!("{host}:{port}"))
        .filter(|e| trackerless::dht::bootstrap::validate_entry(e).is_ok())
        .take(32)
        .collect()
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s}"))?;
    if !(secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!("timeout must be positive: {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What to download.
enum Target {
    Magnet(Magnet),
    /// A .torrent file: the info dict is known.
    Torrent(Metainfo),
}

impl Target {
    fn parse(s: &str) -> Result<Target, String> {
        let path = Path::new(s);
        if path.is_file() {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {s}: {e}"))?;
            let meta = Metainfo::from_bytes(&bytes).map_err(|e| format!("{s}: {e}"))?;
            return Ok(Target::Torrent(meta));
        }
        match Magnet::parse(s) {
            Ok(m) => Ok(Target::Magnet(m)),
            Err(e) if s.ends_with(".torrent") => {
                Err(format!("{s}: no such file (and not a magnet link: {e})"))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn info_hash(&self) -> [u8; 20] {
        match self {
            Target::Magnet(m) => m.info_hash,
            Target::Torrent(t) => t.info_hash,
        }
    }
}

fn main() {
    trackerless::download::tune_allocator();
    // A short-lived client should not fight a resident `dht-node` for port 6881: unless
    // --bind is given, take an ephemeral port.
    let matches = Cli::command()
        .mut_arg("bind", |a| a.default_value("0.0.0.0:0"))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::init_logging();
    // A file-size limit (`ulimit -f`) should fail a write with a clear error (and keep what
    // is verified), not kill the process with SIGXFSZ.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let target = Target::parse(&cli.target).unwrap_or_else(|e| cli::fail(e));
    if cli.metadata_only && matches!(target, Target::Torrent(_)) {
        cli::fail("--metadata-only needs a magnet link or an info hash, not a .torrent file");
    }
    if let Err(e) = std::fs::create_dir_all(&cli.out) {
        cli::fail(format!("cannot create {}: {e}", cli.out.display()));
    }
    let mut cfg = cli.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    if let Target::Torrent(meta) = &target {
        cfg.bootstrap.extend(torrent_routers(&meta.nodes));
    }
    let dht = cli::start_dht_or_without_store(cfg).unwrap_or_else(|e| cli::fail(e));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    let code = rt.block_on(async {
        match target {
            target if cli.scrape => run_scrape(&cli, target.info_hash(), &dht).await,
            Target::Magnet(m) if cli.metadata_only => run_metadata_only(&cli, m, &dht).await,
            target => run_download(&cli, target, &dht).await,
        }
    });
    rt.block_on(async {
        if let Err(e) = dht.shutdown().await {
            tracing::warn!("could not save the DHT state: {e}");
        }
    });
    std::process::exit(code);
}

fn fetch_config(
    cli: &Cli,
    dht: &DhtHandle,
    peer_id: trackerless::torrent::PeerId,
    listen: Option<u16>,
    transports: trackerless::wire::Transports,
) -> FetchConfig {
    FetchConfig {
        peer_id,
        allow: AllowList::only(cli.net.allow_net.clone()),
        max_connections: usize::from(cli.peer.max_peers),
        timeout: Some(cli.timeout),
        dht: Some(dht.clone()),
        dht_port: Some(dht.local_addr().port()),
        listen_port: listen,
        transports,
        wire: trackerless::wire::WireConfig {
            encryption: cli.transport.encryption,
            ..FetchConfig::default().wire
        },
        ..FetchConfig::default()
    }
}

/// Looks the info hash up in the DHT and fetches the metadata from the peers found.
async fn fetch(cfg: &FetchConfig, magnet: &Magnet, dht: &DhtHandle) -> Result<Fetched, String> {
    let ih = magnet.info_hash;
    // Looks again and again, quickly: a seeder may announce (or a lookup may miss it)
    // after we start, and nothing else happens until the metadata is here.
    let lookups = PeersConfig {
        first_pause: Duration::from_millis(250),
        max_pause: Duration::from_secs(5),
        max_pause_leeching: Duration::from_secs(5),
        ..PeersConfig::lookup()
    };
    let source =
        PeerSource::new(magnet.peers.iter().copied()).with_feed(dht.peers(NodeId(ih), lookups));
    let result = fetch_metadata(ih, source, cfg).await;
    match result {
        Ok(f) => Ok(f),
        Err(e) => {
            let nodes = dht
                .stats()
                .await
                .map(|s| s.good_nodes + s.questionable_nodes)
                .unwrap_or(0);
            Err(format!(
                "{e}; the DHT routing table has {nodes} node{}",
                if nodes == 1 { "" } else { "s" }
            ))
        }
    }
}

async fn run_metadata_only(cli: &Cli, magnet: Magnet, dht: &DhtHandle) -> i32 {
    let started = Instant::now();
    let ih = magnet.info_hash;
    let fetch_cfg = fetch_config(
        cli,
        dht,
        PeerId::generate(),
        None,
        // No listener here, so no uTP socket: TCP only.
        trackerless::wire::Transports::default(),
    );
    let fetched = match fetch(&fetch_cfg, &magnet, dht).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let info = match Info::from_bytes(&fetched.info) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: the metadata matches the info hash but is not usable: {e}");
            return 1;
        }
    };
    let path = cli.out.join(torrent_file_name(&info.name, &ih));
    if let Err(e) = trackerless::util::atomic_write(&path, &torrent_file_from_info(&fetched.info)) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return 1;
    }
    let from: Vec<String> = fetched
        .stats
        .suppliers()
        .map(|a: SocketAddr| a.to_string())
        .collect();
    print_info(&info, &ih);
    println!("torrent: {}", path.display());
    println!(
        "fetched {} bytes of metadata from {} in {:.3} s: {}",
        fetched.info.len(),
        from.join(", "),
        started.elapsed().as_secs_f64(),
        fetched.stats.summary()
    );
    0
}

fn print_info(info: &Info, ih: &[u8; 20]) {
    println!("name: {}", info.name);
    println!("info hash: {}", hex::encode(ih));
    println!(
        "total size: {} bytes ({})",
        info.total_length(),
        human_bytes(info.total_length())
    );
    println!("files: {}", info.real_files());
    println!(
        "piece length: {} bytes ({})",
        info.piece_length,
        human_bytes(info.piece_length)
    );
    println!("pieces: {}", info.num_pieces());
}

/// The resume store under the data directory, or `None` (with a warning) if unavailable,
/// e.g. held by another dht-get on the same data directory.
fn open_resume(cli: &Cli) -> Option<ResumeStore> {
    let dir = match cli.net.data_dir() {
        Ok(d) => d.join("resume"),
        Err(e) => {
            tracing::warn!("no data directory ({e}); the download cannot be resumed");
            return None;
        }
    };
    match ResumeStore::open(&dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("{e}; the download cannot be resumed");
            None
        }
    }
}

async fn run_download(cli: &Cli, target: Target, dht: &DhtHandle) -> i32 {
    let started = Instant::now();
    let ih = target.info_hash();
    let peer_id = PeerId::generate();
    let allow = AllowList::only(cli.net.allow_net.clone());
    let resume = open_resume(cli);

    // One listener serves metadata and, once the session is attached, pieces.
    let registry = Arc::new(MetadataRegistry::new());
    let listener = cli::bind_peer_listener(
        &cli.peer,
        &cli.net,
        registry.clone(),
        peer_id,
        dht,
        cli.transport,
    );
    let server = match listener.await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let listen_port = server.local_addr().port();

    // The info dict: from the .torrent, from an earlier run, or from peers.
    let mut extra_peers: Vec<SocketAddr> = Vec::new();
    let cached = resume
        .as_ref()
        .and_then(|r| r.load_info(&ih))
        .filter(|i| <[u8; 20]>::from(Sha1::digest(i)) == ih);
    let info_bytes: Bytes = match (&target, cached) {
        (Target::Torrent(t), _) => Bytes::from(t.info_bytes.clone()),
        (Target::Magnet(_), Some(cached)) => Bytes::from(cached),
        (Target::Magnet(m), None) => {
            let cfg = fetch_config(cli, dht, peer_id, Some(listen_port), server.transports());
            let fetched = tokio::select! {
                r = fetch(&cfg, m, dht) => r,
                _ = cli::shutdown_signal() => {
                    eprintln!("interrupted while fetching the metadata");
                    return 130;
                }
            };
            match fetched {
                Ok(f) => {
                    extra_peers.extend(f.stats.peers.iter().map(|p| p.addr));
                    f.info
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            }
        }
    };
    if let Target::Magnet(m) = &target {
        extra_peers.extend(m.peers.iter().copied());
    }
    let info = match Info::from_bytes(&info_bytes) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: the metadata matches the info hash but is not usable: {e}");
            return 1;
        }
    };
    if let Some(r) = &resume
        && let Err(e) = r.save_info(&ih, &info_bytes)
    {
        tracing::warn!("{e}");
    }
    if info.private && extra_peers.is_empty() {
        eprintln!(
            "error: {} is a private torrent (BEP 27): its peers come only from its trackers, \
             which a trackerless client does not use",
            info.name
        );
        return 1;
    }
    let mut lines = ProgressDisplay::new(info.total_length());
    lines.println(&format!(
        "{}: {} in {} file{}, {} pieces of {}; listening on {}",
        info.name,
        human_bytes(info.total_length()),
        info.real_files(),
        if info.real_files() == 1 { "" } else { "s" },
        info.num_pieces(),
        human_bytes(info.piece_length),
        server.local_addr()
    ));

    let cfg = SessionConfig {
        peer_id,
        allow,
        max_peers: usize::from(cli.peer.max_peers),
        listen_port: Some(listen_port),
        local_ip: Some(server.local_addr().ip()),
        transports: server.transports(),
        wire: trackerless::wire::WireConfig {
            encryption: cli.transport.encryption,
            ..SessionConfig::default().wire
        },
        dht: Some(dht.clone()),
        dht_port: Some(dht.local_addr().port()),
        seed: cli.seed,
        upload_rate: cli.upload_rate,
        pex: !cli.peer.no_pex,
        resume,
        ..SessionConfig::default()
    };
    let session = match Session::start(info_bytes.clone(), &cli.out, Mode::ReadWrite, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    registry.insert(info_bytes);
    registry.attach(ih, session.handoff());
    session.add_peers(extra_peers);

    let interrupted = watch_progress(&session, &mut lines, false).await;
    let mut progress = session.progress();
    let complete = progress.verified_pieces == progress.pieces;
    if complete && !interrupted {
        let secs = started.elapsed().as_secs_f64();
        lines.println(&format!(
            "complete: {} verified in {} ({} downloaded, {} wasted, {} uploaded, {} hash failures, {} banned) into {}",
            human_bytes(progress.total_bytes),
            human_duration(Duration::from_secs_f64(secs)),
            progress.downloaded,
            progress.wasted,
            progress.uploaded,
            progress.hash_failures,
            progress.banned,
            cli.out.display(),
        ));
        if cli.seed {
            lines.println("seeding until Ctrl-C");
            watch_progress(&session, &mut lines, true).await;
            // The summary counts what was uploaded while seeding too.
            progress = session.progress();
        }
    }
    lines.finish();
    let end = session.stop().await;
    registry.detach(&ih);
    let summary = format!(
        "downloaded {} bytes, wasted {}, uploaded {} in {:.1} s",
        progress.downloaded,
        progress.wasted,
        progress.uploaded,
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = end {
        eprintln!("error: {e}");
        eprintln!(
            "{} of {} pieces verified (kept for the next run); {summary}",
            progress.verified_pieces, progress.pieces
        );
        return 1;
    }
    if !complete {
        eprintln!(
            "interrupted: {} of {} pieces verified (kept for the next run); {summary}",
            progress.verified_pieces, progress.pieces
        );
        return 130;
    }
    println!("{summary}");
    0
}

/// Shows progress until the session completes (or, when `seeding`, until it stops) or the
/// user interrupts; returns whether it was interrupted.
async fn watch_progress(session: &Session, lines: &mut ProgressDisplay, seeding: bool) -> bool {
    let every = if lines.is_bar() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut tick = tokio::time::interval(every);
    let signal = cli::shutdown_signal();
    tokio::pin!(signal);
    // Completion ends the wait at once, not at the next display tick.
    let done = async {
        if seeding {
            let _ = session.wait_stopped().await;
        } else {
            session.wait_complete().await;
        }
    };
    tokio::pin!(done);
    let mut counts = Counts::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                counts.show(lines);
                lines.update(&session.progress());
            }
            _ = &mut done => {
                counts.show(lines);
                lines.update(&session.progress());
                return false;
            }
            _ = &mut signal => return true,
        }
    }
}

/// The process-wide peer counters last printed.
#[derive(Default)]
struct Counts {
    pex: trackerless::wire::pex::PexCounts,
    crypto: trackerless::wire::CryptoCounts,
}

impl Counts {
    /// Prints the PEX counters (messages in and out, peers learnt) and the encryption
    /// counters (connections by method, failures, fallbacks) when they changed.
    fn show(&mut self, lines: &ProgressDisplay) {
        let pex = trackerless::wire::pex::pex_counts();
        if pex != self.pex {
            self.pex = pex;
            lines.println(&pex.to_string());
        }
        let crypto = trackerless::wire::crypto_counts();
        if crypto != self.crypto {
            self.crypto = crypto;
            lines.println(&format!("peer encryption: {crypto}"));
        }
    }
}

/// `--scrape`: one BEP 33 scrape lookup once the routing table has a node; prints
/// `seeds N downloaders M nodes R` (R: nodes whose replies carried filters; nodes holding
/// nothing for the info hash send none, as libtorrent's do, so an unknown swarm reads
/// `seeds 0 downloaders 0 nodes 0`). Exit code 1 when the DHT could not be reached within
/// --timeout.
async fn run_scrape(cli: &Cli, ih: [u8; 20], dht: &DhtHandle) -> i32 {
    let scrape = async {
        dht.wait_for_nodes(1).await.map_err(|e| e.to_string())?;
        dht.scrape(NodeId(ih)).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(cli.timeout, scrape).await {
        Ok(Ok(est)) => {
            println!(
                "seeds {} downloaders {} nodes {}",
                est.seeds_est(),
                est.peers_est(),
                est.replies
            );
            0
        }
        Ok(Err(e)) => {
            eprintln!("error: scrape failed: {e}");
            1
        }
        Err(_) => {
            eprintln!(
                "error: no scrape result within {} s (no DHT node reachable?)",
                cli.timeout.as_secs()
            );
            1
        }
    }
}

/// `<name>.torrent`, made safe for any file system: the name already passed the path-safety
/// check (one component, no `..`), but may still hold control characters or characters some
/// file systems refuse, or be too long for a file name.
fn torrent_file_name(name: &str, ih: &[u8; 20]) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    let trimmed = clean.trim_matches(|c: char| c == '.' || c.is_whitespace());
    clean = trimmed.to_owned();
    // 255 bytes is the usual file-name limit; leave room for ".torrent".
    while clean.len() > 200 {
        clean.pop();
    }
    if clean.is_empty() {
        clean = hex::encode(ih);
    }
    format!("{clean}.torrent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_sanitised() {
        let ih = [0xab; 20];
        assert_eq!(
            torrent_file_name("Ubuntu 24.04", &ih),
            "Ubuntu 24.04.torrent"
        );
        assert_eq!(torrent_file_name("a:b*c?\u{7}", &ih), "a_b_c__.torrent");
        assert_eq!(
            torrent_file_name("...", &ih),
            format!("{}.torrent", hex::encode(ih))
        );
        let long = "é".repeat(300);
        let n = torrent_file_name(&long, &ih);
        assert!(n.len() <= 210 && n.ends_with(".torrent"), "{n}");
        assert!(parse_secs("0").is_err() && parse_secs("x").is_err());
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn targets_parse() {
        assert!(matches!(
            Target::parse(&hex::encode([3u8; 20])),
            Ok(Target::Magnet(_))
        ));
        let e = Target::parse("/nonexistent/x.torrent").err().unwrap();
        assert!(e.contains("no such file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.torrent");
        std::fs::write(&bad, b"not bencode").unwrap();
        assert!(Target::parse(bad.to_str().unwrap()).is_err());
    }
}
