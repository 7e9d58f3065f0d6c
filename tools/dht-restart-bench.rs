//! `dht-restart-bench`: how fast a restarted node gets its routing table back compared with a
//! fresh bootstrap, against a running loopback testnet (start one with `dht-testnet`).
//!
//! Each run starts a node exactly as `dht-node` does ([`Dht::spawn`] with a data directory),
//! from a fresh directory, samples its table size every few milliseconds, stops it (which
//! persists its id and contacts), then starts it again on the same directory with the same
//! bootstrap router and samples again. Optionally a third start uses no router at all, so only
//! the persisted contacts can fill the table. `dht-node` prints its status at most once a
//! second, too coarse for loopback where a table fills in milliseconds, hence this tool.
//!
//! With `--delay-ms D` the node under test is started with
//! [`DhtConfig::receive_delay`](trackerless::dht::driver::DhtConfig) set, so its driver hands
//! it every received datagram D ms late, emulating a wide-area round trip for its own
//! exchanges (loopback round trips take microseconds, which hides how many sequential rounds
//! a join needs). A restart is then emulated the way [`Dht::bind`] does it: same node id, the
//! previous instance's contacts queued for verification, same router; the store itself is
//! not involved (its open time is what the D = 0 runs report as "spawn"), so every delayed
//! phase measures the join alone.
//!
//! The table target N is a fraction (default 90%) of the size the fresh node reached at the
//! end of its observation window; every phase is timed to the first sample with >= N entries.

#[path = "../src/bin/common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use trackerless::dht::driver::{Dht, DhtConfig, DhtHandle, StartError};
use trackerless::dht::id::NodeId;
use trackerless::dht::node;
use trackerless::dht::persist::PersistError;
use trackerless::sim::stats::Summary;

/// Times a node's table refill after a restart against a fresh bootstrap (loopback only).
#[derive(Parser, Debug)]
#[command(name = "dht-restart-bench", version)]
struct Cli {
    /// Bootstrap router: a node of the loopback testnet.
    #[arg(long, value_name = "ADDR")]
    bootstrap: SocketAddrV4,
    /// Run r binds 127.SUBNET.0.(r+1):PORT (1 to 254).
    #[arg(long, value_name = "S", default_value_t = 98)]
    subnet: u8,
    #[arg(long, value_name = "P", default_value_t = 6881)]
    port: u16,
    /// Where run r keeps its store (DIR/run-r, wiped before the run).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Number of runs (1 to 250).
    #[arg(long, value_name = "N", default_value_t = 5)]
    runs: usize,
    /// Seconds each phase is observed.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    observe: u64,
    /// N = this fraction of the fresh node's final table size.
    #[arg(long, value_name = "F", default_value_t = 0.9)]
    fraction: f64,
    /// Milliseconds between table samples.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    sample_ms: u64,
    /// Also restart a second time without any router (persisted contacts only).
    #[arg(long)]
    no_router_phase: bool,
    /// Emulate this receive delay (ms) for the node under test, restarting it from its
    /// previous id and contacts without a store; 0 runs `dht-node`'s path with its sled store.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
}

impl Cli {
    fn validate(&self) -> Result<(), String> {
        if !self.bootstrap.ip().is_loopback() {
            return Err(format!(
                "--bootstrap {} is not a loopback address (this benchmark runs on 127.0.0.0/8 only)",
                self.bootstrap
            ));
        }
        if self.subnet == 0 || self.subnet == 255 {
            return Err(format!(
                "--subnet must be between 1 and 254 (got {})",
                self.subnet
            ));
        }
        if self.runs == 0 || self.runs > 250 {
            return Err(format!(
                "--runs must be between 1 and 250 (got {})",
                self.runs
            ));
        }
        if self.observe == 0 || self.observe > 3600 {
            return Err("--observe must be between 1 and 3600 seconds".into());
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(format!(
                "--fraction must be in (0, 1] (got {})",
                self.fraction
            ));
        }
        if self.sample_ms == 0 || self.sample_ms > 10_000 {
            return Err("--sample-ms must be between 1 and 10000".into());
        }
        if self.delay_ms > 10_000 {
            return Err("--delay-ms must be at most 10000".into());
        }
        Ok(())
    }
}

/// One observed start: table size over time.
struct Phase {
    /// Time `Dht::spawn` took (binding, opening the store).
    spawn: Duration,
    /// (time since spawn began, table size), every sample.
    samples: Vec<(Duration, usize)>,
    id: String,
}

impl Phase {
    fn final_size(&self) -> usize {
        self.samples.last().map_or(0, |s| s.1)
    }

    fn time_to(&self, n: usize) -> Option<Duration> {
        self.samples.iter().find(|s| s.1 >= n).map(|s| s.0)
    }

    fn size_at(&self, t: Duration) -> usize {
        self.samples
            .iter()
            .take_while(|s| s.0 <= t)
            .last()
            .map_or(0, |s| s.1)
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        cli::fail(e);
    }
    cli::init_logging();
    if let Err(e) = run(&cli) {
        cli::fail(e);
    }
}

fn bind_addr(cli: &Cli, run: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, cli.subnet, 0, run as u8 + 1), cli.port)
}

/// The node under test's settings: with no delay, `dht-node`'s (a store in the run's
/// directory); with one, no store and the previous instance's id and contacts passed in.
fn config(cli: &Cli, run: usize, routers: bool, previous: Option<&Persisted>) -> DhtConfig {
    let mut cfg = DhtConfig::new(SocketAddr::V4(bind_addr(cli, run)));
    cfg.node = node::Config::loopback_testnet();
    if routers {
        cfg.bootstrap = vec![cli.bootstrap.to_string()];
    }
    cfg.save_interval = Duration::from_secs(300);
    if cli.delay_ms == 0 {
        cfg.data_dir = Some(run_dir(&cli.data_dir, run));
    } else {
        cfg.node.id = previous.map(|p| p.id);
        cfg.contacts = previous
            .map(|p| p.contacts.iter().copied().map(SocketAddr::V4).collect())
            .unwrap_or_default();
        cfg.receive_delay = Duration::from_millis(cli.delay_ms);
    }
    cfg
}

fn run_dir(base: &Path, run: usize) -> PathBuf {
    base.join(format!("run-{run}"))
}

/// What a stopped emulated node leaves for its restart (what the store would hold).
struct Persisted {
    id: NodeId,
    contacts: Vec<SocketAddrV4>,
}

/// The node under test's table size.
async fn table(node: &DhtHandle) -> Result<usize, String> {
    let stats = node.stats().await.map_err(|e| e.to_string())?;
    Ok(stats.good_nodes + stats.questionable_nodes)
}

/// Whether a start error is the previous instance still releasing its socket or store lock
/// (the driver drops them just after acknowledging shutdown).
fn transient(e: &StartError) -> bool {
    matches!(
        e,
        StartError::Store(PersistError::Locked { .. }) | StartError::Bind { .. }
    )
}

/// Starts the node under test, retrying transient errors for up to 10 s. Returns it and how
/// long the successful start took.
fn start(
    cli: &Cli,
    run: usize,
    routers: bool,
    previous: Option<&Persisted>,
) -> Result<(DhtHandle, Duration), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t0 = Instant::now();
        match Dht::spawn(config(cli, run, routers, previous)) {
            Ok(n) => return Ok((n, t0.elapsed())),
            Err(e) if transient(&e) && Instant::now() < deadline => {
                // The previous instance's thread lets go of its socket on its own.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Starts the node, samples its table size for `--observe` seconds, stops it.
fn observe(
    rt: &tokio::runtime::Runtime,
    cli: &Cli,
    run: usize,
    routers: bool,
    previous: Option<&Persisted>,
) -> Result<(Phase, Persisted), String> {
    let (node, spawn_time) = start(cli, run, routers, previous)?;
    let started = Instant::now() - spawn_time;
    let window = Duration::from_secs(cli.observe);
    let every = Duration::from_millis(cli.sample_ms);
    let (samples, persisted) = rt.block_on(async {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while started.elapsed() < window {
            tick.tick().await;
            samples.push((started.elapsed(), table(&node).await?));
        }
        // Without a store (a delayed run), the restart gets what the store would have kept.
        let contacts = if cli.delay_ms == 0 {
            Vec::new()
        } else {
            let contacts = node.contacts().await.map_err(|e| e.to_string())?;
            contacts.iter().map(|c| c.addr).collect()
        };
        node.shutdown()
            .await
            .map_err(|e| format!("saving state failed: {e}"))?;
        Ok::<_, String>((
            samples,
            Persisted {
                id: node.id(),
                contacts,
            },
        ))
    })?;
    let id = node.id().to_hex();
    Ok((
        Phase {
            spawn: spawn_time,
            samples,
            id,
        },
        persisted,
    ))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not reached".into(),
        |d| format!("{:.0}ms", d.as_secs_f64() * 1000.0),
    )
}

fn run(cli: &Cli) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    std::fs::create_dir_all(&cli.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", cli.data_dir.display()))?;
    let mut fresh_t = Vec::new();
    let mut restart_t = Vec::new();
    let mut norouter_t = Vec::new();
    let mut ratios = Vec::new();
    let mut ids_kept = 0;
    for r in 0..cli.runs {
        let dir = run_dir(&cli.data_dir, r);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
        let (fresh, saved) = observe(&rt, cli, r, true, None)?;
        let (restart, saved_again) = observe(&rt, cli, r, true, Some(&saved))?;
        let no_router = if cli.no_router_phase {
            Some(observe(&rt, cli, r, false, Some(&saved_again))?.0)
        } else {
            None
        };
        let n = ((fresh.final_size() as f64 * cli.fraction).ceil() as usize).max(1);
        let (tf, tr) = (fresh.time_to(n), restart.time_to(n));
        let kept = restart.id == fresh.id && no_router.as_ref().is_none_or(|p| p.id == fresh.id);
        ids_kept += usize::from(kept);
        let mut line = format!(
            "run {}: N={n} | fresh {} (spawn {:.0}ms, at 1s {}, final {}) | restart {} (spawn {:.0}ms, at 1s {}, final {})",
            r + 1,
            ms(tf),
            fresh.spawn.as_secs_f64() * 1000.0,
            fresh.size_at(Duration::from_secs(1)),
            fresh.final_size(),
            ms(tr),
            restart.spawn.as_secs_f64() * 1000.0,
            restart.size_at(Duration::from_secs(1)),
            restart.final_size(),
        );
        if let Some(p) = &no_router {
            let t = p.time_to(n);
            line += &format!(
                " | restart without router {} (at 1s {}, final {})",
                ms(t),
                p.size_at(Duration::from_secs(1)),
                p.final_size()
            );
            if let Some(t) = t {
                norouter_t.push(t.as_secs_f64() * 1000.0);
            }
        }
        line += &format!(" | id kept: {}", if kept { "yes" } else { "NO" });
        println!("{line}");
        if let Some(t) = tf {
            fresh_t.push(t.as_secs_f64() * 1000.0);
        }
        if let Some(t) = tr {
            restart_t.push(t.as_secs_f64() * 1000.0);
        }
        if let (Some(a), Some(b)) = (tf, tr) {
            ratios.push(b.as_secs_f64() / a.as_secs_f64().max(1e-6));
        }
    }
    let show = |label: &str, v: &[f64], unit: &str| match Summary::of(v) {
        Some(s) => println!(
            "{label:<26} runs {} median {:.2}{unit} min {:.2}{unit} max {:.2}{unit}",
            s.count, s.median, s.min, s.max
        ),
        None => println!("{label:<26} no run reached N"),
    };
    show("fresh bootstrap to N", &fresh_t, "ms");
    show("restart to N", &restart_t, "ms");
    if cli.no_router_phase {
        show("restart (no router) to N", &norouter_t, "ms");
    }
    show("ratio restart/fresh", &ratios, "");
    println!("node id kept across restart: {ids_kept}/{} runs", cli.runs);
    if ids_kept < cli.runs {
        return Err("a restarted node did not keep its id".into());
    }
    Ok(())
}
