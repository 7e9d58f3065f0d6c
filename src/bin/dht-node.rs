//! `dht-node`: a long-running Mainline DHT node on the embedded sled store.

use std::time::{Duration, Instant};

use clap::Parser;
use trackerless::cli::{self, NetArgs};
use trackerless::net::Dht;
use trackerless::node::Stats;

/// A BitTorrent Mainline DHT (BEP 5) node. Joins the network, answers queries, stores
/// announced peers, and keeps its id and routing table across restarts.
#[derive(Parser, Debug)]
#[command(name = "dht-node", version)]
struct Cli {
    #[command(flatten)]
    net: NetArgs,
    /// Print a one-line status every SECS seconds (0 = never).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    stats_interval: u64,
    /// Most infohashes kept in the peer store.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    max_infohashes: usize,
    /// Most peers kept per infohash.
    #[arg(long, value_name = "N", default_value_t = 500)]
    max_peers: usize,
}

fn main() {
    let cli = Cli::parse();
    cli::init_logging();
    let mut cfg = cli.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    cfg.node.store.max_infohashes = cli.max_infohashes;
    cfg.node.store.max_peers_per_infohash = cli.max_peers;
    let dht = Dht::spawn(cfg.clone()).unwrap_or_else(|e| cli::fail(e));
    tracing::info!(
        "node {} listening on {} (data in {})",
        dht.id(),
        dht.local_addr(),
        cfg.data_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    rt.block_on(async {
        let mut last = (Instant::now(), dht.stats().await.unwrap_or_default());
        let period = Duration::from_secs(cli.stats_interval.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let signal = cli::shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                _ = tick.tick(), if cli.stats_interval > 0 => {
                    let Ok(now_stats) = dht.stats().await else { break };
                    let now = Instant::now();
                    println!("{}", status_line(&last.1, &now_stats, now - last.0));
                    last = (now, now_stats);
                }
            }
        }
        tracing::info!("shutting down");
        if let Err(e) = dht.shutdown().await {
            cli::fail(format!("could not save state: {e}"));
        }
    });
}

fn status_line(before: &Stats, now: &Stats, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let per_s = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    format!(
        "nodes good {} questionable {} buckets {} | infohashes {} peers {} | queries in {:.1}/s out {:.1}/s | in {} out {}",
        now.good_nodes,
        now.questionable_nodes,
        now.buckets,
        now.infohashes,
        now.peers,
        per_s(before.queries_in, now.queries_in),
        per_s(before.queries_out, now.queries_out),
        cli::rate(per_s(before.bytes_in, now.bytes_in)),
        cli::rate(per_s(before.bytes_out, now.bytes_out)),
    )
}
