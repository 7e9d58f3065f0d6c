//! `dht-crawl`: surveys the DHT's infohashes politely (BEP 51), keeps them in a sled store
//! or a PostgreSQL database, and exports them.

#[path = "common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cli::NetArgs;
use std::sync::Arc;
use trackerless::crawl::backend::is_postgres_url;
use trackerless::crawl::enrich::{Bep9Fetcher, MetadataConfig};
use trackerless::crawl::export::{ExportError, Format, export};
use trackerless::crawl::web::{self, WebState};
use trackerless::crawl::{self, CrawlConfig, CrawlStore, PgStore, Store, StoreConfig, WalkConfig};
use trackerless::dht::driver::Dht;
use trackerless::metadata::FetchConfig;

/// An honest BitTorrent DHT crawler: a normal DHT node that walks the keyspace with BEP 51
/// sample_infohashes at a bounded rate, and records every infohash it learns with when and
/// how it was seen.
#[derive(Parser, Debug)]
#[command(name = "dht-crawl", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    crawl: CrawlArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Dump the store (one JSON object per line, or CSV) to stdout or a file.
    Export(ExportArgs),
    /// Serve a read-only web page (status, search, torrents) and JSON API over the store.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Listen here (TCP). Loopback by default: the page has no authentication.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// The crawler's data directory (the sled store is DIR/crawl).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read this store: `sled` (DIR/crawl) or postgres://USER@HOST/DB.
    #[arg(long, value_name = "STORE", default_value = "sled", value_parser = parse_store)]
    store: String,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// The crawler's data directory (the store is DIR/crawl).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read this store instead: `sled` (DIR/crawl) or postgres://USER@HOST/DB.
    #[arg(long, value_name = "STORE", default_value = "sled", value_parser = parse_store)]
    store: String,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CrawlArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Where records go: `sled` (the embedded store in DATA_DIR/crawl) or a PostgreSQL
    /// connection string, postgres://USER@HOST/DB (what it leaves out comes from the PG*
    /// variables; a host like %2Frun%2Fpostgresql or ?host=/run/postgresql is a Unix socket).
    #[arg(long, value_name = "STORE", default_value = "sled", value_parser = parse_store)]
    store: String,
    /// Walk queries per second, at most (metadata lookups are charged to it too).
    #[arg(long, value_name = "N", default_value_t = 200.0, value_parser = parse_rate)]
    rate: f64,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Append one JSON object per new infohash to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print a status line every SECS seconds (0 = never).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    status_interval: u64,
    /// Write sightings to disk every SECS seconds (what a crash can lose at most).
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    flush_interval: u64,
    /// Fetch each new torrent's metadata (BEP 9) from its peers and store name, size, files.
    #[arg(long)]
    metadata: bool,
    /// Metadata fetches running at once.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "metadata",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    metadata_workers: u64,
    /// Serve the status page, /api/stats and Prometheus /metrics here while crawling (and,
    /// with a PostgreSQL store, search and torrent pages too).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Warn, count a stall and re-bootstrap when no new infohash came for MINUTES
    /// (fractions allowed; 0 = never).
    #[arg(long, value_name = "MINUTES", default_value_t = 30.0, value_parser = parse_minutes)]
    stall_after: f64,
    /// Retention: keep at most N records; the least-seen (then longest unseen) go first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_records: Option<u64>,
    /// Retention: drop records not seen for DAYS days (fractions allowed).
    #[arg(long, value_name = "DAYS", value_parser = parse_days)]
    max_age: Option<f64>,
    /// Estimate each new infohash's swarm (seeds, downloaders) with a BEP 33 DHT scrape,
    /// stored and exported as seeds_est/peers_est; its queries count against --rate.
    #[arg(long)]
    scrape: bool,
    /// Also write each fetched torrent as `DIR/<infohash>.torrent`.
    #[arg(long, value_name = "DIR", requires = "metadata")]
    torrent_dir: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if r.is_finite() && (0.1..=100_000.0).contains(&r) {
        Ok(r)
    } else {
        Err("must be between 0.1 and 100000 queries per second".into())
    }
}

fn parse_store(s: &str) -> Result<String, String> {
    if s == "sled" || is_postgres_url(s) {
        Ok(s.to_string())
    } else {
        Err("expected `sled` or postgres://USER@HOST/DB".into())
    }
}

/// Opens the store `--store` names (sled in `dir` by default).
fn open_store(store: &str, dir: PathBuf, must_exist: bool) -> Store {
    if is_postgres_url(store) {
        return PgStore::open(store).unwrap_or_else(|e| cli::fail(e)).into();
    }
    if must_exist && !dir.exists() {
        cli::fail(format!("no crawl store at {}", dir.display()));
    }
    CrawlStore::open(&dir, StoreConfig::default())
        .unwrap_or_else(|e| cli::fail(e))
        .into()
}

fn parse_days(s: &str) -> Result<f64, String> {
    let d: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if d.is_finite() && d > 0.0 && d <= 36_500.0 {
        Ok(d)
    } else {
        Err("must be more than 0 and at most 36500 days".into())
    }
}

fn parse_minutes(s: &str) -> Result<f64, String> {
    let m: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if m.is_finite() && (0.0..=525_600.0).contains(&m) {
        Ok(m)
    } else {
        Err("must be between 0 and 525600 minutes".into())
    }
}

fn main() {
    let cli = Cli::parse();
    cli::init_logging();
    match cli.cmd {
        Some(Cmd::Export(a)) => export_cmd(a),
        Some(Cmd::Serve(a)) => serve_cmd(a),
        None => crawl_cmd(cli.crawl),
    }
}

fn store_dir(data_dir: Option<PathBuf>) -> PathBuf {
    data_dir
        .map(Ok)
        .unwrap_or_else(cli::default_data_dir)
        .unwrap_or_else(|e| cli::fail(e))
        .join("crawl")
}

fn export_cmd(a: ExportArgs) {
    let dir = if is_postgres_url(&a.store) {
        PathBuf::new()
    } else {
        store_dir(a.data_dir)
    };
    let store = open_store(&a.store, dir, true);
    let result = match &a.out {
        Some(path) => std::fs::File::create(path)
            .map_err(ExportError::Write)
            .and_then(|f| export(&store, a.format, &mut std::io::BufWriter::new(f)))
            .map_err(|e| match e {
                ExportError::Write(e) => format!("cannot write {}: {e}", path.display()),
                e => e.to_string(),
            }),
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            match export(&store, a.format, &mut w) {
                // A closed pipe (`| head`) is the reader's choice, not an error.
                Err(ExportError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                r => r.map_err(|e| match e {
                    ExportError::Write(e) => format!("cannot write to stdout: {e}"),
                    e => e.to_string(),
                }),
            }
        }
    };
    match result {
        Ok(n) => tracing::info!("exported {n} records"),
        Err(e) => cli::fail(e),
    }
}

fn serve_cmd(a: ServeArgs) {
    let dir = if is_postgres_url(&a.store) {
        PathBuf::new()
    } else {
        store_dir(a.data_dir)
    };
    let store = open_store(&a.store, dir, true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.http)
            .await
            .unwrap_or_else(|e| cli::fail(format!("cannot listen on {}: {e}", a.http)));
        let addr = listener.local_addr().unwrap_or(a.http);
        println!("serving {} on http://{addr}/", store.describe());
        let _ = std::io::stdout().flush();
        let state = WebState {
            store: Some(Arc::new(store)),
            status: None,
        };
        if let Err(e) = web::serve(listener, state, cli::shutdown_signal()).await {
            cli::fail(format!("the web server stopped: {e}"));
        }
    });
}

fn crawl_cmd(a: CrawlArgs) {
    let mut cfg = a.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    let data_dir = a.net.data_dir().unwrap_or_else(|e| cli::fail(e));
    // The store first: a second crawler on the same directory fails before binding.
    let store = open_store(&a.store, data_dir.join("crawl"), false);
    // A PostgreSQL store can be read by the page through its own connection while the
    // crawl writes; sled allows one process and one opener.
    let web_store = (a.http.is_some() && is_postgres_url(&a.store))
        .then(|| open_store(&a.store, PathBuf::new(), false));
    let routers = cfg.bootstrap.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    cfg.incoming = Some(tx);
    let walk = WalkConfig {
        rate: a.rate,
        burst: (a.rate / 10.0).clamp(1.0, 100.0),
        allow: cfg.node.allow.clone(),
        ..WalkConfig::default()
    };
    let allow = cfg.node.allow.clone();
    let dht = Dht::spawn(cfg).unwrap_or_else(|e| cli::fail(e));
    if let Some(dir) = &a.torrent_dir {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| cli::fail(format!("cannot create {}: {e}", dir.display())));
    }
    let metadata = a.metadata.then(|| MetadataConfig {
        workers: a.metadata_workers as usize,
        fetcher: Arc::new(Bep9Fetcher(FetchConfig {
            allow,
            dht: Some(dht.clone()),
            dht_port: Some(dht.local_addr().port()),
            timeout: Some(Duration::from_secs(30)),
            ..FetchConfig::default()
        })),
        torrent_dir: a.torrent_dir.clone(),
        queue: 10_000,
        lookup_timeout: Duration::from_secs(20),
    });
    tracing::info!(
        "crawler node {} on {}{} (store {}, {} infohashes)",
        dht.id(),
        dht.local_addr(),
        dht.local_addr6()
            .map(|a| format!(" and {a} (IPv6 DHT crawled too)"))
            .unwrap_or_default(),
        store.describe(),
        store.count()
    );
    let status_interval = a.status_interval;
    let live = Arc::new(std::sync::Mutex::new(crawl::CrawlStatus::default()));
    let live_w = live.clone();
    let routers: Vec<std::net::SocketAddr> = routers
        .iter()
        .filter_map(|r| std::net::ToSocketAddrs::to_socket_addrs(r).ok())
        .flatten()
        .collect();
    let crawl_cfg = CrawlConfig {
        stall_after: (a.stall_after > 0.0).then(|| Duration::from_secs_f64(a.stall_after * 60.0)),
        routers,
        max_records: a.max_records,
        max_age: a.max_age.map(|d| Duration::from_secs_f64(d * 86400.0)),
        walk,
        flush_interval: Duration::from_secs(a.flush_interval),
        status_interval: Duration::from_secs(status_interval.max(1)),
        duration: a.duration.map(Duration::from_secs),
        out: a.out,
        metadata,
        scrape: a.scrape.then(trackerless::crawl::ScrapeConfig::default),
        on_status: Some(Box::new(move |s| {
            if let Ok(mut l) = live_w.lock() {
                *l = s.clone();
            }
            if status_interval > 0 {
                println!("{s}");
                let _ = std::io::stdout().flush();
            }
        })),
        ..CrawlConfig::default()
    };
    // Two workers: while the crawl loop waits on a store flush (fsync, or the database),
    // the queries in flight, the metadata pool and the web server run on the other.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    rt.block_on(async {
        if let Some(addr) = a.http {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| cli::fail(format!("cannot listen on {addr}: {e}")));
            let bound = listener.local_addr().unwrap_or(addr);
            println!("serving status on http://{bound}/");
            let _ = std::io::stdout().flush();
            let state = WebState {
                store: web_store.map(Arc::new),
                status: Some(live.clone()),
            };
            tokio::spawn(async move {
                if let Err(e) = web::serve(listener, state, std::future::pending()).await {
                    tracing::warn!("the web server stopped: {e}");
                }
            });
        }
        let result = crawl::run(
            dht.clone(),
            Some(rx),
            store,
            crawl_cfg,
            cli::shutdown_signal(),
        )
        .await;
        let saved = dht.shutdown().await;
        match result {
            Ok(report) => {
                println!("final: {}", report.status);
                tracing::info!("walk: {:?}", report.walk4);
                if let Some(w6) = &report.walk6 {
                    tracing::info!("walk over IPv6: {w6:?}");
                }
            }
            Err(e) => cli::fail(e),
        }
        if let Err(e) = saved {
            cli::fail(format!("could not save the node state: {e}"));
        }
    });
}
