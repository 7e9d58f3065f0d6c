//! `dht-fill`: fills one DHT node's peer store through the protocol, for memory benchmarks.
//!
//! Each source address 127.SUBNET.x.y gets an announce token with one get_peers query, then
//! sends announce_peer for its share of (infohash, port) pairs. A stored peer is the source IP
//! plus the announced port, so `--sources` IPs × distinct ports make the peers distinct: peer
//! number p (of infohash p / PEERS) is announced from source p % SOURCES on port
//! 1024 + p / SOURCES. Everything binds and sends on loopback only; the target must be a
//! 127.0.0.0/8 address.
//!
//! The filler never answers the target's verification pings, so its sources do not end up in
//! the target's routing table and the table stays what the real network made it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use trackerless::cli;
use trackerless::dht::id::{InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, QueryArgs};

/// Fills a DHT node with announced peers from many loopback source addresses.
#[derive(Parser, Debug)]
#[command(name = "dht-fill", version)]
struct Cli {
    /// The node to fill (must be on 127.0.0.0/8).
    #[arg(long, value_name = "ADDR")]
    target: SocketAddrV4,
    /// Distinct infohashes to announce.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    infohashes: usize,
    /// Peers announced per infohash.
    #[arg(long, value_name = "N", default_value_t = 50)]
    peers: usize,
    /// Source IPs: 127.SUBNET.(s/250).(s%250+1) for s < SOURCES.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    sources: usize,
    /// Second octet of the source addresses (1 to 254).
    #[arg(long, value_name = "S", default_value_t = 96)]
    subnet: u8,
    /// Sources working at the same time.
    #[arg(long, value_name = "N", default_value_t = 16)]
    concurrency: usize,
    /// Announces in flight per source.
    #[arg(long, value_name = "N", default_value_t = 32)]
    window: usize,
    /// Seed for the infohashes (same seed = same infohashes, so a re-run refreshes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// After filling, look up this many infohashes and count the peers returned.
    #[arg(long, value_name = "N", default_value_t = 20)]
    verify: usize,
}

/// Seconds to wait for one reply before resending (twice at most).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPTS: u8 = 3;

impl Cli {
    fn validate(&self) -> Result<(), String> {
        if !self.target.ip().is_loopback() {
            return Err(format!(
                "--target {} is not a loopback address (this tool only talks to 127.0.0.0/8)",
                self.target
            ));
        }
        if self.target.port() == 0 {
            return Err("--target needs a non-zero port".into());
        }
        if self.subnet == 0 || self.subnet == 255 {
            return Err(format!(
                "--subnet must be between 1 and 254 (got {})",
                self.subnet
            ));
        }
        if self.sources == 0 || self.sources > 250 * 250 {
            return Err(format!(
                "--sources must be between 1 and 62500 (got {})",
                self.sources
            ));
        }
        if self.infohashes == 0 || self.peers == 0 {
            return Err("--infohashes and --peers must be at least 1".into());
        }
        let total = self
            .infohashes
            .checked_mul(self.peers)
            .ok_or("--infohashes × --peers overflows")?;
        if 1024 + (total - 1) / self.sources > 65_535 {
            return Err(format!(
                "{total} peers need more sources: with {} sources ports would exceed 65535 \
                 (use at least {})",
                self.sources,
                total.div_ceil(65_535 - 1024)
            ));
        }
        if self.concurrency == 0 || self.window == 0 {
            return Err("--concurrency and --window must be at least 1".into());
        }
        Ok(())
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        cli::fail(e);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(format!("cannot start the runtime: {e}")));
    if let Err(e) = rt.block_on(run(cli)) {
        cli::fail(e);
    }
}

fn source_ip(subnet: u8, s: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, subnet, (s / 250) as u8, (s % 250) as u8 + 1)
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    acked: u64,
    errors: u64,
    lost: u64,
    no_token: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.acked += o.acked;
        self.errors += o.errors;
        self.lost += o.lost;
        self.no_token += o.no_token;
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let hashes: Vec<InfoHash> = (0..cli.infohashes)
        .map(|_| NodeId::random(&mut rng))
        .collect();
    let total = cli.infohashes * cli.peers;
    let sources = cli.sources.min(total);
    println!(
        "announcing {total} peers ({} infohashes × {}) to {} from {sources} sources on 127.{}.x.y",
        cli.infohashes, cli.peers, cli.target, cli.subnet
    );
    let started = Instant::now();
    let mut totals = Counts::default();
    let mut set: JoinSet<Result<Counts, String>> = JoinSet::new();
    let mut last_report = Instant::now();
    for s in 0..sources {
        if set.len() >= cli.concurrency
            && let Some(r) = set.join_next().await
        {
            totals.add(r.map_err(|e| e.to_string())??);
        }
        let work: Vec<(InfoHash, u16)> = (s..total)
            .step_by(sources)
            .map(|p| (hashes[p / cli.peers], (1024 + p / sources) as u16))
            .collect();
        let ip = source_ip(cli.subnet, s);
        let (target, window) = (cli.target, cli.window);
        set.spawn(async move { fill_from(ip, target, work, window).await });
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "  {s}/{sources} sources, {} acked, {:.0} announces/s",
                totals.acked,
                totals.acked as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    while let Some(r) = set.join_next().await {
        totals.add(r.map_err(|e| e.to_string())??);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled in {secs:.1}s: acked {} errors {} lost {} sources-without-token {} ({:.0} announces/s)",
        totals.acked,
        totals.errors,
        totals.lost,
        totals.no_token,
        totals.acked as f64 / secs
    );
    if cli.verify > 0 {
        verify(&cli, &hashes).await?;
    }
    if totals.acked < total as u64 {
        return Err(format!(
            "only {} of {total} announces were acknowledged",
            totals.acked
        ));
    }
    Ok(())
}

/// Sends `query` until a reply with tid `tid` arrives (at most [`ATTEMPTS`] times).
async fn ask(sock: &UdpSocket, to: SocketAddrV4, tid: &[u8], query: &[u8]) -> Option<Body> {
    let mut buf = [0u8; 2048];
    for _ in 0..ATTEMPTS {
        sock.send_to(query, to).await.ok()?;
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            let Ok((n, from)) = r else { break };
            if from != SocketAddr::V4(to) {
                continue;
            }
            if let Ok(m) = krpc::decode(&buf[..n])
                && m.tid.as_slice() == tid
                && !matches!(m.body, Body::Query(_))
            {
                return Some(m.body);
            }
        }
    }
    None
}

/// Gets a token for `ip` and announces `work` from it, `window` queries in flight.
async fn fill_from(
    ip: Ipv4Addr,
    target: SocketAddrV4,
    work: Vec<(InfoHash, u16)>,
    window: usize,
) -> Result<Counts, String> {
    let sock = UdpSocket::bind(SocketAddrV4::new(ip, 0))
        .await
        .map_err(|e| format!("cannot bind {ip}: {e}"))?;
    let id = NodeId(rand::random());
    let mut counts = Counts::default();
    let mut q = Vec::new();
    // Ask for the token with an infohash we are about to announce: a node whose peer store
    // is full withholds tokens for infohashes it does not hold, so a random one would leave
    // the late sources without a token.
    let probe = work.first().map_or_else(|| NodeId(rand::random()), |w| w.0);
    krpc::encode_query(
        &mut q,
        b"tk",
        &id,
        &QueryArgs::GetPeers { info_hash: &probe },
        false,
        None,
    );
    let token = match ask(&sock, target, b"tk", &q).await {
        Some(Body::Response(r)) => r.token,
        _ => None,
    };
    let Some(token) = token else {
        counts.no_token += 1;
        counts.lost += work.len() as u64;
        return Ok(counts);
    };

    // tid = 4-byte index into `work`; (sent at, attempts) per outstanding index.
    let mut outstanding: HashMap<u32, (tokio::time::Instant, u8)> = HashMap::new();
    let mut retry: Vec<(u32, u8)> = Vec::new();
    let mut next = 0usize;
    let mut buf = [0u8; 2048];
    let send = |i: u32, q: &mut Vec<u8>| {
        let (ih, port) = work[i as usize];
        q.clear();
        krpc::encode_query(
            q,
            &i.to_be_bytes(),
            &id,
            &QueryArgs::AnnouncePeer {
                info_hash: &ih,
                port,
                implied_port: false,
                token: token.as_slice(),
            },
            false,
            None,
        );
    };
    loop {
        while outstanding.len() < window {
            let (i, attempts) = if let Some(r) = retry.pop() {
                r
            } else if next < work.len() {
                next += 1;
                ((next - 1) as u32, 0)
            } else {
                break;
            };
            send(i, &mut q);
            if sock.send_to(&q, target).await.is_err() {
                counts.lost += 1;
                continue;
            }
            outstanding.insert(i, (tokio::time::Instant::now(), attempts + 1));
        }
        if outstanding.is_empty() {
            break;
        }
        let oldest = outstanding
            .values()
            .map(|(t, _)| *t)
            .min()
            .expect("not empty");
        match tokio::time::timeout_at(oldest + REPLY_TIMEOUT, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                if from != SocketAddr::V4(target) {
                    continue;
                }
                let Ok(m) = krpc::decode(&buf[..n]) else {
                    continue;
                };
                let Ok(tid) = <[u8; 4]>::try_from(m.tid.as_slice()) else {
                    continue;
                };
                let i = u32::from_be_bytes(tid);
                match m.body {
                    // The target's verification pings: deliberately unanswered.
                    Body::Query(_) => {}
                    Body::Response(_) if outstanding.remove(&i).is_some() => counts.acked += 1,
                    Body::Error(_) if outstanding.remove(&i).is_some() => counts.errors += 1,
                    _ => {}
                }
            }
            Ok(Err(e)) => return Err(format!("receive on {ip}: {e}")),
            Err(_) => {
                let now = tokio::time::Instant::now();
                let expired: Vec<(u32, u8)> = outstanding
                    .iter()
                    .filter(|(_, (t, _))| now >= *t + REPLY_TIMEOUT)
                    .map(|(i, (_, a))| (*i, *a))
                    .collect();
                for (i, attempts) in expired {
                    outstanding.remove(&i);
                    if attempts < ATTEMPTS {
                        retry.push((i, attempts));
                    } else {
                        counts.lost += 1;
                    }
                }
            }
        }
    }
    Ok(counts)
}

/// Looks up `cli.verify` of the infohashes and reports how many peers come back.
async fn verify(cli: &Cli, hashes: &[InfoHash]) -> Result<(), String> {
    let ip = Ipv4Addr::new(127, cli.subnet, 250, 1);
    let sock = UdpSocket::bind(SocketAddrV4::new(ip, 0))
        .await
        .map_err(|e| format!("cannot bind {ip}: {e}"))?;
    let id = NodeId(rand::random());
    let n = cli.verify.min(hashes.len());
    let step = hashes.len() / n;
    let mut got = Vec::new();
    let mut q = Vec::new();
    for (k, ih) in hashes.iter().step_by(step.max(1)).take(n).enumerate() {
        let tid = (k as u32).to_be_bytes();
        q.clear();
        krpc::encode_query(
            &mut q,
            &tid,
            &id,
            &QueryArgs::GetPeers { info_hash: ih },
            false,
            None,
        );
        match ask(&sock, cli.target, &tid, &q).await {
            Some(Body::Response(r)) => got.push(r.values.len()),
            _ => got.push(0),
        }
    }
    let min = got.iter().copied().min().unwrap_or(0);
    let mean = got.iter().sum::<usize>() as f64 / got.len().max(1) as f64;
    println!(
        "verify: {} infohashes looked up, peers returned per infohash mean {mean:.1} min {min} \
         (announced {}; one reply carries at most 100)",
        got.len(),
        cli.peers
    );
    Ok(())
}
