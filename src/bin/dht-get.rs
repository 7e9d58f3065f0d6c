//! `dht-get`: downloads a torrent named by a magnet link, an info hash or a `.torrent` file,
//! using only the DHT and the peers it finds (no trackers).

#[path = "common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser};
use cli::NetArgs;
use trackerless::client::{AddOptions, Client, ClientConfig, Target};
use trackerless::dht::driver::DhtHandle;
use trackerless::download::display::{ProgressDisplay, human_bytes, human_duration};
use trackerless::download::{ResumeStore, Session};
use trackerless::torrent::InfoHash;
use trackerless::torrent::magnet::Magnet;
use trackerless::torrent::metainfo::{Info, torrent_file_from_info};

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

/// The client settings the flags give.
fn client_config(cli: &Cli, resume: Option<ResumeStore>) -> ClientConfig {
    ClientConfig {
        metadata_timeout: Some(cli.timeout),
        upload_rate: cli.upload_rate,
        resume,
        ..cli::client_config(&cli.peer, &cli.net, cli.transport)
    }
}

/// Starts the client (its peer listener), or says why not.
async fn start_client(cli: &Cli, dht: &DhtHandle, resume: Option<ResumeStore>) -> Option<Client> {
    match Client::start(dht.clone(), client_config(cli, resume)).await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

async fn run_metadata_only(cli: &Cli, magnet: Magnet, dht: &DhtHandle) -> i32 {
    let started = Instant::now();
    let ih = magnet.info_hash;
    let Some(client) = start_client(cli, dht, None).await else {
        return 1;
    };
    let fetched = match client.fetch_metadata(&magnet).await {
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

fn print_info(info: &Info, ih: &InfoHash) {
    println!("name: {}", info.name);
    println!("info hash: {ih}");
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
    let Some(client) = start_client(cli, dht, open_resume(cli)).await else {
        return 1;
    };
    let opts = AddOptions { seed: cli.seed };
    let added = tokio::select! {
        r = client.add(target, &cli.out, opts) => r,
        _ = cli::shutdown_signal() => {
            eprintln!("interrupted while fetching the metadata");
            return 130;
        }
    };
    let torrent = match added {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let info = torrent.info();
    let mut lines = ProgressDisplay::new(info.total_length());
    lines.println(&format!(
        "{}: {} in {} file{}, {} pieces of {}; listening on {}",
        info.name,
        human_bytes(info.total_length()),
        info.real_files(),
        if info.real_files() == 1 { "" } else { "s" },
        info.num_pieces(),
        human_bytes(info.piece_length),
        cli::addr_list(client.local_addrs())
    ));

    let interrupted = watch_progress(torrent.session(), &mut lines, false).await;
    let mut progress = torrent.progress();
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
            watch_progress(torrent.session(), &mut lines, true).await;
            // The summary counts what was uploaded while seeding too.
            progress = torrent.progress();
        }
    }
    lines.finish();
    let end = torrent.stop().await;
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
async fn run_scrape(cli: &Cli, ih: InfoHash, dht: &DhtHandle) -> i32 {
    let scrape = async {
        dht.wait_for_nodes(1).await.map_err(|e| e.to_string())?;
        dht.scrape(ih).await.map_err(|e| e.to_string())
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
fn torrent_file_name(name: &str, ih: &InfoHash) -> String {
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
        clean = ih.to_hex();
    }
    format!("{clean}.torrent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_sanitised() {
        let ih = InfoHash([0xab; 20]);
        assert_eq!(
            torrent_file_name("Ubuntu 24.04", &ih),
            "Ubuntu 24.04.torrent"
        );
        assert_eq!(torrent_file_name("a:b*c?\u{7}", &ih), "a_b_c__.torrent");
        assert_eq!(
            torrent_file_name("...", &ih),
            format!("{}.torrent", "ab".repeat(20))
        );
        let long = "é".repeat(300);
        let n = torrent_file_name(&long, &ih);
        assert!(n.len() <= 210 && n.ends_with(".torrent"), "{n}");
        assert!(parse_secs("0").is_err() && parse_secs("x").is_err());
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
    }
}
