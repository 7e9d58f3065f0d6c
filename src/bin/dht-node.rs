//! `dht-node`: a long-running Mainline DHT node on the embedded sled store, or (`--router`)
//! a bootstrap router.

#[path = "common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use cli::NetArgs;
use trackerless::dht::driver::Dht;
use trackerless::dht::id::Family;
use trackerless::dht::metrics;
use trackerless::dht::node::Stats;
use trackerless::dht::router::RouterConfig;
use trackerless::dht::router::io::{self as router_io, RouterHandle, RouterRunConfig};

/// A BitTorrent Mainline DHT (BEP 5) node. Joins the network, answers queries, stores
/// announced peers, and keeps its id and routing table across restarts. With --router it is
/// a bootstrap router instead: no peer storage, a large store of verified contacts.
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
    /// Most BEP 44 items (immutable and mutable) kept; bytes are capped at N full-size items.
    #[arg(long, value_name = "N", default_value_t = 700)]
    max_items: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Run as a bootstrap router (answers find_node/get_peers/ping from verified contacts;
    /// seeds an empty store from the bootstrap nodes).
    #[arg(long)]
    router: bool,
    /// Router: verified IPv4 contacts kept (the IPv4 ring's size; also the IPv6 ring's
    /// unless --router-capacity6 is given).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1_000_000,
        requires = "router"
    )]
    router_capacity: usize,
    /// Router: verified IPv6 contacts kept (the IPv6 ring's size) [default: --router-capacity].
    #[arg(long, value_name = "N", requires = "router")]
    router_capacity6: Option<usize>,
    /// Router: seconds between a node's query and its verification.
    #[arg(long, value_name = "SECS", default_value_t = 900, requires = "router")]
    router_verify_delay: u64,
}

fn main() {
    let cli = Cli::parse();
    cli::init_logging();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    if cli.router {
        rt.block_on(run_router(&cli));
    } else {
        rt.block_on(run_node(&cli));
    }
}

async fn bind_metrics(cli: &Cli) -> Option<tokio::net::TcpListener> {
    let addr = cli.metrics?;
    match metrics::bind(addr).await {
        Ok(l) => {
            tracing::info!("metrics at http://{addr}/metrics");
            Some(l)
        }
        Err(e) => cli::fail(format!("cannot bind metrics {addr}: {e}")),
    }
}

async fn run_node(cli: &Cli) {
    let mut cfg = cli.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    cfg.node.store.max_infohashes = cli.max_infohashes;
    cfg.node.store.max_peers_per_infohash = cli.max_peers;
    cfg.node.items = trackerless::dht::items::ItemStoreConfig::with_max_items(cli.max_items);
    let metrics_listener = bind_metrics(cli).await;
    let dht = Dht::spawn(cfg.clone()).unwrap_or_else(|e| cli::fail(e));
    // A second socket is named as such; an IPv6-only node's one socket is its main one.
    let ipv6 = dht
        .local_addr6()
        .filter(|_| dht.local_addr().is_ipv4())
        .map(|a| format!(" and {a} (IPv6 DHT)"))
        .unwrap_or_default();
    tracing::info!(
        "node {} listening on {}{ipv6} (data in {})",
        dht.id(),
        dht.local_addr(),
        cfg.data_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    );
    if let Some(l) = metrics_listener {
        let h = dht.clone();
        tokio::spawn(metrics::serve(l, move || {
            let h = h.clone();
            async move {
                // stats() is the primary node's: the IPv6 one on an IPv6-only node.
                let s4 = h.stats().await.ok().filter(|_| h.local_addr().is_ipv4());
                let s6 = h.stats6().await.ok().flatten();
                let mut families = Vec::new();
                if let Some(s4) = &s4 {
                    families.push((Family::V4, s4));
                }
                if let Some(s6) = &s6 {
                    families.push((Family::V6, s6));
                }
                Some(metrics::render_node(&families))
            }
        }));
    }
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
}

async fn run_router(cli: &Cli) {
    let net = cli.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    let data_dir = cli
        .net
        .data_dir()
        .unwrap_or_else(|e| cli::fail(e))
        .join("router");
    let router = RouterConfig {
        capacity: cli.router_capacity.max(1),
        capacity6: cli.router_capacity6.unwrap_or(cli.router_capacity).max(1),
        verify_delay: Duration::from_secs(cli.router_verify_delay),
        allow: net.node.allow.clone(),
        rate_limit: net.node.rate_limit,
        reply_quota: net.node.reply_quota,
        ..RouterConfig::default()
    };
    let metrics_listener = bind_metrics(cli).await;
    let handle = router_io::spawn(RouterRunConfig {
        bind: net.bind,
        // BEP 32: the IPv6 DHT on its own socket, optional under the default `--bind`.
        bind6: net.bind6,
        bind6_optional: net.bind6_optional,
        router,
        data_dir: Some(data_dir.clone()),
        save_interval: net.save_interval,
        seeds: net.bootstrap.clone(),
    })
    .unwrap_or_else(|e| cli::fail(e));
    let v6 = handle
        .local_addr6()
        .map(|a| format!(" and {a} (IPv6 DHT)"))
        .unwrap_or_default();
    tracing::info!(
        "router listening on {}{v6} ({} contacts, {} of them IPv6, loaded from {})",
        handle.local_addr(),
        handle.loaded(),
        handle.loaded6(),
        data_dir.display()
    );
    if let Some(l) = metrics_listener {
        let h = handle.clone();
        tokio::spawn(metrics::serve(l, move || {
            let h = h.clone();
            async move { h.stats().await.map(|s| metrics::render_router(&s)) }
        }));
    }
    router_loop(cli, &handle).await;
}

async fn router_loop(cli: &Cli, handle: &RouterHandle) {
    let period = Duration::from_secs(cli.stats_interval.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last = (Instant::now(), handle.stats().await.unwrap_or_default());
    let signal = cli::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tick.tick(), if cli.stats_interval > 0 => {
                let Some(s) = handle.stats().await else { break };
                let now = Instant::now();
                let secs = (now - last.0).as_secs_f64().max(1e-3);
                let q = |m: &trackerless::dht::node::MethodCounts| m.ping + m.find_node + m.get_peers + m.announce_peer + m.sample_infohashes + m.get + m.put + m.other;
                println!(
                    "router stored {} ({} IPv6) pending {} | queries {:.1}/s admitted {} | in {} out {}",
                    s.stored,
                    s.stored6,
                    s.pending,
                    (q(&s.queries_by_method) - q(&last.1.queries_by_method)) as f64 / secs,
                    s.admitted,
                    trackerless::util::fmt::rate((s.bytes_in - last.1.bytes_in) as f64 / secs),
                    trackerless::util::fmt::rate((s.bytes_out - last.1.bytes_out) as f64 / secs),
                );
                last = (now, s);
            }
        }
    }
    tracing::info!("shutting down");
    if let Err(e) = handle.shutdown().await {
        cli::fail(format!("could not save the router store: {e}"));
    }
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
        trackerless::util::fmt::rate(per_s(before.bytes_in, now.bytes_in)),
        trackerless::util::fmt::rate(per_s(before.bytes_out, now.bytes_out)),
    )
}
