//! `dht-testnet`: runs a loopback DHT testnet of N real nodes in one process, for demos and
//! benchmarks.
//!
//! Every node binds its own 127.SUBNET.x.y address and only ever sends to 127.0.0.0/8. The
//! tool prints the node addresses (so `dht-node --bootstrap` can join), waits until the
//! routing tables are populated, prints aggregate status periodically and, with `--lookups K`,
//! measures lookups: success rate and messages per lookup (median, p90, max).
//!
//! Lookups are measured from "probe" nodes, ordinary nodes ([`Dht::bind`]) that join after
//! the testnet and so have fresher, sparser tables, and from random testnet nodes; both go
//! through the public handle, whose lookup summaries carry the messages each lookup sent.
//! Comparing the two shows whether the probes' younger tables matter.

#[path = "../src/bin/common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::task::JoinSet;
use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle};
use trackerless::dht::id::NodeId;
use trackerless::dht::node;
use trackerless::sim::stats::{Summary, true_closest};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;

/// Most nodes a testnet can hold: addresses are 127.S.x.y with x, y in 250 values each.
const MAX_NODES: usize = 250 * 250;

/// Starts N real DHT nodes on loopback (127.SUBNET.x.y), for demos and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "dht-testnet", version)]
struct Cli {
    /// Number of nodes (1 to 62,500).
    #[arg(long, value_name = "N")]
    nodes: usize,
    /// Second address octet: node i binds 127.SUBNET.(i/250).(i%250+1) (1 to 254).
    #[arg(long, value_name = "S", default_value_t = 95)]
    subnet: u8,
    /// UDP port of every node (distinct IPs make one port safe; 0 = ephemeral).
    #[arg(long, value_name = "P", default_value_t = 6881)]
    port: u16,
    /// Keep node state (id, contacts) in `DIR/node-<i>`, so a restarted testnet resumes.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print aggregate status every SECS seconds (0 = never).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stats_interval: u64,
    /// Run K find_node and K get_peers lookups once the tables are ready, and report
    /// success rate and messages per lookup.
    #[arg(long, value_name = "K", default_value_t = 0)]
    lookups: usize,
    /// Lookups run at the same time.
    #[arg(long, value_name = "C", default_value_t = 8)]
    concurrency: usize,
    /// Probe nodes (joined after the testnet, on 127.SUBNET.250.x) that measure find_node.
    #[arg(long, value_name = "N", default_value_t = 4)]
    probes: usize,
    /// Tables are ready when every node has at least this many entries...
    #[arg(long, value_name = "M", default_value_t = 8)]
    min_table: usize,
    /// ...or after this many seconds, whichever comes first.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    wait: u64,
    /// Extra seconds to let the network settle before lookups.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    settle: u64,
    /// Routers each joining node bootstraps from (node 0 and random earlier ones).
    #[arg(long, value_name = "N", default_value_t = 3)]
    fanout: usize,
    /// Tokio worker threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    workers: usize,
    /// Print the addresses of the first N nodes (all: N >= --nodes).
    #[arg(long, value_name = "N", default_value_t = 5)]
    print_addrs: usize,
    /// Write every node address to PATH, one per line (usable as `--bootstrap-file`).
    #[arg(long, value_name = "PATH")]
    addr_file: Option<PathBuf>,
    /// Background find_node lookups per second from random nodes, so the network is busy
    /// like a live DHT (nodes learn about each other from the queries they receive).
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    traffic: f64,
    /// Before the lookups, stop this percentage of the nodes (never node 0) without telling
    /// anyone, so lookups meet dead contacts as on the live DHT (churn).
    #[arg(long, value_name = "PCT", default_value_t = 0)]
    kill: u8,
    /// Exit after the lookups (or once tables are ready) instead of running until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

impl Cli {
    fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(format!(
                "--nodes must be between 1 and {MAX_NODES} (got {})",
                self.nodes
            ));
        }
        if self.subnet == 0 || self.subnet == 255 {
            return Err(format!(
                "--subnet must be between 1 and 254 (got {}): nodes bind 127.SUBNET.x.y",
                self.subnet
            ));
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(format!(
                "--workers must be between 1 and 64 (got {})",
                self.workers
            ));
        }
        if self.lookups > 0 && self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.probes > 250 {
            return Err(format!(
                "--probes must be at most 250 (got {})",
                self.probes
            ));
        }
        if self.lookups > 0 && self.nodes < 2 {
            return Err("--lookups needs at least 2 nodes".into());
        }
        if !(self.traffic == 0.0 || (0.001..=10_000.0).contains(&self.traffic)) {
            return Err(format!(
                "--traffic must be 0 or between 0.001 and 10000 lookups/s (got {})",
                self.traffic
            ));
        }
        if self.kill >= 100 {
            return Err(format!("--kill must be below 100 (got {})", self.kill));
        }
        if self.fanout == 0 {
            return Err("--fanout must be at least 1".into());
        }
        Ok(())
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        cli::fail(e);
    }
    cli::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.workers)
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(format!("cannot start the runtime: {e}")));
    if let Err(e) = rt.block_on(run(cli)) {
        cli::fail(e);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let signal = cli::shutdown_signal();
    tokio::pin!(signal);
    let started = Instant::now();
    println!(
        "starting {} nodes on 127.{}.x.y:{} ...",
        cli.nodes, cli.subnet, cli.port
    );
    let config = TestnetConfig {
        subnet: cli.subnet,
        port: cli.port,
        node: node::Config::loopback_testnet(),
        data_dir: cli.data_dir.clone(),
        fanout: cli.fanout,
    };
    let net = tokio::select! {
        r = Testnet::start(cli.nodes, config) => r.map_err(|e| e.to_string())?,
        _ = &mut signal => {
            println!("interrupted during startup");
            return Ok(());
        }
    };
    println!(
        "started {} nodes in {:.1}s",
        net.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    for i in 0..cli.print_addrs.min(net.nodes.len()) {
        println!("node {i} {} id {}", net.addr(i), net.nodes[i].id());
    }
    if cli.print_addrs < net.nodes.len() {
        println!("... ({} more)", net.nodes.len() - cli.print_addrs);
    }
    println!("bootstrap {}", net.addr(0));
    println!(
        "join with: dht-node --bind 127.{}.250.250:6881 --bootstrap {} --allow-net 127.0.0.0/8 --no-subnet-limit",
        cli.subnet,
        net.addr(0)
    );
    // Errors from here on still stop (and persist) the nodes before exiting.
    let outcome = match write_addr_file(&cli, &net) {
        Err(e) => Err(e),
        Ok(()) => tokio::select! {
            r = phases(&cli, &net) => r,
            _ = &mut signal => {
                println!("interrupted");
                Ok(())
            }
        },
    };
    println!("stopping {} nodes ...", net.nodes.len());
    net.shutdown().await;
    println!("stopped");
    outcome
}

/// Writes every node address to `--addr-file`, one per line, if asked.
fn write_addr_file(cli: &Cli, net: &Testnet) -> Result<(), String> {
    let Some(path) = &cli.addr_file else {
        return Ok(());
    };
    let text: String = (0..net.nodes.len())
        .map(|i| format!("{}\n", net.addr(i)))
        .collect();
    std::fs::write(path, text)
        .map_err(|e| format!("cannot write --addr-file {}: {e}", path.display()))?;
    println!("addresses written to {}", path.display());
    Ok(())
}

/// Aggregate status of all nodes.
#[derive(Debug, Clone, Copy, Default)]
struct Aggregate {
    nodes: usize,
    table_sum: usize,
    table_min: usize,
    table_max: usize,
    buckets_sum: usize,
    packets_in: u64,
    packets_out: u64,
    timeouts: u64,
}

async fn aggregate(net: &Testnet) -> Aggregate {
    let mut a = Aggregate {
        table_min: usize::MAX,
        ..Default::default()
    };
    for n in &net.nodes {
        if let Ok(s) = n.stats().await {
            let t = s.good_nodes + s.questionable_nodes;
            a.nodes += 1;
            a.table_sum += t;
            a.table_min = a.table_min.min(t);
            a.table_max = a.table_max.max(t);
            a.buckets_sum += s.buckets;
            a.packets_in += s.packets_in;
            a.packets_out += s.packets_out;
            a.timeouts += s.timeouts;
        }
    }
    if a.nodes == 0 {
        a.table_min = 0;
    }
    a
}

fn status_line(start: Instant, prev: &(Instant, Aggregate), now: &(Instant, Aggregate)) -> String {
    let secs = (now.0 - prev.0).as_secs_f64().max(1e-3);
    let a = &now.1;
    let n = a.nodes.max(1) as f64;
    format!(
        "t={:.0}s nodes {} | table mean {:.1} min {} max {} buckets mean {:.1} | packets in {:.0}/s out {:.0}/s | timeouts {:.0}/s",
        (now.0 - start).as_secs_f64(),
        a.nodes,
        a.table_sum as f64 / n,
        a.table_min,
        a.table_max,
        a.buckets_sum as f64 / n,
        a.packets_in.saturating_sub(prev.1.packets_in) as f64 / secs,
        a.packets_out.saturating_sub(prev.1.packets_out) as f64 / secs,
        a.timeouts.saturating_sub(prev.1.timeouts) as f64 / secs,
    )
}

async fn phases(cli: &Cli, net: &Testnet) -> Result<(), String> {
    let start = Instant::now();
    let interval = Duration::from_secs(cli.stats_interval);
    let mut prev = (Instant::now(), aggregate(net).await);
    let mut last_print = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(cli.wait);
    loop {
        let now = (Instant::now(), aggregate(net).await);
        let ready = now.1.table_min >= cli.min_table;
        if ready || now.0 >= deadline {
            println!("{}", status_line(start, &prev, &now));
            if ready {
                println!(
                    "tables ready: every node has >= {} entries ({:.1}s)",
                    cli.min_table,
                    start.elapsed().as_secs_f64()
                );
            } else {
                println!(
                    "tables not ready after {}s: smallest has {} entries (wanted {}); going on",
                    cli.wait, now.1.table_min, cli.min_table
                );
            }
            prev = now;
            break;
        }
        if cli.stats_interval > 0 && last_print.elapsed() >= interval {
            println!("{}", status_line(start, &prev, &now));
            prev = now;
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Dropped (so the traffic stops) when this function returns or is cancelled.
    let _traffic = (cli.traffic > 0.0)
        .then(|| AbortOnDrop(tokio::spawn(traffic(net.nodes.clone(), cli.traffic))));
    if cli.traffic > 0.0 {
        println!(
            "background traffic: {} random find_node lookups/s",
            cli.traffic
        );
    }
    // Nodes still running (all but those --kill stops).
    let mut alive: Vec<usize> = (0..net.nodes.len()).collect();
    if cli.lookups > 0 {
        tokio::time::sleep(Duration::from_secs(cli.settle)).await;
        if cli.kill > 0 {
            let n = net.nodes.len() * usize::from(cli.kill) / 100;
            let mut killed = 0;
            while killed < n && alive.len() > 2 {
                let i = alive.remove(rand::random_range(1..alive.len()));
                let _ = net.nodes[i].shutdown().await;
                killed += 1;
            }
            println!(
                "stopped {killed} nodes ({}%); {} still running",
                cli.kill,
                alive.len()
            );
        }
        prev = (Instant::now(), aggregate(net).await);
        println!("{}", status_line(start, &prev, &prev));
        measure_lookups(cli, net, &alive).await?;
        let now = (Instant::now(), aggregate(net).await);
        println!("{}", status_line(start, &prev, &now));
        prev = now;
    }
    if cli.exit {
        return Ok(());
    }
    println!("running; Ctrl-C stops");
    if cli.stats_interval == 0 {
        std::future::pending::<()>().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        let now = (Instant::now(), aggregate(net).await);
        println!("{}", status_line(start, &prev, &now));
        prev = now;
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `rate` random find_node lookups per second from random nodes until the runtime
/// stops. Lookups are fire-and-forget (each in its own task) so a slow one never lowers the
/// rate.
async fn traffic(nodes: Vec<DhtHandle>, rate: f64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let node = nodes[rand::random_range(0..nodes.len())].clone();
        tokio::spawn(async move {
            let _ = node.find_node(NodeId(rand::random())).await;
        });
    }
}

/// One measured lookup.
struct Measured {
    ok: bool,
    /// Fraction of the true K closest found (find_node).
    recall: f64,
    messages: u32,
    elapsed: Duration,
}

fn report(label: &str, results: &[Measured], show_recall: bool) {
    let n = results.len();
    let ok = results.iter().filter(|r| r.ok).count();
    let msgs: Vec<f64> = results.iter().map(|r| f64::from(r.messages)).collect();
    let ms: Vec<f64> = results
        .iter()
        .map(|r| r.elapsed.as_secs_f64() * 1000.0)
        .collect();
    let pct = |x: usize| 100.0 * x as f64 / n.max(1) as f64;
    let mut line = format!("{label:<22} lookups {n} ok {ok} ({:.1}%)", pct(ok));
    if let Some(s) = Summary::of(&msgs) {
        line += &format!(
            " | messages median {} p90 {} max {} mean {:.1} min {}",
            s.median, s.p90, s.max, s.mean, s.min
        );
    }
    if show_recall && n > 0 {
        let recall = results.iter().map(|r| r.recall).sum::<f64>() / n as f64;
        line += &format!(" | top-8 recall {:.1}%", 100.0 * recall);
    }
    if let Some(s) = Summary::of(&ms) {
        line += &format!(" | time median {:.0}ms p90 {:.0}ms", s.median, s.p90);
    }
    println!("{line}");
}

/// A random element of `alive`.
fn pick(alive: &[usize]) -> usize {
    alive[rand::random_range(0..alive.len())]
}

async fn measure_lookups(cli: &Cli, net: &Testnet, alive: &[usize]) -> Result<(), String> {
    let k = node::Config::loopback_testnet().routing.k;
    // Probes join now, like fresh nodes, from node 0 and two random routers.
    let mut probes = Vec::new();
    for p in 0..cli.probes {
        let mut routers = vec![net.addr(0)];
        for _ in 0..2 {
            routers.push(net.addr(pick(alive)));
        }
        let bind = SocketAddrV4::new(Ipv4Addr::new(127, cli.subnet, 250, p as u8 + 1), cli.port);
        let config = DhtConfig {
            node: node::Config::loopback_testnet(),
            bootstrap: routers.iter().map(|r| r.to_string()).collect(),
            ..DhtConfig::new(bind.into())
        };
        let (probe, driver) = Dht::bind(config).await.map_err(|e| format!("probe: {e}"))?;
        // Runs until the last handle is dropped, when this function returns.
        tokio::spawn(driver);
        probes.push(probe);
    }
    // Let the probes' bootstrap lookups finish (then a little more for the last replies).
    // User lookups started before the table fills end at once: they are seeded from it.
    for p in &probes {
        let _ = tokio::time::timeout(Duration::from_secs(10), p.wait_for_nodes(k)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in &probes {
        if let Ok(s) = p.stats().await {
            println!(
                "probe {} table {} buckets {}",
                p.local_addr(),
                s.good_nodes + s.questionable_nodes,
                s.buckets
            );
        }
    }
    let mut all_ids: Vec<NodeId> = alive.iter().map(|&i| net.nodes[i].id()).collect();
    all_ids.extend(probes.iter().map(|p| p.id()));
    let all_ids = Arc::new(all_ids);

    // find_node from probes.
    if !probes.is_empty() {
        let mut results = Vec::new();
        let mut set = JoinSet::new();
        for i in 0..cli.lookups {
            if set.len() >= cli.concurrency
                && let Some(r) = set.join_next().await
            {
                results.push(r.map_err(|e| e.to_string())?);
            }
            let probe = probes[i % probes.len()].clone();
            let ids = Arc::clone(&all_ids);
            set.spawn(async move {
                let target = NodeId(rand::random());
                let truth = true_closest(&ids, &target, k, &probe.id());
                let started = Instant::now();
                let r = probe.find_node(target).await.unwrap_or_default();
                let found = r.closest.iter().filter(|c| truth.contains(&c.id)).count();
                Measured {
                    ok: r.closest.first().map(|c| c.id) == truth.first().copied(),
                    recall: found as f64 / truth.len().max(1) as f64,
                    messages: r.messages,
                    elapsed: started.elapsed(),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            results.push(r.map_err(|e| e.to_string())?);
        }
        report("find_node (probes)", &results, true);
    }

    // Announce K infohashes from random testnet nodes, then look each up with get_peers from
    // a different testnet node and from a probe: success = the announced peer comes back.
    let mut announced = Vec::new();
    let mut ann_results = Vec::new();
    let mut set = JoinSet::new();
    for i in 0..cli.lookups {
        if set.len() >= cli.concurrency
            && let Some(r) = set.join_next().await
        {
            let (m, entry) = r.map_err(|e| e.to_string())?;
            ann_results.push(m);
            announced.push(entry);
        }
        let from = pick(alive);
        let handle = net.nodes[from].clone();
        let ip = *net.addr(from).ip();
        let port = 10_000 + (i % 50_000) as u16;
        set.spawn(async move {
            let ih = InfoHash(rand::random());
            let started = Instant::now();
            let (_, summary) = match handle.announce(ih, Some(port)) {
                Ok(s) => s.collect().await,
                Err(_) => Default::default(),
            };
            (
                Measured {
                    ok: summary.announced > 0,
                    recall: 0.0,
                    messages: summary.messages,
                    elapsed: started.elapsed(),
                },
                (ih, SocketAddrV4::new(ip, port), from),
            )
        });
    }
    while let Some(r) = set.join_next().await {
        let (m, entry) = r.map_err(|e| e.to_string())?;
        ann_results.push(m);
        announced.push(entry);
    }
    report("announce (nodes)", &ann_results, false);

    let mut node_results = Vec::new();
    let mut set = JoinSet::new();
    for &(ih, peer, announcer) in &announced {
        if set.len() >= cli.concurrency
            && let Some(r) = set.join_next().await
        {
            node_results.push(r.map_err(|e| e.to_string())?);
        }
        let mut from = pick(alive);
        while from == announcer {
            from = pick(alive);
        }
        let handle = net.nodes[from].clone();
        set.spawn(async move {
            let started = Instant::now();
            let (peers, summary) = match handle.get_peers(ih) {
                Ok(s) => s.collect().await,
                Err(_) => Default::default(),
            };
            Measured {
                ok: peers.contains(&std::net::SocketAddr::from(peer)),
                recall: 0.0,
                messages: summary.messages,
                elapsed: started.elapsed(),
            }
        });
    }
    while let Some(r) = set.join_next().await {
        node_results.push(r.map_err(|e| e.to_string())?);
    }
    report("get_peers (nodes)", &node_results, false);

    if !probes.is_empty() {
        let mut probe_results = Vec::new();
        let mut set = JoinSet::new();
        for (i, &(ih, peer, _)) in announced.iter().enumerate() {
            if set.len() >= cli.concurrency
                && let Some(r) = set.join_next().await
            {
                probe_results.push(r.map_err(|e| e.to_string())?);
            }
            let probe = probes[i % probes.len()].clone();
            set.spawn(async move {
                let started = Instant::now();
                let (peers, summary) = match probe.get_peers(ih) {
                    Ok(s) => s.collect().await,
                    Err(_) => Default::default(),
                };
                Measured {
                    ok: peers.contains(&std::net::SocketAddr::from(peer)),
                    recall: 0.0,
                    messages: summary.messages,
                    elapsed: started.elapsed(),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            probe_results.push(r.map_err(|e| e.to_string())?);
        }
        report("get_peers (probes)", &probe_results, false);
    }

    // find_node from testnet nodes through the public handle: success, recall and the
    // messages each lookup sent (from its summary).
    let mut fn_results = Vec::new();
    let mut set = JoinSet::new();
    for _ in 0..cli.lookups {
        if set.len() >= cli.concurrency
            && let Some(r) = set.join_next().await
        {
            fn_results.push(r.map_err(|e| e.to_string())?);
        }
        let from = pick(alive);
        let handle = net.nodes[from].clone();
        let ids = Arc::clone(&all_ids);
        set.spawn(async move {
            let target = NodeId(rand::random());
            let truth = true_closest(&ids, &target, k, &handle.id());
            let started = Instant::now();
            let summary = handle.find_node(target).await.unwrap_or_default();
            let closest = summary.closest;
            let found = closest.iter().filter(|c| truth.contains(&c.id)).count();
            Measured {
                ok: closest.first().map(|c| c.id) == truth.first().copied(),
                recall: found as f64 / truth.len().max(1) as f64,
                messages: summary.messages,
                elapsed: started.elapsed(),
            }
        });
    }
    while let Some(r) = set.join_next().await {
        fn_results.push(r.map_err(|e| e.to_string())?);
    }
    report("find_node (nodes)", &fn_results, true);
    Ok(())
}
