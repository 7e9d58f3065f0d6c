//! `dht-get`: turns a magnet link (or a bare info hash) into a verified `.torrent`, using
//! only the DHT and the peers it finds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser};
use tokio::sync::mpsc;
use trackerless::allow::AllowList;
use trackerless::cli::{self, NetArgs};
use trackerless::magnet::Magnet;
use trackerless::metadata::{FetchConfig, PeerSource, fetch_metadata};
use trackerless::metainfo::{Info, torrent_file_from_info};
use trackerless::net::{Dht, DhtConfig, DhtHandle, StartError};
use trackerless::wire::generate_peer_id;

/// Fetch a torrent by magnet link or info hash through the Mainline DHT (no trackers).
///
/// With --metadata-only, looks the info hash up in the DHT, fetches the info dict from the
/// peers found (BEP 9), verifies it against the info hash, and writes `<name>.torrent`.
#[derive(Parser, Debug)]
#[command(name = "dht-get", version)]
struct Cli {
    /// A magnet link, or a 40-hex / 32-base32 info hash.
    #[arg(value_name = "MAGNET_OR_INFOHASH")]
    target: String,
    /// Fetch only the metadata and write the .torrent (the only mode implemented so far).
    #[arg(long)]
    metadata_only: bool,
    /// Directory to write the .torrent into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    timeout: Duration,
    /// Peer connections open at once while fetching.
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u16).range(1..=1000))]
    max_peers: u16,
    #[command(flatten)]
    net: NetArgs,
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
    // A short-lived client should not fight a resident `dht-node` for port 6881: unless
    // --bind is given, take an ephemeral port.
    let matches = Cli::command()
        .mut_arg("bind", |a| a.default_value("0.0.0.0:0"))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::init_logging();
    let magnet = Magnet::parse(&cli.target).unwrap_or_else(|e| cli::fail(e));
    if !cli.metadata_only {
        cli::fail(
            "full downloads are not implemented yet; pass --metadata-only to fetch the .torrent",
        );
    }
    if let Err(e) = std::fs::create_dir_all(&cli.out) {
        cli::fail(format!("cannot create {}: {e}", cli.out.display()));
    }
    let cfg = cli.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    let dht = start_dht(cfg).unwrap_or_else(|e| cli::fail(e));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    let code = rt.block_on(run(&cli, magnet, &dht));
    rt.block_on(async {
        if let Err(e) = dht.shutdown().await {
            tracing::warn!("could not save the DHT state: {e}");
        }
    });
    std::process::exit(code);
}

/// Starts the node with its persisted state; if the store is unavailable (typically locked
/// by a running `dht-node` on the same data directory), runs without persistence instead of
/// refusing to work.
fn start_dht(cfg: DhtConfig) -> Result<DhtHandle, String> {
    match Dht::spawn(cfg.clone()) {
        Ok(h) => Ok(h),
        Err(StartError::Store(e)) => {
            tracing::warn!("node store unavailable ({e}); continuing without persistence");
            Dht::spawn(DhtConfig {
                data_dir: None,
                ..cfg
            })
            .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn run(cli: &Cli, magnet: Magnet, dht: &DhtHandle) -> i32 {
    let started = Instant::now();
    let ih = magnet.info_hash;
    let (tx, rx) = mpsc::unbounded_channel();
    let lookups = tokio::spawn(lookup_loop(dht.clone(), ih, tx));
    let fetch_cfg = FetchConfig {
        peer_id: generate_peer_id(),
        allow: AllowList::only(cli.net.allow_net.clone()),
        max_connections: usize::from(cli.max_peers),
        timeout: Some(cli.timeout),
        dht: Some(dht.clone()),
        dht_port: Some(dht.local_addr().port()),
        ..FetchConfig::default()
    };
    let source = PeerSource::new(magnet.peers.iter().copied()).with_channel(rx);
    let result = fetch_metadata(ih, source, &fetch_cfg).await;
    lookups.abort();
    let fetched = match result {
        Ok(f) => f,
        Err(e) => {
            let nodes = dht
                .stats()
                .await
                .map(|s| s.good_nodes + s.questionable_nodes)
                .unwrap_or(0);
            eprintln!(
                "error: {e}; the DHT routing table has {nodes} node{}",
                if nodes == 1 { "" } else { "s" }
            );
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
    if let Err(e) = write_atomically(&path, &torrent_file_from_info(&fetched.info)) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return 1;
    }
    let from: Vec<String> = fetched
        .stats
        .suppliers()
        .map(|a: SocketAddr| a.to_string())
        .collect();
    println!("name: {}", info.name);
    println!("info hash: {}", hex::encode(ih));
    println!(
        "total size: {} bytes ({})",
        info.total_length(),
        human_bytes(info.total_length())
    );
    println!("files: {}", info.files.len());
    println!(
        "piece length: {} bytes ({})",
        info.piece_length,
        human_bytes(info.piece_length)
    );
    println!("pieces: {}", info.num_pieces());
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

/// Feeds peers of repeated get_peers lookups to the fetcher: the first as soon as the
/// routing table has a node, then again with growing pauses, since a seeder may announce
/// (or a lookup may miss it) after we start. Ends when the fetcher drops the receiver.
async fn lookup_loop(dht: DhtHandle, ih: [u8; 20], tx: mpsc::UnboundedSender<SocketAddr>) {
    if dht.wait_for_nodes(1).await.is_err() {
        return;
    }
    let mut pause = Duration::from_millis(250);
    loop {
        let Ok(mut peers) = dht.get_peers(trackerless::id::NodeId(ih)) else {
            return;
        };
        while let Some(p) = peers.next().await {
            if tx.send(SocketAddr::V4(p)).is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tx.closed() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
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

/// Writes through a temporary file and a rename, so a crash never leaves a truncated
/// `.torrent` behind.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("torrent.part{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16384), "16.0 KiB");
        assert!(parse_secs("0").is_err() && parse_secs("x").is_err());
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
    }
}
