//! `dht-seed`: shares a file or directory through the Mainline DHT (no trackers).

#[path = "common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory, FromArgMatches, Parser};
use cli::NetArgs;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use trackerless::client::{Client, ClientConfig};
use trackerless::dht::driver::DhtHandle;
use trackerless::download::Phase;
use trackerless::download::display::{ProgressDisplay, human_bytes};
use trackerless::torrent::InfoHash;
use trackerless::torrent::hybrid::create_hybrid_info;
use trackerless::torrent::magnet::Magnet;
use trackerless::torrent::metainfo::{Info, Metainfo, create_info};

/// Share a file or a directory through the Mainline DHT (no trackers).
///
/// Hashes PATH into a v1 torrent (a directory becomes a multi-file torrent named after
/// it), prints its magnet link as the first line of stdout, announces it into the DHT
/// (and again periodically), and serves the metadata and the pieces to anyone who asks
/// until Ctrl-C.
#[derive(Parser, Debug)]
#[command(name = "dht-seed", version)]
struct Cli {
    /// The file or directory to share.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Piece length in bytes (default: chosen from the total size, 16 KiB to 16 MiB).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=(256 << 20)))]
    piece_length: Option<u64>,
    /// Also write the .torrent file here.
    #[arg(long, value_name = "FILE")]
    torrent_out: Option<PathBuf>,
    /// Create a BEP 52 hybrid (v1 + v2) torrent, the format libtorrent 2.x and qBittorrent
    /// make by default: files aligned to pieces by BEP 47 pad files, and a `file tree` and
    /// `piece layers` for v2 clients. We serve it through its v1 part. The piece length
    /// must then be a power of two of at least 16 KiB.
    #[arg(long)]
    hybrid: bool,
    #[command(flatten)]
    peer: cli::PeerArgs,
    /// Upload at most this many bytes per second (default: unlimited).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    upload_rate: Option<u64>,
    #[command(flatten)]
    transport: cli::TransportArgs,
    #[command(flatten)]
    net: NetArgs,
}

fn main() {
    trackerless::download::tune_allocator();
    let matches = Cli::command()
        .mut_arg("bind", |a| a.default_value("0.0.0.0:0"))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::init_logging();

    let (raw, info, piece_layers) =
        hash(&cli.path, cli.piece_length, cli.hybrid).unwrap_or_else(|e| cli::fail(e));
    // The files are served from where they are: PATH's parent holds `name`.
    let root = std::fs::canonicalize(&cli.path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| cli::fail(format!("cannot resolve {}", cli.path.display())));

    let cfg = cli.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    let dht = cli::start_dht_or_without_store(cfg).unwrap_or_else(|e| cli::fail(e));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    let code = rt.block_on(run(&cli, Bytes::from(raw), info, piece_layers, root, &dht));
    rt.block_on(async {
        if let Err(e) = dht.shutdown().await {
            tracing::warn!("could not save the DHT state: {e}");
        }
    });
    std::process::exit(code);
}

/// Contacts from our routing table written into `nodes` besides our own address: enough
/// for a downloader to join the DHT if its own routers fail, few enough to stay fresh.
const TORRENT_NODES: usize = 8;

/// How long `--torrent-out` waits for the routing table before writing `nodes` with
/// whatever it holds (our own address at least, when it is a specific IP).
const TORRENT_NODES_WAIT: Duration = Duration::from_secs(3);

/// The `.torrent` for `--torrent-out`: the info dict verbatim; `nodes` (BEP 5: our own DHT
/// address when it is a specific IP, then good contacts from our table, so a downloader
/// can join the DHT from the file alone); `piece layers` for a hybrid torrent (without
/// them a v2 client would have to ask peers for the hashes, which we do not serve).
async fn torrent_file(raw: &[u8], piece_layers: Option<Vec<u8>>, dht: &DhtHandle) -> Vec<u8> {
    let mut meta = Metainfo::from_info_bytes(raw).unwrap_or_else(|e| cli::fail(e));
    meta.piece_layers = piece_layers;
    let own = dht.local_addr();
    if !own.ip().is_unspecified() {
        meta.nodes.push((own.ip().to_string(), own.port()));
    }
    let _ = tokio::time::timeout(TORRENT_NODES_WAIT, dht.wait_for_nodes(1)).await;
    if let Ok(contacts) = dht.contacts().await {
        meta.nodes.extend(
            contacts
                .iter()
                .filter(|c| SocketAddr::V4(c.addr) != own)
                .take(TORRENT_NODES)
                .map(|c| (c.addr.ip().to_string(), c.addr.port())),
        );
    }
    meta.to_bytes()
}

/// Hashes PATH, with a progress bar on a terminal (stderr, so stdout stays the magnet).
/// Returns the info dict, its typed view, and for a hybrid torrent its `piece layers`.
type Hashed = (Vec<u8>, Info, Option<Vec<u8>>);
fn hash(path: &Path, piece_length: Option<u64>, hybrid: bool) -> Result<Hashed, String> {
    let total = total_size(path);
    let bar = (std::io::stderr().is_terminal() && total > 0).then(|| {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "hashing [{bar:32}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let progress = |n| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    };
    let r = if hybrid {
        create_hybrid_info(path, piece_length, progress)
            .map(|c| (c.info_bytes, c.info, Some(c.piece_layers)))
    } else {
        create_info(path, piece_length, progress).map(|(raw, info)| (raw, info, None))
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r.map_err(|e| e.to_string())
}

/// Bytes under `path` (for the bar; 0 if unknown).
fn total_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    let mut sum = 0;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(_) => sum += std::fs::metadata(e.path()).map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    sum
}

async fn run(
    cli: &Cli,
    raw: Bytes,
    info: Info,
    piece_layers: Option<Vec<u8>>,
    root: PathBuf,
    dht: &DhtHandle,
) -> i32 {
    let cfg = ClientConfig {
        upload_rate: cli.upload_rate,
        ..cli::client_config(&cli.peer, &cli.net, cli.transport)
    };
    let client = match Client::start(dht.clone(), cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut magnet = Magnet::from_info_hash(InfoHash::of_info(&raw));
    magnet.display_name = Some(info.name.clone());
    // Every specific listen address, so a peer of either family can dial us (BEP 9 `x.pe`,
    // `[v6]:port` for IPv6); a wildcard names no address a peer could use.
    magnet.peers.extend(
        client
            .local_addrs()
            .iter()
            .filter(|a| !a.ip().is_unspecified()),
    );
    // Written before the magnet is printed, so a script that read the magnet finds it.
    if let Some(out) = &cli.torrent_out
        && let Err(e) =
            trackerless::util::atomic_write(out, &torrent_file(&raw, piece_layers, dht).await)
    {
        eprintln!("error: cannot write {}: {e}", out.display());
        return 1;
    }
    let torrent = match client.seed(raw, &root).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    {
        // The magnet first, alone on its line, so scripts can read it; printed once the
        // session is attached, so a peer that connects the moment it reads the magnet is
        // served pieces, not only the metadata.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", magnet.to_uri());
        let _ = out.flush();
    }
    let mut lines = ProgressDisplay::new(info.total_length());
    lines.println(&format!(
        "seeding {} ({} in {} file{}, {} pieces) on {}, DHT {}",
        info.name,
        human_bytes(info.total_length()),
        info.real_files(),
        if info.real_files() == 1 { "" } else { "s" },
        info.num_pieces(),
        cli::addr_list(client.local_addrs()),
        dht.local_addr()
    ));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let signal = cli::shutdown_signal();
    tokio::pin!(signal);
    let mut counts = (
        trackerless::wire::TransportCounts::default(),
        trackerless::wire::CryptoCounts::default(),
    );
    let mut pex_counts = trackerless::wire::pex::PexCounts::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Per-transport connection counts, printed when they change: shows which
                // transport peers actually reach us over (and scripts can wait for it).
                let now = trackerless::wire::transport_counts();
                if now != counts.0 {
                    counts.0 = now;
                    lines.println(&format!(
                        "peer connections: tcp in {} out {}, utp in {} out {}",
                        now.tcp_in, now.tcp_out, now.utp_in, now.utp_out
                    ));
                }
                // The same for how their bytes travel (plain, MSE then plaintext, RC4).
                let now = trackerless::wire::crypto_counts();
                if now != counts.1 {
                    counts.1 = now;
                    lines.println(&format!("peer encryption: {now}"));
                }
                // PEX activity likewise (messages in and out, peers learnt).
                let pex_now = trackerless::wire::pex::pex_counts();
                if pex_now != pex_counts {
                    pex_counts = pex_now;
                    lines.println(&pex_now.to_string());
                }
                let p = torrent.progress();
                lines.update(&p);
                if let Phase::Stopped(_) = p.phase {
                    break;
                }
            }
            _ = &mut signal => break,
        }
    }
    lines.finish();
    let p = torrent.progress();
    match torrent.stop().await {
        Ok(()) => {
            println!("uploaded {} bytes", p.uploaded);
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
